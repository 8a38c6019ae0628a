//! End-to-end benchmark (`make bench`; an ignored test): from `kubectl
//! apply` of a Job until its task's process runs on the robot, p50/p99 over
//! 50 Jobs, with the real server (SQLite) and a real connected agent; plus
//! the agent's RSS idle (connected, no tasks, its long poll open) and with
//! the 50 tasks while it long-polls. Writes target/bench/e2e.json. Without
//! kubectl the Job is POSTed over HTTP instead, and `client` says so.
//!
//! `cargo test --release --test e2e_bench -- --ignored --nocapture`

mod common;
mod server_util;

use common::{wait_for, ConnectedAgent};
use serde_json::json;
use server_util::Server;
use std::io::Write;
use std::process::Stdio;
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
        &server.agent_base,
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
    // Online means the first poll was answered; the agent now sits in its
    // long poll with nothing to run.
    let idle_rss = rss_kib(pid);
    let kubectl = server_util::have_kubectl();
    let client = if kubectl {
        // kubectl caches discovery like an operator's does after first use.
        server.kubectl_ok(&["get", "jobs"]);
        "kubectl apply -f -"
    } else {
        "HTTP POST (kubectl not installed)"
    };
    let mut lat = Vec::new();
    let mut client_lat = Vec::new();
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
        if kubectl {
            let mut child = server
                .kubectl_cmd()
                .args(["apply", "-f", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run kubectl");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(job.to_string().as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "kubectl apply: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            let r = server.send_json("POST", "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs", &job);
            assert_eq!(r.status, 201, "{}", r.body);
        }
        client_lat.push(t0.elapsed());
        wait_for("the task's process", Duration::from_secs(30), || {
            running(&cmd).then_some(())
        });
        lat.push(t0.elapsed());
        polling_rss = polling_rss.max(rss_kib(pid));
    }
    // Every status delivered: the agent is back in its long poll, 50 tasks.
    wait_for("all tasks reported running", Duration::from_secs(60), || {
        let list = server.list("tasks", "");
        let items = list["items"].as_array()?;
        (items.len() == JOBS && items.iter().all(|t| t["status"]["state"] == "running")).then_some(())
    });
    polling_rss = polling_rss.max(rss_kib(pid));
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
    };
    let (p50, p99) = (pct(&mut lat, 0.50), pct(&mut lat, 0.99));
    let (c50, c99) = (pct(&mut client_lat, 0.50), pct(&mut client_lat, 0.99));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("e2e benchmark ({client} of a Job -> task process running on the robot, {JOBS} jobs)");
    println!("  p50 {:.1} ms, p99 {:.1} ms", ms(p50), ms(p99));
    println!(
        "  of which the client itself returned after p50 {:.1} ms, p99 {:.1} ms",
        ms(c50),
        ms(c99)
    );
    println!("  agent RSS idle {idle_rss} KiB, with {JOBS} tasks while long-polling {polling_rss} KiB");
    let out = json!({
        "jobs": JOBS,
        "client": client,
        "apply_to_running_ms": {"p50": ms(p50), "p99": ms(p99)},
        "client_returned_ms": {"p50": ms(c50), "p99": ms(c99)},
        "agent_rss_kib": {"idle": idle_rss, "polling_with_tasks": polling_rss},
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        // The cargo-built (glibc) agent, not the static musl one robots run.
        "agent_binary": common::agent_bin().display().to_string(),
    });
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/e2e.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_vec_pretty(&out).unwrap()).unwrap();
}
