//! Envoy configuration for a TaskGroup's proxy, rendered from templates
//! compiled into the binary (no YAML/protobuf runtime).
//!
//! What the agent calls (src/agent/reconcile/ and robot_proxy.rs):
//! - [`GroupProxy`]: what the agent knows about a group that has a network
//!   (its `network` block, `network.inbound` included).
//! - [`prepare`]: write bootstrap + filesystem-xDS files into the group's
//!   proxy directory (atomically) and return how to launch Envoy ([`Launch`]).
//! - [`update`]: rewrite the xDS files for a changed network, no restart.
//! - [`is_ready`]: Envoy's admin `/ready` over the per-group unix socket.
//! - [`proxy_env`]: the `PROXY_<NAME>_{ADDR,HOST,PORT}` variables for tasks.
//! - [`shared`] (`--proxy-mode shared`): prepare, update, readiness and
//!   not-ready reasons of the robot-wide Envoy, with [`ProxyExtras`] and
//!   [`ProxyOptions`] at their defaults.
//!
//! Used by the tests (and `render-envoy`), not by the agent: [`prepare_with`]
//! and [`update_with`] (extra inbound listeners and tuning beyond the
//! manifest, in [`ProxyExtras`]), [`not_ready_reasons`] and
//! [`upstream_health`] of a group's own Envoy, [`remove`], and
//! [`group_network`] (also the control plane's).
//!
//! Modules, each with one job:
//! - [`plan`]: network (manifest) → which listeners/clusters/secrets; pure;
//! - [`render`] + [`templates`]: the placeholder filler and the JSON templates;
//! - [`resources`]: plan → listener/cluster/secret JSON;
//! - [`config`]: whole documents (static one-file form, runtime form);
//! - [`runtime`]: files on disk, atomically, and the Envoy command line;
//! - [`files`]: the xDS files, through the one atomic write; [`options`]: sizing and flags;
//! - [`admin`]: the admin API (over [`crate::http_client`]); [`ports`]: port clashes;
//! - [`inbound`]: the inbound mTLS + RBAC manifest field; [`cli`]: `render-envoy`;
//! - [`extensions`]: the `--disable-extensions` list, derived from what
//!   the renderer emits;
//! - [`shared`]: the robot-wide Envoy of `--proxy-mode shared`, every
//!   group's resources scoped by its name;
//! - [`check`]: the structural check every rendered config passes (tests, fuzzing).

pub mod admin;
pub mod check;
pub mod cli;
pub mod config;
pub mod extensions;
pub mod files;
pub mod inbound;
pub mod options;
pub mod plan;
pub mod ports;
pub mod render;
pub mod resources;
pub mod runtime;
pub mod shared;
pub mod templates;

pub use inbound::Inbound;
pub use options::ProxyOptions;

use crate::api::NetworkConfig;
use std::fmt;
use std::path::{Path, PathBuf};

/// One TaskGroup's proxy, as the agent sees it on a robot.
#[derive(Clone, Debug)]
pub struct GroupProxy {
    /// The robot's name: part of `node.id` (empty: left out).
    pub robot: String,
    pub job: String,
    pub group: String,
    /// The group-level network merged with task-level ones (all upstreams);
    /// see [`group_network`].
    pub network: NetworkConfig,
    /// Directory owned by this proxy (config files, admin socket).
    pub dir: PathBuf,
    /// The envoy executable.
    pub envoy_bin: PathBuf,
}

impl Default for GroupProxy {
    fn default() -> Self {
        GroupProxy {
            robot: String::new(),
            job: String::new(),
            group: String::new(),
            network: NetworkConfig::default(),
            dir: PathBuf::new(),
            envoy_bin: PathBuf::from("envoy"),
        }
    }
}

impl GroupProxy {
    /// `node.id` in Envoy: `<robot>/<job>/<group>`, unique per robot (the
    /// robot left out when unknown, as in `render-envoy`).
    pub fn node_id(&self) -> String {
        match self.robot.as_str() {
            "" => format!("{}/{}", self.job, self.group),
            robot => format!("{robot}/{}/{}", self.job, self.group),
        }
    }
}

/// What a proxy may have beyond its manifest: inbound mTLS listeners added
/// to the `network.inbound` ones (see [`inbound`]) and tuning. The agent
/// and `render-envoy` pass the defaults; the tests set them.
#[derive(Clone, Debug, Default)]
pub struct ProxyExtras {
    pub inbound: Vec<Inbound>,
    pub options: ProxyOptions,
}

/// How to start (and watch) one Envoy.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    /// `argv[0]` is the envoy binary.
    pub argv: Vec<String>,
    pub admin_socket: PathBuf,
}

#[derive(Debug)]
pub enum EnvoyError {
    Write(PathBuf, std::io::Error),
    Invalid(String),
    /// The network cannot be turned into a proxy.
    Plan(plan::PlanError),
    /// A template did not fill (a bug caught by tests, reported not panicked).
    Render(render::RenderError),
    /// A listener port is taken.
    Port(ports::PortError),
}

impl fmt::Display for EnvoyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvoyError::Write(p, e) => write!(f, "writing {}: {e}", p.display()),
            EnvoyError::Invalid(m) => f.write_str(m),
            EnvoyError::Plan(e) => write!(f, "network proxy: {e}"),
            EnvoyError::Render(e) => write!(f, "rendering the Envoy config: {e}"),
            EnvoyError::Port(e) => write!(f, "network proxy: {e}"),
        }
    }
}

impl std::error::Error for EnvoyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EnvoyError::Write(_, e) => Some(e),
            EnvoyError::Plan(e) => Some(e),
            EnvoyError::Render(e) => Some(e),
            EnvoyError::Port(e) => Some(e),
            EnvoyError::Invalid(_) => None,
        }
    }
}

impl From<plan::PlanError> for EnvoyError {
    fn from(e: plan::PlanError) -> Self {
        EnvoyError::Plan(e)
    }
}

impl From<render::RenderError> for EnvoyError {
    fn from(e: render::RenderError) -> Self {
        EnvoyError::Render(e)
    }
}

impl From<ports::PortError> for EnvoyError {
    fn from(e: ports::PortError) -> Self {
        EnvoyError::Port(e)
    }
}

/// Write the runtime config for `proxy` and return the launch command. Call
/// it while no Envoy of this group runs (first start, or a restart after the
/// old one died): it checks that every listener port is free.
pub fn prepare(proxy: &GroupProxy) -> Result<Launch, EnvoyError> {
    runtime::prepare(proxy, &ProxyExtras::default())
}

/// [`prepare`] with inbound listeners and non-default options.
pub fn prepare_with(proxy: &GroupProxy, extras: &ProxyExtras) -> Result<Launch, EnvoyError> {
    runtime::prepare(proxy, extras)
}

/// The command line and admin socket [`prepare`] would give, with the
/// config rendered in memory to refuse a network that cannot become a
/// proxy; no file is read or written and no port probed.
pub fn launch(proxy: &GroupProxy) -> Result<Launch, EnvoyError> {
    runtime::launch(proxy, &ProxyExtras::default())
}

/// Rewrite the xDS files after the network changed; Envoy picks them up live.
/// Listeners whose config is unchanged keep their connections.
pub fn update(proxy: &GroupProxy) -> Result<(), EnvoyError> {
    runtime::update(proxy, &ProxyExtras::default())
}

/// [`update`] with inbound listeners and non-default options.
pub fn update_with(proxy: &GroupProxy, extras: &ProxyExtras) -> Result<(), EnvoyError> {
    runtime::update(proxy, extras)
}

/// Remove the group's proxy files and admin socket after its Envoy stopped
/// for good (last task gone).
pub fn remove(proxy: &GroupProxy) -> Result<(), EnvoyError> {
    runtime::remove(proxy)
}

/// True once Envoy answers `GET /ready` with 200 on its admin socket.
pub fn is_ready(admin_socket: &Path) -> bool {
    admin::is_ready(admin_socket)
}

/// Why the group's Envoy is not ready, for the error the agent reports when
/// its readiness deadline passes (names upstreams and SPIRE sockets).
pub fn not_ready_reasons(proxy: &GroupProxy) -> Vec<String> {
    let layout = config::Layout::new(&proxy.dir);
    match admin::not_ready_reasons(&layout.admin_socket, &runtime::spire_sockets(&proxy.dir), "") {
        Ok(r) if r.is_empty() => vec!["Envoy is not ready; no specific cause found in its stats".into()],
        Ok(r) => r,
        Err(e) => vec![e.to_string()],
    }
}

/// Health of the group's upstreams (active TCP health checks every
/// `health_check_interval_s`, plus outlier detection), for its status.
pub fn upstream_health(proxy: &GroupProxy) -> Result<Vec<admin::UpstreamHealth>, admin::AdminError> {
    admin::upstream_health(&config::Layout::new(&proxy.dir).admin_socket, "")
}

/// `PROXY_<NAME>_ADDR`, `_HOST`, `_PORT` for every upstream (name upper-cased,
/// '-' → '_').
pub fn proxy_env(network: &NetworkConfig) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for up in &network.upstreams {
        let key = up.name.to_ascii_uppercase().replace('-', "_");
        env.push((format!("PROXY_{key}_ADDR"), format!("127.0.0.1:{}", up.local_port)));
        env.push((format!("PROXY_{key}_HOST"), "127.0.0.1".to_string()));
        env.push((format!("PROXY_{key}_PORT"), up.local_port.to_string()));
    }
    env
}

/// A group's whole network (group block plus every task block): one
/// definition shared with the control plane, in `api::job_expansion`.
pub use crate::api::job_expansion::group_network;

/// `render-envoy -f FILE [--group NAME]` (both binaries).
pub fn cmd_render(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    cli::cmd_render(parser)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{SpiffeConfig, TaskSpec, Upstream};

    fn up(name: &str, port: i64) -> Upstream {
        Upstream {
            name: name.into(),
            local_port: port,
            upstream: "h:1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn group_network_merges_task_blocks_into_the_group_block() {
        let group = NetworkConfig {
            upstreams: vec![up("a", 1)],
            ..Default::default()
        };
        let task = |net: Option<NetworkConfig>| TaskSpec {
            name: "t".into(),
            network: net,
            ..Default::default()
        };
        let spiffe = SpiffeConfig {
            trust_domain: "example.org".into(),
            agent_socket_path: None,
        };
        let tasks = [
            task(None),
            task(Some(NetworkConfig {
                spiffe: Some(spiffe.clone()),
                upstreams: vec![up("b", 2)],
                ..Default::default()
            })),
        ];
        let merged = group_network(Some(&group), &tasks).unwrap();
        let names: Vec<&str> = merged.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(merged.spiffe, Some(spiffe));
        let only_tasks = group_network(None, &tasks).unwrap();
        assert_eq!(only_tasks.upstreams.len(), 1);
        assert_eq!(group_network(None, &[task(None)]), None);
        let env = proxy_env(&merged);
        assert!(env.contains(&("PROXY_B_ADDR".into(), "127.0.0.1:2".into())));
    }
}
