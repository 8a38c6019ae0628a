//! Envoy's admin API over the proxy's Unix socket: one HTTP/1.1 GET per
//! connection through the crate's one client ([`crate::http_client`]), and
//! what the agent reads out of the answers.
//!
//! Envoy's admin listener refuses HTTP/1.0 unless configured otherwise, so
//! requests are HTTP/1.1; bodies may come chunked.

use crate::http_client::{self, HttpError};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Admin answers come from a local process: a short deadline is plenty.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// Refuse to buffer more than this (a full /stats of a small proxy is ~100 KiB).
const MAX_RESPONSE: u64 = 8 * 1024 * 1024;

#[derive(Debug)]
pub enum AdminError {
    Connect(PathBuf, io::Error),
    Io(PathBuf, io::Error),
    BadResponse(PathBuf, String),
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminError::Connect(p, e) => write!(f, "connecting to Envoy admin at {}: {e}", p.display()),
            AdminError::Io(p, e) => write!(f, "talking to Envoy admin at {}: {e}", p.display()),
            AdminError::BadResponse(p, m) => write!(f, "bad answer from Envoy admin at {}: {m}", p.display()),
        }
    }
}

impl std::error::Error for AdminError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AdminError::Connect(_, e) | AdminError::Io(_, e) => Some(e),
            AdminError::BadResponse(..) => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// `GET path` on the admin socket.
pub fn get(socket: &Path, path: &str) -> Result<Response, AdminError> {
    let full = http_client::get_unix(socket, path, TIMEOUT, MAX_RESPONSE).map_err(|e| match e {
        HttpError::Connect(_, e) => AdminError::Connect(socket.into(), e),
        HttpError::Io(e) => AdminError::Io(socket.into(), e),
        e => AdminError::BadResponse(socket.into(), e.to_string()),
    })?;
    Ok(Response {
        status: full.status,
        body: String::from_utf8_lossy(&full.body).into_owned(),
    })
}

/// True when Envoy is LIVE (`/ready` answers 200) and serves every listener
/// it was given. The second half matters: a listener that cannot bind (its
/// port taken after the agent checked it) is a rejected LDS update, and
/// Envoy still reports itself ready without it.
pub fn is_ready(socket: &Path) -> bool {
    matches!(get(socket, "/ready"), Ok(Response { status: 200, .. }))
        && failed_listeners(socket).is_ok_and(|f| f.is_empty())
}

/// A listener Envoy could not apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedListener {
    pub name: String,
    pub port: Option<u16>,
    /// Envoy's reason, e.g. `cannot bind '127.0.0.1:5432': Address already in use`.
    pub details: String,
}

/// Listeners in Envoy's error state (from `/config_dump`).
pub fn failed_listeners(socket: &Path) -> Result<Vec<FailedListener>, AdminError> {
    let r = get(socket, "/config_dump?resource=dynamic_listeners")?;
    if r.status != 200 {
        return Err(AdminError::BadResponse(
            socket.into(),
            format!("config_dump: HTTP {}", r.status),
        ));
    }
    failed_from_config_dump(&r.body).map_err(|m| AdminError::BadResponse(socket.into(), m))
}

/// Names of the listeners Envoy serves (in their active state, from
/// `/config_dump`).
pub fn active_listeners(socket: &Path) -> Result<Vec<String>, AdminError> {
    let r = get(socket, "/config_dump?resource=dynamic_listeners")?;
    if r.status != 200 {
        return Err(AdminError::BadResponse(
            socket.into(),
            format!("config_dump: HTTP {}", r.status),
        ));
    }
    active_from_config_dump(&r.body).map_err(|m| AdminError::BadResponse(socket.into(), m))
}

/// True when Envoy is LIVE and serves every listener in `names`: one
/// group's part of the robot-wide Envoy is ready although another group's
/// listener may have failed.
pub fn serves_listeners(socket: &Path, names: &[String]) -> bool {
    matches!(get(socket, "/ready"), Ok(Response { status: 200, .. }))
        && active_listeners(socket).is_ok_and(|active| names.iter().all(|n| active.contains(n)))
}

fn active_from_config_dump(text: &str) -> Result<Vec<String>, String> {
    let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("config_dump: {e}"))?;
    let empty = Vec::new();
    Ok(doc["configs"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter(|c| c.get("active_state").is_some())
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect())
}

fn failed_from_config_dump(text: &str) -> Result<Vec<FailedListener>, String> {
    let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("config_dump: {e}"))?;
    let empty = Vec::new();
    let configs = doc["configs"].as_array().unwrap_or(&empty);
    Ok(configs
        .iter()
        .filter_map(|c| {
            let err = c.get("error_state")?;
            let port = err["failed_configuration"]["address"]["socket_address"]["port_value"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok());
            Some(FailedListener {
                name: c["name"].as_str().unwrap_or("?").to_string(),
                port,
                details: err["details"].as_str().unwrap_or("").to_string(),
            })
        })
        .collect())
}

/// Why Envoy is not ready yet, in words an operator can act on: which
/// upstreams wait (for DNS, a first health check, or their certificate),
/// which SPIRE agent socket cannot be reached, rejected config updates.
/// `spire_sockets` maps SDS cluster names to socket paths (see
/// [`super::runtime::spire_sockets`]). Empty when nothing specific was found.
/// `scope` is the prefix of the group's resource names in the robot-wide
/// Envoy (`<taskGroup>/`; empty for a group's own Envoy): only that
/// group's listeners and clusters are named, and by their manifest names.
pub fn not_ready_reasons(
    socket: &Path,
    spire_sockets: &[(String, String)],
    scope: &str,
) -> Result<Vec<String>, AdminError> {
    let mut reasons: Vec<String> = failed_listeners(socket)?
        .into_iter()
        .filter_map(|f| {
            let name = f.name.strip_prefix(scope)?;
            let what = match name.strip_prefix("out-") {
                Some(up) => format!("upstream {up:?} (listener {})", f.name),
                None => format!("listener {}", f.name),
            };
            let owner = f.port.and_then(super::ports::owner_of);
            Some(match owner {
                Some(o) => format!("{what}: {}; the port is held by {o}", f.details),
                None => format!("{what}: {}", f.details),
            })
        })
        .collect();
    let stats = get(socket, "/stats")?;
    reasons.extend(reasons_from_stats(&stats.body, spire_sockets, scope));
    Ok(reasons)
}

fn reasons_from_stats(stats: &str, spire_sockets: &[(String, String)], scope: &str) -> Vec<String> {
    let mut reasons = Vec::new();
    for line in stats.lines() {
        let Some((name, value)) = line.split_once(": ") else {
            continue;
        };
        let value: u64 = value.trim().parse().unwrap_or(0);
        if value == 0 {
            continue;
        }
        let cluster_stat = name
            .strip_prefix("cluster.")
            .and_then(|n| n.split_once('.'))
            .and_then(|(c, stat)| Some((c.strip_prefix(scope)?, stat)));
        match cluster_stat {
            Some((cluster, "warming_state")) => reasons.push(match cluster.strip_prefix("out-") {
                Some(up) => format!(
                    "upstream {up:?}: cluster not initialised yet (waiting for its certificate from SDS, DNS or a first health check)"
                ),
                None => format!("cluster {cluster}: not initialised yet"),
            }),
            Some((cluster, "upstream_cx_connect_fail")) => {
                let full = format!("{scope}{cluster}");
                if let Some((_, path)) = spire_sockets.iter().find(|(c, _)| *c == full) {
                    reasons.push(format!(
                        "SPIRE agent socket {path}: {value} failed connection attempts (is the agent running?)"
                    ));
                }
            }
            _ => {}
        }
        if let Some(listener) = name
            .strip_prefix("listener.")
            .and_then(|n| n.strip_suffix(".server_ssl_socket_factory.downstream_context_secrets_not_ready"))
        {
            reasons.push(format!("listener {listener}: waiting for its TLS certificate (SDS)"));
        } else if name == "listener_manager.total_listeners_warming" {
            reasons.push(format!("{value} listener(s) warming"));
        } else if name.ends_with(".update_rejected") {
            reasons.push(format!(
                "{name} = {value}: a config update was rejected (see Envoy's log)"
            ));
        }
    }
    reasons
}

/// One upstream host as Envoy's active health check and outlier detection
/// see it (from `/clusters`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamHealth {
    /// The manifest's upstream name.
    pub upstream: String,
    /// `ip:port` Envoy resolved the upstream to.
    pub host: String,
    pub healthy: bool,
    /// Envoy's flags, e.g. `/failed_active_hc/failed_outlier_check`.
    pub flags: String,
}

/// Health of every upstream host of the group whose resource names start
/// with `scope` (see [`not_ready_reasons`]), for its status.
pub fn upstream_health(socket: &Path, scope: &str) -> Result<Vec<UpstreamHealth>, AdminError> {
    let r = get(socket, "/clusters")?;
    Ok(health_from_clusters(&r.body, scope))
}

fn health_from_clusters(text: &str, scope: &str) -> Vec<UpstreamHealth> {
    text.lines()
        .filter_map(|line| {
            let (cluster, rest) = line.split_once("::")?;
            let (host, flags) = rest.split_once("::health_flags::")?;
            let upstream = cluster.strip_prefix(scope)?.strip_prefix("out-")?;
            Some(UpstreamHealth {
                upstream: upstream.to_string(),
                host: host.to_string(),
                healthy: flags == "healthy",
                flags: flags.to_string(),
            })
        })
        .collect()
}

/// One counter or gauge from `/stats`, e.g. `server.live`.
pub fn stat(socket: &Path, name: &str) -> Result<Option<u64>, AdminError> {
    let r = get(socket, &format!("/stats?filter=^{}$", escape_regex(name)))?;
    Ok(r.body.lines().find_map(|l| {
        let (n, v) = l.split_once(": ")?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    }))
}

fn escape_regex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if !c.is_ascii_alphanumeric() && c != '_' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_name_upstreams_and_spire_sockets() {
        let stats = "cluster.out-db.warming_state: 1\ncluster.out-api.warming_state: 0\n\
                     cluster.spire-ab.upstream_cx_connect_fail: 3\nlistener_manager.lds.update_rejected: 1\n\
                     cluster.spire-ab.upstream_cx_connect_ms: No recorded values\n";
        let r = reasons_from_stats(stats, &[("spire-ab".into(), "/run/spire.sock".into())], "");
        assert_eq!(r.len(), 3, "{r:?}");
        assert!(r[0].starts_with("upstream \"db\""));
        assert!(r[1].contains("/run/spire.sock"));
        assert!(r[2].contains("rejected"));
    }

    /// In the robot-wide Envoy a group is told about its own upstreams
    /// only, by their manifest names.
    #[test]
    fn scoped_reasons_and_health_name_only_the_groups_own_upstreams() {
        let stats = "cluster.j-a/out-db.warming_state: 1\ncluster.j-b/out-db.warming_state: 1\n\
                     cluster.j-a/spire-ab.upstream_cx_connect_fail: 2\n";
        let sockets = [("j-a/spire-ab".to_string(), "/run/spire.sock".to_string())];
        let r = reasons_from_stats(stats, &sockets, "j-a/");
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r[0].starts_with("upstream \"db\""), "{r:?}");
        assert!(r[1].contains("/run/spire.sock"), "{r:?}");
        let clusters = "j-a/out-db::10.0.0.1:5432::health_flags::healthy\n\
                        j-b/out-db::10.0.0.2:5432::health_flags::/failed_active_hc\n";
        let h = health_from_clusters(clusters, "j-b/");
        assert_eq!(h.len(), 1);
        assert_eq!((h[0].upstream.as_str(), h[0].healthy), ("db", false));
        assert!(
            health_from_clusters(clusters, "").is_empty(),
            "scoped names are not a group's own"
        );
    }

    #[test]
    fn health_comes_from_cluster_host_flags() {
        let text = "out-db::10.0.0.1:5432::cx_active::0\nout-db::10.0.0.1:5432::health_flags::healthy\n\
                    out-api::127.0.0.1:80::health_flags::/failed_active_hc\n\
                    spire-ab::/run/a.sock::health_flags::healthy\n";
        let h = health_from_clusters(text, "");
        assert_eq!(h.len(), 2);
        assert_eq!(
            (h[0].upstream.as_str(), h[0].host.as_str(), h[0].healthy),
            ("db", "10.0.0.1:5432", true)
        );
        assert_eq!(
            (h[1].upstream.as_str(), h[1].healthy, h[1].flags.as_str()),
            ("api", false, "/failed_active_hc")
        );
    }

    #[test]
    fn failed_listeners_come_from_the_error_state() {
        let dump = r#"{"configs": [
            {"name": "out-a", "active_state": {"listener": {}}},
            {"name": "out-b", "error_state": {"failed_configuration": {"address": {"socket_address":
                {"address": "127.0.0.1", "port_value": 5432}}}, "details": "cannot bind: Address already in use"}}
        ]}"#;
        let f = failed_from_config_dump(dump).unwrap();
        assert_eq!(
            f,
            [FailedListener {
                name: "out-b".into(),
                port: Some(5432),
                details: "cannot bind: Address already in use".into()
            }]
        );
        assert_eq!(failed_from_config_dump("{}").unwrap(), []);
        assert_eq!(active_from_config_dump(dump).unwrap(), ["out-a"]);
        assert!(failed_from_config_dump("not json").is_err());
    }

    #[test]
    fn a_missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("none.sock");
        assert!(matches!(get(&sock, "/ready"), Err(AdminError::Connect(..))));
        assert!(!is_ready(&sock));
    }
}
