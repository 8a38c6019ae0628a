//! Server-side apply (`kubectl apply --server-side`, PATCH with
//! `application/apply-patch+yaml`), as kube-apiserver does it for custom
//! resources, kept small: every manager's fields are recorded in
//! `metadata.managedFields` (kube's `FieldsV1` form, `f:spec`, `f:labels`,
//! ...); applying a field another manager owns with a different value is a
//! 409 Conflict naming the field and the manager, unless forced (then the
//! applier takes the field over); a field the applier owned before and no
//! longer applies is removed, unless someone else owns it too.
//!
//! Simplifications, said plainly: maps are owned key by key, but a list is
//! one field (owned atomically, as kube does for lists without merge keys:
//! `taskGroups` is replaced whole); the map-itself marker `"."` is not
//! written. Other writes through the API (create, PUT, merge and JSON
//! patch, with their fieldManager or the user agent's name) are Update
//! operations: the fields they change become theirs, taken from whoever
//! owned them, without conflict (as in Kubernetes). The control plane's
//! own writes (status, placement) are not recorded.

use crate::server::status::{Status, StatusCause, StatusDetails};
use crate::server::time;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

type Path = Vec<String>;
type Fields = BTreeSet<Path>;

/// Metadata fields the server sets (never owned by a manager).
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "managedFields",
    "generateName",
];

/// The applied configuration without what the server owns: apiVersion,
/// kind, status and server-set metadata.
fn owned_part(config: &Value) -> Map<String, Value> {
    let mut out = config.as_object().cloned().unwrap_or_default();
    for f in ["apiVersion", "kind", "status"] {
        out.remove(f);
    }
    if let Some(Value::Object(m)) = out.get_mut("metadata") {
        for f in SERVER_METADATA {
            m.remove(*f);
        }
        if m.is_empty() {
            out.remove("metadata");
        }
    }
    out
}

/// The leaf fields of `map`: a map's keys one by one, anything else (a
/// list, a scalar, an empty map) as one field.
fn leaves(map: &Map<String, Value>, prefix: &mut Path, out: &mut Fields) {
    for (k, v) in map {
        prefix.push(k.clone());
        match v {
            Value::Object(m) if !m.is_empty() => leaves(m, prefix, out),
            _ => {
                out.insert(prefix.clone());
            }
        }
        prefix.pop();
    }
}

fn fields_of(config: &Value) -> Fields {
    let mut out = Fields::new();
    leaves(&owned_part(config), &mut Vec::new(), &mut out);
    out
}

/// `{"f:spec": {"f:type": {}}}` for {[spec, type]}.
fn to_fields_v1(fields: &Fields) -> Value {
    let mut root = Map::new();
    for path in fields {
        let mut node = &mut root;
        for k in path {
            node = node
                .entry(format!("f:{k}"))
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("fieldsV1 nodes are objects");
        }
    }
    Value::Object(root)
}

fn from_fields_v1(v: &Value, prefix: &mut Path, out: &mut Fields) {
    let Some(m) = v.as_object() else { return };
    let children: Vec<_> = m.iter().filter_map(|(k, v)| Some((k.strip_prefix("f:")?, v))).collect();
    if children.is_empty() && !prefix.is_empty() {
        out.insert(prefix.clone());
    }
    for (k, child) in children {
        prefix.push(k.to_string());
        from_fields_v1(child, prefix, out);
        prefix.pop();
    }
}

struct Entry {
    manager: String,
    value: Value,
    fields: Fields,
}

fn entries(obj: Option<&Value>) -> Vec<Entry> {
    let list = obj
        .and_then(|o| o.pointer("/metadata/managedFields"))
        .and_then(Value::as_array);
    list.into_iter()
        .flatten()
        .map(|e| {
            let mut fields = Fields::new();
            if let Some(f) = e.get("fieldsV1") {
                from_fields_v1(f, &mut Vec::new(), &mut fields);
            }
            Entry {
                manager: e.get("manager").and_then(Value::as_str).unwrap_or("").to_string(),
                value: e.clone(),
                fields,
            }
        })
        .collect()
}

fn at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// `.spec.taskGroups`, as kube names a field in a conflict.
fn dotted(path: &[String]) -> String {
    path.iter().map(|k| format!(".{k}")).collect()
}

/// Remove the field at `path`, and the maps it leaves empty (they were
/// there only to hold it).
fn remove_at(v: &mut Value, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let Some(m) = v.as_object_mut() else { return false };
    if rest.is_empty() {
        m.remove(first);
    } else if let Some(child) = m.get_mut(first) {
        if remove_at(child, rest) {
            m.remove(first);
        }
    }
    m.is_empty()
}

/// Merge the applied values: maps key by key, anything else replaced.
fn merge(target: &mut Value, applied: &Value) {
    match (target.as_object_mut(), applied.as_object()) {
        (Some(t), Some(a)) => {
            for (k, v) in a {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        _ => *target = applied.clone(),
    }
}

fn conflict(conflicts: &[(Path, String)], api_version: &str) -> Status {
    let lines: Vec<String> = conflicts
        .iter()
        .map(|(p, m)| format!("conflict with \"{m}\" using {api_version}: {}", dotted(p)))
        .collect();
    let n = conflicts.len();
    let message = format!(
        "Apply failed with {n} conflict{}: {}",
        if n == 1 { "" } else { "s" },
        lines.join("\n")
    );
    let mut st = Status::new(409, "Conflict", message);
    st.details = Some(Box::new(StatusDetails {
        causes: conflicts
            .iter()
            .zip(&lines)
            .map(|((p, _), line)| StatusCause {
                reason: "FieldManagerConflict".into(),
                message: line.clone(),
                field: dotted(p),
            })
            .collect(),
        ..Default::default()
    }));
    st
}

/// The object after `manager` applies `config` to `current` (None: it is
/// created), with managedFields updated; a Conflict when another manager
/// owns a field `config` changes, unless `force`. `normalize` gives an
/// object as it would be stored (admission's defaults), so a value is
/// compared with the stored one as equals.
pub fn apply(
    current: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    normalize: impl Fn(Value) -> Result<Value, Status>,
) -> Result<Value, Status> {
    if manager.is_empty() {
        return Err(Status::bad_request(
            "fieldManager is required for apply requests (kubectl sends one)",
        ));
    }
    if !config.is_object() {
        return Err(Status::bad_request("an apply patch must be an object"));
    }
    let api_version = config.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let base = current.cloned().unwrap_or_else(|| {
        json!({"apiVersion": config.get("apiVersion"), "kind": config.get("kind"),
               "metadata": {"name": config.pointer("/metadata/name"), "namespace": config.pointer("/metadata/namespace")}})
    });
    let applied = fields_of(config);
    let mut others = Vec::new();
    let mut mine: Option<Entry> = None;
    for e in entries(current) {
        if e.manager == manager && e.value.get("operation").and_then(Value::as_str) == Some("Apply") {
            mine = Some(e);
        } else {
            others.push(e);
        }
    }
    let mut obj = base.clone();
    // What this manager applied before and no longer does goes, unless
    // another manager owns it too.
    if let Some(mine) = &mine {
        for dropped in mine.fields.difference(&applied) {
            if !others.iter().any(|e| e.fields.iter().any(|f| overlaps(f, dropped))) {
                remove_at(&mut obj, dropped);
            }
        }
    }
    merge(&mut obj, &Value::Object(owned_part(config)));
    // A field someone else owns conflicts when this apply changes its
    // value, compared as stored (defaults filled in by `normalize`).
    let after = normalize(obj.clone())?;
    let mut conflicts: Vec<(Path, String)> = Vec::new();
    for e in &mut others {
        let clashing: Vec<Path> = e
            .fields
            .iter()
            .filter(|owned| applied.iter().any(|a| overlaps(a, owned)) && at(&base, owned) != at(&after, owned))
            .cloned()
            .collect();
        if force {
            for p in &clashing {
                e.fields.remove(p);
            }
        } else {
            conflicts.extend(clashing.into_iter().map(|p| (p, e.manager.clone())));
        }
    }
    if !conflicts.is_empty() {
        return Err(conflict(&conflicts, api_version));
    }
    let unchanged = mine.as_ref().is_some_and(|m| m.fields == applied);
    let when = match &mine {
        Some(m) if unchanged => m
            .value
            .get("time")
            .cloned()
            .unwrap_or_else(|| json!(time::now_rfc3339())),
        _ => json!(time::now_rfc3339()),
    };
    let mut managed: Vec<Value> = others
        .into_iter()
        .filter(|e| !e.fields.is_empty())
        .map(|mut e| {
            e.value["fieldsV1"] = to_fields_v1(&e.fields);
            e.value
        })
        .collect();
    managed.push(
        json!({"manager": manager, "operation": "Apply", "apiVersion": api_version,
        "time": when, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&applied)}),
    );
    obj["metadata"]["managedFields"] = Value::Array(managed);
    Ok(obj)
}

/// Record an Update by `manager` from `old` (None: a create) to `new`: the
/// fields it changed are its own now, and no one else's; fields it removed
/// are no one's. Nothing changes when no field did.
pub fn track_update(old: Option<&Value>, new: &mut Value, manager: &str) {
    let new_fields = fields_of(new);
    let old_fields = old.map(fields_of).unwrap_or_default();
    let changed: Fields = new_fields
        .iter()
        .filter(|p| old.is_none_or(|o| at(o, p) != at(new, p)))
        .cloned()
        .collect();
    let removed: Fields = old_fields.difference(&new_fields).cloned().collect();
    if changed.is_empty() && removed.is_empty() {
        return;
    }
    let mut list = entries(Some(new));
    for e in &mut list {
        e.fields
            .retain(|f| !removed.contains(f) && !changed.iter().any(|c| overlaps(c, f)));
    }
    let mine = list
        .iter()
        .position(|e| e.manager == manager && e.value.get("operation").and_then(Value::as_str) == Some("Update"));
    let api_version = new.get("apiVersion").cloned().unwrap_or(Value::Null);
    match mine {
        Some(i) => {
            list[i].fields.extend(changed);
            list[i].value["time"] = json!(time::now_rfc3339());
        }
        None => list.push(Entry {
            manager: manager.to_string(),
            value: json!({"manager": manager, "operation": "Update", "apiVersion": api_version,
                "time": time::now_rfc3339(), "fieldsType": "FieldsV1"}),
            fields: changed,
        }),
    }
    let managed: Vec<Value> = list
        .into_iter()
        .filter(|e| !e.fields.is_empty())
        .map(|mut e| {
            e.value["fieldsV1"] = to_fields_v1(&e.fields);
            e.value
        })
        .collect();
    if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
        if managed.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(managed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(kind: &str, labels: Value) -> Value {
        json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job",
               "metadata": {"name": "j", "labels": labels},
               "spec": {"type": kind, "taskGroups": [{"name": "g"}]}})
    }

    #[test]
    fn create_records_the_fields_in_kubes_form() {
        let obj = apply(None, &config("batch", json!({"a": "1"})), "alice", false, Ok).unwrap();
        assert_eq!(obj["spec"]["type"], "batch");
        let e = &obj["metadata"]["managedFields"][0];
        assert_eq!((&e["manager"], &e["operation"]), (&json!("alice"), &json!("Apply")));
        assert_eq!(
            e["fieldsV1"],
            json!({"f:metadata": {"f:labels": {"f:a": {}}}, "f:spec": {"f:type": {}, "f:taskGroups": {}}})
        );
        let mut back = Fields::new();
        from_fields_v1(&e["fieldsV1"], &mut Vec::new(), &mut back);
        assert_eq!(back, fields_of(&config("batch", json!({"a": "1"}))));
    }

    #[test]
    fn conflicts_name_field_and_manager_and_force_takes_over() {
        let obj = apply(None, &config("batch", json!({"a": "1"})), "alice", false, Ok).unwrap();
        // Same value: shared, no conflict.
        let shared = apply(Some(&obj), &config("batch", json!({})), "bob", false, Ok).unwrap();
        assert_eq!(shared["metadata"]["managedFields"].as_array().unwrap().len(), 2);
        let err = apply(Some(&obj), &config("service", json!({})), "bob", false, Ok).unwrap_err();
        assert_eq!(err.code, 409);
        assert!(err.message.contains("conflict with \"alice\""), "{}", err.message);
        assert!(err.message.contains(".spec.type"), "{}", err.message);
        let forced = apply(Some(&obj), &config("service", json!({})), "bob", true, Ok).unwrap();
        assert_eq!(forced["spec"]["type"], "service");
        let alice = &forced["metadata"]["managedFields"][0];
        assert_eq!(alice["manager"], "alice");
        assert!(alice["fieldsV1"]["f:spec"].get("f:type").is_none(), "{alice}");
        // Alice still applies taskGroups and her label; no longer type.
        let after = apply(Some(&forced), &config("service", json!({"a": "1"})), "alice", false, Ok);
        assert!(after.is_ok());
    }

    #[test]
    fn an_update_takes_the_fields_it_changes_without_conflict() {
        let obj = apply(None, &config("batch", json!({"a": "1"})), "alice", false, Ok).unwrap();
        let mut edited = obj.clone();
        edited["spec"]["type"] = json!("service");
        edited["metadata"]["labels"]["b"] = json!("2");
        track_update(Some(&obj), &mut edited, "kubectl-edit");
        let managed = edited["metadata"]["managedFields"].as_array().unwrap();
        let edit = managed.iter().find(|e| e["manager"] == "kubectl-edit").unwrap();
        assert_eq!(edit["operation"], "Update");
        assert_eq!(
            edit["fieldsV1"],
            json!({"f:metadata": {"f:labels": {"f:b": {}}}, "f:spec": {"f:type": {}}})
        );
        let alice = managed.iter().find(|e| e["manager"] == "alice").unwrap();
        assert!(alice["fieldsV1"]["f:spec"].get("f:type").is_none(), "{alice}");
        // Alice applying her old type now conflicts with the editor.
        let err = apply(Some(&edited), &config("batch", json!({"a": "1"})), "alice", false, Ok).unwrap_err();
        assert!(
            err.message.contains("conflict with \"kubectl-edit\""),
            "{}",
            err.message
        );
        // An unchanged write records nothing.
        let mut same = edited.clone();
        track_update(Some(&edited), &mut same, "other");
        assert_eq!(same, edited);
    }

    #[test]
    fn a_field_no_longer_applied_is_removed_unless_shared() {
        let obj = apply(None, &config("batch", json!({"a": "1", "b": "2"})), "alice", false, Ok).unwrap();
        let obj = apply(
            Some(&obj),
            &json!({"metadata": {"labels": {"b": "2"}}}),
            "bob",
            false,
            Ok,
        )
        .unwrap();
        let dropped = apply(Some(&obj), &config("batch", json!({})), "alice", false, Ok).unwrap();
        assert_eq!(
            dropped["metadata"]["labels"],
            json!({"b": "2"}),
            "a is gone, b is bob's too"
        );
        assert!(apply(None, &config("batch", json!({})), "", false, Ok).is_err());
    }
}
