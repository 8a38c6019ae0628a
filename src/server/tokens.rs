//! Join tokens and per-robot tokens. Only SHA-256 hashes are stored (in the
//! store's internal `_jointokens` / `_robottokens` resources, never served by
//! the Kubernetes API); the secrets are shown once.

use super::object::{hex, random_bytes};
use super::store::{Key, Store, StoreError};
use super::time;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

const JOIN: &str = "_jointokens";
const ROBOT: &str = "_robottokens";

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

    /// A new join token valid for `ttl_seconds`; returns (secret, expiry).
    pub async fn create_join(&self, ttl_seconds: u64) -> Result<(String, String), TokenError> {
        let secret = format!("k8s4r-join-{}", hex(&random_bytes::<20>()));
        let expires = time::now_unix() + ttl_seconds as i64;
        let value = json!({"expires": expires});
        self.store.create(&Key::new(JOIN, "", &hash(&secret)), value).await?;
        Ok((secret, time::format_rfc3339(expires)))
    }

    pub async fn check_join(&self, secret: &str) -> Result<(), TokenError> {
        if secret.is_empty() || secret.len() > 256 {
            return Err(TokenError::Invalid);
        }
        let found = self.store.get(&Key::new(JOIN, "", &hash(secret))).await?;
        match found.and_then(|s| s.value.get("expires").and_then(Value::as_i64)) {
            Some(expires) if expires > time::now_unix() => Ok(()),
            _ => Err(TokenError::Invalid),
        }
    }

    /// Issue (or replace) the token of robot `ns/name`.
    pub async fn issue_robot(&self, ns: &str, name: &str) -> Result<String, TokenError> {
        let key = Key::new(ROBOT, "", name);
        let secret = format!("k8s4r-robot-{}", hex(&random_bytes::<24>()));
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
