//! `k8s4r bench soak`: a long run whose server must stay flat (issue 20,
//! `make soak`; not part of `make test`). N simulated robots (default
//! 10,000) long-poll one fresh SQLite server for `--duration` (default
//! 1 h). Every `--churn` (default 5 min) the one Job on them gets a new
//! version (an env var), so every robot receives a changed task and
//! reports it running: the dispatch, status writes and history a fleet
//! makes every day, not only idle polls. Every `--every` (default 60 s) the
//! server's RSS, CPU time and store size (every `k8s4r.db*` file under its
//! data dir: the objects, the events, their WALs) are sampled.
//!
//! Writes target/bench/soak.json (samples, each version's delivery time,
//! the verdict) and target/bench/soak.svg (RSS and store size over time).
//! The run fails (exit 1) if a robot fails, a version does not reach every
//! robot before the next one is written, or the server's RSS at the end is
//! more than 10% above the highest sample of the run's first half (after
//! the first version reached everyone): memory that keeps growing is a
//! leak, a plateau is not.

use super::fleet::{admin_request, cpu_ms, join_token, ServerProc};
use super::sim::{SimRobot, REGISTER_WITHIN};
use crate::api::agent_protocol::{StatusReport, TaskStatusUpdate};
use crate::api::robot_channel::JoinToken;
use crate::api::{TaskState, TaskStatus};
use crate::server::progress::Progress;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Barrier, Semaphore};

const JOBS: &str = "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs";
/// How much the end may sit above the first half's highest RSS sample.
const FLAT_MARGIN: f64 = 0.10;

/// What a run is asked to do.
#[derive(Clone, Copy, Debug)]
pub struct Soak {
    pub robots: usize,
    pub duration: Duration,
    pub every: Duration,
    pub churn: Duration,
}

/// A robot saying it runs version `version`.
struct Seen {
    robot: usize,
    version: u32,
}

/// The Job `soak` at version `v`: one task on each robot labelled
/// `bench=yes`; a new `V` is a changed task everywhere at once (no
/// `update` strategy: existing manifests' behaviour).
fn job(n: usize, v: u32) -> Value {
    json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job", "metadata": {"name": "soak"},
        "spec": {"type": "service", "robotSelector": {"bench": "yes"}, "taskGroups": [{"name": "g", "count": n,
            "tasks": [{"name": "t", "driver": "exec", "env": {"V": v.to_string()},
                "config": {"execConfig": {"command": "/bin/sleep", "args": ["3600"]}}}]}]}})
}

/// Replace the Job's spec with version `v`'s (unconditionally: the
/// controller writes its status meanwhile).
async fn put(kubeconfig: &Path, n: usize, v: u32) -> Result<(), String> {
    let mut cur: Value =
        serde_json::from_str(&admin_request(kubeconfig, "GET", format!("{JOBS}/soak"), String::new()).await?)
            .map_err(|e| format!("reading the Job: {e}"))?;
    cur["spec"] = job(n, v)["spec"].clone();
    if let Some(m) = cur["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    admin_request(kubeconfig, "PUT", format!("{JOBS}/soak"), cur.to_string()).await?;
    Ok(())
}

/// A robot's life: register, then follow its one task, reporting each new
/// version running (as an agent would) until the run ends.
async fn robot(
    i: usize,
    addr: String,
    join: JoinToken,
    (limit, ready, registering): (Arc<Semaphore>, Arc<Barrier>, Progress),
    tx: tokio::sync::mpsc::UnboundedSender<Result<Seen, String>>,
) {
    let mut passed = false;
    let res: Result<(), String> = async {
        let mut robot = SimRobot::register_labelled(&addr, &join, format!("soak-{i:05}"), &limit).await?;
        let first: Value = serde_json::from_slice(&robot.poll(0).await?).map_err(|e| e.to_string())?;
        let mut since = first["revision"].as_u64().unwrap_or(0);
        registering.inc(1);
        ready.wait().await;
        passed = true;
        let (mut running, mut seq) = (0u32, 0u64);
        loop {
            let Some(task) = robot.next_first_task(&mut since).await? else {
                continue;
            };
            let version = task["spec"]["env"]["V"]
                .as_str()
                .and_then(|v| v.parse::<u32>().ok())
                .ok_or("a task without its version")?;
            if version == running {
                continue;
            }
            running = version;
            seq += 1;
            let status = TaskStatus {
                state: TaskState::Running,
                pid: i32::try_from(seq).ok(),
                restart_count: Some(0),
                started_at: Some(crate::server::time::now_rfc3339()),
                ..Default::default()
            };
            let name = task["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let report = StatusReport {
                updates: vec![TaskStatusUpdate {
                    task: name,
                    seq,
                    status,
                }],
                ..Default::default()
            };
            robot.report(&report).await?;
            if tx.send(Ok(Seen { robot: i, version })).is_err() {
                return Ok(());
            }
        }
    }
    .await;
    if !passed {
        // Unblock the barrier so the run fails instead of hanging.
        ready.wait().await;
    }
    if let Err(e) = res {
        let _ = tx.send(Err(format!("robot {i}: {e}")));
    }
}

/// Bytes in every `k8s4r.db*` file under `dir` (two levels: the events
/// store has a directory of its own).
fn store_bytes(dir: &Path) -> u64 {
    fn walk(dir: &Path, depth: u32) -> u64 {
        let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
        entries
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() && depth > 0 => walk(&e.path(), depth - 1),
                Ok(t) if t.is_file() && e.file_name().to_string_lossy().starts_with("k8s4r.db") => {
                    e.metadata().map_or(0, |m| m.len())
                }
                _ => 0,
            })
            .sum()
    }
    walk(dir, 2)
}

/// Which robot runs which version, and when the current one reached all.
struct Fleet {
    at: Vec<u32>,
    on_current: usize,
    current: u32,
    written: Instant,
    delivered: Vec<Value>,
}

impl Fleet {
    fn seen(&mut self, s: Seen) {
        let was = std::mem::replace(&mut self.at[s.robot], s.version);
        if s.version == self.current && was != self.current {
            self.on_current += 1;
            if self.on_current == self.at.len() {
                self.delivered.push(json!({
                    "version": self.current,
                    "all_robots_seconds": self.written.elapsed().as_secs_f64(),
                }));
            }
        }
    }

    fn all_on_current(&self) -> bool {
        self.on_current == self.at.len()
    }

    fn next(&mut self, v: u32) {
        self.current = v;
        self.written = Instant::now();
        self.on_current = self.at.iter().filter(|&&a| a == v).count();
    }
}

/// Follow the robots until all run the current version, for at most `within`.
async fn until_all(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Result<Seen, String>>,
    fleet: &mut Fleet,
    within: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    while !fleet.all_on_current() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Ok(s))) => fleet.seen(s),
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) => return Err("the robots stopped".into()),
            Err(_) => {
                return Err(format!(
                    "version {} reached {}/{} robots in {:.0} s",
                    fleet.current,
                    fleet.on_current,
                    fleet.at.len(),
                    within.as_secs_f64()
                ))
            }
        }
    }
    Ok(())
}

/// The verdict over `samples` (the first one taken once everyone runs
/// version 1): the end against the first half's highest RSS.
fn verdict(samples: &[Value]) -> Value {
    let rss: Vec<f64> = samples.iter().filter_map(|s| s["rss_mib"].as_f64()).collect();
    let store: Vec<f64> = samples.iter().filter_map(|s| s["store_mib"].as_f64()).collect();
    let half = rss.len().div_ceil(2).max(1);
    let first_half_max = rss.iter().take(half).copied().fold(0.0, f64::max);
    let end = rss.last().copied().unwrap_or(0.0);
    json!({
        "rule": format!("RSS at the end <= {:.0}% above the highest sample of the first half", FLAT_MARGIN * 100.0),
        "rss_first_mib": rss.first(),
        "rss_first_half_max_mib": first_half_max,
        "rss_end_mib": end,
        "rss_max_mib": rss.iter().copied().fold(0.0, f64::max),
        "store_first_mib": store.first(),
        "store_end_mib": store.last(),
        "flat": rss.len() >= 2 && end <= first_half_max * (1.0 + FLAT_MARGIN),
    })
}

/// The samples as a chart: RSS and store size (MiB) over minutes.
pub fn chart(doc: &Value) -> Option<super::charts::Chart> {
    let samples = doc["samples"].as_array()?;
    let line = |key: &str| -> Vec<(f64, f64)> {
        samples
            .iter()
            .filter_map(|s| Some((s["minutes"].as_f64()?, s[key].as_f64()?)))
            .collect()
    };
    let series = [
        ("server RSS".to_string(), line("rss_mib")),
        ("store on disk".to_string(), line("store_mib")),
    ];
    let title = format!("Soak: {} robots on SQLite", doc["robots"]);
    super::charts::lines("soak.svg", &title, ("minutes", "MiB"), &series, false).ok()
}

/// One soak run; its JSON document (Err only for a run that could not go
/// on: no server, a robot that failed, a version that did not arrive).
pub async fn run(soak: Soak) -> Result<Value, String> {
    let n = soak.robots;
    let server = ServerProc::start(&["--max-robots-per-join-token".into(), n.max(1).to_string()])?;
    let pid = server.child.id();
    let kubeconfig = server.kubeconfig.clone();
    let join = join_token(&kubeconfig).await?;

    let limit = Arc::new(Semaphore::new(64));
    let ready = Arc::new(Barrier::new(n + 1));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let registering = Progress::new(&format!("{n} robots registering"), n as u64);
    for i in 0..n {
        let sync = (limit.clone(), ready.clone(), registering.clone());
        tokio::spawn(robot(i, server.agent_addr.clone(), join.clone(), sync, tx.clone()));
    }
    drop(tx);
    // Bounded: a server that stops accepting (its open-file limit) leaves
    // robots waiting for an answer that never comes.
    if tokio::time::timeout(REGISTER_WITHIN, ready.wait()).await.is_err() {
        return Err(format!("the robots did not all register within {REGISTER_WITHIN:?}"));
    }
    registering.finish("registered and polling");

    let mut fleet = Fleet {
        at: vec![0; n],
        on_current: 0,
        current: 1,
        written: Instant::now(),
        delivered: Vec::new(),
    };
    admin_request(&kubeconfig, "POST", JOBS, job(n, 1).to_string()).await?;
    // Version 1 everywhere: the warm-up.
    until_all(&mut rx, &mut fleet, soak.churn.max(Duration::from_secs(120))).await?;

    let t0 = Instant::now();
    let sample = |fleet: &Fleet| {
        let (rss, peak) = server.rss_mib();
        json!({
            "minutes": t0.elapsed().as_secs_f64() / 60.0,
            "rss_mib": rss,
            "peak_rss_mib": peak,
            "cpu_seconds": cpu_ms(pid) / 1000.0,
            "store_mib": store_bytes(server.data_dir()) as f64 / (1024.0 * 1024.0),
            "version": fleet.current,
            "robots_on_it": fleet.on_current,
        })
    };
    let mut samples = vec![sample(&fleet)];
    let end = tokio::time::Instant::now() + soak.duration;
    let mut next_sample = tokio::time::Instant::now() + soak.every;
    let mut next_churn = tokio::time::Instant::now() + soak.churn;
    let minutes = soak.duration.as_secs_f64() / 60.0;
    loop {
        let now = tokio::time::Instant::now();
        if now >= next_sample {
            samples.push(sample(&fleet));
            eprintln!("soak: {}", samples.last().map(Value::to_string).unwrap_or_default());
            next_sample += soak.every;
        }
        if now >= end {
            break;
        }
        if now >= next_churn {
            if !fleet.all_on_current() {
                return Err(format!(
                    "version {} reached {}/{n} robots in {:.0} s, before the next was due",
                    fleet.current,
                    fleet.on_current,
                    soak.churn.as_secs_f64()
                ));
            }
            let v = fleet.current + 1;
            put(&kubeconfig, n, v).await?;
            fleet.next(v);
            next_churn += soak.churn;
        }
        match tokio::time::timeout_at(next_sample.min(next_churn).min(end), rx.recv()).await {
            Ok(Some(Ok(s))) => fleet.seen(s),
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) => return Err("the robots stopped".into()),
            Err(_) => {}
        }
    }
    // The last version written must reach everyone too.
    until_all(&mut rx, &mut fleet, soak.churn).await?;
    let verdict = verdict(&samples);
    let doc = json!({
        "robots": n,
        "store": "sqlite",
        "minutes": minutes,
        "sample_every_seconds": soak.every.as_secs_f64(),
        "churn_every_seconds": soak.churn.as_secs_f64(),
        "versions_delivered": fleet.delivered,
        "samples": samples,
        "verdict": verdict,
    });
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(rss: f64) -> Value {
        json!({"rss_mib": rss, "store_mib": 1.0, "minutes": 0.0})
    }

    #[test]
    fn a_plateau_is_flat_and_steady_growth_is_not() {
        let plateau: Vec<Value> = [100.0, 140.0, 150.0, 151.0, 150.0, 152.0].map(s).to_vec();
        assert_eq!(verdict(&plateau)["flat"], true);
        let growing: Vec<Value> = [100.0, 110.0, 120.0, 130.0, 140.0, 150.0].map(s).to_vec();
        assert_eq!(verdict(&growing)["flat"], false);
        assert_eq!(verdict(&[s(100.0)])["flat"], false, "one sample proves nothing");
    }

    #[test]
    fn the_store_is_every_database_file_two_levels_down() {
        let dir = std::env::temp_dir().join(format!("k8s4r-soak-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("events")).unwrap();
        std::fs::write(dir.join("k8s4r.db"), [0; 100]).unwrap();
        std::fs::write(dir.join("k8s4r.db-wal"), [0; 20]).unwrap();
        std::fs::write(dir.join("events/k8s4r.db"), [0; 3]).unwrap();
        std::fs::write(dir.join("ca.key"), [0; 1000]).unwrap();
        assert_eq!(store_bytes(&dir), 123);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
