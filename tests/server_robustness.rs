#![cfg(feature = "server")]
//! The server under input meant to break it, against the real binary:
//! durations too large for the clock, a panicking handler, more watches,
//! polls, status updates, device facts or robots than its caps allow,
//! foreign and legacy robot tokens, bodies a browser could send, and the
//! trailing slashes client libraries add. Every time: a clear Status, and
//! the server answers the next request.

mod common;
mod server_util;

use common::wait_for;
use serde_json::{json, Value};
use server_util::{Robot, Server};
use std::time::{Duration, Instant};

const G: &str = "/apis/robot.k8s4r.io/v1alpha1";
const JOBS: &str = "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs";
const ROBOTS: &str = "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/robots";

fn a_job(name: &str) -> Value {
    json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job", "metadata": {"name": name},
        "spec": {"taskGroups": [{"name": "g", "tasks": [{"name": "t", "driver": "exec",
            "config": {"execConfig": {"command": "/bin/true"}}}]}]}})
}

fn a_robot(name: &str) -> Value {
    json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Robot",
           "metadata": {"name": name}, "spec": {"description": name}})
}

/// A failed request's Status: (code, reason, message).
fn status_of(r: &server_util::Reply) -> (u16, String, String) {
    let v = r.json();
    assert_eq!(v["kind"], "Status", "{}", r.body);
    assert_eq!(v["code"], r.status, "{}", r.body);
    (
        r.status,
        v["reason"].as_str().unwrap_or_default().to_string(),
        v["message"].as_str().unwrap_or_default().to_string(),
    )
}

/// The server still answers, and nothing panicked on the way.
fn still_serving(s: &Server) {
    assert_eq!(s.get("/version").status, 200, "the server stopped answering");
    assert_eq!(s.panics(), 0, "the input made the server panic");
}

#[test]
fn durations_beyond_the_clock_are_refused_and_the_server_lives() {
    // Join tokens may live as long as any duration here (the server's
    // default cap is a day): the 10-year bound is what is tested.
    let s = Server::start_with(&[
        "--poll-interval",
        "1s",
        "--poll-hold",
        "2s",
        "--max-join-token-ttl",
        "87600h",
    ]);
    // The request that aborted the server: no credentials needed.
    for t in ["10000000000000000000", "18446744073709551615", "315360001"] {
        let r = s.get(&format!("{G}/namespaces/default/tasks?watch=true&timeoutSeconds={t}"));
        let (code, reason, message) = status_of(&r);
        assert_eq!((code, reason.as_str()), (400, "BadRequest"), "{}", r.body);
        assert!(
            message.contains("timeoutSeconds") && message.contains("315360000 seconds (10 years)"),
            "the error names the parameter and the limit: {message}"
        );
    }
    for t in ["99999999999999999999999", "-1", "1e3"] {
        let r = s.get(&format!("{JOBS}?watch=1&timeoutSeconds={t}"));
        let (code, _, message) = status_of(&r);
        assert_eq!(code, 400, "{}", r.body);
        assert!(message.contains("timeoutSeconds"), "{message}");
    }
    // At the limit it is a watch like any other, and a short one ends.
    let started = Instant::now();
    let r = s.get(&format!("{JOBS}?watch=1&timeoutSeconds=1"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(started.elapsed() < Duration::from_secs(30));
    let lines = s.stream(&format!("{JOBS}?watch=1&timeoutSeconds=315360000"));
    s.send_json("POST", JOBS, &a_job("far"));
    let line = lines
        .recv_timeout(Duration::from_secs(20))
        .expect("the 10-year watch delivers");
    assert!(line.contains("\"ADDED\"") && line.contains("\"far\""), "{line}");

    // A join token living past the clock: refused, naming the field.
    for ttl in [
        json!(10_000_000_000_000_000_000u64),
        json!(u64::MAX),
        json!(315_360_001),
    ] {
        let r = s.send_json("POST", "/agent/v1/jointokens", &json!({"ttlSeconds": ttl}));
        let (code, _, message) = status_of(&r);
        assert_eq!(code, 400, "{}", r.body);
        assert!(
            message.contains("ttlSeconds") && message.contains("315360000 seconds"),
            "{message}"
        );
    }
    let r = s.send_json("POST", "/agent/v1/jointokens", &json!({"ttlSeconds": 315_360_000}));
    assert_eq!(r.status, 200, "{}", r.body);

    // The long poll's wait: any length parses, --poll-hold caps it (the
    // poll interval where the server cannot watch the connection).
    let join = s.join_token();
    let mut robot = Robot::register(&s, &join, "patient", json!({}));
    robot.poll("0s");
    for wait in ["10000000000000000000", "18446744073709551615", "3000000000000000h"] {
        let started = Instant::now();
        robot.poll(wait);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "wait={wait} was not capped by the 2 s --poll-hold"
        );
    }
    let r = robot.send("GET", "/agent/v1/robots/patient/assignments?wait=forever", None);
    assert_eq!(status_of(&r).0, 400, "{}", r.body);
    still_serving(&s);
}

#[test]
fn server_flags_with_unbounded_durations_are_refused() {
    for args in [
        ["--poll-interval", "3000000000000000h"],
        ["--offline-after", "3000000000000000h"],
        ["--max-poll-rate", "NaN"],
        ["--max-watches", "100000000000"],
    ] {
        let out = std::process::Command::new(server_util::server_bin())
            .arg("server")
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--data", "/nonexistent/never-created"])
            .output()
            .expect("run k8s4r server");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} must be a usage error: {err}");
        assert!(err.contains(args[0]), "the error names {}: {err}", args[0]);
    }
}

/// The `[profile.release]` section of Cargo.toml, as text.
fn release_profile() -> String {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let start = manifest.find("[profile.release]").expect("a [profile.release] section");
    let rest = &manifest[start + 1..];
    let end = rest.find("\n[").map_or(rest.len(), |i| i + 1);
    rest[..end].to_string()
}

/// `cargo test` runs the debug build, which unwinds whatever the release
/// profile says; `make build` and packages use the release profile. Both
/// must unwind for panics to stay contained (`cargo test --release --test
/// server_robustness` runs the test below on the release build itself).
#[test]
fn the_release_server_unwinds() {
    let profile = release_profile();
    let aborts = profile
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").replace(' ', ""))
        .any(|l| l == "panic=\"abort\"");
    assert!(
        !aborts,
        "[profile.release] sets panic = \"abort\": a panicking request would kill the server \
         (abort only the agent's builds, with CARGO_PROFILE_RELEASE_PANIC=abort):\n{profile}"
    );
}

#[test]
fn a_panicking_handler_answers_500_and_the_server_lives() {
    // No backtraces: three forced panics would fill the test log.
    let s = Server::start_with_env(&[], &[("K8S4R_TEST_PANIC_ROUTE", "1"), ("RUST_BACKTRACE", "0")]);
    assert_eq!(s.panics(), 0);
    for n in 1..=3 {
        let r = s.get("/debug/panic");
        let (code, reason, message) = status_of(&r);
        assert_eq!((code, reason.as_str()), (500, "InternalError"), "{}", r.body);
        assert!(message.contains("k8s4r_panics_total"), "{message}");
        assert_eq!(s.panics(), n, "/metrics counts every panic");
        assert_eq!(s.get("/version").status, 200, "the next request is answered");
    }
    assert_eq!(s.send_json("POST", JOBS, &a_job("after-panics")).status, 201);
    // Without the switch the route does not exist.
    let plain = Server::start();
    assert_eq!(plain.get("/debug/panic").status, 404);
    assert_eq!(plain.panics(), 0);
}

#[test]
fn watches_are_capped() {
    let s = Server::start_with(&["--max-watches", "2"]);
    assert_eq!(s.send_json("POST", ROBOTS, &a_robot("seen")).status, 201);
    // Each open watch sends the robot first: once it did, it holds a slot.
    let open: Vec<_> = (0..2)
        .map(|_| {
            let lines = s.stream(&format!("{ROBOTS}?watch=1&timeoutSeconds=3"));
            let first = lines.recv_timeout(Duration::from_secs(20)).expect("the watch starts");
            assert!(first.contains("\"seen\""), "{first}");
            lines
        })
        .collect();
    assert_eq!(s.metric("k8s4r_watches_open"), 2);
    let r = s.get(&format!("{ROBOTS}?watch=1"));
    let (code, reason, message) = status_of(&r);
    assert_eq!((code, reason.as_str()), (429, "TooManyRequests"), "{}", r.body);
    assert!(message.contains("--max-watches") && message.contains('2'), "{message}");
    assert_eq!(r.json()["details"]["retryAfterSeconds"], 1);
    // Lists are no watches: still served.
    assert_eq!(s.get(ROBOTS).status, 200);
    // The slots come back when the watches end (their 3 s timeout).
    drop(open);
    wait_for("a watch slot to be free again", Duration::from_secs(30), || {
        (s.get(&format!("{ROBOTS}?watch=1&timeoutSeconds=1")).status == 200).then_some(())
    });
    wait_for("every watch to end", Duration::from_secs(30), || {
        (s.metric("k8s4r_watches_open") == 0).then_some(())
    });
    still_serving(&s);
}

#[test]
fn a_second_long_poll_of_a_robot_ends_the_first() {
    let s = Server::start_with(&["--poll-interval", "20s"]);
    let join = s.join_token();
    let mut robot = Robot::register(&s, &join, "twin", json!({}));
    robot.poll("0s");
    // Both polls are signed before either is sent, the first with the
    // lower counter (a robot's requests arrive in order).
    let first_poll = robot.prepare(
        "GET",
        &format!("/agent/v1/robots/twin/assignments?since={}&wait=20s", robot.since),
        None,
    );
    let second_poll = robot.prepare("GET", "/agent/v1/robots/twin/assignments?since=0&wait=20s", None);
    let (first, second) = std::thread::scope(|scope| {
        let (robot, first_poll) = (&robot, &first_poll);
        let first = scope.spawn(move || {
            let started = Instant::now();
            let r = robot.send_raw(first_poll, &[]);
            (r, started.elapsed())
        });
        wait_for("the first poll to wait", Duration::from_secs(20), || {
            (s.metric("k8s4r_long_polls_open") == 1).then_some(())
        });
        // The second (asking from the start, so it answers at once) takes
        // the robot's one slot: the first ends now, not after its 20 s.
        let second = robot.send_raw(&second_poll, &[]);
        (first.join().unwrap(), second)
    });
    assert!(robot.verify(&second_poll, &second).is_ok());
    assert_eq!(second.status, 200, "{}", second.body);
    let (first, took) = first;
    assert!(robot.verify(&first_poll, &first).is_ok(), "the 429 is signed too");
    let (code, body) = (first.status, first.body);
    assert_eq!(code, 429, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["reason"], "TooManyRequests", "{body}");
    assert!(v["message"].as_str().unwrap().contains("newer poll"), "{body}");
    assert!(
        took < Duration::from_secs(20),
        "the first poll waited out its time: {took:?}"
    );
    assert_eq!(s.metric("k8s4r_long_polls_open"), 0);
    still_serving(&s);
}

#[test]
fn status_updates_per_report_are_capped() {
    let s = Server::start_with(&["--max-status-updates", "3"]);
    let join = s.join_token();
    let mut robot = Robot::register(&s, &join, "chatty", json!({}));
    let mut report = |n: usize| {
        let updates: Vec<Value> = (0..n)
            .map(|i| json!({"task": format!("t{i}"), "seq": 1, "status": {"state": "running"}}))
            .collect();
        robot.try_report(&json!({ "updates": updates }))
    };
    let r = report(4);
    let (code, reason, message) = status_of(&r);
    assert_eq!((code, reason.as_str()), (413, "RequestEntityTooLarge"), "{}", r.body);
    assert!(
        message.contains("updates") && message.contains("--max-status-updates"),
        "{message}"
    );
    let r = report(3);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["results"].as_array().unwrap().len(), 3);
    still_serving(&s);
}

#[test]
fn device_info_size_is_capped() {
    let s = Server::start_with(&["--max-device-info", "1024"]);
    let join = s.join_token();
    let big = json!({"hostname": "h", "notes": "x".repeat(2000)});
    let (_, r) = Robot::try_register(&s, &join, "bulky", json!({"deviceInfo": big}));
    let (code, reason, message) = status_of(&r);
    assert_eq!((code, reason.as_str()), (413, "RequestEntityTooLarge"), "{}", r.body);
    assert!(message.contains("deviceInfo") && message.contains("1024"), "{message}");
    assert!(
        s.object("robots", "bulky").is_none(),
        "a refused registration creates no Robot"
    );
    let mut robot = Robot::register(&s, &join, "bulky", json!({}));
    let mut report = |info: &Value| robot.try_report(&json!({"updates": [], "deviceInfo": info}));
    let r = report(&big);
    assert_eq!(status_of(&r).0, 413, "{}", r.body);
    let r = report(&json!({"hostname": "small"}));
    assert_eq!(r.status, 200, "{}", r.body);
    let stored = s.object("robots", "bulky").unwrap();
    assert_eq!(stored["status"]["deviceInfo"]["hostname"], "small");
    still_serving(&s);
}

#[test]
fn a_join_token_creates_at_most_its_limit_of_robots() {
    let s = Server::start_with(&["--max-robots-per-join-token", "2"]);
    let join = s.join_token();
    let register = |join: &str, name: &str| Robot::try_register(&s, join, name, json!({})).1;
    let (mut first, r) = Robot::try_register(&s, &join, "r1", json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(register(&join, "r2").status, 200);
    let r = register(&join, "r3");
    let (code, reason, message) = status_of(&r);
    assert_eq!((code, reason.as_str()), (429, "TooManyRequests"), "{}", r.body);
    assert!(message.contains("--max-robots-per-join-token"), "{message}");
    assert!(s.object("robots", "r3").is_none());
    // A robot registering again (with its keys) creates no Robot: not counted.
    let r = first.register_again(&join, json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    let other = s.join_token();
    assert_eq!(register(&other, "r3").status, 200);
    still_serving(&s);
}

/// Requests on a robot's path without valid signature headers (a bearer
/// token, a malformed or oversized header) are refused with a signed 401
/// naming the header, and spend nothing: the robot's own request with the
/// same counter goes through afterwards.
#[test]
fn unsigned_or_malformed_robot_requests_get_a_signed_401() {
    let s = Server::start();
    let join = s.join_token();
    let mut robot = Robot::register(&s, &join, "ra", json!({}));
    let path = "/agent/v1/robots/ra/assignments?wait=0s";
    let p = robot.prepare("GET", path, None);
    let with = |name: &str, value: &str| -> Vec<(String, String)> {
        let mut h: Vec<(String, String)> = p
            .headers
            .iter()
            .filter(|(k, _)| *k != name)
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        if !value.is_empty() {
            h.push((name.to_string(), value.to_string()));
        }
        h
    };
    let cases = [
        (
            vec![("Authorization".to_string(), "Bearer k8s4r-robot-0000".to_string())],
            "K8s4r-",
        ),
        (with("K8s4r-Signature", "zz"), "K8s4r-Signature"),
        (with("K8s4r-Counter", "-1"), "K8s4r-Counter"),
        (with("K8s4r-Time", &"9".repeat(4000)), "K8s4r-Time"),
        (with("K8s4r-Server-Key", ""), "K8s4r-Server-Key"),
    ];
    for (headers, named) in cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let r = s.request("GET", path, "", None, &h);
        let (code, _, message) = status_of(&r);
        assert_eq!(code, 401, "{headers:?}: {}", r.body);
        assert!(message.contains(named), "{headers:?}: {message}");
        assert!(r.header("K8s4r-Signature").is_some(), "every answer is signed");
    }
    let r = robot.exchange(&p);
    assert_eq!(r.status, 200, "the refusals spent no counter: {}", r.body);
    assert!(s.metric("k8s4r_robot_channel_refused_total") >= 5);
    still_serving(&s);
}

#[test]
fn bodies_of_other_media_types_get_415() {
    let s = Server::start();
    let job = a_job("csrf").to_string();
    for ct in [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "",
    ] {
        let r = s.request("POST", JOBS, ct, Some(job.as_bytes()), &[]);
        let (code, reason, _) = status_of(&r);
        assert_eq!(
            (code, reason.as_str()),
            (415, "UnsupportedMediaType"),
            "{ct:?}: {}",
            r.body
        );
    }
    // No Content-Type at all, as a browser sends a Blob: refused on plain
    // HTTP (--insecure-http), where a web page's request could arrive.
    let no_type = |job: &str| {
        format!(
            "POST {JOBS} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{job}",
            job.len()
        )
    };
    let plain = Server::start_with(&["--insecure-http"]);
    let reply = plain.raw(&no_type(&job));
    assert!(reply.starts_with("HTTP/1.1 415"), "{reply}");
    assert!(reply.contains("needs a Content-Type"), "{reply}");
    assert!(
        plain.object("jobs", "csrf").is_none(),
        "no refused body created anything"
    );
    assert!(s.object("jobs", "csrf").is_none(), "no refused body created anything");
    // Over HTTPS (which no browser completes without trusting the
    // cluster's CA) it is JSON, as kube-apiserver reads it and Kubernetes'
    // Python client sends it.
    let reply = s.raw(&no_type(&a_job("untyped").to_string()));
    assert!(reply.starts_with("HTTP/1.1 201"), "{reply}");
    let join = s.join_token();
    // A registration must be signed (headers no page can add without
    // asking first), and one carrying a join token is from an old agent.
    let r = s.request(
        "POST",
        "/agent/v1/register",
        "text/plain",
        Some(json!({"joinToken": join, "name": "sneaky"}).to_string().as_bytes()),
        &[],
    );
    assert_eq!(status_of(&r).0, 400, "{}", r.body);
    assert!(s.object("robots", "sneaky").is_none());

    // What kubectl and the agent send is accepted.
    let r = s.request(
        "POST",
        JOBS,
        "application/json; charset=utf-8",
        Some(job.as_bytes()),
        &[],
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let yaml =
        "apiVersion: robot.k8s4r.io/v1alpha1\nkind: Robot\nmetadata:\n  name: from-yaml\nspec:\n  description: y\n";
    let r = s.request("POST", ROBOTS, "application/yaml", Some(yaml.as_bytes()), &[]);
    assert_eq!(r.status, 201, "{}", r.body);
    let patch = json!({"metadata": {"labels": {"a": "b"}}}).to_string();
    let r = s.request(
        "PATCH",
        &format!("{JOBS}/csrf"),
        "application/merge-patch+json",
        Some(patch.as_bytes()),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = s.request(
        "DELETE",
        &format!("{JOBS}/csrf"),
        "application/json",
        Some(br#"{"propagationPolicy":"Background"}"#),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Requests without a body need no Content-Type.
    assert_eq!(
        s.request("DELETE", &format!("{ROBOTS}/from-yaml"), "", None, &[])
            .status,
        200
    );
    assert_eq!(Robot::register(&s, &join, "legit", json!({})).name, "legit");
    still_serving(&s);
}

#[test]
fn discovery_paths_answer_with_a_trailing_slash() {
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), "0123456789abcdef-operator").unwrap();
    let s = Server::start_with(&["--admin-token-file", token.path().to_str().unwrap()]);
    let admin = [("Authorization", "Bearer 0123456789abcdef-operator")];
    for path in [
        "/version",
        "/healthz",
        "/api",
        "/api/v1",
        "/apis",
        "/apis/robot.k8s4r.io",
        G,
        "/openapi/v3",
    ] {
        let bare = s.request("GET", path, "", None, &admin);
        let slashed = s.request("GET", &format!("{path}/"), "", None, &admin);
        assert_eq!(bare.status, 200, "{path}: {}", bare.body);
        assert_eq!(slashed.status, 200, "{path}/: {}", slashed.body);
        assert_eq!(slashed.body, bare.body, "{path}/ answers as {path}");
        assert_eq!(slashed.content_type, bare.content_type, "{path}/");
    }
    // Still open without credentials where the bare path is, and guarded
    // where it is not.
    assert_eq!(s.get("/version/").status, 200);
    assert_eq!(s.get("/apis/").status, 401);
    // A query survives the rewrite; other paths keep their meaning.
    assert_eq!(s.request("GET", &format!("{G}/?x=1"), "", None, &admin).status, 200);
    assert_eq!(s.request("GET", "/nothing/", "", None, &admin).status, 404);
    still_serving(&s);
}

/// SIGTERM while robots hold polls (up to `--poll-hold`, an hour by
/// default) and an operator watches: the server answers the polls at
/// once, ends the watch and exits, rather than waiting out every poll and
/// watch (the service manager would kill it first).
#[test]
fn a_stopping_server_answers_held_polls_and_exits() {
    let mut s = Server::start_with(&["--poll-interval", "20s"]);
    let watch = s.read_to_end(&format!("{JOBS}?watch=true&timeoutSeconds=600"));
    wait_for("the watch to open", Duration::from_secs(20), || {
        (s.metric("k8s4r_watches_open") == 1).then_some(())
    });
    let join = s.join_token();
    let mut robot = Robot::register(&s, &join, "held", json!({}));
    robot.poll("0s");
    let poll = robot.prepare(
        "GET",
        &format!("/agent/v1/robots/held/assignments?since={}&wait=600s", robot.since),
        None,
    );
    let pid = s.pid().unwrap();
    let answer = std::thread::scope(|scope| {
        let (robot, poll) = (&robot, &poll);
        let answer = scope.spawn(move || robot.send_raw(poll, &[]));
        wait_for("the poll to wait", Duration::from_secs(20), || {
            (s.metric("k8s4r_long_polls_open") == 1).then_some(())
        });
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        // Not a timing claim: a server that waits for the poll would
        // take its 600 s; 30 s is far beyond a prompt answer.
        wait_for("the server to exit", Duration::from_secs(30), || {
            s.has_exited().then_some(())
        });
        answer.join().unwrap()
    });
    assert!(robot.verify(&poll, &answer).is_ok(), "{}", answer.body);
    assert_eq!(answer.status, 200, "{}", answer.body);
    // The watch ended as HTTP ends a body, not cut by the stop's grace.
    let ended = watch.recv_timeout(Duration::from_secs(10)).expect("the watch to end");
    assert_eq!(ended, Ok(()), "the watch was cut");
    drop(robot);
    let status = s.reap().unwrap();
    assert!(status.success(), "{status:?}");
}
