//! Who is asking: the identity every Kubernetes API request is
//! authenticated as, and the groups authorization is decided by.
//!
//! A [`User`] comes from a verified client certificate (its subject's CN is
//! the name, each O a group, as kube-apiserver reads them) or from a bearer
//! token. The TLS listener puts a [`CertUser`] in the request's extensions
//! when the client presented a certificate the client CA signed.

/// Everything: tokens, robots, Jobs (kube-apiserver's `system:masters` is
/// accepted as the same group).
pub const ADMINS: &str = "k8s4r:admins";
pub const SYSTEM_MASTERS: &str = "system:masters";
/// Jobs and their children (TaskGroups, Tasks), events, logs; not join
/// tokens, robot credentials or Robots.
pub const OPERATORS: &str = "k8s4r:operators";
/// get, list, watch and logs.
pub const VIEWERS: &str = "k8s4r:viewers";

/// An authenticated user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// The user of a verified client certificate, set by the TLS listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertUser(pub User);
