//! The agent's only `unsafe` code: starting a process ([`launch`]: a
//! clone sharing the agent's memory, and what the child does before exec),
//! borrowing raw descriptors listed in /proc/self/fd, the calling thread's
//! signal mask, and the volatile read of the version slot.
//!
//! Everything the child's setup touches is prepared by the parent before
//! the clone (the cgroup descriptor, the limits, the user's ids and
//! groups); in the child it only makes raw system calls (setsid,
//! setrlimit, write, setgroups, setgid, setuid, prctl): no allocation, no
//! locks, no stdio.

use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::io::FdFlags;
use rustix::process::{Gid, Resource, Rlimit, Uid};

pub mod launch;

/// What the child does to itself before exec.
pub struct ChildSetup {
    /// `cgroup.procs` of the task's cgroup, opened by the parent; the child
    /// writes "0" to move itself in before exec, so every descendant is born
    /// inside the cgroup (moving it from the parent after spawn would race
    /// with the task's first fork).
    pub cgroup_procs: Option<OwnedFd>,
    /// Resource limits to set, e.g. no core dumps on a robot's flash.
    pub rlimits: Vec<(Resource, Rlimit)>,
    /// The task's user, switched to last (after the cgroup join, which
    /// needs the agent's rights): supplementary groups, gid, uid.
    pub credentials: Option<Credentials>,
}

pub struct Credentials {
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
}

/// What the child does to itself before exec, in order: new session (so
/// the task is its own process group and `kill(-pgid)` reaches its whole
/// tree), limits, cgroup, then the task's user, last. Runs in the child
/// of [`launch::launch`]: raw system calls on what the parent prepared.
/// `cgroup` is the child's copy of `cgroup_procs`.
fn apply(setup: &ChildSetup, cgroup: Option<BorrowedFd<'_>>) -> Result<(), (launch::Step, i32)> {
    use launch::Step;
    let err = |step| move |e: rustix::io::Errno| (step, e.raw_os_error());
    rustix::process::setsid().map_err(err(Step::Session))?;
    for (resource, limit) in &setup.rlimits {
        rustix::process::setrlimit(*resource, *limit).map_err(err(Step::Limits))?;
    }
    if let Some(fd) = cgroup {
        rustix::io::write(fd, b"0").map_err(err(Step::Cgroup))?;
    }
    // rustix's set_thread_* are the raw per-thread system calls; the
    // child has one thread, so they change the whole process (and only it).
    if let Some(c) = &setup.credentials {
        rustix::thread::set_thread_groups(&c.groups).map_err(err(Step::User))?;
        rustix::thread::set_thread_gid(c.gid).map_err(err(Step::User))?;
        rustix::thread::set_thread_uid(c.uid).map_err(err(Step::User))?;
        // A task switched to a user stays that user: setuid-root programs
        // on the robot cannot raise it back (as systemd's NoNewPrivileges=).
        rustix::thread::set_no_new_privs(true).map_err(err(Step::NoNewPrivs))?;
    }
    Ok(())
}

/// Mark every descriptor above stderr that the agent inherited from its own
/// parent close-on-exec, once at start-up, so tasks never inherit them. The
/// agent's own descriptors are close-on-exec already (std and rustix open
/// them that way), so no per-spawn work is needed in the child.
pub fn mark_inherited_fds_cloexec() {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: `fd` was listed in /proc/self/fd a moment ago and nothing in
        // this single-threaded start-up phase closes descriptors, so it is
        // open for the duration of this borrow (the read_dir's own descriptor
        // is closed already; fcntl on a stale number just fails with EBADF).
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        if let Ok(flags) = rustix::io::fcntl_getfd(borrowed) {
            let _ = rustix::io::fcntl_setfd(borrowed, flags | FdFlags::CLOEXEC);
        }
    }
}

/// Block `signals` in the calling thread (its mask alone: other threads
/// keep theirs).
pub fn block_signals(signals: &[i32]) {
    // SAFETY: sigemptyset/sigaddset fill a local set; pthread_sigmask
    // changes only the calling thread's mask and cannot fail with a valid
    // `how` and set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        for sig in signals {
            libc::sigaddset(&raw mut set, *sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut());
    }
}

/// Which of `signals` the calling thread blocks.
#[cfg(test)]
pub fn blocked_signals(signals: &[i32]) -> Vec<i32> {
    // SAFETY: reads the calling thread's mask into a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &raw mut set);
        signals
            .iter()
            .copied()
            .filter(|s| libc::sigismember(&raw const set, *s) == 1)
            .collect()
    }
}

/// Read a static through a volatile load, so the compiler cannot use what
/// it knew at build time: the agent's version slot is patched in copies of
/// the binary (`agent::version`).
pub fn read_volatile<const N: usize>(bytes: &'static [u8; N]) -> [u8; N] {
    // SAFETY: a valid, aligned reference to initialised, immutable bytes.
    unsafe { std::ptr::read_volatile(bytes) }
}
