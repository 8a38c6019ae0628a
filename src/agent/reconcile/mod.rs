//! Desired tasks in, units out. Given the complete desired set of tasks
//! for this robot (from a Job file in standalone mode, from the server's
//! assignments in connected mode), make the supervisor run exactly what is
//! needed, in the right order:
//!
//! 1. per TaskGroup, its init tasks once, in order: a non-daemon must
//!    complete (exit 0) before the next starts, and its failure fails the
//!    group; a `daemon: true` one keeps running as `<taskGroup>-<init>`;
//!    `scope: robot` daemons run once per robot as `robot-<name>`, shared by
//!    every group that declares one of that name (e.g. one SPIRE agent);
//! 2. if the group has an active network, its proxy `<taskGroup>-envoy`,
//!    waited on until ready; its PROXY_* variables go to the tasks. With
//!    `--proxy-mode shared` the group's part of the robot-wide `robot-envoy`
//!    instead (see `robot_proxy`), waited on until its listeners are served;
//!    a proxy of the other mode left by an earlier agent is stopped first
//!    (it holds the ports), the tasks keep running meanwhile;
//! 3. the tasks, `<job>-<group>-r<i>-<task>`.
//!
//! Everything is derived again on every pass from the desired set and the
//! supervisor's units, so an agent restart (which restores the units from
//! disk) resumes where it was: completed init tasks are not run again.
//! A pass only reads the units and returns a [`Pass`]: a `Plan` (units to
//! start or replace, every unit wanted), which the supervisor applies in
//! one call, stopping what is not wanted, and the files to write first.
//!
//! Groups come as data: each task carries its group's key
//! (`taskGroupName`), name and shared fields (init tasks, network), filled
//! in from the group's part of the server's answer
//! (`connected::desired`) or from the Job (`standalone`); nothing here
//! takes a name apart.
//!
//! A pass is split at the system's edge ([`Reconciler::pass`]):
//! [`Reconciler::observe`] reads what planning needs beyond the units (a
//! waiting proxy's readiness, or its part's in the robot-wide Envoy, from
//! the admin socket, and why not once past its deadline; the launch file
//! of an Envoy left running by an earlier agent; a failed init task's last
//! output; the Envoy binary on PATH or `--proxy-user`'s account) into an
//! [`Observed`]. [`Reconciler::plan`] decides from that, the desired set
//! and the units (read through [`Units`], its clock included) and reads no
//! file or socket; of the environment, only the temp dir's name where an
//! admin socket path would be too long inside the proxy's directory (the
//! PATH units get is read once, in [`Reconciler::new`]). A group proxy's
//! config is rendered in memory to refuse a bad network; the files to
//! write (config with its port check, launch file, a running Envoy's
//! update, the robot-wide Envoy's members) come back as [`Effect`]s,
//! carried out before the units start. The unit tests below drive planning with a
//! read-only fake of the units and given facts, and no data directory.
//!
//! Where each unit lives and what it is called: `layout`.

use super::privileges::ProxyMode;
use super::robot_proxy::{Part, RobotProxy};
use super::specs::{self, hash_debug, task_path, ProxyUnit};
use super::supervisor::cgroup::Limits;
use super::supervisor::checks;
use super::supervisor::machine::{Phase, Policy, RestartRules};
use super::supervisor::{DirOwner, Plan, UnitSpec, Units};
use crate::agent::clock;
use crate::agent::gc::AllocGc;
use crate::agent::layout::{Layout, UnitId};
use crate::api::{JobType, NetworkConfig, RestartMode, RestartPolicy, TaskSpec};
use crate::envoy::{self, GroupProxy};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod books;
#[cfg(test)]
mod books_tests;

pub use super::specs::{DEFAULT_KILL_TIMEOUT, PROXY_READY_TIMEOUT};
pub use books::{task_named, Since};
use books::{GroupBooks, Groups};
const PROXY_READY_POLL: Duration = Duration::from_millis(100);

/// One task assigned to this robot, with its placement filled in
/// (`jobName`, `taskGroupName`, `replicaIndex`, the group's `initTasks`,
/// the group's merged `network`).
#[derive(Clone, Debug, PartialEq)]
pub struct AssignedTask {
    /// `<job>-<group>-r<i>-<task>`.
    pub name: String,
    pub job_type: JobType,
    /// The group's name in the Job (`<group>`), as the Job or the server's
    /// group part gives it.
    pub group: String,
    /// Shared: a task whose spec did not change keeps it from answer to
    /// answer (see `connected::assigned_tasks`), so copies of the desired
    /// set copy no spec, and its hash is computed once.
    pub spec: Arc<DesiredSpec>,
}

/// A desired task's spec with its hash ([`hash_debug`]: formatting every
/// spec on every pass was the costliest step of a pass with 100 tasks),
/// computed when first asked for and forgotten when the spec is changed.
pub struct DesiredSpec {
    spec: TaskSpec,
    hash: std::sync::OnceLock<u64>,
}

impl DesiredSpec {
    pub fn hash(&self) -> u64 {
        *self.hash.get_or_init(|| hash_debug(&self.spec))
    }
}

impl From<TaskSpec> for DesiredSpec {
    fn from(spec: TaskSpec) -> Self {
        DesiredSpec {
            spec,
            hash: std::sync::OnceLock::new(),
        }
    }
}

impl From<TaskSpec> for Arc<DesiredSpec> {
    fn from(spec: TaskSpec) -> Self {
        Arc::new(spec.into())
    }
}

impl Clone for DesiredSpec {
    fn clone(&self) -> Self {
        self.spec.clone().into()
    }
}

impl PartialEq for DesiredSpec {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}

impl std::fmt::Debug for DesiredSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.spec.fmt(f)
    }
}

impl std::ops::Deref for DesiredSpec {
    type Target = TaskSpec;
    fn deref(&self) -> &TaskSpec {
        &self.spec
    }
}

impl std::ops::DerefMut for DesiredSpec {
    fn deref_mut(&mut self) -> &mut TaskSpec {
        self.hash = std::sync::OnceLock::new();
        &mut self.spec
    }
}

impl AssignedTask {
    pub fn job(&self) -> &str {
        self.spec.job_name.as_deref().unwrap_or("")
    }
    /// The group's name in the Job (`<group>`), for people and K8S4R_TASKGROUP.
    pub fn group(&self) -> &str {
        &self.group
    }
    pub fn replica(&self) -> i32 {
        self.spec.replica_index.unwrap_or(0)
    }
    /// The TaskGroup object's name, `<job>-<group>`, as `api::job_expansion`
    /// sets `taskGroupName`.
    pub fn group_key(&self) -> String {
        self.group_key_str().to_string()
    }

    pub fn group_key_str(&self) -> &str {
        self.spec.task_group_name.as_deref().unwrap_or_else(|| self.job())
    }
}

#[derive(Clone, Debug)]
pub struct ReconcileConfig {
    pub robot: String,
    pub data_dir: PathBuf,
    pub envoy_bin: PathBuf,
    /// Remove the directories of groups that left this robot this long
    /// after they were last needed (None: keep them; `run -f` does).
    pub gc_after: Option<Duration>,
    /// Who runs a task whose manifest names no `user` (`--default-user`).
    pub default_user: Option<String>,
    /// Who runs the groups' Envoys when the agent is root (`--proxy-user`;
    /// None: the agent's user).
    pub proxy_user: Option<String>,
    /// One Envoy per group, or one for the robot (`--proxy-mode`).
    pub proxy_mode: ProxyMode,
}

/// What became of one desired task.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Waiting,
    Running,
    Succeeded,
    Failed(String),
}

/// What a pass needs to know of the system beyond the units, read before
/// it by [`Reconciler::observe`]: planning itself reads no file, socket or
/// environment.
#[derive(Debug, Default)]
pub struct Observed {
    /// Groups (keys) whose proxy was waiting to be ready and now is (its
    /// admin socket answered).
    pub proxy_ready: BTreeSet<String>,
    /// Groups (keys) whose Envoy runs, left by an earlier agent, with how it
    /// was launched (its launch file): it is re-adopted, config and all.
    pub launches: BTreeMap<String, envoy::Launch>,
    /// Failed init tasks (unit names) with the last lines of their output.
    pub log_tails: BTreeMap<String, String>,
    /// The Envoy binary the proxy's user can run, or why there is none:
    /// looked up (PATH, `--proxy-user`'s account) when a proxy is to start.
    pub envoy_bin: Option<Result<PathBuf, String>>,
    /// `--proxy-mode shared`: groups whose part of the robot-wide Envoy it
    /// now serves.
    pub shared_served: BTreeSet<String>,
    /// `--proxy-mode shared`: groups past their readiness deadline, with
    /// what Envoy says about their upstreams.
    pub shared_reasons: BTreeMap<String, String>,
    /// Units whose state changed since the last pass ([`Units::take_moved`]);
    /// None: not known, so every group is planned.
    pub moved: Option<Vec<String>>,
}

/// I/O a pass asks for, carried out (by [`Reconciler::step`]) before its
/// units start; a failure fails the group, as the same error at planning
/// would.
#[derive(Debug)]
pub enum Effect {
    /// Group `key`'s new proxy: create its directory, write its config
    /// (checking its ports are free) and the launch file that lets a later
    /// agent re-adopt it.
    PrepareProxy {
        key: String,
        proxy: GroupProxy,
        launch_file: PathBuf,
    },
    /// Group `key`'s network changed: rewrite the xDS files, which the
    /// running Envoy picks up; if that is not enough, write the config
    /// afresh and replace the proxy with `restart` (a new revision).
    UpdateProxy {
        key: String,
        proxy: GroupProxy,
        restart: Box<UnitSpec>,
    },
    /// `--proxy-mode shared`: write the robot-wide Envoy's members, the
    /// groups that asked this pass plus the `draining` ones (gone, their
    /// tasks still stopping); a group that cannot join fails. The
    /// robot-wide unit runs while there is any member.
    ShareProxy { draining: BTreeSet<String> },
}

/// One pass's decision: the units for the supervisor, the I/O to do before
/// they start, and when to look again even if nothing happens (a proxy's
/// readiness), so the caller's wait is bounded.
#[derive(Debug, Default)]
pub struct Pass {
    pub plan: Plan,
    pub effects: Vec<Effect>,
    pub recheck: Option<Instant>,
}

struct ProxyStart {
    /// The network the proxy was configured with.
    network: NetworkConfig,
    /// The Envoy binary it was started with (looked up once).
    envoy_bin: PathBuf,
    admin_socket: PathBuf,
    since: Instant,
    ready: bool,
    env: Vec<(String, String)>,
}

pub struct Reconciler {
    config: ReconcileConfig,
    layout: Layout,
    /// Groups that failed (init task or proxy), with the reason.
    failed: BTreeMap<String, String>,
    proxies: BTreeMap<String, ProxyStart>,
    notices: Vec<(String, String)>,
    /// Per group seen: its task units and the units supporting them
    /// (init daemons, proxy, robot daemons), see [`GroupBooks`].
    seen: BTreeMap<String, GroupBooks>,
    /// Supporting units of removed groups kept until the group's tasks have
    /// stopped: a task shutting down may still need its proxy or daemon.
    lingering: BTreeSet<String>,
    /// Desired groups whose every task here has ended for good (a finished
    /// batch group): their proxy (≈16 MiB) and daemons are stopped although
    /// the Job still exists.
    finished: BTreeSet<String>,
    gc: Option<AllocGc>,
    /// Per desired task, a stamp of what its unit was last built from.
    ensured: BTreeMap<String, u64>,
    /// Per desired task, its spec when its unit was last built: a service
    /// or system task that ended runs again when its spec changes (a
    /// rollout's fix, or its revert).
    built: BTreeMap<String, u64>,
    /// `--proxy-mode shared`: the robot-wide Envoy, once a group needed it.
    robot_proxy: Option<RobotProxy>,
    /// Groups whose last plan left them with nothing to wait for (every
    /// task ensured, or all ended), with the tasks it planned. While these
    /// are still the group's tasks and none of its units moved, planning it
    /// again would decide the same: it is skipped, so a pass costs the
    /// groups that changed, not every task on the robot.
    settled: BTreeMap<String, Vec<AssignedTask>>,
    /// A hash of the desired set's names and specs when [`Self::bookkeep`]
    /// last ran, and the units it wanted then.
    shape: Option<u64>,
    wanted: Arc<BTreeSet<String>>,
    /// Counts the changes of `wanted` ([`Plan::wanted_version`]).
    wanted_version: u64,
    /// Groups planned (not skipped as settled) since the last step began:
    /// only their tasks' statuses can have changed ([`Self::replanned`]).
    replanned: BTreeSet<String>,
    /// I/O asked for during this pass (returned in its [`Pass`]).
    effects: Vec<Effect>,
    /// The tasks' PATH (the agent's, read once).
    path: String,
    /// What the caller told of the next step's set ([`Self::tell`]).
    since: Since,
    /// Task names kept in `seen` (under a group that no longer has them)
    /// only while their process runs: looked at again on each bookkeeping.
    departing: BTreeSet<String>,
    /// The names in `wanted` that are not the desired tasks': support
    /// units of unfinished groups, lingering ones, the robot-wide proxy.
    extra: BTreeSet<String>,
    /// The names the last change of `wanted` dropped ([`Plan::dropped`]).
    dropped: Vec<String>,
}

impl Reconciler {
    pub fn new(config: ReconcileConfig) -> Self {
        let layout = Layout::new(&config.data_dir);
        let gc = config.gc_after.map(|after| AllocGc::new(&layout, after));
        Reconciler {
            gc,
            layout,
            config,
            failed: BTreeMap::new(),
            proxies: BTreeMap::new(),
            notices: Vec::new(),
            seen: BTreeMap::new(),
            lingering: BTreeSet::new(),
            finished: BTreeSet::new(),
            ensured: BTreeMap::new(),
            built: BTreeMap::new(),
            settled: BTreeMap::new(),
            replanned: BTreeSet::new(),
            shape: None,
            wanted: Arc::default(),
            wanted_version: 0,
            robot_proxy: None,
            effects: Vec::new(),
            path: task_path(),
            since: Since::Unknown,
            departing: BTreeSet::new(),
            extra: BTreeSet::new(),
            dropped: Vec::new(),
        }
    }

    /// Tell the next [`Self::step`] what changed in the set it will be
    /// given since the set the step before was given (see [`Since`]).
    /// Untold, a step compares the set whole.
    pub fn tell(&mut self, since: Since) {
        self.since = since;
    }

    /// Group-level events since the last call: (group key, message).
    pub fn take_notices(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.notices)
    }

    /// One pass, deciding from the desired set, what the supervisor runs
    /// (read only) and what was `seen` of the system which units must run
    /// and which files must be written first: the [`Pass`] the supervisor
    /// then applies. Reads no file or socket itself.
    pub fn plan(&mut self, desired: &[AssignedTask], sup: &impl Units, seen: &Observed) -> Pass {
        self.plan_since(desired, &by_group(desired), sup, seen, &Since::Unknown)
    }

    /// [`Self::plan`], told what changed in the set since the last pass
    /// (`since`), and with the set `grouped` already.
    fn plan_since(
        &mut self,
        desired: &[AssignedTask],
        groups: &Groups<'_>,
        sup: &impl Units,
        seen: &Observed,
        since: &Since,
    ) -> Pass {
        let mut plan = Plan::default();
        let mut recheck = None;
        // Which groups ended decides the wanted set (their support units go).
        let mut finished_changed = false;
        self.unsettle(seen);
        // The groups the change can have touched (None: not known).
        let touched_groups = match since {
            Since::Touched(names) => Some(self.groups_of(desired, names)),
            Since::Unknown => None,
        };
        for (key, tasks) in groups {
            let same = |planned: &Vec<AssignedTask>| match &touched_groups {
                // Its tasks are the ones it was planned with: told so.
                Some(touched) if !touched.contains(*key) => {
                    debug_assert!(same_tasks(planned, tasks), "{key}: untouched, yet changed");
                    true
                }
                _ => same_tasks(planned, tasks),
            };
            if self.settled.get(*key).is_some_and(same) {
                continue;
            }
            let key = key.to_string();
            self.settled.remove(&key);
            if !self.replanned.contains(&key) {
                self.replanned.insert(key.clone());
            }
            if self.failed.contains_key(&key) {
                continue;
            }
            let tasks = tasks.as_slice();
            let spec_hashes: Vec<u64> = tasks.iter().map(|t| t.spec.hash()).collect();
            let respecced = tasks.iter().zip(&spec_hashes).any(|(t, spec_hash)| {
                t.job_type != JobType::Batch && self.built.get(&t.name).is_some_and(|h| h != spec_hash)
            });
            if group_finished(tasks, sup) && !respecced {
                // `wanted` no longer lists its proxy and daemons: they stop.
                if self.finished.insert(key.clone()) {
                    finished_changed = true;
                    self.notices
                        .push((key.clone(), "all tasks ended: proxy and group daemons released".into()));
                }
                self.settle(key, tasks);
                continue;
            }
            finished_changed |= self.finished.remove(&key);
            // Who shares the group's directory (see `group_users`).
            let users = group_users(tasks, self.config.default_user.as_deref());
            let units: Result<Vec<UnitId>, String> = tasks.iter().map(|t| task_unit_id(t)).collect();
            let ready =
                units.and_then(|units| Ok((units, self.prepare_group(&key, tasks[0], &users, sup, seen, &mut plan)?)));
            match ready {
                Ok((units, GroupReady::Yes(proxy_env))) => {
                    // Building a unit's spec allocates a lot (env, argv,
                    // templates) and this runs for every task on every
                    // wake-up: skip tasks whose input did not change.
                    // The group's users decide its shared directory's owner:
                    // a change there rebuilds every task of the group alike.
                    let env_stamp = hash_debug(&(&proxy_env, &users));
                    for ((t, unit), spec_hash) in tasks.iter().zip(&units).zip(&spec_hashes) {
                        let stamp = hash_debug(&(t.job_type, spec_hash, env_stamp));
                        if self.ensured.get(&t.name) == Some(&stamp) && sup.view(&t.name).is_some() {
                            continue;
                        }
                        plan.ensure(self.task_unit(t, unit, &proxy_env, &users));
                        self.ensured.insert(t.name.clone(), stamp);
                        self.built.insert(t.name.clone(), *spec_hash);
                    }
                    self.settle(key, tasks);
                }
                Ok((_, GroupReady::NotYet(at))) => recheck = recheck.into_iter().chain(at).min(),
                Err(reason) => {
                    self.notices.push((key.clone(), format!("task group failed: {reason}")));
                    self.failed.insert(key, reason);
                }
            }
        }
        // Forget groups that are no longer desired; keep their supporting
        // units until their tasks are gone.
        let desired_group = |k: &String| groups.contains_key(k.as_str());
        self.failed.retain(|k, _| desired_group(k));
        self.proxies.retain(|k, _| desired_group(k));
        let finished = self.finished.len();
        self.finished.retain(desired_group);
        finished_changed |= self.finished.len() != finished;
        self.settled.retain(|k, _| desired_group(k));

        // The rest follows from the set's names and specs (a spec decides
        // its support units), the finished groups, and groups draining: done
        // again only when one of those changed, not on every wake-up.
        // Told what changed, the names tell whether the set did; else a
        // hash of its names and specs, compared with the last one's.
        let (reshaped, shape) = match since {
            Since::Touched(names) => (!names.is_empty(), None),
            Since::Unknown => {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                for t in desired {
                    (&t.name, t.spec.hash()).hash(&mut h);
                }
                let shape = h.finish();
                (self.shape != Some(shape), Some(shape))
            }
        };
        if reshaped {
            self.shape = shape;
        }
        // Both in key order: one walk, not a lookup per group.
        let mut walk = groups.keys().peekable();
        let draining = self
            .seen
            .keys()
            .any(|k| !crate::agent::ordered::reaches(&mut walk, |g| g, k));
        if reshaped || finished_changed || draining || self.robot_proxy.is_some() {
            self.bookkeep(desired, groups, sup, since);
            // The robot-wide proxy's members are decided anew each pass
            // (and the plan's copy changed after): never the same set, and
            // what it dropped not known.
            if self.update_wanted(desired, groups, since) || self.robot_proxy.is_some() {
                self.wanted_version += 1;
                let dropped = std::mem::take(&mut self.dropped);
                plan.dropped = self.robot_proxy.is_none().then_some(dropped);
            }
        }
        plan.wanted = Arc::clone(&self.wanted);
        plan.wanted_version = self.wanted_version;
        Pass {
            plan,
            effects: std::mem::take(&mut self.effects),
            recheck,
        }
    }

    /// Remember that group `key`'s plan left it nothing to wait for.
    fn settle(&mut self, key: String, tasks: &[&AssignedTask]) {
        // The robot-wide Envoy's members are decided across groups.
        if self.config.proxy_mode == ProxyMode::PerGroup {
            self.settled.insert(key, tasks.iter().map(|t| (*t).clone()).collect());
        }
    }

    /// Forget what the last plans settled where something they depended
    /// on moved: a unit of the group (a unit's name is its group's key, a
    /// dash and more; a name whose dashes could end several keys unsettles
    /// each), something observed of it, a robot-scoped daemon (any group
    /// may declare it), or anything at all when that is not known.
    fn unsettle(&mut self, seen: &Observed) {
        if self.settled.is_empty() {
            return;
        }
        let Some(moved) = &seen.moved else {
            self.settled.clear();
            return;
        };
        let observed = seen.proxy_ready.iter().chain(seen.launches.keys());
        for key in observed {
            self.settled.remove(key);
        }
        let robot = UnitId::Robot { name: String::new() }.name();
        for name in moved.iter().chain(seen.log_tails.keys()) {
            if name.starts_with(&robot) {
                self.settled.clear();
                return;
            }
            for (i, _) in name.bytes().enumerate().filter(|(_, b)| *b == b'-') {
                self.settled.remove(&name[..i]);
            }
        }
    }

    /// What the next pass needs to know of the system (see [`Observed`]),
    /// read only where it will be used: the readiness of proxies still
    /// waiting, the launch file of an Envoy this agent has not configured
    /// but finds running, the output of an init task that failed, the Envoy
    /// binary when a proxy is to start.
    pub fn observe(&self, desired: &[AssignedTask], sup: &impl Units) -> Observed {
        self.observe_groups(&by_group(desired), sup)
    }

    fn observe_groups(&self, groups: &Groups<'_>, sup: &impl Units) -> Observed {
        let mut seen = Observed::default();
        let mut starts_proxy = false;
        for (&key, tasks) in groups {
            if self.failed.contains_key(key) {
                continue;
            }
            let key = key.to_string();
            let first = tasks[0];
            // The init task `prepare_group` stops at, if it failed; the
            // proxy matters once none is left to wait for.
            let mut inits_done = true;
            for init in &first.spec.init_tasks {
                let name = init_unit_id(&key, init).name();
                let view = sup.view(&name);
                if init.daemon || (init.is_robot_scoped() && view.is_some()) {
                    continue;
                }
                match view {
                    Some(v) if matches!(v.phase, Phase::Completed) => continue,
                    Some(v) if matches!(v.phase, Phase::Failed { .. }) => {
                        seen.log_tails.insert(name, log_tail(v.dir, 5));
                    }
                    _ => {}
                }
                inits_done = false;
                break;
            }
            let Some(network) = first.spec.network.as_ref().filter(|n| n.is_active() && inits_done) else {
                continue;
            };
            if self.config.proxy_mode == ProxyMode::Shared {
                match &self.robot_proxy {
                    Some(rp) => {
                        let (served, reasons) = rp.observe(&key, network, sup.now());
                        if served {
                            seen.shared_served.insert(key.clone());
                        }
                        if let Some(reasons) = reasons {
                            seen.shared_reasons.insert(key, reasons);
                        }
                    }
                    None => starts_proxy = true,
                }
                continue;
            }
            match self.proxies.get(&key) {
                Some(p) => {
                    if !p.ready && envoy::is_ready(&p.admin_socket) {
                        seen.proxy_ready.insert(key);
                    }
                }
                None => {
                    starts_proxy = true;
                    let unit = UnitId::Proxy { group: key.clone() };
                    if unit.check().is_ok() && sup.has_process(&unit.name()) {
                        if let Some(launch) = read_launch(&self.layout.proxy_launch_file(&key)) {
                            seen.launches.insert(key, launch);
                        }
                    }
                }
            }
        }
        if starts_proxy {
            seen.envoy_bin = Some(self.envoy_bin());
        }
        seen
    }

    /// Carry out a pass's [`Effect`]s, before its units start. A proxy
    /// whose files cannot be written fails its group (its unit is not
    /// started).
    fn carry_out(&mut self, effects: Vec<Effect>, plan: &mut Plan, sup: &impl Units) {
        let now = sup.now();
        for effect in effects {
            let (key, done) = match effect {
                Effect::ShareProxy { draining } => {
                    let Some(rp) = self.robot_proxy.as_mut() else {
                        continue;
                    };
                    let (failures, unit) = rp.apply(&draining, sup);
                    for (key, reason) in failures {
                        self.notices.push((key.clone(), format!("task group failed: {reason}")));
                        self.settled.remove(&key);
                        self.failed.insert(key, reason);
                    }
                    // Planned before the members were written: wanted
                    // while it has any.
                    let name = UnitId::robot_proxy().name();
                    match unit {
                        Some(unit) => {
                            Arc::make_mut(&mut plan.wanted).insert(name);
                            plan.ensure(unit);
                        }
                        None => {
                            Arc::make_mut(&mut plan.wanted).remove(&name);
                        }
                    }
                    continue;
                }
                Effect::PrepareProxy {
                    key,
                    proxy,
                    launch_file,
                } => (key, write_proxy(&proxy, &launch_file)),
                Effect::UpdateProxy { key, proxy, restart } => {
                    let done = match envoy::update(&proxy) {
                        Ok(()) => {
                            self.notices.push((key.clone(), "proxy config updated in place".into()));
                            Ok(())
                        }
                        Err(e) => {
                            self.notices
                                .push((key.clone(), format!("proxy restarts for the network change: {e}")));
                            envoy::prepare(&proxy).map_err(|e| format!("proxy: {e}")).map(|_| {
                                plan.ensure(*restart);
                                if let Some(p) = self.proxies.get_mut(&key) {
                                    p.ready = false;
                                    p.since = now;
                                }
                            })
                        }
                    };
                    (key, done)
                }
            };
            if let Err(reason) = done {
                let unit = UnitId::Proxy { group: key.clone() }.name();
                plan.units.retain(|u| u.name != unit);
                self.proxies.remove(&key);
                self.notices.push((key.clone(), format!("task group failed: {reason}")));
                self.settled.remove(&key);
                self.failed.insert(key, reason);
            }
        }
    }

    /// Remove directories of groups that left (after the stops of this
    /// pass, so a unit just let go no longer counts as living there).
    fn collect_garbage(&mut self, sup: &impl Units) -> Option<Instant> {
        let gc = self.gc.as_mut()?;
        let seen = &self.seen;
        for key in gc.sweep(|k| seen.contains_key(k), sup, sup.now()) {
            self.notices
                .push((key, "left this robot: its directory was removed (--gc-after)".into()));
        }
        gc.next_due()
    }

    /// One pass carried out: what the system shows ([`Self::observe`]),
    /// the plan, its effects, then the supervisor applies it. Returns
    /// whether planning again may get further (it started a unit or wrote
    /// files), and when to look again.
    pub fn pass(&mut self, desired: &[AssignedTask], sup: &mut impl Units) -> (bool, Option<Instant>) {
        self.pass_since(desired, sup, &Since::Unknown)
    }

    /// [`Self::pass`], told what changed in the set since the last pass.
    fn pass_since(&mut self, desired: &[AssignedTask], sup: &mut impl Units, since: &Since) -> (bool, Option<Instant>) {
        let groups = by_group(desired);
        let mut seen = self.observe_groups(&groups, sup);
        seen.moved = sup.take_moved();
        let Pass {
            mut plan,
            effects,
            recheck,
        } = self.plan_since(desired, &groups, sup, &seen, since);
        let acted = effects.iter().any(|e| matches!(e, Effect::UpdateProxy { .. }));
        self.carry_out(effects, &mut plan, &*sup);
        let fresh: Vec<String> = plan
            .units
            .iter()
            .filter(|s| sup.view(&s.name).is_none())
            .map(|s| s.name.clone())
            .collect();
        sup.apply(plan);
        // Planning again can only differ where a new unit ended at once
        // (restored as completed, or failing to spawn) or is one a group
        // waits on (an init task or daemon, a proxy); a new task unit that
        // runs changes nothing the next pass decides.
        let again = !fresh.is_empty() && {
            // Looked up in the set as it is when in name order (told so).
            let tasks: BTreeSet<&str> = match since {
                Since::Touched(_) => BTreeSet::new(),
                Since::Unknown => desired.iter().map(|t| t.name.as_str()).collect(),
            };
            let is_task = |n: &str| match since {
                Since::Touched(_) => books::task_named(desired, n).is_some(),
                Since::Unknown => tasks.contains(n),
            };
            fresh
                .iter()
                .any(|n| !is_task(n) || sup.view(n).is_some_and(|v| v.phase.is_terminal()))
        };
        (again || acted, recheck)
    }

    /// One pass with its story told in the order things happened: what the
    /// supervisor saw since the last pass (exits), this pass's group events,
    /// then the stops it caused. Units nothing wants any more are stopped.
    pub fn step(
        &mut self,
        desired: &[AssignedTask],
        sup: &mut impl Units,
        say: &mut dyn FnMut(String),
    ) -> Option<Instant> {
        self.replanned.clear();
        self.say_what_happened(sup, say);
        // A plan builds on what runs, and a unit's first start can end at
        // once (restored as completed, or failing to spawn): plan again
        // while the last plan started units a group waits on or that ended
        // at once (see `pass`), so an init task restored as done lets the
        // next one start in this step. Each round gets at
        // least one init task further, so the rounds are bounded.
        let rounds = 2 + desired.iter().map(|t| t.spec.init_tasks.len()).max().unwrap_or(0);
        let mut recheck = None;
        // What the caller told of the set's change ([`Self::tell`]) is news
        // to the first round; the rounds after see the same set again.
        let mut since = std::mem::take(&mut self.since);
        // A pass that wrote a proxy's files plans again too: a proxy
        // updated in place lets its tasks take the new network at once.
        for _ in 0..rounds {
            let (again, at) = self.pass_since(desired, sup, &since);
            // Told per pass: a proxy started in one pass may be ready by
            // the next (a slow pass, a fast Envoy), and its start is told
            // before its readiness.
            self.say_what_happened(sup, say);
            recheck = at;
            if !again {
                break;
            }
            if let Since::Touched(names) = &mut since {
                names.clear();
            }
        }
        // What asked for this step is durable by its end, whatever it did
        // (the supervisor settled it already if it stopped something), and
        // before a directory is removed.
        sup.settle_owed();
        let recheck = recheck.into_iter().chain(self.collect_garbage(sup)).min();
        self.say_what_happened(sup, say);
        recheck
    }

    /// Say this pass's group events, then what the supervisor did in it
    /// (a pass observes the groups first and acts after).
    fn say_what_happened(&mut self, sup: &mut impl Units, say: &mut dyn FnMut(String)) {
        for (group, msg) in self.take_notices() {
            say(format!("{group}: {msg}"));
        }
        for c in sup.take_changes() {
            say(format!("{}: {}", c.label, c.message));
        }
    }

    /// The groups (keys) the last [`Self::step`] planned: the tasks of
    /// every other group are as they were after the step before (their
    /// units did not move, their tasks did not change).
    pub fn replanned(&self) -> &BTreeSet<String> {
        &self.replanned
    }

    /// The task names the books hold for group `key`: after a step, every
    /// task of the group in the set stepped (and any that left it while
    /// its process ends).
    pub fn group_tasks(&self, key: &str) -> impl Iterator<Item = &str> {
        self.seen
            .get(key)
            .into_iter()
            .flat_map(|g| g.tasks.iter().map(String::as_str))
    }

    pub fn outcome(&self, task: &AssignedTask, sup: &impl Units) -> Outcome {
        match sup.view(&task.name) {
            Some(v) => match v.phase {
                Phase::Completed => Outcome::Succeeded,
                Phase::Failed { reason } => Outcome::Failed(reason.clone()),
                Phase::Stopped => Outcome::Failed("stopped".into()),
                Phase::Running { .. } | Phase::Stopping { .. } | Phase::Killing { .. } => Outcome::Running,
                Phase::Pending | Phase::Backoff { .. } => Outcome::Waiting,
            },
            None => match self.failed.get(&task.group_key()) {
                Some(reason) => Outcome::Failed(format!("not started: {reason}")),
                None => Outcome::Waiting,
            },
        }
    }

    /// Init tasks and proxy of one group: the units they need go to `plan`.
    fn prepare_group(
        &mut self,
        key: &str,
        first: &AssignedTask,
        users: &[String],
        sup: &impl Units,
        seen: &Observed,
        plan: &mut Plan,
    ) -> Result<GroupReady, String> {
        for init in &first.spec.init_tasks {
            let unit = init_unit_id(key, init);
            unit.check()?;
            let name = unit.name();
            if self.config.proxy_mode == ProxyMode::Shared && unit == UnitId::robot_proxy() {
                return Err(format!(
                    "init task {}: a robot-scoped daemon of that name would be {name}, the robot-wide proxy's unit \
                     (--proxy-mode shared); rename it",
                    init.name
                ));
            }
            // A robot-scoped daemon is shared: the first group to declare it
            // decides how it runs, so groups that declare it differently do
            // not keep replacing each other's process.
            if init.is_robot_scoped() && sup.view(&name).is_some() {
                continue;
            }
            plan.ensure(self.init_unit(first, init, &unit, users));
            if init.daemon {
                continue;
            }
            match sup.view(&name).map(|v| v.phase) {
                Some(Phase::Completed) => continue,
                Some(Phase::Failed { reason }) => {
                    let tail = match seen.log_tails.get(&name) {
                        Some(tail) if !tail.is_empty() => format!("; last output:\n{tail}"),
                        _ => String::new(),
                    };
                    return Err(format!("init task {} {reason}{tail}", init.name));
                }
                _ => return Ok(GroupReady::NotYet(None)),
            }
        }
        let network = match &first.spec.network {
            Some(n) if n.is_active() => n.clone(),
            _ => return Ok(GroupReady::Yes(Vec::new())),
        };
        self.prepare_proxy(key, first, network, sup, seen, plan)
    }

    fn prepare_proxy(
        &mut self,
        key: &str,
        first: &AssignedTask,
        network: NetworkConfig,
        sup: &impl Units,
        seen: &Observed,
        plan: &mut Plan,
    ) -> Result<GroupReady, String> {
        let unit = UnitId::Proxy { group: key.to_string() };
        unit.check()?;
        let name = unit.name();
        let now = sup.now();
        // A proxy of the other mode (an earlier agent's) holds the ports
        // until the stop of unwanted units ends it; the tasks run on.
        let other = match self.config.proxy_mode {
            ProxyMode::PerGroup => UnitId::robot_proxy().name(),
            ProxyMode::Shared => name.clone(),
        };
        if sup.has_process(&other) {
            return Ok(GroupReady::NotYet(Some(clock::after(now, PROXY_READY_POLL))));
        }
        if self.config.proxy_mode == ProxyMode::Shared {
            return self.prepare_shared(key, &network, now, seen);
        }
        if !self.proxies.contains_key(key) {
            let envoy_bin = seen
                .envoy_bin
                .clone()
                .unwrap_or_else(|| Err("proxy: the Envoy binary was not looked up".into()))?;
            let proxy = self.group_proxy(key, first, &network, envoy_bin.clone());
            // Render now, so a network that cannot become a proxy fails the
            // group with its reason instead of crash-looping a daemon; the
            // files are written before the unit starts (`Effect`). An Envoy
            // re-adopted from an earlier agent keeps its config; how it was
            // launched is remembered next to it.
            let launch = match seen.launches.get(key) {
                Some(launch) => launch.clone(),
                None => {
                    let launch = envoy::launch(&proxy).map_err(|e| format!("proxy: {e}"))?;
                    self.effects.push(Effect::PrepareProxy {
                        key: key.to_string(),
                        launch_file: self.layout.proxy_launch_file(key),
                        proxy: proxy.clone(),
                    });
                    launch
                }
            };
            plan.ensure(self.proxy_unit(key, first, &proxy, launch.argv));
            let env = envoy::proxy_env(&network);
            let start = ProxyStart {
                admin_socket: launch.admin_socket,
                envoy_bin,
                since: now,
                ready: false,
                env,
                network,
            };
            self.proxies.insert(key.to_string(), start);
        } else if let Some(p) = self.proxies.get(key).filter(|p| p.network != network) {
            // The network changed: rewrite the xDS files, which the running
            // Envoy picks up; if that is not enough, restart it (a new
            // revision makes the supervisor replace the process). The tasks
            // wait for the outcome (the next pass, at once).
            let proxy = self.group_proxy(key, first, &network, p.envoy_bin.clone());
            let argv = envoy::launch(&proxy).map_err(|e| format!("proxy: {e}"))?.argv;
            let restart = Box::new(self.proxy_unit(key, first, &proxy, argv));
            self.effects.push(Effect::UpdateProxy {
                key: key.to_string(),
                proxy,
                restart,
            });
            if let Some(p) = self.proxies.get_mut(key) {
                p.env = envoy::proxy_env(&network);
                p.network = network;
            }
            return Ok(GroupReady::NotYet(Some(now)));
        }
        let Some(p) = self.proxies.get_mut(key) else {
            return Ok(GroupReady::NotYet(None));
        };
        if !p.ready {
            if seen.proxy_ready.contains(key) {
                p.ready = true;
                self.notices.push((key.to_string(), "proxy ready".into()));
            } else if now.saturating_duration_since(p.since) > PROXY_READY_TIMEOUT {
                let state = sup.view(&name).map(|v| v.phase.to_string()).unwrap_or_default();
                return Err(format!("proxy not ready after {PROXY_READY_TIMEOUT:?} ({state})"));
            } else {
                return Ok(GroupReady::NotYet(Some(clock::after(now, PROXY_READY_POLL))));
            }
        }
        Ok(GroupReady::Yes(p.env.clone()))
    }

    /// Group `key`'s part of the robot-wide Envoy (`--proxy-mode shared`).
    fn prepare_shared(
        &mut self,
        key: &str,
        network: &NetworkConfig,
        now: Instant,
        seen: &Observed,
    ) -> Result<GroupReady, String> {
        if self.robot_proxy.is_none() {
            let envoy_bin = seen
                .envoy_bin
                .clone()
                .unwrap_or_else(|| Err("proxy: the Envoy binary was not looked up".into()))?;
            let shared = envoy::shared::SharedProxy {
                robot: self.config.robot.clone(),
                dir: self.layout.dir(&UnitId::robot_proxy()),
                envoy_bin,
                options: envoy::ProxyOptions::default(),
            };
            self.robot_proxy = Some(RobotProxy::new(
                shared,
                self.config.proxy_user.clone(),
                self.path.clone(),
            ));
        }
        let Some(rp) = self.robot_proxy.as_mut() else {
            return Ok(GroupReady::NotYet(None));
        };
        let served = seen.shared_served.contains(key);
        let reasons = seen.shared_reasons.get(key).map(String::as_str);
        match rp.want(key, network, now, PROXY_READY_POLL, served, reasons)? {
            Part::Ready { newly } => {
                if newly {
                    self.notices.push((
                        key.to_string(),
                        format!("proxy ready (its part of {})", UnitId::robot_proxy().name()),
                    ));
                }
                Ok(GroupReady::Yes(envoy::proxy_env(network)))
            }
            Part::NotYet(at) => Ok(GroupReady::NotYet(Some(at))),
        }
    }

    fn group_proxy(&self, key: &str, first: &AssignedTask, network: &NetworkConfig, envoy_bin: PathBuf) -> GroupProxy {
        GroupProxy {
            robot: self.config.robot.clone(),
            job: first.job().to_string(),
            group: first.group().to_string(),
            network: network.clone(),
            dir: self.layout.dir(&UnitId::Proxy { group: key.to_string() }),
            envoy_bin,
        }
    }

    /// The Envoy executable the proxy's user can run.
    fn envoy_bin(&self) -> Result<PathBuf, String> {
        Ok(match &self.config.proxy_user {
            // The proxy's user must be able to run it: the first one on
            // PATH it can reach (a root-only install is skipped).
            Some(user) => {
                let account = crate::agent::accounts::lookup(user).map_err(|e| format!("proxy: --proxy-user: {e}"))?;
                let search = std::env::var_os("PATH").unwrap_or_default();
                account
                    .find_executable(&self.config.envoy_bin, &search)
                    .ok_or_else(|| {
                        format!(
                            "proxy: envoy binary {:?} not found where user {user:?} can run it (install Envoy where \
                         it can reach it, e.g. /usr/local/bin, or set --envoy-bin / --proxy-user)",
                            self.config.envoy_bin
                        )
                    })?
            }
            None => find_executable(&self.config.envoy_bin).ok_or_else(|| {
                format!(
                    "proxy: envoy binary {:?} not found (install Envoy, or set --envoy-bin / K8S4R_ENVOY)",
                    self.config.envoy_bin
                )
            })?,
        })
    }

    /// The proxy daemon `<taskGroup>-envoy`; its revision follows the network.
    fn proxy_unit(&self, key: &str, first: &AssignedTask, proxy: &GroupProxy, argv: Vec<String>) -> UnitSpec {
        let unit = UnitId::Proxy { group: key.to_string() };
        let hook_proxy = proxy.clone();
        ProxyUnit {
            name: unit.name(),
            label: format!("{} envoy", first.group_key()),
            argv,
            dir: proxy.dir.clone(),
            alloc_dir: self.layout.alloc_dir(&unit),
            user: self.config.proxy_user.clone(),
            path: self.path.clone(),
            // Every (re)start renders afresh and clears a stale admin socket.
            pre_start: specs::pre_start(move || {
                envoy::prepare(&hook_proxy)
                    .map(|l| l.argv)
                    .map_err(|e| format!("proxy: {e}"))
            }),
            // A new proxy user restarts the proxy too.
            revision: hash_debug(&(&proxy.network, &self.config.proxy_user)),
        }
        .build()
    }

    fn init_unit(&self, first: &AssignedTask, init: &TaskSpec, unit: &UnitId, users: &[String]) -> UnitSpec {
        let (dir, alloc_dir) = (self.layout.dir(unit), self.layout.alloc_dir(unit));
        let label = if init.is_robot_scoped() {
            format!("robot {}", init.name)
        } else {
            format!("{} {}", first.group_key(), init.name)
        };
        let policy = if init.daemon {
            let delay = init
                .restart_policy
                .as_ref()
                .and_then(|p| p.delay.as_ref()?.get())
                .unwrap_or(Duration::from_secs(1));
            Policy::Daemon { base_delay: delay }
        } else {
            Policy::RunToCompletion(restart_rules(init.restart_policy.as_ref(), 0))
        };
        let mut injected = self.injected_env(first, &init.name, None, &dir, &alloc_dir);
        if init.is_robot_scoped() {
            // Shared by groups: no group identity.
            injected.retain(|(k, _)| k != "K8S4R_JOB" && k != "K8S4R_TASKGROUP");
        }
        // A robot-scoped daemon's directory is its own, not a group's.
        let users = if init.is_robot_scoped() { &[][..] } else { users };
        self.unit(unit.name(), label, init, policy, injected, dir, alloc_dir, users)
    }

    fn task_unit(&self, t: &AssignedTask, unit: &UnitId, proxy_env: &[(String, String)], users: &[String]) -> UnitSpec {
        let (dir, alloc_dir) = (self.layout.dir(unit), self.layout.alloc_dir(unit));
        // The Task's own jobType (set by the control plane) wins.
        let job_type = t.spec.job_type.unwrap_or(t.job_type);
        let default_attempts = if job_type == JobType::Batch { 0 } else { 2 };
        let policy = Policy::RunToCompletion(restart_rules(t.spec.restart_policy.as_ref(), default_attempts));
        let mut injected = self.injected_env(t, &t.spec.name, Some(t.replica()), &dir, &alloc_dir);
        injected.extend(proxy_env.iter().cloned());
        let label = format!("{} r{} {}", t.group_key(), t.replica(), t.spec.name);
        self.unit(t.name.clone(), label, &t.spec, policy, injected, dir, alloc_dir, users)
    }

    fn injected_env(
        &self,
        t: &AssignedTask,
        task: &str,
        replica: Option<i32>,
        dir: &Path,
        alloc: &Path,
    ) -> Vec<(String, String)> {
        let mut env = vec![
            ("K8S4R_ROBOT".to_string(), self.config.robot.clone()),
            ("K8S4R_JOB".to_string(), t.job().to_string()),
            ("K8S4R_TASKGROUP".to_string(), t.group().to_string()),
            ("K8S4R_TASK".to_string(), task.to_string()),
            ("K8S4R_TASK_DIR".to_string(), dir.display().to_string()),
            ("K8S4R_ALLOC_DIR".to_string(), alloc.display().to_string()),
        ];
        if let Some(r) = replica {
            env.push(("K8S4R_REPLICA".to_string(), r.to_string()));
        }
        env
    }

    #[allow(clippy::too_many_arguments)]
    fn unit(
        &self,
        name: String,
        label: String,
        spec: &TaskSpec,
        policy: Policy,
        injected: Vec<(String, String)>,
        dir: PathBuf,
        alloc_dir: PathBuf,
        alloc_users: &[String],
    ) -> UnitSpec {
        // The task's own variables may use the injected ones (`${K8S4R_TASK_DIR}/x`);
        // the injected ones always win, so a manifest cannot fake them.
        let mut env: BTreeMap<String, String> = BTreeMap::from([("PATH".to_string(), self.path.clone())]);
        let injected_map: BTreeMap<String, String> = injected.iter().cloned().collect();
        for (k, v) in &spec.env {
            env.insert(k.clone(), super::expand::expand(v, &injected_map));
        }
        env.extend(injected);
        let exec = spec.config.exec_config.clone().unwrap_or_default();
        let argv = std::iter::once(exec.command)
            .chain(exec.args)
            .map(|a| super::expand::expand(&a, &env))
            .collect();
        let resources = spec.resources.as_ref();
        let mut unit = UnitSpec {
            name,
            label,
            argv,
            env,
            dir,
            alloc_dir,
            user: spec.user.clone().or_else(|| self.config.default_user.clone()),
            dir_owner: DirOwner::Task,
            alloc_users: alloc_users.to_vec(),
            policy,
            timeout: spec.timeout.as_ref().and_then(|d| d.get()).filter(|d| !d.is_zero()),
            kill_timeout: spec
                .kill_timeout
                .as_ref()
                .and_then(|d| d.get())
                .unwrap_or(DEFAULT_KILL_TIMEOUT),
            templates: spec.templates.clone(),
            artifacts: spec.artifacts.clone(),
            checks: checks::from_services(&spec.services),
            limits: Limits {
                memory_bytes: resources
                    .and_then(|r| r.memory.as_ref()?.units_ceil())
                    .and_then(|b| u64::try_from(b).ok()),
                cpu_millis: resources
                    .and_then(|r| r.cpu.as_ref()?.milli())
                    .and_then(|m| u64::try_from(m).ok()),
                pids_max: Some(
                    resources
                        .and_then(|r| u64::try_from(r.pids?).ok())
                        .unwrap_or(crate::api::Resources::DEFAULT_PIDS),
                ),
            },
            pre_start: None,
            revision: 0,
        };
        unit.revision = fingerprint(&unit);
        unit
    }
}

/// What a unit runs, hashed: argv, environment, user, limits, policies,
/// templates, artifacts and checks (not its name or directory).
fn fingerprint(u: &UnitSpec) -> u64 {
    hash_debug(&(
        &u.argv,
        &u.env,
        &u.user,
        &u.policy,
        u.timeout,
        u.kill_timeout,
        &u.templates,
        &u.artifacts,
        &u.checks,
        u.limits,
    ))
}

enum GroupReady {
    /// Init done, proxy ready: start tasks with these proxy variables.
    Yes(Vec<(String, String)>),
    /// Still waiting; look again at the given time (or on the next event).
    NotYet(Option<Instant>),
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SavedLaunch {
    argv: Vec<String>,
    admin_socket: PathBuf,
}

fn read_launch(path: &Path) -> Option<envoy::Launch> {
    let saved: SavedLaunch = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some(envoy::Launch {
        argv: saved.argv,
        admin_socket: saved.admin_socket,
    })
}

/// [`Effect::PrepareProxy`]: the proxy's directory, config and launch file.
fn write_proxy(proxy: &GroupProxy, launch_file: &Path) -> Result<(), String> {
    std::fs::create_dir_all(&proxy.dir).map_err(|e| format!("proxy: creating {}: {e}", proxy.dir.display()))?;
    let launch = envoy::prepare(proxy).map_err(|e| format!("proxy: {e}"))?;
    write_launch(launch_file, &launch).map_err(|e| format!("proxy: writing {}: {e}", launch_file.display()))
}

fn write_launch(path: &Path, launch: &envoy::Launch) -> std::io::Result<()> {
    let saved = SavedLaunch {
        argv: launch.argv.clone(),
        admin_socket: launch.admin_socket.clone(),
    };
    let bytes = serde_json::to_vec(&saved).map_err(std::io::Error::other)?;
    crate::atomic_file::write(path, &bytes, 0o600)
}

/// `bin` itself if it names a path, else the first executable `bin` on the
/// agent's PATH (tasks get their own PATH, so the proxy's binary is resolved
/// here, once).
pub fn find_executable(bin: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    crate::agent::accounts::find_on_path(bin, &std::env::var_os("PATH").unwrap_or_default(), executable)
}

/// The users the group's tasks and init tasks run as (a `user`, or
/// `--default-user`), distinct: they share the group's directory.
fn group_users(tasks: &[&AssignedTask], default_user: Option<&str>) -> Vec<String> {
    let inits = tasks
        .first()
        .into_iter()
        .flat_map(|t| &t.spec.init_tasks)
        .filter(|i| !i.is_robot_scoped());
    let users: BTreeSet<&str> = tasks
        .iter()
        .map(|t| -> &TaskSpec { &t.spec })
        .chain(inits)
        .filter_map(|t| t.user.as_deref().or(default_user))
        .collect();
    users.into_iter().map(String::from).collect()
}

/// The units a group's tasks rely on: init tasks (and daemons), its own
/// proxy (the robot-wide one is wanted while it has members).
fn support_units<'a>(key: &str, t: &'a AssignedTask, mode: ProxyMode) -> impl Iterator<Item = String> + 'a {
    let key = key.to_string();
    let own_proxy = (mode == ProxyMode::PerGroup).then(|| UnitId::Proxy { group: key.clone() }.name());
    own_proxy
        .into_iter()
        .chain(t.spec.init_tasks.iter().map(move |i| init_unit_id(&key, i).name()))
}

/// [`support_units`] of a group's tasks, each once: a group's tasks share
/// their init tasks (all but mid-rollout), so each distinct list is named
/// once, not once per task.
fn group_support(key: &str, tasks: &[&AssignedTask], mode: ProxyMode) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut named: Option<&[TaskSpec]> = None;
    for t in tasks {
        let inits = t.spec.init_tasks.as_slice();
        if named.is_some_and(|n| n == inits) {
            continue;
        }
        named = Some(inits);
        out.extend(support_units(key, t, mode));
    }
    out
}

/// An init task's unit: the group's, or the robot's (`scope: robot`).
pub fn init_unit_id(group_key: &str, init: &TaskSpec) -> UnitId {
    if init.is_robot_scoped() {
        UnitId::Robot {
            name: init.name.clone(),
        }
    } else {
        UnitId::Init {
            group: group_key.to_string(),
            task: init.name.clone(),
        }
    }
}

/// Where a task's unit lives (the unit is named after its Task object).
/// Names that would leave the data directory, and negative replica
/// indices, are refused (the control plane sends neither).
fn task_unit_id(t: &AssignedTask) -> Result<UnitId, String> {
    let replica = u32::try_from(t.replica())
        .map_err(|_| format!("task {}: replica index {} is negative", t.name, t.replica()))?;
    let unit = UnitId::Task {
        group: t.group_key(),
        replica,
        task: t.spec.name.clone(),
    };
    unit.check()?;
    Ok(unit)
}

/// Every task of the group on this robot has ended for good: completed, or
/// failed past its restarts (nothing will run again unless the desired set
/// changes).
fn group_finished(tasks: &[&AssignedTask], sup: &impl Units) -> bool {
    tasks.iter().all(|t| {
        sup.view(&t.name)
            .is_some_and(|v| matches!(v.phase, Phase::Completed | Phase::Failed { .. }))
    })
}

/// The set by group, each group's tasks in the set's order. A group's
/// tasks mostly come in one run (their names start with its key), so the
/// map is searched once per run, not once per task.
fn by_group(desired: &[AssignedTask]) -> Groups<'_> {
    let mut groups: BTreeMap<&str, Vec<&AssignedTask>> = BTreeMap::new();
    let mut rest = desired;
    while let Some(first) = rest.first() {
        let key = first.group_key_str();
        let run = rest.iter().take_while(|t| t.group_key_str() == key).count();
        let (this, after) = rest.split_at(run);
        groups.entry(key).or_default().extend(this);
        rest = after;
    }
    groups
}

/// The tasks a group was planned with are still its tasks: the same
/// names, types and specs (the same allocation: an unchanged spec is kept
/// from answer to answer, see [`AssignedTask::spec`]; else equal).
fn same_tasks(planned: &[AssignedTask], tasks: &[&AssignedTask]) -> bool {
    planned.len() == tasks.len()
        && planned.iter().zip(tasks).all(|(p, t)| {
            p.name == t.name
                && p.job_type == t.job_type
                && p.group == t.group
                && (Arc::ptr_eq(&p.spec, &t.spec) || p.spec == t.spec)
        })
}

/// restartPolicy with defaults: `default_attempts` restarts in 30 minutes,
/// 1 s apart (doubling), mode fail.
pub fn restart_rules(p: Option<&RestartPolicy>, default_attempts: u32) -> RestartRules {
    RestartRules {
        attempts: p.and_then(|p| p.attempts).map_or(default_attempts, |a| a.max(0) as u32),
        interval: p
            .and_then(|p| p.interval.as_ref()?.get())
            .unwrap_or(Duration::from_secs(30 * 60)),
        delay: p
            .and_then(|p| p.delay.as_ref()?.get())
            .unwrap_or(Duration::from_secs(1)),
        delay_mode: p.and_then(|p| p.mode) == Some(RestartMode::Delay),
    }
}

/// The last lines of a unit's stderr and stdout, for failure messages.
pub fn log_tail(dir: &Path, lines: usize) -> String {
    let mut parts = Vec::new();
    for stream in ["stderr", "stdout"] {
        let tail = super::supervisor::logs::read_tail(&dir.join("logs"), stream, Some(lines));
        let text = String::from_utf8_lossy(&tail).trim_end().to_string();
        if !text.is_empty() {
            parts.push(format!("[{stream}] {}", text.replace('\n', &format!("\n[{stream}] "))));
        }
    }
    parts.join("\n")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::agent::supervisor::UnitView;

    /// What runs, as planning sees it: read only (a plan that tried to
    /// change the units would panic here).
    pub(super) struct Running {
        pub(super) now: Instant,
        pub(super) units: BTreeMap<String, (Phase, PathBuf)>,
    }

    impl Running {
        pub(super) fn new() -> Self {
            Running {
                now: Instant::now(),
                units: BTreeMap::new(),
            }
        }
        pub(super) fn set(&mut self, name: &str, phase: Phase) {
            self.units
                .insert(name.to_string(), (phase, PathBuf::from("/nonexistent")));
        }
    }

    impl Units for Running {
        fn now(&self) -> Instant {
            self.now
        }
        fn view(&self, name: &str) -> Option<UnitView<'_>> {
            self.units.get_key_value(name).map(|(label, (phase, dir))| UnitView {
                phase,
                restarts: 0,
                health: None,
                last_exit: None,
                dir,
                label,
            })
        }
        fn names(&self) -> Vec<&str> {
            self.units.keys().map(String::as_str).collect()
        }
        fn has_process(&self, name: &str) -> bool {
            self.units.get(name).is_some_and(|(p, _)| p.pid().is_some())
        }
        fn ensure(&mut self, spec: UnitSpec) {
            panic!("planning started {} itself", spec.name)
        }
        fn retain(&mut self, _: &dyn Fn(&str) -> bool) {
            panic!("planning stopped units itself")
        }
        fn take_changes(&mut self) -> Vec<crate::agent::supervisor::Change> {
            Vec::new()
        }
    }

    /// What a failed init task reports.
    fn exited_3() -> Phase {
        Phase::Failed {
            reason: "exited 3".into(),
        }
    }

    fn running() -> Phase {
        Phase::Running {
            pid: 42,
            deadline: None,
        }
    }

    fn init(name: &str, daemon: bool) -> TaskSpec {
        TaskSpec {
            name: name.into(),
            daemon,
            ..Default::default()
        }
    }

    fn task(group: &str, replica: i32, name: &str, inits: &[TaskSpec]) -> AssignedTask {
        AssignedTask {
            name: format!("j-{group}-r{replica}-{name}"),
            job_type: JobType::Service,
            group: group.into(),
            spec: Arc::new(DesiredSpec::from(TaskSpec {
                name: name.into(),
                job_name: Some("j".into()),
                task_group_name: Some(format!("j-{group}")),
                replica_index: Some(replica),
                init_tasks: inits.to_vec(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn by_group_keeps_each_groups_tasks_in_order_across_runs() {
        // Runs of one group, and a group whose tasks come apart (not in
        // name order: a set as a standalone caller may hand it).
        let set = [
            task("a", 0, "t", &[]),
            task("a", 1, "t", &[]),
            task("b", 0, "t", &[]),
            task("a", 2, "t", &[]),
            task("c", 0, "t", &[]),
            task("c", 1, "t", &[]),
        ];
        let groups = by_group(&set);
        let names = |key: &str| groups[key].iter().map(|t| t.name.as_str()).collect::<Vec<_>>();
        assert_eq!(groups.keys().copied().collect::<Vec<_>>(), ["j-a", "j-b", "j-c"]);
        assert_eq!(names("j-a"), ["j-a-r0-t", "j-a-r1-t", "j-a-r2-t"]);
        assert_eq!(names("j-b"), ["j-b-r0-t"]);
        assert_eq!(names("j-c"), ["j-c-r0-t", "j-c-r1-t"]);
        assert!(by_group(&[]).is_empty());
    }

    /// A reconciler on `data` with the defaults (the rollback tests use it too).
    pub(crate) fn reconciler(data: &Path) -> Reconciler {
        Reconciler::new(ReconcileConfig {
            robot: "r1".into(),
            data_dir: data.to_path_buf(),
            envoy_bin: "envoy".into(),
            gc_after: None,
            default_user: None,
            proxy_user: None,
            proxy_mode: ProxyMode::PerGroup,
        })
    }

    fn started(plan: &Plan) -> Vec<&str> {
        plan.units.iter().map(|u| u.name.as_str()).collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    /// Units that start what a plan asks (running, or completed at once
    /// where `ends_at_once` names them) and count the plans applied.
    struct Starting {
        units: Running,
        ends_at_once: BTreeSet<String>,
        applied: usize,
        /// Plans applied when each owed flush was settled.
        settled_after: Vec<usize>,
    }

    impl Units for Starting {
        fn now(&self) -> Instant {
            self.units.now
        }
        fn view(&self, name: &str) -> Option<UnitView<'_>> {
            self.units.view(name)
        }
        fn names(&self) -> Vec<&str> {
            self.units.names()
        }
        fn has_process(&self, name: &str) -> bool {
            self.units.has_process(name)
        }
        fn apply(&mut self, plan: Plan) {
            self.applied += 1;
            for spec in plan.units {
                self.ensure(spec);
            }
        }
        fn ensure(&mut self, spec: UnitSpec) {
            let phase = if self.ends_at_once.contains(&spec.name) {
                Phase::Completed
            } else {
                running()
            };
            self.units.set(&spec.name, phase);
        }
        fn retain(&mut self, _: &dyn Fn(&str) -> bool) {}
        fn take_changes(&mut self) -> Vec<crate::agent::supervisor::Change> {
            Vec::new()
        }
        fn settle_owed(&mut self) {
            self.settled_after.push(self.applied);
        }
    }

    /// A group whose units did not move and whose tasks are the same is
    /// not planned again; a unit of it that moved, a changed task or not
    /// knowing what moved plans it again.
    #[test]
    fn a_pass_plans_only_the_groups_that_moved_or_changed() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = reconciler(dir.path());
        let mut desired = vec![task("a", 0, "t", &[]), task("a", 1, "t", &[]), task("b", 0, "t", &[])];
        let mut sup = Running::new();
        let moved = |names: &[&str]| Observed {
            moved: Some(names.iter().map(|n| n.to_string()).collect()),
            ..Observed::default()
        };
        let pass = rec.plan(&desired, &sup, &Observed::default());
        assert_eq!(started(&pass.plan), ["j-a-r0-t", "j-a-r1-t", "j-b-r0-t"]);
        for name in started(&pass.plan) {
            sup.set(name, running());
        }
        // Gone without a word (a supervisor always says): proof that a
        // settled group is not looked at.
        sup.units.remove("j-a-r1-t");
        sup.units.remove("j-b-r0-t");
        let pass = rec.plan(&desired, &sup, &moved(&[]));
        assert!(pass.plan.units.is_empty(), "{:?}", started(&pass.plan));
        let tasks = ["j-a-r0-t", "j-a-r1-t", "j-b-r0-t"];
        assert!(tasks.iter().all(|t| pass.plan.wanted.contains(*t)), "still wanted");
        // A unit of group a moved: a is planned again, b is not.
        let pass = rec.plan(&desired, &sup, &moved(&["j-a-r0-t"]));
        assert_eq!(started(&pass.plan), ["j-a-r1-t"]);
        sup.set("j-a-r1-t", running());
        // A changed task of b plans b.
        let mut spec = (*desired[2].spec).clone();
        spec.user = Some("nobody".into());
        desired[2].spec = Arc::new(spec);
        let pass = rec.plan(&desired, &sup, &moved(&[]));
        assert_eq!(started(&pass.plan), ["j-b-r0-t"]);
        // Not knowing what moved plans every group.
        sup.units.remove("j-a-r0-t");
        let pass = rec.plan(&desired, &sup, &Observed::default());
        assert_eq!(started(&pass.plan), ["j-a-r0-t", "j-b-r0-t"]);
    }

    /// The wanted set follows the set's names, updated in place, and its
    /// version counts its changes: the same set keeps its number (the
    /// supervisor then skips looking for units to stop), any change gets a
    /// new one.
    #[test]
    fn the_wanted_set_follows_the_names_and_its_version_counts_changes() {
        // In name order (as the connected loop hands the set on) and not.
        for reversed in [false, true] {
            let order = |mut v: Vec<AssignedTask>| {
                if reversed {
                    v.reverse();
                }
                v
            };
            let dir = tempfile::tempdir().unwrap();
            let mut rec = reconciler(dir.path());
            let sup = Running::new();
            let desired = order(vec![
                task("a", 0, "t", &[]),
                task("a", 1, "t", &[]),
                task("b", 0, "t", &[]),
            ]);
            let first = rec.plan(&desired, &sup, &Observed::default()).plan;
            assert_eq!(
                *first.wanted,
                set(&["j-a-envoy", "j-a-r0-t", "j-a-r1-t", "j-b-envoy", "j-b-r0-t"])
            );
            assert_ne!(first.wanted_version, 0);
            let again = rec.plan(&desired, &sup, &Observed::default()).plan;
            assert_eq!(again.wanted_version, first.wanted_version, "nothing changed");
            let mut turned = desired.clone();
            turned.rotate_left(1);
            let again = rec.plan(&turned, &sup, &Observed::default()).plan;
            assert_eq!(
                again.wanted_version, first.wanted_version,
                "the same names in another order"
            );
            drop((first, again));
            let desired = order(vec![
                task("a", 0, "t", &[]),
                task("b", 0, "t", &[]),
                task("c", 0, "t", &[]),
            ]);
            let next = rec.plan(&desired, &sup, &Observed::default()).plan;
            assert_eq!(
                *next.wanted,
                set(&[
                    "j-a-envoy",
                    "j-a-r0-t",
                    "j-b-envoy",
                    "j-b-r0-t",
                    "j-c-envoy",
                    "j-c-r0-t"
                ])
            );
            assert!(next.wanted_version > 0);
            assert!(
                rec.seen.values().all(|group| !group.tasks.contains("j-a-r1-t")),
                "a task neither desired nor running is forgotten"
            );
            let versions = [next.wanted_version];
            drop(next);
            let desired = order(vec![task("a", 0, "t", &[]), task("b", 0, "t", &[])]);
            let last = rec.plan(&desired, &sup, &Observed::default()).plan;
            assert_eq!(*last.wanted, set(&["j-a-envoy", "j-a-r0-t", "j-b-envoy", "j-b-r0-t"]));
            assert!(!versions.contains(&last.wanted_version));
        }
    }

    /// A task that leaves the set and comes back is started again (its unit
    /// may have been stopped meanwhile), whatever the order of the set: in
    /// name order the reconciler's records are walked beside it, in any
    /// other through a set of its names.
    #[test]
    fn a_task_that_leaves_and_comes_back_is_started_again() {
        for reversed in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut rec = reconciler(dir.path());
            let order = |mut tasks: Vec<AssignedTask>| {
                if reversed {
                    tasks.reverse();
                }
                tasks
            };
            let all = order(vec![
                task("a", 0, "t", &[]),
                task("a", 1, "t", &[]),
                task("a", 2, "t", &[]),
            ]);
            let mut sup = Running::new();
            let pass = rec.plan(&all, &sup, &Observed::default());
            assert_eq!(pass.plan.units.len(), 3);
            for name in started(&pass.plan) {
                sup.set(name, running());
            }
            let without = order(vec![task("a", 0, "t", &[]), task("a", 2, "t", &[])]);
            rec.plan(&without, &sup, &Observed::default());
            // Stopped by the supervisor, not yet forgotten.
            sup.set("j-a-r1-t", Phase::Stopped);
            let pass = rec.plan(&all, &sup, &Observed::default());
            assert_eq!(started(&pass.plan), ["j-a-r1-t"], "reversed: {reversed}");
        }
    }

    /// A step plans again only where the next plan can differ: new task
    /// units that run change nothing; an init task that ended at once
    /// lets the tasks start in the same step.
    #[test]
    fn a_step_plans_again_only_after_a_unit_its_group_waits_on() {
        let data = tempfile::tempdir().unwrap();
        let mut rec = reconciler(data.path());
        let desired = [task("g", 0, "a", &[]), task("g", 1, "b", &[])];
        let mut sup = Starting {
            units: Running::new(),
            ends_at_once: BTreeSet::new(),
            applied: 0,
            settled_after: Vec::new(),
        };
        rec.step(&desired, &mut sup, &mut |_| {});
        assert_eq!(sup.applied, 1, "two new tasks: one plan");
        assert_eq!(
            sup.settled_after,
            [1],
            "what asked for the step is durable by its end, after the starts"
        );
        assert_eq!(sup.names(), ["j-g-r0-a", "j-g-r1-b"]);

        let mut rec = reconciler(data.path());
        let inits = [init("setup", false)];
        let desired = [task("h", 0, "a", &inits)];
        let mut sup = Starting {
            units: Running::new(),
            ends_at_once: set(&["j-h-setup"]),
            applied: 0,
            settled_after: Vec::new(),
        };
        rec.step(&desired, &mut sup, &mut |_| {});
        assert_eq!(
            sup.names(),
            ["j-h-r0-a", "j-h-setup"],
            "the task starts in the same step"
        );
        assert_eq!(sup.applied, 2, "the init task, then the task; no third plan");
    }

    #[test]
    fn init_tasks_run_one_at_a_time_before_the_tasks() {
        let data = tempfile::tempdir().unwrap();
        let mut rec = reconciler(data.path());
        let inits = [init("setup", false), init("sidecar", true)];
        let desired = [task("g", 0, "a", &inits), task("g", 1, "b", &inits)];
        let mut now = Running::new();

        let plan = rec.plan(&desired, &now, &Observed::default()).plan;
        assert_eq!(started(&plan), ["j-g-setup"], "only the first init task");
        let all = set(&["j-g-r0-a", "j-g-r1-b", "j-g-setup", "j-g-sidecar", "j-g-envoy"]);
        assert_eq!(*plan.wanted, all, "the rest is wanted, not started yet");

        now.set("j-g-setup", running());
        assert_eq!(
            started(&rec.plan(&desired, &now, &Observed::default()).plan),
            ["j-g-setup"],
            "waits for it"
        );

        now.set("j-g-setup", Phase::Completed);
        let plan = rec.plan(&desired, &now, &Observed::default()).plan;
        assert_eq!(started(&plan), ["j-g-setup", "j-g-sidecar", "j-g-r0-a", "j-g-r1-b"]);
        let b = &plan.units[3];
        assert_eq!(b.dir, data.path().join("alloc/j-g/r1/b"));
        assert_eq!(b.alloc_dir, data.path().join("alloc/j-g/alloc"));
        assert_eq!(b.env.get("K8S4R_REPLICA").map(String::as_str), Some("1"));
        assert_eq!(b.env.get("K8S4R_TASKGROUP").map(String::as_str), Some("g"));
        assert_eq!(plan.units[1].dir, data.path().join("alloc/j-g/init/sidecar"));

        // Tasks whose input did not change are not built again.
        now.set("j-g-r0-a", running());
        now.set("j-g-r1-b", running());
        assert_eq!(
            started(&rec.plan(&desired, &now, &Observed::default()).plan),
            ["j-g-setup", "j-g-sidecar"]
        );
    }

    #[test]
    fn a_failed_init_task_fails_its_group_and_starts_nothing_more() {
        let data = tempfile::tempdir().unwrap();
        let mut rec = reconciler(data.path());
        let desired = [task("g", 0, "a", &[init("setup", false)])];
        let mut now = Running::new();
        now.set("j-g-setup", exited_3());
        let plan = rec.plan(&desired, &now, &Observed::default()).plan;
        assert_eq!(started(&plan), ["j-g-setup"]);
        let notices = rec.take_notices();
        assert_eq!(
            notices,
            [(
                "j-g".to_string(),
                "task group failed: init task setup exited 3".to_string()
            )]
        );
        assert_eq!(
            rec.outcome(&desired[0], &now),
            Outcome::Failed("not started: init task setup exited 3".into())
        );
        let plan = rec.plan(&desired, &now, &Observed::default()).plan;
        assert!(plan.units.is_empty(), "a failed group is left alone");
        assert!(plan.wanted.contains("j-g-setup"), "its units are kept for their logs");
    }

    #[test]
    fn a_robot_scoped_daemon_runs_once_as_the_first_group_declares_it() {
        let data = tempfile::tempdir().unwrap();
        let mut rec = reconciler(data.path());
        let spire = |arg: &str| TaskSpec {
            scope: Some("robot".into()),
            env: BTreeMap::from([("MODE".to_string(), arg.to_string())]),
            ..init("spire", true)
        };
        let desired = [
            task("a", 0, "t", &[spire("first")]),
            task("b", 0, "t", &[spire("second")]),
        ];
        let plan = rec.plan(&desired, &Running::new(), &Observed::default()).plan;
        assert_eq!(started(&plan), ["robot-spire", "j-a-r0-t", "j-b-r0-t"]);
        let daemon = &plan.units[0];
        assert_eq!(daemon.env.get("MODE").map(String::as_str), Some("first"));
        assert_eq!(daemon.dir, data.path().join("robot/spire"));
        assert!(!daemon.env.contains_key("K8S4R_TASKGROUP"), "no group's identity");
    }

    #[test]
    fn a_finished_group_releases_its_daemons_and_a_departed_one_keeps_them_while_its_tasks_stop() {
        let data = tempfile::tempdir().unwrap();
        let mut rec = reconciler(data.path());
        let desired = [task("g", 0, "a", &[init("sidecar", true)])];
        let mut now = Running::new();
        now.set("j-g-sidecar", running());
        now.set("j-g-r0-a", running());
        let support = set(&["j-g-r0-a", "j-g-sidecar", "j-g-envoy"]);
        assert_eq!(*rec.plan(&desired, &now, &Observed::default()).plan.wanted, support);

        // The Job left while its task still stops: its daemon stays.
        let plan = rec.plan(&[], &now, &Observed::default()).plan;
        assert_eq!(*plan.wanted, set(&["j-g-sidecar", "j-g-envoy"]));
        now.set("j-g-r0-a", Phase::Stopped);
        assert_eq!(
            *rec.plan(&[], &now, &Observed::default()).plan.wanted,
            set(&[]),
            "then nothing is wanted"
        );

        // Back, and every task ends: the daemon is released, the task kept.
        now.set("j-g-r0-a", Phase::Completed);
        let plan = rec.plan(&desired, &now, &Observed::default()).plan;
        assert_eq!(*plan.wanted, set(&["j-g-r0-a"]));
        assert!(plan.units.is_empty());
        let notices = rec.take_notices();
        assert!(
            notices
                .iter()
                .any(|(_, m)| m.contains("proxy and group daemons released")),
            "{notices:?}"
        );
    }

    #[test]
    fn a_name_that_would_leave_the_data_directory_fails_its_group() {
        let data = tempfile::tempdir().unwrap();
        let mut rec = reconciler(data.path());
        let desired = [task("g", 0, "..", &[])];
        let plan = rec.plan(&desired, &Running::new(), &Observed::default()).plan;
        assert!(plan.units.is_empty());
        let notices = rec.take_notices();
        assert_eq!(notices.len(), 1);
        assert!(
            notices[0].1.contains("task name \"..\" is not a plain directory name"),
            "{notices:?}"
        );
    }

    /// A task of group `j-g` behind a proxy with upstream `db` on `port`.
    fn networked(port: i64) -> AssignedTask {
        let mut t = task("g", 0, "a", &[]);
        Arc::make_mut(&mut t.spec).network = Some(NetworkConfig {
            upstreams: vec![crate::api::Upstream {
                name: "db".into(),
                local_port: port,
                upstream: "db.example:5432".into(),
                tls: Some(false),
                ..Default::default()
            }],
            ..Default::default()
        });
        t
    }

    fn with_envoy() -> Observed {
        Observed {
            envoy_bin: Some(Ok("/opt/envoy/bin/envoy".into())),
            ..Default::default()
        }
    }

    /// A data directory that does not exist: planning must not need one.
    fn nowhere() -> &'static Path {
        Path::new("/nonexistent/k8s4r-data")
    }

    #[test]
    fn a_group_with_a_network_starts_its_proxy_first_and_asks_for_its_files() {
        let mut rec = reconciler(nowhere());
        let desired = [networked(15432)];
        let pass = rec.plan(&desired, &Running::new(), &with_envoy());
        assert_eq!(started(&pass.plan), ["j-g-envoy"], "the proxy, not the task yet");
        let proxy = &pass.plan.units[0];
        assert_eq!(proxy.argv[0], "/opt/envoy/bin/envoy");
        assert_eq!(proxy.dir, nowhere().join("alloc/j-g/envoy"));
        match &pass.effects[..] {
            [Effect::PrepareProxy {
                key,
                proxy,
                launch_file,
            }] => {
                assert_eq!(key, "j-g");
                assert_eq!(proxy.network.upstreams[0].local_port, 15432);
                assert_eq!(launch_file, &nowhere().join("alloc/j-g/envoy-launch.json"));
            }
            other => panic!("{other:?}"),
        }
        assert!(pass.recheck.is_some(), "it looks again for the proxy's readiness");
        assert!(pass.plan.wanted.contains("j-g-r0-a"));
    }

    #[test]
    fn tasks_wait_for_their_proxy_to_be_ready_then_get_its_variables() {
        let mut rec = reconciler(nowhere());
        let desired = [networked(15432)];
        let mut now = Running::new();
        rec.plan(&desired, &now, &with_envoy());
        now.set("j-g-envoy", running());

        let pass = rec.plan(&desired, &now, &Observed::default());
        assert!(pass.plan.units.is_empty(), "not ready: nothing starts");
        assert!(pass.effects.is_empty(), "the files are written once");
        assert!(pass.recheck.is_some());

        let ready = Observed {
            proxy_ready: set(&["j-g"]),
            ..Default::default()
        };
        let pass = rec.plan(&desired, &now, &ready);
        assert_eq!(started(&pass.plan), ["j-g-r0-a"]);
        let env = &pass.plan.units[0].env;
        assert_eq!(env.get("PROXY_DB_PORT").map(String::as_str), Some("15432"));
        assert_eq!(env.get("PROXY_DB_ADDR").map(String::as_str), Some("127.0.0.1:15432"));
        assert_eq!(rec.take_notices(), [("j-g".to_string(), "proxy ready".to_string())]);
    }

    #[test]
    fn a_running_envoy_from_an_earlier_agent_is_readopted_as_it_was_launched() {
        let mut rec = reconciler(nowhere());
        let desired = [networked(15432)];
        let mut now = Running::new();
        now.set("j-g-envoy", running());
        let argv = vec!["/old/envoy".to_string(), "-c".to_string(), "old.json".to_string()];
        let seen = Observed {
            launches: BTreeMap::from([(
                "j-g".to_string(),
                envoy::Launch {
                    argv: argv.clone(),
                    admin_socket: "/old/admin.sock".into(),
                },
            )]),
            ..with_envoy()
        };
        let pass = rec.plan(&desired, &now, &seen);
        assert!(pass.effects.is_empty(), "its config is kept, not written again");
        assert_eq!(started(&pass.plan), ["j-g-envoy"]);
        assert_eq!(pass.plan.units[0].argv, argv);
    }

    #[test]
    fn a_network_change_asks_for_an_update_and_the_tasks_wait_for_it() {
        let mut rec = reconciler(nowhere());
        let mut now = Running::new();
        rec.plan(&[networked(15432)], &now, &with_envoy());
        now.set("j-g-envoy", running());
        let ready = Observed {
            proxy_ready: set(&["j-g"]),
            ..Default::default()
        };
        rec.plan(&[networked(15432)], &now, &ready);
        now.set("j-g-r0-a", running());

        let pass = rec.plan(&[networked(15433)], &now, &Observed::default());
        assert!(pass.plan.units.is_empty(), "the tasks wait for the outcome");
        match &pass.effects[..] {
            [Effect::UpdateProxy { key, proxy, restart }] => {
                assert_eq!(key, "j-g");
                assert_eq!(proxy.network.upstreams[0].local_port, 15433);
                assert_eq!(proxy.envoy_bin, Path::new("/opt/envoy/bin/envoy"), "looked up once");
                assert_eq!(restart.name, "j-g-envoy");
            }
            other => panic!("{other:?}"),
        }
        let pass = rec.plan(&[networked(15433)], &now, &Observed::default());
        assert_eq!(
            started(&pass.plan),
            ["j-g-r0-a"],
            "updated in place: the task takes the new port"
        );
        assert_eq!(
            pass.plan.units[0].env.get("PROXY_DB_PORT").map(String::as_str),
            Some("15433")
        );
    }

    #[test]
    fn no_envoy_binary_fails_the_group_with_the_reason() {
        let mut rec = reconciler(nowhere());
        let seen = Observed {
            envoy_bin: Some(Err("proxy: envoy binary \"envoy\" not found".into())),
            ..Default::default()
        };
        let pass = rec.plan(&[networked(15432)], &Running::new(), &seen);
        assert!(pass.plan.units.is_empty() && pass.effects.is_empty());
        assert_eq!(
            rec.take_notices(),
            [(
                "j-g".to_string(),
                "task group failed: proxy: envoy binary \"envoy\" not found".to_string()
            )]
        );
    }

    #[test]
    fn in_shared_mode_a_group_asks_to_join_the_robot_proxy_and_waits_to_be_served() {
        let mut rec = Reconciler::new(ReconcileConfig {
            proxy_mode: ProxyMode::Shared,
            ..reconciler(nowhere()).config
        });
        let desired = [networked(15432)];
        let pass = rec.plan(&desired, &Running::new(), &with_envoy());
        assert!(pass.plan.units.is_empty(), "the members are written first");
        match &pass.effects[..] {
            [Effect::ShareProxy { draining }] => assert!(draining.is_empty()),
            other => panic!("{other:?}"),
        }
        assert!(pass.recheck.is_some());
        // Not written (the effect was not carried out): told it is served,
        // the group still waits for its own network to be written.
        let served = Observed {
            shared_served: set(&["j-g"]),
            ..Default::default()
        };
        let pass = rec.plan(&desired, &Running::new(), &served);
        assert!(pass.plan.units.is_empty());
        assert!(!pass.plan.wanted.contains("robot-envoy"), "no member yet");
    }

    #[test]
    fn a_proxy_whose_port_is_taken_fails_its_group_when_its_files_are_written() {
        let data = tempfile::tempdir().unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let mut rec = reconciler(data.path());
        let desired = [networked(i64::from(port))];
        let now = Running::new();
        let Pass { mut plan, effects, .. } = rec.plan(&desired, &now, &with_envoy());
        assert_eq!(started(&plan), ["j-g-envoy"]);
        rec.carry_out(effects, &mut plan, &now);
        assert!(plan.units.is_empty(), "the proxy does not start");
        let notices = rec.take_notices();
        assert!(
            notices.len() == 1
                && notices[0].1.starts_with("task group failed: proxy: ")
                && notices[0].1.contains(&port.to_string()),
            "{notices:?}"
        );
        assert!(matches!(rec.outcome(&desired[0], &now), Outcome::Failed(_)));
    }

    #[test]
    fn the_launch_file_written_for_a_proxy_lets_the_next_agent_readopt_it() {
        let data = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut rec = reconciler(data.path());
        let desired = [networked(i64::from(port))];
        let Pass { mut plan, effects, .. } = rec.plan(&desired, &Running::new(), &with_envoy());
        let argv = plan.units[0].argv.clone();
        rec.carry_out(effects, &mut plan, &Running::new());
        assert!(rec.take_notices().is_empty());
        assert!(data.path().join("alloc/j-g/envoy/envoy.json").is_file());

        let next = reconciler(data.path());
        let mut now = Running::new();
        assert!(next.observe(&desired, &now).launches.is_empty(), "no Envoy runs");
        now.set("j-g-envoy", running());
        let seen = next.observe(&desired, &now);
        assert_eq!(seen.launches.get("j-g").map(|l| &l.argv), Some(&argv));
    }

    #[test]
    fn observing_asks_about_the_proxy_only_once_the_init_tasks_are_done() {
        let rec = reconciler(nowhere());
        let mut t = networked(15432);
        Arc::make_mut(&mut t.spec).init_tasks = vec![init("setup", false)];
        let mut now = Running::new();
        now.set("j-g-setup", running());
        assert!(rec.observe(&[t.clone()], &now).envoy_bin.is_none(), "setup still runs");
        now.set("j-g-setup", Phase::Completed);
        assert!(
            rec.observe(&[t], &now).envoy_bin.is_some(),
            "the proxy is next: its binary is looked up"
        );
    }

    #[test]
    fn a_failed_init_task_reports_the_last_output_it_was_given() {
        let mut rec = reconciler(nowhere());
        let desired = [task("g", 0, "a", &[init("setup", false)])];
        let mut now = Running::new();
        now.set("j-g-setup", exited_3());
        let seen = Observed {
            log_tails: BTreeMap::from([("j-g-setup".to_string(), "[stderr] disk full".to_string())]),
            ..Default::default()
        };
        rec.plan(&desired, &now, &seen);
        assert_eq!(
            rec.take_notices(),
            [(
                "j-g".to_string(),
                "task group failed: init task setup exited 3; last output:\n[stderr] disk full".to_string()
            )]
        );
    }

    #[test]
    fn observing_reads_the_output_of_the_init_task_that_failed() {
        let data = tempfile::tempdir().unwrap();
        let rec = reconciler(data.path());
        let desired = [task("g", 0, "a", &[init("setup", false)])];
        let logs = data.path().join("setup/logs");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(logs.join("stderr"), "disk full\n").unwrap();
        let mut now = Running::new();
        now.units
            .insert("j-g-setup".into(), (exited_3(), data.path().join("setup")));
        let seen = rec.observe(&desired, &now);
        assert_eq!(
            seen.log_tails.get("j-g-setup").map(String::as_str),
            Some("[stderr] disk full")
        );
        assert!(seen.envoy_bin.is_none(), "no proxy to start: no lookup");
    }

    #[test]
    fn restart_rule_defaults() {
        let r = restart_rules(None, 2);
        assert_eq!((r.attempts, r.delay, r.delay_mode), (2, Duration::from_secs(1), false));
        let p = RestartPolicy {
            attempts: Some(5),
            mode: Some(RestartMode::Delay),
            ..Default::default()
        };
        let r = restart_rules(Some(&p), 0);
        assert_eq!((r.attempts, r.delay_mode), (5, true));
    }

    #[test]
    fn robot_scoped_init_tasks_share_one_name() {
        let spire = TaskSpec {
            name: "spire-agent".into(),
            daemon: true,
            scope: Some("robot".into()),
            ..Default::default()
        };
        let setup = TaskSpec {
            name: "setup".into(),
            ..Default::default()
        };
        let name = |group: &str, init: &TaskSpec| init_unit_id(group, init).name();
        assert_eq!(name("j-a", &spire), name("j-b", &spire));
        assert_eq!(name("j-a", &spire), "robot-spire-agent");
        assert_eq!(name("j-a", &setup), "j-a-setup");
    }
}
