//! The status cascade: Task states roll up into each TaskGroup's status
//! and the Job's (counts, state, summary, startedAt/completedAt).

use super::jobs::{task_name, task_state};
use super::Ctx;
use crate::api::{GroupState, GroupSummary, Job, JobStatus, JobType, TaskGroupStatus, TaskGroupTemplate, TaskState};
use crate::server::object;
use crate::server::registry::Part;
use crate::server::status::Status;
use crate::server::time;
use serde_json::Value;
use std::collections::BTreeMap;

fn spec_str<'a>(v: &'a Value, f: &str) -> Option<&'a str> {
    v.get("spec")?.get(f)?.as_str().filter(|s| !s.is_empty())
}

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
pub async fn update_status(
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
        .replace(
            res,
            object::namespace(cur),
            object::name(cur),
            body,
            Part::Status,
            super::jobs::ALL,
        )
        .await?;
    ctx.wrote(plural, &w.object);
    Ok(())
}
