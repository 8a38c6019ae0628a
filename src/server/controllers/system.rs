//! System jobs (Nomad's `type: system`, Kubernetes' DaemonSet): every group
//! runs exactly one replica on every robot that matches the Job's
//! `robotSelector` and the group's constraints; `count` plays no part
//! (validation refuses a count above 1).
//!
//! - A robot that registers, or whose labels change to match, gets its
//!   replica when it is Online and the replica fits there (its localPorts
//!   are free of other groups, cpu and memory hold). Where it does not fit,
//!   the Job gets a FailedScheduling event naming the robot and why, and
//!   that robot only is left out; it is tried again when robots change and
//!   every 10 s.
//! - A robot that stops matching, or is deleted, loses its replica: the
//!   Tasks are deleted, so they leave its desired set and its agent stops
//!   them.
//! - A replica belongs to its robot and is never moved: when the robot goes
//!   Offline its Tasks become Unknown/Lost (liveness, `disconnect`) and
//!   resume when the robot reports them again.
//!
//! Tasks are named `{job}-{group}-{task}.{robot}`
//! ([`job_expansion::system_task_name`]), a function of the names alone, so the
//! same robot always gets the same names, also across server restarts, and
//! no state maps robots to replica numbers. Every system Task has replica
//! index 0 (`K8S4R_REPLICA=0`, `alloc/<job>-<group>/r0/<task>` on its robot).

use super::task_objects::{create_tasks, placed_status, record_placement, task_object, to_value, ALL, CREATE_BATCH};
use super::Ctx;
use crate::api::job_expansion;
use crate::api::{Job, OwnerReference, TaskGroupTemplate};
use crate::server::events::Kind;
use crate::server::object;
use crate::server::registry::Part;
use crate::server::resources::TASKS;
use crate::server::scheduler::{self, RobotInfo, SystemPlan};
use crate::server::status::Status;
use crate::server::stored_task;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// (namespace, job, job uid, group, robot) -> the reason last reported.
pub type Unfit = HashMap<(String, String, String, String, String), String>;

/// Robots holding a replica of group `group` now: the targetRobot of each
/// Task that carries the system name for that robot and one of the
/// group's task names `names` (of its new or its base version; a Task of
/// another naming, e.g. from before the Job became a system job, holds
/// nothing and is deleted as undesired).
pub fn placed_robots<'a>(
    job: &str,
    group: &str,
    names: &[&str],
    tasks: impl IntoIterator<Item = (&'a str, &'a Value)>,
) -> BTreeSet<String> {
    tasks
        .into_iter()
        .filter_map(|(name, t)| {
            let robot = stored_task::target_robot(t)?;
            names
                .iter()
                .any(|x| job_expansion::system_task_name(job, group, robot, x) == name)
                .then(|| robot.to_string())
        })
        .collect()
}

/// Where `g` runs now. The cheap robot list (no pass over the tasks) is
/// enough unless a replica is to be added; then the full snapshot, shared
/// with the Job's other groups so ports taken by one count for the next.
fn plan(
    ctx: &Ctx,
    ns: &str,
    req: &scheduler::Request<'_>,
    robots: &mut Option<Vec<RobotInfo>>,
    placed: &BTreeSet<String>,
) -> SystemPlan {
    if let Some(full) = robots.as_mut() {
        return scheduler::place_system(req, full, placed);
    }
    let mut light = super::snapshot::robots(ctx, ns);
    let plan = scheduler::place_system(req, &mut light, placed);
    if plan.add.is_empty() {
        return plan;
    }
    let full = robots.get_or_insert_with(|| super::snapshot::snapshot(ctx, ns));
    scheduler::place_system(req, full, placed)
}

/// Everything the Job reconciler hands a system group.
pub(super) struct Group<'a> {
    pub ns: &'a str,
    pub job: &'a Job,
    pub job_v: &'a Value,
    pub g: &'a TaskGroupTemplate,
    pub tg_name: &'a str,
    pub tg_owner: &'a OwnerReference,
    pub versions: &'a super::rollout::Versions,
}

/// What the Job reconciler collects over all groups.
pub(super) struct Batch<'a> {
    pub existing: &'a HashMap<String, Arc<Value>>,
    pub robots: &'a mut Option<Vec<RobotInfo>>,
    pub desired: &'a mut HashSet<String>,
    pub new_tasks: &'a mut Vec<(Value, Option<Result<String, String>>)>,
    pub created: &'a mut usize,
    /// Replicas already on their robot, for the rollout to change.
    pub rolling: &'a mut Vec<super::rollout::ReplicaTasks>,
}

/// Reconcile one system group: its Tasks on every matching robot go into
/// `desired` (new ones into `new_tasks`); Tasks left out of `desired` are
/// deleted by the caller. Returns why some matching robots have no replica.
pub(super) async fn reconcile_group(ctx: &Ctx, s: &Group<'_>, b: &mut Batch<'_>) -> Result<Option<String>, Status> {
    let (ns, g, name) = (s.ns, s.g, s.job.name());
    let mine: Vec<(&str, &Value)> = b
        .existing
        .iter()
        .filter(|(_, t)| stored_task::task_group_name(t) == Some(s.tg_name))
        .map(|(n, t)| (n.as_str(), &**t))
        .collect();
    // A replica's tasks: the new version's and those only the base has
    // (the rollout adds and removes tasks as it changes them).
    let names = super::rollout::task_names(g, s.versions.base_group(&g.name));
    let placed = placed_robots(name, &g.name, &names, mine);
    let req = super::snapshot::placement_request(ns, s.tg_name, s.job, g);
    let plan = plan(ctx, ns, &req, b.robots, &placed);
    let added: HashSet<&str> = plan.add.iter().map(String::as_str).collect();
    let (settled_job, settled_g) = s.versions.settled_group(s.job, g);
    for robot in plan.keep.iter().chain(&plan.add) {
        let name_of = |t: &str| job_expansion::system_task_name(name, &g.name, robot, t);
        if placed.contains(robot) {
            // On its robot: the rollout changes its version (changed,
            // added and removed tasks together, in its turn).
            b.desired.extend(names.iter().map(|t| name_of(t)));
            let replica = super::rollout::replica(s.versions, s.job, g, 0, robot, b.existing, name_of)?;
            b.rolling.push(replica);
            continue;
        }
        // New on this robot: the settled version's tasks, at once.
        for t in &settled_g.tasks {
            let tname = name_of(&t.name);
            b.desired.insert(tname.clone());
            let mut spec = job_expansion::place_task(settled_job, settled_g, t, 0);
            spec.target_robot = Some(robot.clone());
            match b.existing.get(&tname) {
                None => {
                    let body = task_object(ns, &tname, name, g, 0, s.tg_owner, &spec, placed_status(robot, None))?;
                    b.new_tasks.push((body, Some(Ok(robot.clone()))));
                    if b.new_tasks.len() >= CREATE_BATCH {
                        *b.created += create_tasks(ctx, ns, std::mem::take(b.new_tasks)).await?;
                    }
                }
                Some(cur) => {
                    // A Task of this name is always on this robot (the name
                    // says so): put it back there.
                    let mut body = (**cur).clone();
                    body["spec"] = to_value(&spec)?;
                    body["status"] = placed_status(robot, None);
                    let w = ctx.registry.replace(&TASKS, ns, &tname, body, Part::All, ALL).await?;
                    ctx.wrote("tasks", &w.object);
                    record_placement(ctx, &w.object, Some(&Ok(robot.clone())), None);
                }
            }
        }
    }
    if !added.is_empty() {
        log::info!(
            "system job {ns}/{name} group {}: placed on {} more robots",
            g.name,
            added.len()
        );
    }
    for robot in &plan.remove {
        let why = if ctx.cache().get("robots", ns, robot).is_some() {
            "no longer matches the job's robotSelector or the group's constraints"
        } else {
            "was deleted"
        };
        ctx.events.record(
            s.job_v,
            Kind::Normal,
            "Unplaced",
            format!("group {}: robot {robot} {why}; its replica is stopped", g.name),
        );
    }
    Ok(report_unfit(ctx, s, &plan.unfit))
}

/// Tell the Job's story for robots the group does not fit on: one
/// FailedScheduling event per robot and reason (not one per reconcile);
/// returns the summary for the Job's status.
fn report_unfit(ctx: &Ctx, s: &Group<'_>, unfit: &[(String, String)]) -> Option<String> {
    let (ns, job) = (s.ns.to_string(), s.job.name().to_string());
    let uid = object::uid(s.job_v).to_string();
    let group = s.g.name.clone();
    let key = |robot: &str| (ns.clone(), job.clone(), uid.clone(), group.clone(), robot.to_string());
    let mut told = ctx.unfit.lock().unwrap_or_else(|e| e.into_inner());
    told.retain(|k, _| !(k.0 == ns && k.1 == job && k.3 == group) || unfit.iter().any(|(r, _)| k.4 == *r));
    for (robot, why) in unfit {
        if told.get(&key(robot)) != Some(why) {
            ctx.events.record(
                s.job_v,
                Kind::Warning,
                "FailedScheduling",
                format!("group {group}: not placed on robot {robot}: it {why}"),
            );
            told.insert(key(robot), why.clone());
        }
    }
    if unfit.is_empty() {
        return None;
    }
    let each: Vec<String> = unfit.iter().map(|(r, why)| format!("robot {r} {why}")).collect();
    Some(format!("group {group}: {}", each.join("; ")))
}

/// Forget what was told about a Job that is gone.
pub(super) fn forget(ctx: &Ctx, ns: &str, job: &str) {
    let mut told = ctx.unfit.lock().unwrap_or_else(|e| e.into_inner());
    told.retain(|k, _| !(k.0 == ns && k.1 == job));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placed_robots_are_read_from_system_named_tasks_only() {
        let t = |robot: &str| json!({"spec": {"targetRobot": robot}});
        let (r1, r2, old, pending, r5) = (t("r1"), t("r2"), t("r3"), json!({"spec": {}}), t("r5"));
        let tasks = [
            ("j-g-a.r1", &r1),
            // A task only the base version has still holds its robot.
            ("j-g-c.r5", &r5),
            ("j-g-b.r1", &r1),
            ("j-g-b.r2", &r2),
            ("j-g-r0-a", &old),
            ("j-g-a.r9", &pending),
            // Named for another robot than it is on: holds nothing.
            ("j-g-a.r4", &r2),
        ];
        let placed = placed_robots("j", "g", &["a", "b", "c"], tasks);
        assert_eq!(placed.into_iter().collect::<Vec<_>>(), ["r1", "r2", "r5"]);
    }
}
