//! Link benchmark (`make bench`; an ignored test): the bytes a connected
//! robot moves, counted by a recording relay between the real agent and
//! the real server (SQLite): idle with no tasks, idle with 10 running
//! tasks, one task added to a robot that has 100, the status report of a
//! change, a log request. Writes target/bench/link.json.
//!
//! The server runs with `--poll-interval 2s --poll-hold 0` so the bench
//! sees many polls in seconds; a poll's bytes do not depend on its wait (a
//! digit or two), and the month is scaled to the defaults (the server's
//! poll interval, the agent's refresh of unchanged device facts). The
//! default, held polls, is measured first on its own: a real agent and
//! server across the pair with nothing between, the probes counted on
//! the pair, the month computed from them, the poll and the device report.
//!
//! On the wire: the agent runs in a network namespace joined by a veth
//! pair to the relay (`common::netns`), and each row is also counted on the
//! pair's interface counters over a window of whole exchanges, TCP/IP
//! headers, ACKs, handshakes and teardowns included (reported IP-level, as
//! a cellular link bills, and as Ethernet frames). Where namespaces are
//! not possible (not root) the bench says SKIP for the wire and estimates
//! TCP/IP headers per segment (`link_util::tcp_overhead`) as before.
//!
//! `cargo test --release --test link_bench -- --ignored --nocapture`

mod common;
mod link_util;
mod server_util;

use common::netns::{Netns, Wire};
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

/// The link's interface counters, when the agent sits behind a veth pair.
fn wire(net: Option<&Netns>) -> Wire {
    net.map(Netns::wire).unwrap_or_default()
}

fn polls_seen(relay: &Relay) -> usize {
    relay.exchanges().iter().filter(|e| e.kind == "assignments").count()
}

/// Wait until a poll later than the `seen`th has gone out (the one before
/// answered) and read the counters then: windows between two such points
/// hold whole poll cycles. Returns (polls seen, counters).
fn at_next_poll(relay: &Relay, net: Option<&Netns>, seen: usize) -> (usize, Wire) {
    wait_for("the next poll", Duration::from_secs(60), || {
        let n = polls_seen(relay);
        (n > seen).then(|| (n, wire(net)))
    })
}

/// Average bytes (up, down) and new connections of the next `n` polls,
/// each complete (a later poll has started), and what they cost on the
/// wire (`ip_bytes`, `frame_bytes`, `packets` a poll).
fn idle_polls(relay: &Relay, net: Option<&Netns>, n: usize) -> Value {
    let (first, w0) = at_next_poll(relay, net, polls_seen(relay));
    let (_, w1) = at_next_poll(relay, net, first + n - 1);
    let ex = relay.exchanges();
    // The window runs from the request of poll number `first` to that of
    // poll `first + n`: n polls whole.
    let start = of_kind(&ex, "assignments").nth(first - 1).map_or(0, |(i, _)| i);
    let polls: Vec<Exchange> = of_kind(&ex[start..], "assignments")
        .take(n)
        .map(|(_, e)| e.clone())
        .collect();
    let up = polls.iter().map(|e| e.up).sum::<u64>() as f64 / n as f64;
    let down = polls.iter().map(|e| e.down).sum::<u64>() as f64 / n as f64;
    let mut conns: Vec<u64> = polls.iter().map(|e| e.connection).collect();
    conns.dedup();
    // A poll that reuses the previous poll's connection opens none.
    let first_new = ex_conn_before(relay, start, polls[0].connection);
    let new_conns = (conns.len() - usize::from(!first_new)) as f64 / n as f64;
    let mut v = json!({"up": up, "down": down, "new_connections_per_poll": new_conns});
    if net.is_some() {
        let w = w1 - w0;
        v["wire"] = json!({"ip_bytes": w.ip_bytes() as f64 / n as f64,
            "frame_bytes": w.bytes as f64 / n as f64, "packets": w.packets as f64 / n as f64});
    }
    v
}

/// Was `conn` opened at or after exchange `start` (not reused from before)?
fn ex_conn_before(relay: &Relay, start: usize, conn: u64) -> bool {
    !relay.exchanges()[..start].iter().any(|e| e.connection == conn)
}

/// Bytes a month of idling costs: polls at the default interval, a device
/// report every period, each with its TCP/IP headers (counted on the wire
/// when `poll` has a `wire` figure; `report_tcp_ip` is a report's, from
/// the status-change window, or estimated).
fn idle_month(poll: &Value, device: &Value, report_tcp_ip: f64, poll_secs: f64, device_secs: f64) -> Value {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let per_poll = f(poll, "up") + f(poll, "down");
    let poll_tcp = match poll["wire"]["ip_bytes"].as_f64() {
        Some(ip) => ip - per_poll,
        None => {
            tcp_overhead(f(poll, "up") as u64, f(poll, "down") as u64, 0) as f64
                + f(poll, "new_connections_per_poll")
                    * (link_util::CONNECTION_SEGMENTS * link_util::SEGMENT_OVERHEAD) as f64
        }
    };
    let per_device = f(device, "up") + f(device, "down");
    let device_tcp = if per_device > 0.0 { report_tcp_ip } else { 0.0 };
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

/// Polls a window of a change runs on after it, so the reporter's
/// connection (closed by the agent after 45 s unused) ends inside it.
const SETTLE_POLLS: usize = 25;

/// What `change` costs on the wire: the counters from a poll before it to
/// [`SETTLE_POLLS`] polls after `done` holds, less the idle polls in that
/// window at `idle`'s measured cost (the poll that carried the change
/// stays in). Null without the veth pair.
fn change_on_wire(relay: &Relay, net: Option<&Netns>, idle: &Value, change: impl FnOnce() -> Value) -> (Value, Value) {
    let (seen, w0) = at_next_poll(relay, net, polls_seen(relay));
    let out = change();
    let now = polls_seen(relay);
    let (end, w1) = at_next_poll(relay, net, now + SETTLE_POLLS - 1);
    let Some(per_poll) = idle["wire"]["ip_bytes"].as_f64() else {
        return (out, Value::Null);
    };
    let w = w1 - w0;
    let idle_polls = (end - seen - 1) as f64;
    let ip = w.ip_bytes() as f64 - idle_polls * per_poll;
    (
        out,
        json!({"ip_bytes": ip, "window_ip_bytes": w.ip_bytes(), "window_polls": end - seen,
        "idle_poll_ip_bytes": per_poll}),
    )
}

/// What a held poll's liveness costs on the wire (IP level): a real agent
/// polling a real server directly across the pair (no relay: it would
/// answer the probes itself), `--offline-after 9s` so the server probes
/// every 6 s; after the start's exchanges, the pair's counters over ten
/// probes. Returns (bytes per probe and its answer, packets per probe).
fn held_poll_probe(net: &Netns) -> (f64, f64) {
    const PROBES: u64 = 10;
    let listen = format!("{}:0", net.host_ip);
    let server = Server::start_with(&[
        "--agent-listen",
        &listen,
        "--poll-interval",
        "1s",
        "--offline-after",
        "9s",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let _agent = ConnectedAgent::start_in_netns(
        &net.name,
        &server.agent_base,
        &server.join_token(),
        "held",
        "",
        &dir.path().join("a"),
    );
    wait_for("the held robot online", Duration::from_secs(30), || {
        (server.object("robots", "held")?["status"]["phase"] == "Online").then_some(())
    });
    // Quiet: registration, the first polls and the first device report
    // done, and the reporter's connection closed (45 s unused).
    wait_for("the link to carry probes only", Duration::from_secs(120), || {
        let w0 = net.wire();
        std::thread::sleep(Duration::from_secs(7)); // the window measured, not a synchronisation
        let w = net.wire() - w0;
        (w.packets <= 2 && w.ip_bytes() < 200).then_some(())
    });
    let w0 = net.wire();
    let w = wait_for("ten probes", Duration::from_secs(120), || {
        let w = net.wire() - w0;
        (w.packets >= 2 * PROBES).then_some(w)
    });
    (w.ip_bytes() as f64 / PROBES as f64, w.packets as f64 / PROBES as f64)
}

/// An idle month with held polls (the default): the server holds an idle
/// poll `--poll-hold` (an hour) and knows the robot alive from its
/// connection (TCP keepalive probes every `2/3` of the detection time), for
/// detection times from 90 s up, from the measured probe and poll.
fn held_month(poll: &Value, probe_ip: f64, device_ip: f64, device_secs: f64) -> Value {
    let poll_ip = poll["wire"]["ip_bytes"].as_f64().unwrap_or(0.0);
    let hold = k8s4r::server::fleet::DEFAULT_POLL_HOLD.as_secs_f64();
    [90.0, 180.0, 300.0, 900.0]
        .iter()
        .map(|&detect: &f64| {
            let idle = detect * 2.0 / 3.0;
            let probes = MONTH_SECS / idle * probe_ip;
            let polls = MONTH_SECS / hold * poll_ip;
            let device = MONTH_SECS / device_secs * device_ip;
            json!({"offline_after_secs": detect, "keepalive_idle_secs": idle, "probes_bytes_month": probes,
                "held_polls_bytes_month": polls, "device_bytes_month": device,
                "total_bytes_month": probes + polls + device})
        })
        .collect()
}

#[test]
#[ignore = "benchmark: run with --ignored (make bench)"]
fn bytes_per_robot_per_month() {
    let net = Netns::create("k8s4r-link", 254);
    let net = net.as_ref();
    let probe = net.map(held_poll_probe);
    // The rows below measure polls, every one answered after the interval
    // (`--poll-hold 0`, as through a TCP-terminating proxy, and the
    // previous rounds' default).
    let server = Server::start_with(&["--poll-interval", "2s", "--poll-hold", "0s"]);
    let relay = match net {
        Some(n) => Relay::start_on(&n.host_ip, &server.agent_base),
        None => Relay::start(&server.agent_base),
    };
    let dir = tempfile::tempdir().unwrap();
    let token = server.join_token();
    let data = dir.path().join("a");
    let _agent = match net {
        Some(n) => ConnectedAgent::start_in_netns(&n.name, &relay.base, &token, "link-robot", "link=true", &data),
        None => ConnectedAgent::start(&relay.base, &token, "link-robot", "link=true", &data, &[]),
    };
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
    // An idle robot's facts do not change: they go out with the refresh.
    let device_secs = k8s4r::agent::connected::device_facts::REFRESH_EVERY.as_secs_f64();

    // Idle from here: the reporter's connection of the first report has
    // closed (45 s unused), so its teardown is not counted as polls'.
    at_next_poll(&relay, None, polls_seen(&relay) + SETTLE_POLLS);
    let poll0 = idle_polls(&relay, net, 10);

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
    let poll10 = idle_polls(&relay, net, 10);

    post("ninety", 90);
    wait_for("100 tasks running", Duration::from_secs(120), || {
        (running_tasks(&server) == 100).then_some(())
    });
    idle_polls(&relay, None, 2); // settled: the reports are in
    let poll100 = idle_polls(&relay, net, 10);
    let mark = relay.exchanges().len();
    let (change, change_wire) = change_on_wire(&relay, net, &poll100, || {
        post("one-more", 1);
        wait_for("the 101st task running", Duration::from_secs(60), || {
            (running_tasks(&server) == 101).then_some(())
        });
        // The poll that carried the change: the largest answer from the
        // poll held at the mark on.
        wait_for("the change's exchanges complete", Duration::from_secs(30), || {
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
                json!({"added": bytes(carried), "status": {"reports": statuses.len(), "up": up, "down": down,
                    "total": up + down, "tcp_ip_estimate": tcp_overhead(up, down, 0)}})
            })
        })
    });
    let (mut added, mut status) = (change["added"].clone(), change["status"].clone());
    // On the wire the poll answer and the reports share one window; the
    // TCP/IP part of it is shared out by application bytes.
    let app = |v: &Value| v["total"].as_f64().unwrap_or(0.0);
    let report_tcp_ip = match change_wire["ip_bytes"].as_f64() {
        Some(ip) => {
            let both = app(&added) + app(&status);
            let tcp = ip - both;
            added["wire"] = json!({"ip_bytes": app(&added) + tcp * app(&added) / both});
            status["wire"] = json!({"ip_bytes": app(&status) + tcp * app(&status) / both});
            added["wire_window"] = change_wire.clone();
            tcp * app(&status) / both
        }
        None => status["tcp_ip_estimate"].as_f64().unwrap_or(0.0),
    };

    // A log request: the held poll carries it, the agent uploads the log.
    let task = server.list("tasks", "")["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let (mut log, log_wire) = change_on_wire(&relay, net, &poll100, || {
        let mark = relay.exchanges().len();
        let held = relay.exchanges()[..mark].iter().rposition(|e| e.kind == "assignments");
        let r = server.get(&format!(
            "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/tasks/{task}/log?stream=stdout"
        ));
        assert_eq!(r.status, 200, "{}", r.body);
        let ex = relay.exchanges();
        let carried: u64 = held.map_or(0, |i| ex[i].up + ex[i].down);
        let uploads: Vec<&Exchange> = of_kind(&ex[mark..], "logs").map(|(_, e)| e).collect();
        let upload: u64 = uploads.iter().map(|e| e.up + e.down).sum();
        json!({"poll_carrying_it": carried, "upload": upload, "total": carried + upload})
    });
    if !log_wire.is_null() {
        log["wire"] = log_wire;
    }

    let idle0 = idle_month(&poll0, &device, report_tcp_ip, poll_secs, device_secs);
    let idle10 = idle_month(&poll10, &device, report_tcp_ip, poll_secs, device_secs);
    // What the server's --poll-interval trades: bytes against the time to
    // notice a robot gone (offline after 3 intervals by default).
    let by_interval: Vec<Value> = [30.0, 120.0, 300.0, 900.0]
        .iter()
        .map(|&p| {
            let m = idle_month(&poll0, &device, report_tcp_ip, p, device_secs);
            let no_device = idle_month(&poll0, &json!({}), 0.0, p, f64::INFINITY);
            json!({"poll_interval_secs": p, "offline_after_secs": 3.0 * p,
                "total_bytes_month": m["total_bytes_month"],
                "polls_only_bytes_month": no_device["total_bytes_month"]})
        })
        .collect();

    let held = probe.map(|(p, _)| {
        let device_ip = idle0["device_report_bytes"].as_f64().unwrap_or(0.0) + report_tcp_ip;
        held_month(&poll0, p, device_ip, device_secs)
    });
    let tcp_ip = match net {
        Some(_) => {
            "counted on a veth pair (interface counters, IP level: Ethernet headers taken off); \
                    a device report's TCP/IP taken from the status-change window"
        }
        None => "estimated: 52 B a segment, one per 1448 B of data each way plus an ACK each way, 7 per new connection",
    };
    let out = json!({
        "measured_with": {"poll_interval_secs": 2, "poll_hold_secs": 0, "relay": if net.is_some() {
            "userspace TCP relay on the host end of a veth pair, the agent in a network namespace"
        } else { "userspace TCP relay on loopback" }},
        "month_at": {"poll_interval_secs": poll_secs, "device_report_secs": device_secs},
        "tcp_ip": tcp_ip,
        "idle_no_tasks": idle0,
        "idle_no_tasks_by_poll_interval": by_interval,
        "held_poll_probe": probe.map(|(ip, packets)| json!({"ip_bytes": ip, "packets": packets})),
        "idle_no_tasks_held_poll_by_offline_after": held,
        "idle_10_tasks": idle10,
        "idle_poll_100_tasks": poll100,
        "one_task_added_to_100": added,
        "status_change": status,
        "log_request": log,
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/link.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_vec_pretty(&out).unwrap()).unwrap();
}
