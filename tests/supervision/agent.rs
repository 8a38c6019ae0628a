//! k8s4r-agent in connected mode against the in-test fake control plane
//! (fake_control_plane.rs): the real binary robots run, driven the way a
//! robot is driven. A request is one long-poll answer carrying the
//! complete desired set (the agent's protocol is level-triggered): the
//! sleepers, plus, per start/stop cycle, a new batch Task for the short
//! command that replaces the previous cycle's (which has exited) — start
//! and stop in one message. Each cycle's Task has its own name because a
//! completed Task is done for good; they share one task directory.
//!
//! Restarts: the sleepers' restartPolicy sets `delay: 0s`, so a killed one
//! is restarted at once (the default is 1 s, doubling per restart).
//! Output is captured to per-task log files (always, by design).

use super::fake_control_plane::FakeControlPlane;
use super::{Group, Supervision, Workload};
use k8s4r::api::{Task, TaskSpec};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Agent {
    cp: FakeControlPlane,
    process: Option<Group>,
    bin: PathBuf,
    data: PathBuf,
    revision: u64,
    workload: Workload,
    sleepers_wanted: bool,
}

/// K8S4R_BENCH_AGENT if set (another build to compare), else the static
/// musl build when present (what robots run), else the binary cargo built
/// for the tests.
pub fn agent_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("K8S4R_BENCH_AGENT") {
        return PathBuf::from(bin);
    }
    let musl = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/x86_64-unknown-linux-musl/release/k8s4r-agent");
    if musl.exists() {
        musl
    } else {
        PathBuf::from(env!("CARGO_BIN_EXE_k8s4r-agent"))
    }
}

fn task(name: &str, spec: serde_json::Value) -> Task {
    let spec: TaskSpec = serde_json::from_value(spec).expect("a valid TaskSpec");
    Task::new("Task", name, "default", spec)
}

fn exec(script: &str) -> serde_json::Value {
    json!({"execConfig": {"command": "/bin/sh", "args": ["-c", script]}})
}

impl Agent {
    pub fn start(dir: &Path, w: &Workload) -> Agent {
        let cp = FakeControlPlane::start();
        let bin = agent_binary();
        let data = dir.join("agent-data");
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let process = Group::spawn(
            Command::new(&bin)
                .args([
                    "--server",
                    &cp.url,
                    "--join-token",
                    &cp.join_token(),
                    "--name",
                    "bench-robot",
                    "--no-cgroups",
                ])
                .arg("--data-dir")
                .arg(&data)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        );
        let agent = Agent {
            cp,
            process: Some(process),
            bin,
            data,
            revision: 1,
            workload: w.clone(),
            sleepers_wanted: false,
        };
        super::wait_until("the agent long-polling", Duration::from_secs(30), || {
            agent.cp.agent_waits_on(1)
        });
        agent
    }

    /// The state the agent last reported for cycle `cycle`'s short command.
    pub fn short_state(&self, cycle: usize) -> Option<k8s4r::api::TaskState> {
        Some(self.cp.status_of(&format!("cycle-g-r0-c{cycle}"))?.state)
    }

    /// When each status report reached the control plane.
    pub fn report_times(&self) -> Vec<Instant> {
        self.cp.report_times()
    }

    pub fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, Group::pid)
    }

    fn sleepers(&self) -> Vec<Task> {
        (0..self.workload.sleepers)
            .map(|k| {
                task(
                    &format!("sleep-g-r{k}-s"),
                    json!({
                        "name": "s", "driver": "exec", "config": exec(&self.workload.sleeper_script(k)),
                        "jobName": "sleep", "taskGroupName": "sleep-g", "jobType": "service", "replicaIndex": k,
                        "restartPolicy": {"attempts": 3, "interval": "30m", "delay": "0s"},
                    }),
                )
            })
            .collect()
    }

    fn short(&self, cycle: usize) -> Task {
        task(
            &format!("cycle-g-r0-c{cycle}"),
            json!({
                "name": "c", "driver": "exec", "config": exec(&self.workload.short_script()),
                "jobName": "cycle", "taskGroupName": "cycle-g", "jobType": "batch", "replicaIndex": 0,
            }),
        )
    }

    /// Publish `tasks` as the next revision; returns when it went out.
    fn request(&mut self, tasks: Vec<Task>) -> Instant {
        self.revision += 1;
        let prepared = self.cp.prepare(self.revision, tasks);
        let t0 = Instant::now();
        self.cp.publish(prepared);
        t0
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // The agent leaves its tasks running when it exits (by design);
        // then its own stop-all ends them.
        drop(self.process.take());
        let _ = k8s4r::agent::stop_all(&self.data);
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.data.with_file_name("agent.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- agent log (last 30 lines, newest first) ---\n{}", tail.join("\n"));
        }
    }
}

impl Supervision for Agent {
    fn name(&self) -> &'static str {
        "k8s4r-agent"
    }

    fn describe(&self) -> serde_json::Value {
        let version = Command::new(&self.bin)
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        json!({
            "version": version,
            "binary": self.bin.display().to_string(),
            "tree": "one k8s4r-agent process (3 threads)",
            "driver": "connected mode, long poll to an in-test fake control plane; one answer = the changes to the desired set (delta assignments)",
            "restart": "restartPolicy delay 0s: immediate (default: 1 s, doubling)",
            "output": "captured to per-task log files (always)",
        })
    }

    fn tree(&self) -> Vec<u32> {
        vec![self.pid()]
    }

    fn start_sleepers(&mut self) -> Instant {
        self.sleepers_wanted = true;
        let tasks = self.sleepers();
        self.request(tasks)
    }

    fn start_short(&mut self, cycle: usize) -> Instant {
        let mut tasks = if self.sleepers_wanted {
            self.sleepers()
        } else {
            Vec::new()
        };
        tasks.push(self.short(cycle));
        self.request(tasks)
    }
}
