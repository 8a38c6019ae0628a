//! The real `Client` against a scripted server on loopback that holds a
//! server key pair and uses the wire-format library to check requests and
//! sign and seal its answers, or to tamper with them as a man in the
//! middle would. One thread, one connection per scripted answer.

use super::channel::Channel;
use super::client::{Client, ClientError};
use super::config::AgentConfig;
use super::counter::Counter;
use super::identity::{self, Identity};
use super::register::{self, RegisterError};
use crate::api::agent_protocol::{Assignments, RegisterRequest, StatusReply, StatusReport};
use crate::api::hex;
use crate::api::robot_channel::{
    digest, endorsement_text, info_to_robot, info_to_server, next_key_header, AnswerHead, Claim, JoinToken, KeyPair,
    PublicKeys, RequestHead, SessionKeys, COUNTER, MAC, NEXT_KEY, SEALED, SERVER_KEY, SERVER_KEYS, SESSION, SESSIONS,
    SIGNATURE, TIME,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A request as the server received it.
#[derive(Clone, Debug)]
struct Asked {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Asked {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn signature(&self) -> [u8; 64] {
        hex::decode(self.header(SIGNATURE).expect("signed")).expect("hex signature")
    }

    fn time(&self) -> u64 {
        self.header(TIME).unwrap().parse().unwrap()
    }

    fn counter(&self) -> u64 {
        self.header(COUNTER).unwrap().parse().unwrap()
    }

    fn head<'a>(&'a self, robot: &'a str) -> RequestHead<'a> {
        RequestHead {
            method: &self.method,
            target: &self.target,
            robot,
            time: self.time(),
            counter: self.counter(),
            server_key: self.header(SERVER_KEY).unwrap(),
            body_digest: digest(&self.body),
        }
    }

    /// What the real server checks first: the robot's signature.
    fn verifies(&self, robot: &str, by: &PublicKeys) -> bool {
        by.verify(self.head(robot).text().as_bytes(), &self.signature())
    }
}

type Script = Box<dyn FnOnce(&Asked) -> Vec<u8> + Send>;
/// An answer made with the server's keys and the robot's public keys.
type ServerStep = Box<dyn Fn(&KeyPair, &PublicKeys, &Asked) -> Vec<u8> + Send>;

/// Serve one scripted answer (raw response bytes) per connection, in
/// order; returns the base URL and, at the end, every request.
fn serve(script: Vec<Script>) -> (String, std::thread::JoinHandle<Vec<Asked>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let t = std::thread::spawn(move || {
        let mut asked = Vec::new();
        for answer in script {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap().to_string();
            let target = parts.next().unwrap().to_string();
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap();
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
            let len = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.parse().unwrap());
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let a = Asked {
                method,
                target,
                headers,
                body,
            };
            s.write_all(&answer(&a)).unwrap();
            asked.push(a);
        }
        asked
    });
    (base, t)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An answer signed by `server` for `asked` as the real server signs it.
struct Signed<'a> {
    server: &'a KeyPair,
    status: u16,
    content_type: &'a str,
    body: Vec<u8>,
    time: u64,
    extra: Vec<(&'a str, String)>,
}

impl Signed<'_> {
    fn to(&self, asked: &Asked) -> Vec<u8> {
        self.bound_to(&asked.signature())
    }

    fn bound_to(&self, request_signature: &[u8]) -> Vec<u8> {
        let head = AnswerHead {
            request_signature,
            status: self.status,
            time: self.time,
            content_type: self.content_type,
            body_digest: digest(&self.body),
        };
        let sig = self.server.sign(head.text().as_bytes());
        let mut out = format!(
            "HTTP/1.1 {} X\r\nContent-Type: {}\r\n{TIME}: {}\r\n{SERVER_KEY}: {}\r\n{SIGNATURE}: {}\r\nContent-Length: {}\r\n",
            self.status,
            self.content_type,
            self.time,
            self.server.public().id(),
            hex::encode(&sig),
            self.body.len()
        );
        for (k, v) in &self.extra {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

fn status_json(code: u16, message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code, "message": message
    }))
    .unwrap()
}

/// `plain` sealed to `robot` for the request `asked`, signed.
fn sealed_ok<'a>(server: &'a KeyPair, robot: &PublicKeys, asked: &Asked, plain: &[u8]) -> Signed<'a> {
    let body = robot
        .seal_to(info_to_robot(ROBOT).as_bytes(), &asked.signature(), plain)
        .unwrap();
    Signed {
        server,
        status: 200,
        content_type: SEALED,
        body,
        time: now(),
        extra: vec![],
    }
}

const ROBOT: &str = "r1";

fn config(server: &str, token: Option<String>) -> AgentConfig {
    AgentConfig {
        server: server.into(),
        join_token: token,
        name: ROBOT.into(),
        namespace: "default".into(),
        labels: Default::default(),
    }
}

/// A robot's channel in `dir` (its key made there).
fn channel(dir: &Path) -> Arc<Channel> {
    let keys = super::keys::load_or_create(dir).unwrap();
    Arc::new(Channel::new(dir.to_path_buf(), keys, Counter::open(dir).unwrap()))
}

/// A robot registered with `server` at `base`, as after `register::register`.
fn registered(dir: &Path, base: &str, server: &PublicKeys) -> Client {
    let ch = channel(dir);
    let mut id = Identity {
        server: base.into(),
        name: ROBOT.into(),
        namespace: "default".into(),
        server_sign: String::new(),
        server_seal: String::new(),
    };
    id.set_server_keys(server);
    identity::save(dir, &id).unwrap();
    ch.set_identity(id);
    Client::new(base, ch)
}

fn assignments(revision: u64) -> Vec<u8> {
    serde_json::to_vec(&Assignments {
        revision,
        poll_interval_seconds: 30,
        offline_after_seconds: 90,
        ..Default::default()
    })
    .unwrap()
}

/// `K8s4r-Server-Keys` of `k`.
fn keys_header(k: &KeyPair) -> String {
    format!("{}.{}", k.public().sign_hex(), k.public().seal_hex())
}
/// The server's 200 answer to a registration, at `time`.
fn registered_at(s: &KeyPair, a: &Asked, time: u64) -> Vec<u8> {
    let req: RegisterRequest = serde_json::from_slice(&a.body).unwrap();
    let body = serde_json::to_vec(&serde_json::json!({
        "name": req.name, "namespace": "default", "pollIntervalSeconds": 30
    }))
    .unwrap();
    Signed {
        server: s,
        status: 200,
        content_type: "application/json",
        body,
        time,
        extra: vec![(SERVER_KEYS, keys_header(s))],
    }
    .to(a)
}

#[test]
fn registration_proves_the_token_without_sending_it_and_trusts_only_the_pinned_key() {
    let server = Arc::new(KeyPair::generate());
    let token = JoinToken {
        pin: server.public().pin(),
        id: "tok1".into(),
        secret: "the-join-secret".into(),
    };
    let impostor = Arc::new(KeyPair::generate());
    let (s1, s2, s3, i1) = (
        Arc::clone(&server),
        Arc::clone(&server),
        Arc::clone(&server),
        Arc::clone(&impostor),
    );
    let (base, t) = serve(vec![
        // A man in the middle answering with his own key: not the pin.
        Box::new(move |a| registered_at(&i1, a, now())),
        // The pinned key named, but the answer signed by another.
        Box::new(move |a| {
            let mut bytes = registered_at(&impostor, a, now());
            let text = String::from_utf8_lossy(&bytes)
                .replace(&keys_header(&impostor), &keys_header(&s1))
                .replace(&impostor.public().id(), &s1.public().id());
            bytes = text.into_bytes();
            bytes
        }),
        // The real server, but the name belongs to another key.
        Box::new(move |a| {
            Signed {
                server: &s2,
                status: 409,
                content_type: "application/json",
                body: status_json(409, "robot r1 is registered with another key"),
                time: now(),
                extra: vec![(SERVER_KEYS, keys_header(&s2))],
            }
            .to(a)
        }),
        Box::new(move |a| registered_at(&s3, a, now())),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let ch = channel(dir.path());
    let client = Client::new(&base, Arc::clone(&ch));
    let cfg = config(&base, Some(token.to_text()));
    let info = serde_json::json!({"arch": "aarch64"});

    for want in ["does not match the join token's pin", "the signature does not verify"] {
        match register::register(&client, &cfg, dir.path(), info.clone()) {
            Err(RegisterError::Client(ClientError::Refused(why))) => assert!(why.contains(want), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            identity::load(dir.path(), &cfg),
            None,
            "nothing kept from a refused answer"
        );
    }
    let e = register::register(&client, &cfg, dir.path(), info.clone()).unwrap_err();
    assert!(e.to_string().contains("k8s4r robot reset"), "{e}");
    let id = register::register(&client, &cfg, dir.path(), info).unwrap();
    assert_eq!(id.server_keys(), Some(server.public()));
    assert_eq!(identity::load(dir.path(), &cfg), Some(id.clone()));
    assert_eq!(ch.identity(), Some(id));

    let asked = t.join().unwrap();
    let robot = ch.public();
    let mut counters = vec![];
    for a in &asked {
        let text = String::from_utf8_lossy(&a.body);
        assert!(
            !text.contains(&token.secret),
            "the join secret crossed the wire: {text}"
        );
        assert!(a.header("authorization").is_none(), "no bearer secret");
        assert_eq!(a.header(SERVER_KEY), Some(&hex::encode(&token.pin[..8])[..]));
        assert!(a.verifies(ROBOT, &robot), "signed by the robot's key");
        let req: RegisterRequest = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(
            (req.signing_key.as_str(), req.token_id.as_str()),
            (&robot.sign_hex()[..], "tok1")
        );
        let claim = Claim {
            token_id: &req.token_id,
            namespace: "default",
            name: &req.name,
            keys: &robot,
            time: req.time,
            nonce: &req.nonce,
        };
        let proof = hex::decode::<32>(&req.proof).unwrap();
        assert!(claim.check(&token.secret_hash(), &proof), "the proof holds");
        counters.push(a.counter());
    }
    assert!(counters.windows(2).all(|w| w[0] < w[1]), "{counters:?}");
}

#[test]
fn a_join_token_without_a_pin_is_a_clear_error_and_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ch = channel(dir.path());
    // Nothing listens there: an attempt to send would be a Transport error.
    let client = Client::new("http://127.0.0.1:9", ch);
    let cfg = config("http://127.0.0.1:9", Some("k8s4r-join-abcdef".into()));
    let e = register::register(&client, &cfg, dir.path(), serde_json::Value::Null).unwrap_err();
    assert!(matches!(e, RegisterError::JoinToken(_)), "{e:?}");
    assert!(e.to_string().contains("no server pin"), "{e}");
}

#[test]
fn a_tampered_forged_or_replayed_answer_is_refused_and_changes_nothing() {
    let server = Arc::new(KeyPair::generate());
    let dir = tempfile::tempdir().unwrap();
    let robot = super::keys::load_or_create(dir.path()).unwrap().public();
    let replay = Arc::new(std::sync::Mutex::new(Vec::new()));
    let step = |f: ServerStep| -> Script {
        let (s, r) = (Arc::clone(&server), robot.clone());
        Box::new(move |a| f(&s, &r, a))
    };
    let rec = Arc::clone(&replay);
    let replayed = Arc::clone(&replay);
    let stranger = KeyPair::generate();
    let (base, t) = serve(vec![
        // The real answer (recorded, for the replay below).
        step(Box::new(move |s, r, a| {
            let bytes = sealed_ok(s, r, a, &assignments(7)).to(a);
            *rec.lock().unwrap() = bytes.clone();
            bytes
        })),
        // A byte of the sealed body flipped on the way.
        step(Box::new(|s, r, a| {
            let mut bytes = sealed_ok(s, r, a, &assignments(8)).to(a);
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            bytes
        })),
        // Flipped before signing (a server-side fault or a stolen key
        // that cannot seal to us): the signature holds, the seal does not.
        step(Box::new(|s, r, a| {
            let mut signed = sealed_ok(s, r, a, &assignments(8));
            let last = signed.body.len() - 1;
            signed.body[last] ^= 1;
            signed.to(a)
        })),
        // The earlier answer, replayed byte for byte.
        Box::new(move |_| replayed.lock().unwrap().clone()),
        // A correct answer, but to another request.
        step(Box::new(|s, r, a| {
            sealed_ok(s, r, a, &assignments(8)).bound_to(&[3; 64])
        })),
        // Signed by a key the robot does not trust.
        step(Box::new(move |_, r, a| {
            sealed_ok(&stranger, r, a, &assignments(8)).to(a)
        })),
        // A task injected as plain JSON, signature stripped.
        Box::new(|_| {
            let body = assignments(9);
            let mut bytes = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            bytes.extend_from_slice(&body);
            bytes
        }),
        // A redirect elsewhere: not followed (the next scripted answer
        // would otherwise be taken by the redirected request).
        Box::new(|_| b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n".to_vec()),
        // Plain JSON, correctly signed: under robots/ only sealed bodies.
        step(Box::new(|s, _, a| {
            Signed {
                server: s,
                status: 200,
                content_type: "application/json",
                body: assignments(9),
                time: now(),
                extra: vec![],
            }
            .to(a)
        })),
        // An unsigned 401 "unknown robot": must not make it re-register.
        Box::new(|_| {
            let body = status_json(401, "unknown robot r1");
            let mut bytes = format!("HTTP/1.1 401 X\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            bytes.extend_from_slice(&body);
            bytes
        }),
        // The real server saying so, signed: that one counts.
        step(Box::new(|s, _, a| {
            Signed {
                server: s,
                status: 401,
                content_type: "application/json",
                body: status_json(401, "unknown robot: no keys are registered under this name"),
                time: now(),
                extra: vec![],
            }
            .to(a)
        })),
    ]);
    let client = registered(dir.path(), &base, &server.public());
    // The poller's own handling, as in the agent: only a verified answer
    // reaches the main thread's desired set.
    let mut poller = super::Poller::new(super::desired::Kept::default());
    let mut inbox = super::Inbox::default();
    let first = client.assignments(poller.since, Duration::ZERO, false, None);
    assert!(matches!(
        poller.take(first, &mut inbox, dir.path()),
        super::AfterPoll::Answered { wake: true, .. }
    ));
    inbox.latest.take().expect("the first desired set");
    assert_eq!(poller.since, 7);
    let cfg = config(&base, None);
    for want in [
        "the signature does not verify",
        "does not open",
        "the signature does not verify",
        "the signature does not verify",
        "not the trusted",
        "no valid K8s4r-Signature",
        "no valid K8s4r-Signature (status 302)",
        "not sealed",
        "no valid K8s4r-Signature",
    ] {
        let result = client.assignments(poller.since, Duration::ZERO, false, None);
        match &result {
            Err(e @ ClientError::Refused(_)) => {
                assert!(e.to_string().starts_with("refused answer: "), "{e}");
                assert!(e.to_string().contains(want), "{e} (wanted {want})");
            }
            other => panic!("{other:?} (wanted a refusal: {want})"),
        }
        assert!(matches!(
            poller.take(result, &mut inbox, dir.path()),
            super::AfterPoll::Failed(_)
        ));
        assert!(
            inbox.latest.is_none(),
            "a refused answer reached the desired set ({want})"
        );
        assert!(inbox.offline_since.is_some(), "counted as an unreachable server");
        assert!(
            identity::load(dir.path(), &cfg).is_some(),
            "the identity is kept ({want})"
        );
        assert_eq!(poller.since, 7);
    }
    // The real server's word: registering again is the way forward.
    let e = client.assignments(poller.since, Duration::ZERO, false, None);
    assert!(e.as_ref().is_err_and(ClientError::is_unknown_robot), "{e:?}");
    poller.take(e, &mut inbox, dir.path());
    assert!(inbox.latest.is_none());
    assert_eq!(
        identity::load(dir.path(), &cfg),
        None,
        "forgotten: the next start registers"
    );
    let asked = t.join().unwrap();
    for a in &asked {
        assert!(a.verifies(ROBOT, &robot));
        assert!(a.header("authorization").is_none());
        assert_eq!(a.method, "GET");
        assert!(a.target.starts_with("/agent/v1/robots/r1/assignments?since="));
    }
}

#[test]
fn reports_are_sealed_to_the_server_and_replies_opened() {
    let server = Arc::new(KeyPair::generate());
    let s = Arc::clone(&server);
    let dir = tempfile::tempdir().unwrap();
    let robot = super::keys::load_or_create(dir.path()).unwrap().public();
    let r = robot.clone();
    let (base, t) = serve(vec![Box::new(move |a| {
        let opened = s
            .open(
                info_to_server(ROBOT).as_bytes(),
                a.head(ROBOT).seal_aad().as_bytes(),
                &a.body,
            )
            .expect("the report opens with the server's key");
        let report: StatusReport = serde_json::from_slice(&opened).unwrap();
        let reply = serde_json::to_vec(&StatusReply {
            results: report
                .updates
                .iter()
                .map(|u| crate::api::agent_protocol::StatusResult {
                    task: u.task.clone(),
                    seq: u.seq,
                    outcome: crate::api::agent_protocol::Outcome::Applied,
                })
                .collect(),
        })
        .unwrap();
        sealed_ok(&s, &r, a, &reply).to(a)
    })]);
    let client = registered(dir.path(), &base, &server.public());
    let report = StatusReport {
        updates: vec![crate::api::agent_protocol::TaskStatusUpdate {
            task: "secret-task-name".into(),
            seq: 4,
            status: Default::default(),
        }],
        ..Default::default()
    };
    let reply = client.report(&report).unwrap();
    assert_eq!(reply.results.len(), 1);
    assert_eq!(
        (reply.results[0].task.as_str(), reply.results[0].seq),
        ("secret-task-name", 4)
    );
    let asked = t.join().unwrap();
    assert_eq!(asked[0].header("content-type"), Some(SEALED));
    assert!(asked[0].verifies(ROBOT, &robot));
    assert!(!String::from_utf8_lossy(&asked[0].body).contains("secret-task-name"));
}

#[test]
fn a_signed_401_about_the_clock_corrects_it_and_retries_once() {
    let server = Arc::new(KeyPair::generate());
    let dir = tempfile::tempdir().unwrap();
    let robot = super::keys::load_or_create(dir.path()).unwrap().public();
    // The server's clock is a day ahead of this robot's.
    let ahead = now() + 86_400;
    let step = |stale: bool| -> Script {
        let (s, r) = (Arc::clone(&server), robot.clone());
        Box::new(move |a| {
            if stale || a.time().abs_diff(ahead) > 300 {
                Signed {
                    server: &s,
                    status: 401,
                    content_type: "application/json",
                    body: status_json(401, "request time is off by more than 5m"),
                    time: ahead,
                    extra: vec![],
                }
                .to(a)
            } else {
                let mut signed = sealed_ok(&s, &r, a, &assignments(3));
                signed.time = ahead;
                signed.to(a)
            }
        })
    };
    let (base, t) = serve(vec![step(false), step(false), step(true), step(true)]);
    let client = registered(dir.path(), &base, &server.public());
    assert_eq!(client.assignments(0, Duration::ZERO, false, None).unwrap().revision, 3);
    // Still refused after the correction: one retry, then the error.
    let e = client.assignments(0, Duration::ZERO, false, None).unwrap_err();
    assert!(matches!(e, ClientError::Status { code: 401, .. }), "{e}");
    assert!(!e.is_unknown_robot());
    let asked = t.join().unwrap();
    assert_eq!(asked.len(), 4);
    assert!(asked[0].time().abs_diff(now()) < 60, "first with the local clock");
    assert!(asked[1].time().abs_diff(ahead) < 60, "then with the server's");
    assert!(asked[0].counter() < asked[1].counter(), "a fresh counter for the retry");
}

#[test]
fn a_next_server_key_is_adopted_only_with_a_valid_endorsement() {
    let server = Arc::new(KeyPair::generate());
    let next = Arc::new(KeyPair::generate());
    let dir = tempfile::tempdir().unwrap();
    let robot = super::keys::load_or_create(dir.path()).unwrap().public();
    let stranger = KeyPair::generate();
    let forged = next_key_header(
        &next.public(),
        &stranger.sign(endorsement_text(&next.public()).as_bytes()),
    );
    let endorsed = next_key_header(
        &next.public(),
        &server.sign(endorsement_text(&next.public()).as_bytes()),
    );
    let answer_with = |by: &Arc<KeyPair>, header: Option<String>| -> Script {
        let (s, r) = (Arc::clone(by), robot.clone());
        Box::new(move |a| {
            let mut signed = sealed_ok(&s, &r, a, &assignments(1));
            signed.extra = header.into_iter().map(|h| (NEXT_KEY, h)).collect();
            signed.to(a)
        })
    };
    let (base, t) = serve(vec![
        answer_with(&server, Some(forged)),
        answer_with(&server, Some("garbage".into())),
        answer_with(&server, Some(endorsed)),
        answer_with(&next, None),
    ]);
    let client = registered(dir.path(), &base, &server.public());
    let cfg = config(&base, None);
    for _ in 0..2 {
        client.assignments(0, Duration::ZERO, false, None).unwrap();
        assert_eq!(
            identity::load(dir.path(), &cfg).and_then(|i| i.server_keys()),
            Some(server.public()),
            "an unendorsed next key is ignored"
        );
    }
    client.assignments(0, Duration::ZERO, false, None).unwrap();
    assert_eq!(
        identity::load(dir.path(), &cfg).and_then(|i| i.server_keys()),
        Some(next.public()),
        "the endorsed key is stored"
    );
    client.assignments(0, Duration::ZERO, false, None).unwrap();
    let asked = t.join().unwrap();
    let ids: Vec<&str> = asked.iter().map(|a| a.header(SERVER_KEY).unwrap()).collect();
    let (old, new) = (server.public().id(), next.public().id());
    assert_eq!(ids, [old.as_str(), &old, &old, &new], "the next key's id from then on");
}

#[test]
fn a_registration_with_a_clock_far_off_is_claimed_again_with_the_servers_time() {
    let server = Arc::new(KeyPair::generate());
    let token = JoinToken {
        pin: server.public().pin(),
        id: "tok1".into(),
        secret: "s".into(),
    };
    let ahead = now() + 86_400;
    let step = || -> Script {
        let s = Arc::clone(&server);
        Box::new(move |a| {
            let req: RegisterRequest = serde_json::from_slice(&a.body).unwrap();
            if req.time.abs_diff(ahead) > 300 || a.time().abs_diff(ahead) > 300 {
                Signed {
                    server: &s,
                    status: 401,
                    content_type: "application/json",
                    body: status_json(401, "the request time is off by 86400s"),
                    time: ahead,
                    extra: vec![(SERVER_KEYS, keys_header(&s))],
                }
                .to(a)
            } else {
                registered_at(&s, a, ahead)
            }
        })
    };
    let (base, t) = serve(vec![step(), step()]);
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new(&base, channel(dir.path()));
    let cfg = config(&base, Some(token.to_text()));
    register::register(&client, &cfg, dir.path(), serde_json::Value::Null).unwrap();
    let asked = t.join().unwrap();
    let claimed: Vec<u64> = asked
        .iter()
        .map(|a| serde_json::from_slice::<RegisterRequest>(&a.body).unwrap().time)
        .collect();
    assert!(
        claimed[0].abs_diff(now()) < 60 && claimed[1].abs_diff(ahead) < 60,
        "{claimed:?}"
    );
}

#[test]
fn a_registration_answer_endorsing_the_next_key_makes_the_robot_trust_it() {
    // The token pins the key of its day; the server has rotated since.
    let old = Arc::new(KeyPair::generate());
    let next = KeyPair::generate().public();
    let token = JoinToken {
        pin: old.public().pin(),
        id: "tok1".into(),
        secret: "s".into(),
    };
    let endorsed = next_key_header(&next, &old.sign(endorsement_text(&next).as_bytes()));
    let o = Arc::clone(&old);
    let (base, t) = serve(vec![Box::new(move |a| {
        let mut bytes = registered_at(&o, a, now());
        // Headers are not signed: add the endorsement to the head.
        let at = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let line = format!("\r\n{NEXT_KEY}: {endorsed}");
        bytes.splice(at..at, line.into_bytes());
        bytes
    })]);
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new(&base, channel(dir.path()));
    let cfg = config(&base, Some(token.to_text()));
    let id = register::register(&client, &cfg, dir.path(), serde_json::Value::Null).unwrap();
    assert_eq!(id.server_keys(), Some(next));
    t.join().unwrap();
}

/// The first verified answer since the start wakes the main thread even
/// when nothing changed and nothing is offered: it ends a new agent's
/// probation (the robot image test once waited for the update deadline).
#[test]
fn the_first_answer_wakes_the_main_thread_even_when_nothing_changed() {
    let dir = tempfile::tempdir().unwrap();
    // A set at revision 5 kept by an earlier start.
    let mut earlier = super::Poller::new(super::desired::Kept::default());
    let mut inbox = super::Inbox::default();
    let full = crate::api::agent_protocol::Assignments {
        revision: 5,
        ..Default::default()
    };
    earlier.take(Ok(full), &mut inbox, dir.path());
    inbox.latest.take().expect("the first set");
    let mut poller = super::Poller::new(earlier.kept);
    assert_eq!(poller.since, 5);
    let same = || {
        Ok(crate::api::agent_protocol::Assignments {
            revision: 5,
            delta: true,
            ..Default::default()
        })
    };
    for (n, want) in [(1, true), (2, false)] {
        match poller.take(same(), &mut inbox, dir.path()) {
            super::AfterPoll::Answered { wake, .. } => assert_eq!(wake, want, "answer {n}"),
            super::AfterPoll::Failed(_) | super::AfterPoll::Again => panic!("answer {n} counted as a failure"),
        }
        assert!(std::mem::take(&mut inbox.reached), "answer {n} reached the server");
        assert!(inbox.latest.is_none(), "answer {n}: nothing changed");
    }
}

/// A server that holds polls: the poller asks for the hold and watches
/// for silence; a silent held poll is no outage (no backoff, not offline)
/// and the next poll waits the interval unheld; then it holds again.
#[test]
fn a_silent_held_poll_is_polled_again_unheld_at_once() {
    if !crate::tcp_info::counts_segments() {
        eprintln!("SKIP: this kernel (or qemu-user) reports no TCP_INFO segment counts: polls are not held");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut inbox = super::Inbox::default();
    let mut poller = super::Poller::new(super::desired::Kept::default());
    let held = || {
        Ok(crate::api::agent_protocol::Assignments {
            revision: 5,
            poll_interval_seconds: 30,
            offline_after_seconds: 90,
            hold_seconds: 3600,
            probe_seconds: 60,
            ..Default::default()
        })
    };
    assert!(matches!(
        poller.take(held(), &mut inbox, dir.path()),
        super::AfterPoll::Answered { .. }
    ));
    assert_eq!(
        (poller.wait, poller.silence),
        (Duration::from_secs(3600), Some(Duration::from_secs(75)))
    );
    let silent = Err(ClientError::Silent(Duration::from_secs(75)));
    assert!(matches!(
        poller.take(silent, &mut inbox, dir.path()),
        super::AfterPoll::Again
    ));
    assert_eq!((poller.wait, poller.silence), (Duration::from_secs(30), None));
    assert!(inbox.offline_since.is_none(), "a silent held poll is not an outage");
    assert!(matches!(
        poller.take(held(), &mut inbox, dir.path()),
        super::AfterPoll::Answered { .. }
    ));
    assert_eq!(poller.wait, Duration::from_secs(3600), "held again");
}

/// The session a request came in, as the server derives it, and the
/// request's MAC, which must verify.
fn session_of(server: &KeyPair, robot: &PublicKeys, a: &Asked) -> (SessionKeys, [u8; 32]) {
    let enc = hex::decode::<32>(a.header(SESSION).expect("in a session")).unwrap();
    let session = SessionKeys::accept(ROBOT, robot, server, &enc).unwrap();
    let mac = hex::decode::<32>(a.header(MAC).expect("a MAC")).unwrap();
    assert!(
        session.request_mac_ok(&a.head(ROBOT).text(), &mac),
        "the request's MAC verifies"
    );
    assert_eq!(a.header(SIGNATURE), None, "not signed in a session");
    (session, mac)
}

/// `plain` answered in the request's session (sealed, MAC), the body's
/// last byte flipped after the MAC with `tamper`.
fn in_session(server: &KeyPair, robot: &PublicKeys, a: &Asked, plain: &[u8], tamper: bool) -> Vec<u8> {
    let (session, mac) = session_of(server, robot, a);
    let mut body = session.seal_answer(&mac, plain).unwrap();
    let time = now();
    let head = AnswerHead {
        request_signature: &mac,
        status: 200,
        time,
        content_type: SEALED,
        body_digest: digest(&body),
    };
    let answer_mac = session.answer_mac(&head.text());
    if tamper {
        let n = body.len();
        body[n - 1] ^= 1;
    }
    let mut out = format!(
        "HTTP/1.1 200 X\r\nContent-Type: {SEALED}\r\n{TIME}: {time}\r\n{SERVER_KEY}: {}\r\n{MAC}: {}\r\n\
         {SESSIONS}: 1\r\nContent-Length: {}\r\n\r\n",
        server.public().id(),
        hex::encode(&answer_mac),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Sessions from the robot's side: signed until a verified answer says the
/// server takes them; then each request in one session (MAC, no
/// signature), whose answers must carry its MAC; an answer signed instead
/// ends the session, the request is sent again at once, signed, and
/// requests stay signed while sessions pause.
#[test]
fn sessions_start_when_the_server_takes_them_and_end_when_it_does_not() {
    let server = Arc::new(KeyPair::generate());
    let dir = tempfile::tempdir().unwrap();
    let robot = super::keys::load_or_create(dir.path()).unwrap().public();
    let signed_ok = |revision: u64, advertise: bool| -> Script {
        let (s, r) = (Arc::clone(&server), robot.clone());
        Box::new(move |a| {
            let mut answer = sealed_ok(&s, &r, a, &assignments(revision));
            if advertise {
                answer.extra.push((SESSIONS, "1".into()));
            }
            answer.to(a)
        })
    };
    let session_ok = |revision: u64, tamper: bool| -> Script {
        let (s, r) = (Arc::clone(&server), robot.clone());
        Box::new(move |a| in_session(&s, &r, a, &assignments(revision), tamper))
    };
    let refused: Script = {
        let (s, r) = (Arc::clone(&server), robot.clone());
        Box::new(move |a| {
            let (_, mac) = session_of(&s, &r, a);
            Signed {
                server: &s,
                status: 401,
                content_type: "application/json",
                body: status_json(401, "session refused: it does not open (sign the request instead)"),
                time: now(),
                extra: vec![(SESSIONS, "1".into())],
            }
            .bound_to(&mac)
        })
    };
    let (base, t) = serve(vec![
        signed_ok(1, false),
        signed_ok(2, true),
        session_ok(3, false),
        session_ok(4, true),
        session_ok(5, false),
        refused,
        signed_ok(6, true),
        signed_ok(7, true),
    ]);
    let client = registered(dir.path(), &base, &server.public());
    let poll = || client.assignments(0, Duration::ZERO, false, None);
    assert_eq!(poll().unwrap().revision, 1);
    assert_eq!(poll().unwrap().revision, 2);
    assert_eq!(poll().unwrap().revision, 3, "in a session");
    let e = poll().unwrap_err();
    assert!(matches!(e, ClientError::Refused(_)), "a tampered session answer: {e}");
    assert_eq!(poll().unwrap().revision, 5, "the session goes on");
    assert_eq!(
        poll().unwrap().revision,
        6,
        "refused in the session, then signed at once"
    );
    assert_eq!(poll().unwrap().revision, 7, "still signed: sessions pause");
    let asked = t.join().unwrap();
    let in_a_session: Vec<bool> = asked.iter().map(|a| a.header(SESSION).is_some()).collect();
    assert_eq!(in_a_session, [false, false, true, true, true, true, false, false]);
    let sessions: std::collections::BTreeSet<&str> = asked.iter().filter_map(|a| a.header(SESSION)).collect();
    assert_eq!(sessions.len(), 1, "one session for every request in it");
    for a in asked.iter().filter(|a| a.header(SESSION).is_none()) {
        assert!(a.verifies(ROBOT, &robot), "signed when not in a session");
    }
    let counters: Vec<u64> = asked.iter().map(Asked::counter).collect();
    assert!(counters.windows(2).all(|w| w[0] < w[1]), "{counters:?}");
}
