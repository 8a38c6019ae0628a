//! The smallest control plane a connected `k8s4r-agent` accepts: the agent
//! API of src/api/agent_protocol.rs on a loopback port, holding one desired
//! set that the benchmark replaces. Registration always succeeds, every
//! status is acknowledged, long polls answer as soon as the desired set
//! changes. No store, no scheduler: the agent is measured, not the server.
//! It speaks the signed robot channel as far as the agent checks it: a
//! server key pinned by the join token it hands out, every answer signed
//! and bound to its request, assignments sealed to the robot, reports
//! opened; it takes sessions as the real server does (answers in a
//! session carry its MAC and are sealed with its key). It does not check
//! the robot's signatures or MACs (nothing to protect).
//! Like the real server, it serves each Task with the last status the
//! agent reported for it; otherwise the agent sees the server disagree and
//! re-reports every task on every change.
//!
//! A new desired set is serialised *before* it is published, so the time
//! of a request starts when the answer is ready to go out, as a supervisor
//! command is ready when written. As the real server, it answers an agent
//! that asks `delta=1` with what changed since the previous set (each
//! task's version hash and the digest of the complete set) when the poll
//! names that set's revision, and with the complete set otherwise.

use k8s4r::api::agent_protocol::{
    Assignments, Outcome, RegisterRequest, RegisterResponse, StatusReply, StatusReport, StatusResult, PREFIX,
};
use k8s4r::api::robot_channel::{self as wire, AnswerHead, JoinToken, KeyPair, PublicKeys, RequestHead, SessionKeys};
use k8s4r::api::{assignment_set, hex, Task, TaskStatus};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const POLL_SECONDS: u64 = 30;

#[derive(Default)]
struct Desired {
    revision: u64,
    body: Arc<Vec<u8>>,
    /// The changes from the set before (at `base`), for `delta=1` polls.
    delta: Option<(u64, Arc<Vec<u8>>)>,
}

struct Shared {
    desired: Mutex<Desired>,
    changed: Condvar,
    stop: AtomicBool,
    /// The `since` of the last long poll that started waiting.
    waiting_since: AtomicU64,
    /// The last status reported per task.
    statuses: Mutex<HashMap<String, TaskStatus>>,
    server: KeyPair,
    /// The robot's keys, from its registration.
    robot: Mutex<Option<PublicKeys>>,
    /// The last prepared set: revision, and each task's version hash.
    last: Mutex<(u64, BTreeMap<String, String>)>,
    /// When each status report arrived.
    reports: Mutex<Vec<Instant>>,
    /// The robot's current session, derived once.
    session: Mutex<Option<SessionKeys>>,
}

pub struct FakeControlPlane {
    pub url: String,
    shared: Arc<Shared>,
    port: u16,
}

/// A desired set, serialised and ready to publish.
pub struct Prepared {
    revision: u64,
    body: Vec<u8>,
    delta: Option<(u64, Vec<u8>)>,
}

impl FakeControlPlane {
    pub fn start() -> FakeControlPlane {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            desired: Mutex::new(Desired::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            waiting_since: AtomicU64::new(0),
            statuses: Mutex::new(HashMap::new()),
            server: KeyPair::generate(),
            robot: Mutex::new(None),
            last: Mutex::new((0, BTreeMap::new())),
            reports: Mutex::new(Vec::new()),
            session: Mutex::new(None),
        });
        let cp = FakeControlPlane {
            url: format!("http://127.0.0.1:{port}"),
            shared: Arc::clone(&shared),
            port,
        };
        cp.publish(cp.prepare(1, Vec::new()));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let _ = serve(conn, &shared);
                });
            }
        });
        cp
    }

    /// A join token pinning this control plane's key.
    pub fn join_token(&self) -> String {
        JoinToken {
            pin: self.shared.server.public().pin(),
            id: "bench".into(),
            secret: "bench-secret".into(),
        }
        .to_text()
    }

    /// Serialise the desired set `tasks` as revision `revision`: complete,
    /// and as the changes from the set prepared before.
    pub fn prepare(&self, revision: u64, mut tasks: Vec<Task>) -> Prepared {
        let statuses = self.shared.statuses.lock().unwrap();
        for t in &mut tasks {
            t.status = statuses.get(&t.metadata.name).cloned();
        }
        drop(statuses);
        let versions: BTreeMap<String, String> = tasks
            .iter()
            .map(|t| {
                let v = k8s4r::server::assignments::task_version(&serde_json::to_value(t).unwrap());
                (t.metadata.name.clone(), hex::encode(&v))
            })
            .collect();
        let digest = assignment_set::digest(versions.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let mut last = self.shared.last.lock().unwrap();
        let (base, before) = std::mem::replace(&mut *last, (revision, versions.clone()));
        drop(last);
        let answer = |delta: bool, tasks: Vec<Task>, removed: Vec<String>| {
            let versions = tasks
                .iter()
                .map(|t| (t.metadata.name.clone(), versions[&t.metadata.name].clone()))
                .collect();
            let a = Assignments {
                revision,
                tasks,
                delta,
                removed,
                versions,
                digest: Some(digest.clone()),
                poll_interval_seconds: POLL_SECONDS,
                offline_after_seconds: 3 * POLL_SECONDS,
                ..Default::default()
            };
            serde_json::to_vec(&a).unwrap()
        };
        let changed: Vec<Task> = tasks
            .iter()
            .filter(|t| before.get(&t.metadata.name) != versions.get(&t.metadata.name))
            .cloned()
            .collect();
        let removed = before.keys().filter(|n| !versions.contains_key(*n)).cloned().collect();
        let delta = (base != 0).then(|| (base, answer(true, changed, removed)));
        Prepared {
            revision,
            body: answer(false, tasks, Vec::new()),
            delta,
        }
    }

    /// Make `p` the desired set and wake the waiting long poll.
    pub fn publish(&self, p: Prepared) {
        let mut d = self.shared.desired.lock().unwrap();
        d.revision = p.revision;
        d.body = Arc::new(p.body);
        d.delta = p.delta.map(|(base, body)| (base, Arc::new(body)));
        self.shared.changed.notify_all();
    }

    /// The last status the agent reported for `task`.
    pub fn status_of(&self, task: &str) -> Option<TaskStatus> {
        self.shared.statuses.lock().unwrap().get(task).cloned()
    }

    /// When each status report so far arrived.
    pub fn report_times(&self) -> Vec<Instant> {
        self.shared.reports.lock().unwrap().clone()
    }

    /// The agent holds a long poll open on `revision`: it has everything.
    pub fn agent_waits_on(&self, revision: u64) -> bool {
        self.shared.waiting_since.load(Ordering::SeqCst) == revision
    }
}

impl Drop for FakeControlPlane {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Requests on one connection until the agent closes it (it keeps its
/// connection open across requests, as the real server lets it).
fn serve(conn: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    while serve_one(&mut reader, &conn, shared)? {}
    Ok(())
}

/// One request; false at the end of the connection.
fn serve_one(reader: &mut BufReader<TcpStream>, mut out: &TcpStream, shared: &Shared) -> std::io::Result<bool> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 || shared.stop.load(Ordering::SeqCst) {
        return Ok(false);
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let header = |name: &str| {
        headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
            .unwrap_or("")
    };
    let length = header("content-length").parse().unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    // In a session the answer binds to the request's MAC, else to its
    // signature.
    let session = hex::decode::<32>(header(wire::SESSION)).and_then(|enc| {
        let mut known = shared.session.lock().unwrap();
        if known.as_ref().is_none_or(|k| k.enc != enc) {
            let robot_keys = shared.robot.lock().unwrap().clone()?;
            let name = target.split('/').nth(4).unwrap_or("");
            *known = SessionKeys::accept(name, &robot_keys, &shared.server, &enc).ok();
        }
        known.clone()
    });
    let proof = match &session {
        Some(_) => hex::decode::<32>(header(wire::MAC)).unwrap_or([0; 32]).to_vec(),
        None => hex::decode::<64>(header(wire::SIGNATURE)).unwrap_or([0; 64]).to_vec(),
    };
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let path = path.strip_prefix(PREFIX).unwrap_or("");
    let robot = path
        .strip_prefix("/robots/")
        .and_then(|p| p.split('/').next())
        .unwrap_or("");
    // A body sent to the server opens with its key (aad: the request head).
    let open = |body: &[u8]| {
        let head = RequestHead {
            method: &method,
            target: &target,
            robot,
            time: header(wire::TIME).parse().unwrap_or(0),
            counter: header(wire::COUNTER).parse().unwrap_or(0),
            server_key: header(wire::SERVER_KEY),
            body_digest: wire::digest(body),
        };
        let info = wire::info_to_server(robot);
        match &session {
            Some(s) => s.open_request(head.seal_aad().as_bytes(), body),
            None => shared.server.open(info.as_bytes(), head.seal_aad().as_bytes(), body),
        }
        .unwrap_or_default()
    };
    let reply: Arc<Vec<u8>> = match (method.as_str(), path) {
        ("POST", "/register") => {
            let req: RegisterRequest = serde_json::from_slice(&body).unwrap_or_default();
            *shared.robot.lock().unwrap() = PublicKeys::from_hex(&req.signing_key, &req.sealing_key).ok();
            let r = RegisterResponse {
                name: req.name,
                namespace: "default".into(),
                poll_interval_seconds: POLL_SECONDS,
                release_key: None,
            };
            Arc::new(serde_json::to_vec(&r).unwrap())
        }
        ("GET", p) if p.ends_with("/assignments") => long_poll(shared, query),
        ("POST", p) if p.ends_with("/status") => {
            shared.reports.lock().unwrap().push(Instant::now());
            let report: StatusReport = serde_json::from_slice(&open(&body)).unwrap_or_default();
            let mut statuses = shared.statuses.lock().unwrap();
            for u in &report.updates {
                statuses.insert(u.task.clone(), u.status.clone());
            }
            drop(statuses);
            let results = report
                .updates
                .into_iter()
                .map(|u| StatusResult {
                    task: u.task,
                    seq: u.seq,
                    outcome: Outcome::Applied,
                })
                .collect();
            Arc::new(serde_json::to_vec(&StatusReply { results }).unwrap())
        }
        _ => Arc::new(b"{}".to_vec()),
    };
    // Under robots/ every answer body is sealed to the robot, bound to the
    // request it answers.
    let (content_type, reply) = match (shared.robot.lock().unwrap().as_ref(), &session) {
        (Some(_), Some(s)) if !robot.is_empty() => (wire::SEALED, s.seal_answer(&proof, &reply).unwrap()),
        (Some(keys), None) if !robot.is_empty() => {
            let info = wire::info_to_robot(robot);
            let sealed = keys.seal_to(info.as_bytes(), &proof, &reply).unwrap();
            (wire::SEALED, sealed)
        }
        _ => ("application/json", reply.to_vec()),
    };
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let head = AnswerHead {
        request_signature: &proof,
        status: 200,
        time,
        content_type,
        body_digest: wire::digest(&reply),
    };
    let (proof_header, proof) = match &session {
        Some(s) => (wire::MAC, hex::encode(&s.answer_mac(&head.text()))),
        None => (
            wire::SIGNATURE,
            hex::encode(&shared.server.sign(head.text().as_bytes())),
        ),
    };
    let public = shared.server.public();
    // Head and body in one write: two would wait on Nagle's algorithm for
    // the agent's delayed acknowledgement (40 ms) on a kept connection.
    let mut answer = Vec::with_capacity(512 + reply.len());
    write!(
        answer,
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {}: {time}\r\n{}: {}\r\n{proof_header}: {proof}\r\n{}: 1\r\n{}: {}.{}\r\n\r\n",
        reply.len(),
        wire::TIME,
        wire::SERVER_KEY,
        public.id(),
        wire::SESSIONS,
        wire::SERVER_KEYS,
        public.sign_hex(),
        public.seal_hex(),
    )?;
    answer.extend_from_slice(&reply);
    out.write_all(&answer)?;
    Ok(true)
}

/// Answer at once if the desired set is newer than `since`, else when it
/// changes or the poll's `wait` is over.
fn long_poll(shared: &Shared, query: &str) -> Arc<Vec<u8>> {
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or("")
    };
    let since: u64 = param("since").parse().unwrap_or(0);
    let wait: u64 = param("wait").trim_end_matches('s').parse().unwrap_or(0);
    let d = shared.desired.lock().unwrap();
    if d.revision == since {
        shared.waiting_since.store(since, Ordering::SeqCst);
    }
    let (d, _) = shared
        .changed
        .wait_timeout_while(d, Duration::from_secs(wait.min(POLL_SECONDS)), |d| {
            d.revision == since && !shared.stop.load(Ordering::SeqCst)
        })
        .unwrap();
    match &d.delta {
        Some((base, body)) if *base == since && param("delta") == "1" => Arc::clone(body),
        _ => Arc::clone(&d.body),
    }
}
