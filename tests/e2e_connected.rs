//! The whole system on real parts: the control plane on SQLite, a connected
//! agent (register, long-poll, outbox), real processes, real Envoy.

mod common;
mod envoy_fixtures;
mod server_util;

use common::netns::Netns;
use common::ConnectedAgent as Agent;
use serde_json::{json, Value};
use server_util::{wait_for, Server};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const JOBS: &str = "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs";

/// A control plane on SQLite and one connected robot labelled demo=true,
/// Online. Bind as `(_dir, server, agent)`: dropped in reverse, the agent
/// (and every task it started) goes first, the data directory last.
fn server_and_robot(name: &str) -> (tempfile::TempDir, Server, Agent) {
    let dir = tempfile::tempdir().unwrap();
    let (server, agent) = robot_at(name, "demo=true", &dir.path().join(name), &[]);
    (dir, server, agent)
}

/// A fresh server and one connected robot `name` with `labels`, its data in
/// `data` (the caller keeps the directory alive), Online.
fn robot_at(name: &str, labels: &str, data: &Path, extra: &[&str]) -> (Server, Agent) {
    robot_with(&[], name, labels, data, extra)
}

/// [`robot_at`] with a server started with `server_args`.
fn robot_with(server_args: &[&str], name: &str, labels: &str, data: &Path, extra: &[&str]) -> (Server, Agent) {
    let server = Server::start_with(server_args);
    let token = server.join_token();
    let agent = Agent::start(&server.agent_base, &token, name, labels, data, extra);
    robot_online(&server, name);
    (server, agent)
}

/// A server that declares robots offline after 2 s, and two real robots
/// with `labels`, both Online (their data under `dir`).
fn robot_pair(dir: &Path, names: [&'static str; 2], labels: &str) -> (Server, [(&'static str, Agent); 2]) {
    let server = Server::start_with(&["--poll-interval", "1s", "--offline-after", "2s"]);
    let token = server.join_token();
    let agents = names.map(|name| {
        (
            name,
            Agent::start(&server.agent_base, &token, name, labels, &dir.join(name), &[]),
        )
    });
    for name in names {
        robot_online(&server, name);
    }
    (server, agents)
}

/// (robot, pid) of `task` once the server has it running.
fn running_on(server: &Server, task_name: &str) -> Option<(String, i64)> {
    let t = task(server, task_name)?;
    if t["status"]["state"] != "running" {
        return None;
    }
    Some((
        t["spec"]["targetRobot"].as_str()?.to_string(),
        t["status"]["pid"].as_i64()?,
    ))
}

fn robot_online(server: &Server, name: &str) {
    wait_for(&format!("robot {name} Online"), Duration::from_secs(30), || {
        let r = server.object("robots", name)?;
        (r["status"]["phase"] == "Online").then_some(())
    });
}

fn job_state(server: &Server, name: &str) -> Option<String> {
    server.object("jobs", name)?["status"]["state"]
        .as_str()
        .map(String::from)
}

fn task(server: &Server, name: &str) -> Option<Value> {
    server.object("tasks", name)
}

/// examples/demo.yaml as the JSON kubectl would send.
fn demo_job() -> Value {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo.yaml")).unwrap();
    let doc = k8s4r::api::decode_all(&text).remove(0).expect("demo.yaml decodes");
    serde_json::to_value(&doc.object).unwrap()
}

fn have_envoy() -> bool {
    let ok = Command::new("envoy")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIP: envoy is not on PATH (make tools installs it)");
    }
    ok
}

#[test]
fn connected_agent_runs_the_demo_job_through_envoy() {
    if !have_envoy() {
        return;
    }
    let (_dir, server, agent) = server_and_robot("robot-e2e");
    let robot = server.object("robots", "robot-e2e").unwrap();
    assert!(
        robot["status"]["deviceInfo"]["hostname"].is_string(),
        "device info reported: {robot}"
    );

    let r = server.send_json("POST", JOBS, &demo_job());
    assert_eq!(r.status, 201, "{}", r.body);
    let state = wait_for("demo job finished", Duration::from_secs(60), || {
        job_state(&server, "demo").filter(|s| s == "completed" || s == "failed")
    });
    assert_eq!(state, "completed", "agent log:\n{}", agent.log_text());
    let t = task(&server, "demo-hello-r0-fetch").unwrap();
    assert_eq!(t["status"]["exitCode"], 0, "{t}");
    assert_eq!(t["spec"]["targetRobot"], "robot-e2e");

    // The app's answer came through the group's Envoy.
    let out = agent.task_output("demo-hello-r0-fetch");
    assert!(
        out.contains("got: hello from the upstream, through Envoy"),
        "task output: {out}"
    );

    // Without SSH: the server asks the robot for the log and relays it.
    let out = server
        .k8s4r_cmd()
        .args(["logs", "demo-hello-r0-fetch", "--tail", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "got: hello from the upstream, through Envoy\n"
    );
    let raw =
        server.get("/apis/robot.k8s4r.io/v1alpha1/namespaces/default/tasks/demo-hello-r0-fetch/log?stream=stdout");
    assert_eq!(raw.status, 200, "{}", raw.body);
    assert!(
        raw.body.starts_with("fetching http://127.0.0.1:18480/hello.txt"),
        "{}",
        raw.body
    );
    let missing = server.get("/apis/robot.k8s4r.io/v1alpha1/namespaces/default/tasks/nope/log");
    assert_eq!(missing.status, 404, "{}", missing.body);

    // Deleting the Job stops the group's daemons and its proxy on the robot.
    let r = server.request("DELETE", &format!("{JOBS}/demo"), "", None, &[]);
    assert!(r.status == 200 || r.status == 202, "{}", r.body);
    wait_for("proxy and daemon stopped", Duration::from_secs(30), || {
        let log = agent.log_text();
        (log.contains("envoy: stopped") && log.contains("upstream: stopped")).then_some(())
    });
}

/// A job whose only task waits for a file, so the test decides when it ends.
fn gated_job(name: &str, gate: &Path) -> Value {
    json!({
        "apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "batch", "robotSelector": {"demo": "true"}, "taskGroups": [{
            "name": "g", "count": 1,
            "tasks": [{"name": "wait", "driver": "exec", "config": {"execConfig": {
                "command": "/bin/sh",
                "args": ["-c", format!("while [ ! -e {} ]; do sleep 0.05; done; echo released", gate.display())]
            }}}]
        }]}
    })
}

#[test]
fn statuses_survive_a_server_outage_and_an_agent_kill() {
    let [port, agent_port] = [(); 2].map(|_| envoy_fixtures::free_port());
    let (listen, agent_listen) = (format!("127.0.0.1:{port}"), format!("127.0.0.1:{agent_port}"));
    let mut server = Server::start_with(&["--listen", &listen, "--agent-listen", &agent_listen]);
    let token = server.join_token();
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let mut agent = Agent::start(
        &server.agent_base,
        &token,
        "robot-outage",
        "demo=true",
        &dir.path().join("agent"),
        &[],
    );
    robot_online(&server, "robot-outage");

    let r = server.send_json("POST", JOBS, &gated_job("gated", &gate));
    assert_eq!(r.status, 201, "{}", r.body);
    let task_name = "gated-g-r0-wait";
    let pid = wait_for("task running on the server", Duration::from_secs(30), || {
        let t = task(&server, task_name)?;
        (t["status"]["state"] == "running")
            .then(|| t["status"]["pid"].as_i64())
            .flatten()
    });

    // The server goes away; the robot keeps working on its own.
    server.stop();
    std::fs::write(&gate, b"go").unwrap();
    let data = agent.data.clone();
    let outbox = || k8s4r::agent::connected::outbox::pending_on_disk(&data).unwrap_or_default();
    wait_for("completed status queued in the outbox", Duration::from_secs(30), || {
        outbox()
            .iter()
            .any(|u| u.status.state == k8s4r::api::TaskState::Completed)
            .then_some(())
    });
    // ... and even the agent dies before it could deliver it.
    agent.kill9();
    agent.spawn();

    // Same address, same data: the server comes back.
    server.restart();
    assert_eq!(server.base, format!("https://{listen}"));
    assert_eq!(server.agent_base, format!("http://{agent_listen}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let t = loop {
        let t = task(&server, task_name);
        if let Some(t) = t.as_ref().filter(|t| t["status"]["state"] == "completed") {
            break t.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "completed status not delivered within 60s\ntask: {t:?}\noutbox: {:?}\nagent log:\n{}",
            outbox(),
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(t["status"]["exitCode"], 0, "{t}");
    // The Job's status follows its tasks' through the controller.
    wait_for("the Job completed", Duration::from_secs(30), || {
        (job_state(&server, "gated").as_deref() == Some("completed")).then_some(())
    });
    assert!(pid > 1);
    assert_eq!(
        t["status"]["restartCount"], 0,
        "the task ran once, never restarted: {t}"
    );
    wait_for("outbox drained", Duration::from_secs(30), || {
        let drained = !outbox()
            .iter()
            .any(|u| u.status.state == k8s4r::api::TaskState::Completed);
        drained.then_some(())
    });
}

/// A Job that passed validation, its durations made huge in the robot's
/// cached assignments (as an agent from before the 10-year bound, or a
/// server that does not validate, could have left them; the same Job
/// through the API is refused first). The agent re-adopts the task with
/// its timeout, killTimeout and check interval, goes offline with its
/// stopOnClientAfter, sees the task die and schedules the restart after
/// its delay: every one of those deadlines is past the end of the clock,
/// and means never, not an abort and a crash loop. When the server is
/// back, its spec replaces the cached one and the task runs again.
#[test]
fn huge_durations_in_cached_assignments_do_not_abort_the_agent() {
    // Fixed ports: the agent finds the restarted server where it was.
    let [listen, agent_listen] = [(); 2].map(|_| format!("127.0.0.1:{}", envoy_fixtures::free_port()));
    let dir = tempfile::tempdir().unwrap();
    let (mut server, mut agent) = robot_with(
        &["--listen", &listen, "--agent-listen", &agent_listen],
        "robot-huge",
        "demo=true",
        &dir.path().join("huge"),
        &[],
    );
    let huge = "3000000000000000h";
    let job = |timeout: &str| {
        json!({
            "apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job",
            "metadata": {"name": "huge", "namespace": "default"},
            "spec": {"type": "service", "robotSelector": {"demo": "true"}, "taskGroups": [{
                "name": "g", "disconnect": {"stopOnClientAfter": "1h"},
                "tasks": [{"name": "run", "driver": "exec", "timeout": timeout, "killTimeout": "5s",
                    "restartPolicy": {"attempts": 3, "interval": "1h", "delay": "1s", "mode": "delay"},
                    "services": [{"name": "s", "checks": [
                        {"name": "c", "type": "script", "command": "/bin/true", "interval": "1h", "timeout": "10s"}]}],
                    "config": {"execConfig": {"command": "/bin/sh", "args": ["-c", "exec sleep 600"]}}}]
            }]}
        })
    };
    let r = server.send_json("POST", JOBS, &job(huge));
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body.contains("spec.taskGroups[0].tasks[0].timeout") && r.body.contains("87600h (10 years)"),
        "{}",
        r.body
    );
    let r = server.send_json("POST", JOBS, &job("1h"));
    assert_eq!(r.status, 201, "{}", r.body);
    let (_, pid) = wait_for("the task running", Duration::from_secs(30), || {
        running_on(&server, "huge-g-r0-run")
    });

    server.stop();
    agent.kill9();
    // The kept set: {revision, versions, tasks, bare, groups, groupVersions}
    // (src/agent/connected/desired.rs), with the deltas since in
    // assignments.log folded in first. The task travelled without its
    // group's fields (it is in `bare`: stripped again on load), so the
    // group's shared data, its disconnect policy included, is edited in
    // `groups`.
    k8s4r::agent::connected::desired::Kept::compact(&agent.data).unwrap();
    let cache = agent.data.join("assignments.json");
    let mut kept: Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    assert_eq!(
        kept["bare"],
        json!(["huge-g-r0-run"]),
        "the group's part is the task's: {kept}"
    );
    let spec = &mut kept["tasks"][0]["spec"];
    assert_eq!(spec["timeout"], "1h", "the cached task: {spec}");
    for pointer in [
        "/timeout",
        "/killTimeout",
        "/restartPolicy/interval",
        "/restartPolicy/delay",
        "/services/0/checks/0/interval",
        "/services/0/checks/0/timeout",
    ] {
        *spec.pointer_mut(pointer).unwrap() = json!(huge);
    }
    *kept.pointer_mut("/groups/huge-g/disconnect/stopOnClientAfter").unwrap() = json!(huge);
    std::fs::write(&cache, serde_json::to_vec(&kept).unwrap()).unwrap();

    agent.spawn();
    let adopted = format!("huge-g r0 run: adopted running pid {pid}");
    wait_for(
        "the task re-adopted, the server unreachable",
        Duration::from_secs(30),
        || {
            let log = agent.log_text();
            (log.contains(&adopted) && log.contains("tasks keep running, retrying with backoff")).then_some(())
        },
    );
    assert!(Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    wait_for("the restart scheduled", Duration::from_secs(30), || {
        agent
            .log_text()
            .contains("huge-g r0 run: exited (exit code unknown: started by an earlier agent run); restarting in 10800000000000000000s (restart 1/3)")
            .then_some(())
    });
    assert_eq!(agent.exited(), None, "the agent lives:\n{}", agent.log_text());
    assert!(!agent.log_text().contains("panicked"), "{}", agent.log_text());

    server.restart();
    let (_, again) = wait_for("the server's spec running", Duration::from_secs(60), || {
        running_on(&server, "huge-g-r0-run").filter(|(_, p)| *p != pid)
    });
    assert!(pid_alive(again));
    let cached: Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    assert_eq!(
        cached["tasks"][0]["spec"]["timeout"], "1h",
        "the server's assignments replaced the cache"
    );
    assert_eq!(agent.exited(), None);
}

fn pid_alive(pid: i64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

/// Two real robots. One goes silent (agent kill -9): the server marks it
/// Offline and moves its service task to the other robot, which runs it.
/// When the silent robot comes back, it is told the task is no longer its
/// own and stops its copy: the task never stays running twice.
#[test]
fn a_lost_robots_service_task_moves_and_never_runs_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut agents) = robot_pair(dir.path(), ["robot-a", "robot-b"], "fleet=test");
    let job = json!({
        "apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job",
        "metadata": {"name": "beacon", "namespace": "default"},
        "spec": {"type": "service", "robotSelector": {"fleet": "test"}, "taskGroups": [{
            "name": "g", "count": 1,
            "tasks": [{"name": "ping", "driver": "exec", "config": {"execConfig": {
                "command": "/bin/sh", "args": ["-c", "echo on $K8S4R_ROBOT; exec sleep 300"]}}}]
        }]}
    });
    let r = server.send_json("POST", JOBS, &job);
    assert_eq!(r.status, 201, "{}", r.body);
    let name = "beacon-g-r0-ping";
    let running_on = |server: &Server| running_on(server, name);
    let (first, first_pid) = wait_for("the task running", Duration::from_secs(30), || running_on(&server));
    // The robot running it goes silent.
    let i = agents
        .iter()
        .position(|(n, _)| *n == first)
        .expect("placed on one of ours");
    let other = agents[1 - i].0;
    let silent = &mut agents[i].1;
    silent.kill9();
    let (now_on, second_pid) = wait_for("the task moved to the live robot", Duration::from_secs(30), || {
        running_on(&server).filter(|(robot, _)| robot == other)
    });
    assert_eq!(now_on, other);
    assert_ne!(first_pid, second_pid);
    assert_eq!(server.object("robots", &first).unwrap()["status"]["phase"], "Offline");
    // The silent robot kept its copy running on its own (it could not know).
    assert!(pid_alive(first_pid), "an offline robot keeps running its tasks");
    // It comes back: the server's desired set no longer has the task, so
    // the agent stops its copy. One copy remains, on the other robot.
    silent.spawn();
    robot_online(&server, &first);
    wait_for(
        "the returning robot to stop its stale copy",
        Duration::from_secs(30),
        || (!pid_alive(first_pid)).then_some(()),
    );
    assert!(pid_alive(second_pid), "the replacement keeps running");
    assert_eq!(running_on(&server).map(|(r, _)| r).as_deref(), Some(other));
}

/// A network namespace with a veth pair to the host, made and removed by
/// the test: the robot's side of a Wi-Fi link that can be cut.
/// Processes whose command line is exactly `cmd` (e.g. "sleep 300") and
/// whose working directory (a task directory) is under `data`: this
/// test's robots only, whatever else runs on the machine (another run of
/// the same test, say).
fn count_procs(cmd: &str, data: &Path) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").trim() == cmd)
                && std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(data))
        })
        .count()
}

fn service_job(name: &str, seconds: u32, disconnect: Value) -> Value {
    json!({
        "apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "service", "robotSelector": {"net": "cut"}, "taskGroups": [{
            "name": "g", "count": 1, "disconnect": disconnect,
            "tasks": [{"name": "walk", "driver": "exec", "config": {"execConfig": {
                "command": "/bin/sh", "args": ["-c", format!("exec sleep {seconds}")]}}}]
        }]}
    })
}

fn running_pid(server: &Server, task_name: &str) -> Option<i64> {
    let t = task(server, task_name)?;
    (t["status"]["state"] == "running" && t["spec"]["targetRobot"] == "robot-wifi")
        .then(|| t["status"]["pid"].as_i64())
        .flatten()
}

/// The robot's link goes down past the server's offline limit and comes
/// back. The robot keeps its tasks running on its own the whole time; the
/// server sees it Offline. Afterwards each group's `disconnect` policy
/// decides: `replace: false` keeps the very same process; the default
/// (replace) gives the task a new placement — and in both cases exactly one
/// process of each task runs after reconciliation, never two.
#[test]
fn a_network_cut_keeps_tasks_running_and_nothing_runs_twice_after() {
    let Some(net) = Netns::create("k8s4r-cut", 253) else {
        return;
    };
    let listen = format!("{}:0", net.host_ip);
    let server = Server::start_with(&[
        "--listen",
        &listen,
        "--agent-listen",
        &listen,
        "--poll-interval",
        "1s",
        // Held polls (the default) need 6 s or more: the cut is found by
        // the server's keepalive probes going unanswered.
        "--offline-after",
        "6s",
    ]);
    let token = server.join_token();
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start_in_netns(
        &net.name,
        &server.agent_base,
        &token,
        "robot-wifi",
        "net=cut",
        &dir.path().join("wifi"),
    );
    robot_online(&server, "robot-wifi");
    let jobs = [
        ("keep", 301, json!({"replace": false})),
        ("move", 302, json!({"lostAfter": "1s"})),
    ];
    for (name, secs, disconnect) in &jobs {
        assert_eq!(
            server
                .send_json("POST", JOBS, &service_job(name, *secs, disconnect.clone()))
                .status,
            201
        );
    }
    let keep_pid = wait_for("keep running", Duration::from_secs(30), || {
        running_pid(&server, "keep-g-r0-walk")
    });
    wait_for("move running", Duration::from_secs(30), || {
        running_pid(&server, "move-g-r0-walk")
    });

    net.link(false);
    let cut_at = std::time::Instant::now();
    wait_for("the robot Offline", Duration::from_secs(30), || {
        (server.object("robots", "robot-wifi")?["status"]["phase"] == "Offline").then_some(())
    });
    wait_for("the default-policy task Lost", Duration::from_secs(30), || {
        let t = task(&server, "move-g-r0-walk")?;
        (t["metadata"]["annotations"]["robot.k8s4r.io/reschedules"] == "1").then_some(())
    });
    // `make reliability` holds the cut for K8S4R_CUT_SECS (60) in all; the
    // robot's task must live through all of it.
    let hold = std::env::var("K8S4R_CUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    while cut_at.elapsed() < Duration::from_secs(hold) {
        assert!(pid_alive(keep_pid), "a task of the cut-off robot died during the cut");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(pid_alive(keep_pid), "the cut-off robot keeps its tasks running");
    let ours = dir.path();
    assert_eq!((count_procs("sleep 301", ours), count_procs("sleep 302", ours)), (1, 1));

    net.link(true);
    robot_online(&server, "robot-wifi");
    common::wait_for_or_explain(
        "both tasks running again in the server's view",
        Duration::from_secs(30),
        || {
            (running_pid(&server, "keep-g-r0-walk")? == keep_pid).then_some(())?;
            running_pid(&server, "move-g-r0-walk")
        },
        || {
            let status = |t: &str| task(&server, t).map(|v| v["status"].to_string()).unwrap_or_default();
            format!(
                "\nkeep: {}\nmove: {}\nagent log:\n{}",
                status("keep-g-r0-walk"),
                status("move-g-r0-walk"),
                agent.log_text()
            )
        },
    );
    assert!(pid_alive(keep_pid), "replace: false keeps the very same process");
    wait_for("one process per task", Duration::from_secs(30), || {
        (count_procs("sleep 301", ours) == 1 && count_procs("sleep 302", ours) == 1).then_some(())
    });
}

/// Pid of unit `unit` as the agent persisted it.
fn unit_pid(data: &Path, unit: &str) -> Option<i64> {
    let state = k8s4r::agent::supervisor::state::StateFile::read(data).ok()?;
    state.units.get(unit)?.pid.map(i64::from)
}

/// A Job update reaches the robot's proxy live: a new upstream added
/// through the API is served by the same Envoy process (filesystem xDS),
/// and traffic flows to it.
#[test]
fn a_job_update_adds_an_upstream_to_the_running_envoy() {
    if !have_envoy() {
        return;
    }
    let (first, second) = (envoy_fixtures::Server::echo(), envoy_fixtures::Server::echo());
    let (port_a, port_b) = (envoy_fixtures::free_port(), envoy_fixtures::free_port());
    let (_dir, server, agent) = server_and_robot("robot-live");
    let upstream = |name: &str, local: u16, target: u16| json!({"name": name, "localPort": local, "upstream": format!("127.0.0.1:{target}"), "protocol": "tcp", "tls": false});
    let job = json!({
        "apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job",
        "metadata": {"name": "live", "namespace": "default"},
        "spec": {"type": "service", "robotSelector": {"demo": "true"}, "taskGroups": [{
            "name": "g", "count": 1,
            "network": {"upstreams": [upstream("first", port_a, first.port)]},
            "tasks": [{"name": "app", "driver": "exec", "config": {"execConfig": {
                "command": "/bin/sh", "args": ["-c", "exec sleep 300"]}}}]
        }]}
    });
    assert_eq!(server.send_json("POST", JOBS, &job).status, 201);
    wait_for("traffic through the first upstream", Duration::from_secs(60), || {
        envoy_fixtures::echo_through(port_a, b"one")
            .ok()
            .filter(|b| b == b"one")
    });
    let envoy = wait_for("the envoy pid", Duration::from_secs(10), || {
        unit_pid(&agent.data, "live-g-envoy")
    });

    let patch = json!({"spec": {"taskGroups": [{
        "name": "g", "count": 1,
        "network": {"upstreams": [upstream("first", port_a, first.port), upstream("second", port_b, second.port)]},
        "tasks": job["spec"]["taskGroups"][0]["tasks"].clone()
    }]}});
    let r = server.merge_patch(&format!("{JOBS}/live"), &patch);
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for("traffic through the added upstream", Duration::from_secs(60), || {
        envoy_fixtures::echo_through(port_b, b"two")
            .ok()
            .filter(|b| b == b"two")
    });
    assert_eq!(
        unit_pid(&agent.data, "live-g-envoy"),
        Some(envoy),
        "the same Envoy, updated live"
    );
    assert_eq!(envoy_fixtures::echo_through(port_a, b"still").unwrap(), b"still");
}

/// Agent kill -9 and restart under a live server: the task keeps its
/// process (re-adopted, same pid), the server's view stays "running", and
/// exactly one copy exists.
#[test]
fn an_agent_kill_9_under_the_server_restarts_and_duplicates_nothing() {
    let (_dir, server, mut agent) = server_and_robot("robot-k9");
    let job = json!({
        "apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job",
        "metadata": {"name": "steady", "namespace": "default"},
        "spec": {"type": "service", "robotSelector": {"demo": "true"}, "taskGroups": [{
            "name": "g", "count": 2,
            "tasks": [{"name": "t", "driver": "exec", "config": {"execConfig": {
                "command": "/bin/sh", "args": ["-c", "exec sleep 303"]}}}]
        }]}
    });
    assert_eq!(server.send_json("POST", JOBS, &job).status, 201);
    let pids = |server: &Server| -> Option<Vec<i64>> {
        ["steady-g-r0-t", "steady-g-r1-t"]
            .iter()
            .map(|n| {
                let t = task(server, n)?;
                (t["status"]["state"] == "running")
                    .then(|| t["status"]["pid"].as_i64())
                    .flatten()
            })
            .collect()
    };
    let before = wait_for("both replicas running", Duration::from_secs(30), || pids(&server));
    agent.kill9();
    agent.spawn();
    wait_for("the new agent to re-adopt both", Duration::from_secs(30), || {
        (agent.log_text().matches("adopted running pid").count() >= 2).then_some(())
    });
    assert_eq!(pids(&server), Some(before.clone()), "same processes after the restart");
    assert!(before.iter().all(|p| pid_alive(*p)));
    assert_eq!(count_procs("sleep 303", &agent.data), 2, "no duplicate started");
}

/// `kubectl apply -f examples/` against a robot like `make demo`'s (a
/// connected agent labelled demo=true): every example composes (distinct
/// ports, selectors the robot matches, no Robot object that never comes
/// Online) and reaches its final state: batch Jobs complete, the others
/// run. The original implementation's runnable manifest joins them.
#[test]
fn kubectl_apply_examples_directory_runs_every_example_on_the_demo_robot() {
    let Some(_envoy) = envoy_fixtures::envoy_or_skip("examples on the demo robot") else {
        return;
    };
    if !server_util::have_kubectl() {
        return;
    }
    let (_dir, server, agent) = server_and_robot("demo-robot");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    server.kubectl_ok(&["apply", "-f", root.join("examples").to_str().unwrap()]);
    if let Some(shared) = common::shared_dir() {
        let compat = shared.join("compat/test-taskgroup-simple.yaml");
        apply_text(
            &server,
            "compat/test-taskgroup-simple.yaml",
            &std::fs::read_to_string(compat).unwrap(),
        );
    }
    let jobs = server.list("jobs", "")["items"].as_array().cloned().unwrap_or_default();
    assert!(jobs.len() >= 4, "every example Job applied: {jobs:?}");
    for job in &jobs {
        let name = job["metadata"]["name"].as_str().unwrap();
        let want = if job["spec"]["type"] == "batch" {
            "completed"
        } else {
            "running"
        };
        wait_job(&server, name, want, &agent);
    }
    let robots = server.list("robots", "")["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = robots.iter().filter_map(|r| r["metadata"]["name"].as_str()).collect();
    assert_eq!(names, ["demo-robot"], "no Robot example in the default directory");
    // The system Job's replica is named after the robot it belongs to.
    let beat = task(&server, "robot-heartbeat-beat-log.demo-robot").expect("the system replica");
    assert_eq!(beat["spec"]["targetRobot"], "demo-robot", "{beat}");
}

/// `disconnect.reconcile: keepOriginal` with two real robots: the robot
/// running a service task goes silent (agent kill -9; its task keeps
/// running), the task is placed on the other robot, which runs a second
/// copy. When the silent robot's agent comes back it keeps its copy (the
/// same process), the server moves the task back to it, and the other
/// robot is told to stop its copy: one process remains, the original.
#[test]
fn keep_original_keeps_the_returning_robots_process_and_stops_the_replacement() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut agents) = robot_pair(dir.path(), ["robot-ko-a", "robot-ko-b"], "fleet=ko");
    let job = json!({
        "apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job",
        "metadata": {"name": "ko", "namespace": "default"},
        "spec": {"type": "service", "robotSelector": {"fleet": "ko"}, "taskGroups": [{
            "name": "g", "count": 1, "disconnect": {"reconcile": "keepOriginal"},
            "tasks": [{"name": "t", "driver": "exec", "config": {"execConfig": {
                "command": "/bin/sh", "args": ["-c", "exec sleep 304"]}}}]
        }]}
    });
    assert_eq!(server.send_json("POST", JOBS, &job).status, 201);
    let name = "ko-g-r0-t";
    let running_on = |server: &Server| running_on(server, name);
    let (first, first_pid) = wait_for("the task running", Duration::from_secs(30), || running_on(&server));
    let i = agents.iter().position(|(n, _)| *n == first).expect("one of ours");
    let other = agents[1 - i].0;
    agents[i].1.kill9();
    let (_, second_pid) = wait_for("a second copy on the other robot", Duration::from_secs(30), || {
        running_on(&server).filter(|(robot, _)| robot == other)
    });
    assert_ne!(first_pid, second_pid);
    assert!(pid_alive(first_pid), "the silent robot keeps its copy running");
    assert_eq!(
        count_procs("sleep 304", dir.path()),
        2,
        "both copies run while the robot is away"
    );

    // The robot's agent comes back: it keeps (re-adopts) its copy, and the
    // server keeps that one and stops the replacement.
    agents[i].1.spawn();
    wait_for("the replacement stopped", Duration::from_secs(30), || {
        (!pid_alive(second_pid)).then_some(())
    });
    let (robot, pid) = wait_for(
        "the task running on the returning robot again",
        Duration::from_secs(30),
        || running_on(&server).filter(|(robot, _)| *robot == first),
    );
    assert_eq!(
        (robot.as_str(), pid),
        (first.as_str(), first_pid),
        "the very same process"
    );
    assert!(pid_alive(first_pid));
    assert_eq!(count_procs("sleep 304", dir.path()), 1, "exactly one copy survives");
    let t = task(&server, name).unwrap();
    assert!(
        t["metadata"]["annotations"]["robot.k8s4r.io/original-robot"].is_null(),
        "{t}"
    );
}

// ------------------------------------------------ manifests needing fixtures
//
// The examples and compat manifests below name things a test machine does
// not have: a SPIRE agent and its socket, certificate files under /etc,
// downloads from github.com, fixed ports. Each test substitutes exactly
// those strings (listed, with why, next to each call of `substitute`) and
// applies the manifest otherwise unchanged.

/// `text` with each `(from, to)` replaced; every `from` must occur, so a
/// changed manifest fails loudly instead of silently running unsubstituted.
fn substitute(text: &str, subs: &[(&str, String)]) -> String {
    let mut out = text.to_string();
    for (from, to) in subs {
        assert!(out.contains(from), "the manifest no longer contains {from:?}");
        out = out.replace(from, to);
    }
    out
}

/// Create every object of a manifest through the API (what `kubectl
/// create -f` sends).
fn apply_text(server: &Server, what: &str, text: &str) {
    for doc in k8s4r::api::decode_all(text) {
        let obj = doc.unwrap_or_else(|e| panic!("{what}: {e:?}")).object;
        let plural = if obj.kind() == "Job" { "jobs" } else { "robots" };
        let body = serde_json::to_value(&obj).unwrap();
        let r = server.send_json(
            "POST",
            &format!("/apis/robot.k8s4r.io/v1alpha1/namespaces/default/{plural}"),
            &body,
        );
        assert_eq!(r.status, 201, "{what}: {}", r.body);
    }
}

/// A stand-in for the `spire-agent` binary (there is no SPIRE package
/// here): checks it is started as `spire-agent run -config FILE` with a
/// config naming a socket_path, then stays up like the daemon. The
/// Workload API on that socket is the test's SDS fixture.
fn fake_spire_agent() -> String {
    "#!/bin/sh\n\
     [ \"$1\" = run ] && [ \"$2\" = -config ] && [ -r \"$3\" ] || { echo 'usage: spire-agent run -config FILE' >&2; exit 2; }\n\
     grep -q socket_path \"$3\" || { echo \"no socket_path in $3\" >&2; exit 2; }\n\
     echo \"spire-agent (test stand-in): config $3\"\n\
     exec sleep 3600\n"
        .to_string()
}

fn write_exec(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn example(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name)).unwrap()
}

fn wait_job(server: &Server, job: &str, want: &str, agent: &Agent) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let state = job_state(server, job);
        if state.as_deref() == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job {job} not {want} within 60s (state {state:?})\nagent log:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// examples/extra/spire-mtls.yaml on a live robot: its robot-scoped SPIRE agent
/// daemon starts, the group's Envoy gets its SVID and bundle over SDS from
/// the Workload API socket (the test's SDS fixture), opens its mTLS inbound
/// listener, and the reporter runs (a service: `running`).
#[test]
fn spire_mtls_example_runs_against_a_local_spire_workload_api() {
    let Some(_envoy) = envoy_fixtures::envoy_or_skip("spire-mtls example") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let ca = envoy_fixtures::Ca::new(root, "example.org");
    let svid = ca.leaf("robot", "spiffe://example.org/robot/robot-spire", 1);
    let socket = root.join("agent.sock");
    common::searchable_by_all(&socket);
    let sds = envoy_fixtures::sds::SdsServer::spire(&socket, &svid, &ca);
    let conf = root.join("agent.conf");
    std::fs::write(
        &conf,
        format!(
            "agent {{\n  socket_path = \"{}\"\n  trust_domain = \"example.org\"\n}}\n",
            socket.display()
        ),
    )
    .unwrap();
    let spire = root.join("spire-agent");
    write_exec(&spire, &fake_spire_agent());
    let [metrics, events, scrape] = [(); 3].map(|_| envoy_fixtures::free_port());
    let text = substitute(
        &example("extra/spire-mtls.yaml"),
        &[
            // No SPIRE package here: the stand-in binary and its config.
            ("/opt/spire/bin/spire-agent", spire.display().to_string()),
            ("/etc/spire/agent/agent.conf", conf.display().to_string()),
            // The Workload API socket the test serves (no root-owned /run).
            ("/run/spire/sockets/agent.sock", socket.display().to_string()),
            // Fixed ports could be taken by other tests running at once.
            ("localPort: 9091", format!("localPort: {metrics}")),
            ("localPort: 9092", format!("localPort: {events}")),
            ("port: 9443", format!("port: {scrape}")),
        ],
    );
    // Labels the example's selector asks for (matchLabels + matchExpressions).
    let (server, agent) = robot_at("robot-spire", "fleet=warehouse,arch=amd64", &root.join("robot"), &[]);
    apply_text(&server, "examples/extra/spire-mtls.yaml", &text);
    wait_job(&server, "telemetry", "running", &agent);
    let out = wait_for("the reporter's first line", Duration::from_secs(30), || {
        let out = agent.task_output("telemetry-uplink-r0-reporter");
        out.contains("report via").then_some(out)
    });
    assert!(out.contains(&format!("report via 127.0.0.1:{metrics}")), "{out}");
    let requested = sds.requested();
    assert!(
        requested.iter().any(|n| n == "default") && requested.iter().any(|n| n == "spiffe://example.org"),
        "Envoy asked the Workload API for its SVID and bundle: {requested:?}"
    );
    // The inbound listener opens only once its SVID arrived over SDS.
    wait_for("the mTLS inbound listener open", Duration::from_secs(30), || {
        envoy_fixtures::connect(scrape).ok()
    });
    assert!(
        agent.log_text().contains("spire-agent"),
        "the SPIRE agent daemon was started:\n{}",
        agent.log_text()
    );
}

/// examples/extra/tls-files.yaml on a live robot: the group's Envoy takes its
/// certificate, key and CA from files (locally generated ones at the
/// substituted paths) and the db upstream carries bytes over mTLS to a
/// server-side Envoy that admits only the robot's SPIFFE ID.
#[test]
fn tls_files_example_runs_with_local_certificate_files() {
    let Some(envoy) = envoy_fixtures::envoy_or_skip("tls-files example") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let ca = envoy_fixtures::Ca::new(root, "example.org");
    let client = ca.leaf("robot", "spiffe://example.org/ns/prod/sa/reporter", 1);
    common::share_with_proxy(&[&client.cert, &client.key, &ca.cert]);
    let db_leaf = ca.leaf("db", "spiffe://example.org/ns/prod/sa/db", 2);
    let echo = envoy_fixtures::Server::echo();
    std::fs::create_dir_all(root.join("db-proxy")).unwrap();
    let db = envoy_fixtures::ServerSide::start(
        &envoy,
        &root.join("db-proxy"),
        ca.files(&db_leaf),
        Some("example.org"),
        &["spiffe://example.org/ns/prod/sa/reporter"],
        echo.port,
    );
    let [telemetry, dbport] = [(); 2].map(|_| envoy_fixtures::free_port());
    let text = substitute(
        &example("extra/tls-files.yaml"),
        &[
            // Locally generated certificates instead of the robot's /etc.
            ("/etc/k8s4r/tls/cert.pem", client.cert.display().to_string()),
            ("/etc/k8s4r/tls/key.pem", client.key.display().to_string()),
            ("/etc/k8s4r/tls/ca.pem", ca.cert.display().to_string()),
            // Fixed ports could be taken by other tests running at once.
            ("localPort: 14317", format!("localPort: {telemetry}")),
            ("localPort: 15433", format!("localPort: {dbport}")),
            // A real mTLS peer on loopback instead of db.example.org.
            (
                "upstream: db.example.org:5432",
                format!("upstream: 127.0.0.1:{}", db.port),
            ),
        ],
    );
    let (server, agent) = robot_at("robot-files", "demo=true", &root.join("robot"), &[]);
    apply_text(&server, "examples/extra/tls-files.yaml", &text);
    wait_job(&server, "files-mtls", "running", &agent);
    let back = wait_for(
        "bytes through the robot's mTLS upstream",
        Duration::from_secs(30),
        || envoy_fixtures::echo_through(dbport, b"over mtls from files").ok(),
    );
    assert_eq!(back, b"over mtls from files");
    let out = agent.task_output("files-mtls-uplink-r0-reporter");
    assert!(
        out.contains(&format!(
            "telemetry via 127.0.0.1:{telemetry}, db via 127.0.0.1:{dbport}"
        )),
        "{out}"
    );
}

/// The original implementation's compat/job-with-envoy-proxy.yaml on a
/// live robot: its init tasks make directories, write the SPIRE agent's
/// config, download and install spire-agent and Envoy (from a local HTTP
/// server), start the SPIRE agent daemon; the group's Envoy gets its SVID
/// from the Workload API socket; the app runs and the batch Job completes.
#[test]
fn compat_job_with_envoy_proxy_completes_with_local_downloads() {
    let Some(envoy) = envoy_fixtures::envoy_or_skip("compat job-with-envoy-proxy") else {
        return;
    };
    let Some(shared) = common::shared_dir() else { return };
    let manifest = std::fs::read_to_string(shared.join("compat/job-with-envoy-proxy.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // The robot's filesystem root for the paths the manifest writes.
    let fs = root.join("rootfs");
    for d in ["tmp", "run/spire/sockets"] {
        std::fs::create_dir_all(fs.join(d)).unwrap();
    }
    // What github.com would serve: a spire release tarball holding the
    // stand-in spire-agent, and an "envoy" binary that runs the real one.
    let release = root.join("release/spire-1.8.0/bin");
    std::fs::create_dir_all(&release).unwrap();
    write_exec(&release.join("spire-agent"), &fake_spire_agent());
    let tarball = root.join("spire.tar.gz");
    let ok = Command::new("tar")
        .arg("czf")
        .arg(&tarball)
        .arg("-C")
        .arg(root.join("release"))
        .arg("spire-1.8.0")
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "tar czf");
    let downloads = envoy_fixtures::FileServer::start(vec![
        (
            "/github/spiffe/spire/releases/download/v1.8.0/spire-1.8.0-linux-amd64-musl.tar.gz".into(),
            read(&tarball),
        ),
        (
            "/github/envoyproxy/envoy/releases/download/v1.28.0/envoy-1.28.0-linux-x86_64".into(),
            format!("#!/bin/sh\nexec {} \"$@\"\n", envoy.display()).into_bytes(),
        ),
    ]);
    let ca = envoy_fixtures::Ca::new(root, "example.org");
    let svid = ca.leaf("robot", "spiffe://example.org/robot/robot-compat", 1);
    let socket = fs.join("run/spire/sockets/agent.sock");
    common::searchable_by_all(&socket);
    let sds = envoy_fixtures::sds::SdsServer::spire(&socket, &svid, &ca);
    let [database, api] = [(); 2].map(|_| envoy_fixtures::free_port());
    let under = |p: &str| fs.join(p.trim_start_matches('/')).display().to_string();
    let text = substitute(
        &manifest,
        &[
            // Downloads come from the local server, never the internet.
            ("https://github.com/", downloads.url("/github/")),
            // System paths move under the test's root: a test must not
            // write /opt, /etc, /var/lib or /run of the machine.
            ("/opt/k8s4r/bin", under("/opt/k8s4r/bin")),
            ("/etc/spire/agent", under("/etc/spire/agent")),
            ("/var/lib/spire/agent", under("/var/lib/spire/agent")),
            ("/run/spire/sockets", under("/run/spire/sockets")),
            ("cd /tmp", format!("cd {}", under("/tmp"))),
            // Fixed ports could be taken (5432 by PostgreSQL in e2e_postgres).
            ("localPort: 5432", format!("localPort: {database}")),
            ("localPort: 8080", format!("localPort: {api}")),
            // CI time: the app's 30 s nap shortened to 1 s.
            ("sleep 30\n", "sleep 1\n".to_string()),
        ],
    );
    let (server, agent) = robot_at("robot-compat", "demo=true", &root.join("robot"), &[]);
    apply_text(&server, "compat/job-with-envoy-proxy.yaml", &text);
    wait_job(&server, "test-proxy-job", "completed", &agent);
    assert!(
        fs.join("opt/k8s4r/bin/spire-agent").is_file(),
        "spire-agent installed from the download"
    );
    assert!(
        fs.join("opt/k8s4r/bin/envoy").is_file(),
        "envoy installed from the download"
    );
    let conf = std::fs::read_to_string(fs.join("etc/spire/agent/agent.conf")).unwrap();
    assert!(
        conf.contains(&format!("socket_path = \"{}\"", socket.display())),
        "{conf}"
    );
    let out = agent.task_output("test-proxy-job-proxy-group-r0-app-task");
    assert!(
        out.contains(&format!("PROXY_DATABASE_ADDR=127.0.0.1:{database}")) && out.contains("Application completed"),
        "{out}"
    );
    assert!(
        sds.requested().iter().any(|n| n == "default"),
        "Envoy asked the Workload API for its SVID: {:?}",
        sds.requested()
    );
}

/// The Robot manifests (examples/extra/robot.yaml, compat/robot.yaml): an
/// operator pre-creates the Robot, the robot's agent registers under that
/// name, and the object becomes Online, keeping the operator's labels.
#[test]
fn robot_manifests_go_online_when_their_agent_registers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("examples/extra/robot.yaml")];
    if let Some(shared) = common::shared_dir() {
        files.push(shared.join("compat/robot.yaml"));
    }
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let server = Server::start();
        apply_text(&server, &file.display().to_string(), &text);
        let robot = server.object("robots", "robot-001").expect("created");
        assert_ne!(robot["status"]["phase"], "Online", "no agent yet: {robot}");
        let token = server.join_token();
        let dir = tempfile::tempdir().unwrap();
        let _agent = Agent::start(
            &server.agent_base,
            &token,
            "robot-001",
            "",
            &dir.path().join("robot"),
            &[],
        );
        robot_online(&server, "robot-001");
        let robot = server.object("robots", "robot-001").unwrap();
        let doc = k8s4r::api::decode_all(&text).remove(0).unwrap().object;
        let want = serde_json::to_value(&doc).unwrap();
        for (k, v) in want["spec"]["labels"].as_object().unwrap() {
            assert_eq!(
                &robot["spec"]["labels"][k],
                v,
                "{}: label {k} kept: {robot}",
                file.display()
            );
        }
    }
}

/// A finished task's directory (and logs) stays while its Job exists; once
/// the Job is deleted, the group's directory is removed `--gc-after` later,
/// so a robot running a new Job every minute does not fill its flash.
#[test]
fn a_departed_groups_directory_is_removed_after_gc_after() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("robot-gc");
    let (server, agent) = robot_at("robot-gc", "demo=true", &data, &["--gc-after", "1s"]);
    let job = json!({
        "apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job",
        "metadata": {"name": "gc", "namespace": "default"},
        "spec": {"type": "batch", "taskGroups": [{"name": "g", "tasks": [{"name": "t", "driver": "exec",
            "config": {"execConfig": {"command": "/bin/sh", "args": ["-c", "echo bye"]}}}]}]}
    });
    assert_eq!(server.send_json("POST", JOBS, &job).status, 201);
    wait_for("the Job completed", Duration::from_secs(30), || {
        (job_state(&server, "gc").as_deref() == Some("completed")).then_some(())
    });
    let group_dir = data.join("alloc/gc-g");
    let log = group_dir.join("r0/t/logs/stdout");
    // Well past --gc-after: kept, because the Job still exists.
    wait_for("a few agent passes", Duration::from_secs(30), || {
        agent.log_text().contains("gc-g: all tasks ended").then_some(())
    });
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "bye\n");
    let r = server.request("DELETE", &format!("{JOBS}/gc"), "", None, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while group_dir.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the group's directory is still there:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The agent says so right after removing it: wait for the line, a
    // busy machine may schedule the test between the two.
    wait_for("the removal logged", Duration::from_secs(10), || {
        agent
            .log_text()
            .contains("gc-g: left this robot: its directory was removed")
            .then_some(())
    });
}

/// More finished tasks than the server takes in one report
/// (`--max-status-updates 4`, 12 tasks ending together): the agent sends
/// them in batches, every status arrives, the Job succeeds.
#[test]
fn statuses_beyond_the_servers_per_report_cap_arrive_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let (server, agent) = robot_with(
        &["--max-status-updates", "4"],
        "robot-batches",
        "demo=true",
        &dir.path().join("r"),
        &[],
    );
    let job = json!({
        "apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job",
        "metadata": {"name": "many", "namespace": "default"},
        "spec": {"type": "batch", "robotSelector": {"demo": "true"}, "taskGroups": [{
            "name": "g", "count": 12,
            "tasks": [{"name": "t", "driver": "exec", "config": {"execConfig": {"command": "/bin/true"}}}]
        }]}
    });
    assert_eq!(server.send_json("POST", JOBS, &job).status, 201);
    wait_job(&server, "many", "completed", &agent);
    // "answered 413", not "413": a pid such as 16413 is in the log too.
    assert!(!agent.log_text().contains("answered 413"), "{}", agent.log_text());
}

/// A robot that forbids root tasks (`--allow-root-tasks false`) given a
/// task with no `user` (its agent is root): the task fails, its status and
/// a Warning event on it say why and name the flag; nothing ran.
#[test]
fn a_root_task_on_a_robot_that_forbids_them_fails_with_a_status_and_an_event() {
    if !common::standalone::is_root() {
        eprintln!("SKIP: the policy concerns a root agent");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let (server, agent) = robot_at(
        "robot-strict",
        "demo=true",
        &dir.path().join("r"),
        &["--allow-root-tasks", "false"],
    );
    let job = json!({
        "apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job",
        "metadata": {"name": "asroot", "namespace": "default"},
        "spec": {"type": "batch", "robotSelector": {"demo": "true"}, "taskGroups": [{
            "name": "g",
            "tasks": [{"name": "t", "driver": "exec", "config": {"execConfig": {
                "command": "/bin/sh", "args": ["-c", format!("touch {}", marker.display())]}}}]
        }]}
    });
    assert_eq!(server.send_json("POST", JOBS, &job).status, 201);
    wait_job(&server, "asroot", "failed", &agent);
    let t = task(&server, "asroot-g-r0-t").unwrap();
    let message = t["status"]["message"].as_str().unwrap_or_default().to_string();
    assert!(
        message.contains("refusing to run as root") && message.contains("--allow-root-tasks"),
        "{t}"
    );
    let events = wait_for("the Failed event", Duration::from_secs(30), || {
        let events = server.events_of("Task", "asroot-g-r0-t");
        events.iter().any(|(reason, _, _)| reason == "Failed").then_some(events)
    });
    assert!(
        events.iter().any(|(_, m, _)| m.contains("refusing to run as root")),
        "{events:?}"
    );
    assert!(!marker.exists(), "the task ran");
}

/// A robot started with `--require-artifact-checksums` given a task whose
/// http artifact has no checksum: the task fails before anything is
/// downloaded, its status and a Warning event name the artifact and the
/// flag.
#[test]
fn an_unverified_artifact_on_a_robot_that_requires_checksums_fails_before_any_download() {
    let (port, requests) = common::serve_recording(b"#!/bin/sh\necho ran\n");
    let dir = tempfile::tempdir().unwrap();
    let (server, agent) = robot_at(
        "robot-verify",
        "demo=true",
        &dir.path().join("r"),
        &["--require-artifact-checksums"],
    );
    let url = format!("http://127.0.0.1:{port}/tool.sh");
    let job = json!({
        "apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job",
        "metadata": {"name": "unverified", "namespace": "default"},
        "spec": {"type": "batch", "robotSelector": {"demo": "true"}, "taskGroups": [{
            "name": "g",
            "tasks": [{"name": "t", "driver": "exec", "artifacts": [{"getterSource": url}],
                "config": {"execConfig": {"command": "/bin/sh", "args": ["local/tool.sh"]}}}]
        }]}
    });
    assert_eq!(server.send_json("POST", JOBS, &job).status, 201);
    wait_job(&server, "unverified", "failed", &agent);
    let t = task(&server, "unverified-g-r0-t").unwrap();
    let message = t["status"]["message"].as_str().unwrap_or_default().to_string();
    assert!(
        message.contains(&format!(
            "artifact {url} (artifacts[0]): plain http without getterOptions.checksum"
        )) && message.contains("--require-artifact-checksums"),
        "{t}"
    );
    let events = wait_for("the Failed event", Duration::from_secs(30), || {
        let events = server.events_of("Task", "unverified-g-r0-t");
        events.iter().any(|(reason, _, _)| reason == "Failed").then_some(events)
    });
    assert!(
        events
            .iter()
            .any(|(_, m, _)| m.contains("--require-artifact-checksums")),
        "{events:?}"
    );
    assert_eq!(
        *requests.lock().unwrap(),
        Vec::<String>::new(),
        "something was downloaded"
    );
}
