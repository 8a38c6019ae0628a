//! The robot's end of the signed channel (wire format:
//! `crate::api::robot_channel`): what it signs, seals, checks and learns.
//! No HTTP here (`client` sends what this prepares).
//!
//! Rules, in the order an answer meets them:
//! 1. its signature must verify under the server key the robot trusts
//!    (or, while registering, the key the join token pins), over the
//!    robot's own request signature, the status, time, content type and
//!    body digest: a forged, altered or replayed answer is refused before
//!    anything in it is looked at;
//! 2. the robot learns the server's clock from it (robots often have no
//!    real-time clock);
//! 3. a `K8s4r-Next-Key` endorsed by the trusted key is adopted (stored
//!    first, then used); one that is not endorsed is ignored and logged;
//! 4. a successful answer under `/agent/v1/robots/` must be sealed to the
//!    robot and open with its key; anything else is refused.
//!
//! A refused answer is logged ("refused answer: ...") and reported to the
//! caller as an error that changes nothing, like an unreachable server.
//!
//! Sessions (`crate::api::robot_channel::SessionKeys`): once a verified
//! answer says the server takes them (`K8s4r-Sessions: 1`), requests under
//! `robots/` carry a session and its MAC instead of a signature, and their
//! answers must carry the session's MAC (rule 1) and be sealed with its
//! key (rule 4); an answer signed instead is checked as in rule 1 and ends
//! the session (the server did not take it: it restarted without it, the
//! key rotated, or someone replayed it), and sessions pause for
//! [`SESSION_PAUSE`], requests signed meanwhile. A session is started
//! anew at least every `SESSION_LIFETIME`, after `SESSION_MESSAGES`
//! requests, and when the trusted server key changes; its keys live in
//! memory only.

use super::counter::Counter;
use super::identity::{self, Identity};
use crate::api::robot_channel::{
    digest, endorsed_next_key, info_to_robot, info_to_server, AnswerHead, KeyPair, PublicKeys, RequestHead, NEXT_KEY,
    SEALED, SERVER_KEY, SERVER_KEYS, SIGNATURE, TIME,
};
use crate::api::robot_channel::{SessionKeys, MAC, SESSIONS, SESSION_LIFETIME, SESSION_MESSAGES};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a request's `finish` makes: its body, headers and proof.
type Finished = (Vec<u8>, Vec<(&'static str, String)>, Vec<u8>);

/// After the server answered a session request with a signature, requests
/// are signed this long before the next session.
pub const SESSION_PAUSE: Duration = Duration::from_secs(60);

/// The server key a request names, and seals to when it has a body.
pub enum Peer<'a> {
    /// A registered robot: the key it trusts (sealing both ways).
    Trusted(&'a PublicKeys),
    /// Registering: only the join token's pin is known (nothing sealed).
    Pinned(&'a [u8; 32]),
}

impl Peer<'_> {
    fn key_id(&self) -> String {
        match self {
            Peer::Trusted(k) => k.id(),
            Peer::Pinned(pin) => crate::api::hex::encode(&pin[..8]),
        }
    }
}

/// A signed request, ready to send.
pub struct Outgoing {
    pub headers: Vec<(&'static str, String)>,
    /// The body as sent (sealed when it goes under `robots/`).
    pub body: Vec<u8>,
    /// What an answer binds to: the request's signature, or its MAC when
    /// it went in `session`.
    pub proof: Vec<u8>,
    pub session: Option<SessionKeys>,
    /// The time the request claimed (the robot's idea of the server's).
    pub time: u64,
}

/// A verified answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The opened body (plain: registration answers and error Statuses).
    pub body: Vec<u8>,
    /// The server's clock when it answered.
    pub time: u64,
    /// A next server key the trusted one endorsed (key rotation).
    pub next_key: Option<PublicKeys>,
    /// The request went in a session and the server answered with a
    /// signature instead: it did not take the session, which has ended.
    pub session_refused: bool,
}

/// An answer as received, before any check.
pub struct Reply {
    pub status: u16,
    /// The headers the channel reads (names as sent, any case).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The headers of an answer the channel reads.
pub const ANSWER_HEADERS: [&str; 8] = [
    SIGNATURE,
    MAC,
    SERVER_KEY,
    TIME,
    NEXT_KEY,
    SERVER_KEYS,
    SESSIONS,
    "content-type",
];

/// Why an answer was refused (shown after "refused answer: ").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The robot's channel state, shared by the agent's threads.
pub struct Channel {
    data_dir: PathBuf,
    keys: KeyPair,
    counter: Mutex<Counter>,
    /// Seconds to add to the local clock to get the server's.
    offset: AtomicI64,
    /// Who the robot is and which server key it trusts, once registered.
    identity: Mutex<Option<Identity>>,
    session: Mutex<Sessions>,
}

/// The robot's session with the server (module doc).
#[derive(Default)]
struct Sessions {
    /// The server said it takes sessions.
    offered: bool,
    current: Option<Session>,
    /// No session before this (the server answered one with a signature).
    paused_until: Option<Instant>,
}

struct Session {
    keys: SessionKeys,
    /// The server key it was made with.
    server_key: String,
    started: Instant,
    requests: u64,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Channel {
    pub fn new(data_dir: PathBuf, keys: KeyPair, counter: Counter) -> Channel {
        Channel {
            data_dir,
            keys,
            counter: Mutex::new(counter),
            offset: AtomicI64::new(0),
            identity: Mutex::new(None),
            session: Mutex::new(Sessions::default()),
        }
    }

    /// The session for a request to `server` from `robot`: the current one
    /// while it is young, made for this key and not used up; a new one
    /// otherwise. None while the server has not said it takes sessions,
    /// or they pause (module doc).
    fn session_for(&self, robot: &str, server: &PublicKeys) -> Option<SessionKeys> {
        let mut sessions = lock(&self.session);
        let now = Instant::now();
        if !sessions.offered || sessions.paused_until.is_some_and(|t| now < t) {
            return None;
        }
        let id = server.id();
        let usable = sessions.current.as_ref().is_some_and(|s| {
            s.server_key == id && now.duration_since(s.started) < SESSION_LIFETIME && s.requests < SESSION_MESSAGES
        });
        if !usable {
            match SessionKeys::start(robot, &self.keys, server) {
                Ok(keys) => {
                    sessions.current = Some(Session {
                        keys,
                        server_key: id,
                        started: now,
                        requests: 0,
                    })
                }
                Err(e) => {
                    super::say(&format!("agent: starting a session: {e}; signing instead"));
                    return None;
                }
            }
        }
        let session = sessions.current.as_mut()?;
        session.requests += 1;
        Some(session.keys.clone())
    }

    /// The server did not take session `keys`: end it, and sign for a while.
    fn end_session(&self, keys: &SessionKeys) {
        let mut sessions = lock(&self.session);
        if sessions.current.as_ref().is_some_and(|s| s.keys.enc == keys.enc) {
            sessions.current = None;
        }
        sessions.paused_until = Some(crate::agent::clock::after(Instant::now(), SESSION_PAUSE));
    }

    pub fn public(&self) -> PublicKeys {
        self.keys.public()
    }

    pub fn identity(&self) -> Option<Identity> {
        lock(&self.identity).clone()
    }

    pub fn set_identity(&self, id: Identity) {
        *lock(&self.identity) = Some(id);
    }

    /// The server's clock as far as the robot knows (unix seconds).
    pub fn now(&self) -> u64 {
        let t = unix_now().checked_add(self.offset.load(Ordering::Relaxed));
        t.and_then(|t| u64::try_from(t).ok()).unwrap_or(0)
    }

    fn learn_time(&self, server_time: u64) {
        let offset = i64::try_from(server_time).ok().and_then(|s| s.checked_sub(unix_now()));
        if let Some(offset) = offset {
            self.offset.store(offset, Ordering::Relaxed);
        }
    }

    /// Sign a request from `robot`: `target` is the path and query as on the
    /// request line; `plain` is sealed to the server when `seal` is set.
    pub fn sign(
        &self,
        robot: &str,
        method: &str,
        target: &str,
        peer: &Peer,
        plain: &[u8],
        seal: bool,
    ) -> Result<Outgoing, String> {
        let finish = |head: &mut RequestHead<'_>| {
            let body = match (seal, peer) {
                (false, _) => plain.to_vec(),
                (true, Peer::Trusted(server)) => server
                    .seal_to(info_to_server(robot).as_bytes(), head.seal_aad().as_bytes(), plain)
                    .map_err(|e| e.to_string())?,
                (true, Peer::Pinned(_)) => return Err("nothing is sealed before the server's key is known".into()),
            };
            head.body_digest = digest(&body);
            let signature = self.keys.sign(head.text().as_bytes());
            let mut headers = head.headers();
            headers.push((SIGNATURE, crate::api::hex::encode(&signature)));
            Ok((body, headers, signature.to_vec()))
        };
        self.request(robot, method, target, &peer.key_id(), None, finish)
    }

    /// A request from `robot` under `robots/` to the trusted `server`: in a
    /// session when there is one (module doc), else signed as [`Self::sign`].
    pub fn prepare(
        &self,
        robot: &str,
        method: &str,
        target: &str,
        server: &PublicKeys,
        plain: &[u8],
    ) -> Result<Outgoing, String> {
        let Some(session) = self.session_for(robot, server) else {
            return self.sign(robot, method, target, &Peer::Trusted(server), plain, !plain.is_empty());
        };
        let finish = |head: &mut RequestHead<'_>| {
            let r = session.request(head, plain).map_err(|e| e.to_string())?;
            Ok((r.body, r.headers, r.mac.to_vec()))
        };
        let id = server.id();
        self.request(robot, method, target, &id, Some(session.clone()), finish)
    }

    /// A request with the next counter and the server's time as the robot
    /// knows it; `finish` makes its body, sets the head's body digest and
    /// gives the headers and the proof (signature or MAC).
    fn request(
        &self,
        robot: &str,
        method: &str,
        target: &str,
        server_key: &str,
        session: Option<SessionKeys>,
        finish: impl FnOnce(&mut RequestHead<'_>) -> Result<Finished, String>,
    ) -> Result<Outgoing, String> {
        let counter = lock(&self.counter)
            .take()
            .map_err(|e| format!("reserving a request counter: {e}"))?;
        let time = self.now();
        let mut head = RequestHead {
            method,
            target,
            robot,
            time,
            counter,
            server_key,
            body_digest: [0; 32],
        };
        let (body, headers, proof) = finish(&mut head)?;
        Ok(Outgoing {
            headers,
            body,
            proof,
            session,
            time,
        })
    }

    /// Check an answer to `request` (rules 1 to 4 of the module doc);
    /// `sealed`: a successful answer must be sealed to `robot`.
    pub fn check(
        &self,
        robot: &str,
        request: &Outgoing,
        server: &PublicKeys,
        reply: Reply,
        sealed: bool,
    ) -> Result<Answer, Refusal> {
        let refuse = |why: String| Err(Refusal(why));
        let status = reply.status;
        let header = |name| reply.header(name);
        let session = request.session.as_ref();
        // In a session the answer carries its MAC; signed, it ends the session.
        let mac = session.and(header(MAC)).map(crate::api::hex::decode::<32>);
        let signature = match mac {
            Some(_) => None,
            None => match header(SIGNATURE).and_then(crate::api::hex::decode::<64>) {
                Some(s) => Some(s),
                None => return refuse(format!("no valid {SIGNATURE} (status {status})")),
            },
        };
        if header(SERVER_KEY) != Some(server.id().as_str()) {
            return refuse(format!(
                "signed by server key {:?}, not the trusted {}",
                header(SERVER_KEY).unwrap_or(""),
                server.id()
            ));
        }
        let Some(time) = header(TIME).and_then(|t| t.parse::<u64>().ok()) else {
            return refuse(format!("no valid {TIME}"));
        };
        let content_type = header("content-type").unwrap_or("");
        let head = AnswerHead {
            request_signature: &request.proof,
            status,
            time,
            content_type,
            body_digest: digest(&reply.body),
        };
        let text = head.text();
        match (mac, signature, session) {
            (Some(mac), _, Some(keys)) => {
                if !mac.is_some_and(|mac| keys.answer_mac_ok(&text, &mac)) {
                    return refuse(format!(
                        "the session MAC does not verify (status {status}): altered, or not an answer to this request"
                    ));
                }
            }
            (_, Some(signature), _) => {
                if !server.verify(text.as_bytes(), &signature) {
                    return refuse(format!(
                        "the signature does not verify (status {status}): altered, or not an answer to this request"
                    ));
                }
                if let Some(keys) = session {
                    // The server did not take the session.
                    self.end_session(keys);
                }
            }
            _ => unreachable!("a MAC only with a session, else a signature"),
        }
        // Verified: from here on the answer is the server's own.
        self.learn_time(time);
        if header(SESSIONS) == Some("1") {
            lock(&self.session).offered = true;
        }
        let next_key = match header(NEXT_KEY) {
            None => None,
            Some(h) => {
                let next = endorsed_next_key(server, h);
                if next.is_none() {
                    super::say(&format!(
                        "agent: refused next key: {NEXT_KEY} is not endorsed by the trusted server key {}",
                        server.id()
                    ));
                }
                next
            }
        };
        let body = if sealed && (200..300).contains(&status) {
            if content_type != SEALED {
                return refuse(format!("the body is {content_type:?}, not sealed"));
            }
            match (mac, session) {
                (Some(_), Some(keys)) => keys.open_answer(&request.proof, &reply.body),
                _ => self
                    .keys
                    .open(info_to_robot(robot).as_bytes(), &request.proof, &reply.body),
            }
            .map_err(|e| Refusal(e.to_string()))?
        } else {
            reply.body
        };
        Ok(Answer {
            status,
            body,
            time,
            next_key,
            session_refused: session.is_some() && mac.is_none(),
        })
    }

    /// Trust `next` from now on: stored in identity.json first, so a
    /// restart keeps it; if that fails the old key stays (its answers will
    /// endorse the next one again).
    pub fn adopt(&self, next: &PublicKeys) {
        let mut guard = lock(&self.identity);
        let Some(id) = guard.as_ref() else { return };
        if id.server_keys().as_ref() == Some(next) {
            return;
        }
        let mut updated = id.clone();
        updated.set_server_keys(next);
        match identity::save(&self.data_dir, &updated) {
            Ok(()) => {
                // Sessions are made with one server key.
                lock(&self.session).current = None;
                super::say(&format!(
                    "agent: the server rotated its key; now trusting {}",
                    next.id()
                ));
                *guard = Some(updated);
            }
            Err(e) => super::say(&format!("agent: keeping the old server key: saving the next one: {e}")),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
