//! OpenAPI v3, enough for `kubectl apply` to validate on the server: per
//! kind a PATCH operation with `x-kubernetes-group-version-kind` and the
//! `fieldValidation` parameter (kubectl then sends `fieldValidation=Strict`
//! and lets our admission check the object), and merge patch as the only
//! patch type it may use. The schemas come from the API types themselves
//! (schemars, with the doc comments as descriptions), so `kubectl explain
//! job.spec.taskGroups` documents every field; admission still does the
//! checking.

use crate::api::meta::{API_VERSION, GROUP, VERSION};
use crate::server::resources::{Resource, ALL};
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

fn schema_name(r: &Resource) -> String {
    format!("io.k8s4r.robot.{VERSION}.{}", r.kind)
}

fn gvk(r: &Resource) -> Value {
    json!({"group": GROUP, "version": VERSION, "kind": r.kind})
}

fn param(name: &str, location: &str, required: bool) -> Value {
    json!({"name": name, "in": location, "required": required, "schema": {"type": "string", "uniqueItems": true}})
}

fn op(r: &Resource, action: &str, body: Option<Value>, query: &[&str]) -> Value {
    let reference = json!({"$ref": format!("#/components/schemas/{}", schema_name(r))});
    let mut o = json!({
        "operationId": format!("{action}{}", r.kind),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(r),
        "parameters": query.iter().map(|q| param(q, "query", false)).collect::<Vec<_>>(),
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}},
    });
    if let Some(content) = body {
        o["requestBody"] = json!({"content": content, "required": true});
    }
    o
}

fn paths_for(r: &Resource, paths: &mut Map<String, Value>) {
    let reference = json!({"$ref": format!("#/components/schemas/{}", schema_name(r))});
    let write = ["dryRun", "fieldManager", "fieldValidation", "pretty"];
    let collection = if r.namespaced {
        format!("/apis/{API_VERSION}/namespaces/{{namespace}}/{}", r.plural)
    } else {
        format!("/apis/{API_VERSION}/{}", r.plural)
    };
    let item = format!("{collection}/{{name}}");
    // Path parameters: the namespace (namespaced kinds only), the name.
    let scope: Vec<Value> = r
        .namespaced
        .then(|| param("namespace", "path", true))
        .into_iter()
        .collect();
    let name = param("name", "path", true);
    let json_body = json!({"application/json": {"schema": reference}});
    // Only merge patch: kubectl then computes a JSON merge patch for apply
    // (strategic merge would need patch strategies we do not have).
    let patch_body = json!({
        "application/merge-patch+json": {"schema": {"type": "object"}},
        "application/json-patch+json": {"schema": {"type": "object"}},
    });
    paths.insert(
        collection,
        json!({
            "parameters": scope.clone(),
            "get": op(r, "list", None, &["labelSelector", "fieldSelector", "limit", "continue", "watch", "resourceVersion", "timeoutSeconds"]),
            "post": op(r, "post", Some(json_body.clone()), &write),
        }),
    );
    for (path, action_suffix) in [(item.clone(), ""), (format!("{item}/status"), "Status")] {
        let mut entry = json!({
            "parameters": scope.iter().cloned().chain([name.clone()]).collect::<Vec<_>>(),
            "get": op(r, "get", None, &[]),
            "put": op(r, "put", Some(json_body.clone()), &write),
            "patch": op(r, "patch", Some(patch_body.clone()), &["dryRun", "fieldManager", "fieldValidation", "force"]),
        });
        if action_suffix.is_empty() {
            entry["delete"] = op(r, "delete", None, &["dryRun", "propagationPolicy"]);
        }
        for m in ["get", "put", "patch"] {
            entry[m]["operationId"] = json!(format!("{m}{}{action_suffix}", r.kind));
        }
        paths.insert(path, entry);
    }
}

/// The schema of one kind, generated from the API types and their doc
/// comments (what `kubectl explain` prints), plus the schemas it refers to.
fn schema_for(r: &Resource, generator: &mut SchemaGenerator) -> Value {
    use crate::api::types::{Job, Robot, Task, TaskGroup};
    let root = match r.kind {
        "Job" => generator.root_schema_for::<Job>(),
        "TaskGroup" => generator.root_schema_for::<TaskGroup>(),
        "Task" => generator.root_schema_for::<Task>(),
        "Rollout" => generator.root_schema_for::<crate::api::rollout::Rollout>(),
        "AgentRelease" => generator.root_schema_for::<crate::api::agent_release::AgentRelease>(),
        _ => generator.root_schema_for::<Robot>(),
    };
    let mut schema = root.to_value();
    if let Some(o) = schema.as_object_mut() {
        // The definitions are collected once for the whole document.
        o.remove("$schema");
        o.remove("components");
        o.insert("description".into(), json!(format!("{} of {API_VERSION}.", r.kind)));
        o.insert("x-kubernetes-group-version-kind".into(), json!([gvk(r)]));
    }
    schema
}

/// Shapes kubectl's `explain` walks through: an optional object comes out
/// of schemars as `anyOf: [{$ref}, {null}]`, which explain cannot follow;
/// Kubernetes itself writes `allOf: [{$ref}]` (plus `nullable`). Titles
/// (Rust type names) are noise for users.
fn explainable(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.remove("title");
            enum_values(o);
            let null_or_ref = o.get("anyOf").and_then(Value::as_array).and_then(|alts| {
                let is_null = |a: &Value| a.get("enum") == Some(&json!([null]));
                match alts.as_slice() {
                    [a, b] if is_null(b) => Some(a.clone()),
                    [a, b] if is_null(a) => Some(b.clone()),
                    _ => None,
                }
            });
            if let Some(inner) = null_or_ref {
                o.remove("anyOf");
                o.insert("allOf".into(), json!([inner]));
                o.insert("nullable".into(), json!(true));
            }
            o.values_mut().for_each(explainable);
        }
        Value::Array(a) => a.iter_mut().for_each(explainable),
        _ => {}
    }
}

/// An enum whose values have doc comments comes out of schemars as
/// `oneOf: [{const, description}, ...]`; kubectl explain lists allowed
/// values from `enum` only. Rewritten as `enum` plus one description
/// naming each value's meaning.
fn enum_values(o: &mut Map<String, Value>) {
    let Some(alts) = o.get("oneOf").and_then(Value::as_array) else {
        return;
    };
    let consts: Option<Vec<(Value, String)>> = alts
        .iter()
        .map(|a| {
            let c = a.get("const").or_else(|| a.get("enum").and_then(|e| e.get(0)))?;
            let d = a.get("description").and_then(Value::as_str).unwrap_or("");
            Some((c.clone(), d.to_string()))
        })
        .collect();
    let Some(consts) = consts else { return };
    let mut text = o.get("description").and_then(Value::as_str).unwrap_or("").to_string();
    for (c, d) in &consts {
        let name = c.as_str().map(str::to_string).unwrap_or_else(|| c.to_string());
        text.push_str(&format!("\n - {name}: {d}"));
    }
    o.remove("oneOf");
    o.insert("type".into(), json!("string"));
    o.insert(
        "enum".into(),
        Value::Array(consts.into_iter().map(|(c, _)| c).collect()),
    );
    o.insert("description".into(), json!(text.trim_start()));
}

/// kubectl explain prints `ENUM:` only from a field's own schema, not
/// from the schema it refers to: a field of an enum type gets the values
/// (and keeps the reference, for the description).
fn inline_enums(schemas: &mut Map<String, Value>) {
    let enums: Map<String, Value> = schemas
        .iter()
        .filter_map(|(name, s)| Some((format!("#/components/schemas/{name}"), s.get("enum")?.clone())))
        .collect();
    fn visit(v: &mut Value, enums: &Map<String, Value>) {
        match v {
            Value::Object(o) => {
                let target = o
                    .get("$ref")
                    .or_else(|| o.get("allOf").and_then(|a| a.get(0)).and_then(|a| a.get("$ref")))
                    .and_then(Value::as_str)
                    .and_then(|r| enums.get(r))
                    .cloned();
                if let Some(values) = target {
                    if let Some(r) = o.remove("$ref") {
                        o.insert("allOf".into(), json!([{"$ref": r}]));
                    }
                    o.insert("type".into(), json!("string"));
                    o.insert("enum".into(), values);
                    // Below is only the reference itself.
                    return;
                }
                o.values_mut().for_each(|c| visit(c, enums));
            }
            Value::Array(a) => a.iter_mut().for_each(|c| visit(c, enums)),
            _ => {}
        }
    }
    schemas.values_mut().for_each(|s| visit(s, &enums));
}

/// The group-version document and its hash (kubectl caches by hash).
pub fn group_version_doc() -> &'static (Value, String) {
    static DOC: OnceLock<(Value, String)> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut paths = Map::new();
        let mut schemas = Map::new();
        let mut generator = SchemaSettings::openapi3().into_generator();
        for r in ALL {
            paths_for(r, &mut paths);
            schemas.insert(schema_name(r), schema_for(r, &mut generator));
        }
        // Everything the kinds refer to (`#/components/schemas/...`).
        schemas.extend(generator.take_definitions(true));
        schemas.values_mut().for_each(explainable);
        inline_enums(&mut schemas);
        let doc = json!({
            "openapi": "3.0.0",
            "info": {"title": "k8s4r", "version": crate::cli::VERSION},
            "paths": paths,
            "components": {"schemas": schemas},
        });
        let hash = crate::server::object::hex(&Sha256::digest(doc.to_string().as_bytes()));
        (doc, hash.to_uppercase())
    })
}

pub fn root() -> Value {
    let (_, hash) = group_version_doc();
    json!({"paths": {
        format!("apis/{API_VERSION}"): {"serverRelativeURL": format!("/openapi/v3/apis/{API_VERSION}?hash={hash}")}
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fields whose schema says nothing (no description of their own, nor
    /// of the schema they refer to), as `Schema.field` paths.
    fn undescribed(schemas: &Map<String, Value>) -> Vec<String> {
        let described = |s: &Value| {
            let own = s
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.is_empty());
            let referred = s
                .get("allOf")
                .and_then(|a| a[0].get("$ref"))
                .or_else(|| s.get("$ref"))
                .or_else(|| s.pointer("/items/$ref"))
                .and_then(Value::as_str)
                .and_then(|r| schemas.get(r.trim_start_matches("#/components/schemas/")))
                .and_then(|t| t.get("description"))
                .is_some();
            own || referred
        };
        let mut out = Vec::new();
        for (name, schema) in schemas {
            for (field, s) in schema
                .get("properties")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                if !described(s) {
                    out.push(format!("{name}.{field}"));
                }
            }
        }
        out
    }

    #[test]
    fn every_field_is_described_and_enums_list_their_values() {
        let doc = &group_version_doc().0;
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let missing = undescribed(schemas);
        assert!(
            missing.is_empty(),
            "{} fields without a description: {missing:#?}",
            missing.len()
        );
        let job_type = &schemas["JobType"];
        assert_eq!(job_type["enum"], json!(["batch", "service", "system"]), "{job_type}");
        assert!(job_type.get("oneOf").is_none(), "{job_type}");
        assert!(
            job_type["description"]
                .as_str()
                .unwrap()
                .contains("system: One instance"),
            "{job_type}"
        );
    }
}
