//! Atomic file replacement, the way filesystem xDS wants it: Envoy watches a
//! directory for files moved into it, so a new version is written next to
//! the old one and `rename()`d over it. Readers see the old or the new file,
//! never a half-written one.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Replace `path` with `content` atomically (mode 0640: the agent writes,
/// the proxy reads through the directory's group). Skips the write when
/// the content is already there, so an unchanged file causes no event.
/// Returns whether the file changed. The temp file is created new
/// (O_EXCL: never through a link someone planted at its name).
pub fn replace(path: &Path, content: &str) -> io::Result<bool> {
    if fs::read(path).is_ok_and(|old| old == content.as_bytes()) {
        return Ok(false);
    }
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    // A dot name: never mistaken for a config file; pid: two writers in one
    // directory (a test and an agent) do not share a temp file.
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o640).open(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| true)
}

/// Create `dir` (and parents) with mode 0750 if missing: the agent's,
/// readable by the proxy's group (inherited from a setgid parent).
pub fn private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o750).create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_reports_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        assert!(replace(&p, "1").unwrap());
        assert!(!replace(&p, "1").unwrap());
        assert!(replace(&p, "2").unwrap());
        assert_eq!(fs::read_to_string(&p).unwrap(), "2");
        // No temp file left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn fails_cleanly_without_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(replace(&dir.path().join("missing/a.json"), "1").is_err());
    }
}
