//! Who is asking: the identity every Kubernetes API request is
//! authenticated as, and the groups authorization is decided by.
//!
//! A [`User`] comes from a verified client certificate (its subject's CN is
//! the name, each O a group, as kube-apiserver reads them) or from a bearer
//! token. The TLS listener puts a [`CertUser`] in the request's extensions
//! when the client presented a certificate the client CA signed.
//!
//! - [`authn`]: the request's [`User`] (certificate, then bearer token).
//! - [`authz`]: what a request asks to do, and whether its user may.
//! - [`review`]: `kubectl auth can-i` and `kubectl auth whoami` (read from
//!   JSON, or from protobuf by [`proto`], as kubectl sends them).
//! - [`audit`]: the audit log of mutating requests.
//! - [`session`]: the dashboard's browser sessions (cookie → user).
//!
//! Two kinds of path bypass all of this: [`is_public`] (health and
//! version) and [`is_robot_channel`] (robots authenticate themselves there).

pub mod audit;
pub mod authn;
pub mod authz;
pub mod proto;
pub mod review;
pub mod session;

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

/// Paths anyone may read, credentials or not: health checks and the
/// version (kubectl's dispatcher asks for it before it sends any).
pub fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/livez" | "/readyz" | "/version")
}

/// The robot channel: registration, each robot's own endpoints and the
/// server's public keys. The agent protocol authenticates these itself;
/// every other path under `/agent/v1` is an operator endpoint, for admins.
pub fn is_robot_channel(path: &str) -> bool {
    let under = |root: &str| path == root || path.starts_with(&format!("{root}/"));
    under("/agent/v1/register") || under("/agent/v1/serverkeys") || path.starts_with("/agent/v1/robots/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paths_that_bypass_user_authentication() {
        for p in ["/healthz", "/livez", "/readyz", "/version"] {
            assert!(is_public(p), "{p}");
        }
        for p in ["/metrics", "/apis", "/healthz/x", "/agent/v1/jointokens"] {
            assert!(!is_public(p), "{p}");
        }
        for p in [
            "/agent/v1/register",
            "/agent/v1/robots/r1/assignments",
            "/agent/v1/robots/r1/status",
            "/agent/v1/serverkeys",
        ] {
            assert!(is_robot_channel(p), "{p}");
        }
        for p in [
            "/agent/v1/jointokens",
            "/agent/v1/jointokens/abc",
            "/agent/v1/robottokens/r1",
            "/agent/v1/robots",
            "/agent/v1/registerx",
            "/agent/v1/new-admin-thing",
        ] {
            assert!(!is_robot_channel(p), "{p}");
        }
    }
}
