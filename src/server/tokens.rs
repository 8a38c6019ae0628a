//! Join tokens and per-robot tokens. Only SHA-256 hashes are stored (in the
//! store's internal `_jointokens` / `_robottokens` resources, never served by
//! the Kubernetes API); the secrets are shown once.

use super::object::{hex, random_bytes};
use super::store::{Key, Store, StoreError};
use super::time;
use crate::api::agent_protocol::JoinTokenInfo;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

const JOIN: &str = "_jointokens";
const ROBOT: &str = "_robottokens";
/// Every robot token starts with this (so the API can tell one at a glance).
pub const ROBOT_TOKEN_PREFIX: &str = "k8s4r-robot-";

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

pub struct Tokens {
    store: Arc<dyn Store>,
}

/// The robot a robot token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RobotIdentity {
    pub namespace: String,
    pub name: String,
}

impl Tokens {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Tokens { store }
    }

    /// A new join token valid for `ttl_seconds`; returns (secret, expiry, id).
    /// Expired tokens are dropped on the way: they can never be used again.
    pub async fn create_join(&self, ttl_seconds: u64) -> Result<(String, String, String), TokenError> {
        let now = time::now_unix();
        for stored in self.store.list(JOIN, None).await?.items {
            if expires_at(&stored.value) <= now {
                // Losing a race with another replica's sweep is fine.
                let _ = self.store.delete(&stored.key, Some(stored.revision)).await;
            }
        }
        let secret = format!("k8s4r-join-{}", hex(&random_bytes::<20>()));
        let expires = now.saturating_add(ttl_seconds.min(i64::MAX as u64) as i64);
        let value = json!({"expires": expires});
        let h = hash(&secret);
        self.store.create(&Key::new(JOIN, "", &h), value).await?;
        Ok((secret, time::format_rfc3339(expires), join_id(&h).to_string()))
    }

    /// Every join token still stored: its id and expiry, never a secret.
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
        match self.store.delete(&Key::new(ROBOT, "", name), None).await {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound(_)) => Err(RevokeError::NotFound),
            Err(e) => Err(RevokeError::Store(e)),
        }
    }

    pub async fn check_join(&self, secret: &str) -> Result<(), TokenError> {
        if secret.is_empty() || secret.len() > 256 {
            return Err(TokenError::Invalid);
        }
        match self.store.get(&Key::new(JOIN, "", &hash(secret))).await? {
            Some(s) if expires_at(&s.value) > time::now_unix() => Ok(()),
            _ => Err(TokenError::Invalid),
        }
    }

    /// Issue (or replace) the token of robot `ns/name`.
    pub async fn issue_robot(&self, ns: &str, name: &str) -> Result<String, TokenError> {
        let key = Key::new(ROBOT, "", name);
        let secret = format!("{ROBOT_TOKEN_PREFIX}{}", hex(&random_bytes::<24>()));
        let value = json!({"namespace": ns, "hash": hash(&secret)});
        match self.store.get(&key).await? {
            Some(existing) => {
                let owner = existing.value.get("namespace").and_then(Value::as_str).unwrap_or("");
                if owner != ns {
                    return Err(TokenError::NameTaken(owner.to_string()));
                }
                self.store.update(&key, value, Some(existing.revision)).await?;
            }
            None => {
                self.store.create(&key, value).await?;
            }
        }
        Ok(secret)
    }

    /// Which robot `secret` authenticates, if it is the token of `name`.
    pub async fn authenticate(&self, name: &str, secret: &str) -> Result<RobotIdentity, TokenError> {
        let found = self
            .store
            .get(&Key::new(ROBOT, "", name))
            .await?
            .ok_or(TokenError::Invalid)?;
        let stored = found.value.get("hash").and_then(Value::as_str).unwrap_or("");
        if !same(stored, &hash(secret)) {
            return Err(TokenError::Invalid);
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

    /// Which robot holds `secret` at all (to tell 401 from 403).
    pub async fn owner_of(&self, secret: &str) -> Result<Option<String>, TokenError> {
        let h = hash(secret);
        let all = self.store.list(ROBOT, None).await?;
        Ok(all
            .items
            .into_iter()
            .find(|s| s.value.get("hash").and_then(Value::as_str).is_some_and(|x| same(x, &h)))
            .map(|s| s.key.name))
    }
}
