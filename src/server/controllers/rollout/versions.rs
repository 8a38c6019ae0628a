//! Versions of a Job's spec: every change makes a new Rollout object
//! (`{job}-v{N}`, owned by the Job) holding the spec, the version robots
//! ran when it started (its base) and the rollout's state. The newest is the
//! one in effect; older ones are history (`--job-history` kept, never the
//! base of the newest), which `k8s4r job revert` writes back into the Job.

use super::super::task_objects::{owner, to_value, ALL};
use super::super::Ctx;
use crate::api::job_expansion;
use crate::api::rollout::{rollout_name, Rollout, RolloutSpec, RolloutState, RolloutStatus};
use crate::api::{Job, ObjectMeta, TaskGroupTemplate, TaskSpec, API_VERSION};
use crate::server::annotations::LABEL_JOB;
use crate::server::events::Kind;
use crate::server::object;
use crate::server::registry::{DeleteOptions, Part};
use crate::server::resources::ROLLOUTS;
use crate::server::status::Status;
use crate::server::time;
use serde_json::{json, Value};
use std::sync::Arc;

/// On a Job: `k8s4r job revert` wrote the spec of this version back, so the
/// next version restores it on every robot at once.
pub const ANN_REVERT_TO: &str = "rollout.k8s4r.io/revert-to";

/// The version in effect for one Job, and the one its robots ran before.
pub struct Versions {
    /// The newest Rollout object, as stored.
    pub object: Arc<Value>,
    pub spec: RolloutSpec,
    pub status: RolloutStatus,
    /// The Job at its base version, if that version is still kept.
    pub base: Option<Job>,
}

fn decode(v: &Value) -> Option<Rollout> {
    serde_json::from_value(v.clone()).ok()
}

/// The Job's Rollouts (its own, by owner uid), oldest first.
fn rollouts_of(ctx: &Ctx, ns: &str, job: &str, uid: &str) -> Vec<(Arc<Value>, Rollout)> {
    let mut out: Vec<(Arc<Value>, Rollout)> = ctx
        .cache()
        .of_job("rollouts", ns, job)
        .into_iter()
        .filter(|v| object::owner_uids(v).contains(&uid))
        .filter_map(|v| decode(&v).map(|r| (v, r)))
        .collect();
    out.sort_by_key(|(_, r)| r.spec.version);
    out
}

impl Versions {
    /// The version robots settle on now: the new one unless the rollout is
    /// under way or failed and a base is kept.
    fn settled_job<'a>(&'a self, target: &'a Job, g: &TaskGroupTemplate) -> &'a Job {
        let settled_new = self.status.state == RolloutState::Succeeded || self.spec.revert_of.is_some();
        match &self.base {
            Some(base) if !settled_new && g.update.is_some() => base,
            _ => target,
        }
    }

    /// The Job and group a replica placed now (new, or moved from a lost
    /// robot) gets its tasks from: the settled version's, so a replica
    /// placed during a rollout runs the base version's tasks (and the
    /// rollout updates it in its turn). A group the base does not have is
    /// new: the new version's.
    pub fn settled_group<'a>(&'a self, target: &'a Job, g: &'a TaskGroupTemplate) -> (&'a Job, &'a TaskGroupTemplate) {
        let job = self.settled_job(target, g);
        match job.spec.task_groups.iter().find(|x| x.name == g.name) {
            Some(sg) => (job, sg),
            None => (target, g),
        }
    }

    /// Group `group` at the base version, if the base has it.
    pub fn base_group(&self, group: &str) -> Option<&TaskGroupTemplate> {
        self.base.as_ref()?.spec.task_groups.iter().find(|g| g.name == group)
    }

    /// Task `task` of replica `i` of group `group` at the base version, if
    /// the base has it.
    pub fn base_task(&self, group: &str, task: &str, i: i32) -> Option<TaskSpec> {
        render(self.base.as_ref()?, group, task, i)
    }
}

fn render(job: &Job, group: &str, task: &str, i: i32) -> Option<TaskSpec> {
    let g = job.spec.task_groups.iter().find(|g| g.name == group)?;
    let t = g.tasks.iter().find(|t| t.name == task)?;
    Some(job_expansion::place_task(job, g, t, i))
}

fn version_of(job: &Job, template: &Rollout) -> Job {
    let mut j = job.clone();
    j.spec = template.spec.template.clone();
    j
}

/// Make sure the Job's current spec is its newest version: a changed spec
/// becomes version N+1 (the one before it, if not settled, is superseded);
/// history beyond `--job-history` is deleted.
pub async fn sync(ctx: &Ctx, ns: &str, job: &Job, job_v: &Value) -> Result<Versions, Status> {
    let name = job.name();
    let uid = object::uid(job_v);
    let mut all = rollouts_of(ctx, ns, name, uid);
    let template = to_value(&job.spec)?;
    let newest_matches = all
        .last()
        .is_some_and(|(_, r)| to_value(&r.spec.template).ok().as_ref() == Some(&template));
    if !newest_matches {
        let created = create_version(ctx, ns, job, job_v, &all).await?;
        all.push(created);
        prune(ctx, ns, &all).await?;
        all = rollouts_of(ctx, ns, name, uid);
    }
    let (object, newest) = all
        .last()
        .cloned()
        .ok_or_else(|| Status::internal(format!("job {name}: its newest version is not in the cache")))?;
    let base = newest.spec.base_version.and_then(|b| {
        all.iter()
            .find(|(_, r)| r.spec.version == b)
            .map(|(_, r)| version_of(job, r))
    });
    Ok(Versions {
        object,
        status: newest.status.clone().unwrap_or_default(),
        spec: newest.spec,
        base,
    })
}

async fn create_version(
    ctx: &Ctx,
    ns: &str,
    job: &Job,
    job_v: &Value,
    all: &[(Arc<Value>, Rollout)],
) -> Result<(Arc<Value>, Rollout), Status> {
    let name = job.name();
    let previous = all.last().map(|(v, r)| (v, r, r.status.clone().unwrap_or_default()));
    let version = previous
        .as_ref()
        .map_or(1, |(_, r, _)| r.spec.version.saturating_add(1));
    // What robots run now: the last version that succeeded, or the base
    // of one still under way (or failed and reverted).
    let base_version = previous.as_ref().and_then(|(_, r, st)| match st.state {
        RolloutState::Succeeded => Some(r.spec.version),
        _ => r.spec.base_version.or(Some(r.spec.version)),
    });
    let revert_of = object::annotation(job_v, ANN_REVERT_TO)
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|v| {
            all.iter()
                .any(|(_, r)| r.spec.version == *v && r.spec.template == job.spec)
        });
    if let Some((prev_v, _, st)) = &previous {
        if !st.state.is_settled() {
            let mut body = (***prev_v).clone();
            let mut st = st.clone();
            st.state = RolloutState::Superseded;
            st.message = Some(format!("version {version} replaced it before it settled"));
            st.finished_at = Some(time::now_rfc3339());
            body["status"] = to_value(&st)?;
            let w = ctx
                .registry
                .replace(&ROLLOUTS, ns, object::name(prev_v), body, Part::Status, ALL)
                .await?;
            ctx.wrote("rollouts", &w.object);
        }
    }
    let spec = RolloutSpec {
        job_name: name.to_string(),
        version,
        base_version,
        revert_of,
        paused: false,
        promoted: false,
        template: job.spec.clone(),
    };
    let status = RolloutStatus {
        state: RolloutState::Progressing,
        started_at: Some(time::now_rfc3339()),
        ..Default::default()
    };
    let meta = ObjectMeta {
        name: rollout_name(name, version),
        namespace: Some(ns.into()),
        labels: [(LABEL_JOB.to_string(), name.to_string())].into(),
        owner_references: vec![owner("Job", name, object::uid(job_v))],
        ..Default::default()
    };
    let body = json!({"apiVersion": API_VERSION, "kind": "Rollout", "metadata": to_value(&meta)?,
        "spec": to_value(&spec)?, "status": to_value(&status)?});
    let w = ctx.registry.create(&ROLLOUTS, ns, body, Part::All, ALL).await?;
    ctx.wrote("rollouts", &w.object);
    if let Some(base) = base_version {
        let how = match revert_of {
            Some(v) => format!("reverting to version {v} on every robot at once"),
            None => format!("rolling out from version {base}"),
        };
        ctx.events
            .record(job_v, Kind::Normal, "NewVersion", format!("version {version}: {how}"));
    }
    let r = decode(&w.object).ok_or_else(|| Status::internal("a Rollout written does not decode"))?;
    Ok((w.object, r))
}

/// Delete the oldest versions beyond `--job-history`, never the newest's base.
async fn prune(ctx: &Ctx, ns: &str, all: &[(Arc<Value>, Rollout)]) -> Result<(), Status> {
    let keep = ctx.hub.fleet.job_history();
    let Some((_, newest)) = all.last() else { return Ok(()) };
    let excess = all.len().saturating_sub(keep);
    for (v, r) in all.iter().take(excess) {
        if Some(r.spec.version) == newest.spec.base_version {
            continue;
        }
        match ctx
            .registry
            .delete(&ROLLOUTS, ns, object::name(v), &DeleteOptions::default())
            .await
        {
            Ok(last) => ctx.deleted("rollouts", &last),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
