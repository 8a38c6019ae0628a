//! Delta assignments: what a robot's long poll sends when its desired set
//! changed. The server remembers, per robot and in memory only, the last
//! sets it delivered (each task's version hash, [`crate::api::assignment_set`])
//! with the revision it delivered them at. A poll naming one of those
//! revisions as `since` gets the tasks added or changed since then and the
//! names removed; any other `since` (0, an older revision, one delivered by
//! another replica or before a restart) gets the complete set, marked so.
//! Either way the answer carries the complete set's digest: the agent
//! checks it and asks for the complete set when it holds something else.
//!
//! Removals need no tombstones: a name in the remembered set and not in
//! the current one is gone.

use crate::api::assignment_set;
use crate::api::hex;
use crate::api::StringMap;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Sets remembered per robot: the latest and the one before, so an answer
/// lost on the way (the robot polls again with the older `since`) still
/// gets a delta.
pub const KEPT_PER_ROBOT: usize = 2;

/// A set as delivered at `revision`: each task's stored object (shared
/// with the cache, so an unchanged task costs a pointer) and version hash.
#[derive(Debug, Default)]
pub struct Delivered {
    pub revision: u64,
    tasks: BTreeMap<String, (Arc<Value>, [u8; 32])>,
    digest: String,
}

impl Delivered {
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

/// What a poll asks for beyond `since`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ask {
    /// `delta=1`: the agent applies deltas and checks digests; without it
    /// (an older agent) every answer with changes holds the complete set.
    pub delta: bool,
    /// `verify=1`: the digest even when nothing changed.
    pub verify: bool,
}

/// What the poll answers with.
#[derive(Debug, Default)]
pub struct Answer {
    /// `tasks` and `removed` are changes to the set delivered at `since`.
    pub delta: bool,
    pub tasks: Vec<Arc<Value>>,
    pub removed: Vec<String>,
    /// Version hash of each task in `tasks`.
    pub versions: StringMap,
    pub digest: String,
}

/// Annotations under this prefix are the server's own bookkeeping
/// ([`crate::server::annotations`]: the last status sequence applied,
/// placement times): written on status reports, read by no agent, so they
/// are no part of a task's version.
const BOOKKEEPING: &str = "robot.k8s4r.io/";

/// The version hash of a stored Task (see [`crate::api::assignment_set`]).
pub fn task_version(task: &Value) -> [u8; 32] {
    let meta = task.get("metadata");
    let field = |v: Option<&Value>, k: &str| v.and_then(|m| m.get(k)).cloned().unwrap_or(Value::Null);
    let annotations: serde_json::Map<String, Value> = meta
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_object)
        .map(|a| {
            a.iter()
                .filter(|(k, _)| !k.starts_with(BOOKKEEPING))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let canonical = Value::Array(vec![
        field(meta, "name"),
        field(meta, "uid"),
        field(meta, "generation"),
        field(meta, "labels"),
        Value::Object(annotations),
        field(Some(task), "spec"),
    ]);
    // Serialising a Value cannot fail (string keys only).
    let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
    Sha256::digest(&bytes).into()
}

/// A Task as an agent that asked for deltas gets it: what it reads, no
/// more (no status conditions, owner references or timestamps; of the
/// status, only what it compares with its own: state and pid).
pub fn slim(task: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for k in ["apiVersion", "kind", "spec"] {
        if let Some(v) = task.get(k) {
            out.insert(k.to_string(), v.clone());
        }
    }
    let meta = task.get("metadata");
    let mut m = serde_json::Map::new();
    for k in ["name", "namespace", "uid", "generation", "labels"] {
        if let Some(v) = meta.and_then(|m| m.get(k)) {
            m.insert(k.to_string(), v.clone());
        }
    }
    if let Some(a) = meta.and_then(|m| m.get("annotations")).and_then(Value::as_object) {
        let kept: serde_json::Map<String, Value> = a
            .iter()
            .filter(|(k, _)| !k.starts_with(BOOKKEEPING))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !kept.is_empty() {
            m.insert("annotations".into(), Value::Object(kept));
        }
    }
    out.insert("metadata".into(), Value::Object(m));
    let status = task.get("status");
    let mut s = serde_json::Map::new();
    for k in ["state", "pid"] {
        if let Some(v) = status.and_then(|st| st.get(k)) {
            s.insert(k.to_string(), v.clone());
        }
    }
    if !s.is_empty() {
        out.insert("status".into(), Value::Object(s));
    }
    Value::Object(out)
}

fn name_of(task: &Value) -> Option<&str> {
    task.get("metadata")?.get("name")?.as_str()
}

/// The set `current` (the robot's Tasks now) as delivered at `revision`,
/// reusing the version hashes of objects `known` already hashed.
pub fn delivered(current: Vec<Arc<Value>>, revision: u64, known: Option<&Delivered>) -> Delivered {
    let mut tasks = BTreeMap::new();
    for t in current {
        let Some(name) = name_of(&t).map(String::from) else {
            continue;
        };
        let version = known
            .and_then(|k| k.tasks.get(&name))
            .filter(|(old, _)| Arc::ptr_eq(old, &t))
            .map_or_else(|| task_version(&t), |(_, v)| *v);
        tasks.insert(name, (t, version));
    }
    let hexes: Vec<(&str, String)> = tasks.iter().map(|(n, (_, v))| (n.as_str(), hex::encode(v))).collect();
    let digest = assignment_set::digest(hexes.iter().map(|(n, v)| (*n, v.as_str())));
    Delivered {
        revision,
        tasks,
        digest,
    }
}

/// The answer that takes a robot holding `base` (None: unknown) to `now`.
pub fn answer(now: &Delivered, base: Option<&Delivered>) -> Answer {
    let mut out = Answer {
        delta: base.is_some(),
        digest: now.digest.clone(),
        ..Answer::default()
    };
    for (name, (task, version)) in &now.tasks {
        if base.and_then(|b| b.tasks.get(name)).is_some_and(|(_, v)| v == version) {
            continue;
        }
        out.tasks.push(Arc::new(slim(task)));
        out.versions.insert(name.clone(), hex::encode(version));
    }
    if let Some(b) = base {
        out.removed = b
            .tasks
            .keys()
            .filter(|n| !now.tasks.contains_key(*n))
            .cloned()
            .collect();
    }
    out
}

/// Remember `set` as delivered, keeping the newest [`KEPT_PER_ROBOT`].
pub fn remember(kept: &mut Vec<Arc<Delivered>>, set: Arc<Delivered>) {
    kept.retain(|d| d.revision != set.revision);
    kept.push(set);
    kept.sort_by_key(|d| d.revision);
    let extra = kept.len().saturating_sub(KEPT_PER_ROBOT);
    kept.drain(..extra);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(name: &str, image: &str) -> Arc<Value> {
        Arc::new(json!({
            "metadata": {"name": name, "generation": 1, "resourceVersion": "7"},
            "spec": {"targetRobot": "r1", "config": {"command": image}},
            "status": {"state": "Running"}
        }))
    }

    fn names(a: &Answer) -> Vec<&str> {
        a.tasks.iter().filter_map(|t| name_of(t)).collect()
    }

    #[test]
    fn status_and_resource_version_do_not_change_a_version() {
        let a = task("t", "x");
        let mut b = (*a).clone();
        b["status"] = json!({"state": "Failed"});
        b["metadata"]["resourceVersion"] = json!("9");
        b["metadata"]["annotations"] = json!({"robot.k8s4r.io/status-seq": "12"});
        assert_eq!(task_version(&a), task_version(&b), "bookkeeping is no change");
        let mut c = (*a).clone();
        c["metadata"]["annotations"] = json!({"rollout.k8s4r.io/previous-spec": "{}"});
        assert_ne!(
            task_version(&a),
            task_version(&c),
            "annotations are part of the version"
        );
    }

    #[test]
    fn slim_tasks_keep_what_an_agent_reads() {
        let mut t = (*task("t", "x")).clone();
        t["metadata"]["annotations"] =
            json!({"robot.k8s4r.io/status-seq": "3", "rollout.k8s4r.io/previous-spec": "{}"});
        t["metadata"]["ownerReferences"] = json!([{"kind": "TaskGroup"}]);
        t["metadata"]["uid"] = json!("u1");
        t["status"] = json!({"state": "running", "pid": 7, "conditions": [{"type": "Ready"}]});
        let s = slim(&t);
        assert_eq!(
            s,
            json!({"metadata": {"name": "t", "uid": "u1", "generation": 1,
                    "annotations": {"rollout.k8s4r.io/previous-spec": "{}"}},
                "spec": t["spec"], "status": {"state": "running", "pid": 7}})
        );
        assert_eq!(task_version(&s), task_version(&t), "the same version either way");
    }

    #[test]
    fn delta_holds_added_changed_and_removed_only() {
        let base = delivered(vec![task("a", "x"), task("b", "x"), task("c", "x")], 10, None);
        let now = delivered(vec![task("a", "x"), task("b", "y"), task("d", "x")], 12, Some(&base));
        let ans = answer(&now, Some(&base));
        assert!(ans.delta);
        assert_eq!(names(&ans), ["b", "d"]);
        assert_eq!(ans.removed, ["c"]);
        assert_eq!(ans.versions.keys().collect::<Vec<_>>(), ["b", "d"]);
        assert_eq!(ans.digest, now.digest);
        let full = answer(&now, None);
        assert!(!full.delta);
        assert_eq!(names(&full), ["a", "b", "d"]);
        assert!(full.removed.is_empty());
    }

    #[test]
    fn digest_is_the_documented_one_over_every_task() {
        let now = delivered(vec![task("b", "y"), task("a", "x")], 3, None);
        let va = hex::encode(&task_version(&task("a", "x")));
        let vb = hex::encode(&task_version(&task("b", "y")));
        assert_eq!(
            now.digest,
            assignment_set::digest([("a", va.as_str()), ("b", vb.as_str())])
        );
        assert_eq!(delivered(vec![], 3, None).digest, assignment_set::digest([]));
    }

    #[test]
    fn unchanged_objects_are_not_hashed_again() {
        let a = task("a", "x");
        let base = delivered(vec![a.clone()], 1, None);
        // A forged hash on the remembered object shows whether it was reused.
        let mut forged = base;
        forged.tasks.get_mut("a").expect("a").1 = [7; 32];
        let again = delivered(vec![a], 2, Some(&forged));
        assert_eq!(again.tasks["a"].1, [7; 32]);
        let other = delivered(vec![task("a", "x")], 2, Some(&forged));
        assert_ne!(other.tasks["a"].1, [7; 32], "another object is hashed");
    }

    #[test]
    fn remember_keeps_the_newest_two() {
        let mut kept = Vec::new();
        for rev in [5, 3, 9, 9] {
            remember(&mut kept, Arc::new(delivered(vec![], rev, None)));
        }
        assert_eq!(kept.iter().map(|d| d.revision).collect::<Vec<_>>(), [5, 9]);
    }
}
