//! A unit's life as the supervisor carries it out: `ensure` (start,
//! re-adopt, or replace on a new revision), `stop`, `retain`, and `drive`,
//! which feeds one event to the unit's [`Machine`] and executes the
//! actions it returns (spawn, signal the process group, report).

use super::cgroup::Limits;
use super::host::Host;
use super::machine::{self, Action, Event, Machine, Phase, Policy};
use super::probes::CheckState;
use super::procfs::ProcIdentity;
use super::watcher::Watcher;
use super::{spawn, Change, DirOwner, Supervisor, Unit, UnitSpec, Watch};
use crate::agent::{clock, ordered};
use rustix::fd::AsFd;
use rustix::process::Signal;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

impl Supervisor {
    /// Make sure a unit exists: start it, or re-adopt the process an
    /// earlier agent left running, or restore how it ended. An existing
    /// unit is left alone.
    pub fn ensure(&mut self, spec: UnitSpec) {
        let name = spec.name.clone();
        self.ensure_unit(spec);
        self.lower_deadline(&name);
    }

    fn ensure_unit(&mut self, spec: UnitSpec) {
        if let Some(unit) = self.units.get_mut(&spec.name) {
            // Stopped because it was no longer wanted, and wanted again (a
            // task moved away and back): start it afresh, as a replacement.
            let stopped_on_request = matches!(
                unit.machine.phase,
                Phase::Stopped
                    | Phase::Stopping {
                        cause: machine::StopCause::Requested,
                        ..
                    }
                    | Phase::Killing {
                        cause: machine::StopCause::Requested,
                        ..
                    }
            );
            if (unit.spec.revision != spec.revision || stopped_on_request) && unit.replacement.is_none() {
                let name = spec.name.clone();
                self.settle_owed();
                let Some(unit) = self.units.get_mut(&name) else {
                    return;
                };
                let message = if stopped_on_request {
                    "wanted again; starting anew"
                } else {
                    "spec changed; replacing"
                };
                self.changes.push(Change {
                    unit: name.clone(),
                    label: unit.spec.label.clone(),
                    message: message.into(),
                });
                unit.replacement = Some(spec);
                if unit.machine.phase.is_terminal() {
                    self.replace_if_due(&name);
                } else {
                    self.drive(&name, Event::Stop);
                }
            } else {
                // Who shares the group's directory is not what the unit runs
                // (no restart for it), but its next start must see it.
                unit.spec.alloc_users = spec.alloc_users;
            }
            return;
        }
        let name = spec.name.clone();
        let now = Instant::now();
        let checks = spec
            .checks
            .iter()
            .map(|c| CheckState {
                spec: c.clone(),
                next_at: now,
                in_flight: false,
                result: None,
            })
            .collect();
        let mut unit = Unit {
            machine: Machine::new(spec.policy.clone(), spec.timeout, spec.kill_timeout),
            spec,
            identity: None,
            watch: Watch::Child,
            pumps: Vec::new(),
            checks,
            health: None,
            replacement: None,
            fetching: None,
        };
        let event = match self.leftovers.remove(&name) {
            None => Some(Event::Start),
            Some(saved) => self.restore(&mut unit, saved),
        };
        self.units.insert(name.clone(), Box::new(unit));
        self.touch(&name);
        if let Some(event) = event {
            self.drive(&name, event);
        }
    }

    /// Settle the flush owed before stopping, replacing or forgetting a
    /// unit ([`Supervisor::settle_before_stopping`]).
    pub(crate) fn settle_owed(&mut self) {
        if let Err(e) = self.owed.settle() {
            self.changes.push(Change {
                unit: String::new(),
                label: "agent".into(),
                message: format!("flushing the assignments log before stopping: {e}"),
            });
        }
    }

    /// Ask a unit to stop (SIGTERM, then SIGKILL after its kill timeout).
    pub fn stop(&mut self, name: &str) {
        if self.units.get(name).is_some_and(|u| !u.machine.phase.is_terminal()) {
            self.settle_owed();
            self.drive(name, Event::Stop);
        }
    }

    /// Stop units `wanted` rejects (and processes of earlier agents nobody
    /// claims), forgetting those that have finished.
    pub fn retain(&mut self, wanted: impl Fn(&str) -> bool) {
        self.retain_leftovers(&wanted);
        let names: Vec<String> = self.units.keys().filter(|n| !wanted(n)).cloned().collect();
        self.let_go(names);
    }

    /// Stop the processes of earlier agents `wanted` rejects (adopted to
    /// be stopped: they are units then).
    pub(super) fn retain_leftovers(&mut self, wanted: &impl Fn(&str) -> bool) {
        if self.leftovers.is_empty() {
            return;
        }
        let unwanted: Vec<String> = self.leftovers.keys().filter(|n| !wanted(n)).cloned().collect();
        for name in unwanted {
            let Some(saved) = self.leftovers.remove(&name) else {
                continue;
            };
            if let (Some(pid), Some(start_time)) = (saved.pid, saved.start_time) {
                if self.host.is_alive(ProcIdentity { pid, start_time }) {
                    // Adopt it only to stop it.
                    let spec = UnitSpec {
                        name: name.clone(),
                        label: name.clone(),
                        argv: Vec::new(),
                        env: BTreeMap::new(),
                        dir: saved.dir.clone(),
                        alloc_dir: saved.dir.clone(),
                        user: None,
                        dir_owner: DirOwner::Task,
                        alloc_users: Vec::new(),
                        policy: Policy::Daemon {
                            base_delay: Duration::from_secs(1),
                        },
                        timeout: None,
                        kill_timeout: Duration::from_millis(saved.kill_timeout_ms.max(1)),
                        templates: Vec::new(),
                        artifacts: Vec::new(),
                        checks: Vec::new(),
                        limits: Limits::default(),
                        pre_start: None,
                        revision: 0,
                    };
                    self.leftovers.insert(name.clone(), saved);
                    self.ensure(spec);
                    self.stop(&name);
                }
            }
            self.touch(&name);
        }
    }

    /// Units not in `wanted`, in one walk of both (each in name order)
    /// instead of a lookup per unit.
    pub(super) fn not_in(&self, wanted: &BTreeSet<String>) -> Vec<String> {
        let mut want = wanted.iter().peekable();
        self.units
            .keys()
            .filter(|name| !ordered::reaches(&mut want, |w| w.as_str(), name))
            .cloned()
            .collect()
    }

    /// Stop units `names`, forgetting those that have finished; true if
    /// every one had (none is left).
    pub(super) fn let_go(&mut self, names: Vec<String>) -> bool {
        let mut all_gone = true;
        for name in names {
            let finished = self.units.get(&name).is_some_and(|u| u.machine.phase.is_terminal());
            if finished {
                self.settle_owed();
                // Keep the last words of its log; a descendant that escaped
                // the process group must not hold the unit forever.
                if let Some(mut unit) = self.units.remove(&name) {
                    for pump in &mut unit.pumps {
                        let _ = pump.drain();
                    }
                }
                if let Some(cg) = &self.cgroups {
                    cg.remove(&name);
                }
                self.touch(&name);
            } else {
                all_gone &= !self.units.contains_key(&name);
                self.stop(&name);
            }
        }
        all_gone
    }

    /// Feed one event to a unit's machine and carry out its actions.
    pub(super) fn drive(&mut self, name: &str, event: Event) {
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let Some(unit) = self.units.get_mut(name) else { return };
            let actions = unit.machine.step(event, Instant::now());
            for action in actions {
                match action {
                    Action::Report(message) => self.changes.push(Change {
                        unit: name.to_string(),
                        label: unit.spec.label.clone(),
                        message,
                    }),
                    Action::TerminateGroup => signal_group(&mut *self.host, unit, Signal::TERM),
                    Action::KillGroup => {
                        signal_group(&mut *self.host, unit, Signal::KILL);
                        if let Some(cg) = &self.cgroups {
                            cg.kill(name);
                        }
                    }
                    Action::Spawn => {
                        let ctx = spawn::SpawnContext {
                            log_limits: self.log_limits,
                            cgroups: self.cgroups.as_ref(),
                            is_root: self.is_root,
                            allow_root: self.allow_root_tasks,
                        };
                        // Output still in the old pipes belongs to the old run.
                        for pump in &mut unit.pumps {
                            let _ = pump.drain();
                        }
                        unit.pumps.clear();
                        if let Some(user) = unit.spec.user.as_deref().filter(|_| !self.is_root) {
                            let message = format!("runs as the agent's user: switching to {user:?} needs root");
                            self.changes.push(Change {
                                unit: name.to_string(),
                                label: unit.spec.label.clone(),
                                message,
                            });
                        }
                        match self.host.prepare(&unit.spec, &ctx) {
                            Err(e) => queue.push_back(Event::SpawnFailed(e.to_string())),
                            Ok(prepared) if unit.spec.artifacts.is_empty() => queue.push_back(start_process(
                                &mut *self.host,
                                &mut self.watcher,
                                unit,
                                &ctx,
                                &prepared,
                            )),
                            Ok(prepared) => {
                                // Downloads may take long: fetch on a worker
                                // thread, exec when it reports back.
                                self.fetch_seq += 1;
                                let ticket = self.fetch_seq;
                                let owner = prepared.owner();
                                unit.fetching = Some((ticket, prepared));
                                let artifacts = unit.spec.artifacts.clone();
                                let (dir, alloc) = (unit.spec.dir.clone(), unit.spec.alloc_dir.clone());
                                let (tx, waker, unit_name) =
                                    (self.fetch_tx.clone(), self.wakeups.waker(), name.to_string());
                                let (max_bytes, require_checksums) =
                                    (self.artifact_max_bytes, self.require_artifact_checksums);
                                super::signals::spawn_worker(move || {
                                    let result = spawn::fetch_artifacts(
                                        &artifacts,
                                        &dir,
                                        &alloc,
                                        owner,
                                        max_bytes,
                                        require_checksums,
                                    )
                                    .map_err(|e| e.to_string());
                                    let _ = tx.send(FetchDone {
                                        unit: unit_name,
                                        ticket,
                                        result,
                                    });
                                    if let Ok(w) = waker {
                                        w.wake();
                                    }
                                });
                            }
                        }
                    }
                }
            }
            self.touch(name);
        }
        self.lower_deadline(name);
        self.replace_if_due(name);
    }

    /// Start a changed spec once the old process has ended.
    fn replace_if_due(&mut self, name: &str) {
        let due = self
            .units
            .get(name)
            .is_some_and(|u| u.machine.phase.is_terminal() && u.replacement.is_some());
        if !due {
            return;
        }
        if let Some(mut old) = self.units.remove(name) {
            self.touch(name);
            for pump in &mut old.pumps {
                let _ = pump.drain();
            }
            if let Some(next) = old.replacement {
                self.ensure(next);
            }
        }
    }

    /// Start the units whose artifacts arrived (if they still want to start).
    pub(super) fn collect_fetches(&mut self) {
        while let Ok(done) = self.fetch_rx.try_recv() {
            let ctx = spawn::SpawnContext {
                log_limits: self.log_limits,
                cgroups: self.cgroups.as_ref(),
                is_root: self.is_root,
                allow_root: self.allow_root_tasks,
            };
            let Some(unit) = self.units.get_mut(&done.unit) else {
                continue;
            };
            let current = matches!(&unit.fetching, Some((t, _)) if *t == done.ticket);
            let Some((_, prepared)) = unit.fetching.take_if(|_| current) else {
                continue;
            };
            // Stopped (or replaced) while fetching: nothing to start.
            if unit.machine.phase != Phase::Pending {
                continue;
            }
            let event = match done.result {
                Ok(()) => start_process(&mut *self.host, &mut self.watcher, unit, &ctx, &prepared),
                Err(e) => Event::SpawnFailed(e),
            };
            self.drive(&done.unit, event);
        }
    }
}

/// Exec a prepared unit; the event says how it went.
fn start_process(
    host: &mut dyn Host,
    watcher: &mut Watcher,
    unit: &mut Unit,
    ctx: &spawn::SpawnContext<'_>,
    prepared: &spawn::Prepared,
) -> Event {
    match host.exec(&unit.spec, ctx, prepared) {
        Ok(spawned) => {
            unit.identity = Some(spawned.identity);
            unit.pumps = spawned.pumps;
            for pump in &unit.pumps {
                watcher.watch_log(pump.fd(), &unit.spec.name);
            }
            // Our child: its pidfd cannot name another process before we
            // reap it.
            unit.watch = match host.pidfd(spawned.identity.pid) {
                Some(fd) => {
                    watcher.watch_child(fd.as_fd(), &unit.spec.name);
                    Watch::ChildFd(fd)
                }
                None => Watch::Child,
            };
            let now = Instant::now();
            for c in &mut unit.checks {
                c.next_at = clock::after(now, c.spec.interval.min(Duration::from_secs(1)));
                c.result = None;
            }
            Event::Spawned {
                pid: spawned.identity.pid,
            }
        }
        Err(e) => Event::SpawnFailed(e.to_string()),
    }
}

/// Signal the unit's process group (its pid: every task leads its own
/// session).
fn signal_group(host: &mut dyn Host, unit: &Unit, sig: Signal) {
    if let Some(id) = unit.identity {
        host.signal_group(id.pid, sig);
    }
}

/// Artifacts fetched (or not) by a worker thread.
pub(super) struct FetchDone {
    pub(super) unit: String,
    pub(super) ticket: u64,
    pub(super) result: Result<(), String>,
}
