//! The supervisor: a map of named units (tasks, group daemons, robot
//! daemons, proxies), each a process with a lifecycle [`machine::Machine`].
//! It executes what the machines decide: spawn, signal process groups,
//! reap (it is the child subreaper, so orphaned grandchildren are reaped
//! too), pump logs, run checks, persist state. It decides nothing about
//! *which* units should exist: that is `reconcile`'s job.
//!
//! By job: this file holds the types, construction and persistence;
//! `lifecycle` carries out a unit's machine (ensure, stop, retain, drive),
//! `adoption` takes over processes an earlier agent left, `probes` runs
//! health checks, and `event_loop` waits and dispatches (`run_once`).

mod adoption;
pub mod cgroup;
pub mod checks;
mod event_loop;
pub mod host;
mod lifecycle;
pub mod logs;
pub mod machine;
mod probes;
pub mod procfs;
pub mod signals;
pub mod spawn;
pub mod state;
pub(in crate::agent) mod sys;
mod watcher;

pub use signals::Waker;

use crate::agent::layout::Layout;
use crate::api::{Artifact, Template};
use adoption::claim_unrecorded;
use cgroup::{Cgroups, Limits};
use checks::CheckSpec;
use host::{Host, System};
use lifecycle::FetchDone;
use logs::{LogLimits, LogPump};
use machine::{Exit, Machine, Phase, Policy};
use probes::{CheckResult, CheckState, ProbeRun};
use procfs::ProcIdentity;
use rustix::fd::OwnedFd;
use signals::Wakeups;
use state::{SavedPhase, SavedUnit, StateError, StateFile};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the waitpid(-1) sweep may wait after a SIGCHLD that came with
/// a child reaped through its pidfd: the signal was most likely that
/// child's, and with 1,000 children each sweep walks them all in the
/// kernel; what else it finds is an orphaned grandchild (the agent is the
/// subreaper), which may stay a zombie this long.
const ORPHAN_SWEEP: Duration = Duration::from_secs(1);

/// How often a re-adopted process is checked when pidfd_open is missing
/// (kernels before 5.3). Only then does the agent poll anything.
pub(super) const PROC_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Moved units kept for the planner between two passes (a bound for an
/// agent whose planner never asks, as in tests); past it, it plans all.
const MOVED_KEPT: usize = 4096;

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
            SupervisorError::Signals(e) => write!(f, "installing signal handlers or the wait set: {e}"),
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
    /// Our child: SIGCHLD + the waitpid(-1) sweep.
    Child,
    /// Our child, through its pidfd: reaped alone when it becomes readable
    /// (the sweep still reaps it if it comes first).
    ChildFd(OwnedFd),
    /// Re-adopted from an earlier agent: pidfd becomes readable at exit.
    Pidfd(OwnedFd),
    /// Re-adopted, no pidfd support: /proc checked every second.
    ProcPoll(Instant),
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

/// What the state file keeps of a unit; None for a stopped one (it is not
/// kept).
fn saved_unit(u: &Unit) -> Option<SavedUnit> {
    let (phase, message) = match &u.machine.phase {
        Phase::Completed => (SavedPhase::Completed, None),
        Phase::Failed { reason } => (SavedPhase::Failed, Some(reason.clone())),
        Phase::Stopped => return None,
        _ => (SavedPhase::Running, None),
    };
    let running = u.machine.phase.pid().is_some();
    let identity = u.identity.filter(|_| running);
    Some(SavedUnit {
        phase,
        message,
        pid: identity.map(|i| i.pid),
        start_time: identity.map(|i| i.start_time),
        dir: u.spec.dir.clone(),
        restarts: u.machine.restart_count,
        last_exit: u.machine.last_exit,
        kill_timeout_ms: u64::try_from(u.spec.kill_timeout.as_millis()).unwrap_or(u64::MAX),
    })
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
    /// Names of the units that started, changed phase or health, were
    /// replaced or went since the last call (repeats possible); None when not known
    /// (then a planner must assume every unit may have).
    fn take_moved(&mut self) -> Option<Vec<String>> {
        None
    }
    /// Settle the flush owed before stopping, replacing or forgetting
    /// anything ([`Supervisor::settle_before_stopping`]).
    fn settle_owed(&mut self) {}
    /// Carry out a plan: ensure its units in order, then stop every unit
    /// it does not want.
    fn apply(&mut self, plan: Plan) {
        for spec in plan.units {
            self.ensure(spec);
        }
        self.retain(&|n| plan.wanted.contains(n));
    }
}

/// What reconcile decided in one pass, for the supervisor to apply in one
/// call ([`Units::apply`]).
#[derive(Debug, Default)]
pub struct Plan {
    /// Units to start, or to replace where the revision changed (the
    /// supervisor tells which), in order.
    pub units: Vec<UnitSpec>,
    /// Every unit the desired set needs: the others are stopped, and
    /// forgotten once they have ended. (Shared: the planner keeps it from
    /// pass to pass while it does not change.)
    pub wanted: std::sync::Arc<BTreeSet<String>>,
    /// Which `wanted` this is: the planner counts up when it changes, so
    /// the same number is the same set (0: not counted, never the same).
    pub wanted_version: u64,
    /// The names wanted by the set one version before and not by this one
    /// (None: not known): where every unit was wanted then, these are the
    /// ones to stop, found without a walk of every unit.
    pub dropped: Option<Vec<String>>,
    /// Names in `units`.
    names: BTreeSet<String>,
}

impl Plan {
    /// Add a unit; the first spec of a name wins (a robot-scoped daemon is
    /// run as the first group that declares it says).
    pub fn ensure(&mut self, spec: UnitSpec) {
        if self.names.insert(spec.name.clone()) {
            self.units.push(spec);
        }
    }
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
    fn settle_owed(&mut self) {
        Supervisor::settle_owed(self)
    }
    fn take_moved(&mut self) -> Option<Vec<String>> {
        let moved = std::mem::take(&mut self.moved);
        (!std::mem::take(&mut self.moved_lost)).then_some(moved)
    }
    fn apply(&mut self, plan: Plan) {
        // The wanted set of the last pass, after which every unit was
        // wanted, and only wanted units to start: nothing to stop, and no
        // look at every unit to find that out.
        let all_wanted = self.leftovers.is_empty() && plan.units.iter().all(|u| plan.wanted.contains(&u.name));
        let unchanged = all_wanted && plan.wanted_version != 0 && self.all_wanted == Some(plan.wanted_version);
        // Every unit was wanted by the version before: only what this one
        // dropped is to stop.
        let follows = all_wanted
            && self
                .all_wanted
                .is_some_and(|v| v != 0 && v.checked_add(1) == Some(plan.wanted_version))
            && plan.dropped.is_some();
        for spec in plan.units {
            self.ensure(spec);
        }
        if unchanged {
            return;
        }
        let unwanted = match plan.dropped.filter(|_| follows) {
            Some(dropped) => {
                let unwanted: Vec<String> = dropped.into_iter().filter(|n| self.units.contains_key(n)).collect();
                #[cfg(debug_assertions)]
                {
                    let mut sorted = unwanted.clone();
                    sorted.sort();
                    let walked = self.not_in(&plan.wanted);
                    assert_eq!(sorted, walked, "the units version {} dropped", plan.wanted_version);
                }
                unwanted
            }
            None => {
                self.retain_leftovers(&|n: &str| plan.wanted.contains(n));
                self.not_in(&plan.wanted)
            }
        };
        let all = self.let_go(unwanted) && self.leftovers.is_empty();
        self.all_wanted = all.then_some(plan.wanted_version);
    }
}

pub struct Supervisor {
    /// Boxed: a unit is large, and a map node moves its neighbours on
    /// every insert and remove.
    units: BTreeMap<String, Box<Unit>>,
    /// Units saved by an earlier agent, not yet claimed by `ensure`.
    leftovers: BTreeMap<String, SavedUnit>,
    state_file: StateFile,
    boot_id: String,
    wakeups: Wakeups,
    /// What the loop sleeps on (log pipes, pidfds, the wake-up pipe).
    watcher: watcher::Watcher,
    /// The watcher's failure was logged (once).
    watch_failure_told: bool,
    check_tx: mpsc::Sender<CheckResult>,
    check_rx: mpsc::Receiver<CheckResult>,
    probes: HashMap<i32, ProbeRun>,
    /// When the waitpid(-1) sweep runs after a SIGCHLD that a pidfd's
    /// reap may already explain ([`ORPHAN_SWEEP`]).
    sweep_at: Option<Instant>,
    /// Children reaped through their pidfds, and waitpid(-1) sweeps run.
    reaps: (u64, u64),
    log_limits: LogLimits,
    cgroups: Option<Cgroups>,
    is_root: bool,
    allow_root_tasks: bool,
    changes: Vec<Change>,
    /// Units whose saved fields may have changed since the last save (a
    /// save looks at these only: its cost is what changed, not every unit).
    touched: BTreeSet<String>,
    /// Units that moved since the planner last asked ([`Units::take_moved`]),
    /// at most [`MOVED_KEPT`]; past that only that some were lost.
    moved: Vec<String>,
    moved_lost: bool,
    /// The wanted set of the last [`Units::apply`], if every unit was in it.
    all_wanted: Option<u64>,
    /// The earliest deadline of any unit (a machine's, a due check's, a
    /// process poll's), or a bound no later than it: a changed unit brings
    /// its own deadlines in ([`Self::lower_deadline`]), a walk that acted
    /// on due ones forgets it. So a wake-up finds it, and that nothing is
    /// due, without a walk of every unit.
    unit_deadline: event_loop::Earliest,
    fetch_seq: u64,
    fetch_tx: mpsc::Sender<FetchDone>,
    fetch_rx: mpsc::Receiver<FetchDone>,
    /// Largest artifact a unit may download.
    artifact_max_bytes: u64,
    require_artifact_checksums: bool,
    /// Processes: the real system, or a fake in tests.
    host: Box<dyn Host>,
    /// A flush to settle before stopping, replacing or forgetting a unit
    /// ([`Supervisor::settle_before_stopping`]); none by default.
    owed: crate::agent::append_log::Owed,
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
        Supervisor::with_host(config, Box::new(System))
    }

    /// [`Supervisor::new`] with processes handled by `host`.
    pub fn with_host(
        config: SupervisorConfig,
        host: Box<dyn Host>,
    ) -> Result<(Supervisor, Vec<String>), SupervisorError> {
        let data = &config.data_dir;
        std::fs::create_dir_all(data).map_err(|e| SupervisorError::DataDir(data.clone(), e))?;
        let layout = Layout::new(data);
        let lock_path = layout.lock_file();
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| SupervisorError::DataDir(lock_path.clone(), e))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|_| SupervisorError::Locked(lock_path.clone()))?;
        // The agent's pid, for `stop-all` (written once, not on every change).
        let _ = std::fs::write(layout.pid_file(), format!("{}\n", std::process::id()));

        sys::mark_inherited_fds_cloexec();
        let mut notices = Vec::new();
        // Before the agent holds many: the first start would do it.
        if let Err(e) = sys::launch::reserve() {
            notices.push(format!("cannot reserve descriptors for starting tasks yet: {e}"));
        }
        notices.extend(spawn::raise_open_files());
        if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
            notices.push(format!(
                "cannot become child subreaper ({e}): orphaned grandchildren will be reaped by init"
            ));
        }
        let wakeups = Wakeups::install().map_err(SupervisorError::Signals)?;
        let mut watcher = watcher::Watcher::new().map_err(SupervisorError::Signals)?;
        watcher.watch(wakeups.fd());
        let (mut state_file, saved) = loop {
            match StateFile::load(data) {
                // Atomic writes and appends make this unlikely (a failing
                // disk): keep the damaged file (the snapshot or the journal)
                // for inspection and go on without it rather than leaving
                // the robot without its workloads.
                Err(StateError::Parse(path, e)) => {
                    let mut aside = path.clone().into_os_string();
                    aside.push(".damaged");
                    let aside = PathBuf::from(aside);
                    std::fs::rename(&path, &aside)
                        .map_err(|e| SupervisorError::State(StateError::Write(path.clone(), e)))?;
                    notices.push(format!(
                        "{} was damaged ({e}); moved to {} and starting without it",
                        path.display(),
                        aside.display()
                    ));
                }
                other => break other.map_err(SupervisorError::State)?,
            }
        };
        // The journal folded in: appends never follow a torn line, and an
        // older agent reads the whole state from the snapshot.
        state_file.compact().map_err(SupervisorError::State)?;
        let boot_id = procfs::boot_id();
        let mut leftovers = saved.units;
        if !saved.boot_id.is_empty() && saved.boot_id != boot_id {
            // Another boot: none of those pids are ours.
            for u in leftovers.values_mut() {
                u.pid = None;
                u.start_time = None;
            }
        }
        notices.extend(claim_unrecorded(&*host, &layout, &mut leftovers));
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
        // Each saved unit once: the first save writes what a new boot
        // changed of them (pids cleared) and what was claimed.
        let touched = leftovers.keys().cloned().collect();
        let sup = Supervisor {
            units: BTreeMap::new(),
            leftovers,
            state_file,
            boot_id,
            wakeups,
            watcher,
            watch_failure_told: false,
            check_tx,
            check_rx,
            probes: HashMap::new(),
            sweep_at: None,
            reaps: (0, 0),
            log_limits: config.log_limits,
            cgroups,
            is_root: rustix::process::geteuid().is_root(),
            allow_root_tasks: config.allow_root_tasks,
            changes: Vec::new(),
            touched,
            moved: Vec::new(),
            // What moved before anyone asked is not known.
            moved_lost: true,
            all_wanted: None,
            unit_deadline: event_loop::Earliest::Unknown,
            fetch_seq: 0,
            fetch_tx,
            fetch_rx,
            artifact_max_bytes,
            require_artifact_checksums: config.require_artifact_checksums,
            host,
            owed: Default::default(),
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

    /// Settle `owed` before every step that stops, replaces or forgets a
    /// unit (a stop, a replacement, an ended unit let go), so what asked
    /// for the step is durable before it: the connected agent's
    /// assignments log, whose delta may start new tasks at once but must
    /// not stop one until it would survive a power loss
    /// (`connected::desired`).
    pub fn settle_before_stopping(&mut self, owed: crate::agent::append_log::Owed) {
        self.owed = owed;
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
            .is_some_and(|id| self.host.is_alive(id))
    }

    /// True when no unit has a process any more.
    pub fn all_finished(&self) -> bool {
        self.units.values().all(|u| u.machine.phase.is_terminal()) && self.leftovers.values().all(|u| u.pid.is_none())
    }

    /// Note that a unit's saved fields, or what reconcile and a status see
    /// of it, may have changed.
    fn touch(&mut self, name: &str) {
        if !self.touched.contains(name) {
            self.touched.insert(name.to_string());
        }
        if self.moved.len() < MOVED_KEPT {
            self.moved.push(name.to_string());
        } else {
            self.moved_lost = true;
        }
    }

    /// Persist the units touched since the last save, where what the file
    /// holds of them changed (most wake-ups change nothing it holds: a log
    /// line, a check, another unit's output).
    fn save(&mut self) -> Result<(), SupervisorError> {
        if self.touched.is_empty() {
            return Ok(());
        }
        let touched = std::mem::take(&mut self.touched);
        let units = touched.iter().map(|name| {
            let saved = match self.units.get(name) {
                Some(u) => saved_unit(u),
                None => self.leftovers.get(name).cloned(),
            };
            (name.clone(), saved)
        });
        if let Err(e) = self.state_file.save_units(&self.boot_id, units) {
            // Tried again at the next save.
            self.touched = touched;
            return Err(SupervisorError::State(e));
        }
        Ok(())
    }

    /// Persist now (at the end of a pass: before statuses go out).
    pub fn flush(&mut self) -> Result<(), SupervisorError> {
        self.save()
    }

    /// Persist now, whole: the journal folded into the snapshot, before
    /// the agent exits or execs another binary (an older agent, after a
    /// rollback, reads the snapshot alone).
    pub fn checkpoint(&mut self) -> Result<(), SupervisorError> {
        self.flush()?;
        self.state_file.compact().map_err(SupervisorError::State)
    }
}

#[cfg(test)]
mod tests;
