//! Staged rollouts: a task group's `update` block (Nomad's fields and
//! defaults) and the `Rollout` kind, one object per version of a Job's spec
//! (`{job}-v{N}`), which the server writes and operators steer (pause,
//! promote). The rollout itself is planned in
//! `server::controllers::rollout`.

use super::findings::FieldError;
use super::types::{JobSpec, JobType};
use super::units::{check_max_duration, Duration};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A count of robots, or a percentage of the robots the group runs on
/// (`"10%"`, system jobs only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CountOrPercent {
    Count(i64),
    Percent(u32),
    /// Neither: kept to be refused by validation, naming the field.
    Invalid(String),
}

impl CountOrPercent {
    /// The count among `total` replicas: a percentage rounds up, so any
    /// percentage above 0 of a non-empty group is at least one robot.
    pub fn of(&self, total: usize) -> usize {
        match self {
            CountOrPercent::Count(n) => usize::try_from(*n).unwrap_or(0),
            CountOrPercent::Percent(p) => {
                let p = (*p).min(100) as usize;
                (total.saturating_mul(p)).div_ceil(100)
            }
            CountOrPercent::Invalid(_) => 0,
        }
    }
}

impl Serialize for CountOrPercent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CountOrPercent::Count(n) => s.serialize_i64(*n),
            CountOrPercent::Percent(p) => s.serialize_str(&format!("{p}%")),
            CountOrPercent::Invalid(t) => s.serialize_str(t),
        }
    }
}

impl<'de> Deserialize<'de> for CountOrPercent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        Ok(match &v {
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => CountOrPercent::Count(i),
                None => CountOrPercent::Invalid(n.to_string()),
            },
            serde_json::Value::String(s) => match s.strip_suffix('%').map(str::parse::<u32>) {
                Some(Ok(p)) => CountOrPercent::Percent(p),
                _ => match s.parse::<i64>() {
                    Ok(i) => CountOrPercent::Count(i),
                    Err(_) => CountOrPercent::Invalid(s.clone()),
                },
            },
            other => CountOrPercent::Invalid(other.to_string()),
        })
    }
}

#[cfg(feature = "server")]
impl schemars::JsonSchema for CountOrPercent {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "CountOrPercent".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A number of robots, or (system jobs) a percentage of the group's matching robots such as \"10%\", rounded up.",
            "x-kubernetes-int-or-string": true,
        })
    }
}

/// What makes an updated replica healthy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum HealthCheck {
    /// Every task running for minHealthyTime and its service checks passing.
    #[default]
    Checks,
    /// Every task running for minHealthyTime; service checks are not waited for.
    TaskStates,
}

/// How a change of the group's spec reaches its robots (Nomad's `update`
/// block). A group without one takes a change on every robot at once.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct UpdateStrategy {
    /// Robots updated at once (default 1); system jobs also take a percentage such as "10%".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<CountOrPercent>,
    /// How long every task of an updated replica must run (checks passing) to count healthy (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_healthy_time: Option<Duration>,
    /// An updated replica not healthy this long after its update is unhealthy, which fails the rollout (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_deadline: Option<Duration>,
    /// The rollout fails when no replica became healthy for this long (default 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline: Option<Duration>,
    /// Robots that get the new version first; the rest wait for a promotion (default 0: no canaries). System jobs also take a percentage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CountOrPercent>,
    /// A failed rollout puts every updated robot back on the version before it (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_revert: Option<bool>,
    /// Healthy canaries promote the rollout without an operator (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promote: Option<bool>,
    /// What health means: checks (default) or taskStates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// System jobs: the least time between the starts of two batches of maxParallel robots (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stagger: Option<Duration>,
    /// How long the rollout waits for a robot whose task holds an update lock (k8s4r-update.lock in its task directory) before updating it anyway (default 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_deadline: Option<Duration>,
}

/// Nomad's defaults.
pub const DEFAULT_MIN_HEALTHY: std::time::Duration = std::time::Duration::from_secs(10);
pub const DEFAULT_HEALTHY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);
pub const DEFAULT_PROGRESS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);
pub const DEFAULT_STAGGER: std::time::Duration = std::time::Duration::from_secs(30);
/// Not Nomad's (it has no update locks): an hour for a mission to end.
pub const DEFAULT_LOCK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3600);

/// An update block with every default filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Strategy {
    pub max_parallel: CountOrPercent,
    pub min_healthy_time: std::time::Duration,
    pub healthy_deadline: std::time::Duration,
    pub progress_deadline: std::time::Duration,
    pub canary: CountOrPercent,
    pub auto_revert: bool,
    pub auto_promote: bool,
    pub health_check: HealthCheck,
    pub stagger: std::time::Duration,
    pub lock_deadline: std::time::Duration,
}

impl UpdateStrategy {
    pub fn resolve(&self) -> Strategy {
        let d = |x: &Option<Duration>, def| x.as_ref().and_then(Duration::get).unwrap_or(def);
        Strategy {
            max_parallel: self.max_parallel.clone().unwrap_or(CountOrPercent::Count(1)),
            min_healthy_time: d(&self.min_healthy_time, DEFAULT_MIN_HEALTHY),
            healthy_deadline: d(&self.healthy_deadline, DEFAULT_HEALTHY_DEADLINE),
            progress_deadline: d(&self.progress_deadline, DEFAULT_PROGRESS_DEADLINE),
            canary: self.canary.clone().unwrap_or(CountOrPercent::Count(0)),
            auto_revert: self.auto_revert.unwrap_or(false),
            auto_promote: self.auto_promote.unwrap_or(false),
            health_check: self.health_check.unwrap_or_default(),
            stagger: d(&self.stagger, DEFAULT_STAGGER),
            lock_deadline: d(&self.lock_deadline, DEFAULT_LOCK_DEADLINE),
        }
    }
}

/// The errors of `u`, the update block at `path` of a group of a `job_type` job.
pub fn check_update(path: &str, job_type: JobType, u: &UpdateStrategy) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if job_type == JobType::Batch {
        errs.push(FieldError::new(
            path,
            "batch jobs run to completion and are not rolled out (update applies to service and system jobs)",
        ));
    }
    let count = |field: &str, v: &Option<CountOrPercent>, least: i64, errs: &mut Vec<FieldError>| {
        let f = format!("{path}.{field}");
        match v {
            None => {}
            Some(CountOrPercent::Count(n)) if *n < least || *n > i64::from(super::validate::MAX_COUNT) => {
                errs.push(FieldError::new(
                    &f,
                    format!("{n} is out of range ({least}-{})", super::validate::MAX_COUNT),
                ))
            }
            Some(CountOrPercent::Count(_)) => {}
            Some(CountOrPercent::Percent(p)) if job_type != JobType::System => errs.push(FieldError::new(
                &f,
                format!("{p}%: a percentage is for system jobs (of their matching robots); give a number of robots"),
            )),
            Some(CountOrPercent::Percent(p)) if *p > 100 || (*p < 1 && least > 0) => {
                errs.push(FieldError::new(&f, format!("{p}% is out of range ({least}%-100%)")))
            }
            Some(CountOrPercent::Percent(_)) => {}
            Some(CountOrPercent::Invalid(t)) => errs.push(FieldError::new(
                &f,
                format!("{t:?} is neither a number of robots nor a percentage such as \"10%\""),
            )),
        }
    };
    count("maxParallel", &u.max_parallel, 1, &mut errs);
    count("canary", &u.canary, 0, &mut errs);
    let durations = [
        ("minHealthyTime", &u.min_healthy_time),
        ("healthyDeadline", &u.healthy_deadline),
        ("progressDeadline", &u.progress_deadline),
        ("stagger", &u.stagger),
        ("lockDeadline", &u.lock_deadline),
    ];
    for (field, d) in durations {
        let Some(d) = d else { continue };
        let f = format!("{path}.{field}");
        match d.get() {
            None => errs.push(FieldError::new(&f, d.error().unwrap_or("invalid duration").to_string())),
            Some(v) => {
                if let Err(e) = check_max_duration(v, d.text()) {
                    errs.push(FieldError::new(&f, e));
                }
            }
        }
    }
    let s = u.resolve();
    if errs.is_empty() && s.min_healthy_time >= s.healthy_deadline {
        errs.push(FieldError::new(
            &format!("{path}.minHealthyTime"),
            format!(
                "{:?} must be less than healthyDeadline ({:?}): no replica could ever be healthy in time",
                s.min_healthy_time, s.healthy_deadline
            ),
        ));
    }
    if errs.is_empty() && s.healthy_deadline > s.progress_deadline {
        errs.push(FieldError::new(
            &format!("{path}.progressDeadline"),
            format!(
                "{:?} must be at least healthyDeadline ({:?})",
                s.progress_deadline, s.healthy_deadline
            ),
        ));
    }
    errs
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn update(v: serde_json::Value) -> UpdateStrategy {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn defaults_are_nomads() {
        let s = UpdateStrategy::default().resolve();
        assert_eq!(s.max_parallel, CountOrPercent::Count(1));
        assert_eq!(s.min_healthy_time.as_secs(), 10);
        assert_eq!(s.healthy_deadline.as_secs(), 300);
        assert_eq!(s.progress_deadline.as_secs(), 600);
        assert_eq!(s.canary, CountOrPercent::Count(0));
        assert!(!s.auto_revert && !s.auto_promote);
        assert_eq!(s.health_check, HealthCheck::Checks);
        assert_eq!(s.stagger.as_secs(), 30);
    }

    #[test]
    fn percentages_round_up_and_are_for_system_jobs() {
        let u = update(json!({"maxParallel": "10%", "canary": "5%"}));
        assert_eq!(u.resolve().max_parallel.of(1000), 100);
        assert_eq!(u.resolve().canary.of(3), 1);
        assert_eq!(u.resolve().canary.of(0), 0);
        assert!(check_update("u", JobType::System, &u).is_empty());
        let errs = check_update("spec.taskGroups[0].update", JobType::Service, &u);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(errs[0].field, "spec.taskGroups[0].update.maxParallel");
        assert!(errs[0].message.contains("system jobs"), "{}", errs[0].message);
        assert_eq!(
            serde_json::to_value(&u).unwrap(),
            json!({"maxParallel": "10%", "canary": "5%"})
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let u = update(json!({"maxParallel": 0, "canary": "lots", "minHealthyTime": "soon", "stagger": "5s"}));
        let fields: Vec<String> = check_update("u", JobType::Service, &u)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["u.maxParallel", "u.canary", "u.minHealthyTime"]);
        let u = update(json!({"minHealthyTime": "5m", "healthyDeadline": "1m"}));
        assert_eq!(check_update("u", JobType::Service, &u)[0].field, "u.minHealthyTime");
        let u = update(json!({"healthyDeadline": "20m"}));
        assert_eq!(check_update("u", JobType::Service, &u)[0].field, "u.progressDeadline");
        let errs = check_update("u", JobType::Batch, &UpdateStrategy::default());
        assert_eq!(errs[0].field, "u");
        assert!(
            check_update("u", JobType::System, &update(json!({"maxParallel": "101%"})))[0]
                .message
                .contains("out of range")
        );
    }
}
