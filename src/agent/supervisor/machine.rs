//! The life of one supervised process as a pure function of
//! (state, event, now) -> actions. No processes, no clocks, no I/O: the
//! supervisor feeds it events and carries out the actions, and the tests
//! below check every lifecycle rule without starting anything.
//!
//! Deadlines are `now` plus a manifest's duration, through
//! [`clock::after`]: a duration too long for the clock means "never", not
//! a panic (the fuzz target `execute` drives this with any `now`).

use crate::agent::clock;
use std::time::{Duration, Instant};

/// Upper bound of the exponential restart backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// A process re-adopted from an earlier agent run ended (while this agent
    /// watched it through a pidfd, or while no agent ran): it is not our
    /// child, so success or failure is unknown.
    Unknown,
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
            // Only a parent learns the exit status; a process re-adopted
            // from an earlier agent run has init (or another reaper) as parent.
            Exit::Unknown => f.write_str("exited (exit code unknown: started by an earlier agent run)"),
        }
    }
}

/// Restart rules of a run-to-completion process (restartPolicy).
#[derive(Clone, Debug, PartialEq)]
pub struct RestartRules {
    /// Restarts allowed within `interval`.
    pub attempts: u32,
    pub interval: Duration,
    /// First restart delay; doubles on each further restart in the interval.
    pub delay: Duration,
    /// `true`: once attempts are used up, wait for the interval to pass and
    /// try again (mode delay); `false`: the task has failed (mode fail).
    pub delay_mode: bool,
}

/// What an exit means for this process.
#[derive(Clone, Debug, PartialEq)]
pub enum Policy {
    /// A task: exit 0 completes it, a failure follows the restart rules.
    RunToCompletion(RestartRules),
    /// A daemon (group or robot daemon, proxy): restarted after any exit,
    /// forever, with capped exponential backoff starting at `base_delay`.
    Daemon { base_delay: Duration },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopCause {
    Requested,
    Timeout,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    /// Not started yet.
    Pending,
    Running {
        pid: i32,
        deadline: Option<Instant>,
    },
    /// SIGTERM sent to the process group; SIGKILL at `kill_at`.
    Stopping {
        pid: i32,
        kill_at: Instant,
        cause: StopCause,
    },
    /// SIGKILL sent; waiting for the exit to be observed.
    Killing {
        pid: i32,
        cause: StopCause,
    },
    /// Waiting to restart.
    Backoff {
        until: Instant,
    },
    Completed,
    Failed {
        reason: String,
    },
    /// Stopped on request; nothing left running.
    Stopped,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Phase::Pending => f.write_str("not started"),
            Phase::Running { pid, .. } => write!(f, "running (pid {pid})"),
            Phase::Stopping { pid, .. } => write!(f, "stopping (pid {pid})"),
            Phase::Killing { pid, .. } => write!(f, "being killed (pid {pid})"),
            Phase::Backoff { .. } => f.write_str("waiting to restart"),
            Phase::Completed => f.write_str("completed"),
            Phase::Failed { reason } => write!(f, "failed: {reason}"),
            Phase::Stopped => f.write_str("stopped"),
        }
    }
}

impl Phase {
    pub fn pid(&self) -> Option<i32> {
        match self {
            Phase::Running { pid, .. } | Phase::Stopping { pid, .. } | Phase::Killing { pid, .. } => Some(*pid),
            _ => None,
        }
    }
    pub fn is_terminal(&self) -> bool {
        matches!(self, Phase::Completed | Phase::Failed { .. } | Phase::Stopped)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Start now (first start, or a re-adopted process that is gone).
    Start,
    Spawned {
        pid: i32,
    },
    /// A process from a previous agent run, verified alive, taken over;
    /// `age` is how long it has been running (its timeout counts from its
    /// start, not from the adoption).
    Adopted {
        pid: i32,
        age: Duration,
    },
    SpawnFailed(String),
    Exited(Exit),
    /// Time passed; deadlines at or before `now` fire.
    Tick,
    Stop,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Spawn,
    /// Send a signal to the whole process group of the current process.
    TerminateGroup,
    KillGroup,
    /// A human-readable state change ("running pid 12", "exited 0").
    Report(String),
}

/// One process's lifecycle state.
#[derive(Clone, Debug)]
pub struct Machine {
    pub policy: Policy,
    pub timeout: Option<Duration>,
    pub kill_timeout: Duration,
    pub phase: Phase,
    /// Restarts since the unit was created (reported in the status).
    pub restart_count: u32,
    /// When the restarts inside the current interval happened.
    recent_restarts: Vec<Instant>,
    /// Set by Stop: no restart after the process ends.
    stop_requested: bool,
    /// Last exit, for the status.
    pub last_exit: Option<Exit>,
}

impl Machine {
    pub fn new(policy: Policy, timeout: Option<Duration>, kill_timeout: Duration) -> Self {
        Machine {
            policy,
            timeout,
            kill_timeout,
            phase: Phase::Pending,
            restart_count: 0,
            recent_restarts: Vec::new(),
            stop_requested: false,
            last_exit: None,
        }
    }

    /// When the machine next needs a Tick, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Running { deadline, .. } => *deadline,
            Phase::Stopping { kill_at, .. } => Some(*kill_at),
            Phase::Backoff { until } => Some(*until),
            _ => None,
        }
    }

    pub fn step(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let phase = std::mem::replace(&mut self.phase, Phase::Pending);
        self.phase = match (phase, event) {
            (Phase::Pending, Event::Start) | (Phase::Backoff { .. }, Event::Start) => {
                out.push(Action::Spawn);
                Phase::Pending
            }
            (Phase::Pending, Event::Spawned { pid }) => {
                out.push(Action::Report(format!("running pid {pid}")));
                Phase::Running {
                    pid,
                    deadline: self.timeout.map(|t| clock::after(now, t)),
                }
            }
            (Phase::Pending, Event::Adopted { pid, age }) => {
                out.push(Action::Report(format!("adopted running pid {pid}")));
                Phase::Running {
                    pid,
                    deadline: self.timeout.map(|t| clock::after(now, t.saturating_sub(age))),
                }
            }
            (Phase::Pending, Event::SpawnFailed(msg)) => {
                self.after_failure(format!("failed to start: {msg}"), now, &mut out)
            }
            (Phase::Running { .. }, Event::Exited(exit)) => {
                self.last_exit = Some(exit);
                // Leftover grandchildren never outlive their task.
                out.push(Action::KillGroup);
                self.after_exit(exit, now, &mut out)
            }
            (Phase::Running { pid, deadline: Some(d) }, Event::Tick) if now >= d => {
                out.push(Action::TerminateGroup);
                out.push(Action::Report(format!(
                    "timed out after {:?}, sending SIGTERM",
                    self.timeout.unwrap_or_default()
                )));
                Phase::Stopping {
                    pid,
                    kill_at: clock::after(now, self.kill_timeout),
                    cause: StopCause::Timeout,
                }
            }
            (Phase::Running { pid, .. }, Event::Stop) => {
                self.stop_requested = true;
                out.push(Action::TerminateGroup);
                out.push(Action::Report("stopping (SIGTERM)".into()));
                Phase::Stopping {
                    pid,
                    kill_at: clock::after(now, self.kill_timeout),
                    cause: StopCause::Requested,
                }
            }
            (Phase::Stopping { pid, kill_at, cause }, Event::Tick) if now >= kill_at => {
                out.push(Action::KillGroup);
                out.push(Action::Report(format!(
                    "still running {:?} after SIGTERM, sending SIGKILL",
                    self.kill_timeout
                )));
                Phase::Killing { pid, cause }
            }
            (Phase::Stopping { cause, .. } | Phase::Killing { cause, .. }, Event::Exited(exit)) => {
                self.last_exit = Some(exit);
                out.push(Action::KillGroup);
                match cause {
                    StopCause::Requested => {
                        out.push(Action::Report(format!("stopped ({exit})")));
                        Phase::Stopped
                    }
                    StopCause::Timeout => {
                        let why = format!("timed out after {:?} ({exit})", self.timeout.unwrap_or_default());
                        self.after_failure(why, now, &mut out)
                    }
                }
            }
            (Phase::Stopping { pid, kill_at, cause }, Event::Stop) => {
                self.stop_requested = true;
                // A timeout stop becomes a requested one: no restart after it.
                let _ = cause;
                Phase::Stopping {
                    pid,
                    kill_at,
                    cause: StopCause::Requested,
                }
            }
            (Phase::Killing { pid, .. }, Event::Stop) => {
                self.stop_requested = true;
                Phase::Killing {
                    pid,
                    cause: StopCause::Requested,
                }
            }
            (Phase::Backoff { until }, Event::Tick) if now >= until => {
                out.push(Action::Spawn);
                Phase::Pending
            }
            (Phase::Pending | Phase::Backoff { .. }, Event::Stop) => {
                self.stop_requested = true;
                out.push(Action::Report("stopped".into()));
                Phase::Stopped
            }
            // A finished unit keeps its outcome.
            (done @ (Phase::Completed | Phase::Failed { .. }), Event::Stop) => {
                self.stop_requested = true;
                done
            }
            // A process from a previous agent run that ended while no agent
            // was watching.
            (Phase::Pending, Event::Exited(exit)) => {
                self.last_exit = Some(exit);
                self.after_exit(exit, now, &mut out)
            }
            // Anything else (a Tick before a deadline, a late duplicate
            // event) leaves the state as it was.
            (phase, _) => phase,
        };
        out
    }

    fn after_exit(&mut self, exit: Exit, now: Instant, out: &mut Vec<Action>) -> Phase {
        if self.stop_requested {
            out.push(Action::Report(format!("stopped ({exit})")));
            return Phase::Stopped;
        }
        match self.policy {
            Policy::RunToCompletion(_) if exit.success() => {
                out.push(Action::Report(exit.to_string()));
                Phase::Completed
            }
            _ => self.after_failure(exit.to_string(), now, out),
        }
    }

    /// Restart, wait, or give up, after a failed run described by `why`.
    fn after_failure(&mut self, why: String, now: Instant, out: &mut Vec<Action>) -> Phase {
        if self.stop_requested {
            out.push(Action::Report(format!("stopped ({why})")));
            return Phase::Stopped;
        }
        match self.policy.clone() {
            Policy::Daemon { base_delay } => {
                // A daemon that ran for a while before crashing starts its
                // backoff afresh; one that crash-loops backs off further.
                self.recent_restarts
                    .retain(|t| now.duration_since(*t) < MAX_BACKOFF * 2);
                let wait = backoff(base_delay, self.recent_restarts.len() as u32);
                self.schedule_restart(now, wait, &why, None, out)
            }
            Policy::RunToCompletion(rules) => {
                self.recent_restarts.retain(|t| now.duration_since(*t) < rules.interval);
                let used = self.recent_restarts.len() as u32;
                if used < rules.attempts {
                    let wait = backoff(rules.delay, used);
                    self.schedule_restart(now, wait, &why, Some(rules.attempts), out)
                } else if rules.delay_mode && rules.attempts > 0 {
                    // Mode delay: the interval's budget is spent; wait until
                    // the oldest restart leaves the interval, then try again.
                    let oldest = self.recent_restarts.first().copied().unwrap_or(now);
                    let wait = clock::after(oldest, rules.interval)
                        .saturating_duration_since(now)
                        .max(rules.delay);
                    self.schedule_restart(now, wait, &why, None, out)
                } else {
                    let reason = if self.restart_count == 0 {
                        why
                    } else {
                        format!("{why} (after {} restarts)", self.restart_count)
                    };
                    out.push(Action::Report(format!("failed: {reason}")));
                    Phase::Failed { reason }
                }
            }
        }
    }

    fn schedule_restart(
        &mut self,
        now: Instant,
        wait: Duration,
        why: &str,
        attempts: Option<u32>,
        out: &mut Vec<Action>,
    ) -> Phase {
        self.recent_restarts.push(now);
        self.restart_count += 1;
        let of = attempts
            .map(|a| format!(" (restart {}/{a})", self.recent_restarts.len()))
            .unwrap_or_default();
        out.push(Action::Report(format!("{why}; restarting in {wait:?}{of}")));
        Phase::Backoff {
            until: clock::after(now, wait),
        }
    }
}

/// `base * 2^n`, capped at [`MAX_BACKOFF`] (but never below `base`).
pub fn backoff(base: Duration, n: u32) -> Duration {
    let factor = 1u32.checked_shl(n.min(20)).unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(MAX_BACKOFF.max(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(attempts: u32, delay_ms: u64, delay_mode: bool) -> Policy {
        Policy::RunToCompletion(RestartRules {
            attempts,
            interval: Duration::from_secs(60),
            delay: Duration::from_millis(delay_ms),
            delay_mode,
        })
    }

    fn reports(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Report(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn success_completes_and_is_not_restarted() {
        let t0 = Instant::now();
        let mut m = Machine::new(rules(3, 100, false), None, Duration::from_secs(5));
        assert_eq!(m.step(Event::Start, t0), vec![Action::Spawn]);
        assert_eq!(reports(&m.step(Event::Spawned { pid: 7 }, t0)), vec!["running pid 7"]);
        let acts = m.step(Event::Exited(Exit::Code(0)), t0);
        assert_eq!(acts, vec![Action::KillGroup, Action::Report("exited 0".into())]);
        assert_eq!(m.phase, Phase::Completed);
        assert_eq!(m.next_deadline(), None);
    }

    #[test]
    fn failures_restart_with_doubling_delay_then_fail() {
        let mut now = Instant::now();
        let mut m = Machine::new(rules(3, 100, false), None, Duration::from_secs(5));
        m.step(Event::Start, now);
        let mut waits = Vec::new();
        for pid in 1..=4 {
            m.step(Event::Spawned { pid }, now);
            m.step(Event::Exited(Exit::Code(3)), now);
            match m.phase {
                Phase::Backoff { until } => {
                    waits.push(until - now);
                    // Before the deadline nothing happens; at it, a respawn.
                    assert_eq!(m.step(Event::Tick, now), vec![]);
                    now = until;
                    assert_eq!(m.step(Event::Tick, now), vec![Action::Spawn]);
                }
                Phase::Failed { ref reason } => {
                    assert_eq!(reason, "exited 3 (after 3 restarts)");
                }
                ref other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            waits,
            vec![
                Duration::from_millis(100),
                Duration::from_millis(200),
                Duration::from_millis(400)
            ]
        );
        assert_eq!(m.restart_count, 3);
        assert!(matches!(m.phase, Phase::Failed { .. }));
    }

    #[test]
    fn delay_mode_waits_for_the_interval_instead_of_failing() {
        let now = Instant::now();
        let mut m = Machine::new(rules(1, 10, true), None, Duration::from_secs(5));
        m.step(Event::Start, now);
        m.step(Event::Spawned { pid: 1 }, now);
        m.step(Event::Exited(Exit::Code(1)), now);
        assert_eq!(
            m.phase,
            Phase::Backoff {
                until: now + Duration::from_millis(10)
            }
        );
        let later = now + Duration::from_millis(10);
        m.step(Event::Tick, later);
        m.step(Event::Spawned { pid: 2 }, later);
        m.step(Event::Exited(Exit::Code(1)), later);
        // Budget spent: wait until the first restart leaves the 60 s interval.
        assert_eq!(
            m.phase,
            Phase::Backoff {
                until: now + Duration::from_secs(60)
            }
        );
    }

    #[test]
    fn timeout_sends_term_then_kill_and_counts_as_failure() {
        let now = Instant::now();
        let mut m = Machine::new(
            rules(0, 10, false),
            Some(Duration::from_secs(1)),
            Duration::from_secs(2),
        );
        m.step(Event::Start, now);
        m.step(Event::Spawned { pid: 9 }, now);
        assert_eq!(m.next_deadline(), Some(now + Duration::from_secs(1)));
        let t1 = now + Duration::from_secs(1);
        assert_eq!(m.step(Event::Tick, t1)[0], Action::TerminateGroup);
        assert_eq!(m.next_deadline(), Some(t1 + Duration::from_secs(2)));
        let t3 = t1 + Duration::from_secs(2);
        assert_eq!(m.step(Event::Tick, t3)[0], Action::KillGroup);
        m.step(Event::Exited(Exit::Signal(9)), t3);
        assert_eq!(
            m.phase,
            Phase::Failed {
                reason: "timed out after 1s (killed by signal 9)".into()
            }
        );
    }

    #[test]
    fn requested_stop_never_restarts() {
        let now = Instant::now();
        let mut m = Machine::new(
            Policy::Daemon {
                base_delay: Duration::from_millis(10),
            },
            None,
            Duration::from_secs(1),
        );
        m.step(Event::Start, now);
        m.step(Event::Spawned { pid: 5 }, now);
        assert_eq!(m.step(Event::Stop, now)[0], Action::TerminateGroup);
        m.step(Event::Exited(Exit::Signal(15)), now);
        assert_eq!(m.phase, Phase::Stopped);
        // A pending or backing-off unit stops at once.
        let mut p = Machine::new(rules(1, 10, false), None, Duration::from_secs(1));
        p.step(Event::Stop, now);
        assert_eq!(p.phase, Phase::Stopped);
        // A finished unit keeps its outcome.
        let mut c = Machine::new(rules(0, 10, false), None, Duration::from_secs(1));
        c.step(Event::Start, now);
        c.step(Event::Spawned { pid: 1 }, now);
        c.step(Event::Exited(Exit::Code(0)), now);
        c.step(Event::Stop, now);
        assert_eq!(c.phase, Phase::Completed);
    }

    #[test]
    fn daemons_restart_after_any_exit_with_capped_backoff() {
        let mut now = Instant::now();
        let mut m = Machine::new(
            Policy::Daemon {
                base_delay: Duration::from_millis(100),
            },
            None,
            Duration::from_secs(1),
        );
        m.step(Event::Start, now);
        m.step(Event::Spawned { pid: 1 }, now);
        m.step(Event::Exited(Exit::Code(0)), now);
        assert_eq!(
            m.phase,
            Phase::Backoff {
                until: now + Duration::from_millis(100)
            }
        );
        now += Duration::from_millis(100);
        m.step(Event::Tick, now);
        m.step(Event::Spawned { pid: 2 }, now);
        m.step(Event::Exited(Exit::Unknown), now);
        assert_eq!(
            m.phase,
            Phase::Backoff {
                until: now + Duration::from_millis(200)
            }
        );
        assert_eq!(backoff(Duration::from_secs(1), 30), MAX_BACKOFF);
        assert_eq!(backoff(Duration::from_secs(90), 3), Duration::from_secs(90));
    }

    #[test]
    fn an_adopted_process_keeps_the_timeout_it_started_with() {
        let now = Instant::now();
        let mut m = Machine::new(
            rules(0, 10, false),
            Some(Duration::from_secs(10)),
            Duration::from_secs(1),
        );
        m.step(
            Event::Adopted {
                pid: 4,
                age: Duration::from_secs(7),
            },
            now,
        );
        assert_eq!(m.next_deadline(), Some(now + Duration::from_secs(3)));
        let mut late = Machine::new(
            rules(0, 10, false),
            Some(Duration::from_secs(10)),
            Duration::from_secs(1),
        );
        late.step(
            Event::Adopted {
                pid: 4,
                age: Duration::from_secs(60),
            },
            now,
        );
        assert_eq!(late.next_deadline(), Some(now), "overdue: times out at once");
    }

    #[test]
    fn durations_past_the_end_of_the_clock_mean_never() {
        let huge = Duration::from_secs(3_000_000_000_000_000 * 3600);
        let end = clock::after(Instant::now(), Duration::MAX);
        // (At `end` itself every deadline is due: the clock is over.)
        for now in [Instant::now(), end.checked_sub(Duration::from_secs(1)).unwrap()] {
            let policy = Policy::RunToCompletion(RestartRules {
                attempts: 2,
                interval: huge,
                delay: huge,
                delay_mode: true,
            });
            let mut m = Machine::new(policy, Some(huge), huge);
            m.step(Event::Start, now);
            m.step(Event::Spawned { pid: 3 }, now);
            assert_eq!(m.next_deadline(), Some(end), "timeout: never");
            assert_eq!(m.step(Event::Tick, now), vec![]);
            m.step(Event::Stop, now);
            assert_eq!(m.next_deadline(), Some(end), "SIGKILL: never");
            let mut r = Machine::new(m.policy.clone(), Some(huge), huge);
            r.step(Event::Start, now);
            r.step(Event::Spawned { pid: 4 }, now);
            r.step(Event::Exited(Exit::Code(1)), now);
            assert_eq!(r.phase, Phase::Backoff { until: end }, "restart: never");
            let mut a = Machine::new(m.policy.clone(), Some(huge), huge);
            a.step(
                Event::Adopted {
                    pid: 5,
                    age: Duration::from_secs(1),
                },
                now,
            );
            assert_eq!(a.next_deadline(), Some(end));
        }
    }

    #[test]
    fn unknown_exit_of_a_task_follows_the_restart_policy() {
        let now = Instant::now();
        let mut m = Machine::new(rules(0, 10, false), None, Duration::from_secs(1));
        m.step(Event::Exited(Exit::Unknown), now);
        match &m.phase {
            Phase::Failed { reason } => assert!(reason.contains("exit code unknown"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
