//! The `execute` target: what the agent does with a Job after validation.
//! A Job runs through the agent's own reconcile (`Reconciler::step`) and
//! the supervisor's lifecycle machines (`supervisor::machine`) on a
//! [`FakeHost`]: a fake process table (no fork: a pid is a number) and a
//! fake clock that starts now, just before the end of `Instant`'s range,
//! or a century back. The rest of the input scripts the world: time passes
//! (a little, to the next deadline, or years), processes exit, spawns
//! fail, the agent restarts and re-adopts its processes, the Job is
//! withdrawn.
//!
//! Every Job that validates is run, and so is every Job whose only errors
//! are durations past the 10-year limit: an assignment that bypassed
//! validation (an old `assignments.json`, a server that does not validate)
//! reaches an agent in that shape. What must hold:
//! - nothing panics (no clock overflow, no index out of range);
//! - the process table and the machines agree: a phase with a pid names a
//!   live process (or one whose exit is on its way), and no process
//!   outlives its unit;
//! - a due deadline makes progress when ticked (no silent spin);
//! - withdrawing the Job stops every process it started.

use k8s4r::agent::clock;
use k8s4r::agent::reconcile::{AssignedTask, ReconcileConfig, Reconciler};
use k8s4r::agent::standalone::expand;
use k8s4r::agent::supervisor::machine::{Action, Event, Exit, Machine, Phase, StopCause};
use k8s4r::agent::supervisor::{Change, UnitSpec, UnitView, Units};
use k8s4r::api::decode::decode_value;
use k8s4r::api::units::MAX_DURATION_TEXT;
use k8s4r::api::{decode_all, review, AnyObject, Job};
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::Source;

/// More units than this and a case is skipped: a Job of 10,000 replicas
/// is valid, but would only make the fuzzer slow.
const MAX_TASKS: usize = 32;
/// Script steps per case, and passes allowed to stop everything at the end.
const MAX_STEPS: usize = 48;
const DRAIN_PASSES: usize = 64;
/// Ticks one unit may take at one instant in one pass (a daemon with a
/// zero restart delay whose spawn keeps failing restarts at the same
/// instant for as long as it is ticked: real work each time, not a spin).
const TICKS_PER_PASS: usize = 16;

/// What one case did, for the replay test to check that the generator
/// reaches the machines.
#[derive(Debug, Default)]
pub struct Executed {
    /// The Job ran (valid, or invalid only by its durations).
    pub ran: bool,
    /// It ran although validation refused its durations.
    pub bypassed: bool,
    pub spawns: usize,
    pub exits: usize,
}

/// The fuzz target's body.
pub fn execute(data: &[u8]) {
    let _ = execute_case(data);
}

/// First byte even: the rest is manifest text (its first Job runs); odd:
/// the rest drives [`generate_timed_job`]. The bytes left after the Job
/// script the world.
pub fn execute_case(data: &[u8]) -> Executed {
    let Some((&mode, rest)) = data.split_first() else {
        return Executed::default();
    };
    let (job, script) = if mode % 2 == 0 {
        // Text up to the first NUL is the manifest; after it, the script.
        let cut = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        let text = String::from_utf8_lossy(&rest[..cut]);
        let job = decode_all(&text).into_iter().flatten().find_map(|d| match d.object {
            AnyObject::Job(j) => Some(j),
            _ => None,
        });
        (job, rest.get(cut + 1..).unwrap_or(&[]))
    } else {
        let mut s = Source::new(rest);
        let job = decode_value(generate_timed_job(&mut s))
            .ok()
            .and_then(|d| match d.object {
                AnyObject::Job(j) => Some(j),
                _ => None,
            });
        (job, s.rest())
    };
    let Some(job) = job else {
        return Executed::default();
    };
    let found = review(&AnyObject::Job(job.clone()));
    let too_long = format!("is longer than the maximum of {MAX_DURATION_TEXT}");
    let bypassed = !found.errors.is_empty();
    if found.errors.iter().any(|e| !e.message.ends_with(&too_long)) {
        return Executed::default();
    }
    let desired = expand(&job);
    if desired.is_empty() || desired.len() > MAX_TASKS {
        return Executed::default();
    }
    let mut out = run(&job, desired, &mut Source::new(script));
    out.bypassed = bypassed;
    out
}

fn config(gc_after: Option<Duration>) -> ReconcileConfig {
    ReconcileConfig {
        robot: "fuzz".into(),
        // Nothing can be created below /dev/null: reconcile's few file
        // operations (a proxy's directory, gc) fail with their reason and
        // the fuzzer never writes anywhere.
        data_dir: PathBuf::from("/dev/null/k8s4r"),
        envoy_bin: PathBuf::from("/dev/null/envoy"),
        gc_after,
        default_user: None,
        proxy_user: None,
        proxy_mode: Default::default(),
    }
}

fn run(job: &Job, desired: Vec<AssignedTask>, s: &mut Source<'_>) -> Executed {
    let gc_after = s.chance(64).then(|| s.pick(&DURATIONS_STD));
    let mut host = FakeHost::new(s.below(3));
    let mut rec = Reconciler::new(config(gc_after));
    let mut withdrawn = false;
    for _ in 0..MAX_STEPS {
        if s.exhausted() {
            break;
        }
        let now_desired: &[AssignedTask] = if withdrawn { &[] } else { &desired };
        host.checked_pass(&mut rec, now_desired);
        match s.below(10) {
            0 | 1 => host.advance(Duration::from_millis(1 + s.below(2000) as u64)),
            2 | 3 => host.advance_to_next_deadline(),
            4 => host.advance(s.pick(&DURATIONS_STD)),
            5 | 6 => {
                let exit = s.pick(&[Exit::Code(0), Exit::Code(1), Exit::Signal(9), Exit::Code(137)]);
                host.exit_one(s.byte(), exit);
            }
            7 => host.spawn_fails = !host.spawn_fails,
            8 => {
                // The agent restarts: a new reconciler, its units restored.
                host.restart_agent();
                rec = Reconciler::new(config(gc_after));
            }
            _ => withdrawn = !withdrawn,
        }
        host.reap();
        host.fire_deadlines();
        host.run_checks();
    }
    // Withdraw the Job: everything it started must stop (processes obey
    // SIGTERM from now on, as most do).
    host.spawn_fails = false;
    for _ in 0..DRAIN_PASSES {
        host.checked_pass(&mut rec, &[]);
        host.obey_term();
        host.reap();
        if host.procs.is_empty() && host.units.values().all(|u| u.machine.phase.is_terminal()) {
            return host.executed;
        }
        host.advance_to_next_deadline();
        host.fire_deadlines();
    }
    panic!(
        "withdrawing job {} did not stop everything in {DRAIN_PASSES} passes: processes {:?}, units {:?}",
        job.name(),
        host.procs,
        host.units
            .iter()
            .map(|(n, u)| (n.clone(), u.machine.phase.clone()))
            .collect::<Vec<_>>()
    );
}

// ------------------------------------------------------------------ fake host

/// One unit: its spec and machine, as the supervisor keeps them.
#[derive(Debug)]
struct FakeUnit {
    spec: UnitSpec,
    machine: Machine,
    replacement: Option<UnitSpec>,
    /// Next run of each check (the supervisor's schedule).
    checks: Vec<Instant>,
}

/// A process that is alive.
#[derive(Debug)]
struct Proc {
    unit: String,
    started: Instant,
    /// SIGTERM received (it exits when it obeys, or at SIGKILL).
    termed: bool,
}

/// What an agent restart finds saved about a unit.
#[derive(Debug)]
struct Saved {
    phase: Phase,
    pid: Option<i32>,
    restarts: u32,
    last_exit: Option<Exit>,
}

/// The supervisor, with numbers for processes and a clock the script moves.
pub struct FakeHost {
    now: Instant,
    /// The clock never passes this (the instant before the last one
    /// `Instant` can hold: deadlines "past the end" stay in the future).
    end: Instant,
    units: BTreeMap<String, FakeUnit>,
    procs: BTreeMap<i32, Proc>,
    /// Exits observed but not yet fed to their machine (as a reap does).
    exits: Vec<(i32, Exit)>,
    saved: BTreeMap<String, Saved>,
    next_pid: i32,
    changes: Vec<Change>,
    spawn_fails: bool,
    executed: Executed,
}

impl FakeHost {
    /// Clock start: 0 now, 1 an hour before the end of the clock, 2 a
    /// century ago.
    fn new(start: usize) -> Self {
        let real = Instant::now();
        let last = clock::latest_from(real);
        let end = last.checked_sub(Duration::from_nanos(1)).unwrap_or(last);
        let now = match start {
            1 => end.checked_sub(Duration::from_secs(3600)).unwrap_or(end),
            2 => real
                .checked_sub(Duration::from_secs(100 * 365 * 24 * 3600))
                .unwrap_or(real),
            _ => real,
        };
        FakeHost {
            now,
            end,
            units: BTreeMap::new(),
            procs: BTreeMap::new(),
            exits: Vec::new(),
            saved: BTreeMap::new(),
            next_pid: 100,
            changes: Vec::new(),
            spawn_fails: false,
            executed: Executed {
                ran: true,
                ..Default::default()
            },
        }
    }

    /// One reconcile pass, then the invariants.
    fn checked_pass(&mut self, rec: &mut Reconciler, desired: &[AssignedTask]) {
        rec.step(desired, self, &mut |_| {});
        self.check_table();
    }

    fn check_table(&self) {
        for (name, u) in &self.units {
            if let Some(pid) = u.machine.phase.pid() {
                let live = self.procs.get(&pid).is_some_and(|p| p.unit == *name);
                let exiting = self.exits.iter().any(|(p, _)| *p == pid);
                assert!(
                    live || exiting,
                    "{name} is {} but pid {pid} is not its process",
                    u.machine.phase
                );
            }
        }
        for (pid, p) in &self.procs {
            let owned = self
                .units
                .get(&p.unit)
                .is_some_and(|u| u.machine.phase.pid() == Some(*pid))
                || self.saved.get(&p.unit).is_some_and(|s| s.pid == Some(*pid));
            assert!(owned, "pid {pid} of {} outlived its unit", p.unit);
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now = clock::after(self.now, d).min(self.end);
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.units
            .values()
            .flat_map(|u| {
                let running = matches!(u.machine.phase, Phase::Running { .. });
                u.machine
                    .next_deadline()
                    .into_iter()
                    .chain(u.checks.iter().copied().filter(move |_| running))
            })
            .min()
    }

    fn advance_to_next_deadline(&mut self) {
        match self.next_deadline() {
            Some(at) if at > self.now => self.now = at.min(self.end),
            Some(_) => {}
            None => self.advance(Duration::from_secs(60)),
        }
    }

    /// Feed due deadlines to their machines, as the supervisor's wake-up does.
    fn fire_deadlines(&mut self) {
        let names: Vec<String> = self.units.keys().cloned().collect();
        for name in names {
            for _ in 0..TICKS_PER_PASS {
                let Some(u) = self.units.get(&name) else { break };
                if u.machine.next_deadline().is_none_or(|d| d > self.now) {
                    break;
                }
                let before = u.machine.phase.clone();
                let progressed = self.drive(&name, Event::Tick);
                let after = self.units.get(&name).map(|u| &u.machine.phase);
                assert!(
                    progressed || after != Some(&before),
                    "{name}: a due deadline did nothing ({before})"
                );
            }
        }
    }

    /// The supervisor's check schedule: a due check runs and is next due
    /// one interval later (so the clock also stops at check times).
    fn run_checks(&mut self) {
        let now = self.now;
        for u in self.units.values_mut() {
            if !matches!(u.machine.phase, Phase::Running { .. }) {
                continue;
            }
            for (next, spec) in u.checks.iter_mut().zip(&u.spec.checks) {
                if *next <= now {
                    *next = clock::after(now, spec.interval);
                }
            }
        }
    }

    /// Process `pick` (mod the live ones) exits.
    fn exit_one(&mut self, pick: u8, exit: Exit) {
        let pids: Vec<i32> = self.procs.keys().copied().collect();
        if let Some(pid) = pids.get(pick as usize % pids.len().max(1)) {
            self.procs.remove(pid);
            self.exits.push((*pid, exit));
        }
    }

    /// Every process that got SIGTERM exits.
    fn obey_term(&mut self) {
        let termed: Vec<i32> = self
            .procs
            .iter()
            .filter(|(_, p)| p.termed)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in termed {
            self.procs.remove(&pid);
            self.exits.push((pid, Exit::Signal(15)));
        }
    }

    /// Observed exits to their units.
    fn reap(&mut self) {
        for (pid, exit) in std::mem::take(&mut self.exits) {
            self.executed.exits += 1;
            let owner = self
                .units
                .iter()
                .find(|(_, u)| u.machine.phase.pid() == Some(pid))
                .map(|(n, _)| n.clone());
            if let Some(name) = owner {
                self.drive(&name, Event::Exited(exit));
            }
        }
    }

    /// The agent process restarts: what it saved is all the next one knows.
    fn restart_agent(&mut self) {
        self.reap();
        for (name, u) in std::mem::take(&mut self.units) {
            let phase = u.machine.phase.clone();
            if phase == Phase::Stopped {
                continue;
            }
            let pid = phase.pid().filter(|p| self.procs.contains_key(p));
            self.saved.insert(
                name,
                Saved {
                    phase,
                    pid,
                    restarts: u.machine.restart_count,
                    last_exit: u.machine.last_exit,
                },
            );
        }
        self.changes.clear();
    }

    /// One event through a unit's machine and its actions, as
    /// `Supervisor::drive` does. True if any action came of it.
    fn drive(&mut self, name: &str, event: Event) -> bool {
        let mut acted = false;
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let now = self.now;
            let Some(unit) = self.units.get_mut(name) else { break };
            let pid = unit.machine.phase.pid();
            for action in unit.machine.step(event, now) {
                acted = true;
                match action {
                    Action::Report(message) => self.changes.push(Change {
                        unit: name.to_string(),
                        label: unit.spec.label.clone(),
                        message,
                    }),
                    Action::TerminateGroup => {
                        if let Some(p) = pid.and_then(|p| self.procs.get_mut(&p)) {
                            p.termed = true;
                        }
                    }
                    Action::KillGroup => {
                        if let Some(p) = pid.filter(|p| self.procs.remove(p).is_some()) {
                            self.exits.push((p, Exit::Signal(9)));
                        }
                    }
                    Action::Spawn if self.spawn_fails => {
                        queue.push_back(Event::SpawnFailed("scripted failure".into()));
                    }
                    Action::Spawn => {
                        self.next_pid += 1;
                        let pid = self.next_pid;
                        self.procs.insert(
                            pid,
                            Proc {
                                unit: name.to_string(),
                                started: now,
                                termed: false,
                            },
                        );
                        self.executed.spawns += 1;
                        for (next, spec) in unit.checks.iter_mut().zip(&unit.spec.checks) {
                            *next = clock::after(now, spec.interval.min(Duration::from_secs(1)));
                        }
                        queue.push_back(Event::Spawned { pid });
                    }
                }
            }
        }
        self.replace_if_due(name);
        acted
    }

    fn replace_if_due(&mut self, name: &str) {
        let due = self
            .units
            .get(name)
            .is_some_and(|u| u.machine.phase.is_terminal() && u.replacement.is_some());
        if due {
            if let Some(next) = self.units.remove(name).and_then(|u| u.replacement) {
                Units::ensure(self, next);
            }
        }
    }

    /// A new unit from `spec`, restored from what the last agent saved.
    fn create(&mut self, spec: UnitSpec) {
        let name = spec.name.clone();
        let mut machine = Machine::new(spec.policy.clone(), spec.timeout, spec.kill_timeout);
        let event = match self.saved.remove(&name) {
            None => Some(Event::Start),
            Some(saved) => {
                machine.restart_count = saved.restarts;
                machine.last_exit = saved.last_exit;
                match (saved.phase, saved.pid) {
                    (phase @ (Phase::Completed | Phase::Failed { .. }), _) => {
                        machine.phase = phase;
                        None
                    }
                    (_, Some(pid)) => {
                        let age = self
                            .procs
                            .get(&pid)
                            .map(|p| self.now.saturating_duration_since(p.started));
                        match age {
                            Some(age) => Some(Event::Adopted { pid, age }),
                            None => Some(Event::Exited(Exit::Unknown)),
                        }
                    }
                    _ => Some(Event::Start),
                }
            }
        };
        let checks = vec![self.now; spec.checks.len()];
        self.units.insert(
            name.clone(),
            FakeUnit {
                spec,
                machine,
                replacement: None,
                checks,
            },
        );
        if let Some(event) = event {
            self.drive(&name, event);
        }
    }
}

impl Units for FakeHost {
    fn now(&self) -> Instant {
        self.now
    }

    fn view(&self, name: &str) -> Option<UnitView<'_>> {
        self.units.get(name).map(|u| UnitView {
            phase: &u.machine.phase,
            restarts: u.machine.restart_count,
            health: None,
            last_exit: u.machine.last_exit,
            dir: &u.spec.dir,
            label: &u.spec.label,
        })
    }

    fn names(&self) -> Vec<&str> {
        self.units.keys().map(String::as_str).collect()
    }

    fn has_process(&self, name: &str) -> bool {
        match self.units.get(name) {
            Some(u) => u.machine.phase.pid().is_some(),
            None => self
                .saved
                .get(name)
                .and_then(|s| s.pid)
                .is_some_and(|p| self.procs.contains_key(&p)),
        }
    }

    /// As `Supervisor::ensure`: a changed revision, or a unit stopped on
    /// request and wanted again, replaces the process once it has ended.
    fn ensure(&mut self, spec: UnitSpec) {
        let Some(unit) = self.units.get_mut(&spec.name) else {
            return self.create(spec);
        };
        let stopped_on_request = matches!(
            unit.machine.phase,
            Phase::Stopped
                | Phase::Stopping {
                    cause: StopCause::Requested,
                    ..
                }
                | Phase::Killing {
                    cause: StopCause::Requested,
                    ..
                }
        );
        if (unit.spec.revision != spec.revision || stopped_on_request) && unit.replacement.is_none() {
            let name = spec.name.clone();
            let terminal = unit.machine.phase.is_terminal();
            unit.replacement = Some(spec);
            if terminal {
                self.replace_if_due(&name);
            } else {
                self.drive(&name, Event::Stop);
            }
        }
    }

    /// As `Supervisor::retain`: unwanted saved processes are stopped (here:
    /// killed), unwanted units stopped, finished ones forgotten.
    fn retain(&mut self, wanted: &dyn Fn(&str) -> bool) {
        let unwanted: Vec<String> = self.saved.keys().filter(|n| !wanted(n)).cloned().collect();
        for name in unwanted {
            if let Some(pid) = self.saved.remove(&name).and_then(|s| s.pid) {
                self.procs.remove(&pid);
            }
        }
        let names: Vec<String> = self.units.keys().filter(|n| !wanted(n)).cloned().collect();
        for name in names {
            let finished = self.units.get(&name).is_some_and(|u| u.machine.phase.is_terminal());
            if finished {
                self.units.remove(&name);
            } else if self.units.get(&name).is_some_and(|u| !u.machine.phase.is_terminal()) {
                self.drive(&name, Event::Stop);
            }
        }
    }

    fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }
}

// ------------------------------------------------------------------ generator

/// Durations as manifests write them: ordinary ones and the limit...
const DURATIONS: &[&str] = &["0", "1ns", "10ms", "1s", "30s", "1h", "87600h"];
/// ... and, now and then, past it: just, and beyond any clock.
const TOO_LONG: &[&str] = &["87601h", "3000000000000000h", "5124095576030431h"];

/// [`DURATIONS`] as the host's clock steps (the largest possible too).
const DURATIONS_STD: [Duration; 6] = [
    Duration::from_millis(1),
    Duration::from_secs(1),
    Duration::from_secs(3600),
    Duration::from_secs(10 * 365 * 24 * 3600),
    Duration::from_secs(u64::MAX),
    Duration::MAX,
];

fn duration(s: &mut Source<'_>) -> Value {
    let d = s.pick(DURATIONS);
    json!(s.good_or(d, TOO_LONG))
}

/// A Job (as JSON) of one or two groups whose tasks carry every duration
/// the agent turns into a deadline — timeout, killTimeout, restartPolicy,
/// check interval and timeout, disconnect — picked from [`DURATIONS`], with
/// init tasks and daemons, batch, service and system types.
pub fn generate_timed_job(s: &mut Source<'_>) -> Value {
    let job_type = s.pick(&["batch", "service", "system"]);
    let groups: Vec<Value> = (0..1 + s.below(2))
        .map(|g| {
            let tasks: Vec<Value> = (0..1 + s.below(3))
                .map(|t| timed_task(s, &format!("t{t}"), false))
                .collect();
            let inits: Vec<Value> = (0..s.below(3)).map(|i| timed_task(s, &format!("i{i}"), true)).collect();
            let mut group = json!({"name": format!("g{g}"), "tasks": tasks});
            if !inits.is_empty() {
                group["initTasks"] = json!(inits);
            }
            if job_type != "system" {
                group["count"] = json!(1 + s.below(3));
            }
            if s.chance(80) {
                group["restartPolicy"] = restart_policy(s);
            }
            if s.chance(60) {
                group["disconnect"] = json!({"stopOnClientAfter": duration(s), "lostAfter": duration(s)});
            }
            if s.chance(20) {
                // A proxy that cannot start here: the group fails with its reason.
                group["network"] =
                    json!({"upstreams": [{"name": "db", "localPort": 15432, "upstream": "db:5432", "tls": false}]});
            }
            group
        })
        .collect();
    json!({
        "apiVersion": k8s4r::api::API_VERSION, "kind": "Job",
        "metadata": {"name": "fx", "namespace": "default"},
        "spec": {"type": job_type, "taskGroups": groups},
    })
}

fn restart_policy(s: &mut Source<'_>) -> Value {
    json!({
        "attempts": s.below(4),
        "interval": duration(s),
        "delay": duration(s),
        "mode": s.pick(&["fail", "delay"]),
    })
}

fn timed_task(s: &mut Source<'_>, name: &str, init: bool) -> Value {
    let mut t = json!({"name": name, "driver": "exec", "config": {"execConfig": {"command": "/bin/true"}}});
    if init && s.chance(128) {
        t["daemon"] = json!(true);
        if s.chance(64) {
            t["scope"] = json!("robot");
        }
    }
    if s.chance(160) {
        t["timeout"] = duration(s);
    }
    if s.chance(160) {
        t["killTimeout"] = duration(s);
    }
    if s.chance(120) {
        t["restartPolicy"] = restart_policy(s);
    }
    if !init && s.chance(120) {
        let check = |s: &mut Source<'_>, kind: &str| {
            let mut c =
                json!({"name": format!("c-{kind}"), "type": kind, "interval": duration(s), "timeout": duration(s)});
            match kind {
                "script" => c["command"] = json!("/bin/true"),
                _ => c["portLabel"] = json!(s.pick(&["8080", "http"])),
            }
            c
        };
        let checks: Vec<Value> = (0..1 + s.below(3))
            .map(|_| {
                let kind = s.pick(&["script", "tcp", "http"]);
                check(s, kind)
            })
            .collect();
        t["services"] = json!([{"name": "svc", "checks": checks}]);
    }
    t
}
