//! What the self-update keeps in `<data-dir>/update/`, each file written
//! through the one atomic write:
//! - `pending.json`: a swap in progress, from just before the new binary is
//!   renamed into place until the new agent reaches the server (or is
//!   rolled back): release, versions, sha256, and the start counter;
//! - `last.json`: how the last update ended (the Robot's
//!   `status.lastUpdate`), with the binary's sha256 so a refused or
//!   rolled-back binary is not tried again;
//! - `<sha256>.part`: the download (kept across restarts to resume it).

use crate::api::agent_release::{UpdateOutcome, UpdateResult};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};

pub const DIR: &str = "update";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pending {
    pub release: String,
    /// The version being installed.
    pub version: String,
    /// The version it replaces (what `.prev` holds).
    pub from_version: String,
    pub sha256: String,
    /// Starts of the new version so far.
    pub starts: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Last {
    pub result: UpdateResult,
    /// Of the binary it was about (not retried when refused or rolled back).
    #[serde(default)]
    pub sha256: String,
}

impl Last {
    pub fn new(release: &str, version: &str, sha256: &str, result: UpdateOutcome, message: String) -> Last {
        Last {
            result: UpdateResult {
                release: release.to_string(),
                version: version.to_string(),
                result,
                message,
                time: now_rfc3339(),
            },
            sha256: sha256.to_string(),
        }
    }
}

pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join(DIR)
}

pub fn part_path(data_dir: &Path, sha256: &str) -> PathBuf {
    dir(data_dir).join(format!("{sha256}.part"))
}

fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    // Bounded: these files are a few hundred bytes.
    let bytes = std::fs::read(path).ok().filter(|b| b.len() < 64 * 1024)?;
    serde_json::from_slice(&bytes).ok()
}

fn write<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    crate::atomic_file::write(path, &bytes, 0o600)
}

pub fn load_pending(data_dir: &Path) -> Option<Pending> {
    read(&dir(data_dir).join("pending.json"))
}

pub fn save_pending(data_dir: &Path, p: &Pending) -> io::Result<()> {
    write(&dir(data_dir).join("pending.json"), p)
}

pub fn clear_pending(data_dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(dir(data_dir).join("pending.json")) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

pub fn load_last(data_dir: &Path) -> Option<Last> {
    read(&dir(data_dir).join("last.json"))
}

pub fn save_last(data_dir: &Path, last: &Last) -> io::Result<()> {
    write(&dir(data_dir).join("last.json"), last)
}

/// Remove downloads, except the one named `keep` (a download to resume).
pub fn remove_parts(data_dir: &Path, keep: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(dir(data_dir)) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let Some(sha) = name.strip_suffix(".part") else {
            continue;
        };
        if Some(sha) != keep {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    crate::api::rfc3339::format_rfc3339(secs)
}
