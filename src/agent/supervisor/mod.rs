//! The supervisor: a map of named units (tasks, group daemons, robot
//! daemons, proxies), each a process with a lifecycle [`machine::Machine`].
//! It executes what the machines decide: spawn, signal process groups,
//! reap (it is the child subreaper, so orphaned grandchildren are reaped
//! too), pump logs, run checks, persist state. It decides nothing about
//! *which* units should exist: that is `reconcile`'s job.

pub mod machine;
mod signals;
pub mod spawn;

pub use signals::Waker;

use crate::agent::cgroup::{Cgroups, Limits};
use crate::agent::checks::{self, CheckSpec, Probe};
use crate::agent::clock;
use crate::agent::logs::{self, LogLimits, LogPump};
use crate::agent::procfs::{self, ProcIdentity};
use crate::agent::state::{SavedPhase, SavedState, SavedUnit, StateError, StateFile};
use crate::api::{Artifact, Template};
use machine::{Action, Event, Exit, Machine, Phase, Policy};
use rustix::event::{PollFd, PollFlags};
use rustix::fd::OwnedFd;
use rustix::process::{Pid, Signal, WaitOptions};
use signals::Wakeups;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often a re-adopted process is checked when pidfd_open is missing
/// (kernels before 5.3). Only then does the agent poll anything.
const PROC_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Everything needed to run one unit.
#[derive(Clone, Debug)]
pub struct UnitSpec {
    /// Unique key: `{job}-{group}-r{i}-{task}`, `{job}-{group}-{init}`,
    /// `{job}-{group}-envoy`, `robot-{name}`.
    pub name: String,
    /// Short name for people (`simple-group r0 verify-and-run`).
    pub label: String,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Task directory: cwd, `local/`, `logs/`.
    pub dir: PathBuf,
    /// The group's shared directory.
    pub alloc_dir: PathBuf,
    pub user: Option<String>,
    /// Who owns the unit's directory (see [`DirOwner`]).
    pub dir_owner: DirOwner,
    /// The users the group's tasks run as (distinct), who share its
    /// directory: see `spawn::make_dirs` for what each case gets.
    pub alloc_users: Vec<String>,
    pub policy: Policy,
    pub timeout: Option<Duration>,
    pub kill_timeout: Duration,
    pub templates: Vec<Template>,
    pub artifacts: Vec<Artifact>,
    pub checks: Vec<CheckSpec>,
    pub limits: Limits,
    /// Run before every start; returns the argv to exec (replacing `argv`).
    pub pre_start: Option<PreStart>,
    /// Fingerprint of what the unit runs: `ensure` with a different one
    /// stops the current process and starts the new spec.
    pub revision: u64,
}

/// Who owns a unit's directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DirOwner {
    /// The unit's user: its directory, `local/` and `secrets/` are its own
    /// (0700), as a task's are.
    #[default]
    Task,
    /// The agent, which writes the unit's files; the unit's user only reads
    /// them, through the directory's group (`root:<its gid>`, 02750: the
    /// setgid bit gives every file the agent writes later that group). The
    /// group's Envoy: it must not be able to rewrite its own config, since
    /// the agent (root) writes there.
    Agent,
}

/// Work a unit needs before each start: a proxy rewrites its config and
/// clears the admin socket a crashed instance left behind.
#[derive(Clone)]
pub struct PreStart(pub std::sync::Arc<dyn Fn() -> Result<Vec<String>, String> + Send + Sync>);

impl std::fmt::Debug for PreStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreStart(..)")
    }
}

/// A state change, for printing or reporting upstream.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub unit: String,
    pub label: String,
    pub message: String,
}

#[derive(Debug)]
pub enum SupervisorError {
    DataDir(PathBuf, std::io::Error),
    Locked(PathBuf),
    Signals(std::io::Error),
    State(StateError),
}

impl std::fmt::Display for SupervisorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SupervisorError::DataDir(p, e) => write!(f, "data directory {}: {e}", p.display()),
            SupervisorError::Locked(p) => write!(f, "another agent is running on {} (its lock is held)", p.display()),
            SupervisorError::Signals(e) => write!(f, "installing signal handlers: {e}"),
            SupervisorError::State(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SupervisorError {}

pub struct SupervisorConfig {
    pub data_dir: PathBuf,
    pub log_limits: LogLimits,
    /// cgroup v2 directory for task limits (None: do not use cgroups).
    pub cgroup_root: Option<PathBuf>,
    /// May tasks run as root (no `user` on a root agent, or a uid-0 user)?
    /// `--allow-root-tasks`; true for compatibility, the first thing a
    /// robot on an untrusted network should turn off.
    pub allow_root_tasks: bool,
    /// Refuse tasks with a plain-http artifact that has no checksum
    /// (`--require-artifact-checksums`).
    pub require_artifact_checksums: bool,
}

/// How the end of a unit's process is noticed.
enum Watch {
    /// Our child: SIGCHLD + waitpid.
    Child,
    /// Re-adopted from an earlier agent: pidfd becomes readable at exit.
    Pidfd(OwnedFd),
    /// Re-adopted, no pidfd support: /proc checked every second.
    ProcPoll(Instant),
}

struct CheckState {
    spec: CheckSpec,
    next_at: Instant,
    in_flight: bool,
    result: Option<Result<(), String>>,
}

struct Unit {
    spec: UnitSpec,
    machine: Machine,
    /// The current (or last) process; its pid is also its process group.
    identity: Option<ProcIdentity>,
    watch: Watch,
    pumps: Vec<LogPump>,
    checks: Vec<CheckState>,
    health: Option<String>,
    /// A changed spec waiting for the current process to stop.
    replacement: Option<UnitSpec>,
    /// Artifacts being fetched for the next start: (ticket, prepared).
    fetching: Option<(u64, spawn::Prepared)>,
}

/// Artifacts fetched (or not) by a worker thread.
struct FetchDone {
    unit: String,
    ticket: u64,
    result: Result<(), String>,
}

/// A read-only view of a unit for reconcile and reports.
pub struct UnitView<'a> {
    pub phase: &'a Phase,
    pub restarts: u32,
    pub health: Option<&'a str>,
    pub last_exit: Option<Exit>,
    pub dir: &'a Path,
    pub label: &'a str,
}

/// What reconcile (and the directory gc) need of a supervisor: its units
/// and its clock. [`Supervisor`] is the real one, with processes and
/// `Instant::now()`; the fuzz target `execute` (tests/fuzz/targets.rs)
/// runs reconcile against a fake process table and a fake clock through
/// the same calls.
pub trait Units {
    /// Now, by this supervisor's clock (every deadline reconcile sets is
    /// measured from it).
    fn now(&self) -> Instant;
    fn view(&self, name: &str) -> Option<UnitView<'_>>;
    fn names(&self) -> Vec<&str>;
    /// Does `name` have a live process?
    fn has_process(&self, name: &str) -> bool;
    /// Start `spec`, or keep the unit of that name (replacing its process
    /// when the revision changed or it was stopped on request).
    fn ensure(&mut self, spec: UnitSpec);
    /// Stop units `wanted` rejects; forget those that have finished.
    fn retain(&mut self, wanted: &dyn Fn(&str) -> bool);
    /// State changes since the last call.
    fn take_changes(&mut self) -> Vec<Change>;
}

impl Units for Supervisor {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn view(&self, name: &str) -> Option<UnitView<'_>> {
        Supervisor::view(self, name)
    }
    fn names(&self) -> Vec<&str> {
        Supervisor::names(self).collect()
    }
    fn has_process(&self, name: &str) -> bool {
        Supervisor::has_process(self, name)
    }
    fn ensure(&mut self, spec: UnitSpec) {
        Supervisor::ensure(self, spec)
    }
    fn retain(&mut self, wanted: &dyn Fn(&str) -> bool) {
        Supervisor::retain(self, wanted)
    }
    fn take_changes(&mut self) -> Vec<Change> {
        Supervisor::take_changes(self)
    }
}

struct ProbeRun {
    unit: String,
    check: usize,
    deadline: Instant,
}

struct CheckResult {
    unit: String,
    check: usize,
    pid: i32,
    result: Result<(), String>,
}

pub struct Supervisor {
    units: BTreeMap<String, Unit>,
    /// Units saved by an earlier agent, not yet claimed by `ensure`.
    leftovers: BTreeMap<String, SavedUnit>,
    state_file: StateFile,
    boot_id: String,
    wakeups: Wakeups,
    check_tx: mpsc::Sender<CheckResult>,
    check_rx: mpsc::Receiver<CheckResult>,
    probes: HashMap<i32, ProbeRun>,
    log_limits: LogLimits,
    cgroups: Option<Cgroups>,
    is_root: bool,
    allow_root_tasks: bool,
    changes: Vec<Change>,
    dirty: bool,
    fetch_seq: u64,
    fetch_tx: mpsc::Sender<FetchDone>,
    fetch_rx: mpsc::Receiver<FetchDone>,
    /// Largest artifact a unit may download.
    artifact_max_bytes: u64,
    require_artifact_checksums: bool,
    _lock: std::fs::File,
}

impl Supervisor {
    /// Take the data directory (one agent per directory), become the child
    /// subreaper, install signal handling and load the saved state. Returns
    /// notices for the log (e.g. cgroups unavailable).
    ///
    /// One supervisor per process: it reaps every child of the process
    /// (waitpid(-1)), including children it did not start.
    pub fn new(config: SupervisorConfig) -> Result<(Supervisor, Vec<String>), SupervisorError> {
        let data = &config.data_dir;
        std::fs::create_dir_all(data).map_err(|e| SupervisorError::DataDir(data.clone(), e))?;
        let lock_path = data.join("agent.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| SupervisorError::DataDir(lock_path.clone(), e))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|_| SupervisorError::Locked(lock_path.clone()))?;
        // The agent's pid, for `stop-all` (written once, not on every change).
        let _ = std::fs::write(data.join("agent.pid"), format!("{}\n", std::process::id()));

        crate::agent::sys::mark_inherited_fds_cloexec();
        let mut notices = Vec::new();
        if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
            notices.push(format!(
                "cannot become child subreaper ({e}): orphaned grandchildren will be reaped by init"
            ));
        }
        let wakeups = Wakeups::install().map_err(SupervisorError::Signals)?;
        let (state_file, saved) = match StateFile::load(data) {
            // Atomic writes make this unlikely (a failing disk): keep the
            // damaged file for inspection and start afresh rather than
            // leaving the robot without its workloads.
            Err(StateError::Parse(path, e)) => {
                let aside = path.with_extension("json.damaged");
                let _ = std::fs::rename(&path, &aside);
                notices.push(format!(
                    "{} was damaged ({e}); moved to {} and starting with no saved state",
                    path.display(),
                    aside.display()
                ));
                StateFile::load(data).map_err(SupervisorError::State)?
            }
            other => other.map_err(SupervisorError::State)?,
        };
        let boot_id = procfs::boot_id();
        let mut leftovers = saved.units;
        if !saved.boot_id.is_empty() && saved.boot_id != boot_id {
            // Another boot: none of those pids are ours.
            for u in leftovers.values_mut() {
                u.pid = None;
                u.start_time = None;
            }
        }
        notices.extend(claim_unrecorded(data, &mut leftovers));
        let cgroups = match &config.cgroup_root {
            Some(root) => match Cgroups::detect(root) {
                Ok((cg, notice)) => {
                    notices.extend(notice);
                    Some(cg)
                }
                Err(e) => {
                    notices.push(e.to_string());
                    None
                }
            },
            None => None,
        };
        let artifact_max_bytes = match std::env::var(crate::agent::artifacts::MAX_SIZE_ENV) {
            Ok(text) if !text.is_empty() => crate::agent::artifacts::parse_max_size(&text).unwrap_or_else(|e| {
                notices.push(format!(
                    "{}: {e}; using the default",
                    crate::agent::artifacts::MAX_SIZE_ENV
                ));
                crate::agent::artifacts::MAX_ARTIFACT_BYTES
            }),
            _ => crate::agent::artifacts::MAX_ARTIFACT_BYTES,
        };
        let (check_tx, check_rx) = mpsc::channel();
        let (fetch_tx, fetch_rx) = mpsc::channel();
        let sup = Supervisor {
            units: BTreeMap::new(),
            leftovers,
            state_file,
            boot_id,
            wakeups,
            check_tx,
            check_rx,
            probes: HashMap::new(),
            log_limits: config.log_limits,
            cgroups,
            is_root: rustix::process::geteuid().is_root(),
            allow_root_tasks: config.allow_root_tasks,
            changes: Vec::new(),
            dirty: false,
            fetch_seq: 0,
            fetch_tx,
            fetch_rx,
            artifact_max_bytes,
            require_artifact_checksums: config.require_artifact_checksums,
            _lock: lock,
        };
        Ok((sup, notices))
    }

    /// Largest artifact a unit may download (default
    /// [`MAX_ARTIFACT_BYTES`](crate::agent::artifacts::MAX_ARTIFACT_BYTES),
    /// or `K8S4R_ARTIFACT_MAX_SIZE` from the environment).
    pub fn set_artifact_max_bytes(&mut self, max_bytes: u64) {
        self.artifact_max_bytes = max_bytes;
    }

    /// State changes since the last call.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// A handle another thread uses to wake `run_once` (e.g. the network
    /// poller when a new desired set arrived).
    pub fn waker(&self) -> std::io::Result<Waker> {
        self.wakeups.waker()
    }

    pub fn shutdown_requested(&self) -> bool {
        self.wakeups.shutdown_requested()
    }

    pub fn view(&self, name: &str) -> Option<UnitView<'_>> {
        self.units.get(name).map(|u| UnitView {
            phase: &u.machine.phase,
            restarts: u.machine.restart_count,
            health: u.health.as_deref(),
            last_exit: u.machine.last_exit,
            dir: &u.spec.dir,
            label: &u.spec.label,
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.units.keys().map(String::as_str)
    }

    /// Does `name` have a live process (ours, or one an earlier agent left)?
    pub fn has_process(&self, name: &str) -> bool {
        if let Some(u) = self.units.get(name) {
            return u.machine.phase.pid().is_some();
        }
        self.leftovers
            .get(name)
            .and_then(|u| {
                Some(ProcIdentity {
                    pid: u.pid?,
                    start_time: u.start_time?,
                })
            })
            .is_some_and(procfs::is_same_live_process)
    }

    /// Make sure a unit exists: start it, or re-adopt the process an
    /// earlier agent left running, or restore how it ended. An existing
    /// unit is left alone.
    pub fn ensure(&mut self, spec: UnitSpec) {
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
        self.units.insert(name.clone(), unit);
        if let Some(event) = event {
            self.drive(&name, event);
        }
    }

    /// Take over what an earlier agent saved about a unit: a finished unit
    /// keeps its outcome (nothing is run again); a live process is
    /// re-adopted (verified by pid + start time); a process that ended
    /// while no agent watched is reported as such. Returns the event to
    /// feed the unit's machine, if any.
    fn restore(&self, unit: &mut Unit, saved: SavedUnit) -> Option<Event> {
        unit.machine.restart_count = saved.restarts;
        unit.machine.last_exit = saved.last_exit;
        match saved.phase {
            SavedPhase::Completed => {
                unit.machine.phase = Phase::Completed;
                None
            }
            SavedPhase::Failed => {
                let reason = saved.message.unwrap_or_else(|| "failed".into());
                unit.machine.phase = Phase::Failed { reason };
                None
            }
            SavedPhase::Running => match (saved.pid, saved.start_time) {
                (Some(pid), Some(start_time)) => {
                    let id = ProcIdentity { pid, start_time };
                    unit.identity = Some(id);
                    if !procfs::is_same_live_process(id) {
                        return Some(Event::Exited(Exit::Unknown));
                    }
                    unit.watch = watch_adopted(pid);
                    let logs_dir = unit.spec.dir.join("logs");
                    unit.pumps = logs::STREAMS
                        .iter()
                        .filter_map(|s| logs::reopen_stream(&logs_dir, s, self.log_limits).ok())
                        .collect();
                    let age = procfs::age(start_time).unwrap_or_default();
                    Some(Event::Adopted { pid, age })
                }
                // It was waiting to (re)start when the agent stopped.
                _ => Some(Event::Start),
            },
        }
    }

    /// Ask a unit to stop (SIGTERM, then SIGKILL after its kill timeout).
    pub fn stop(&mut self, name: &str) {
        if self.units.get(name).is_some_and(|u| !u.machine.phase.is_terminal()) {
            self.drive(name, Event::Stop);
        }
    }

    /// Stop units `wanted` rejects (and processes of earlier agents nobody
    /// claims), forgetting those that have finished.
    pub fn retain(&mut self, wanted: impl Fn(&str) -> bool) {
        let unwanted: Vec<String> = self.leftovers.keys().filter(|n| !wanted(n)).cloned().collect();
        for name in unwanted {
            let Some(saved) = self.leftovers.remove(&name) else {
                continue;
            };
            if let (Some(pid), Some(start_time)) = (saved.pid, saved.start_time) {
                if procfs::is_same_live_process(ProcIdentity { pid, start_time }) {
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
            self.dirty = true;
        }
        let names: Vec<String> = self.units.keys().filter(|n| !wanted(n)).cloned().collect();
        for name in names {
            let finished = self.units.get(&name).is_some_and(|u| u.machine.phase.is_terminal());
            if finished {
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
                self.dirty = true;
            } else {
                self.stop(&name);
            }
        }
    }

    /// True when no unit has a process any more.
    pub fn all_finished(&self) -> bool {
        self.units.values().all(|u| u.machine.phase.is_terminal()) && self.leftovers.values().all(|u| u.pid.is_none())
    }

    /// Feed one event to a unit's machine and carry out its actions.
    fn drive(&mut self, name: &str, event: Event) {
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
                    Action::TerminateGroup => signal_group(unit, Signal::TERM),
                    Action::KillGroup => {
                        signal_group(unit, Signal::KILL);
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
                        match spawn::prepare(&unit.spec, &ctx) {
                            Err(e) => queue.push_back(Event::SpawnFailed(e.to_string())),
                            Ok(prepared) if unit.spec.artifacts.is_empty() => {
                                queue.push_back(start_process(unit, &ctx, &prepared))
                            }
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
                                std::thread::spawn(move || {
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
            self.dirty = true;
        }
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
            for pump in &mut old.pumps {
                let _ = pump.drain();
            }
            if let Some(next) = old.replacement {
                self.ensure(next);
            }
        }
    }

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
        self.wait(timeout);
        self.wakeups.drain();
        self.reap();
        self.pump_logs();
        self.collect_check_results();
        self.collect_fetches();
        self.fire_deadlines();
        self.run_due_checks();
        Ok(())
    }

    fn next_deadline(&self) -> Option<Instant> {
        let units = self.units.values().flat_map(|u| {
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
            u.machine.next_deadline().into_iter().chain(checks).chain(poll)
        });
        units.chain(self.probes.values().map(|p| p.deadline)).min()
    }

    fn wait(&self, timeout: Option<Duration>) {
        let mut fds = vec![PollFd::from_borrowed_fd(self.wakeups.fd(), PollFlags::IN)];
        for unit in self.units.values() {
            for pump in &unit.pumps {
                fds.push(PollFd::from_borrowed_fd(pump.fd(), PollFlags::IN));
            }
            if let Watch::Pidfd(fd) = &unit.watch {
                if unit.machine.phase.pid().is_some() {
                    fds.push(PollFd::new(fd, PollFlags::IN));
                }
            }
        }
        // A wait to the end of the clock ("never") stays a valid timespec.
        let ts = timeout.map(|t| rustix::time::Timespec {
            tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: t.subsec_nanos().into(),
        });
        // EINTR (a signal) is just a wake-up.
        let _ = rustix::event::poll(&mut fds, ts.as_ref());
    }

    /// Collect every exited child: units, script probes and orphans.
    fn reap(&mut self) {
        loop {
            // wait() is waitpid(-1): any child (rustix's waitpid(None) would be
            // waitpid(0), only our own process group, which tasks have left).
            let (pid, status) = match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some(r)) => r,
                Ok(None) | Err(rustix::io::Errno::CHILD) => return,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return,
            };
            let pid = pid.as_raw_nonzero().get();
            let exit = match (status.exit_status(), status.terminating_signal()) {
                (Some(code), _) => Exit::Code(code),
                (None, Some(sig)) => Exit::Signal(sig),
                _ => Exit::Unknown,
            };
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
                .iter()
                .find(|(_, u)| matches!(u.watch, Watch::Child) && u.machine.phase.pid() == Some(pid))
                .map(|(n, _)| n.clone());
            // No owner: an orphaned grandchild, now reaped.
            if let Some(name) = owner {
                self.drive(&name, Event::Exited(exit));
            }
        }
    }

    /// Start the units whose artifacts arrived (if they still want to start).
    fn collect_fetches(&mut self) {
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
                Ok(()) => start_process(unit, &ctx, &prepared),
                Err(e) => Event::SpawnFailed(e),
            };
            self.drive(&done.unit, event);
        }
    }

    fn pump_logs(&mut self) {
        for (name, unit) in &mut self.units {
            unit.pumps.retain_mut(|pump| match pump.drain() {
                Ok(eof) => !eof,
                Err(e) => {
                    self.changes.push(Change {
                        unit: name.clone(),
                        label: unit.spec.label.clone(),
                        message: format!("log capture stopped: {e}"),
                    });
                    false
                }
            });
        }
    }

    fn fire_deadlines(&mut self) {
        let now = Instant::now();
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
                Watch::Child => false,
                Watch::Pidfd(fd) => {
                    let mut p = [PollFd::new(fd, PollFlags::IN)];
                    rustix::event::poll(&mut p, Some(&rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 })).unwrap_or(0)
                        > 0
                }
                Watch::ProcPoll(at) if *at <= now => {
                    *at = clock::after(now, PROC_POLL_INTERVAL);
                    unit.identity.is_none_or(|id| !procfs::is_same_live_process(id))
                }
                Watch::ProcPoll(_) => false,
            };
            if gone {
                due.push((name.clone(), Event::Exited(Exit::Unknown)));
            }
        }
        for (name, event) in due {
            self.drive(&name, event);
        }
        // Script probes past their timeout.
        let late: Vec<i32> = self
            .probes
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in late {
            // The probe's exit, when the kill lands, is reaped like any orphan.
            if let Some(probe) = self.probes.remove(&pid) {
                if let Some(pid) = Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process_group(pid, Signal::KILL);
                }
                self.record_check(&probe.unit, probe.check, Err("script timed out".into()));
            }
        }
    }

    fn run_due_checks(&mut self) {
        let now = Instant::now();
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
                    Probe::Script { argv } => match spawn::spawn_probe(&unit.spec, &ctx, argv) {
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
                        std::thread::spawn(move || {
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

    fn collect_check_results(&mut self) {
        while let Ok(r) = self.check_rx.try_recv() {
            let current = self.units.get(&r.unit).and_then(|u| u.machine.phase.pid());
            if current == Some(r.pid) {
                self.record_check(&r.unit, r.check, r.result);
            } else if let Some(c) = self.units.get_mut(&r.unit).and_then(|u| u.checks.get_mut(r.check)) {
                c.in_flight = false;
            }
        }
    }

    fn record_check(&mut self, name: &str, check: usize, result: Result<(), String>) {
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
        }
    }

    /// Persist the state if anything changed (and then only if the bytes differ).
    fn save(&mut self) -> Result<(), SupervisorError> {
        if !self.dirty {
            return Ok(());
        }
        self.dirty = false;
        let mut state = SavedState {
            boot_id: self.boot_id.clone(),
            units: self.leftovers.clone(),
        };
        for (name, u) in &self.units {
            let (phase, message) = match &u.machine.phase {
                Phase::Completed => (SavedPhase::Completed, None),
                Phase::Failed { reason } => (SavedPhase::Failed, Some(reason.clone())),
                Phase::Stopped => continue,
                _ => (SavedPhase::Running, None),
            };
            let running = u.machine.phase.pid().is_some();
            state.units.insert(
                name.clone(),
                SavedUnit {
                    phase,
                    pid: u.identity.filter(|_| running).map(|i| i.pid),
                    start_time: u.identity.filter(|_| running).map(|i| i.start_time),
                    dir: u.spec.dir.clone(),
                    restarts: u.machine.restart_count,
                    last_exit: u.machine.last_exit,
                    message,
                    kill_timeout_ms: u64::try_from(u.spec.kill_timeout.as_millis()).unwrap_or(u64::MAX),
                },
            );
        }
        self.state_file.save(&state).map_err(SupervisorError::State)?;
        Ok(())
    }

    /// Persist now (e.g. before exiting).
    pub fn flush(&mut self) -> Result<(), SupervisorError> {
        self.dirty = true;
        self.save()
    }
}

/// Processes an earlier agent started but was killed before it recorded
/// them (state is written before the agent sleeps, so a kill -9 between a
/// fork and that write loses the pid): found in /proc as process-group
/// leaders (every unit is started with setsid) whose working directory, or
/// else `K8S4R_TASK_DIR`, is a unit's directory, and recorded as leftovers
/// so they are re-adopted (or stopped, when unwanted) instead of started a
/// second time. Only units without a live recorded process and without a
/// final outcome are considered; a leader whose parent is another such
/// leader of the same unit (a task's own `setsid` child) is not the unit's
/// process. Returns notices for the log.
fn claim_unrecorded(data: &Path, leftovers: &mut BTreeMap<String, SavedUnit>) -> Vec<String> {
    let dirs: HashMap<PathBuf, String> = crate::agent::unit_dirs(data)
        .into_iter()
        .map(|(name, dir)| (dir, name))
        .collect();
    if dirs.is_empty() {
        return Vec::new();
    }
    let open = |name: &str| match leftovers.get(name) {
        None => true,
        Some(u) if u.phase == SavedPhase::Running => !matches!(
            (u.pid, u.start_time),
            (Some(pid), Some(start_time)) if procfs::is_same_live_process(ProcIdentity { pid, start_time })
        ),
        Some(_) => false,
    };
    let unit_of = |pid: i32| -> Option<&String> {
        if let Some(name) = std::fs::read_link(format!("/proc/{pid}/cwd"))
            .ok()
            .and_then(|cwd| dirs.get(&cwd))
        {
            return Some(name);
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        let dir = env
            .split(|b| *b == 0)
            .find_map(|v| v.strip_prefix(b"K8S4R_TASK_DIR="))?;
        dirs.get(Path::new(std::str::from_utf8(dir).ok()?))
    };
    let own = std::process::id() as i32;
    let mut found: BTreeMap<String, Vec<(ProcIdentity, i32)>> = BTreeMap::new();
    let pids = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok());
    for pid in pids.filter(|p| *p != own) {
        let Ok(stat) = procfs::read_stat(pid) else { continue };
        if stat.pgrp != pid || !stat.is_alive() {
            continue;
        }
        if let Some(name) = unit_of(pid).filter(|n| open(n)) {
            let id = ProcIdentity {
                pid,
                start_time: stat.start_time,
            };
            found.entry(name.clone()).or_default().push((id, stat.ppid));
        }
    }
    let mut notices = Vec::new();
    for (name, mut procs) in found {
        let leaders: Vec<i32> = procs.iter().map(|(id, _)| id.pid).collect();
        procs.retain(|(_, ppid)| !leaders.contains(ppid));
        let Some((id, _)) = procs.into_iter().min_by_key(|(id, _)| id.start_time) else {
            continue;
        };
        let dir = dirs.iter().find(|(_, n)| **n == name).map(|(d, _)| d.clone());
        let saved = leftovers.remove(&name);
        let unit = SavedUnit {
            phase: SavedPhase::Running,
            pid: Some(id.pid),
            start_time: Some(id.start_time),
            dir: saved.as_ref().map(|u| u.dir.clone()).or(dir).unwrap_or_default(),
            restarts: saved.as_ref().map_or(0, |u| u.restarts),
            last_exit: saved.as_ref().and_then(|u| u.last_exit),
            message: None,
            kill_timeout_ms: saved.as_ref().map_or(0, |u| u.kill_timeout_ms),
        };
        leftovers.insert(name.clone(), unit);
        notices.push(format!(
            "{name}: pid {} runs but was not recorded (the last agent was killed while starting it); taking it over",
            id.pid
        ));
    }
    notices
}

/// Exec a prepared unit; the event says how it went.
fn start_process(unit: &mut Unit, ctx: &spawn::SpawnContext<'_>, prepared: &spawn::Prepared) -> Event {
    match spawn::exec(&unit.spec, ctx, prepared) {
        Ok(spawned) => {
            unit.identity = Some(spawned.identity);
            unit.pumps = spawned.pumps;
            unit.watch = Watch::Child;
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
/// session). ESRCH (all gone) is fine.
fn signal_group(unit: &Unit, sig: Signal) {
    if let Some(pid) = unit.identity.and_then(|id| Pid::from_raw(id.pid)) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

/// Watch a process that is not our child: pidfd if the kernel has it.
fn watch_adopted(pid: i32) -> Watch {
    match Pid::from_raw(pid).map(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())) {
        Some(Ok(fd)) => Watch::Pidfd(fd),
        _ => Watch::ProcPoll(clock::after(Instant::now(), PROC_POLL_INTERVAL)),
    }
}
