//! From a group's network (as written in the manifest) to the proxy's plan:
//! which listeners, clusters, SPIRE agents and certificate sources it needs.
//! Pure: no I/O, no Envoy syntax. The rendering modules turn a [`Plan`] into
//! JSON.

use super::inbound::Inbound;
use crate::api::validate::check_host_port;
use crate::api::{NetworkConfig, Protocol, SpiffeConfig};
use sha2::{Digest, Sha256};
use std::fmt;

/// SPIRE's SDS resource names (spiffe/spire doc/spire_agent.md, "SDS
/// Configuration"). The SVID is asked for as `default` (the agent's
/// `default_svid_name`): a robot's Envoy does not know the exact SPIFFE ID its
/// registration entry gives it. The bundle is asked for by the trust domain's
/// own name, `spiffe://<td>`, not `ROOTCA`: `ROOTCA` is only the agent's own
/// domain, while naming the domain also works for a federated one served by
/// the same agent, and says in the config which domain we trust.
pub const SPIRE_SVID_NAME: &str = "default";

pub fn spire_bundle_name(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}")
}

/// Names of the secrets read from `network.tlsFiles`.
pub const FILES_CERT_NAME: &str = "tls-files-cert";
pub const FILES_CA_NAME: &str = "tls-files-ca";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// `enabled: false` or `type: none`: there is no proxy to render.
    Disabled,
    /// Nothing to listen on.
    Empty,
    Port {
        what: String,
        value: i64,
    },
    HostPort {
        upstream: String,
        reason: String,
    },
    /// `tls: true` but neither SPIRE nor files give a certificate.
    NoCertificates {
        what: String,
    },
    /// An inbound listen address that is not an IP address.
    Address {
        what: String,
        value: String,
    },
    /// Two listeners want the same port.
    PortClash {
        port: u16,
        first: String,
        second: String,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Disabled => f.write_str("the network proxy is disabled (enabled: false or type: none)"),
            PlanError::Empty => f.write_str("the network has no upstreams and no inbound listeners"),
            PlanError::Port { what, value } => write!(f, "{what}: {value} is not a valid port (1-65535)"),
            PlanError::HostPort { upstream, reason } => write!(f, "upstream {upstream:?}: {reason}"),
            PlanError::NoCertificates { what } => write!(
                f,
                "{what}: TLS needs certificates but the network has no spiffe block or tlsFiles"
            ),
            PlanError::Address { what, value } => write!(f, "{what}: {value:?} is not an IP address"),
            PlanError::PortClash { port, first, second } => {
                write!(f, "port {port} is wanted by both {first} and {second}")
            }
        }
    }
}

impl std::error::Error for PlanError {}

/// A SPIRE agent's Workload API socket; one SDS cluster each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpireAgent {
    pub cluster: String,
    pub socket: String,
}

/// Where a TLS context gets its certificate and trust bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertSource {
    /// SDS over gRPC from the SPIRE agent behind `cluster`; the bundle is
    /// that of `trust_domain`.
    Spire { cluster: String, trust_domain: String },
    /// `network.tlsFiles`, through SDS from files.
    Files,
}

/// A check on the peer certificate's subject alternative names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SanCheck {
    UriExact(String),
    UriPrefix(String),
    DnsExact(String),
    IpExact(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    pub source: CertSource,
    /// The peer must match one of these (empty: the chain alone decides).
    pub peer: Vec<SanCheck>,
}

/// App → 127.0.0.1:local_port → Envoy → host:port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outbound {
    pub name: String,
    pub local_port: u16,
    pub host: String,
    pub port: u16,
    pub protocol: Protocol,
    pub tls: Option<Tls>,
    /// tcp_proxy's idle timeout (`idleTimeout`); None: Envoy's 1 h.
    pub idle_timeout: Option<std::time::Duration>,
}

impl Outbound {
    /// The name Envoy knows this upstream's listener and cluster by.
    pub fn resource_name(&self) -> String {
        format!("out-{}", self.name)
    }
    /// SNI only for DNS names: RFC 6066 forbids IP literals in SNI.
    pub fn sni(&self) -> Option<&str> {
        (self.host.parse::<std::net::IpAddr>().is_err()).then_some(self.host.as_str())
    }
}

/// Peer → address:port (mTLS, RBAC) → Envoy → 127.0.0.1:target_port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundRoute {
    pub name: String,
    pub address: std::net::IpAddr,
    pub port: u16,
    pub target_port: u16,
    pub allowed: Vec<String>,
    pub tls: Tls,
}

impl InboundRoute {
    pub fn resource_name(&self) -> String {
        format!("in-{}", self.name)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub outbound: Vec<Outbound>,
    pub inbound: Vec<InboundRoute>,
    /// Distinct SPIRE sockets, in order of first use.
    pub spire_agents: Vec<SpireAgent>,
    /// Set when some TLS context reads `network.tlsFiles`.
    pub files: Option<crate::api::TlsFiles>,
    /// Prefix of every resource name: empty in a group's own Envoy,
    /// `<taskGroup>/` in the robot-wide one, where it keeps each group's
    /// listeners, clusters and secrets apart (see [`Plan::scoped`]).
    pub scope: String,
}

/// Plan the proxy for `network` (its upstreams and inbound listeners) plus
/// `extra_inbound` listeners given outside the manifest.
pub fn plan(network: &NetworkConfig, extra_inbound: &[Inbound]) -> Result<Plan, PlanError> {
    if !network.is_active() {
        return Err(PlanError::Disabled);
    }
    let inbound: Vec<&Inbound> = network.inbound.iter().chain(extra_inbound).collect();
    if network.upstreams.is_empty() && inbound.is_empty() {
        return Err(PlanError::Empty);
    }
    let mut plan = Plan {
        outbound: Vec::new(),
        inbound: Vec::new(),
        spire_agents: Vec::new(),
        files: None,
        scope: String::new(),
    };
    let mut ports: Vec<(u16, String)> = Vec::new();
    let mut claim = |port: u16, who: String| match ports.iter().find(|(p, _)| *p == port) {
        Some((_, first)) => Err(PlanError::PortClash {
            port,
            first: first.clone(),
            second: who,
        }),
        None => {
            ports.push((port, who));
            Ok(())
        }
    };

    for up in &network.upstreams {
        let what = format!("upstream {:?}", up.name);
        let local_port = port(&format!("{what} localPort"), up.local_port)?;
        claim(local_port, what.clone())?;
        let (host, port) = split_host_port(&up.upstream).map_err(|reason| PlanError::HostPort {
            upstream: up.name.clone(),
            reason,
        })?;
        let tls = if up.tls() {
            let spiffe = up.spiffe.as_ref().or(network.spiffe.as_ref());
            let source = plan.cert_source(up.spiffe.as_ref(), network, &what)?;
            let peer = match (&up.spiffe_id, spiffe) {
                (Some(id), _) => vec![SanCheck::UriExact(id.clone())],
                (None, Some(s)) => vec![SanCheck::UriPrefix(format!("spiffe://{}/", s.trust_domain))],
                // Plain PKI from files: the usual host name check.
                (None, None) => vec![match host.parse::<std::net::IpAddr>() {
                    Ok(_) => SanCheck::IpExact(host.clone()),
                    Err(_) => SanCheck::DnsExact(host.clone()),
                }],
            };
            Some(Tls { source, peer })
        } else {
            None
        };
        plan.outbound.push(Outbound {
            name: up.name.clone(),
            local_port,
            host,
            port,
            protocol: up.protocol(),
            tls,
            idle_timeout: up.idle_timeout.as_ref().and_then(|d| d.get()),
        });
    }

    for ib in inbound {
        let what = format!("inbound {:?}", ib.name);
        let listen = port(&format!("{what} port"), ib.port)?;
        claim(listen, what.clone())?;
        let target_port = port(&format!("{what} targetPort"), ib.target_port)?;
        let address: std::net::IpAddr = ib.address().parse().map_err(|_| PlanError::Address {
            what: format!("{what} address"),
            value: ib.address().to_string(),
        })?;
        let spiffe = ib.spiffe.as_ref().or(network.spiffe.as_ref());
        let source = plan.cert_source(ib.spiffe.as_ref(), network, &what)?;
        // The handshake itself admits only the listed IDs; with none listed,
        // any ID of the trust domain (RBAC then decides).
        let peer = if ib.allowed_spiffe_ids.is_empty() {
            vec![SanCheck::UriPrefix(match spiffe {
                Some(s) => format!("spiffe://{}/", s.trust_domain),
                None => "spiffe://".to_string(),
            })]
        } else {
            ib.allowed_spiffe_ids.iter().cloned().map(SanCheck::UriExact).collect()
        };
        plan.inbound.push(InboundRoute {
            name: ib.name.clone(),
            address,
            port: listen,
            target_port,
            allowed: ib.allowed_spiffe_ids.clone(),
            tls: Tls { source, peer },
        });
    }
    Ok(plan)
}

fn port(what: &str, value: i64) -> Result<u16, PlanError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| PlanError::Port {
            what: what.to_string(),
            value,
        })
}

/// `host:port` or `[v6]:port` → (host without brackets, port).
pub fn split_host_port(s: &str) -> Result<(String, u16), String> {
    check_host_port(s)?;
    let (host, port) = s.rsplit_once(':').ok_or_else(|| format!("{s:?} is not host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse().map_err(|_| format!("{s:?}: bad port"))?;
    Ok((host.to_string(), port))
}

impl Plan {
    /// The same plan with every resource name under `scope` (a group's key
    /// followed by `/`), for the robot-wide Envoy.
    pub fn scoped(mut self, scope: &str) -> Plan {
        self.scope = scope.to_string();
        self
    }

    /// A resource's name in Envoy: the plan's scope, then `name`.
    pub fn name(&self, name: &str) -> String {
        format!("{}{name}", self.scope)
    }

    /// Where one TLS context gets its certificates. A spiffe block on the
    /// upstream/inbound itself names its own SPIRE agent; otherwise the
    /// group's tlsFiles (explicitly "instead of a SPIRE agent") win over the
    /// group's spiffe block, which then only names the trust domain.
    fn cert_source(
        &mut self,
        own: Option<&SpiffeConfig>,
        network: &NetworkConfig,
        what: &str,
    ) -> Result<CertSource, PlanError> {
        match (own, &network.tls_files, &network.spiffe) {
            (Some(s), _, _) => Ok(self.spire_source(s)),
            (None, Some(files), _) => {
                self.files = Some(files.clone());
                Ok(CertSource::Files)
            }
            (None, None, Some(s)) => Ok(self.spire_source(s)),
            (None, None, None) => Err(PlanError::NoCertificates { what: what.to_string() }),
        }
    }

    /// The SDS cluster for a SPIRE socket: named by a hash of the path so
    /// the name is stable across updates and distinct sockets never share
    /// one.
    fn spire_source(&mut self, spiffe: &SpiffeConfig) -> CertSource {
        let socket = spiffe.socket_path().to_string();
        let cluster = match self.spire_agents.iter().find(|a| a.socket == socket) {
            Some(a) => a.cluster.clone(),
            None => {
                let digest = Sha256::digest(socket.as_bytes());
                let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
                let cluster = format!("spire-{hex}");
                self.spire_agents.push(SpireAgent {
                    cluster: cluster.clone(),
                    socket,
                });
                cluster
            }
        };
        CertSource::Spire {
            cluster,
            trust_domain: spiffe.trust_domain.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{TlsFiles, Upstream};

    fn spiffe(td: &str, sock: Option<&str>) -> SpiffeConfig {
        SpiffeConfig {
            trust_domain: td.into(),
            agent_socket_path: sock.map(String::from),
        }
    }

    fn up(name: &str, port: i64, upstream: &str) -> Upstream {
        Upstream {
            name: name.into(),
            local_port: port,
            upstream: upstream.into(),
            ..Default::default()
        }
    }

    #[test]
    fn one_sds_cluster_per_socket_and_ids_checked() {
        let net = NetworkConfig {
            spiffe: Some(spiffe("a.org", None)),
            upstreams: vec![
                Upstream {
                    spiffe_id: Some("spiffe://a.org/db".into()),
                    ..up("db", 1000, "db.a.org:5432")
                },
                up("api", 1001, "api.a.org:443"),
                Upstream {
                    spiffe: Some(spiffe("b.org", Some("/run/b.sock"))),
                    ..up("other", 1002, "[::1]:80")
                },
            ],
            ..Default::default()
        };
        let p = plan(&net, &[]).unwrap();
        assert_eq!(p.spire_agents.len(), 2);
        assert_eq!(p.spire_agents[0].socket, crate::api::DEFAULT_SPIRE_SOCKET);
        assert_eq!(p.spire_agents[1].socket, "/run/b.sock");
        assert_eq!(
            p.outbound[0].tls.as_ref().unwrap().peer,
            [SanCheck::UriExact("spiffe://a.org/db".into())]
        );
        assert_eq!(
            p.outbound[1].tls.as_ref().unwrap().peer,
            [SanCheck::UriPrefix("spiffe://a.org/".into())]
        );
        let other = &p.outbound[2];
        assert_eq!((other.host.as_str(), other.port, other.sni()), ("::1", 80, None));
        assert!(matches!(&other.tls.as_ref().unwrap().source,
            CertSource::Spire { cluster, trust_domain } if *cluster == p.spire_agents[1].cluster && trust_domain == "b.org"));
        assert_eq!(p.files, None);
    }

    #[test]
    fn files_check_the_host_name_without_a_trust_domain() {
        let files = TlsFiles {
            cert_path: "/c".into(),
            key_path: "/k".into(),
            ca_path: "/ca".into(),
        };
        let net = NetworkConfig {
            tls_files: Some(files.clone()),
            upstreams: vec![up("a", 1, "svc.local:1"), up("b", 2, "10.0.0.1:2")],
            ..Default::default()
        };
        let p = plan(&net, &[]).unwrap();
        assert_eq!(p.files, Some(files));
        assert_eq!(
            p.outbound[0].tls.as_ref().unwrap().peer,
            [SanCheck::DnsExact("svc.local".into())]
        );
        assert_eq!(
            p.outbound[1].tls.as_ref().unwrap().peer,
            [SanCheck::IpExact("10.0.0.1".into())]
        );
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut net = NetworkConfig {
            upstreams: vec![Upstream {
                tls: Some(false),
                ..up("a", 70000, "x:1")
            }],
            ..Default::default()
        };
        assert!(matches!(plan(&net, &[]), Err(PlanError::Port { value: 70000, .. })));
        net.upstreams[0].local_port = 1;
        net.upstreams[0].upstream = "nope".into();
        assert!(matches!(plan(&net, &[]), Err(PlanError::HostPort { .. })));
        net.upstreams[0].upstream = "x:1".into();
        net.upstreams[0].tls = None;
        assert!(matches!(plan(&net, &[]), Err(PlanError::NoCertificates { .. })));
        net.upstreams[0].tls = Some(false);
        net.upstreams.push(Upstream {
            tls: Some(false),
            ..up("b", 1, "y:2")
        });
        assert!(matches!(plan(&net, &[]), Err(PlanError::PortClash { port: 1, .. })));
        net.upstreams.pop();
        let inbound = Inbound {
            name: "in".into(),
            port: 2,
            target_port: 3,
            address: Some("everywhere".into()),
            allowed_spiffe_ids: vec!["spiffe://a.org/x".into()],
            spiffe: Some(spiffe("a.org", None)),
        };
        assert!(matches!(plan(&net, &[inbound]), Err(PlanError::Address { .. })));
        net.enabled = Some(false);
        assert_eq!(plan(&net, &[]), Err(PlanError::Disabled));
    }
}
