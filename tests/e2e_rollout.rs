//! Staged rollouts on real parts: the control plane on SQLite and three
//! connected agents running a system job (once a service job), whose spec
//! changes reach the robots as the `update` block says (one at a time after
//! the previous is healthy; one canary, reverted when it fails; promoted,
//! paused, resumed and reverted by `k8s4r job`; a robot cut off during the
//! rollout, through a relay or in a network namespace whose link goes down,
//! ends on the settled version; a task added to or removed from the group
//! reaches the robots the same way, and goes back with a revert).

mod common;
mod link_util;
mod server_util;

use common::netns::Netns;
use common::{throughout, wait_for, ConnectedAgent as Agent};
use link_util::Relay;
use serde_json::{json, Value};
use server_util::Server;
use std::time::Duration;

const JOBS: &str = "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs";
const ROBOTS: [&str; 3] = ["r1", "r2", "r3"];
const T: Duration = Duration::from_secs(60);

/// How a robot's link to the server can be cut.
enum Link {
    /// Through a relay that ends its connections and refuses new ones.
    Relay,
    /// From inside a network namespace whose veth pair goes down: packets
    /// are lost, nothing is reset.
    Netns(Netns),
}

/// A link that is cut: `set(true)`, or whole again: `set(false)`.
enum Cut {
    Relay(Relay),
    Netns(Netns),
}

impl Cut {
    fn set(&self, cut: bool) {
        match self {
            Cut::Relay(r) => r.cut_for(if cut { Duration::from_secs(600) } else { Duration::ZERO }),
            Cut::Netns(n) => n.link(!cut),
        }
    }
}

/// A server polled every second, and three robots labelled fleet=r17
/// (robot `cut.0` reaching it over a link that can be cut), all Online.
fn fleet(dir: &std::path::Path, cut: Option<(&str, Link)>) -> (Server, Option<Cut>, Vec<Agent>) {
    // A robot in a namespace reaches the server at the host end of its pair.
    let listen = match &cut {
        Some((_, Link::Netns(n))) => Some(format!("{}:0", n.host_ip)),
        _ => None,
    };
    let mut args = vec!["--poll-interval", "1s", "--offline-after", "2s"];
    if let Some(l) = &listen {
        args.extend(["--listen", l, "--agent-listen", l]);
    }
    let server = Server::start_with(&args);
    let token = server.join_token();
    let (behind, cut) = match cut {
        None => (None, None),
        Some((name, Link::Relay)) => (Some(name), Some(Cut::Relay(Relay::start(&server.agent_base)))),
        Some((name, Link::Netns(n))) => (Some(name), Some(Cut::Netns(n))),
    };
    let agents = ROBOTS
        .iter()
        .map(|name| {
            let data = dir.join(name);
            match (&cut, behind == Some(*name)) {
                (Some(Cut::Relay(r)), true) => Agent::start(&r.base, &token, name, "fleet=r17", &data, &[]),
                (Some(Cut::Netns(n)), true) => {
                    Agent::start_in_netns(&n.name, &server.agent_base, &token, name, "fleet=r17", &data)
                }
                _ => Agent::start(&server.agent_base, &token, name, "fleet=r17", &data, &[]),
            }
        })
        .collect();
    for name in ROBOTS {
        wait_for(&format!("robot {name} Online"), T, || {
            (phase(&server, name)? == "Online").then_some(())
        });
    }
    (server, cut, agents)
}

fn phase(server: &Server, robot: &str) -> Option<String> {
    server.object("robots", robot)?["status"]["phase"]
        .as_str()
        .map(String::from)
}

/// The system job `app` at `version`: its task prints the version and
/// keeps running, or (`good: false`) exits 1.
fn app(version: u32, good: bool, update: Value) -> Value {
    let script = if good {
        format!("echo version {version} >> ran.log; exec sleep 600")
    } else {
        format!("echo version {version} >> ran.log; exit 1")
    };
    json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job", "metadata": {"name": "app"},
        "spec": {"type": "system", "robotSelector": {"fleet": "r17"}, "taskGroups": [{"name": "g",
            "update": update,
            "tasks": [{"name": "main", "driver": "exec", "env": {"V": version.to_string()},
                "config": {"execConfig": {"command": "/bin/sh", "args": ["-c", script]}}}]}]}})
}

/// `job` with a second task `side` in its group, which records its runs
/// in its own ran.log ("side") and keeps running, or (`good: false`)
/// exits 1.
fn with_side(mut job: Value, good: bool) -> Value {
    let tasks = &mut job["spec"]["taskGroups"][0]["tasks"];
    let mut side = tasks[0].clone();
    side["name"] = json!("side");
    side["config"]["execConfig"]["args"][1] = json!(if good {
        "echo side >> ran.log; exec sleep 600"
    } else {
        "echo side >> ran.log; exit 1"
    });
    tasks.as_array_mut().expect("tasks").push(side);
    job
}

fn task_name(robot: &str) -> String {
    format!("app-g-main.{robot}")
}

fn side_name(robot: &str) -> String {
    format!("app-g-side.{robot}")
}

/// The state and process id a robot reports for its `side` task.
fn side(server: &Server, robot: &str) -> Option<(String, i64)> {
    let t = server.object("tasks", &side_name(robot))?;
    Some((t["status"]["state"].as_str()?.to_string(), t["status"]["pid"].as_i64()?))
}

fn sides_running(server: &Server) -> Option<Vec<i64>> {
    ROBOTS
        .iter()
        .map(|r| side(server, r).filter(|(s, _)| s == "running").map(|(_, pid)| pid))
        .collect()
}

/// Change the Job's spec to `job`'s (a new version). The write names the
/// version it read: one that races the controller's status write is
/// refused (409) and made again from a fresh read.
fn put(server: &Server, job: &Value) {
    wait_for("the Job's spec written", T, || {
        let mut cur = server.object("jobs", "app").expect("job app");
        cur["spec"] = job["spec"].clone();
        let r = server.send_json("PUT", &format!("{JOBS}/app"), &cur);
        assert!(r.status == 200 || r.status == 409, "{}", r.body);
        (r.status == 200).then_some(())
    });
}

/// The version a robot's task spec is at (its V), and its state.
fn on(server: &Server, robot: &str) -> Option<(String, String)> {
    let t = server.object("tasks", &task_name(robot))?;
    Some((
        t["spec"]["env"]["V"].as_str()?.to_string(),
        t["status"]["state"].as_str()?.to_string(),
    ))
}

fn all_running(server: &Server, version: &str) -> Option<()> {
    ROBOTS
        .iter()
        .all(|r| on(server, r) == Some((version.into(), "running".into())))
        .then_some(())
}

/// Wait until every robot runs `version`; on timeout the panic shows the
/// tasks and the Job's events.
fn wait_running(server: &Server, version: &str) {
    let deadline = std::time::Instant::now() + T;
    while all_running(server, version).is_none() {
        if std::time::Instant::now() >= deadline {
            panic!(
                "version {version} is not running on every robot:\n{:#}\n{:#}\nevents: {:#}",
                server.list("tasks", ""),
                server.list("rollouts", ""),
                server.get("/api/v1/namespaces/default/events").json()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rollout(server: &Server, version: u32) -> Option<Value> {
    server.object("rollouts", &format!("app-v{version}"))
}

fn wait_state(server: &Server, version: u32, state: &str) -> Value {
    wait_for(&format!("rollout app-v{version} {state}"), T, || {
        let r = rollout(server, version)?;
        (r["status"]["state"] == state).then_some(r)
    })
}

/// Job events with `reason`.
fn events(server: &Server, reason: &str) -> Vec<String> {
    server
        .events_of("Job", "app")
        .into_iter()
        .filter(|(r, _, _)| r == reason)
        .map(|(_, m, _)| m)
        .collect()
}

/// Wait until the Job has exactly `n` events with `reason` (events are
/// written behind the reconcile); their messages.
fn wait_events(server: &Server, reason: &str, n: usize) -> Vec<String> {
    wait_for(&format!("{n} {reason} events"), T, || {
        let e = events(server, reason);
        (e.len() == n).then_some(e)
    })
}

fn annotation(server: &Server, task: &str, key: &str) -> Option<i64> {
    let t = server.object("tasks", task)?;
    let v = t["metadata"]["annotations"][key].as_str()?;
    v.split(',').next()?.parse().ok()
}

fn k8s4r_job(server: &Server, args: &[&str]) -> String {
    let out = server
        .k8s4r_cmd()
        .arg("job")
        .args(args)
        .output()
        .expect("run k8s4r job");
    assert!(
        out.status.success(),
        "k8s4r job {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Robots whose task ran `version` (each run appends to ran.log in its
/// task directory, which outlives the runs).
fn ran(agents: &[Agent], version: u32) -> Vec<&'static str> {
    ran_task(agents, "main", &format!("version {version}"))
}

/// Robots whose task `task` wrote `line` to its ran.log.
fn ran_task(agents: &[Agent], task: &str, line: &str) -> Vec<&'static str> {
    ROBOTS
        .iter()
        .zip(agents)
        .filter(|(_, a)| {
            std::fs::read_to_string(a.data.join(format!("alloc/app-g/r0/{task}/ran.log")))
                .unwrap_or_default()
                .contains(line)
        })
        .map(|(r, _)| *r)
        .collect()
}

/// Each of `tasks` (one per robot) got the new version only once the one
/// before had run it for `min_healthy_ms` (both times are the server's
/// own).
fn assert_one_at_a_time(server: &Server, tasks: &[String], min_healthy_ms: i64) {
    let mut steps: Vec<(i64, i64)> = tasks
        .iter()
        .map(|t| {
            (
                annotation(server, t, "rollout.k8s4r.io/updated-at")
                    .unwrap_or_else(|| panic!("{t} has no updated-at: {:#}", server.list("tasks", ""))),
                annotation(server, t, "rollout.k8s4r.io/running-since").expect("running-since"),
            )
        })
        .collect();
    steps.sort();
    for w in steps.windows(2) {
        let ((_, since), (next_update, _)) = (w[0], w[1]);
        assert!(
            next_update >= since + min_healthy_ms,
            "a robot was updated {} ms after the previous one ran: {steps:?}",
            next_update - since
        );
    }
}

const FAST: &str = r#"{"minHealthyTime": "2s", "healthyDeadline": "20s", "progressDeadline": "40s",
    "stagger": "0s", "healthCheck": "taskStates"}"#;

fn update(extra: Value) -> Value {
    let mut u: Value = serde_json::from_str(FAST).unwrap();
    for (k, v) in extra.as_object().unwrap() {
        u[k] = v.clone();
    }
    u
}

fn start_v1(server: &Server, u: &Value) {
    start(server, &app(1, true, u.clone()));
}

/// Create `job` (version 1) and wait until it runs everywhere.
fn start(server: &Server, job: &Value) {
    let r = server.send_json("POST", JOBS, job);
    assert_eq!(r.status, 201, "{}", r.body);
    wait_running(server, "1");
    wait_state(server, 1, "Succeeded");
}

#[test]
fn a_good_version_rolls_one_robot_at_a_time_each_after_the_previous_is_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _, agents) = fleet(dir.path(), None);
    let u = update(json!({"maxParallel": 1}));
    start_v1(&server, &u);

    put(&server, &app(2, true, u));
    let done = wait_state(&server, 2, "Succeeded");
    wait_running(&server, "2");
    assert_eq!(done["status"]["progress"], "3/3", "{done}");
    assert_eq!(done["status"]["healthy"], 3, "{done}");
    assert_eq!(ran(&agents, 2).len(), 3);

    assert_one_at_a_time(&server, &ROBOTS.map(task_name), 2000);
    wait_events(&server, "Updated", 3);
    wait_events(&server, "RolloutSucceeded", 1);

    let history = k8s4r_job(&server, &["history", "app"]);
    assert_eq!(
        history.lines().filter(|l| l.contains("Succeeded")).count(),
        2,
        "{history}"
    );
    if server_util::have_kubectl() {
        let table = server.kubectl_ok(&["get", "rollouts"]);
        let head = table
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>();
        assert_eq!(
            head,
            [
                "NAME",
                "JOB",
                "VERSION",
                "STATE",
                "CANARIES",
                "HEALTHY",
                "UNHEALTHY",
                "LOCKED",
                "PROGRESS",
                "AGE"
            ],
            "{table}"
        );
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("app-v2") && l.contains("Succeeded") && l.contains("3/3")),
            "{table}"
        );
    }
}

#[test]
fn a_bad_canary_with_auto_revert_runs_on_one_robot_only_and_is_reverted() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _, agents) = fleet(dir.path(), None);
    let u = update(json!({"canary": 1, "autoRevert": true, "healthyDeadline": "8s"}));
    start_v1(&server, &u);

    put(&server, &app(2, false, u));
    let failed = wait_state(&server, 2, "Failed");
    wait_running(&server, "1");
    assert_eq!(ran(&agents, 2).len(), 1, "only the canary ran version 2");
    let touched: Vec<&str> = ROBOTS
        .iter()
        .copied()
        .filter(|r| annotation(&server, &task_name(r), "rollout.k8s4r.io/updated-at").is_some())
        .collect();
    assert_eq!(touched.len(), 1, "only the canary's spec changed: {touched:?}");
    wait_events(&server, "CanaryPlaced", 1);
    wait_events(&server, "Reverted", 1);
    let why = wait_events(&server, "RolloutFailed", 1);
    assert!(why[0].contains("reverting to version 1"), "{why:?}");
    assert!(
        failed["status"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{failed}"
    );
    // Settled: nobody gets version 2 afterwards.
    throughout("the others stay on version 1", Duration::from_secs(2), || {
        all_running(&server, "1").ok_or_else(|| "a robot left version 1".to_string())
    });
}

#[test]
fn canary_promote_pause_resume_and_revert_by_command() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _, _agents) = fleet(dir.path(), None);
    let u = update(json!({"canary": 1, "maxParallel": 1, "minHealthyTime": "1s"}));
    start_v1(&server, &u);

    put(&server, &app(2, true, u));
    wait_state(&server, 2, "WaitingForPromotion");
    let on_two = || {
        ROBOTS
            .iter()
            .filter(|r| on(&server, r).is_some_and(|(v, _)| v == "2"))
            .count()
    };
    throughout(
        "the canary alone waits for promotion",
        Duration::from_millis(1500),
        || match on_two() {
            1 => Ok(()),
            n => Err(format!("{n} robots on version 2")),
        },
    );
    k8s4r_job(&server, &["pause", "app"]);
    k8s4r_job(&server, &["promote", "app"]);
    wait_state(&server, 2, "Paused");
    throughout(
        "paused: no further robot",
        Duration::from_millis(1500),
        || match on_two() {
            1 => Ok(()),
            n => Err(format!("{n} robots on version 2")),
        },
    );
    k8s4r_job(&server, &["resume", "app"]);
    wait_state(&server, 2, "Succeeded");
    wait_running(&server, "2");
    wait_events(&server, "Promoted", 1);

    let said = k8s4r_job(&server, &["revert", "app"]);
    assert!(said.contains("reverting to version 1"), "{said}");
    let v3 = wait_state(&server, 3, "Succeeded");
    assert_eq!(v3["spec"]["revertOf"], 1, "{v3}");
    wait_running(&server, "1");
    let history = k8s4r_job(&server, &["history", "app"]);
    assert!(history.contains("revert to version 1"), "{history}");
    assert_eq!(history.lines().count(), 4, "{history}");
}

/// r3 is cut off by `link` during a good rollout and again during a bad
/// one; back, it runs the version each settled on.
fn cut_off_during_rollouts(link: Link) {
    let dir = tempfile::tempdir().unwrap();
    let (server, cut, agents) = fleet(dir.path(), Some(("r3", link)));
    let cut = cut.unwrap();
    let u = update(json!({"maxParallel": 1, "minHealthyTime": "1s"}));
    start_v1(&server, &u);

    // r3 is cut off: a good version goes through without it, and reaches
    // it when it is back.
    cut.set(true);
    wait_for("r3 Offline", T, || (phase(&server, "r3")? == "Offline").then_some(()));
    put(&server, &app(2, true, u.clone()));
    let done = wait_state(&server, 2, "Succeeded");
    assert_eq!(done["status"]["pending"], 1, "{done}");
    cut.set(false);
    wait_running(&server, "2");

    // Cut off again: a bad version fails on its canary and is reverted;
    // back, r3 runs the settled version 2, never the abandoned 3.
    cut.set(true);
    wait_for("r3 Offline again", T, || {
        (phase(&server, "r3")? == "Offline").then_some(())
    });
    let bad = update(json!({"canary": 1, "autoRevert": true, "healthyDeadline": "8s"}));
    put(&server, &app(3, false, bad));
    wait_state(&server, 3, "Failed");
    cut.set(false);
    wait_for("r3 Online", T, || (phase(&server, "r3")? == "Online").then_some(()));
    wait_running(&server, "2");
    let ran3 = ran(&agents, 3);
    assert_eq!(ran3.len(), 1, "only the canary ran version 3: {ran3:?}");
    assert_ne!(ran3[0], "r3");
}

#[test]
fn a_robot_cut_off_during_rollouts_ends_on_the_settled_version() {
    cut_off_during_rollouts(Link::Relay);
}

/// The same with the robot in a network namespace whose link goes down
/// (skipped without root and iproute2).
#[test]
fn a_robot_cut_off_by_a_network_namespace_during_rollouts_ends_on_the_settled_version() {
    let Some(net) = Netns::create("k8s4r-roll", 252) else {
        return;
    };
    cut_off_during_rollouts(Link::Netns(net));
}

#[test]
fn a_canary_cut_off_reverts_itself_and_the_server_then_fails_the_rollout() {
    let dir = tempfile::tempdir().unwrap();
    let (server, cut, agents) = fleet(dir.path(), Some(("r1", Link::Relay)));
    let cut = cut.unwrap();
    // progressDeadline far off: the rollout must fail on the robot's word
    // once it is back, and a loaded machine (the CI runs this file's tests
    // side by side) once stretched cut, revert and the agent's reconnection
    // backoff past the default 40 s.
    let u = update(
        json!({"canary": 1, "autoRevert": true, "minHealthyTime": "5s", "healthyDeadline": "10s",
        "progressDeadline": "3m"}),
    );
    start_v1(&server, &u);

    // A version whose task starts, then fails after 1 s (and after its
    // restarts, well before healthyDeadline); r1 (the first robot) is its
    // canary and is cut off as soon as it runs it.
    let mut bad = app(2, false, u);
    bad["spec"]["taskGroups"][0]["tasks"][0]["config"]["execConfig"]["args"][1] =
        json!("echo version 2 >> ran.log; sleep 1; exit 1");
    put(&server, &bad);
    wait_for("r1 runs version 2", T, || ran(&agents, 2).contains(&"r1").then_some(()));
    cut.set(true);
    // Cut off, the robot goes back to version 1 on its own.
    let log = agents[0].data.join("alloc/app-g/r0/main/ran.log");
    wait_for("r1 back on version 1 while cut off", T, || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.trim_end().ends_with("version 1").then_some(())
    });
    assert_eq!(ran(&agents, 2), ["r1"]);
    // Back only after the server's own healthyDeadline for r1 passed: the
    // server must wait for the robot's word on the version (its task is
    // Lost meanwhile), not fail it on the deadline as soon as the robot
    // polls again, before its report.
    let updated = annotation(&server, &task_name("r1"), "rollout.k8s4r.io/updated-at").expect("updated-at");
    wait_for("the server's healthyDeadline for r1 passed", T, || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_millis();
        (now >= u128::try_from(updated).ok()? + 10_000).then_some(())
    });
    cut.set(false);
    let failed = wait_state(&server, 2, "Failed");
    let why = failed["status"]["message"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("went back to the previous version"), "{failed}");
    wait_running(&server, "1");
    assert_eq!(ran(&agents, 2), ["r1"], "the others never ran version 2");
}

#[test]
fn a_locked_robot_is_waited_for_and_overridden_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _, agents) = fleet(dir.path(), None);
    let u = update(json!({"maxParallel": 1, "minHealthyTime": "1s", "lockDeadline": "5m"}));
    start_v1(&server, &u);
    let lock = |i: usize| agents[i].data.join("alloc/app-g/r0/main/k8s4r-update.lock");

    // r2 is mid-mission: its task holds the update lock.
    std::fs::write(lock(1), b"mission 7").unwrap();
    put(&server, &app(2, true, u.clone()));
    wait_for("the rollout waiting for locked r2", T, || {
        let r = rollout(&server, 2)?;
        (r["status"]["locked"] == 1).then_some(())
    });
    throughout("r2 keeps version 1 and r3 waits", Duration::from_secs(2), || {
        let r = rollout(&server, 2).ok_or("no rollout")?;
        if ran(&agents, 2).contains(&"r2") || on(&server, "r3").is_some_and(|(v, _)| v == "2") {
            return Err(format!("updated past the lock: {r}"));
        }
        (r["status"]["locked"] == 1 && r["status"]["state"] == "Progressing")
            .then_some(())
            .ok_or(format!("{r}"))
    });
    assert_eq!(ran(&agents, 2), ["r1"]);
    std::fs::remove_file(lock(1)).unwrap();
    wait_state(&server, 2, "Succeeded");
    wait_running(&server, "2");
    // The server's record says running before the new process has
    // written its line (it reports on start): wait for the line.
    wait_for("version 2 ran on every robot", T, || {
        (ran(&agents, 2).len() == 3).then_some(())
    });

    // A lock held past lockDeadline is overridden.
    std::fs::write(lock(2), b"mission 8").unwrap();
    let short = update(json!({"maxParallel": 1, "minHealthyTime": "1s", "lockDeadline": "3s"}));
    put(&server, &app(3, true, short));
    wait_state(&server, 3, "Succeeded");
    wait_running(&server, "3");
    wait_for("version 3 ran on the locked r3", T, || {
        ran(&agents, 3).contains(&"r3").then_some(())
    });
    wait_events(&server, "LockOverridden", 1);
}

#[test]
fn an_added_task_rolls_one_robot_at_a_time_each_after_the_previous_is_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _, agents) = fleet(dir.path(), None);
    let u = update(json!({"maxParallel": 1}));
    start_v1(&server, &u);

    // Version 2 keeps `main` as it is and adds `side`.
    put(&server, &with_side(app(1, true, u), true));
    let done = wait_state(&server, 2, "Succeeded");
    assert_eq!(done["status"]["progress"], "3/3", "{done}");
    wait_for("side running on every robot", T, || sides_running(&server));
    assert_eq!(ran_task(&agents, "side", "side").len(), 3);
    assert_one_at_a_time(&server, &ROBOTS.map(side_name), 2000);
    wait_events(&server, "Updated", 3);
    wait_running(&server, "1");
}

#[test]
fn a_bad_added_task_runs_on_the_canary_only_which_stops_it_itself_and_it_is_gone_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _, agents) = fleet(dir.path(), None);
    let u = update(json!({"canary": 1, "autoRevert": true}));
    start_v1(&server, &u);

    // Version 2 adds `side`, which exits 1 (after its 2 restarts, well
    // within healthyDeadline: the robot, not the server's deadline, decides).
    put(&server, &with_side(app(1, true, u), false));
    let failed = wait_state(&server, 2, "Failed");
    let why = failed["status"]["message"].as_str().unwrap_or_default();
    assert!(
        why.contains("went back to the previous version, which does not have this task"),
        "the canary stopped the added task itself: {failed}"
    );
    wait_events(&server, "CanaryPlaced", 1);
    wait_events(&server, "Reverted", 1);
    wait_for("the added task gone from every robot", T, || {
        ROBOTS
            .iter()
            .all(|r| server.object("tasks", &side_name(r)).is_none())
            .then_some(())
    });
    assert_eq!(ran_task(&agents, "side", "side").len(), 1, "only the canary ran it");
    let touched: Vec<&str> = ROBOTS
        .iter()
        .copied()
        .filter(|r| annotation(&server, &task_name(r), "rollout.k8s4r.io/updated-at").is_some())
        .collect();
    assert_eq!(touched.len(), 1, "only the canary was updated: {touched:?}");
    wait_running(&server, "1");
    throughout(
        "nobody gets the added task afterwards",
        Duration::from_secs(2),
        || match ROBOTS.iter().find(|r| server.object("tasks", &side_name(r)).is_some()) {
            Some(r) => Err(format!("robot {r} has it")),
            None => Ok(()),
        },
    );
}

#[test]
fn a_removed_task_keeps_running_where_not_yet_updated_and_revert_brings_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _, _agents) = fleet(dir.path(), None);
    // minHealthyTime keeps the rollout at its first robot for the test.
    let u = update(
        json!({"maxParallel": 1, "minHealthyTime": "30s", "healthyDeadline": "60s",
        "progressDeadline": "2m"}),
    );
    start(&server, &with_side(app(1, true, u.clone()), true));
    let before = wait_for("side running on every robot", T, || sides_running(&server));

    // Version 2 removes `side`.
    put(&server, &app(1, true, u));
    let first = wait_for("one robot updated", T, || {
        let gone: Vec<usize> = (0..ROBOTS.len())
            .filter(|i| server.object("tasks", &side_name(ROBOTS[*i])).is_none())
            .collect();
        (gone.len() == 1).then(|| gone[0])
    });
    let alive = |pid: i64| std::path::Path::new(&format!("/proc/{pid}")).exists();
    for (i, r) in ROBOTS.iter().enumerate().filter(|(i, _)| *i != first) {
        assert_eq!(
            side(&server, r),
            Some(("running".to_string(), before[i])),
            "robot {r} not yet updated keeps its side task"
        );
        assert!(alive(before[i]), "robot {r}'s side process runs");
    }
    wait_for("the updated robot's agent stops its side task", T, || {
        (!alive(before[first])).then_some(())
    });
    assert_eq!(rollout(&server, 2).expect("v2")["status"]["state"], "Progressing");

    let said = k8s4r_job(&server, &["revert", "app"]);
    assert!(said.contains("reverting to version 1"), "{said}");
    wait_state(&server, 3, "Succeeded");
    let after = wait_for("side running again on every robot", T, || sides_running(&server));
    for i in 0..ROBOTS.len() {
        if i == first {
            assert_ne!(after[i], before[i], "{}: side started again", ROBOTS[i]);
        } else {
            assert_eq!(after[i], before[i], "{}: side left running", ROBOTS[i]);
        }
    }
    wait_running(&server, "1");
}

/// The same through a service job's replicas (one per robot: the
/// scheduler spreads them), named by replica index.
#[test]
fn a_task_added_to_a_service_job_rolls_one_replica_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _, _agents) = fleet(dir.path(), None);
    let mut job = app(1, true, update(json!({"maxParallel": 1})));
    job["spec"]["type"] = json!("service");
    job["spec"]["taskGroups"][0]["count"] = json!(3);
    let r = server.send_json("POST", JOBS, &job);
    assert_eq!(r.status, 201, "{}", r.body);
    let replicas = |task: &str| [0, 1, 2].map(|i| format!("app-g-r{i}-{task}"));
    let running = |task: &str| {
        replicas(task)
            .iter()
            .all(|t| {
                server
                    .object("tasks", t)
                    .is_some_and(|t| t["status"]["state"] == "running")
            })
            .then_some(())
    };
    wait_for("main running in every replica", T, || running("main"));
    wait_state(&server, 1, "Succeeded");

    put(&server, &with_side(job, true));
    let done = wait_state(&server, 2, "Succeeded");
    assert_eq!(done["status"]["progress"], "3/3", "{done}");
    wait_for("side running in every replica", T, || running("side"));
    assert_one_at_a_time(&server, &replicas("side"), 2000);
    let on: std::collections::BTreeSet<String> = replicas("side")
        .iter()
        .filter_map(|t| Some(server.object("tasks", t)?["spec"]["targetRobot"].as_str()?.to_string()))
        .collect();
    assert_eq!(on.len(), 3, "one replica per robot: {on:?}");
}

/// After a rollout failed (no autoRevert), a task deleted by hand comes
/// back at the version its replica is on: the base on a robot the rollout
/// did not reach, the new version on the canary it updated (a replica of
/// two tasks: one that remains shows the version).
#[test]
fn after_a_failed_rollout_a_deleted_task_comes_back_at_its_replicas_version() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _, _agents) = fleet(dir.path(), None);
    let u = update(json!({"canary": 1, "healthyDeadline": "4s"}));
    start(&server, &with_side(app(1, true, u.clone()), true));
    put(&server, &with_side(app(2, false, u), true));
    wait_state(&server, 2, "Failed");
    let canary: Vec<&str> = ROBOTS
        .iter()
        .copied()
        .filter(|r| on(&server, r).is_some_and(|(v, _)| v == "2"))
        .collect();
    assert_eq!(canary.len(), 1, "one canary on version 2");
    let other = ROBOTS.iter().copied().find(|r| *r != canary[0]).unwrap();
    for (name, version) in [(task_name(other), "1"), (side_name(canary[0]), "2")] {
        let uid = server.object("tasks", &name).unwrap()["metadata"]["uid"].clone();
        server.kubectl_ok(&["delete", "task", &name]);
        let back = wait_for(&format!("{name} re-created"), T, || {
            let t = server.object("tasks", &name)?;
            (t["metadata"]["uid"] != uid).then_some(t)
        });
        assert_eq!(back["spec"]["env"]["V"], version, "{name}: {back}");
    }
    wait_for("the re-created base task running", T, || {
        (on(&server, other) == Some(("1".into(), "running".into()))).then_some(())
    });
}
