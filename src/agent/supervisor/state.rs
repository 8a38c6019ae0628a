//! The agent's persisted state: which processes it started (pid + start
//! time + boot id), and how finished units ended, so a restarted agent
//! re-adopts instead of duplicating, and does not re-run completed work.
//!
//! On disk, one write per change, appended: `state.json` is the snapshot
//! (written whole, atomically: temp file, fsync, rename, fsync of the
//! directory) and `state.log` the journal after it, one JSON line per save
//! with the units that changed and the names that went
//! ([`crate::agent::append_log`]: one write, and one fdatasync where the
//! line must outlive a power loss). Only a save that changes what the
//! files say writes anything, so an idle agent writes nothing.
//!
//! What must outlive a power loss is how units ended: a completed unit is
//! not run again after the reboot. A line that only records processes
//! running (started, restarted, or gone while running) is not flushed:
//! after a power loss the robot boots anew and no pid of the old boot
//! means anything, while an agent that crashed or was killed finds the
//! line in the page cache. A line that records an end, or replaces or
//! drops a unit whose end the files hold (it runs again, or left and may
//! come back under its name), or names a new boot, is flushed; flushing it
//! flushes every line before it too. So a task's start costs no flush.
//!
//! Both carry a generation: a snapshot is written with the next one and
//! then the journal is removed, and loading replays only lines of the
//! snapshot's generation, so a crash between the two (old lines beside a
//! newer snapshot) loses nothing and replays nothing twice. A torn last
//! line (a crash mid-append) is left out: that save had not returned, so
//! nothing had acted on it. A damaged line before the end is an error
//! naming `state.log`. The journal is folded into a new snapshot once it
//! is larger than the snapshot (or 64 KiB), when the supervisor starts
//! (so it never appends after a torn line) and before the agent exits or
//! execs another binary ([`StateFile::compact`]): an older agent (a
//! self-update rolled back) reads `state.json` alone, as it always did.

use crate::agent::append_log::{self, AppendLog};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use std::io;
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "state.json";
/// The journal after the snapshot.
pub const JOURNAL_FILE: &str = "state.log";
/// The journal is folded into a new snapshot once larger than this and
/// than the snapshot.
const COMPACT_AFTER_BYTES: u64 = 64 * 1024;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedState {
    /// The boot the pids below belong to.
    pub boot_id: String,
    #[serde(default)]
    pub units: BTreeMap<String, SavedUnit>,
    /// On disk only: the snapshot's generation, or the one a journal line
    /// belongs to (absent in snapshots of agents before the journal: 0).
    #[serde(default)]
    generation: u64,
    /// In a journal line only: the units gone. (A line is a `SavedState`
    /// of what changed: one serde shape for both files, for the agent's
    /// size.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    removed: Vec<String>,
}

impl SavedState {
    pub fn new(boot_id: String, units: BTreeMap<String, SavedUnit>) -> SavedState {
        SavedState {
            boot_id,
            units,
            ..SavedState::default()
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SavedPhase {
    #[default]
    Running,
    Completed,
    Failed,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedUnit {
    pub phase: SavedPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Clock ticks since boot (`/proc/<pid>/stat` field 22).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
    /// The task directory (cwd, logs).
    pub dir: PathBuf,
    #[serde(default)]
    pub restarts: u32,
    /// How the last run ended, so a restarted agent still reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<super::machine::Exit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Used by `stop-all` to give the process its grace period.
    #[serde(default)]
    pub kill_timeout_ms: u64,
}

#[derive(Debug)]
pub enum StateError {
    Read(PathBuf, io::Error),
    Parse(PathBuf, serde_json::Error),
    Write(PathBuf, io::Error),
}

impl StateError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            StateError::Read(p, _) | StateError::Parse(p, _) | StateError::Write(p, _) => p,
        }
    }
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::Read(p, e) => write!(f, "reading agent state {}: {e}", p.display()),
            StateError::Parse(p, e) => write!(f, "agent state {} is damaged: {e}", p.display()),
            StateError::Write(p, e) => write!(f, "writing agent state {}: {e}", p.display()),
        }
    }
}

impl std::error::Error for StateError {}

/// The state files and what they say.
pub struct StateFile {
    dir: PathBuf,
    /// The state as snapshot + journal hold it.
    on_disk: SavedState,
    generation: u64,
    snapshot_bytes: u64,
    journal: AppendLog,
    /// The next save writes a snapshot (the journal holds lines that may
    /// not be appended after, or an append failed).
    snapshot_next: bool,
}

impl StateFile {
    /// Read `<data dir>/state.json` and replay `state.log` onto it; no
    /// snapshot is an empty state.
    pub fn load(data_dir: &Path) -> Result<(StateFile, SavedState), StateError> {
        let path = data_dir.join(STATE_FILE);
        let (snapshot_bytes, mut state) = match std::fs::read(&path) {
            Ok(bytes) => {
                let state: SavedState =
                    serde_json::from_slice(&bytes).map_err(|e| StateError::Parse(path.clone(), e))?;
                (bytes.len() as u64, state)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (0, SavedState::default()),
            Err(e) => return Err(StateError::Read(path, e)),
        };
        let generation = std::mem::take(&mut state.generation);
        let journal_path = data_dir.join(JOURNAL_FILE);
        let journal = match std::fs::read(&journal_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(StateError::Read(journal_path, e)),
        };
        let lines: Vec<&[u8]> = append_log::complete_lines(&journal).collect();
        let mut replayed = 0u64;
        for (i, line) in lines.iter().enumerate() {
            let entry: SavedState = match serde_json::from_slice(line) {
                Ok(entry) => entry,
                // A whole line the journal cannot have written: damage.
                Err(e) if i + 1 < lines.len() => return Err(StateError::Parse(journal_path, e)),
                Err(_) => break,
            };
            replayed += line.len() as u64;
            if entry.generation == generation {
                entry.apply_to(&mut state);
            }
        }
        let file = StateFile {
            dir: data_dir.to_path_buf(),
            on_disk: state.clone(),
            generation,
            snapshot_bytes,
            journal: AppendLog::with_bytes(replayed),
            snapshot_next: !journal.is_empty(),
        };
        Ok((file, state))
    }

    /// What the files say, read without writing (for commands beside a
    /// running agent, and tests).
    pub fn read(data_dir: &Path) -> Result<SavedState, StateError> {
        StateFile::load(data_dir).map(|(_, state)| state)
    }

    /// Write what changed between the files and `state`: one line
    /// appended, or a new snapshot (module doc). Returns whether it wrote.
    pub fn save(&mut self, state: &SavedState) -> Result<bool, StateError> {
        let line = self.changes(state);
        self.write(line)
    }

    /// Write the units named in `units` as given (None: gone) where the
    /// files say otherwise, under `boot_id`: what [`Self::save`] does for
    /// a whole state, for a caller that knows which units it touched (the
    /// supervisor: a save costs what changed, not every unit).
    pub fn save_units(
        &mut self,
        boot_id: &str,
        units: impl IntoIterator<Item = (String, Option<SavedUnit>)>,
    ) -> Result<bool, StateError> {
        let mut line = SavedState {
            generation: self.generation,
            boot_id: boot_id.to_string(),
            ..SavedState::default()
        };
        for (name, unit) in units {
            match unit {
                Some(u) if self.on_disk.units.get(&name) != Some(&u) => {
                    line.units.insert(name, u);
                }
                None if self.on_disk.units.contains_key(&name) => line.removed.push(name),
                _ => {}
            }
        }
        self.write(line)
    }

    /// Whether `line` must outlive a power loss (module doc).
    fn must_flush(&self, line: &SavedState) -> bool {
        let ended = |u: &SavedUnit| u.phase != SavedPhase::Running;
        let ended_on_disk = |name: &String| self.on_disk.units.get(name).is_some_and(ended);
        line.boot_id != self.on_disk.boot_id
            || line.units.iter().any(|(name, u)| ended(u) || ended_on_disk(name))
            || line.removed.iter().any(ended_on_disk)
    }

    /// Append `line` (what changed), or fold it into a new snapshot.
    fn write(&mut self, line: SavedState) -> Result<bool, StateError> {
        if line.boot_id == self.on_disk.boot_id && line.units.is_empty() && line.removed.is_empty() {
            return Ok(false);
        }
        if self.snapshot_next || self.journal.bytes() > self.snapshot_bytes.max(COMPACT_AFTER_BYTES) {
            let mut whole = self.on_disk.clone();
            line.apply_to(&mut whole);
            self.write_snapshot(whole)?;
            return Ok(true);
        }
        let path = self.dir.join(JOURNAL_FILE);
        let flush = self.must_flush(&line);
        let appended = serde_json::to_vec(&line)
            .map_err(io::Error::other)
            .and_then(|bytes| match flush {
                true => self.journal.append(&path, bytes),
                false => self.journal.append_unflushed(&path, bytes),
            });
        if let Err(e) = appended {
            self.snapshot_next = true;
            return Err(StateError::Write(path, e));
        }
        line.apply_to(&mut self.on_disk);
        Ok(true)
    }

    /// Fold the journal into a new snapshot, if it holds anything.
    pub fn compact(&mut self) -> Result<(), StateError> {
        if self.snapshot_next || self.journal.bytes() > 0 {
            return self.write_snapshot(self.on_disk.clone());
        }
        Ok(())
    }

    /// The journal line that takes the files to `state`.
    fn changes(&self, state: &SavedState) -> SavedState {
        let old = &self.on_disk;
        let mut line = SavedState {
            generation: self.generation,
            boot_id: state.boot_id.clone(),
            ..SavedState::default()
        };
        // Inserted one by one: collecting into a map would sort, and
        // its sort's code costs the agent kilobytes.
        for (name, u) in &state.units {
            if old.units.get(name) != Some(u) {
                line.units.insert(name.clone(), u.clone());
            }
        }
        for name in old.units.keys() {
            if !state.units.contains_key(name) {
                line.removed.push(name.clone());
            }
        }
        line
    }

    /// `state` whole, under the next generation; then the journal goes.
    fn write_snapshot(&mut self, state: SavedState) -> Result<(), StateError> {
        let path = self.dir.join(STATE_FILE);
        let generation = self.generation.saturating_add(1);
        let out = SavedState {
            generation,
            removed: Vec::new(),
            ..state
        };
        // Compact like the journal's lines: one serde_json formatter in the agent.
        let mut bytes = serde_json::to_vec(&out).map_err(|e| StateError::Write(path.clone(), e.into()))?;
        bytes.push(b'\n');
        crate::atomic_file::write(&path, &bytes, 0o600).map_err(|e| StateError::Write(path, e))?;
        // From here on the journal's lines are of an older generation: a
        // crash before it is gone leaves them unreplayed.
        self.generation = generation;
        self.snapshot_bytes = bytes.len() as u64;
        self.on_disk = SavedState { generation: 0, ..out };
        let journal = self.dir.join(JOURNAL_FILE);
        match self.journal.remove(&journal) {
            Ok(()) => self.snapshot_next = false,
            // Its lines are stale; appending after them is not safe.
            Err(e) => {
                self.snapshot_next = true;
                return Err(StateError::Write(journal, e));
            }
        }
        Ok(())
    }
}

impl SavedState {
    /// This journal line's changes, onto `state`.
    fn apply_to(self, state: &mut SavedState) {
        state.boot_id = self.boot_id;
        for name in &self.removed {
            state.units.remove(name);
        }
        state.units.extend(self.units);
    }
}

/// The one atomic write (`crate::atomic_file::write`), under the name
/// `reconcile/` and `connected/config.rs` still call it by.
pub use crate::atomic_file::write as write_atomic;

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(pid: i32) -> SavedUnit {
        SavedUnit {
            pid: Some(pid),
            start_time: Some(34),
            dir: "/x".into(),
            ..Default::default()
        }
    }

    fn state(units: &[(&str, i32)]) -> SavedState {
        SavedState::new(
            "b".into(),
            units.iter().map(|(n, p)| (n.to_string(), unit(*p))).collect(),
        )
    }

    fn lines(dir: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join(JOURNAL_FILE))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn only_ends_are_flushed_and_a_power_loss_forgets_no_end() {
        let dir = tempfile::tempdir().unwrap();
        let (mut file, _) = StateFile::load(dir.path()).unwrap();
        let ended = |pid| SavedUnit {
            phase: SavedPhase::Completed,
            ..unit(pid)
        };
        // (unit, record or gone, flushed?)
        let steps: [(&str, Option<SavedUnit>, bool); 10] = [
            ("a", Some(unit(1)), true), // a new boot
            ("a", Some(unit(2)), false),
            ("b", Some(unit(3)), false),
            ("a", Some(ended(2)), true),
            ("a", Some(unit(4)), true), // runs again: the end goes
            ("b", None, false),
            ("a", Some(ended(4)), true),
            ("a", None, true), // left: may come back under its name
            ("d", Some(ended(6)), true),
            ("c", Some(unit(5)), false),
        ];
        let mut at_last_flush = SavedState::default();
        let mut state = SavedState::new("b".into(), BTreeMap::new());
        for (i, (name, record, flushed)) in steps.into_iter().enumerate() {
            let before = file.journal.flushes;
            match &record {
                Some(u) => state.units.insert(name.to_string(), u.clone()),
                None => state.units.remove(name),
            };
            assert!(file.save_units("b", [(name.to_string(), record)]).unwrap());
            assert_eq!(file.journal.flushes - before, u64::from(flushed), "step {i}");
            if flushed {
                at_last_flush = state.clone();
            }
        }
        assert_eq!(StateFile::read(dir.path()).unwrap(), state, "a crash loses nothing");
        // A power loss: the file as the last flush left it.
        let log = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(JOURNAL_FILE))
            .unwrap();
        log.set_len(file.journal.flushed_bytes).unwrap();
        assert_eq!(StateFile::read(dir.path()).unwrap(), at_last_flush);
        assert_eq!(at_last_flush.units.get("d"), Some(&ended(6)));
        assert!(state.units.contains_key("c") && !at_last_flush.units.contains_key("c"));
    }

    #[test]
    fn writes_only_on_change_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut file, loaded) = StateFile::load(dir.path()).unwrap();
        assert_eq!(loaded, SavedState::default());
        let s = state(&[("job-g-r0-t", 12)]);
        assert!(file.save(&s).unwrap());
        assert!(!file.save(&s).unwrap(), "unchanged state must not be written");
        assert_eq!(StateFile::read(dir.path()).unwrap(), s);
        // No temp files are left behind: the journal alone so far.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [JOURNAL_FILE]);
    }

    #[test]
    fn a_change_appends_one_line_with_only_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut file, _) = StateFile::load(dir.path()).unwrap();
        let mut s = state(&[("a", 1), ("b", 2), ("c", 3)]);
        file.save(&s).unwrap();
        file.compact().unwrap();
        let snapshot = std::fs::read(dir.path().join(STATE_FILE)).unwrap();
        s.units.insert("b".into(), unit(20));
        s.units.remove("c");
        s.units.insert("d".into(), unit(4));
        assert!(file.save(&s).unwrap());
        assert_eq!(
            std::fs::read(dir.path().join(STATE_FILE)).unwrap(),
            snapshot,
            "no rewrite"
        );
        let lines = lines(dir.path());
        assert_eq!(lines.len(), 1, "{lines:?}");
        let put: Vec<&String> = lines[0]["units"].as_object().unwrap().keys().collect();
        assert_eq!(put, ["b", "d"]);
        assert_eq!(lines[0]["removed"], serde_json::json!(["c"]));
        assert_eq!(StateFile::read(dir.path()).unwrap(), s);
    }

    #[test]
    fn saving_named_units_writes_only_those_that_differ() {
        let dir = tempfile::tempdir().unwrap();
        let (mut file, _) = StateFile::load(dir.path()).unwrap();
        file.save(&state(&[("a", 1), ("b", 2)])).unwrap();
        let same = [("a".to_string(), Some(unit(1))), ("gone".to_string(), None)];
        assert!(!file.save_units("b", same).unwrap(), "nothing differs");
        assert_eq!(lines(dir.path()).len(), 1);
        let change = [("b".to_string(), None), ("c".to_string(), Some(unit(3)))];
        assert!(file.save_units("b", change).unwrap());
        let lines = lines(dir.path());
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[1]["removed"], serde_json::json!(["b"]));
        let put: Vec<&String> = lines[1]["units"].as_object().unwrap().keys().collect();
        assert_eq!(put, ["c"], "a is not written again");
        assert_eq!(StateFile::read(dir.path()).unwrap(), state(&[("a", 1), ("c", 3)]));
        // A new boot is written even when no unit changed.
        assert!(file.save_units("other boot", []).unwrap());
        assert_eq!(StateFile::read(dir.path()).unwrap().boot_id, "other boot");
    }

    #[test]
    fn a_long_journal_is_folded_into_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (mut file, _) = StateFile::load(dir.path()).unwrap();
        let mut s = state(&[]);
        for i in 0..2_000 {
            s.units.insert("t".into(), unit(i));
            file.save(&s).unwrap();
            let journal = std::fs::metadata(dir.path().join(JOURNAL_FILE)).map_or(0, |m| m.len());
            assert!(journal <= COMPACT_AFTER_BYTES + 1024, "{journal} bytes at save {i}");
        }
        let snapshot: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(STATE_FILE)).unwrap()).unwrap();
        assert!(snapshot["generation"].as_u64().unwrap() >= 2, "{snapshot}");
        assert_eq!(StateFile::read(dir.path()).unwrap(), s);
    }

    #[test]
    fn a_crash_between_snapshot_and_journal_removal_replays_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (mut file, _) = StateFile::load(dir.path()).unwrap();
        file.save(&state(&[("a", 1)])).unwrap();
        file.save(&state(&[("a", 1), ("b", 2)])).unwrap();
        let old_journal = std::fs::read(dir.path().join(JOURNAL_FILE)).unwrap();
        // Later: "b" is gone and the journal folded in; then the old
        // journal is back, as if the removal had not happened.
        let now = state(&[("a", 1)]);
        file.save(&now).unwrap();
        file.compact().unwrap();
        assert!(!dir.path().join(JOURNAL_FILE).exists());
        std::fs::write(dir.path().join(JOURNAL_FILE), old_journal).unwrap();
        let (mut again, loaded) = StateFile::load(dir.path()).unwrap();
        assert_eq!(loaded, now, "stale lines are not replayed");
        // And the next save does not append after them.
        let next = state(&[("a", 1), ("c", 3)]);
        again.save(&next).unwrap();
        assert!(!dir.path().join(JOURNAL_FILE).exists());
        assert_eq!(StateFile::read(dir.path()).unwrap(), next);
    }

    #[test]
    fn a_torn_last_line_is_left_out_and_never_appended_after() {
        let dir = tempfile::tempdir().unwrap();
        let (mut file, _) = StateFile::load(dir.path()).unwrap();
        let first = state(&[("a", 1)]);
        file.save(&first).unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(br#"{"generation":0,"put":{"b":{"pha"#);
        std::fs::write(&path, bytes).unwrap();
        let (mut file, loaded) = StateFile::load(dir.path()).unwrap();
        assert_eq!(loaded, first);
        let next = state(&[("a", 1), ("c", 3)]);
        file.save(&next).unwrap();
        assert!(!path.exists(), "a new snapshot, not a line after the torn one");
        assert_eq!(StateFile::read(dir.path()).unwrap(), next);
    }

    #[test]
    fn damage_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), "{not json").unwrap();
        let err = StateFile::load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("state.json is damaged"), "{err}");
        std::fs::remove_file(dir.path().join(STATE_FILE)).unwrap();
        // A whole line the journal did not write, before another line.
        std::fs::write(
            dir.path().join(JOURNAL_FILE),
            "{\"bootId\":\"b\",\"units\":7}\n{\"bootId\":\"b\"}\n",
        )
        .unwrap();
        let err = StateFile::load(dir.path()).err().unwrap();
        assert_eq!(err.path(), dir.path().join(JOURNAL_FILE));
        assert!(err.to_string().contains("state.log is damaged"), "{err}");
    }

    #[test]
    fn a_snapshot_without_a_generation_is_read() {
        // As agents before the journal wrote it.
        let dir = tempfile::tempdir().unwrap();
        let old = r#"{"bootId": "b", "units": {"a": {"phase": "running", "pid": 1, "startTime": 34, "dir": "/x", "restarts": 0, "killTimeoutMs": 0}}}"#;
        std::fs::write(dir.path().join(STATE_FILE), old).unwrap();
        let (mut file, loaded) = StateFile::load(dir.path()).unwrap();
        assert_eq!(loaded, state(&[("a", 1)]));
        let next = state(&[("a", 2)]);
        file.save(&next).unwrap();
        assert_eq!(lines(dir.path())[0]["generation"], 0);
        assert_eq!(StateFile::read(dir.path()).unwrap(), next);
    }
}
