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
//!
//! Directory layout under the data dir:
//! `alloc/<job>-<group>/alloc/` (the group's shared K8S4R_ALLOC_DIR),
//! `alloc/<job>-<group>/init/<init task>/`, `alloc/<job>-<group>/r<i>/<task>/`
//! (a task directory: cwd, `local/`, `logs/`), `alloc/<job>-<group>/envoy/`,
//! and `robot/<name>/` for robot-scoped daemons.

use super::cgroup::Limits;
use super::checks;
use super::privileges::ProxyMode;
use super::robot_proxy::{self, Part, RobotProxy};
use super::supervisor::machine::{Phase, Policy, RestartRules};
use super::supervisor::{DirOwner, PreStart, UnitSpec, Units};
use crate::agent::clock;
use crate::agent::gc::AllocGc;
use crate::api::{JobType, NetworkConfig, RestartMode, RestartPolicy, TaskSpec};
use crate::envoy::{self, GroupProxy};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a proxy may take to answer /ready before the group fails.
pub const PROXY_READY_TIMEOUT: Duration = Duration::from_secs(30);
const PROXY_READY_POLL: Duration = Duration::from_millis(100);
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One task assigned to this robot, with its placement filled in
/// (`jobName`, `taskGroupName`, `replicaIndex`, the group's `initTasks`,
/// the group's merged `network`).
#[derive(Clone, Debug, PartialEq)]
pub struct AssignedTask {
    /// `<job>-<group>-r<i>-<task>`.
    pub name: String,
    pub job_type: JobType,
    pub spec: TaskSpec,
}

impl AssignedTask {
    pub fn job(&self) -> &str {
        self.spec.job_name.as_deref().unwrap_or("")
    }
    /// The group's name in the Job (`<group>`), for people and K8S4R_TASKGROUP.
    pub fn group(&self) -> &str {
        let tg = self.spec.task_group_name.as_deref().unwrap_or("");
        tg.strip_prefix(self.job())
            .and_then(|r| r.strip_prefix('-'))
            .unwrap_or(tg)
    }
    pub fn replica(&self) -> i32 {
        self.spec.replica_index.unwrap_or(0)
    }
    /// The TaskGroup object's name, `<job>-<group>`, as `api::placement`
    /// sets `taskGroupName`.
    pub fn group_key(&self) -> String {
        self.spec
            .task_group_name
            .clone()
            .unwrap_or_else(|| self.job().to_string())
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

struct ProxyStart {
    /// The network the proxy was configured with.
    network: NetworkConfig,
    admin_socket: PathBuf,
    since: Instant,
    ready: bool,
    env: Vec<(String, String)>,
}

pub struct Reconciler {
    config: ReconcileConfig,
    /// Groups that failed (init task or proxy), with the reason.
    failed: BTreeMap<String, String>,
    proxies: BTreeMap<String, ProxyStart>,
    notices: Vec<(String, String)>,
    /// Per group seen: its task units and its supporting units (init
    /// daemons, proxy, robot daemons).
    seen: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>,
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
}

impl Reconciler {
    pub fn new(config: ReconcileConfig) -> Self {
        let gc = config.gc_after.map(|after| AllocGc::new(&config.data_dir, after));
        Reconciler {
            gc,
            config,
            failed: BTreeMap::new(),
            proxies: BTreeMap::new(),
            notices: Vec::new(),
            seen: BTreeMap::new(),
            lingering: BTreeSet::new(),
            finished: BTreeSet::new(),
            ensured: BTreeMap::new(),
            built: BTreeMap::new(),
            robot_proxy: None,
        }
    }

    /// Group-level events since the last call: (group key, message).
    pub fn take_notices(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.notices)
    }

    fn group_dir(&self, key: &str) -> PathBuf {
        self.config.data_dir.join("alloc").join(key)
    }

    /// One pass. Returns when it wants to look again even if nothing
    /// happens (a proxy's readiness), so the caller's wait is bounded.
    pub fn reconcile(&mut self, desired: &[AssignedTask], sup: &mut impl Units) -> Option<Instant> {
        let mut recheck = None;
        for (key, tasks) in by_group(desired) {
            if self.failed.contains_key(&key) {
                continue;
            }
            let respecced = tasks.iter().any(|t| {
                t.job_type != JobType::Batch && self.built.get(&t.name).is_some_and(|h| *h != hash_debug(&t.spec))
            });
            if group_finished(&tasks, sup) && !respecced {
                // `wanted` no longer lists its proxy and daemons: they stop.
                if self.finished.insert(key.clone()) {
                    self.notices
                        .push((key.clone(), "all tasks ended: proxy and group daemons released".into()));
                }
                continue;
            }
            self.finished.remove(&key);
            // Who shares the group's directory (see `group_users`).
            let users = group_users(&tasks, self.config.default_user.as_deref());
            match self.prepare_group(&key, tasks[0], &users, sup) {
                Ok(GroupReady::Yes(proxy_env)) => {
                    // Building a unit's spec allocates a lot (env, argv,
                    // templates) and this runs for every task on every
                    // wake-up: skip tasks whose input did not change.
                    // The group's users decide its shared directory's owner:
                    // a change there rebuilds every task of the group alike.
                    let env_stamp = hash_debug(&(&proxy_env, &users));
                    for t in &tasks {
                        let stamp = hash_debug(&(t.job_type, &t.spec, env_stamp));
                        if self.ensured.get(&t.name) == Some(&stamp) && sup.view(&t.name).is_some() {
                            continue;
                        }
                        sup.ensure(self.task_unit(t, &proxy_env, &users));
                        self.ensured.insert(t.name.clone(), stamp);
                        self.built.insert(t.name.clone(), hash_debug(&t.spec));
                    }
                }
                Ok(GroupReady::NotYet(at)) => recheck = recheck.into_iter().chain(at).min(),
                Err(reason) => {
                    self.notices.push((key.clone(), format!("task group failed: {reason}")));
                    self.failed.insert(key, reason);
                }
            }
        }
        // Forget groups that are no longer desired; keep their supporting
        // units until their tasks are gone.
        let keys: BTreeSet<String> = desired.iter().map(AssignedTask::group_key).collect();
        self.failed.retain(|k, _| keys.contains(k));
        self.proxies.retain(|k, _| keys.contains(k));
        self.finished.retain(|k| keys.contains(k));

        // Task names are forgotten once neither desired nor running: a group
        // that cycles through new task names must not remember every one.
        let names: BTreeSet<&str> = desired.iter().map(|t| t.name.as_str()).collect();
        for (tasks, _) in self.seen.values_mut() {
            tasks.retain(|n| names.contains(n.as_str()) || sup.has_process(n));
        }
        // A task that left and comes back must be ensured again (it may have
        // been stopped meanwhile).
        self.ensured.retain(|n, _| names.contains(n.as_str()));
        self.built.retain(|n, _| names.contains(n.as_str()));
        let mode = self.config.proxy_mode;
        for t in desired {
            let (tasks, support) = self.seen.entry(t.group_key()).or_default();
            tasks.insert(t.name.clone());
            support.extend(support_units(&t.group_key(), t, mode));
        }
        self.lingering.clear();
        self.seen.retain(|key, (tasks, support)| {
            let draining = !keys.contains(key) && tasks.iter().any(|n| sup.has_process(n));
            if draining {
                self.lingering.extend(support.iter().cloned());
            }
            keys.contains(key) || draining
        });
        if let Some(rp) = &mut self.robot_proxy {
            let draining: BTreeSet<String> = self.seen.keys().filter(|k| !keys.contains(*k)).cloned().collect();
            for (key, reason) in rp.apply(&draining, sup) {
                self.notices.push((key.clone(), format!("task group failed: {reason}")));
                self.failed.insert(key, reason);
            }
        }
        recheck
    }

    /// Remove directories of groups that left (after the stops of this
    /// pass, so a unit just let go no longer counts as living there).
    fn collect_garbage(&mut self, sup: &impl Units) -> Option<Instant> {
        let gc = self.gc.as_mut()?;
        let in_use: BTreeSet<String> = self.seen.keys().cloned().collect();
        for key in gc.sweep(&in_use, sup, sup.now()) {
            self.notices
                .push((key, "left this robot: its directory was removed (--gc-after)".into()));
        }
        gc.next_due()
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
        for c in sup.take_changes() {
            say(format!("{}: {}", c.label, c.message));
        }
        let recheck = self.reconcile(desired, sup);
        let wanted = self.wanted(desired);
        sup.retain(&|n| wanted.contains(n));
        let recheck = recheck.into_iter().chain(self.collect_garbage(sup)).min();
        for (group, msg) in self.take_notices() {
            say(format!("{group}: {msg}"));
        }
        for c in sup.take_changes() {
            say(format!("{}: {}", c.label, c.message));
        }
        recheck
    }

    /// Names of every unit the desired set may need; anything else is stopped.
    pub fn wanted(&self, desired: &[AssignedTask]) -> BTreeSet<String> {
        let mut names = self.lingering.clone();
        for t in desired {
            names.insert(t.name.clone());
            let key = t.group_key();
            if !self.finished.contains(&key) {
                names.extend(support_units(&key, t, self.config.proxy_mode));
            }
        }
        // Shared by every group with a network: wanted while one is a member.
        if self.robot_proxy.as_ref().is_some_and(RobotProxy::in_use) {
            names.insert(robot_proxy::UNIT.to_string());
        }
        names
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

    /// Init tasks and proxy of one group.
    fn prepare_group(
        &mut self,
        key: &str,
        first: &AssignedTask,
        users: &[String],
        sup: &mut impl Units,
    ) -> Result<GroupReady, String> {
        for init in &first.spec.init_tasks {
            let name = init_unit_name(key, init);
            if self.config.proxy_mode == ProxyMode::Shared && name == robot_proxy::UNIT {
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
            sup.ensure(self.init_unit(first, init, &name, users));
            if init.daemon {
                continue;
            }
            match sup.view(&name).map(|v| v.phase) {
                Some(Phase::Completed) => continue,
                Some(Phase::Failed { reason }) => {
                    let dir = sup.view(&name).map(|v| v.dir.to_path_buf()).unwrap_or_default();
                    let tail = log_tail(&dir, 5);
                    let tail = if tail.is_empty() {
                        String::new()
                    } else {
                        format!("; last output:\n{tail}")
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
        self.prepare_proxy(key, first, network, sup)
    }

    fn prepare_proxy(
        &mut self,
        key: &str,
        first: &AssignedTask,
        network: NetworkConfig,
        sup: &mut impl Units,
    ) -> Result<GroupReady, String> {
        let name = format!("{key}-envoy");
        let now = sup.now();
        // A proxy of the other mode (an earlier agent's) holds the ports
        // until the stop of unwanted units ends it; the tasks run on.
        let other = match self.config.proxy_mode {
            ProxyMode::PerGroup => robot_proxy::UNIT,
            ProxyMode::Shared => name.as_str(),
        };
        if sup.has_process(other) {
            return Ok(GroupReady::NotYet(Some(clock::after(now, PROXY_READY_POLL))));
        }
        if self.config.proxy_mode == ProxyMode::Shared {
            return self.prepare_shared(key, &network, now);
        }
        if !self.proxies.contains_key(key) {
            let proxy = self.group_proxy(key, first, &network)?;
            // Render now, so a network that cannot become a proxy fails the
            // group with its reason instead of crash-looping a daemon. An
            // Envoy re-adopted from an earlier agent keeps its config; how
            // it was launched is remembered next to it.
            let launch_file = self.group_dir(key).join("envoy-launch.json");
            let launch = match read_launch(&launch_file).filter(|_| sup.has_process(&name)) {
                Some(launch) => launch,
                None => {
                    let launch = envoy::prepare(&proxy).map_err(|e| format!("proxy: {e}"))?;
                    write_launch(&launch_file, &launch)
                        .map_err(|e| format!("proxy: writing {}: {e}", launch_file.display()))?;
                    launch
                }
            };
            sup.ensure(self.proxy_unit(key, first, &proxy, launch.argv));
            let env = envoy::proxy_env(&network);
            let start = ProxyStart {
                admin_socket: launch.admin_socket,
                since: now,
                ready: false,
                env,
                network,
            };
            self.proxies.insert(key.to_string(), start);
        } else if self.proxies.get(key).is_some_and(|p| p.network != network) {
            // The network changed: rewrite the xDS files, which the running
            // Envoy picks up; if that is not enough, restart it (a new
            // revision makes the supervisor replace the process).
            let proxy = self.group_proxy(key, first, &network)?;
            let restart = match envoy::update(&proxy) {
                Ok(()) => {
                    self.notices
                        .push((key.to_string(), "proxy config updated in place".into()));
                    false
                }
                Err(e) => {
                    self.notices
                        .push((key.to_string(), format!("proxy restarts for the network change: {e}")));
                    let argv = envoy::prepare(&proxy).map_err(|e| format!("proxy: {e}"))?.argv;
                    sup.ensure(self.proxy_unit(key, first, &proxy, argv));
                    true
                }
            };
            if let Some(p) = self.proxies.get_mut(key) {
                p.env = envoy::proxy_env(&network);
                p.network = network;
                if restart {
                    p.ready = false;
                    p.since = now;
                }
            }
        }
        let Some(p) = self.proxies.get_mut(key) else {
            return Ok(GroupReady::NotYet(None));
        };
        if !p.ready {
            if envoy::is_ready(&p.admin_socket) {
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
    fn prepare_shared(&mut self, key: &str, network: &NetworkConfig, now: Instant) -> Result<GroupReady, String> {
        if self.robot_proxy.is_none() {
            let dir = self.config.data_dir.join("robot").join("envoy");
            std::fs::create_dir_all(&dir).map_err(|e| format!("proxy: creating {}: {e}", dir.display()))?;
            let shared = envoy::shared::SharedProxy {
                robot: self.config.robot.clone(),
                dir,
                envoy_bin: self.envoy_bin()?,
                options: envoy::ProxyOptions::default(),
            };
            self.robot_proxy = Some(RobotProxy::new(shared, self.config.proxy_user.clone()));
        }
        let Some(rp) = self.robot_proxy.as_mut() else {
            return Ok(GroupReady::NotYet(None));
        };
        match rp.want(key, network, now, PROXY_READY_POLL)? {
            Part::Ready { newly } => {
                if newly {
                    self.notices.push((
                        key.to_string(),
                        format!("proxy ready (its part of {})", robot_proxy::UNIT),
                    ));
                }
                Ok(GroupReady::Yes(envoy::proxy_env(network)))
            }
            Part::NotYet(at) => Ok(GroupReady::NotYet(Some(at))),
        }
    }

    fn group_proxy(&self, key: &str, first: &AssignedTask, network: &NetworkConfig) -> Result<GroupProxy, String> {
        let dir = self.group_dir(key).join("envoy");
        std::fs::create_dir_all(&dir).map_err(|e| format!("proxy: creating {}: {e}", dir.display()))?;
        Ok(GroupProxy {
            robot: self.config.robot.clone(),
            job: first.job().to_string(),
            group: first.group().to_string(),
            network: network.clone(),
            dir,
            envoy_bin: self.envoy_bin()?,
        })
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
        let hook_proxy = proxy.clone();
        UnitSpec {
            name: format!("{key}-envoy"),
            label: format!("{} envoy", first.group_key()),
            argv,
            env: BTreeMap::from([("PATH".to_string(), task_path())]),
            dir: proxy.dir.clone(),
            alloc_dir: self.group_dir(key).join("alloc"),
            user: self.config.proxy_user.clone(),
            dir_owner: DirOwner::Agent,
            alloc_users: Vec::new(),
            policy: Policy::Daemon {
                base_delay: Duration::from_secs(1),
            },
            timeout: None,
            kill_timeout: DEFAULT_KILL_TIMEOUT,
            templates: Vec::new(),
            artifacts: Vec::new(),
            checks: Vec::new(),
            limits: Limits::default(),
            // Every (re)start renders afresh and clears a stale admin socket.
            pre_start: Some(PreStart(Arc::new(move || {
                envoy::prepare(&hook_proxy)
                    .map(|l| l.argv)
                    .map_err(|e| format!("proxy: {e}"))
            }))),
            // A new proxy user restarts the proxy too.
            revision: hash_debug(&(&proxy.network, &self.config.proxy_user)),
        }
    }

    fn init_unit(&self, first: &AssignedTask, init: &TaskSpec, name: &str, users: &[String]) -> UnitSpec {
        let key = first.group_key();
        let (dir, alloc_dir, label) = if init.is_robot_scoped() {
            let dir = self.config.data_dir.join("robot").join(&init.name);
            (dir.clone(), dir, format!("robot {}", init.name))
        } else {
            let g = self.group_dir(&key);
            (
                g.join("init").join(&init.name),
                g.join("alloc"),
                format!("{} {}", first.group_key(), init.name),
            )
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
        self.unit(name.to_string(), label, init, policy, injected, dir, alloc_dir, users)
    }

    fn task_unit(&self, t: &AssignedTask, proxy_env: &[(String, String)], users: &[String]) -> UnitSpec {
        let g = self.group_dir(&t.group_key());
        let dir = g.join(format!("r{}", t.replica())).join(&t.spec.name);
        let alloc_dir = g.join("alloc");
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
        let mut env: BTreeMap<String, String> = BTreeMap::from([("PATH".to_string(), task_path())]);
        let injected_map: BTreeMap<String, String> = injected.iter().cloned().collect();
        for (k, v) in &spec.env {
            env.insert(k.clone(), expand(v, &injected_map));
        }
        env.extend(injected);
        let exec = spec.config.exec_config.clone().unwrap_or_default();
        let argv = std::iter::once(exec.command)
            .chain(exec.args)
            .map(|a| expand(&a, &env))
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

/// Hash of a value's Debug form, streamed into the hasher: the spec of
/// every desired unit is fingerprinted on every pass, so no string is built.
pub(super) fn hash_debug(value: &impl std::fmt::Debug) -> u64 {
    use std::fmt::Write;
    use std::hash::Hasher;
    struct Feed<'a>(&'a mut std::collections::hash_map::DefaultHasher);
    impl Write for Feed<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0.write(s.as_bytes());
            Ok(())
        }
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let _ = write!(Feed(&mut h), "{value:?}");
    h.finish()
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

fn write_launch(path: &Path, launch: &envoy::Launch) -> std::io::Result<()> {
    let saved = SavedLaunch {
        argv: launch.argv.clone(),
        admin_socket: launch.admin_socket.clone(),
    };
    let bytes = serde_json::to_vec(&saved).map_err(std::io::Error::other)?;
    super::state::write_atomic(path, &bytes, 0o600)
}

/// `bin` itself if it names a path, else the first executable `bin` on the
/// agent's PATH (tasks get their own PATH, so the proxy's binary is resolved
/// here, once).
pub fn find_executable(bin: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    crate::agent::accounts::find_on_path(bin, &std::env::var_os("PATH").unwrap_or_default(), executable)
}

/// The PATH tasks get: the agent's own (so `run -f` on a developer machine
/// finds the same tools), or a standard one.
pub(super) fn task_path() -> String {
    std::env::var("PATH")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_PATH.to_string())
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
        .map(|t| &t.spec)
        .chain(inits)
        .filter_map(|t| t.user.as_deref().or(default_user))
        .collect();
    users.into_iter().map(String::from).collect()
}

/// The units a group's tasks rely on: init tasks (and daemons), its own
/// proxy (the robot-wide one is wanted while it has members).
fn support_units<'a>(key: &str, t: &'a AssignedTask, mode: ProxyMode) -> impl Iterator<Item = String> + 'a {
    let key = key.to_string();
    let own_proxy = (mode == ProxyMode::PerGroup).then(|| format!("{key}-envoy"));
    own_proxy
        .into_iter()
        .chain(t.spec.init_tasks.iter().map(move |i| init_unit_name(&key, i)))
}

/// `<taskGroup>-<init>` for group init tasks, `robot-<name>` for robot-scoped daemons.
pub fn init_unit_name(group_key: &str, init: &TaskSpec) -> String {
    if init.is_robot_scoped() {
        format!("robot-{}", init.name)
    } else {
        format!("{group_key}-{}", init.name)
    }
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

fn by_group(desired: &[AssignedTask]) -> BTreeMap<String, Vec<&AssignedTask>> {
    let mut groups: BTreeMap<String, Vec<&AssignedTask>> = BTreeMap::new();
    for t in desired {
        groups.entry(t.group_key()).or_default().push(t);
    }
    groups
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

/// `${VAR}` from `vars`; unknown variables are left as written.
fn expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) if vars.contains_key(&after[..end]) => {
                out.push_str(&vars[&after[..end]]);
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The last lines of a unit's stderr and stdout, for failure messages.
pub fn log_tail(dir: &Path, lines: usize) -> String {
    let mut parts = Vec::new();
    for stream in ["stderr", "stdout"] {
        let tail = super::logs::read_tail(&dir.join("logs"), stream, Some(lines));
        let text = String::from_utf8_lossy(&tail).trim_end().to_string();
        if !text.is_empty() {
            parts.push(format!("[{stream}] {}", text.replace('\n', &format!("\n[{stream}] "))));
        }
    }
    parts.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_known_variables_only() {
        let vars = BTreeMap::from([("K8S4R_TASK_DIR".to_string(), "/d/t".to_string())]);
        assert_eq!(expand("${K8S4R_TASK_DIR}/x ${HOME} $$", &vars), "/d/t/x ${HOME} $$");
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
        assert_eq!(init_unit_name("j-a", &spire), init_unit_name("j-b", &spire));
        assert_eq!(init_unit_name("j-a", &setup), "j-a-setup");
    }
}
