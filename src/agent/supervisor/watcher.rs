//! The fds the supervisor sleeps on, in one epoll set: each is added once,
//! when it is opened (a task's log pipe, an adopted process's pidfd, the
//! wake-up pipe), so a wake-up costs what is ready, not one entry per task
//! (with 1,000 tasks, `poll` over 2,000 log pipes was a tenth of the
//! agent's work per change).
//!
//! Nothing is removed by hand: the kernel drops an fd from the set when
//! its last reference closes, and the agent's fds are close-on-exec, so
//! only the agent holds them (a child between fork and exec briefly does
//! too: an event of a closed fd may then come once more, and reading a
//! pipe that has nothing is harmless). An fd number the kernel reuses is
//! added again when it is opened for a new purpose.
//!
//! Pidfds are added one-shot: a process ends once, and a pidfd stays
//! readable after, which would wake the loop forever. A child's pidfd
//! names its unit ([`Watcher::watch_child`]), so its end is found without
//! waitpid(-1), which walks every child in the kernel.
//!
//! If the kernel refuses to add an fd (out of memory for the set), the
//! watcher says so once and the supervisor falls back to looking at every
//! pipe and pidfd, waking at least every [`FALLBACK_WAKE`].

use rustix::event::epoll;
use rustix::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::collections::HashMap;
use std::time::Duration;

/// How often a watcher that could not add an fd wakes to look at all.
pub const FALLBACK_WAKE: Duration = Duration::from_millis(100);
/// The longest single sleep: a timeout that does not fit epoll_wait's
/// milliseconds would need epoll_pwait2 (Linux 5.11); waking once an hour
/// to sleep again costs nothing.
const LONGEST_WAIT: Duration = Duration::from_secs(3600);
/// Events taken per wake-up; more ready fds come with the next wait.
const EVENTS: usize = 256;

/// What one wait found ready.
pub struct Ready {
    pub fds: Vec<RawFd>,
    /// A one-shot fd (a pidfd) among them: a process may have ended.
    pub once: bool,
    /// Children whose pidfd is readable: (pidfd, unit).
    pub children: Vec<(RawFd, String)>,
}

/// Marks a one-shot fd's event data (fd numbers fit in the low 32 bits).
const ONCE: u64 = 1 << 32;
/// Marks a child's pidfd (one-shot too).
const CHILD: u64 = 1 << 33;

pub struct Watcher {
    set: OwnedFd,
    /// An fd could not be added: every wake-up must look at everything.
    failed: Option<String>,
    /// The unit each log pipe and child pidfd belongs to (an fd number is
    /// one open file at a time, so one map; an entry whose fd closed is
    /// harmless: the caller checks the unit still holds that fd, and a new
    /// fd with the number replaces it).
    owners: HashMap<RawFd, String>,
}

impl Watcher {
    pub fn new() -> std::io::Result<Watcher> {
        Ok(Watcher {
            set: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            failed: None,
            owners: HashMap::new(),
        })
    }

    /// Wake when `fd` is readable or hung up (level-triggered).
    pub fn watch(&mut self, fd: BorrowedFd<'_>) {
        self.add(fd, epoll::EventFlags::IN, 0);
    }

    /// Wake once when `fd` becomes readable (a pidfd: its process ended).
    pub fn watch_once(&mut self, fd: BorrowedFd<'_>) {
        self.add(fd, epoll::EventFlags::IN | epoll::EventFlags::ONESHOT, ONCE);
    }

    /// Wake when log pipe `fd` of `unit` is readable or hung up.
    pub fn watch_log(&mut self, fd: BorrowedFd<'_>, unit: &str) {
        self.owners.insert(fd.as_raw_fd(), unit.to_string());
        self.watch(fd);
    }

    /// The unit log pipe or child pidfd `fd` was last watched for.
    pub fn unit_of(&self, fd: RawFd) -> Option<&str> {
        self.owners.get(&fd).map(String::as_str)
    }

    /// Log pipe or child pidfd `fd` is done with.
    pub fn forget(&mut self, fd: RawFd) {
        self.owners.remove(&fd);
    }

    /// Wake once when child `fd` (its pidfd) ends; it belongs to `unit`.
    pub fn watch_child(&mut self, fd: BorrowedFd<'_>, unit: &str) {
        self.owners.insert(fd.as_raw_fd(), unit.to_string());
        self.add(fd, epoll::EventFlags::IN | epoll::EventFlags::ONESHOT, CHILD);
    }

    /// Child pidfd `fd` woke the loop, yet its process still runs (a
    /// stale event): wake once more when it ends.
    pub fn rearm_child(&mut self, fd: BorrowedFd<'_>) {
        let data = epoll::EventData::new_u64(fd.as_raw_fd() as u64 | CHILD);
        let flags = epoll::EventFlags::IN | epoll::EventFlags::ONESHOT;
        if let Err(e) = epoll::modify(&self.set, fd, data, flags) {
            self.failed.get_or_insert_with(|| e.to_string());
        }
    }

    fn add(&mut self, fd: BorrowedFd<'_>, flags: epoll::EventFlags, mark: u64) {
        let data = epoll::EventData::new_u64(fd.as_raw_fd() as u64 | mark);
        if let Err(e) = epoll::add(&self.set, fd, data, flags) {
            self.failed.get_or_insert_with(|| e.to_string());
        }
    }

    /// Why the watcher looks at everything, once: the first refused add.
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Sleep until something is ready or `timeout` (None: no limit) is up;
    /// returns the fds found ready (none after a signal), and whether a
    /// one-shot one was among them.
    pub fn wait(&self, timeout: Option<Duration>) -> Ready {
        let fallback = self.failed.is_some().then_some(FALLBACK_WAKE);
        let timeout = [timeout, fallback, Some(LONGEST_WAIT)].into_iter().flatten().min();
        let ts = timeout.map(|t| rustix::time::Timespec {
            tv_sec: t.as_secs() as i64,
            tv_nsec: t.subsec_nanos().into(),
        });
        let mut events = Vec::with_capacity(EVENTS);
        // EINTR (a signal) is just a wake-up; level-triggered fds that are
        // still ready show again next time.
        let _ = epoll::wait(&self.set, rustix::buffer::spare_capacity(&mut events), ts.as_ref());
        let mut ready = Ready {
            fds: Vec::with_capacity(events.len()),
            once: false,
            children: Vec::new(),
        };
        for e in &events {
            // A copy: the event is packed on x86_64.
            let data = e.data.u64();
            let fd = (data & !(ONCE | CHILD)) as RawFd;
            if data & CHILD != 0 {
                if let Some(unit) = self.owners.get(&fd) {
                    ready.children.push((fd, unit.clone()));
                }
                continue;
            }
            ready.once |= data & ONCE != 0;
            ready.fds.push(fd);
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fd::AsFd;
    use std::io::Write;
    use std::time::Instant;

    #[test]
    fn a_wait_returns_what_is_ready_and_a_closed_fd_leaves_the_set() {
        let mut w = Watcher::new().unwrap();
        let (r1, w1) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let (r2, w2) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        w.watch(r1.as_fd());
        w.watch(r2.as_fd());
        let mut w2 = std::fs::File::from(w2);
        w2.write_all(b"x").unwrap();
        assert_eq!(w.wait(Some(Duration::from_secs(5))).fds, [r2.as_raw_fd()]);
        // Level-triggered: unread, it shows again.
        assert_eq!(w.wait(Some(Duration::ZERO)).fds, [r2.as_raw_fd()]);
        drop(r2);
        let started = Instant::now();
        assert!(
            w.wait(Some(Duration::from_millis(50))).fds.is_empty(),
            "closed: gone from the set"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(49),
            "it slept until the timeout"
        );
        // A hung-up pipe is ready (the pump reads its end of stream).
        drop(w1);
        let hung_up = w.wait(Some(Duration::from_secs(5)));
        assert_eq!((hung_up.fds, hung_up.once), (vec![r1.as_raw_fd()], false));
        assert!(w.failed().is_none());
    }

    #[test]
    fn a_one_shot_fd_wakes_once() {
        let mut w = Watcher::new().unwrap();
        let (r, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        w.watch_once(r.as_fd());
        std::fs::File::from(wr).write_all(b"x").unwrap();
        let woke = w.wait(Some(Duration::from_secs(5)));
        assert_eq!((woke.fds, woke.once), (vec![r.as_raw_fd()], true));
        assert!(
            w.wait(Some(Duration::ZERO)).fds.is_empty(),
            "still readable, but reported once"
        );
    }

    #[test]
    fn an_fd_that_cannot_be_added_makes_every_wait_short() {
        let mut w = Watcher::new().unwrap();
        // A regular file cannot be in an epoll set (EPERM).
        let file = tempfile::tempfile().unwrap();
        w.watch(file.as_fd());
        assert!(w.failed().is_some());
        let started = Instant::now();
        w.wait(None);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "woke after {FALLBACK_WAKE:?}"
        );
    }

    /// A log pipe and a child's pidfd come back with their units; a pidfd
    /// fires once; a forgotten pipe names no unit.
    #[test]
    fn pipes_and_children_name_their_units() {
        let mut w = Watcher::new().unwrap();
        let (r, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        w.watch_log(r.as_fd(), "a");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_child(&child),
            rustix::process::PidfdFlags::empty(),
        )
        .unwrap();
        w.watch_child(pidfd.as_fd(), "b");
        std::fs::File::from(wr).write_all(b"x").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut children = Vec::new();
        while children.is_empty() && Instant::now() < deadline {
            let ready = w.wait(Some(Duration::from_millis(100)));
            assert!(!ready.once, "a child's pidfd is not an adopted one");
            children.extend(ready.children);
            if !ready.fds.is_empty() {
                assert_eq!(ready.fds, [r.as_raw_fd()]);
                assert_eq!(w.unit_of(r.as_raw_fd()), Some("a"));
            }
        }
        assert_eq!(children, [(pidfd.as_raw_fd(), "b".to_string())]);
        assert!(w.wait(Some(Duration::ZERO)).children.is_empty(), "one-shot");
        child.wait().unwrap();
        w.forget(r.as_raw_fd());
        assert_eq!(w.unit_of(r.as_raw_fd()), None);
    }
}
