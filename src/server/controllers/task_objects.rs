//! Task objects as the controllers write them: their shape (labels, owner,
//! spec, first status), creation in store batches, and the events and
//! statuses of a placement. Shared by the Job reconciler (`jobs.rs`), the
//! system-job placement (`system.rs`), disconnect handling and the status
//! roll-up, so none of them imports another for it.

use super::Ctx;
use crate::api::{ObjectMeta, OwnerReference, TaskGroupTemplate, API_VERSION};
use crate::server::annotations::{LABEL_GROUP, LABEL_JOB, LABEL_REPLICA};
use crate::server::events::Kind;
use crate::server::registry::{Part, WriteOptions};
use crate::server::resources::TASKS;
use crate::server::status::Status;
use serde_json::{json, Value};

pub fn owner(kind: &str, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: API_VERSION.into(),
        kind: kind.into(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

pub fn to_value<T: serde::Serialize>(x: &T) -> Result<Value, Status> {
    serde_json::to_value(x).map_err(|e| Status::internal(format!("encoding: {e}")))
}

pub const ALL: WriteOptions = WriteOptions {
    validation: crate::server::admission::FieldValidation::Ignore,
    dry_run: false,
    manager: None,
};

/// Tasks created per store batch.
pub const CREATE_BATCH: usize = 256;

/// Create `tasks` in one batch; returns how many were created, or the
/// first error (after recording every success).
pub async fn create_tasks(
    ctx: &Ctx,
    ns: &str,
    tasks: Vec<(Value, Option<Result<String, String>>)>,
) -> Result<usize, Status> {
    if tasks.is_empty() {
        return Ok(0);
    }
    let (bodies, placements): (Vec<Value>, Vec<_>) = tasks.into_iter().unzip();
    let results = ctx.registry.create_many(&TASKS, ns, bodies, Part::All, ALL).await?;
    let mut created = Vec::with_capacity(results.len());
    let mut first_error = None;
    for (r, p) in results.into_iter().zip(placements) {
        match r {
            Ok(w) => {
                record_placement(ctx, &w.object, p.as_ref(), None);
                created.push(w.object);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let count = created.len();
    // Together: the creates of one batch may share a revision.
    ctx.wrote_all("tasks", created);
    match first_error {
        Some(e) => Err(e),
        None => Ok(count),
    }
}

pub fn record_placement(ctx: &Ctx, task: &Value, p: Option<&Result<String, String>>, from: Option<&str>) {
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

pub fn placed_status(robot: &str, rescheduled_from: Option<&str>) -> Value {
    match rescheduled_from {
        Some(old) => json!({"state": "scheduled", "reason": "Rescheduled",
                            "message": format!("robot {old} was lost; placed on robot {robot}")}),
        None => json!({"state": "scheduled", "reason": "Scheduled", "message": format!("placed on robot {robot}")}),
    }
}

#[allow(clippy::too_many_arguments)]
pub fn task_object(
    ns: &str,
    name: &str,
    job: &str,
    g: &TaskGroupTemplate,
    i: i32,
    owner: &OwnerReference,
    spec: &impl serde::Serialize,
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
