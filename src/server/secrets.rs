//! Server secrets kept in the store (`_secrets/<name>`, never served by
//! the Kubernetes API): the TLS CA and serving key, the robot channel's
//! signing keys. In the store rather than in files so that every replica
//! on one etcd shares them, and a SQLite server keeps them in its `--data`.
//!
//! The first replica to start creates a secret; a replica that loses the
//! race reads the winner's, so all replicas end up with one value.

use super::store::{Key, Store, StoreError};
use serde_json::Value;

const SECRETS: &str = "_secrets";

fn key(name: &str) -> Key {
    Key::new(SECRETS, "", name)
}

/// The secret `name`, if stored.
pub async fn load(store: &dyn Store, name: &str) -> Result<Option<Value>, StoreError> {
    Ok(store
        .get(&key(name))
        .await?
        .map(|s| std::sync::Arc::unwrap_or_clone(s.value)))
}

/// The secret `name` and its revision (to [`replace`] it), if stored.
pub async fn load_versioned(store: &dyn Store, name: &str) -> Result<Option<(Value, u64)>, StoreError> {
    Ok(store
        .get(&key(name))
        .await?
        .map(|s| (std::sync::Arc::unwrap_or_clone(s.value), s.revision)))
}

/// The secret `name`; made by `create` and stored when there is none yet.
/// `create` may run and its value be dropped when another replica stored
/// one first: it must have no effect but its result.
pub async fn load_or_create(
    store: &dyn Store,
    name: &str,
    create: impl FnOnce() -> Result<Value, String>,
) -> Result<Value, StoreError> {
    if let Some(v) = load(store, name).await? {
        return Ok(v);
    }
    let fresh = create().map_err(|e| StoreError::Backend(format!("creating secret {name}: {e}")))?;
    match store.create(&key(name), fresh).await {
        Ok(stored) => Ok(std::sync::Arc::unwrap_or_clone(stored.value)),
        Err(StoreError::AlreadyExists(_)) => load(store, name)
            .await?
            .ok_or_else(|| StoreError::Backend(format!("secret {name} vanished while being created"))),
        Err(e) => Err(e),
    }
}

/// Replace the secret `name` (key rotation); `expected` is the revision
/// read, so two replicas rotating at once do not both win.
pub async fn replace(store: &dyn Store, name: &str, value: Value, expected: Option<u64>) -> Result<(), StoreError> {
    store.update(&key(name), value, expected).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::sqlite::SqliteStore;

    #[tokio::test]
    async fn the_first_value_stays_and_later_creators_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), 100).unwrap();
        let a = load_or_create(&store, "k", || Ok(serde_json::json!({"v": 1})))
            .await
            .unwrap();
        let b = load_or_create(&store, "k", || Ok(serde_json::json!({"v": 2})))
            .await
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a["v"], 1);
        let failed = load_or_create(&store, "other", || Err("no entropy".into())).await;
        assert!(failed.unwrap_err().to_string().contains("no entropy"));
    }
}
