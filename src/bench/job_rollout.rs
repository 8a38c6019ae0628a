//! `k8s4r bench job-rollout N`: staged rollouts of a system Job to N
//! simulated robots. A fresh server (SQLite); N robots register and
//! long-poll; the Job `bench` (version 1, good) reaches all of them; then
//! - a bad version 2 with `canary: 5%` and `autoRevert`: measured are how
//!   many robots ever got it (at most the canaries), and the time until
//!   every robot runs, and is assigned, version 1 again;
//! - a good version 3 with `maxParallel: 10%`: the time until every robot
//!   runs it and the rollout succeeded, and the server's CPU meanwhile.
//!
//! A simulated robot acts as an agent does, without processes: a task
//! whose spec sets `BENCH_EXIT` (the script runs `exit $BENCH_EXIT`)
//! fails with that code at once, any other runs (a new pid per run). With
//! the rollout's robot-local revert offer (`agent::rollback`'s
//! annotations), a failed new version is replaced on the robot by the
//! previous spec at once and reported with reason `RolledBack`, as the
//! agent's `Rollback` does.

use super::fleet::{admin_request, cpu_ms, ServerProc};
use super::sim::SimRobot;
use crate::agent::rollback::{ANN_AUTO_REVERT, ANN_PREVIOUS_SPEC, REASON};
use crate::api::agent_protocol::{StatusReport, TaskStatusUpdate};
use crate::api::robot_channel::JoinToken;
use crate::api::{TaskState, TaskStatus};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::{Barrier, Semaphore};

const JOBS: &str = "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs";
const ROLLOUTS: &str = "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/rollouts";
/// How often robots poll (changes wake their held polls at once, so this
/// paces their heartbeats: with 1,000 robots every 2 s, as the agent
/// release bench polls, a loaded 2-core machine marks robots Offline); the
/// goal for the bad release is healthyDeadline plus one of these.
const POLL_SECONDS: u64 = 10;
const HEALTHY_DEADLINE_SECONDS: u64 = 10;
/// How often the Rollout object is read while waiting.
const LOOK: Duration = Duration::from_millis(200);

/// What one robot runs and is assigned now (the task's `V`), and whether
/// it went back on its own.
#[derive(Debug)]
struct Seen {
    robot: usize,
    assigned: String,
    runs: String,
    rolled_back: bool,
}

/// The fleet as the robots report it.
struct Fleet {
    assigned: Vec<String>,
    runs: Vec<String>,
    /// Robots that were ever assigned (and started) each version.
    got: std::collections::BTreeMap<String, BTreeSet<usize>>,
    rolled_back: BTreeSet<usize>,
}

impl Fleet {
    fn new(n: usize) -> Fleet {
        Fleet {
            assigned: vec![String::new(); n],
            runs: vec![String::new(); n],
            got: Default::default(),
            rolled_back: BTreeSet::new(),
        }
    }

    fn apply(&mut self, s: Seen) {
        self.got.entry(s.assigned.clone()).or_default().insert(s.robot);
        if s.rolled_back {
            self.rolled_back.insert(s.robot);
        }
        self.assigned[s.robot] = s.assigned;
        self.runs[s.robot] = s.runs;
    }

    /// Every robot runs, and is assigned, version `v`.
    fn all_on(&self, v: &str) -> bool {
        self.assigned.iter().chain(&self.runs).all(|x| x == v)
    }

    fn got(&self, v: &str) -> usize {
        self.got.get(v).map_or(0, BTreeSet::len)
    }
}

/// The version `V` a task spec is at.
fn version(spec: &Value) -> String {
    spec["env"]["V"].as_str().unwrap_or_default().to_string()
}

/// One task on a simulated robot: the spec it runs, and the (bad) spec it
/// went back from.
struct Run {
    name: String,
    spec: Value,
    reverted_from: Option<Value>,
    seq: u64,
    pid: i32,
    /// The last status reported.
    last: Option<TaskStatus>,
}

fn running(pid: i32, reason: Option<String>) -> TaskStatus {
    TaskStatus {
        state: TaskState::Running,
        pid: Some(pid),
        restart_count: Some(0),
        started_at: Some(crate::server::time::now_rfc3339()),
        message: reason
            .is_some()
            .then(|| "the robot went back to the previous version: the new version failed".to_string()),
        reason,
        ..Default::default()
    }
}

impl Run {
    async fn say(&mut self, robot: &mut SimRobot, status: TaskStatus) -> Result<(), String> {
        self.last = Some(status.clone());
        self.seq += 1;
        let r = StatusReport {
            updates: vec![TaskStatusUpdate {
                task: self.name.clone(),
                seq: self.seq,
                status,
            }],
            ..Default::default()
        };
        robot.report(&r).await
    }

    /// Start `spec` (the robot's task changed); whether it went back.
    async fn start(&mut self, robot: &mut SimRobot, task: &Value) -> Result<bool, String> {
        let spec = &task["spec"];
        if *spec == self.spec || self.reverted_from.as_ref() == Some(spec) {
            // The server put the robot's own revert in writing, or still
            // offers the version the robot went back from: nothing to run.
            if *spec == self.spec && self.reverted_from.take().is_some() {
                return self.say(robot, running(self.pid, None)).await.map(|()| false);
            }
            // The server's record differs from the last report (it marked
            // the task Lost while the robot seemed away): say it again, as
            // the agent's outbox does.
            let st = &task["status"];
            if let Some(last) = self.last.clone() {
                let pid = st["pid"].as_i64().and_then(|p| i32::try_from(p).ok());
                if st["state"].as_str() != Some(last.state.as_str()) || pid != last.pid {
                    self.say(robot, last).await?;
                }
            }
            return Ok(false);
        }
        self.spec = spec.clone();
        self.reverted_from = None;
        self.pid += 1;
        let exit = spec["env"]["BENCH_EXIT"].as_str().and_then(|c| c.parse::<i32>().ok());
        let Some(code) = exit.filter(|c| *c != 0) else {
            return self.say(robot, running(self.pid, None)).await.map(|()| false);
        };
        let failed = TaskStatus {
            state: TaskState::Failed,
            exit_code: Some(code),
            restart_count: Some(0),
            message: Some(format!("exited with {code}")),
            finished_at: Some(crate::server::time::now_rfc3339()),
            ..Default::default()
        };
        self.say(robot, failed).await?;
        let annotations = &task["metadata"]["annotations"];
        let previous = annotations[ANN_AUTO_REVERT]
            .as_str()
            .and_then(|_| serde_json::from_str::<Value>(annotations[ANN_PREVIOUS_SPEC].as_str()?).ok());
        let Some(previous) = previous else { return Ok(false) };
        self.reverted_from = Some(std::mem::replace(&mut self.spec, previous));
        self.pid += 1;
        self.say(robot, running(self.pid, Some(REASON.to_string()))).await?;
        Ok(true)
    }
}

/// A robot's life: register, then follow its assignments until the run
/// ends (the process exits).
async fn robot(
    i: usize,
    addr: String,
    join: JoinToken,
    limit: Arc<Semaphore>,
    ready: Arc<Barrier>,
    tx: tokio::sync::mpsc::UnboundedSender<Result<Seen, String>>,
) {
    let mut passed = false;
    let res: Result<(), String> = async {
        let mut robot = SimRobot::register_labelled(&addr, &join, format!("roll-{i:05}"), &limit).await?;
        let mut since = serde_json::from_slice::<Value>(&robot.poll(0).await?).map_err(|e| e.to_string())?["revision"]
            .as_u64()
            .unwrap_or(0);
        ready.wait().await;
        passed = true;
        let mut run: Option<Run> = None;
        loop {
            // One task per robot (the Job has one group of one task).
            let Some(task) = robot.next_first_task(&mut since).await? else {
                continue;
            };
            let r = run.get_or_insert_with(|| Run {
                name: task["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                spec: Value::Null,
                reverted_from: None,
                seq: 0,
                pid: 1000,
                last: None,
            });
            let rolled_back = r.start(&mut robot, &task).await?;
            let seen = Seen {
                robot: i,
                assigned: version(&task["spec"]),
                runs: version(&r.spec),
                rolled_back,
            };
            let _ = tx.send(Ok(seen));
        }
    }
    .await;
    if !passed {
        ready.wait().await;
    }
    if let Err(e) = res {
        let _ = tx.send(Err(format!("robot {i}: {e}")));
    }
}

/// The system Job `bench` at version `v`; `exit`: its task fails with it.
fn job(v: u32, exit: Option<i32>, update: Value) -> Value {
    let mut env = json!({"V": v.to_string()});
    if let Some(code) = exit {
        env["BENCH_EXIT"] = json!(code.to_string());
    }
    let script = if exit.is_some() {
        "exit $BENCH_EXIT"
    } else {
        "exec sleep 3600"
    };
    json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job", "metadata": {"name": "bench"},
        "spec": {"type": "system", "robotSelector": {"bench": "yes"}, "taskGroups": [{"name": "g",
            "update": update,
            "tasks": [{"name": "t", "driver": "exec", "env": env,
                "config": {"execConfig": {"command": "/bin/sh", "args": ["-c", script]}}}]}]}})
}

fn update(extra: Value) -> Value {
    let mut u = json!({"minHealthyTime": "2s", "healthyDeadline": format!("{HEALTHY_DEADLINE_SECONDS}s"),
        "progressDeadline": "60s", "stagger": "0s", "healthCheck": "taskStates"});
    for (k, v) in extra.as_object().into_iter().flatten() {
        u[k] = v.clone();
    }
    u
}

/// Write `job`'s spec as the Job's new version (unconditionally: the
/// controller writes the status meanwhile).
async fn put(kubeconfig: &std::path::Path, job: &Value) -> Result<(), String> {
    let mut cur: Value =
        serde_json::from_str(&admin_request(kubeconfig, "GET", format!("{JOBS}/bench"), String::new()).await?)
            .map_err(|e| e.to_string())?;
    cur["spec"] = job["spec"].clone();
    if let Some(m) = cur["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    admin_request(kubeconfig, "PUT", format!("{JOBS}/bench"), cur.to_string()).await?;
    Ok(())
}

async fn rollout(kubeconfig: &std::path::Path, v: u32) -> Option<Value> {
    let text = admin_request(kubeconfig, "GET", format!("{ROLLOUTS}/bench-v{v}"), String::new())
        .await
        .ok()?;
    serde_json::from_str(&text).ok()
}

/// When (seconds after `t0`) the robots last came to `done`, and when the
/// Rollout `bench-v{v}` was first seen in `state`; both must hold by
/// `deadline`.
async fn until(
    rx: &mut UnboundedReceiver<Result<Seen, String>>,
    fleet: &mut Fleet,
    kubeconfig: &std::path::Path,
    (v, state): (u32, &str),
    t0: Instant,
    deadline: tokio::time::Instant,
    done: impl Fn(&Fleet) -> bool,
) -> Result<(f64, f64), String> {
    let mut robots_at = done(fleet).then(|| t0.elapsed().as_secs_f64());
    let mut rollout_at = None;
    let mut look = tokio::time::Instant::now();
    loop {
        if rollout_at.is_none() && tokio::time::Instant::now() >= look {
            let r = rollout(kubeconfig, v).await;
            if r.as_ref().is_some_and(|r| r["status"]["state"] == state) {
                rollout_at = Some(t0.elapsed().as_secs_f64());
            }
            look = tokio::time::Instant::now() + LOOK;
        }
        if let (Some(r), Some(o)) = (robots_at, rollout_at) {
            if done(fleet) {
                return Ok((r, o));
            }
        }
        let wake = if rollout_at.is_none() {
            look.min(deadline)
        } else {
            deadline
        };
        match tokio::time::timeout_at(wake, rx.recv()).await {
            Ok(Some(Ok(seen))) => {
                let before = done(fleet);
                fleet.apply(seen);
                match (before, done(fleet)) {
                    (false, true) => robots_at = Some(t0.elapsed().as_secs_f64()),
                    (true, false) => robots_at = None,
                    _ => {}
                }
            }
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) => return Err("the robots stopped".into()),
            Err(_) if tokio::time::Instant::now() >= deadline => {
                let r = rollout(kubeconfig, v).await;
                return Err(format!(
                    "version {v}: not {state} with the robots settled in time; rollout: {}",
                    r.map_or("none".into(), |r| r["status"].to_string())
                ));
            }
            Err(_) => {}
        }
    }
}

pub(super) async fn run(n: usize, timeout: Duration) -> Result<Value, String> {
    let server = ServerProc::start(&[
        "--max-robots-per-join-token".into(),
        n.max(1).to_string(),
        "--poll-interval".into(),
        format!("{POLL_SECONDS}s"),
    ])?;
    let pid = server.child.id();
    let kubeconfig = server.kubeconfig.clone();
    let join = super::fleet::join_token(&kubeconfig).await?;

    let limit = Arc::new(Semaphore::new(64));
    let ready = Arc::new(Barrier::new(n + 1));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..n {
        let addr = server.agent_addr.clone();
        tokio::spawn(robot(i, addr, join.clone(), limit.clone(), ready.clone(), tx.clone()));
    }
    drop(tx);
    ready.wait().await;
    let mut fleet = Fleet::new(n);

    // Version 1 everywhere (a first version has nothing to pace).
    let t = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    admin_request(&kubeconfig, "POST", JOBS, job(1, None, update(json!({}))).to_string()).await?;
    until(&mut rx, &mut fleet, &kubeconfig, (1, "Succeeded"), t, deadline, |f| {
        f.all_on("1")
    })
    .await?;

    // A bad version 2: 5% canaries, reverted.
    let canaries = (n * 5).div_ceil(100);
    let bad = update(json!({"canary": "5%", "autoRevert": true}));
    let (cpu0, t) = (cpu_ms(pid), Instant::now());
    let deadline = tokio::time::Instant::now() + timeout;
    put(&kubeconfig, &job(2, Some(1), bad)).await?;
    let (bad_back, bad_failed) = until(&mut rx, &mut fleet, &kubeconfig, (2, "Failed"), t, deadline, |f| {
        f.got("2") > 0 && f.all_on("1")
    })
    .await?;
    let cpu_bad = cpu_ms(pid) - cpu0;
    let bad_status = rollout(&kubeconfig, 2).await.map(|r| r["status"].clone());

    // A good version 3, 10% at a time.
    let parallel = (n * 10).div_ceil(100);
    // A generous healthyDeadline: a good version is not to fail on a
    // loaded machine's late reports.
    let good = update(json!({"maxParallel": "10%", "healthyDeadline": "60s"}));
    let (cpu0, t) = (cpu_ms(pid), Instant::now());
    let deadline = tokio::time::Instant::now() + timeout;
    put(&kubeconfig, &job(3, None, good)).await?;
    let (good_all, good_done) = until(&mut rx, &mut fleet, &kubeconfig, (3, "Succeeded"), t, deadline, |f| {
        f.all_on("3")
    })
    .await?;
    let cpu_good = cpu_ms(pid) - cpu0;
    let (rss, peak) = server.rss_mib();
    Ok(json!({
        "robots": n,
        "poll_interval_seconds": POLL_SECONDS,
        "bad": {
            "canaries": canaries,
            "robots_that_got_it": fleet.got("2"),
            "robots_reverted_on_their_own": fleet.rolled_back.len(),
            "healthy_deadline_seconds": HEALTHY_DEADLINE_SECONDS,
            "goal_seconds": HEALTHY_DEADLINE_SECONDS + POLL_SECONDS,
            "rollout_failed_seconds": bad_failed,
            "all_back_on_good_seconds": bad_back,
            "server_cpu_ms": cpu_bad,
            "status": bad_status,
        },
        "good": {
            "max_parallel": parallel,
            "min_healthy_seconds": 2,
            "all_updated_seconds": good_all,
            "rollout_succeeded_seconds": good_done,
            "server_cpu_ms": cpu_good,
        },
        "server_rss_mib": rss,
        "server_peak_rss_mib": peak,
    }))
}
