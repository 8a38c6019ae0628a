#![cfg(feature = "server")]
//! `k8s4r migrate`: a fleet run on SQLite moves to etcd. Objects keep their
//! identities, robots keep their tokens and their long-poll positions, join
//! tokens still work, and a second migration into the same etcd refuses.

mod common;
mod server_util;

use serde_json::json;
use server_util::etcd::Etcd;
use server_util::{server_bin, wait_for, Robot, Server};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn migrate(data: &std::path::Path, etcd: &Etcd) -> std::process::Output {
    Command::new(server_bin())
        .args(["migrate", "--from-data"])
        .arg(data)
        .args(["--to-etcd", &etcd.endpoints()])
        .output()
        .expect("run k8s4r migrate")
}

#[test]
fn migrate_moves_a_fleet_from_sqlite_to_etcd() {
    let etcd = Etcd::start();
    let mut old = Server::start();
    let join = old.join_token();
    let mut robot = Robot::register(&old, &join, "r1", json!({"fleet": "a"}));
    let job = json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job", "metadata": {"name": "j"},
        "spec": {"type": "service", "robotSelector": {"matchLabels": {"fleet": "a"}}, "taskGroups": [{"name": "g", "count": 1,
          "tasks": [{"name": "main", "driver": "exec", "config": {"execConfig": {"command": "/bin/sleep", "args": ["60"]}}}]}]}});
    let r = old.send_json("POST", "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs", &job);
    assert_eq!(r.status, 201, "{}", r.body);
    let task = "j-g-r0-main";
    wait_for("the task placed", T, || {
        old.object("tasks", task)?["spec"]["targetRobot"].as_str().map(|_| ())
    });
    let uid = old.object("tasks", task).unwrap()["metadata"]["uid"].clone();
    assert_eq!(robot.task_names(), [task]);
    let since = robot.since;
    let session = robot.session;
    old.stop();

    let out = migrate(old.data.path(), &etcd);
    assert!(
        out.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("migrated"), "{said}");
    // Not a terminal: progress as plain lines, ending with the count.
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(
        progress
            .lines()
            .any(|l| l.starts_with("copying objects: ") && l.ends_with(" copied")),
        "{progress}"
    );

    let new = Server::start_with(&["--etcd", &etcd.endpoints()]);
    assert_eq!(new.object("tasks", task).expect("task moved")["metadata"]["uid"], uid);
    assert_eq!(new.object("jobs", "j").expect("job moved")["spec"]["type"], "service");
    // The robot's keys (and the server's) moved: its requests still
    // verify, and its poll from the old revision is answered in full, at
    // once.
    let mut moved = Robot::resume(&new, "r1", session, since);
    let reply = moved.poll("10s");
    assert!(moved.since > since, "etcd's revision moved past the SQLite one");
    assert_eq!(reply["tasks"][0]["metadata"]["name"], task);
    // The join token moved too.
    Robot::register(&new, &join, "r2", json!({}));

    // Migrating into a cluster that already holds a fleet is refused.
    let again = migrate(old.data.path(), &etcd);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing"));
}
