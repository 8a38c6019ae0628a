//! Link benchmark (`make bench`; an ignored test): the bytes a connected
//! robot moves, counted by a recording relay between the real agent and
//! the real server (SQLite): idle with no tasks, idle with 10 running
//! tasks, one task added to a robot that has 100, the status report of a
//! change, a log request. Writes target/bench/link.json.
//!
//! The server runs with `--poll-interval 2s` so the bench sees many polls
//! in seconds; a poll's bytes do not depend on its wait (a digit or two),
//! and the month is scaled to the defaults (the server's poll interval,
//! the agent's device-report period). TCP/IP headers are estimated per
//! segment (`link_util::tcp_overhead`): no packet capture here.
//!
//! `cargo test --release --test link_bench -- --ignored --nocapture`

mod common;
mod link_util;
mod server_util;

use common::{wait_for, ConnectedAgent};
use link_util::{tcp_overhead, Exchange, Relay};
use serde_json::{json, Value};
use server_util::Server;
use std::time::Duration;

const MONTH_SECS: f64 = 30.0 * 86_400.0;

fn job(name: &str, count: usize) -> Value {
    json!({
        "apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "service", "robotSelector": {"link": "true"}, "taskGroups": [{
            "name": "g", "count": count,
            "tasks": [{"name": "t", "driver": "exec", "config": {"execConfig": {
                "command": "/bin/sh", "args": ["-c", "echo hello from the link bench; exec sleep 100000"]}}}]
        }]}
    })
}

fn running_tasks(server: &Server) -> usize {
    let list = server.list("tasks", "");
    list["items"].as_array().map_or(0, |items| {
        items.iter().filter(|t| t["status"]["state"] == "running").count()
    })
}

fn of_kind<'a>(ex: &'a [Exchange], kind: &'a str) -> impl Iterator<Item = (usize, &'a Exchange)> {
    ex.iter().enumerate().filter(move |(_, e)| e.kind == kind)
}

/// Average bytes (up, down) and new connections of the next `n` polls,
/// each complete (a later poll has started).
fn idle_polls(relay: &Relay, n: usize) -> Value {
    let start = relay.exchanges().len();
    let polls = wait_for("idle polls", Duration::from_secs(60), || {
        let ex = relay.exchanges();
        let polls: Vec<Exchange> = of_kind(&ex[start..], "assignments").map(|(_, e)| e.clone()).collect();
        (polls.len() > n).then(|| polls[..n].to_vec())
    });
    let up = polls.iter().map(|e| e.up).sum::<u64>() as f64 / n as f64;
    let down = polls.iter().map(|e| e.down).sum::<u64>() as f64 / n as f64;
    let mut conns: Vec<u64> = polls.iter().map(|e| e.connection).collect();
    conns.dedup();
    // A poll that reuses the previous poll's connection opens none.
    let first_new = ex_conn_before(relay, start, polls[0].connection);
    let new_conns = (conns.len() - usize::from(!first_new)) as f64 / n as f64;
    json!({"up": up, "down": down, "new_connections_per_poll": new_conns})
}

/// Was `conn` opened at or after exchange `start` (not reused from before)?
fn ex_conn_before(relay: &Relay, start: usize, conn: u64) -> bool {
    !relay.exchanges()[..start].iter().any(|e| e.connection == conn)
}

/// Bytes a month of idling costs: polls at the default interval, a device
/// report every period, each with its TCP/IP headers.
fn idle_month(poll: &Value, device: &Value, poll_secs: f64, device_secs: f64) -> Value {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let per_poll = f(poll, "up") + f(poll, "down");
    let poll_tcp = tcp_overhead(f(poll, "up") as u64, f(poll, "down") as u64, 0) as f64
        + f(poll, "new_connections_per_poll") * (link_util::CONNECTION_SEGMENTS * link_util::SEGMENT_OVERHEAD) as f64;
    let per_device = f(device, "up") + f(device, "down");
    let device_tcp = tcp_overhead(f(device, "up") as u64, f(device, "down") as u64, 1) as f64;
    let (polls, reports) = (MONTH_SECS / poll_secs, MONTH_SECS / device_secs);
    let app = per_poll * polls + per_device * reports;
    let tcp = poll_tcp * polls + device_tcp * reports;
    json!({
        "poll_bytes": per_poll, "poll": poll, "device_report_bytes": per_device,
        "app_bytes_month": app, "tcp_ip_bytes_month": tcp, "total_bytes_month": app + tcp,
    })
}

fn bytes(e: &Exchange) -> Value {
    json!({"up": e.up, "down": e.down, "total": e.up + e.down, "tcp_ip_estimate": tcp_overhead(e.up, e.down, 0)})
}

#[test]
#[ignore = "benchmark: run with --ignored (make bench)"]
fn bytes_per_robot_per_month() {
    let server = Server::start_with(&["--poll-interval", "2s"]);
    let relay = Relay::start(&server.agent_base);
    let dir = tempfile::tempdir().unwrap();
    let token = server.join_token();
    let _agent = ConnectedAgent::start(
        &relay.base,
        &token,
        "link-robot",
        "link=true",
        &dir.path().join("a"),
        &[],
    );
    wait_for("robot online", Duration::from_secs(30), || {
        (server.object("robots", "link-robot")?["status"]["phase"] == "Online").then_some(())
    });
    // The first report carries the device's facts (then every period).
    let device = wait_for("the device report", Duration::from_secs(30), || {
        let ex = relay.exchanges();
        let (i, e) = of_kind(&ex, "status").next()?;
        (ex.len() > i + 1 || e.down > 0).then(|| json!({"up": e.up, "down": e.down}))
    });
    let poll_secs = k8s4r::server::fleet::FleetConfig::default().poll_interval.as_secs_f64();
    let device_secs = k8s4r::agent::connected::DEVICE_INFO_EVERY.as_secs_f64();

    let poll0 = idle_polls(&relay, 5);
    let idle0 = idle_month(&poll0, &device, poll_secs, device_secs);
    // What the server's --poll-interval trades: bytes against the time to
    // notice a robot gone (offline after 3 intervals by default).
    let by_interval: Vec<Value> = [30.0, 120.0, 300.0, 900.0]
        .iter()
        .map(|&p| {
            let m = idle_month(&poll0, &device, p, device_secs);
            let no_device = idle_month(&poll0, &json!({}), p, f64::INFINITY);
            json!({"poll_interval_secs": p, "offline_after_secs": 3.0 * p,
                "total_bytes_month": m["total_bytes_month"],
                "polls_only_bytes_month": no_device["total_bytes_month"]})
        })
        .collect();

    let post = |name: &str, count: usize| {
        let r = server.send_json(
            "POST",
            "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs",
            &job(name, count),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    };
    post("ten", 10);
    wait_for("10 tasks running", Duration::from_secs(60), || {
        (running_tasks(&server) == 10).then_some(())
    });
    let idle10 = idle_month(&idle_polls(&relay, 5), &device, poll_secs, device_secs);

    post("ninety", 90);
    wait_for("100 tasks running", Duration::from_secs(120), || {
        (running_tasks(&server) == 100).then_some(())
    });
    idle_polls(&relay, 2); // settled: the reports are in
    let mark = relay.exchanges().len();
    post("one-more", 1);
    wait_for("the 101st task running", Duration::from_secs(60), || {
        (running_tasks(&server) == 101).then_some(())
    });
    // The poll that carried the change: the first to end with the new set,
    // i.e. the first poll answered after the mark (held then, or started
    // after it) whose answer is larger than an idle one's.
    let (added, status) = wait_for("the change's exchanges complete", Duration::from_secs(30), || {
        let ex = relay.exchanges();
        let start = ex[..mark].iter().rposition(|e| e.kind == "assignments").unwrap_or(mark);
        let polls: Vec<&Exchange> = of_kind(&ex[start..], "assignments").map(|(_, e)| e).collect();
        let carried = polls.iter().copied().max_by_key(|e| e.down)?;
        let statuses: Vec<&Exchange> = of_kind(&ex[mark..], "status").map(|(_, e)| e).collect();
        // Complete once the agent polls again after the last report.
        let last_status = ex.iter().rposition(|e| e.kind == "status")?;
        let again = ex[last_status..].iter().any(|e| e.kind == "assignments");
        (again && !statuses.is_empty()).then(|| {
            let up: u64 = statuses.iter().map(|e| e.up).sum();
            let down: u64 = statuses.iter().map(|e| e.down).sum();
            (
                bytes(carried),
                json!({"reports": statuses.len(), "up": up, "down": down, "total": up + down,
                "tcp_ip_estimate": tcp_overhead(up, down, 0)}),
            )
        })
    });

    // A log request: the held poll carries it, the agent uploads the log.
    let mark = relay.exchanges().len();
    let held = relay.exchanges()[..mark].iter().rposition(|e| e.kind == "assignments");
    let task = server.list("tasks", "")["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let r = server.get(&format!(
        "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/tasks/{task}/log?stream=stdout"
    ));
    assert_eq!(r.status, 200, "{}", r.body);
    let log = {
        let ex = relay.exchanges();
        let carried: u64 = held.map_or(0, |i| ex[i].up + ex[i].down);
        let uploads: Vec<&Exchange> = of_kind(&ex[mark..], "logs").map(|(_, e)| e).collect();
        let upload: u64 = uploads.iter().map(|e| e.up + e.down).sum();
        json!({"poll_carrying_it": carried, "upload": upload, "total": carried + upload})
    };

    let out = json!({
        "measured_with": {"poll_interval_secs": 2, "relay": "userspace TCP relay on loopback"},
        "month_at": {"poll_interval_secs": poll_secs, "device_report_secs": device_secs},
        "tcp_ip": "estimated: 52 B a segment, one per 1448 B of data each way plus an ACK each way, 7 per new connection",
        "idle_no_tasks": idle0,
        "idle_no_tasks_by_poll_interval": by_interval,
        "idle_10_tasks": idle10,
        "one_task_added_to_100": added,
        "status_change": status,
        "log_request": log,
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/link.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_vec_pretty(&out).unwrap()).unwrap();
}
