//! The `Rollout` kind: one object per version of a Job's spec
//! (`{job}-v{N}`), which the server writes and operators steer (pause,
//! promote). The `update` block it follows is `api::update_strategy`; the
//! rollout itself is planned in `server::controllers::rollout`.

use super::types::JobSpec;
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------- Rollout

/// Where a rollout is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
pub enum RolloutState {
    /// Robots are being updated, maxParallel at a time.
    #[default]
    Progressing,
    /// An operator paused it: no robot is updated until it is resumed.
    Paused,
    /// The canaries are healthy; the rest waits for `k8s4r job promote`.
    WaitingForPromotion,
    /// Every robot runs this version (or gets it when it comes back online).
    Succeeded,
    /// A replica was unhealthy or no progress was made in time; with autoRevert every robot goes back to baseVersion.
    Failed,
    /// A newer version of the Job replaced it before it settled.
    Superseded,
}

impl RolloutState {
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            RolloutState::Succeeded | RolloutState::Failed | RolloutState::Superseded
        )
    }
}

/// One version of a Job's spec and how it reaches the robots.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// The Job this is a version of.
    pub job_name: String,
    /// The version: 1 for the Job's first spec, one more for every change.
    pub version: i64,
    /// The version robots ran when this one started (what a failed rollout reverts to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_version: Option<i64>,
    /// Set by `k8s4r job revert`: this version restores an earlier one on every robot at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_of: Option<i64>,
    /// Operators: true stops updating further robots (`k8s4r job pause`), false resumes.
    #[serde(default)]
    pub paused: bool,
    /// Operators: true lets the rollout go on past its canaries (`k8s4r job promote`).
    #[serde(default)]
    pub promoted: bool,
    /// The Job's spec at this version.
    pub template: JobSpec,
}

/// How far a rollout is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Where the rollout is.
    #[serde(default)]
    pub state: RolloutState,
    /// Why it is in its state, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Replicas of the Job (one per robot for system jobs).
    #[serde(default)]
    pub total: i32,
    /// Replicas running this version.
    #[serde(default)]
    pub updated: i32,
    /// Replicas updated as canaries.
    #[serde(default)]
    pub canaries: i32,
    /// Updated replicas found healthy.
    #[serde(default)]
    pub healthy: i32,
    /// Updated replicas found unhealthy.
    #[serde(default)]
    pub unhealthy: i32,
    /// Replicas whose robot is offline: skipped, they get the settled version when back.
    #[serde(default)]
    pub pending: i32,
    /// Replicas whose task holds an update lock: the rollout waits for them (up to lockDeadline).
    #[serde(default)]
    pub locked: i32,
    /// `updated/total`, for the table.
    #[serde(default)]
    pub progress: String,
    /// The canaries were promoted automatically (autoPromote).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_promoted: bool,
    /// When the rollout started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When a replica last became healthy (RFC 3339): what progressDeadline counts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_at: Option<String>,
    /// When the rollout settled (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

pub type Rollout = super::meta::Object<RolloutSpec, RolloutStatus>;

/// The name of version `version` of Job `job`.
pub fn rollout_name(job: &str, version: i64) -> String {
    format!("{job}-v{version}")
}
