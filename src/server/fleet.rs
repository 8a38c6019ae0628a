//! Live facts about robots that are too hot for the store: when each robot
//! last polled, and the revision of its desired Task set (bumped whenever a
//! Task is placed on, removed from, or changed on that robot) with a wake-up
//! for its pending long poll.
//!
//! The poll interval adapts to the fleet: with N robots and a target of R
//! polls per second, robots are told to wait max(base, N / R) — the server's
//! request rate stays bounded however large the fleet (as Nomad stretches
//! heartbeat TTLs).

use crate::server::cache::Change;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// Base long-poll wait / heartbeat interval.
    pub poll_interval: Duration,
    /// Offline after this long without a poll; default 3 × the interval.
    pub offline_after: Option<Duration>,
    /// Target polls per second across the fleet.
    pub max_poll_rate: f64,
    /// Versions of each Job's spec kept (`--job-history`): the Rollout
    /// objects `k8s4r job history` lists and a revert can go back to.
    pub job_history: usize,
    /// Longest a long poll is held on the agent listener for an agent that
    /// asks (`--poll-hold`, zero: never longer than the poll interval):
    /// the connection's TCP keepalive is the heartbeat meanwhile.
    pub poll_hold: Duration,
}

/// Most `--job-history`: each version holds a whole Job spec.
pub const MAX_JOB_HISTORY: usize = 1000;

/// `--poll-hold`'s default: an idle robot opens one poll an hour.
pub const DEFAULT_POLL_HOLD: Duration = Duration::from_secs(3600);

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            poll_interval: Duration::from_secs(30),
            offline_after: None,
            max_poll_rate: 500.0,
            job_history: 10,
            poll_hold: DEFAULT_POLL_HOLD,
        }
    }
}

struct Entry {
    last_seen: Instant,
    /// When lastHeartbeatTime was last written to the Robot.
    persisted: Option<Instant>,
    revision: u64,
    notify: Arc<Notify>,
    /// The desired sets last delivered to it, for delta answers.
    delivered: Vec<Arc<crate::server::assignments::Delivered>>,
}

pub struct Fleet {
    cfg: FleetConfig,
    robots: Mutex<HashMap<(String, String), Entry>>,
    base_revision: AtomicU64,
    started: Instant,
}

type NsName = (String, String);

/// What [`Fleet::heartbeat`] asks of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heartbeat {
    /// Write `lastHeartbeatTime` now.
    Write,
    /// The stored one stays fresh this much longer.
    FreshFor(Duration),
}

/// How old the Robot's stored `lastHeartbeatTime` is (whole seconds, as
/// Kubernetes writes times; zero if a replica's clock put it ahead), or
/// None if it has none.
pub fn stored_heartbeat_age(robot: &Value) -> Option<Duration> {
    let at = robot
        .get("status")?
        .get("lastHeartbeatTime")?
        .as_str()
        .and_then(crate::server::time::parse_rfc3339)?;
    let secs = crate::server::time::now_unix().saturating_sub(at).max(0);
    Some(Duration::from_secs(secs.unsigned_abs()))
}

/// What of a Task its robot acts on: where it is, its spec (generation),
/// and a rollout's override of the task's update lock (an annotation, so no
/// new generation, but the robot must hear of it).
fn placement(v: &Value) -> Option<(String, i64, bool)> {
    let robot = crate::server::stored_task::target_robot(v)?;
    let lock_override = crate::server::object::annotation(v, crate::agent::rollback::ANN_LOCK_OVERRIDE).is_some();
    Some((robot.to_string(), crate::server::object::generation(v), lock_override))
}

impl Fleet {
    pub fn new(cfg: FleetConfig) -> Self {
        Fleet {
            cfg,
            robots: Mutex::new(HashMap::new()),
            base_revision: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NsName, Entry>> {
        self.robots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entry<'a>(&self, map: &'a mut HashMap<NsName, Entry>, ns: &str, name: &str) -> &'a mut Entry {
        // Never 0: agents start with since=0 and must get a first answer.
        let base = self.base_revision.load(Ordering::Relaxed).max(1);
        map.entry((ns.to_string(), name.to_string())).or_insert_with(|| Entry {
            // Never polled since start: pretend it was seen at start, so a
            // restarted server gives robots a full interval to come back.
            last_seen: self.started,
            persisted: None,
            revision: base,
            notify: Arc::new(Notify::new()),
            delivered: Vec::new(),
        })
    }

    /// The store revision the cache started from: robots' revisions start
    /// there, so any agent poll after a restart gets a full answer.
    pub fn set_base_revision(&self, rev: u64) {
        self.base_revision.store(rev, Ordering::Relaxed);
        // Robots already known (a re-list after the watch fell behind):
        // their sets may have changed unseen.
        for e in self.lock().values_mut() {
            if e.revision < rev {
                e.revision = rev;
                e.notify.notify_waiters();
            }
        }
    }

    /// Versions of each Job's spec to keep.
    pub fn job_history(&self) -> usize {
        self.cfg.job_history.max(1)
    }

    pub fn poll_interval(&self) -> Duration {
        let n = self.lock().len() as f64;
        let stretched = Duration::from_secs_f64(n / self.cfg.max_poll_rate.max(1.0));
        self.cfg.poll_interval.max(stretched)
    }

    pub fn offline_after(&self) -> Duration {
        let interval = self.poll_interval();
        self.cfg.offline_after.map_or(interval.saturating_mul(3), |o| {
            o.max(interval.saturating_add(Duration::from_secs(1)))
        })
    }

    /// How long a written heartbeat counts as fresh: a third of the
    /// offline limit. A robot that keeps polling never has a stored
    /// `lastHeartbeatTime` older than this (see [`Fleet::heartbeat`]), and
    /// each robot costs one store write per period, not one per poll.
    pub fn heartbeat_refresh(&self) -> Duration {
        self.offline_after() / 3
    }

    /// Record a sign of life (a poll, a report, a long poll still held
    /// open) and decide whether the Robot's `lastHeartbeatTime` must be
    /// written. `stored_age` is the age of the one the store holds, which
    /// any replica may have written ([`stored_heartbeat_age`]); this
    /// replica's own last write counts too (the cache may not show it yet).
    ///
    /// [`Heartbeat::Write`] claims the write: the caller must write it, and
    /// call [`Fleet::forget_persisted`] if that fails.
    pub fn heartbeat(&self, ns: &str, name: &str, stored_age: Option<Duration>) -> Heartbeat {
        self.heartbeat_seen(ns, name, stored_age, Instant::now())
    }

    /// [`Fleet::heartbeat`] for a sign of life `seen` earlier than now (a
    /// held poll's last acknowledgement): the heartbeat written is that
    /// moment's, and nothing is written when it is no newer than the last
    /// one written.
    pub fn heartbeat_seen(&self, ns: &str, name: &str, stored_age: Option<Duration>, seen: Instant) -> Heartbeat {
        let refresh = self.heartbeat_refresh();
        let mut map = self.lock();
        let e = self.entry(&mut map, ns, name);
        let now = Instant::now();
        e.last_seen = e.last_seen.max(seen);
        let own = e.persisted.map(|p| now.saturating_duration_since(p));
        let age = [stored_age, own].into_iter().flatten().min();
        let newer = e.persisted.is_none_or(|p| seen > p);
        match age.and_then(|a| refresh.checked_sub(a)).filter(|left| !left.is_zero()) {
            Some(left) => Heartbeat::FreshFor(left),
            None if !newer => Heartbeat::FreshFor(refresh),
            None => {
                e.persisted = Some(seen);
                Heartbeat::Write
            }
        }
    }

    /// How long a poll on the agent listener may be held for an agent that
    /// asks: `--poll-hold`, never below the poll interval; None when
    /// `--poll-hold 0` turned holding off.
    pub fn poll_hold(&self) -> Option<Duration> {
        (!self.cfg.poll_hold.is_zero()).then(|| self.cfg.poll_hold.max(self.poll_interval()))
    }

    /// The heartbeat was just written (at registration).
    pub fn wrote_heartbeat(&self, ns: &str, name: &str) {
        let mut map = self.lock();
        let e = self.entry(&mut map, ns, name);
        let now = Instant::now();
        e.last_seen = now;
        e.persisted = Some(now);
    }

    /// Force the next heartbeat to be written (after a failed write).
    pub fn forget_persisted(&self, ns: &str, name: &str) {
        if let Some(e) = self.lock().get_mut(&(ns.to_string(), name.to_string())) {
            e.persisted = None;
        }
    }

    pub fn last_seen(&self, ns: &str, name: &str) -> Instant {
        self.lock()
            .get(&(ns.to_string(), name.to_string()))
            .map_or(self.started, |e| e.last_seen)
    }

    /// The robot's desired-set revision and its wake-up.
    pub fn subscribe(&self, ns: &str, name: &str) -> (u64, Arc<Notify>) {
        let mut map = self.lock();
        let e = self.entry(&mut map, ns, name);
        (e.revision, e.notify.clone())
    }

    pub fn revision(&self, ns: &str, name: &str) -> u64 {
        let mut map = self.lock();
        self.entry(&mut map, ns, name).revision
    }

    /// The sets last delivered to the robot, oldest first.
    pub fn delivered(&self, ns: &str, name: &str) -> Vec<Arc<crate::server::assignments::Delivered>> {
        self.lock()
            .get(&(ns.to_string(), name.to_string()))
            .map(|e| e.delivered.clone())
            .unwrap_or_default()
    }

    /// The robot was sent `set`.
    pub fn remember_delivered(&self, ns: &str, name: &str, set: Arc<crate::server::assignments::Delivered>) {
        let mut map = self.lock();
        crate::server::assignments::remember(&mut self.entry(&mut map, ns, name).delivered, set);
    }

    /// Forget the sets last delivered to the robot: its next answer is the
    /// complete set (the agent then checks every task's status again).
    pub fn forget_delivered(&self, ns: &str, name: &str) {
        if let Some(e) = self.lock().get_mut(&(ns.to_string(), name.to_string())) {
            e.delivered.clear();
        }
    }

    pub fn forget(&self, ns: &str, name: &str) {
        self.lock().remove(&(ns.to_string(), name.to_string()));
    }

    /// Answer every long poll held here now (their answers carry what
    /// changed for all robots, such as a rotated server key's endorsement).
    pub fn wake_all(&self) {
        for e in self.lock().values() {
            e.notify.notify_waiters();
        }
    }

    /// `robot`'s desired set changed at `revision`: answer its long poll.
    pub fn wake(&self, ns: &str, robot: &str, revision: u64) {
        let mut map = self.lock();
        let e = self.entry(&mut map, ns, robot);
        e.revision = e.revision.max(revision);
        e.notify.notify_waiters();
    }

    /// A Task changed: wake the robots whose desired set it changes.
    pub fn on_task_change(&self, c: &Change) {
        let before = c.prev.as_deref().and_then(placement);
        let after = c.new.as_deref().and_then(placement);
        if before == after {
            return;
        }
        let mut map = self.lock();
        for (robot, _, _) in [before, after].into_iter().flatten() {
            let e = self.entry(&mut map, &c.namespace, &robot);
            e.revision = e.revision.max(c.revision);
            e.notify.notify_waiters();
        }
    }

    /// Number of robots known to the fleet table.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fleet() -> Fleet {
        Fleet::new(FleetConfig {
            poll_interval: Duration::from_secs(1),
            offline_after: Some(Duration::from_secs(6)),
            max_poll_rate: 500.0,
            job_history: 10,
            poll_hold: DEFAULT_POLL_HOLD,
        })
    }

    const S: Duration = Duration::from_secs(1);

    fn fresh_for(h: Heartbeat) -> Duration {
        match h {
            Heartbeat::FreshFor(d) => d,
            Heartbeat::Write => panic!("expected no write"),
        }
    }

    #[test]
    fn refresh_is_a_third_of_the_offline_limit() {
        assert_eq!(fleet().heartbeat_refresh(), 2 * S);
    }

    #[test]
    fn a_heartbeat_is_written_once_per_refresh_period() {
        let f = fleet();
        assert_eq!(f.heartbeat("ns", "r", None), Heartbeat::Write, "nothing stored yet");
        // Claimed: a concurrent request (or the cache not showing the write
        // yet) does not write again.
        let left = fresh_for(f.heartbeat("ns", "r", None));
        assert!(left <= 2 * S && left > S, "{left:?}");
        let left = fresh_for(f.heartbeat("ns", "r", Some(10 * S)));
        assert!(left > S, "this replica's own write is newer than the cache's: {left:?}");
    }

    #[test]
    fn another_replicas_write_counts() {
        let f = fleet();
        // Written by another replica within the last whole second.
        assert_eq!(fresh_for(f.heartbeat("ns", "r", Some(Duration::ZERO))), 2 * S);
        assert_eq!(fresh_for(f.heartbeat("ns", "r", Some(S))), S);
        assert_eq!(
            f.heartbeat("ns", "r", Some(2 * S)),
            Heartbeat::Write,
            "due at the refresh age"
        );
        assert!(matches!(f.heartbeat("ns", "r", Some(3 * S)), Heartbeat::FreshFor(_)));
    }

    #[test]
    fn a_failed_write_is_retried_at_the_next_sign_of_life() {
        let f = fleet();
        assert_eq!(f.heartbeat("ns", "r", Some(5 * S)), Heartbeat::Write);
        f.forget_persisted("ns", "r");
        assert_eq!(f.heartbeat("ns", "r", Some(5 * S)), Heartbeat::Write);
    }

    #[test]
    fn every_sign_of_life_is_seen_even_without_a_write() {
        let f = fleet();
        f.wrote_heartbeat("ns", "r");
        let before = f.last_seen("ns", "r");
        assert!(matches!(f.heartbeat("ns", "r", None), Heartbeat::FreshFor(_)));
        assert!(f.last_seen("ns", "r") >= before);
        assert!(f.last_seen("ns", "r").elapsed() < S);
    }

    #[test]
    fn stored_age_in_whole_seconds() {
        let at = |t: i64| json!({"status": {"lastHeartbeatTime": crate::server::time::format_rfc3339(t)}});
        let now = crate::server::time::now_unix();
        let age = stored_heartbeat_age(&at(now - 5)).unwrap();
        assert!((5..=6).contains(&age.as_secs()), "{age:?}");
        assert_eq!(
            stored_heartbeat_age(&at(now + 3600)),
            Some(Duration::ZERO),
            "a clock ahead"
        );
        assert_eq!(stored_heartbeat_age(&json!({"status": {}})), None);
        assert_eq!(
            stored_heartbeat_age(&json!({"status": {"lastHeartbeatTime": "garbage"}})),
            None
        );
    }
}
