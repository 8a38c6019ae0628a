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
            while let Some(first) = rx.recv().await {
                // What queued meanwhile goes with it: a Job's dispatch
                // records an event per Task, and one store batch (one
                // commit, grouped etcd transactions) writes them all
                // where one write each competed with the dispatch itself.
                let mut pending = vec![first];
                while pending.len() < WRITE_BATCH {
                    match rx.try_recv() {
                        Ok(p) => pending.push(p),
                        Err(_) => break,
                    }
                }
                if let Err(e) = write_all(store.as_ref(), pending).await {
                    log::debug!("recording events: {e}");
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

/// Events the writer takes from the queue per store batch.
const WRITE_BATCH: usize = 512;

/// One Event object to record: new, or `count` more occurrences of the
/// stored one with its name.
struct Occurrence {
    key: Key,
    /// The Event as first recorded (count = `count`).
    new: Value,
    count: i64,
    at: String,
}

impl Occurrence {
    fn of(p: Pending, now: &str) -> Occurrence {
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
        let mut new = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": now, "uid": object::new_uid()},
            "involvedObject": p.involved,
            "reason": p.reason, "message": p.message,
            "type": match p.kind { Kind::Normal => "Normal", Kind::Warning => "Warning" },
            "count": 1, "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": "k8s4r-controller"},
            "reportingComponent": "k8s4r-controller",
        });
        if let Some(related) = p.related {
            new["related"] = related;
        }
        Occurrence {
            key: Key::new(RESOURCE, &ns, &name),
            new,
            count: 1,
            at: now.to_string(),
        }
    }
}

/// Record `pending`: repeats within it folded into one Event with a
/// count, the new ones created in one store batch, and those already
/// stored counted up one by one.
async fn write_all(store: &dyn Store, pending: Vec<Pending>) -> Result<(), StoreError> {
    let now = time::now_rfc3339();
    let mut order: Vec<Occurrence> = Vec::with_capacity(pending.len());
    let mut index = std::collections::HashMap::with_capacity(pending.len());
    for p in pending {
        let o = Occurrence::of(p, &now);
        match index.get(&o.key) {
            Some(&i) => {
                let first: &mut Occurrence = &mut order[i];
                first.count += 1;
                first.new["count"] = json!(first.count);
            }
            None => {
                index.insert(o.key.clone(), order.len());
                order.push(o);
            }
        }
    }
    let creates = order
        .iter()
        .map(|o| super::store::BatchOp::Create(o.key.clone(), o.new.clone()))
        .collect();
    let results = store.batch(creates).await?;
    for (o, r) in order.into_iter().zip(results) {
        match r {
            Err(StoreError::AlreadyExists(_)) => count_up(store, &o).await?,
            Err(StoreError::Backend(e)) => return Err(StoreError::Backend(e)),
            _ => {}
        }
    }
    Ok(())
}

/// `o.count` more occurrences of an Event already stored (created anew if
/// it is gone meanwhile).
async fn count_up(store: &dyn Store, o: &Occurrence) -> Result<(), StoreError> {
    for _ in 0..3 {
        match store.get(&o.key).await? {
            Some(cur) => {
                let mut v = (*cur.value).clone();
                v["count"] = json!(v["count"].as_i64().unwrap_or(1).saturating_add(o.count));
                v["lastTimestamp"] = json!(o.at);
                match store.update(&o.key, v, Some(cur.revision)).await {
                    Err(StoreError::Conflict { .. }) => continue,
                    other => return other.map(|_| ()),
                }
            }
            None => match store.create(&o.key, o.new.clone()).await {
                Err(StoreError::AlreadyExists(_)) => continue,
                other => return other.map(|_| ()),
            },
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

    /// A batch of events: repeats folded into one Event with their count,
    /// new ones created together, and those stored before counted up.
    #[test]
    fn a_batch_of_events_folds_repeats_and_counts_up_stored_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::server::store::sqlite::SqliteStore::open(dir.path(), 100).unwrap();
        let task = |name: &str| {
            json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Task",
                   "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")}})
        };
        let pending = |name: &str, reason: &str| Pending {
            involved: json!({"kind": "Task", "name": name, "namespace": "default", "uid": format!("uid-{name}")}),
            related: job_of(&task(name)),
            kind: Kind::Normal,
            reason: reason.into(),
            message: "placed on robot r1".into(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let first = vec![
                pending("a", "Scheduled"),
                pending("b", "Scheduled"),
                pending("a", "Scheduled"),
                pending("a", "Scheduled"),
            ];
            write_all(&store, first).await.unwrap();
            write_all(&store, vec![pending("a", "Scheduled"), pending("a", "Started")])
                .await
                .unwrap();
            let listed = store.list(RESOURCE, Some("default")).await.unwrap().items;
            let count = |name: &str, reason: &str| {
                let found: Vec<_> = listed
                    .iter()
                    .filter(|e| e.value["involvedObject"]["name"] == name && e.value["reason"] == reason)
                    .collect();
                assert_eq!(found.len(), 1, "one Event for {name} {reason}");
                found[0].value["count"].as_i64().unwrap()
            };
            assert_eq!(listed.len(), 3);
            assert_eq!(count("a", "Scheduled"), 4, "3 in the first batch, 1 more in the second");
            assert_eq!(count("b", "Scheduled"), 1);
            assert_eq!(count("a", "Started"), 1);
        });
    }
}
