#![cfg(feature = "server")]
//! Controllers, scheduler and agent API with simulated robots speaking the
//! agent API to the real server: registration and token isolation, the long
//! poll, status reports and the status cascade, placement rules, rolling
//! updates, and offline robots whose tasks are lost and rescheduled.

mod common;
mod server_util;

use serde_json::{json, Value};
use server_util::{wait_for, Robot, RobotSession, Server};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

fn jobs() -> &'static str {
    "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs"
}

fn job(name: &str, kind: &str, selector: Value, groups: Value) -> Value {
    json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job", "metadata": {"name": name},
           "spec": {"type": kind, "robotSelector": selector, "taskGroups": groups}})
}

fn group(name: &str, count: i32, port: Option<i64>) -> Value {
    let mut g = json!({"name": name, "count": count,
        "tasks": [{"name": "main", "driver": "exec", "config": {"execConfig": {"command": "/bin/sleep", "args": ["60"]}}}]});
    if let Some(p) = port {
        g["network"] =
            json!({"upstreams": [{"name": "db", "localPort": p, "upstream": "db.internal:5432", "tls": false}]});
    }
    g
}

fn create(s: &Server, v: &Value) {
    let r = s.send_json("POST", jobs(), v);
    assert_eq!(r.status, 201, "{}", r.body);
}

fn target(s: &Server, task: &str) -> Option<String> {
    s.object("tasks", task)?["spec"]["targetRobot"]
        .as_str()
        .map(str::to_string)
}

fn field(s: &Server, plural: &str, name: &str, path: &[&str]) -> Value {
    let mut v = s.object(plural, name).unwrap_or(Value::Null);
    for p in path {
        v = v.get(*p).cloned().unwrap_or(Value::Null);
    }
    v
}

#[test]
fn register_poll_report_round_trip() {
    let s = Server::start();
    // `k8s4r token create` prints the token as its last line.
    let out = s.k8s4r_cmd().args(["token", "create"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let join = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_string();
    assert!(join.starts_with("K8R1"), "{join}");

    // An agent from before the signed channel sends its join token: told
    // to upgrade.
    let old = s.send_json("POST", "/agent/v1/register", &json!({"joinToken": join, "name": "r1"}));
    assert_eq!(old.status, 400, "{}", old.body);
    assert!(old.body.contains("upgrade the agent"), "{}", old.body);
    let mut r1 = Robot::register(&s, &join, "r1", json!({"fleet": "a"}));
    let robot = s.object("robots", "r1").expect("register creates the Robot");
    assert_eq!(robot["status"]["phase"], "Online");
    assert_eq!(robot["spec"]["labels"]["fleet"], "a");
    assert_eq!(robot["status"]["deviceInfo"]["hostname"], "r1.local");

    let first = r1.poll("0s");
    assert_eq!(first["tasks"], json!([]));
    assert!(first["pollIntervalSeconds"].as_u64().unwrap() >= 1);

    // A long poll is answered as soon as a task is placed on the robot.
    let since = r1.since;
    let (status, reply, took) = std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let started = Instant::now();
            let r = r1.send(
                "GET",
                &format!("/agent/v1/robots/r1/assignments?since={since}&wait=25s"),
                None,
            );
            (r.status, r.json(), started.elapsed())
        });
        create(
            &s,
            &job("hello", "batch", json!({"fleet": "a"}), json!([group("g", 1, None)])),
        );
        waiter.join().unwrap()
    });
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(15), "long poll woke up after {took:?}");
    let tasks = reply["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{reply}");
    let task: k8s4r::api::Task = serde_json::from_value(tasks[0].clone()).expect("assignments carry API Tasks");
    assert_eq!(task.metadata.name, "hello-g-r0-main");
    assert_eq!(task.spec.target_robot.as_deref(), Some("r1"));
    assert_eq!(task.spec.job_name.as_deref(), Some("hello"));
    assert_eq!(task.spec.task_group_name.as_deref(), Some("hello-g"));
    assert!(reply["revision"].as_u64().unwrap() > since);

    // Status reports: applied once, duplicates acknowledged, cascade upward.
    let r = r1.report_seq("hello-g-r0-main", 1, json!({"state": "running", "pid": 42}));
    assert_eq!(r["results"][0]["outcome"], "applied");
    let r = r1.report_seq("hello-g-r0-main", 1, json!({"state": "failed"}));
    assert_eq!(r["results"][0]["outcome"], "duplicate", "same seq is not applied twice");
    assert_eq!(field(&s, "tasks", "hello-g-r0-main", &["status", "state"]), "running");
    wait_for("job running", T, || {
        (field(&s, "jobs", "hello", &["status", "state"]) == "running").then_some(())
    });
    assert_eq!(field(&s, "jobs", "hello", &["status", "runningTasks"]), 1);
    wait_for("group running", T, || {
        (field(&s, "taskgroups", "hello-g", &["status", "state"]) == "running").then_some(())
    });
    assert!(field(&s, "taskgroups", "hello-g", &["status", "startedAt"]).is_string());
    r1.report_seq("hello-g-r0-main", 2, json!({"state": "completed", "exitCode": 0}));
    wait_for("job completed", T, || {
        (field(&s, "jobs", "hello", &["status", "state"]) == "completed").then_some(())
    });
    assert_eq!(field(&s, "jobs", "hello", &["status", "succeededTasks"]), 1);
    wait_for("group completed", T, || {
        field(&s, "taskgroups", "hello-g", &["status", "completedAt"])
            .is_string()
            .then_some(())
    });
    let r = r1.report_seq("nope", 3, json!({"state": "running"}));
    assert_eq!(r["results"][0]["outcome"], "notFound");

    // The story is told as Events, for `kubectl describe`.
    let path = "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dhello-g-r0-main,involvedObject.kind%3DTask";
    let reasons = wait_for("task events", T, || {
        let v = s.get(path).json();
        let mut r: Vec<String> = v["items"]
            .as_array()?
            .iter()
            .map(|e| e["reason"].as_str().unwrap_or("").to_string())
            .collect();
        r.sort();
        (r.len() >= 3).then_some(r)
    });
    assert_eq!(reasons, ["Completed", "Scheduled", "Started"]);
    if server_util::have_kubectl() {
        let d = s.kubectl_ok(&["describe", "task", "hello-g-r0-main"]);
        assert!(d.contains("Scheduled") && d.contains("placed on robot r1"), "{d}");
        assert!(d.contains("Completed") && d.contains("exited with code 0"), "{d}");
    }
}

#[test]
fn robots_only_see_their_own_objects() {
    let s = Server::start();
    let join = s.join_token();
    let mut a = Robot::register(&s, &join, "ra", json!({"fleet": "x"}));
    let mut b = Robot::register(&s, &join, "rb", json!({"fleet": "y"}));
    create(
        &s,
        &job("only-a", "service", json!({"fleet": "x"}), json!([group("g", 1, None)])),
    );
    wait_for("placement on ra", T, || {
        (target(&s, "only-a-g-r0-main").as_deref() == Some("ra")).then_some(())
    });
    let path = "/agent/v1/robots/ra/assignments?since=0&wait=0s";
    assert_eq!(a.send("GET", path, None).status, 200);
    // Robot b's key does not verify as robot a's: refused, signed.
    let r = b.send("GET", path, None);
    assert_eq!(r.status, 401, "robot b may not read robot a's assignments");
    assert!(r.body.contains("bad signature"), "{}", r.body);
    assert_eq!(s.get(path).status, 401, "not signed");
    let body = json!({"updates": [{"task": "only-a-g-r0-main", "seq": 1, "status": {"state": "failed"}}]});
    let r = b.send("POST", "/agent/v1/robots/ra/status", Some(&body));
    assert_eq!(r.status, 401, "robot b may not write robot a's status");
    let r = b.report_seq("only-a-g-r0-main", 1, json!({"state": "failed"}));
    assert_eq!(
        r["results"][0]["outcome"], "notAssigned",
        "a task on another robot is not writable"
    );
    assert_ne!(field(&s, "tasks", "only-a-g-r0-main", &["status", "state"]), "failed");
    // Re-registering a name in another namespace is refused.
    let (_, r) = Robot::try_register(&s, &join, "ra", json!({"namespace": "other"}));
    assert_eq!(r.status, 409, "{}", r.body);
}

#[test]
fn scheduler_selector_spread_and_port_conflicts() {
    let s = Server::start();
    let join = s.join_token();
    let mut r1 = Robot::register(&s, &join, "r1", json!({"fleet": "a"}));
    let mut r2 = Robot::register(&s, &join, "r2", json!({"fleet": "a"}));
    let mut r3 = Robot::register(&s, &join, "r3", json!({"fleet": "b"}));
    let sel = json!({"matchExpressions": [{"key": "fleet", "operator": "In", "values": ["a"]}]});
    create(&s, &job("spread", "service", sel, json!([group("g", 4, None)])));
    let placed = wait_for("4 replicas placed", T, || {
        let t: Vec<Option<String>> = (0..4).map(|i| target(&s, &format!("spread-g-r{i}-main"))).collect();
        t.iter()
            .all(Option::is_some)
            .then(|| t.into_iter().flatten().collect::<Vec<_>>())
    });
    assert_eq!(placed.iter().filter(|r| *r == "r1").count(), 2, "{placed:?}");
    assert_eq!(placed.iter().filter(|r| *r == "r2").count(), 2, "{placed:?}");
    assert_eq!(r1.task_names().len(), 2);
    assert_eq!(r2.task_names().len(), 2);
    assert!(r3.task_names().is_empty(), "r3 does not match the selector");

    // localPort 15432 is a per-robot resource: three groups, three robots.
    create(
        &s,
        &job("p1", "service", json!({}), json!([group("db", 1, Some(15432))])),
    );
    let a = wait_for("p1 placed", T, || target(&s, "p1-db-r0-main"));
    create(
        &s,
        &job("p2", "service", json!({}), json!([group("db", 1, Some(15432))])),
    );
    let b = wait_for("p2 placed", T, || target(&s, "p2-db-r0-main"));
    create(
        &s,
        &job("p3", "service", json!({}), json!([group("db", 1, Some(15432))])),
    );
    let c = wait_for("p3 placed", T, || target(&s, "p3-db-r0-main"));
    let mut all = vec![a.clone(), b.clone(), c.clone()];
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 3, "the same localPort never twice on one robot: {a} {b} {c}");
    // A fourth group wanting the port has nowhere to go: Pending, with why.
    create(
        &s,
        &job("p4", "service", json!({}), json!([group("db", 1, Some(15432))])),
    );
    let why = wait_for("p4 pending with a reason", T, || {
        let st = s.object("tasks", "p4-db-r0-main")?["status"].clone();
        (st["reason"] == "Unschedulable").then(|| st["message"].as_str().unwrap_or("").to_string())
    });
    assert!(why.contains("already use localPort 15432"), "{why}");
    assert!(target(&s, "p4-db-r0-main").is_none());
    wait_for("p4's Job to say why", T, || {
        field(&s, "jobs", "p4", &["status", "statusDescription"])
            .as_str()?
            .contains("localPort 15432")
            .then_some(())
    });
    // Freeing the port (deleting p1) lets p4 in.
    let d = s.send_json("DELETE", &format!("{}/p1", jobs()), &json!({}));
    assert_eq!(d.status, 200);
    let d4 = wait_for("p4 placed after p1 is gone", T, || target(&s, "p4-db-r0-main"));
    assert_eq!(d4, a, "p4 takes the robot p1 left");
}

#[test]
fn job_updates_roll_into_tasks() {
    let s = Server::start();
    let join = s.join_token();
    let mut r1 = Robot::register(&s, &join, "r1", json!({}));
    create(
        &s,
        &job("roll", "service", json!({}), json!([group("g", 2, Some(9000))])),
    );
    wait_for("placed", T, || target(&s, "roll-g-r1-main"));
    r1.poll("0s");
    let gen = field(&s, "tasks", "roll-g-r0-main", &["metadata", "generation"]);
    let uid = field(&s, "tasks", "roll-g-r0-main", &["metadata", "uid"]);
    // Change the upstream: the same Tasks get the new network config.
    let patch = json!({"spec": {"taskGroups": [group("g", 1, Some(9001))]}});
    let r = s.merge_patch(&format!("{}/roll", jobs()), &patch);
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for("network update reaches the task", T, || {
        (field(&s, "tasks", "roll-g-r0-main", &["spec", "network", "upstreams"])[0]["localPort"] == 9001).then_some(())
    });
    assert_eq!(
        field(&s, "tasks", "roll-g-r0-main", &["metadata", "uid"]),
        uid,
        "updated in place, not replaced"
    );
    assert!(field(&s, "tasks", "roll-g-r0-main", &["metadata", "generation"]).as_i64() > gen.as_i64());
    wait_for("scale down removes replica 1", T, || {
        s.object("tasks", "roll-g-r1-main").is_none().then_some(())
    });
    let reply = r1.poll("0s");
    let tasks = reply["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["spec"]["network"]["upstreams"][0]["localPort"], 9001);
}

#[test]
fn offline_robots_lose_tasks_and_service_jobs_move() {
    let s = Server::start_with(&["--poll-interval", "1s", "--offline-after", "2s"]);
    let join = s.join_token();
    let r1 = Robot::register(&s, &join, "r1", json!({}));
    let r2 = Robot::register(&s, &join, "r2", json!({}));
    create(&s, &job("svc", "service", json!({}), json!([group("g", 1, None)])));
    create(&s, &job("bat", "batch", json!({}), json!([group("g", 1, None)])));
    let first = wait_for("svc placed", T, || target(&s, "svc-g-r0-main"));
    wait_for("bat placed", T, || target(&s, "bat-g-r0-main"));
    // Keep the other robot alive; let the first one go silent.
    let (mut alive, mut back) = if first == "r1" { (r2, r1) } else { (r1, r2) };
    let dead = if first == "r1" { "r1" } else { "r2" };
    let bat_on_dead = target(&s, "bat-g-r0-main").as_deref() == Some(dead);
    wait_for("svc moved to the live robot", Duration::from_secs(30), || {
        alive.poll("0s");
        (target(&s, "svc-g-r0-main").as_deref() == Some(alive.name.as_str())).then_some(())
    });
    assert_eq!(field(&s, "robots", dead, &["status", "phase"]), "Offline");
    assert_eq!(field(&s, "robots", &alive.name, &["status", "phase"]), "Online");
    let t = s.object("tasks", "svc-g-r0-main").unwrap();
    assert_eq!(t["status"]["reason"], "Rescheduled", "{t}");
    assert_eq!(t["metadata"]["annotations"]["robot.k8s4r.io/reschedules"], "1");
    assert!(alive.task_names().contains(&"svc-g-r0-main".to_string()));
    if bat_on_dead {
        // Batch work on a lost robot is not rerun: the job ends failed.
        wait_for("batch task lost", T, || {
            alive.poll("0s");
            (field(&s, "tasks", "bat-g-r0-main", &["status", "state"]) == "lost").then_some(())
        });
        assert_eq!(target(&s, "bat-g-r0-main").as_deref(), Some(dead));
        wait_for("batch job failed", T, || {
            (field(&s, "jobs", "bat", &["status", "state"]) == "failed").then_some(())
        });
    }
    // The dead robot comes back (polls with its token again): Online again,
    // and the server settles the two copies (default reconcile: bestScore,
    // the robot that ranks better now keeps it): exactly one robot has svc,
    // and that is its target.
    let svc = "svc-g-r0-main".to_string();
    let keeper = wait_for("one copy of svc after the return", T, || {
        let on_alive = alive.task_names().contains(&svc);
        let on_back = back.task_names().contains(&svc);
        let target = target(&s, &svc)?;
        match (on_alive, on_back) {
            (true, false) if target == alive.name => Some(target),
            (false, true) if target == dead => Some(target),
            _ => None,
        }
    });
    assert_eq!(field(&s, "robots", dead, &["status", "phase"]), "Online");
    let reason = field(&s, "tasks", &svc, &["status", "message"]);
    eprintln!("svc kept on {keeper}: {reason}");
}

#[test]
fn restart_keeps_robots_keys_and_assignments() {
    let mut s = Server::start();
    let join = s.join_token();
    let (session, since) = {
        let mut r = Robot::register(&s, &join, "r1", json!({}));
        create(&s, &job("keep", "service", json!({}), json!([group("g", 1, None)])));
        wait_for("placed", T, || target(&s, "keep-g-r0-main"));
        let v = r.poll("0s");
        assert_eq!(v["tasks"].as_array().unwrap().len(), 1);
        (r.session, r.since)
    };
    s.restart();
    // The same robot keys work (and the server key, and the counters go
    // on); a poll from before the restart gets the complete set at once
    // (level-triggered: nothing is lost).
    let mut r = Robot::resume(&s, "r1", session, since);
    let started = Instant::now();
    let v = r.poll("20s");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered at once after a restart"
    );
    assert_eq!(v["tasks"][0]["metadata"]["name"], "keep-g-r0-main");
    assert_eq!(field(&s, "robots", "r1", &["status", "phase"]), "Online");
    // The controllers pick up where they left off: scaling still works.
    let patch = json!({"spec": {"taskGroups": [group("g", 2, None)]}});
    let p = s.merge_patch(&format!("{}/keep", jobs()), &patch);
    assert_eq!(p.status, 200);
    wait_for("second replica after restart", T, || target(&s, "keep-g-r1-main"));
}

#[test]
fn bench_tool_runs_a_small_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let (v, said) = run_bench(&dir.path().join("server.json"), &["robots", "20", "--timeout", "60s"]);
    let r = &v["runs"][0];
    assert_eq!(r["robots"], 20, "{v}");
    assert!(r.get("error").is_none(), "{v}");
    let p99 = r["delivery_p99_seconds"].as_f64().unwrap();
    assert!(p99 > 0.0 && p99 < 30.0, "{v}");
    assert!(r["server_rss_mib"].as_f64().unwrap() > 1.0, "{v}");
    // Not a terminal: progress as plain lines, no redraws.
    for line in [
        "20 robots registering: 10/20 (50%)",
        "20 robots registering: 20/20 registered and polling",
        "tasks delivered to 20 robots: 20/20 delivered",
    ] {
        assert!(said.lines().any(|l| l == line), "no {line:?} in:\n{said}");
    }
    assert!(!said.contains('\r') && !said.contains('\u{1b}'), "{said}");

    // The report from that run: its table, and the chart beside it.
    let text = bench_report(dir.path());
    assert!(text.contains("(control-plane.svg)"), "{text}");
    let svg = std::fs::read_to_string(dir.path().join("control-plane.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("sqlite") && svg.contains("<polyline"),
        "{svg}"
    );
}

/// `k8s4r bench soak` at a small scale: a sample a second, a new version
/// of the Job every 5 s (room for a loaded machine: a version must reach
/// all 20 robots before the next), each reaching all; the JSON, its chart
/// and the report's section. A run this short may well end above its
/// first half (warm-up): then it must say so and exit 1, not pass.
#[test]
fn soak_tool_samples_a_small_fleet_over_versions_and_draws_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("soak.json");
    let run = Command::new(server_util::server_bin())
        .args([
            "bench",
            "soak",
            "20",
            "--duration",
            "11s",
            "--every",
            "1s",
            "--churn",
            "5s",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&run.stderr).into_owned();
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(v.get("error").is_none(), "{v}\n{said}");
    let flat = v["verdict"]["flat"].as_bool().unwrap();
    assert_eq!(run.status.code(), Some(if flat { 0 } else { 1 }), "{said}");
    assert_eq!(flat, !said.contains("the server's memory is not flat"), "{said}");
    let samples = v["samples"].as_array().unwrap();
    assert!(samples.len() >= 12, "one at the start and one a second: {v}");
    for s in samples {
        assert!(s["rss_mib"].as_f64().unwrap() > 1.0, "{s}");
        assert!(s["store_mib"].as_f64().unwrap() > 0.0, "{s}");
    }
    let minutes: Vec<f64> = samples.iter().map(|s| s["minutes"].as_f64().unwrap()).collect();
    assert!(minutes.windows(2).all(|w| w[0] < w[1]), "{minutes:?}");
    // Version 1 at the start, then one every 5 s: 2 and 3 reached all 20.
    let delivered: Vec<u64> = v["versions_delivered"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["version"].as_u64().unwrap())
        .collect();
    assert_eq!(&delivered[..3], [1, 2, 3], "{v}");
    let svg = std::fs::read_to_string(dir.path().join("soak.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("server RSS") && svg.contains("store on disk"),
        "{svg}"
    );
    let text = bench_report(dir.path());
    assert!(text.contains("## Soak") && text.contains("(soak.svg)"), "{text}");

    // Durations out of range are refused by name.
    for (flag, value) in [("--every", "0s"), ("--churn", "25h"), ("--duration", "soon")] {
        let bad = Command::new(server_util::server_bin())
            .args(["bench", "soak", "5", flag, value])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&bad.stderr);
        assert!(!bad.status.success() && said.contains(flag), "{flag} {value}: {said}");
    }
}

/// `k8s4r bench job-rollout` at a small scale: the bad version reaches its
/// one canary only, which goes back on its own, and every robot is back
/// on the good version well within the goal; the good version reaches all.
#[test]
fn bench_tool_rolls_a_job_out_to_a_small_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let (v, _) = run_bench(
        &dir.path().join("job-rollout.json"),
        &["job-rollout", "20", "--timeout", "90s"],
    );
    let r = &v["runs"][0];
    assert!(r.get("error").is_none(), "{v}");
    let bad = &r["bad"];
    assert_eq!(bad["canaries"], 1, "{v}");
    assert_eq!(bad["robots_that_got_it"], 1, "{v}");
    assert_eq!(bad["robots_reverted_on_their_own"], 1, "{v}");
    assert_eq!(bad["status"]["state"], "Failed", "{v}");
    let back = bad["all_back_on_good_seconds"].as_f64().unwrap();
    assert!(back > 0.0 && back <= bad["goal_seconds"].as_f64().unwrap(), "{v}");
    assert_eq!(r["good"]["max_parallel"], 2, "{v}");
    assert!(r["good"]["all_updated_seconds"].as_f64().unwrap() > 0.0, "{v}");

    let text = bench_report(dir.path());
    assert!(text.lines().any(|l| l.starts_with("| 20 | 1 / 1 |")), "{text}");
}

/// `k8s4r bench ARGS --out OUT`, which must succeed: OUT's JSON and what
/// the bench said on stderr.
fn run_bench(out: &Path, args: &[&str]) -> (Value, String) {
    let run = Command::new(server_util::server_bin())
        .arg("bench")
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{said}");
    let v = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    (v, said)
}

/// `k8s4r bench report` over the JSON files in `dir`: report.md's text.
fn bench_report(dir: &Path) -> String {
    let report = dir.join("report.md");
    let made = Command::new(server_util::server_bin())
        .args(["bench", "report", "--out"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    std::fs::read_to_string(&report).unwrap()
}

/// On a terminal (a pseudo-terminal from util-linux's `script`), the same
/// progress is a bar redrawn in place, ending with the plain line.
#[test]
fn bench_tool_draws_a_progress_bar_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("server.json");
    let command = format!(
        "{} bench robots 5 --timeout 60s --out {}",
        server_util::server_bin().display(),
        out.display()
    );
    let run = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .expect("script(1) from util-linux");
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{said}");
    assert!(
        said.contains("5 robots registering [") && said.contains("\u{1b}[2K"),
        "{said}"
    );
    assert!(said.contains("tasks delivered to 5 robots: 5/5 delivered"), "{said}");
}

#[test]
fn delete_propagation_orphan_and_foreground() {
    let s = Server::start();
    create(&s, &job("orph", "service", json!({}), json!([group("g", 2, None)])));
    wait_for("tasks of orph", T, || s.object("tasks", "orph-g-r1-main"));
    // Orphan: the Job goes, its TaskGroup stays without the owner reference.
    let d = s.send_json(
        "DELETE",
        &format!("{}/orph", jobs()),
        &json!({"propagationPolicy": "Orphan"}),
    );
    assert_eq!(d.status, 200, "{}", d.body);
    let tg = s.object("taskgroups", "orph-g").expect("orphaned TaskGroup kept");
    assert!(tg["metadata"].get("ownerReferences").is_none(), "{tg}");
    // A GC pass (triggered by the Job's deletion) must leave it alone.
    create(&s, &job("other", "service", json!({}), json!([group("g", 1, None)])));
    wait_for("other reconciled", T, || s.object("tasks", "other-g-r0-main"));
    assert!(s.object("taskgroups", "orph-g").is_some());
    // Foreground: dependents are gone when the delete returns.
    let d = s.send_json(
        "DELETE",
        "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/taskgroups/orph-g",
        &json!({"propagationPolicy": "Foreground"}),
    );
    assert_eq!(d.status, 200, "{}", d.body);
    assert!(s.object("tasks", "orph-g-r0-main").is_none() && s.object("tasks", "orph-g-r1-main").is_none());
    assert!(s.object("tasks", "other-g-r0-main").is_some());
}

#[test]
fn disconnect_policy_grace_and_no_replace() {
    let s = Server::start_with(&["--poll-interval", "1s", "--offline-after", "2s"]);
    let join = s.join_token();
    let _r1 = Robot::register(&s, &join, "r1", json!({}));
    let with = |name: &str, disconnect: Value| {
        let mut g = group("g", 1, None);
        g["disconnect"] = disconnect;
        job(name, "service", json!({}), json!([g]))
    };
    create(&s, &with("grace", json!({"lostAfter": "1h"})));
    create(&s, &with("stay", json!({"replace": false})));
    create(&s, &job("moves", "service", json!({}), json!([group("g", 1, None)])));
    for j in ["grace", "stay", "moves"] {
        wait_for("placed on r1", T, || {
            (target(&s, &format!("{j}-g-r0-main")).as_deref() == Some("r1")).then_some(())
        });
    }
    let mut r2 = Robot::register(&s, &join, "r2", json!({}));
    // r1 goes silent; r2 keeps polling.
    wait_for("moves rescheduled to r2", Duration::from_secs(30), || {
        r2.poll("0s");
        (target(&s, "moves-g-r0-main").as_deref() == Some("r2")).then_some(())
    });
    wait_for("stay's loss counted", T, || {
        r2.poll("0s");
        (field(&s, "jobs", "stay", &["status", "failedTasks"]) == 1).then_some(())
    });
    assert_eq!(
        target(&s, "stay-g-r0-main").as_deref(),
        Some("r1"),
        "replace: false keeps the lost task where it was"
    );
    assert_eq!(field(&s, "tasks", "stay-g-r0-main", &["status", "state"]), "lost");
    let grace = s.object("tasks", "grace-g-r0-main").unwrap();
    assert_eq!(grace["status"]["state"], "unknown", "lostAfter: Unknown first: {grace}");
    assert_eq!(grace["spec"]["targetRobot"], "r1");
    assert!(grace["metadata"]["annotations"]["robot.k8s4r.io/unknown-since"].is_string());
}

#[test]
fn deleting_a_robot_moves_its_service_tasks() {
    let s = Server::start();
    let join = s.join_token();
    let mut r1 = Robot::register(&s, &join, "r1", json!({}));
    create(&s, &job("svc", "service", json!({}), json!([group("g", 1, None)])));
    wait_for("placed on r1", T, || {
        (target(&s, "svc-g-r0-main").as_deref() == Some("r1")).then_some(())
    });
    let mut r2 = Robot::register(&s, &join, "r2", json!({}));
    let d = s.send_json(
        "DELETE",
        "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/robots/r1",
        &json!({}),
    );
    assert_eq!(d.status, 200);
    wait_for("svc moved to r2", T, || {
        (target(&s, "svc-g-r0-main").as_deref() == Some("r2")).then_some(())
    });
    assert_eq!(r2.task_names(), ["svc-g-r0-main"]);
    // The deleted robot's agent is told to register again.
    let r = r1.send("GET", "/agent/v1/robots/r1/assignments?since=0&wait=0s", None);
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.body.contains("register again"));
}

/// POST one batch of status updates; `Err` when the server is unreachable
/// or died mid-request (the outcome of that batch is then unknown).
fn post_statuses(
    base: &str,
    robot: &mut RobotSession,
    updates: &[Value],
) -> Result<Vec<(String, u64, String)>, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .build()
        .into();
    let body = json!({ "updates": updates }).to_string();
    let path = format!("/agent/v1/robots/{}/status", robot.name);
    let p = robot.request("POST", &path, Some(body.as_bytes())).unwrap();
    let mut req = agent.post(&format!("{base}{path}"));
    for (k, v) in &p.headers {
        req = req.header(*k, v);
    }
    let mut reply = req.send(&p.body[..]).map_err(|e| e.to_string())?;
    let status = reply.status().as_u16();
    let headers = reply.headers().clone();
    let bytes = reply.body_mut().read_to_vec().map_err(|e| e.to_string())?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let opened = robot.answer(&p, status, &header, &bytes).expect("a signed answer");
    let text = String::from_utf8_lossy(&opened);
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    Ok(v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["task"].as_str().unwrap().to_string(),
                r["seq"].as_u64().unwrap(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect())
}

#[test]
fn a_server_kill_9_during_1000_status_updates_loses_and_duplicates_nothing() {
    const TASKS: usize = 50;
    const ROUNDS: u64 = 20;
    let mut s = Server::start();
    let join = s.join_token();
    let mut session = {
        let mut r = Robot::register(&s, &join, "burst", json!({}));
        create(
            &s,
            &job("burst", "service", json!({}), json!([group("g", TASKS as i32, None)])),
        );
        wait_for("all tasks placed on the robot", T, || {
            (r.task_names().len() == TASKS).then_some(())
        });
        r.session
    };
    let tasks: Vec<String> = (0..TASKS).map(|i| format!("burst-g-r{i}-main")).collect();
    let updates: Vec<Value> = (1..=ROUNDS)
        .flat_map(|seq| {
            tasks.iter().map(move |t| {
                json!({"task": t, "seq": seq, "status": {"state": "running", "message": format!("update {seq}")}})
            })
        })
        .collect();
    let batches: Vec<&[Value]> = updates.chunks(10).collect();

    // The killer strikes once 300 updates are acknowledged, wherever the
    // sender happens to be (mid-request or between requests).
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pid = s.pid().unwrap();
    let mut killer = Some({
        let acked = acked.clone();
        std::thread::spawn(move || {
            wait_for("300 acknowledged updates", Duration::from_secs(120), || {
                (acked.load(std::sync::atomic::Ordering::SeqCst) >= 300).then_some(())
            });
            let st = Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
            assert!(st.success());
        })
    });
    let mut applied: std::collections::HashMap<(String, u64), usize> = Default::default();
    let mut in_flight_at_crash: Vec<(String, u64)> = Vec::new();
    let mut crashed = false;
    let mut i = 0;
    while i < batches.len() {
        match post_statuses(&s.agent_base, &mut session, batches[i]) {
            Ok(results) => {
                assert_eq!(results.len(), batches[i].len());
                for (task, seq, outcome) in results {
                    match outcome.as_str() {
                        "applied" => *applied.entry((task, seq)).or_default() += 1,
                        "duplicate" => assert!(
                            in_flight_at_crash.contains(&(task.clone(), seq)),
                            "{task} seq {seq} duplicate although never sent before"
                        ),
                        other => panic!("{task} seq {seq}: {other}"),
                    }
                }
                acked.fetch_add(batches[i].len(), std::sync::atomic::Ordering::SeqCst);
                i += 1;
            }
            Err(e) => {
                assert!(!crashed, "a second failure after the restart: {e}");
                crashed = true;
                killer.take().unwrap().join().expect("killer");
                in_flight_at_crash = batches[i]
                    .iter()
                    .map(|u| (u["task"].as_str().unwrap().to_string(), u["seq"].as_u64().unwrap()))
                    .collect();
                s.start_again(); // same data directory; resend the unknown batch
            }
        }
    }
    assert!(crashed, "the server was never killed");
    for u in &updates {
        let key = (u["task"].as_str().unwrap().to_string(), u["seq"].as_u64().unwrap());
        let n = applied.get(&key).copied().unwrap_or(0);
        let ok = n == 1 || (n == 0 && in_flight_at_crash.contains(&key));
        assert!(ok, "{key:?} applied {n} times");
    }
    // Everything acknowledged survived the crash: sent again, all duplicates.
    for batch in &batches {
        for (task, seq, outcome) in post_statuses(&s.agent_base, &mut session, batch).unwrap() {
            assert_eq!(outcome, "duplicate", "{task} seq {seq} was acknowledged but lost");
        }
    }
    for t in &tasks {
        assert_eq!(
            field(&s, "tasks", t, &["status", "message"]),
            json!(format!("update {ROUNDS}")),
            "{t}"
        );
    }
    assert_eq!(s.panics(), 0);
}

/// One round of a live agent: poll, and report every task of the desired
/// set whose server-side state is not running as running (as the real
/// agent does, level-triggered); returns the desired set's names, sorted.
fn heartbeat(r: &mut Robot) -> Vec<String> {
    let v = r.poll("0s");
    let mut names = Vec::new();
    for t in v["tasks"].as_array().unwrap() {
        let name = t["metadata"]["name"].as_str().unwrap().to_string();
        if t["status"]["state"] != "running" {
            r.report(&name, "running");
        }
        names.push(name);
    }
    names.sort();
    names
}

/// Names of the Tasks of `job` with their robots, sorted.
fn job_tasks(s: &Server, job: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = s.list("tasks", &format!("?labelSelector=robot.k8s4r.io%2Fjob%3D{job}"))
        ["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["metadata"]["name"].as_str().unwrap().to_string(),
                t["spec"]["targetRobot"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn system_jobs_run_one_replica_on_every_matching_robot() {
    // Short offline limit for the last part; every robot that should stay
    // Online heartbeats (as a live agent) inside each wait below, so one
    // that misses its limit on a loaded machine only delays a step.
    let s = Server::start_with(&["--poll-interval", "1s", "--offline-after", "2s"]);
    let join = s.join_token();
    let mut r1 = Robot::register(&s, &join, "r1", json!({"fleet": "a"}));
    let mut r2 = Robot::register(&s, &join, "r2", json!({"fleet": "a"}));
    let mut r3 = Robot::register(&s, &join, "r3", json!({"fleet": "b"}));
    let mut r5 = Robot::register(&s, &join, "r5", json!({"fleet": "a", "hog": "yes"}));
    // r5 matches but a service group already holds localPort 19100 there
    // (and keeps holding it should r5 miss a heartbeat: lostAfter, no move).
    let mut hog = group("db", 1, Some(19100));
    hog["disconnect"] = json!({"lostAfter": "1h", "replace": false});
    create(&s, &job("hog", "service", json!({"hog": "yes"}), json!([hog])));
    wait_for("hog placed on r5", T, || {
        heartbeat(&mut r5);
        (target(&s, "hog-db-r0-main").as_deref() == Some("r5")).then_some(())
    });

    create(
        &s,
        &job(
            "daemon",
            "system",
            json!({"fleet": "a"}),
            json!([group("agent", 1, Some(19100))]),
        ),
    );
    wait_for("one replica on each matching robot", Duration::from_secs(30), || {
        let (a, b, c) = (heartbeat(&mut r1), heartbeat(&mut r2), r3.task_names());
        heartbeat(&mut r5);
        (a == ["daemon-agent-main.r1"] && b == ["daemon-agent-main.r2"] && c.is_empty()).then_some(())
    });
    assert_eq!(
        r5.task_names(),
        ["hog-db-r0-main"],
        "no replica where the port is taken"
    );
    let why = wait_for("FailedScheduling for r5", T, || {
        s.events_of("Job", "daemon")
            .into_iter()
            .find(|(reason, m, _)| reason == "FailedScheduling" && m.contains("robot r5"))
            .map(|(_, m, _)| m)
    });
    assert!(why.contains("localPort 19100"), "{why}");
    let t = s.object("tasks", "daemon-agent-main.r1").unwrap();
    assert_eq!(t["spec"]["jobType"], "system");
    assert_eq!(t["spec"]["replicaIndex"], 0);
    wait_for("job running on 2 robots", T, || {
        heartbeat(&mut r1);
        heartbeat(&mut r2);
        heartbeat(&mut r5);
        let st = s.object("jobs", "daemon")?["status"].clone();
        (st["state"] == "running" && st["runningTasks"] == 2 && st["totalTasks"] == 2).then_some(())
    });
    let desc = field(&s, "jobs", "daemon", &["status", "statusDescription"]);
    assert!(desc.as_str().unwrap().starts_with("on 2 robots: 2/2 running"), "{desc}");
    if server_util::have_kubectl() {
        let out = s.kubectl_ok(&["get", "tasks", "-o", "wide", "-l", "robot.k8s4r.io/job=daemon"]);
        let row = out
            .lines()
            .find(|l| l.starts_with("daemon-agent-main.r2"))
            .unwrap_or("");
        assert!(row.split_whitespace().any(|c| c == "r2"), "{out}");
    }

    // A robot registering later gets its replica.
    let mut r4 = Robot::register(&s, &join, "r4", json!({"fleet": "a"}));
    wait_for("r4 gets its replica", T, || {
        heartbeat(&mut r1);
        heartbeat(&mut r2);
        heartbeat(&mut r5);
        (heartbeat(&mut r4) == ["daemon-agent-main.r4"]).then_some(())
    });

    // r2 is relabelled out of the selector (its one label set, as `kubectl
    // label` does): its replica leaves its set.
    let patch = json!({"metadata": {"labels": {"fleet": "b"}}});
    let r = s.merge_patch("/apis/robot.k8s4r.io/v1alpha1/namespaces/default/robots/r2", &patch);
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for("r2's replica removed", T, || {
        heartbeat(&mut r1);
        heartbeat(&mut r4);
        heartbeat(&mut r5);
        (heartbeat(&mut r2).is_empty() && s.object("tasks", "daemon-agent-main.r2").is_none()).then_some(())
    });
    assert_eq!(
        job_tasks(&s, "daemon"),
        [
            ("daemon-agent-main.r1".to_string(), "r1".to_string()),
            ("daemon-agent-main.r4".to_string(), "r4".to_string())
        ]
    );

    // r1 goes silent: its replica is Lost but stays r1's; nothing moves.
    wait_for("r1's replica lost", Duration::from_secs(30), || {
        heartbeat(&mut r2);
        heartbeat(&mut r4);
        heartbeat(&mut r5);
        let lost = field(&s, "tasks", "daemon-agent-main.r1", &["status", "state"]) == "lost";
        let desc = field(&s, "jobs", "daemon", &["status", "statusDescription"]);
        (lost && desc.as_str()?.contains("1 lost")).then_some(())
    });
    assert_eq!(field(&s, "robots", "r1", &["status", "phase"]), "Offline");
    assert_eq!(target(&s, "daemon-agent-main.r1").as_deref(), Some("r1"));
    let tasks = job_tasks(&s, "daemon");
    assert!(
        tasks.iter().all(|(n, r)| n == &format!("daemon-agent-main.{r}")),
        "{tasks:?}"
    );
    assert!(
        tasks.iter().filter(|(_, r)| r != "r5").count() == 2,
        "the lost replica is not placed anywhere else: {tasks:?}"
    );
    assert_eq!(heartbeat(&mut r4), ["daemon-agent-main.r4"]);
    assert_ne!(field(&s, "jobs", "daemon", &["status", "state"]), "failed");
    // r1 is back: the same replica is in its set and resumes.
    wait_for("r1's replica running again", T, || {
        assert_eq!(heartbeat(&mut r1), ["daemon-agent-main.r1"]);
        heartbeat(&mut r4);
        (field(&s, "tasks", "daemon-agent-main.r1", &["status", "state"]) == "running").then_some(())
    });

    // Deleting the Job stops every replica.
    let d = s.send_json("DELETE", &format!("{}/daemon", jobs()), &json!({}));
    assert_eq!(d.status, 200, "{}", d.body);
    wait_for("every replica gone", T, || {
        heartbeat(&mut r5);
        let gone = heartbeat(&mut r1).is_empty() && heartbeat(&mut r4).is_empty();
        (gone && job_tasks(&s, "daemon").is_empty()).then_some(())
    });
    assert_eq!(s.panics(), 0);
}

/// While robots poll, each Robot's lastHeartbeatTime is never older than a
/// third of the offline limit (here 6 s / 3 = 2 s; kubectl's LAST-HEARTBEAT
/// counts whole seconds, hence + 1): refreshed in the middle of a long
/// poll that outlasts it (3 s waits), and written once per 2 s, not once
/// per poll, for a robot polling ten times a second.
#[test]
fn last_heartbeat_time_stays_fresh_while_robots_poll() {
    const OFFLINE: Duration = Duration::from_secs(6);
    let fresh = (OFFLINE / 3).as_secs() as i64 + 1;
    let s = Server::start_with(&["--poll-interval", "3s", "--offline-after", "6s"]);
    let join = s.join_token();
    let mut steady = Robot::register(&s, &join, "steady", json!({}));
    let mut busy = Robot::register(&s, &join, "busy", json!({}));
    let watch = s.stream("/apis/robot.k8s4r.io/v1alpha1/namespaces/default/robots?watch=true&timeoutSeconds=120");
    let mut busy_polls = 0;
    let ((), steady_polls) = steady.polling_while("3s", || {
        common::throughout("fresh heartbeats", 3 * OFFLINE, || {
            busy.poll("0s");
            busy_polls += 1;
            for name in ["steady", "busy"] {
                let robot = s.object("robots", name).ok_or(format!("robot {name} is gone"))?;
                let age = server_util::heartbeat_age(&robot);
                if robot["status"]["phase"] != "Online" || age > fresh {
                    return Err(format!(
                        "{name}: lastHeartbeatTime {age}s old (at most {fresh}s): {robot}"
                    ));
                }
            }
            Ok(())
        })
    });
    // Robots change only by heartbeats here: count the writes of busy's.
    let busy_writes = watch
        .try_iter()
        .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
        .filter(|e| e["type"] == "MODIFIED" && e["object"]["metadata"]["name"] == "busy")
        .count();
    eprintln!("steady: {steady_polls} polls; busy: {busy_polls} polls, {busy_writes} heartbeat writes");
    assert!(steady_polls >= 4, "{steady_polls} long polls of 3 s in 18 s");
    assert!(busy_polls >= 36, "{busy_polls} polls: too few to tell a throttle");
    // About one write per 2 s over 18 s; a write per poll would be ~150.
    assert!(
        (5..=12).contains(&busy_writes),
        "{busy_writes} writes for {busy_polls} polls"
    );
}

/// A Job in the earlier implementation's shape, a check under a service
/// whose `portLabel` names no port: accepted, the `Warning` header names
/// the field, and the Job carries one ValidationWarning event saying the
/// check is not run (a dry run warns the same, and records nothing).
#[test]
fn a_check_on_no_port_is_accepted_with_a_warning_header_and_a_job_event() {
    let s = Server::start();
    let mut g = group("web", 1, None);
    g["tasks"][0]["services"] = json!([{"name": "app", "portLabel": "http",
        "checks": [{"name": "alive", "type": "http", "path": "/health", "interval": "10s"}]}]);
    let legacy = job("legacy", "service", json!({}), json!([g]));
    let warning = r#"spec.taskGroups[0].tasks[0].services[0].portLabel: "http" names no port this agent can probe (http checks need a port number, 1-65535): the check "alive" is not run"#;
    let header = warning_header(warning);
    let r = s.send_json("POST", &format!("{}?dryRun=All", jobs()), &legacy);
    assert_eq!(
        (r.status, r.warnings.clone()),
        (201, vec![header.clone()]),
        "{}",
        r.body
    );
    let r = s.send_json("POST", jobs(), &legacy);
    assert_eq!((r.status, r.warnings.clone()), (201, vec![header]), "{}", r.body);
    let event = validation_warning_event(&s, "legacy");
    assert_eq!(event["message"], warning, "{event}");
    assert_eq!(event["count"], 1, "the dry run recorded nothing: {event}");
}

/// A validation warning as kubectl shows it (`Warning:` header, RFC 7234).
fn warning_header(warning: &str) -> String {
    format!("299 - \"{}\"", warning.replace('"', "\\\""))
}

/// The Warning event validation recorded on Job `name`, checked to be on
/// the stored object.
fn validation_warning_event(s: &Server, name: &str) -> Value {
    let path = format!(
        "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3D{name},involvedObject.kind%3DJob"
    );
    let event = wait_for("the ValidationWarning event", T, || {
        let list = s.get(&path).json();
        list["items"]
            .as_array()?
            .iter()
            .find(|e| e["reason"] == "ValidationWarning")
            .cloned()
    });
    assert_eq!(event["type"], "Warning", "{event}");
    assert_eq!(
        event["involvedObject"]["uid"],
        s.object("jobs", name).unwrap()["metadata"]["uid"]
    );
    event
}

/// An artifact over plain http without a checksum is accepted with a
/// `Warning` header and a Job event saying its integrity is not verified;
/// its checksummed neighbour is not warned about.
#[test]
fn an_unverified_http_artifact_is_accepted_with_a_warning_header_and_a_job_event() {
    let s = Server::start();
    let mut g = group("dl", 1, None);
    g["tasks"][0]["artifacts"] = json!([
        {"getterSource": "http://artifacts.example/ok.bin",
         "getterOptions": {"checksum": format!("sha256:{}", "b".repeat(64))}},
        {"getterSource": "http://artifacts.example/tool.bin"}
    ]);
    let fetcher = job("fetcher", "batch", json!({}), json!([g]));
    let warning = r#"spec.taskGroups[0].tasks[0].artifacts[1].getterSource: "http://artifacts.example/tool.bin" is fetched over plain http without getterOptions.checksum (sha256:<hex>): integrity not verified; robots with --require-artifact-checksums refuse it"#;
    let r = s.send_json("POST", jobs(), &fetcher);
    assert_eq!(
        (r.status, r.warnings.clone()),
        (201, vec![warning_header(warning)]),
        "{}",
        r.body
    );
    let event = validation_warning_event(&s, "fetcher");
    assert_eq!(event["message"], warning, "{event}");
}

/// A `--timeout` past what a bench takes is refused before anything
/// starts, naming the flag (deadlines are computed as now + timeout).
#[test]
fn bench_tool_refuses_a_timeout_too_long_to_add_to_the_clock() {
    let run = Command::new(server_util::server_bin())
        .args(["bench", "job-rollout", "1", "--timeout", "100000h"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{said}");
    assert!(said.contains("--timeout") && said.contains("at most 24h"), "{said}");
}
