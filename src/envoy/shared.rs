//! The robot-wide proxy (`--proxy-mode shared`): one Envoy, `robot-envoy`,
//! carrying every group's listeners, clusters and secrets. Each group's
//! plan is scoped (`<taskGroup>/` before every resource name, see
//! [`Plan::scoped`]), so a group's listener can only name its own clusters
//! and secrets: no listener of one group routes to another's, and each
//! inbound listener keeps its own RBAC. Groups come and go by rewriting the
//! filesystem-xDS files: resources of the other groups are unchanged, so
//! Envoy leaves them (and their connections) alone.
//!
//! ```text
//! <dir>/envoy.json        bootstrap (no resources)
//! <dir>/xds/{lds,cds}.json  every group's listeners and clusters
//! <dir>/sds/<taskGroup>/  a group's tlsFiles secrets
//! <dir>/admin/admin.sock  admin API
//! ```

use super::config::{self, Layout};
use super::options::ProxyOptions;
use super::plan::{self, Plan};
use super::resources::{self, FileSecrets, SDS_CA_FILE, SDS_CERT_FILE};
use super::runtime;
use super::{files, EnvoyError, Launch, ProxyExtras};
use crate::api::NetworkConfig;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

/// The robot-wide Envoy.
#[derive(Clone, Debug)]
pub struct SharedProxy {
    pub robot: String,
    /// Its own directory (config files, admin socket).
    pub dir: PathBuf,
    pub envoy_bin: PathBuf,
    pub options: ProxyOptions,
}

/// One group's part of the shared proxy.
#[derive(Clone, Debug)]
pub struct Member {
    /// The TaskGroup's name, `<job>-<group>`: the scope of its resources.
    pub key: String,
    pub network: NetworkConfig,
    pub extras: ProxyExtras,
}

impl SharedProxy {
    /// `node.id`: `robot/<robot>`.
    pub fn node_id(&self) -> String {
        format!("robot/{}", self.robot)
    }

    fn layout(&self) -> Layout {
        Layout::new(&self.dir)
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.layout().admin_socket
    }

    /// The command line [`prepare`] returns, without writing anything.
    pub fn argv(&self) -> Vec<String> {
        runtime::command_line(&self.envoy_bin, &self.options, &self.layout())
    }
}

/// Scope prefix of a group's resources.
pub fn scope(key: &str) -> String {
    format!("{key}/")
}

/// Every group's plan, scoped; a port two groups want is an error naming
/// both.
fn plans(members: &[Member]) -> Result<Vec<(String, Plan)>, EnvoyError> {
    let mut out = Vec::new();
    let mut ports: BTreeMap<u16, String> = BTreeMap::new();
    for m in members {
        let p = plan::plan(&m.network, &m.extras.inbound)
            .map_err(|e| EnvoyError::Invalid(format!("task group {}: network proxy: {e}", m.key)))?
            .scoped(&scope(&m.key));
        let wanted = p
            .outbound
            .iter()
            .map(|o| o.local_port)
            .chain(p.inbound.iter().map(|i| i.port));
        for port in wanted {
            if let Some(other) = ports.insert(port, m.key.clone()) {
                return Err(EnvoyError::Invalid(format!(
                    "port {port} is wanted by task groups {other} and {} on this robot's shared proxy",
                    m.key
                )));
            }
        }
        out.push((m.key.clone(), p));
    }
    Ok(out)
}

/// What goes on disk for `members`.
struct Rendered {
    lds: String,
    cds: String,
    /// (directory inside `sds/`, file name, content).
    sds: Vec<(String, &'static str, String)>,
}

fn render(shared: &SharedProxy, plans: &[(String, Plan)]) -> Result<Rendered, EnvoyError> {
    let layout = shared.layout();
    let (mut listeners, mut clusters, mut sds) = (Vec::new(), Vec::new(), Vec::new());
    for (key, p) in plans {
        let dir = layout.sds_dir.join(key);
        let r = resources::render(p, &shared.options, FileSecrets::Sds { dir: &dir })?;
        listeners.extend(r.listeners);
        clusters.extend(r.clusters);
        if let Some(pair) = r.file_secrets {
            sds.push((key.clone(), SDS_CERT_FILE, config::sds_file(&pair.cert)?));
            sds.push((key.clone(), SDS_CA_FILE, config::sds_file(&pair.ca)?));
        }
    }
    Ok(Rendered {
        lds: config::lds_file(&listeners)?,
        cds: config::cds_file(&clusters)?,
        sds,
    })
}

/// Write the shared proxy's files for `members` and return how to launch
/// it. Call it while it is not running (first start, or after it died):
/// every listener port must be free.
pub fn prepare(shared: &SharedProxy, members: &[Member]) -> Result<Launch, EnvoyError> {
    let plans = plans(members)?;
    let layout = shared.layout();
    runtime::check_socket_path(&layout.admin_socket)?;
    for (_, p) in &plans {
        runtime::check_ports(p, &HashSet::new())?;
    }
    let rendered = render(shared, &plans)?;
    let bootstrap = config::bootstrap(&shared.node_id(), &layout, &shared.options)?;
    files::private_dir(&shared.dir).map_err(|e| EnvoyError::Write(shared.dir.clone(), e))?;
    runtime::remove_config(&layout)?;
    for dir in [&layout.xds_dir, &layout.sds_dir] {
        files::private_dir(dir).map_err(|e| EnvoyError::Write(dir.clone(), e))?;
    }
    let socket_dir = layout.admin_socket.parent().unwrap_or(&shared.dir);
    if !socket_dir.starts_with(&shared.dir) {
        runtime::short_socket_parent()?;
    }
    runtime::socket_dir_for_proxy(socket_dir, &shared.dir)?;
    write(&layout, &rendered)?;
    runtime::write(&layout.bootstrap, &bootstrap)?;
    if std::fs::symlink_metadata(&layout.admin_socket)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
    {
        std::fs::remove_file(&layout.admin_socket).map_err(|e| EnvoyError::Write(layout.admin_socket.clone(), e))?;
    }
    Ok(Launch {
        argv: runtime::command_line(&shared.envoy_bin, &shared.options, &layout),
        admin_socket: layout.admin_socket,
    })
}

/// Rewrite the xDS files for the groups now on the robot; the running
/// Envoy applies them live. Other groups' resources render byte for byte
/// the same, so Envoy keeps them and their connections.
pub fn update(shared: &SharedProxy, members: &[Member]) -> Result<(), EnvoyError> {
    let plans = plans(members)?;
    let layout = shared.layout();
    let ours = runtime::current_ports(&layout.lds);
    for (_, p) in &plans {
        runtime::check_ports(p, &ours)?;
    }
    let rendered = render(shared, &plans)?;
    write(&layout, &rendered)?;
    // A group gone takes its secrets' directory with it (after the LDS and
    // CDS files no longer name them).
    let kept: HashSet<&str> = plans.iter().map(|(k, _)| k.as_str()).collect();
    if let Ok(dirs) = std::fs::read_dir(&layout.sds_dir) {
        for d in dirs.flatten() {
            if !kept.contains(d.file_name().to_string_lossy().as_ref()) {
                runtime::gone(std::fs::remove_dir_all(d.path()), &d.path())?;
            }
        }
    }
    Ok(())
}

/// Secrets first, then clusters, then listeners (each names only what is
/// already in place).
fn write(layout: &Layout, r: &Rendered) -> Result<(), EnvoyError> {
    for (key, name, content) in &r.sds {
        let dir = layout.sds_dir.join(key);
        files::private_dir(&dir).map_err(|e| EnvoyError::Write(dir.clone(), e))?;
        runtime::write(&dir.join(name), content)?;
    }
    runtime::write(&layout.cds, &r.cds)?;
    runtime::write(&layout.lds, &r.lds)
}

/// Refuse `members` as [`prepare`] and [`update`] would (a network that
/// cannot become a proxy, a port two groups want), writing nothing.
pub fn check(members: &[Member]) -> Result<(), EnvoyError> {
    plans(members).map(|_| ())
}

/// The names of `member`'s listeners in the shared Envoy.
pub fn listener_names(member: &Member) -> Result<Vec<String>, EnvoyError> {
    let p = plans(std::slice::from_ref(member))?.remove(0).1;
    let outbound = p.outbound.iter().map(|o| p.name(&o.resource_name()));
    let inbound = p.inbound.iter().map(|i| p.name(&i.resource_name()));
    Ok(outbound.chain(inbound).collect())
}

/// True once the shared Envoy is LIVE and serves every listener of
/// `member` (another group's failed listener does not hold it back).
pub fn is_ready(shared: &SharedProxy, member: &Member) -> bool {
    listener_names(member).is_ok_and(|names| super::admin::serves_listeners(&shared.admin_socket(), &names))
}

/// Why group `key`'s part of the shared Envoy is not ready, naming only
/// its own upstreams and SPIRE sockets.
pub fn not_ready_reasons(shared: &SharedProxy, key: &str) -> Vec<String> {
    let sockets = runtime::spire_sockets(&shared.dir);
    match super::admin::not_ready_reasons(&shared.admin_socket(), &sockets, &scope(key)) {
        Ok(r) if r.is_empty() => vec!["Envoy is not ready; no specific cause found in its stats".into()],
        Ok(r) => r,
        Err(e) => vec![e.to_string()],
    }
}

/// Health of group `key`'s upstreams, by their manifest names.
pub fn upstream_health(
    shared: &SharedProxy,
    key: &str,
) -> Result<Vec<super::admin::UpstreamHealth>, super::admin::AdminError> {
    super::admin::upstream_health(&shared.admin_socket(), &scope(key))
}

/// Remove the shared proxy's files once it stopped for good.
pub fn remove(shared: &SharedProxy) -> Result<(), EnvoyError> {
    let layout = shared.layout();
    runtime::gone(std::fs::remove_file(&layout.admin_socket), &layout.admin_socket)?;
    runtime::remove_config(&layout)
}
