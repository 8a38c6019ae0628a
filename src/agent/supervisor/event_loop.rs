//! One turn of the supervisor: persist, sleep until something happens
//! (a signal, log output, an adopted process ending, a check result, a
//! deadline), then handle it all: reap, pump logs, collect results, fire
//! deadlines, start due checks.

use super::host::PidfdReap;
use super::machine::{Event, Exit, Phase};
use super::watcher::Ready;
use super::{Change, Supervisor, SupervisorError, Unit, Watch, ORPHAN_SWEEP, PROC_POLL_INTERVAL};
use crate::agent::clock;
use rustix::event::{PollFd, PollFlags};
use rustix::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// The earliest deadline of the units, if known (`Supervisor::unit_deadline`).
#[derive(Clone, Copy)]
pub(super) enum Earliest {
    Unknown,
    /// Walked since the units last changed (None: no deadline).
    Known(Option<Instant>),
}

impl Supervisor {
    /// Persist the state if it changed, then wait for something to happen
    /// (a signal, log output, an adopted process ending, a check result) or
    /// for the next deadline, at most until `until`; then handle it all.
    pub fn run_once(&mut self, until: Option<Instant>) -> Result<(), SupervisorError> {
        // Persist before sleeping, not after waking: everything that changed
        // since the last wait (events handled, and the caller's ensure/stop
        // calls) is on disk in one write while the agent idles, so a kill -9
        // at any idle moment finds the state current.
        self.save()?;
        let now = Instant::now();
        let deadline = self.next_deadline().into_iter().chain(until).min();
        let timeout = deadline.map(|d| d.saturating_duration_since(now));
        let ready = self.wait(timeout);
        self.wakeups.drain();
        let reaped = self.reap_children(&ready.children);
        let now = Instant::now();
        if self.wakeups.take_child_exited() {
            // The signal is most likely for the children just reaped: the
            // sweep for any other (an orphan) may wait a little. Not while
            // a script check runs: its result is due at once.
            if reaped && self.probes.is_empty() {
                self.sweep_at.get_or_insert(clock::after(now, ORPHAN_SWEEP));
            } else {
                self.sweep_at = Some(now);
            }
        }
        if self.sweep_at.is_some_and(|at| at <= now) {
            self.sweep_at = None;
            self.reap();
        }
        self.pump_logs(&ready.fds);
        self.collect_check_results();
        self.collect_fetches();
        self.fire_deadlines(&ready);
        self.run_due_checks();
        Ok(())
    }

    /// The earliest deadline of the units and the script probes.
    fn next_deadline(&mut self) -> Option<Instant> {
        let units = match self.unit_deadline {
            Earliest::Known(known) => known,
            Earliest::Unknown => {
                let walked = self.units_deadline();
                self.unit_deadline = Earliest::Known(walked);
                walked
            }
        };
        units
            .into_iter()
            .chain(self.probes.values().map(|p| p.deadline))
            .chain(self.sweep_at)
            .min()
    }

    /// Units' deadlines changed in ways not followed one by one (see
    /// `unit_deadline`): the next look walks them all.
    pub(super) fn forget_deadlines(&mut self) {
        self.unit_deadline = Earliest::Unknown;
    }

    /// Unit `name` changed: its deadlines now count in the earliest known,
    /// which stays a bound no later than the true one (a deadline it
    /// dropped may leave the bound early: the wake-up then finds nothing
    /// due, walks once, and learns the true one).
    pub(super) fn lower_deadline(&mut self, name: &str) {
        let next = self.units.get(name).and_then(|u| unit_deadline(u));
        if let (Earliest::Known(known), Some(next)) = (&mut self.unit_deadline, next) {
            *known = Some(known.map_or(next, |k| k.min(next)));
        }
    }

    /// No unit has anything due at `now`, as far as known.
    pub(super) fn nothing_due(&self, now: Instant) -> bool {
        matches!(self.unit_deadline, Earliest::Known(d) if d.is_none_or(|d| d > now))
    }

    fn units_deadline(&self) -> Option<Instant> {
        self.units.values().filter_map(|u| unit_deadline(u)).min()
    }

    /// Sleep on the watcher; returns the log pipes and pidfds it found
    /// ready, so only those are read (with 100 tasks, reading every pipe
    /// on every wake-up was 200 reads that found nothing). A watcher that
    /// could not add one says everything is (see `watcher`).
    fn wait(&mut self, timeout: Option<Duration>) -> Ready {
        let mut ready = self.watcher.wait(timeout);
        if let Some(why) = self.watcher.failed() {
            if !self.watch_failure_told {
                self.watch_failure_told = true;
                log::warn!("agent: watching log pipes and processes ({why}): looking at all of them on every wake-up");
            }
            ready.once = true;
            ready.children.clear();
            for (name, unit) in &self.units {
                ready.fds.extend(unit.pumps.iter().map(|p| p.fd().as_raw_fd()));
                match &unit.watch {
                    Watch::Pidfd(fd) => ready.fds.push(fd.as_raw_fd()),
                    Watch::ChildFd(fd) => ready.children.push((fd.as_raw_fd(), name.clone())),
                    Watch::Child | Watch::ProcPoll(_) => {}
                }
            }
        }
        ready
    }

    /// Reap the children whose pidfds woke the loop (`(pidfd, unit)`),
    /// each alone. Whether any was.
    fn reap_children(&mut self, ready: &[(RawFd, String)]) -> bool {
        let mut reaped = false;
        for (fd, name) in ready {
            let Some(unit) = self.units.get_mut(name) else { continue };
            // A stale event (the unit's process was reaped by the sweep
            // and the fd number reused) is not this unit's.
            let Watch::ChildFd(pidfd) = &unit.watch else { continue };
            if pidfd.as_raw_fd() != *fd {
                continue;
            }
            match self.host.reap_pidfd(pidfd.as_fd()) {
                PidfdReap::Exited(exit) => {
                    self.watcher.forget(*fd);
                    unit.watch = Watch::Child;
                    reaped = true;
                    self.reaps.0 += 1;
                    self.drive(name, Event::Exited(exit));
                }
                // A stale wake-up: wake when it ends.
                PidfdReap::Running => self.watcher.rearm_child(pidfd.as_fd()),
                // Left to the sweep, now (re-arming a pidfd that stays
                // readable would wake the loop for ever).
                PidfdReap::Cannot => {
                    self.watcher.forget(*fd);
                    unit.watch = Watch::Child;
                    self.sweep_at = Some(Instant::now());
                }
            }
        }
        reaped
    }

    /// How many children were reaped alone, through their pidfds, and how
    /// many waitpid(-1) sweeps ran (diagnostics: the sweeps are what the
    /// pidfds save).
    pub fn reap_counts(&self) -> (u64, u64) {
        self.reaps
    }

    /// Collect every exited child: units, script probes and orphans.
    pub(super) fn reap(&mut self) {
        self.reaps.1 += 1;
        while let Some((pid, exit)) = self.host.reap() {
            if let Some(probe) = self.probes.remove(&pid) {
                let result = if exit.success() {
                    Ok(())
                } else {
                    Err(format!("script {exit}"))
                };
                self.record_check(&probe.unit, probe.check, result);
                continue;
            }
            let owner = self
                .units
                .iter_mut()
                .find(|(_, u)| u.machine.phase.pid() == Some(pid))
                .map(|(n, u)| {
                    // Reaped here first: its pidfd is done with.
                    if let Watch::ChildFd(fd) = &u.watch {
                        self.watcher.forget(fd.as_raw_fd());
                        u.watch = Watch::Child;
                    }
                    n.clone()
                });
            // Any watch: after the agent exec'd itself (a self-update),
            // re-adopted tasks are still its children and reaped here.
            // No owner: an orphaned grandchild, now reaped.
            if let Some(name) = owner {
                self.drive(&name, Event::Exited(exit));
            }
        }
    }

    /// Read the log pipes the wait found `ready`, each through the unit it
    /// belongs to (no walk of every unit: with 1,000 tasks, one wake-up
    /// with one task's output walked 1,000 units and 2,000 pipes).
    fn pump_logs(&mut self, ready: &[RawFd]) {
        for &fd in ready {
            let Some(name) = self.watcher.unit_of(fd) else {
                continue;
            };
            let Some(unit) = self.units.get_mut(name) else { continue };
            let mut closed = false;
            unit.pumps.retain_mut(|pump| {
                if pump.fd().as_raw_fd() != fd {
                    return true;
                }
                let keep = match pump.drain() {
                    Ok(eof) => !eof,
                    Err(e) => {
                        self.changes.push(Change {
                            unit: name.to_string(),
                            label: unit.spec.label.clone(),
                            message: format!("log capture stopped: {e}"),
                        });
                        false
                    }
                };
                closed |= !keep;
                keep
            });
            if closed {
                self.watcher.forget(fd);
            }
        }
    }

    /// `ready`: what the wait found ready (a pidfd among them: its
    /// process may have ended).
    fn fire_deadlines(&mut self, ready: &Ready) {
        let now = Instant::now();
        // Nothing due, and no pidfd among what woke the loop (the wake-up
        // socket or log output did): no unit to look at.
        if self.nothing_due(now) && !ready.once {
            self.expire_probes(now);
            return;
        }
        self.forget_deadlines();
        let mut due = Vec::new();
        for (name, unit) in &mut self.units {
            if unit.machine.next_deadline().is_some_and(|d| d <= now) {
                due.push((name.clone(), Event::Tick));
            }
            if unit.machine.phase.pid().is_none() {
                continue;
            }
            // Only re-adopted processes are watched here; children are reaped.
            let gone = match &mut unit.watch {
                Watch::Child | Watch::ChildFd(_) => false,
                Watch::Pidfd(fd) if ready.fds.contains(&fd.as_raw_fd()) => {
                    let mut p = [PollFd::new(fd, PollFlags::IN)];
                    rustix::event::poll(&mut p, Some(&rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 })).unwrap_or(0)
                        > 0
                }
                Watch::ProcPoll(at) if *at <= now => {
                    *at = clock::after(now, PROC_POLL_INTERVAL);
                    unit.identity.is_none_or(|id| !self.host.is_alive(id))
                }
                Watch::ProcPoll(_) | Watch::Pidfd(_) => false,
            };
            if gone {
                due.push((name.clone(), Event::Exited(Exit::Unknown)));
            }
        }
        for (name, event) in due {
            self.drive(&name, event);
        }
        self.expire_probes(now);
    }
}

/// A unit's earliest deadline: its machine's, a due check's while it
/// runs, a process poll's.
fn unit_deadline(u: &Unit) -> Option<Instant> {
    let running = matches!(u.machine.phase, Phase::Running { .. });
    let checks = u
        .checks
        .iter()
        .filter(move |c| running && !c.in_flight)
        .map(|c| c.next_at);
    let poll = match u.watch {
        Watch::ProcPoll(at) if u.machine.phase.pid().is_some() => Some(at),
        _ => None,
    };
    u.machine.next_deadline().into_iter().chain(checks).chain(poll).min()
}
