//! The Job reconciler: Job → one TaskGroup per `taskGroups[]` entry
//! (`{job}-{group}`) → `count` replicas of each task (`{job}-{group}-r{i}-{task}`),
//! placed by the scheduler, rescheduled when lost (service jobs), with the
//! status rolled up Task → TaskGroup → Job. Idempotent: it compares the
//! desired objects with the cached ones and writes only differences.

use super::{Ctx, Next};
use crate::api::placement;
use crate::api::{
    GroupState, GroupSummary, Job, JobStatus, JobType, ObjectMeta, OwnerReference, TaskGroupSpec, TaskGroupStatus,
    TaskGroupTemplate, TaskSpec, TaskState, API_VERSION,
};
use crate::server::events::Kind;
use crate::server::object;
use crate::server::registry::{DeleteOptions, Part, WriteOptions};
use crate::server::resources::{TASKGROUPS, TASKS};
use crate::server::scheduler::{self, RobotInfo};
use crate::server::status::Status;
use crate::server::time;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

pub const LABEL_JOB: &str = "robot.k8s4r.io/job";
pub const LABEL_GROUP: &str = "robot.k8s4r.io/taskgroup";
pub const LABEL_REPLICA: &str = "robot.k8s4r.io/replica";
/// How often a Task's replica was moved to another robot.
pub const ANN_RESCHEDULES: &str = "robot.k8s4r.io/reschedules";
/// Last status sequence number applied from the agent.
pub const ANN_STATUS_SEQ: &str = "robot.k8s4r.io/status-seq";

/// Retry placing unschedulable replicas at least this often (robot changes
/// trigger a retry at once).
const UNSCHEDULABLE_RETRY: Duration = Duration::from_secs(10);

pub use crate::api::placement::task_name;

fn owner(kind: &str, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: API_VERSION.into(),
        kind: kind.into(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn spec_str<'a>(v: &'a Value, f: &str) -> Option<&'a str> {
    v.get("spec")?.get(f)?.as_str().filter(|s| !s.is_empty())
}

pub fn task_state(v: &Value) -> TaskState {
    v.get("status")
        .and_then(|s| s.get("state"))
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .unwrap_or_default()
}

fn to_value<T: serde::Serialize>(x: &T) -> Result<Value, Status> {
    serde_json::to_value(x).map_err(|e| Status::internal(format!("encoding: {e}")))
}

fn group_spec(job: &str, g: &TaskGroupTemplate) -> TaskGroupSpec {
    TaskGroupSpec {
        job_name: job.into(),
        group_name: g.name.clone(),
        count: g.count,
        init_tasks: g.init_tasks.clone(),
        tasks: g.tasks.clone(),
        network: g.network.clone(),
        constraints: g.constraints.clone(),
        restart_policy: g.restart_policy.clone(),
        reschedule_policy: g.reschedule_policy.clone(),
        ephemeral_disk: g.ephemeral_disk.clone(),
        meta: g.meta.clone(),
        resources: g.resources.clone(),
        disconnect: g.disconnect.clone(),
    }
}

/// Ports the group's Envoy listens on: upstream localPorts (127.0.0.1)
/// and inbound ports (the robot's network). Both are per-robot resources.
fn group_ports(g: &TaskGroupTemplate) -> BTreeSet<i64> {
    placement::group_network(g.network.as_ref(), &g.tasks)
        .filter(|n| n.is_active())
        .map(|n| {
            n.upstreams
                .iter()
                .map(|u| u.local_port)
                .chain(n.inbound.iter().map(|i| i.port))
                .collect()
        })
        .unwrap_or_default()
}

fn value_ports(v: &Value) -> Vec<i64> {
    let Some(net) = v.get("spec").and_then(|s| s.get("network")) else {
        return vec![];
    };
    let active = net.get("enabled").and_then(Value::as_bool).unwrap_or(true)
        && net.get("type").and_then(Value::as_str).unwrap_or("envoy") == "envoy";
    if !active {
        return vec![];
    }
    let ports = |list: &str, field: &str| -> Vec<i64> {
        net.get(list)
            .and_then(Value::as_array)
            .map(|xs| xs.iter().filter_map(|x| x.get(field)?.as_i64()).collect())
            .unwrap_or_default()
    };
    let mut out = ports("upstreams", "localPort");
    out.extend(ports("inbound", "port"));
    out
}

/// Tasks created per store batch.
const CREATE_BATCH: usize = 256;

/// Create `tasks` in one batch; returns how many were created, or the
/// first error (after recording every success).
async fn create_tasks(
    ctx: &Ctx,
    ns: &str,
    tasks: Vec<(Value, Option<Result<String, String>>)>,
) -> Result<usize, Status> {
    if tasks.is_empty() {
        return Ok(0);
    }
    let (bodies, placements): (Vec<Value>, Vec<_>) = tasks.into_iter().unzip();
    let results = ctx.registry.create_many(&TASKS, ns, bodies, Part::All, ALL).await?;
    let mut created = 0;
    let mut first_error = None;
    for (r, p) in results.into_iter().zip(placements) {
        match r {
            Ok(w) => {
                record_placement(ctx, &w.object, p.as_ref(), None);
                ctx.wrote_owned("tasks", w.object);
                created += 1;
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(created),
    }
}

fn record_placement(ctx: &Ctx, task: &Value, p: Option<&Result<String, String>>, from: Option<&str>) {
    match (p, from) {
        (Some(Ok(robot)), Some(old)) => ctx.events.record(
            task,
            Kind::Normal,
            "Rescheduled",
            format!("robot {old} was lost; placed on robot {robot}"),
        ),
        (Some(Ok(robot)), None) => {
            ctx.events
                .record(task, Kind::Normal, "Scheduled", format!("placed on robot {robot}"))
        }
        (Some(Err(why)), _) => ctx.events.record(task, Kind::Warning, "FailedScheduling", why.clone()),
        (None, _) => {}
    }
}

/// (milli-cores, bytes) a Task object requests.
fn value_requests(v: &Value) -> (i128, i128) {
    let res = v.get("spec").and_then(|s| s.get("resources"));
    let q = |f: &str| -> Option<crate::api::Quantity> { serde_json::from_value(res?.get(f)?.clone()).ok() };
    (
        q("cpu").and_then(|c| c.milli()).unwrap_or(0),
        q("memory").and_then(|m| m.units_ceil()).unwrap_or(0),
    )
}

/// (milli-cores, bytes) one replica of `g` requests.
fn group_requests(g: &TaskGroupTemplate) -> (i128, i128) {
    g.tasks
        .iter()
        .filter_map(|t| t.resources.as_ref())
        .fold((0, 0), |(c, m), r| {
            (
                c + r.cpu.as_ref().and_then(|q| q.milli()).unwrap_or(0),
                m + r.memory.as_ref().and_then(|q| q.units_ceil()).unwrap_or(0),
            )
        })
}

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>, depth: usize) {
    match v {
        Value::Object(m) if depth < 4 => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, x, out, depth + 1);
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        Value::Number(_) | Value::Bool(_) => {
            out.insert(prefix.to_string(), v.to_string());
        }
        _ => {}
    }
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, x)| Some((k.clone(), x.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// The robots of `ns` with what is already placed on them.
fn snapshot(ctx: &Ctx, ns: &str) -> Vec<RobotInfo> {
    let mut robots: Vec<RobotInfo> = ctx
        .cache()
        .list("robots", Some(ns))
        .iter()
        .map(|r| {
            let mut labels = string_map(r.get("metadata").and_then(|m| m.get("labels")));
            labels.extend(string_map(r.get("spec").and_then(|s| s.get("labels"))));
            let mut attrs = BTreeMap::new();
            if let Some(d) = r.get("status").and_then(|s| s.get("deviceInfo")) {
                flatten("", d, &mut attrs, 0);
            }
            let device = r.get("status").and_then(|s| s.get("deviceInfo"));
            let num = |path: &[&str]| -> Option<i128> {
                let mut v = device?;
                for p in path {
                    v = v.get(*p)?;
                }
                v.as_u64().map(i128::from)
            };
            RobotInfo {
                name: object::name(r).to_string(),
                online: r.get("status").and_then(|s| s.get("phase")).and_then(Value::as_str) == Some("Online"),
                labels,
                attrs,
                cpu_capacity: num(&["cpu", "logicalCores"]).map(|c| c * 1000),
                memory_capacity: num(&["memory", "total"]),
                ..Default::default()
            }
        })
        .collect();
    let index: HashMap<String, usize> = robots.iter().enumerate().map(|(i, r)| (r.name.clone(), i)).collect();
    let mut seen = HashSet::new();
    for t in ctx.cache().list("tasks", Some(ns)) {
        let Some(&i) = spec_str(&t, "targetRobot").and_then(|r| index.get(r)) else {
            continue;
        };
        if task_state(&t).is_terminal() {
            continue;
        }
        let group = format!("{ns}/{}", spec_str(&t, "taskGroupName").unwrap_or(""));
        let replica = t
            .get("spec")
            .and_then(|s| s.get("replicaIndex"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let r = &mut robots[i];
        r.load += 1;
        let (cpu, memory) = value_requests(&t);
        r.cpu_used += cpu;
        r.memory_used += memory;
        for p in value_ports(&t) {
            r.ports.insert(p, group.clone());
        }
        if seen.insert((group.clone(), replica)) {
            *r.replicas.entry(group).or_default() += 1;
        }
    }
    robots
}

fn reschedules(v: &Value) -> i64 {
    object::annotation(v, ANN_RESCHEDULES)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// May a lost replica be placed again? `Err(d)`: not yet, retry after d.
fn may_reschedule(job: &Job, g: &TaskGroupTemplate, tasks: &[&Arc<Value>]) -> Result<bool, Duration> {
    if job.spec.job_type == JobType::Batch {
        return Ok(false);
    }
    if g.disconnect.as_ref().is_some_and(|d| !d.replace()) {
        return Ok(false);
    }
    let policy = g.reschedule_policy.clone().unwrap_or_default();
    let done = tasks.iter().map(|t| reschedules(t)).max().unwrap_or(0);
    if policy.unlimited != Some(true) && policy.attempts.is_some_and(|a| done >= i64::from(a)) {
        return Ok(false);
    }
    if let Some(delay) = policy.delay.as_ref().and_then(|d| d.get()) {
        let lost_at = tasks
            .iter()
            .filter_map(|t| {
                t.get("status")?
                    .get("finishedAt")?
                    .as_str()
                    .and_then(time::parse_rfc3339)
            })
            .max()
            .unwrap_or(0);
        let since = (time::now_unix() - lost_at).max(0) as u64;
        if since < delay.as_secs() {
            return Err(Duration::from_secs(delay.as_secs() - since));
        }
    }
    Ok(true)
}

fn placed_status(robot: &str, rescheduled_from: Option<&str>) -> Value {
    match rescheduled_from {
        Some(old) => json!({"state": "scheduled", "reason": "Rescheduled",
                            "message": format!("robot {old} was lost; placed on robot {robot}")}),
        None => json!({"state": "scheduled", "reason": "Scheduled", "message": format!("placed on robot {robot}")}),
    }
}

fn pending_status(why: &str) -> Value {
    json!({"state": "pending", "reason": "Unschedulable", "message": why})
}

#[allow(clippy::too_many_arguments)]
fn task_object(
    ns: &str,
    name: &str,
    job: &str,
    g: &TaskGroupTemplate,
    i: i32,
    owner: &OwnerReference,
    spec: &TaskSpec,
    status: Value,
) -> Result<Value, Status> {
    let meta = ObjectMeta {
        name: name.into(),
        namespace: Some(ns.into()),
        labels: [
            (LABEL_JOB.to_string(), job.to_string()),
            (LABEL_GROUP.to_string(), g.name.clone()),
            (LABEL_REPLICA.to_string(), i.to_string()),
        ]
        .into(),
        owner_references: vec![owner.clone()],
        ..Default::default()
    };
    Ok(
        json!({"apiVersion": API_VERSION, "kind": "Task", "metadata": to_value(&meta)?, "spec": to_value(spec)?, "status": status}),
    )
}

const ALL: WriteOptions = WriteOptions {
    validation: crate::server::admission::FieldValidation::Ignore,
    dry_run: false,
};

/// Create or update the TaskGroup of `g`; returns its uid.
async fn ensure_group(
    ctx: &Ctx,
    ns: &str,
    job: &str,
    job_owner: &OwnerReference,
    g: &TaskGroupTemplate,
) -> Result<String, Status> {
    let tg_name = format!("{job}-{}", g.name);
    let spec = to_value(&group_spec(job, g))?;
    match ctx.cache().get("taskgroups", ns, &tg_name) {
        None => {
            let meta = ObjectMeta {
                name: tg_name.clone(),
                namespace: Some(ns.into()),
                labels: [
                    (LABEL_JOB.to_string(), job.to_string()),
                    (LABEL_GROUP.to_string(), g.name.clone()),
                ]
                .into(),
                owner_references: vec![job_owner.clone()],
                ..Default::default()
            };
            let body =
                json!({"apiVersion": API_VERSION, "kind": "TaskGroup", "metadata": to_value(&meta)?, "spec": spec});
            let w = ctx.registry.create(&TASKGROUPS, ns, body, Part::All, ALL).await?;
            ctx.wrote("taskgroups", &w.object);
            Ok(object::uid(&w.object).to_string())
        }
        Some(cur) => {
            if cur.get("spec") != Some(&spec) {
                let mut body = (*cur).clone();
                body["spec"] = spec;
                let w = ctx
                    .registry
                    .replace(&TASKGROUPS, ns, &tg_name, body, Part::Main, ALL)
                    .await?;
                ctx.wrote("taskgroups", &w.object);
            }
            Ok(object::uid(&cur).to_string())
        }
    }
}

pub async fn reconcile(ctx: &Ctx, ns: &str, name: &str) -> Result<Next, Status> {
    let Some(job_v) = ctx.cache().get("jobs", ns, name) else {
        return Ok(Next::Done);
    };
    let job: Job = match serde_json::from_value((*job_v).clone()) {
        Ok(j) => j,
        Err(e) => {
            log::error!("job {ns}/{name} in the store does not decode: {e}");
            return Ok(Next::Done);
        }
    };
    let job_uid = object::uid(&job_v).to_string();
    let job_owner = owner("Job", name, &job_uid);
    let mut next = Next::Done;

    // TaskGroups.
    let mut groups = Vec::new();
    for g in &job.spec.task_groups {
        let uid = ensure_group(ctx, ns, name, &job_owner, g).await?;
        groups.push((g, format!("{name}-{}", g.name), uid));
    }
    let wanted: HashSet<&str> = groups.iter().map(|(_, n, _)| n.as_str()).collect();
    for tg in ctx.cache().of_job("taskgroups", ns, name) {
        if !wanted.contains(object::name(&tg)) && object::owner_uids(&tg).contains(&job_uid.as_str()) {
            let last = ctx
                .registry
                .delete(&TASKGROUPS, ns, object::name(&tg), &DeleteOptions::default())
                .await?;
            ctx.deleted("taskgroups", &last);
        }
    }

    // Tasks, placed per replica.
    let existing: HashMap<String, Arc<Value>> = ctx
        .cache()
        .of_job("tasks", ns, name)
        .into_iter()
        .map(|t| (object::name(&t).to_string(), t))
        .collect();
    let mut desired = HashSet::new();
    let started = std::time::Instant::now();
    let mut created = 0usize;
    // New tasks are written in batches (one store commit each).
    let mut new_tasks: Vec<(Value, Option<Result<String, String>>)> = Vec::new();
    let mut robots: Option<Vec<RobotInfo>> = None;
    let mut unschedulable: Option<String> = None;
    for (g, tg_name, tg_uid) in &groups {
        let tg_owner = owner("TaskGroup", tg_name, tg_uid);
        let mut need = Vec::new();
        let mut previous: HashMap<i32, String> = HashMap::new();
        for i in 0..g.count {
            let current: Vec<&Arc<Value>> = g
                .tasks
                .iter()
                .filter_map(|t| existing.get(&task_name(name, &g.name, i, &t.name)))
                .collect();
            let target = current.iter().find_map(|t| spec_str(t, "targetRobot"));
            let lost = current.iter().any(|t| task_state(t) == TaskState::Lost);
            let complete = current.len() == g.tasks.len();
            match target {
                None => need.push(i),
                Some(_) if !complete => need.push(i),
                Some(robot) if lost => match may_reschedule(&job, g, &current) {
                    Ok(true) => {
                        previous.insert(i, robot.to_string());
                        need.push(i);
                    }
                    Ok(false) => {}
                    Err(wait) => next = Next::RequeueAfter(wait),
                },
                Some(_) => {}
            }
        }
        let mut placements: HashMap<i32, Result<String, String>> = HashMap::new();
        if !need.is_empty() {
            // A partly existing replica keeps its robot when that still works.
            let robots = robots.get_or_insert_with(|| snapshot(ctx, ns));
            let (cpu, memory) = group_requests(g);
            let req = scheduler::Request {
                cpu,
                memory,
                group: format!("{ns}/{tg_name}"),
                selector: job.spec.robot_selector.as_ref(),
                constraints: &g.constraints,
                ports: group_ports(g),
                tasks: g.tasks.len() as u32,
            };
            let (placed, why) = scheduler::place(&req, robots, need.len());
            let why = why.map(|w| w.to_string());
            for (i, p) in need.iter().zip(placed) {
                let r = match p {
                    Some(robot) => Ok(robot),
                    None => Err(why.clone().unwrap_or_default()),
                };
                placements.insert(*i, r);
            }
            if let Some(w) = why {
                unschedulable.get_or_insert(format!("group {}: {w}", g.name));
            }
        }
        for i in 0..g.count {
            for t in &g.tasks {
                let tname = task_name(name, &g.name, i, &t.name);
                desired.insert(tname.clone());
                let mut spec = placement::place_task(&job, g, t, i);
                let placement = placements.get(&i);
                match (existing.get(&tname), placement) {
                    (None, p) => {
                        let status = match p {
                            Some(Ok(robot)) => {
                                spec.target_robot = Some(robot.clone());
                                placed_status(robot, None)
                            }
                            Some(Err(why)) => pending_status(why),
                            None => pending_status("waiting for placement"),
                        };
                        let body = task_object(ns, &tname, name, g, i, &tg_owner, &spec, status)?;
                        new_tasks.push((body, p.cloned()));
                        if new_tasks.len() >= CREATE_BATCH {
                            created += create_tasks(ctx, ns, std::mem::take(&mut new_tasks)).await?;
                        }
                    }
                    (Some(cur), Some(p)) => {
                        let old = spec_str(cur, "targetRobot").map(str::to_string);
                        let (status, moved) = match p {
                            Ok(robot) => {
                                spec.target_robot = Some(robot.clone());
                                let from = previous.get(&i).map(String::as_str);
                                (placed_status(robot, from), old.as_deref() != Some(robot.as_str()))
                            }
                            Err(why) => (pending_status(why), old.is_some()),
                        };
                        let mut body = (**cur).clone();
                        body["spec"] = to_value(&spec)?;
                        body["status"] = status;
                        if moved {
                            let count = (reschedules(cur) + i64::from(old.is_some())).to_string();
                            object::set_annotation(
                                &mut body,
                                ANN_RESCHEDULES,
                                Some(&count).filter(|c| *c != "0").map(|c| c.as_str()),
                            );
                            object::set_annotation(&mut body, ANN_STATUS_SEQ, None);
                            object::set_annotation(&mut body, super::liveness::ANN_UNKNOWN_SINCE, None);
                        }
                        if body != **cur {
                            let w = ctx.registry.replace(&TASKS, ns, &tname, body, Part::All, ALL).await?;
                            ctx.wrote("tasks", &w.object);
                            record_placement(ctx, &w.object, Some(p), previous.get(&i).map(String::as_str));
                        }
                    }
                    (Some(cur), None) => {
                        // Roll spec changes (network, env, ...) to the task
                        // in place: the agent sees an update, not a new task.
                        spec.target_robot = spec_str(cur, "targetRobot").map(str::to_string);
                        let spec = to_value(&spec)?;
                        if cur.get("spec") != Some(&spec) {
                            let mut body = (**cur).clone();
                            body["spec"] = spec;
                            let w = ctx.registry.replace(&TASKS, ns, &tname, body, Part::Main, ALL).await?;
                            ctx.wrote("tasks", &w.object);
                        }
                    }
                }
            }
        }
    }
    for (tname, t) in &existing {
        if !desired.contains(tname)
            && object::owner_uids(t)
                .iter()
                .any(|u| groups.iter().any(|(_, _, g)| g == u))
        {
            let last = ctx
                .registry
                .delete(&TASKS, ns, tname, &DeleteOptions::default())
                .await?;
            ctx.deleted("tasks", &last);
        }
    }

    created += create_tasks(ctx, ns, new_tasks).await?;
    if created > 0 {
        log::info!("job {ns}/{name}: created {created} tasks in {:?}", started.elapsed());
    }
    update_status(ctx, ns, name, &job, &job_v, &groups, unschedulable.as_deref()).await?;
    if unschedulable.is_some() && next == Next::Done {
        next = Next::RequeueAfter(UNSCHEDULABLE_RETRY);
    }
    Ok(next)
}

#[derive(Default)]
struct Counts {
    total: i32,
    pending: i32,
    starting: i32,
    running: i32,
    succeeded: i32,
    failed: i32,
    lost: i32,
}

impl Counts {
    fn add(&mut self, s: TaskState) {
        self.total += 1;
        match s {
            TaskState::Running => self.running += 1,
            TaskState::Completed => self.succeeded += 1,
            TaskState::Failed => self.failed += 1,
            TaskState::Lost => self.lost += 1,
            TaskState::Scheduled | TaskState::Starting => self.starting += 1,
            TaskState::Pending | TaskState::Unknown => self.pending += 1,
        }
    }

    /// Lost tasks count as failed once they will not be rescheduled; for
    /// the summary counts they are failed either way.
    fn failed_total(&self) -> i32 {
        self.failed + self.lost
    }

    fn state(&self, batch: bool) -> GroupState {
        let unfinished = self.pending + self.starting + self.running;
        if self.total == 0 {
            GroupState::Pending
        } else if self.running > 0 {
            GroupState::Running
        } else if self.succeeded == self.total {
            GroupState::Completed
        } else if unfinished == 0 && (batch || self.failed_total() > 0) {
            if self.failed_total() > 0 {
                GroupState::Failed
            } else {
                GroupState::Completed
            }
        } else if self.starting > 0 {
            GroupState::Scheduled
        } else {
            GroupState::Pending
        }
    }

    fn describe(&self) -> String {
        format!(
            "{}/{} running, {} succeeded, {} failed, {} pending",
            self.running,
            self.total,
            self.succeeded,
            self.failed_total(),
            self.pending + self.starting
        )
    }
}

#[allow(clippy::too_many_arguments)]
async fn update_status(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    job: &Job,
    job_v: &Value,
    groups: &[(&TaskGroupTemplate, String, String)],
    unschedulable: Option<&str>,
) -> Result<(), Status> {
    let batch = job.spec.job_type == JobType::Batch;
    let mut all = Counts::default();
    let mut summary = BTreeMap::new();
    for (g, tg_name, _) in groups {
        let mut c = Counts::default();
        let mut assigned = BTreeMap::new();
        for i in 0..g.count {
            for t in &g.tasks {
                let Some(task) = ctx.cache().get("tasks", ns, &task_name(name, &g.name, i, &t.name)) else {
                    continue;
                };
                let s = task_state(&task);
                c.add(s);
                all.add(s);
                if let Some(r) = spec_str(&task, "targetRobot") {
                    assigned.insert(i, r.to_string());
                }
            }
        }
        summary.insert(
            g.name.clone(),
            GroupSummary {
                queued: c.pending,
                starting: c.starting,
                running: c.running,
                complete: c.succeeded,
                failed: c.failed,
                lost: c.lost,
            },
        );
        let Some(tg) = ctx.cache().get("taskgroups", ns, tg_name) else {
            continue;
        };
        let old: TaskGroupStatus = tg
            .get("status")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .unwrap_or_default();
        let state = c.state(batch);
        let started = old.started_at.clone().or_else(|| {
            matches!(state, GroupState::Running | GroupState::Completed | GroupState::Failed).then(time::now_rfc3339)
        });
        let completed = match state {
            GroupState::Completed | GroupState::Failed => {
                old.completed_at.clone().or_else(|| Some(time::now_rfc3339()))
            }
            _ => None,
        };
        let new = TaskGroupStatus {
            state,
            status_description: Some(c.describe()),
            assigned_robots: assigned
                .into_iter()
                .map(|(replica_index, robot_name)| crate::api::Assignment {
                    replica_index,
                    robot_name,
                })
                .collect(),
            total_tasks: c.total,
            pending_tasks: c.pending + c.starting,
            running_tasks: c.running,
            succeeded_tasks: c.succeeded,
            failed_tasks: c.failed_total(),
            started_at: started,
            completed_at: completed,
        };
        write_status(ctx, "taskgroups", &tg, to_value(&new)?).await?;
    }
    let state = all.state(batch);
    let description = match unschedulable {
        Some(why) if state == GroupState::Pending || all.pending > 0 => format!("{}; {why}", all.describe()),
        _ => all.describe(),
    };
    let old: JobStatus = job_v
        .get("status")
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .unwrap_or_default();
    let new = JobStatus {
        state,
        status_description: Some(description),
        total_tasks: all.total,
        pending_tasks: all.pending + all.starting,
        running_tasks: all.running,
        succeeded_tasks: all.succeeded,
        failed_tasks: all.failed_total(),
        task_groups: groups.iter().map(|(_, n, _)| n.clone()).collect(),
        tasks: vec![],
        task_group_summary: summary,
        create_index: old.create_index,
        modify_index: old.modify_index,
    };
    write_status(ctx, "jobs", job_v, to_value(&new)?).await
}

async fn write_status(ctx: &Ctx, plural: &str, cur: &Value, status: Value) -> Result<(), Status> {
    if cur.get("status") == Some(&status) {
        return Ok(());
    }
    let Some(res) = crate::server::resources::by_plural(plural) else {
        return Ok(());
    };
    let mut body = cur.clone();
    if let Some(o) = body.as_object_mut() {
        o.insert("status".into(), status);
    }
    let w = ctx
        .registry
        .replace(res, object::namespace(cur), object::name(cur), body, Part::Status, ALL)
        .await?;
    ctx.wrote(plural, &w.object);
    Ok(())
}
