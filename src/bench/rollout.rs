//! `k8s4r bench rollout N`: an AgentRelease rolled out to N simulated
//! robots with a canary. A fresh server (SQLite) with a release key; N
//! robots register, report their agent version and architecture, and
//! long-poll; a release signed with the key is created with `canary: 1%`,
//! `minHealthyTime: 5s` and maxParallel N/10: the canaries are offered it
//! first, the rest only once every canary has reported the version and
//! stayed Online for minHealthyTime (checked here: no other robot installs
//! before). A simulated robot "installs" by reporting the new version with
//! lastUpdate Applied (the robot side's download and exec are measured by
//! the agent tests, not here).
//!
//! Recorded: time to the canaries, to their health, to the whole fleet,
//! per-robot install times, the server's CPU and RSS, and the store writes
//! the rollout cost (the store revision's growth).

use super::fleet::{admin_request, cpu_ms, percentile, ServerProc};
use super::sim::SimRobot;
use crate::api::agent_protocol::{RegisterRequest, StatusReport};
use crate::api::agent_release::{self, UpdateOutcome, UpdateResult};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Barrier, Semaphore};

const FROM: &str = "0.1.0";
const TO: &str = "0.2.0-bench";
const RELEASES: &str = "/apis/robot.k8s4r.io/v1alpha1/agentreleases";
/// How often robots poll: each step of the rollout waits for the next poll.
const POLL: &str = "2s";
/// The release's canary share and how long a canary must stay healthy.
const CANARY: &str = "1%";
const MIN_HEALTHY: Duration = Duration::from_secs(5);

/// Just what a simulated robot reads of an Assignments reply.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Slim {
    revision: u64,
    #[serde(default)]
    agent_update: Option<Offer>,
}

#[derive(serde::Deserialize)]
struct Offer {
    version: String,
    release: String,
}

async fn store_revision(kubeconfig: &std::path::Path) -> Result<u64, String> {
    let list = admin_request(
        kubeconfig,
        "GET",
        "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/robots?limit=1",
        String::new(),
    )
    .await?;
    let v: Value = serde_json::from_str(&list).map_err(|e| e.to_string())?;
    v["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| "no resourceVersion".into())
}

type Installs = tokio::sync::mpsc::UnboundedReceiver<Result<(usize, Instant), String>>;

/// The next robot's install, or why there is none before `deadline`.
async fn next(
    rx: &mut Installs,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<(usize, Instant), String> {
    match tokio::time::timeout_at(deadline, rx.recv()).await {
        Ok(Some(r)) => r,
        Ok(None) => Err("the robots stopped".to_string()),
        Err(_) => Err(format!("the rollout did not finish within {timeout:?}")),
    }
}

pub(super) async fn run(n: usize, timeout: Duration) -> Result<Value, String> {
    let dir = std::env::temp_dir().join(format!("k8s4r-bench-release-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut secret = [0u8; 32];
    crate::api::robot_channel::random(&mut secret);
    let public = dir.join("release.pub");
    std::fs::write(&public, crate::api::hex::encode(&agent_release::public_key(&secret))).map_err(|e| e.to_string())?;
    let server = ServerProc::start(&[
        "--max-robots-per-join-token".into(),
        n.max(1).to_string(),
        "--poll-interval".into(),
        POLL.into(),
        "--release-public-key".into(),
        public.display().to_string(),
    ])?;
    let _ = std::fs::remove_dir_all(&dir);
    let pid = server.child.id();
    let kubeconfig = server.kubeconfig.clone();
    let join = super::fleet::join_token(&kubeconfig).await?;

    let limit = Arc::new(Semaphore::new(64));
    let ready = Arc::new(Barrier::new(n + 1));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<(usize, Instant), String>>();
    let arch = agent_release::this_arch();
    for i in 0..n {
        let addr = server.agent_addr.clone();
        let (join, limit, ready, tx) = (join.clone(), limit.clone(), ready.clone(), tx.clone());
        tokio::spawn(async move {
            let mut passed = false;
            let res: Result<(), String> = async {
                let mut robot = {
                    let _permit = limit.acquire().await.map_err(|e| e.to_string())?;
                    let name = format!("fleet-{i:05}");
                    let mut robot = SimRobot::register(&addr, &join, name, RegisterRequest::default()).await?;
                    let first = StatusReport {
                        agent_version: Some(FROM.into()),
                        architecture: Some(arch.into()),
                        ..Default::default()
                    };
                    robot.report(&first).await?;
                    robot
                };
                let first = robot.poll(0).await?;
                let mut since = serde_json::from_slice::<Slim>(&first)
                    .map_err(|e| e.to_string())?
                    .revision;
                ready.wait().await;
                passed = true;
                let mut installed = false;
                loop {
                    let body = robot.poll(since).await?;
                    let a: Slim = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                    since = a.revision;
                    if let (Some(offer), false) = (a.agent_update, installed) {
                        let done = StatusReport {
                            agent_version: Some(offer.version.clone()),
                            last_update: Some(UpdateResult {
                                release: offer.release,
                                version: offer.version,
                                result: UpdateOutcome::Applied,
                                message: "bench".into(),
                                time: String::new(),
                            }),
                            ..Default::default()
                        };
                        robot.report(&done).await?;
                        installed = true;
                        let _ = tx.send(Ok((i, Instant::now())));
                    }
                }
            }
            .await;
            if !passed {
                ready.wait().await;
            }
            let _ = tx.send(res.map(|()| (i, Instant::now())));
        });
    }
    drop(tx);
    ready.wait().await;
    // The fleet's own writes (persisted heartbeats) while nothing rolls out,
    // so the rollout's share can be told apart.
    let idle = Duration::from_secs(5);
    let before_idle = store_revision(&kubeconfig).await?;
    tokio::time::sleep(idle).await;
    let idle_writes_per_s = (store_revision(&kubeconfig).await? - before_idle) as f64 / idle.as_secs_f64();
    let (cpu0, rev0) = (cpu_ms(pid), store_revision(&kubeconfig).await?);
    let sha = "0".repeat(64);
    let size = 2_000_000;
    let binary = json!({"arch": arch, "url": "http://releases.invalid/agent", "size": size, "sha256": sha,
        "signature": agent_release::sign(&secret, TO, arch, size, &sha)});
    let window = (n / 10).max(1);
    let canaries = crate::api::update_strategy::CountOrPercent::Percent(1).of(n);
    let doc = json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "AgentRelease",
        "metadata": {"name": "bench"},
        "spec": {"version": TO, "canary": CANARY, "minHealthyTime": format!("{}s", MIN_HEALTHY.as_secs()),
                 "maxParallel": window, "binaries": [binary]}});
    let t0 = Instant::now();
    admin_request(&kubeconfig, "POST", RELEASES, doc.to_string()).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut lat = Vec::with_capacity(n);
    let mut canaries_at = t0;
    while lat.len() < n {
        let (_, at) = match next(&mut rx, deadline, timeout).await {
            Ok(v) => v,
            Err(e) => {
                let rel = admin_request(&kubeconfig, "GET", format!("{RELEASES}/bench"), String::new()).await;
                return Err(format!("{e} ({} of {n} updated): {rel:?}", lat.len()));
            }
        };
        if lat.len() == canaries {
            // The first robot beyond the canaries: only after they were
            // healthy, minHealthyTime after the last of them reported.
            let gap = at.saturating_duration_since(canaries_at);
            if gap < MIN_HEALTHY {
                return Err(format!(
                    "robot {} of {n} installed {gap:?} after the last canary, before minHealthyTime {MIN_HEALTHY:?}",
                    lat.len() + 1
                ));
            }
        }
        if lat.len() + 1 == canaries {
            canaries_at = at;
        }
        lat.push(at.saturating_duration_since(t0).as_secs_f64());
    }
    let canary = canaries_at.saturating_duration_since(t0).as_secs_f64();
    let rest_from = lat.get(canaries).copied().unwrap_or(canary);
    let all = t0.elapsed().as_secs_f64();
    let after_canary = all - rest_from;
    let (cpu, rev) = (cpu_ms(pid) - cpu0, store_revision(&kubeconfig).await? - rev0);
    let status: Value =
        serde_json::from_str(&admin_request(&kubeconfig, "GET", format!("{RELEASES}/bench"), String::new()).await?)
            .map_err(|e| e.to_string())?;
    lat.sort_by(|a, b| a.total_cmp(b));
    let (rss, peak) = server.rss_mib();
    Ok(json!({
        "robots": n,
        "poll_interval": POLL,
        "canary": CANARY,
        "canaries": canaries,
        "min_healthy_seconds": MIN_HEALTHY.as_secs(),
        "max_parallel": window,
        "canaries_updated_seconds": canary,
        "first_beyond_canaries_seconds": rest_from,
        "rest_after_canaries_seconds": after_canary,
        "all_updated_seconds": all,
        "install_p50_seconds": percentile(&lat, 0.50),
        "install_p99_seconds": percentile(&lat, 0.99),
        "server_cpu_ms_rollout": cpu,
        "store_writes_rollout": rev,
        "store_writes_idle_per_second": idle_writes_per_s,
        "store_writes_beyond_idle_per_robot": (rev as f64 - idle_writes_per_s * all).max(0.0) / n.max(1) as f64,
        "server_rss_mib": rss,
        "server_peak_rss_mib": peak,
        "release_status": status["status"],
    }))
}
