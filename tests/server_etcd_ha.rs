#![cfg(feature = "server")]
//! A highly available control plane: three `k8s4r server` replicas on a
//! three-member etcd cluster. A long poll on one replica wakes for a Job
//! created through another; the leader is SIGKILLed in the middle of a burst
//! of Job creates and every Job still ends up scheduled exactly once; an etcd
//! member dies and the service goes on; everything restarts with its state.

mod common;
mod server_util;

use base64::Engine;
use serde_json::{json, Value};
use server_util::etcd::Etcd;
use server_util::{wait_for, Robot, Server};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);
const JOBS: usize = 24;
const PER_JOB: usize = 2;

fn jobs_path() -> &'static str {
    "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs"
}

fn job(name: &str, selector: Value, count: usize) -> Value {
    json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job", "metadata": {"name": name},
           "spec": {"type": "batch", "robotSelector": selector, "taskGroups": [{"name": "g", "count": count,
             "tasks": [{"name": "main", "driver": "exec", "config": {"execConfig": {"command": "/bin/true"}}}]}]}})
}

fn start_replicas(etcd: &Etcd, n: usize, extra: &[&str]) -> Vec<Server> {
    let eps = etcd.endpoints();
    let args: Vec<&str> = ["--etcd", eps.as_str()]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    (0..n).map(|_| Server::start_with(&args)).collect()
}

/// The pid written in the leader key, if any replica leads.
fn leader_pid(etcd: &Etcd) -> Option<u32> {
    let key = base64::engine::general_purpose::STANDARD.encode("/k8s4r-leader");
    for m in &etcd.members {
        let reply = ureq::post(&format!("{}/v3/kv/range", m.client_url))
            .send(json!({ "key": key }).to_string().as_str())
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok());
        let Some(text) = reply else { continue };
        let v: Value = serde_json::from_str(&text).ok()?;
        let value = v["kvs"][0]["value"].as_str()?;
        let id = base64::engine::general_purpose::STANDARD.decode(value).ok()?;
        return String::from_utf8(id).ok()?.split(':').next()?.parse().ok();
    }
    None
}

fn leader_index(etcd: &Etcd, servers: &[Server]) -> Option<usize> {
    let pid = leader_pid(etcd)?;
    servers.iter().position(|s| s.pid() == Some(pid))
}

/// Tasks per Job, and whether every Task has a robot.
fn tasks_by_job(s: &Server) -> (BTreeMap<String, Vec<String>>, bool) {
    let list = s.list("tasks", "");
    let mut by_job: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut all_placed = true;
    for t in list["items"].as_array().into_iter().flatten() {
        let job = t["spec"]["jobName"].as_str().unwrap_or_default().to_string();
        by_job
            .entry(job)
            .or_default()
            .push(t["metadata"]["uid"].as_str().unwrap_or_default().to_string());
        all_placed &= t["spec"]["targetRobot"].as_str().is_some_and(|r| !r.is_empty());
    }
    (by_job, all_placed)
}

fn all_scheduled(s: &Server, jobs: usize) -> Option<BTreeMap<String, Vec<String>>> {
    let (by_job, placed) = tasks_by_job(s);
    let complete = by_job.iter().all(|(job, t)| t.len() >= wanted(job));
    (placed && complete && by_job.len() == jobs).then_some(by_job)
}

fn wanted(job: &str) -> usize {
    if job == "watched" {
        1
    } else {
        PER_JOB
    }
}

#[test]
fn replicas_share_one_etcd_and_survive_failures() {
    let mut etcd = Etcd::cluster(3);
    let mut servers = start_replicas(&etcd, 3, &[]);
    let leader = wait_for("a leader", T, || leader_index(&etcd, &servers));
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;

    // Robots register through different replicas.
    let join = servers[follower].join_token();
    for i in 0..4 {
        Robot::register(&servers[i % 3], &join, &format!("r{i}"), json!({"fleet": "a"}));
    }

    // A robot long-polls a follower; a Job for it is created through
    // another replica; the poll answers at once (etcd watch, not polling).
    {
        let mut robot = Robot::register(&servers[follower], &join, "watcher", json!({"fleet": "w"}));
        robot.poll("0s");
        let since = robot.since;
        let (created, (status, reply, answered)) = std::thread::scope(|scope| {
            let poller = scope.spawn(|| {
                let r = robot.send(
                    "GET",
                    &format!("/agent/v1/robots/watcher/assignments?since={since}&wait=30s"),
                    None,
                );
                (r.status, r.json(), Instant::now())
            });
            let created = Instant::now();
            let r = servers[other].send_json(
                "POST",
                jobs_path(),
                &job("watched", json!({"matchLabels": {"fleet": "w"}}), 1),
            );
            assert_eq!(r.status, 201, "{}", r.body);
            (created, poller.join().expect("poller"))
        });
        assert_eq!(status, 200);
        let tasks = reply["tasks"].as_array().expect("tasks");
        assert_eq!(
            tasks.len(),
            1,
            "the poll on one replica sees the Job created on another: {reply}"
        );
        let latency = answered.duration_since(created);
        eprintln!("cross-replica long-poll wake-up after {latency:?}");
        // Woken by the Job, not by its 30 s wait running out (a loose bound:
        // this is not a speed test, the bench measures that).
        assert!(latency < Duration::from_secs(20), "the poll woke after {latency:?}");
    }

    // A burst of Job creates over the live replicas; the leader is killed
    // a third of the way through.
    let fleet = json!({"matchLabels": {"fleet": "a"}});
    let old_leader_pid = servers[leader].pid();
    let mut killed_at = None;
    for i in 0..JOBS {
        if i == JOBS / 3 {
            servers[leader].kill();
            killed_at = Some(Instant::now());
        }
        let live: Vec<usize> = (0..3).filter(|&n| servers[n].pid().is_some()).collect();
        let s = &servers[live[i % live.len()]];
        let r = s.send_json("POST", jobs_path(), &job(&format!("burst-{i}"), fleet.clone(), PER_JOB));
        assert_eq!(r.status, 201, "create burst-{i}: {}", r.body);
    }
    let new_leader = wait_for("a new leader", T, || {
        leader_index(&etcd, &servers).filter(|&n| servers[n].pid() != old_leader_pid)
    });
    let handover = killed_at.expect("killed").elapsed();
    eprintln!("leadership handed over within {handover:?}");
    let survivors: Vec<usize> = (0..3).filter(|&n| n != leader).collect();
    assert!(survivors.contains(&new_leader));

    let expected_jobs = JOBS + 1; // and "watched"
    let scheduled = wait_for("every Job scheduled", T, || {
        all_scheduled(&servers[survivors[0]], expected_jobs)
    });
    for (job, tasks) in &scheduled {
        let want = wanted(job);
        assert_eq!(
            tasks.len(),
            want,
            "Job {job} has {} tasks, not {want}: {tasks:?}",
            tasks.len()
        );
    }
    // Both survivors serve the same state.
    assert_eq!(tasks_by_job(&servers[survivors[1]]).0, scheduled);

    // One etcd member dies: the service goes on.
    etcd.members[0].kill();
    // Until the remaining members elect a raft leader a write may fail as
    // unavailable (as with any etcd client); a client retries, and a retry
    // after a write that did land finds the Job there (409).
    let s = &servers[survivors[1]];
    wait_for("a create with one etcd member down", T, || {
        let r = s.send_json("POST", jobs_path(), &job("after-member-loss", fleet.clone(), PER_JOB));
        match r.status {
            201 | 409 => Some(()),
            _ => {
                eprintln!("create with a member down: {} {}", r.status, r.body);
                None
            }
        }
    });
    let scheduled = wait_for("the Job scheduled with a member down", T, || {
        all_scheduled(&servers[survivors[0]], expected_jobs + 1)
    });

    // Everything restarts: state and task identities are intact.
    for s in &mut servers {
        s.kill();
    }
    for m in &mut etcd.members {
        m.kill();
    }
    for m in &mut etcd.members {
        m.restart();
    }
    etcd.wait_healthy();
    for s in &mut servers {
        s.start_again();
    }
    wait_for("a leader after the restart", T, || leader_index(&etcd, &servers));
    let after = tasks_by_job(&servers[0]);
    assert!(after.1, "every task still placed");
    assert_eq!(
        after.0, scheduled,
        "the same Tasks (same uids) after restarting everything"
    );
    let robot = servers[2].object("robots", "r3").expect("robot survives");
    assert_eq!(robot["spec"]["labels"]["fleet"], "a");
}

#[test]
fn a_stopping_leader_hands_over_at_once() {
    let etcd = Etcd::start();
    let mut servers = start_replicas(&etcd, 2, &[]);
    let leader = wait_for("a leader", T, || leader_index(&etcd, &servers));
    let old = servers[leader].pid();
    let stopping = Instant::now();
    // SIGTERM: the leader revokes its lease on the way out, so the other
    // replica need not wait for the lease (3 s) to expire.
    servers[leader].stop();
    wait_for("the other replica leads", T, || {
        leader_pid(&etcd).filter(|p| Some(*p) != old).map(|_| ())
    });
    let took = stopping.elapsed();
    eprintln!("graceful handover in {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "handover took {took:?}: the lease was not revoked"
    );
    assert_eq!(leader_index(&etcd, &servers), Some(1 - leader));
}

/// With two replicas, the operator asks one for a task's log while the
/// robot long-polls the other: the request crosses through etcd to the
/// robot's poll, and the upload crosses back to the waiting operator.
#[test]
fn a_log_request_reaches_a_robot_polling_another_replica() {
    let etcd = Etcd::cluster(1);
    let servers = start_replicas(&etcd, 2, &[]);
    let (robots_side, operator_side) = (&servers[0], &servers[1]);
    let join = robots_side.join_token();
    let mut robot = Robot::register(robots_side, &join, "far", json!({"fleet": "logs"}));
    let r = robots_side.send_json("POST", jobs_path(), &job("talk", json!({"fleet": "logs"}), 1));
    assert_eq!(r.status, 201, "{}", r.body);
    wait_for("the task on the robot", T, || {
        robot.task_names().contains(&"talk-g-r0-main".to_string()).then_some(())
    });
    wait_for("the other replica to see the robot Online", T, || {
        let r = operator_side.object("robots", "far")?;
        (r["status"]["phase"] == "Online").then_some(())
    });

    // The operator's replica answers log requests from its cache, which
    // follows etcd a moment behind the GET above: as a client would, retry
    // while it does not know the task (404) or the robot's phase (503).
    let s = operator_side.handle();
    let operator = std::thread::spawn(move || {
        wait_for("the log request answered", T, || {
            let r = s.get("/apis/robot.k8s4r.io/v1alpha1/namespaces/default/tasks/talk-g-r0-main/log?tailLines=5");
            match r.status {
                200 => Some(r.body),
                404 | 503 => None,
                other => panic!("the log request: {other} {}", r.body),
            }
        })
    });
    let request = wait_for("the log request on the robot's poll", T, || {
        let v = robot.poll("1s");
        v["logRequests"].as_array().and_then(|l| l.first().cloned())
    });
    assert_eq!(request["task"], "talk-g-r0-main");
    assert_eq!(request["tailLines"], 5);
    let upload = json!({"id": request["id"], "task": "talk-g-r0-main", "text": "hello from far away\n"});
    let r = robot.send("POST", "/agent/v1/robots/far/logs", Some(&upload));
    assert_eq!(r.status, 200, "{}", r.body);
    let text = operator.join().unwrap();
    assert!(text.contains("hello from far away"), "{text}");
    // Answered once: the request is gone from the store.
    let again = robot.send("POST", "/agent/v1/robots/far/logs", Some(&upload));
    assert_eq!(again.status, 404, "{}", again.body);
}

/// An etcd member is killed and restarted while Jobs are being created
/// through a replica: every create answered 201 (or 409 on a client's retry
/// of a create that had landed) exists exactly once with exactly its tasks,
/// and the restarted member catches up.
#[test]
fn an_etcd_member_restart_during_writes_loses_and_duplicates_nothing() {
    const CREATES: usize = 40;
    let mut etcd = Etcd::cluster(3);
    let servers = start_replicas(&etcd, 1, &[]);
    let join = servers[0].join_token();
    Robot::register(&servers[0], &join, "worker", json!({"fleet": "m"}));
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (s, acked) = (servers[0].handle(), acked.clone());
        std::thread::spawn(move || {
            let mut created = Vec::new();
            for i in 0..CREATES {
                let name = format!("steady-{i}");
                // A client retries what the server could not commit; a retry
                // of a create that did land finds it (409).
                let status = wait_for(&format!("create {name}"), Duration::from_secs(60), || {
                    let r = s.send_json("POST", jobs_path(), &job(&name, json!({"fleet": "m"}), PER_JOB));
                    match r.status {
                        201 | 409 => Some(r.status),
                        _ => {
                            eprintln!("create {name}: {} {}", r.status, r.body);
                            None
                        }
                    }
                });
                created.push((name, status));
                acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            created
        })
    };
    wait_for("a third of the creates", T, || {
        (acked.load(std::sync::atomic::Ordering::SeqCst) >= CREATES / 3).then_some(())
    });
    etcd.members[0].kill();
    wait_for(
        "two thirds of the creates with a member down",
        Duration::from_secs(60),
        || (acked.load(std::sync::atomic::Ordering::SeqCst) >= 2 * CREATES / 3).then_some(()),
    );
    etcd.members[0].restart();
    etcd.wait_healthy();
    let created = writer.join().expect("writer");
    assert_eq!(created.len(), CREATES);
    let scheduled = wait_for("every Job scheduled", T, || all_scheduled(&servers[0], CREATES));
    for (name, _) in &created {
        let tasks = scheduled.get(name).unwrap_or_else(|| panic!("{name} is missing"));
        assert_eq!(tasks.len(), PER_JOB, "{name} has {} tasks", tasks.len());
    }
    // The restarted member caught up: it serves the same Jobs.
    let key = base64::engine::general_purpose::STANDARD.encode("/k8s4r/jobs/default/");
    let end = base64::engine::general_purpose::STANDARD.encode("/k8s4r/jobs/default0");
    let count = wait_for("the restarted member to catch up", T, || {
        let reply = ureq::post(&format!("{}/v3/kv/range", etcd.members[0].client_url))
            .send(
                json!({"key": key, "range_end": end, "count_only": true, "serializable": true})
                    .to_string()
                    .as_str(),
            )
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        let v: Value = serde_json::from_str(&reply).ok()?;
        let n: usize = v["count"].as_str()?.parse().ok()?;
        (n == CREATES).then_some(n)
    });
    assert_eq!(count, CREATES);
}

/// A robot long-polls the replica that does not lead, with a service task
/// running, for three times the offline limit: the leader's liveness check
/// reads the heartbeats that replica stores, so the robot stays Online,
/// its heartbeat fresh and its task running, and no event is recorded but
/// its registration and (if that replica's cache had not seen it yet) one
/// RobotOnline. (Before, it went Offline and its task Lost every limit.)
#[test]
fn a_robot_polling_a_replica_that_does_not_lead_stays_online() {
    const OFFLINE: Duration = Duration::from_secs(6);
    let fresh = (OFFLINE / 3).as_secs() as i64 + 1;
    let etcd = Etcd::start();
    let servers = start_replicas(&etcd, 2, &["--poll-interval", "3s", "--offline-after", "6s"]);
    let leader = &servers[wait_for("a leader", T, || leader_index(&etcd, &servers))];
    let follower = servers.iter().find(|s| s.pid() != leader.pid()).expect("two replicas");
    let join = follower.join_token();
    let mut robot = Robot::register(follower, &join, "faithful", json!({"fleet": "hb"}));
    let mut svc = job("steady", json!({"matchLabels": {"fleet": "hb"}}), 1);
    svc["spec"]["type"] = json!("service");
    let r = follower.send_json("POST", jobs_path(), &svc);
    assert_eq!(r.status, 201, "{}", r.body);
    let task = "steady-g-r0-main";
    wait_for("the task on the robot", T, || {
        robot.task_names().contains(&task.to_string()).then_some(())
    });
    robot.report(task, "running");
    wait_for("the leader to see the task running", T, || {
        (leader.object("tasks", task)?["status"]["state"] == "running").then_some(())
    });

    let ((), polls) = robot.polling_while("3s", || {
        common::throughout("the robot Online on the leader", 3 * OFFLINE, || {
            let r = leader.object("robots", "faithful").ok_or("the robot is gone")?;
            let age = server_util::heartbeat_age(&r);
            if r["status"]["phase"] != "Online" || age > fresh {
                return Err(format!("lastHeartbeatTime {age}s old (at most {fresh}s): {r}"));
            }
            let t = leader.object("tasks", task).ok_or("the task is gone")?;
            if t["status"]["state"] != "running" {
                return Err(format!("the task is not running: {}", t["status"]));
            }
            Ok(())
        })
    });
    eprintln!("{polls} long polls on the replica that does not lead");
    assert!(polls >= 4, "{polls} polls of 3 s in 18 s");
    let events = leader.events_of("Robot", "faithful");
    let unexpected: Vec<_> = events
        .iter()
        .filter(|(reason, _, count)| match reason.as_str() {
            "Registered" => false,
            "RobotOnline" => *count > 1,
            _ => true,
        })
        .collect();
    assert!(unexpected.is_empty(), "robot events: {events:?}");
    let task_events = leader.events_of("Task", task);
    assert!(
        task_events
            .iter()
            .all(|(reason, _, _)| reason != "TaskLost" && reason != "TaskUnknown"),
        "task events: {task_events:?}"
    );
}
