//! The status of a namespace's AgentReleases: the rollout plan's counts
//! (`server::agent_rollout`), written when they change, and the robots that
//! enter a release's window woken from their long poll (so the rollout moves
//! at the speed robots report, not one poll interval a step). Queued on
//! every change of a release or a Robot of the namespace.

use super::{job_status, Ctx, Next};
use crate::api::agent_release::AgentRelease;
use crate::server::agent_rollout::{plan, RobotFacts};
use crate::server::status::Status;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};

/// (namespace, release) -> robots offered it at the last reconcile.
pub type Offered = HashMap<(String, String), BTreeSet<String>>;

pub async fn reconcile(ctx: &Ctx, ns: &str) -> Result<Next, Status> {
    let releases = ctx.cache().list("agentreleases", Some(ns));
    if releases.is_empty() {
        return Ok(Next::Done);
    }
    let robots: Vec<RobotFacts> = ctx
        .cache()
        .list("robots", Some(ns))
        .iter()
        .map(|r| RobotFacts::of(r))
        .collect();
    for v in releases {
        let Ok(release) = serde_json::from_value::<AgentRelease>(Value::clone(&v)) else {
            continue;
        };
        let plan = plan(&release.spec, &robots);
        let key = (ns.to_string(), release.metadata.name.clone());
        let before = ctx
            .offered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, plan.offered.clone())
            .unwrap_or_default();
        // Revision 0: the poll answers at once with the offer, its desired
        // set unchanged (tasks are not sent again). Robots polling another
        // replica learn it at their next poll.
        for robot in plan.offered.difference(&before) {
            ctx.hub.fleet.wake(ns, robot, 0);
        }
        let status = serde_json::to_value(plan.status).map_err(|e| Status::internal(e.to_string()))?;
        job_status::write_status(ctx, "agentreleases", &v, status).await?;
    }
    Ok(Next::Done)
}
