//! The swap: the verified download becomes the agent binary, the running
//! one is kept as `<binary>.prev`, and the agent execs the new one in place
//! (same pid: init and the tasks' parent see nothing). Every step leaves a
//! runnable binary at `<binary>` (renames are atomic, the directory is
//! synced after each), so a power cut anywhere starts a working agent.

use super::record::{self, Pending};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

fn with_suffix(binary: &Path, suffix: &str) -> PathBuf {
    let mut name = binary.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// `<binary>.prev`: the agent before the last swap.
pub fn prev_path(binary: &Path) -> PathBuf {
    with_suffix(binary, ".prev")
}

fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// Put `part` (verified) next to the binary as `<binary>.new`, mode 0755:
/// a rename on the same filesystem, else one sequential copy, fsynced.
fn stage(part: &Path, binary: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let staged = with_suffix(binary, ".new");
    let _ = std::fs::remove_file(&staged);
    if std::fs::rename(part, &staged).is_err() {
        let mut from = std::fs::File::open(part)?;
        let mut to = std::fs::OpenOptions::new().write(true).create_new(true).open(&staged)?;
        let copied = io::copy(&mut from, &mut to).and_then(|_| to.sync_all());
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&staged);
            return Err(e);
        }
        let _ = std::fs::remove_file(part);
    }
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))?;
    Ok(staged)
}

/// Keep the running binary as `<binary>.prev` (a hard link: no copy, and
/// `<binary>` never goes missing), record the swap, then rename the new
/// binary into place.
pub fn install(data_dir: &Path, binary: &Path, part: &Path, pending: &Pending) -> Result<(), String> {
    let step = |what: &str, e: io::Error| format!("{what}: {e}");
    let staged = stage(part, binary).map_err(|e| step(&format!("staging {}", binary.display()), e))?;
    let prev = prev_path(binary);
    let prev_tmp = with_suffix(binary, ".prev.tmp");
    let _ = std::fs::remove_file(&prev_tmp);
    // A hard link (same directory, so same filesystem): no copy written.
    std::fs::hard_link(binary, &prev_tmp).map_err(|e| step("keeping the running agent", e))?;
    std::fs::rename(&prev_tmp, &prev).map_err(|e| step(&format!("renaming to {}", prev.display()), e))?;
    sync_dir(binary).map_err(|e| step("syncing the binary's directory", e))?;
    record::save_pending(data_dir, pending).map_err(|e| step("recording the update", e))?;
    if let Err(e) = std::fs::rename(&staged, binary) {
        let _ = record::clear_pending(data_dir);
        let _ = std::fs::remove_file(&staged);
        return Err(step(&format!("renaming into {}", binary.display()), e));
    }
    sync_dir(binary).map_err(|e| step("syncing the binary's directory", e))
}

/// Put `<binary>.prev` back (atomically). False if there is none.
pub fn restore_prev(binary: &Path) -> io::Result<bool> {
    let prev = prev_path(binary);
    match std::fs::rename(&prev, binary) {
        Ok(()) => sync_dir(binary).map(|()| true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Become `binary` with this process's arguments and environment (same
/// pid). Returns only on failure.
pub fn exec(binary: &Path) -> io::Error {
    use crate::agent::supervisor::spawn;
    use std::os::unix::process::CommandExt;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    spawn::restore_open_files();
    let e = std::process::Command::new(binary).args(args).exec();
    // Still this agent: its tasks' descriptors need the raised limit.
    spawn::raise_open_files();
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_swap_keeps_the_previous_binary_and_restores_it() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(record::dir(&data)).unwrap();
        let binary = dir.path().join("agent");
        std::fs::write(&binary, b"old").unwrap();
        let part = record::part_path(&data, "ab");
        std::fs::write(&part, b"new").unwrap();
        let pending = Pending {
            version: "0.2.0".into(),
            ..Default::default()
        };
        install(&data, &binary, &part, &pending).unwrap();
        assert_eq!(std::fs::read(&binary).unwrap(), b"new");
        assert_eq!(std::fs::read(prev_path(&binary)).unwrap(), b"old");
        assert_eq!(record::load_pending(&data), Some(pending));
        assert!(!part.exists() && !with_suffix(&binary, ".new").exists());
        assert!(restore_prev(&binary).unwrap());
        assert_eq!(std::fs::read(&binary).unwrap(), b"old");
        assert!(!restore_prev(&binary).unwrap(), "nothing left to restore");
    }
}
