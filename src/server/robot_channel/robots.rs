//! The robots this replica has verified requests of: their keys (read
//! from the store the first time, and again every [`RECHECK`] so a reset
//! on another replica takes effect) and the last counter accepted from
//! each. Counters live in memory and reach the store with the robot's
//! heartbeat writes ([`Robots::save_counter`]), never once per request.

use crate::api::robot_channel::PublicKeys;
use crate::server::store::StoreError;
use crate::server::tokens::{RobotIdentity, RobotRecord, Tokens};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a replica trusts its copy of a robot's keys.
pub const RECHECK: Duration = Duration::from_secs(60);

/// One robot as this replica knows it.
pub struct Robot {
    pub id: RobotIdentity,
    pub keys: PublicKeys,
    counter: Mutex<Counter>,
    loaded: Instant,
}

#[derive(Clone, Copy, Default)]
struct Counter {
    /// The highest counter accepted.
    last: u64,
    /// The highest one written to the store.
    saved: u64,
}

impl Robot {
    fn new(name: &str, record: RobotRecord, counter: Counter) -> Self {
        Robot {
            id: RobotIdentity {
                namespace: record.namespace,
                name: name.to_string(),
            },
            keys: record.keys,
            counter: Mutex::new(counter),
            loaded: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counter> {
        self.counter.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take `counter` if it is above every one accepted; else the last one.
    pub fn accept(&self, counter: u64) -> Result<(), u64> {
        let mut c = self.lock();
        if counter <= c.last {
            return Err(c.last);
        }
        c.last = counter;
        Ok(())
    }
}

pub struct Robots {
    tokens: Arc<Tokens>,
    known: Mutex<HashMap<String, Arc<Robot>>>,
}

impl Robots {
    pub fn new(tokens: Arc<Tokens>) -> Self {
        Robots {
            tokens,
            known: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Robot>>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Robot `name` with the keys it is bound to, if any.
    pub async fn get(&self, name: &str) -> Result<Option<Arc<Robot>>, StoreError> {
        let cached = self.map().get(name).cloned();
        if let Some(r) = cached.filter(|r| r.loaded.elapsed() < RECHECK) {
            return Ok(Some(r));
        }
        let Some(record) = self.tokens.robot(name).await? else {
            self.map().remove(name);
            return Ok(None);
        };
        // The same keys keep the counters this replica has seen (the store
        // may be behind them); new keys start from the stored ones. Merged
        // under the lock, so a request accepted meanwhile is not forgotten.
        let mut map = self.map();
        let mut counter = Counter {
            last: record.counter,
            saved: record.counter,
        };
        if let Some(old) = map
            .get(name)
            .filter(|c| c.keys == record.keys && c.id.namespace == record.namespace)
        {
            let seen = *old.lock();
            counter.last = counter.last.max(seen.last);
            counter.saved = counter.saved.max(seen.saved);
        }
        let robot = Arc::new(Robot::new(name, record, counter));
        map.insert(name.to_string(), robot.clone());
        Ok(Some(robot))
    }

    /// A robot just bound (registered) with `record`, whose registration
    /// used counter `record.counter`.
    pub fn bound(&self, name: &str, record: RobotRecord) {
        let counter = Counter {
            last: record.counter,
            saved: record.counter,
        };
        self.map()
            .insert(name.to_string(), Arc::new(Robot::new(name, record, counter)));
    }

    /// Robot `name` was reset: forget it now (other replicas within
    /// [`RECHECK`]).
    pub fn forget(&self, name: &str) {
        self.map().remove(name);
    }

    /// Write robot `name`'s counter to the store if it rose since the last
    /// write (called with its heartbeat writes).
    pub async fn save_counter(&self, name: &str) -> Result<(), StoreError> {
        let Some(robot) = self.map().get(name).cloned() else {
            return Ok(());
        };
        let Counter { last, saved } = *robot.lock();
        if last <= saved {
            return Ok(());
        }
        if self.tokens.save_counter(name, &robot.keys, last).await? {
            let mut c = robot.lock();
            c.saved = c.saved.max(last);
        } else {
            // Reset (or bound to new keys) meanwhile.
            self.forget(name);
        }
        Ok(())
    }
}
