//! A robot's side of the channel without I/O, for the server's own load
//! test ([`crate::bench`]) and the control-plane tests' simulated
//! robots: it signs and seals requests and verifies and opens answers
//! exactly as the wire format says, so that every simulated request pays
//! and tests the real protocol. With `sessions` set it makes a session once
//! the server says it takes them, as the agent does (the benchmarks' robots;
//! the tests' robots sign, and tests make sessions by hand). (The agent has
//! its own, in its lean build.)

use crate::api::agent_protocol::RegisterRequest;
use crate::api::hex;
use crate::api::robot_channel::{
    self as wire, AnswerHead, Claim, JoinToken, KeyPair, PublicKeys, RequestHead, SessionKeys, SessionRequest,
};

/// One robot's keys and what it knows of the server.
pub struct RobotSession {
    pub name: String,
    pub keys: KeyPair,
    /// The join token's pin of the server's signing key.
    pub pin: [u8; 32],
    /// The server key trusted (after the first verified answer).
    pub server: Option<PublicKeys>,
    /// Last counter used.
    pub counter: u64,
    /// Server clock minus ours, in seconds (learned from answers).
    pub offset: i64,
    /// Make a session once the server says it takes them.
    pub sessions: bool,
    /// The server said so (`K8s4r-Sessions: 1` on a verified answer).
    advertised: bool,
    session: Option<SessionKeys>,
}

/// A request ready to send.
pub struct Prepared {
    pub method: String,
    pub target: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// Zeros in a session.
    pub signature: [u8; 64],
    /// What the answer binds to: the signature, or the session's MAC.
    pub proof: Vec<u8>,
    pub session: Option<SessionKeys>,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl RobotSession {
    pub fn new(name: &str, pin: [u8; 32]) -> Self {
        RobotSession {
            name: name.to_string(),
            keys: KeyPair::generate(),
            pin,
            server: None,
            counter: 0,
            offset: 0,
            sessions: false,
            advertised: false,
            session: None,
        }
    }

    /// Id of the server key requests name: the trusted key's, or the pin's.
    pub fn server_id(&self) -> String {
        match &self.server {
            Some(k) => k.id(),
            None => hex::encode(&self.pin[..8]),
        }
    }

    /// The server's clock as this robot estimates it.
    pub fn time(&self) -> u64 {
        u64::try_from(unix_now().saturating_add(self.offset)).unwrap_or(0)
    }

    /// Sign `body` (as sent) for `method target` with the next counter.
    fn sign(&mut self, method: &str, target: &str, time: u64, body: Vec<u8>, content_type: Option<&str>) -> Prepared {
        self.counter += 1;
        let server_key = self.server_id();
        let head = RequestHead {
            method,
            target,
            robot: &self.name,
            time,
            counter: self.counter,
            server_key: &server_key,
            body_digest: wire::digest(&body),
        };
        let signature = self.keys.sign(head.text().as_bytes());
        let mut headers = head.headers();
        headers.push((wire::SIGNATURE, hex::encode(&signature)));
        if let Some(t) = content_type {
            headers.push(("Content-Type", t.to_string()));
        }
        Prepared {
            method: method.to_string(),
            target: target.to_string(),
            headers,
            body,
            signature,
            proof: signature.to_vec(),
            session: None,
        }
    }

    /// The session for the next request under `robots/`, if this robot
    /// makes them and the server takes them.
    fn session_for(&mut self, server: &PublicKeys) -> Result<Option<SessionKeys>, String> {
        if !(self.sessions && self.advertised) {
            return Ok(None);
        }
        if self.session.is_none() {
            self.session = Some(SessionKeys::start(&self.name, &self.keys, server).map_err(|e| e.to_string())?);
        }
        Ok(self.session.clone())
    }

    /// `plain` (if any) in `session` for `method target`: MAC, sealed body.
    fn in_session(
        &mut self,
        session: SessionKeys,
        server: &PublicKeys,
        method: &str,
        target: &str,
        plain: Option<&[u8]>,
    ) -> Result<Prepared, String> {
        self.counter += 1;
        let server_key = server.id();
        let mut head = RequestHead {
            method,
            target,
            robot: &self.name,
            time: self.time(),
            counter: self.counter,
            server_key: &server_key,
            body_digest: [0; 32],
        };
        let SessionRequest { body, mut headers, mac } = session
            .request(&mut head, plain.unwrap_or_default())
            .map_err(|e| e.to_string())?;
        if !body.is_empty() {
            headers.push(("Content-Type", wire::SEALED.to_string()));
        }
        Ok(Prepared {
            method: method.to_string(),
            target: target.to_string(),
            headers,
            body,
            signature: [0; 64],
            proof: mac.to_vec(),
            session: Some(session),
        })
    }

    /// `POST /agent/v1/register` proving `join`.
    pub fn register(&mut self, join: &JoinToken, mut req: RegisterRequest) -> Prepared {
        let public = self.keys.public();
        let namespace = req
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let time = self.time();
        let nonce = wire::nonce();
        let proof = Claim {
            token_id: &join.id,
            namespace: &namespace,
            name: &self.name,
            keys: &public,
            time,
            nonce: &nonce,
        }
        .prove(&join.secret_hash());
        req.token_id = join.id.clone();
        req.name = self.name.clone();
        req.signing_key = public.sign_hex();
        req.sealing_key = public.seal_hex();
        req.time = time;
        req.nonce = nonce;
        req.proof = hex::encode(&proof);
        let body = serde_json::to_vec(&req).expect("a RegisterRequest serialises");
        self.sign("POST", "/agent/v1/register", time, body, Some("application/json"))
    }

    /// A request under `/agent/v1/robots/`, its body (if any) sealed to
    /// the server.
    pub fn request(&mut self, method: &str, target: &str, plain: Option<&[u8]>) -> Result<Prepared, String> {
        if let Some(server) = self.server.clone() {
            if let Some(session) = self.session_for(&server)? {
                return self.in_session(session, &server, method, target, plain);
            }
        }
        let time = self.time();
        let Some(plain) = plain else {
            return Ok(self.sign(method, target, time, Vec::new(), None));
        };
        let server = self.server.clone().ok_or("no server key trusted yet: register first")?;
        let head = RequestHead {
            method,
            target,
            robot: &self.name,
            time,
            counter: self.counter + 1,
            server_key: &server.id(),
            body_digest: [0; 32],
        };
        let sealed = server
            .seal_to(
                wire::info_to_server(&self.name).as_bytes(),
                head.seal_aad().as_bytes(),
                plain,
            )
            .map_err(|e| e.to_string())?;
        Ok(self.sign(method, target, time, sealed, Some(wire::SEALED)))
    }

    /// Verify the answer to `sent` (status, a header lookup, body as
    /// received) and return its body, opened when sealed. Follows the
    /// server's clock and an endorsed next key.
    pub fn answer(
        &mut self,
        sent: &Prepared,
        status: u16,
        header: &dyn Fn(&str) -> Option<String>,
        body: &[u8],
    ) -> Result<Vec<u8>, String> {
        let id = header(wire::SERVER_KEY).ok_or("the answer is not signed (no K8s4r-Server-Key)")?;
        let signer = match (&self.server, header(wire::SERVER_KEYS)) {
            (Some(k), _) if k.id() == id => k.clone(),
            (None, Some(keys)) => {
                let (sign, seal) = keys.split_once('.').ok_or("K8s4r-Server-Keys is not <sign>.<seal>")?;
                let k = PublicKeys::from_hex(sign, seal).map_err(|e| e.to_string())?;
                if k.pin() != self.pin {
                    return Err("the server's key does not match the join token's pin".into());
                }
                k
            }
            _ => return Err(format!("the answer is signed by key {id}, not the one trusted")),
        };
        let time: u64 = header(wire::TIME)
            .and_then(|t| t.parse().ok())
            .ok_or("the answer has no K8s4r-Time")?;
        let content_type = header("Content-Type").unwrap_or_default();
        let head = AnswerHead {
            request_signature: &sent.proof,
            status,
            time,
            content_type: &content_type,
            body_digest: wire::digest(body),
        };
        let text = head.text();
        let in_session = match (&sent.session, header(wire::MAC)) {
            (Some(session), Some(mac)) => {
                let mac = hex::decode::<32>(&mac).ok_or("the answer's K8s4r-Mac is not 64 hex digits")?;
                if !session.answer_mac_ok(&text, &mac) {
                    return Err(format!("the answer's session MAC does not verify (status {status})"));
                }
                true
            }
            _ => {
                let signature = header(wire::SIGNATURE)
                    .and_then(|s| hex::decode::<64>(&s))
                    .ok_or("the answer has no valid K8s4r-Signature")?;
                if !signer.verify(text.as_bytes(), &signature) {
                    return Err(format!("the answer's signature does not verify (status {status})"));
                }
                // A session answered with a signature: not taken.
                if sent.session.is_some() {
                    self.session = None;
                }
                false
            }
        };
        self.offset = i64::try_from(time).unwrap_or(i64::MAX).saturating_sub(unix_now());
        self.advertised |= header(wire::SESSIONS).as_deref() == Some("1");
        let next = header(wire::NEXT_KEY).and_then(|h| wire::endorsed_next_key(&signer, &h));
        if next.is_some() {
            self.session = None;
        }
        self.server = Some(next.unwrap_or(signer));
        if content_type == wire::SEALED {
            return match (&sent.session, in_session) {
                (Some(session), true) => session.open_answer(&sent.proof, body),
                _ => self
                    .keys
                    .open(wire::info_to_robot(&self.name).as_bytes(), &sent.proof, body),
            }
            .map_err(|e| e.to_string());
        }
        Ok(body.to_vec())
    }
}
