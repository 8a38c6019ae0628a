//! Envoy configuration for a TaskGroup's proxy, rendered from templates
//! compiled into the binary (no YAML/protobuf runtime).
//!
//! CONTRACT used by the agent's reconcile (src/agent): keep these signatures.
//! - [`GroupProxy`]: what the agent knows about a group that has a network.
//! - [`prepare`]: write bootstrap + filesystem-xDS files into the group's
//!   proxy directory (atomically) and return how to launch Envoy.
//! - [`update`]: rewrite the xDS files for a changed network, no restart.
//! - [`is_ready`]: Envoy's admin `/ready` over the per-group unix socket.
//! - [`proxy_env`]: the PROXY_<NAME>_{ADDR,HOST,PORT} variables for tasks.

use crate::api::NetworkConfig;
use std::fmt;
use std::path::{Path, PathBuf};

/// One TaskGroup's proxy, as the agent sees it on a robot.
#[derive(Clone, Debug)]
pub struct GroupProxy {
    pub job: String,
    pub group: String,
    /// The group-level network merged with task-level ones (all upstreams).
    pub network: NetworkConfig,
    /// Directory owned by this proxy (config files, admin socket).
    pub dir: PathBuf,
    /// The envoy executable.
    pub envoy_bin: PathBuf,
}

/// How to start (and watch) one Envoy.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    /// argv[0] is the envoy binary.
    pub argv: Vec<String>,
    pub admin_socket: PathBuf,
}

#[derive(Debug)]
pub enum EnvoyError {
    Write(PathBuf, std::io::Error),
    Invalid(String),
}

impl fmt::Display for EnvoyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvoyError::Write(p, e) => write!(f, "writing {}: {e}", p.display()),
            EnvoyError::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for EnvoyError {}

/// Write the runtime config for `proxy` and return the launch command.
pub fn prepare(proxy: &GroupProxy) -> Result<Launch, EnvoyError> {
    let _ = proxy;
    Err(EnvoyError::Invalid("envoy rendering is not built yet".into()))
}

/// Rewrite the xDS files after the network changed; Envoy picks them up live.
pub fn update(proxy: &GroupProxy) -> Result<(), EnvoyError> {
    let _ = proxy;
    Err(EnvoyError::Invalid("envoy rendering is not built yet".into()))
}

/// True once Envoy answers `GET /ready` with 200 on its admin socket.
pub fn is_ready(admin_socket: &Path) -> bool {
    let _ = admin_socket;
    false
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

/// `render-envoy -f FILE [--group NAME]` (both binaries).
pub fn cmd_render(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let _ = parser;
    Err("render-envoy: not built yet".into())
}
