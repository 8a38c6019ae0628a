//! Staged rollouts: how a new version of a Job's spec reaches its robots.
//! The Job reconciler hands over every placed replica, with the specs of
//! its tasks at the new version and at the base one (`replica.rs`: a task
//! one of them lacks was added or removed); this module reads their health
//! from what the robots report, asks the planner (`plan.rs`) which replicas
//! change now, writes, creates and deletes their Tasks (the agent sees an
//! update of its desired set), and keeps the Rollout object's status and
//! the Job's events in step.
//!
//! Health is the server's observation of what the robot reports: an updated
//! replica is healthy once every task has been `running` (checks passing,
//! unless `healthCheck: taskStates`) for `minHealthyTime` without a restart.
//! The server notes when it first saw each run (`ANN_RUNNING_SINCE`), so a
//! robot's clock plays no part.

pub mod plan;
mod replica;
mod versions;

use super::task_objects::{placed_status, record_placement, task_object, to_value, ALL};
use super::Ctx;
use crate::agent::rollback::{ABSENT, ANN_AUTO_REVERT, ANN_LOCK_OVERRIDE, ANN_PREVIOUS_SPEC};
use crate::api::rollout::{RolloutState, RolloutStatus};
use crate::api::update_strategy::{HealthCheck, Strategy};
use crate::api::{Job, JobType, TaskState};
use crate::server::events::Kind;
use crate::server::object;
use crate::server::registry::{DeleteOptions, Part};
use crate::server::resources::{ROLLOUTS, TASKS};
use crate::server::status::Status;
use crate::server::time;
use plan::{Health, Outcome, Replica};
use replica::Step;
pub use replica::{replica, task_names, GroupReplicas, ReplicaTasks, RolledTask};
use serde_json::{json, Value};
use std::time::Duration;
pub use versions::{sync, Versions, ANN_REVERT_TO};

/// On a Task: when the rollout wrote its current spec (ms since the epoch).
const ANN_UPDATED_AT: &str = "rollout.k8s4r.io/updated-at";
/// On a Task: `ms,run,restarts` of the run (its start time or process id)
/// the server first saw running at `ms`; a new run starts anew.
const ANN_RUNNING_SINCE: &str = "rollout.k8s4r.io/running-since";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn rfc3339_ms(ms: i64) -> String {
    time::format_rfc3339(ms / 1000)
}

fn online(ctx: &Ctx, ns: &str, robot: &str) -> bool {
    ctx.cache()
        .get("robots", ns, robot)
        .and_then(|r| Some(r.get("status")?.get("phase")?.as_str()? == "Online"))
        .unwrap_or(false)
}

/// The run a task's status describes: (its start time or process id,
/// restarts): a new process is a new run.
fn run_of(t: &Value) -> (String, i64) {
    let st = t.get("status");
    let started = st
        .and_then(|s| s.get("startedAt"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let pid = st.and_then(|s| s.get("pid")).and_then(Value::as_i64).unwrap_or(0);
    let started = format!("{started}{pid}");
    let restarts = st
        .and_then(|s| s.get("restartCount"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    (started, restarts)
}

/// Does the task count as up now (before minHealthyTime)?
fn up(t: &Value, check: HealthCheck) -> bool {
    let st = t.get("status");
    let running = crate::server::stored_task::state(t) == TaskState::Running;
    let has_checks = t
        .get("spec")
        .and_then(|s| s.get("services"))
        .and_then(Value::as_array)
        .is_some_and(|svcs| {
            svcs.iter()
                .any(|s| s.get("checks").and_then(Value::as_array).is_some_and(|c| !c.is_empty()))
        });
    let health = st.and_then(|s| s.get("health")).and_then(Value::as_str);
    running && (check == HealthCheck::TaskStates || !has_checks || health == Some("healthy"))
}

/// The `ANN_RUNNING_SINCE` value the task should carry now.
fn running_since(t: &Value, check: HealthCheck, now: i64) -> Option<String> {
    if !up(t, check) {
        return None;
    }
    let (started, restarts) = run_of(t);
    if let Some(cur) = object::annotation(t, ANN_RUNNING_SINCE) {
        let mut parts = cur.splitn(3, ',');
        let (_, s, r) = (parts.next(), parts.next(), parts.next());
        if s == Some(started.as_str()) && r == Some(restarts.to_string().as_str()) {
            return Some(cur.to_string());
        }
    }
    Some(format!("{now},{started},{restarts}"))
}

fn since_ms(t: &Value) -> Option<i64> {
    object::annotation(t, ANN_RUNNING_SINCE)?
        .split(',')
        .next()?
        .parse()
        .ok()
}

fn updated_at(t: &Value) -> Option<i64> {
    object::annotation(t, ANN_UPDATED_AT)?.parse().ok()
}

/// The health of a replica on the new version: of every task it has there
/// (its added ones too).
fn health(tasks: &[RolledTask], s: Option<&Strategy>, now: i64) -> Health {
    let Some(s) = s else { return Health::Healthy(now) };
    let min = i64::try_from(s.min_healthy_time.as_millis()).unwrap_or(i64::MAX);
    let mut healthy_at = 0i64;
    let mut wait: Option<Duration> = None;
    let mut all = true;
    let mut away = false;
    for (t, cur) in tasks.iter().filter_map(|t| Some((t, t.cur.as_ref()?))) {
        let state = crate::server::stored_task::state(cur);
        let st = cur.get("status");
        if st.and_then(|s| s.get("reason")).and_then(Value::as_str) == Some(crate::agent::rollback::REASON) {
            let msg = st.and_then(|s| s.get("message")).and_then(Value::as_str).unwrap_or("");
            return Health::Unhealthy(format!("task {}: {msg}", t.name));
        }
        if state == TaskState::Failed {
            let msg = cur
                .get("status")
                .and_then(|s| s.get("message"))
                .and_then(Value::as_str)
                .unwrap_or(state.as_str());
            return Health::Unhealthy(format!("task {} {}: {msg}", t.name, state.as_str()));
        }
        if matches!(state, TaskState::Lost | TaskState::Unknown) {
            (away, all) = (true, false);
            continue;
        }
        match since_ms(cur).filter(|_| up(cur, s.health_check)) {
            Some(since) if now.saturating_sub(since) >= min => healthy_at = healthy_at.max(since.saturating_add(min)),
            Some(since) => {
                all = false;
                let left = Duration::from_millis(since.saturating_add(min).saturating_sub(now).max(1) as u64);
                wait = Some(wait.map_or(left, |w| w.min(left)));
            }
            None => all = false,
        }
    }
    if all {
        return Health::Healthy(healthy_at);
    }
    // Lost or Unknown is the link, not the version: wait for the robot's
    // word on how the version did (with autoRevert it kept healthyDeadline
    // on its own clock and went back by itself), which follows its first
    // poll back (it then sees the task Lost and reports it again), instead
    // of failing the version on the deadline in between.
    // progressDeadline still bounds the wait.
    if away {
        return Health::Waiting(None);
    }
    let deadline_ms = i64::try_from(s.healthy_deadline.as_millis()).unwrap_or(i64::MAX);
    let updated = tasks
        .iter()
        .filter_map(|t| updated_at(t.cur.as_deref()?))
        .max()
        .unwrap_or(now);
    let deadline = updated.saturating_add(deadline_ms);
    if now >= deadline {
        return Health::Unhealthy(format!("not healthy within healthyDeadline ({:?})", s.healthy_deadline));
    }
    let to_deadline = Duration::from_millis((deadline - now) as u64);
    Health::Waiting(Some(wait.map_or(to_deadline, |w| w.min(to_deadline))))
}

/// How a version is written to a replica's tasks.
#[derive(Clone, Copy)]
struct Write<'a> {
    ns: &'a str,
    job: &'a str,
    group: &'a GroupReplicas<'a>,
    /// (reason, version) of a paced update, judged by its health.
    paced: Option<(&'a str, i64)>,
    /// (healthyDeadline, minHealthyTime) when the robot may go back to the
    /// base on its own (`agent::rollback`).
    revert_on_robot: Option<(Duration, Duration)>,
    check: HealthCheck,
}

/// Put task `t` of replica `r` at `want` (a version's spec, or absent):
/// create, write or delete it.
async fn put(ctx: &Ctx, w: Write<'_>, r: &ReplicaTasks, t: &RolledTask, want: Option<&Value>) -> Result<(), Status> {
    let step = t.step_to(want);
    // The same spec again (a sibling of a changed, added or removed task):
    // the robot keeps its process and has nothing new to report.
    let same = matches!(step, Step::Write(cur, spec) if cur.get("spec") == Some(spec));
    let (mut body, created) = match step {
        Step::Nothing => return Ok(()),
        Step::Delete => {
            return match ctx
                .registry
                .delete(&TASKS, w.ns, &t.name, &DeleteOptions::default())
                .await
            {
                Ok(last) => {
                    ctx.deleted("tasks", &last);
                    Ok(())
                }
                Err(e) if e.code == 404 => Ok(()),
                Err(e) => Err(e),
            };
        }
        Step::Create(spec) => {
            let status = placed_status(&r.robot, None);
            let body = task_object(w.ns, &t.name, w.job, w.group.g, r.index, &w.group.owner, spec, status)?;
            (body, true)
        }
        Step::Write(cur, spec) => {
            let mut body = cur.clone();
            body["spec"] = spec.clone();
            (body, false)
        }
    };
    // The robot keeps the base version's spec, or the word that the base
    // has no such task, to go back to.
    let offer = w.revert_on_robot.map(|(deadline, min)| {
        let previous = t.base.as_ref().map_or_else(|| ABSENT.to_string(), Value::to_string);
        (previous, format!("{},{}", deadline.as_millis(), min.as_millis()))
    });
    object::set_annotation(&mut body, ANN_PREVIOUS_SPEC, offer.as_ref().map(|o| o.0.as_str()));
    object::set_annotation(&mut body, ANN_AUTO_REVERT, offer.as_ref().map(|o| o.1.as_str()));
    object::set_annotation(&mut body, ANN_RUNNING_SINCE, None);
    object::set_annotation(&mut body, ANN_LOCKED_SINCE, None);
    object::set_annotation(&mut body, ANN_LOCK_OVERRIDE, None);
    // A paced update is judged by its health: what the robot reports from
    // now on, not what it reported of the version before (for a task left
    // as it was: its run from now on). Otherwise (all at once, a revert,
    // settling) the status stays until the robot reports.
    let part = match w.paced {
        Some(_) if same => {
            let now = now_ms();
            let since = running_since(&body, w.check, now);
            object::set_annotation(&mut body, ANN_RUNNING_SINCE, since.as_deref());
            object::set_annotation(&mut body, ANN_UPDATED_AT, Some(&now.to_string()));
            Part::Main
        }
        Some((reason, version)) => {
            body["status"] = json!({"state": "scheduled", "reason": reason, "message": format!("version {version}")});
            object::set_annotation(&mut body, ANN_UPDATED_AT, Some(&now_ms().to_string()));
            Part::All
        }
        None => Part::Main,
    };
    if created {
        let written = ctx.registry.create(&TASKS, w.ns, body, Part::All, ALL).await?;
        record_placement(ctx, &written.object, Some(&Ok(r.robot.clone())), None);
        ctx.wrote("tasks", &written.object);
    } else {
        let written = ctx.registry.replace(&TASKS, w.ns, &t.name, body, part, ALL).await?;
        ctx.wrote("tasks", &written.object);
    }
    Ok(())
}

/// On a Task: since when (ms) its robot reports the update held back by
/// an update lock.
const ANN_LOCKED_SINCE: &str = "rollout.k8s4r.io/locked-since";

fn locked_since(t: &Value) -> Option<i64> {
    object::annotation(t, ANN_LOCKED_SINCE)?.parse().ok()
}

/// Keep `ANN_LOCKED_SINCE` in step with the robot's `updateLocked`; when
/// the lock goes, the new version starts now (its healthyDeadline too).
async fn note_lock(ctx: &Ctx, ns: &str, t: &mut RolledTask, now: i64) -> Result<(), Status> {
    let Some(cur) = &t.cur else { return Ok(()) };
    let reported = cur
        .get("status")
        .and_then(|s| s.get("updateLocked"))
        .and_then(Value::as_bool)
        == Some(true);
    let noted = locked_since(cur).is_some();
    if reported == noted {
        return Ok(());
    }
    let mut body = (**cur).clone();
    if reported {
        object::set_annotation(&mut body, ANN_LOCKED_SINCE, Some(&now.to_string()));
    } else {
        object::set_annotation(&mut body, ANN_LOCKED_SINCE, None);
        object::set_annotation(&mut body, ANN_UPDATED_AT, Some(&now.to_string()));
        object::set_annotation(&mut body, ANN_RUNNING_SINCE, None);
    }
    let w = ctx.registry.replace(&TASKS, ns, &t.name, body, Part::Main, ALL).await?;
    ctx.wrote("tasks", &w.object);
    t.cur = Some(w.object);
    Ok(())
}

/// A settled rollout: the robot no longer keeps the previous version.
async fn drop_offer(ctx: &Ctx, ns: &str, t: &mut RolledTask) -> Result<(), Status> {
    let Some(cur) = t
        .cur
        .as_ref()
        .filter(|c| object::annotation(c, ANN_AUTO_REVERT).is_some())
    else {
        return Ok(());
    };
    let mut body = (**cur).clone();
    object::set_annotation(&mut body, ANN_AUTO_REVERT, None);
    object::set_annotation(&mut body, ANN_PREVIOUS_SPEC, None);
    let w = ctx.registry.replace(&TASKS, ns, &t.name, body, Part::Main, ALL).await?;
    ctx.wrote("tasks", &w.object);
    t.cur = Some(w.object);
    Ok(())
}

/// Keep a task's `ANN_RUNNING_SINCE` in step with its reported run.
async fn note_run(ctx: &Ctx, ns: &str, t: &mut RolledTask, check: HealthCheck, now: i64) -> Result<(), Status> {
    let Some(cur) = &t.cur else { return Ok(()) };
    let want = running_since(cur, check, now);
    if object::annotation(cur, ANN_RUNNING_SINCE) == want.as_deref() {
        return Ok(());
    }
    let mut body = (**cur).clone();
    object::set_annotation(&mut body, ANN_RUNNING_SINCE, want.as_deref());
    let w = ctx.registry.replace(&TASKS, ns, &t.name, body, Part::Main, ALL).await?;
    ctx.wrote("tasks", &w.object);
    t.cur = Some(w.object);
    Ok(())
}

/// Roll the Job's replicas toward its newest version; returns when to look
/// again.
pub async fn roll(
    ctx: &Ctx,
    ns: &str,
    job: &Job,
    job_v: &Value,
    versions: &Versions,
    groups: Vec<GroupReplicas<'_>>,
) -> Result<Option<Duration>, Status> {
    let now = now_ms();
    let version = versions.spec.version;
    let started = versions
        .status
        .started_at
        .as_deref()
        .and_then(time::parse_rfc3339)
        .map_or(now, |s| s.saturating_mul(1000));
    let mut status = versions.status.clone();
    let mut total = plan::Counts::default();
    let mut outcomes = Vec::new();
    let mut wake: Option<Duration> = None;
    let mut auto_promote_all = true;
    let mut any_canary_phase = false;
    for mut group in groups {
        let g = group.g;
        // A group the base version does not have is new: not rolled.
        let has_base = versions.base_group(&g.name).is_some();
        let strategy = g.update.as_ref().map(|u| u.resolve());
        let check = strategy.as_ref().map_or(HealthCheck::TaskStates, |s| s.health_check);
        let mut snapshot = Vec::with_capacity(group.replicas.len());
        for r in &mut group.replicas {
            let on_target = r.on_target();
            let on_base = r.on_base();
            if on_target && strategy.is_some() && !versions.status.state.is_settled() {
                for t in &mut r.tasks {
                    note_lock(ctx, ns, t, now).await?;
                    if t.cur.as_deref().and_then(locked_since).is_none() {
                        note_run(ctx, ns, t, check, now).await?;
                    }
                }
            }
            let locked_since_ms = r.objects().filter_map(|t| locked_since(t)).min();
            if versions.status.state.is_settled() {
                for t in &mut r.tasks {
                    drop_offer(ctx, ns, t).await?;
                }
            }
            let health = if on_target && locked_since_ms.is_none() {
                health(&r.tasks, strategy.as_ref(), now)
            } else {
                Health::Waiting(None)
            };
            snapshot.push(Replica {
                on_target,
                on_base,
                shows_target: r.shows_target(),
                online: online(ctx, ns, &r.robot),
                health,
                updated_at_ms: r.objects().filter_map(|t| updated_at(t)).max(),
                locked_since_ms,
            });
        }
        let input = plan::Input {
            strategy: strategy.as_ref(),
            system: job.spec.job_type == JobType::System,
            state: versions.status.state,
            paused: versions.spec.paused,
            promoted: versions.spec.promoted || versions.status.auto_promoted,
            at_once: versions.spec.revert_of.is_some(),
            has_base,
            started_ms: started,
            now_ms: now,
        };
        let p = plan::plan(&input, &snapshot);
        let has_canaries = strategy.as_ref().is_some_and(|s| s.canary.of(snapshot.len()) > 0) && !input.promoted;
        if has_canaries {
            any_canary_phase = true;
            auto_promote_all &= p.auto_promote;
        }
        // Updates now are canaries unless the canaries just promoted themselves.
        let canary_phase = has_canaries && !p.auto_promote;
        let paced = strategy.is_some() && !input.at_once && has_base && !input.state.is_settled();
        let to_target = Write {
            ns,
            job: job.name(),
            group: &group,
            paced: paced.then_some(("Updated", version)),
            revert_on_robot: strategy
                .as_ref()
                .filter(|s| s.auto_revert && !versions.status.state.is_settled() && has_base)
                .map(|s| (s.healthy_deadline, s.min_healthy_time)),
            check,
        };
        let to_base = Write {
            paced: None,
            revert_on_robot: None,
            ..to_target
        };
        for i in &p.update {
            let r = &group.replicas[*i];
            for t in &r.tasks {
                put(ctx, to_target, r, t, t.target.as_ref()).await?;
            }
            if strategy.is_some() && !versions.status.state.is_settled() && has_base {
                let what = if canary_phase { "CanaryPlaced" } else { "Updated" };
                ctx.events.record(
                    job_v,
                    Kind::Normal,
                    what,
                    format!("group {}: robot {} gets version {version}", g.name, r.robot),
                );
            }
        }
        for i in &p.override_lock {
            let r = &group.replicas[*i];
            for t in r.objects() {
                let mut body = (**t).clone();
                object::set_annotation(&mut body, ANN_LOCK_OVERRIDE, Some("true"));
                let w = ctx
                    .registry
                    .replace(&TASKS, ns, object::name(t), body, Part::Main, ALL)
                    .await?;
                ctx.wrote("tasks", &w.object);
            }
            ctx.events.record(
                job_v,
                Kind::Warning,
                "LockOverridden",
                format!(
                    "group {}: robot {} held its update lock past lockDeadline; updating it anyway",
                    g.name, r.robot
                ),
            );
        }
        for i in &p.revert {
            let r = &group.replicas[*i];
            for t in &r.tasks {
                put(ctx, to_base, r, t, t.base.as_ref()).await?;
            }
            ctx.events.record(
                job_v,
                Kind::Warning,
                "Reverted",
                format!(
                    "group {}: robot {} back on version {}",
                    g.name,
                    r.robot,
                    versions.spec.base_version.unwrap_or(0)
                ),
            );
        }
        let last_healthy = snapshot
            .iter()
            .filter_map(|r| match r.health {
                Health::Healthy(at) if r.on_target => Some(at),
                _ => None,
            })
            .max();
        if let Some(at) = last_healthy {
            status.last_progress_at = Some(rfc3339_ms(at));
        }
        total.total += p.counts.total;
        total.updated += p.counts.updated + p.update.len();
        total.healthy += p.counts.healthy;
        total.unhealthy += p.counts.unhealthy;
        total.pending += p.counts.pending;
        total.locked += p.counts.locked;
        total.canaries += p.counts.canaries.max(if canary_phase { p.update.len() } else { 0 });
        wake = match (wake, p.wake_in) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        outcomes.push((g.name.clone(), p.outcome));
    }
    if any_canary_phase && auto_promote_all && !status.auto_promoted {
        status.auto_promoted = true;
        ctx.events.record(
            job_v,
            Kind::Normal,
            "Promoted",
            format!("version {version}: canaries healthy, promoted automatically"),
        );
    }
    settle(ctx, ns, job_v, versions, status, total, &outcomes).await?;
    Ok(wake)
}

/// The Rollout's new status from its groups' outcomes; events on changes.
async fn settle(
    ctx: &Ctx,
    ns: &str,
    job_v: &Value,
    versions: &Versions,
    mut status: RolloutStatus,
    counts: plan::Counts,
    outcomes: &[(String, Outcome)],
) -> Result<(), Status> {
    let version = versions.spec.version;
    let before = versions.status.state;
    if !before.is_settled() {
        let failed = outcomes.iter().find_map(|(g, o)| match o {
            Outcome::Failed(why) => Some(format!("group {g}: {why}")),
            _ => None,
        });
        let (state, message) = if let Some(why) = failed {
            (RolloutState::Failed, Some(why))
        } else if outcomes.iter().all(|(_, o)| *o == Outcome::Done) {
            (RolloutState::Succeeded, None)
        } else if outcomes.iter().any(|(_, o)| *o == Outcome::Paused) {
            (
                RolloutState::Paused,
                Some("paused: k8s4r job resume continues".to_string()),
            )
        } else if outcomes.iter().any(|(_, o)| *o == Outcome::WaitingForPromotion) {
            (
                RolloutState::WaitingForPromotion,
                Some("canaries healthy: k8s4r job promote continues, k8s4r job revert goes back".to_string()),
            )
        } else {
            (RolloutState::Progressing, None)
        };
        if state != before {
            let base = versions.spec.base_version.unwrap_or(0);
            let (kind, reason, text) = match state {
                RolloutState::Failed => {
                    let reverting = versions
                        .spec
                        .template
                        .task_groups
                        .iter()
                        .any(|g| g.update.as_ref().is_some_and(|u| u.auto_revert == Some(true)))
                        && versions.base.is_some();
                    let then = if reverting {
                        format!("; reverting to version {base}")
                    } else {
                        String::new()
                    };
                    (
                        Kind::Warning,
                        "RolloutFailed",
                        format!("version {version}: {}{then}", message.clone().unwrap_or_default()),
                    )
                }
                RolloutState::Succeeded => (
                    Kind::Normal,
                    "RolloutSucceeded",
                    format!("version {version} is on every robot"),
                ),
                RolloutState::Paused => (Kind::Normal, "Paused", format!("version {version}: paused")),
                RolloutState::WaitingForPromotion => (
                    Kind::Normal,
                    "CanariesHealthy",
                    format!("version {version}: canaries healthy, waiting for promotion"),
                ),
                _ => (Kind::Normal, "Resumed", format!("version {version}: progressing")),
            };
            if before == RolloutState::WaitingForPromotion && versions.spec.promoted {
                ctx.events.record(
                    job_v,
                    Kind::Normal,
                    "Promoted",
                    format!("version {version}: promoted by an operator"),
                );
            }
            if versions.base.is_some() || state != RolloutState::Succeeded {
                ctx.events.record(job_v, kind, reason, text);
            }
            if state == RolloutState::Succeeded || state == RolloutState::Failed {
                status.finished_at = Some(time::now_rfc3339());
            }
        }
        status.state = state;
        status.message = message;
    }
    status.total = i32::try_from(counts.total).unwrap_or(i32::MAX);
    status.updated = i32::try_from(counts.updated.min(counts.total)).unwrap_or(i32::MAX);
    status.canaries = i32::try_from(counts.canaries).unwrap_or(i32::MAX);
    status.healthy = i32::try_from(counts.healthy).unwrap_or(i32::MAX);
    status.unhealthy = i32::try_from(counts.unhealthy).unwrap_or(i32::MAX);
    status.pending = i32::try_from(counts.pending).unwrap_or(i32::MAX);
    status.locked = i32::try_from(counts.locked).unwrap_or(i32::MAX);
    status.progress = format!("{}/{}", status.updated, status.total);
    if status != versions.status {
        let mut body = (*versions.object).clone();
        body["status"] = to_value(&status)?;
        let name = object::name(&versions.object).to_string();
        let w = ctx
            .registry
            .replace(&ROLLOUTS, ns, &name, body, Part::Status, ALL)
            .await?;
        ctx.wrote("rollouts", &w.object);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::update_strategy::UpdateStrategy;

    const NOW: i64 = 10_000_000;

    /// A task updated at `updated` (ms) whose robot reports `state`.
    fn task(state: &str, updated: i64) -> RolledTask {
        let cur = json!({"metadata": {"name": "t", "annotations": {ANN_UPDATED_AT: updated.to_string()}},
            "spec": {}, "status": {"state": state}});
        RolledTask {
            name: "t".into(),
            cur: Some(std::sync::Arc::new(cur)),
            target: Some(json!({})),
            base: None,
        }
    }

    #[test]
    fn past_healthy_deadline_a_task_the_robot_reports_is_unhealthy_one_lost_waits_for_the_robot() {
        let s = UpdateStrategy::default().resolve();
        let past = NOW - i64::try_from(s.healthy_deadline.as_millis()).unwrap() - 1;
        assert!(matches!(
            health(&[task("starting", past)], Some(&s), NOW),
            Health::Unhealthy(_)
        ));
        for away in ["lost", "unknown"] {
            let h = health(&[task(away, past)], Some(&s), NOW);
            assert_eq!(h, Health::Waiting(None), "{away}");
        }
        // The robot's word, once it comes, still decides.
        assert!(matches!(
            health(&[task("failed", past)], Some(&s), NOW),
            Health::Unhealthy(_)
        ));
    }
}
