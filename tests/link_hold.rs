//! Held long polls (`--poll-hold`): a quiet robot's poll stays open and its
//! TCP connection is the heartbeat. The real agent runs in a network
//! namespace and talks to the real server across a veth pair with nothing
//! in between, so the server's keepalive probes and their answers really
//! cross the link and a cut really loses them (a userspace relay would
//! answer the probes itself).

mod common;
mod link_util;
mod server_util;

use common::netns::Netns;
use common::{throughout, wait_for, ConnectedAgent};
use link_util::Relay;
use server_util::Server;
use std::time::{Duration, Instant};

fn phase(server: &Server, robot: &str) -> String {
    server
        .object("robots", robot)
        .and_then(|r| r["status"]["phase"].as_str().map(String::from))
        .unwrap_or_default()
}

fn stays_online(server: &Server, robot: &str, window: Duration) {
    throughout(&format!("robot {robot} stays Online"), window, || {
        match phase(server, robot).as_str() {
            "Online" => Ok(()),
            other => Err(format!("phase {other:?}")),
        }
    });
}

/// Offline after 6 s: the server probes a held connection every 4 s (two
/// thirds), so the robot's only traffic while it idles is probes.
#[test]
fn a_held_poll_keeps_a_quiet_robot_online_on_probes_alone_and_a_cut_link_turns_it_offline() {
    let Some(net) = Netns::create("hold", 253) else {
        return;
    };
    let listen = format!("{}:0", net.host_ip);
    let server = Server::start_with(&[
        "--agent-listen",
        &listen,
        "--poll-interval",
        "1s",
        "--offline-after",
        "6s",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a");
    let agent = ConnectedAgent::start_in_netns(&net.name, &server.agent_base, &server.join_token(), "held", "", &data);
    wait_for("robot online", Duration::from_secs(30), || {
        (phase(&server, "held") == "Online").then_some(())
    });
    // Past the start's exchanges (registration, the first polls, the
    // first report of the device's facts): a 4 s window with less than a
    // poll's bytes in it.
    wait_for("the link to go quiet", Duration::from_secs(60), || {
        let w0 = net.wire();
        std::thread::sleep(Duration::from_secs(4)); // the window measured, not a synchronisation
        ((net.wire() - w0).ip_bytes() < 600).then_some(())
    });

    // Three offline windows: Online throughout, and what crossed the link
    // is probes and their answers (a 1 s poll each second would be ≈ 1 KB
    // a second; the probes are ≈ 100 B every 4 s, plus the reporter's
    // connection closing).
    let w0 = net.wire();
    stays_online(&server, "held", Duration::from_secs(18));
    let quiet = net.wire() - w0;
    assert!(
        quiet.ip_bytes() < 2_500,
        "18 s of a held poll moved {} B in {} packets; agent log:\n{}",
        quiet.ip_bytes(),
        quiet.packets,
        agent.log_text()
    );
    assert!(quiet.packets >= 4, "no probes crossed the link: {quiet:?}");

    // Cut: the probes go unanswered, so the robot turns Offline within
    // the offline limit (plus the liveness controller's tick), not after
    // the hour the poll may be held.
    net.link(false);
    let cut = Instant::now();
    wait_for("the cut robot to turn Offline", Duration::from_secs(30), || {
        (phase(&server, "held") == "Offline").then_some(())
    });
    let took = cut.elapsed();
    assert!(took < Duration::from_secs(15), "Offline only {took:?} after the cut");
    // The agent tells silence by its own clock (a probe interval and a
    // quarter without a segment, read in quarter slices), which may end a
    // little after the server's offline limit: wait for it, bounded, before
    // the link comes back (a probe arriving first would be no silence).
    wait_for(
        "the agent to give the silent connection up",
        Duration::from_secs(30),
        || agent.log_text().contains("connection was silent").then_some(()),
    );

    // Back: the agent, whose held connection went silent, gave it up and
    // polls again on a new one; the robot is Online again.
    net.link(true);
    wait_for("the robot back Online", Duration::from_secs(90), || {
        (phase(&server, "held") == "Online").then_some(())
    });
}

/// `--poll-hold 0`: polls are never held past the interval, as before.
#[test]
fn with_poll_hold_0_a_robot_polls_every_interval() {
    let Some(net) = Netns::create("nohold", 252) else {
        return;
    };
    let listen = format!("{}:0", net.host_ip);
    let server = Server::start_with(&["--agent-listen", &listen, "--poll-interval", "1s", "--poll-hold", "0s"]);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a");
    let _agent =
        ConnectedAgent::start_in_netns(&net.name, &server.agent_base, &server.join_token(), "plain", "", &data);
    wait_for("robot online", Duration::from_secs(30), || {
        (phase(&server, "plain") == "Online").then_some(())
    });
    // A poll a second, each ≈ 1 KB with its TCP/IP: far more than probes.
    let w0 = net.wire();
    let w = wait_for("five polls' worth of traffic", Duration::from_secs(30), || {
        let w = net.wire() - w0;
        (w.ip_bytes() > 4_000).then_some(w)
    });
    assert!(w.packets > 10, "{w:?}");
}

/// Behind a TCP-terminating relay (a proxy: it answers the server's probes
/// itself and sends none on), a held poll goes silent: the agent gives it
/// up, polls once unheld, and holds again; the robot stays Online and a
/// Job still reaches it at once.
#[test]
fn behind_a_proxy_that_swallows_the_probes_the_agent_falls_back_and_stays_online() {
    let server = Server::start_with(&["--poll-interval", "1s", "--offline-after", "6s"]);
    let relay = Relay::start(&server.agent_base);
    let dir = tempfile::tempdir().unwrap();
    let agent = ConnectedAgent::start(
        &relay.base,
        &server.join_token(),
        "proxied",
        "",
        &dir.path().join("a"),
        &[],
    );
    wait_for("robot online", Duration::from_secs(30), || {
        (phase(&server, "proxied") == "Online").then_some(())
    });
    // Three offline windows: the held polls go silent after 6 s (the 4 s
    // probe period and 2 s) and are replaced, and the robot never flaps.
    stays_online(&server, "proxied", Duration::from_secs(18));
    let log = agent.log_text();
    assert!(log.contains("connection was silent"), "{log}");
    assert_eq!(log.matches("connection was silent").count(), 1, "said once: {log}");
    assert!(
        !log.contains("retrying with backoff"),
        "a silent poll is not an outage: {log}"
    );
    let job = serde_json::json!({
        "apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"type": "service", "taskGroups": [{"name": "g", "count": 1,
            "tasks": [{"name": "t", "driver": "exec", "config": {"execConfig": {
                "command": "/bin/sh", "args": ["-c", "exec sleep 600"]}}}]}]}
    });
    let r = server.send_json("POST", "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs", &job);
    assert_eq!(r.status, 201, "{}", r.body);
    wait_for("the task running behind the proxy", Duration::from_secs(30), || {
        let list = server.list("tasks", "");
        list["items"]
            .as_array()?
            .iter()
            .any(|t| t["status"]["state"] == "running")
            .then_some(())
    });
}
