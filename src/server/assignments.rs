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
//!
//! An agent that asks `groups=1` gets the group form
//! ([`crate::api::assignment_set`]): each TaskGroup's shared data once, as
//! a group part with its own version hash, and its tasks without it. A set
//! is remembered in the form it was sent in; a poll in the other form
//! (an agent updated in between) gets the complete set.

use crate::api::assignment_set;
use crate::api::hex;
use crate::api::StringMap;
use crate::server::annotations::LABEL_GROUP;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Sets remembered per robot: the latest and the one before, so an answer
/// lost on the way (the robot polls again with the older `since`) still
/// gets a delta.
pub const KEPT_PER_ROBOT: usize = 2;

/// One task of a delivered set.
#[derive(Debug)]
struct Entry {
    /// The stored object, shared with the cache (an unchanged task costs a
    /// pointer).
    task: Arc<Value>,
    version: [u8; 32],
    /// Group form: it travels without its group's fields.
    bare: bool,
    /// Group form: the version of its group's part when it was hashed (its
    /// hash depends on whether it matched that part).
    group: Option<[u8; 32]>,
}

/// A set as delivered at `revision`: each task with its version hash, and
/// in the group form each group's part with its version hash.
#[derive(Debug, Default)]
pub struct Delivered {
    pub revision: u64,
    /// Sent in the group form.
    pub grouped: bool,
    tasks: BTreeMap<String, Entry>,
    groups: BTreeMap<String, (Arc<Value>, [u8; 32])>,
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
    /// `groups=1` (with `delta=1`): the group form.
    pub groups: bool,
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
    /// Group form: the parts of the groups added or changed, their version
    /// hashes, and the keys of groups removed.
    pub groups: BTreeMap<String, Arc<Value>>,
    pub group_versions: StringMap,
    pub removed_groups: Vec<String>,
    pub digest: String,
}

/// Annotations under this prefix are the server's own bookkeeping
/// ([`crate::server::annotations`]: the last status sequence applied,
/// placement times): written on status reports, read by no agent, so they
/// are no part of a task's version.
const BOOKKEEPING: &str = "robot.k8s4r.io/";

/// The version hash of a stored Task (see [`crate::api::assignment_set`]).
pub fn task_version(task: &Value) -> [u8; 32] {
    version_of(task, None)
}

/// The version hash of a Task in the group form: over the task as it
/// travels (without its group's fields if `bare`), without `generation`.
fn grouped_version(task: &Value, bare: bool) -> [u8; 32] {
    let spec = task
        .get("spec")
        .map(|s| if bare { without_group_fields(s) } else { s.clone() });
    version_of(task, Some(spec.unwrap_or(Value::Null)))
}

/// `spec` without [`assignment_set::GROUP_FIELDS`].
fn without_group_fields(spec: &Value) -> Value {
    let mut out = spec.clone();
    if let Some(m) = out.as_object_mut() {
        for f in assignment_set::GROUP_FIELDS {
            m.remove(f);
        }
    }
    out
}

/// The group's key (`spec.taskGroupName`) of a task.
fn group_key(task: &Value) -> Option<&str> {
    task.get("spec")?.get("taskGroupName")?.as_str()
}

/// The group part a task carries: its group fields, and the group's name
/// in the Job (its `robot.k8s4r.io/taskgroup` label).
fn group_part(task: &Value) -> Value {
    let mut part = serde_json::Map::new();
    if let Some(name) = task.pointer("/metadata/labels").and_then(|l| l.get(LABEL_GROUP)) {
        part.insert("groupName".into(), name.clone());
    }
    for f in assignment_set::GROUP_FIELDS {
        if let Some(v) = task.get("spec").and_then(|s| s.get(f)) {
            part.insert(f.to_string(), v.clone());
        }
    }
    Value::Object(part)
}

/// The task's group fields are the group part's.
fn matches_part(task: &Value, part: &Value) -> bool {
    let spec = task.get("spec");
    assignment_set::GROUP_FIELDS
        .iter()
        .all(|f| spec.and_then(|s| s.get(*f)) == part.get(*f))
}

/// `spec`, or the task's own, and the rest of the canonical form.
fn version_of(task: &Value, grouped_spec: Option<Value>) -> [u8; 32] {
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
    let canonical = match grouped_spec {
        None => Value::Array(vec![
            field(meta, "name"),
            field(meta, "uid"),
            field(meta, "generation"),
            field(meta, "labels"),
            Value::Object(annotations),
            field(Some(task), "spec"),
        ]),
        Some(spec) => Value::Array(vec![
            field(meta, "name"),
            field(meta, "uid"),
            field(meta, "labels"),
            Value::Object(annotations),
            spec,
        ]),
    };
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

/// A task as it travels in the group form: [`slim`], without
/// `generation`, and without its group's fields if `bare`.
fn slim_grouped(task: &Value, bare: bool) -> Value {
    let mut out = slim(task);
    if let Some(m) = out.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("generation");
    }
    if bare {
        if let Some(spec) = out.get("spec").map(without_group_fields) {
            out["spec"] = spec;
        }
    }
    out
}

fn name_of(task: &Value) -> Option<&str> {
    task.get("metadata")?.get("name")?.as_str()
}

/// The set `current` (the robot's Tasks now) as delivered at `revision`,
/// in the group form if `grouped`, reusing the version hashes of objects
/// `known` already hashed.
pub fn delivered(current: Vec<Arc<Value>>, revision: u64, known: Option<&Delivered>, grouped: bool) -> Delivered {
    let known = known.filter(|k| k.grouped == grouped);
    let by_name: BTreeMap<String, Arc<Value>> = current
        .into_iter()
        .filter_map(|t| Some((name_of(&t)?.to_string(), t)))
        .collect();
    // Each group's part: what most of its tasks here carry (on a tie, the
    // part the robot holds, else the first task's by name), so a rollout
    // writing the group's Tasks one by one changes the part once, when
    // most have the new version; a poll answered in between carries the
    // fewer side's tasks with their own fields.
    let mut variants: BTreeMap<&str, Vec<(Value, usize)>> = BTreeMap::new();
    if grouped {
        for t in by_name.values() {
            let Some(key) = group_key(t) else { continue };
            let part = group_part(t);
            let seen = variants.entry(key).or_default();
            match seen.iter_mut().find(|(p, _)| *p == part) {
                Some((_, n)) => *n += 1,
                None => seen.push((part, 1)),
            }
        }
    }
    let mut groups: BTreeMap<String, (Arc<Value>, [u8; 32])> = BTreeMap::new();
    for (key, seen) in variants {
        let most = seen.iter().map(|(_, n)| *n).max().unwrap_or(0);
        let held = known.and_then(|k| k.groups.get(key)).map(|(p, _)| &**p);
        let mut tops = seen.into_iter().filter(|(_, n)| *n == most);
        let Some(first) = tops.next() else { continue };
        let part = match held {
            Some(h) if first.0 != *h => tops.find(|(p, _)| p == h).unwrap_or(first).0,
            _ => first.0,
        };
        // Serialising a Value cannot fail (string keys only).
        let version = Sha256::digest(serde_json::to_vec(&part).unwrap_or_default()).into();
        groups.insert(key.to_string(), (Arc::new(part), version));
    }
    let mut tasks = BTreeMap::new();
    for (name, t) in by_name {
        let group = group_key(&t).and_then(|k| groups.get(k));
        let bare = group.is_some_and(|(part, _)| matches_part(&t, part));
        let group = group.map(|(_, v)| *v);
        let reused = known
            .and_then(|k| k.tasks.get(&name))
            .filter(|e| Arc::ptr_eq(&e.task, &t) && e.bare == bare && e.group == group)
            .map(|e| e.version);
        let version = reused.unwrap_or_else(|| {
            if grouped {
                grouped_version(&t, bare)
            } else {
                task_version(&t)
            }
        });
        tasks.insert(
            name,
            Entry {
                task: t,
                version,
                bare,
                group,
            },
        );
    }
    let hexes: Vec<(&str, String)> = tasks
        .iter()
        .map(|(n, e)| (n.as_str(), hex::encode(&e.version)))
        .collect();
    let pairs = hexes.iter().map(|(n, v)| (*n, v.as_str()));
    let digest = if grouped {
        let group_hexes: Vec<(&str, String)> = groups.iter().map(|(k, (_, v))| (k.as_str(), hex::encode(v))).collect();
        assignment_set::digest_with_groups(pairs, group_hexes.iter().map(|(k, v)| (*k, v.as_str())))
    } else {
        assignment_set::digest(pairs)
    };
    Delivered {
        revision,
        grouped,
        tasks,
        groups,
        digest,
    }
}

/// The answer that takes a robot holding `base` (None: unknown) to `now`.
/// A base in the other form is no base.
pub fn answer(now: &Delivered, base: Option<&Delivered>) -> Answer {
    let base = base.filter(|b| b.grouped == now.grouped);
    let mut out = Answer {
        delta: base.is_some(),
        digest: now.digest.clone(),
        ..Answer::default()
    };
    for (name, e) in &now.tasks {
        if base
            .and_then(|b| b.tasks.get(name))
            .is_some_and(|old| old.version == e.version)
        {
            continue;
        }
        let slim = if now.grouped {
            slim_grouped(&e.task, e.bare)
        } else {
            slim(&e.task)
        };
        out.tasks.push(Arc::new(slim));
        out.versions.insert(name.clone(), hex::encode(&e.version));
    }
    for (key, (part, version)) in &now.groups {
        if base.and_then(|b| b.groups.get(key)).is_some_and(|(_, v)| v == version) {
            continue;
        }
        out.groups.insert(key.clone(), Arc::clone(part));
        out.group_versions.insert(key.clone(), hex::encode(version));
    }
    if let Some(b) = base {
        out.removed = b
            .tasks
            .keys()
            .filter(|n| !now.tasks.contains_key(*n))
            .cloned()
            .collect();
        out.removed_groups = b
            .groups
            .keys()
            .filter(|k| !now.groups.contains_key(*k))
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
        let base = delivered(vec![task("a", "x"), task("b", "x"), task("c", "x")], 10, None, false);
        let now = delivered(
            vec![task("a", "x"), task("b", "y"), task("d", "x")],
            12,
            Some(&base),
            false,
        );
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
        let now = delivered(vec![task("b", "y"), task("a", "x")], 3, None, false);
        let va = hex::encode(&task_version(&task("a", "x")));
        let vb = hex::encode(&task_version(&task("b", "y")));
        assert_eq!(
            now.digest,
            assignment_set::digest([("a", va.as_str()), ("b", vb.as_str())])
        );
        assert_eq!(delivered(vec![], 3, None, false).digest, assignment_set::digest([]));
    }

    #[test]
    fn unchanged_objects_are_not_hashed_again() {
        let a = task("a", "x");
        let base = delivered(vec![a.clone()], 1, None, false);
        // A forged hash on the remembered object shows whether it was reused.
        let mut forged = base;
        forged.tasks.get_mut("a").expect("a").version = [7; 32];
        let again = delivered(vec![a.clone()], 2, Some(&forged), false);
        assert_eq!(again.tasks["a"].version, [7; 32]);
        let other = delivered(vec![task("a", "x")], 2, Some(&forged), false);
        assert_ne!(other.tasks["a"].version, [7; 32], "another object is hashed");
        let grouped = delivered(vec![a], 2, Some(&forged), true);
        assert_ne!(
            grouped.tasks["a"].version, [7; 32],
            "a set in the other form is not reused"
        );
    }

    /// A task of group `j-<group>` whose group has init task `init`.
    fn gtask(name: &str, group: &str, init: &str) -> Arc<Value> {
        Arc::new(json!({
            "metadata": {"name": name, "generation": 3, "labels": {LABEL_GROUP: group}},
            "spec": {"name": "t", "driver": "exec", "config": {"execConfig": {"command": "/bin/true"}},
                "jobName": "j", "jobType": "service", "taskGroupName": format!("j-{group}"),
                "replicaIndex": 0, "targetRobot": "r1",
                "initTasks": [{"name": init, "driver": "exec", "config": {"execConfig": {"command": "/bin/true"}}}]}
        }))
    }

    /// What an agent makes of a task of the answer: its spec with the
    /// group's fields filled in again.
    fn filled(a: &Answer, kept: &BTreeMap<String, Arc<Value>>, i: usize) -> crate::api::TaskSpec {
        let mut spec: crate::api::TaskSpec = serde_json::from_value(a.tasks[i]["spec"].clone()).unwrap();
        let key = spec.task_group_name.clone().unwrap();
        let part: assignment_set::GroupPart = serde_json::from_value((*kept[&key]).clone()).unwrap();
        part.fill(&mut spec);
        spec
    }

    fn spec_of(t: &Value) -> crate::api::TaskSpec {
        serde_json::from_value(t["spec"].clone()).unwrap()
    }

    #[test]
    fn the_group_form_sends_a_groups_data_once_and_its_tasks_without_it() {
        let (a1, a2, b1) = (
            gtask("a1", "a", "setup"),
            gtask("a2", "a", "setup"),
            gtask("b1", "b", "x"),
        );
        let base = delivered(vec![a1.clone(), a2.clone(), b1.clone()], 1, None, true);
        let full = answer(&base, None);
        assert_eq!(full.groups.keys().collect::<Vec<_>>(), ["j-a", "j-b"]);
        assert_eq!(full.groups["j-a"]["groupName"], "a");
        assert_eq!(full.groups["j-a"]["initTasks"][0]["name"], "setup");
        assert_eq!(names(&full), ["a1", "a2", "b1"]);
        for t in &full.tasks {
            assert!(
                t["spec"].get("initTasks").is_none() && t["spec"].get("jobName").is_none(),
                "travels without its group's fields: {t}"
            );
            assert!(t["metadata"].get("generation").is_none());
        }
        // What the robot rebuilds is the stored spec.
        assert_eq!(filled(&full, &full.groups, 1), spec_of(&a2));
        // The digest is the documented one over tasks and groups.
        let hexes: Vec<(String, String)> = base
            .tasks
            .iter()
            .map(|(n, e)| (n.clone(), hex::encode(&e.version)))
            .collect();
        assert_eq!(
            full.digest,
            assignment_set::digest_with_groups(
                hexes.iter().map(|(n, v)| (n.as_str(), v.as_str())),
                full.group_versions.iter().map(|(k, v)| (k.as_str(), v.as_str()))
            )
        );

        // The group's init task changes: every Task object of the group
        // changes on the server, one group part travels.
        let (c1, c2) = (gtask("a1", "a", "setup2"), gtask("a2", "a", "setup2"));
        let now = delivered(vec![c1, c2.clone(), b1.clone()], 2, Some(&base), true);
        let delta = answer(&now, Some(&base));
        assert!(
            delta.delta && delta.tasks.is_empty() && delta.removed.is_empty(),
            "{delta:?}"
        );
        assert_eq!(delta.groups.keys().collect::<Vec<_>>(), ["j-a"]);
        assert_ne!(delta.digest, full.digest);

        // Replicas that disagree (a rollout between them): the one that
        // differs from its group's first task travels with its own fields.
        let d2 = gtask("a2", "a", "other");
        let mixed = delivered(vec![gtask("a1", "a", "setup2"), d2.clone(), b1], 3, Some(&now), true);
        let delta = answer(&mixed, Some(&now));
        assert_eq!(names(&delta), ["a2"]);
        assert!(delta.groups.is_empty());
        assert_eq!(delta.tasks[0]["spec"]["jobName"], "j", "its own fields");
        let mut groups = now
            .groups
            .iter()
            .map(|(k, (p, _))| (k.clone(), Arc::clone(p)))
            .collect::<BTreeMap<_, _>>();
        groups.extend(delta.groups.clone());
        assert_eq!(filled(&delta, &groups, 0), spec_of(&d2));

        // A tie keeps the part the robot holds (a2's now, though a1 comes
        // first): a1, changed, travels with its own fields, a2 without.
        let tie = delivered(
            vec![gtask("a1", "a", "next"), gtask("a2", "a", "setup2")],
            4,
            Some(&mixed),
            true,
        );
        let delta = answer(&tie, Some(&mixed));
        assert!(delta.groups.is_empty(), "{delta:?}");
        assert_eq!(names(&delta), ["a1", "a2"]);
        assert_eq!(
            (
                &delta.tasks[0]["spec"]["jobName"],
                delta.tasks[1]["spec"].get("jobName")
            ),
            (&json!("j"), None)
        );

        // A group leaves with its tasks.
        let gone = delivered(vec![gtask("a1", "a", "setup2"), d2], 5, Some(&mixed), true);
        let delta = answer(&gone, Some(&mixed));
        assert_eq!(
            (delta.removed.clone(), delta.removed_groups.clone()),
            (vec!["b1".to_string()], vec!["j-b".to_string()])
        );

        // A base in the other form gives the complete set.
        let tasks_form = delivered(vec![c2], 6, None, false);
        assert!(!answer(&gone, Some(&tasks_form)).delta);
        assert!(answer(&tasks_form, None).groups.is_empty());
    }

    #[test]
    fn remember_keeps_the_newest_two() {
        let mut kept = Vec::new();
        for rev in [5, 3, 9, 9] {
            remember(&mut kept, Arc::new(delivered(vec![], rev, None, false)));
        }
        assert_eq!(kept.iter().map(|d| d.revision).collect::<Vec<_>>(), [5, 9]);
    }
}
