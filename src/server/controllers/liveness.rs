//! Robot liveness: a robot that has not polled for `offline_after` becomes
//! Offline, and its unfinished tasks become Lost (the job reconciler then
//! reschedules those of service jobs). Only the leader runs this, and a
//! robot may poll another replica: the Robot's stored `lastHeartbeatTime`
//! is what tells, with this replica's own sign of the robot where newer.

use super::{Ctx, Next, Work};
use crate::server::annotations::ANN_UNKNOWN_SINCE;
use crate::server::events::Kind;
use crate::server::fleet::stored_heartbeat_age;
use crate::server::object;
use crate::server::registry::{Part, WriteOptions};
use crate::server::resources::{ROBOTS, TASKS};
use crate::server::status::Status;
use crate::server::stored_task;
use crate::server::time;
use serde_json::{json, Value};

fn phase(v: &Value) -> &str {
    v.get("status")
        .and_then(|s| s.get("phase"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub async fn check(ctx: &Ctx) -> Result<Next, Status> {
    let offline_after = ctx.hub.fleet.offline_after();
    for robot in ctx.cache().list("robots", None) {
        let (ns, name) = (object::namespace(&robot), object::name(&robot));
        match phase(&robot) {
            "Online" => {
                // The newer of this replica's last sign of the robot and
                // the stored heartbeat, which the replica the robot polls
                // keeps fresh (never older than offline_after/3): correct
                // whichever replica the robot polls.
                let persisted = stored_heartbeat_age(&robot);
                let local = ctx.hub.fleet.last_seen(ns, name).elapsed();
                let silent = persisted.map_or(local, |p| p.min(local));
                if silent <= offline_after {
                    continue;
                }
                let patch = json!({"status": {
                    "phase": "Offline",
                    "message": format!("no heartbeat for {}s (offline after {}s)", silent.as_secs(), offline_after.as_secs()),
                }});
                let w = ctx
                    .registry
                    .patch(&ROBOTS, ns, name, &patch, Part::Status, WriteOptions::default())
                    .await?;
                ctx.wrote("robots", &w.object);
                log::info!("robot {ns}/{name} is Offline");
                ctx.events.record(
                    &w.object,
                    Kind::Warning,
                    "RobotOffline",
                    format!("no heartbeat for {}s", silent.as_secs()),
                );
                mark_lost(ctx, ns, name).await?;
            }
            "Offline" => mark_lost(ctx, ns, name).await?,
            _ => {}
        }
    }
    deleted_robots(ctx).await?;
    Ok(Next::Done)
}

/// Unfinished tasks placed on a Robot that no longer exists are Lost (the
/// job reconciler then reschedules those of service jobs).
async fn deleted_robots(ctx: &Ctx) -> Result<(), Status> {
    let robots: std::collections::HashSet<(String, String)> = ctx
        .cache()
        .list("robots", None)
        .iter()
        .map(|r| (object::namespace(r).to_string(), object::name(r).to_string()))
        .collect();
    for task in ctx.cache().list("tasks", None) {
        let Some(robot) = stored_task::target_robot(&task) else {
            continue;
        };
        let ns = object::namespace(&task);
        if robots.contains(&(ns.to_string(), robot.to_string())) || stored_task::state(&task).is_terminal() {
            continue;
        }
        let patch = json!({"status": {
            "state": "lost",
            "reason": "RobotDeleted",
            "message": format!("robot {robot} was deleted"),
            "finishedAt": time::now_rfc3339(),
        }});
        let w = match ctx
            .registry
            .patch(
                &TASKS,
                ns,
                object::name(&task),
                &patch,
                Part::Status,
                WriteOptions::default(),
            )
            .await
        {
            Ok(w) => w,
            Err(e) if e.code == 404 => continue,
            Err(e) => return Err(e),
        };
        ctx.wrote("tasks", &w.object);
        ctx.events.record(
            &w.object,
            Kind::Warning,
            "TaskLost",
            format!("robot {robot} was deleted"),
        );
        if let Some(job) = stored_task::job_name(&w.object) {
            ctx.hub.queue.add(Work::Job {
                namespace: ns.to_string(),
                name: job.to_string(),
            });
        }
    }
    Ok(())
}

/// The group's `disconnect.lostAfter`, as carried on the Task.
fn lost_after(task: &Value) -> Option<std::time::Duration> {
    let text = task.get("spec")?.get("disconnect")?.get("lostAfter")?.as_str()?;
    crate::api::Duration::parse(text).ok().filter(|d| !d.is_zero())
}

/// Tasks on an Offline robot that have not finished become Lost — at once,
/// or, with a `disconnect.lostAfter`, Unknown first and Lost after it.
async fn mark_lost(ctx: &Ctx, ns: &str, robot: &str) -> Result<(), Status> {
    for task in ctx.cache().tasks_on_robot(ns, robot) {
        let state = stored_task::state(&task);
        let placed_here = stored_task::target_robot(&task) == Some(robot);
        if state.is_terminal() || !placed_here {
            continue;
        }
        let name = object::name(&task);
        let grace = lost_after(&task);
        let since = object::annotation(&task, ANN_UNKNOWN_SINCE).and_then(time::parse_rfc3339);
        let now = time::now_unix();
        let (patch, part, reason) = match (grace, since) {
            (Some(g), None) => (
                json!({
                    "metadata": {"annotations": {ANN_UNKNOWN_SINCE: time::now_rfc3339()}},
                    "status": {"state": "unknown", "reason": "RobotOffline",
                               "message": format!("robot {robot} stopped sending heartbeats; lost after {}s", g.as_secs())},
                }),
                Part::All,
                "TaskUnknown",
            ),
            (Some(g), Some(t)) if now - t < g.as_secs() as i64 => continue,
            _ => (
                json!({"status": {
                    "state": "lost",
                    "reason": "RobotOffline",
                    "message": format!("robot {robot} stopped sending heartbeats"),
                    "finishedAt": time::now_rfc3339(),
                }}),
                Part::Status,
                "TaskLost",
            ),
        };
        let w = ctx
            .registry
            .patch(&TASKS, ns, name, &patch, part, WriteOptions::default())
            .await?;
        ctx.wrote("tasks", &w.object);
        ctx.events
            .record(&w.object, Kind::Warning, reason, format!("robot {robot} went offline"));
        if let Some(job) = stored_task::job_name(&w.object) {
            ctx.hub.queue.add(Work::Job {
                namespace: ns.to_string(),
                name: job.to_string(),
            });
        }
    }
    Ok(())
}
