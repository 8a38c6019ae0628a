//! A task group's `update` block: how a change of its spec reaches its
//! robots (Nomad's fields and defaults). Its validation is in
//! `api::validate` (it needs the job's type); the rollout it drives is
//! `api::rollout` and `server::controllers::rollout`.

use super::units::Duration;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
