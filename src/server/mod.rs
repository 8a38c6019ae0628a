//! The control plane: a Kubernetes-compatible API server for
//! robot.k8s4r.io/v1alpha1, controllers and scheduler, the store (embedded
//! SQLite, or etcd shared by several replicas), and the agent API.
//!
//! - `store`: the `Store` trait, its SQLite and etcd backends and the
//!   conformance suite both pass; `election`: the leader among replicas on
//!   etcd; `migrate`: SQLite to etcd.
//! - `registry`, `admission`, `patch`, `selector`, `status` (the Kubernetes
//!   `Status` error), `object` (raw object metadata): API semantics.
//! - `http`: the Kubernetes API and the agent API over HTTP (translation
//!   only); `tls`, `auth`, `kubeconfig`: HTTPS, who calls and what they may do.
//! - `controllers`, `scheduler`: Job → TaskGroups → Tasks, placement, status,
//!   robot liveness, garbage collection; `cache` (the informer they and the
//!   robots' long polls read), `annotations`, `stored_task` (reading a stored
//!   Task's fields).
//! - `agents`, `fleet`, `tokens`, `robot_channel`: the agent side of the
//!   control plane (registration, heartbeats, the signed and sealed channel).
//!
//! The load test of all this lives outside, in `crate::bench`.
pub mod admission;
pub mod agent_rollout;
pub mod agents;
pub mod annotations;
pub mod apply;
pub mod auth;
pub mod cache;
pub mod conditions;
pub mod controllers;
pub mod election;
pub mod events;
pub mod fleet;
pub mod http;
pub mod kubeclient;
pub mod kubeconfig;
pub mod kubeconfig_cli;
pub mod limits;
pub mod logging;
pub mod logs;
pub mod logs_cli;
pub mod migrate;
pub mod object;
pub mod panics;
pub mod patch;
pub mod poll_slots;
pub mod registry;
pub mod release_cli;
pub mod resources;
pub mod robot_channel;
pub mod scheduler;
pub mod secrets;
pub mod selector;
pub mod status;
pub mod store;
pub mod stored_task;
pub mod time;
pub mod tls;
pub mod tokens;
pub mod ui;

use lexopt::prelude::*;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const USAGE: &str = "\
k8s4r server — the control plane

USAGE:
    k8s4r server [OPTIONS]

OPTIONS:
    --listen ADDR            Address of the Kubernetes API (HTTPS) [default: 127.0.0.1:7443]
    --agent-listen ADDR      Address of the plain-HTTP agent listener, which serves
                             only the robots' protocol (/agent/v1/register,
                             /agent/v1/robots/...) [default: 127.0.0.1:7080]
    --data DIR               Data directory (SQLite database, admin.kubeconfig)
                             [default: ./k8s4r-data]
    --etcd URL[,URL...]      Keep everything in etcd v3 instead (client URLs of its
                             members, all http:// or all https://); run any number
                             of replicas on one cluster
    --etcd-cafile FILE       CA certificates (PEM) etcd's serving certificate must
                             chain to; required for https:// endpoints
    --etcd-certfile FILE     Client certificate (PEM) presented to etcd
    --etcd-keyfile FILE      Its private key (PEM); with --etcd-certfile
    --poll-interval DUR      Base long-poll wait / heartbeat interval of agents [default: 30s]
    --offline-after DUR      Robot Offline after this long without a poll [default: 3 × poll interval]
    --max-poll-rate N        Target agent polls per second; the interval grows with the fleet [default: 500]
    --watch-history N        Changes kept for resuming watches [default: 10000]
    --max-watches N          Watches open at once, all clients together; more
                             get 429 [default: 1000]
    --max-status-updates N   Task status updates in one agent report; more get
                             413 [default: 1000]
    --max-device-info BYTES  Largest deviceInfo (as JSON) a robot may send; larger
                             gets 413 [default: 65536]
    --max-robots-per-join-token N
                             Robots one join token may create; registering again
                             under a known name creates none; more get 429
                             [default: 1000]
    --release-public-key FILE  The public half of the agent release key
                             (`k8s4r release keygen`): sent to robots at
                             registration; they install only agent releases
                             signed by it
    --max-join-token-ttl DUR Longest lifetime a join token may be created with;
                             longer is refused (400) [default: 24h]
    --robot-clock-skew DUR   How far a robot request's time may be from the
                             server's; further is refused (401) [default: 5m, at most 24h]
    --tls-san NAME|IP        Another name or address for the generated serving
                             certificate (repeatable); it always covers localhost,
                             127.0.0.1, ::1, the hostname and a specific --listen IP
    --tls-cert-file FILE     Serve with this certificate chain (PEM) instead of a
                             generated one; needs --tls-private-key-file
    --tls-private-key-file FILE
                             The key of --tls-cert-file (PEM)
    --client-ca-file FILE    Accept client certificates signed by these CAs (PEM)
                             instead of the generated CA
    --insecure-http          Serve the Kubernetes API over plain HTTP, without TLS:
                             only on a loopback --listen address (for tests)
    --log-level LEVEL        off, error, warn, info, debug, trace [default: info]
    --token-auth-file FILE   Static bearer tokens, kube-apiserver's CSV format:
                             token,user,uid[,\"group1,group2\"] per line. Groups:
                             k8s4r:admins (or system:masters), k8s4r:operators,
                             k8s4r:viewers. kubectl sends tokens only over https.
    --admin-token-file FILE  One bearer token for user \"admin\" in system:masters
                             (also accepted as --auth-token-file)
    --audit-log-path FILE    Write an audit event (audit.k8s.io/v1, one JSON line)
                             per mutating request; `-` is standard output
    --audit-log-maxsize MB   Rotate the audit log to FILE.1 at this size; 0 never
                             [default: 100]
    -h, --help               Print help

On first start it creates a CA and a serving certificate (kept in the store,
so replicas on one etcd share them). On every start it writes
<data>/admin.kubeconfig (0600: the CA, the URL, an admin client certificate)
and prints, once it accepts connections:
    listening on https://ADDR
    agent channel on http://ADDR
    export KUBECONFIG=<data>/admin.kubeconfig
More kubeconfigs: k8s4r kubeconfig --user NAME --group GROUP.

Each robot has at most one long poll open: a newer one ends the older (429).
Durations in requests (timeoutSeconds, ttlSeconds) are at most 10 years.
";

/// Longest `--poll-interval`: robots must hear from the server at least daily.
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(86_400);
/// Longest `--offline-after`.
const MAX_OFFLINE_AFTER: Duration = Duration::from_secs(30 * 86_400);
/// Largest `--audit-log-maxsize` (1 TiB): the byte count stays far from
/// overflowing.
const MAX_AUDIT_LOG_MB: u64 = 1 << 20;
/// Largest `--max-watches` (each open watch holds memory and a connection).
const MAX_WATCHES: usize = 1_000_000;

/// Everything `k8s4r server` is configured with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: String,
    /// The plain-HTTP listener of the agent protocol only.
    pub agent_listen: String,
    pub tls: tls::TlsFlags,
    /// Serve the Kubernetes API without TLS (loopback only).
    pub insecure_http: bool,
    /// File holding the admin's bearer token.
    pub admin_token_file: Option<PathBuf>,
    /// `--release-public-key`: the release key's public half, hex.
    pub release_public_key: Option<String>,
    /// kube-apiserver's static token file (`--token-auth-file`).
    pub token_auth_file: Option<PathBuf>,
    /// `--audit-log-path` (`-`: stdout); None: no audit log.
    pub audit_log_path: Option<PathBuf>,
    /// `--audit-log-maxsize` in MiB; 0: never rotate.
    pub audit_log_max_mb: u64,
    pub data: PathBuf,
    /// etcd client URLs; empty: the SQLite store in `data`.
    pub etcd: Vec<String>,
    /// `--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile`.
    pub etcd_tls: store::etcd::tls::TlsFiles,
    pub fleet: fleet::FleetConfig,
    pub watch_history: usize,
    pub limits: limits::Limits,
    /// `--robot-clock-skew`.
    pub robot_clock_skew: Duration,
    /// Serve a route that panics, for tests (`K8S4R_TEST_PANIC_ROUTE=1`).
    pub test_panic_route: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7443".into(),
            agent_listen: "127.0.0.1:7080".into(),
            tls: tls::TlsFlags::default(),
            release_public_key: None,
            insecure_http: false,
            admin_token_file: None,
            token_auth_file: None,
            audit_log_path: None,
            audit_log_max_mb: auth::audit::DEFAULT_MAX_MB,
            data: PathBuf::from("k8s4r-data"),
            etcd: Vec::new(),
            etcd_tls: Default::default(),
            fleet: fleet::FleetConfig::default(),
            watch_history: 10_000,
            limits: limits::Limits::default(),
            robot_clock_skew: robot_channel::verify::DEFAULT_SKEW,
            test_panic_route: false,
        }
    }
}

fn duration_arg(parser: &mut lexopt::Parser, flag: &str) -> Result<Duration, lexopt::Error> {
    let text = parser.value()?.string()?;
    crate::api::Duration::parse(&text).map_err(|e| format!("{flag} {text:?}: {e}").into())
}

/// A duration flag of at most `max` (the fleet's arithmetic multiplies them).
fn bounded_duration_arg(parser: &mut lexopt::Parser, flag: &str, max: Duration) -> Result<Duration, lexopt::Error> {
    let d = duration_arg(parser, flag)?;
    if d > max {
        return Err(format!("{flag}: {d:?} is more than the limit of {max:?}").into());
    }
    Ok(d)
}

/// A count flag of at most `max`.
fn count_arg<T>(parser: &mut lexopt::Parser, flag: &str, max: T) -> Result<T, lexopt::Error>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let text = parser.value()?.string()?;
    let n: T = text
        .parse()
        .map_err(|_| format!("{flag} {text:?}: not a whole number"))?;
    if n > max {
        return Err(format!("{flag}: {n} is more than the limit of {max}").into());
    }
    Ok(n)
}

/// A comma-separated list of URLs (`--etcd`), blanks dropped.
pub fn url_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect()
}

/// `k8s4r server ...`
pub fn cmd_server(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let mut cfg = Config::default();
    let mut level = log::LevelFilter::Info;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("log-level") => level = logging::parse_level(&parser.value()?.string()?)?,
            Long("listen") => cfg.listen = parser.value()?.string()?,
            Long("agent-listen") => cfg.agent_listen = parser.value()?.string()?,
            Long("tls-san") => {
                let san = parser.value()?.string()?;
                tls::sans::check(&san).map_err(|e| format!("--tls-san: {e}"))?;
                cfg.tls.sans.push(san);
            }
            Long("tls-cert-file") => cfg.tls.cert_file = Some(parser.value()?.into()),
            Long("tls-private-key-file") => cfg.tls.key_file = Some(parser.value()?.into()),
            Long("client-ca-file") => cfg.tls.client_ca_file = Some(parser.value()?.into()),
            Long("insecure-http") => cfg.insecure_http = true,
            Long("data") => cfg.data = parser.value()?.into(),
            Long("etcd") => cfg.etcd = url_list(&parser.value()?.string()?),
            Long("etcd-cafile") => cfg.etcd_tls.ca = Some(parser.value()?.into()),
            Long("etcd-certfile") => cfg.etcd_tls.cert = Some(parser.value()?.into()),
            Long("etcd-keyfile") => cfg.etcd_tls.key = Some(parser.value()?.into()),
            // `--auth-token-file` is the name Kubernetes users look for.
            Long("admin-token-file" | "auth-token-file") => cfg.admin_token_file = Some(parser.value()?.into()),
            Long("token-auth-file") => cfg.token_auth_file = Some(parser.value()?.into()),
            Long("audit-log-path") => cfg.audit_log_path = Some(parser.value()?.into()),
            Long("audit-log-maxsize") => {
                cfg.audit_log_max_mb = count_arg(parser, "--audit-log-maxsize", MAX_AUDIT_LOG_MB)?
            }
            Long("poll-interval") => {
                cfg.fleet.poll_interval = bounded_duration_arg(parser, "--poll-interval", MAX_POLL_INTERVAL)?
            }
            Long("offline-after") => {
                cfg.fleet.offline_after = Some(bounded_duration_arg(parser, "--offline-after", MAX_OFFLINE_AFTER)?)
            }
            Long("max-poll-rate") => {
                let rate: f64 = parser.value()?.parse()?;
                if !(rate.is_finite() && rate > 0.0) {
                    return Err(format!("--max-poll-rate {rate}: must be a positive number").into());
                }
                cfg.fleet.max_poll_rate = rate;
            }
            Long("watch-history") => cfg.watch_history = parser.value()?.parse()?,
            Long("max-watches") => cfg.limits.watches = count_arg(parser, "--max-watches", MAX_WATCHES)?,
            Long("max-status-updates") => {
                cfg.limits.status_updates = count_arg(parser, "--max-status-updates", usize::MAX)?
            }
            Long("max-device-info") => {
                cfg.limits.device_info_bytes = count_arg(parser, "--max-device-info", http::MAX_BODY)?
            }
            Long("max-robots-per-join-token") => {
                cfg.limits.robots_per_join_token = count_arg(parser, "--max-robots-per-join-token", u64::MAX)?
            }
            Long("release-public-key") => {
                let file = parser.value()?.string()?;
                let text = std::fs::read_to_string(&file).map_err(|e| format!("--release-public-key {file}: {e}"))?;
                let key = crate::api::agent_release::parse_public_key(&text)
                    .map_err(|e| format!("--release-public-key {file}: {e}"))?;
                cfg.release_public_key = Some(crate::api::hex::encode(&key));
            }
            Long("max-join-token-ttl") => {
                let d = bounded_duration_arg(parser, "--max-join-token-ttl", time::MAX_DURATION)?;
                if d.as_secs() == 0 {
                    return Err("--max-join-token-ttl: must be at least 1s".into());
                }
                cfg.limits.join_token_ttl_seconds = d.as_secs();
            }
            Long("robot-clock-skew") => {
                cfg.robot_clock_skew =
                    bounded_duration_arg(parser, "--robot-clock-skew", robot_channel::verify::MAX_SKEW)?
            }
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(0);
            }
            other => return Err(other.unexpected()),
        }
    }
    if let (true, Some(flag)) = (cfg.etcd.is_empty(), cfg.etcd_tls.first_flag()) {
        return Err(format!("{flag} needs --etcd (it is for https:// etcd endpoints)").into());
    }
    // Test-only (tests/server_robustness.rs): an environment variable, not
    // a flag, so no one turns it on from `--help`.
    cfg.test_panic_route = std::env::var_os("K8S4R_TEST_PANIC_ROUTE").is_some_and(|v| v == "1");
    logging::init(level);
    if cfg.test_panic_route {
        log::warn!("K8S4R_TEST_PANIC_ROUTE=1: GET /debug/panic panics (for tests only)");
    }
    panics::install();
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    match rt.block_on(serve(cfg)) {
        Ok(()) => Ok(0),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(1)
        }
    }
}

/// Every robot holds a connection: allow as many descriptors as the hard
/// limit permits.
pub fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            log::warn!("raising the open-file limit: {e}");
        }
    }
}

/// Why the server could not start.
#[derive(Debug)]
pub enum ServeError {
    Store(store::sqlite::OpenError),
    /// `--etcd` and its TLS flags do not make a usable connection.
    EtcdConfig(store::etcd::endpoints::EndpointError),
    Etcd(store::StoreError),
    ServerKeys(robot_channel::server_keys::KeyError),
    Bind(String, std::io::Error),
    /// `--insecure-http` on an address other machines can reach.
    InsecureHttp(SocketAddr),
    Tls(tls::TlsError),
    /// Writing `<data>/admin.kubeconfig`.
    Kubeconfig(String),
    Tokens(auth::authn::TokenFileError),
    AuditLog(PathBuf, std::io::Error),
    Serve(std::io::Error),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Store(e) => write!(f, "opening the store: {e}"),
            ServeError::EtcdConfig(e) => write!(f, "{e}"),
            ServeError::Etcd(e) => write!(f, "connecting to etcd: {e}"),
            ServeError::ServerKeys(e) => write!(f, "{e}"),
            ServeError::Bind(a, e) => write!(f, "listening on {a}: {e}"),
            ServeError::InsecureHttp(a) => write!(
                f,
                "--insecure-http serves the Kubernetes API without TLS, so only on a loopback \
                 address; {a} is not one (drop --insecure-http, or --listen 127.0.0.1:PORT)"
            ),
            ServeError::Tls(e) => write!(f, "setting up HTTPS: {e}"),
            ServeError::Kubeconfig(e) => write!(f, "the data directory or its admin kubeconfig: {e}"),
            ServeError::Tokens(e) => write!(f, "reading the tokens: {e}"),
            ServeError::AuditLog(p, e) => write!(f, "opening the audit log {}: {e}", p.display()),
            ServeError::Serve(e) => write!(f, "serving: {e}"),
        }
    }
}

impl std::error::Error for ServeError {}

/// Open the store, start the controllers, serve until SIGINT/SIGTERM.
pub async fn serve(cfg: Config) -> Result<(), ServeError> {
    let authn = auth::authn::Authenticator::load(cfg.token_auth_file.as_deref(), cfg.admin_token_file.as_deref())
        .map_err(ServeError::Tokens)?;
    let audit = match &cfg.audit_log_path {
        None => auth::audit::Audit::disabled(),
        Some(p) => auth::audit::Audit::open(p, cfg.audit_log_max_mb.saturating_mul(1024 * 1024))
            .map_err(|e| ServeError::AuditLog(p.clone(), e))?,
    };
    private_dir(&cfg.data).map_err(ServeError::Kubeconfig)?;
    let backend = open_stores(&cfg).await?;
    let store = backend.objects.clone();
    let event_store = backend.events.clone();
    let registry = registry::Registry::new(store.clone());
    let fleet = Arc::new(fleet::Fleet::new(cfg.fleet.clone()));
    let recorder = events::Recorder::start(event_store.clone());
    let hub = controllers::run_when_leading(registry.clone(), fleet, recorder.clone(), backend.leader).await;
    let logs = Arc::new(logs::Logs::new(store.clone()));
    panics::spawn_essential("the log request relay", logs.clone().relay(hub.fleet.clone()));
    let store_for_secrets = store.clone();
    let server_keys = robot_channel::server_keys::ServerKeys::load_or_create(store.clone())
        .await
        .map_err(ServeError::ServerKeys)?;
    let tokens = Arc::new(tokens::Tokens::new(store));
    let channel = robot_channel::Channel::new(server_keys, tokens.clone(), cfg.robot_clock_skew);
    let app = Arc::new(http::App {
        authn,
        audit,
        registry: registry.clone(),
        events: event_store,
        agents: agents::Agents {
            registry,
            tokens,
            channel,
            hub,
            events: recorder,
            logs,
            limits: cfg.limits.clone(),
            polls: poll_slots::PollSlots::default(),
            release_key: cfg.release_public_key.clone(),
            rollouts: Default::default(),
        },
        watch_slots: Arc::new(tokio::sync::Semaphore::new(cfg.limits.watches)),
        limits: cfg.limits.clone(),
        test_panic_route: cfg.test_panic_route,
    });
    let listener = bind(&cfg.listen).await?;
    let addr = local_addr(&listener, &cfg.listen)?;
    if cfg.insecure_http && !addr.ip().is_loopback() {
        return Err(ServeError::InsecureHttp(addr));
    }
    let agent_listener = bind(&cfg.agent_listen).await?;
    let agent_addr = local_addr(&agent_listener, &cfg.agent_listen)?;
    let https = if cfg.insecure_http {
        None
    } else {
        let ca = tls::ca::Ca::load_or_create(store_for_secrets.as_ref())
            .await
            .map_err(ServeError::Tls)?;
        let https = tls::configure(&cfg.tls, store_for_secrets.as_ref(), &ca, addr)
            .await
            .map_err(ServeError::Tls)?;
        Some((ca, https))
    };
    // A certificate from the generated CA is refused where --client-ca-file
    // replaces it: the admin kubeconfig then carries none.
    let admin_cert = cfg.tls.client_ca_file.is_none();
    if !admin_cert {
        log::info!("--client-ca-file: admin.kubeconfig has no client certificate; add one your CA signed");
    }
    let kubeconfig = write_admin_kubeconfig(&cfg.data, addr, https.as_ref(), admin_cert)?;
    let scheme = if https.is_some() { "https" } else { "http" };
    // One write of all three lines, its error ignored: a reader that takes
    // the first line and closes the pipe does not stop the server.
    let ready = format!(
        "listening on {scheme}://{addr}\nagent channel on http://{agent_addr}\nexport KUBECONFIG={}\n",
        kubeconfig.display()
    );
    let mut out = std::io::stdout().lock();
    let _ = std::io::Write::write_all(&mut out, ready.as_bytes()).and_then(|()| std::io::Write::flush(&mut out));
    drop(out);
    eprintln!(
        "k8s4r server: data in {}; kubectl: export KUBECONFIG={}",
        backend.describe,
        kubeconfig.display()
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown().await;
        let _ = stop.send(true);
    });
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // The peer address: the audit log's sourceIPs.
    let agents = axum::serve(
        axum::serve::ListenerExt::tap_io(agent_listener, robot_channel::link::tune),
        http::agent_router(app.clone()).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(until_stopped(stopped.clone()));
    let api = async {
        match https {
            Some((_, https)) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(https.config);
                let tls = tls::listener::TlsListener::new(listener, acceptor)
                    .map_err(|e| ServeError::Bind(cfg.listen.clone(), e))?;
                let service = http::router_with(app.clone(), ui::router(app))
                    .layer(axum::middleware::map_request(tls::listener::insert_cert_user))
                    .into_make_service_with_connect_info::<tls::listener::TlsPeer>();
                axum::serve(tls, service)
                    .with_graceful_shutdown(until_stopped(stopped.clone()))
                    .await
            }
            None => {
                axum::serve(
                    listener,
                    http::router_with(app.clone(), ui::router(app)).into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(until_stopped(stopped.clone()))
                .await
            }
        }
        .map_err(ServeError::Serve)
    };
    let served = tokio::try_join!(api, async { agents.await.map_err(ServeError::Serve) }).map(|_| ());
    if let Some(e) = &backend.election {
        e.resign().await;
    }
    served
}

async fn bind(listen: &str) -> Result<tokio::net::TcpListener, ServeError> {
    tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| ServeError::Bind(listen.to_string(), e))
}

fn local_addr(listener: &tokio::net::TcpListener, listen: &str) -> Result<SocketAddr, ServeError> {
    listener
        .local_addr()
        .map_err(|e| ServeError::Bind(listen.to_string(), e))
}

/// The data directory holds the CA key (in the SQLite store) and the admin
/// kubeconfig: created 0700, and tightened to that when it is wider.
fn private_dir(dir: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        log::warn!(
            "{}: mode {:o} lets others read the CA key; setting 0700",
            dir.display(),
            mode & 0o777
        );
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Ok(())
}

/// `<data>/admin.kubeconfig`, rewritten on every start (the port may have
/// changed): the server's URL (loopback when it listens on every address),
/// what to trust it with, and a new admin client certificate (CN admin,
/// O system:masters) unless `admin_cert` is false. Without TLS: the URL
/// only.
fn write_admin_kubeconfig(
    data: &std::path::Path,
    addr: SocketAddr,
    https: Option<&(tls::ca::Ca, tls::Https)>,
    admin_cert: bool,
) -> Result<PathBuf, ServeError> {
    let fail = ServeError::Kubeconfig;
    let dir = std::fs::canonicalize(data).map_err(|e| fail(format!("{}: {e}", data.display())))?;
    let path = dir.join("admin.kubeconfig");
    let reach = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], addr.port())),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    };
    let text = match https {
        Some((ca, https)) => {
            let admin = match admin_cert {
                true => Some(
                    ca.issue_client_cert("admin", &[auth::SYSTEM_MASTERS.to_string()])
                        .map_err(|e| fail(e.to_string()))?,
                ),
                false => None,
            };
            kubeconfig::render(
                "k8s4r",
                &format!("https://{reach}"),
                Some(&https.trust_pem),
                "admin",
                admin.as_ref().map(|a| (a.cert_pem.as_str(), a.key_pem.as_str())),
            )
        }
        None => kubeconfig::render("k8s4r", &format!("http://{reach}"), None, "admin", None),
    };
    kubeconfig::write_private(&path, &text).map_err(fail)?;
    Ok(path)
}

/// Where the server keeps its state, and whether it may run controllers.
struct Backend {
    objects: Arc<dyn store::Store>,
    events: Arc<dyn store::Store>,
    leader: tokio::sync::watch::Receiver<bool>,
    election: Option<election::Election>,
    describe: String,
}

async fn open_stores(cfg: &Config) -> Result<Backend, ServeError> {
    if cfg.etcd.is_empty() {
        let objects = store::sqlite::SqliteStore::open(&cfg.data, cfg.watch_history).map_err(ServeError::Store)?;
        // Events live in their own database (as Kubernetes often gives them
        // their own etcd): a burst of them never holds up object writes.
        let events = store::sqlite::SqliteStore::open(&cfg.data.join("events"), 1).map_err(ServeError::Store)?;
        // One process on one file: it always leads.
        let leader = tokio::sync::watch::channel(true).1;
        return Ok(Backend {
            objects: Arc::new(objects),
            events: Arc::new(events),
            leader,
            election: None,
            describe: cfg.data.display().to_string(),
        });
    }
    // The TLS files are read and checked here, once, before any connection.
    let endpoints = store::etcd::Endpoints::new(&cfg.etcd, &cfg.etcd_tls).map_err(ServeError::EtcdConfig)?;
    let objects = store::etcd::EtcdStore::connect(&endpoints, store::etcd::DEFAULT_PREFIX, cfg.watch_history)
        .await
        .map_err(ServeError::Etcd)?;
    let events = store::etcd::EtcdStore::connect(&endpoints, store::etcd::EVENTS_PREFIX, 1)
        .await
        .map_err(ServeError::Etcd)?;
    // "<pid>:<random>": which process leads, for operators and tests.
    let id = format!("{}:{}", std::process::id(), object::hex(&object::random_bytes::<4>()));
    // Its own connections: lease renewals never wait behind store traffic.
    let client = store::etcd::client::Client::new(&endpoints);
    let (election, leader) = election::Election::start(Arc::new(client), store::etcd::LEADER_KEY.to_string(), id);
    panics::spawn_essential(
        "etcd compaction",
        store::etcd::compact::run(objects.client(), leader.clone(), store::etcd::compact::INTERVAL),
    );
    Ok(Backend {
        objects: Arc::new(objects),
        events: Arc::new(events),
        leader,
        election: Some(election),
        describe: format!("etcd {}", endpoints.describe()),
    })
}

async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

const TOKEN_USAGE: &str = "\
k8s4r token — join tokens for robots, and revocation

USAGE:
    k8s4r token create [--ttl DUR] [--uses N] [--name ROBOT]
                                       Print a new join token (last line)
    k8s4r token list                   Join tokens: id, expiry, robots registered
                                       of its uses, bound name (never secrets)
    k8s4r token revoke ID|TOKEN        Revoke a join token (id prefix of 8+ hex digits)
    k8s4r token revoke --robot NAME    Same as `k8s4r robot reset NAME`

OPTIONS:
    --ttl DUR           Lifetime of a new token, at most the server's
                        --max-join-token-ttl [default: 24h, or that limit if shorter]
    --uses N            Distinct robots the token may register (registering a
                        name again uses none); the server's
                        --max-robots-per-join-token applies if smaller
    --name ROBOT        The token registers only the robot named ROBOT
";

pub fn cmd_token(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let mut client = kubeclient::ClientFlags::default();
    let mut terms = crate::api::agent_protocol::JoinTokenRequest::default();
    let mut words: Vec<String> = Vec::new();
    let mut robot = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Long(flag) if kubeclient::ClientFlags::owns(flag) => {
                let flag = flag.to_string();
                client.set(&flag, parser)?;
            }
            Long("ttl") => terms.ttl_seconds = Some(duration_arg(parser, "--ttl")?.as_secs()),
            Long("uses") => {
                let uses = count_arg(parser, "--uses", u64::MAX)?;
                if uses == 0 {
                    return Err("--uses: must be at least 1".into());
                }
                terms.uses = Some(uses);
            }
            Long("name") => terms.name = Some(parser.value()?.string()?),
            Long("robot") => robot = Some(parser.value()?.string()?),
            Short('h') | Long("help") => {
                print!("{TOKEN_USAGE}{}", kubeclient::USAGE);
                return Ok(0);
            }
            Value(v) if words.len() < 2 => words.push(v.string()?),
            other => return Err(other.unexpected()),
        }
    }
    let base = "/agent/v1";
    let (method, path, body) = match (words.iter().map(String::as_str).collect::<Vec<_>>().as_slice(), &robot) {
        // No --ttl: the server's default, which its limit may shorten.
        (["create"], None) => (
            "POST",
            format!("{base}/jointokens"),
            Some(serde_json::to_string(&terms).map_err(|e| e.to_string())?),
        ),
        (["list"], None) => ("GET", format!("{base}/jointokens"), None),
        (["revoke", id], None) => ("DELETE", format!("{base}/jointokens/{}", path_segment(id)), None),
        (["revoke"], Some(name)) => ("DELETE", format!("{base}/robotkeys/{}", path_segment(name)), None),
        _ => {
            eprint!("{TOKEN_USAGE}{}", kubeclient::USAGE);
            return Ok(2);
        }
    };
    let answer = kubeclient::KubeClient::new(&client).and_then(|c| {
        let url = format!("{}{path}", c.server);
        c.request(method, &path, body.as_deref())?
            .ok()
            .map_err(|e| format!("{method} {url}: {e}"))
    });
    let text = match answer {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(1);
        }
    };
    use crate::api::agent_protocol::{JoinToken, JoinTokenList};
    let unexpected = |e: serde_json::Error| {
        eprintln!("error: unexpected answer to {method} {path}: {e}");
        Ok(1)
    };
    match words[0].as_str() {
        "create" => match serde_json::from_str::<JoinToken>(&text) {
            Ok(t) => {
                let uses = t.uses.map(|n| format!(", {n} uses")).unwrap_or_default();
                let name = t.name.map(|n| format!(", robot {n} only")).unwrap_or_default();
                eprintln!("join token {} (expires {}{uses}{name}):", t.id, t.expires);
                println!("{}", t.token);
                Ok(0)
            }
            Err(e) => unexpected(e),
        },
        "list" => match serde_json::from_str::<JoinTokenList>(&text) {
            Ok(list) => {
                println!("{:<14}{:<22}{:<9}{:<10}NAME", "ID", "EXPIRES", "STATE", "USED");
                for t in list.items {
                    let state = if t.expired { "expired" } else { "valid" };
                    // "1/3": one robot of the three it was created for.
                    let used = match t.uses {
                        Some(n) => format!("{}/{n}", t.robots),
                        None => t.robots.to_string(),
                    };
                    let name = t.name.as_deref().unwrap_or("<any>");
                    println!("{:<14}{:<22}{state:<9}{used:<10}{name}", t.id, t.expires);
                }
                Ok(0)
            }
            Err(e) => unexpected(e),
        },
        _ => {
            println!("revoked");
            Ok(0)
        }
    }
}

/// A name or id as one URL path segment (robot names are DNS names; ids are
/// hex; anything else is escaped so it cannot change the path).
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

const ROBOT_USAGE: &str = "\
k8s4r robot — robot identities

USAGE:
    k8s4r robot reset NAME    Unbind robot NAME's keys: its agent is refused (401)
                              from then on, and a join token may register the name
                              with new keys (a re-imaged robot, say)

";

const ROBOT_KEYS_USAGE: &str = "\
k8s4r robot-keys — the server's robot-channel keys

USAGE:
    k8s4r robot-keys list                  Key ids, pins, and which is current
    k8s4r robot-keys rotate [--overlap DUR]
                                           Make a new current key; the old one keeps
                                           answering robots for DUR [default: 24h],
                                           each answer telling them the new one

";

/// The options every operator command takes, and its other words.
struct AdminArgs {
    client: kubeclient::ClientFlags,
    words: Vec<String>,
    overlap: Option<Duration>,
}

fn admin_args(parser: &mut lexopt::Parser, usage: &str, overlap: bool) -> Result<Option<AdminArgs>, lexopt::Error> {
    let mut a = AdminArgs {
        client: kubeclient::ClientFlags::default(),
        words: Vec::new(),
        overlap: None,
    };
    while let Some(arg) = parser.next()? {
        match arg {
            Long(flag) if kubeclient::ClientFlags::owns(flag) => {
                let flag = flag.to_string();
                a.client.set(&flag, parser)?;
            }
            Long("overlap") if overlap => {
                a.overlap = Some(bounded_duration_arg(
                    parser,
                    "--overlap",
                    robot_channel::server_keys::MAX_OVERLAP,
                )?)
            }
            Short('h') | Long("help") => {
                print!("{usage}{}", kubeclient::USAGE);
                return Ok(None);
            }
            Value(v) if a.words.len() < 2 => a.words.push(v.string()?),
            other => return Err(other.unexpected()),
        }
    }
    Ok(Some(a))
}

/// One operator request through the kubeconfig's client; the answer's body.
fn admin_request(
    client: &kubeclient::ClientFlags,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<String, String> {
    kubeclient::KubeClient::new(client).and_then(|c| {
        c.request(method, path, body)?
            .ok()
            .map_err(|e| format!("{method} {}{path}: {e}", c.server))
    })
}

/// `k8s4r robot reset NAME`
pub fn cmd_robot(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let Some(a) = admin_args(parser, ROBOT_USAGE, false)? else {
        return Ok(0);
    };
    let [verb, name] = a.words.as_slice() else {
        eprint!("{ROBOT_USAGE}");
        return Ok(2);
    };
    if verb != "reset" {
        eprint!("{ROBOT_USAGE}");
        return Ok(2);
    }
    let path = format!("/agent/v1/robotkeys/{}", path_segment(name));
    match admin_request(&a.client, "DELETE", &path, None) {
        Ok(_) => {
            println!("robot {name}: keys reset; a join token may register the name again");
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(1)
        }
    }
}

/// `k8s4r robot-keys list|rotate [--overlap DUR]`
pub fn cmd_robot_keys(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let Some(a) = admin_args(parser, ROBOT_KEYS_USAGE, true)? else {
        return Ok(0);
    };
    let base = "/agent/v1/serverkeys".to_string();
    let (method, url, body) = match a.words.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["list"] if a.overlap.is_none() => ("GET", base, None),
        ["rotate"] => {
            let req = crate::api::agent_protocol::RotateRequest {
                overlap_seconds: a.overlap.map(|d| d.as_secs()),
            };
            (
                "POST",
                format!("{base}/rotate"),
                Some(serde_json::to_string(&req).map_err(|e| e.to_string())?),
            )
        }
        _ => {
            eprint!("{ROBOT_KEYS_USAGE}{}", kubeclient::USAGE);
            return Ok(2);
        }
    };
    let text = match admin_request(&a.client, method, &url, body.as_deref()) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(1);
        }
    };
    match serde_json::from_str::<crate::api::agent_protocol::ServerKeyList>(&text) {
        Ok(list) => {
            println!("{:<18}{:<22}{:<22}PIN", "ID", "CREATED", "RETIRES");
            for k in list.items {
                let retires = match (&k.retire_at, k.current) {
                    (_, true) => "<current>".to_string(),
                    (Some(at), false) => at.clone(),
                    (None, false) => "-".to_string(),
                };
                println!("{:<18}{:<22}{retires:<22}{}", k.id, k.created, k.pin);
            }
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: unexpected answer from {url}: {e}");
            Ok(1)
        }
    }
}
