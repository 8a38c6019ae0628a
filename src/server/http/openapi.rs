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
    let collection = format!("/apis/{API_VERSION}/namespaces/{{namespace}}/{}", r.plural);
    let item = format!("{collection}/{{name}}");
    let ns = param("namespace", "path", true);
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
            "parameters": [ns],
            "get": op(r, "list", None, &["labelSelector", "fieldSelector", "limit", "continue", "watch", "resourceVersion", "timeoutSeconds"]),
            "post": op(r, "post", Some(json_body.clone()), &write),
        }),
    );
    for (path, action_suffix) in [(item.clone(), ""), (format!("{item}/status"), "Status")] {
        let mut entry = json!({
            "parameters": [ns.clone(), name.clone()],
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
