//! Join tokens and robot identities (the names bound to robot keys), in
//! the store's internal resources (never served by the Kubernetes API).
//!
//! - `_jointokens/<id>`: `{hash, expires, robots, uses?, name?}`: `hash` is
//!   hex SHA-256 of the token's secret (the secret itself is shown once and
//!   never stored; it is also the key of the registration proof), `robots`
//!   counts the Robots the token created, capped by its own `uses` and the
//!   server's limit, whichever is smaller; `name` the one robot name it may
//!   register. Tokens stored without `uses` or `name` have neither bound.
//! - `_robotkeys/<robot name>`: `{namespace, sign, seal, counter}`: the
//!   name's reservation (robot names are unique across namespaces), the
//!   robot's public keys (hex) every request of it is verified with, and
//!   the last request counter persisted (see
//!   [`crate::server::robot_channel`]). Deleting it (`k8s4r robot reset`)
//!   frees the name for a new key.

use super::object::{hex, random_bytes};
use super::store::{Key, Store, StoreError};
use super::time;
use crate::api::agent_protocol::JoinTokenInfo;
use crate::api::robot_channel::{JoinToken, PublicKeys};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

const JOIN: &str = "_jointokens";
const ROBOT_KEYS: &str = "_robotkeys";
/// Bearer tokens of robots before the signed channel started with this; the
/// operator API still refuses them outright.
pub const ROBOT_TOKEN_PREFIX: &str = "k8s4r-robot-";
/// Longest join token id accepted in a lookup (ours are 16 hex digits).
const MAX_ID: usize = 64;

/// Attempts at a join token's counter: replicas onboarding robots with one
/// token at once all swap it (a fleet of thousands registers in minutes).
const SPEND_ATTEMPTS: usize = 50;

pub fn hash(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Compare two hashes without an early exit.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug)]
pub enum TokenError {
    /// Unknown, malformed or expired.
    Invalid,
    /// The robot name is registered in another namespace.
    NameTaken(String),
    /// The name is bound to other keys: a join token alone cannot take over
    /// an existing robot.
    NameRegistered(String),
    /// The join token created as many Robots as it may (the limit).
    JoinTokenUsedUp(UsesLimit),
    /// The join token may register only this robot name.
    BoundToName(String),
    /// Other replicas kept changing the join token's counter: try again.
    Contended,
    Store(StoreError),
}

impl From<StoreError> for TokenError {
    fn from(e: StoreError) -> Self {
        TokenError::Store(e)
    }
}

/// Why a revocation did nothing.
#[derive(Debug)]
pub enum RevokeError {
    NotFound,
    /// The prefix names this many tokens.
    Ambiguous(usize),
    Store(StoreError),
}

/// A stored join token's expiry; a damaged record counts as expired.
fn expires_at(value: &Value) -> i64 {
    value.get("expires").and_then(Value::as_i64).unwrap_or(i64::MIN)
}

/// Which limit caps the Robots a join token may create.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsesLimit {
    /// Its own `uses` (`k8s4r token create --uses N`).
    Token(u64),
    /// The server's `--max-robots-per-join-token`.
    Server(u64),
}

impl UsesLimit {
    pub fn count(self) -> u64 {
        match self {
            UsesLimit::Token(n) | UsesLimit::Server(n) => n,
        }
    }
}

/// The smaller of a stored join token's own `uses` and the server's cap
/// (the token's on a tie: the refusal then names what its creator asked
/// for). A damaged `uses` allows nothing: a bound must never fall away.
fn uses_limit(value: &Value, server: u64) -> UsesLimit {
    match value.get("uses") {
        None | Some(Value::Null) => UsesLimit::Server(server),
        Some(v) => match v.as_u64() {
            Some(own) if own > server => UsesLimit::Server(server),
            Some(own) => UsesLimit::Token(own),
            None => UsesLimit::Token(0),
        },
    }
}

/// The robot name a stored join token is bound to; Err for a damaged
/// binding (the token is then refused, never unbound).
fn bound_name(value: &Value) -> Result<Option<String>, TokenError> {
    match value.get("name") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(n)) => Ok(Some(n.clone())),
        Some(_) => Err(TokenError::Invalid),
    }
}

/// Robots a stored join token created so far (0 for records from before
/// the count existed).
fn robots_created(value: &Value) -> u64 {
    value.get("robots").and_then(Value::as_u64).unwrap_or(0)
}

fn str_field<'a>(value: &'a Value, field: &str) -> &'a str {
    value.get(field).and_then(Value::as_str).unwrap_or("")
}

pub struct Tokens {
    store: Arc<dyn Store>,
    /// Spending a join token is a read-modify-write of its counter: this
    /// replica's registrations take turns (a fleet onboarding with one
    /// token registers hundreds at once, and compare-and-swap retries
    /// alone ran out); other replicas' are still caught by the swap.
    spending: tokio::sync::Mutex<()>,
}

/// The robot a request is verified as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RobotIdentity {
    pub namespace: String,
    pub name: String,
}

/// A stored robot identity: its namespace, keys and persisted counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RobotRecord {
    pub namespace: String,
    pub keys: PublicKeys,
    pub counter: u64,
}

impl RobotRecord {
    fn from_value(v: &Value) -> Option<Self> {
        Some(RobotRecord {
            namespace: str_field(v, "namespace").to_string(),
            keys: PublicKeys::from_hex(str_field(v, "sign"), str_field(v, "seal")).ok()?,
            counter: v.get("counter").and_then(Value::as_u64).unwrap_or(0),
        })
    }

    fn to_value(&self) -> Value {
        json!({"namespace": self.namespace, "sign": self.keys.sign_hex(),
               "seal": self.keys.seal_hex(), "counter": self.counter})
    }
}

/// What [`Tokens::save_counter`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SavedCounter {
    /// Stored (or a higher one was already): the record's revision now.
    At(u64),
    /// Other replicas kept writing the record; the next heartbeat tries
    /// again.
    Contended,
    /// The name is no longer bound to these keys (reset meanwhile).
    Unbound,
}

/// A join token that was valid when checked: what registration spends.
#[derive(Debug)]
pub struct JoinGrant {
    id: String,
    /// SHA-256 of the secret: the key the registration proof is checked with.
    pub secret_hash: [u8; 32],
    /// The one robot name it may register.
    name: Option<String>,
}

/// What a new join token allows (checked against the server's limits by
/// the caller).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinTerms {
    pub ttl_seconds: u64,
    /// Distinct Robots it may create; None: only the server's cap.
    pub uses: Option<u64>,
    /// The one robot name it may register.
    pub name: Option<String>,
}

/// What binding a name to keys did.
#[derive(Debug, PartialEq, Eq)]
pub enum Bound {
    /// A new robot name, one use of the join token spent.
    New,
    /// The name was bound to these very keys already (re-registration).
    Again,
}

impl Tokens {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Tokens {
            store,
            spending: tokio::sync::Mutex::new(()),
        }
    }

    /// A new join token on `terms`, pinning the server key `pin`; returns
    /// (token text, expiry, id). Expired tokens are dropped on the way: they
    /// can never be used again.
    pub async fn create_join(&self, terms: &JoinTerms, pin: [u8; 32]) -> Result<(String, String, String), TokenError> {
        let now = time::now_unix();
        for stored in self.store.list(JOIN, None).await?.items {
            if expires_at(&stored.value) <= now {
                // Losing a race with another replica's sweep is fine.
                let _ = self.store.delete(&stored.key, Some(stored.revision)).await;
            }
        }
        let token = JoinToken {
            pin,
            id: hex(&random_bytes::<8>()),
            secret: hex(&random_bytes::<20>()),
        };
        let expires = now.saturating_add(i64::try_from(terms.ttl_seconds).unwrap_or(i64::MAX));
        let mut value = json!({"hash": hex(&token.secret_hash()), "expires": expires, "robots": 0});
        if let Some(uses) = terms.uses {
            value["uses"] = json!(uses);
        }
        if let Some(name) = &terms.name {
            value["name"] = json!(name);
        }
        self.store.create(&Key::new(JOIN, "", &token.id), value).await?;
        Ok((token.to_text(), time::format_rfc3339(expires), token.id))
    }

    /// Every join token still stored: its id, expiry, use and binding,
    /// never a secret or its hash.
    pub async fn list_join(&self) -> Result<Vec<JoinTokenInfo>, TokenError> {
        let now = time::now_unix();
        let mut items: Vec<JoinTokenInfo> = (self.store.list(JOIN, None).await?.items)
            .iter()
            .map(|s| {
                let expires = expires_at(&s.value);
                JoinTokenInfo {
                    id: s.key.name.clone(),
                    expires: time::format_rfc3339(expires),
                    expired: expires <= now,
                    robots: robots_created(&s.value),
                    uses: s.value.get("uses").and_then(Value::as_u64),
                    name: s.value.get("name").and_then(Value::as_str).map(String::from),
                }
            })
            .collect();
        items.sort_by(|a, b| a.expires.cmp(&b.expires));
        Ok(items)
    }

    /// Revoke the join token named by `id` (as `list` shows it, or any
    /// unambiguous prefix of at least 8 characters), or by its whole text.
    /// Robots already registered keep their keys.
    pub async fn revoke_join(&self, id: &str) -> Result<(), RevokeError> {
        let id = match JoinToken::parse(id) {
            Ok(token) => token.id,
            Err(_) => id.to_ascii_lowercase(),
        };
        let matches: Vec<_> = (self.store.list(JOIN, None).await.map_err(RevokeError::Store)?.items)
            .into_iter()
            .filter(|s| s.key.name == id || (id.len() >= 8 && s.key.name.starts_with(&id)))
            .collect();
        match matches.as_slice() {
            [] => Err(RevokeError::NotFound),
            [one] => self
                .store
                .delete(&one.key, None)
                .await
                .map(|_| ())
                .map_err(RevokeError::Store),
            _ => Err(RevokeError::Ambiguous(matches.len())),
        }
    }

    /// The join token `id`, if it exists and has not expired.
    pub async fn check_join(&self, id: &str) -> Result<JoinGrant, TokenError> {
        if id.is_empty() || id.len() > MAX_ID {
            return Err(TokenError::Invalid);
        }
        let found = self.store.get(&Key::new(JOIN, "", id)).await?;
        let Some(s) = found.filter(|s| expires_at(&s.value) > time::now_unix()) else {
            return Err(TokenError::Invalid);
        };
        // A record without a secret hash (from before the signed channel)
        // can prove nothing.
        let secret_hash = crate::api::hex::decode::<32>(str_field(&s.value, "hash")).ok_or(TokenError::Invalid)?;
        Ok(JoinGrant {
            id: id.to_string(),
            secret_hash,
            name: bound_name(&s.value)?,
        })
    }

    /// Count one more Robot created with `grant`, unless it created its
    /// own `uses` or the server's `limit` already.
    async fn spend(&self, grant: &JoinGrant, limit: u64) -> Result<(), TokenError> {
        let key = Key::new(JOIN, "", &grant.id);
        let _turn = self.spending.lock().await;
        for attempt in 0..SPEND_ATTEMPTS {
            if attempt > 0 {
                // Replicas spending the same token collide: back off a
                // little, by a different amount each, before reading again.
                let jitter = u64::from(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .subsec_nanos(),
                );
                tokio::time::sleep(std::time::Duration::from_millis(jitter % (1 + 2 * attempt as u64))).await;
            }
            let Some(s) = self.store.get(&key).await? else {
                return Err(TokenError::Invalid);
            };
            if expires_at(&s.value) <= time::now_unix() {
                return Err(TokenError::Invalid);
            }
            let created = robots_created(&s.value);
            let limit = uses_limit(&s.value, limit);
            if created >= limit.count() {
                return Err(TokenError::JoinTokenUsedUp(limit));
            }
            let mut value = (*s.value).clone();
            value["robots"] = json!(created.saturating_add(1));
            match self.store.update(&key, value, Some(s.revision)).await {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound(_)) => return Err(TokenError::Invalid),
                Err(e) => return Err(e.into()),
            }
        }
        Err(TokenError::Contended)
    }

    /// The keys robot `name` is bound to, if any (a damaged record counts
    /// as none, so it can be reset but never verifies anything).
    pub async fn robot(&self, name: &str) -> Result<Option<RobotRecord>, StoreError> {
        Ok(self.robot_at(name).await?.map(|(record, _)| record))
    }

    /// [`Tokens::robot`] with the record's store revision.
    pub async fn robot_at(&self, name: &str) -> Result<Option<(RobotRecord, u64)>, StoreError> {
        Ok(self
            .store
            .get(&Key::new(ROBOT_KEYS, "", name))
            .await?
            .and_then(|s| Some((RobotRecord::from_value(&s.value)?, s.revision))))
    }

    /// Bind robot `ns/name` to `record`'s keys. A name not registered yet
    /// spends one of `grant`'s Robots (its own `uses`, at most
    /// `robots_per_join`); a grant bound to another name gets none. A name
    /// bound already is accepted only with the same keys (the caller has
    /// checked the request's counter against `record.counter` then); an
    /// operator frees a name with `k8s4r robot reset NAME`.
    pub async fn bind_robot(
        &self,
        grant: &JoinGrant,
        robots_per_join: u64,
        name: &str,
        record: &RobotRecord,
    ) -> Result<Bound, TokenError> {
        if let Some(bound) = grant.name.as_ref().filter(|b| *b != name) {
            return Err(TokenError::BoundToName(bound.clone()));
        }
        let key = Key::new(ROBOT_KEYS, "", name);
        if let Some(e) = self.store.get(&key).await? {
            let owner = str_field(&e.value, "namespace");
            if owner != record.namespace {
                return Err(TokenError::NameTaken(owner.to_string()));
            }
            let same_keys = RobotRecord::from_value(&e.value).is_some_and(|r| r.keys == record.keys);
            if !same_keys {
                return Err(TokenError::NameRegistered(name.to_string()));
            }
            return Ok(Bound::Again);
        }
        self.spend(grant, robots_per_join).await?;
        match self.store.create(&key, record.to_value()).await {
            Ok(_) => Ok(Bound::New),
            // Another registration of this name won the race.
            Err(StoreError::AlreadyExists(_)) => Err(TokenError::NameRegistered(name.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    /// Persist robot `name`'s counter (raised only: a lower one from a
    /// slower replica never overwrites a higher one). `known`: the record
    /// as this replica last read or wrote it (namespace, revision): written
    /// over without a read, on the condition that it is still at that
    /// revision (a heartbeat's second write costs one store operation, not
    /// two).
    pub async fn save_counter(
        &self,
        name: &str,
        keys: &PublicKeys,
        counter: u64,
        known: Option<(&str, u64)>,
    ) -> Result<SavedCounter, StoreError> {
        let key = Key::new(ROBOT_KEYS, "", name);
        if let Some((namespace, revision)) = known {
            let record = RobotRecord {
                namespace: namespace.to_string(),
                keys: keys.clone(),
                counter,
            };
            match self.store.update(&key, record.to_value(), Some(revision)).await {
                Ok(s) => return Ok(SavedCounter::At(s.revision)),
                Err(StoreError::Conflict { .. }) => {}
                Err(StoreError::NotFound(_)) => return Ok(SavedCounter::Unbound),
                Err(e) => return Err(e),
            }
        }
        for _ in 0..5 {
            let Some(s) = self.store.get(&key).await? else {
                return Ok(SavedCounter::Unbound);
            };
            let Some(mut record) = RobotRecord::from_value(&s.value).filter(|r| &r.keys == keys) else {
                return Ok(SavedCounter::Unbound);
            };
            if record.counter >= counter {
                return Ok(SavedCounter::At(s.revision));
            }
            record.counter = counter;
            match self.store.update(&key, record.to_value(), Some(s.revision)).await {
                Ok(s) => return Ok(SavedCounter::At(s.revision)),
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound(_)) => return Ok(SavedCounter::Unbound),
                Err(e) => return Err(e),
            }
        }
        Ok(SavedCounter::Contended)
    }

    /// Unbind robot `name`'s keys: its agent gets 401 from then on, and a
    /// join token may bind the name to new keys.
    pub async fn reset_robot(&self, name: &str) -> Result<(), RevokeError> {
        match self.store.delete(&Key::new(ROBOT_KEYS, "", name), None).await {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound(_)) => Err(RevokeError::NotFound),
            Err(e) => Err(RevokeError::Store(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::sqlite::SqliteStore;
    use crate::server::store::{BoxFuture, Listed, Stored, Watch};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// SQLite, counting the reads a token check costs.
    struct Counting {
        inner: SqliteStore,
        gets: AtomicUsize,
        lists: AtomicUsize,
    }

    impl Store for Counting {
        fn get<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<Option<Stored>, StoreError>> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            self.inner.get(key)
        }
        fn list<'a>(&'a self, r: &'a str, ns: Option<&'a str>) -> BoxFuture<'a, Result<Listed, StoreError>> {
            self.lists.fetch_add(1, Ordering::SeqCst);
            self.inner.list(r, ns)
        }
        fn create<'a>(&'a self, key: &'a Key, value: Value) -> BoxFuture<'a, Result<Stored, StoreError>> {
            self.inner.create(key, value)
        }
        fn update<'a>(&'a self, k: &'a Key, v: Value, e: Option<u64>) -> BoxFuture<'a, Result<Stored, StoreError>> {
            self.inner.update(k, v, e)
        }
        fn delete<'a>(&'a self, key: &'a Key, e: Option<u64>) -> BoxFuture<'a, Result<Stored, StoreError>> {
            self.inner.delete(key, e)
        }
        fn revision(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
            self.inner.revision()
        }
        fn watch(&self, from: u64) -> Result<Watch, StoreError> {
            self.inner.watch(from)
        }
    }

    impl Counting {
        /// (gets, lists) since the last call.
        fn reads(&self) -> (usize, usize) {
            (
                self.gets.swap(0, Ordering::SeqCst),
                self.lists.swap(0, Ordering::SeqCst),
            )
        }
    }

    fn tokens() -> (Tokens, Arc<Counting>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Counting {
            inner: SqliteStore::open(dir.path(), 100).unwrap(),
            gets: AtomicUsize::new(0),
            lists: AtomicUsize::new(0),
        });
        (Tokens::new(store.clone()), store, dir)
    }

    fn hour() -> JoinTerms {
        JoinTerms {
            ttl_seconds: 3600,
            ..JoinTerms::default()
        }
    }

    const PIN: [u8; 32] = [9; 32];

    async fn join(t: &Tokens, terms: &JoinTerms) -> JoinToken {
        let (text, _, id) = t.create_join(terms, PIN).await.unwrap();
        let token = JoinToken::parse(&text).unwrap();
        assert_eq!((token.id.as_str(), token.pin), (id.as_str(), PIN));
        token
    }

    fn record(ns: &str, keys: &PublicKeys) -> RobotRecord {
        RobotRecord {
            namespace: ns.into(),
            keys: keys.clone(),
            counter: 1,
        }
    }

    fn keys() -> PublicKeys {
        crate::api::robot_channel::KeyPair::generate().public()
    }

    /// Bind `name` in `ns` to `keys` with join token `token`.
    async fn register(
        t: &Tokens,
        token: &JoinToken,
        ns: &str,
        name: &str,
        keys: &PublicKeys,
        limit: u64,
    ) -> Result<Bound, TokenError> {
        let grant = t.check_join(&token.id).await?;
        assert_eq!(grant.secret_hash, token.secret_hash());
        t.bind_robot(&grant, limit, name, &record(ns, keys)).await
    }

    #[tokio::test]
    async fn a_lookup_is_one_read_and_no_scan_and_no_secret_is_stored() {
        let (t, store, _dir) = tokens();
        let token = join(&t, &hour()).await;
        let k = keys();
        register(&t, &token, "default", "a", &k, 10).await.unwrap();
        store.reads();
        assert!(t.check_join(&token.id).await.is_ok());
        assert_eq!(store.reads(), (1, 0));
        assert!(matches!(t.check_join("nope").await, Err(TokenError::Invalid)));
        assert_eq!(store.reads(), (1, 0));
        assert!(matches!(
            t.check_join(&"x".repeat(10_000)).await,
            Err(TokenError::Invalid)
        ));
        assert_eq!(store.reads(), (0, 0), "an oversized id is refused without a lookup");
        assert_eq!(t.robot("a").await.unwrap().unwrap().keys, k);
        assert_eq!(store.reads(), (1, 0));
        for r in [JOIN, ROBOT_KEYS] {
            for s in store.inner.list(r, None).await.unwrap().items {
                assert!(!s.value.to_string().contains(&token.secret), "{r} holds the secret");
            }
        }
    }

    #[tokio::test]
    async fn a_name_bound_to_keys_takes_only_those_keys_until_reset() {
        let (t, _store, _dir) = tokens();
        let token = join(&t, &hour()).await;
        let (mine, theirs) = (keys(), keys());
        assert_eq!(
            register(&t, &token, "default", "r", &mine, 10).await.unwrap(),
            Bound::New
        );
        // A join token alone cannot take the name over; the robot itself can.
        assert!(matches!(
            register(&t, &token, "default", "r", &theirs, 10).await,
            Err(TokenError::NameRegistered(n)) if n == "r"
        ));
        assert_eq!(
            t.robot("r").await.unwrap().unwrap().keys,
            mine,
            "the refusal changed nothing"
        );
        assert_eq!(
            register(&t, &token, "default", "r", &mine, 10).await.unwrap(),
            Bound::Again
        );
        assert!(matches!(
            register(&t, &token, "other", "r", &mine, 10).await,
            Err(TokenError::NameTaken(ns)) if ns == "default"
        ));
        t.reset_robot("r").await.unwrap();
        assert_eq!(t.robot("r").await.unwrap(), None);
        assert!(matches!(t.reset_robot("r").await, Err(RevokeError::NotFound)));
        assert_eq!(
            register(&t, &token, "default", "r", &theirs, 10).await.unwrap(),
            Bound::New
        );
    }

    #[tokio::test]
    async fn a_saved_counter_only_rises_and_stops_at_a_reset() {
        let (t, _store, _dir) = tokens();
        let token = join(&t, &hour()).await;
        let k = keys();
        register(&t, &token, "default", "r", &k, 10).await.unwrap();
        let SavedCounter::At(at) = t.save_counter("r", &k, 50, None).await.unwrap() else {
            panic!("bound")
        };
        assert!(matches!(
            t.save_counter("r", &k, 20, None).await.unwrap(),
            SavedCounter::At(_)
        ));
        assert_eq!(t.robot("r").await.unwrap().unwrap().counter, 50);
        // Over the revision it knows: no read, the same rule.
        let SavedCounter::At(again) = t.save_counter("r", &k, 55, Some(("default", at))).await.unwrap() else {
            panic!("bound")
        };
        assert!(again > at);
        assert_eq!(t.robot_at("r").await.unwrap().unwrap().1, again);
        // A stale revision (another replica wrote 80 meanwhile): a conflict,
        // then the read, which never lowers it.
        t.save_counter("r", &k, 80, Some(("default", again))).await.unwrap();
        assert!(matches!(
            t.save_counter("r", &k, 60, Some(("default", again))).await.unwrap(),
            SavedCounter::At(_)
        ));
        assert_eq!(t.robot("r").await.unwrap().unwrap().counter, 80);
        let unbound = |r: Result<SavedCounter, StoreError>| r.unwrap() == SavedCounter::Unbound;
        assert!(unbound(t.save_counter("r", &keys(), 60, None).await), "other keys");
        assert!(
            unbound(t.save_counter("r", &keys(), 90, Some(("default", 1))).await),
            "other keys, over a stale revision"
        );
        t.reset_robot("r").await.unwrap();
        assert!(unbound(t.save_counter("r", &k, 70, None).await));
        assert!(unbound(t.save_counter("r", &k, 70, Some(("default", again))).await));
        assert_eq!(
            t.robot("r").await.unwrap(),
            None,
            "a save never brings a reset name back"
        );
    }

    #[tokio::test]
    async fn a_join_token_creates_at_most_its_limit_of_robots() {
        let (t, _store, _dir) = tokens();
        let token = join(&t, &hour()).await;
        let a = keys();
        register(&t, &token, "default", "a", &a, 2).await.unwrap();
        register(&t, &token, "default", "b", &keys(), 2).await.unwrap();
        assert!(matches!(
            register(&t, &token, "default", "c", &keys(), 2).await,
            Err(TokenError::JoinTokenUsedUp(UsesLimit::Server(2)))
        ));
        // The robot registering again under its name creates no Robot.
        register(&t, &token, "default", "a", &a, 2).await.unwrap();
        let other = join(&t, &hour()).await;
        register(&t, &other, "default", "c", &keys(), 2).await.unwrap();
    }

    #[tokio::test]
    async fn revoked_and_expired_tokens_bind_nothing() {
        let (t, _store, _dir) = tokens();
        let token = join(&t, &hour()).await;
        assert!(matches!(
            t.revoke_join(&token.id[..4]).await,
            Err(RevokeError::NotFound)
        ));
        t.revoke_join(&token.id[..8]).await.unwrap();
        assert!(matches!(t.check_join(&token.id).await, Err(TokenError::Invalid)));
        let by_text = join(&t, &hour()).await;
        t.revoke_join(&by_text.to_text()).await.unwrap();
        assert!(matches!(t.check_join(&by_text.id).await, Err(TokenError::Invalid)));
        let expired = join(&t, &JoinTerms::default()).await;
        assert!(matches!(t.check_join(&expired.id).await, Err(TokenError::Invalid)));
    }

    #[test]
    fn the_smaller_of_the_tokens_uses_and_the_servers_cap_applies() {
        assert_eq!(uses_limit(&json!({"robots": 0}), 5), UsesLimit::Server(5));
        assert_eq!(uses_limit(&json!({"uses": null}), 5), UsesLimit::Server(5));
        assert_eq!(uses_limit(&json!({"uses": 2}), 5), UsesLimit::Token(2));
        assert_eq!(uses_limit(&json!({"uses": 5}), 5), UsesLimit::Token(5));
        assert_eq!(uses_limit(&json!({"uses": 9}), 5), UsesLimit::Server(5));
        assert_eq!(
            uses_limit(&json!({"uses": "many"}), 5),
            UsesLimit::Token(0),
            "damaged: nothing"
        );
        assert_eq!(
            uses_limit(&json!({"uses": -1}), 5),
            UsesLimit::Token(0),
            "damaged: nothing"
        );
    }

    #[test]
    fn a_damaged_name_binding_refuses_the_token() {
        assert_eq!(bound_name(&json!({})).unwrap(), None);
        assert_eq!(bound_name(&json!({"name": "r1"})).unwrap().as_deref(), Some("r1"));
        assert!(matches!(bound_name(&json!({"name": 7})), Err(TokenError::Invalid)));
    }

    #[tokio::test]
    async fn a_token_with_uses_creates_that_many_robots_and_a_known_name_spends_none() {
        let (t, _store, _dir) = tokens();
        let terms = JoinTerms {
            uses: Some(2),
            ..hour()
        };
        let token = join(&t, &terms).await;
        let a = keys();
        register(&t, &token, "default", "a", &a, 10).await.unwrap();
        register(&t, &token, "default", "a", &a, 10).await.unwrap();
        register(&t, &token, "default", "b", &keys(), 10).await.unwrap();
        assert!(matches!(
            register(&t, &token, "default", "c", &keys(), 10).await,
            Err(TokenError::JoinTokenUsedUp(UsesLimit::Token(2)))
        ));
        // The server's cap, when smaller, wins.
        let capped = join(&t, &terms).await;
        register(&t, &capped, "default", "d", &keys(), 1).await.unwrap();
        assert!(matches!(
            register(&t, &capped, "default", "e", &keys(), 1).await,
            Err(TokenError::JoinTokenUsedUp(UsesLimit::Server(1)))
        ));
        let listed = t.list_join().await.unwrap();
        let mut used: Vec<_> = listed.iter().map(|i| (i.robots, i.uses)).collect();
        used.sort();
        assert_eq!(used, [(1, Some(2)), (2, Some(2))]);
    }

    #[tokio::test]
    async fn a_token_bound_to_a_name_registers_only_that_name() {
        let (t, _store, _dir) = tokens();
        let terms = JoinTerms {
            name: Some("r1".into()),
            ..hour()
        };
        let token = join(&t, &terms).await;
        assert!(matches!(
            register(&t, &token, "default", "r2", &keys(), 10).await,
            Err(TokenError::BoundToName(n)) if n == "r1"
        ));
        register(&t, &token, "default", "r1", &keys(), 10).await.unwrap();
        assert_eq!(t.list_join().await.unwrap()[0].name.as_deref(), Some("r1"));
    }

    #[tokio::test]
    async fn tokens_stored_without_uses_or_name_keep_working() {
        let (t, store, _dir) = tokens();
        let token = JoinToken {
            pin: PIN,
            id: "legacy".into(),
            secret: "s3cret".into(),
        };
        let old = json!({"hash": hex(&token.secret_hash()), "expires": time::now_unix() + 3600, "robots": 0});
        store.create(&Key::new(JOIN, "", "legacy"), old).await.unwrap();
        register(&t, &token, "default", "a", &keys(), 2).await.unwrap();
        register(&t, &token, "default", "b", &keys(), 2).await.unwrap();
        assert!(matches!(
            register(&t, &token, "default", "c", &keys(), 2).await,
            Err(TokenError::JoinTokenUsedUp(UsesLimit::Server(2)))
        ));
        let listed = t.list_join().await.unwrap();
        assert_eq!(
            (listed[0].robots, listed[0].uses, listed[0].name.as_deref()),
            (2, None, None)
        );
        // A record from before the signed channel has no secret hash: it
        // proves nothing.
        let bearer_era = json!({"expires": time::now_unix() + 3600, "robots": 0});
        store.create(&Key::new(JOIN, "", "old"), bearer_era).await.unwrap();
        assert!(matches!(t.check_join("old").await, Err(TokenError::Invalid)));
    }
}
