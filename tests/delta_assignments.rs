//! Delta assignments on real parts: the server's long poll answers an
//! agent that asks `delta=1` with what changed since its revision (tasks
//! added or changed, names removed) and the digest of the complete set;
//! a real connected agent applies them, gets a one-task change on a robot
//! with many tasks in a small answer, and converges through the complete
//! set when the set it kept is not the server's. In the group form
//! (`groups=1`, what agents ask now) a TaskGroup's shared data travels once
//! per group, not in each of its tasks.

mod common;
mod link_util;
mod server_util;

use common::{wait_for, ConnectedAgent};
use k8s4r::api::assignment_set;
use link_util::{Exchange, Relay};
use serde_json::{json, Value};
use server_util::{Robot, Server};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const JOBS: &str = "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs";

/// A service Job of `count` tasks on robots labelled delta=true, each
/// sleeping with `marker` as its argument (so its processes can be counted).
fn job(name: &str, count: usize, marker: &str) -> Value {
    json!({
        "apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "service", "robotSelector": {"delta": "true"}, "taskGroups": group(count, marker)}
    })
}

fn group(count: usize, marker: &str) -> Value {
    json!([{"name": "g", "count": count,
        "tasks": [{"name": "t", "driver": "exec", "config": {"execConfig": {
            "command": "/bin/sleep", "args": [marker]}}}]}])
}

/// Scale Job `name` to `count` (the whole task group replaced).
fn scale(server: &Server, name: &str, count: usize, marker: &str) {
    let patch = json!({"spec": {"taskGroups": group(count, marker)}});
    let r = server.merge_patch(&format!("{JOBS}/{name}"), &patch);
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Tasks the server has placed on `robot`.
fn placed(server: &Server, robot: &str) -> usize {
    server.list("tasks", "")["items"].as_array().map_or(0, |items| {
        items.iter().filter(|t| t["spec"]["targetRobot"] == robot).count()
    })
}

fn names(tasks: &Value) -> Vec<String> {
    let mut n: Vec<String> = tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

/// A poll asking for deltas from `since`, without waiting.
fn delta_poll(robot: &mut Robot, since: u64, extra: &str) -> Value {
    let path = format!(
        "/agent/v1/robots/{}/assignments?since={since}&wait=0s&delta=1{extra}",
        robot.name
    );
    let r = robot.send("GET", &path, None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Poll from `since` as an agent does (applying each answer, moving on to
/// its revision) until the kept set has `want` tasks; every answer must be
/// a delta. The last revision and the answers that changed something.
fn follow(robot: &mut Robot, mut since: u64, kept: &mut BTreeMap<String, String>, want: usize) -> (u64, Vec<Value>) {
    let mut answers = Vec::new();
    wait_for(&format!("{want} tasks delivered"), Duration::from_secs(10), || {
        let a = delta_poll(robot, since, "");
        let revision = a["revision"].as_u64().unwrap();
        if revision != since {
            assert_eq!(a["delta"], true, "from {since}: {a}");
            apply(kept, &a);
            answers.push(a);
            since = revision;
        }
        (kept.len() == want).then_some(())
    });
    (since, answers)
}

/// Apply an answer to `kept` (name → version) as an agent would, and check
/// the server's digest against it.
fn apply(kept: &mut BTreeMap<String, String>, a: &Value) {
    if a["delta"] != true {
        kept.clear();
    }
    for n in a["removed"].as_array().into_iter().flatten() {
        kept.remove(n.as_str().unwrap());
    }
    for (n, v) in a["versions"].as_object().into_iter().flatten() {
        kept.insert(n.clone(), v.as_str().unwrap().to_string());
    }
    assert_eq!(
        names(&a["tasks"]).len(),
        a["versions"].as_object().map_or(0, |m| m.len())
    );
    let have = assignment_set::digest(kept.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    assert_eq!(a["digest"].as_str(), Some(have.as_str()), "digest of the kept set: {a}");
}

#[test]
fn the_poll_answers_with_what_changed_when_the_robot_asks_for_deltas() {
    let server = Server::start();
    let mut robot = Robot::register(&server, &server.join_token(), "r-delta", json!({"delta": "true"}));
    assert_eq!(server.send_json("POST", JOBS, &job("many", 20, "100001")).status, 201);
    wait_for("20 tasks placed", Duration::from_secs(30), || {
        (placed(&server, "r-delta") == 20).then_some(())
    });
    let mut kept = BTreeMap::new();
    let full = delta_poll(&mut robot, 0, "");
    assert!(full["delta"].is_null(), "since=0 gets the complete set: {full}");
    assert_eq!(names(&full["tasks"]).len(), 20);
    apply(&mut kept, &full);
    let r0 = full["revision"].as_u64().unwrap();

    // One more task: the answer carries it alone.
    scale(&server, "many", 21, "100001");
    wait_for("21 tasks placed", Duration::from_secs(30), || {
        (placed(&server, "r-delta") == 21).then_some(())
    });
    let (r1, answers) = follow(&mut robot, r0, &mut kept, 21);
    let sent: usize = answers.iter().map(|a| names(&a["tasks"]).len()).sum();
    assert_eq!(sent, 1, "only the new task travels: {answers:?}");

    // Nothing new: no tasks, no digest, unless asked (verify=1).
    let idle = delta_poll(&mut robot, r1, "");
    assert_eq!(
        (idle["revision"].as_u64(), idle["tasks"].as_array().map(Vec::len)),
        (Some(r1), Some(0))
    );
    assert!(idle["digest"].is_null(), "{idle}");
    let verify = delta_poll(&mut robot, r1, "&verify=1");
    assert_eq!(verify["tasks"].as_array().map(Vec::len), Some(0));
    apply(&mut kept, &verify);

    // Down to 18: three names removed, no task sent.
    scale(&server, "many", 18, "100001");
    wait_for("18 tasks placed", Duration::from_secs(30), || {
        (placed(&server, "r-delta") == 18).then_some(())
    });
    let (r2, answers) = follow(&mut robot, r1, &mut kept, 18);
    let sent: usize = answers.iter().map(|a| names(&a["tasks"]).len()).sum();
    let gone: usize = answers
        .iter()
        .map(|a| a["removed"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!((sent, gone), (0, 3), "{answers:?}");

    // A revision the server no longer remembers (it keeps the last two
    // delivered), or never delivered: the complete set, marked so.
    for since in [r0, r2 + 1_000_000] {
        let a = delta_poll(&mut robot, since, "");
        assert!(a["delta"].is_null(), "since={since}: {a}");
        assert_eq!(names(&a["tasks"]).len(), 18);
        let mut fresh = BTreeMap::new();
        apply(&mut fresh, &a);
        assert_eq!(fresh, kept);
    }
    // An agent that does not ask for deltas gets the complete set as before.
    robot.since = r1;
    let old = robot.poll("0s");
    assert_eq!(names(&old["tasks"]).len(), 18);
    assert!(old["delta"].is_null() && old["digest"].is_null() && old["versions"].is_null());
}

/// `sleep MARKER` processes under `data`.
fn sleepers(marker: &str, data: &Path) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").trim() == format!("/bin/sleep {marker}"))
                && std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(data))
        })
        .count()
}

fn running(server: &Server) -> usize {
    server.list("tasks", "")["items"].as_array().map_or(0, |items| {
        items.iter().filter(|t| t["status"]["state"] == "running").count()
    })
}

#[test]
fn a_real_agent_applies_deltas_and_recovers_from_a_set_that_is_not_the_servers() {
    const MARKER: &str = "100002";
    let server = Server::start_with(&["--poll-interval", "2s"]);
    let relay = Relay::start(&server.agent_base);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a");
    let mut agent = ConnectedAgent::start(&relay.base, &server.join_token(), "r-real", "delta=true", &data, &[]);
    assert_eq!(server.send_json("POST", JOBS, &job("many", 40, MARKER)).status, 201);
    wait_for("40 tasks running", Duration::from_secs(120), || {
        (running(&server) == 40 && sleepers(MARKER, &data) == 40).then_some(())
    });
    // The largest poll answer since `mark`, counting the poll held open
    // at the mark (the one a change answers).
    let largest = |mark: usize| {
        let ex: Vec<Exchange> = relay.exchanges();
        let from = ex[..mark].iter().rposition(|e| e.kind == "assignments").unwrap_or(mark);
        ex[from..]
            .iter()
            .filter(|e| e.kind == "assignments")
            .map(|e| e.down)
            .max()
            .unwrap_or(0)
    };
    let complete = largest(0);

    // One task added: a small answer, applied as a delta.
    let mark = relay.exchanges().len();
    scale(&server, "many", 41, MARKER);
    wait_for("41 tasks running", Duration::from_secs(60), || {
        (running(&server) == 41 && sleepers(MARKER, &data) == 41).then_some(())
    });
    let one = largest(mark);
    eprintln!("poll answers: the complete set of 40 tasks {complete} bytes, one task added {one} bytes");
    assert!(
        one < 3000 && one * 10 < complete,
        "the answer adding one task is {one} bytes, the complete set's {complete}"
    );
    assert!(
        agent
            .log_text()
            .contains("41 tasks (delta: 1 added or changed, 0 removed)"),
        "{}",
        agent.log_text()
    );

    // Three removed: their processes stop, the rest keep running.
    scale(&server, "many", 38, MARKER);
    wait_for("38 tasks left", Duration::from_secs(60), || {
        (placed(&server, "r-real") == 38 && sleepers(MARKER, &data) == 38).then_some(())
    });
    // The server may remove the three in one revision or in several: each
    // answer after the one that added a task is a delta that only removes,
    // three in all, ending at 38.
    let log = agent.log_text();
    let after = &log[log.find("41 tasks (delta: 1 added or changed, 0 removed)").unwrap()..];
    let deltas: Vec<(usize, usize)> = after
        .lines()
        .skip(1)
        .filter_map(|l| l.split("desired set at revision ").nth(1))
        .map(|l| {
            let tasks = l.split(": ").nth(1).and_then(|t| t.split(' ').next()).unwrap();
            let removed = l
                .strip_suffix(" removed)")
                .and_then(|l| l.split_once("(delta: 0 added or changed, "))
                .map(|(_, removed)| removed)
                .unwrap_or_else(|| panic!("not a delta that only removes: {l}"));
            (tasks.parse().unwrap(), removed.parse().unwrap())
        })
        .collect();
    assert_eq!(deltas.last().map(|d| d.0), Some(38), "{log}");
    assert_eq!(deltas.iter().map(|d| d.1).sum::<usize>(), 3, "{log}");

    // The kept set tampered while the agent is down: one task gone from it.
    agent.kill9();
    // The deltas since the last snapshot are in assignments.log: fold them in.
    k8s4r::agent::connected::desired::Kept::compact(&data).unwrap();
    let file = data.join("assignments.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let gone = state["tasks"][0]["metadata"]["name"].as_str().unwrap().to_string();
    state["tasks"].as_array_mut().unwrap().remove(0);
    state["versions"].as_object_mut().unwrap().remove(&gone);
    std::fs::write(&file, serde_json::to_vec(&state).unwrap()).unwrap();
    let log_before = agent.log_text().len();
    agent.spawn();
    wait_for("the complete set after the mismatch", Duration::from_secs(60), || {
        let log = agent.log_text();
        let new = &log[log_before..];
        (new.contains("is not the server's") && new.contains("38 tasks (complete set)")).then_some(())
    });
    wait_for("all 38 running again, once each", Duration::from_secs(60), || {
        (sleepers(MARKER, &data) == 38 && running(&server) == 38).then_some(())
    });

    // State lost altogether: the complete set. (An agent that starts with
    // no kept set runs nothing until the server answers, as before delta
    // assignments; then everything again, nothing twice.)
    agent.kill9();
    std::fs::remove_file(&file).unwrap();
    let _ = std::fs::remove_file(data.join("assignments.log"));
    let log_before = agent.log_text().len();
    agent.spawn();
    wait_for("the complete set after losing state", Duration::from_secs(60), || {
        agent.log_text()[log_before..]
            .contains("38 tasks (complete set)")
            .then_some(())
    });
    wait_for("all 38 running again", Duration::from_secs(60), || {
        (sleepers(MARKER, &data) == 38 && running(&server) == 38).then_some(())
    });
    common::throughout("38 sleepers, once each", Duration::from_secs(2), || {
        let n = sleepers(MARKER, &data);
        (n == 38).then_some(()).ok_or(format!("{n} sleepers"))
    });
}

/// A group of `count` sleepers (`sleep TASK`) with an init daemon
/// (`sleep daemon`): the daemon is the group's shared data.
fn daemon_group(count: usize, task: &str, daemon: &str) -> Value {
    json!([{"name": "g", "count": count,
        "initTasks": [{"name": "side", "daemon": true, "driver": "exec",
            "config": {"execConfig": {"command": "/bin/sleep", "args": [daemon]}}}],
        "tasks": [{"name": "t", "driver": "exec", "config": {"execConfig": {
            "command": "/bin/sleep", "args": [task]}}}]}])
}

/// Pids of `sleep MARKER` processes under `data`.
fn sleeper_pids(marker: &str, data: &Path) -> std::collections::BTreeSet<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").trim() == format!("/bin/sleep {marker}"))
                && std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(data))
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

#[test]
fn the_group_form_sends_a_groups_shared_data_once_and_the_robot_follows() {
    const TASK: &str = "100003";
    const OLD: &str = "100004";
    const NEW: &str = "100005";
    let server = Server::start_with(&["--poll-interval", "2s"]);

    // On the wire: the group's part once, its tasks without it.
    let mut robot = Robot::register(&server, &server.join_token(), "r-wire", json!({"wire": "true"}));
    let wire_job = json!({
        "apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job",
        "metadata": {"name": "wire", "namespace": "default"},
        "spec": {"type": "service", "robotSelector": {"wire": "true"}, "taskGroups": daemon_group(3, TASK, OLD)}
    });
    assert_eq!(server.send_json("POST", JOBS, &wire_job).status, 201);
    wait_for("3 tasks placed", Duration::from_secs(30), || {
        (placed(&server, "r-wire") == 3).then_some(())
    });
    let full = delta_poll(&mut robot, 0, "&groups=1");
    assert_eq!(full["groups"].as_object().map(|g| g.len()), Some(1), "{full}");
    let part = &full["groups"]["wire-g"];
    assert_eq!(
        (part["groupName"].as_str(), part["jobName"].as_str()),
        (Some("g"), Some("wire"))
    );
    assert_eq!(part["initTasks"][0]["config"]["execConfig"]["args"][0], OLD);
    for t in full["tasks"].as_array().unwrap() {
        assert!(
            t["spec"].get("initTasks").is_none() && t["spec"].get("jobName").is_none(),
            "{t}"
        );
        assert_eq!(t["spec"]["taskGroupName"], "wire-g");
    }
    let tasks: BTreeMap<&str, &str> = full["versions"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str().unwrap()))
        .collect();
    let groups: BTreeMap<&str, &str> = full["groupVersions"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
        .collect();
    assert_eq!(
        full["digest"].as_str(),
        Some(assignment_set::digest_with_groups(tasks.into_iter(), groups.into_iter()).as_str()),
        "the documented digest over tasks and groups"
    );

    // A real agent: the group's daemon changes, the tasks keep running.
    let relay = Relay::start(&server.agent_base);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a");
    let agent = ConnectedAgent::start(&relay.base, &server.join_token(), "r-group", "delta=true", &data, &[]);
    let body = json!({
        "apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job",
        "metadata": {"name": "grp", "namespace": "default"},
        "spec": {"type": "service", "robotSelector": {"delta": "true"}, "taskGroups": daemon_group(10, TASK, OLD)}
    });
    assert_eq!(server.send_json("POST", JOBS, &body).status, 201);
    wait_for("10 tasks and the daemon running", Duration::from_secs(120), || {
        (sleeper_pids(TASK, &data).len() == 10 && sleeper_pids(OLD, &data).len() == 1).then_some(())
    });
    let tasks_before = sleeper_pids(TASK, &data);
    let complete = relay
        .exchanges()
        .iter()
        .filter(|e| e.kind == "assignments")
        .map(|e| e.down)
        .max()
        .unwrap_or(0);
    let mark = relay.exchanges().len();
    let log_before = agent.log_text().len();
    let patch = json!({"spec": {"taskGroups": daemon_group(10, TASK, NEW)}});
    let r = server.merge_patch(&format!("{JOBS}/grp"), &patch);
    assert_eq!(r.status, 200, "{}", r.body);
    // The controller writes the group's Tasks one by one: an answer in
    // between carries the tasks already changed, with their own group
    // fields; the group's part travels once, when most have changed.
    wait_for("the group's new part", Duration::from_secs(60), || {
        agent.log_text()[log_before..]
            .contains("task group(s) changed")
            .then_some(())
    });
    wait_for("the new daemon in place of the old", Duration::from_secs(60), || {
        (sleeper_pids(NEW, &data).len() == 1 && sleeper_pids(OLD, &data).is_empty()).then_some(())
    });
    common::throughout("the group's part sent once", Duration::from_secs(3), || {
        let log = agent.log_text()[log_before..].to_string();
        let n = log.matches("task group(s) changed").count();
        (n == 1).then_some(()).ok_or(format!("{n} times: {log}"))
    });
    assert_eq!(sleeper_pids(TASK, &data), tasks_before, "the tasks kept running");
    let after: Vec<u64> = relay.exchanges()[mark..]
        .iter()
        .filter(|e| e.kind == "assignments")
        .map(|e| e.down)
        .collect();
    eprintln!(
        "poll answers: the complete set of 10 tasks {complete} bytes; after the group's change {after:?}; agent: {}",
        agent.log_text()[log_before..].trim()
    );
}

/// The task named `name`'s status on the server.
fn status_of(server: &Server, name: &str) -> Value {
    server
        .object("tasks", name)
        .map_or(Value::Null, |t| t["status"].clone())
}

/// A pass plans only the groups whose units moved or whose tasks changed,
/// and looks only at their statuses: what changes in a group whose tasks
/// did not (a check's result, a process killed and restarted) still
/// reaches the server, and the other group's processes are left alone.
#[test]
fn what_changes_in_a_settled_group_still_reaches_the_server() {
    const MARKER: &str = "100004";
    let server = Server::start_with(&["--poll-interval", "2s"]);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a");
    let _agent = ConnectedAgent::start(
        &server.agent_base,
        &server.join_token(),
        "r-settled",
        "delta=true",
        &data,
        &[],
    );
    let job = json!({
        "apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job",
        "metadata": {"name": "settled", "namespace": "default"},
        "spec": {"type": "service", "robotSelector": {"delta": "true"}, "taskGroups": [
            {"name": "quiet", "count": 3, "tasks": [{"name": "t", "driver": "exec",
                "restartPolicy": {"attempts": 3, "interval": "30m", "delay": "0s"},
                "config": {"execConfig": {"command": "/bin/sleep", "args": [MARKER]}}}]},
            {"name": "checked", "tasks": [{"name": "t", "driver": "exec",
                "services": [{"name": "s", "checks": [{"name": "ready", "type": "script", "command": "/bin/sh",
                    "args": ["-c", "test -e local/ready"], "interval": "100ms", "timeout": "1s"}]}],
                "config": {"execConfig": {"command": "/bin/sleep", "args": [MARKER]}}}]}
        ]}
    });
    assert_eq!(server.send_json("POST", JOBS, &job).status, 201);
    let checked = "settled-checked-r0-t";
    wait_for(
        "4 tasks running, the checked one unhealthy",
        Duration::from_secs(120),
        || {
            let unhealthy = status_of(&server, checked)["health"]
                .as_str()
                .is_some_and(|h| h.starts_with("unhealthy"));
            (running(&server) == 4 && sleepers(MARKER, &data) == 4 && unhealthy).then_some(())
        },
    );
    let before: Vec<u32> = sleeper_pids(MARKER, &data).into_iter().collect();

    // Its check passes: the health changes, nothing else does.
    std::fs::write(data.join("alloc/settled-checked/r0/t/local/ready"), "").unwrap();
    wait_for(
        "the checked task healthy on the server",
        Duration::from_secs(60),
        || (status_of(&server, checked)["health"] == "healthy").then_some(()),
    );

    // A quiet task's process killed: restarted, and the server hears it.
    let victim = "settled-quiet-r1-t";
    let pid = status_of(&server, victim)["pid"].as_i64().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    wait_for("the restart on the server", Duration::from_secs(60), || {
        let s = status_of(&server, victim);
        (s["restartCount"] == 1 && s["state"] == "running" && s["pid"].as_i64() != Some(pid)).then_some(())
    });
    // Every other process is the one it was.
    let now = sleeper_pids(MARKER, &data);
    let kept = before.iter().filter(|p| now.contains(p)).count();
    assert_eq!(kept, 3, "only the killed one is new: {before:?} -> {now:?}");
}
