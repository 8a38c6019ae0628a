//! Sessions: the robot channel's per-message cost brought down to
//! symmetric cryptography. Signing every request and answer (Ed25519) and
//! sealing every body with a fresh HPKE key exchange cost a robot about a
//! third of a millisecond of CPU per request; inside a session a request
//! and its answer each cost an HMAC and, with a body, one AEAD pass.
//!
//! Standard constructions only:
//! - the session's secret comes from HPKE in auth mode (RFC 9180 §5.1.3:
//!   DHKEM(X25519, HKDF-SHA256) with the robot's static sealing key as the
//!   sender's key, to the server's sealing key): only that robot could
//!   have made it and only that server can derive it, from the 32-byte
//!   encapsulated key the robot sends with every request
//!   (`K8s4r-Session`), so any replica derives it without shared state;
//! - four keys exported from that context (RFC 9180 §5.3, one label
//!   each): the request MAC key, the request sealing key, the answer MAC
//!   key, the answer sealing key;
//! - HMAC-SHA256 (RFC 2104) over the same head texts the signatures
//!   cover (`K8s4r-Mac` in place of `K8s4r-Signature`);
//! - ChaCha20-Poly1305 (RFC 8439) for bodies, with a random 96-bit nonce
//!   sent before the ciphertext: random, not counted, because two replicas
//!   may answer the same request (a replay racing the original) and a
//!   counted nonce would then repeat. A robot starts a new session at
//!   least every [`SESSION_LIFETIME`] and after [`SESSION_MESSAGES`]
//!   requests, far below the 2^32 messages a random nonce allows per key.
//!
//! The HPKE info names the robot and the server key, so a session is
//! bound to both: another robot's session, or one made for a rotated-out
//! server key, does not verify. Replays are refused as before, by the
//! request's time and counter, which the MAC covers.

use super::keys::{KeyPair, PublicKeys};
use super::signing::{digest, RequestHead};
use super::ChannelError;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use hmac::{Hmac, Mac};
use hpke::aead::ExportOnlyAead;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use sha2::Sha256;
use std::time::Duration;

/// Header of a request made in a session: the encapsulated key (hex).
pub const SESSION: &str = "K8s4r-Session";
/// Header of a message authenticated by a session key (hex HMAC-SHA256).
pub const MAC: &str = "K8s4r-Mac";
/// Header of the server's answers: it accepts sessions (version 1).
pub const SESSIONS: &str = "K8s4r-Sessions";

/// A robot makes a new session at least this often.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(3600);
/// And after this many requests.
pub const SESSION_MESSAGES: u64 = 1 << 20;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// A request made in a session ([`SessionKeys::request`]).
pub struct SessionRequest {
    /// As sent: sealed, or empty.
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
    /// The request's MAC, which the answer's MAC is bound to.
    pub mac: [u8; 32],
}

/// A session's keys, the same at both ends.
#[derive(Clone)]
pub struct SessionKeys {
    /// The encapsulated key that names the session.
    pub enc: [u8; 32],
    request_mac: [u8; 32],
    request_seal: [u8; 32],
    answer_mac: [u8; 32],
    answer_seal: [u8; 32],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        write!(f, "SessionKeys({})", crate::api::hex::encode(&self.enc[..8]))
    }
}

fn info(robot: &str, server_key_id: &str) -> String {
    format!("k8s4r-session-v1 {robot} {server_key_id}")
}

impl SessionKeys {
    /// A new session of robot `robot` (its `pair`) with the server key
    /// `server`.
    pub fn start(robot: &str, pair: &KeyPair, server: &PublicKeys) -> Result<SessionKeys, ChannelError> {
        let pk =
            <X25519HkdfSha256 as Kem>::PublicKey::from_bytes(&server.seal).map_err(|_| ChannelError::BadKey("seal"))?;
        let (enc, ctx) = hpke::setup_sender::<ExportOnlyAead, HkdfSha256, X25519HkdfSha256, _>(
            &OpModeS::Auth(pair.seal_pair()),
            &pk,
            info(robot, &server.id()).as_bytes(),
            &mut rand_core::UnwrapErr(rand_core::OsRng),
        )
        .map_err(|_| ChannelError::Seal)?;
        Self::export(enc.to_bytes().into(), |label, out| ctx.export(label, out))
    }

    /// The session robot `robot` (keys `robot_keys`) names with `enc`, as
    /// the server key `server` derives it; Err when `enc` is not one.
    pub fn accept(
        robot: &str,
        robot_keys: &PublicKeys,
        server: &KeyPair,
        enc: &[u8; 32],
    ) -> Result<SessionKeys, ChannelError> {
        let sender = <X25519HkdfSha256 as Kem>::PublicKey::from_bytes(&robot_keys.seal)
            .map_err(|_| ChannelError::BadKey("seal"))?;
        let encapped = <X25519HkdfSha256 as Kem>::EncappedKey::from_bytes(enc).map_err(|_| ChannelError::Open)?;
        let ctx = hpke::setup_receiver::<ExportOnlyAead, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Auth(sender),
            server.seal_secret(),
            &encapped,
            info(robot, &server.public().id()).as_bytes(),
        )
        .map_err(|_| ChannelError::Open)?;
        Self::export(*enc, |label, out| ctx.export(label, out))
    }

    fn export(
        enc: [u8; 32],
        export: impl Fn(&[u8], &mut [u8]) -> Result<(), hpke::HpkeError>,
    ) -> Result<SessionKeys, ChannelError> {
        let key = |label: &str| {
            let mut out = [0u8; 32];
            export(label.as_bytes(), &mut out)
                .map(|()| out)
                .map_err(|_| ChannelError::Seal)
        };
        Ok(SessionKeys {
            enc,
            request_mac: key("k8s4r-session-v1 request mac")?,
            request_seal: key("k8s4r-session-v1 request seal")?,
            answer_mac: key("k8s4r-session-v1 answer mac")?,
            answer_seal: key("k8s4r-session-v1 answer seal")?,
        })
    }

    /// The session's name as sent in [`SESSION`].
    /// A request in this session: `plain` (empty: no body) sealed as its
    /// body, `head.body_digest` set to cover it, then the head's headers
    /// and the session's (the session and the MAC).
    pub fn request(&self, head: &mut RequestHead<'_>, plain: &[u8]) -> Result<SessionRequest, ChannelError> {
        let body = match plain.is_empty() {
            true => Vec::new(),
            false => self.seal_request(head.seal_aad().as_bytes(), plain)?,
        };
        head.body_digest = digest(&body);
        let mac = self.request_mac(&head.text());
        let mut headers = head.headers();
        headers.extend([(SESSION, self.enc_hex()), (MAC, crate::api::hex::encode(&mac))]);
        Ok(SessionRequest { body, headers, mac })
    }

    pub fn enc_hex(&self) -> String {
        crate::api::hex::encode(&self.enc)
    }

    /// MAC of a request head text ([`super::RequestHead::text`]).
    pub fn request_mac(&self, text: &str) -> [u8; 32] {
        mac(&self.request_mac, text)
    }

    pub fn request_mac_ok(&self, text: &str, tag: &[u8; 32]) -> bool {
        mac_ok(&self.request_mac, text, tag)
    }

    /// MAC of an answer head text ([`super::AnswerHead::text`]).
    pub fn answer_mac(&self, text: &str) -> [u8; 32] {
        mac(&self.answer_mac, text)
    }

    pub fn answer_mac_ok(&self, text: &str, tag: &[u8; 32]) -> bool {
        mac_ok(&self.answer_mac, text, tag)
    }

    /// A request body sealed to the server (aad: the request's
    /// [`super::RequestHead::seal_aad`]).
    pub fn seal_request(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, ChannelError> {
        seal(&self.request_seal, aad, plain)
    }

    pub fn open_request(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, ChannelError> {
        open(&self.request_seal, aad, sealed)
    }

    /// An answer body sealed to the robot (aad: the MAC of the request it
    /// answers).
    pub fn seal_answer(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, ChannelError> {
        seal(&self.answer_seal, aad, plain)
    }

    pub fn open_answer(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, ChannelError> {
        open(&self.answer_seal, aad, sealed)
    }
}

fn hmac(key: &[u8; 32], text: &str) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(text.as_bytes());
    m
}

fn mac(key: &[u8; 32], text: &str) -> [u8; 32] {
    hmac(key, text).finalize().into_bytes().into()
}

/// Constant-time comparison (the hmac crate's).
fn mac_ok(key: &[u8; 32], text: &str, tag: &[u8; 32]) -> bool {
    hmac(key, text).verify_slice(tag).is_ok()
}

fn seal(key: &[u8; 32], aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, ChannelError> {
    let mut nonce = [0u8; NONCE_LEN];
    super::random(&mut nonce);
    let ciphertext = ChaCha20Poly1305::new(key.into())
        .encrypt((&nonce).into(), Payload { msg: plain, aad })
        .map_err(|_| ChannelError::Seal)?;
    let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, ChannelError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(ChannelError::Open);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| ChannelError::Open)?;
    ChaCha20Poly1305::new(key.into())
        .decrypt((&nonce).into(), Payload { msg: ciphertext, aad })
        .map_err(|_| ChannelError::Open)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (KeyPair, KeyPair) {
        (KeyPair::generate(), KeyPair::generate())
    }

    #[test]
    fn both_ends_derive_the_same_keys_and_only_they() {
        let (robot, server) = pair();
        let s = SessionKeys::start("r1", &robot, &server.public()).unwrap();
        let at_server = SessionKeys::accept("r1", &robot.public(), &server, &s.enc).unwrap();
        let tag = s.request_mac("head");
        assert!(at_server.request_mac_ok("head", &tag));
        assert!(!at_server.request_mac_ok("head2", &tag));
        let answer = at_server.answer_mac("answer");
        assert!(s.answer_mac_ok("answer", &answer));
        // The directions do not mix.
        assert!(!s.answer_mac_ok("head", &tag));
        assert_ne!(s.request_mac("x"), s.answer_mac("x"));
        let body = s.seal_request(b"aad", b"report").unwrap();
        assert_eq!(at_server.open_request(b"aad", &body).unwrap(), b"report");
        assert!(at_server.open_answer(b"aad", &body).is_err());
        let back = at_server.seal_answer(b"mac", b"tasks").unwrap();
        assert_eq!(s.open_answer(b"mac", &back).unwrap(), b"tasks");
        assert!(s.open_answer(b"other", &back).is_err());
        assert!(!String::from_utf8_lossy(&back).contains("tasks"));
        for i in 0..back.len() {
            let mut flipped = back.clone();
            flipped[i] ^= 1;
            assert!(s.open_answer(b"mac", &flipped).is_err(), "byte {i} flipped still opens");
        }
        // Two seals of one text differ (random nonces).
        assert_ne!(s.seal_answer(b"", b"x").unwrap(), s.seal_answer(b"", b"x").unwrap());
    }

    #[test]
    fn a_session_is_bound_to_its_robot_its_keys_and_the_server_key() {
        let (robot, server) = pair();
        let s = SessionKeys::start("r1", &robot, &server.public()).unwrap();
        let tag = s.request_mac("head");
        let verifies = |k: Result<SessionKeys, ChannelError>| k.is_ok_and(|k| k.request_mac_ok("head", &tag));
        assert!(verifies(SessionKeys::accept("r1", &robot.public(), &server, &s.enc)));
        // Claimed by another robot name, or checked against another robot's
        // keys: auth mode fails or derives other keys.
        assert!(!verifies(SessionKeys::accept("r2", &robot.public(), &server, &s.enc)));
        let other = KeyPair::generate();
        assert!(!verifies(SessionKeys::accept("r1", &other.public(), &server, &s.enc)));
        // Another server key (rotated) cannot derive it.
        assert!(!verifies(SessionKeys::accept("r1", &robot.public(), &other, &s.enc)));
        // A session someone else made with only the robot's public keys
        // (base-mode style, its own sender key) is not the robot's.
        let forged = SessionKeys::start("r1", &other, &server.public()).unwrap();
        let forged_tag = forged.request_mac("head");
        let at_server = SessionKeys::accept("r1", &robot.public(), &server, &forged.enc).unwrap();
        assert!(!at_server.request_mac_ok("head", &forged_tag));
    }
}
