//! The robot channel: plain HTTP that a man in the middle can neither read
//! nor forge, for an agent with no TLS stack. As with signed package
//! repositories, the transport is untrusted and every message carries its
//! own proof. Standard constructions only (dalek, RustCrypto): Ed25519
//! signatures (RFC 8032), HPKE sealing (RFC 9180: DHKEM(X25519,
//! HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305, base mode, single shot;
//! auth mode and its exporter for sessions), HMAC-SHA256 (RFC 2104),
//! ChaCha20-Poly1305 (RFC 8439) and SHA-256. This module is the wire format,
//! shared by agent and server; it does no I/O.
//!
//! # Wire format (version 1)
//!
//! Every key, hash, MAC and signature is lowercase hex. Each party has a
//! [`KeyPair`]: an Ed25519 signing key and an X25519 sealing key. A key
//! pair's *id* is the first 16 hex digits of SHA-256(signing public key);
//! its *pin* is all 64.
//!
//! **Join token**: `K8R1<server pin>::<id>.<secret>` ([`JoinToken`]). The
//! server stores SHA-256(secret) under `id`; the secret never crosses the
//! wire.
//!
//! **Request** (robot → server). Headers:
//! - `K8s4r-Time`: unix seconds, the robot's estimate of the server's clock;
//! - `K8s4r-Counter`: decimal u64, strictly increasing per robot;
//! - `K8s4r-Server-Key`: id of the server key the robot trusts;
//! - `K8s4r-Signature`: Ed25519 by the robot's signing key over
//!   [`RequestHead::text`]: the lines `k8s4r-request-v1`, method, path and
//!   query as on the request line, robot name, time, counter, server key
//!   id, hex SHA-256 of the body bytes as sent — joined by `\n`.
//!
//! **Answer** (server → robot), every one including errors. Headers:
//! - `K8s4r-Time`: the server's clock, unix seconds;
//! - `K8s4r-Server-Key`: id of the signing key;
//! - `K8s4r-Signature`: Ed25519 by that key over [`AnswerHead::text`]:
//!   `k8s4r-answer-v1`, the request's signature (hex), status code, time,
//!   Content-Type, hex SHA-256 of the body as sent;
//! - `K8s4r-Next-Key` during a key rotation: `<sign>.<seal>.<sig>`, the
//!   next key endorsed by the current one over [`endorsement_text`];
//! - on `/agent/v1/register` answers, `K8s4r-Server-Keys: <sign>.<seal>`,
//!   which the robot accepts only if SHA-256(sign) is its token's pin.
//!
//! **Sealed bodies**: `Content-Type: application/vnd.k8s4r.sealed`; the body
//! is the 32-byte HPKE encapsulated key followed by the ciphertext and tag.
//! Every body under `/agent/v1/robots/` is sealed, both ways:
//! - to the server (status reports, log uploads): to the server's sealing
//!   key, info [`info_to_server`], aad [`RequestHead::seal_aad`];
//! - to the robot (assignments, status replies): to the robot's sealing
//!   key, info [`info_to_robot`], aad the raw 64-byte request signature.
//!
//! Error answers (Kubernetes `Status` JSON) are signed, not sealed.
//!
//! **Sessions** ([`SessionKeys`], module `session`): every answer says
//! `K8s4r-Sessions: 1` (the server takes them). A registered robot then
//! makes a session with HPKE auth mode (its sealing key as sender's, to the
//! server's sealing key, info `k8s4r-session-v1 <robot> <server key id>`)
//! and sends, on requests under `/agent/v1/robots/`, `K8s4r-Session: <enc>`
//! and `K8s4r-Mac`: HMAC-SHA256 with the exported request MAC key over
//! [`RequestHead::text`], instead of `K8s4r-Signature`; a body is sealed
//! with ChaCha20-Poly1305 under the exported request sealing key (random
//! 12-byte nonce first, aad [`RequestHead::seal_aad`]). The server answers
//! a request it verified in the session with `K8s4r-Mac` (the answer MAC
//! key over [`AnswerHead::text`], bound to the request's MAC) and seals
//! 200 bodies with the answer sealing key (aad: the request's MAC); it
//! answers a request whose session it does not take with a signature
//! (bound to the request's MAC), and the robot signs again for a while.
//! Registration is always signed.
//!
//! **Registration**: `POST /agent/v1/register`, a signed request (by the
//! robot's new key, counter and time as usual, the server key id taken
//! from the pin) with a JSON body naming the token id, the robot's name,
//! namespace, labels, both public keys, time, a fresh nonce and
//! `proof` = HMAC-SHA256(key = SHA-256(secret), [`Claim`] text). The server
//! checks the proof and the signature, then binds the name to the keys; a
//! name bound to other keys answers 409 until an operator resets it.

mod join;
mod keys;
mod session;
mod signing;

pub use join::{nonce, secret_hash, Claim, JoinToken, JOIN_TOKEN_PREFIX};
pub use keys::{KeyPair, PublicKeys, ENC_LEN};
pub use session::{SessionKeys, SessionRequest, MAC, SESSION, SESSIONS, SESSION_LIFETIME, SESSION_MESSAGES};
pub use signing::{digest, endorsed_next_key, endorsement_text, next_key_header, AnswerHead, RequestHead};

pub const TIME: &str = "K8s4r-Time";
pub const COUNTER: &str = "K8s4r-Counter";
pub const SERVER_KEY: &str = "K8s4r-Server-Key";
pub const SIGNATURE: &str = "K8s4r-Signature";
pub const NEXT_KEY: &str = "K8s4r-Next-Key";
pub const SERVER_KEYS: &str = "K8s4r-Server-Keys";
pub const SEALED: &str = "application/vnd.k8s4r.sealed";

/// Fill `buf` from the operating system's randomness (getrandom(2)).
pub fn random(buf: &mut [u8]) {
    rand_core::RngCore::fill_bytes(&mut rand_core::UnwrapErr(rand_core::OsRng), buf);
}

/// HPKE info of bodies sealed to the robot `robot`.
pub fn info_to_robot(robot: &str) -> String {
    format!("k8s4r-v1 to-robot {robot}")
}

/// HPKE info of bodies robot `robot` seals to the server.
pub fn info_to_server(robot: &str) -> String {
    format!("k8s4r-v1 to-server {robot}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelError {
    /// Which key ("sign" or "seal") is not a valid public or secret key.
    BadKey(&'static str),
    BadJoinToken(&'static str),
    Seal,
    /// A sealed body does not open: tampered, truncated, or not for us.
    Open,
}

impl std::fmt::Display for ChannelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChannelError::BadKey(which) => write!(f, "the {which} key is not a valid key"),
            ChannelError::BadJoinToken(why) => write!(f, "join token: {why}"),
            ChannelError::Seal => f.write_str("sealing a body failed"),
            ChannelError::Open => {
                f.write_str("a sealed body does not open (tampered, truncated, or sealed for another key)")
            }
        }
    }
}

impl std::error::Error for ChannelError {}
