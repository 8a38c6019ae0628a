//! Kubernetes `Event`s (core/v1) about our objects — scheduled, unschedulable,
//! lost, rescheduled, started, exited — so `kubectl describe` tells the
//! story. Best effort, as in Kubernetes: recorded by a background writer
//! through a bounded queue (dropped when full), repeated events are folded
//! into one with a count, and events older than an hour are removed.

use super::object;
use super::selector::FieldSelector;
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
    /// The Job a Task's or TaskGroup's event is also about (`related`).
    related: Option<Value>,
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
            related: job_of(obj),
            kind,
            reason: reason.to_string(),
            message: message.into(),
        });
    }
}

/// The Job a Task or TaskGroup belongs to, as an ObjectReference: a
/// TaskGroup's owner (with the Job's uid); a Task's job label (by name:
/// a Task does not carry its Job's uid).
fn job_of(obj: &Value) -> Option<Value> {
    let kind = obj.get("kind").and_then(Value::as_str)?;
    let meta = object::meta(obj)?;
    let (name, uid) = match kind {
        "TaskGroup" => {
            let owner = meta
                .get("ownerReferences")?
                .as_array()?
                .iter()
                .find(|o| o.get("kind").and_then(Value::as_str) == Some("Job"))?;
            (owner.get("name")?.as_str()?, owner.get("uid").and_then(Value::as_str))
        }
        "Task" => (meta.get("labels")?.get(super::annotations::LABEL_JOB)?.as_str()?, None),
        _ => return None,
    };
    let mut r = json!({"apiVersion": obj.get("apiVersion").cloned().unwrap_or(Value::Null),
        "kind": "Job", "name": name, "namespace": object::namespace(obj)});
    if let Some(uid) = uid {
        r["uid"] = json!(uid);
    }
    Some(r)
}

/// Does `event` answer `fields`, a selector over `involvedObject.*` (what
/// `kubectl describe` sends)? Either its own object matches, or the Job it
/// is `related` to does: so a Job's describe shows the events of its
/// TaskGroups and Tasks too. (Aggregated when read rather than recorded
/// twice: describe is rare, event writes are not, and one occurrence stays
/// one Event.) A related reference without a uid matches any uid asked for.
pub fn matches(fields: &FieldSelector, event: &Value) -> bool {
    if fields.matches(event) {
        return true;
    }
    let Some(related) = event.get("related").filter(|r| r.is_object()) else {
        return false;
    };
    let mut view = event.clone();
    view["involvedObject"] = related.clone();
    if related.get("uid").is_none() {
        if let Some(uid) = fields.required("involvedObject.uid") {
            view["involvedObject"]["uid"] = json!(uid);
        }
    }
    fields.matches(&view)
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
                let mut v = json!({
                    "apiVersion": "v1", "kind": "Event",
                    "metadata": {"name": name, "namespace": ns, "creationTimestamp": now, "uid": object::new_uid()},
                    "involvedObject": p.involved,
                    "reason": p.reason, "message": p.message,
                    "type": match p.kind { Kind::Normal => "Normal", Kind::Warning => "Warning" },
                    "count": 1, "firstTimestamp": now, "lastTimestamp": now,
                    "source": {"component": "k8s4r-controller"},
                    "reportingComponent": "k8s4r-controller",
                });
                if let Some(related) = &p.related {
                    v["related"] = related.clone();
                }
                match store.create(&key, v).await {
                    Err(StoreError::AlreadyExists(_)) => continue,
                    other => return other.map(|_| ()),
                }
            }
        }
    }
    Ok(())
}

/// Delete events whose last occurrence is older than [`TTL_SECONDS`]. Only
/// their timestamps are read: a fleet has an event or more per robot, and
/// decoding them all every minute was the server's largest transient
/// allocation (≈ 100 MB at 10,000 robots).
pub async fn expire(store: &dyn Store) -> Result<usize, StoreError> {
    let cutoff = time::now_unix() - TTL_SECONDS;
    let mut n = 0;
    for e in store.list_field(RESOURCE, "lastTimestamp").await? {
        let last = e.value.as_deref().and_then(time::parse_rfc3339).unwrap_or(0);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn describe(name: &str, uid: &str) -> FieldSelector {
        let text = format!(
            "involvedObject.name={name},involvedObject.namespace=default,involvedObject.kind=Job,involvedObject.uid={uid}"
        );
        FieldSelector::parse(&text, supports_field).unwrap()
    }

    fn event_about(obj: &Value) -> Value {
        json!({"involvedObject": {"kind": obj["kind"], "name": obj["metadata"]["name"], "namespace": "default", "uid": "t1"},
               "related": job_of(obj)})
    }

    #[test]
    fn a_jobs_describe_finds_the_events_of_its_groups_and_tasks() {
        let task = json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Task",
            "metadata": {"name": "demo-g-r0-main", "namespace": "default", "labels": {"robot.k8s4r.io/job": "demo"}}});
        let group = json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "TaskGroup",
            "metadata": {"name": "demo-g", "namespace": "default",
                "ownerReferences": [{"kind": "Job", "name": "demo", "uid": "j1"}]}});
        let other = json!({"kind": "Task", "metadata": {"name": "x", "namespace": "default", "labels": {"robot.k8s4r.io/job": "demo2"}}});
        assert!(
            matches(&describe("demo", "j1"), &event_about(&task)),
            "by name: a Task has no Job uid"
        );
        assert!(matches(&describe("demo", "j1"), &event_about(&group)));
        assert!(
            !matches(&describe("demo", "j2"), &event_about(&group)),
            "a group of an older Job demo"
        );
        assert!(!matches(&describe("demo", "j1"), &event_about(&other)));
        let robot = json!({"kind": "Robot", "metadata": {"name": "demo", "namespace": "default"}});
        assert_eq!(job_of(&robot), None);
    }
}
