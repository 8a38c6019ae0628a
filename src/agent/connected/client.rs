//! The agent API over plain HTTP (the agent's own small client; blocking,
//! no async runtime). Every request is signed (or authenticated in a
//! session) and every answer checked by `channel` before anything in it is
//! used; no bearer secret is ever sent.
//! HTTP stays here: callers get typed requests and responses.

use super::channel::{Answer, Channel, Outgoing, Peer, Refusal, Reply, ANSWER_HEADERS};
use crate::api::agent_protocol::{
    Assignments, LogUpload, RegisterRequest, RegisterResponse, StatusReply, StatusReport, PREFIX,
};
use crate::api::robot_channel::{PublicKeys, SEALED, SERVER_KEYS};
use crate::http_client::{request_target, KeepAlive, Request};

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest response we read: a robot's full desired set stays far below.
const MAX_RESPONSE: u64 = 16 << 20;
/// Added to the long-poll wait so the server answers before we give up.
const POLL_SLACK: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A kept-alive connection unused this long is closed rather than reused:
/// NATs on cellular links forget idle TCP mappings after a few minutes (some
/// sooner), and a forgotten one fails only after a whole timeout. The
/// poller's connection is never idle that long (it polls again at once);
/// the reporter's, idle between device reports, reconnects.
const LINK_IDLE: Duration = Duration::from_secs(45);
/// A signed 401 from a server whose clock is this far from the time the
/// request claimed says the robot's clock is off: retry at once with the
/// server's time (learned from that answer).
pub(super) const CLOCK_OFF: u64 = 60;

#[derive(Debug)]
pub enum ClientError {
    /// Could not reach the server or the connection broke.
    Transport(String),
    /// The server answered with an error status (message from its Status).
    /// Only ever from a verified answer.
    Status { code: u16, message: String },
    /// The answer failed a check of the signed channel: never acted on.
    Refused(String),
    /// The answer was verified but not what the protocol says.
    Decode(String),
    /// This robot could not prepare the request (its counter file, say).
    Local(String),
    /// A held poll's connection received nothing, not even the server's
    /// keepalive probes, for this long: a NAT forgot it, or something on
    /// the path answers the probes itself. Not a sign the server is down.
    Silent(Duration),
}

impl ClientError {
    /// A verified answer saying the server does not know this robot or its
    /// keys (wiped, or reset by an operator): registering again is the
    /// only way forward. Any other 401 (a replayed counter, a stale time)
    /// passes.
    pub fn is_unknown_robot(&self) -> bool {
        let ClientError::Status { code: 401, message } = self else {
            return false;
        };
        let m = message.to_ascii_lowercase();
        ["unknown robot", "not registered", "unknown key", "no robot"]
            .iter()
            .any(|w| m.contains(w))
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Transport(m) => write!(f, "cannot reach the server: {m}"),
            ClientError::Status { code, message } => write!(f, "server answered {code}: {message}"),
            ClientError::Refused(m) => write!(f, "refused answer: {m}"),
            ClientError::Decode(m) => write!(f, "unexpected answer from the server: {m}"),
            ClientError::Local(m) => write!(f, "{m}"),
            ClientError::Silent(d) => write!(
                f,
                "the held poll's connection was silent for {d:?} (no keepalive probe arrived: \
                 a NAT forgot it, or a proxy on the path answers the probes itself)"
            ),
        }
    }
}

impl std::error::Error for ClientError {}

pub struct Client {
    base: String,
    channel: Arc<Channel>,
    /// One connection reused across this client's requests.
    link: Mutex<KeepAlive>,
}

/// What one exchange sends: `plain` is sealed under `robots/`.
struct Call<'a> {
    method: &'a str,
    path: String,
    plain: Vec<u8>,
    timeout: Duration,
    /// See [`Request::silence`] (a held long poll).
    silence: Option<Duration>,
    /// Retry once at once after a signed 401 about the clock or counter
    /// (not for registration: its claim carries the time, see `identity`).
    retry: bool,
}

impl Client {
    pub fn new(base: &str, channel: Arc<Channel>) -> Self {
        let user_agent = format!("k8s4r-agent/{}", crate::agent::version::current());
        Client {
            base: base.trim_end_matches('/').to_string(),
            channel,
            // Who is calling is said once per connection, not per request.
            link: Mutex::new(KeepAlive::new(LINK_IDLE, &[("User-Agent", &user_agent)])),
        }
    }

    pub fn channel(&self) -> &Arc<Channel> {
        &self.channel
    }

    /// Register `name` under the join token's `pin`: the answer counts only
    /// if the server's keys (`K8s4r-Server-Keys`) match the pin and sign it.
    /// Returns the answer and the server's keys to trust from now on.
    pub fn register(
        &self,
        name: &str,
        pin: &[u8; 32],
        req: &RegisterRequest,
    ) -> Result<(RegisterResponse, PublicKeys), ClientError> {
        let call = Call {
            method: "POST",
            path: format!("{PREFIX}/register"),
            plain: to_json(req)?,
            timeout: REQUEST_TIMEOUT,
            silence: None,
            retry: false,
        };
        let (answer, server) = self.exchange(name, &Peer::Pinned(pin), &call)?;
        let trusted = answer.next_key.clone().unwrap_or(server);
        let reply: RegisterResponse = read_json(answer)?;
        Ok((reply, trusted))
    }

    /// Long poll: returns at once if the desired set changed after `since`,
    /// else when it changes or `wait` is over. Asks for deltas in the group
    /// form (each TaskGroup's shared data once), and with `verify` for the
    /// digest even when nothing changed. A held poll (`silence`: the
    /// server probes the connection meanwhile) gives up once the
    /// connection has been silent that long.
    pub fn assignments(
        &self,
        since: u64,
        wait: Duration,
        verify: bool,
        silence: Option<Duration>,
    ) -> Result<Assignments, ClientError> {
        let robot = self.robot()?;
        let call = Call {
            method: "GET",
            path: format!(
                "{PREFIX}/robots/{robot}/assignments?since={since}&wait={}s&delta=1&groups=1{}",
                wait.as_secs(),
                if verify { "&verify=1" } else { "" }
            ),
            plain: Vec::new(),
            timeout: wait.saturating_add(POLL_SLACK),
            silence,
            retry: true,
        };
        self.robot_call(&robot, &call)
    }

    pub fn report(&self, report: &StatusReport) -> Result<StatusReply, ClientError> {
        let robot = self.robot()?;
        let call = Call {
            method: "POST",
            path: format!("{PREFIX}/robots/{robot}/status"),
            plain: to_json(report)?,
            timeout: REQUEST_TIMEOUT,
            silence: None,
            retry: true,
        };
        self.robot_call(&robot, &call)
    }

    pub fn upload_log(&self, upload: &LogUpload) -> Result<(), ClientError> {
        let robot = self.robot()?;
        let call = Call {
            method: "POST",
            path: format!("{PREFIX}/robots/{robot}/logs"),
            plain: to_json(upload)?,
            timeout: REQUEST_TIMEOUT,
            silence: None,
            retry: true,
        };
        self.robot_call::<serde_json::Value>(&robot, &call).map(|_| ())
    }

    fn robot(&self) -> Result<String, ClientError> {
        self.channel
            .identity()
            .map(|id| id.name)
            .ok_or_else(|| ClientError::Local("not registered".into()))
    }

    /// A call under `robots/`: sealed both ways, with the trusted key.
    fn robot_call<R: DeserializeOwned>(&self, robot: &str, call: &Call) -> Result<R, ClientError> {
        let server = self
            .channel
            .identity()
            .and_then(|id| id.server_keys())
            .ok_or_else(|| ClientError::Local("no trusted server key".into()))?;
        let (answer, _) = self.exchange(robot, &Peer::Trusted(&server), call)?;
        if let Some(next) = &answer.next_key {
            self.channel.adopt(next);
        }
        read_json(answer)
    }

    /// Send `call` signed, and check the answer; a verified 401 saying the
    /// robot's clock or counter is off is retried once at once (the clock
    /// corrected from that answer, a fresh counter). Returns the verified
    /// answer and the server key it verified under.
    fn exchange(&self, robot: &str, peer: &Peer, call: &Call) -> Result<(Answer, PublicKeys), ClientError> {
        let mut retried = !call.retry;
        loop {
            let (answer, server, sent) = self.exchange_once(robot, peer, call)?;
            if answer.status == 401 && !retried {
                let message = status_message(&answer.body).to_ascii_lowercase();
                let clock_off = sent.abs_diff(answer.time) > CLOCK_OFF
                    || ["time", "clock", "counter"].iter().any(|w| message.contains(w));
                // A session the server did not take: again, signed.
                if clock_off || answer.session_refused {
                    retried = true;
                    continue;
                }
            }
            return Ok((answer, server));
        }
    }

    fn exchange_once(&self, robot: &str, peer: &Peer, call: &Call) -> Result<(Answer, PublicKeys, u64), ClientError> {
        let url = format!("{}{}", self.base, call.path);
        let target = request_target(&url).map_err(|e| ClientError::Transport(e.to_string()))?;
        let out = match peer {
            Peer::Trusted(server) => self.channel.prepare(robot, call.method, &target, server, &call.plain),
            Peer::Pinned(_) => self.channel.sign(robot, call.method, &target, peer, &call.plain, false),
        }
        .map_err(ClientError::Local)?;
        let sealed = matches!(peer, Peer::Trusted(_));
        let content_type = if sealed { SEALED } else { "application/json" };
        // Only what the channel needs: answers are JSON or sealed whatever
        // the request accepts, so no Accept.
        let mut headers: Vec<(&str, &str)> = out.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if call.method != "GET" {
            headers.push(("Content-Type", content_type));
        }
        let req = Request {
            method: call.method,
            url: &url,
            headers: &headers,
            body: (call.method != "GET").then_some(out.body.as_slice()),
            timeout: call.timeout,
            silence: call.silence,
        };
        // A redirect is not followed: the signature covers this target only
        // (and a signed answer is what counts, wherever it comes from).
        let response = self
            .link
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(&req, MAX_RESPONSE)
            .map_err(|e| match e {
                crate::http_client::HttpError::Silent(d) => ClientError::Silent(d),
                e => ClientError::Transport(e.to_string()),
            })?;
        let status = response.status;
        let headers = ANSWER_HEADERS
            .iter()
            .filter_map(|k| response.header(k).map(|v| (k.to_string(), v.to_string())))
            .collect();
        let body = response.body;
        let reply = Reply { status, headers, body };
        match self.verify(robot, peer, &out, reply, sealed) {
            Ok((answer, server)) => Ok((answer, server, out.time)),
            Err(Refusal(why)) => {
                super::say(&format!(
                    "agent: refused answer: {why} (robot {robot}, {} {target})",
                    call.method
                ));
                Err(ClientError::Refused(why))
            }
        }
    }

    /// The key to check the answer with: the trusted one, or while
    /// registering the one the answer names if it is the token's pin.
    fn verify(
        &self,
        robot: &str,
        peer: &Peer,
        out: &Outgoing,
        reply: Reply,
        sealed: bool,
    ) -> Result<(Answer, PublicKeys), Refusal> {
        let status = reply.status;
        let server = match peer {
            Peer::Trusted(k) => (*k).clone(),
            Peer::Pinned(pin) => {
                let keys = reply
                    .header(SERVER_KEYS)
                    .and_then(|h| h.split_once('.'))
                    .and_then(|(sign, seal)| PublicKeys::from_hex(sign.trim(), seal.trim()).ok())
                    .ok_or_else(|| Refusal(format!("no valid {SERVER_KEYS} (status {status})")))?;
                if keys.pin() != **pin {
                    return Err(Refusal(format!(
                        "the server's key {} does not match the join token's pin",
                        keys.id()
                    )));
                }
                keys
            }
        };
        let answer = self.channel.check(robot, out, &server, reply, sealed)?;
        Ok((answer, server))
    }
}

fn to_json<B: Serialize>(body: &B) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(body).map_err(|e| ClientError::Local(e.to_string()))
}

/// The message of a Kubernetes Status body, or the start of the raw text.
fn status_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect())
}

fn read_json<R: DeserializeOwned>(answer: Answer) -> Result<R, ClientError> {
    if !(200..300).contains(&answer.status) {
        return Err(ClientError::Status {
            code: answer.status,
            message: status_message(&answer.body),
        });
    }
    // Through the one typed decoder the agent already has (api::decode):
    // a second serde instantiation of every API type would grow the binary.
    let value: serde_json::Value =
        serde_json::from_slice(&answer.body).map_err(|e| ClientError::Decode(e.to_string()))?;
    crate::api::decode::decode_typed(value)
        .map(|d| d.object)
        .map_err(|e| ClientError::Decode(e.to_string()))
}
