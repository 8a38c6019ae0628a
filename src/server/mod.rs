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
//!   control plane (registration, heartbeats, the signed and sealed channel);
//!   `task_logs`: a task's output relayed from its robot to an operator.
//! - `logger`: the server's own log lines on stderr; `panics`: a panicking
//!   request answers 500 and the process lives.
//!
//! - `cli`: the `k8s4r` commands (server, token, robot, robot-keys, logs,
//!   kubeconfig): flags in, answers out; [`serve`] and [`Config`] here are
//!   what `k8s4r server` runs.
//!
//! The load test of all this lives outside, in `crate::bench`.
pub mod admission;
pub mod agent_rollout;
pub mod agents;
pub mod annotations;
pub mod apply;
pub mod assignments;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod conditions;
pub mod controllers;
pub mod election;
pub mod events;
pub mod fleet;
pub mod http;
pub mod kubeclient;
pub mod kubeconfig;
pub mod limits;
pub mod logger;
pub mod migrate;
pub mod object;
pub mod panics;
pub mod patch;
pub mod poll_slots;
pub mod progress;
pub mod ready;
pub mod registry;
pub mod resources;
pub mod robot_channel;
pub mod scheduler;
pub mod secrets;
pub mod selector;
pub mod status;
pub mod store;
pub mod stored_task;
pub mod task_logs;
pub mod time;
pub mod tls;
pub mod tokens;
pub mod ui;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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

/// The open-file limit this asks for: a connection per robot, 100,000
/// robots and room for the rest.
const WANTED_OPEN_FILES: u64 = 1 << 20;

/// Every robot holds a connection, one open file each: allow as many as
/// the system permits (`fs.nr_open`, 1,048,576 by default). Raising the
/// hard limit needs privilege (root, or systemd's `LimitNOFILE=`);
/// without it the soft limit goes up to the hard one. The limit reached is
/// logged: it caps the fleet one server holds.
pub fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(WANTED_OPEN_FILES);
    let mut l = getrlimit(Resource::Nofile);
    let wanted = WANTED_OPEN_FILES.min(nr_open);
    if l.maximum.is_some_and(|max| max < wanted) {
        let higher = rustix::process::Rlimit {
            current: Some(wanted),
            maximum: Some(wanted),
        };
        if setrlimit(Resource::Nofile, higher).is_ok() {
            l = getrlimit(Resource::Nofile);
        }
    }
    if l.current < l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            log::warn!("raising the open-file limit: {e}");
        }
        l = getrlimit(Resource::Nofile);
    }
    let limit = l.current.unwrap_or(u64::MAX);
    log::debug!("open-file limit {limit}: about that many robots connected at once");
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
    let logs = Arc::new(task_logs::Logs::new(store.clone()));
    panics::spawn_essential("the log request relay", logs.clone().relay(hub.fleet.clone()));
    let store_for_secrets = store.clone();
    let server_keys = robot_channel::server_keys::ServerKeys::load_or_create(store.clone())
        .await
        .map_err(ServeError::ServerKeys)?;
    let tokens = Arc::new(tokens::Tokens::new(store));
    let channel = robot_channel::Channel::new(server_keys, tokens.clone(), cfg.robot_clock_skew);
    // Set on SIGTERM or SIGINT: the listeners stop accepting and answer
    // what they hold (held polls at once), then the server exits.
    let (stop, stopped) = tokio::sync::watch::channel(false);
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
            stopping: stopped.clone(),
        },
        watch_slots: Arc::new(tokio::sync::Semaphore::new(cfg.limits.watches)),
        stopping: stopped.clone(),
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
    let ready = ready::Ready {
        base: format!("{scheme}://{addr}"),
        agent_base: format!("http://{agent_addr}"),
        kubeconfig: kubeconfig.clone(),
    }
    .lines();
    let mut out = std::io::stdout().lock();
    let _ = std::io::Write::write_all(&mut out, ready.as_bytes()).and_then(|()| std::io::Write::flush(&mut out));
    drop(out);
    eprintln!(
        "k8s4r server: data in {}; kubectl: export KUBECONFIG={}",
        backend.describe,
        kubeconfig.display()
    );
    tokio::spawn(async move {
        shutdown().await;
        let _ = stop.send(true);
    });
    // The peer address (the audit log's sourceIPs) and the connection
    // (held long polls watch it).
    let agents = http::agent_listener::serve(
        robot_channel::link::AgentListener(agent_listener),
        http::agent_router(app.clone()),
        stopped_signal(stopped.clone()),
    );
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
                    .with_graceful_shutdown(stopped_signal(stopped.clone()))
                    .await
            }
            None => {
                axum::serve(
                    listener,
                    http::router_with(app.clone(), ui::router(app)).into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(stopped_signal(stopped.clone()))
                .await
            }
        }
        .map_err(ServeError::Serve)
    };
    let both = async {
        tokio::try_join!(api, async {
            agents.await;
            Ok(())
        })
        .map(|_| ())
    };
    // What the stop could not end by itself (a log stream, a dashboard
    // page's live updates) is cut after a grace: no request keeps a
    // stopping server up.
    let grace = async {
        stopped_signal(stopped.clone()).await;
        tokio::time::sleep(STOP_GRACE).await;
    };
    let served = tokio::select! {
        served = both => served,
        () = grace => {
            log::warn!("stopping: requests still open after {STOP_GRACE:?} are cut");
            Ok(())
        }
    };
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

/// The data directory holds the admin kubeconfig and, without `--etcd`, the
/// SQLite databases (the CA key among their secrets; on etcd it is in etcd):
/// created 0700, and tightened to that when it is wider.
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
    let events = store::etcd::EtcdStore::connect_on_demand(&endpoints, store::etcd::EVENTS_PREFIX, 1)
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

/// How long a stopping server waits for the requests it still serves.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Completes once `stopped` turns true (SIGTERM or SIGINT); never if its
/// sender is gone without (nothing will stop the server through it).
pub async fn stopped_signal(mut stopped: tokio::sync::watch::Receiver<bool>) {
    if stopped.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
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
