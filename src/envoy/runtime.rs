//! The runtime form on disk: bootstrap + filesystem xDS (+ SDS) files in the
//! group's proxy directory, written atomically, and the Envoy command line.
//!
//! ```text
//! <dir>/envoy.json      bootstrap: node, admin socket, overload manager, xDS paths
//! <dir>/xds/lds.json    listeners  (watched directory: replaced by rename)
//! <dir>/xds/cds.json    clusters, SPIRE SDS clusters first
//! <dir>/sds/*.json      secrets from tlsFiles (filesystem SDS), if any
//! <dir>/admin/admin.sock  admin API (mode 0600); see config::admin_socket_path
//! ```
//!
//! Who may do what: the agent writes every file; the proxy, which may run
//! as another user (`--proxy-user`), only reads them through the
//! directory's group (files 0640, directories 0750, the group inherited
//! from the proxy directory's setgid bit, see `supervisor::DirOwner`). The
//! proxy can write only `admin/` (0770 + sticky), to create its socket:
//! it cannot rewrite its own config, and the agent, often root, never
//! writes where the proxy could have planted a link.

use super::config::{self, short_socket_dir, Layout, MAX_SOCKET_PATH};
use super::options::ProxyOptions;
use super::plan::{self, Plan};
use super::{files, ports, EnvoyError, GroupProxy, Launch, ProxyExtras};
use std::collections::HashSet;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

pub fn prepare(proxy: &GroupProxy, extras: &ProxyExtras) -> Result<Launch, EnvoyError> {
    let plan = plan::plan(&proxy.network, &extras.inbound)?;
    let layout = Layout::new(&proxy.dir);
    check_socket_path(&layout.admin_socket)?;
    check_ports(&plan, &HashSet::new())?;
    let rt = config::render_runtime(&plan, &proxy.node_id(), &layout, &extras.options)?;
    files::private_dir(&proxy.dir).map_err(|e| EnvoyError::Write(proxy.dir.clone(), e))?;
    // Written afresh at every start (Envoy is not running): files an older
    // agent left with other modes or groups do not linger.
    remove_config(&layout)?;
    for dir in [&layout.xds_dir, &layout.sds_dir] {
        files::private_dir(dir).map_err(|e| EnvoyError::Write(dir.clone(), e))?;
    }
    let socket_dir = layout.admin_socket.parent().unwrap_or(&proxy.dir);
    if !socket_dir.starts_with(&proxy.dir) {
        short_socket_parent()?;
    }
    socket_dir_for_proxy(socket_dir, &proxy.dir)?;
    write_resources(&layout, &rt)?;
    write(&layout.bootstrap, &rt.bootstrap)?;
    // A socket file left by a dead Envoy would make the new one fail to bind.
    if fs::symlink_metadata(&layout.admin_socket).is_ok_and(|m| m.file_type().is_socket()) {
        fs::remove_file(&layout.admin_socket).map_err(|e| EnvoyError::Write(layout.admin_socket.clone(), e))?;
    }
    Ok(Launch {
        argv: argv_with(proxy, &extras.options, &layout),
        admin_socket: layout.admin_socket,
    })
}

/// What [`prepare`] would launch, planned and rendered in memory only: a
/// network that cannot become a proxy is refused here, before any file is
/// written or port probed (those checks stay in [`prepare`] and [`update`]).
pub fn launch(proxy: &GroupProxy, extras: &ProxyExtras) -> Result<Launch, EnvoyError> {
    let plan = plan::plan(&proxy.network, &extras.inbound)?;
    let layout = Layout::new(&proxy.dir);
    check_socket_path(&layout.admin_socket)?;
    config::render_runtime(&plan, &proxy.node_id(), &layout, &extras.options)?;
    Ok(Launch {
        argv: argv_with(proxy, &extras.options, &layout),
        admin_socket: layout.admin_socket,
    })
}

pub fn update(proxy: &GroupProxy, extras: &ProxyExtras) -> Result<(), EnvoyError> {
    let plan = plan::plan(&proxy.network, &extras.inbound)?;
    let layout = Layout::new(&proxy.dir);
    // Our own Envoy holds the ports of the listeners it already has.
    check_ports(&plan, &current_ports(&layout.lds))?;
    let rt = config::render_runtime(&plan, &proxy.node_id(), &layout, &extras.options)?;
    write_resources(&layout, &rt)?;
    let bootstrap_now = fs::read_to_string(&layout.bootstrap).unwrap_or_default();
    if bootstrap_now != rt.bootstrap {
        return Err(EnvoyError::Invalid(format!(
            "{}: the proxy's options or directory changed; listeners and clusters were updated, \
             the rest needs an Envoy restart (prepare, then start again)",
            layout.bootstrap.display()
        )));
    }
    Ok(())
}

/// Remove what [`prepare`] made, once the group's Envoy has stopped for
/// good: the config files and the admin socket (which may live outside the
/// directory, see [`config::admin_socket_path`]). Missing files are fine.
pub fn remove(proxy: &GroupProxy) -> Result<(), EnvoyError> {
    let layout = Layout::new(&proxy.dir);
    if fs::symlink_metadata(&layout.admin_socket).is_ok_and(|m| m.file_type().is_socket()) {
        gone(fs::remove_file(&layout.admin_socket), &layout.admin_socket)?;
    }
    if let Some(dir) = layout.admin_socket.parent() {
        // Empty once the socket is gone; a directory the proxy filled is left.
        let _ = fs::remove_dir(dir);
    }
    remove_config(&layout)
}

/// A removal's result, where a file already gone is fine.
pub(super) fn gone(r: std::io::Result<()>, p: &Path) -> Result<(), EnvoyError> {
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(EnvoyError::Write(p.to_path_buf(), e)),
        _ => Ok(()),
    }
}

/// The bootstrap and the xDS and SDS files (not the admin socket).
pub(super) fn remove_config(layout: &Layout) -> Result<(), EnvoyError> {
    gone(fs::remove_file(&layout.bootstrap), &layout.bootstrap)?;
    gone(fs::remove_dir_all(&layout.xds_dir), &layout.xds_dir)?;
    gone(fs::remove_dir_all(&layout.sds_dir), &layout.sds_dir)
}

/// The Envoy command line for this group.
pub fn argv(proxy: &GroupProxy, layout: &Layout) -> Vec<String> {
    argv_with(proxy, &ProxyOptions::default(), layout)
}

/// [`argv`] with non-default options.
pub fn argv_with(proxy: &GroupProxy, o: &ProxyOptions, layout: &Layout) -> Vec<String> {
    command_line(&proxy.envoy_bin, o, layout)
}

/// The Envoy command line for the bootstrap in `layout` (a group's or the
/// robot-wide one).
pub fn command_line(envoy_bin: &Path, o: &ProxyOptions, layout: &Layout) -> Vec<String> {
    vec![
        envoy_bin.to_string_lossy().into_owned(),
        "-c".into(),
        layout.bootstrap.to_string_lossy().into_owned(),
        "--concurrency".into(),
        o.concurrency.max(1).to_string(),
        // We reload through xDS files and never hot-restart, so no shared
        // memory and no domain socket: several Envoys on one robot cannot
        // collide on a base id.
        "--disable-hot-restart".into(),
        "--log-level".into(),
        o.log_level.clone(),
        "--drain-time-s".into(),
        o.drain_time_s.to_string(),
        // Extensions no rendered config can use are not registered at all
        // (less memory, less attack surface); see `extensions`.
        "--disable-extensions".into(),
        super::extensions::disabled().join(","),
    ]
}

/// Secrets first (clusters name them), then clusters (listeners name them),
/// then listeners: each step only refers to what is already in place.
fn write_resources(layout: &Layout, rt: &config::Runtime) -> Result<(), EnvoyError> {
    for (name, content) in &rt.sds {
        write(&layout.sds_dir.join(name), content)?;
    }
    write(&layout.cds, &rt.cds)?;
    write(&layout.lds, &rt.lds)
}

pub(super) fn write(path: &Path, content: &str) -> Result<(), EnvoyError> {
    files::replace(path, content)
        .map(|_| ())
        .map_err(|e| EnvoyError::Write(path.to_path_buf(), e))
}

/// The fallback sockets' parent sits in a shared temp dir: the agent's,
/// 0711 (a proxy running as another user may pass through to its own
/// directory; nobody may list or add).
pub(super) fn short_socket_parent() -> Result<(), EnvoyError> {
    own_dir(&short_socket_dir(), None, 0o711)
}

/// The directory the proxy creates its admin socket in: the agent's, with
/// the proxy directory's group, 0770 and sticky (the proxy may add its
/// socket; no one but a file's owner may remove or rename it).
pub(super) fn socket_dir_for_proxy(dir: &Path, proxy_dir: &Path) -> Result<(), EnvoyError> {
    let group = fs::metadata(proxy_dir)
        .map_err(|e| EnvoyError::Write(proxy_dir.to_path_buf(), e))?
        .gid();
    own_dir(dir, Some(group), 0o1770)
}

/// `dir`, created if missing, opened without following a symlink and
/// refused unless the agent owns it; then its group and exact mode are set
/// through that descriptor (a path could be swapped between check and
/// change: one of these sits in the shared temp dir).
fn own_dir(dir: &Path, group: Option<u32>, mode: u32) -> Result<(), EnvoyError> {
    use rustix::fs::{Mode, OFlags};
    let werr = |e: rustix::io::Errno| EnvoyError::Write(dir.to_path_buf(), e.into());
    match rustix::fs::mkdir(dir, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(werr(e)),
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let not_ours = || EnvoyError::Invalid(format!("{} must be a directory owned by the agent", dir.display()));
    let fd = rustix::fs::open(dir, flags, Mode::empty()).map_err(|e| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => not_ours(),
        e => werr(e),
    })?;
    if rustix::fs::fstat(&fd).map_err(werr)?.st_uid != rustix::process::geteuid().as_raw() {
        return Err(not_ours());
    }
    if let Some(g) = group {
        rustix::fs::fchown(&fd, None, Some(rustix::fs::Gid::from_raw(g))).map_err(werr)?;
    }
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(werr)
}

pub(super) fn check_socket_path(socket: &Path) -> Result<(), EnvoyError> {
    let len = socket.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(EnvoyError::Invalid(format!(
            "admin socket path {} is {len} bytes, more than a unix socket allows ({MAX_SOCKET_PATH}); use a shorter proxy directory",
            socket.display()
        )));
    }
    Ok(())
}

/// Every listener port must be free, except the ones in `ours`.
pub(super) fn check_ports(plan: &Plan, ours: &HashSet<u16>) -> Result<(), EnvoyError> {
    let loopback = IpAddr::from([127, 0, 0, 1]);
    let wanted = plan
        .outbound
        .iter()
        .map(|o| (format!("upstream {:?} localPort", o.name), loopback, o.local_port))
        .chain(
            plan.inbound
                .iter()
                .map(|i| (format!("inbound {:?} port", i.name), i.address, i.port)),
        );
    for (what, ip, port) in wanted {
        if !ours.contains(&port) {
            ports::check_free(&what, ip, port)?;
        }
    }
    Ok(())
}

/// Ports of the listeners in the current LDS file.
pub(super) fn current_ports(lds: &Path) -> HashSet<u16> {
    let Ok(text) = fs::read_to_string(lds) else {
        return HashSet::new();
    };
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(&text) else {
        return HashSet::new();
    };
    doc["resources"]
        .as_array()
        .map(|listeners| {
            listeners
                .iter()
                .filter_map(|l| l["address"]["socket_address"]["port_value"].as_u64())
                .filter_map(|p| u16::try_from(p).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// (SDS cluster name, socket path) of every SPIRE agent in the group's
/// current CDS file, for [`super::admin::not_ready_reasons`].
pub fn spire_sockets(dir: &Path) -> Vec<(String, String)> {
    let Ok(text) = fs::read_to_string(Layout::new(dir).cds) else {
        return Vec::new();
    };
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    let pipe = |c: &serde_json::Value| {
        c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["pipe"]["path"]
            .as_str()
            .map(String::from)
    };
    doc["resources"]
        .as_array()
        .map(|clusters| {
            clusters
                .iter()
                .filter_map(|c| Some((c["name"].as_str()?.to_string(), pipe(c)?)))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_path_that_cannot_fit_is_refused() {
        let err = check_socket_path(Path::new(&"s".repeat(MAX_SOCKET_PATH + 1))).unwrap_err();
        assert!(err.to_string().contains("more than a unix socket allows"), "{err}");
        check_socket_path(Path::new(&"s".repeat(MAX_SOCKET_PATH))).unwrap();
    }
}
