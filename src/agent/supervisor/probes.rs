//! Health checks of running units: script probes run as children (reaped
//! with everything else, killed at their timeout), network probes on a
//! worker thread each; results become the unit's health.

use super::checks::{self, CheckSpec, Probe};
use super::machine::Phase;
use super::{spawn, Change, Supervisor};
use crate::agent::clock;
use rustix::process::Signal;
use std::time::Instant;

impl Supervisor {
    pub(super) fn run_due_checks(&mut self) {
        let now = Instant::now();
        if self.nothing_due(now) {
            return;
        }
        self.forget_deadlines();
        let ctx = spawn::SpawnContext {
            log_limits: self.log_limits,
            cgroups: self.cgroups.as_ref(),
            is_root: self.is_root,
            allow_root: self.allow_root_tasks,
        };
        for (name, unit) in &mut self.units {
            let Phase::Running { pid, .. } = unit.machine.phase else {
                continue;
            };
            for (i, c) in unit.checks.iter_mut().enumerate() {
                if c.in_flight || c.next_at > now {
                    continue;
                }
                c.in_flight = true;
                c.next_at = clock::after(now, c.spec.interval);
                match &c.spec.probe {
                    Probe::Script { argv } => match self.host.spawn_probe(&unit.spec, &ctx, argv) {
                        Ok(probe_pid) => {
                            self.probes.insert(
                                probe_pid,
                                ProbeRun {
                                    unit: name.clone(),
                                    check: i,
                                    deadline: clock::after(now, c.spec.timeout),
                                },
                            );
                        }
                        Err(e) => {
                            c.in_flight = false;
                            c.result = Some(Err(format!("script: {e}")));
                        }
                    },
                    probe => {
                        let (probe, timeout, tx) = (probe.clone(), c.spec.timeout, self.check_tx.clone());
                        let (unit_name, waker) = (name.clone(), self.wakeups.waker());
                        super::signals::spawn_worker(move || {
                            let result = checks::run_network_probe(&probe, timeout);
                            let _ = tx.send(CheckResult {
                                unit: unit_name,
                                check: i,
                                pid,
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

    /// Kill script probes past their timeout.
    pub(super) fn expire_probes(&mut self, now: Instant) {
        let late: Vec<i32> = self
            .probes
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in late {
            // The probe's exit, when the kill lands, is reaped like any orphan.
            if let Some(probe) = self.probes.remove(&pid) {
                self.host.signal_group(pid, Signal::KILL);
                self.record_check(&probe.unit, probe.check, Err("script timed out".into()));
            }
        }
    }

    pub(super) fn collect_check_results(&mut self) {
        while let Ok(r) = self.check_rx.try_recv() {
            let current = self.units.get(&r.unit).and_then(|u| u.machine.phase.pid());
            if current == Some(r.pid) {
                self.record_check(&r.unit, r.check, r.result);
            } else if let Some(c) = self.units.get_mut(&r.unit).and_then(|u| u.checks.get_mut(r.check)) {
                c.in_flight = false;
                self.lower_deadline(&r.unit);
            }
        }
    }

    pub(super) fn record_check(&mut self, name: &str, check: usize, result: Result<(), String>) {
        let Some(unit) = self.units.get_mut(name) else { return };
        let Some(c) = unit.checks.get_mut(check) else { return };
        c.in_flight = false;
        c.result = Some(result);
        let results: Vec<(String, Option<Result<(), String>>)> = unit
            .checks
            .iter()
            .map(|c| (c.spec.name.clone(), c.result.clone()))
            .collect();
        let health = checks::health(&results);
        if health != unit.health {
            if let Some(h) = &health {
                self.changes.push(Change {
                    unit: name.to_string(),
                    label: unit.spec.label.clone(),
                    message: format!("health: {h}"),
                });
            }
            unit.health = health;
            // Not saved, but a status says it.
            self.touch(name);
        }
        // Its next run counts again.
        self.lower_deadline(name);
    }
}

pub(super) struct CheckState {
    pub(super) spec: CheckSpec,
    pub(super) next_at: Instant,
    pub(super) in_flight: bool,
    pub(super) result: Option<Result<(), String>>,
}

pub(super) struct ProbeRun {
    pub(super) unit: String,
    pub(super) check: usize,
    pub(super) deadline: Instant,
}

pub(super) struct CheckResult {
    pub(super) unit: String,
    pub(super) check: usize,
    pub(super) pid: i32,
    pub(super) result: Result<(), String>,
}
