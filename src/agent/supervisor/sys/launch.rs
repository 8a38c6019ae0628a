//! Starting a process without copying the agent: clone(2) with `CLONE_VM`,
//! as musl's and glibc's `posix_spawn` do. A fork copies the agent's page
//! tables and then takes a copy-on-write fault for every page either side
//! writes before the child's exec; with 100 tasks that was about a fifth of
//! the agent's CPU per start (perf, issue 20). Here the child borrows the
//! agent's memory and the calling thread waits until the child has exec'd
//! or failed.
//!
//! That wait is bounded ([`START_WITHIN`]), which is why there is no
//! `CLONE_VFORK` (posix_spawn's): its wait ends only with the child's exec
//! or death. Once the child has switched to the task's user, any process
//! of that user may send it SIGSTOP, which no mask blocks; under vfork
//! that would hold the agent's supervision loop for as long as it liked.
//! Here a child that has not exec'd in time is killed and the start fails.
//!
//! Written by hand because nothing well kept does it: `std::process::Command`
//! forks whenever a pre-exec hook is set, and `posix_spawn` cannot join a
//! cgroup, switch users or set NoNewPrivs, all of which must happen in the
//! child before exec (see [`ChildSetup`]).
//!
//! What makes borrowing the agent's memory safe:
//! - Everything the child reads is built by the parent before the clone:
//!   the paths to try, argv and envp (C strings and pointer arrays), the
//!   directory, descriptors, limits and the user's ids. The child allocates
//!   nothing, takes no lock and makes system calls only (rustix's raw ones,
//!   or libc's thin wrappers of one call), so the agent's other threads,
//!   which keep running, never meet a half-changed heap.
//! - The child never returns into the parent's frames: it runs on a stack
//!   of its own (a heap buffer the parent frees only once the child has
//!   exec'd or is gone) and ends in exec or _exit. The parent only waits
//!   meanwhile, touching nothing the child reads.
//! - No agent signal handler runs in the child: the parent blocks every
//!   signal across the clone; the child sets every caught signal back to
//!   its default (its handler table is its own copy: no `CLONE_SIGHAND`),
//!   and SIGPIPE too, which Rust's runtime ignores, before it unblocks them
//!   (an empty mask, as `std::process::Command` leaves it).
//! - The child's system calls change only the child: the user switch uses
//!   the raw per-thread calls (libc's setuid would ask every agent thread
//!   to switch too).
//! - A failure comes back through a close-on-exec pipe (which step, which
//!   errno), not through the shared memory, so the result is the same where
//!   the clone cannot share memory and is a fork (qemu-user refuses it).
//!
//! Nor does a start copy the agent's descriptor table, which holds four
//! descriptors per task (its two log FIFOs and log files): copying it and
//! closing it again at exec cost ≈ 1 ms per start with 1,000 tasks (a
//! fifth of the agent's CPU). The descriptors the child needs are first
//! duplicated onto a few low numbers reserved at start-up ([`reserve`]);
//! the child shares the agent's table (`CLONE_FILES`) and its first act on
//! it is `close_range(first unreserved, ~0, CLOSE_RANGE_UNSHARE)`, which
//! gives it a table of the numbers below only (Linux 5.9; before, or where
//! the clone cannot share the table, the child copies the whole table, as
//! a fork would). It then says so on the report pipe, and the agent puts
//! /dev/null back in the slots, so that the child's exec closes the last
//! copy of the pipe's write end.
//!
//! The program is looked up like musl's execvp: a name without a slash is
//! tried in each directory of the child's `PATH` (musl's default when it
//! has none), past directories where it is missing or not executable.

use super::ChildSetup;
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use rustix::io::DupFlags;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The search path of musl's execvp when the environment has no PATH.
const DEFAULT_PATH: &str = "/usr/local/bin:/bin:/usr/bin";

/// The child's stack. It makes system calls only, a few hundred bytes deep
/// (musl's posix_spawn gives its child 5 KiB); debug builds need more.
const CHILD_STACK: usize = 32 * 1024;

#[repr(C, align(16))]
struct ChildStack([u8; CHILD_STACK]);

/// The reserved numbers: the child's stdin, stdout, stderr, its report
/// pipe and its cgroup.procs, in this order.
const SLOTS: usize = 5;
const REPORT: usize = 3;
const CGROUP: usize = 4;

/// Low descriptor numbers, each holding /dev/null between starts, onto
/// which a start duplicates what its child needs (module doc). Behind a
/// mutex: one start at a time uses them.
struct Slots {
    fds: [OwnedFd; SLOTS],
    null: OwnedFd,
    /// The first number the child does not need.
    keep_below: u32,
}

static RESERVED: Mutex<Option<Slots>> = Mutex::new(None);

/// Set when the clone could not share the memory and descriptor table
/// (qemu-user refuses `CLONE_VM` and `CLONE_FILES` for a process): later
/// starts go straight to a fork.
static NO_SHARED_CLONE: AtomicBool = AtomicBool::new(false);

/// How long a start may take from the clone to the exec (normally well
/// under a millisecond) before the child is killed.
pub const START_WITHIN: Duration = Duration::from_secs(10);

/// The child's words on the report pipe: its table is its own (the agent
/// may let its copies of the slots go), or it failed (then the step and
/// errno, 4 bytes each).
const OWN_TABLE: u8 = b'u';
const FAILED: u8 = b'f';

/// Reserve the low descriptor numbers now, while the agent holds few
/// (the supervisor calls it at start-up; otherwise the first start does).
pub fn reserve() -> io::Result<()> {
    Slots::reserved(&mut RESERVED.lock().unwrap_or_else(PoisonError::into_inner)).map(|_| ())
}

impl Slots {
    /// The reserved slots, opened on first use.
    fn reserved(reserved: &mut Option<Slots>) -> io::Result<&mut Slots> {
        match reserved {
            Some(slots) => Ok(slots),
            None => Ok(reserved.insert(Slots::open()?)),
        }
    }

    fn open() -> io::Result<Slots> {
        let null = || {
            rustix::fs::open(
                "/dev/null",
                rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
        };
        let mut fds = Vec::with_capacity(SLOTS);
        while fds.len() < SLOTS {
            let fd = null()?;
            if fd.as_raw_fd() <= 2 {
                // The agent was started with this one closed: /dev/null
                // stays there, so nothing else lands on it.
                let _ = fd.into_raw_fd();
                continue;
            }
            fds.push(fd);
        }
        let keep_below = fds.iter().map(|fd| fd.as_raw_fd()).max().unwrap_or(2) as u32 + 1;
        let fds: [OwnedFd; SLOTS] = fds.try_into().map_err(|_| io::Error::other("descriptor slots"))?;
        Ok(Slots {
            fds,
            null: null()?,
            keep_below,
        })
    }

    /// Back to /dev/null: the agent holds no copy of what a child got.
    fn clear(&mut self) {
        for slot in &mut self.fds {
            let _ = rustix::io::dup3(&self.null, slot, DupFlags::CLOEXEC);
        }
    }
}

/// Where a start failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Prepare,
    Clone,
    Stdio,
    Chdir,
    Session,
    Limits,
    Cgroup,
    User,
    NoNewPrivs,
    Exec,
    Start,
}

const STEPS: [Step; 11] = [
    Step::Prepare,
    Step::Clone,
    Step::Stdio,
    Step::Chdir,
    Step::Session,
    Step::Limits,
    Step::Cgroup,
    Step::User,
    Step::NoNewPrivs,
    Step::Exec,
    Step::Start,
];

impl Step {
    fn what(self) -> &'static str {
        match self {
            Step::Prepare => "preparing the start",
            Step::Clone => "creating the process",
            Step::Stdio => "connecting its output",
            Step::Chdir => "entering its directory",
            Step::Session => "starting its session",
            Step::Limits => "setting its limits",
            Step::Cgroup => "joining its cgroup",
            Step::User => "switching to its user",
            Step::NoNewPrivs => "setting NoNewPrivs",
            Step::Exec => "exec",
            Step::Start => "waiting for it to start",
        }
    }
}

#[derive(Debug)]
pub struct LaunchError {
    pub step: Step,
    pub error: io::Error,
}

impl LaunchError {
    fn new(step: Step, errno: i32) -> LaunchError {
        LaunchError {
            step,
            error: io::Error::from_raw_os_error(errno),
        }
    }

    /// The program was not found (in any directory of the search path).
    pub fn not_found(&self) -> bool {
        self.step == Step::Exec && self.error.kind() == io::ErrorKind::NotFound
    }
}

impl std::fmt::Display for LaunchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.step {
            Step::Exec => self.error.fmt(f),
            step => write!(f, "{}: {}", step.what(), self.error),
        }
    }
}

/// What the child reads, all built before the clone.
struct ChildArgs<'a> {
    candidates: &'a [CString],
    argv: *const *const c_char,
    envp: *const *const c_char,
    cwd: &'a CStr,
    setup: &'a ChildSetup,
    /// The reserved numbers, holding the child's descriptors.
    slots: [RawFd; SLOTS],
    keep_below: u32,
}

/// Start `argv` with exactly `env`, in `cwd`, with /dev/null as its
/// descriptor 0 and `output` as 1 and 2 (None: /dev/null too), after
/// `setup`; returns its pid once its program
/// runs. The caller reaps it (the supervisor's waitpid(-1)); a child that
/// failed before its exec is reaped here.
pub fn launch<'e>(
    argv: &[String],
    env: impl IntoIterator<Item = (&'e str, &'e str)>,
    cwd: &Path,
    output: Option<[BorrowedFd<'_>; 2]>,
    setup: &ChildSetup,
) -> Result<i32, LaunchError> {
    launch_within(argv, env, cwd, output, setup, START_WITHIN)
}

/// [`launch`], the child killed if it has not exec'd `within` the clone.
fn launch_within<'e>(
    argv: &[String],
    env: impl IntoIterator<Item = (&'e str, &'e str)>,
    cwd: &Path,
    output: Option<[BorrowedFd<'_>; 2]>,
    setup: &ChildSetup,
    within: Duration,
) -> Result<i32, LaunchError> {
    let program = argv
        .first()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| invalid("no command to run".into()))?;
    let args = argv
        .iter()
        .map(|a| c_string(a.as_bytes(), "an argument"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut envs = Vec::new();
    let mut path = None;
    for (key, value) in env {
        if key == "PATH" {
            path = Some(value);
        }
        envs.push(c_string(format!("{key}={value}").as_bytes(), "the environment")?);
    }
    let candidates = candidates(program, path)?;
    let cwd = c_string(cwd.as_os_str().as_bytes(), "the directory")?;
    let argv_ptrs = pointers(&args);
    let envp_ptrs = pointers(&envs);
    let os = |step| move |e: rustix::io::Errno| LaunchError::new(step, e.raw_os_error());
    let (report_read, report_write) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(os(Step::Prepare))?;

    let mut reserved = RESERVED.lock().unwrap_or_else(PoisonError::into_inner);
    let slots = Slots::reserved(&mut reserved).map_err(|error| LaunchError {
        step: Step::Prepare,
        error,
    })?;
    let Slots { fds, null, .. } = slots;
    let [out, err] = output.unwrap_or([null.as_fd(); 2]);
    let sources = [null.as_fd(), out, err, report_write.as_fd()];
    let cgroup = setup.cgroup_procs.as_ref().map(|fd| fd.as_fd());
    let duplicated = fds
        .iter_mut()
        .zip(sources.into_iter().chain(cgroup))
        .try_for_each(|(slot, source)| rustix::io::dup3(source, slot, DupFlags::CLOEXEC));
    if let Err(e) = duplicated {
        slots.clear();
        return Err(os(Step::Stdio)(e));
    }
    drop(report_write);
    let child = ChildArgs {
        candidates: &candidates,
        argv: argv_ptrs.as_ptr(),
        envp: envp_ptrs.as_ptr(),
        cwd: &cwd,
        setup,
        slots: slots.fds.each_ref().map(|fd| fd.as_raw_fd()),
        keep_below: slots.keep_below,
    };

    // On the heap: freed only once the child is done with it (below).
    let mut stack = Box::<ChildStack>::new_uninit();
    let top = stack
        .as_mut_ptr()
        .cast::<u8>()
        .wrapping_add(CHILD_STACK)
        .cast::<c_void>();
    let saved_mask = set_signal_mask(!0);
    let shared = libc::CLONE_VM | libc::CLONE_FILES;
    let mut flags = libc::SIGCHLD;
    if !NO_SHARED_CLONE.load(Ordering::Relaxed) {
        flags |= shared;
    }
    let clone = |flags: c_int| {
        // SAFETY: `child_main` runs on `stack` (its top, 16-byte aligned)
        // and reads `child`; both stay alive and untouched until the child
        // has exec'd, or exited, or been killed and reaped
        // (`wait_for_start`, then the end of this function). With CLONE_VM
        // the child shares this memory, and with CLONE_FILES the
        // descriptor table until its first step: the module doc says why it
        // touches only what was prepared here. Every signal is blocked
        // across the call so no handler runs in the child before it resets
        // them.
        let pid = unsafe { libc::clone(child_main, top, flags, (&raw const child).cast_mut().cast()) };
        (pid, io::Error::last_os_error())
    };
    let (mut pid, mut clone_error) = clone(flags);
    if pid < 0 && flags & shared != 0 && clone_error.raw_os_error() == Some(libc::EINVAL) {
        NO_SHARED_CLONE.store(true, Ordering::Relaxed);
        (pid, clone_error) = clone(flags & !shared);
    }
    set_signal_mask(saved_mask);
    let outcome = match pid {
        ..0 => Err(LaunchError {
            step: Step::Clone,
            error: clone_error,
        }),
        _ => wait_for_start(
            pid,
            &report_read,
            slots,
            crate::agent::clock::after(Instant::now(), within),
        ),
    };
    slots.clear();
    drop(reserved);
    // The child has exec'd or is gone: what it read may go.
    std::hint::black_box(&child);
    drop(stack);
    outcome
}

/// Wait until the child `pid` has exec'd (its end of the report pipe
/// closes) or says why it could not, at most until `deadline`: a child
/// stopped on its way (a process of the task's user may send it SIGSTOP
/// once it has switched users) is killed then, so the agent is never held.
/// The agent's copies of the slots are let go once the child's table is
/// its own, so that the child's exec ends the pipe.
fn wait_for_start(pid: i32, report: &OwnedFd, slots: &mut Slots, deadline: Instant) -> Result<i32, LaunchError> {
    let mut record = [0u8; 9];
    let heard = match read_by(report, &mut record[..1], deadline) {
        Ok(Some(1)) if record[0] == OWN_TABLE => {
            slots.clear();
            read_by(report, &mut record, deadline)
        }
        // A failure before the child's table was its own.
        Ok(Some(1)) => read_by(report, &mut record[1..], deadline).map(|got| got.map(|n| n + 1)),
        // No end of file can come first: the agent holds a copy of the
        // child's end until then. Taken as a report cut short.
        Ok(Some(_)) => Ok(Some(1)),
        other => other,
    };
    let failure = match heard {
        // End of file: the exec closed the child's end.
        Ok(Some(0)) => return Ok(pid),
        Ok(Some(9)) if record[0] == FAILED => {
            let step = u32::from_ne_bytes([record[1], record[2], record[3], record[4]]);
            let errno = i32::from_ne_bytes([record[5], record[6], record[7], record[8]]);
            LaunchError::new(STEPS.get(step as usize).copied().unwrap_or(Step::Prepare), errno)
        }
        Ok(Some(_)) => LaunchError {
            step: Step::Start,
            error: io::Error::other("the new process's report was cut short"),
        },
        Ok(None) => LaunchError {
            step: Step::Start,
            error: io::Error::new(
                io::ErrorKind::TimedOut,
                "it did not reach its exec in time (stopped by a signal?); killed",
            ),
        },
        Err(error) => LaunchError {
            step: Step::Start,
            error,
        },
    };
    // A child that failed has exited or is about to; any other must not
    // go on unwatched.
    if failure.step == Step::Start {
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    reap(pid);
    Err(failure)
}

/// Read `buf` full from `fd` by `deadline`: `Some(n)`, fewer than asked at
/// end of file; `None` if the deadline came first.
fn read_by(fd: &OwnedFd, buf: &mut [u8], deadline: Instant) -> io::Result<Option<usize>> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let timeout = rustix::time::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: left.subsec_nanos().into(),
        };
        let mut ready = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
        match rustix::event::poll(&mut ready, Some(&timeout)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        match rustix::io::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(got))
}

fn invalid(message: String) -> LaunchError {
    LaunchError {
        step: Step::Prepare,
        error: io::Error::new(io::ErrorKind::InvalidInput, message),
    }
}

fn c_string(bytes: &[u8], what: &str) -> Result<CString, LaunchError> {
    CString::new(bytes).map_err(|_| invalid(format!("{what} contains a NUL byte")))
}

/// A NULL-terminated array of the strings' pointers (argv, envp).
fn pointers(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// The paths to try for `program`, in order (see the module doc).
fn candidates(program: &str, path: Option<&str>) -> Result<Vec<CString>, LaunchError> {
    if program.contains('/') {
        return Ok(vec![c_string(program.as_bytes(), "the command")?]);
    }
    path.unwrap_or(DEFAULT_PATH)
        .split(':')
        .map(|dir| match dir {
            "" => c_string(program.as_bytes(), "the command"),
            dir => c_string(format!("{dir}/{program}").as_bytes(), "PATH"),
        })
        .collect()
}

/// Set the calling thread's signal mask (a raw bit set: every signal,
/// including those libc keeps for itself, as both libcs' posix_spawn
/// block them); returns the previous one.
fn set_signal_mask(mask: u64) -> u64 {
    let mut old = 0u64;
    // SAFETY: rt_sigprocmask with valid pointers to two 8-byte sets (the
    // kernel's sigset size on Linux's 64-bit targets) changes only the
    // calling thread's mask.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &raw const mask,
            &raw mut old,
            std::mem::size_of::<u64>(),
        );
    }
    old
}

/// Wait for a child that failed before its exec (it has exited or is
/// about to).
fn reap(pid: i32) {
    let Some(pid) = rustix::process::Pid::from_raw(pid) else {
        return;
    };
    while let Err(rustix::io::Errno::INTR) = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty())
    {
    }
}

/// The child, on its own stack, in the agent's memory: see the module doc
/// for what it may do.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ChildArgs` that `launch` passed to clone and
    // keeps alive until the child has exec'd or exited.
    let args = unsafe { &*arg.cast_const().cast::<ChildArgs<'_>>() };
    let (step, errno) = match run_child(args) {
        Ok(never) => match never {},
        Err(failure) => failure,
    };
    let mut report = [FAILED; 9];
    report[1..5].copy_from_slice(&(step as u32).to_ne_bytes());
    report[5..].copy_from_slice(&errno.to_ne_bytes());
    let _ = rustix::io::write(slot(args, REPORT), &report);
    // SAFETY: _exit ends the child without running the agent's exit
    // handlers or touching its stdio (they are the parent's).
    unsafe { libc::_exit(127) }
}

/// The child's descriptor in slot `i`.
fn slot<'a>(args: &'a ChildArgs<'_>, i: usize) -> BorrowedFd<'a> {
    // SAFETY: the number was a reserved slot when the clone was made, and
    // the child's table keeps it (the numbers below `keep_below`) until
    // its exec; nothing in the child closes it.
    unsafe { BorrowedFd::borrow_raw(args.slots[i]) }
}

fn run_child(args: &ChildArgs<'_>) -> Result<std::convert::Infallible, (Step, i32)> {
    reset_signal_handlers();
    let err = |step| move |e: rustix::io::Errno| (step, e.raw_os_error());
    // A table of its own, of the numbers below the last slot only (module
    // doc); where close_range cannot, a copy of the whole table.
    // SAFETY: close_range on numbers this process does not use after it
    // (the agent's, inherited through a fork or shared until this call).
    let own = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            args.keep_below,
            u32::MAX,
            libc::CLOSE_RANGE_UNSHARE,
        )
    };
    if own != 0 {
        // SAFETY: no other thread of this process exists: the child is
        // a process of its own whose table is shared with the agent at
        // most, which this call stops.
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FILES) }.map_err(err(Step::Stdio))?;
    }
    // The agent may let its copies of the slots go now.
    rustix::io::write(slot(args, REPORT), &[OWN_TABLE]).map_err(err(Step::Start))?;
    rustix::stdio::dup2_stdin(slot(args, 0)).map_err(err(Step::Stdio))?;
    rustix::stdio::dup2_stdout(slot(args, 1)).map_err(err(Step::Stdio))?;
    rustix::stdio::dup2_stderr(slot(args, 2)).map_err(err(Step::Stdio))?;
    rustix::process::chdir(args.cwd).map_err(err(Step::Chdir))?;
    let cgroup = args.setup.cgroup_procs.as_ref().map(|_| slot(args, CGROUP));
    super::apply(args.setup, cgroup)?;
    set_signal_mask(0);
    let mut denied = false;
    let mut last = libc::ENOENT;
    for path in args.candidates {
        // SAFETY: a NUL-terminated path and the NULL-terminated argv and
        // envp arrays `launch` built; execve returns only on failure.
        unsafe { libc::execve(path.as_ptr(), args.argv, args.envp) };
        last = io::Error::last_os_error().raw_os_error().unwrap_or(libc::ENOENT);
        match last {
            libc::EACCES => denied = true,
            libc::ENOENT | libc::ENOTDIR => {}
            _ => break,
        }
    }
    Err((
        Step::Exec,
        if denied && matches!(last, libc::ENOENT | libc::ENOTDIR) {
            libc::EACCES
        } else {
            last
        },
    ))
}

/// Every caught signal back to its default, and SIGPIPE (see the module
/// doc). SIGABRT is left alone: musl takes a lock to change it, and no
/// agent code catches it. Signals 32-34 belong to libc.
fn reset_signal_handlers() {
    for sig in 1..=64 {
        if matches!(sig, libc::SIGKILL | libc::SIGSTOP | libc::SIGABRT | 32..=34) {
            continue;
        }
        // SAFETY: sigaction with a zeroed (SIG_DFL, no flags, empty mask)
        // action and a local for the old one; it changes only this
        // process's table (the clone did not share it).
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &raw mut old) != 0 {
                continue;
            }
            let caught = old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN;
            if caught || (sig == libc::SIGPIPE && old.sa_sigaction == libc::SIG_IGN) {
                let default: libc::sigaction = std::mem::zeroed();
                libc::sigaction(sig, &raw const default, std::ptr::null_mut());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    fn null() -> OwnedFd {
        rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .unwrap()
    }

    fn no_setup() -> ChildSetup {
        ChildSetup {
            cgroup_procs: None,
            rlimits: Vec::new(),
            credentials: None,
        }
    }

    /// Start `argv` with `env` in `cwd`, its stdout and stderr into a pipe;
    /// returns what it wrote by the time it closed them.
    fn run(argv: &[&str], env: &[(&str, &str)], cwd: &Path) -> Result<String, LaunchError> {
        let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let pid = launch(
            &argv,
            env.iter().copied(),
            cwd,
            Some([write.as_fd(), write.as_fd()]),
            &no_setup(),
        )?;
        drop(write);
        let mut out = String::new();
        std::fs::File::from(read).read_to_string(&mut out).unwrap();
        let _ = rustix::process::waitpid(
            rustix::process::Pid::from_raw(pid),
            rustix::process::WaitOptions::empty(),
        );
        Ok(out)
    }

    /// The children the calling thread has (zombies included).
    fn my_children() -> Option<String> {
        let tid = rustix::thread::gettid().as_raw_nonzero();
        std::fs::read_to_string(format!("/proc/self/task/{tid}/children")).ok()
    }

    #[test]
    fn a_started_program_gets_its_directory_environment_and_output_and_nothing_of_the_agent() {
        // As the agent does at start-up: nothing the test runner inherited
        // reaches a child.
        super::super::mark_inherited_fds_cloexec();
        // Descriptors the agent holds (log pipes and files, sockets): none
        // of them reaches the program.
        let held: Vec<OwnedFd> = (0..64).map(|_| null()).collect();
        let dir = tempfile::tempdir().unwrap();
        // The caller's thread blocks a signal and the runtime ignores
        // SIGPIPE and catches SIGSEGV: none of it may reach the program.
        super::super::block_signals(&[libc::SIGUSR1]);
        let out = run(
            &[
                "sh",
                "-c",
                r#"pwd; echo "$GREETING"; echo "${HOME-unset}"; readlink /proc/$$/fd/0"#,
            ],
            &[("GREETING", "hello there"), ("PATH", "/usr/bin:/bin")],
            dir.path(),
        )
        .unwrap();
        // Straight from the start (a shell may reset its own mask, and
        // holds a pipeline's descriptors for a while).
        let status = run(&["cat", "/proc/self/status"], &[], dir.path()).unwrap();
        // Its descriptors: 0, 1, 2, and 3 for ls's own listing.
        let fds = run(&["ls", "/proc/self/fd"], &[], dir.path()).unwrap();
        drop(held);
        let unblocked = set_signal_mask(0);
        assert_eq!(
            unblocked & (1 << (libc::SIGUSR1 - 1)),
            1 << (libc::SIGUSR1 - 1),
            "the test's own mask"
        );
        let lines: Vec<&str> = out.lines().collect();
        let cwd = dir.path().canonicalize().unwrap();
        assert_eq!(
            lines,
            [cwd.to_str().unwrap(), "hello there", "unset", "/dev/null"],
            "{out}"
        );
        assert_eq!(
            fds.split_whitespace().collect::<Vec<_>>(),
            ["0", "1", "2", "3"],
            "{fds}"
        );
        // qemu-user (the aarch64 tests) emulates the guest's signal state,
        // so the kernel's view says nothing there.
        // What the runner ignored it inherited (exec keeps it) is kept,
        // as std::process::Command keeps it, except SIGPIPE.
        if cfg!(target_arch = "x86_64") {
            let field = |status: &str, name: &str| {
                let line = status
                    .lines()
                    .find(|l| l.starts_with(name))
                    .unwrap_or_else(|| panic!("{status}"));
                u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
            };
            let ours = std::fs::read_to_string("/proc/self/status").unwrap();
            let pipe = 1 << (libc::SIGPIPE - 1);
            assert_eq!(field(&ours, "SigIgn") & pipe, pipe, "the Rust runtime ignores SIGPIPE");
            assert_eq!(field(&status, "SigBlk"), 0, "{status}");
            assert_eq!(field(&status, "SigIgn"), field(&ours, "SigIgn") & !pipe, "{status}");
        }
    }

    #[test]
    fn a_program_is_found_like_execvp_finds_it() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for (d, mode) in [(&a, 0o644), (&b, 0o755)] {
            std::fs::create_dir(d).unwrap();
            let prog = d.join("prog");
            std::fs::write(&prog, format!("#!/bin/sh\necho {}\n", d.display())).unwrap();
            std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let path = format!("/nonexistent:{}:{}", a.display(), b.display());
        // Past a missing directory and a file it may not run, the first it can.
        let out = run(&["prog"], &[("PATH", &path)], dir.path()).unwrap();
        assert_eq!(out.trim(), b.to_str().unwrap());
        // Only files it may not run: permission denied, not "not found".
        let e = run(&["prog"], &[("PATH", a.to_str().unwrap())], dir.path()).unwrap_err();
        assert_eq!(
            (e.step, e.error.raw_os_error()),
            (Step::Exec, Some(libc::EACCES)),
            "{e}"
        );
        // An empty entry is the directory the program starts in; a name
        // with a slash is not looked up.
        assert_eq!(
            run(&["prog"], &[("PATH", ":/nonexistent")], &b).unwrap().trim(),
            b.to_str().unwrap()
        );
        assert_eq!(
            run(&["./prog"], &[("PATH", "/nonexistent")], &b).unwrap().trim(),
            b.to_str().unwrap()
        );
        // No PATH: musl's default, which has sh.
        assert_eq!(run(&["sh", "-c", "echo ok"], &[], dir.path()).unwrap().trim(), "ok");
    }

    #[test]
    fn a_start_that_fails_says_which_step_and_leaves_no_process_behind() {
        let dir = tempfile::tempdir().unwrap();
        let before = my_children();
        let e = run(&["no-such-program-anywhere"], &[], dir.path()).unwrap_err();
        assert!(e.not_found(), "{e:?}");
        let e = run(&["/bin/true"], &[], &dir.path().join("missing")).unwrap_err();
        assert_eq!((e.step, e.error.raw_os_error()), (Step::Chdir, Some(libc::ENOENT)));
        assert_eq!(
            e.to_string(),
            format!("entering its directory: {}", io::Error::from_raw_os_error(libc::ENOENT))
        );
        let e = run(&["/bin/echo", "a\0b"], &[], dir.path()).unwrap_err();
        assert_eq!(
            (e.step, e.to_string().as_str()),
            (Step::Prepare, "preparing the start: an argument contains a NUL byte")
        );
        // Each child that failed was reaped: the thread has no zombie.
        assert_eq!(my_children(), before);
    }

    static HANDLER_RAN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    extern "C" fn count(_: c_int) {
        HANDLER_RAN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// A signal that reaches the child before its exec finds the default
    /// action, never the agent's handler (which would run on the agent's
    /// memory). The child is held in its setup by a full pipe standing in
    /// for cgroup.procs, signalled, then let go.
    #[test]
    #[cfg(target_arch = "x86_64")] // qemu-user turns the clone into a fork: no shared memory to watch
    fn a_signal_before_exec_never_runs_the_agents_handler_in_the_child() {
        // SAFETY: a handler that only increments an atomic.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = count as extern "C" fn(c_int) as usize;
            assert_eq!(
                libc::sigaction(libc::SIGUSR2, &raw const action, std::ptr::null_mut()),
                0
            );
        }
        let (read, setup) = holding_setup();
        let (child, done) = start_held(setup, START_WITHIN);
        let child_pid = rustix::process::Pid::from_raw(child).unwrap();
        rustix::process::kill_process(child_pid, rustix::process::Signal::USR2).unwrap();
        // Let the child's write through: it unblocks its signals after it.
        let mut drain = vec![0u8; 1 << 20];
        let _ = rustix::io::read(&read, &mut drain);
        let pid = done
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
            .expect("a child killed before exec ends like one that exits after it");
        assert_eq!(pid, child);
        let (_, status) = rustix::process::waitpid(Some(child_pid), rustix::process::WaitOptions::empty())
            .unwrap()
            .unwrap();
        assert_eq!(
            HANDLER_RAN.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the agent's handler ran in the child"
        );
        assert_eq!(status.terminating_signal(), Some(libc::SIGUSR2), "{status:?}");
    }

    /// A full pipe standing in for cgroup.procs: a child writing to it is
    /// held in its setup until the pipe is read.
    fn holding_setup() -> (OwnedFd, ChildSetup) {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        rustix::io::ioctl_fionbio(&write, true).unwrap();
        while rustix::io::write(&write, &[0; 4096]).is_ok() {}
        while rustix::io::write(&write, &[0]).is_ok() {}
        rustix::io::ioctl_fionbio(&write, false).unwrap();
        let setup = ChildSetup {
            cgroup_procs: Some(write),
            rlimits: Vec::new(),
            credentials: None,
        };
        (read, setup)
    }

    /// Start `/bin/true` held by `setup` on a thread of its own; returns
    /// the child's pid (once it exists) and the start's outcome to come.
    fn start_held(setup: ChildSetup, within: Duration) -> (i32, std::sync::mpsc::Receiver<Result<i32, LaunchError>>) {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            tid_tx.send(rustix::thread::gettid().as_raw_nonzero().get()).unwrap();
            let started = launch_within(&["/bin/true".to_string()], [], Path::new("/"), None, &setup, within);
            let _ = done_tx.send(started);
        });
        let tid = tid_rx.recv().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let children = std::fs::read_to_string(format!("/proc/self/task/{tid}/children")).unwrap_or_default();
            if let Some(pid) = children.split_whitespace().next() {
                return (pid.parse().unwrap(), done_rx);
            }
            assert!(Instant::now() < deadline, "the child never appeared");
            std::thread::yield_now();
        }
    }

    /// Once the child has switched to the task's user, a process of that
    /// user may stop it (SIGSTOP is never blocked) before its exec. The
    /// start gives up at its deadline and kills it: the agent is not held.
    #[test]
    fn a_child_stopped_before_its_exec_is_killed_and_the_start_gives_up_in_time() {
        let (read, setup) = holding_setup();
        let (child, done) = start_held(setup, Duration::from_millis(300));
        let pid = rustix::process::Pid::from_raw(child).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
        let stat = format!("/proc/{child}/stat");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&stat)
            .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('T')))
        {
            assert!(Instant::now() < deadline, "the child never stopped");
            std::thread::yield_now();
        }
        // Let its write through: it stays stopped.
        let mut drain = vec![0u8; 1 << 20];
        let _ = rustix::io::read(&read, &mut drain);
        let e = done
            .recv_timeout(Duration::from_secs(10))
            .expect("the start must give up by its deadline")
            .unwrap_err();
        assert_eq!((e.step, e.error.kind()), (Step::Start, io::ErrorKind::TimedOut), "{e}");
        // Killed and reaped: no process, not even a zombie.
        assert!(!Path::new(&format!("/proc/{child}")).exists());
    }
}
