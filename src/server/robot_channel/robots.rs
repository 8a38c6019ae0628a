//! The robots this replica has verified requests of: their keys (read
//! from the store the first time, and again every [`RECHECK`] so a reset
//! on another replica takes effect) and the last counter accepted from
//! each. Counters live in memory and reach the store with the robot's
//! heartbeat writes ([`Robots::save_counter`]), never once per request.
//!
//! A robot's poller and status reporter take counters from one sequence
//! but send on their own connections, so requests can arrive slightly out
//! of order. Accepted counters are therefore checked against a sliding
//! window, the anti-replay window of IPsec (RFC 4303 section 3.4.3): the
//! highest accepted counter plus a bitmap of the [`WINDOW`] below it; a
//! counter inside the window is taken once, one below it never. After a
//! server restart or a reload from the store, the window starts full:
//! nothing below the stored counter is accepted.
//!
//! Each robot's current session (`api::robot_channel::session`) is kept
//! here too, derived once per session from its encapsulated key (an X25519
//! auth-mode decapsulation) instead of once per request. A robot makes a
//! new session rarely (every hour, or when its agent restarts), so a new
//! one less than [`NEW_SESSION_EVERY`] after the last is refused: forged
//! sessions sent under a robot's name cost the server one derivation per
//! second at most, and the robot signs its requests meanwhile.

use super::server_keys::ServerKey;
use crate::api::robot_channel::{PublicKeys, SessionKeys};
use crate::server::store::StoreError;
use crate::server::tokens::{RobotIdentity, RobotRecord, SavedCounter, Tokens};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many counters below the highest accepted one may still arrive.
pub const WINDOW: u64 = 64;

/// How long a replica trusts its copy of a robot's keys.
pub const RECHECK: Duration = Duration::from_secs(60);

/// The least time between two new sessions of one robot.
pub const NEW_SESSION_EVERY: Duration = Duration::from_secs(1);

/// One robot as this replica knows it.
pub struct Robot {
    pub id: RobotIdentity,
    pub keys: PublicKeys,
    counter: Mutex<Counter>,
    session: Mutex<Option<KnownSession>>,
    loaded: Instant,
}

/// A robot's session as derived here, with the server key it is under.
#[derive(Clone)]
struct KnownSession {
    keys: SessionKeys,
    server_key: String,
    derived: Instant,
}

#[derive(Clone, Copy)]
struct Counter {
    /// The highest counter accepted.
    last: u64,
    /// Bit i set: counter `last - i` was accepted (or is too old to take).
    seen: u64,
    /// The highest one written to the store.
    saved: u64,
    /// The revision of the stored record as this replica last read or
    /// wrote it, if it knows.
    record: Option<u64>,
}

impl Counter {
    /// Known up to `last` (from the store or a registration): nothing at or
    /// below it is accepted.
    fn at(last: u64) -> Counter {
        Counter {
            last,
            seen: u64::MAX,
            saved: last,
            record: None,
        }
    }

    /// Take `counter` once: above the highest, or inside the window and
    /// not taken before. Else the highest accepted.
    fn take(&mut self, counter: u64) -> Result<(), u64> {
        if counter > self.last {
            let shift = counter - self.last;
            self.seen = if shift >= WINDOW { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.last = counter;
            return Ok(());
        }
        let behind = self.last - counter;
        if behind >= WINDOW || self.seen & (1 << behind) != 0 {
            return Err(self.last);
        }
        self.seen |= 1 << behind;
        Ok(())
    }
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
            session: Mutex::new(None),
            loaded: Instant::now(),
        }
    }

    /// The session `enc` names, under the server key `server`: the one
    /// derived before, or derived now (module doc).
    /// Err says why not (for a `Refusal::Session`).
    pub fn session(&self, server: &ServerKey, enc: &[u8; 32]) -> Result<SessionKeys, String> {
        let mut known = self.session.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = known
            .as_ref()
            .filter(|k| k.keys.enc == *enc && k.server_key == server.id)
        {
            return Ok(k.keys.clone());
        }
        if known.as_ref().is_some_and(|k| k.derived.elapsed() < NEW_SESSION_EVERY) {
            return Err(format!("a new session less than {NEW_SESSION_EVERY:?} after the last"));
        }
        let keys = SessionKeys::accept(&self.id.name, &self.keys, &server.pair, enc).map_err(|e| e.to_string())?;
        *known = Some(KnownSession {
            keys: keys.clone(),
            server_key: server.id.clone(),
            derived: Instant::now(),
        });
        Ok(keys)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counter> {
        self.counter.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take `counter` once (see the module doc); else the highest one
    /// accepted.
    pub fn accept(&self, counter: u64) -> Result<(), u64> {
        self.lock().take(counter)
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
        let Some((record, revision)) = self.tokens.robot_at(name).await? else {
            self.map().remove(name);
            return Ok(None);
        };
        // The same keys keep the counters this replica has seen (the store
        // may be behind them); new keys start from the stored ones. Merged
        // under the lock, so a request accepted meanwhile is not forgotten.
        let mut map = self.map();
        let mut counter = Counter::at(record.counter);
        counter.record = Some(revision);
        // The same keys keep the robot's session too.
        let mut session = None;
        if let Some(old) = map
            .get(name)
            .filter(|c| c.keys == record.keys && c.id.namespace == record.namespace)
        {
            let seen = *old.lock();
            if seen.last >= counter.last {
                counter.last = seen.last;
                counter.seen = seen.seen;
            }
            counter.saved = counter.saved.max(seen.saved);
            session = old.session.lock().unwrap_or_else(|e| e.into_inner()).clone();
        }
        let robot = Robot::new(name, record, counter);
        *robot.session.lock().unwrap_or_else(|e| e.into_inner()) = session;
        let robot = Arc::new(robot);
        map.insert(name.to_string(), robot.clone());
        Ok(Some(robot))
    }

    /// A robot just bound (registered) with `record`, whose registration
    /// used counter `record.counter`.
    pub fn bound(&self, name: &str, record: RobotRecord) {
        let counter = Counter::at(record.counter);
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
        let Counter {
            last, saved, record, ..
        } = *robot.lock();
        if last <= saved {
            return Ok(());
        }
        let known = record.map(|rev| (robot.id.namespace.as_str(), rev));
        match self.tokens.save_counter(name, &robot.keys, last, known).await? {
            SavedCounter::Unbound => {
                // Reset (or bound to new keys) meanwhile.
                self.forget(name);
            }
            saved => {
                let mut c = robot.lock();
                c.saved = c.saved.max(last);
                c.record = match saved {
                    SavedCounter::At(rev) => Some(rev),
                    _ => None,
                };
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod window_tests {
    use super::{Counter, WINDOW};

    #[test]
    fn counters_out_of_order_inside_the_window_are_taken_once_and_older_ones_never() {
        let mut c = Counter::at(1000);
        // Nothing at or below what the store knew.
        assert_eq!(c.take(1000), Err(1000));
        assert_eq!(c.take(999), Err(1000));
        // The status reporter's 1002 overtakes the poller's 1001.
        assert_eq!(c.take(1002), Ok(()));
        assert_eq!(c.take(1001), Ok(()));
        // Each once.
        assert_eq!(c.take(1001), Err(1002));
        assert_eq!(c.take(1002), Err(1002));
        // Far ahead: everything the window no longer covers is refused.
        assert_eq!(c.take(1002 + WINDOW + 5), Ok(()));
        assert_eq!(c.take(1002 + 5), Err(1002 + WINDOW + 5));
        // Just inside the new window, not seen: taken once.
        let top = 1002 + WINDOW + 5;
        assert_eq!(c.take(top - (WINDOW - 1)), Ok(()));
        assert_eq!(c.take(top - (WINDOW - 1)), Err(top));
        assert_eq!(c.take(top - WINDOW), Err(top));
    }
}
