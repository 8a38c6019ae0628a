//! Kubernetes object metadata and the generic object envelope shared by every
//! kind. Kept free of k8s-openapi so the agent stays small.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const GROUP: &str = "robot.k8s4r.io";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "robot.k8s4r.io/v1alpha1";

fn is_zero(n: &i64) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Name, unique per kind within a namespace (a DNS subdomain).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Prefix for a server-generated name, used when name is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<String>,
    /// The namespace the object lives in (default: default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Unique id the server gives the object at creation; never reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Version of the object in the store, for optimistic concurrency and watches (opaque).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Incremented by the server on every change of spec.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: i64,
    /// Key/value pairs selectors match (kubectl -l, robotSelector).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Key/value pairs for tools and people; not used for selection.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The objects this one belongs to; deleting the owner deletes it (garbage collection).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
    /// Names that must be removed before the object is deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
    /// When the object was created (RFC 3339), set by the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// When deletion was requested (RFC 3339), set by the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    /// Which field manager owns which fields (server-side apply), in
    /// Kubernetes' `ManagedFieldsEntry` form; kept by the server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managed_fields: Vec<serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    /// API version of the owner.
    pub api_version: String,
    /// Kind of the owner.
    pub kind: String,
    /// Name of the owner.
    pub name: String,
    /// Uid of the owner.
    pub uid: String,
    /// True when the owner is the managing controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
    /// With foreground deletion, the owner waits for this object to be deleted first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_owner_deletion: Option<bool>,
}

/// `apiVersion` + `kind` + `metadata` + `spec` + optional `status`: the shape
/// of every kind we serve.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Object<Spec, Status> {
    /// The versioned schema of this object: robot.k8s4r.io/v1alpha1.
    pub api_version: String,
    /// The kind of this object (Job, TaskGroup, Task or Robot).
    pub kind: String,
    /// Standard object metadata: name, namespace, labels, annotations...
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What the object should be: written by users (Jobs, Robots) or by the control plane (TaskGroups, Tasks).
    pub spec: Spec,
    /// What the object is: written by the control plane and the robots' agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl<Spec, Status> Object<Spec, Status> {
    pub fn new(kind: &str, name: &str, namespace: &str, spec: Spec) -> Self {
        Object {
            api_version: API_VERSION.to_string(),
            kind: kind.to_string(),
            metadata: ObjectMeta {
                name: name.to_string(),
                namespace: Some(namespace.to_string()),
                ..Default::default()
            },
            spec,
            status: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }
}
