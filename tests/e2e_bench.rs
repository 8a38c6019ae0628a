//! End-to-end benchmark (`make bench`; an ignored test): from a Job posted
//! to the API until its task's process runs on the robot, p50/p99 over 50
//! Jobs, with the real server (SQLite) and a real connected agent; plus the
//! agent's RSS idle and while it long-polls. Writes target/bench/e2e.json.
//!
//! `cargo test --release --test e2e_bench -- --ignored --nocapture`

mod common;
mod server_util;

use common::{wait_for, ConnectedAgent};
use serde_json::json;
use server_util::Server;
use std::time::{Duration, Instant};

const JOBS: usize = 50;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| {
                    l.strip_prefix("VmRSS:")
                        .map(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
                })
                .flatten()
        })
        .unwrap_or(0)
}

/// Is a process with exactly this command line running?
fn running(cmd: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").trim() == cmd)
    })
}

#[test]
#[ignore = "benchmark: run with --ignored (make bench)"]
fn apply_to_running_latency() {
    let server = Server::start();
    let token = server.join_token();
    let dir = tempfile::tempdir().unwrap();
    let agent = ConnectedAgent::start(
        &server.base,
        &token,
        "bench-robot",
        "bench=true",
        &dir.path().join("agent"),
        &[],
    );
    wait_for("robot online", Duration::from_secs(30), || {
        (server.object("robots", "bench-robot")?["status"]["phase"] == "Online").then_some(())
    });
    let pid = agent.pid().expect("agent pid");
    let idle_rss = rss_kib(pid);
    let mut lat = Vec::new();
    let mut polling_rss = 0;
    for i in 0..JOBS {
        let cmd = format!("sleep {}", 10_000 + i);
        let job = json!({
            "apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job",
            "metadata": {"name": format!("b{i}"), "namespace": "default"},
            "spec": {"type": "service", "robotSelector": {"bench": "true"}, "taskGroups": [{
                "name": "g", "count": 1,
                "tasks": [{"name": "t", "driver": "exec", "config": {"execConfig": {
                    "command": "/bin/sh", "args": ["-c", format!("exec {cmd}")]}}}]
            }]}
        });
        let t0 = Instant::now();
        let r = server.send_json("POST", "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs", &job);
        assert_eq!(r.status, 201, "{}", r.body);
        wait_for("the task's process", Duration::from_secs(30), || {
            running(&cmd).then_some(())
        });
        lat.push(t0.elapsed());
        polling_rss = polling_rss.max(rss_kib(pid));
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    let (p50, p99) = (pct(0.50), pct(0.99));
    println!("e2e benchmark (POST Job -> task process running on the robot, {JOBS} jobs)");
    println!(
        "  p50 {:.1} ms, p99 {:.1} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    println!("  agent RSS idle {idle_rss} KiB, with {JOBS} tasks while long-polling {polling_rss} KiB");
    let out = json!({
        "jobs": JOBS,
        "apply_to_running_ms": {"p50": p50.as_secs_f64() * 1e3, "p99": p99.as_secs_f64() * 1e3},
        "agent_rss_kib": {"idle": idle_rss, "polling_with_tasks": polling_rss},
    });
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/e2e.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_vec_pretty(&out).unwrap()).unwrap();
}
