//! A man in the middle between a real agent and the real server, on the
//! plain-HTTP robot channel (in the session the agent makes once the
//! server says it takes them): it records every byte, flips a byte in a
//! status body, injects a Task into a long-poll answer, replays an earlier
//! (empty) answer and replays a status report. Every tampering must be
//! refused and logged, the robot's tasks must stay exactly what the server
//! wants, and the recording must hold no secret: not the join secret, no
//! task's env value, no template text.

mod common;
mod server_util;

use common::ConnectedAgent as Agent;
use serde_json::{json, Value};
use server_util::{wait_for, Server};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ENV_SECRET: &str = "S3CRET-ENV-VALUE-9f2c";
const TEMPLATE_SECRET: &str = "TEMPLATE-TEXT-77d1";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Tamper {
    None,
    /// Flip one byte in the body of the next status report.
    FlipStatusBody,
    /// Replace the next assignments answer's body with a plaintext
    /// assignment holding an extra Task (headers kept).
    InjectTask,
    /// Answer the next poll with the first answer recorded (the robot's
    /// empty assignment, from before the Job existed) without asking the server.
    ReplayFirstAnswer,
}

#[derive(Default)]
struct Tape {
    /// Every byte that crossed, both ways.
    bytes: Vec<u8>,
    /// Complete answers to assignment polls, in order.
    answers: Vec<Vec<u8>>,
    /// Complete status requests as forwarded.
    status_requests: Vec<Vec<u8>>,
    /// Tamperings done (each mode fires once).
    done: Vec<Tamper>,
}

struct Mitm {
    addr: String,
    tape: Arc<Mutex<Tape>>,
    mode: Arc<Mutex<Tamper>>,
}

/// Read one HTTP/1.1 message head and its Content-Length body.
fn read_message(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
        if buf.len() > 64 * 1024 {
            return None;
        }
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    buf.extend(body);
    Some(buf)
}

fn split(msg: &[u8]) -> (String, Vec<u8>) {
    let at = msg.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    (String::from_utf8_lossy(&msg[..at]).into_owned(), msg[at..].to_vec())
}

/// `msg` with its body replaced (and Content-Length and Content-Type fixed).
fn with_body(msg: &[u8], body: &[u8], content_type: &str) -> Vec<u8> {
    let (head, _) = split(msg);
    let mut out = String::new();
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("content-length:") || lower.starts_with("content-type:") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn evil_assignments() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "revision": 999_999,
        "pollIntervalSeconds": 1,
        "offlineAfterSeconds": 60,
        "tasks": [{
            "apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Task",
            "metadata": {"name": "evil", "namespace": "default", "uid": "evil-uid"},
            "spec": {"targetRobot": "robot-mitm", "taskGroup": "g", "job": "evil",
                "task": {"name": "evil", "driver": "exec", "config": {"execConfig": {
                    "command": "/bin/sh", "args": ["-c", "touch /tmp/k8s4r-mitm-pwned; sleep 600"]}}}}
        }]
    }))
    .unwrap()
}

impl Mitm {
    fn start(upstream: &str) -> Mitm {
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let tape = Arc::new(Mutex::new(Tape::default()));
        let mode = Arc::new(Mutex::new(Tamper::None));
        let (t, m) = (tape.clone(), mode.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let (t, m, up) = (t.clone(), m.clone(), upstream.clone());
                std::thread::spawn(move || relay(conn, &up, &t, &m));
            }
        });
        Mitm { addr, tape, mode }
    }

    fn tamper(&self, what: Tamper) {
        *self.mode.lock().unwrap() = what;
    }

    fn done(&self, what: Tamper) -> bool {
        self.tape.lock().unwrap().done.contains(&what)
    }
}

fn relay(mut client: TcpStream, upstream: &str, tape: &Mutex<Tape>, mode: &Mutex<Tamper>) {
    let Some(mut request) = read_message(&mut client) else {
        return;
    };
    let line = String::from_utf8_lossy(&request[..request.iter().position(|&b| b == b'\r').unwrap_or(0)]).into_owned();
    let is_poll = line.starts_with("GET ") && line.contains("/assignments");
    let is_status = line.starts_with("POST ") && line.contains("/status");
    tape.lock().unwrap().bytes.extend_from_slice(&request);
    let take = |want: Tamper| {
        let mut m = mode.lock().unwrap();
        (*m == want)
            .then(|| {
                *m = Tamper::None;
                tape.lock().unwrap().done.push(want);
            })
            .is_some()
    };
    if is_poll && take(Tamper::ReplayFirstAnswer) {
        let first = tape
            .lock()
            .unwrap()
            .answers
            .first()
            .cloned()
            .expect("a recorded answer");
        let _ = client.write_all(&first);
        return;
    }
    if is_status && take(Tamper::FlipStatusBody) {
        let (_, body) = split(&request);
        let at = request.len() - body.len() / 2 - 1;
        request[at] ^= 0x20;
    }
    let Ok(mut server) = TcpStream::connect(upstream) else {
        return;
    };
    if server.write_all(&request).is_err() {
        return;
    }
    // One answer, framed by its Content-Length: the server keeps the
    // connection open for more (keep-alive), so there is no end to read to.
    let mut answer = read_message(&mut server).unwrap_or_default();
    {
        let mut t = tape.lock().unwrap();
        t.bytes.extend_from_slice(&answer);
        if is_poll && !answer.is_empty() {
            t.answers.push(answer.clone());
        }
        if is_status {
            t.status_requests.push(request.clone());
        }
    }
    if is_poll && take(Tamper::InjectTask) {
        answer = with_body(&answer, &evil_assignments(), "application/json");
    }
    let _ = client.write_all(&answer);
}

fn job() -> Value {
    json!({
        "apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job",
        "metadata": {"name": "guarded", "namespace": "default"},
        "spec": {"type": "service", "robotSelector": {}, "taskGroups": [{
            "name": "g", "count": 1,
            "tasks": [{"name": "walk", "driver": "exec",
                "env": {"API_KEY": ENV_SECRET},
                "templates": [{"destPath": "local/conf.txt", "embeddedTmpl": TEMPLATE_SECRET, "perms": "0600"}],
                "config": {"execConfig": {"command": "/bin/sh", "args": ["-c", "exec sleep 600"]}}}]
        }]}
    })
}

/// The pid the server has for the Job's one task while it runs.
fn running_pid(server: &Server) -> Option<i64> {
    let t = server.object("tasks", "guarded-g-r0-walk")?;
    (t["status"]["state"] == "running")
        .then(|| t["status"]["pid"].as_i64())
        .flatten()
}

fn refusals(agent: &Agent) -> usize {
    agent.log_text().matches("refused answer").count()
}

fn alive(pid: i64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_man_in_the_middle_can_neither_read_nor_forge_the_robot_channel() {
    let _ = std::fs::remove_file("/tmp/k8s4r-mitm-pwned");
    // A poll answered every second gives the man in the middle answers to
    // tamper with: not held (a held poll answers only on a change, and
    // the proxy, terminating TCP, would swallow its keepalive probes).
    let server = Server::start_with(&["--poll-interval", "1s", "--poll-hold", "0s"]);
    let mitm = Mitm::start(&server.agent_base);
    let token = server.join_token();
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&mitm.addr, &token, "robot-mitm", "site=lab", &dir.path().join("r"), &[]);
    // The empty assignment the robot gets before any Job exists.
    wait_for("a first (empty) answer", Duration::from_secs(30), || {
        (!mitm.tape.lock().unwrap().answers.is_empty()).then_some(())
    });
    // 1. A flipped byte in the first status report of the new task: the
    // server refuses it; the agent's next report (untouched) goes through.
    let refused_before = server.metric("k8s4r_robot_channel_refused_total");
    mitm.tamper(Tamper::FlipStatusBody);
    let r = server.send_json("POST", "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs", &job());
    assert_eq!(r.status, 201, "{}", r.body);
    wait_for("the server refuses a flipped status", Duration::from_secs(60), || {
        (mitm.done(Tamper::FlipStatusBody) && server.metric("k8s4r_robot_channel_refused_total") > refused_before)
            .then_some(())
    });
    let pid = wait_for("the task running", Duration::from_secs(60), || running_pid(&server));

    // 2. A Task injected into a long-poll answer: the agent refuses the answer.
    let seen = refusals(&agent);
    mitm.tamper(Tamper::InjectTask);
    wait_for("the agent refuses an injected task", Duration::from_secs(60), || {
        (mitm.done(Tamper::InjectTask) && refusals(&agent) > seen).then_some(())
    });

    // 3. The old empty answer replayed: the agent refuses it, stops nothing.
    let seen = refusals(&agent);
    mitm.tamper(Tamper::ReplayFirstAnswer);
    wait_for("the agent refuses a replayed answer", Duration::from_secs(60), || {
        (mitm.done(Tamper::ReplayFirstAnswer) && refusals(&agent) > seen).then_some(())
    });

    // 4. A status report replayed straight to the server: refused.
    let replay = wait_for("a recorded status report", Duration::from_secs(30), || {
        mitm.tape.lock().unwrap().status_requests.last().cloned()
    });
    let mut s = TcpStream::connect(server.agent_base.trim_start_matches("http://")).unwrap();
    s.write_all(&replay).unwrap();
    let answer = read_message(&mut s).unwrap_or_default();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 401"), "replayed status answered: {answer}");

    // The robot's tasks are exactly the server's: the same process, no intruder.
    let after = wait_for("a clean poll after the tampering", Duration::from_secs(30), || {
        let n = mitm.tape.lock().unwrap().answers.len();
        (n >= 3).then_some(n)
    });
    wait_for("one more clean poll", Duration::from_secs(30), || {
        (mitm.tape.lock().unwrap().answers.len() > after).then_some(())
    });
    assert_eq!(running_pid(&server), Some(pid), "the task was replaced or stopped");
    assert!(alive(pid), "the task's process {pid} died");
    assert!(!Path::new("/tmp/k8s4r-mitm-pwned").exists(), "the injected task ran");
    assert!(server.object("robots", "robot-mitm").is_some());

    // Nothing secret crossed in clear.
    let tape = String::from_utf8_lossy(&mitm.tape.lock().unwrap().bytes).into_owned();
    let secret = token.rsplit('.').next().unwrap();
    for (what, needle) in [
        ("the join secret", secret),
        ("an env value", ENV_SECRET),
        ("template text", TEMPLATE_SECRET),
    ] {
        assert!(!tape.contains(needle), "{what} crossed the wire in clear");
    }
    assert!(
        !tape.to_ascii_lowercase().contains("authorization:"),
        "a bearer credential crossed the wire"
    );
    // The tampering above met the agent's sessions: requests in one
    // session, answers with its MAC.
    let lower = tape.to_ascii_lowercase();
    assert!(lower.contains("k8s4r-session:"), "no request went in a session");
    assert!(lower.contains("k8s4r-mac:"), "no answer carried a session MAC");
    drop(agent);
}
