//! `k8s4r server`: the control plane's flags into a [`Config`], then
//! [`crate::server::serve`] on a Tokio runtime until SIGINT/SIGTERM.

use super::{bounded_duration_arg, count_arg, url_list};
use crate::server::{http, logger, panics, raise_fd_limit, robot_channel, serve, time, tls, Config};
use lexopt::prelude::*;
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
    --poll-hold DUR          Longest a robot's long poll is held on --agent-listen; its
                             TCP keepalive (a probe every 2/3 of --offline-after) is
                             the heartbeat meanwhile; 0, or --offline-after under 6s:
                             never past the interval [default: 1h]
    --max-poll-rate N        Target agent polls per second; the interval grows with the fleet [default: 500]
    --watch-history N        Changes kept for resuming watches [default: 10000]
    --job-history N          Versions of a Job's spec kept (Rollout objects) for
                             `k8s4r job history` and revert [default: 10]
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

/// `k8s4r server ...`
pub fn cmd_server(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let mut cfg = Config::default();
    let mut level = log::LevelFilter::Info;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("log-level") => level = logger::parse_level(&parser.value()?.string()?)?,
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
            Long("poll-hold") => cfg.fleet.poll_hold = bounded_duration_arg(parser, "--poll-hold", MAX_POLL_INTERVAL)?,
            Long("max-poll-rate") => {
                let rate: f64 = parser.value()?.parse()?;
                if !(rate.is_finite() && rate > 0.0) {
                    return Err(format!("--max-poll-rate {rate}: must be a positive number").into());
                }
                cfg.fleet.max_poll_rate = rate;
            }
            Long("job-history") => {
                cfg.fleet.job_history =
                    count_arg(parser, "--job-history", crate::server::fleet::MAX_JOB_HISTORY)?.max(1)
            }
            Long("release-public-key") => {
                let file = parser.value()?.string()?;
                let text = std::fs::read_to_string(&file).map_err(|e| format!("--release-public-key {file}: {e}"))?;
                let key = crate::api::agent_release::parse_public_key(&text)
                    .map_err(|e| format!("--release-public-key {file}: {e}"))?;
                cfg.release_public_key = Some(crate::api::hex::encode(&key));
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
    logger::init(level);
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
