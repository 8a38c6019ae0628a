//! OpenAPI v3, enough for `kubectl apply` to validate on the server: per
//! kind a PATCH operation with `x-kubernetes-group-version-kind` and the
//! `fieldValidation` parameter (kubectl then sends `fieldValidation=Strict`
//! and lets our admission check the object), and merge patch as the only
//! patch type it may use. The schemas describe the envelope; the fields are
//! checked by admission, not by the client.

use crate::api::meta::{API_VERSION, GROUP, VERSION};
use crate::server::resources::{Resource, ALL};
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

fn schema_for(r: &Resource) -> Value {
    json!({
        "type": "object",
        "description": format!("{} of {API_VERSION}; fields are validated by the server.", r.kind),
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        },
        "x-kubernetes-group-version-kind": [gvk(r)],
    })
}

/// The group-version document and its hash (kubectl caches by hash).
pub fn group_version_doc() -> &'static (Value, String) {
    static DOC: OnceLock<(Value, String)> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut paths = Map::new();
        let mut schemas = Map::new();
        for r in ALL {
            paths_for(r, &mut paths);
            schemas.insert(schema_name(r), schema_for(r));
        }
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
