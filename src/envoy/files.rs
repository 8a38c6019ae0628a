//! Atomic file replacement, the way filesystem xDS wants it: Envoy watches a
//! directory for files moved into it, so a new version is written next to
//! the old one and `rename()`d over it. Readers see the old or the new file,
//! never a half-written one.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// Replace `path` with `content` atomically (mode 0640: the agent writes,
/// the proxy reads through the directory's group) through the one atomic
/// write ([`crate::atomic_file::write`]). Skips the write when the content
/// is already there, so an unchanged file causes no event. Returns whether
/// the file changed.
pub fn replace(path: &Path, content: &str) -> io::Result<bool> {
    if fs::read(path).is_ok_and(|old| old == content.as_bytes()) {
        return Ok(false);
    }
    crate::atomic_file::write(path, content.as_bytes(), 0o640).map(|()| true)
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
