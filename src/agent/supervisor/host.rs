//! What the supervisor asks of the operating system about processes, as
//! one trait: start a unit (its directories, user lookup and templates,
//! then fork/exec), start a script probe, signal a process group, reap an
//! exited child, open a pidfd, tell whether a process still lives, list
//! the process-group leaders (the scan for leftovers an earlier agent did
//! not record). [`System`] is the real one; the supervisor's tests drive
//! units against a recording fake (as youki tests its container lifecycle
//! without processes). Taking the data directory and signal handling stay
//! with the supervisor's construction.

use super::machine::Exit;
use super::procfs::{self, Leader, ProcIdentity};
use super::spawn::{self, Prepared, SpawnContext, SpawnError, Spawned};
use super::UnitSpec;
use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::process::{Pid, Signal, WaitOptions};

pub trait Host {
    /// First step of a start, quick: directories, the user, templates.
    fn prepare(&mut self, spec: &UnitSpec, ctx: &SpawnContext<'_>) -> Result<Prepared, SpawnError>;
    /// Last step: log pipes, cgroup, fork/exec; the process leads its own
    /// process group.
    fn exec(&mut self, spec: &UnitSpec, ctx: &SpawnContext<'_>, prepared: &Prepared) -> Result<Spawned, SpawnError>;
    /// A script check of `spec`'s unit, run as the unit runs; its pid.
    fn spawn_probe(&mut self, spec: &UnitSpec, ctx: &SpawnContext<'_>, argv: &[String]) -> Result<i32, SpawnError>;
    /// Signal process group `pid` (ESRCH, all gone, is fine).
    fn signal_group(&mut self, pid: i32, signal: Signal);
    /// One exited child, any (waitpid(-1, WNOHANG)), or None when none is left.
    fn reap(&mut self) -> Option<(i32, Exit)>;
    /// A pidfd for a process (None: not supported).
    fn pidfd(&mut self, pid: i32) -> Option<OwnedFd>;
    /// Reap the child `pidfd` refers to if it ended (waitid(P_PIDFD,
    /// WNOHANG): only that child, no walk of them all).
    fn reap_pidfd(&mut self, pidfd: BorrowedFd<'_>) -> PidfdReap;
    /// Does this process (pid + start time) still run?
    fn is_alive(&self, id: ProcIdentity) -> bool;
    /// Every live process-group leader but the agent itself.
    fn group_leaders(&self) -> Vec<Leader>;
}

/// What waitid on a child's pidfd found.
pub enum PidfdReap {
    Exited(Exit),
    /// It still runs.
    Running,
    /// Not this way (no longer our child to wait for, or a kernel without
    /// waitid on pidfds): the waitpid(-1) sweep reaps it.
    Cannot,
}

/// The real operating system.
pub struct System;

impl Host for System {
    fn prepare(&mut self, spec: &UnitSpec, ctx: &SpawnContext<'_>) -> Result<Prepared, SpawnError> {
        spawn::prepare(spec, ctx)
    }

    fn exec(&mut self, spec: &UnitSpec, ctx: &SpawnContext<'_>, prepared: &Prepared) -> Result<Spawned, SpawnError> {
        spawn::exec(spec, ctx, prepared)
    }

    fn spawn_probe(&mut self, spec: &UnitSpec, ctx: &SpawnContext<'_>, argv: &[String]) -> Result<i32, SpawnError> {
        spawn::spawn_probe(spec, ctx, argv)
    }

    fn signal_group(&mut self, pid: i32, signal: Signal) {
        if let Some(pid) = Pid::from_raw(pid) {
            let _ = rustix::process::kill_process_group(pid, signal);
        }
    }

    fn reap(&mut self) -> Option<(i32, Exit)> {
        loop {
            // wait() is waitpid(-1): any child (rustix's waitpid(None) would be
            // waitpid(0), only our own process group, which tasks have left).
            let (pid, status) = match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some(r)) => r,
                Err(rustix::io::Errno::INTR) => continue,
                Ok(None) | Err(_) => return None,
            };
            let exit = match (status.exit_status(), status.terminating_signal()) {
                (Some(code), _) => Exit::Code(code),
                (None, Some(sig)) => Exit::Signal(sig),
                _ => Exit::Unknown,
            };
            return Some((pid.as_raw_nonzero().get(), exit));
        }
    }

    fn pidfd(&mut self, pid: i32) -> Option<OwnedFd> {
        rustix::process::pidfd_open(Pid::from_raw(pid)?, rustix::process::PidfdFlags::empty()).ok()
    }

    fn reap_pidfd(&mut self, pidfd: BorrowedFd<'_>) -> PidfdReap {
        use rustix::process::{WaitId, WaitIdOptions};
        let status = loop {
            match rustix::process::waitid(WaitId::PidFd(pidfd), WaitIdOptions::EXITED | WaitIdOptions::NOHANG) {
                Err(rustix::io::Errno::INTR) => continue,
                Ok(Some(status)) => break status,
                Ok(None) => return PidfdReap::Running,
                Err(_) => return PidfdReap::Cannot,
            }
        };
        PidfdReap::Exited(match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(sig)) => Exit::Signal(sig),
            _ => Exit::Unknown,
        })
    }

    fn is_alive(&self, id: ProcIdentity) -> bool {
        procfs::is_same_live_process(id)
    }

    fn group_leaders(&self) -> Vec<Leader> {
        procfs::group_leaders(std::process::id() as i32)
    }
}
