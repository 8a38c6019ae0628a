//! Live facts about robots that are too hot for the store: when each robot
//! last polled, and the revision of its desired Task set (bumped whenever a
//! Task is placed on, removed from, or changed on that robot) with a wake-up
//! for its pending long poll.
//!
//! The poll interval adapts to the fleet: with N robots and a target of R
//! polls per second, robots are told to wait max(base, N / R) — the server's
//! request rate stays bounded however large the fleet (as Nomad stretches
//! heartbeat TTLs).

use crate::server::controllers::cache::Change;
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
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            poll_interval: Duration::from_secs(30),
            offline_after: None,
            max_poll_rate: 500.0,
        }
    }
}

struct Entry {
    last_seen: Instant,
    /// When lastHeartbeatTime was last written to the Robot.
    persisted: Option<Instant>,
    revision: u64,
    notify: Arc<Notify>,
}

pub struct Fleet {
    cfg: FleetConfig,
    robots: Mutex<HashMap<(String, String), Entry>>,
    base_revision: AtomicU64,
    started: Instant,
}

type NsName = (String, String);

fn placement(v: &Value) -> Option<(String, i64)> {
    let robot = v.get("spec")?.get("targetRobot")?.as_str().filter(|s| !s.is_empty())?;
    Some((robot.to_string(), crate::server::object::generation(v)))
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

    pub fn poll_interval(&self) -> Duration {
        let n = self.lock().len() as f64;
        let stretched = Duration::from_secs_f64(n / self.cfg.max_poll_rate.max(1.0));
        self.cfg.poll_interval.max(stretched)
    }

    pub fn offline_after(&self) -> Duration {
        let floor = self.poll_interval() * 3;
        self.cfg
            .offline_after
            .map_or(floor, |o| o.max(self.poll_interval() + Duration::from_secs(1)))
    }

    /// Record a poll. Returns true when the Robot's heartbeat should be
    /// written to the store (first poll since start, or the persisted one
    /// is getting old).
    pub fn heartbeat(&self, ns: &str, name: &str) -> bool {
        let refresh = self.offline_after() / 3;
        let mut map = self.lock();
        let e = self.entry(&mut map, ns, name);
        let now = Instant::now();
        e.last_seen = now;
        let due = e.persisted.is_none_or(|p| now.duration_since(p) >= refresh);
        if due {
            e.persisted = Some(now);
        }
        due
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

    pub fn forget(&self, ns: &str, name: &str) {
        self.lock().remove(&(ns.to_string(), name.to_string()));
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
        for (robot, _) in [before, after].into_iter().flatten() {
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
