//! The supervisor against a recording fake host: what it asks of the
//! system (prepare, exec, signals) for each event, and what it makes of
//! exits it reaps, without processes.

use super::host::Host;
use super::logs::LogLimits;
use super::machine::{Exit, Phase, Policy, RestartRules};
use super::procfs::{Leader, ProcIdentity};
use super::spawn::{Prepared, SpawnContext, SpawnError, Spawned};
use super::{DirOwner, Supervisor, SupervisorConfig, UnitSpec};
use crate::agent::layout::{Layout, UnitId};
use crate::agent::supervisor::cgroup::Limits;
use rustix::fd::OwnedFd;
use rustix::process::Signal;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
enum Call {
    Prepare(String),
    Exec(String, i32),
    Signal(i32, Signal),
}

#[derive(Default)]
struct Record {
    calls: Vec<Call>,
    /// Exits the next reaps return.
    exits: VecDeque<(i32, Exit)>,
    /// Live processes (for adoption).
    alive: BTreeSet<i32>,
    /// Process-group leaders the host lists (those still alive).
    leaders: Vec<Leader>,
    /// Units whose start fails.
    refuse: BTreeSet<String>,
    last_pid: i32,
    /// A flush the supervisor may owe, and whether it was still owed at
    /// each exec and signal.
    owed: Option<crate::agent::append_log::Owed>,
    owed_at: Vec<(Call, bool)>,
}

impl Record {
    fn push(&mut self, call: Call) {
        if let Some(owed) = &self.owed {
            self.owed_at.push((call.clone(), owed.is_owed()));
        }
        self.calls.push(call);
    }
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<Record>>);

impl Fake {
    fn with<T>(&self, f: impl FnOnce(&mut Record) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }
    /// The calls since the last look.
    fn calls(&self) -> Vec<Call> {
        self.with(|r| std::mem::take(&mut r.calls))
    }
    fn exit(&self, pid: i32, exit: Exit) {
        self.with(|r| {
            r.alive.remove(&pid);
            r.exits.push_back((pid, exit));
        });
    }
}

impl Host for Fake {
    fn prepare(&mut self, spec: &UnitSpec, _: &SpawnContext<'_>) -> Result<Prepared, SpawnError> {
        self.with(|r| {
            r.calls.push(Call::Prepare(spec.name.clone()));
            if r.refuse.contains(&spec.name) {
                return Err(SpawnError::User(format!("no user {:?}", spec.user)));
            }
            Ok(Prepared::default())
        })
    }
    fn exec(&mut self, spec: &UnitSpec, _: &SpawnContext<'_>, _: &Prepared) -> Result<Spawned, SpawnError> {
        self.with(|r| {
            r.last_pid = r.last_pid.max(99) + 1;
            let pid = r.last_pid;
            r.alive.insert(pid);
            r.push(Call::Exec(spec.name.clone(), pid));
            Ok(Spawned {
                identity: ProcIdentity { pid, start_time: 7 },
                pumps: Vec::new(),
            })
        })
    }
    fn spawn_probe(&mut self, spec: &UnitSpec, _: &SpawnContext<'_>, _: &[String]) -> Result<i32, SpawnError> {
        Err(SpawnError::PreStart(format!("{}: no probes here", spec.name)))
    }
    fn signal_group(&mut self, pid: i32, signal: Signal) {
        self.with(|r| r.push(Call::Signal(pid, signal)));
    }
    fn reap(&mut self) -> Option<(i32, Exit)> {
        self.with(|r| r.exits.pop_front())
    }
    fn pidfd(&mut self, _: i32) -> Option<OwnedFd> {
        None
    }
    fn reap_pidfd(&mut self, _: rustix::fd::BorrowedFd<'_>) -> super::host::PidfdReap {
        super::host::PidfdReap::Cannot
    }
    fn is_alive(&self, id: ProcIdentity) -> bool {
        self.with(|r| r.alive.contains(&id.pid))
    }
    fn group_leaders(&self) -> Vec<Leader> {
        self.with(|r| {
            r.leaders
                .iter()
                .filter(|l| r.alive.contains(&l.id.pid))
                .cloned()
                .collect()
        })
    }
}

fn supervisor(data: &Path, fake: &Fake) -> Supervisor {
    let config = SupervisorConfig {
        data_dir: data.to_path_buf(),
        log_limits: LogLimits::default(),
        cgroup_root: None,
        allow_root_tasks: true,
        require_artifact_checksums: false,
    };
    Supervisor::with_host(config, Box::new(fake.clone())).unwrap().0
}

fn unit(data: &Path, name: &str, policy: Policy) -> UnitSpec {
    UnitSpec {
        name: name.to_string(),
        label: name.to_string(),
        argv: vec!["/bin/true".into()],
        env: BTreeMap::new(),
        dir: data.join(name),
        alloc_dir: data.join("alloc"),
        user: None,
        dir_owner: DirOwner::Task,
        alloc_users: Vec::new(),
        policy,
        timeout: None,
        // Zero: a stop's SIGKILL is due at once (no waiting in tests).
        kill_timeout: Duration::ZERO,
        templates: Vec::new(),
        artifacts: Vec::new(),
        checks: Vec::new(),
        limits: Limits::default(),
        pre_start: None,
        revision: 1,
    }
}

fn run_once(restarts: u32) -> Policy {
    Policy::RunToCompletion(RestartRules {
        attempts: restarts,
        interval: Duration::from_secs(60),
        delay: Duration::ZERO,
        delay_mode: false,
    })
}

fn daemon() -> Policy {
    Policy::Daemon {
        base_delay: Duration::ZERO,
    }
}

fn phase(sup: &Supervisor, name: &str) -> Phase {
    sup.view(name).map(|v| v.phase.clone()).expect("unit exists")
}

fn messages(sup: &mut Supervisor) -> Vec<String> {
    sup.take_changes().into_iter().map(|c| c.message).collect()
}

#[test]
fn a_unit_starts_once_and_a_clean_exit_completes_it() {
    let data = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let mut sup = supervisor(data.path(), &fake);
    sup.ensure(unit(data.path(), "t", run_once(0)));
    assert_eq!(fake.calls(), [Call::Prepare("t".into()), Call::Exec("t".into(), 100)]);
    assert!(matches!(phase(&sup, "t"), Phase::Running { pid: 100, .. }));
    // Ensuring the same spec again changes nothing.
    sup.ensure(unit(data.path(), "t", run_once(0)));
    assert_eq!(fake.calls(), []);

    // An orphan's exit is reaped and ignored; the unit's ends it.
    fake.exit(555, Exit::Code(1));
    fake.exit(100, Exit::Code(0));
    sup.reap();
    assert_eq!(phase(&sup, "t"), Phase::Completed);
    assert!(!sup.has_process("t"));
    assert!(sup.all_finished());
    // Whatever the task left in its process group goes with it; nothing restarts.
    assert_eq!(fake.calls(), [Call::Signal(100, Signal::KILL)]);
}

#[test]
fn a_failed_run_restarts_within_its_attempts_then_fails() {
    let data = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let mut sup = supervisor(data.path(), &fake);
    sup.ensure(unit(data.path(), "t", run_once(1)));
    fake.calls();
    fake.exit(100, Exit::Code(3));
    sup.reap();
    assert!(matches!(phase(&sup, "t"), Phase::Backoff { .. }));
    // The restart delay (zero) has passed at the next tick.
    sup.drive("t", super::machine::Event::Tick);
    assert_eq!(
        fake.calls(),
        [
            Call::Signal(100, Signal::KILL),
            Call::Prepare("t".into()),
            Call::Exec("t".into(), 101)
        ]
    );
    assert_eq!(sup.view("t").map(|v| v.restarts), Some(1));
    fake.exit(101, Exit::Signal(9));
    sup.reap();
    let Phase::Failed { reason } = phase(&sup, "t") else {
        panic!("{}", phase(&sup, "t"))
    };
    assert!(reason.contains('9'), "{reason}");
    assert_eq!(sup.view("t").and_then(|v| v.last_exit), Some(Exit::Signal(9)));
}

#[test]
fn a_stop_terms_the_group_then_kills_it_and_retain_forgets_the_unit() {
    let data = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let mut sup = supervisor(data.path(), &fake);
    sup.ensure(unit(data.path(), "d", daemon()));
    fake.calls();
    sup.retain(|_| false);
    assert_eq!(fake.calls(), [Call::Signal(100, Signal::TERM)]);
    assert!(matches!(phase(&sup, "d"), Phase::Stopping { pid: 100, .. }));
    // Its kill timeout (zero) is over at the next tick.
    sup.drive("d", super::machine::Event::Tick);
    assert_eq!(fake.calls(), [Call::Signal(100, Signal::KILL)]);
    fake.exit(100, Exit::Signal(9));
    sup.reap();
    assert_eq!(phase(&sup, "d"), Phase::Stopped);
    assert_eq!(
        fake.calls(),
        [Call::Signal(100, Signal::KILL)],
        "its group's leftovers are killed; a daemon stopped on request is not restarted"
    );
    sup.retain(|_| false);
    assert!(sup.view("d").is_none(), "a finished unit nobody wants is forgotten");
}

#[test]
fn a_new_revision_replaces_the_process_once_the_old_one_ended() {
    let data = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let mut sup = supervisor(data.path(), &fake);
    sup.ensure(unit(data.path(), "d", daemon()));
    fake.calls();
    let mut next = unit(data.path(), "d", daemon());
    next.revision = 2;
    next.label = "d v2".into();
    sup.ensure(next.clone());
    assert_eq!(fake.calls(), [Call::Signal(100, Signal::TERM)]);
    assert!(messages(&mut sup).iter().any(|m| m == "spec changed; replacing"));
    // Asked again meanwhile: still one replacement.
    sup.ensure(next);
    assert_eq!(fake.calls(), []);
    fake.exit(100, Exit::Code(0));
    sup.reap();
    assert_eq!(
        fake.calls(),
        [
            Call::Signal(100, Signal::KILL),
            Call::Prepare("d".into()),
            Call::Exec("d".into(), 101)
        ]
    );
    assert!(matches!(phase(&sup, "d"), Phase::Running { pid: 101, .. }));
    assert_eq!(sup.view("d").map(|v| v.label), Some("d v2"));
}

#[test]
fn a_start_that_cannot_be_prepared_fails_the_unit_with_the_reason() {
    let data = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    fake.with(|r| r.refuse.insert("t".into()));
    let mut sup = supervisor(data.path(), &fake);
    sup.ensure(unit(data.path(), "t", run_once(0)));
    assert_eq!(fake.calls(), [Call::Prepare("t".into())], "no exec");
    let Phase::Failed { reason } = phase(&sup, "t") else {
        panic!("{}", phase(&sup, "t"))
    };
    assert!(reason.contains("no user"), "{reason}");
}

#[test]
fn the_next_supervisor_adopts_a_live_process_and_sees_a_dead_one_ended() {
    let data = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    {
        let mut sup = supervisor(data.path(), &fake);
        sup.ensure(unit(data.path(), "alive", daemon()));
        sup.ensure(unit(data.path(), "gone", run_once(0)));
        sup.flush().unwrap();
    }
    // The agent went away; one of its processes ended meanwhile.
    fake.with(|r| r.alive.remove(&101));
    fake.calls();
    let mut sup = supervisor(data.path(), &fake);
    assert!(
        sup.has_process("alive") && !sup.has_process("gone"),
        "leftovers known before ensure"
    );
    sup.ensure(unit(data.path(), "alive", daemon()));
    sup.ensure(unit(data.path(), "gone", run_once(0)));
    assert!(matches!(phase(&sup, "alive"), Phase::Running { pid: 100, .. }));
    assert_eq!(sup.view("gone").and_then(|v| v.last_exit), Some(Exit::Unknown));
    assert!(matches!(phase(&sup, "gone"), Phase::Failed { .. }));
    assert_eq!(fake.calls(), [], "nothing started again, nothing signalled");
}

#[test]
fn a_plan_is_applied_in_one_call_starting_in_order_and_stopping_the_unwanted() {
    use super::{Plan, Units};
    let data = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let mut sup = supervisor(data.path(), &fake);
    let mut plan = Plan::default();
    plan.ensure(unit(data.path(), "b", daemon()));
    plan.ensure(unit(data.path(), "a", daemon()));
    plan.ensure(unit(data.path(), "a", run_once(0)));
    plan.wanted = std::sync::Arc::new(["a", "b"].iter().map(|n| n.to_string()).collect());
    sup.apply(plan);
    assert_eq!(
        fake.calls(),
        [
            Call::Prepare("b".into()),
            Call::Exec("b".into(), 100),
            Call::Prepare("a".into()),
            Call::Exec("a".into(), 101)
        ],
        "in the plan's order, the first spec of a name only"
    );
    let mut plan = Plan::default();
    plan.ensure(unit(data.path(), "a", daemon()));
    plan.wanted = std::sync::Arc::new(["a".to_string()].into());
    sup.apply(plan);
    assert_eq!(fake.calls(), [Call::Signal(100, Signal::TERM)], "b stops");
}

/// A flush owed for what asked for a step (the connected agent's
/// assignments log) is settled before the supervisor stops, replaces or
/// forgets a unit, and not before it starts one: a delta that starts a
/// task and stops another starts the new one without waiting for the disk.
#[test]
fn an_owed_flush_is_settled_before_a_stop_a_replacement_or_forgetting_not_before_a_start() {
    use super::{Plan, Units};
    use crate::agent::append_log::{AppendLog, Owed};
    use std::sync::atomic::Ordering;
    let data = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let owed = Owed::default();
    fake.with(|r| r.owed = Some(owed.clone()));
    let mut sup = supervisor(data.path(), &fake);
    sup.settle_before_stopping(owed.clone());
    let log_path = data.path().join("x.log");
    let mut log = AppendLog::default();
    let mut owe = || log.append_owed(&log_path, b"{}".to_vec(), &owed).unwrap();
    let plan = |units: &[UnitSpec], wanted: &[&str]| {
        let mut plan = Plan::default();
        for u in units {
            plan.ensure(u.clone());
        }
        plan.wanted = Arc::new(wanted.iter().map(|n| n.to_string()).collect());
        plan
    };
    let (old, d, new) = (
        unit(data.path(), "old", run_once(0)),
        unit(data.path(), "d", daemon()),
        unit(data.path(), "new", daemon()),
    );
    sup.apply(plan(&[old.clone(), d.clone()], &["old", "d"]));
    fake.exit(100, Exit::Code(0));
    sup.reap();
    assert_eq!(phase(&sup, "old"), Phase::Completed);
    fake.with(|r| r.owed_at.clear());
    let flushes = || owed.flushes.load(Ordering::Relaxed);

    // Start one, forget the ended one: the start does not wait.
    owe();
    sup.apply(plan(&[d.clone(), new.clone()], &["d", "new"]));
    assert_eq!(
        fake.with(|r| std::mem::take(&mut r.owed_at)),
        [(Call::Exec("new".into(), 102), true)]
    );
    assert!(sup.view("old").is_none());
    assert!(!owed.is_owed(), "settled before the ended unit was forgotten");
    assert_eq!(flushes(), 1);

    // Start nothing, stop one: settled before the signal.
    owe();
    sup.apply(plan(std::slice::from_ref(&new), &["new"]));
    assert_eq!(
        fake.with(|r| std::mem::take(&mut r.owed_at)),
        [(Call::Signal(101, Signal::TERM), false)]
    );
    assert_eq!(flushes(), 2);

    // A new revision: settled before the old process is stopped.
    owe();
    let mut next = new.clone();
    next.revision = 2;
    sup.ensure(next);
    assert_eq!(
        fake.with(|r| std::mem::take(&mut r.owed_at)),
        [(Call::Signal(102, Signal::TERM), false)]
    );
    assert_eq!(flushes(), 3);

    // Only a start: the debt stays for the end of the step.
    fake.exit(101, Exit::Signal(15));
    fake.exit(102, Exit::Signal(15));
    sup.reap();
    assert!(matches!(phase(&sup, "new"), Phase::Running { pid: 103, .. }));
    fake.with(|r| r.owed_at.clear());
    owe();
    sup.apply(plan(&[unit(data.path(), "x", daemon())], &["d", "new", "x"]));
    assert_eq!(
        fake.with(|r| std::mem::take(&mut r.owed_at)),
        [(Call::Exec("x".into(), 104), true)]
    );
    assert!(owed.is_owed());
    assert_eq!(flushes(), 3);
    Units::settle_owed(&mut sup);
    assert_eq!((owed.is_owed(), flushes()), (false, 4));
}

/// The units a plan does not want are found in one walk of both name
/// orders: interleaved, before, after and between the wanted ones.
#[test]
fn the_units_a_plan_does_not_want_are_those_and_only_those() {
    use super::{Plan, Units};
    let data = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let mut sup = supervisor(data.path(), &fake);
    let all = ["a", "b", "b-1", "c", "d", "e", "f"];
    let mut plan = Plan::default();
    for name in all {
        plan.ensure(unit(data.path(), name, daemon()));
    }
    plan.wanted = std::sync::Arc::new(all.iter().map(|n| n.to_string()).collect());
    sup.apply(plan);
    let pids: BTreeMap<String, i32> = fake
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Exec(name, pid) => Some((name, pid)),
            _ => None,
        })
        .collect();
    let wanted: BTreeSet<String> = ["0", "b", "c", "ca", "e", "z"].iter().map(|n| n.to_string()).collect();
    assert_eq!(sup.not_in(&wanted), ["a", "b-1", "d", "f"]);
    sup.apply(Plan {
        wanted: std::sync::Arc::new(wanted),
        ..Plan::default()
    });
    let stopped: BTreeSet<i32> = fake
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Signal(pid, Signal::TERM) => Some(pid),
            _ => None,
        })
        .collect();
    let expected: BTreeSet<i32> = ["a", "b-1", "d", "f"].iter().map(|n| pids[*n]).collect();
    assert_eq!(stopped, expected);
}

#[test]
fn a_live_process_the_last_agent_did_not_record_is_claimed_and_a_stranger_is_not() {
    let data = tempfile::tempdir().unwrap();
    let layout = Layout::new(data.path());
    let id = |replica: u32| UnitId::Task {
        group: "j-g".into(),
        replica,
        task: "web".into(),
    };
    let dir = |replica: u32| layout.dir(&id(replica));
    for replica in 0..3 {
        std::fs::create_dir_all(dir(replica)).unwrap();
    }
    let leader = |pid: i32, ppid: i32, cwd: &Path, task_dir: Option<PathBuf>| Leader {
        id: ProcIdentity { pid, start_time: 7 },
        ppid,
        cwd: Some(cwd.to_path_buf()),
        task_dir,
    };
    let fake = Fake::default();
    fake.with(|r| {
        r.leaders = vec![
            // A task's own setsid child, listed first and started in the
            // same tick as its parent: still not the unit's process...
            leader(501, 500, &dir(0), None),
            // ... which is r0's, found by its working directory.
            leader(500, 1, &dir(0), None),
            // r1's process moved elsewhere but names its task dir.
            leader(700, 1, Path::new("/"), Some(dir(1))),
            // Strangers: another working directory, a task dir that is no unit's.
            leader(600, 1, Path::new("/home/someone"), None),
            leader(800, 1, data.path(), Some(data.path().join("alloc/j-g"))),
        ];
        r.alive.extend([500, 501, 600, 700, 800]);
    });
    let config = SupervisorConfig {
        data_dir: data.path().to_path_buf(),
        log_limits: LogLimits::default(),
        cgroup_root: None,
        allow_root_tasks: true,
        require_artifact_checksums: false,
    };
    let (mut sup, notices) = Supervisor::with_host(config, Box::new(fake.clone())).unwrap();
    let claims: Vec<&String> = notices.iter().filter(|n| n.contains("was not recorded")).collect();
    assert_eq!(claims.len(), 2, "{notices:?}");
    assert!(claims[0].starts_with("j-g-r0-web: pid 500 runs"), "{notices:?}");
    assert!(claims[1].starts_with("j-g-r1-web: pid 700 runs"), "{notices:?}");
    for replica in 0..3 {
        let mut spec = unit(data.path(), &id(replica).name(), daemon());
        spec.dir = dir(replica);
        sup.ensure(spec);
    }
    assert!(matches!(phase(&sup, "j-g-r0-web"), Phase::Running { pid: 500, .. }));
    assert!(matches!(phase(&sup, "j-g-r1-web"), Phase::Running { pid: 700, .. }));
    // Only r2, which no process claimed, is started; no stranger is signalled.
    assert_eq!(
        fake.calls(),
        [Call::Prepare("j-g-r2-web".into()), Call::Exec("j-g-r2-web".into(), 100)]
    );
}

/// The loop remembers the units' earliest deadline between wake-ups that
/// changed no unit (`Supervisor::unit_deadline`): a wake-up that changed
/// nothing must not hide a deadline, and an exit reaped on a later one
/// must bring its restart's deadline in.
#[test]
fn a_restart_is_due_on_time_across_wake_ups_that_changed_nothing() {
    let data = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let mut sup = supervisor(data.path(), &fake);
    let delay = Duration::from_millis(150);
    let policy = Policy::RunToCompletion(RestartRules {
        attempts: 2,
        interval: Duration::from_secs(60),
        delay,
        delay_mode: false,
    });
    sup.ensure(unit(data.path(), "t", policy));
    fake.calls();
    let waker = sup.waker().unwrap();
    // Wake-ups that change nothing: the deadline is walked once and kept.
    for _ in 0..3 {
        waker.wake();
        sup.run_once(Some(std::time::Instant::now() + Duration::from_secs(5)))
            .unwrap();
        assert!(matches!(phase(&sup, "t"), Phase::Running { pid: 100, .. }));
    }
    // The exit, then another wake-up before the restart is due.
    fake.exit(100, Exit::Code(3));
    sup.reap();
    assert!(matches!(phase(&sup, "t"), Phase::Backoff { .. }));
    let exited = std::time::Instant::now();
    waker.wake();
    sup.run_once(None).unwrap();
    // Then the loop sleeps until the restart is due, and restarts it, with
    // nothing else to wake it: bounded by the run_once calls and the clock.
    let deadline = exited + Duration::from_secs(10);
    while !matches!(phase(&sup, "t"), Phase::Running { .. }) {
        assert!(std::time::Instant::now() < deadline, "no restart: {}", phase(&sup, "t"));
        sup.run_once(Some(deadline)).unwrap();
    }
    assert!(exited.elapsed() >= delay, "restarted before its delay");
    assert!(fake.calls().contains(&Call::Exec("t".into(), 101)));
}

/// A deadline that goes away (a restart cancelled by a stop) may leave the
/// earliest deadline known too early: the loop then wakes once for
/// nothing and learns the true one, and never spins.
#[test]
fn a_cancelled_deadline_wakes_the_loop_once_at_most() {
    let data = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let mut sup = supervisor(data.path(), &fake);
    let policy = Policy::RunToCompletion(RestartRules {
        attempts: 2,
        interval: Duration::from_secs(60),
        delay: Duration::from_millis(100),
        delay_mode: false,
    });
    sup.ensure(unit(data.path(), "t", policy));
    sup.run_once(Some(std::time::Instant::now())).unwrap();
    fake.exit(100, Exit::Code(3));
    sup.reap();
    assert!(matches!(phase(&sup, "t"), Phase::Backoff { .. }));
    sup.stop("t");
    assert!(phase(&sup, "t").is_terminal(), "{}", phase(&sup, "t"));
    // Other tests in this process end real children, and every SIGCHLD
    // wakes every installed loop: a turn that a signal may have caused is
    // not a spin. A spin is thousands of turns, none of them signalled.
    let signalled = Arc::new(AtomicBool::new(false));
    let hook = signal_hook::flag::register(signal_hook::consts::SIGCHLD, Arc::clone(&signalled)).unwrap();
    let until = std::time::Instant::now() + Duration::from_millis(400);
    let mut turns = 0;
    while std::time::Instant::now() < until {
        sup.run_once(Some(until)).unwrap();
        if !signalled.swap(false, Ordering::SeqCst) {
            turns += 1;
        }
        assert!(turns <= 5, "the loop spins: {turns} turns");
    }
    signal_hook::low_level::unregister(hook);
    assert!(
        fake.calls().iter().all(|c| !matches!(c, Call::Exec(_, 101))),
        "restarted after its stop"
    );
}
