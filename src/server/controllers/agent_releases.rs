//! The status of a namespace's AgentReleases: the rollout plan's counts
//! (`server::agent_rollout`), written when they change. Queued on every
//! change of a release or a Robot of the namespace.

use super::{job_status, Ctx, Next};
use crate::api::agent_release::AgentRelease;
use crate::server::agent_rollout::{plan, RobotFacts};
use crate::server::status::Status;
use serde_json::Value;

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
        let status =
            serde_json::to_value(plan(&release.spec, &robots).status).map_err(|e| Status::internal(e.to_string()))?;
        job_status::write_status(ctx, "agentreleases", &v, status).await?;
    }
    Ok(Next::Done)
}
