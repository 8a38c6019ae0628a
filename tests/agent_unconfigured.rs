//! An agent with nothing to do waits (the real `k8s4r-agent` binary, its
//! settings in a config file as a robot image has them): with no server
//! yet, or a server that refuses it, it stays up, says what is missing
//! (not on every re-read) and re-reads the file; once the file is fixed it
//! starts afresh in the same process and registers with a real server, or
//! runs the job file the config now names. An error it cannot wait out
//! ends it only after a delay that grows, recorded in its data dir.

mod common;
mod server_util;

use common::ConnectedAgent as Agent;
use server_util::{wait_for, Server};
use std::path::Path;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// Settings as cross/rootfs.sh writes them without --server or --job.
const UNCONFIGURED: &str = "K8S4R_SERVER=\nK8S4R_JOIN_TOKEN=\nK8S4R_NAME=waiter\nK8S4R_JOB_FILE=\n";

/// Replace the config file whole (a reader never sees half of it).
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// An agent on `config`, re-reading it every 100 ms and repeating what it
/// misses every second.
fn waiting_agent(config: &Path, data: &Path) -> Agent {
    let config = config.display().to_string();
    Agent::start_args(
        &[
            "--config",
            &config,
            "--no-cgroups",
            "--config-recheck",
            "100ms",
            "--waiting-notice",
            "1s",
        ],
        data,
    )
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

fn robot_online(server: &Server, name: &str) {
    wait_for(&format!("robot {name} Online"), T, || {
        (server.object("robots", name)?["status"]["phase"] == "Online").then_some(())
    });
}

#[test]
fn an_agent_without_a_server_waits_then_registers_once_its_config_names_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.env");
    write_config(&config, UNCONFIGURED);
    let mut agent = waiting_agent(&config, &dir.path().join("data"));
    let started = Instant::now();
    let missing = "waiting: no server (--server or K8S4R_SERVER) and no job file (K8S4R_JOB_FILE)";
    // Three notices: a second apart, although the file is re-read ten
    // times a second.
    wait_for("the third notice of what is missing", T, || {
        (count(&agent.log_text(), missing) >= 3).then_some(())
    });
    // (Once per re-read would make three in 0.2 s.)
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "notices once per interval, not per re-read: {}",
        agent.log_text()
    );
    assert!(agent.exited().is_none(), "still up: {}", agent.log_text());

    let server = Server::start();
    let token = server.join_token();
    write_config(
        &config,
        &format!(
            "K8S4R_SERVER={}\nK8S4R_JOIN_TOKEN={token}\nK8S4R_NAME=waiter\nK8S4R_JOB_FILE=\n",
            server.agent_base
        ),
    );
    robot_online(&server, "waiter");
    wait_for("the agent to say it is connected", T, || {
        agent.log_text().contains("robot waiter connected to").then_some(())
    });
    let log = agent.log_text();
    assert!(agent.exited().is_none(), "the same process carries on: {log}");
    assert!(log.contains("changed; starting afresh"), "{log}");
    // Registered: the join token is gone from the file (0600 now), the
    // rest is as written.
    wait_for("the join token removed from the config file", T, || {
        let text = std::fs::read_to_string(&config).ok()?;
        (!text.contains(&token)).then_some(text)
    });
    let text = std::fs::read_to_string(&config).unwrap();
    assert_eq!(
        text,
        format!(
            "K8S4R_SERVER={}\nK8S4R_JOIN_TOKEN=\nK8S4R_NAME=waiter\nK8S4R_JOB_FILE=\n",
            server.agent_base
        )
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&config).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn a_refused_agent_waits_then_registers_once_its_join_token_is_fixed() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.env");
    let settings = |token: &str| {
        format!(
            "K8S4R_SERVER={}\nK8S4R_JOIN_TOKEN={token}\nK8S4R_NAME=refused\n",
            server.agent_base
        )
    };
    // A token without the server's pin is refused before anything is sent.
    write_config(&config, &settings("not-a-join-token"));
    let mut agent = waiting_agent(&config, &dir.path().join("data"));
    wait_for("the agent to say the token has no pin", T, || {
        agent
            .log_text()
            .contains("waiting: join token: it does not start with K8R1")
            .then_some(())
    });
    assert!(agent.exited().is_none(), "still up: {}", agent.log_text());
    // The right pin but a wrong secret: the server refuses the proof.
    let good = server.join_token();
    let mut wrong = k8s4r::api::robot_channel::JoinToken::parse(&good).unwrap();
    wrong.secret = "not-the-secret".into();
    write_config(&config, &settings(&wrong.to_text()));
    wait_for("the agent to say the server refused it", T, || {
        agent
            .log_text()
            .contains("waiting: registering: server answered 401")
            .then_some(())
    });
    assert!(agent.exited().is_none(), "still up: {}", agent.log_text());
    assert!(server.object("robots", "refused").is_none());

    write_config(&config, &settings(&good));
    robot_online(&server, "refused");
    assert!(
        agent.exited().is_none(),
        "the same process carries on: {}",
        agent.log_text()
    );
}

#[test]
fn a_job_file_added_to_the_config_runs_standalone() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.env");
    write_config(&config, UNCONFIGURED);
    let mut agent = waiting_agent(&config, &dir.path().join("data"));
    wait_for("the agent waiting", T, || {
        agent.log_text().contains("waiting: no server").then_some(())
    });
    let marker = dir.path().join("ran");
    let job = dir.path().join("job.yaml");
    std::fs::write(
        &job,
        format!(
            r#"apiVersion: robot.k8s4r.io/v1alpha1
kind: Job
metadata: {{name: local}}
spec:
  type: service
  taskGroups:
  - name: g
    tasks:
    - name: main
      driver: exec
      config: {{execConfig: {{command: /bin/sh, args: ["-c", "echo ran > {}; exec sleep 3600"]}}}}
"#,
            marker.display()
        ),
    )
    .unwrap();
    write_config(&config, &format!("{UNCONFIGURED}K8S4R_JOB_FILE={}\n", job.display()));
    wait_for("the job's task to run", T, || {
        std::fs::read_to_string(&marker).ok()?.contains("ran").then_some(())
    });
    // Recorded (so `stop-all`, when the agent is dropped, stops it: a task
    // outlives its agent by design).
    let data = dir.path().join("data");
    wait_for("the task's pid in the state", T, || {
        ["state.json", "state.log"]
            .iter()
            .any(|f| std::fs::read_to_string(data.join(f)).is_ok_and(|s| s.contains("\"pid\"")))
            .then_some(())
    });
    assert!(
        agent.exited().is_none(),
        "the same process runs it: {}",
        agent.log_text()
    );
    assert!(
        agent.log_text().contains("running the job file"),
        "{}",
        agent.log_text()
    );
}

#[test]
fn a_waiting_agent_stops_at_once_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.env");
    write_config(&config, UNCONFIGURED);
    // Re-reads every 10 s (the default): SIGTERM must not wait for that.
    let path = config.display().to_string();
    let mut agent = Agent::start_args(&["--config", &path, "--no-cgroups"], &dir.path().join("data"));
    wait_for("the agent waiting", T, || {
        agent.log_text().contains("waiting: no server").then_some(())
    });
    let pid = rustix::process::Pid::from_raw(agent.pid().unwrap() as i32).unwrap();
    let sent = Instant::now();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = wait_for("the agent to exit", T, || agent.exited());
    assert!(status.success(), "{status:?}: {}", agent.log_text());
    assert!(sent.elapsed() < Duration::from_secs(5), "took {:?}", sent.elapsed());
}

/// A flag the agent cannot run with will not change by waiting: it exits,
/// but only after a delay that doubles while the exits repeat (init would
/// respawn it at once), recorded in its data dir.
#[test]
fn an_error_it_cannot_wait_out_exits_after_a_growing_delay() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut took = Vec::new();
    for _ in 0..2 {
        let start = Instant::now();
        let out = std::process::Command::new(common::agent_bin())
            .arg("--data-dir")
            .arg(&data)
            .args(["--no-such-flag", "x"])
            .output()
            .unwrap();
        took.push(start.elapsed());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("invalid option '--no-such-flag'"), "{stderr}");
        assert!(stderr.contains("exiting in"), "{stderr}");
    }
    let recorded = std::fs::read_to_string(data.join("restart-delay")).unwrap();
    assert!(recorded.trim_end().ends_with(" 2000"), "{recorded}");
    assert!(took[0] >= Duration::from_secs(1), "{took:?}");
    assert!(took[1] >= Duration::from_secs(2), "{took:?}");
}
