//! Task stdout/stderr: captured through a named pipe per stream and written
//! by the agent to `<task dir>/logs/{stdout,stderr}` with size-capped
//! rotation (`stdout`, `stdout.1`, ... `stdout.<files-1>`).
//!
//! Why a FIFO and not a plain file or an anonymous pipe:
//! - a file the task appends to directly cannot be capped: a fast writer
//!   outruns any copy-truncate, and copy-truncate loses lines;
//! - an anonymous pipe dies with the agent, so a task would get SIGPIPE when
//!   the agent restarts.
//!
//! The task's end of the FIFO is opened read-write, so the FIFO always has a
//! reader while the task lives: when the agent is down, output waits in the
//! pipe buffer (the task blocks once 64 KiB are pending) and the next agent
//! re-opens the FIFO by name and carries on. Nothing is lost, and the cap
//! holds exactly because the agent is the only writer of the log files.

use rustix::fd::OwnedFd;
use rustix::fs::{FileType, Mode, OFlags};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub const STREAMS: [&str; 2] = ["stdout", "stderr"];

/// Size cap per file and number of files kept per stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLimits {
    pub max_bytes: u64,
    pub max_files: u32,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_bytes: 1024 * 1024,
            max_files: 3,
        }
    }
}

#[derive(Debug)]
pub enum LogError {
    CreateFifo(PathBuf, io::Error),
    Open(PathBuf, io::Error),
    Write(PathBuf, io::Error),
    Rotate(PathBuf, io::Error),
    NotFound(String),
}

impl std::fmt::Display for LogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogError::CreateFifo(p, e) => write!(f, "creating log pipe {}: {e}", p.display()),
            LogError::Open(p, e) => write!(f, "opening {}: {e}", p.display()),
            LogError::Write(p, e) => write!(f, "writing {}: {e}", p.display()),
            LogError::Rotate(p, e) => write!(f, "rotating {}: {e}", p.display()),
            LogError::NotFound(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for LogError {}

fn fifo_name(stream: &str) -> String {
    format!(".{stream}.pipe")
}

/// Open the logs directory itself without following a symlink: the task
/// owns its directory and could swap `logs` for a link to /etc, and the
/// agent (often root) must never write through it. Files inside are opened
/// relative to this descriptor, also with O_NOFOLLOW.
fn open_dir(logs_dir: &Path) -> Result<OwnedFd, LogError> {
    rustix::fs::open(
        logs_dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| LogError::Open(logs_dir.to_path_buf(), e.into()))
}

/// `openat(O_NOFOLLOW)` + a check of what was opened: the expected file
/// type, and a single link (a hard link to a file elsewhere is refused).
fn open_checked(dir: &OwnedFd, name: &str, flags: OFlags, want: FileType, shown: &Path) -> Result<File, LogError> {
    let fd = rustix::fs::openat(
        dir,
        name,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o640),
    )
    .map_err(|e| LogError::Open(shown.to_path_buf(), e.into()))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| LogError::Open(shown.to_path_buf(), e.into()))?;
    if FileType::from_raw_mode(st.st_mode) != want || st.st_nlink > 1 {
        return Err(LogError::Open(
            shown.to_path_buf(),
            io::Error::new(
                io::ErrorKind::InvalidData,
                "not the agent's log file (wrong type or extra links); refusing it",
            ),
        ));
    }
    Ok(File::from(fd))
}

/// A size-capped, rotated log file.
pub struct LogSink {
    dir: OwnedFd,
    name: String,
    path: PathBuf,
    file: File,
    size: u64,
    limits: LogLimits,
}

impl LogSink {
    pub fn open(logs_dir: &Path, name: &str, limits: LogLimits) -> Result<Self, LogError> {
        LogSink::open_in(open_dir(logs_dir)?, logs_dir, name, limits)
    }

    /// [`Self::open`] with `logs_dir` open already (as `dir`, kept for
    /// rotations).
    fn open_in(dir: OwnedFd, logs_dir: &Path, name: &str, limits: LogLimits) -> Result<Self, LogError> {
        let path = logs_dir.join(name);
        let file = open_checked(
            &dir,
            name,
            OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE,
            FileType::RegularFile,
            &path,
        )?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(LogSink {
            dir,
            name: name.to_string(),
            path,
            file,
            size,
            limits,
        })
    }

    /// Append `buf`, rotating so that no file ever exceeds the cap. A
    /// rotation point is moved back to the last newline when there is one, so
    /// lines are not split between files unless a line is longer than a file.
    pub fn write(&mut self, mut buf: &[u8]) -> Result<(), LogError> {
        while !buf.is_empty() {
            let room = self.limits.max_bytes.saturating_sub(self.size) as usize;
            if buf.len() <= room {
                self.append(buf)?;
                return Ok(());
            }
            let cut = match buf[..room].iter().rposition(|b| *b == b'\n') {
                Some(nl) => nl + 1,
                // No newline fits: split the line only if the file is empty
                // (a line longer than a whole file), else start a new file.
                None if self.size == 0 => room.max(1),
                None => 0,
            };
            self.append(&buf[..cut])?;
            buf = &buf[cut..];
            self.rotate()?;
        }
        Ok(())
    }

    fn append(&mut self, buf: &[u8]) -> Result<(), LogError> {
        if buf.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(buf)
            .map_err(|e| LogError::Write(self.path.clone(), e))?;
        self.size += buf.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), LogError> {
        let keep = self.limits.max_files.max(1);
        if keep == 1 {
            self.file
                .set_len(0)
                .map_err(|e| LogError::Rotate(self.path.clone(), e))?;
            self.size = 0;
            return Ok(());
        }
        let numbered = |n: u32| format!("{}.{n}", self.name);
        for n in (0..keep - 1).rev() {
            let from = if n == 0 { self.name.clone() } else { numbered(n) };
            match rustix::fs::renameat(&self.dir, from.as_str(), &self.dir, numbered(n + 1).as_str()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(LogError::Rotate(self.path.with_file_name(from), e.into())),
            }
        }
        let fresh = open_checked(
            &self.dir,
            &self.name,
            OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE,
            FileType::RegularFile,
            &self.path,
        )?;
        self.file = fresh;
        self.size = 0;
        Ok(())
    }
}

/// The agent's end of one task stream: reads the FIFO, writes the sink.
pub struct LogPump {
    fifo: File,
    sink: LogSink,
}

impl LogPump {
    pub fn fd(&self) -> rustix::fd::BorrowedFd<'_> {
        use rustix::fd::AsFd;
        self.fifo.as_fd()
    }

    /// Copy what is pending, at most [`MAX_DRAIN`] bytes: a task that
    /// writes without pause must not keep the supervision loop here (the
    /// FIFO stays readable, so the loop comes back at once). Returns `true`
    /// at end of stream (every writer, i.e. the task and all its
    /// descendants, has gone).
    pub fn drain(&mut self) -> Result<bool, LogError> {
        // Most wake-ups carry a line or two: read those into a small buffer
        // (zeroing 64 KiB on every wake-up showed up as the agent's top cost
        // in the supervision benchmark); a short read means the pipe is
        // empty for now. Only a busy pipe gets the big buffer.
        let mut small = [0u8; 4096];
        loop {
            match self.fifo.read(&mut small) {
                Ok(0) => return Ok(true),
                Ok(n) => {
                    self.sink.write(&small[..n])?;
                    if n < small.len() {
                        return Ok(false);
                    }
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(LogError::Write(self.sink.path.clone(), e)),
            }
        }
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..MAX_DRAIN / buf.len() {
            match self.fifo.read(&mut buf) {
                Ok(0) => return Ok(true),
                Ok(n) => self.sink.write(&buf[..n])?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(LogError::Write(self.sink.path.clone(), e)),
            }
        }
        Ok(false)
    }
}

/// Bytes one `LogPump::drain` call copies at most.
pub const MAX_DRAIN: usize = 1024 * 1024;

/// Create (if needed) the FIFO of `stream` under `logs_dir` and open both
/// ends: the agent's pump and the task's write end (read-write, see the
/// module comment).
pub fn open_stream(logs_dir: &Path, stream: &str, limits: LogLimits) -> Result<(LogPump, File), LogError> {
    // The directory is opened once for the FIFO, both its ends and the log
    // file (each open walks the whole path).
    let dir = open_dir(logs_dir)?;
    let name = fifo_name(stream);
    let shown = logs_dir.join(&name);
    let fifo_mode = Mode::from_raw_mode(0o600);
    match rustix::fs::mkfifoat(&dir, name.as_str(), fifo_mode) {
        Ok(()) => {}
        Err(rustix::io::Errno::EXIST) => {
            // Whatever sits there must be our FIFO; anything else is replaced.
            let is_fifo = rustix::fs::statat(&dir, name.as_str(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Fifo);
            if !is_fifo {
                let _ = rustix::fs::unlinkat(&dir, name.as_str(), rustix::fs::AtFlags::empty());
                rustix::fs::mkfifoat(&dir, name.as_str(), fifo_mode)
                    .map_err(|e| LogError::CreateFifo(shown.clone(), e.into()))?;
            }
        }
        Err(e) => return Err(LogError::CreateFifo(shown, e.into())),
    }
    let reader = open_reader(&dir, &name, &shown)?;
    let task_end = open_checked(&dir, &name, OFlags::RDWR, FileType::Fifo, &shown)?;
    let sink = LogSink::open_in(dir, logs_dir, stream, limits)?;
    Ok((LogPump { fifo: reader, sink }, task_end))
}

/// Open the agent's end of an existing stream (after an agent restart).
pub fn reopen_stream(logs_dir: &Path, stream: &str, limits: LogLimits) -> Result<LogPump, LogError> {
    let dir = open_dir(logs_dir)?;
    let name = fifo_name(stream);
    let reader = open_reader(&dir, &name, &logs_dir.join(&name))?;
    let sink = LogSink::open_in(dir, logs_dir, stream, limits)?;
    Ok(LogPump { fifo: reader, sink })
}

/// The agent's (reading) end of a stream's FIFO.
fn open_reader(dir: &OwnedFd, name: &str, shown: &Path) -> Result<File, LogError> {
    open_checked(dir, name, OFlags::RDONLY | OFlags::NONBLOCK, FileType::Fifo, shown)
}

/// Log files are read without following a symlink: a task could plant one
/// to make `k8s4r-agent logs` (often run as root) print another file.
fn open_for_reading(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// All files of one stream, oldest first.
fn stream_files(logs_dir: &Path, stream: &str) -> Vec<PathBuf> {
    let mut files: Vec<(u32, PathBuf)> = std::fs::read_dir(logs_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let n = if name == stream {
                0
            } else {
                name.strip_prefix(stream)?.strip_prefix('.')?.parse().ok()?
            };
            Some((n, logs_dir.join(name)))
        })
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    files.into_iter().map(|(_, p)| p).collect()
}

/// The last `lines` lines of a stream across its rotated files (all of it
/// when `lines` is None).
pub fn read_tail(logs_dir: &Path, stream: &str, lines: Option<usize>) -> Vec<u8> {
    read_tail_and_current(logs_dir, stream, lines).0
}

/// [`read_tail`], plus the current file positioned right after what was
/// read, for [`follow`] to continue from without a gap.
pub fn read_tail_and_current(logs_dir: &Path, stream: &str, lines: Option<usize>) -> (Vec<u8>, Option<File>) {
    let mut all = Vec::new();
    let mut current = None;
    let current_path = logs_dir.join(stream);
    for f in stream_files(logs_dir, stream) {
        if let Ok(mut file) = open_for_reading(&f) {
            let _ = file.read_to_end(&mut all);
            if f == current_path {
                current = Some(file);
            }
        }
    }
    (last_lines(all, lines), current)
}

fn last_lines(all: Vec<u8>, lines: Option<usize>) -> Vec<u8> {
    match lines {
        None => all,
        Some(n) => {
            let body = all.strip_suffix(b"\n").unwrap_or(&all);
            let start = body
                .iter()
                .enumerate()
                .rev()
                .filter(|(_, b)| **b == b'\n')
                .nth(n.saturating_sub(1))
                .map_or(0, |(i, _)| i + 1);
            if n == 0 {
                Vec::new()
            } else {
                all[start..].to_vec()
            }
        }
    }
}

/// Print new output of the current file forever, following rotations (a
/// short sleep between checks: this is a user command, not the agent).
/// Starts from `from` (see [`read_tail_and_current`]), else at the end.
pub fn follow(logs_dir: &Path, stream: &str, from: Option<File>, out: &mut dyn Write) -> io::Result<()> {
    let path = logs_dir.join(stream);
    let mut file = match from {
        Some(f) => f,
        None => {
            let mut f = open_for_reading(&path)?;
            f.seek(SeekFrom::End(0))?;
            f
        }
    };
    let mut ino = file.metadata()?.ino();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n > 0 {
            out.write_all(&buf[..n])?;
            out.flush()?;
            continue;
        }
        // Rotated away? Finish the old file (done above), then switch.
        if let Ok(meta) = std::fs::metadata(&path) {
            if meta.ino() != ino {
                file = open_for_reading(&path)?;
                ino = meta.ino();
                continue;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_caps_every_file_and_keeps_lines_whole() {
        let dir = tempfile::tempdir().unwrap();
        let limits = LogLimits {
            max_bytes: 100,
            max_files: 3,
        };
        let mut sink = LogSink::open(dir.path(), "stdout", limits).unwrap();
        for i in 0..200 {
            sink.write(format!("line {i:04}\n").as_bytes()).unwrap();
        }
        let files = stream_files(dir.path(), "stdout");
        assert_eq!(files.len(), 3);
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            assert!(text.len() <= 100, "{} is {} bytes", f.display(), text.len());
            assert!(text.ends_with('\n'));
        }
        let tail = read_tail(dir.path(), "stdout", Some(2));
        assert_eq!(tail, b"line 0198\nline 0199\n");
        // A line longer than a file is split rather than dropped.
        sink.write(&[b'x'; 250]).unwrap();
        for f in stream_files(dir.path(), "stdout") {
            assert!(std::fs::metadata(f).unwrap().len() <= 100);
        }
    }

    #[test]
    fn symlinks_and_hard_links_are_never_written_through() {
        let task = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("passwd");
        std::fs::write(&victim, "root\n").unwrap();
        let limits = LogLimits::default();
        // logs -> elsewhere
        std::os::unix::fs::symlink(outside.path(), task.path().join("logs")).unwrap();
        assert!(open_stream(&task.path().join("logs"), "stdout", limits).is_err());
        // logs/stdout -> a file elsewhere, by symlink or by hard link
        let logs = task.path().join("real-logs");
        std::fs::create_dir(&logs).unwrap();
        std::os::unix::fs::symlink(&victim, logs.join("stdout")).unwrap();
        assert!(LogSink::open(&logs, "stdout", limits).is_err());
        std::fs::remove_file(logs.join("stdout")).unwrap();
        std::fs::hard_link(&victim, logs.join("stdout")).unwrap();
        assert!(LogSink::open(&logs, "stdout", limits).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root\n");
        // A regular file where the FIFO belongs is replaced by a FIFO.
        std::fs::remove_file(logs.join("stdout")).unwrap();
        std::fs::write(logs.join(".stdout.pipe"), "junk").unwrap();
        let (mut pump, mut task_end) = open_stream(&logs, "stdout", limits).unwrap();
        task_end.write_all(b"hello\n").unwrap();
        assert!(!pump.drain().unwrap());
        assert_eq!(std::fs::read_to_string(logs.join("stdout")).unwrap(), "hello\n");
    }

    #[test]
    fn reading_logs_does_not_follow_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "token\n").unwrap();
        std::fs::write(dir.path().join("stdout.1"), "old\n").unwrap();
        std::os::unix::fs::symlink(&secret, dir.path().join("stdout")).unwrap();
        assert_eq!(read_tail(dir.path(), "stdout", None), b"old\n");
    }

    #[test]
    fn tail_of_short_and_empty_streams() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_tail(dir.path(), "stdout", Some(3)).is_empty());
        std::fs::write(dir.path().join("stdout"), "a\nb\n").unwrap();
        assert_eq!(read_tail(dir.path(), "stdout", Some(5)), b"a\nb\n");
        assert_eq!(read_tail(dir.path(), "stdout", Some(1)), b"b\n");
        assert_eq!(read_tail(dir.path(), "stdout", Some(0)), b"");
    }
}
