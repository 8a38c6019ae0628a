//! Whole Envoy documents for one group: the self-contained static config
//! (`render-envoy`) and the runtime form (bootstrap + filesystem xDS files).
//! Both are built from the same resources, so what `render-envoy` shows and
//! `envoy --mode validate` accepts is what the agent runs. Also where the
//! runtime form's files and the admin socket go ([`Layout`]), which the
//! documents name and `runtime` writes.

use super::options::ProxyOptions;
use super::plan::Plan;
use super::render::{fill, list, quoted, RenderError, Slot};
use super::resources::{self, FileSecrets, Resources, SDS_CA_FILE, SDS_CERT_FILE, SECRET_TYPE};
use super::templates as t;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

/// Who this Envoy is, and where its admin socket lives.
#[derive(Clone, Debug)]
pub struct Identity<'a> {
    /// `node.id`: `<robot>/<job>/<group>`, shown in Envoy's logs and
    /// /server_info (see [`super::GroupProxy::node_id`]).
    pub node_id: String,
    pub admin_socket: &'a Path,
}

/// The one-file form: every listener, cluster and secret is static.
pub fn render_static(plan: &Plan, id: &Identity<'_>, opts: &ProxyOptions) -> Result<String, RenderError> {
    let r = resources::render(plan, opts, FileSecrets::Static)?;
    let doc = fill(
        t::STATIC,
        &[
            ("node_id", Slot::text(&id.node_id)),
            ("node_cluster", Slot::text("k8s4r")),
            ("admin", Slot::json(admin(id)?)),
            ("overload", Slot::json(overload(opts)?)),
            ("stats", Slot::json(fill(t::STATS, &[])?)),
            ("listeners", Slot::json(list(&r.listeners))),
            ("clusters", Slot::json(list(&r.clusters))),
            (
                "secrets",
                Slot::json(list(&r.file_secrets.map(|p| vec![p.cert, p.ca]).unwrap_or_default())),
            ),
        ],
    )?;
    Ok(pretty(&doc))
}

/// Where the runtime form's files go inside the proxy directory.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    pub bootstrap: PathBuf,
    pub xds_dir: PathBuf,
    pub lds: PathBuf,
    pub cds: PathBuf,
    pub sds_dir: PathBuf,
    /// `<dir>/admin.sock`, or a short stand-in when that path is too long
    /// for a unix socket (see [`admin_socket_path`]).
    pub admin_socket: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        let xds_dir = dir.join("xds");
        let sds_dir = dir.join("sds");
        Layout {
            bootstrap: dir.join("envoy.json"),
            lds: xds_dir.join("lds.json"),
            cds: xds_dir.join("cds.json"),
            xds_dir,
            sds_dir,
            admin_socket: admin_socket_path(dir),
        }
    }
}

/// `sun_path` holds 108 bytes including the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// Where a group's admin socket lives: `<dir>/admin/admin.sock`, unless
/// that path is longer than a unix socket address holds (107 bytes; long job
/// and group names under a deep data directory get there). Then it is
/// `<tmp>/k8s4r-envoy-<uid>/<hash of dir>/admin.sock`: short, stable for
/// the directory, so every caller computes the same path.
pub fn admin_socket_path(dir: &Path) -> PathBuf {
    let inside = dir.join("admin/admin.sock");
    if inside.as_os_str().len() <= MAX_SOCKET_PATH {
        return inside;
    }
    let digest = Sha256::digest(dir.as_os_str().as_encoded_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    short_socket_dir().join(hex).join("admin.sock")
}

pub(super) fn short_socket_dir() -> PathBuf {
    std::env::temp_dir().join(format!("k8s4r-envoy-{}", rustix::process::getuid().as_raw()))
}

/// The runtime form's file contents.
#[derive(Clone, Debug, PartialEq)]
pub struct Runtime {
    pub bootstrap: String,
    pub lds: String,
    pub cds: String,
    /// (file name inside `sds_dir`, content); empty without `tlsFiles`.
    pub sds: Vec<(&'static str, String)>,
}

pub fn render_runtime(
    plan: &Plan,
    node_id: &str,
    layout: &Layout,
    opts: &ProxyOptions,
) -> Result<Runtime, RenderError> {
    let r: Resources = resources::render(plan, opts, FileSecrets::Sds { dir: &layout.sds_dir })?;
    let sds = match &r.file_secrets {
        None => Vec::new(),
        Some(pair) => vec![
            (SDS_CERT_FILE, xds_file(std::slice::from_ref(&pair.cert), SECRET_TYPE)?),
            (SDS_CA_FILE, xds_file(std::slice::from_ref(&pair.ca), SECRET_TYPE)?),
        ],
    };
    Ok(Runtime {
        bootstrap: bootstrap(node_id, layout, opts)?,
        lds: xds_file(&r.listeners, LISTENER_TYPE)?,
        cds: xds_file(&r.clusters, CLUSTER_TYPE)?,
        sds,
    })
}

/// The bootstrap of the runtime form: node, admin, overload manager,
/// stats and the paths of the xDS files; no resources.
pub fn bootstrap(node_id: &str, layout: &Layout, opts: &ProxyOptions) -> Result<String, RenderError> {
    let id = Identity {
        node_id: node_id.to_string(),
        admin_socket: &layout.admin_socket,
    };
    let doc = fill(
        t::BOOTSTRAP,
        &[
            ("node_id", Slot::text(node_id)),
            ("node_cluster", Slot::text("k8s4r")),
            ("admin", Slot::json(admin(&id)?)),
            ("overload", Slot::json(overload(opts)?)),
            ("stats", Slot::json(fill(t::STATS, &[])?)),
            ("lds_path", Slot::text(layout.lds.to_string_lossy())),
            ("cds_path", Slot::text(layout.cds.to_string_lossy())),
            ("xds_dir", Slot::text(layout.xds_dir.to_string_lossy())),
        ],
    )?;
    Ok(pretty(&doc))
}

/// One LDS or CDS file from listeners or clusters already rendered.
pub fn lds_file(listeners: &[String]) -> Result<String, RenderError> {
    xds_file(listeners, LISTENER_TYPE)
}

pub fn cds_file(clusters: &[String]) -> Result<String, RenderError> {
    xds_file(clusters, CLUSTER_TYPE)
}

/// A filesystem-SDS secret file.
pub fn sds_file(secret: &str) -> Result<String, RenderError> {
    xds_file(std::slice::from_ref(&secret.to_string()), SECRET_TYPE)
}

/// A filesystem xDS file: `{"version_info", "resources": [Any...]}`. The
/// version is a hash of the resources, so Envoy's logs and stats show which
/// content it runs.
fn xds_file(resources: &[String], type_url: &str) -> Result<String, RenderError> {
    let typed: Vec<String> = resources
        .iter()
        .map(|r| match r.trim_start().strip_prefix('{') {
            Some(rest) => Ok(format!("{{\"@type\":{},{rest}", quoted(type_url))),
            None => Err(RenderError::NotJson {
                template: "xds resource",
                error: "a resource is not a JSON object".into(),
            }),
        })
        .collect::<Result<_, _>>()?;
    let body = list(&typed);
    let digest = Sha256::digest(body.as_bytes());
    let version: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let doc = fill(
        t::XDS_FILE,
        &[("version", Slot::text(version)), ("resources", Slot::json(body))],
    )?;
    Ok(pretty(&doc))
}

fn admin(id: &Identity<'_>) -> Result<String, RenderError> {
    fill(
        t::ADMIN,
        &[
            ("socket", Slot::text(id.admin_socket.to_string_lossy())),
            // 0600: only the agent's user may drive Envoy's admin API.
            ("mode", Slot::number(0o600u32)),
        ],
    )
}

fn overload(opts: &ProxyOptions) -> Result<String, RenderError> {
    fill(
        t::OVERLOAD,
        &[
            ("max_heap_bytes", Slot::number(opts.max_heap_bytes)),
            ("max_connections", Slot::number(opts.max_downstream_connections)),
        ],
    )
}

/// Re-indent a rendered document for people reading it; `fill` has already
/// checked that it is JSON, so a failure here cannot happen and would only
/// leave the compact text.
fn pretty(doc: &str) -> String {
    serde_json::from_str::<serde_json::Value>(doc)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .map(|mut s| {
            s.push('\n');
            s
        })
        .unwrap_or_else(|_| doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{NetworkConfig, Protocol, SpiffeConfig, TlsFiles, Upstream};
    use crate::envoy::{plan, Inbound};

    #[test]
    fn a_long_directory_gets_a_short_private_admin_socket() {
        let short = Path::new("/var/lib/k8s4r/alloc/job-group/envoy");
        assert_eq!(admin_socket_path(short), short.join("admin/admin.sock"));
        let long = PathBuf::from(format!("/var/lib/k8s4r/alloc/{}/envoy", "g".repeat(120)));
        let socket = admin_socket_path(&long);
        assert!(socket.as_os_str().len() <= MAX_SOCKET_PATH, "{}", socket.display());
        assert_eq!(
            socket.parent().and_then(Path::parent),
            Some(short_socket_dir().as_path())
        );
        assert_eq!(socket, admin_socket_path(&long), "stable for the directory");
        assert_ne!(socket, admin_socket_path(&long.join("other")));
    }

    /// Unvalidated, hostile strings end up as data, never as JSON syntax.
    #[test]
    fn hostile_strings_stay_inside_json_strings() {
        let nasty = "x\"},{\"evil\":1,\"\\\u{0}\n\u{2028}é";
        let network = NetworkConfig {
            spiffe: Some(SpiffeConfig {
                trust_domain: nasty.into(),
                agent_socket_path: Some(format!("/run/{nasty}.sock")),
            }),
            tls_files: Some(TlsFiles {
                cert_path: format!("/c/{nasty}"),
                key_path: format!("/c/{nasty}k"),
                ca_path: format!("/{nasty}"),
            }),
            upstreams: vec![
                Upstream {
                    name: nasty.into(),
                    local_port: 1,
                    upstream: "db.example.org:1".into(),
                    protocol: Some(Protocol::Http),
                    spiffe_id: Some(nasty.into()),
                    spiffe: Some(SpiffeConfig {
                        trust_domain: nasty.into(),
                        agent_socket_path: None,
                    }),
                    ..Default::default()
                },
                Upstream {
                    name: "files".into(),
                    local_port: 2,
                    upstream: "10.0.0.1:2".into(),
                    protocol: Some(Protocol::Grpc),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let inbound = [Inbound {
            name: nasty.into(),
            port: 3,
            target_port: 4,
            address: None,
            allowed_spiffe_ids: vec![nasty.into()],
            spiffe: None,
        }];
        let p = plan::plan(&network, &inbound).unwrap();
        let dir = Path::new("/tmp/k8s4r-test-\"dir");
        let layout = Layout::new(dir);
        let id = Identity {
            node_id: nasty.into(),
            admin_socket: &layout.admin_socket,
        };
        let text = render_static(&p, &id, &ProxyOptions::default()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["node"]["id"], nasty);
        assert!(v.get("evil").is_none());
        let rt = render_runtime(&p, nasty, &layout, &ProxyOptions::default()).unwrap();
        for doc in [&rt.bootstrap, &rt.lds, &rt.cds] {
            serde_json::from_str::<serde_json::Value>(doc).unwrap();
        }
        let lds: serde_json::Value = serde_json::from_str(&rt.lds).unwrap();
        assert_eq!(lds["resources"][0]["name"], format!("out-{nasty}"));
        assert_eq!(rt.sds.len(), 2);
    }

    /// `render-envoy` shows what the agent runs: without file secrets (whose
    /// delivery differs by design) both forms hold the same resources.
    #[test]
    fn static_and_runtime_forms_hold_the_same_resources() {
        let network = NetworkConfig {
            spiffe: Some(SpiffeConfig {
                trust_domain: "example.org".into(),
                agent_socket_path: None,
            }),
            upstreams: ["tcp", "http", "grpc"]
                .iter()
                .zip([Protocol::Tcp, Protocol::Http, Protocol::Grpc])
                .enumerate()
                .map(|(i, (name, protocol))| Upstream {
                    name: (*name).into(),
                    local_port: 1000 + i as i64,
                    upstream: format!("{name}.example.org:443"),
                    protocol: Some(protocol),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let p = plan::plan(&network, &[]).unwrap();
        let layout = Layout::new(Path::new("/run/k8s4r/g"));
        let id = Identity {
            node_id: "j/g".into(),
            admin_socket: &layout.admin_socket,
        };
        let opts = ProxyOptions::default();
        let st: serde_json::Value = serde_json::from_str(&render_static(&p, &id, &opts).unwrap()).unwrap();
        let rt = render_runtime(&p, "j/g", &layout, &opts).unwrap();
        let untyped = |doc: &str| -> serde_json::Value {
            let mut v: serde_json::Value = serde_json::from_str(doc).unwrap();
            for r in v["resources"].as_array_mut().unwrap() {
                r.as_object_mut().unwrap().remove("@type");
            }
            v["resources"].take()
        };
        assert_eq!(st["static_resources"]["listeners"], untyped(&rt.lds));
        assert_eq!(st["static_resources"]["clusters"], untyped(&rt.cds));
        let boot: serde_json::Value = serde_json::from_str(&rt.bootstrap).unwrap();
        assert_eq!(st["admin"], boot["admin"]);
        assert_eq!(st["overload_manager"], boot["overload_manager"]);
    }

    #[test]
    fn active_health_checks_can_be_turned_off() {
        let network = NetworkConfig {
            upstreams: vec![Upstream {
                name: "db".into(),
                local_port: 1,
                upstream: "db:5432".into(),
                tls: Some(false),
                ..Default::default()
            }],
            ..Default::default()
        };
        let p = plan::plan(&network, &[]).unwrap();
        let layout = Layout::new(Path::new("/run/g"));
        let checks = |opts: &ProxyOptions| {
            let rt = render_runtime(&p, "j/g", &layout, opts).unwrap();
            let cds: serde_json::Value = serde_json::from_str(&rt.cds).unwrap();
            cds["resources"][0]["health_checks"].as_array().map_or(0, Vec::len)
        };
        assert_eq!(checks(&ProxyOptions::default()), 1);
        let off = ProxyOptions {
            health_check_interval_s: 0,
            ..Default::default()
        };
        assert_eq!(checks(&off), 0);
    }
}
