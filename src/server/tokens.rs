//! Join tokens and per-robot tokens. Only SHA-256 hashes are stored (in the
//! store's internal resources, never served by the Kubernetes API); the
//! secrets are shown once.
//!
//! - `_jointokens/<hash>`: `{expires, robots, uses?, name?}`, `robots`
//!   counting the Robots the token created, capped by its own `uses` and
//!   the server's limit, whichever is smaller; `name` the one robot name it
//!   may register. Tokens stored without `uses` or `name` have neither bound.
//! - `_robottokens/<robot name>`: `{namespace, hash}`, the name's
//!   reservation (robot names are unique across namespaces) and the handle
//!   for revocation by name.
//! - `_robottokenhashes/<hash>`: `{namespace, name}`, the index a request is
//!   authenticated with: one lookup, whichever robot the token belongs to
//!   (a wrong or foreign token never costs a scan).
//!
//! The index is the authority: a token is valid exactly while its index
//! entry exists. Writes keep that safe without transactions: re-issuing and
//! revoking delete the old index entry *first* (a crash in between leaves a
//! robot without a valid token, never a revoked token valid), and a new
//! entry is written before its secret is handed out (a crash leaves an entry
//! for a secret nobody knows). Robot tokens stored before the index existed
//! get their entry at start-up ([`Tokens::index_legacy`]).

use super::object::{hex, random_bytes};
use super::store::{Key, Store, StoreError};
use super::time;
use crate::api::agent_protocol::JoinTokenInfo;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

const JOIN: &str = "_jointokens";
const ROBOT: &str = "_robottokens";
const ROBOT_BY_HASH: &str = "_robottokenhashes";
/// Every robot token starts with this (so the API can tell one at a glance).
pub const ROBOT_TOKEN_PREFIX: &str = "k8s4r-robot-";
/// Longer bearer strings are nobody's token (ours are under 80 bytes).
const MAX_SECRET: usize = 256;
/// Compare-and-swap attempts before a contended write gives up.
const CAS_ATTEMPTS: usize = 5;

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
    /// A valid robot token, but of this other robot.
    OtherRobot(String),
    /// The robot name is registered in another namespace.
    NameTaken(String),
    /// The name is registered and the request does not carry its robot
    /// token: a join token alone cannot take over an existing robot.
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

/// The public id of a join token: the first 12 hex digits of its hash.
fn join_id(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
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

/// The robot a robot token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RobotIdentity {
    pub namespace: String,
    pub name: String,
}

/// A join token that was valid when checked: what registration spends.
#[derive(Debug)]
pub struct JoinGrant {
    hash: String,
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

impl Tokens {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Tokens {
            store,
            spending: tokio::sync::Mutex::new(()),
        }
    }

    /// A new join token on `terms`; returns (secret, expiry, id).
    /// Expired tokens are dropped on the way: they can never be used again.
    pub async fn create_join(&self, terms: &JoinTerms) -> Result<(String, String, String), TokenError> {
        let now = time::now_unix();
        for stored in self.store.list(JOIN, None).await?.items {
            if expires_at(&stored.value) <= now {
                // Losing a race with another replica's sweep is fine.
                let _ = self.store.delete(&stored.key, Some(stored.revision)).await;
            }
        }
        let secret = format!("k8s4r-join-{}", hex(&random_bytes::<20>()));
        let expires = now.saturating_add(i64::try_from(terms.ttl_seconds).unwrap_or(i64::MAX));
        let mut value = json!({"expires": expires, "robots": 0});
        if let Some(uses) = terms.uses {
            value["uses"] = json!(uses);
        }
        if let Some(name) = &terms.name {
            value["name"] = json!(name);
        }
        let h = hash(&secret);
        self.store.create(&Key::new(JOIN, "", &h), value).await?;
        Ok((secret, time::format_rfc3339(expires), join_id(&h).to_string()))
    }

    /// Every join token still stored: its id, expiry, use and binding,
    /// never a secret.
    pub async fn list_join(&self) -> Result<Vec<JoinTokenInfo>, TokenError> {
        let now = time::now_unix();
        let mut items: Vec<JoinTokenInfo> = (self.store.list(JOIN, None).await?.items)
            .iter()
            .map(|s| {
                let expires = expires_at(&s.value);
                JoinTokenInfo {
                    id: join_id(&s.key.name).to_string(),
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
    /// unambiguous prefix of at least 8 hex digits) or by its secret.
    /// Robots already registered keep their own tokens.
    pub async fn revoke_join(&self, id: &str) -> Result<(), RevokeError> {
        let by_secret = hash(id);
        let prefix = id.to_ascii_lowercase();
        let usable_prefix = prefix.len() >= 8 && prefix.bytes().all(|b| b.is_ascii_hexdigit());
        let matches: Vec<_> = (self.store.list(JOIN, None).await.map_err(RevokeError::Store)?.items)
            .into_iter()
            .filter(|s| s.key.name == by_secret || (usable_prefix && s.key.name.starts_with(&prefix)))
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

    /// Revoke robot `name`'s own token: its agent gets 401 from then on and
    /// must register again with a valid join token.
    pub async fn revoke_robot(&self, name: &str) -> Result<(), RevokeError> {
        let key = Key::new(ROBOT, "", name);
        for _ in 0..CAS_ATTEMPTS {
            let Some(found) = self.store.get(&key).await.map_err(RevokeError::Store)? else {
                return Err(RevokeError::NotFound);
            };
            let h = str_field(&found.value, "hash");
            // The token stops working first; then the name is released;
            // then the index entry is removed once more, in case a
            // start-up migration on another replica wrote it back between
            // the two (it re-reads the name record, which is gone by now).
            self.forget_hash(h).await.map_err(RevokeError::Store)?;
            match self.store.delete(&key, Some(found.revision)).await {
                Ok(_) => return self.forget_hash(h).await.map_err(RevokeError::Store),
                // Re-issued meanwhile: revoke the new token too.
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound(_)) => return Err(RevokeError::NotFound),
                Err(e) => return Err(RevokeError::Store(e)),
            }
        }
        Err(RevokeError::Store(StoreError::Backend(format!(
            "robot token {name:?} kept changing while being revoked"
        ))))
    }

    /// Delete the index entry of token hash `h`, if any.
    async fn forget_hash(&self, h: &str) -> Result<(), StoreError> {
        if h.is_empty() {
            return Ok(());
        }
        match self.store.delete(&Key::new(ROBOT_BY_HASH, "", h), None).await {
            Ok(_) | Err(StoreError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn check_join(&self, secret: &str) -> Result<JoinGrant, TokenError> {
        if secret.is_empty() || secret.len() > MAX_SECRET {
            return Err(TokenError::Invalid);
        }
        let h = hash(secret);
        match self.store.get(&Key::new(JOIN, "", &h)).await? {
            Some(s) if expires_at(&s.value) > time::now_unix() => Ok(JoinGrant {
                name: bound_name(&s.value)?,
                hash: h,
            }),
            _ => Err(TokenError::Invalid),
        }
    }

    /// Count one more Robot created with `grant`, unless it created its
    /// own `uses` or the server's `limit` already.
    async fn spend(&self, grant: &JoinGrant, limit: u64) -> Result<(), TokenError> {
        let key = Key::new(JOIN, "", &grant.hash);
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
            let mut value = s.value.clone();
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

    /// Issue (or replace) the token of robot `ns/name`. A name not
    /// registered yet spends one of `grant`'s Robots (its own `uses`, at
    /// most `robots_per_join`); a grant bound to another name gets none. A
    /// name registered already is replaced only for the robot that proves
    /// it is that robot (`proof`: its current robot token); an operator
    /// frees a name with `k8s4r token revoke --robot NAME`.
    pub async fn issue_robot(
        &self,
        grant: &JoinGrant,
        robots_per_join: u64,
        ns: &str,
        name: &str,
        proof: Option<&str>,
    ) -> Result<String, TokenError> {
        if let Some(bound) = grant.name.as_ref().filter(|b| *b != name) {
            return Err(TokenError::BoundToName(bound.clone()));
        }
        let key = Key::new(ROBOT, "", name);
        let existing = self.store.get(&key).await?;
        match &existing {
            Some(e) => {
                let owner = str_field(&e.value, "namespace");
                if owner != ns {
                    return Err(TokenError::NameTaken(owner.to_string()));
                }
                let stored = str_field(&e.value, "hash");
                let proven = proof.is_some_and(|p| p.len() <= MAX_SECRET && same(&hash(p), stored));
                if !proven {
                    return Err(TokenError::NameRegistered(name.to_string()));
                }
                // The old token dies before the new one exists.
                self.forget_hash(str_field(&e.value, "hash")).await?;
            }
            None => self.spend(grant, robots_per_join).await?,
        }
        let secret = format!("{ROBOT_TOKEN_PREFIX}{}", hex(&random_bytes::<24>()));
        let h = hash(&secret);
        let index = Key::new(ROBOT_BY_HASH, "", &h);
        self.store
            .create(&index, json!({"namespace": ns, "name": name}))
            .await?;
        let value = json!({"namespace": ns, "hash": h});
        let reserved = match existing {
            Some(e) => self.store.update(&key, value, Some(e.revision)).await,
            None => self.store.create(&key, value).await,
        };
        if let Err(e) = reserved {
            // Another registration of this name won the race; this token
            // is never handed out.
            let _ = self.store.delete(&index, None).await;
            return Err(e.into());
        }
        Ok(secret)
    }

    /// Which robot `secret` authenticates, if it is the token of `name`:
    /// one lookup of its hash, whatever the answer.
    pub async fn authenticate(&self, name: &str, secret: &str) -> Result<RobotIdentity, TokenError> {
        if secret.len() > MAX_SECRET {
            return Err(TokenError::Invalid);
        }
        let found = self
            .store
            .get(&Key::new(ROBOT_BY_HASH, "", &hash(secret)))
            .await?
            .ok_or(TokenError::Invalid)?;
        let owner = str_field(&found.value, "name");
        if owner != name {
            return Err(TokenError::OtherRobot(owner.to_string()));
        }
        Ok(RobotIdentity {
            namespace: found
                .value
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string(),
            name: name.to_string(),
        })
    }

    /// Give robot tokens issued before the hash index existed their index
    /// entry (idempotent; run at start-up). Returns how many were added.
    pub async fn index_legacy(&self) -> Result<usize, StoreError> {
        let indexed: std::collections::HashSet<String> = (self.store.list(ROBOT_BY_HASH, None).await?.items)
            .into_iter()
            .map(|s| s.key.name)
            .collect();
        let mut added = 0;
        for s in self.store.list(ROBOT, None).await?.items {
            let (ns, h) = (str_field(&s.value, "namespace"), str_field(&s.value, "hash"));
            if h.is_empty() || indexed.contains(h) {
                continue;
            }
            let index = Key::new(ROBOT_BY_HASH, "", h);
            match self
                .store
                .create(&index, json!({"namespace": ns, "name": s.key.name}))
                .await
            {
                Ok(_) => added += 1,
                Err(StoreError::AlreadyExists(_)) => continue,
                Err(e) => return Err(e),
            }
            // Revoked or re-issued meanwhile (on another replica): that
            // token must not come back to life.
            let now = self.store.get(&s.key).await?;
            if now.is_none_or(|n| str_field(&n.value, "hash") != h) {
                self.forget_hash(h).await?;
                added -= 1;
            }
        }
        Ok(added)
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

    async fn register(t: &Tokens, join: &str, ns: &str, name: &str, limit: u64) -> Result<String, TokenError> {
        register_as(t, join, ns, name, limit, None).await
    }

    /// [`register`] carrying a robot token as proof of identity.
    async fn register_as(
        t: &Tokens,
        join: &str,
        ns: &str,
        name: &str,
        limit: u64,
        proof: Option<&str>,
    ) -> Result<String, TokenError> {
        let grant = t.check_join(join).await?;
        t.issue_robot(&grant, limit, ns, name, proof).await
    }

    #[tokio::test]
    async fn every_token_check_is_one_lookup_and_no_scan() {
        let (t, store, _dir) = tokens();
        let (join, _, _) = t.create_join(&hour()).await.unwrap();
        let a = register(&t, &join, "default", "a", 10).await.unwrap();
        let b = register(&t, &join, "default", "b", 10).await.unwrap();
        store.reads();
        assert_eq!(t.authenticate("a", &a).await.unwrap().name, "a");
        assert_eq!(store.reads(), (1, 0));
        assert!(matches!(t.authenticate("a", &b).await, Err(TokenError::OtherRobot(o)) if o == "b"));
        assert_eq!(store.reads(), (1, 0));
        assert!(matches!(
            t.authenticate("a", "k8s4r-robot-nope").await,
            Err(TokenError::Invalid)
        ));
        assert_eq!(store.reads(), (1, 0));
        assert!(matches!(
            t.authenticate("a", &"x".repeat(10_000)).await,
            Err(TokenError::Invalid)
        ));
        assert_eq!(store.reads(), (0, 0), "an oversized bearer is refused without a lookup");
    }

    #[tokio::test]
    async fn reissued_and_revoked_tokens_stop_working() {
        let (t, _store, _dir) = tokens();
        let (join, _, _) = t.create_join(&hour()).await.unwrap();
        let first = register(&t, &join, "default", "r", 10).await.unwrap();
        // A join token alone cannot take the name over; the robot itself can.
        assert!(matches!(
            register(&t, &join, "default", "r", 10).await,
            Err(TokenError::NameRegistered(n)) if n == "r"
        ));
        assert!(matches!(
            register_as(&t, &join, "default", "r", 10, Some("k8s4r-robot-guess")).await,
            Err(TokenError::NameRegistered(_))
        ));
        assert!(
            t.authenticate("r", &first).await.is_ok(),
            "the refusals changed nothing"
        );
        let second = register_as(&t, &join, "default", "r", 10, Some(&first)).await.unwrap();
        assert!(matches!(t.authenticate("r", &first).await, Err(TokenError::Invalid)));
        assert!(t.authenticate("r", &second).await.is_ok());
        assert!(matches!(
            register(&t, &join, "other", "r", 10).await,
            Err(TokenError::NameTaken(ns)) if ns == "default"
        ));
        t.revoke_robot("r").await.unwrap();
        assert!(matches!(t.authenticate("r", &second).await, Err(TokenError::Invalid)));
        assert!(matches!(t.revoke_robot("r").await, Err(RevokeError::NotFound)));
    }

    #[tokio::test]
    async fn tokens_stored_before_the_index_keep_working() {
        let (t, store, _dir) = tokens();
        let secret = format!("{ROBOT_TOKEN_PREFIX}legacy");
        let legacy = json!({"namespace": "lab", "hash": hash(&secret)});
        store.create(&Key::new(ROBOT, "", "old"), legacy).await.unwrap();
        assert!(matches!(t.authenticate("old", &secret).await, Err(TokenError::Invalid)));
        assert_eq!(t.index_legacy().await.unwrap(), 1);
        assert_eq!(t.index_legacy().await.unwrap(), 0, "idempotent");
        let id = t.authenticate("old", &secret).await.unwrap();
        assert_eq!((id.namespace.as_str(), id.name.as_str()), ("lab", "old"));
        t.revoke_robot("old").await.unwrap();
        assert!(matches!(t.authenticate("old", &secret).await, Err(TokenError::Invalid)));
    }

    #[tokio::test]
    async fn a_join_token_creates_at_most_its_limit_of_robots() {
        let (t, _store, _dir) = tokens();
        let (join, _, _) = t.create_join(&hour()).await.unwrap();
        let a = register(&t, &join, "default", "a", 2).await.unwrap();
        register(&t, &join, "default", "b", 2).await.unwrap();
        assert!(matches!(
            register(&t, &join, "default", "c", 2).await,
            Err(TokenError::JoinTokenUsedUp(UsesLimit::Server(2)))
        ));
        // The robot registering again under its name creates no Robot.
        register_as(&t, &join, "default", "a", 2, Some(&a)).await.unwrap();
        let (other, _, _) = t.create_join(&hour()).await.unwrap();
        register(&t, &other, "default", "c", 2).await.unwrap();
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
        let (join, _, _) = t.create_join(&terms).await.unwrap();
        let a = register(&t, &join, "default", "a", 10).await.unwrap();
        register_as(&t, &join, "default", "a", 10, Some(&a)).await.unwrap();
        register(&t, &join, "default", "b", 10).await.unwrap();
        assert!(matches!(
            register(&t, &join, "default", "c", 10).await,
            Err(TokenError::JoinTokenUsedUp(UsesLimit::Token(2)))
        ));
        // The server's cap, when smaller, wins.
        let (capped, _, _) = t.create_join(&terms).await.unwrap();
        register(&t, &capped, "default", "d", 1).await.unwrap();
        assert!(matches!(
            register(&t, &capped, "default", "e", 1).await,
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
        let (join, _, _) = t.create_join(&terms).await.unwrap();
        assert!(matches!(
            register(&t, &join, "default", "r2", 10).await,
            Err(TokenError::BoundToName(n)) if n == "r1"
        ));
        let token = register(&t, &join, "default", "r1", 10).await.unwrap();
        assert_eq!(t.authenticate("r1", &token).await.unwrap().name, "r1");
        assert_eq!(t.list_join().await.unwrap()[0].name.as_deref(), Some("r1"));
    }

    #[tokio::test]
    async fn tokens_stored_without_uses_or_name_keep_working() {
        let (t, store, _dir) = tokens();
        let secret = "k8s4r-join-legacy";
        let legacy = json!({"expires": time::now_unix() + 3600, "robots": 0});
        store.create(&Key::new(JOIN, "", &hash(secret)), legacy).await.unwrap();
        register(&t, secret, "default", "a", 2).await.unwrap();
        register(&t, secret, "default", "b", 2).await.unwrap();
        assert!(matches!(
            register(&t, secret, "default", "c", 2).await,
            Err(TokenError::JoinTokenUsedUp(UsesLimit::Server(2)))
        ));
        let listed = t.list_join().await.unwrap();
        assert_eq!(
            (listed[0].robots, listed[0].uses, listed[0].name.as_deref()),
            (2, None, None)
        );
    }
}
