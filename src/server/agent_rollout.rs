//! Which robots an AgentRelease is offered to, and the release's status: a
//! pure plan over a snapshot of the fleet's Robots (releases are
//! cluster-scoped) and the time. The rules, in order:
//! 1. a robot is *selected* when it is in one of `namespaces` (none: any),
//!    the robotSelector matches its labels (none: every robot) and the
//!    release has a binary for the architecture it reports
//!    (`status.architecture`);
//! 2. *updated*: it reports the release's version (`status.agentVersion`);
//!    *healthy*: updated, Online, and both for `minHealthyTime` (the later
//!    of `status.agentVersionTime` and its Ready condition's transition,
//!    server clock);
//! 3. *failed*: its `status.lastUpdate` is about this version and says
//!    Refused or RolledBack, or the version is among its
//!    `status.failedUpdates` (a later update overwrote `lastUpdate`);
//! 4. *ahead*: without `allowDowngrade`, a robot that reports a newer
//!    version is left alone (its agent would refuse the downgrade, and that
//!    refusal would overwrite its last update's result);
//! 5. the others wait, ordered by name (then namespace). Canary phase
//!    (`canary` > 0, fewer healthy robots than canaries): the first
//!    `canary - updated` Online ones are offered it, no more. Then the
//!    first `maxParallel` (default 1) Online ones are *updating*: a robot
//!    leaves that window only by reporting the new version or by failing;
//!    Offline robots take no place in it;
//! 6. `paused`, or more failures than `maxFailures` (default 0: the first
//!    failure halts), offers the release to no one; halted with
//!    `autoRevert`, the Online robots that run its version are *reverted*:
//!    offered the newest earlier release for their architecture (all at
//!    once, as the Job rollout's autoRevert), with allowDowngrade for that
//!    offer only (the release's author asked for that downgrade);
//! 7. `revert` (by hand: `k8s4r release revert NAME`) offers it to no one
//!    and reverts the Online robots on its version as 6 does.
//!
//! Why not the Job rollout's planner (`controllers::rollout::plan`): there
//! the server puts a replica on the new version and then watches its
//! health, so "in flight" is a replica on the target that is not healthy
//! yet; here only the robot can put itself on the version, so an offered
//! robot is not on the target until it reports it, and a robot that
//! fails goes back to the old version by itself (the planner would not
//! see it as unhealthy). What is shared is the canary's count
//! ([`CountOrPercent::of`]) and the health rule's shape (on the version
//! and Online for minHealthyTime).
//!
//! The long poll asks [`Memo::offer_for`] (no releases costs one cache
//! lookup; with releases, the plans are computed at most every
//! [`MEMO_FOR`], not once per poll: a fleet polling hundreds of times a
//! second would otherwise recompute them each time); a controller writes
//! [`plan`]'s counts to the status.

use crate::api::agent_release::{
    compare_versions, AgentRelease, AgentReleaseSpec, AgentReleaseStatus, AgentUpdate, UpdateOutcome,
    DEFAULT_MIN_HEALTHY,
};
use crate::api::types::StringMap;
use crate::api::update_strategy::CountOrPercent;
use crate::server::cache::Cache;
use crate::server::{object, time};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

/// A robot: (namespace, name).
pub type RobotKey = (String, String);

/// What the plan needs to know about one Robot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RobotFacts {
    pub namespace: String,
    pub name: String,
    pub labels: StringMap,
    pub online: bool,
    pub version: Option<String>,
    pub arch: Option<String>,
    /// `status.lastUpdate`: (version, outcome).
    pub last_update: Option<(String, UpdateOutcome)>,
    /// Every version it refused or rolled back (`status.failedUpdates`):
    /// `last_update` alone forgets one as soon as another update is tried.
    pub failed_updates: Vec<String>,
    /// Since when (unix seconds, server clock) it reports `version`, and
    /// is Online (its Ready condition's transition).
    pub version_since: Option<i64>,
    pub online_since: Option<i64>,
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
        let failed_updates = status
            .and_then(|s| s.get("failedUpdates"))
            .and_then(|f| serde_json::from_value(f.clone()).ok())
            .unwrap_or_default();
        let online = text("phase").as_deref() == Some("Online");
        let online_since = status
            .and_then(|s| s.get("conditions"))
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready" && c["status"] == "True"))
            .and_then(|c| c["lastTransitionTime"].as_str())
            .and_then(time::parse_rfc3339);
        RobotFacts {
            namespace: object::namespace(robot).to_string(),
            name: object::name(robot).to_string(),
            labels: object::meta(robot)
                .and_then(|m| m.get("labels"))
                .and_then(|l| serde_json::from_value(l.clone()).ok())
                .unwrap_or_default(),
            online,
            version: text("agentVersion"),
            arch: text("architecture"),
            last_update,
            failed_updates,
            version_since: text("agentVersionTime").as_deref().and_then(time::parse_rfc3339),
            online_since: online.then_some(online_since).flatten(),
        }
    }

    fn key(&self) -> RobotKey {
        (self.namespace.clone(), self.name.clone())
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Robots offered the release now.
    pub offered: BTreeSet<RobotKey>,
    /// Robots to take back to the previous release (halted, autoRevert).
    pub revert: BTreeSet<RobotKey>,
    pub status: AgentReleaseStatus,
    /// Look again after this long: a canary becomes healthy then.
    pub wake_in: Option<Duration>,
}

/// When (unix seconds) an updated robot counts healthy; None: not while
/// it is Offline.
fn healthy_at(r: &RobotFacts, min_healthy: Duration) -> Option<i64> {
    if !r.online {
        return None;
    }
    // The later of the two (a Robot that reported its version before
    // agentVersionTime was kept counts from its Ready transition).
    let since = r.version_since.max(r.online_since)?;
    // Both times are whole seconds (RFC 3339 in the Robot's status): the
    // report came somewhere in `since`'s second, so count from its end, and
    // a fractional minHealthyTime rounds up: a robot is never healthy
    // earlier than minHealthyTime after it was seen (at most 1 s later).
    // `make bench`'s rollout caught a robot offered the release 4.83 s
    // after a canary with minHealthyTime 5s before this.
    let min = min_healthy.as_secs() + u64::from(min_healthy.subsec_nanos() > 0);
    let min = i64::try_from(min).unwrap_or(i64::MAX);
    Some(since.saturating_add(1).saturating_add(min))
}

pub fn plan(spec: &AgentReleaseSpec, robots: &[RobotFacts], now: i64) -> Plan {
    let mut p = Plan::default();
    let mut waiting: Vec<&RobotFacts> = Vec::new();
    let mut failures = Vec::new();
    let mut on_version = Vec::new();
    let min_healthy = spec
        .min_healthy_time
        .as_ref()
        .and_then(|d| d.get())
        .unwrap_or(DEFAULT_MIN_HEALTHY);
    for r in robots {
        let selected = spec.namespaces.as_ref().is_none_or(|n| n.contains(&r.namespace))
            && spec.robot_selector.as_ref().is_none_or(|s| s.matches(&r.labels))
            && r.arch
                .as_ref()
                .is_some_and(|a| spec.binaries.iter().any(|b| &b.arch == a));
        if !selected {
            continue;
        }
        p.status.selected += 1;
        if r.version.as_deref() == Some(spec.version.as_str()) {
            p.status.updated += 1;
            if r.online {
                on_version.push(r.key());
            }
            match healthy_at(r, min_healthy) {
                Some(at) if at <= now => p.status.healthy += 1,
                Some(at) => {
                    let wait = Duration::from_secs(u64::try_from(at - now).unwrap_or(0));
                    p.wake_in = Some(p.wake_in.map_or(wait, |w| w.min(wait)));
                }
                None => {}
            }
        } else if r
            .last_update
            .as_ref()
            .is_some_and(|(v, o)| *v == spec.version && *o != UpdateOutcome::Applied)
            || r.failed_updates.contains(&spec.version)
        {
            p.status.failed += 1;
            failures.push(format!("{}/{}", r.namespace, r.name));
        } else if !spec.allow_downgrade
            && r.version
                .as_deref()
                .is_some_and(|v| compare_versions(v, &spec.version) == std::cmp::Ordering::Greater)
        {
            continue;
        } else {
            waiting.push(r);
        }
    }
    waiting.sort_by(|a, b| (&a.name, &a.namespace).cmp(&(&b.name, &b.namespace)));
    let max_failures = spec.max_failures.unwrap_or(0);
    let halted = p.status.failed > max_failures;
    let canaries = spec
        .canary
        .as_ref()
        .unwrap_or(&CountOrPercent::Count(0))
        .of(p.status.selected as usize);
    let in_canary = (p.status.healthy as usize) < canaries;
    let window = if in_canary {
        p.status.canaries = u32::try_from(canaries).unwrap_or(u32::MAX);
        canaries.saturating_sub(p.status.updated as usize)
    } else {
        spec.max_parallel.unwrap_or(1) as usize
    };
    if !spec.paused && !halted && !spec.revert {
        p.offered = waiting
            .iter()
            .filter(|r| r.online)
            .take(window)
            .map(|r| r.key())
            .collect();
    }
    if spec.revert || (halted && spec.auto_revert) {
        p.revert = on_version.into_iter().collect();
    }
    p.status.updating = p.offered.len() as u32;
    p.status.message = Some(if spec.revert {
        format!(
            "reverted: offered to no robot; {} robot(s) on {} offered the newest earlier release for their architecture",
            p.revert.len(),
            spec.version
        )
    } else if halted {
        let reverting = if spec.auto_revert {
            format!(
                "; autoRevert: {} robot(s) on it offered the newest earlier release for their architecture",
                p.revert.len()
            )
        } else {
            String::new()
        };
        format!(
            "halted: {} robot(s) refused or rolled back {} (more than maxFailures {max_failures}): {}{reverting}",
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
    } else if in_canary {
        format!(
            "canary: {} of {canaries} healthy ({} updated, {} updating; minHealthyTime {min_healthy:?}), {} waiting",
            p.status.healthy,
            p.status.updated,
            p.status.updating,
            waiting.len() - p.offered.len()
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

/// How long the fleet's plans are reused by polls. An offer half a second
/// old is harmless: the window only moves forward, and a robot that
/// already runs the version ignores it.
pub const MEMO_FOR: std::time::Duration = std::time::Duration::from_millis(500);

/// The releases (by name) and their plans.
pub type Plans = Vec<(AgentRelease, Plan)>;

/// The fleet's plans, as last computed, and when.
#[derive(Default)]
pub struct Memo(std::sync::Mutex<Option<(std::time::Instant, std::sync::Arc<Plans>)>>);

impl Memo {
    /// The release a polling robot should install now, if any (the first,
    /// by name, of the releases that offers it one, for the robot's
    /// architecture).
    pub fn offer_for(&self, cache: &Cache, ns: &str, robot: &str) -> Option<AgentUpdate> {
        if cache.list("agentreleases", None).is_empty() {
            return None;
        }
        let plans = self.plans(cache);
        let me = cache.get("robots", ns, robot).map(|r| RobotFacts::of(&r))?;
        let arch = me.arch.clone()?;
        let key = me.key();
        let update = |r: &AgentRelease, allow_downgrade: bool| {
            let binary = r.spec.binaries.iter().find(|b| b.arch == arch)?.clone();
            Some(AgentUpdate {
                release: r.metadata.name.clone(),
                version: r.spec.version.clone(),
                allow_downgrade,
                binary,
            })
        };
        plans.iter().find_map(|(r, p)| {
            if p.offered.contains(&key) {
                update(r, r.spec.allow_downgrade)
            } else if p.revert.contains(&key) {
                update(previous(&plans, r, &arch)?, true)
            } else {
                None
            }
        })
    }

    /// Plans just computed (by the controller, before it wakes the robots
    /// that enter a window: their polls must see the new window, not one
    /// up to [`MEMO_FOR`] old).
    pub fn store(&self, plans: Plans) {
        let mut memo = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *memo = Some((std::time::Instant::now(), std::sync::Arc::new(plans)));
    }

    fn plans(&self, cache: &Cache) -> std::sync::Arc<Plans> {
        let now = std::time::Instant::now();
        let mut memo = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, plans)) = memo.as_ref() {
            if now.saturating_duration_since(*at) < MEMO_FOR {
                return std::sync::Arc::clone(plans);
            }
        }
        let plans = std::sync::Arc::new(plan_all(cache));
        *memo = Some((now, std::sync::Arc::clone(&plans)));
        plans
    }
}

/// Every release (decoded, and as stored) with its plan over the fleet,
/// releases by name.
pub fn plan_fleet(cache: &Cache) -> Vec<(AgentRelease, Value, Plan)> {
    let mut releases: Vec<(AgentRelease, Value)> = cache
        .list("agentreleases", None)
        .iter()
        // One stored under a namespace is not offered until the controller
        // has moved it to the cluster scope (`controllers::agent_releases`).
        .filter(|v| object::namespace(v).is_empty())
        .filter_map(|v| Some((serde_json::from_value(Value::clone(v)).ok()?, Value::clone(v))))
        .collect();
    releases.sort_by(|a, b| a.0.metadata.name.cmp(&b.0.metadata.name));
    if releases.is_empty() {
        // Nothing to plan: the fleet is not read (this runs whenever a
        // robot registers).
        return Vec::new();
    }
    let robots: Vec<RobotFacts> = cache.list("robots", None).iter().map(|r| RobotFacts::of(r)).collect();
    let now = time::now_unix();
    releases
        .into_iter()
        .map(|(r, v)| {
            let p = plan(&r.spec, &robots, now);
            (r, v, p)
        })
        .collect()
}

fn plan_all(cache: &Cache) -> Plans {
    plan_fleet(cache).into_iter().map(|(r, _, p)| (r, p)).collect()
}

/// What a revert of `from` installs on an `arch` robot: the release with
/// the newest version older than `from`'s that has a binary for `arch`.
fn previous<'a>(plans: &'a Plans, from: &AgentRelease, arch: &str) -> Option<&'a AgentRelease> {
    use std::cmp::Ordering::Less;
    plans
        .iter()
        .map(|(r, _)| r)
        .filter(|r| compare_versions(&r.spec.version, &from.spec.version) == Less)
        .filter(|r| r.spec.binaries.iter().any(|b| b.arch == arch))
        .max_by(|a, b| compare_versions(&a.spec.version, &b.spec.version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::agent_release::ReleaseBinary;

    const NOW: i64 = 1_000_000;

    fn robot(name: &str, version: &str, online: bool) -> RobotFacts {
        RobotFacts {
            namespace: "default".into(),
            name: name.into(),
            online_since: online.then_some(0),
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
        p.offered.iter().map(|(_, n)| n.as_str()).collect()
    }

    #[test]
    fn a_window_of_max_parallel_moves_only_when_robots_report_the_version() {
        let mut fleet: Vec<RobotFacts> = ["r1", "r2", "r3", "r4"]
            .iter()
            .map(|n| robot(n, "0.1.0", true))
            .collect();
        let p = plan(&spec(2), &fleet, NOW);
        assert_eq!(names(&p), ["r1", "r2"]);
        assert_eq!((p.status.selected, p.status.updating, p.status.updated), (4, 2, 0));
        // r1 reports the new version: r3 enters; r2 (silent) keeps its place.
        fleet[0].version = Some("0.2.0".into());
        assert_eq!(names(&plan(&spec(2), &fleet, NOW)), ["r2", "r3"]);
        // Offline robots take no place.
        fleet[1].online = false;
        assert_eq!(names(&plan(&spec(2), &fleet, NOW)), ["r3", "r4"]);
        for r in &mut fleet {
            r.version = Some("0.2.0".into());
        }
        let done = plan(&spec(2), &fleet, NOW);
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
        assert_eq!(names(&plan(&s, &fleet, NOW)), ["a"]);
        s.robot_selector = Some(crate::api::types::RobotSelector {
            match_labels: [("ring".to_string(), "prod".to_string())].into(),
            ..Default::default()
        });
        assert_eq!(plan(&s, &fleet, NOW).status.selected, 0);
    }

    #[test]
    fn a_canary_goes_first_and_the_rest_wait_until_it_stays_online_on_the_version_for_min_healthy_time() {
        let mut fleet: Vec<RobotFacts> = (0..10).map(|i| robot(&format!("r{i}"), "0.1.0", true)).collect();
        let mut s = spec(5);
        s.canary = Some(CountOrPercent::Percent(20));
        s.min_healthy_time = Some(crate::api::units::Duration::new("60s"));
        let p = plan(&s, &fleet, NOW);
        assert_eq!(names(&p), ["r0", "r1"], "20% of 10, not maxParallel's 5");
        assert_eq!(p.status.canaries, 2);
        assert!(p.status.message.unwrap().starts_with("canary: 0 of 2 healthy"));
        // r0 reports the version: it keeps its canary place; nobody new.
        fleet[0].version = Some("0.2.0".into());
        fleet[0].version_since = Some(NOW - 10);
        let p = plan(&s, &fleet, NOW);
        assert_eq!(names(&p), ["r1"]);
        assert_eq!((p.status.updated, p.status.healthy), (1, 0));
        assert_eq!(
            p.wake_in,
            Some(Duration::from_secs(51)),
            "looked at again when r0 is due (its report came within second NOW - 10)"
        );
        // Both report; healthy only once Online on it for 60 s.
        fleet[1].version = Some("0.2.0".into());
        fleet[1].version_since = Some(NOW - 100);
        assert!(plan(&s, &fleet, NOW).offered.is_empty(), "r0 not healthy yet");
        // r0 went Offline and came back 30 s ago: its minute starts over.
        fleet[0].version_since = Some(NOW - 100);
        fleet[0].online_since = Some(NOW - 30);
        assert!(plan(&s, &fleet, NOW).offered.is_empty());
        fleet[0].online_since = Some(NOW - 60);
        assert!(
            plan(&s, &fleet, NOW).offered.is_empty(),
            "back Online within second NOW - 60: maybe less than 60 s ago"
        );
        fleet[0].online_since = Some(NOW - 61);
        let p = plan(&s, &fleet, NOW);
        assert_eq!(p.status.healthy, 2);
        assert_eq!(p.status.canaries, 0, "the canary phase is over");
        assert_eq!(names(&p), ["r2", "r3", "r4", "r5", "r6"], "then maxParallel");
        // An Offline canary is not healthy: the phase comes back.
        fleet[1].online = false;
        fleet[1].online_since = None;
        let p = plan(&s, &fleet, NOW);
        assert_eq!(p.status.canaries, 2);
        assert!(p.offered.is_empty());
    }

    #[test]
    fn a_failed_canary_halts_the_rollout() {
        let mut fleet: Vec<RobotFacts> = (0..4).map(|i| robot(&format!("r{i}"), "0.1.0", true)).collect();
        let mut s = spec(4);
        s.canary = Some(CountOrPercent::Count(1));
        fleet[0].last_update = Some(("0.2.0".into(), UpdateOutcome::RolledBack));
        let p = plan(&s, &fleet, NOW);
        assert!(p.offered.is_empty());
        assert!(p
            .status
            .message
            .unwrap()
            .contains("halted: 1 robot(s) refused or rolled back 0.2.0"));
    }

    #[test]
    fn a_halted_release_with_auto_revert_takes_its_online_robots_back() {
        let mut fleet: Vec<RobotFacts> = (0..4).map(|i| robot(&format!("r{i}"), "0.2.0", true)).collect();
        fleet[2].online = false;
        fleet[3].version = Some("0.1.0".into());
        fleet[3].last_update = Some(("0.2.0".into(), UpdateOutcome::RolledBack));
        let mut s = spec(4);
        assert!(plan(&s, &fleet, NOW).revert.is_empty(), "no autoRevert");
        s.auto_revert = true;
        let p = plan(&s, &fleet, NOW);
        let reverted: Vec<&str> = p.revert.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(reverted, ["r0", "r1"], "Online on the version; r2 when it is back");
        assert!(p.offered.is_empty());
        assert!(p.status.message.unwrap().contains("autoRevert: 2 robot(s)"));
        s.max_failures = Some(1);
        assert!(plan(&s, &fleet, NOW).revert.is_empty(), "not halted: nothing reverted");
    }

    #[test]
    fn namespaces_narrow_the_cluster_wide_release() {
        let mut fleet = vec![robot("a", "0.1.0", true), robot("a", "0.1.0", true)];
        fleet[1].namespace = "lab".into();
        let mut s = spec(5);
        assert_eq!(plan(&s, &fleet, NOW).offered.len(), 2, "same name, two namespaces");
        s.namespaces = Some(vec!["lab".into()]);
        let p = plan(&s, &fleet, NOW);
        assert_eq!(
            p.offered.into_iter().collect::<Vec<_>>(),
            [("lab".to_string(), "a".to_string())]
        );
        assert_eq!(p.status.selected, 1);
    }

    #[test]
    fn robots_on_a_newer_version_are_offered_an_older_release_only_with_allow_downgrade() {
        let fleet = vec![robot("new", "0.3.0", true), robot("old", "0.1.0", true)];
        let p = plan(&spec(5), &fleet, NOW);
        assert_eq!(names(&p), ["old"]);
        assert_eq!(p.status.selected, 2);
        let mut down = spec(5);
        down.allow_downgrade = true;
        assert_eq!(names(&plan(&down, &fleet, NOW)), ["new", "old"]);
    }

    #[test]
    fn a_failure_halts_unless_allowed_and_pause_stops_offers() {
        let mut fleet: Vec<RobotFacts> = ["r1", "r2", "r3"].iter().map(|n| robot(n, "0.1.0", true)).collect();
        fleet[0].last_update = Some(("0.2.0".into(), UpdateOutcome::RolledBack));
        let p = plan(&spec(1), &fleet, NOW);
        assert!(p.offered.is_empty());
        assert_eq!(p.status.failed, 1);
        assert!(p.status.message.unwrap().contains("halted"), "the canary failed");
        let mut tolerant = spec(1);
        tolerant.max_failures = Some(1);
        assert_eq!(names(&plan(&tolerant, &fleet, NOW)), ["r2"]);
        tolerant.paused = true;
        assert!(plan(&tolerant, &fleet, NOW).offered.is_empty());
        // A failed update of another version does not count.
        fleet[0].last_update = Some(("0.1.5".into(), UpdateOutcome::Refused));
        assert_eq!(names(&plan(&spec(1), &fleet, NOW)), ["r1"]);
        // Reverted by hand: offered to no one, its robots sent back.
        let mut back = spec(3);
        back.revert = true;
        fleet[0].failed_updates.clear();
        fleet[0].last_update = None;
        fleet[1].version = Some("0.2.0".into());
        let p = plan(&back, &fleet, NOW);
        assert!(p.offered.is_empty());
        assert_eq!(p.revert.iter().map(|k| k.1.as_str()).collect::<Vec<_>>(), ["r2"]);
        assert!(p.status.message.unwrap().starts_with("reverted:"));
        fleet[1].version = Some("0.1.0".into());
        // But a failure of this version stays one after a later update
        // overwrote lastUpdate (the image test re-offered a rolled-back
        // release once a forged one was refused).
        fleet[0].failed_updates = vec!["0.2.0".into(), "0.1.5".into()];
        let p = plan(&spec(1), &fleet, NOW);
        assert!(p.offered.is_empty(), "not offered again, and it halts");
        assert_eq!(p.status.failed, 1);
    }
}
