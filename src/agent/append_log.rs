//! Appending lines to a file durably, the one way the agent records a
//! change without rewriting a whole file (the assignments log, the
//! supervisor's state journal): one `write` of the line with its newline,
//! then one fdatasync. No rename and no directory fsync per change (only
//! when the file is created), so a change costs one small write and one
//! flush instead of a temp file, two fsyncs and a rename.
//!
//! An owner whose line must be durable before some later action, not
//! before the next step, appends it unflushed and hands the flush on as an
//! [`Owed`]: whoever is about to take that action settles it first (the
//! assignments log: a delta that stops a task is flushed before the
//! supervisor stops anything, not before it starts the delta's new tasks).
//!
//! A crash can tear only the last line; [`complete_lines`] leaves a line
//! without its newline out. Appending after a torn line would glue the
//! next line to it, so an owner that finds one writes a new snapshot (and
//! removes the log) before appending again; so does an owner whose append
//! failed.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// An open log and how many bytes it holds.
#[derive(Debug, Default)]
pub struct AppendLog {
    /// Shared with an [`Owed`] flush of it.
    file: Option<Arc<File>>,
    bytes: u64,
    /// How many appends were flushed, and the file's length at the last
    /// flush (what a power loss would leave): what tests check.
    #[cfg(test)]
    pub flushes: u64,
    #[cfg(test)]
    pub flushed_bytes: u64,
}

impl AppendLog {
    /// A log whose file already holds `bytes` (of complete lines).
    pub fn with_bytes(bytes: u64) -> AppendLog {
        AppendLog {
            file: None,
            bytes,
            #[cfg(test)]
            flushes: 0,
            #[cfg(test)]
            flushed_bytes: bytes,
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Append `line` (a newline is added) to the file at `path`, creating
    /// it (0600, never through a symlink) and making the new name durable
    /// on first use; then fdatasync.
    pub fn append(&mut self, path: &Path, line: Vec<u8>) -> io::Result<()> {
        self.write(path, line)?.sync_data()?;
        #[cfg(test)]
        {
            self.flushes += 1;
            self.flushed_bytes = self.bytes;
        }
        Ok(())
    }

    /// Append `line` as [`Self::append`] does, without the fdatasync: a
    /// crash of the agent loses nothing (the kernel has it), a power loss
    /// may lose it and every line after the last flushed one, never one
    /// before (the next `append` flushes this one too). For an owner whose
    /// line can be rebuilt after a power loss.
    pub fn append_unflushed(&mut self, path: &Path, line: Vec<u8>) -> io::Result<()> {
        self.write(path, line).map(|_| ())
    }

    /// Append `line` as [`Self::append_unflushed`] does and make `owed`
    /// owe its flush: the line (and every one before it) is durable once
    /// the owed flush is settled ([`Owed::settle`]) or a later `append`
    /// returns.
    pub fn append_owed(&mut self, path: &Path, line: Vec<u8>, owed: &Owed) -> io::Result<()> {
        self.write(path, line)?;
        let file = self.file.clone().expect("written above");
        *owed.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
        Ok(())
    }

    fn write(&mut self, path: &Path, mut line: Vec<u8>) -> io::Result<&File> {
        line.push(b'\n');
        if self.file.is_none() {
            let created = !path.exists();
            let file = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(path)?;
            if created {
                let dir = path
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                File::open(dir)?.sync_all()?;
            }
            self.file = Some(Arc::new(file));
        }
        let mut file: &File = self.file.as_deref().expect("opened above");
        file.write_all(&line)?;
        self.bytes = self.bytes.saturating_add(line.len() as u64);
        Ok(file)
    }

    /// Close and remove the file at `path` (gone already is fine). The
    /// removal is made durable by the caller's next directory fsync (its
    /// snapshot's atomic write).
    pub fn remove(&mut self, path: &Path) -> io::Result<()> {
        self.file = None;
        self.bytes = 0;
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// A flush of an [`AppendLog`] that one thread owes and another settles
/// before acting on what the log says (module doc). Cloned handles share
/// one debt; settling a debt already settled costs nothing.
#[derive(Clone, Debug, Default)]
pub struct Owed {
    pending: Arc<Mutex<Option<Arc<File>>>>,
    /// How many settles flushed something: what tests check.
    #[cfg(test)]
    pub flushes: Arc<std::sync::atomic::AtomicU64>,
}

impl Owed {
    /// Flush the log if a line of it waits for one (fdatasync: that line
    /// and every one before it). Ok(true) when something was flushed. On an
    /// error the debt is dropped: the caller acts anyway (as after any
    /// failed write of the log) and says so.
    pub fn settle(&self) -> io::Result<bool> {
        let Some(file) = self.pending.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return Ok(false);
        };
        file.sync_data()?;
        #[cfg(test)]
        self.flushes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(true)
    }

    /// Owe a flush of `file` (a log another owner appended to).
    pub fn owe(&self, file: File) {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(file));
    }

    /// Forget the debt: what it was for is durable another way (the log
    /// was folded into a snapshot written atomically).
    pub fn forgive(&self) {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Is a flush owed?
    pub fn is_owed(&self) -> bool {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }
}

/// The lines of `bytes` that end in a newline (each with it), in order;
/// a torn last line is left out.
pub fn complete_lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split_inclusive(|b| *b == b'\n').filter(|l| l.ends_with(b"\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn appends_complete_lines_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let mut log = AppendLog::default();
        log.append(&path, b"one".to_vec()).unwrap();
        log.append(&path, b"two".to_vec()).unwrap();
        assert_eq!(log.bytes(), 8);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes, b"one\ntwo\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        log.remove(&path).unwrap();
        assert!(!path.exists());
        assert_eq!(log.bytes(), 0);
        log.remove(&path).unwrap();
    }

    #[test]
    fn a_torn_last_line_is_left_out() {
        let lines: Vec<&[u8]> = complete_lines(b"a\nb\nto").collect();
        assert_eq!(lines, [&b"a\n"[..], &b"b\n"[..]]);
        assert_eq!(complete_lines(b"").count(), 0);
    }

    #[test]
    fn never_appends_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let path = dir.path().join("x.log");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(AppendLog::default().append(&path, b"no".to_vec()).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }
}
