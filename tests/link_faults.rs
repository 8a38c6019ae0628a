//! A real connected agent and the real server over a bad link: the lossy
//! relay (tests/link_util) between them drops connections, stalls or cuts
//! answers, adds latency and jitter, caps the bandwidth, or cuts the link
//! for a while. The agent must converge, deliver every status exactly once,
//! stay Online while merely slow, and come back after a cut.
//!
//! `K8S4R_LINK_CUT_SECS` sets the cut's length (default 15 s; `make
//! reliability` holds it 600 s).
//!
//! The relay terminates TCP on both sides, so it would answer a held
//! poll's keepalive probes itself: these servers run with `--poll-hold 0`
//! (a poll every interval, the mode for paths through TCP-terminating
//! proxies). Held polls over a real link, cut for real: tests/link_hold.rs.

mod common;
mod link_util;
mod server_util;

use common::{throughout, wait_for, ConnectedAgent};
use link_util::{Faults, Relay};
use serde_json::{json, Value};
use server_util::Server;
use std::time::Duration;

fn job(name: &str, kind: &str, count: usize, script: &str) -> Value {
    json!({
        "apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": kind, "robotSelector": {"link": "true"}, "taskGroups": [{
            "name": "g", "count": count,
            "tasks": [{"name": "t", "driver": "exec", "config": {"execConfig": {
                "command": "/bin/sh", "args": ["-c", script]}}}]
        }]}
    })
}

fn post(server: &Server, job: &Value) {
    let r = server.send_json("POST", "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs", job);
    assert_eq!(r.status, 201, "{}", r.body);
}

fn tasks_in(server: &Server, state: &str) -> usize {
    server.list("tasks", "")["items"].as_array().map_or(0, |items| {
        items.iter().filter(|t| t["status"]["state"] == state).count()
    })
}

fn phase(server: &Server) -> String {
    server
        .object("robots", "lossy")
        .and_then(|r| r["status"]["phase"].as_str().map(String::from))
        .unwrap_or_default()
}

/// A server (`args`), a relay in front of its agent listener, and an agent
/// through the relay, Online before the link turns bad. The data dir comes
/// first: bindings drop in reverse, so the agent's drop (which stops the
/// tasks it leaves, found from its state files) runs while the dir exists.
fn setup(args: &[&str]) -> (tempfile::TempDir, Server, Relay, ConnectedAgent) {
    let args: Vec<&str> = args.iter().copied().chain(["--poll-hold", "0s"]).collect();
    let server = Server::start_with(&args);
    let relay = Relay::start(&server.agent_base);
    let dir = tempfile::tempdir().unwrap();
    let agent = ConnectedAgent::start(
        &relay.base,
        &server.join_token(),
        "lossy",
        "link=true",
        &dir.path().join("agent"),
        &[],
    );
    wait_for("robot online", Duration::from_secs(30), || {
        (phase(&server) == "Online").then_some(())
    });
    (dir, server, relay, agent)
}

#[test]
fn twenty_tasks_converge_over_a_lossy_slow_narrow_link() {
    let (_dir, server, relay, agent) = setup(&["--poll-interval", "5s"]);
    relay.set(Faults {
        drop: 0.2,
        reset: 0.2,
        latency: Duration::from_secs(1),
        jitter: Duration::from_millis(300),
        bits_per_sec: 64_000,
        // The dice alone may spare the few exchanges convergence needs.
        reset_next: 2,
        ..Faults::default()
    });
    post(&server, &job("twenty", "service", 20, "exec sleep 100000"));
    wait_for("20 tasks running on the server", Duration::from_secs(300), || {
        (tasks_in(&server, "running") == 20).then_some(())
    });
    let (dropped, _, reset) = relay.faults_fired();
    assert!(dropped + reset > 0, "the link never failed: nothing was tested");
    // Converged for good: the agent does not keep restarting anything.
    let log = agent.log_text();
    assert!(!log.contains("refused answer"), "{log}");
}

#[test]
fn statuses_arrive_exactly_once_across_50_stalls_and_resets() {
    let (_dir, server, relay, agent) = setup(&["--poll-interval", "2s"]);
    relay.set(Faults {
        stall: 0.3,
        stall_for: Duration::from_millis(1500),
        reset: 0.3,
        ..Faults::default()
    });
    // Batch tasks that finish at different times: their statuses keep
    // flowing while answers are being lost.
    for i in 0..6 {
        post(
            &server,
            &job(&format!("once{i}"), "batch", 5, &format!("sleep {}.{i}; true", i % 3)),
        );
    }
    wait_for("50 stalls and resets", Duration::from_secs(300), || {
        let (_, stalled, reset) = relay.faults_fired();
        (stalled + reset >= 50).then_some(())
    });
    relay.set(Faults::default());
    wait_for("all 30 tasks completed on the server", Duration::from_secs(120), || {
        (tasks_in(&server, "completed") == 30).then_some(())
    });
    // Every status acknowledged: nothing left in the agent's outbox.
    wait_for("an empty outbox", Duration::from_secs(60), || {
        let pending = k8s4r::agent::connected::outbox::pending_on_disk(&agent.data).ok()?;
        pending.is_empty().then_some(())
    });
    // Applied once each: one event per transition, none repeated (an old
    // status applied again would start the task over: a second Started).
    for t in server.list("tasks", "")["items"].as_array().unwrap() {
        let name = t["metadata"]["name"].as_str().unwrap();
        let events = server.events_of("Task", name);
        for reason in ["Started", "Completed"] {
            let n: u64 = events.iter().filter(|(r, _, _)| r == reason).map(|(_, _, c)| c).sum();
            assert!(n <= 1, "task {name}: {n} {reason} events: {events:?}");
        }
        let completed: u64 = events
            .iter()
            .filter(|(r, _, _)| r == "Completed")
            .map(|(_, _, c)| c)
            .sum();
        assert_eq!(completed, 1, "task {name}: {events:?}");
    }
}

#[test]
fn a_second_of_latency_each_way_never_marks_the_robot_offline() {
    // Offline after 3 × 3 s: polls that take 2-3 s more still arrive in time.
    let (_dir, server, relay, _agent) = setup(&["--poll-interval", "3s"]);
    relay.set(Faults {
        latency: Duration::from_secs(1),
        jitter: Duration::from_millis(500),
        ..Faults::default()
    });
    let polls_before = relay.exchanges().iter().filter(|e| e.kind == "assignments").count();
    throughout("the robot Online", Duration::from_secs(30), || {
        match phase(&server).as_str() {
            "Online" => Ok(()),
            other => Err(format!("phase {other}")),
        }
    });
    let polls = relay.exchanges().iter().filter(|e| e.kind == "assignments").count() - polls_before;
    assert!(polls >= 5, "only {polls} polls in 30 s: the link was not exercised");
}

#[test]
fn a_cut_link_recovers_and_converges() {
    let cut = Duration::from_secs(
        std::env::var("K8S4R_LINK_CUT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(15),
    );
    let (_dir, server, relay, agent) = setup(&["--poll-interval", "2s"]);
    post(&server, &job("before", "service", 1, "exec sleep 100000"));
    wait_for("the first task running", Duration::from_secs(30), || {
        (tasks_in(&server, "running") == 1).then_some(())
    });
    relay.cut_for(cut);
    // Offline after 3 × 2 s without a poll; the task keeps running.
    wait_for("robot offline during the cut", cut, || {
        (phase(&server) == "Offline").then_some(())
    });
    post(&server, &job("during", "service", 1, "exec sleep 100001"));
    // Back within the agent's longest retry pause (60 s) after the cut.
    wait_for("robot online after the cut", cut + Duration::from_secs(90), || {
        (phase(&server) == "Online").then_some(())
    });
    wait_for("both tasks running", Duration::from_secs(60), || {
        (tasks_in(&server, "running") == 2).then_some(())
    });
    assert!(
        agent.log_text().contains("server reachable again"),
        "{}",
        agent.log_text()
    );
}
