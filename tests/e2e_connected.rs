//! The whole system on real parts: the control plane on SQLite, a connected
//! agent (register, long-poll, outbox), real processes, real Envoy.

mod common;
mod envoy_fixtures;
mod server_util;

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
    let server = Server::start();
    let token = server.join_token();
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&server.base, &token, name, "demo=true", &dir.path().join(name), &[]);
    robot_online(&server, name);
    (dir, server, agent)
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
    let out = Command::new(server_util::server_bin())
        .args(["logs", "demo-hello-r0-fetch", "--tail", "1", "--server", &server.base])
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
    let port = envoy_fixtures::free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let mut server = Server::start_with(&["--listen", &listen]);
    let token = server.join_token();
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let mut agent = Agent::start(
        &server.base,
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
    let outbox = agent.data.join("outbox.json");
    wait_for("completed status queued in the outbox", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&outbox).ok()?;
        text.contains("\"completed\"").then_some(())
    });
    // ... and even the agent dies before it could deliver it.
    agent.kill9();
    agent.spawn();

    // Same address, same data: the server comes back.
    server.restart();
    assert_eq!(server.base, format!("http://{listen}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let t = loop {
        let t = task(&server, task_name);
        if let Some(t) = t.as_ref().filter(|t| t["status"]["state"] == "completed") {
            break t.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "completed status not delivered within 60s\ntask: {t:?}\noutbox: {}\nagent log:\n{}",
            std::fs::read_to_string(&outbox).unwrap_or_default(),
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(t["status"]["exitCode"], 0, "{t}");
    assert_eq!(job_state(&server, "gated").as_deref(), Some("completed"));
    assert!(pid > 1);
    assert_eq!(
        t["status"]["restartCount"], 0,
        "the task ran once, never restarted: {t}"
    );
    wait_for("outbox drained", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&outbox).ok()?;
        (!text.contains("\"completed\"")).then_some(())
    });
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
    let server = Server::start_with(&["--poll-interval", "1s", "--offline-after", "2s"]);
    let token = server.join_token();
    let dir = tempfile::tempdir().unwrap();
    let mut agents = ["robot-a", "robot-b"].map(|name| {
        (
            name,
            Agent::start(&server.base, &token, name, "fleet=test", &dir.path().join(name), &[]),
        )
    });
    robot_online(&server, "robot-a");
    robot_online(&server, "robot-b");
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
    let running_on = |server: &Server| {
        let t = task(server, name)?;
        if t["status"]["state"] != "running" {
            return None;
        }
        Some((
            t["spec"]["targetRobot"].as_str()?.to_string(),
            t["status"]["pid"].as_i64()?,
        ))
    };
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
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
}

impl Netns {
    fn create() -> Option<Netns> {
        let root = rustix::process::geteuid().is_root();
        let ip = Command::new("ip")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !(root && ip) {
            eprintln!("SKIP: the network-cut test needs root and iproute2 (make tools)");
            return None;
        }
        let id = std::process::id() % 200 + 20;
        let n = Netns {
            name: format!("k8s4r-cut-{}", std::process::id()),
            host_if: format!("k4h{}", std::process::id()),
            host_ip: format!("10.253.{id}.1"),
        };
        let robot_if = format!("k4r{}", std::process::id());
        let robot_ip = format!("10.253.{id}.2/30");
        let host_cidr = format!("{}/30", n.host_ip);
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &n.name],
            vec!["link", "add", &n.host_if, "type", "veth", "peer", "name", &robot_if],
            vec!["link", "set", &robot_if, "netns", &n.name],
            vec!["addr", "add", &host_cidr, "dev", &n.host_if],
            vec!["link", "set", &n.host_if, "up"],
            vec!["-n", &n.name, "addr", "add", &robot_ip, "dev", &robot_if],
            vec!["-n", &n.name, "link", "set", &robot_if, "up"],
            vec!["-n", &n.name, "link", "set", "lo", "up"],
        ];
        for step in steps {
            let ok = Command::new("ip").args(&step).status().is_ok_and(|s| s.success());
            if !ok {
                eprintln!(
                    "SKIP: `ip {}` failed: network namespaces are not available here",
                    step.join(" ")
                );
                return None;
            }
        }
        Some(n)
    }

    fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        let ok = Command::new("ip")
            .args(["link", "set", &self.host_if, state])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip link set {} {state}", self.host_if);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Processes whose command line is exactly `cmd` (e.g. "sleep 300").
fn count_procs(cmd: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").trim() == cmd)
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
    let Some(net) = Netns::create() else { return };
    let listen = format!("{}:0", net.host_ip);
    let server = Server::start_with(&["--listen", &listen, "--poll-interval", "1s", "--offline-after", "2s"]);
    let token = server.join_token();
    let dir = tempfile::tempdir().unwrap();
    let _agent = Agent::start_in_netns(
        &net.name,
        &server.base,
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
    wait_for("the robot Offline", Duration::from_secs(30), || {
        (server.object("robots", "robot-wifi")?["status"]["phase"] == "Offline").then_some(())
    });
    wait_for("the default-policy task Lost", Duration::from_secs(30), || {
        let t = task(&server, "move-g-r0-walk")?;
        (t["metadata"]["annotations"]["robot.k8s4r.io/reschedules"] == "1").then_some(())
    });
    assert!(pid_alive(keep_pid), "the cut-off robot keeps its tasks running");
    assert_eq!((count_procs("sleep 301"), count_procs("sleep 302")), (1, 1));

    net.link(true);
    robot_online(&server, "robot-wifi");
    wait_for(
        "both tasks running again in the server's view",
        Duration::from_secs(30),
        || {
            (running_pid(&server, "keep-g-r0-walk")? == keep_pid).then_some(())?;
            running_pid(&server, "move-g-r0-walk")
        },
    );
    assert!(pid_alive(keep_pid), "replace: false keeps the very same process");
    wait_for("one process per task", Duration::from_secs(30), || {
        (count_procs("sleep 301") == 1 && count_procs("sleep 302") == 1).then_some(())
    });
}

/// Pid of unit `unit` as the agent persisted it.
fn unit_pid(data: &Path, unit: &str) -> Option<i64> {
    let state: Value = serde_json::from_slice(&std::fs::read(data.join("state.json")).ok()?).ok()?;
    state["units"][unit]["pid"].as_i64()
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
    let r = server.request(
        "PATCH",
        &format!("{JOBS}/live"),
        "application/merge-patch+json",
        Some(patch.to_string().as_bytes()),
        &[],
    );
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
    assert_eq!(count_procs("sleep 303"), 2, "no duplicate started");
}

/// The examples (and the original implementation's runnable manifest) on a
/// live robot reach their expected final states: batch jobs complete, the
/// service job runs (through its Envoy) until deleted.
#[test]
fn examples_reach_their_expected_states_on_a_live_robot() {
    if !have_envoy() {
        return;
    }
    // The examples select robots by these labels; quickstart selects any.
    let (_dir, server, _agent) = server_and_robot("robot-ex");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![
        (root.join("examples/quickstart.yaml"), "quickstart", "completed"),
        (root.join("examples/demo.yaml"), "demo", "completed"),
        (root.join("examples/network-proxy.yaml"), "network-demo", "running"),
    ];
    if let Some(shared) = common::shared_dir() {
        files.push((
            shared.join("compat/test-taskgroup-simple.yaml"),
            "test-taskgroup-simple",
            "completed",
        ));
    }
    for (file, _, _) in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for doc in k8s4r::api::decode_all(&text) {
            let obj = doc.unwrap().object;
            let plural = if obj.kind() == "Job" { "jobs" } else { "robots" };
            let body = serde_json::to_value(&obj).unwrap();
            let r = server.send_json(
                "POST",
                &format!("/apis/robot.k8s4r.io/v1alpha1/namespaces/default/{plural}"),
                &body,
            );
            assert_eq!(r.status, 201, "{}: {}", file.display(), r.body);
        }
    }
    for (file, job, want) in &files {
        wait_for(
            &format!("{job} ({}) {want}", file.display()),
            Duration::from_secs(60),
            || (job_state(&server, job).as_deref() == Some(*want)).then_some(()),
        );
    }
}

/// `disconnect.reconcile: keepOriginal` with two real robots: the robot
/// running a service task goes silent (agent kill -9; its task keeps
/// running), the task is placed on the other robot, which runs a second
/// copy. When the silent robot's agent comes back it keeps its copy (the
/// same process), the server moves the task back to it, and the other
/// robot is told to stop its copy: one process remains, the original.
#[test]
fn keep_original_keeps_the_returning_robots_process_and_stops_the_replacement() {
    let server = Server::start_with(&["--poll-interval", "1s", "--offline-after", "2s"]);
    let token = server.join_token();
    let dir = tempfile::tempdir().unwrap();
    let mut agents = ["robot-ko-a", "robot-ko-b"].map(|name| {
        (
            name,
            Agent::start(&server.base, &token, name, "fleet=ko", &dir.path().join(name), &[]),
        )
    });
    robot_online(&server, "robot-ko-a");
    robot_online(&server, "robot-ko-b");
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
    let running_on = |server: &Server| {
        let t = task(server, name)?;
        if t["status"]["state"] != "running" {
            return None;
        }
        Some((
            t["spec"]["targetRobot"].as_str()?.to_string(),
            t["status"]["pid"].as_i64()?,
        ))
    };
    let (first, first_pid) = wait_for("the task running", Duration::from_secs(30), || running_on(&server));
    let i = agents.iter().position(|(n, _)| *n == first).expect("one of ours");
    let other = agents[1 - i].0;
    agents[i].1.kill9();
    let (_, second_pid) = wait_for("a second copy on the other robot", Duration::from_secs(30), || {
        running_on(&server).filter(|(robot, _)| robot == other)
    });
    assert_ne!(first_pid, second_pid);
    assert!(pid_alive(first_pid), "the silent robot keeps its copy running");
    assert_eq!(count_procs("sleep 304"), 2, "both copies run while the robot is away");

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
    assert_eq!(count_procs("sleep 304"), 1, "exactly one copy survives");
    let t = task(&server, name).unwrap();
    assert!(
        t["metadata"]["annotations"]["robot.k8s4r.io/original-robot"].is_null(),
        "{t}"
    );
}
