//! `k8s4r bench robots N...`: a fleet load test. For each N it starts a fresh
//! `k8s4r server` (this binary) on a temp data dir, registers N simulated
//! robots that long-poll the agent API over keep-alive connections, creates
//! a Job with count=N, and measures the time from the create request until
//! each robot has received its Task (p50/p99/max), plus the server's RSS.
//! Results go to `target/bench/server.json` (or `--out`).
//!
//! With `--etcd` each run starts a throwaway etcd and `--replicas K` server
//! replicas on it; the robots are spread over the replicas round-robin, the
//! Job is created through the first one, and RSS is summed over them. CPU
//! time of the servers (and of etcd) is recorded for registration and for
//! the dispatch.
//!
//! The command line is `cli.rs`; `k8s4r bench report` (`report.rs`) turns
//! all benchmark JSON files into one markdown page.

use super::sim::SimRobot;
use crate::api::robot_channel::JoinToken;
use crate::server::progress::Progress;
use serde::de::IgnoredAny;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Just what the bench needs of an Assignments reply (the simulated robots
/// share the server's CPUs, so they decode as little as possible).
#[derive(serde::Deserialize)]
struct Slim {
    revision: u64,
    tasks: Vec<IgnoredAny>,
}

pub(super) struct ServerProc {
    pub(super) child: Child,
    /// The robots' plain-HTTP agent listener (`host:port`).
    pub(super) agent_addr: String,
    /// `<data>/admin.kubeconfig`: the HTTPS API's CA and admin certificate.
    pub(super) kubeconfig: PathBuf,
    dir: tempfile_dir::TempDir,
}

/// A temp dir removed on drop (no dev-dependency in the binary).
mod tempfile_dir {
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl ServerProc {
    pub(super) fn start(extra: &[String]) -> Result<ServerProc, String> {
        let dir = std::env::temp_dir().join(format!(
            "k8s4r-bench-{}-{}",
            std::process::id(),
            crate::server::object::name_suffix()
        ));
        let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
        // The secure defaults, as deployed: the operator side over HTTPS
        // with the generated admin kubeconfig, the simulated robots on the
        // plain agent listener (signed and sealed, as agents speak it).
        let mut cmd = crate::server::ready::loopback(&exe, &dir);
        // A profiler in front of the server (e.g. `heaptrack`): what the
        // bench's figures come from, found out on the same workload.
        if let Some(wrap) = std::env::var_os("K8S4R_BENCH_SERVER_WRAP") {
            let args: Vec<std::ffi::OsString> = cmd.get_args().map(ToOwned::to_owned).collect();
            cmd = Command::new(wrap);
            cmd.arg(&exe).args(args);
        }
        let mut child = cmd
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting the server: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let ready = crate::server::ready::Ready::wait(stdout, Duration::from_secs(60));
        let ready = match ready {
            Ok(r) => r,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok(ServerProc {
            child,
            agent_addr: ready.agent_base.trim_start_matches("http://").to_string(),
            kubeconfig: ready.kubeconfig,
            dir: tempfile_dir::TempDir(dir),
        })
    }

    /// The server's data dir (its store, keys and kubeconfig).
    pub(super) fn data_dir(&self) -> &Path {
        &self.dir.0
    }

    /// (current RSS, peak RSS) in MiB.
    pub(super) fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let field = |name: &str| -> f64 {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1024.0
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

/// CPU time (user + system, all threads, exited ones too) of a process, in
/// ms; 10 ms resolution (USER_HZ), plenty for runs of 50 ms and more.
pub(super) fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    ticks as f64 * 10.0
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `kubectl apply -f -` against the bench server with its admin kubeconfig
/// (its own cache dir).
async fn kubectl_apply(kubeconfig: &Path, doc: &str) -> Result<(), String> {
    let cache = std::env::temp_dir().join(format!("k8s4r-bench-kubectl-{}", crate::server::object::name_suffix()));
    let _cleanup = tempfile_dir::TempDir(cache.clone());
    let (kubeconfig, doc) = (kubeconfig.to_path_buf(), doc.to_string());
    let out = tokio::task::spawn_blocking(move || -> std::io::Result<std::process::Output> {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .env("KUBECONFIG", &kubeconfig)
            .arg("--cache-dir")
            .arg(&cache)
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(doc.as_bytes())?;
        }
        child.wait_with_output()
    })
    .await
    .map_err(|e| format!("kubectl: {e}"))?
    .map_err(|e| format!("running kubectl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// One operator request over HTTPS with the admin kubeconfig; the answer's
/// body if it is 2xx.
/// A fresh join token from the server behind `kubeconfig` (as an admin).
pub(super) async fn join_token(kubeconfig: &Path) -> Result<JoinToken, String> {
    let body = admin_request(kubeconfig, "POST", "/agent/v1/jointokens", "{}".into()).await?;
    let join: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    JoinToken::parse(join["token"].as_str().ok_or("no join token")?).map_err(|e| e.to_string())
}

pub(super) async fn admin_request(
    kubeconfig: &Path,
    method: &'static str,
    path: impl Into<String>,
    body: String,
) -> Result<String, String> {
    let path = path.into();
    let flags = crate::server::kubeclient::ClientFlags {
        kubeconfig: Some(kubeconfig.to_path_buf()),
        ..Default::default()
    };
    tokio::task::spawn_blocking(move || {
        crate::server::kubeclient::KubeClient::new(&flags)?
            .request(method, &path, Some(&body))?
            .ok()
            .map_err(|e| format!("{method} {path}: {e}"))
    })
    .await
    .map_err(|e| e.to_string())?
}

pub(super) fn have_kubectl() -> bool {
    Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What the servers of one run store into, and how many there are.
#[derive(Clone, Copy, Debug)]
pub(super) struct Setup {
    pub etcd: bool,
    pub replicas: usize,
}

pub(super) async fn run_one(n: usize, timeout: Duration, use_kubectl: bool, setup: Setup) -> Result<Value, String> {
    let etcd = if setup.etcd {
        Some(super::etcd::LocalEtcd::start()?)
    } else {
        None
    };
    // One join token onboards the whole simulated fleet: what is measured
    // is dispatch, not the per-token cap.
    let mut extra: Vec<String> = vec!["--max-robots-per-join-token".into(), n.max(1).to_string()];
    if let Some(e) = &etcd {
        extra.extend(["--etcd".into(), e.url.clone()]);
    }
    let servers = (0..setup.replicas.max(1))
        .map(|_| ServerProc::start(&extra))
        .collect::<Result<Vec<_>, _>>()?;
    let addrs: Vec<String> = servers.iter().map(|s| s.agent_addr.clone()).collect();
    let rss = || {
        servers
            .iter()
            .map(ServerProc::rss_mib)
            .fold((0.0, 0.0), |(a, b), (c, d)| (a + c, b + d))
    };
    // The store's CPU counts too: SQLite works inside the server, etcd not.
    let pids: Vec<u32> = servers
        .iter()
        .map(|s| s.child.id())
        .chain(etcd.as_ref().map(|e| e.pid()))
        .collect();
    let cpu = || pids.iter().map(|&p| cpu_ms(p)).sum::<f64>();
    // etcd's share apart, to tell whether the server or the store is the
    // cost of an etcd dispatch.
    let store_cpu = || etcd.as_ref().map_or(0.0, |e| cpu_ms(e.pid()));
    let kubeconfig = servers[0].kubeconfig.clone();
    let join = join_token(&kubeconfig).await?;

    // Register and start N robots; each reports when it got its task.
    let t_register = Instant::now();
    let limit = Arc::new(Semaphore::new(64));
    // Each robot says when it has registered and had its first answer,
    // then long-polls at once, as an agent does: a fleet is polling when a
    // Job comes. (Robots that waited silent for the last one to register
    // all polled at the same moment, and on etcd, where registering takes
    // a minute, every heartbeat that fell due meanwhile was written in
    // the middle of the dispatch.)
    let (registered, mut registrations) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<Instant, String>>();
    let registering = Progress::new(&format!("{n} robots registering"), n as u64);
    for i in 0..n {
        let addr = addrs[i % addrs.len()].clone();
        let (join, limit, registered, tx) = (join.clone(), limit.clone(), registered.clone(), tx.clone());
        let registering = registering.clone();
        tokio::spawn(async move {
            let mut passed = false;
            let res = async {
                let mut robot = SimRobot::register_labelled(&addr, &join, format!("bench-{i:05}"), &limit).await?;
                let first = robot.poll(0).await?;
                let mut since = serde_json::from_slice::<Slim>(&first)
                    .map_err(|e| e.to_string())?
                    .revision;
                registering.inc(1);
                let _ = registered.send(Ok(()));
                passed = true;
                loop {
                    let body = robot.poll(since).await?;
                    let a: Slim = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                    if !a.tasks.is_empty() {
                        return Ok(Instant::now());
                    }
                    since = a.revision;
                }
            }
            .await;
            match res {
                Err(e) if !passed => {
                    let _ = registered.send(Err(e));
                }
                res => {
                    let _ = tx.send(res);
                }
            }
        });
    }
    drop((tx, registered));
    // Bounded: a server that stops accepting (its open-file limit) leaves
    // robots waiting for an answer that never comes.
    let within = timeout.max(super::sim::REGISTER_WITHIN);
    let deadline = tokio::time::Instant::now() + within;
    for _ in 0..n {
        match tokio::time::timeout_at(deadline, registrations.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => return Err(format!("a robot failed to register: {e}")),
            Ok(None) => return Err("the robots stopped before registering".into()),
            Err(_) => return Err(format!("the robots did not all register within {within:?}")),
        }
    }
    registering.finish("registered and polling");
    let register_s = t_register.elapsed().as_secs_f64();
    let (rss_idle, _) = rss();
    let cpu_registered = cpu();
    let store_cpu_registered = store_cpu();

    let jobdoc = json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job", "metadata": {"name": "bench"},
        "spec": {"type": "service", "robotSelector": {"bench": "yes"}, "taskGroups": [{"name": "g", "count": n,
            "tasks": [{"name": "t", "driver": "exec", "config": {"execConfig": {"command": "/bin/true"}}}]}]}});
    let t0 = Instant::now();
    let applied_with = if use_kubectl {
        kubectl_apply(&kubeconfig, &jobdoc.to_string()).await?;
        "kubectl apply"
    } else {
        admin_request(
            &kubeconfig,
            "POST",
            "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs",
            jobdoc.to_string(),
        )
        .await
        .map_err(|e| format!("creating the job: {e}"))?;
        "HTTPS POST"
    };
    let mut lat = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + timeout;
    let delivering = Progress::new(&format!("tasks delivered to {n} robots"), n as u64);
    while lat.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Ok(at))) => {
                lat.push(at.saturating_duration_since(t0).as_secs_f64());
                delivering.inc(1);
            }
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) => break,
            Err(_) => {
                return Err(format!(
                    "only {}/{n} robots got their task within {timeout:?}",
                    lat.len()
                ))
            }
        }
    }
    delivering.finish("delivered");
    lat.sort_by(|a, b| a.total_cmp(b));
    let cpu_dispatch = cpu() - cpu_registered;
    let store_cpu_dispatch = store_cpu() - store_cpu_registered;
    let (rss, peak) = rss();
    Ok(json!({
        "robots": n,
        "store": if setup.etcd { "etcd" } else { "sqlite" },
        "replicas": servers.len(),
        "applied_with": applied_with,
        "register_all_seconds": register_s,
        "apply_to_all_delivered_seconds": lat.last().copied().unwrap_or(0.0),
        "delivery_p50_seconds": percentile(&lat, 0.50),
        "delivery_p99_seconds": percentile(&lat, 0.99),
        "server_rss_polling_idle_mib": rss_idle,
        "server_rss_mib": rss,
        "server_peak_rss_mib": peak,
        "server_cpu_ms_register": cpu_registered,
        "server_cpu_ms_dispatch": cpu_dispatch,
        "store_cpu_ms_dispatch": store_cpu_dispatch,
    }))
}
