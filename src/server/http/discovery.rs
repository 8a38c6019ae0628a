//! Discovery documents: `/version`, `/apis`, the group and the group-version
//! resource list kubectl maps kinds and short names with.

use crate::api::meta::{API_VERSION, GROUP, VERSION};
use crate::server::resources::{ALL, CATEGORIES};
use serde_json::{json, Value};

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": format!("v1.32.0-k8s4r.{}", crate::cli::VERSION),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    })
}

fn group_entry() -> Value {
    let gv = json!({"groupVersion": API_VERSION, "version": VERSION});
    json!({"name": GROUP, "versions": [gv.clone()], "preferredVersion": gv})
}

pub fn api_group_list() -> Value {
    let groups: Vec<Value> = std::iter::once(group_entry())
        .chain(REVIEW_GROUPS.iter().map(|g| review_group_entry(g.group)))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group() -> Value {
    let mut g = group_entry();
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    g
}

pub fn resource_list() -> Value {
    let mut resources = Vec::new();
    for r in ALL {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            "shortNames": r.short_names,
            "categories": CATEGORIES,
        }));
        resources.push(json!({
            "name": format!("{}/status", r.plural),
            "singularName": "",
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ["get", "patch", "update"],
        }));
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": API_VERSION, "resources": resources})
}

/// The core group serves Events (for `kubectl describe` and `kubectl get
/// events`) and the read-only view of Tasks as Pods (with their log) and
/// Robots as Nodes.
pub fn core_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
           "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]})
}

pub fn core_resources() -> Value {
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": [{
        "name": "events", "singularName": "event", "namespaced": true, "kind": "Event",
        "verbs": ["get", "list"], "shortNames": ["ev"],
    }, {
        "name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
        "verbs": ["get", "list"], "shortNames": ["po"], "categories": ["all"],
    }, {
        "name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"],
    }, {
        "name": "nodes", "singularName": "node", "namespaced": false, "kind": "Node",
        "verbs": ["get", "list"], "shortNames": ["no"],
    }]})
}

/// The review groups `kubectl auth can-i` and `kubectl auth whoami` find
/// through discovery: each serves one create-only, cluster-scoped resource.
pub struct ReviewGroup {
    pub group: &'static str,
    pub plural: &'static str,
    singular: &'static str,
    kind: &'static str,
}

pub const REVIEW_GROUPS: &[ReviewGroup] = &[
    ReviewGroup {
        group: crate::server::auth::authz::AUTHORIZATION_GROUP,
        plural: crate::server::auth::authz::ACCESS_REVIEWS,
        singular: "selfsubjectaccessreview",
        kind: "SelfSubjectAccessReview",
    },
    ReviewGroup {
        group: crate::server::auth::authz::AUTHENTICATION_GROUP,
        plural: crate::server::auth::authz::SELF_REVIEWS,
        singular: "selfsubjectreview",
        kind: "SelfSubjectReview",
    },
];

/// Both review groups are served at v1 only.
pub const REVIEW_VERSION: &str = "v1";

fn review_group_entry(group: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{REVIEW_VERSION}"), "version": REVIEW_VERSION});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

pub fn review_group(g: &ReviewGroup) -> Value {
    let mut v = review_group_entry(g.group);
    v["kind"] = json!("APIGroup");
    v["apiVersion"] = json!("v1");
    v
}

pub fn review_resources(g: &ReviewGroup) -> Value {
    json!({"kind": "APIResourceList", "apiVersion": "v1",
           "groupVersion": format!("{}/{REVIEW_VERSION}", g.group), "resources": [{
        "name": g.plural, "singularName": g.singular, "namespaced": false, "kind": g.kind, "verbs": ["create"],
    }]})
}
