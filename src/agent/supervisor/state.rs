//! The agent's persisted state: which processes it started (pid + start
//! time + boot id), and how finished units ended, so a restarted agent
//! re-adopts instead of duplicating, and does not re-run completed work.
//!
//! Flash-friendly: the file is rewritten only when its content changes
//! (compared with the last write, so an idle agent writes nothing), as one
//! temp file + fsync + rename + fsync of the directory, so a crash leaves
//! either the old or the new state, never a torn one.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use std::io;
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "state.json";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedState {
    /// The boot the pids below belong to.
    pub boot_id: String,
    #[serde(default)]
    pub units: BTreeMap<String, SavedUnit>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SavedPhase {
    #[default]
    Running,
    Completed,
    Failed,
}

#[derive(Clone, Debug, Default, PartialEq, Hash, Serialize, Deserialize)]
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

/// The state file plus what was last written to it.
pub struct StateFile {
    path: PathBuf,
    last_written: Vec<u8>,
    /// The next content, serialised into a buffer kept between saves (it
    /// grows once, not by doubling on every save).
    next: Vec<u8>,
}

impl StateFile {
    /// Open `<data dir>/state.json`; a missing file is an empty state.
    pub fn load(data_dir: &Path) -> Result<(StateFile, SavedState), StateError> {
        let path = data_dir.join(STATE_FILE);
        let (bytes, state) = match std::fs::read(&path) {
            Ok(bytes) => {
                let state = serde_json::from_slice(&bytes).map_err(|e| StateError::Parse(path.clone(), e))?;
                (bytes, state)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (Vec::new(), SavedState::default()),
            Err(e) => return Err(StateError::Read(path, e)),
        };
        Ok((
            StateFile {
                path,
                last_written: bytes,
                next: Vec::new(),
            },
            state,
        ))
    }

    /// Write `state` if it differs from what is on disk. Returns whether it wrote.
    pub fn save(&mut self, state: &SavedState) -> Result<bool, StateError> {
        self.next.clear();
        serde_json::to_writer_pretty(&mut self.next, state)
            .map_err(|e| StateError::Write(self.path.clone(), e.into()))?;
        self.next.push(b'\n');
        if self.next == self.last_written {
            return Ok(false);
        }
        crate::atomic_file::write(&self.path, &self.next, 0o600)
            .map_err(|e| StateError::Write(self.path.clone(), e))?;
        std::mem::swap(&mut self.last_written, &mut self.next);
        Ok(true)
    }
}

/// The one atomic write (`crate::atomic_file::write`), under the name
/// `reconcile.rs` and `connected/config.rs` still call it by.
pub use crate::atomic_file::write as write_atomic;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_on_change_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut file, state) = StateFile::load(dir.path()).unwrap();
        assert_eq!(state, SavedState::default());
        let mut state = SavedState {
            boot_id: "b".into(),
            ..Default::default()
        };
        state.units.insert(
            "job-g-r0-t".into(),
            SavedUnit {
                pid: Some(12),
                start_time: Some(34),
                dir: "/x".into(),
                ..Default::default()
            },
        );
        assert!(file.save(&state).unwrap());
        assert!(!file.save(&state).unwrap(), "unchanged state must not be rewritten");
        let (_, again) = StateFile::load(dir.path()).unwrap();
        assert_eq!(again, state);
        // No temp files are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn damaged_state_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), "{not json").unwrap();
        let err = StateFile::load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("state.json is damaged"), "{err}");
    }
}
