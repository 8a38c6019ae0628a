//! The status of the AgentReleases (cluster-scoped): the rollout plans'
//! counts (`server::agent_rollout`), written when they change, and the
//! robots that enter a release's window woken from their long poll (so the
//! rollout moves at the speed robots report, not one poll interval a step).
//! Queued on every change of a release or of a Robot's rollout facts, on
//! taking the lead, and again when a canary falls due to count healthy.
//!
//! Releases stored under a namespace (they were namespaced before) are
//! moved to the cluster scope first: [`migrate`].

use super::task_objects::ALL;
use super::{job_status, Ctx, Next};
use crate::server::agent_rollout::{plan_fleet, RobotKey};
use crate::server::object;
use crate::server::registry::{DeleteOptions, Part};
use crate::server::resources::AGENTRELEASES;
use crate::server::status::Status;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};

/// On a release moved to the cluster scope: `<namespace>/<name>` it had.
pub const ANN_MIGRATED_FROM: &str = "k8s4r.io/migrated-from";

/// Release name -> robots offered it (or its revert) at the last reconcile.
pub type Offered = HashMap<String, BTreeSet<RobotKey>>;

pub async fn reconcile(ctx: &Ctx) -> Result<Next, Status> {
    for old in ctx.cache().list("agentreleases", None) {
        if !object::namespace(&old).is_empty() {
            migrate(ctx, &old).await?;
        }
    }
    let mut next = Next::Done;
    let fleet = plan_fleet(ctx.cache());
    ctx.hub
        .rollouts
        .store(fleet.iter().map(|(r, _, p)| (r.clone(), p.clone())).collect());
    for (release, stored, plan) in fleet {
        let offered: BTreeSet<RobotKey> = plan.offered.union(&plan.revert).cloned().collect();
        let before = ctx
            .offered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(release.metadata.name.clone(), offered.clone())
            .unwrap_or_default();
        for (ns, robot) in offered.difference(&before) {
            ctx.hub.fleet.wake(ns, robot, 0);
        }
        if let Some(wait) = plan.wake_in {
            next = match next {
                Next::RequeueAfter(w) if w <= wait => Next::RequeueAfter(w),
                _ => Next::RequeueAfter(wait),
            };
        }
        let status = serde_json::to_value(plan.status).map_err(|e| Status::internal(e.to_string()))?;
        job_status::write_status(ctx, "agentreleases", &stored, status).await?;
    }
    Ok(next)
}

/// Move a release stored under a namespace to the cluster scope without
/// widening it: it keeps to its old namespace's robots (`spec.namespaces`),
/// its name (or `<namespace>-<name>` when a cluster release has it), labels
/// and annotations; its status is recomputed. The copy is made before the
/// namespaced one is deleted, and a copy from an interrupted move is
/// recognised by its annotation, so no step loses the release.
async fn migrate(ctx: &Ctx, old: &Value) -> Result<(), Status> {
    let (ns, name) = (object::namespace(old), object::name(old));
    let from = format!("{ns}/{name}");
    let copy_of_old = |v: &Value| {
        object::meta(v)
            .and_then(|m| m.get("annotations"))
            .and_then(|a| a.get(ANN_MIGRATED_FROM))
            == Some(&json!(from))
    };
    let mut target = name.to_string();
    if let Some(existing) = ctx.cache().get("agentreleases", "", name) {
        if !copy_of_old(&existing) {
            target = format!("{ns}-{name}");
        }
    }
    let done = ctx
        .cache()
        .get("agentreleases", "", &target)
        .is_some_and(|v| copy_of_old(&v));
    if !done {
        let meta = object::meta(old);
        let mut annotations = meta
            .and_then(|m| m.get("annotations"))
            .cloned()
            .unwrap_or_else(|| json!({}));
        annotations[ANN_MIGRATED_FROM] = json!(from);
        let mut spec = old.get("spec").cloned().unwrap_or_else(|| json!({}));
        if spec.get("namespaces").is_none() {
            spec["namespaces"] = json!([ns]);
        }
        let mut body = json!({
            "apiVersion": old.get("apiVersion"), "kind": "AgentRelease",
            "metadata": {"name": target, "annotations": annotations},
            "spec": spec,
        });
        if let Some(labels) = meta.and_then(|m| m.get("labels")) {
            body["metadata"]["labels"] = labels.clone();
        }
        match ctx.registry.create(&AGENTRELEASES, "", body, Part::Main, ALL).await {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
        log::info!("agentrelease {from} moved to the cluster scope as {target} (spec.namespaces keeps it to {ns})");
    }
    match ctx
        .registry
        .delete(&AGENTRELEASES, ns, name, &DeleteOptions::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
