//! Task statuses waiting to reach the server, kept on disk so none is lost
//! across server outages or agent restarts.
//!
//! Statuses are level-triggered: only a task's latest status matters, so
//! the outbox keeps one pending entry per task (a newer one replaces an
//! unsent older one). Each entry carries a sequence number from one
//! robot-wide counter that only grows, persisted with the file, so every
//! task's statuses count up and the server applies each once and ignores
//! re-sends. One counter, not one per task: what the file keeps is bounded
//! by the tasks currently waiting, however many tasks the robot ever ran.
//! The file is rewritten (atomically, fsync'd) only when a status changes
//! or unsent ones are dropped: an idle robot writes nothing. What the
//! server acknowledged leaves the file with the next write, or a second
//! later when nothing else is to be sent ([`Outbox::save_acks`]), not in a
//! write of its own: on a busy robot that halves the writes. A crash in
//! between sends those statuses once more after the restart, which is
//! harmless: each is the latest status its task had, under the sequence
//! number the server already applied (it answers "duplicate").

use crate::api::agent_protocol::TaskStatusUpdate;
use crate::api::TaskStatus;
use crate::atomic_file;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

#[derive(Default, Serialize, Deserialize)]
struct OutboxFile {
    /// The last sequence number given to any status (kept after delivery).
    #[serde(default)]
    last_seq: u64,
    /// Undelivered statuses, by task.
    #[serde(default)]
    pending: BTreeMap<String, TaskStatusUpdate>,
}

/// The file as earlier agents wrote it: a sequence number per task ever
/// run (which grew without bound). Read once, to continue above them all.
#[derive(Deserialize)]
struct PerTaskOutboxFile {
    last_seq: BTreeMap<String, u64>,
    #[serde(default)]
    pending: BTreeMap<String, TaskStatusUpdate>,
}

fn parse(bytes: &[u8]) -> serde_json::Result<OutboxFile> {
    serde_json::from_slice(bytes).or_else(|e| match serde_json::from_slice::<PerTaskOutboxFile>(bytes) {
        Ok(old) => Ok(OutboxFile {
            last_seq: old.last_seq.values().copied().max().unwrap_or(0),
            pending: old.pending,
        }),
        Err(_) => Err(e),
    })
}

pub struct Outbox {
    path: PathBuf,
    file: OutboxFile,
    /// The last status queued per task, to drop repeats without writing.
    last_status: BTreeMap<String, TaskStatus>,
    /// Tasks whose status the server showed otherwise while one of ours
    /// was still on its way (a report held up by a cut link lands after
    /// the server reset the task on the robot's return): once it is
    /// acknowledged, the status is sent again.
    disputed: BTreeSet<String>,
    /// Since when acknowledged statuses are gone from memory but not yet
    /// from the file.
    acks_unsaved: Option<std::time::Instant>,
}

impl Outbox {
    pub fn open(data_dir: &Path) -> io::Result<Outbox> {
        let path = data_dir.join("outbox.json");
        let file = match std::fs::read(&path) {
            Ok(bytes) => parse(&bytes).unwrap_or_else(|e| {
                // A damaged outbox must not keep the robot from working; the
                // next statuses rebuild it (they are level-triggered).
                log::warn!("{}: unreadable ({e}); starting a new outbox", path.display());
                OutboxFile::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => OutboxFile::default(),
            Err(e) => return Err(e),
        };
        let last_status = file
            .pending
            .iter()
            .map(|(k, u)| (k.clone(), u.status.clone()))
            .collect();
        Ok(Outbox {
            path,
            file,
            last_status,
            disputed: BTreeSet::new(),
            acks_unsaved: None,
        })
    }

    /// Queue `status` for `task` unless it equals the last one queued, and
    /// write the file. Returns true if something new is waiting to be sent.
    pub fn push(&mut self, task: &str, status: TaskStatus) -> io::Result<bool> {
        let new = self.queue(task, status);
        if new {
            self.save()?;
        }
        Ok(new)
    }

    /// Queue every `(task, status)` as [`push`](Self::push) does, in one
    /// write: a pass that starts 1,000 tasks writes the file once, not
    /// 1,000 times. Returns true if something new is waiting to be sent.
    pub fn push_all(&mut self, statuses: impl IntoIterator<Item = (String, TaskStatus)>) -> io::Result<bool> {
        let mut new = false;
        for (task, status) in statuses {
            new |= self.queue(&task, status);
        }
        if new {
            self.save()?;
        }
        Ok(new)
    }

    /// Queue without writing (the caller writes before anything is sent).
    fn queue(&mut self, task: &str, status: TaskStatus) -> bool {
        if self.last_status.get(task) == Some(&status) {
            return false;
        }
        self.file.last_seq += 1;
        let seq = self.file.last_seq;
        self.file.pending.insert(
            task.to_string(),
            TaskStatusUpdate {
                task: task.to_string(),
                seq,
                status: status.clone(),
            },
        );
        self.last_status.insert(task.to_string(), status);
        true
    }

    /// The server's record of `task` disagrees with the last status we
    /// queued (e.g. it rescheduled the task and reset its status): queue it
    /// again on the next push, with a new sequence number. While a status
    /// for the task is still on its way the server may just not have it
    /// yet (a delta shows a new task's status from before our first
    /// report): nothing then, unless the record came in a complete set
    /// (`complete`: a robot back Online, a task reset on its return), in
    /// which case the status is sent again once acknowledged, since the
    /// reset may have come after it.
    pub fn server_disagrees(&mut self, task: &str, server: &TaskStatus, complete: bool) {
        let differs = self
            .last_status
            .get(task)
            .is_some_and(|ours| ours.state != server.state || ours.pid != server.pid);
        if differs {
            if !self.file.pending.contains_key(task) {
                self.last_status.remove(task);
            } else if complete {
                self.disputed.insert(task.to_string());
            }
        }
    }

    /// Everything not yet acknowledged, oldest task name first.
    pub fn pending(&self) -> Vec<TaskStatusUpdate> {
        self.file.pending.values().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.file.pending.is_empty()
    }

    /// The server has the status `seq` (or a newer one) of `task`. The
    /// file learns it with the next write (see the module doc).
    pub fn acknowledge(&mut self, acked: &[(String, u64)]) {
        for (task, seq) in acked {
            if self.file.pending.get(task).is_some_and(|u| u.seq <= *seq) {
                self.file.pending.remove(task);
                self.acks_unsaved.get_or_insert_with(std::time::Instant::now);
                if self.disputed.remove(task) {
                    self.last_status.remove(task);
                }
            }
        }
    }

    /// Since when acknowledgements wait to be written, if they do.
    pub fn acks_unsaved(&self) -> Option<std::time::Instant> {
        self.acks_unsaved
    }

    /// Write down what was acknowledged, if a write has not done it yet.
    pub fn save_acks(&mut self) -> io::Result<()> {
        if self.acks_unsaved.is_some() {
            // A failed write is tried again a while later, not at once.
            self.save()
                .inspect_err(|_| self.acks_unsaved = Some(std::time::Instant::now()))?;
        }
        Ok(())
    }

    /// Drop unsent statuses of tasks no longer assigned here (they are moot,
    /// and must not land on the task's next placement). The counter goes on:
    /// if the task comes back, its statuses still count as newer.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) -> io::Result<()> {
        let before = self.file.pending.len();
        self.file.pending.retain(|k, _| keep(k));
        self.last_status.retain(|k, _| keep(k));
        if before != self.file.pending.len() {
            self.save()?;
        }
        Ok(())
    }

    fn save(&mut self) -> io::Result<()> {
        let bytes = serde_json::to_vec(&self.file).map_err(io::Error::other)?;
        atomic_file::write(&self.path, &bytes, 0o600)?;
        self.acks_unsaved = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TaskState;

    fn status(state: TaskState) -> TaskStatus {
        TaskStatus {
            state,
            ..Default::default()
        }
    }

    #[test]
    fn sequences_survive_restart_and_acks() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path()).unwrap();
        assert!(ob.push("t", status(TaskState::Starting)).unwrap());
        assert!(
            !ob.push("t", status(TaskState::Starting)).unwrap(),
            "repeats are dropped"
        );
        assert!(ob.push("t", status(TaskState::Running)).unwrap());
        let pending = ob.pending();
        assert_eq!(pending.len(), 1, "one entry per task: the latest");
        assert_eq!((pending[0].seq, pending[0].status.state), (2, TaskState::Running));
        drop(ob);

        let mut ob = Outbox::open(dir.path()).unwrap();
        assert_eq!(ob.pending()[0].seq, 2, "pending statuses survive a restart");
        ob.acknowledge(&[("t".into(), 2)]);
        assert!(ob.is_empty());
        assert!(ob.push("t", status(TaskState::Completed)).unwrap());
        drop(ob);
        let ob = Outbox::open(dir.path()).unwrap();
        assert_eq!(ob.pending()[0].seq, 3, "sequence numbers never go back");
    }

    /// An acknowledgement costs no write of its own: the next status's
    /// write, or `save_acks` once the reporter is idle, takes it along. A
    /// restart before either sends the acknowledged status once more.
    #[test]
    fn acknowledgements_ride_on_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("outbox.json");
        let on_disk = || {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
            v["pending"]
                .as_object()
                .map(|p| p.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let mut ob = Outbox::open(dir.path()).unwrap();
        ob.push("a", status(TaskState::Running)).unwrap();
        ob.acknowledge(&[("a".into(), 1)]);
        assert!(ob.is_empty() && ob.acks_unsaved().is_some());
        assert_eq!(on_disk(), ["a"], "not written yet");
        let reopened = Outbox::open(dir.path()).unwrap();
        assert_eq!(reopened.pending()[0].seq, 1, "a restart now sends it again, same seq");
        drop(reopened);
        // The next status's write takes the acknowledgement along.
        ob.push("b", status(TaskState::Running)).unwrap();
        assert!(ob.acks_unsaved().is_none());
        assert_eq!(on_disk(), ["b"]);
        ob.acknowledge(&[("b".into(), 2)]);
        ob.save_acks().unwrap();
        assert!(on_disk().is_empty());
        let modified = std::fs::metadata(&file).unwrap().modified().unwrap();
        ob.save_acks().unwrap();
        assert_eq!(
            std::fs::metadata(&file).unwrap().modified().unwrap(),
            modified,
            "nothing to write"
        );
    }

    /// A report held up by a cut link lands after the server, seeing the
    /// robot back, reset the task (and showed so): acknowledged, it is
    /// sent again, since the server's reset may have come after it.
    #[test]
    fn a_status_the_server_disputed_while_in_flight_is_sent_again_once_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path()).unwrap();
        ob.push("t", status(TaskState::Running)).unwrap();
        ob.server_disagrees("t", &status(TaskState::Scheduled), true);
        ob.acknowledge(&[("t".into(), 1)]);
        assert!(ob.is_empty());
        assert!(
            ob.push("t", status(TaskState::Running)).unwrap(),
            "running is sent again"
        );
        assert_eq!(ob.pending()[0].seq, 2);
        // Undisputed, an acknowledged status is not repeated.
        ob.acknowledge(&[("t".into(), 2)]);
        assert!(!ob.push("t", status(TaskState::Running)).unwrap());
    }

    #[test]
    fn a_task_that_leaves_and_returns_keeps_counting_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path()).unwrap();
        ob.push("t", status(TaskState::Running)).unwrap();
        ob.retain(|_| false).unwrap();
        assert!(ob.is_empty(), "unsent statuses of a task that left are dropped");
        ob.push("t", status(TaskState::Running)).unwrap();
        assert_eq!(ob.pending()[0].seq, 2);
    }

    #[test]
    fn the_file_stays_small_however_many_tasks_ran() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path()).unwrap();
        for i in 0..300 {
            let task = format!("job-{i}-g-r0-t");
            ob.push(&task, status(TaskState::Completed)).unwrap();
            ob.acknowledge(&[(task.clone(), u64::MAX)]);
            ob.retain(|_| false).unwrap();
        }
        ob.save_acks().unwrap();
        let size = std::fs::metadata(dir.path().join("outbox.json")).unwrap().len();
        assert!(size < 100, "outbox.json grew to {size} bytes");
        ob.push("next", status(TaskState::Running)).unwrap();
        assert_eq!(ob.pending()[0].seq, 301, "the counter still only grows");
    }

    #[test]
    fn a_per_task_file_from_an_earlier_agent_continues_above_all_its_numbers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("outbox.json"),
            r#"{"last_seq":{"a":7,"b":41},"pending":{"a":{"task":"a","seq":7,"status":{"state":"running"}}}}"#,
        )
        .unwrap();
        let mut ob = Outbox::open(dir.path()).unwrap();
        assert_eq!(ob.pending()[0].seq, 7, "its pending statuses are kept");
        ob.push("a", status(TaskState::Completed)).unwrap();
        assert_eq!(ob.pending()[0].seq, 42);
    }

    #[test]
    fn a_status_the_server_lost_is_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path()).unwrap();
        ob.push("t", status(TaskState::Running)).unwrap();
        ob.server_disagrees("t", &status(TaskState::Scheduled), false);
        assert!(
            !ob.push("t", status(TaskState::Running)).unwrap(),
            "still on its way: no resend"
        );
        ob.acknowledge(&[("t".into(), 1)]);
        ob.server_disagrees("t", &status(TaskState::Running), false);
        assert!(
            !ob.push("t", status(TaskState::Running)).unwrap(),
            "the server agrees: nothing to send"
        );
        ob.server_disagrees("t", &status(TaskState::Scheduled), false);
        assert!(
            ob.push("t", status(TaskState::Running)).unwrap(),
            "the server reset it: send again"
        );
        assert_eq!(ob.pending()[0].seq, 2);
    }

    #[test]
    fn a_batch_of_statuses_is_one_write_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.json");
        let mut ob = Outbox::open(dir.path()).unwrap();
        let batch = (0..50).map(|i| (format!("t{i}"), status(TaskState::Running)));
        assert!(ob.push_all(batch).unwrap());
        use std::os::unix::fs::MetadataExt;
        let written = std::fs::metadata(&path).unwrap().ino();
        // Repeats: nothing new, nothing written.
        let again = (0..50).map(|i| (format!("t{i}"), status(TaskState::Running)));
        assert!(!ob.push_all(again).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), written);
        drop(ob);
        let ob = Outbox::open(dir.path()).unwrap();
        let pending = ob.pending();
        assert_eq!(pending.len(), 50);
        let mut seqs: Vec<u64> = pending.iter().map(|u| u.seq).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=50).collect::<Vec<u64>>(), "one number each, all kept");
    }

    #[test]
    fn stale_ack_keeps_newer_status() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path()).unwrap();
        ob.push("t", status(TaskState::Running)).unwrap();
        ob.push("t", status(TaskState::Failed)).unwrap();
        ob.acknowledge(&[("t".into(), 1)]);
        assert_eq!(ob.pending()[0].seq, 2);
    }
}
