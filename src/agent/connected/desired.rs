//! The desired set as the server last described it, kept between polls
//! and across restarts (`assignments.json`), with each task's version hash
//! ([`crate::api::assignment_set`]). The poller applies each answer here:
//! a complete set replaces it, a delta changes only the tasks it names, and
//! the answer's digest must then match the set's, or the set is marked
//! unknown (revision 0) so the next poll asks for the complete one. Until
//! that arrives the robot keeps running what it ran: a mismatch never
//! reaches the reconciler.
//!
//! On disk, one durable write per change: a complete set is written whole
//! (`assignments.json`, the snapshot: atomic rename); a delta is appended to
//! `assignments.log` as one line (what it added or changed with their
//! versions, the names it removed, the revision it applies to and the one
//! it makes) and fdatasync'd. Loading replays the log onto the snapshot
//! while each line applies to the revision the one before made; the first
//! line that does not (torn by a crash mid-append, unreadable, or left from
//! before the snapshot) ends the replay, and the next save writes a new
//! snapshot instead of appending after it. The log is folded into a new
//! snapshot once it is larger than the snapshot (or 64 KiB): the log is
//! removed first, so a crash in between leaves an older snapshot, which
//! the server brings up to date (a resumed set is always verified against
//! the server's digest, see `Poller`).

use crate::api::agent_protocol::Assignments;
use crate::api::assignment_set;
use crate::api::Task;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The snapshot (under the data dir).
pub const FILE: &str = "assignments.json";
/// The deltas since the snapshot, one JSON line each.
pub const LOG: &str = "assignments.log";
/// The log is folded into a new snapshot once larger than this and than
/// the snapshot: replaying it costs at most about as much as the snapshot.
const COMPACT_AFTER_BYTES: u64 = 64 * 1024;

#[derive(Debug, Default)]
pub struct Kept {
    /// The revision the set is at; 0: unknown (ask for the complete set).
    revision: u64,
    /// Name → (version hash, task).
    tasks: BTreeMap<String, (String, Task)>,
    /// What the last answers changed and `save` has not written yet.
    unsaved: Unsaved,
    /// The log, open for appending once written to in this run.
    log: Option<File>,
    /// Bytes in the log (valid lines), and in the snapshot.
    log_bytes: u64,
    snapshot_bytes: u64,
}

/// What `save` has to write.
#[derive(Debug, Default)]
enum Unsaved {
    #[default]
    Nothing,
    /// One delta: from `base`, these names removed and these (re)written.
    Delta {
        base: u64,
        removed: Vec<String>,
        changed: Vec<String>,
    },
    /// A complete set, several deltas, or a log that cannot be appended
    /// to: write a new snapshot.
    Snapshot,
}

/// One line of the log.
#[derive(Serialize)]
struct Record<'a> {
    base: u64,
    revision: u64,
    removed: &'a [String],
    versions: BTreeMap<&'a str, &'a str>,
    tasks: Vec<&'a Task>,
}

/// What one answer did to the kept set.
#[derive(Debug)]
pub enum Taken {
    /// Nothing new (and, if the answer had a digest, it matched).
    Same,
    /// The set changed: hand it to the reconciler.
    Changed(Update),
    /// The set is not the server's (the message says how): ask again for
    /// the complete set.
    Mismatch(String),
}

/// A changed desired set, for the main thread.
#[derive(Debug, Default)]
pub struct Update {
    /// The complete set.
    pub tasks: Vec<Task>,
    /// The tasks the answer carried (their status is the server's latest).
    pub changed: Vec<Task>,
    /// It came as a delta (else as the complete set), removing this many
    /// tasks.
    pub delta: bool,
    pub removed: usize,
}

impl std::fmt::Display for Update {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.delta {
            write!(
                f,
                "{} tasks (delta: {} added or changed, {} removed)",
                self.tasks.len(),
                self.changed.len(),
                self.removed
            )
        } else {
            write!(f, "{} tasks (complete set)", self.tasks.len())
        }
    }
}

#[derive(Serialize)]
struct Stored<'a> {
    revision: u64,
    versions: BTreeMap<&'a str, &'a str>,
    tasks: Vec<&'a Task>,
}

impl Kept {
    /// The revision to poll `since`.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn tasks(&self) -> Vec<Task> {
        self.tasks.values().map(|(_, t)| t.clone()).collect()
    }

    /// The digest of the set as kept.
    pub fn digest(&self) -> String {
        assignment_set::digest(self.tasks.iter().map(|(n, (v, _))| (n.as_str(), v.as_str())))
    }

    /// Apply a verified answer to a poll that named `since`.
    pub fn take(&mut self, a: &mut Assignments, since: u64) -> Taken {
        let tasks = std::mem::take(&mut a.tasks);
        let mut versions = std::mem::take(&mut a.versions);
        let mut keyed = Vec::with_capacity(tasks.len());
        for t in tasks {
            let name = t.metadata.name.clone();
            let version = versions.remove(&name).unwrap_or_default();
            keyed.push((name, version, t));
        }
        // Old news (the robot holds `revision` already): nothing to apply.
        // But a complete set with its digest (the server could not answer
        // a resuming agent's `since` with a delta) replaces whatever is kept.
        let new = a.revision != since || since == 0 || (!a.delta && a.digest.is_some());
        if new && a.delta && self.revision != since {
            let held = self.revision;
            self.revision = 0;
            return Taken::Mismatch(format!("a delta from revision {since}, but the set kept is at {held}"));
        }
        let mut changed = Vec::new();
        let mut removed = 0;
        if new {
            let names = keyed.iter().map(|(n, _, _)| n.clone()).collect();
            self.unsaved = match self.unsaved {
                Unsaved::Nothing if a.delta => Unsaved::Delta {
                    base: self.revision,
                    removed: a.removed.clone(),
                    changed: names,
                },
                _ => Unsaved::Snapshot,
            };
            if a.delta {
                for name in &a.removed {
                    removed += usize::from(self.tasks.remove(name).is_some());
                }
            } else {
                self.tasks.clear();
            }
            for (name, version, t) in keyed {
                changed.push(t.clone());
                self.tasks.insert(name, (version, t));
            }
            self.revision = a.revision;
        }
        if let Some(want) = &a.digest {
            let have = self.digest();
            if *want != have {
                self.revision = 0;
                return Taken::Mismatch(format!(
                    "the set kept ({} tasks, digest {have}) is not the server's (digest {want})",
                    self.tasks.len()
                ));
            }
        }
        if new {
            Taken::Changed(Update {
                tasks: self.tasks(),
                changed,
                delta: a.delta,
                removed,
            })
        } else {
            Taken::Same
        }
    }

    /// The kept set from the data dir; an empty one at revision 0 when
    /// there is none, it cannot be read, or it lacks version hashes (then
    /// its tasks still run until the server answers).
    pub fn load(data_dir: &Path) -> Kept {
        let Some(value) = std::fs::read(data_dir.join(FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        else {
            return Kept::default();
        };
        let (revision, versions, tasks) = match value {
            // The complete set alone (agents before delta assignments).
            serde_json::Value::Array(_) => (0, serde_json::Value::Null, value),
            mut v => (
                v.get("revision").and_then(serde_json::Value::as_u64).unwrap_or(0),
                v.get_mut("versions").map(serde_json::Value::take).unwrap_or_default(),
                v.get_mut("tasks").map(serde_json::Value::take).unwrap_or_default(),
            ),
        };
        // Through the one typed decoder the agent has (api::decode).
        let Ok(tasks) = crate::api::decode::decode_typed::<Vec<Task>>(tasks).map(|d| d.object) else {
            return Kept::default();
        };
        let mut kept = Kept {
            revision,
            snapshot_bytes: std::fs::metadata(data_dir.join(FILE)).map_or(0, |m| m.len()),
            ..Kept::default()
        };
        if !kept.insert_all(tasks, &versions) {
            kept.revision = 0;
        }
        kept.replay(data_dir);
        kept
    }

    /// Add `tasks` with their `versions`; false if one has no valid version.
    fn insert_all(&mut self, tasks: Vec<Task>, versions: &serde_json::Value) -> bool {
        let mut all = true;
        for t in tasks {
            let version = versions
                .get(t.metadata.name.as_str())
                .and_then(serde_json::Value::as_str)
                .filter(|v| assignment_set::is_hash(v));
            all &= version.is_some();
            let version = version.unwrap_or_default().to_string();
            self.tasks.insert(t.metadata.name.clone(), (version, t));
        }
        all
    }

    /// Apply the log's lines that follow on from the snapshot (module doc).
    fn replay(&mut self, data_dir: &Path) {
        let Ok(bytes) = std::fs::read(data_dir.join(LOG)) else {
            return;
        };
        let mut used = 0;
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            if self.revision == 0 || !line.ends_with(b"\n") || !self.apply_line(line) {
                break;
            }
            used += line.len();
        }
        self.log_bytes = used as u64;
        if used < bytes.len() {
            // Appending after a line that ends the replay would be lost.
            self.unsaved = Unsaved::Snapshot;
        }
    }

    /// One log line, if it applies to the revision the set is at.
    fn apply_line(&mut self, line: &[u8]) -> bool {
        let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(line) else {
            return false;
        };
        let field = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_u64);
        let (Some(base), Some(revision)) = (field(&v, "base"), field(&v, "revision")) else {
            return false;
        };
        let removed: Option<Vec<String>> = v.get("removed").and_then(|r| serde_json::from_value(r.clone()).ok());
        let tasks = v.get_mut("tasks").map(serde_json::Value::take).unwrap_or_default();
        let tasks = crate::api::decode::decode_typed::<Vec<Task>>(tasks).map(|d| d.object);
        let (Some(removed), Ok(tasks)) = (removed, tasks) else {
            return false;
        };
        let versions = v.get("versions").cloned().unwrap_or_default();
        let versioned = tasks.iter().all(|t| {
            versions
                .get(t.metadata.name.as_str())
                .and_then(serde_json::Value::as_str)
                .is_some_and(assignment_set::is_hash)
        });
        if base != self.revision || revision == 0 || !versioned {
            return false;
        }
        for name in &removed {
            self.tasks.remove(name);
        }
        self.insert_all(tasks, &versions);
        self.revision = revision;
        true
    }

    /// Write what changed since the last save: one line appended to the
    /// log for a delta, else a new snapshot (module doc). After a failure
    /// the next save writes a snapshot.
    pub fn save(&mut self, data_dir: &Path) -> io::Result<()> {
        let result = match std::mem::take(&mut self.unsaved) {
            Unsaved::Nothing => return Ok(()),
            Unsaved::Delta { base, removed, changed }
                if self.log_bytes <= self.snapshot_bytes.max(COMPACT_AFTER_BYTES) =>
            {
                self.append(data_dir, base, &removed, &changed)
            }
            _ => self.write_snapshot(data_dir),
        };
        if result.is_err() {
            self.unsaved = Unsaved::Snapshot;
        }
        result
    }

    fn append(&mut self, data_dir: &Path, base: u64, removed: &[String], changed: &[String]) -> io::Result<()> {
        let changed: Vec<&(String, Task)> = changed.iter().filter_map(|n| self.tasks.get(n)).collect();
        let record = Record {
            base,
            revision: self.revision,
            removed,
            versions: changed
                .iter()
                .map(|(v, t)| (t.metadata.name.as_str(), v.as_str()))
                .collect(),
            tasks: changed.iter().map(|(_, t)| t).collect(),
        };
        let mut line = serde_json::to_vec(&record).map_err(io::Error::other)?;
        line.push(b'\n');
        if self.log.is_none() {
            let path = data_dir.join(LOG);
            let created = !path.exists();
            let file = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&path)?;
            if created {
                // The new name must survive a crash too.
                File::open(data_dir)?.sync_all()?;
            }
            self.log = Some(file);
        }
        let log = self.log.as_mut().expect("opened above");
        log.write_all(&line)?;
        log.sync_data()?;
        self.log_bytes = self.log_bytes.saturating_add(line.len() as u64);
        Ok(())
    }

    /// The whole set as the new snapshot; the log goes first (module doc).
    fn write_snapshot(&mut self, data_dir: &Path) -> io::Result<()> {
        self.log = None;
        match std::fs::remove_file(data_dir.join(LOG)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        self.log_bytes = 0;
        let stored = Stored {
            revision: self.revision,
            versions: self.tasks.iter().map(|(n, (v, _))| (n.as_str(), v.as_str())).collect(),
            tasks: self.tasks.values().map(|(_, t)| t).collect(),
        };
        let bytes = serde_json::to_vec(&stored).map_err(io::Error::other)?;
        // Its directory fsync also makes the log's removal durable.
        crate::atomic_file::write(&data_dir.join(FILE), &bytes, 0o600)?;
        self.snapshot_bytes = bytes.len() as u64;
        Ok(())
    }

    /// Fold the log into a new snapshot now (tests read the set from the
    /// snapshot alone).
    pub fn compact(data_dir: &Path) -> io::Result<()> {
        Kept::load(data_dir).write_snapshot(data_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::StringMap;

    fn task(name: &str) -> Task {
        let mut t = Task {
            api_version: crate::api::API_VERSION.into(),
            kind: "Task".into(),
            ..Task::default()
        };
        t.metadata.name = name.into();
        t
    }

    fn version(c: char) -> String {
        c.to_string().repeat(64)
    }

    /// What the server would send: `tasks` with their versions, and the
    /// digest of `all` (the complete set at `revision`).
    fn answer(
        revision: u64,
        delta: bool,
        tasks: &[(&str, char)],
        removed: &[&str],
        all: &[(&str, char)],
    ) -> Assignments {
        let mut all: Vec<(String, String)> = all.iter().map(|(n, v)| ((*n).to_string(), version(*v))).collect();
        all.sort();
        Assignments {
            revision,
            delta,
            tasks: tasks.iter().map(|(n, _)| task(n)).collect(),
            versions: tasks
                .iter()
                .map(|(n, v)| ((*n).to_string(), version(*v)))
                .collect::<StringMap>(),
            removed: removed.iter().map(|n| (*n).to_string()).collect(),
            digest: Some(assignment_set::digest(
                all.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            )),
            ..Assignments::default()
        }
    }

    fn names(u: &[Task]) -> Vec<&str> {
        u.iter().map(|t| t.metadata.name.as_str()).collect()
    }

    #[test]
    fn complete_then_deltas_add_change_and_remove() {
        let mut kept = Kept::default();
        let mut a = answer(5, false, &[("a", 'a'), ("b", 'b')], &[], &[("a", 'a'), ("b", 'b')]);
        let Taken::Changed(u) = kept.take(&mut a, 0) else {
            panic!("complete set not taken")
        };
        assert_eq!((names(&u.tasks), kept.revision()), (vec!["a", "b"], 5));
        // Add c, change b, keep a: only b and c travel.
        let mut a = answer(
            8,
            true,
            &[("b", 'c'), ("c", 'c')],
            &[],
            &[("a", 'a'), ("b", 'c'), ("c", 'c')],
        );
        let Taken::Changed(u) = kept.take(&mut a, 5) else {
            panic!("delta not taken")
        };
        assert_eq!(names(&u.tasks), ["a", "b", "c"]);
        assert_eq!(names(&u.changed), ["b", "c"], "only what the answer carried");
        // Remove a.
        let mut a = answer(9, true, &[], &["a"], &[("b", 'c'), ("c", 'c')]);
        let Taken::Changed(u) = kept.take(&mut a, 8) else {
            panic!("removal not taken")
        };
        assert_eq!((names(&u.tasks), u.changed.len()), (vec!["b", "c"], 0));
        assert_eq!(kept.revision(), 9);
        // Nothing new, digest confirmed.
        let mut a = answer(9, true, &[], &[], &[("b", 'c'), ("c", 'c')]);
        assert!(matches!(kept.take(&mut a, 9), Taken::Same));
        assert_eq!(kept.revision(), 9);
    }

    #[test]
    fn a_digest_mismatch_asks_for_the_complete_set() {
        let mut kept = Kept::default();
        let mut a = answer(5, false, &[("a", 'a')], &[], &[("a", 'a')]);
        assert!(matches!(kept.take(&mut a, 0), Taken::Changed(_)));
        // The server's set also holds x, which this robot never got.
        let mut a = answer(6, true, &[("b", 'b')], &[], &[("a", 'a'), ("b", 'b'), ("x", 'a')]);
        let Taken::Mismatch(why) = kept.take(&mut a, 5) else {
            panic!("mismatch not seen")
        };
        assert!(why.contains("not the server's"), "{why}");
        assert_eq!(kept.revision(), 0, "the next poll asks since=0");
        // An idle answer that only confirms the digest also catches it.
        let mut kept = Kept::default();
        let mut a = answer(5, false, &[("a", 'a')], &[], &[("a", 'a')]);
        kept.take(&mut a, 0);
        let mut a = answer(5, true, &[], &[], &[("a", 'b')]);
        assert!(matches!(kept.take(&mut a, 5), Taken::Mismatch(_)));
        assert_eq!(kept.revision(), 0);
        // The complete set repairs it.
        let mut a = answer(7, false, &[("a", 'b')], &[], &[("a", 'b')]);
        let Taken::Changed(u) = kept.take(&mut a, 0) else {
            panic!("complete set not taken")
        };
        assert_eq!((names(&u.tasks), kept.revision()), (vec!["a"], 7));
    }

    #[test]
    fn a_complete_set_at_the_kept_revision_replaces_the_kept_set() {
        // Resuming at revision 5 from a file; the server (restarted) sends
        // its complete set at that same revision.
        let mut kept = Kept::default();
        let mut a = answer(5, false, &[("a", 'a')], &[], &[("a", 'a')]);
        kept.take(&mut a, 0);
        let mut a = answer(5, false, &[("a", 'b'), ("b", 'b')], &[], &[("a", 'b'), ("b", 'b')]);
        let Taken::Changed(u) = kept.take(&mut a, 5) else {
            panic!("complete set not taken")
        };
        assert_eq!(names(&u.tasks), ["a", "b"]);
        // Without a digest (an answer to a poll without delta=1), an answer
        // at `since` has nothing new.
        let mut a = answer(5, false, &[], &[], &[]);
        a.digest = None;
        assert!(matches!(kept.take(&mut a, 5), Taken::Same));
        assert_eq!(kept.tasks().len(), 2);
    }

    #[test]
    fn a_delta_to_another_revision_is_refused() {
        let mut kept = Kept::default();
        let mut a = answer(5, false, &[("a", 'a')], &[], &[("a", 'a')]);
        kept.take(&mut a, 0);
        let mut a = answer(9, true, &[("b", 'b')], &[], &[("a", 'a'), ("b", 'b')]);
        assert!(matches!(kept.take(&mut a, 7), Taken::Mismatch(_)));
        assert_eq!(kept.revision(), 0);
    }

    fn lines(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join(LOG)).map_or(0, |t| t.lines().count())
    }

    fn snapshot_inode(dir: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dir.join(FILE)).unwrap().ino()
    }

    #[test]
    fn a_delta_is_one_appended_line_and_a_restart_replays_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut kept = Kept::default();
        let all = [("a", 'a'), ("b", 'b')];
        kept.take(&mut answer(5, false, &all, &[], &all), 0);
        kept.save(dir.path()).unwrap();
        let snapshot = snapshot_inode(dir.path());
        assert_eq!(lines(dir.path()), 0, "a complete set is a snapshot");
        // Change b, add c; then remove a.
        let all = [("a", 'a'), ("b", 'c'), ("c", 'c')];
        kept.take(&mut answer(6, true, &[("b", 'c'), ("c", 'c')], &[], &all), 5);
        kept.save(dir.path()).unwrap();
        let all = [("b", 'c'), ("c", 'c')];
        kept.take(&mut answer(7, true, &[], &["a"], &all), 6);
        kept.save(dir.path()).unwrap();
        assert_eq!(lines(dir.path()), 2, "one line per delta");
        assert_eq!(snapshot_inode(dir.path()), snapshot, "the snapshot is not rewritten");
        let again = Kept::load(dir.path());
        assert_eq!((again.revision(), again.digest()), (7, kept.digest()));
        assert_eq!(names(&again.tasks()), ["b", "c"]);
        assert_eq!(again.tasks["b"].0, version('c'));
        // Nothing new: nothing written.
        let mut again = again;
        again.take(&mut answer(7, true, &[], &[], &all), 7);
        again.save(dir.path()).unwrap();
        assert_eq!(lines(dir.path()), 2);
    }

    #[test]
    fn a_torn_or_stale_log_line_ends_the_replay_and_the_next_save_is_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut kept = Kept::default();
        kept.take(&mut answer(5, false, &[("a", 'a')], &[], &[("a", 'a')]), 0);
        kept.save(dir.path()).unwrap();
        let all = [("a", 'a'), ("b", 'b')];
        kept.take(&mut answer(6, true, &[("b", 'b')], &[], &all), 5);
        kept.save(dir.path()).unwrap();
        // A crash in the middle of the next append.
        let mut log = OpenOptions::new().append(true).open(dir.path().join(LOG)).unwrap();
        log.write_all(br#"{"base":6,"revision":7,"removed":["a"],"ver"#)
            .unwrap();
        let mut again = Kept::load(dir.path());
        assert_eq!((again.revision(), names(&again.tasks())), (6, vec!["a", "b"]));
        // Appending after the torn line would be lost on the next load.
        let all = [("a", 'a'), ("b", 'b'), ("c", 'c')];
        again.take(&mut answer(8, true, &[("c", 'c')], &[], &all), 6);
        again.save(dir.path()).unwrap();
        assert!(!dir.path().join(LOG).exists(), "folded into a snapshot");
        let loaded = Kept::load(dir.path());
        assert_eq!((loaded.revision(), loaded.digest()), (8, again.digest()));

        // A line that does not follow on from the snapshot (left from before
        // it) is not applied.
        let stale = br#"{"base":3,"revision":4,"removed":["a","b","c"],"versions":{},"tasks":[]}"#;
        std::fs::write(dir.path().join(LOG), [&stale[..], b"\n"].concat()).unwrap();
        let loaded = Kept::load(dir.path());
        assert_eq!((loaded.revision(), loaded.tasks().len()), (8, 3));
        // Nor one whose task lacks a version.
        let unversioned = format!(
            r#"{{"base":8,"revision":9,"removed":[],"versions":{{}},"tasks":[{}]}}"#,
            serde_json::to_string(&task("d")).unwrap()
        );
        std::fs::write(dir.path().join(LOG), unversioned + "\n").unwrap();
        let loaded = Kept::load(dir.path());
        assert_eq!((loaded.revision(), loaded.tasks().len()), (8, 3));
    }

    #[test]
    fn the_log_is_folded_into_the_snapshot_once_it_outgrows_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut kept = Kept::default();
        kept.take(&mut answer(1, false, &[], &[], &[]), 0);
        kept.save(dir.path()).unwrap();
        // Each delta replaces one large task (a 4 KiB annotation).
        let mut snapshots = 0;
        let mut inode = snapshot_inode(dir.path());
        for r in 2..60u64 {
            let mut a = answer(r, true, &[("big", 'a')], &[], &[("big", 'a')]);
            let big = &mut a.tasks[0];
            big.metadata
                .annotations
                .insert("n".into(), format!("{r:04}").repeat(1024));
            // The version names the content (any hash does here).
            let v = version(char::from(b'a' + (r % 6) as u8));
            a.versions.insert("big".into(), v.clone());
            a.digest = Some(assignment_set::digest([("big", v.as_str())]));
            assert!(matches!(kept.take(&mut a, r - 1), Taken::Changed(_)));
            kept.save(dir.path()).unwrap();
            if snapshot_inode(dir.path()) != inode {
                snapshots += 1;
                inode = snapshot_inode(dir.path());
            }
            let log = std::fs::metadata(dir.path().join(LOG)).map_or(0, |m| m.len());
            assert!(log <= COMPACT_AFTER_BYTES + 8 * 1024, "the log grew to {log} bytes");
        }
        assert!((1..=5).contains(&snapshots), "{snapshots} snapshots in 58 deltas");
        let loaded = Kept::load(dir.path());
        assert_eq!((loaded.revision(), loaded.digest()), (59, kept.digest()));
        assert!(loaded.tasks["big"].1.metadata.annotations["n"].starts_with("0059"));
        // Tests fold it on demand.
        Kept::compact(dir.path()).unwrap();
        assert!(!dir.path().join(LOG).exists());
        assert_eq!(Kept::load(dir.path()).digest(), kept.digest());
    }

    #[test]
    fn kept_across_restarts_and_lost_state_means_the_complete_set() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Kept::load(dir.path()).revision(), 0, "no state: ask since=0");
        let mut kept = Kept::default();
        let mut a = answer(5, false, &[("a", 'a'), ("b", 'b')], &[], &[("a", 'a'), ("b", 'b')]);
        kept.take(&mut a, 0);
        kept.save(dir.path()).unwrap();
        let again = Kept::load(dir.path());
        assert_eq!((again.revision(), again.digest()), (5, kept.digest()));
        assert_eq!(names(&again.tasks()), ["a", "b"]);
        // A file from before delta assignments: its tasks, revision 0.
        std::fs::write(dir.path().join(FILE), serde_json::to_vec(&kept.tasks()).unwrap()).unwrap();
        let old = Kept::load(dir.path());
        assert_eq!((old.revision(), old.tasks().len()), (0, 2));
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        assert_eq!(Kept::load(dir.path()).revision(), 0);
    }
}
