//! Kubernetes `Event`s (core/v1) about our objects — scheduled, unschedulable,
//! lost, rescheduled, started, exited — so `kubectl describe` tells the
//! story. Best effort, as in Kubernetes: recorded by a background writer
//! through a bounded queue (dropped when full), repeated events are folded
//! into one with a count, and events older than an hour are removed.

use super::object;
use super::store::{Key, Store, StoreError};
use super::time;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::sync::mpsc;

pub const RESOURCE: &str = "events";
/// Events older than this are deleted.
pub const TTL_SECONDS: i64 = 3600;
const QUEUE: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Normal,
    Warning,
}

struct Pending {
    involved: Value,
    kind: Kind,
    reason: String,
    message: String,
}

/// Hands events to the background writer.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Pending>,
}

impl Recorder {
    /// Start the writer on the current runtime.
    pub fn start(store: Arc<dyn Store>) -> Recorder {
        let expiring = store.clone();
        crate::server::panics::spawn_essential("the event expiry", async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                if let Err(e) = expire(expiring.as_ref()).await {
                    log::warn!("expiring events: {e}");
                }
            }
        });
        let (tx, mut rx) = mpsc::channel::<Pending>(QUEUE);
        crate::server::panics::spawn_essential("the event writer", async move {
            while let Some(p) = rx.recv().await {
                if let Err(e) = write(store.as_ref(), p).await {
                    log::debug!("recording an event: {e}");
                }
            }
        });
        Recorder { tx }
    }

    /// Record an event about `obj` (one of our objects, as stored).
    pub fn record(&self, obj: &Value, kind: Kind, reason: &str, message: impl Into<String>) {
        let involved = json!({
            "apiVersion": obj.get("apiVersion").cloned().unwrap_or(Value::Null),
            "kind": obj.get("kind").cloned().unwrap_or(Value::Null),
            "name": object::name(obj),
            "namespace": object::namespace(obj),
            "uid": object::uid(obj),
        });
        let _ = self.tx.try_send(Pending {
            involved,
            kind,
            reason: reason.to_string(),
            message: message.into(),
        });
    }
}

async fn write(store: &dyn Store, p: Pending) -> Result<(), StoreError> {
    let ns = p.involved["namespace"].as_str().unwrap_or("default").to_string();
    let digest = Sha256::digest(
        format!(
            "{}/{}/{}/{}",
            p.involved["uid"], p.reason, p.message, p.involved["kind"]
        )
        .as_bytes(),
    );
    let name = format!(
        "{}.{}",
        p.involved["name"].as_str().unwrap_or(""),
        object::hex(&digest[..8])
    );
    let key = Key::new(RESOURCE, &ns, &name);
    let now = time::now_rfc3339();
    for _ in 0..3 {
        match store.get(&key).await? {
            Some(cur) => {
                let mut v = cur.value.clone();
                v["count"] = json!(v["count"].as_i64().unwrap_or(1) + 1);
                v["lastTimestamp"] = json!(now);
                match store.update(&key, v, Some(cur.revision)).await {
                    Err(StoreError::Conflict { .. }) => continue,
                    other => return other.map(|_| ()),
                }
            }
            None => {
                let v = json!({
                    "apiVersion": "v1", "kind": "Event",
                    "metadata": {"name": name, "namespace": ns, "creationTimestamp": now, "uid": object::new_uid()},
                    "involvedObject": p.involved,
                    "reason": p.reason, "message": p.message,
                    "type": match p.kind { Kind::Normal => "Normal", Kind::Warning => "Warning" },
                    "count": 1, "firstTimestamp": now, "lastTimestamp": now,
                    "source": {"component": "k8s4r-controller"},
                    "reportingComponent": "k8s4r-controller",
                });
                match store.create(&key, v).await {
                    Err(StoreError::AlreadyExists(_)) => continue,
                    other => return other.map(|_| ()),
                }
            }
        }
    }
    Ok(())
}

/// Delete events whose last occurrence is older than [`TTL_SECONDS`].
pub async fn expire(store: &dyn Store) -> Result<usize, StoreError> {
    let cutoff = time::now_unix() - TTL_SECONDS;
    let mut n = 0;
    for e in store.list(RESOURCE, None).await?.items {
        let last = e.value["lastTimestamp"]
            .as_str()
            .and_then(time::parse_rfc3339)
            .unwrap_or(0);
        if last < cutoff {
            match store.delete(&e.key, Some(e.revision)).await {
                Ok(_) => n += 1,
                Err(StoreError::NotFound(_) | StoreError::Conflict { .. }) => {}
                Err(err) => return Err(err),
            }
        }
    }
    Ok(n)
}

/// Does `event` match a fieldSelector over `involvedObject.*`, `reason`,
/// `type` (what `kubectl describe` sends)?
pub fn supports_field(field: &str) -> bool {
    matches!(
        field,
        "metadata.name"
            | "metadata.namespace"
            | "involvedObject.kind"
            | "involvedObject.name"
            | "involvedObject.namespace"
            | "involvedObject.uid"
            | "involvedObject.apiVersion"
            | "reason"
            | "type"
    )
}
