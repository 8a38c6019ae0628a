//! Browser sessions of the dashboard (`/ui/`): a random id in an HttpOnly
//! cookie names a server-side entry holding the [`User`] who logged in and
//! the session's CSRF token.
//!
//! The table is bounded in count ([`MAX_SESSIONS`]) and every entry expires
//! ([`SESSION_TTL`] after login): when full, expired entries go first, then
//! the oldest. Sessions live in this replica's memory only: a restart (or a
//! request reaching another replica) asks the user to log in again, which
//! is what a lost bearer token in a browser should cost anyway.

use super::User;
use crate::server::tokens::hash;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Name of the session cookie.
pub const COOKIE: &str = "k8s4r_session";
/// How long a session lasts after login.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Most sessions kept at once.
pub const MAX_SESSIONS: usize = 10_000;

/// One logged-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    pub user: User,
    /// Sent back in every mutating form; a forged form has no way to learn it.
    pub csrf: String,
    created: Instant,
    expires: Instant,
}

/// The server-side session table, keyed by the SHA-256 of each id (a
/// timing difference in the lookup can reveal only a hash prefix).
pub struct Sessions {
    table: Mutex<HashMap<String, Session>>,
    ttl: Duration,
    max: usize,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions::new(SESSION_TTL, MAX_SESSIONS)
    }
}

impl Sessions {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Sessions {
            table: Mutex::new(HashMap::new()),
            ttl,
            max: max.max(1),
        }
    }

    /// A new session for `user`; returns the cookie's id and the session.
    pub fn create(&self, user: User) -> (String, Session) {
        let id = random_hex();
        let now = Instant::now();
        let session = Session {
            user,
            csrf: random_hex(),
            created: now,
            // An Instant this far ahead always exists on a running
            // system; if not, the session is born expired (safe side).
            expires: now.checked_add(self.ttl).unwrap_or(now),
        };
        let mut t = self.lock();
        if t.len() >= self.max {
            t.retain(|_, s| s.expires > now);
        }
        while t.len() >= self.max {
            let oldest = t.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| k.clone());
            match oldest {
                Some(k) => t.remove(&k),
                None => break,
            };
        }
        t.insert(hash(&id), session.clone());
        (id, session)
    }

    /// The live session of cookie value `id`; an expired one is removed.
    pub fn get(&self, id: &str) -> Option<Session> {
        if id.is_empty() || id.len() > 128 {
            return None;
        }
        let key = hash(id);
        let mut t = self.lock();
        match t.get(&key) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                t.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Log out: the id names nothing any more.
    pub fn remove(&self, id: &str) {
        self.lock().remove(&hash(id));
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock leaves a consistent map (every
        // change is one insert or remove), so a poisoned lock is usable.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// 32 random bytes from the OS, as hex.
fn random_hex() -> String {
    let mut b = [0u8; 32];
    crate::api::robot_channel::random(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: &str) -> User {
        User {
            name: n.into(),
            groups: vec![],
        }
    }

    #[test]
    fn a_session_is_found_by_its_id_until_logout() {
        let s = Sessions::default();
        let (id, made) = s.create(user("ann"));
        assert_eq!(id.len(), 64);
        let got = s.get(&id).expect("session");
        assert_eq!(got.user.name, "ann");
        assert_eq!(got.csrf, made.csrf);
        assert_ne!(got.csrf, id);
        assert!(s.get("nope").is_none());
        s.remove(&id);
        assert!(s.get(&id).is_none());
    }

    #[test]
    fn ids_are_random() {
        let s = Sessions::default();
        let (a, _) = s.create(user("a"));
        let (b, _) = s.create(user("a"));
        assert_ne!(a, b);
    }

    #[test]
    fn an_expired_session_is_gone() {
        let s = Sessions::new(Duration::ZERO, 10);
        let (id, _) = s.create(user("a"));
        assert!(s.get(&id).is_none());
        assert!(s.is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_drops_the_oldest() {
        let s = Sessions::new(SESSION_TTL, 3);
        let (first, _) = s.create(user("1"));
        let mut last = String::new();
        for i in 0..10 {
            last = s.create(user(&i.to_string())).0;
        }
        assert_eq!(s.len(), 3);
        assert!(s.get(&first).is_none());
        assert!(s.get(&last).is_some());
    }

    #[test]
    fn cookies_are_read_by_name() {
        assert_eq!(cookie("a=1; k8s4r_session=xyz; b=2", COOKIE), Some("xyz"));
        assert_eq!(cookie("a=1", COOKIE), None);
        assert_eq!(cookie("k8s4r_sessionx=1", COOKIE), None);
    }
}
