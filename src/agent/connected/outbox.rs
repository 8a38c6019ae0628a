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
//! On disk, one write per change, appended: `outbox.json` is the
//! snapshot and `outbox.log` the journal after it, one JSON line per write
//! (the counter, the statuses queued since the last write, the tasks whose
//! status left), through [`crate::agent::append_log`]. A line is flushed
//! (fdatasync) only when it raises the counter the files record, which
//! runs [`SEQ_RESERVED`] numbers ahead of the last one given: the other
//! lines cost a write, not a flush. Statuses need no flush of their own: an
//! agent that crashes loses nothing (the kernel holds the lines), and after
//! a power loss, which may take the unflushed lines, every task's status is
//! queued again from the supervisor's durable state (a restart knows no
//! task's last status), under numbers above the reserved ones, so no
//! number is ever given twice and none the server applied is undercut. As the supervisor's
//! state does (`supervisor::state`), both carry a generation, so lines
//! left beside a newer snapshot by a crash are not replayed. Only a new
//! status, or unsent ones dropped, is written: an idle robot writes
//! nothing. The journal is folded into a new snapshot once it outgrows it
//! (or 16 KiB), when the outbox is opened and before the agent exits or
//! execs another binary ([`Outbox::compact`]): an older agent, after a
//! rolled-back self-update, reads the snapshot alone and must count on
//! from the last sequence number used. What the server acknowledged
//! leaves the files with the next write, or a second later when nothing
//! else is to be sent ([`Outbox::save_acks`]), not in a write of its own:
//! on a busy robot that halves the writes. A crash in between sends those
//! statuses once more after the restart, which is harmless: each is the
//! latest status its task had, under the sequence number the server
//! already applied (it answers "duplicate").

use crate::agent::append_log::{self, AppendLog};
use crate::agent::ordered;
use crate::api::agent_protocol::TaskStatusUpdate;
use crate::api::TaskStatus;
use crate::atomic_file;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

/// The snapshot (under the data dir).
const FILE: &str = "outbox.json";
/// The journal after it.
const LOG: &str = "outbox.log";
/// The journal is folded into a new snapshot once larger than this and
/// than the snapshot.
const COMPACT_AFTER_BYTES: u64 = 16 * 1024;
/// How far ahead of the last sequence number given the files' counter is
/// set (module doc): one flushed write per this many statuses.
pub const SEQ_RESERVED: u64 = 1024;

/// The snapshot, and (one serde shape for both, for the agent's size) a
/// journal line: what changed.
#[derive(Default, Serialize, Deserialize)]
struct OutboxFile {
    /// No status has a higher sequence number (kept after delivery; the
    /// agent's own record runs ahead of the last number given, module doc).
    #[serde(default)]
    last_seq: u64,
    /// Undelivered statuses, by task (a line: those queued since the
    /// write before).
    #[serde(default)]
    pending: BTreeMap<String, TaskStatusUpdate>,
    /// The snapshot's generation, or the one a line belongs to (absent
    /// in files of agents before the journal: 0).
    #[serde(default)]
    generation: u64,
    /// In a line only: tasks whose status left (acknowledged or moot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    removed: Vec<String>,
}

impl OutboxFile {
    /// This line's changes, onto `file`.
    fn apply_to(self, file: &mut OutboxFile) {
        file.last_seq = file.last_seq.max(self.last_seq);
        for task in &self.removed {
            file.pending.remove(task);
        }
        file.pending.extend(self.pending);
    }
}

/// What the files hold: the snapshot with the journal's lines of its
/// generation applied; the bytes of the lines read, and whether the
/// journal holds anything at all (then it is folded before appending).
fn read(data_dir: &Path) -> io::Result<(OutboxFile, u64, bool)> {
    let path = data_dir.join(FILE);
    let mut file = match std::fs::read(&path) {
        Ok(bytes) => parse(&bytes).unwrap_or_else(|e| {
            // A damaged outbox must not keep the robot from working; the
            // next statuses rebuild it (they are level-triggered).
            log::warn!("{}: unreadable ({e}); starting a new outbox", path.display());
            OutboxFile::default()
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => OutboxFile::default(),
        Err(e) => return Err(e),
    };
    let journal = match std::fs::read(data_dir.join(LOG)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut used = 0u64;
    for line in append_log::complete_lines(&journal) {
        // A line that cannot be read ends the replay (torn, or damaged:
        // what follows it is lost, and rebuilt as a damaged snapshot is).
        let Ok(change) = serde_json::from_slice::<OutboxFile>(line) else {
            log::warn!(
                "{}: an unreadable line; replayed up to it",
                data_dir.join(LOG).display()
            );
            break;
        };
        used += line.len() as u64;
        if change.generation == file.generation {
            change.apply_to(&mut file);
        }
    }
    Ok((file, used, !journal.is_empty()))
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
            ..OutboxFile::default()
        }),
        Err(_) => Err(e),
    })
}

/// The statuses waiting in `data_dir`'s outbox, read without writing (for
/// a look beside a running agent, and tests).
pub fn pending_on_disk(data_dir: &Path) -> io::Result<Vec<TaskStatusUpdate>> {
    read(data_dir).map(|(file, _, _)| file.pending.into_values().collect())
}

pub struct Outbox {
    dir: PathBuf,
    file: OutboxFile,
    /// The last sequence number given (at most `file.last_seq`).
    last_given: u64,
    /// `file.last_seq` was raised since the last write: the next one is
    /// flushed.
    raised: bool,
    journal: AppendLog,
    snapshot_bytes: u64,
    /// The next write is a snapshot (the journal holds what may not be
    /// appended after, or an append failed).
    snapshot_next: bool,
    /// Tasks queued, and tasks whose status left, since the last write.
    queued: BTreeSet<String>,
    left: BTreeSet<String>,
    /// The last status queued per task, to drop repeats without writing.
    last_status: BTreeMap<String, TaskStatus>,
    /// Tasks whose status the server showed otherwise while one of ours
    /// was still on its way (a report held up by a cut link lands after
    /// the server reset the task on the robot's return): once it is
    /// acknowledged, the status is sent again.
    disputed: BTreeSet<String>,
    /// Tasks whose last status was forgotten (so the next push queues it
    /// again) since [`Self::take_forgotten`]: a caller that pushes only
    /// the statuses that changed pushes these too.
    forgotten: Vec<String>,
    /// Since when acknowledged statuses are gone from memory but not yet
    /// from the file.
    acks_unsaved: Option<std::time::Instant>,
}

impl Outbox {
    /// Open the outbox of `data_dir`, the journal folded in (module doc;
    /// if that fails, the next write tries again).
    pub fn open(data_dir: &Path) -> io::Result<Outbox> {
        let (file, journal_bytes, journal_any) = read(data_dir)?;
        let last_status = file
            .pending
            .iter()
            .map(|(k, u)| (k.clone(), u.status.clone()))
            .collect();
        let mut outbox = Outbox {
            dir: data_dir.to_path_buf(),
            last_given: file.last_seq,
            raised: false,
            file,
            journal: AppendLog::with_bytes(journal_bytes),
            snapshot_bytes: std::fs::metadata(data_dir.join(FILE)).map_or(0, |m| m.len()),
            snapshot_next: journal_any,
            queued: BTreeSet::new(),
            left: BTreeSet::new(),
            last_status,
            disputed: BTreeSet::new(),
            forgotten: Vec::new(),
            acks_unsaved: None,
        };
        if let Err(e) = outbox.compact() {
            log::warn!("{}: folding the journal in: {e}", data_dir.join(LOG).display());
        }
        Ok(outbox)
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
        self.last_given = self.last_given.saturating_add(1);
        let seq = self.last_given;
        if seq > self.file.last_seq {
            self.file.last_seq = seq.saturating_add(SEQ_RESERVED - 1);
            self.raised = true;
        }
        self.file.pending.insert(
            task.to_string(),
            TaskStatusUpdate {
                task: task.to_string(),
                seq,
                status: status.clone(),
            },
        );
        self.queued.insert(task.to_string());
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
                self.forgotten.push(task.to_string());
            } else if complete {
                self.disputed.insert(task.to_string());
            }
        }
    }

    /// Tasks whose last status was forgotten since the last call (see
    /// [`Self::server_disagrees`]): their status is to be pushed again.
    pub fn take_forgotten(&mut self) -> Vec<String> {
        std::mem::take(&mut self.forgotten)
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
                self.left.insert(task.clone());
                self.acks_unsaved.get_or_insert_with(std::time::Instant::now);
                if self.disputed.remove(task) {
                    self.last_status.remove(task);
                    self.forgotten.push(task.clone());
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

    /// Drop unsent statuses of tasks no longer assigned here, `names` (in
    /// name order) being those that are (the others are moot, and must not
    /// land on the task's next placement). The counter goes on: if the
    /// task comes back, its statuses still count as newer.
    pub fn retain(&mut self, names: &[&str]) -> io::Result<()> {
        let before = self.file.pending.len();
        let left = &mut self.left;
        let mut keep = names.iter().peekable();
        self.file.pending.retain(|k, _| {
            let kept = ordered::reaches(&mut keep, |n| n, k);
            if !kept {
                left.insert(k.clone());
            }
            kept
        });
        let mut keep = names.iter().peekable();
        self.last_status.retain(|k, _| ordered::reaches(&mut keep, |n| n, k));
        if before != self.file.pending.len() {
            self.save()?;
        }
        Ok(())
    }

    /// Drop unsent statuses of tasks `names`, no longer assigned here (as
    /// [`Self::retain`] does for the names it is not given).
    pub fn forget(&mut self, names: &[&str]) -> io::Result<()> {
        let mut dropped = false;
        for name in names {
            if self.file.pending.remove(*name).is_some() {
                self.left.insert(name.to_string());
                dropped = true;
            }
            self.last_status.remove(*name);
        }
        match dropped {
            true => self.save(),
            false => Ok(()),
        }
    }

    /// Write what changed since the last write: one line appended, or a
    /// new snapshot (module doc).
    fn save(&mut self) -> io::Result<()> {
        if self.snapshot_next || self.journal.bytes() > self.snapshot_bytes.max(COMPACT_AFTER_BYTES) {
            return self.write_snapshot();
        }
        let mut line = OutboxFile {
            last_seq: self.file.last_seq,
            generation: self.file.generation,
            removed: self.left.iter().cloned().collect(),
            ..OutboxFile::default()
        };
        for task in &self.queued {
            if let Some(u) = self.file.pending.get(task) {
                line.pending.insert(task.clone(), u.clone());
            }
        }
        let path = self.dir.join(LOG);
        let appended = serde_json::to_vec(&line)
            .map_err(io::Error::other)
            .and_then(|line| match self.raised {
                true => self.journal.append(&path, line),
                false => self.journal.append_unflushed(&path, line),
            });
        if appended.is_err() {
            self.snapshot_next = true;
        }
        appended?;
        self.written();
        Ok(())
    }

    /// Fold the journal into a new snapshot, if it holds anything.
    pub fn compact(&mut self) -> io::Result<()> {
        if self.snapshot_next || self.journal.bytes() > 0 {
            return self.write_snapshot();
        }
        Ok(())
    }

    /// Everything, under the next generation; then the journal goes.
    fn write_snapshot(&mut self) -> io::Result<()> {
        let generation = self.file.generation;
        self.file.generation = generation.saturating_add(1);
        let written = serde_json::to_vec(&self.file)
            .map_err(io::Error::other)
            .and_then(|bytes| atomic_file::write(&self.dir.join(FILE), &bytes, 0o600).map(|()| bytes.len()));
        match written {
            Ok(len) => self.snapshot_bytes = len as u64,
            Err(e) => {
                self.file.generation = generation;
                return Err(e);
            }
        }
        // The journal's lines are of an older generation now.
        self.written();
        // Left in place, its stale lines may not be appended after.
        let removed = self.journal.remove(&self.dir.join(LOG));
        self.snapshot_next = removed.is_err();
        removed
    }

    /// What changed is on disk.
    fn written(&mut self) {
        self.raised = false;
        self.queued.clear();
        self.left.clear();
        self.acks_unsaved = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TaskState;

    /// Bytes in the snapshot and in the journal.
    fn files(dir: &Path) -> (u64, u64) {
        let size = |f| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len());
        (size(FILE), size(LOG))
    }

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
        assert_eq!(
            ob.pending()[0].seq,
            SEQ_RESERVED + 1,
            "sequence numbers never go back: a restart continues above those reserved"
        );
    }

    /// An acknowledgement costs no write of its own: the next status's
    /// write, or `save_acks` once the reporter is idle, takes it along. A
    /// restart before either sends the acknowledged status once more.
    #[test]
    fn acknowledgements_ride_on_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let on_disk = || read(dir.path()).unwrap().0.pending.into_keys().collect::<Vec<_>>();
        let mut ob = Outbox::open(dir.path()).unwrap();
        ob.push("a", status(TaskState::Running)).unwrap();
        ob.acknowledge(&[("a".into(), 1)]);
        assert!(ob.is_empty() && ob.acks_unsaved().is_some());
        assert_eq!(on_disk(), ["a"], "not written yet");
        let reopened = read(dir.path()).unwrap().0;
        assert_eq!(reopened.pending["a"].seq, 1, "a restart now sends it again, same seq");
        // The next status's write takes the acknowledgement along.
        ob.push("b", status(TaskState::Running)).unwrap();
        assert!(ob.acks_unsaved().is_none());
        assert_eq!(on_disk(), ["b"]);
        ob.acknowledge(&[("b".into(), 2)]);
        ob.save_acks().unwrap();
        assert!(on_disk().is_empty());
        let written = files(dir.path());
        ob.save_acks().unwrap();
        assert_eq!(files(dir.path()), written, "nothing to write");
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
        ob.retain(&[]).unwrap();
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
            ob.retain(&[]).unwrap();
        }
        ob.save_acks().unwrap();
        let (snapshot, journal) = files(dir.path());
        assert!(
            journal <= COMPACT_AFTER_BYTES + 1024,
            "outbox.log grew to {journal} bytes"
        );
        assert!(
            snapshot < 300,
            "outbox.json grew to {snapshot} bytes (at most one status)"
        );
        ob.compact().unwrap();
        let (snapshot, journal) = files(dir.path());
        assert!(snapshot < 100 && journal == 0, "{snapshot} + {journal} bytes");
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
        let mut ob = Outbox::open(dir.path()).unwrap();
        let batch = (0..50).map(|i| (format!("t{i}"), status(TaskState::Running)));
        assert!(ob.push_all(batch).unwrap());
        let lines = std::fs::read_to_string(dir.path().join(LOG)).unwrap();
        assert_eq!(lines.lines().count(), 1, "one line for the batch");
        let written = files(dir.path());
        // Repeats: nothing new, nothing written.
        let again = (0..50).map(|i| (format!("t{i}"), status(TaskState::Running)));
        assert!(!ob.push_all(again).unwrap());
        assert_eq!(files(dir.path()), written);
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

    #[test]
    fn a_change_is_one_appended_line_and_a_restart_replays_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path()).unwrap();
        ob.push("a", status(TaskState::Running)).unwrap();
        ob.push("b", status(TaskState::Running)).unwrap();
        ob.acknowledge(&[("a".into(), 1)]);
        ob.push("b", status(TaskState::Completed)).unwrap();
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join(LOG))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        // The last line: b's new status and a's acknowledgement, nothing else.
        assert_eq!(lines[2]["removed"], serde_json::json!(["a"]));
        assert_eq!(lines[2]["pending"]["b"]["seq"], 3);
        assert!(!dir.path().join(FILE).exists(), "no snapshot rewritten");
        drop(ob);
        let ob = Outbox::open(dir.path()).unwrap();
        let pending: Vec<(String, u64)> = ob.pending().into_iter().map(|u| (u.task, u.seq)).collect();
        assert_eq!(pending, [("b".to_string(), 3)]);
        // Opening folded the journal into the snapshot.
        assert_eq!(files(dir.path()).1, 0);
    }

    #[test]
    fn lines_left_beside_a_newer_snapshot_are_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path()).unwrap();
        ob.push("a", status(TaskState::Running)).unwrap();
        let stale = std::fs::read(dir.path().join(LOG)).unwrap();
        ob.acknowledge(&[("a".into(), 1)]);
        ob.compact().unwrap();
        // A crash after the snapshot, before the journal's removal.
        std::fs::write(dir.path().join(LOG), stale).unwrap();
        let mut ob = Outbox::open(dir.path()).unwrap();
        assert!(ob.is_empty(), "the acknowledged status stays gone");
        assert!(ob.push("a", status(TaskState::Completed)).unwrap());
        assert_eq!(ob.pending()[0].seq, SEQ_RESERVED + 1, "the counter goes on");
    }

    /// Only a write that raises the recorded counter is flushed; a power
    /// loss that takes the unflushed lines after it leaves a counter above
    /// every number given, so the statuses queued again after it are newer
    /// than any the server may have applied.
    #[test]
    fn only_a_raised_counter_is_flushed_and_a_power_loss_never_reuses_a_number() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path()).unwrap();
        ob.push("a", status(TaskState::Running)).unwrap();
        let flushed = std::fs::read(dir.path().join(LOG)).unwrap();
        assert_eq!(ob.journal.flushes, 1, "the first status raises the counter");
        let mut given = vec![1];
        for (i, task) in ["b", "c", "d"].iter().enumerate() {
            ob.push(task, status(TaskState::Running)).unwrap();
            ob.acknowledge(&[(task.to_string(), i as u64 + 2)]);
            given.push(i as u64 + 2);
        }
        ob.retain(&["b", "c", "d"]).unwrap();
        assert_eq!(
            ob.journal.flushes, 1,
            "statuses within the reservation: written, not flushed"
        );
        let lines = std::fs::read_to_string(dir.path().join(LOG)).unwrap();
        assert_eq!(lines.lines().count(), 5, "{lines}");
        drop(ob);

        // The power goes: the unflushed lines are lost.
        std::fs::write(dir.path().join(LOG), flushed).unwrap();
        let mut ob = Outbox::open(dir.path()).unwrap();
        assert_eq!(ob.pending().len(), 1, "the flushed status is still there");
        ob.push("b", status(TaskState::Completed)).unwrap();
        let seq = ob.pending().iter().find(|u| u.task == "b").unwrap().seq;
        assert!(
            given.iter().all(|g| seq > *g),
            "{seq} must be above every number given before: {given:?}"
        );

        // Past the reservation, the counter is raised again, and flushed.
        let flushes = ob.journal.flushes;
        for i in 0..SEQ_RESERVED {
            ob.queue(&format!("t{i}"), status(TaskState::Running));
        }
        ob.save().unwrap();
        assert_eq!(ob.journal.flushes, flushes + 1);
    }

    #[test]
    fn a_torn_line_ends_the_replay_and_is_never_appended_after() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path()).unwrap();
        ob.push("a", status(TaskState::Running)).unwrap();
        drop(ob);
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(LOG))
            .unwrap();
        std::io::Write::write_all(&mut log, br#"{"last_seq":2,"pending":{"b""#).unwrap();
        let mut ob = Outbox::open(dir.path()).unwrap();
        assert_eq!(ob.pending().len(), 1);
        ob.push("c", status(TaskState::Running)).unwrap();
        let reopened = read(dir.path()).unwrap().0;
        let tasks: Vec<&String> = reopened.pending.keys().collect();
        assert_eq!(tasks, ["a", "c"]);
    }
}
