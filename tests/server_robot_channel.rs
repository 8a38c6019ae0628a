#![cfg(feature = "server")]
//! The robot channel against the real server binary: registration proves
//! the join token without sending it, every answer is signed and bound to
//! its request, assignments and status reports are sealed, and tampered,
//! replayed or stale requests are refused (signed 401, logged, counted in
//! `k8s4r_robot_channel_refused_total`) without changing anything. The
//! simulated robot (server_util::Robot) checks every answer's signature.
//! (A join token alone taking a registered name over, and robot-claimed
//! operator labels: tests/server_isolation.rs.)

mod common;
mod server_util;

use common::wait_for;
use k8s4r::api::hex;
use k8s4r::api::robot_channel::{self as wire, AnswerHead, JoinToken, KeyPair, RequestHead, SessionKeys, SEALED};
use serde_json::{json, Value};
use server_util::{server_bin, Reply, Robot, Server};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const SECRET_ENV: &str = "env-value-nobody-on-the-path-may-read";

/// A service Job of one task on robot `robot` whose env holds SECRET_ENV.
fn place_secret_task(s: &Server, robot: &mut Robot, job: &str) -> String {
    let body = json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job", "metadata": {"name": job},
        "spec": {"type": "service", "robotSelector": {"robot": robot.name}, "taskGroups": [{"name": "g",
          "tasks": [{"name": "main", "driver": "exec", "env": {"TOKEN": SECRET_ENV},
            "config": {"execConfig": {"command": "/bin/sleep", "args": ["60"]}}}]}]}});
    let r = s.send_json("POST", "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs", &body);
    assert_eq!(r.status, 201, "{}", r.body);
    let task = format!("{job}-g-r0-main");
    wait_for("the task on the robot", T, || {
        robot.task_names().contains(&task).then_some(())
    });
    task
}

fn refused(s: &Server) -> u64 {
    s.metric("k8s4r_robot_channel_refused_total")
}

fn task_message(s: &Server, task: &str) -> Value {
    s.object("tasks", task).unwrap()["status"]["message"].clone()
}

#[test]
fn assignments_are_sealed_to_the_robot_and_every_answer_is_signed() {
    let s = Server::start();
    let join = s.join_token();
    let mut robot = Robot::register(&s, &join, "r1", json!({"robot": "r1"}));
    let task = place_secret_task(&s, &mut robot, "sealed");
    let p = robot.prepare("GET", "/agent/v1/robots/r1/assignments?since=0&wait=0s", None);
    let raw = robot.send_raw(&p, &[]);
    assert_eq!(raw.status, 200, "{}", raw.body);
    assert_eq!(raw.content_type, SEALED);
    for plain in [SECRET_ENV, task.as_str(), "revision", "/bin/sleep"] {
        assert!(!raw.body.contains(plain), "{plain:?} crossed the wire in the clear");
    }
    // Opened by the robot's key only, for this request only.
    let opened: Value = serde_json::from_slice(&robot.verify(&p, &raw).unwrap()).unwrap();
    assert_eq!(opened["tasks"][0]["spec"]["env"]["TOKEN"], SECRET_ENV);
    let other = robot.prepare("GET", "/agent/v1/robots/r1/assignments?since=0&wait=0s", None);
    assert!(
        robot.verify(&other, &raw).is_err(),
        "an answer verifies only for the request it answers"
    );
    // Status reports travel sealed too, and their replies.
    let reply = robot.report(&task, "running");
    assert_eq!(reply["results"][0]["outcome"], "applied");
    assert_eq!(s.object("tasks", &task).unwrap()["status"]["state"], "running");
}

#[test]
fn a_wrong_proof_or_a_replayed_registration_is_refused() {
    let s = Server::start();
    let join = s.join_token();
    let mut token = JoinToken::parse(&join).unwrap();
    token.secret = "a-guessed-secret".into();
    let before = refused(&s);
    let (_, r) = Robot::try_register(&s, &token.to_text(), "guess", json!({}));
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("proof does not match"), "{}", r.body);
    assert!(s.object("robots", "guess").is_none());

    // The same signed registration sent twice: the second is a replay.
    let (mut robot, r) = Robot::try_register(&s, &join, "once", json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    let p = robot
        .session
        .register(&JoinToken::parse(&join).unwrap(), Default::default());
    assert_eq!(robot.exchange(&p).status, 200, "the robot itself registers again");
    let replay = robot.send_raw(&p, &p.body);
    assert_eq!(replay.status, 401, "{}", replay.body);
    assert!(replay.body.contains("replayed counter"), "{}", replay.body);
    assert!(robot.verify(&p, &replay).is_ok(), "the refusal is signed");
    assert!(refused(&s) >= before + 2);
}

#[test]
fn a_tampered_or_replayed_status_report_changes_nothing() {
    let s = Server::start();
    let join = s.join_token();
    let mut robot = Robot::register(&s, &join, "r1", json!({"robot": "r1"}));
    let task = place_secret_task(&s, &mut robot, "work");
    let running = |message: &str| json!({"state": "running", "message": message});
    robot.report_seq(&task, 1, running("one"));
    let before = refused(&s);

    // A byte flipped in the sealed body: refused, the task as it was.
    let report = json!({"updates": [{"task": task, "seq": 2, "status": running("two")}]});
    let p = robot.prepare("POST", "/agent/v1/robots/r1/status", Some(&report));
    let mut flipped = p.body.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let r = robot.send_raw(&p, &flipped);
    assert!(r.status == 401 || r.status == 400, "{} {}", r.status, r.body);
    assert!(robot.verify(&p, &r).is_ok(), "the refusal is signed");
    assert_eq!(task_message(&s, &task), "one");
    assert_eq!(refused(&s), before + 1);

    // The genuine report once, then the very same request again.
    let p = robot.prepare("POST", "/agent/v1/robots/r1/status", Some(&report));
    assert_eq!(robot.exchange(&p).status, 200);
    assert_eq!(task_message(&s, &task), "two");
    robot.report_seq(&task, 3, running("three"));
    let replay = robot.send_raw(&p, &p.body);
    assert_eq!(replay.status, 401, "{}", replay.body);
    assert!(replay.body.contains("replayed counter"), "{}", replay.body);
    assert!(robot.verify(&p, &replay).is_ok(), "the refusal is signed");
    assert_eq!(task_message(&s, &task), "three");
    assert_eq!(refused(&s), before + 2);
}

#[test]
fn a_request_an_hour_off_gets_a_signed_401_and_the_robot_takes_the_servers_time() {
    let s = Server::start();
    let join = s.join_token();
    let mut robot = Robot::register(&s, &join, "drifter", json!({}));
    robot.session.offset = -3600;
    let r = robot.try_poll("0s");
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("time is off by 36"), "{}", r.body);
    assert!(r.body.contains("--robot-clock-skew"), "{}", r.body);
    // The signed answer carried the server's time: the next one is in time.
    assert!(robot.session.offset.abs() < 60);
    robot.poll("0s");
    // The skew is the server's to set.
    let strict = Server::start_with(&["--robot-clock-skew", "10s"]);
    let join = strict.join_token();
    let mut robot = Robot::register(&strict, &join, "strict", json!({}));
    robot.session.offset = 120;
    assert_eq!(robot.try_poll("0s").status, 401);
    let r = Command::new(server_bin())
        .args(["server", "--robot-clock-skew", "2d"])
        .output()
        .unwrap();
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("--robot-clock-skew"));
}

/// `k8s4r robot-keys rotate`: a robot that names the old key is answered
/// with it and told the new one (endorsed), switches, and keeps working;
/// new join tokens pin the new key; once the overlap is over the old key is
/// refused.
#[test]
fn after_a_key_rotation_robots_switch_and_the_old_key_retires() {
    let s = Server::start();
    let join = s.join_token();
    let old_pin = JoinToken::parse(&join).unwrap().pin;
    let mut mover = Robot::register(&s, &join, "mover", json!({"robot": "mover"}));
    let mut sleeper = Robot::register(&s, &join, "sleeper", json!({}));
    let task = place_secret_task(&s, &mut mover, "kept");
    let old_id = mover.session.server_id();

    let out = s
        .k8s4r_cmd()
        .args(["robot-keys", "rotate", "--overlap", "5s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains(&old_id) && listed.contains("<current>"), "{listed}");

    let p = mover.prepare("GET", "/agent/v1/robots/mover/assignments?since=0&wait=0s", None);
    let r = mover.exchange(&p);
    assert_eq!(r.status, 200);
    assert!(r.header("K8s4r-Next-Key").is_some(), "the old key names the new one");
    let new_id = mover.session.server_id();
    assert_ne!(new_id, old_id, "the robot switched to the endorsed key");
    let r = mover.send("GET", "/agent/v1/robots/mover/assignments?since=0&wait=0s", None);
    assert_eq!(r.header("K8s4r-Server-Key").as_deref(), Some(new_id.as_str()));
    assert!(r.header("K8s4r-Next-Key").is_none());
    assert_eq!(mover.report(&task, "running")["results"][0]["outcome"], "applied");
    let fresh = JoinToken::parse(&s.join_token()).unwrap();
    assert_ne!(fresh.pin, old_pin, "new join tokens pin the new key");

    // The robot that slept through the overlap is refused under the old key.
    let r = wait_for("the old key to retire", T, || {
        let p = sleeper.prepare("GET", "/agent/v1/robots/sleeper/assignments?since=0&wait=0s", None);
        let r = sleeper.send_raw(&p, &[]);
        (r.status == 401).then_some(r)
    });
    assert!(r.body.contains("unknown server key"), "{}", r.body);
    assert_eq!(mover.task_names(), [task.as_str()], "the switched robot keeps working");
}

/// The join secret never crosses the wire nor reaches the store: not in
/// any answer (headers or body), not in any file of the data directory.
#[test]
fn no_answer_or_stored_value_holds_the_join_secret() {
    let mut s = Server::start();
    let join = s.join_token();
    let secret = JoinToken::parse(&join).unwrap().secret;
    let (mut robot, r) = Robot::try_register(&s, &join, "r1", json!({"labels": {"robot": "r1"}}));
    let mut seen = vec![r.body.clone(), format!("{:?}", r.headers)];
    place_secret_task(&s, &mut robot, "job");
    let r = robot.send("GET", "/agent/v1/robots/r1/assignments?since=0&wait=0s", None);
    seen.push(format!("{} {:?}", r.body, r.headers));
    seen.push(s.get("/agent/v1/jointokens").body);
    for text in &seen {
        assert!(!text.contains(&secret), "an answer holds the join secret: {text}");
    }
    s.stop();
    let mut files = vec![s.data.path().to_path_buf()];
    let mut checked = 0;
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let bytes = std::fs::read(&p).unwrap();
        let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
        assert!(!found, "{} holds the join secret", p.display());
        checked += 1;
    }
    assert!(checked > 0, "the data directory holds the store");
}

/// One request of `robot` made by hand in `session` (or, with `signed`, a
/// signature header beside it): headers and body as sent.
fn session_request(
    robot: &mut Robot,
    session: &SessionKeys,
    name: &str,
    method: &str,
    target: &str,
    plain: &[u8],
) -> (Vec<(&'static str, String)>, Vec<u8>, [u8; 32]) {
    robot.session.counter += 1;
    let server_key = robot.session.server_id();
    let mut head = RequestHead {
        method,
        target,
        robot: name,
        time: robot.session.time(),
        counter: robot.session.counter,
        server_key: &server_key,
        body_digest: [0; 32],
    };
    let r = session.request(&mut head, plain).unwrap();
    let (body, headers, mac) = (r.body, r.headers, r.mac);
    (headers, body, mac)
}

fn send_in_session(s: &Server, target: &str, method: &str, headers: &[(&'static str, String)], body: &[u8]) -> Reply {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let content_type = if body.is_empty() { "" } else { SEALED };
    s.agent_request(
        method,
        target,
        content_type,
        (method == "POST").then_some(body),
        &headers,
    )
}

fn answer_head<'a>(r: &'a Reply, proof: &'a [u8]) -> AnswerHead<'a> {
    AnswerHead {
        request_signature: proof,
        status: r.status,
        time: r.header(wire::TIME).unwrap().parse().unwrap(),
        content_type: &r.content_type,
        body_digest: wire::digest(&r.bytes),
    }
}

/// Sessions (api::robot_channel::session) against the real server: an
/// answer in a session carries the session's MAC and is sealed with its
/// key, not signed; a replayed, altered or forged session request, one
/// under another robot's name and a session at registration are refused
/// with a signed 401; a burst of new sessions under one name is refused
/// after the first.
#[test]
fn a_session_is_taken_only_from_its_robot_and_answered_in_it() {
    let s = Server::start();
    let join = s.join_token();
    let mut robot = Robot::register(&s, &join, "s1", json!({"robot": "s1"}));
    let task = place_secret_task(&s, &mut robot, "insession");
    let server = robot.session.server.clone().expect("the server key is trusted");
    let session = SessionKeys::start("s1", &robot.session.keys, &server).unwrap();
    let target = "/agent/v1/robots/s1/assignments?since=0&wait=0s";

    // Answered in the session: its MAC, sealed with its key, no signature.
    let (headers, body, mac) = session_request(&mut robot, &session, "s1", "GET", target, b"");
    let r = send_in_session(&s, target, "GET", &headers, &body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.content_type, SEALED);
    assert_eq!(r.header(wire::SIGNATURE), None, "an answer in a session is not signed");
    let answer_mac = hex::decode::<32>(&r.header(wire::MAC).expect("a MAC")).unwrap();
    let text = answer_head(&r, &mac).text();
    assert!(session.answer_mac_ok(&text, &answer_mac));
    assert!(!session.answer_mac_ok(&answer_head(&r, &[0; 32]).text(), &answer_mac));
    assert!(
        !r.body.contains(SECRET_ENV),
        "the session's answer crossed in the clear"
    );
    let opened: Value = serde_json::from_slice(&session.open_answer(&mac, &r.bytes).unwrap()).unwrap();
    assert_eq!(opened["tasks"][0]["spec"]["env"]["TOKEN"], SECRET_ENV);

    // A status report in the session: sealed both ways, applied.
    let status_target = "/agent/v1/robots/s1/status";
    let report = json!({"updates": [{"task": task, "seq": 1, "status": {"state": "running"}}]});
    let (headers, body, mac) = session_request(
        &mut robot,
        &session,
        "s1",
        "POST",
        status_target,
        report.to_string().as_bytes(),
    );
    assert!(!String::from_utf8_lossy(&body).contains("running"));
    let r = send_in_session(&s, status_target, "POST", &headers, &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let reply: Value = serde_json::from_slice(&session.open_answer(&mac, &r.bytes).unwrap()).unwrap();
    assert_eq!(reply["results"][0]["outcome"], "applied", "{reply}");
    assert_eq!(s.object("tasks", &task).unwrap()["status"]["state"], "running");

    // Replayed, altered: refused, signed (the server did not take them).
    let signed_refusal = |r: &Reply, proof: &[u8], why: &str| {
        assert_eq!(r.status, 401, "{}", r.body);
        assert!(r.body.contains(why), "{why:?} not in {}", r.body);
        assert_eq!(r.header(wire::MAC), None);
        let sig = hex::decode::<64>(&r.header(wire::SIGNATURE).expect("signed")).unwrap();
        assert!(server.verify(answer_head(r, proof).text().as_bytes(), &sig));
    };
    let before = refused(&s);
    let r = send_in_session(&s, status_target, "POST", &headers, &body);
    signed_refusal(&r, &mac, "replayed counter");
    let (mut headers, body, mac) = session_request(&mut robot, &session, "s1", "GET", target, b"");
    let mut bad = mac;
    bad[0] ^= 1;
    headers[4].1 = hex::encode(&bad);
    signed_refusal(
        &send_in_session(&s, target, "GET", &headers, &body),
        &bad,
        "bad session MAC",
    );
    // A GET of `robot`'s assignments as `name` in `session`: refused, why.
    let refused_get = |robot: &mut Robot, session: &SessionKeys, name: &str, why: &str| {
        let target = format!("/agent/v1/robots/{name}/assignments?since=0&wait=0s");
        let (headers, body, mac) = session_request(robot, session, name, "GET", &target, b"");
        signed_refusal(&send_in_session(&s, &target, "GET", &headers, &body), &mac, why);
    };
    // Another robot's name on this robot's session (and its own MAC text).
    let mut third = Robot::register(&s, &join, "s3", json!({}));
    refused_get(&mut third, &session, "s3", "bad session MAC");
    // A session someone made with their own key under s2's name.
    let mut other = Robot::register(&s, &join, "s2", json!({}));
    let forger = KeyPair::generate();
    let forged = SessionKeys::start("s2", &forger, &server).unwrap();
    refused_get(&mut other, &forged, "s2", "bad session MAC");
    // And another new one at once: not even derived.
    let forged = SessionKeys::start("s2", &forger, &server).unwrap();
    refused_get(&mut other, &forged, "s2", "a new session less than");
    // No session at registration.
    let (headers, body, mac) = session_request(&mut robot, &session, "s1", "POST", "/agent/v1/register", b"{}");
    signed_refusal(
        &send_in_session(&s, "/agent/v1/register", "POST", &headers, &body),
        &mac,
        "registration is signed",
    );
    assert!(refused(&s) >= before + 6);
    // The robot's own session still works; signed requests too.
    let (headers, body, _) = session_request(&mut robot, &session, "s1", "GET", target, b"");
    assert_eq!(send_in_session(&s, target, "GET", &headers, &body).status, 200);
    robot.poll("0s");
}
