//! Helpers shared by integration tests: deadlines instead of sleeps, temp
//! dirs, paths to the built binaries.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Poll `cond` until it returns `Some`, or panic with `what` after `timeout`.
/// The poll interval is short and bounded; this is a wait for a condition,
/// not a sleep standing in for synchronisation.
pub fn wait_for<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

pub fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_k8s4r-agent"))
}

/// Directory of the shared workspace files (`../shared`), if present. Tests
/// that need it skip with a message when it is absent (a user's clone).
pub fn shared_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIP: {} is absent (present only in the project workspace and CI)",
            dir.display()
        );
        None
    }
}
