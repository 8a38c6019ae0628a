//! A [`Plan`] rendered into Envoy resources (listeners, clusters, secrets),
//! shared by the one-file static form and the runtime (xDS files) form.

use super::options::ProxyOptions;
use super::plan::{
    spire_bundle_name, CertSource, InboundRoute, Outbound, Plan, SanCheck, Tls, FILES_CA_NAME, FILES_CERT_NAME,
    SPIRE_SVID_NAME,
};
use super::render::{fill, list, quoted, RenderError, Slot};
use super::templates as t;
use crate::api::{Protocol, TlsFiles};
use std::path::Path;

/// How secrets from `network.tlsFiles` reach Envoy.
#[derive(Clone, Copy, Debug)]
pub enum FileSecrets<'a> {
    /// In `static_resources.secrets` of a self-contained config.
    Static,
    /// Filesystem SDS: one file per secret in `dir`, watched, so certificate
    /// rotation (and a changed path) needs no restart.
    Sds { dir: &'a Path },
}

/// File name of each filesystem-SDS secret inside the SDS directory.
pub const SDS_CERT_FILE: &str = "cert.json";
pub const SDS_CA_FILE: &str = "ca.json";

pub const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    pub listeners: Vec<String>,
    /// SDS clusters first: Envoy resolves the clusters an SDS config names
    /// when it creates the clusters that use it.
    pub clusters: Vec<String>,
    /// Secrets read from `tlsFiles`, if some TLS context uses them.
    pub file_secrets: Option<FileSecretPair>,
}

/// The two secrets made from `tlsFiles`.
#[derive(Clone, Debug, PartialEq)]
pub struct FileSecretPair {
    /// [`FILES_CERT_NAME`]: certificate chain and key.
    pub cert: String,
    /// [`FILES_CA_NAME`]: the CA that peers must chain to.
    pub ca: String,
}

pub fn render(plan: &Plan, opts: &ProxyOptions, files: FileSecrets<'_>) -> Result<Resources, RenderError> {
    let ctx = Ctx { opts, files, plan };
    let mut out = Resources::default();
    for agent in &plan.spire_agents {
        out.clusters.push(fill(
            t::SDS_CLUSTER,
            &[
                ("name", Slot::text(plan.name(&agent.cluster))),
                ("socket", Slot::text(&agent.socket)),
            ],
        )?);
    }
    for up in &plan.outbound {
        out.listeners.push(ctx.outbound_listener(up)?);
        out.clusters.push(ctx.outbound_cluster(up)?);
    }
    for ib in &plan.inbound {
        out.listeners.push(ctx.inbound_listener(ib)?);
        out.clusters.push(ctx.local_cluster(ib)?);
    }
    if let Some(f) = &plan.files {
        out.file_secrets = Some(file_secrets(plan, f)?);
    }
    Ok(out)
}

struct Ctx<'a> {
    opts: &'a ProxyOptions,
    files: FileSecrets<'a>,
    plan: &'a Plan,
}

/// Envoy's tcp_proxy idle timeout when the upstream sets none.
const TCP_IDLE_TIMEOUT_DEFAULT: &str = "3600s";

impl Ctx<'_> {
    fn outbound_listener(&self, up: &Outbound) -> Result<String, RenderError> {
        let name = self.plan.name(&up.resource_name());
        let filter = match up.protocol {
            Protocol::Tcp => {
                let idle = up
                    .idle_timeout
                    .map_or(TCP_IDLE_TIMEOUT_DEFAULT.to_string(), |d| format!("{}s", d.as_secs()));
                tcp_proxy(&name, &name, ConnectWhen::Accepted, &idle)?
            }
            // Plain HTTP APIs: a bounded request time; retry only what is safe
            // to retry for any method (nothing reached the upstream app).
            Protocol::Http => http_filter(&name, "15s", "300s")?,
            // gRPC calls may stream for long: no route timeout.
            Protocol::Grpc => http_filter(&name, "0s", "3600s")?,
        };
        fill(
            t::LISTENER,
            &[
                ("name", Slot::text(&name)),
                // The app side: loopback only, never 0.0.0.0.
                ("address", Slot::text("127.0.0.1")),
                ("port", Slot::number(up.local_port)),
                ("buffer_limit", Slot::number(self.opts.buffer_limit_bytes)),
                ("ignore_global_conn_limit", Slot::json("false")),
                ("access_log", Slot::json("null")),
                ("network_filters", Slot::json(list(&[filter]))),
                ("transport_socket", Slot::json("null")),
                ("handshake_timeout", Slot::json("null")),
            ],
        )
    }

    fn outbound_cluster(&self, up: &Outbound) -> Result<String, RenderError> {
        let name = self.plan.name(&up.resource_name());
        // Active TCP checks give the agent an upstream health verdict for
        // the group's status; while the app sends nothing, probe 6x less
        // often so an idle fleet does not load the servers. 0 turns them
        // off (some servers log every probe, e.g. PostgreSQL's "incomplete
        // startup packet"); outlier detection stays either way.
        let health_checks = match self.opts.health_check_interval_s {
            0 => Vec::new(),
            interval => vec![fill(
                t::HEALTH_CHECK_TCP,
                &[
                    ("interval", Slot::text(format!("{interval}s"))),
                    (
                        "no_traffic_interval",
                        Slot::text(format!("{}s", interval.saturating_mul(6))),
                    ),
                ],
            )?],
        };
        let protocol_options = match up.protocol {
            Protocol::Tcp => "null".into(),
            Protocol::Http => {
                http_protocol_options(self.opts.http1_idle_timeout_s, r#"{"http_protocol_options":{}}"#.into())?
            }
            Protocol::Grpc => {
                let keepalive = r#"{"interval":"30s","timeout":"5s"}"#;
                let h2 = fill(t::HTTP2_OPTIONS, &[("keepalive", Slot::json(keepalive))])?;
                http_protocol_options(
                    self.opts.http2_idle_timeout_s,
                    format!(r#"{{"http2_protocol_options":{h2}}}"#),
                )?
            }
        };
        // An IP literal has nothing to resolve.
        let (discovery, cluster_type) = match up.host.parse::<std::net::IpAddr>() {
            Ok(_) => (quoted("STATIC"), "null".to_string()),
            Err(_) => ("null".to_string(), fill(t::DNS_CLUSTER, &[])?),
        };
        let transport_socket = match &up.tls {
            None => "null".into(),
            Some(tls) => {
                let alpn = match up.protocol {
                    Protocol::Tcp => "null",
                    Protocol::Http => r#"["http/1.1"]"#,
                    Protocol::Grpc => r#"["h2"]"#,
                };
                fill(
                    t::TLS_UPSTREAM,
                    &[
                        ("sni", Slot::json(up.sni().map_or("null".into(), quoted))),
                        ("alpn", Slot::json(alpn)),
                        ("cert_name", Slot::text(self.cert_name(tls))),
                        ("cert_sds", Slot::json(self.sds_config(tls, SDS_CERT_FILE)?)),
                        ("san_matchers", Slot::json(san_matchers(&tls.peer))),
                        ("ca_name", Slot::text(self.ca_name(tls))),
                        ("ca_sds", Slot::json(self.sds_config(tls, SDS_CA_FILE)?)),
                    ],
                )?
            }
        };
        fill(
            t::CLUSTER,
            &[
                ("name", Slot::text(&name)),
                ("type", Slot::json(discovery)),
                ("cluster_type", Slot::json(cluster_type)),
                ("connect_timeout", Slot::text("5s")),
                ("buffer_limit", Slot::number(self.opts.buffer_limit_bytes)),
                ("connection_options", Slot::json(fill(t::TCP_KEEPALIVE, &[])?)),
                ("host", Slot::text(&up.host)),
                ("port", Slot::number(up.port)),
                ("outlier_detection", Slot::json(fill(t::OUTLIER_DETECTION, &[])?)),
                ("health_checks", Slot::json(list(&health_checks))),
                ("protocol_options", Slot::json(protocol_options)),
                ("transport_socket", Slot::json(transport_socket)),
            ],
        )
    }

    fn inbound_listener(&self, ib: &InboundRoute) -> Result<String, RenderError> {
        let name = self.plan.name(&ib.resource_name());
        let principals: Vec<String> = ib
            .allowed
            .iter()
            .map(|id| format!(r#"{{"authenticated":{{"principal_name":{{"exact":{}}}}}}}"#, quoted(id)))
            .collect();
        // Three locks: the handshake accepts only the allowed SPIFFE IDs
        // (the plan pins them as the peer SANs), the local connection opens
        // only after that handshake, and RBAC checks the principal again
        // before any byte is forwarded (defence in depth, and the policy
        // that shows in the `rbac.*` stats).
        let rbac = fill(
            t::FILTER_RBAC,
            &[
                ("stat_prefix", Slot::text(&name)),
                ("principals", Slot::json(list(&principals))),
            ],
        )?;
        let limit = fill(
            t::FILTER_CONNECTION_LIMIT,
            &[
                ("stat_prefix", Slot::text(&name)),
                ("max_connections", Slot::number(self.opts.inbound_max_connections)),
            ],
        )?;
        let local = self.plan.name(&local_cluster_name(ib));
        let proxy = tcp_proxy(&name, &local, ConnectWhen::PeerVerified, TCP_IDLE_TIMEOUT_DEFAULT)?;
        let access_log = fill(t::ACCESS_LOG_REFUSED, &[("listener", Slot::text(&name))])?;
        let tls = &ib.tls;
        let transport_socket = fill(
            t::TLS_DOWNSTREAM,
            &[
                ("cert_name", Slot::text(self.cert_name(tls))),
                ("cert_sds", Slot::json(self.sds_config(tls, SDS_CERT_FILE)?)),
                ("san_matchers", Slot::json(san_matchers(&tls.peer))),
                ("ca_name", Slot::text(self.ca_name(tls))),
                ("ca_sds", Slot::json(self.sds_config(tls, SDS_CA_FILE)?)),
            ],
        )?;
        fill(
            t::LISTENER,
            &[
                ("name", Slot::text(&name)),
                ("address", Slot::text(ib.address.to_string())),
                ("port", Slot::number(ib.port)),
                ("buffer_limit", Slot::number(self.opts.buffer_limit_bytes)),
                ("ignore_global_conn_limit", Slot::json("true")),
                ("access_log", Slot::json(list(&[access_log]))),
                // The limit first: a connection past it costs no RBAC work.
                ("network_filters", Slot::json(list(&[limit, rbac, proxy]))),
                ("transport_socket", Slot::json(transport_socket)),
                (
                    "handshake_timeout",
                    Slot::json(quoted(&format!("{}s", self.opts.inbound_handshake_timeout_s))),
                ),
            ],
        )
    }

    fn local_cluster(&self, ib: &InboundRoute) -> Result<String, RenderError> {
        fill(
            t::CLUSTER,
            &[
                ("name", Slot::text(self.plan.name(&local_cluster_name(ib)))),
                ("type", Slot::json(quoted("STATIC"))),
                ("cluster_type", Slot::json("null")),
                ("connect_timeout", Slot::text("1s")),
                ("buffer_limit", Slot::number(self.opts.buffer_limit_bytes)),
                // Loopback: no path to lose.
                ("connection_options", Slot::json("null")),
                ("host", Slot::text("127.0.0.1")),
                ("port", Slot::number(ib.target_port)),
                ("outlier_detection", Slot::json("null")),
                ("health_checks", Slot::json("[]")),
                ("protocol_options", Slot::json("null")),
                ("transport_socket", Slot::json("null")),
            ],
        )
    }

    fn cert_name(&self, tls: &Tls) -> String {
        match &tls.source {
            CertSource::Spire { .. } => SPIRE_SVID_NAME.into(),
            CertSource::Files => self.plan.name(FILES_CERT_NAME),
        }
    }

    fn ca_name(&self, tls: &Tls) -> String {
        match &tls.source {
            CertSource::Spire { trust_domain, .. } => spire_bundle_name(trust_domain),
            CertSource::Files => self.plan.name(FILES_CA_NAME),
        }
    }

    /// The `sds_config` of one secret: gRPC to SPIRE, a watched file, or
    /// `null` (a static secret of the same name).
    fn sds_config(&self, tls: &Tls, file: &str) -> Result<String, RenderError> {
        match (&tls.source, self.files) {
            (CertSource::Spire { cluster, .. }, _) => fill(
                t::SDS_GRPC,
                &[
                    ("cluster", Slot::text(self.plan.name(cluster))),
                    (
                        "initial_fetch_timeout",
                        Slot::text(format!("{}s", self.opts.sds_initial_fetch_timeout_s)),
                    ),
                ],
            ),
            (CertSource::Files, FileSecrets::Static) => Ok("null".into()),
            (CertSource::Files, FileSecrets::Sds { dir }) => fill(
                t::SDS_FILE,
                &[
                    ("path", Slot::text(dir.join(file).to_string_lossy())),
                    ("dir", Slot::text(dir.to_string_lossy())),
                ],
            ),
        }
    }
}

fn local_cluster_name(ib: &InboundRoute) -> String {
    format!("{}-local", ib.resource_name())
}

/// When the tcp_proxy opens its upstream connection.
#[derive(Clone, Copy)]
enum ConnectWhen {
    /// At once: the local app is waiting for its upstream.
    Accepted,
    /// Only after the peer passed the mTLS handshake (which pins the
    /// allowed SPIFFE IDs): a refused peer never causes a connection to the
    /// task behind an inbound listener.
    PeerVerified,
}

fn tcp_proxy(stat_prefix: &str, cluster: &str, when: ConnectWhen, idle_timeout: &str) -> Result<String, RenderError> {
    // Envoy wants an early-data limit with a delayed connect: 0 keeps the
    // peer's bytes in the socket until the task is connected (null: unset).
    let (mode, early_data) = match when {
        ConnectWhen::Accepted => ("IMMEDIATE", "null"),
        ConnectWhen::PeerVerified => ("ON_DOWNSTREAM_TLS_HANDSHAKE", "0"),
    };
    fill(
        t::FILTER_TCP_PROXY,
        &[
            ("stat_prefix", Slot::text(stat_prefix)),
            ("cluster", Slot::text(cluster)),
            ("connect_mode", Slot::text(mode)),
            ("early_data", Slot::json(early_data)),
            ("idle_timeout", Slot::text(idle_timeout)),
        ],
    )
}

/// An upstream's HTTP protocol options: the pooled connections' idle
/// timeout and the protocol (`explicit_http_config`).
fn http_protocol_options(idle_timeout_s: u32, explicit: String) -> Result<String, RenderError> {
    fill(
        t::HTTP_PROTOCOL_OPTIONS,
        &[
            ("idle_timeout", Slot::text(format!("{idle_timeout_s}s"))),
            ("explicit_http_config", Slot::json(explicit)),
        ],
    )
}

fn http_filter(name: &str, route_timeout: &str, stream_idle_timeout: &str) -> Result<String, RenderError> {
    fill(
        t::FILTER_HTTP,
        &[
            ("stat_prefix", Slot::text(name)),
            ("cluster", Slot::text(name)),
            ("route_timeout", Slot::text(route_timeout)),
            ("stream_idle_timeout", Slot::text(stream_idle_timeout)),
            (
                "http2_options",
                Slot::json(fill(t::HTTP2_OPTIONS, &[("keepalive", Slot::json("null"))])?),
            ),
            // Safe for any method: the request never reached the upstream app.
            (
                "retry_on",
                Slot::text("connect-failure,refused-stream,reset-before-request"),
            ),
        ],
    )
}

fn san_matchers(checks: &[SanCheck]) -> String {
    let items: Vec<String> = checks
        .iter()
        .map(|c| {
            let (san_type, op, value) = match c {
                SanCheck::UriExact(v) => ("URI", "exact", v),
                SanCheck::UriPrefix(v) => ("URI", "prefix", v),
                SanCheck::DnsExact(v) => ("DNS", "exact", v),
                SanCheck::IpExact(v) => ("IP_ADDRESS", "exact", v),
            };
            format!(r#"{{"san_type":"{san_type}","matcher":{{"{op}":{}}}}}"#, quoted(value))
        })
        .collect();
    list(&items)
}

/// The certificate and CA secrets read from `tlsFiles`. Cert and key are
/// watched through their directory when they share one, so a rotation that
/// moves both in at once is read as one consistent pair.
fn file_secrets(plan: &Plan, files: &TlsFiles) -> Result<FileSecretPair, RenderError> {
    let parent = |p: &str| Path::new(p).parent().map(|d| d.to_string_lossy().into_owned());
    let watch = |dir: Option<String>| match dir {
        Some(d) if !d.is_empty() => format!(r#"{{"path":{}}}"#, quoted(&d)),
        _ => "null".into(),
    };
    let cert_dir = parent(&files.cert_path).filter(|d| Some(d) == parent(&files.key_path).as_ref());
    let cert = fill(
        t::SECRET_CERT,
        &[
            ("name", Slot::text(plan.name(FILES_CERT_NAME))),
            ("cert_path", Slot::text(&files.cert_path)),
            ("key_path", Slot::text(&files.key_path)),
            ("watched_directory", Slot::json(watch(cert_dir))),
        ],
    )?;
    let ca = fill(
        t::SECRET_CA,
        &[
            ("name", Slot::text(plan.name(FILES_CA_NAME))),
            ("ca_path", Slot::text(&files.ca_path)),
            ("watched_directory", Slot::json(watch(parent(&files.ca_path)))),
        ],
    )?;
    Ok(FileSecretPair { cert, ca })
}
