#![cfg(feature = "server")]
//! Who may do what: join tokens expire and can be revoked (by id or
//! whole text), a robot's keys can be reset, and a robot's signature never
//! works as an operator credential on the Kubernetes API.

mod common;
mod server_util;

use common::wait_for;
use serde_json::{json, Value};
use server_util::{Robot, Server};
use std::time::Duration;

const JOBS: &str = "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs";

/// Register `name` (new keys) with `join`: the answer's status.
fn register(s: &Server, join: &str, name: &str) -> u16 {
    register_reply(s, join, name).0
}

/// `k8s4r token ARGS` with the admin kubeconfig: (success, stdout, stderr).
fn token_cli(s: &Server, args: &[&str]) -> (bool, String, String) {
    let out = s.k8s4r_cmd().arg("token").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn a_job() -> Value {
    json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job", "metadata": {"name": "sneaky"},
        "spec": {"taskGroups": [{"name": "g", "tasks": [{"name": "t", "driver": "exec",
            "config": {"execConfig": {"command": "/bin/true"}}}]}]}})
}

#[test]
fn join_tokens_expire() {
    let s = Server::start();
    let r = s.send_json("POST", "/agent/v1/jointokens", &json!({"ttlSeconds": 1}));
    assert_eq!(r.status, 200, "{}", r.body);
    let join = r.json()["token"].as_str().unwrap().to_string();
    // Not asserting it is still valid here: on a loaded machine a second can
    // pass before the first request. It must become invalid, and say so.
    let mut n = 0;
    let refused = wait_for("the 1 s join token to expire", Duration::from_secs(30), || {
        n += 1;
        let (_, r) = Robot::try_register(&s, &join, &format!("late-{n}"), json!({}));
        (r.status == 401).then_some(r)
    });
    assert!(refused.body.contains("unknown or expired"), "{}", refused.body);
    let (ok, out, err) = token_cli(&s, &["list"]);
    assert!(ok, "{err}");
    assert!(out.contains("expired"), "{out}");
}

#[test]
fn join_tokens_are_revoked_by_id_or_text_and_robots_keep_their_keys() {
    let s = Server::start();
    let (ok, out, err) = token_cli(&s, &["create", "--ttl", "1h"]);
    assert!(ok, "{err}");
    let first = out.lines().last().unwrap().trim().to_string();
    let id = err
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no id in {err:?}"))
        .to_string();
    let second = s.join_token();

    assert_eq!(register(&s, &first, "early"), 200);
    let mut early = Robot::register(&s, &first, "early2", json!({}));

    let (ok, listed, err) = token_cli(&s, &["list"]);
    assert!(ok, "{err}");
    assert!(listed.contains(&id) && listed.contains("valid"), "{listed}");
    let secret = first.rsplit('.').next().unwrap();
    assert!(!listed.contains(secret), "a secret must never be listed: {listed}");

    // Too short a prefix is refused rather than guessed.
    let (ok, _, err) = token_cli(&s, &["revoke", &id[..4]]);
    assert!(!ok && err.contains("404"), "{err}");
    let (ok, _, err) = token_cli(&s, &["revoke", &id[..8]]);
    assert!(ok, "{err}");
    assert_eq!(
        register(&s, &first, "late"),
        401,
        "a revoked join token still registers"
    );
    assert!(early.task_names().is_empty(), "a robot registered before keeps working");

    // By its whole text, too; revoking twice says it is gone.
    let (ok, _, err) = token_cli(&s, &["revoke", &second]);
    assert!(ok, "{err}");
    assert_eq!(register(&s, &second, "late2"), 401);
    let (ok, _, err) = token_cli(&s, &["revoke", &second]);
    assert!(!ok && err.contains("not found"), "{err}");
    let (ok, listed, _) = token_cli(&s, &["list"]);
    assert!(ok && !listed.contains(&id), "{listed}");
}

/// `k8s4r robot reset` (and its old name, `token revoke --robot`) unbinds
/// a robot's keys: its requests are refused until a join token binds the
/// name again.
#[test]
fn a_reset_robot_is_refused_until_it_registers_again() {
    let s = Server::start();
    let join = s.join_token();
    let mut robot = Robot::register(&s, &join, "r1", json!({}));
    assert!(robot.task_names().is_empty());
    let robot_cli = |args: &[&str]| s.k8s4r_cmd().args(args).output().unwrap();
    let out = robot_cli(&["robot", "reset", "r1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = robot.try_poll("0s");
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("unknown robot"), "{}", r.body);
    let out = robot_cli(&["robot", "reset", "nobody"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    // The Robot object stays; a join token binds the name again.
    assert!(s.object("robots", "r1").is_some());
    let r = robot.register_again(&join, json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(robot.task_names().is_empty());
    let (ok, _, err) = token_cli(&s, &["revoke", "--robot", "r1"]);
    assert!(ok, "{err}");
    assert_eq!(robot.try_poll("0s").status, 401);
}

/// A robot's signed request is no operator credential: on a server with
/// an operator token it is refused on the Kubernetes API and for join
/// tokens.
#[test]
fn a_robot_signature_is_never_an_operator_credential() {
    let dir = tempfile::tempdir().unwrap();
    let tf = dir.path().join("admin-token");
    std::fs::write(&tf, "operator-secret-0123456789\n").unwrap();
    let s = Server::start_with(&["--admin-token-file", tf.to_str().unwrap()]);
    let join = s
        .request(
            "POST",
            "/agent/v1/jointokens",
            "application/json",
            Some(b"{}"),
            &[("Authorization", "Bearer operator-secret-0123456789")],
        )
        .json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut robot = Robot::register(&s, &join, "bot", json!({}));
    for (method, path, body) in [
        ("POST", JOBS, Some(a_job())),
        ("GET", JOBS, None),
        ("POST", "/agent/v1/jointokens", Some(json!({}))),
    ] {
        // On the Kubernetes API's listener, with nothing but the signature.
        let p = robot.prepare(method, path, body.as_ref());
        let headers: Vec<(&str, &str)> = p.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = s.request(method, path, "application/json", Some(&p.body), &headers);
        assert!(
            r.status == 401 || r.status == 415,
            "{method} {path} signed by a robot: {} {}",
            r.status,
            r.body
        );
    }
    let r = s.send_json("GET", JOBS, &json!({}));
    assert_eq!(r.status, 401);
}

/// A robot's own claim to an operator-only label (`k8s4r.io/...`) is
/// dropped, with a Warning event saying so; a Job selecting on that label
/// is not placed on it until an operator labels the robot (kubectl label:
/// metadata.labels); for any key, the operator's value wins over the
/// robot's claim.
#[test]
fn a_robot_cannot_label_itself_into_an_operator_selector() {
    let s = Server::start();
    let join = s.join_token();
    let _sly = Robot::register(&s, &join, "sly", json!({"k8s4r.io/env": "production", "zone": "lab"}));
    let robot = s.object("robots", "sly").unwrap();
    assert_eq!(robot["spec"]["labels"], json!({"zone": "lab"}), "{robot}");
    let events = s.events_of("Robot", "sly");
    assert!(
        events
            .iter()
            .any(|(reason, m, _)| reason == "OperatorLabelsIgnored" && m.contains("k8s4r.io/env")),
        "{events:?}"
    );
    let jobs = "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs";
    let job = |name: &str, selector: Value| {
        json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job", "metadata": {"name": name},
               "spec": {"type": "service", "robotSelector": selector, "taskGroups": [{"name": "g",
                 "tasks": [{"name": "main", "driver": "exec", "config": {"execConfig": {"command": "/bin/true"}}}]}]}})
    };
    let placed = |task: &str| {
        s.object("tasks", task)
            .and_then(|t| t["spec"]["targetRobot"].as_str().map(String::from))
            .filter(|r| !r.is_empty())
    };
    assert_eq!(
        s.send_json("POST", jobs, &job("prod", json!({"k8s4r.io/env": "production"})))
            .status,
        201
    );
    wait_for(
        "FailedScheduling of the production task",
        Duration::from_secs(30),
        || {
            s.events_of("Task", "prod-g-r0-main")
                .iter()
                .any(|(reason, _, _)| reason == "FailedScheduling")
                .then_some(())
        },
    );
    assert_eq!(placed("prod-g-r0-main"), None);
    // The operator labels it, and overrides the robot's own zone.
    let patch = json!({"metadata": {"labels": {"k8s4r.io/env": "production", "zone": "hall-2"}}});
    let r = s.merge_patch("/apis/robot.k8s4r.io/v1alpha1/namespaces/default/robots/sly", &patch);
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for("the production task placed on sly", Duration::from_secs(30), || {
        placed("prod-g-r0-main").filter(|r| r == "sly")
    });
    assert_eq!(
        s.send_json("POST", jobs, &job("lab", json!({"zone": "lab"}))).status,
        201
    );
    assert_eq!(
        s.send_json("POST", jobs, &job("hall", json!({"zone": "hall-2"})))
            .status,
        201
    );
    wait_for("the hall-2 task placed on sly", Duration::from_secs(30), || {
        placed("hall-g-r0-main").filter(|r| r == "sly")
    });
    assert_eq!(
        placed("lab-g-r0-main"),
        None,
        "the robot's own zone lost to the operator's"
    );
}

/// `POST /agent/v1/register` of `name` (new keys) with `join`: (status,
/// body) of the verified answer.
fn register_reply(s: &Server, join: &str, name: &str) -> (u16, String) {
    let (_, r) = Robot::try_register(s, join, name, json!({}));
    (r.status, r.body)
}

/// `k8s4r token create ARGS`: (secret, id): the last line of stdout, and
/// the id from "join token ID (expires ...)" on stderr.
fn create_token(s: &Server, args: &[&str]) -> (String, String) {
    let (ok, out, err) = token_cli(s, &[&["create"], args].concat());
    assert!(ok, "{err}");
    let id = err
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no id in {err:?}"));
    (out.lines().last().unwrap().trim().to_string(), id.to_string())
}

/// The `token list` row of token `id`.
fn listed_row(s: &Server, id: &str) -> String {
    let (ok, listed, err) = token_cli(s, &["list"]);
    assert!(ok, "{err}");
    listed
        .lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_else(|| panic!("no row for {id} in {listed}"))
        .trim_end()
        .to_string()
}

#[test]
fn join_token_lifetimes_are_capped_by_the_server() {
    let s = Server::start();
    let ask = |ttl: u64| s.send_json("POST", "/agent/v1/jointokens", &json!({"ttlSeconds": ttl}));
    let r = ask(86_401);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body
            .contains("ttlSeconds: 86401 seconds is more than the limit of 86400 seconds (--max-join-token-ttl)"),
        "{}",
        r.body
    );
    let r = ask(86_400);
    assert_eq!(r.status, 200, "the default limit is a day: {}", r.body);
    assert_eq!(register(&s, r.json()["token"].as_str().unwrap(), "a"), 200);

    let short = Server::start_with(&["--max-join-token-ttl", "2h"]);
    let (ok, _, err) = token_cli(&short, &["create", "--ttl", "3h"]);
    assert!(
        !ok && err.contains("400") && err.contains("(--max-join-token-ttl)"),
        "{err}"
    );
    // Without --ttl the day the server would give is shortened to its limit.
    let (join, _) = create_token(&short, &[]);
    assert_eq!(register(&short, &join, "b"), 200);
    let (join, _) = create_token(&short, &["--ttl", "2h"]);
    assert_eq!(register(&short, &join, "c"), 200);
}

#[test]
fn a_join_token_with_uses_registers_that_many_robots() {
    let s = Server::start();
    let (join, id) = create_token(&s, &["--uses", "2"]);
    assert!(listed_row(&s, &id).contains(" 0/2 "), "{}", listed_row(&s, &id));
    let (mut a, r) = Robot::try_register(&s, &join, "a", json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    // The robot registering its name again (with its keys) uses nothing.
    let r = a.register_again(&join, json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(register_reply(&s, &join, "b").0, 200);
    let (code, body) = register_reply(&s, &join, "c");
    assert_eq!(code, 429, "{body}");
    assert!(
        body.contains("registered the 2 robots it was created for (k8s4r token create --uses 2)"),
        "{body}"
    );
    assert!(s.object("robots", "c").is_none());
    assert!(listed_row(&s, &id).contains(" 2/2 "), "{}", listed_row(&s, &id));
    let (ok, _, err) = token_cli(&s, &["create", "--uses", "0"]);
    assert!(!ok && err.contains("--uses: must be at least 1"), "{err}");
}

#[test]
fn a_join_token_bound_to_a_name_registers_only_that_robot() {
    let s = Server::start();
    let (join, id) = create_token(&s, &["--name", "r1"]);
    assert!(listed_row(&s, &id).ends_with(" r1"), "{}", listed_row(&s, &id));
    let (code, body) = register_reply(&s, &join, "r2");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains(r#"registers only robot \"r1\""#), "{body}");
    assert!(s.object("robots", "r2").is_none());
    let mut r1 = Robot::register(&s, &join, "r1", json!({}));
    assert!(r1.task_names().is_empty());
    assert!(listed_row(&s, &id).contains(" 1 "), "{}", listed_row(&s, &id));
    let (_, unbound) = create_token(&s, &[]);
    assert!(
        listed_row(&s, &unbound).ends_with(" <any>"),
        "{}",
        listed_row(&s, &unbound)
    );
    let (ok, _, err) = token_cli(&s, &["create", "--name", "Not_A_Name"]);
    assert!(!ok && err.contains("400") && err.contains("name: "), "{err}");
}

/// A join token alone cannot take over a registered robot's name: 409
/// saying what would (an operator's `k8s4r robot reset`), and the real
/// robot keeps its keys and its task. The robot itself, proving who it is
/// with its keys, registers again; after `k8s4r robot reset` the name is
/// free for a join token and new keys, and the old keys are refused.
#[test]
fn a_join_token_cannot_take_over_a_registered_robot() {
    let s = Server::start();
    let join = s.join_token();
    let mut real = Robot::register(&s, &join, "owned", json!({"role": "real"}));
    let job = json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job", "metadata": {"name": "work"},
        "spec": {"type": "service", "robotSelector": {"role": "real"}, "taskGroups": [{"name": "g",
          "tasks": [{"name": "main", "driver": "exec", "config": {"execConfig": {"command": "/bin/sleep", "args": ["60"]}}}]}]}});
    let r = s.send_json("POST", "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs", &job);
    assert_eq!(r.status, 201, "{}", r.body);
    let has_task = |v: &Value| v["tasks"].as_array().is_some_and(|t| !t.is_empty());
    wait_for("the task on the real robot", Duration::from_secs(30), || {
        has_task(&real.poll("0s")).then_some(())
    });

    let impostor = json!({"labels": {"role": "impostor"}});
    let (mut thief, r) = Robot::try_register(&s, &join, "owned", impostor.clone());
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body.contains("registered with another key") && r.body.contains("k8s4r robot reset owned"),
        "{}",
        r.body
    );
    // Nothing changed for the real robot: its keys, labels and task.
    assert!(has_task(&real.poll("0s")));
    assert_eq!(s.object("robots", "owned").unwrap()["spec"]["labels"]["role"], "real");
    assert_eq!(thief.try_poll("0s").status, 401, "the impostor's keys open nothing");

    // The robot itself may register again (e.g. after a server move).
    let again = real.register_again(&join, json!({"labels": {"role": "real"}}));
    assert_eq!(again.status, 200, "{}", again.body);
    assert!(has_task(&real.poll("0s")));

    // An operator frees the name; then a join token registers new keys,
    // and the old ones are refused.
    let out = s.k8s4r_cmd().args(["robot", "reset", "owned"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(thief.register_again(&join, impostor).status, 200);
    assert_eq!(real.try_poll("0s").status, 401, "the old keys are unbound");
}
