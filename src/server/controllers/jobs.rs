//! The Job reconciler: Job → one TaskGroup per `taskGroups[]` entry
//! (`{job}-{group}`) → `count` replicas of each task (`{job}-{group}-r{i}-{task}`),
//! placed by the scheduler, rescheduled when lost (service jobs), with the
//! status rolled up Task → TaskGroup → Job. A system job's groups have one
//! replica per matching robot instead (`system.rs`). Idempotent: it compares the
//! desired objects with the cached ones and writes only differences.

use super::rollout::GroupReplicas;
use super::task_objects::{
    create_tasks, owner, placed_status, record_placement, task_object, to_value, ALL, CREATE_BATCH,
};
use super::{Ctx, Next};
use crate::api::job_expansion::{self, task_name};
use crate::api::{Job, JobType, ObjectMeta, OwnerReference, TaskGroupSpec, TaskGroupTemplate, TaskState, API_VERSION};
use crate::server::annotations::{ANN_RESCHEDULES, ANN_STATUS_SEQ, ANN_UNKNOWN_SINCE, LABEL_GROUP, LABEL_JOB};
use crate::server::object;
use crate::server::registry::{DeleteOptions, Part};
use crate::server::resources::{TASKGROUPS, TASKS};
use crate::server::scheduler::{self, RobotInfo};
use crate::server::status::Status;
use crate::server::stored_task;
use crate::server::time;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Batches of new Tasks a reconcile has in flight at once.
const CREATES_IN_FLIGHT: usize = 4;

/// Retry placing unschedulable replicas at least this often (robot changes
/// trigger a retry at once).
const UNSCHEDULABLE_RETRY: Duration = Duration::from_secs(10);

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

fn pending_status(why: &str) -> Value {
    json!({"state": "pending", "reason": "Unschedulable", "message": why})
}

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
        super::system::forget(ctx, ns, name);
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
    let versions = super::rollout::sync(ctx, ns, &job, &job_v).await?;
    // Placed replicas whose spec may change, per group: the rollout decides.
    let mut rolling: Vec<GroupReplicas<'_>> = Vec::new();

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
    let mut existing: HashMap<String, Arc<Value>> = ctx
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
    // Batches of new Tasks in flight while the next ones are built: a
    // batch on etcd waits for its transactions and their echo through the
    // watch, time the next batch need not wait out.
    let mut creating = futures_util::stream::FuturesOrdered::new();
    let mut robots: Option<Vec<RobotInfo>> = None;
    let mut unschedulable: Option<String> = None;
    let system = job.spec.job_type == JobType::System;
    // First: replicas with two copies since a lost robot returned (a
    // system replica is never moved, so never has two).
    for (g, tg_name, _) in groups.iter().filter(|_| !system) {
        super::disconnect::settle(ctx, ns, &job, g, tg_name, &mut existing).await?;
    }
    for (g, tg_name, tg_uid) in &groups {
        let tg_owner = owner("TaskGroup", tg_name, tg_uid);
        if system {
            let group = super::system::Group {
                ns,
                job: &job,
                job_v: &job_v,
                g,
                tg_name,
                tg_owner: &tg_owner,
                versions: &versions,
            };
            let mut replicas = Vec::new();
            let mut batch = super::system::Batch {
                existing: &existing,
                robots: &mut robots,
                desired: &mut desired,
                new_tasks: &mut new_tasks,
                created: &mut created,
                rolling: &mut replicas,
            };
            if let Some(why) = super::system::reconcile_group(ctx, &group, &mut batch).await? {
                unschedulable.get_or_insert(why);
            }
            rolling.push(GroupReplicas {
                g,
                owner: tg_owner.clone(),
                replicas,
            });
            continue;
        }
        // A replica's tasks: the new version's and those only the base has.
        // One on its robot holds any of them (the rollout adds, removes and
        // re-creates tasks as it changes its version); one with none is new.
        let names = super::rollout::task_names(g, versions.base_group(&g.name));
        let mut need = Vec::new();
        let mut previous: HashMap<i32, String> = HashMap::new();
        for i in 0..g.count {
            let current: Vec<&Arc<Value>> = names
                .iter()
                .filter_map(|t| existing.get(&task_name(name, &g.name, i, t)))
                .collect();
            let target = current.iter().find_map(|t| stored_task::target_robot(t));
            let lost = current.iter().any(|t| stored_task::state(t) == TaskState::Lost);
            match target {
                None => need.push(i),
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
            let robots = robots.get_or_insert_with(|| super::snapshot::snapshot(ctx, ns));
            let req = super::snapshot::placement_request(ns, tg_name, &job, g);
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
        let (settled_job, settled_g) = versions.settled_group(&job, g);
        let mut replicas = Vec::new();
        for i in 0..g.count {
            let name_of = |t: &str| task_name(name, &g.name, i, t);
            let Some(p) = placements.get(&i) else {
                // On its robot: the rollout changes its version (changed,
                // added and removed tasks together, in its turn).
                let robot = names
                    .iter()
                    .find_map(|t| stored_task::target_robot(existing.get(&name_of(t))?));
                if let Some(robot) = robot {
                    desired.extend(names.iter().map(|t| name_of(t)));
                    replicas.push(super::rollout::replica(
                        &versions, &job, g, i, robot, &existing, name_of,
                    )?);
                }
                continue;
            };
            // Placed now (new, or moved from a lost robot): the settled
            // version's tasks, at once.
            for t in &settled_g.tasks {
                let tname = name_of(&t.name);
                desired.insert(tname.clone());
                let mut spec = job_expansion::place_task(settled_job, settled_g, t, i);
                match existing.get(&tname) {
                    None => {
                        let status = match p {
                            Ok(robot) => {
                                spec.target_robot = Some(robot.clone());
                                placed_status(robot, None)
                            }
                            Err(why) => pending_status(why),
                        };
                        let body = task_object(ns, &tname, name, g, i, &tg_owner, &spec, status)?;
                        new_tasks.push((body, Some(p.clone())));
                        if new_tasks.len() >= CREATE_BATCH {
                            creating.push_back(create_tasks(ctx, ns, std::mem::take(&mut new_tasks)));
                            if creating.len() >= CREATES_IN_FLIGHT {
                                created += creating.next().await.unwrap_or(Ok(0))?;
                            }
                        }
                    }
                    Some(cur) => {
                        let old = stored_task::target_robot(cur).map(str::to_string);
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
                            super::disconnect::on_moved(&mut body, cur, g, previous.get(&i).map(String::as_str));
                            let count = (reschedules(cur) + i64::from(old.is_some())).to_string();
                            object::set_annotation(
                                &mut body,
                                ANN_RESCHEDULES,
                                Some(&count).filter(|c| *c != "0").map(|c| c.as_str()),
                            );
                            object::set_annotation(&mut body, ANN_STATUS_SEQ, None);
                            object::set_annotation(&mut body, ANN_UNKNOWN_SINCE, None);
                        }
                        if body != **cur {
                            let w = ctx.registry.replace(&TASKS, ns, &tname, body, Part::All, ALL).await?;
                            ctx.wrote("tasks", &w.object);
                            record_placement(ctx, &w.object, Some(p), previous.get(&i).map(String::as_str));
                        }
                    }
                }
            }
        }
        rolling.push(GroupReplicas {
            g,
            owner: tg_owner,
            replicas,
        });
    }
    if let Some(wait) = super::rollout::roll(ctx, ns, &job, &job_v, &versions, rolling).await? {
        next = match next {
            Next::RequeueAfter(d) => Next::RequeueAfter(d.min(wait)),
            Next::Done => Next::RequeueAfter(wait),
        };
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

    creating.push_back(create_tasks(ctx, ns, new_tasks));
    while let Some(n) = creating.next().await {
        created += n?;
    }
    if created > 0 {
        log::info!("job {ns}/{name}: created {created} tasks in {:?}", started.elapsed());
    }
    super::job_status::update_status(ctx, ns, name, &job, &job_v, &groups, unschedulable.as_deref()).await?;
    if unschedulable.is_some() && next == Next::Done {
        next = Next::RequeueAfter(UNSCHEDULABLE_RETRY);
    }
    Ok(next)
}
