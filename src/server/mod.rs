//! The control plane: a Kubernetes-compatible API server for
//! robot.k8s4r.io/v1alpha1, controllers and scheduler, the embedded store,
//! and the agent API.
//!
//! - `store`: the `Store` trait, its SQLite backend and conformance suite.
//! - `registry`, `admission`, `patch`, `selector`, `status`: API semantics.
//! - `http`: the Kubernetes API and the agent API over HTTP (translation only).
//! - `controllers`, `scheduler`: Job → TaskGroups → Tasks, placement, status,
//!   robot liveness, garbage collection.
//! - `agents`, `fleet`, `tokens`: the agent side of the control plane.

pub mod admission;
pub mod agents;
pub mod auth;
pub mod bench;
pub mod bench_etcd;
pub mod bench_report;
pub mod controllers;
pub mod election;
pub mod events;
pub mod fleet;
pub mod http;
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
pub mod resources;
pub mod scheduler;
pub mod secrets;
pub mod selector;
pub mod status;
pub mod store;
pub mod time;
pub mod tokens;

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
    --listen ADDR            Address to serve on [default: 127.0.0.1:7443]
    --data DIR               Data directory (SQLite database) [default: ./k8s4r-data]
    --etcd URL[,URL...]      Keep everything in etcd v3 instead (client URLs of its
                             members); run any number of replicas on one cluster
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
    --max-join-token-ttl DUR Longest lifetime a join token may be created with;
                             longer is refused (400) [default: 24h]
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

Prints `listening on http://ADDR` once it accepts connections. Use it with
kubectl: kubectl --server http://ADDR get jobs

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
    /// File holding the admin's bearer token.
    pub admin_token_file: Option<PathBuf>,
    /// kube-apiserver's static token file (`--token-auth-file`).
    pub token_auth_file: Option<PathBuf>,
    /// `--audit-log-path` (`-`: stdout); None: no audit log.
    pub audit_log_path: Option<PathBuf>,
    /// `--audit-log-maxsize` in MiB; 0: never rotate.
    pub audit_log_max_mb: u64,
    pub data: PathBuf,
    /// etcd client URLs; empty: the SQLite store in `data`.
    pub etcd: Vec<String>,
    pub fleet: fleet::FleetConfig,
    pub watch_history: usize,
    pub limits: limits::Limits,
    /// Serve a route that panics, for tests (`K8S4R_TEST_PANIC_ROUTE=1`).
    pub test_panic_route: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7443".into(),
            admin_token_file: None,
            token_auth_file: None,
            audit_log_path: None,
            audit_log_max_mb: auth::audit::DEFAULT_MAX_MB,
            data: PathBuf::from("k8s4r-data"),
            etcd: Vec::new(),
            fleet: fleet::FleetConfig::default(),
            watch_history: 10_000,
            limits: limits::Limits::default(),
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

/// `k8s4r server ...`
pub fn cmd_server(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let mut cfg = Config::default();
    let mut level = log::LevelFilter::Info;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("log-level") => level = logging::parse_level(&parser.value()?.string()?)?,
            Long("listen") => cfg.listen = parser.value()?.string()?,
            Long("data") => cfg.data = parser.value()?.into(),
            Long("etcd") => {
                cfg.etcd = parser
                    .value()?
                    .string()?
                    .split(',')
                    .filter(|u| !u.trim().is_empty())
                    .map(|u| u.trim().to_string())
                    .collect()
            }
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
            Long("max-join-token-ttl") => {
                let d = bounded_duration_arg(parser, "--max-join-token-ttl", time::MAX_DURATION)?;
                if d.as_secs() == 0 {
                    return Err("--max-join-token-ttl: must be at least 1s".into());
                }
                cfg.limits.join_token_ttl_seconds = d.as_secs();
            }
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(0);
            }
            other => return Err(other.unexpected()),
        }
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
    Etcd(store::StoreError),
    TokenIndex(store::StoreError),
    Bind(String, std::io::Error),
    Tokens(auth::authn::TokenFileError),
    AuditLog(PathBuf, std::io::Error),
    Serve(std::io::Error),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Store(e) => write!(f, "opening the store: {e}"),
            ServeError::Etcd(e) => write!(f, "connecting to etcd: {e}"),
            ServeError::TokenIndex(e) => write!(f, "indexing the robot tokens: {e}"),
            ServeError::Bind(a, e) => write!(f, "listening on {a}: {e}"),
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
    let backend = open_stores(&cfg).await?;
    let store = backend.objects.clone();
    let event_store = backend.events.clone();
    let registry = registry::Registry::new(store.clone());
    let fleet = Arc::new(fleet::Fleet::new(cfg.fleet.clone()));
    let recorder = events::Recorder::start(event_store.clone());
    let hub = controllers::run_when_leading(registry.clone(), fleet, recorder.clone(), backend.leader).await;
    let logs = Arc::new(logs::Logs::new(store.clone()));
    panics::spawn_essential("the log request relay", logs.clone().relay(hub.fleet.clone()));
    let tokens = tokens::Tokens::new(store);
    match tokens.index_legacy().await {
        Ok(0) => {}
        Ok(n) => log::info!("indexed {n} robot tokens stored by an earlier version"),
        Err(e) => return Err(ServeError::TokenIndex(e)),
    }
    let app = Arc::new(http::App {
        authn,
        audit,
        registry: registry.clone(),
        events: event_store,
        agents: agents::Agents {
            registry,
            tokens,
            hub,
            events: recorder,
            logs,
            limits: cfg.limits.clone(),
            polls: poll_slots::PollSlots::default(),
        },
        watch_slots: Arc::new(tokio::sync::Semaphore::new(cfg.limits.watches)),
        limits: cfg.limits.clone(),
        test_panic_route: cfg.test_panic_route,
    });
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| ServeError::Bind(cfg.listen.clone(), e))?;
    let addr: SocketAddr = listener
        .local_addr()
        .map_err(|e| ServeError::Bind(cfg.listen.clone(), e))?;
    println!("listening on http://{addr}");
    eprintln!(
        "k8s4r server: data in {}, kubectl --server http://{addr}",
        backend.describe
    );
    // The peer address: the audit log's sourceIPs.
    let served = axum::serve(
        listener,
        http::router(app).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown())
    .await
    .map_err(ServeError::Serve);
    if let Some(e) = &backend.election {
        e.resign().await;
    }
    served
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
    let objects = store::etcd::EtcdStore::connect(&cfg.etcd, store::etcd::DEFAULT_PREFIX, cfg.watch_history)
        .await
        .map_err(ServeError::Etcd)?;
    let events = store::etcd::EtcdStore::connect(&cfg.etcd, store::etcd::EVENTS_PREFIX, 1)
        .await
        .map_err(ServeError::Etcd)?;
    // "<pid>:<random>": which process leads, for operators and tests.
    let id = format!("{}:{}", std::process::id(), object::hex(&object::random_bytes::<4>()));
    // Its own connections: lease renewals never wait behind store traffic.
    let client = store::etcd::client::Client::new(&cfg.etcd)
        .map_err(|e| ServeError::Etcd(store::StoreError::Backend(e.to_string())))?;
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
        describe: format!("etcd {}", cfg.etcd.join(",")),
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
    k8s4r token revoke --robot NAME    Revoke a robot's own token (it must register again)

OPTIONS:
    --server URL        Control plane [default: http://127.0.0.1:7443]
    --ttl DUR           Lifetime of a new token, at most the server's
                        --max-join-token-ttl [default: 24h, or that limit if shorter]
    --uses N            Distinct robots the token may register (registering a
                        name again uses none); the server's
                        --max-robots-per-join-token applies if smaller
    --name ROBOT        The token registers only the robot named ROBOT
    --token-file FILE   The operator token, if the server requires one
";

pub fn cmd_token(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let mut server = "http://127.0.0.1:7443".to_string();
    let mut terms = crate::api::agent_protocol::JoinTokenRequest::default();
    let mut words: Vec<String> = Vec::new();
    let mut robot = None;
    let mut admin = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("server") => server = parser.value()?.string()?,
            Long("token-file") => {
                let p: PathBuf = parser.value()?.into();
                let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                admin = Some(text.trim().to_string());
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
                print!("{TOKEN_USAGE}");
                return Ok(0);
            }
            Value(v) if words.len() < 2 => words.push(v.string()?),
            other => return Err(other.unexpected()),
        }
    }
    let base = format!("{}/agent/v1", server.trim_end_matches('/'));
    let (method, url, body) = match (words.iter().map(String::as_str).collect::<Vec<_>>().as_slice(), &robot) {
        // No --ttl: the server's default, which its limit may shorten.
        (["create"], None) => (
            "POST",
            format!("{base}/jointokens"),
            Some(serde_json::to_string(&terms).map_err(|e| e.to_string())?),
        ),
        (["list"], None) => ("GET", format!("{base}/jointokens"), None),
        (["revoke", id], None) => ("DELETE", format!("{base}/jointokens/{}", path_segment(id)), None),
        (["revoke"], Some(name)) => ("DELETE", format!("{base}/robottokens/{}", path_segment(name)), None),
        _ => {
            eprint!("{TOKEN_USAGE}");
            return Ok(2);
        }
    };
    let text = match admin_request(method, &url, admin.as_deref(), body.as_deref()) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: {method} {url}: {e}");
            return Ok(1);
        }
    };
    use crate::api::agent_protocol::{JoinToken, JoinTokenList};
    let unexpected = |e: serde_json::Error| {
        eprintln!("error: unexpected answer from {url}: {e}");
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

/// One request to the operator part of the agent API; a Status error body
/// becomes its message.
fn admin_request(method: &str, url: &str, admin: Option<&str>, body: Option<&str>) -> Result<String, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let auth = admin.map(|t| format!("Bearer {t}"));
    let reply = match (method, body) {
        ("POST", Some(b)) => {
            let mut req = agent.post(url).header("Content-Type", "application/json");
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            req.send(b)
        }
        _ => {
            let mut req = if method == "DELETE" {
                agent.delete(url)
            } else {
                agent.get(url)
            };
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            req.call()
        }
    };
    let mut reply = reply.map_err(|e| e.to_string())?;
    let code = reply.status().as_u16();
    let text = reply.body_mut().read_to_string().map_err(|e| e.to_string())?;
    if code >= 400 {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or(text);
        return Err(format!("{code}: {message}"));
    }
    Ok(text)
}
