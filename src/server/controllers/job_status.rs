//! The status cascade: Task states roll up into each TaskGroup's status
//! and the Job's (counts, state, summary, startedAt/completedAt). A system
//! job counts one replica per robot and says on how many robots it runs.

use super::task_objects::ALL;
use super::Ctx;
use crate::api::job_expansion::task_name;
use crate::api::{GroupState, GroupSummary, Job, JobStatus, JobType, TaskGroupStatus, TaskGroupTemplate, TaskState};
use crate::server::object;
use crate::server::registry::Part;
use crate::server::status::Status;
use crate::server::stored_task;
use crate::server::time;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

fn to_value<T: serde::Serialize>(x: &T) -> Result<Value, Status> {
    serde_json::to_value(x).map_err(|e| Status::internal(format!("encoding: {e}")))
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

    /// The state of a group (or job) of this kind. A system replica that
    /// is Lost waits for its robot to come back (it is never moved), so it
    /// does not make the group Failed.
    fn state(&self, kind: JobType) -> GroupState {
        let batch = kind == JobType::Batch;
        let waiting = if kind == JobType::System { self.lost } else { 0 };
        let unfinished = self.pending + self.starting + self.running + waiting;
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
        } else if self.starting > 0 || waiting > 0 {
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
pub async fn update_status(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    job: &Job,
    job_v: &Value,
    groups: &[(&TaskGroupTemplate, String, String)],
    unschedulable: Option<&str>,
) -> Result<(), Status> {
    let kind = job.spec.job_type;
    let mut all = Counts::default();
    let mut summary = BTreeMap::new();
    let mut robots = BTreeSet::new();
    for (g, tg_name, _) in groups {
        let mut c = Counts::default();
        // (replica, robot): one per replica, or one per robot (system).
        let mut assigned = BTreeMap::new();
        for (i, task) in group_tasks(ctx, ns, name, kind, g, tg_name) {
            let s = stored_task::state(&task);
            c.add(s);
            all.add(s);
            if let Some(r) = stored_task::target_robot(&task) {
                let key = if kind == JobType::System { r } else { "" };
                assigned.insert((i, key.to_string()), r.to_string());
                robots.insert(r.to_string());
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
        let state = c.state(kind);
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
                .map(|((replica_index, _), robot_name)| crate::api::Assignment {
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
    let state = all.state(kind);
    let mut description = all.describe();
    if kind == JobType::System {
        // Counted per robot: every robot has one replica of each group.
        description = format!("on {} robots: {description}", robots.len());
        if all.lost > 0 {
            description.push_str(&format!(" ({} lost with their robot)", all.lost));
        }
    }
    let description = match unschedulable {
        Some(why) if state == GroupState::Pending || all.pending > 0 || kind == JobType::System => {
            format!("{description}; {why}")
        }
        _ => description,
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
        conditions: old.conditions,
    };
    write_status(ctx, "jobs", job_v, to_value(&new)?).await
}

/// The Tasks of one group with their replica index: replica by replica
/// and task by task, or, for a system group, every Task the group has
/// (one replica per robot, by name).
fn group_tasks(
    ctx: &Ctx,
    ns: &str,
    job: &str,
    kind: JobType,
    g: &TaskGroupTemplate,
    tg_name: &str,
) -> Vec<(i32, Arc<Value>)> {
    if kind == JobType::System {
        return ctx
            .cache()
            .of_job("tasks", ns, job)
            .into_iter()
            .filter(|t| stored_task::task_group_name(t) == Some(tg_name))
            .map(|t| (0, t))
            .collect();
    }
    let mut out = Vec::new();
    for i in 0..g.count {
        for t in &g.tasks {
            if let Some(task) = ctx.cache().get("tasks", ns, &task_name(job, &g.name, i, &t.name)) {
                out.push((i, task));
            }
        }
    }
    out
}

pub(super) async fn write_status(ctx: &Ctx, plural: &str, cur: &Value, status: Value) -> Result<(), Status> {
    let Some(res) = crate::server::resources::by_plural(plural) else {
        return Ok(());
    };
    let mut body = cur.clone();
    if let Some(o) = body.as_object_mut() {
        o.insert("status".into(), status);
    }
    // As the registry will store it: unchanged is no write at all.
    crate::server::conditions::derive(res.kind, Some(cur), &mut body);
    if cur.get("status") == body.get("status") {
        return Ok(());
    }
    let w = ctx
        .registry
        .replace(res, object::namespace(cur), object::name(cur), body, Part::Status, ALL)
        .await?;
    ctx.wrote(plural, &w.object);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(states: &[TaskState]) -> Counts {
        let mut c = Counts::default();
        for s in states {
            c.add(*s);
        }
        c
    }

    #[test]
    fn a_lost_system_replica_waits_for_its_robot() {
        use TaskState::*;
        let one_lost = counts(&[Running, Lost]);
        assert_eq!(one_lost.state(JobType::System), GroupState::Running);
        let all_lost = counts(&[Lost, Lost]);
        assert_eq!(
            all_lost.state(JobType::System),
            GroupState::Scheduled,
            "placed, waiting for the robots to come back"
        );
        assert_eq!(all_lost.state(JobType::Service), GroupState::Failed);
        assert_eq!(counts(&[Lost, Failed]).state(JobType::System), GroupState::Scheduled);
        assert_eq!(
            counts(&[Completed, Completed]).state(JobType::System),
            GroupState::Completed
        );
        assert_eq!(
            counts(&[]).state(JobType::System),
            GroupState::Pending,
            "no robot matches"
        );
    }
}
