//! The server's robot-channel keys, kept as the secret `robot-channel-keys`
//! (shared by every replica on one store):
//! `{"keys":[{"sign":<secret hex>,"seal":<secret hex>,"created":unix,"retireAt":unix|null}]}`.
//!
//! The newest key without `retireAt` is *current*: new join tokens pin it
//! and answers move robots to it. A rotation adds a new key and gives the
//! old current one `retireAt` = now + overlap; until then it still answers
//! the robots that name it (with `K8s4r-Next-Key`), after it it is dropped.
//! A replica re-reads the secret every [`REFRESH`] and whenever a request
//! names a key it does not hold, so a rotation on one reaches all.

use crate::api::agent_protocol::{ServerKeyInfo, ServerKeyList};
use crate::api::hex;
use crate::api::robot_channel::{KeyPair, PublicKeys};
use crate::server::secrets;
use crate::server::store::{Store, StoreError};
use crate::server::time;
use serde_json::{json, Value};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

pub const SECRET: &str = "robot-channel-keys";
/// How old this replica's copy of the keys may get.
pub const REFRESH: Duration = Duration::from_secs(30);
/// Soonest re-read for a key id this replica does not know (an unknown id
/// from the network must not cost a store read each time).
const MISS_REFRESH: Duration = Duration::from_secs(1);
/// Longest `--overlap` of a rotation.
pub const MAX_OVERLAP: Duration = Duration::from_secs(365 * 86_400);

/// One key pair of the server and its life.
pub struct ServerKey {
    pub pair: KeyPair,
    pub public: PublicKeys,
    /// [`PublicKeys::id`], what requests name it by.
    pub id: String,
    pub created: i64,
    pub retire_at: Option<i64>,
}

impl ServerKey {
    fn generate(now: i64) -> Self {
        Self::from_pair(KeyPair::generate(), now, None)
    }

    fn from_pair(pair: KeyPair, created: i64, retire_at: Option<i64>) -> Self {
        let public = pair.public();
        ServerKey {
            id: public.id(),
            public,
            pair,
            created,
            retire_at,
        }
    }

    fn from_value(v: &Value) -> Result<Self, String> {
        let secret = |field: &str| {
            v.get(field)
                .and_then(Value::as_str)
                .and_then(hex::decode::<32>)
                .ok_or_else(|| format!("{SECRET}: a key's {field} is not 64 hex digits"))
        };
        let pair = KeyPair::from_secret(&secret("sign")?, &secret("seal")?).map_err(|e| format!("{SECRET}: {e}"))?;
        let created = v.get("created").and_then(Value::as_i64).unwrap_or(0);
        let retire_at = v.get("retireAt").and_then(Value::as_i64);
        Ok(Self::from_pair(pair, created, retire_at))
    }

    fn to_value(&self) -> Value {
        let (sign, seal) = self.pair.secret();
        json!({"sign": hex::encode(&sign), "seal": hex::encode(&seal),
               "created": self.created, "retireAt": self.retire_at})
    }

    /// Still answering at `now`.
    fn held(&self, now: i64) -> bool {
        self.retire_at.is_none_or(|at| at > now)
    }
}

/// The keys as one replica last read them.
struct KeySet {
    /// Held keys only.
    keys: Vec<Arc<ServerKey>>,
    current: Arc<ServerKey>,
    revision: u64,
    loaded: Instant,
}

fn parse(value: &Value, revision: u64, now: i64) -> Result<KeySet, String> {
    let mut keys = Vec::new();
    for v in value.get("keys").and_then(Value::as_array).into_iter().flatten() {
        let key = ServerKey::from_value(v)?;
        if key.held(now) {
            keys.push(Arc::new(key));
        }
    }
    // The newest never-retiring key; while all retire (an interrupted
    // rotation), the one that lives longest.
    let current = keys
        .iter()
        .max_by_key(|k| (k.retire_at.is_none(), k.retire_at, k.created))
        .cloned()
        .ok_or_else(|| format!("{SECRET} holds no key that is still valid"))?;
    Ok(KeySet {
        keys,
        current,
        revision,
        loaded: Instant::now(),
    })
}

pub struct ServerKeys {
    store: Arc<dyn Store>,
    set: RwLock<Arc<KeySet>>,
    /// One re-read at a time; others use the copy they have.
    reloading: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
pub enum KeyError {
    Store(StoreError),
    /// The stored secret is damaged.
    Damaged(String),
    /// Another replica rotated at the same moment.
    Contended,
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::Store(e) => write!(f, "robot channel keys: {e}"),
            KeyError::Damaged(e) => write!(f, "robot channel keys: {e}"),
            KeyError::Contended => {
                f.write_str("another rotation of the robot channel keys ran at the same time; retry")
            }
        }
    }
}

impl std::error::Error for KeyError {}

impl From<StoreError> for KeyError {
    fn from(e: StoreError) -> Self {
        KeyError::Store(e)
    }
}

impl ServerKeys {
    /// The stored keys, or a first key made and stored now.
    pub async fn load_or_create(store: Arc<dyn Store>) -> Result<Self, KeyError> {
        secrets::load_or_create(store.as_ref(), SECRET, || {
            Ok(json!({"keys": [ServerKey::generate(time::now_unix()).to_value()]}))
        })
        .await?;
        let set = Self::read(store.as_ref()).await?;
        Ok(ServerKeys {
            store,
            set: RwLock::new(Arc::new(set)),
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    async fn read(store: &dyn Store) -> Result<KeySet, KeyError> {
        let (value, revision) = secrets::load_versioned(store, SECRET)
            .await?
            .ok_or_else(|| KeyError::Damaged(format!("{SECRET} is gone from the store")))?;
        parse(&value, revision, time::now_unix()).map_err(KeyError::Damaged)
    }

    fn snapshot(&self) -> Arc<KeySet> {
        self.set.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn install(&self, set: KeySet) {
        *self.set.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
    }

    /// Re-read the keys when this copy is older than `age` (one reader at a
    /// time; a failed read keeps the copy and is logged).
    async fn refresh_older_than(&self, age: Duration) {
        if self.snapshot().loaded.elapsed() < age {
            return;
        }
        let Ok(_turn) = self.reloading.try_lock() else {
            return;
        };
        match Self::read(self.store.as_ref()).await {
            Ok(set) => self.install(set),
            Err(e) => {
                log::warn!("{e}; keeping the keys read before");
                // Not again at once for every request.
                let old = self.snapshot();
                self.install(KeySet {
                    keys: old.keys.clone(),
                    current: old.current.clone(),
                    revision: old.revision,
                    loaded: Instant::now(),
                });
            }
        }
    }

    /// Keep this replica's copy fresh (every request calls it; it reads the
    /// store at most every [`REFRESH`]).
    pub async fn refresh(&self) {
        self.refresh_older_than(REFRESH).await;
    }

    /// The key new tokens pin and robots are moved to.
    pub fn current(&self) -> Arc<ServerKey> {
        self.snapshot().current.clone()
    }

    /// The held key `id`, re-reading the keys (at most every second) when
    /// this replica does not know it: another one may have rotated.
    pub async fn find(&self, id: &str) -> Option<Arc<ServerKey>> {
        let now = time::now_unix();
        let held = |set: &KeySet| set.keys.iter().find(|k| k.id == id && k.held(now)).cloned();
        if let Some(k) = held(&self.snapshot()) {
            return Some(k);
        }
        self.refresh_older_than(MISS_REFRESH).await;
        held(&self.snapshot())
    }

    /// Add a new current key; the old current one answers for `overlap`
    /// more and is then dropped. Keys already past their retirement are
    /// removed now.
    pub async fn rotate(&self, overlap: Duration) -> Result<ServerKeyList, KeyError> {
        let now = time::now_unix();
        let retire = time::unix_after(now, overlap);
        let fresh = Self::read(self.store.as_ref()).await?;
        let mut keys: Vec<Value> = Vec::new();
        for k in &fresh.keys {
            let mut v = k.to_value();
            if k.retire_at.is_none_or(|at| at > retire) {
                v["retireAt"] = json!(retire);
            }
            keys.push(v);
        }
        keys.push(ServerKey::generate(now).to_value());
        match secrets::replace(self.store.as_ref(), SECRET, json!({"keys": keys}), Some(fresh.revision)).await {
            Ok(()) => {}
            Err(StoreError::Conflict { .. }) => return Err(KeyError::Contended),
            Err(e) => return Err(e.into()),
        }
        self.install(Self::read(self.store.as_ref()).await?);
        Ok(self.list())
    }

    /// The held keys' public halves.
    pub fn list(&self) -> ServerKeyList {
        let set = self.snapshot();
        ServerKeyList {
            items: set
                .keys
                .iter()
                .map(|k| ServerKeyInfo {
                    id: k.id.clone(),
                    pin: hex::encode(&k.public.pin()),
                    created: time::format_rfc3339(k.created),
                    retire_at: k.retire_at.map(time::format_rfc3339),
                    current: k.id == set.current.id,
                })
                .collect(),
        }
    }
}
