//! The inbound side of a group's proxy: expose a task's local port to the
//! network over mTLS, allowing only listed SPIFFE IDs.
//!
//! Manifest shape (a `network.inbound` list next to `upstreams`):
//!
//! ```yaml
//! network:
//!   spiffe: { trustDomain: example.org }
//!   inbound:
//!     - name: telemetry                # DNS label, unique in the group
//!       port: 8443                     # opened on `address` for peers
//!       address: 0.0.0.0               # optional, default 0.0.0.0
//!       targetPort: 8080               # the task listens on 127.0.0.1:8080
//!       allowedSpiffeIDs:              # required: deny everything else
//!         - spiffe://example.org/ns/prod/sa/collector
//! ```
//!
//! The peer must present a certificate chaining to the trust bundle (SPIRE
//! over SDS, or `tlsFiles.caPath`), a URI SAN in the trust domain, and one
//! of the listed IDs (RBAC network filter on the authenticated principal).

use crate::api::validate::{check_dns_label, check_spiffe_id};
use crate::api::{FieldError, NetworkConfig, SpiffeConfig};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Inbound {
    pub name: String,
    /// The port peers connect to. Kept wide so validation reports bad values.
    pub port: i64,
    /// The task's port on 127.0.0.1.
    pub target_port: i64,
    /// The address to listen on; default `0.0.0.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Peers allowed in. Empty is an error: an open mTLS port is not a default.
    #[serde(default, rename = "allowedSpiffeIDs")]
    pub allowed_spiffe_ids: Vec<String>,
    /// The SPIRE agent / trust domain for this listener; default: the network's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe: Option<SpiffeConfig>,
}

impl Inbound {
    pub fn address(&self) -> &str {
        self.address.as_deref().unwrap_or("0.0.0.0")
    }
}

/// Check `inbound` (at field `path`, e.g. `spec.taskGroups[0].network.inbound`)
/// against the group's `network`; returns every problem found.
pub fn validate(path: &str, inbound: &[Inbound], network: &NetworkConfig) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut add = |field: String, message: String| errs.push(FieldError::new(&field, message));
    let upstream_ports: HashSet<i64> = network.upstreams.iter().map(|u| u.local_port).collect();
    let mut names = HashSet::new();
    let mut ports = HashSet::new();
    for (i, ib) in inbound.iter().enumerate() {
        let p = format!("{path}[{i}]");
        match check_dns_label(&ib.name) {
            Err(e) => add(format!("{p}.name"), e),
            Ok(()) if !names.insert(ib.name.as_str()) => {
                add(format!("{p}.name"), format!("duplicate inbound name {:?}", ib.name))
            }
            Ok(()) => {}
        }
        if !(1..=65535).contains(&ib.port) {
            add(
                format!("{p}.port"),
                format!("{} is not a valid port (1-65535)", ib.port),
            );
        } else if upstream_ports.contains(&ib.port) {
            add(
                format!("{p}.port"),
                format!("port {} is already an upstream localPort in this group", ib.port),
            );
        } else if !ports.insert(ib.port) {
            add(format!("{p}.port"), format!("port {} is used twice", ib.port));
        }
        if !(1..=65535).contains(&ib.target_port) {
            add(
                format!("{p}.targetPort"),
                format!("{} is not a valid port (1-65535)", ib.target_port),
            );
        }
        if ib.address().parse::<std::net::IpAddr>().is_err() {
            add(
                format!("{p}.address"),
                format!("{:?} is not an IP address (e.g. 0.0.0.0)", ib.address()),
            );
        }
        let spiffe = ib.spiffe.as_ref().or(network.spiffe.as_ref());
        if spiffe.is_none() && network.tls_files.is_none() {
            add(
                p.clone(),
                "inbound mTLS needs certificates: add a spiffe block or tlsFiles to the network".into(),
            );
        }
        if ib.allowed_spiffe_ids.is_empty() {
            add(
                format!("{p}.allowedSpiffeIDs"),
                "list at least one SPIFFE ID; nothing is allowed by default".into(),
            );
        }
        let td = spiffe.map(|s| s.trust_domain.as_str());
        for (j, id) in ib.allowed_spiffe_ids.iter().enumerate() {
            if let Err(e) = check_spiffe_id(id, td) {
                add(format!("{p}.allowedSpiffeIDs[{j}]"), e);
            }
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Upstream;

    fn net() -> NetworkConfig {
        NetworkConfig {
            spiffe: Some(SpiffeConfig {
                trust_domain: "example.org".into(),
                agent_socket_path: None,
            }),
            upstreams: vec![Upstream {
                name: "db".into(),
                local_port: 5432,
                upstream: "db:5432".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn ok() -> Inbound {
        Inbound {
            name: "api".into(),
            port: 8443,
            target_port: 8080,
            address: None,
            allowed_spiffe_ids: vec!["spiffe://example.org/client".into()],
            spiffe: None,
        }
    }

    #[test]
    fn accepts_a_good_entry() {
        assert_eq!(validate("n.inbound", &[ok()], &net()), vec![]);
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let bad = Inbound {
            name: "API".into(),
            port: 5432,
            target_port: 0,
            address: Some("somewhere".into()),
            allowed_spiffe_ids: vec!["spiffe://other.org/x".into()],
            spiffe: None,
        };
        let empty = Inbound {
            allowed_spiffe_ids: vec![],
            port: 9000,
            ..ok()
        };
        let fields: Vec<String> = validate("n.inbound", &[bad, empty], &net())
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "n.inbound[0].name",
                "n.inbound[0].port",
                "n.inbound[0].targetPort",
                "n.inbound[0].address",
                "n.inbound[0].allowedSpiffeIDs[0]",
                "n.inbound[1].allowedSpiffeIDs",
            ]
        );
    }

    #[test]
    fn needs_a_certificate_source() {
        let errs = validate("n.inbound", &[ok()], &NetworkConfig { spiffe: None, ..net() });
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "n.inbound[0]");
    }
}
