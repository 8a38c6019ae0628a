//! Which robots an AgentRelease is offered to, and the release's status: a
//! pure plan over a snapshot of the namespace's Robots. The rules, in order:
//! 1. a robot is *selected* when the robotSelector matches its labels (no
//!    selector: every robot of the namespace) and the release has a binary
//!    for the architecture the robot reports (`status.architecture`);
//! 2. *updated*: it reports the release's version (`status.agentVersion`);
//! 3. *failed*: its `status.lastUpdate` is about this version and says
//!    Refused or RolledBack;
//! 4. the others wait in name order; the first `maxParallel` (default 1)
//!    that are Online are *updating* and offered the release. A robot leaves
//!    that window only by reporting the new version (health gating: an
//!    agent that was installed but never reports does not make room) or by
//!    failing; Offline robots take no place in it;
//! 5. `paused`, or more failures than `maxFailures` (default 0: the first
//!    failure halts), offers the release to no one.
//!
//! The long poll asks [`Memo::offer_for`] (a namespace without releases
//! costs one cache lookup; with releases, the plans are computed at most
//! every [`MEMO_FOR`] per namespace, not once per poll: a fleet polling
//! hundreds of times a second would otherwise recompute them each time);
//! a controller writes [`plan`]'s counts to the status.

use crate::api::agent_release::{AgentRelease, AgentReleaseSpec, AgentReleaseStatus, AgentUpdate, UpdateOutcome};
use crate::api::types::StringMap;
use crate::server::cache::Cache;
use crate::server::object;
use serde_json::Value;
use std::collections::BTreeSet;

/// What the plan needs to know about one Robot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RobotFacts {
    pub name: String,
    pub labels: StringMap,
    pub online: bool,
    pub version: Option<String>,
    pub arch: Option<String>,
    /// `status.lastUpdate`: (version, outcome).
    pub last_update: Option<(String, UpdateOutcome)>,
}

impl RobotFacts {
    pub fn of(robot: &Value) -> RobotFacts {
        let status = robot.get("status");
        let text = |key: &str| {
            status
                .and_then(|s| s.get(key))
                .and_then(Value::as_str)
                .map(String::from)
        };
        let last_update = status.and_then(|s| s.get("lastUpdate")).and_then(|u| {
            let version = u.get("version")?.as_str()?.to_string();
            let outcome = serde_json::from_value(u.get("result")?.clone()).ok()?;
            Some((version, outcome))
        });
        RobotFacts {
            name: object::name(robot).to_string(),
            labels: object::meta(robot)
                .and_then(|m| m.get("labels"))
                .and_then(|l| serde_json::from_value(l.clone()).ok())
                .unwrap_or_default(),
            online: text("phase").as_deref() == Some("Online"),
            version: text("agentVersion"),
            arch: text("architecture"),
            last_update,
        }
    }
}

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Robots offered the release now.
    pub offered: BTreeSet<String>,
    pub status: AgentReleaseStatus,
}

pub fn plan(spec: &AgentReleaseSpec, robots: &[RobotFacts]) -> Plan {
    let mut p = Plan::default();
    let mut waiting: Vec<&RobotFacts> = Vec::new();
    let mut failures = Vec::new();
    for r in robots {
        let selected = spec.robot_selector.as_ref().is_none_or(|s| s.matches(&r.labels))
            && r.arch
                .as_ref()
                .is_some_and(|a| spec.binaries.iter().any(|b| &b.arch == a));
        if !selected {
            continue;
        }
        p.status.selected += 1;
        if r.version.as_deref() == Some(spec.version.as_str()) {
            p.status.updated += 1;
        } else if r
            .last_update
            .as_ref()
            .is_some_and(|(v, o)| *v == spec.version && *o != UpdateOutcome::Applied)
        {
            p.status.failed += 1;
            failures.push(r.name.as_str());
        } else {
            waiting.push(r);
        }
    }
    waiting.sort_by(|a, b| a.name.cmp(&b.name));
    let max_failures = spec.max_failures.unwrap_or(0);
    let halted = p.status.failed > max_failures;
    let window = spec.max_parallel.unwrap_or(1) as usize;
    if !spec.paused && !halted {
        p.offered = waiting
            .iter()
            .filter(|r| r.online)
            .take(window)
            .map(|r| r.name.clone())
            .collect();
    }
    p.status.updating = p.offered.len() as u32;
    p.status.message = Some(if halted {
        format!(
            "halted: {} robot(s) refused or rolled back {} (more than maxFailures {max_failures}): {}",
            p.status.failed,
            spec.version,
            failures.join(", ")
        )
    } else if spec.paused {
        "paused".into()
    } else if waiting.is_empty() {
        format!(
            "complete: {} of {} robot(s) run {}",
            p.status.updated, p.status.selected, spec.version
        )
    } else {
        format!(
            "rolling out: {} updated, {} updating, {} waiting",
            p.status.updated,
            p.status.updating,
            waiting.len() - p.offered.len()
        )
    });
    p
}

/// How long a namespace's plans are reused by polls. An offer half a
/// second old is harmless: the window only moves forward, and a robot that
/// already runs the version ignores it.
pub const MEMO_FOR: std::time::Duration = std::time::Duration::from_millis(500);

/// A namespace's releases (by name) and whom each offers itself to.
type Plans = Vec<(AgentRelease, BTreeSet<String>)>;

/// The plans of each namespace, as last computed, and when.
#[derive(Default)]
pub struct Memo(std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, std::sync::Arc<Plans>)>>);

impl Memo {
    /// The release a polling robot should install now, if any (the first,
    /// by name, of the namespace's releases that offers it one, for the
    /// robot's architecture).
    pub fn offer_for(&self, cache: &Cache, ns: &str, robot: &str) -> Option<AgentUpdate> {
        if cache.list("agentreleases", Some(ns)).is_empty() {
            return None;
        }
        let plans = self.plans(cache, ns);
        let me = cache.get("robots", ns, robot).map(|r| RobotFacts::of(&r))?;
        let arch = me.arch?;
        plans.iter().find_map(|(r, offered)| {
            if !offered.contains(robot) {
                return None;
            }
            let binary = r.spec.binaries.iter().find(|b| b.arch == arch)?.clone();
            Some(AgentUpdate {
                release: r.metadata.name.clone(),
                version: r.spec.version.clone(),
                allow_downgrade: r.spec.allow_downgrade,
                binary,
            })
        })
    }

    fn plans(&self, cache: &Cache, ns: &str) -> std::sync::Arc<Plans> {
        let now = std::time::Instant::now();
        let mut memo = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, plans)) = memo.get(ns) {
            if now.saturating_duration_since(*at) < MEMO_FOR {
                return std::sync::Arc::clone(plans);
            }
        }
        let robots: Vec<RobotFacts> = cache
            .list("robots", Some(ns))
            .iter()
            .map(|r| RobotFacts::of(r))
            .collect();
        let mut releases: Vec<AgentRelease> = cache
            .list("agentreleases", Some(ns))
            .iter()
            .filter_map(|v| serde_json::from_value(Value::clone(v)).ok())
            .collect();
        releases.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let plans: Plans = releases
            .into_iter()
            .map(|r| {
                let offered = plan(&r.spec, &robots).offered;
                (r, offered)
            })
            .collect();
        let plans = std::sync::Arc::new(plans);
        memo.insert(ns.to_string(), (now, std::sync::Arc::clone(&plans)));
        plans
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::agent_release::ReleaseBinary;

    fn robot(name: &str, version: &str, online: bool) -> RobotFacts {
        RobotFacts {
            name: name.into(),
            online,
            version: Some(version.into()),
            arch: Some("x86_64".into()),
            ..Default::default()
        }
    }

    fn spec(max_parallel: u32) -> AgentReleaseSpec {
        AgentReleaseSpec {
            version: "0.2.0".into(),
            max_parallel: Some(max_parallel),
            binaries: vec![ReleaseBinary {
                arch: "x86_64".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn names(p: &Plan) -> Vec<&str> {
        p.offered.iter().map(String::as_str).collect()
    }

    #[test]
    fn a_window_of_max_parallel_moves_only_when_robots_report_the_version() {
        let mut fleet: Vec<RobotFacts> = ["r1", "r2", "r3", "r4"]
            .iter()
            .map(|n| robot(n, "0.1.0", true))
            .collect();
        let p = plan(&spec(2), &fleet);
        assert_eq!(names(&p), ["r1", "r2"]);
        assert_eq!((p.status.selected, p.status.updating, p.status.updated), (4, 2, 0));
        // r1 reports the new version: r3 enters; r2 (silent) keeps its place.
        fleet[0].version = Some("0.2.0".into());
        assert_eq!(names(&plan(&spec(2), &fleet)), ["r2", "r3"]);
        // Offline robots take no place.
        fleet[1].online = false;
        assert_eq!(names(&plan(&spec(2), &fleet)), ["r3", "r4"]);
        for r in &mut fleet {
            r.version = Some("0.2.0".into());
        }
        let done = plan(&spec(2), &fleet);
        assert!(done.offered.is_empty());
        assert_eq!(done.status.updated, 4);
        assert!(done.status.message.unwrap().starts_with("complete"));
    }

    #[test]
    fn selection_needs_matching_labels_and_a_binary_for_the_arch() {
        let mut fleet = vec![
            robot("a", "0.1.0", true),
            robot("b", "0.1.0", true),
            robot("c", "0.1.0", true),
        ];
        fleet[0].labels.insert("ring".into(), "canary".into());
        fleet[1].arch = Some("aarch64".into());
        fleet[2].arch = None;
        let mut s = spec(5);
        assert_eq!(names(&plan(&s, &fleet)), ["a"]);
        s.robot_selector = Some(crate::api::types::RobotSelector {
            match_labels: [("ring".to_string(), "prod".to_string())].into(),
            ..Default::default()
        });
        assert_eq!(plan(&s, &fleet).status.selected, 0);
    }

    #[test]
    fn a_failure_halts_unless_allowed_and_pause_stops_offers() {
        let mut fleet: Vec<RobotFacts> = ["r1", "r2", "r3"].iter().map(|n| robot(n, "0.1.0", true)).collect();
        fleet[0].last_update = Some(("0.2.0".into(), UpdateOutcome::RolledBack));
        let p = plan(&spec(1), &fleet);
        assert!(p.offered.is_empty());
        assert_eq!(p.status.failed, 1);
        assert!(p.status.message.unwrap().contains("halted"), "the canary failed");
        let mut tolerant = spec(1);
        tolerant.max_failures = Some(1);
        assert_eq!(names(&plan(&tolerant, &fleet)), ["r2"]);
        tolerant.paused = true;
        assert!(plan(&tolerant, &fleet).offered.is_empty());
        // A failed update of another version does not count.
        fleet[0].last_update = Some(("0.1.5".into(), UpdateOutcome::Refused));
        assert_eq!(names(&plan(&spec(1), &fleet)), ["r1"]);
    }
}
