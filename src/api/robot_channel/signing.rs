//! The texts that are signed: a robot's request, the server's answer to
//! it, and the server's endorsement of its next key. Each starts with its
//! own domain line, so a signature over one can never pass as another.

use super::keys::PublicKeys;
use sha2::{Digest, Sha256};

/// SHA-256 of a body exactly as sent (sealed bytes when sealed; the empty
/// body's digest when there is none).
pub fn digest(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// Everything a robot's request signature covers.
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// Path and query exactly as on the request line.
    pub target: &'a str,
    pub robot: &'a str,
    /// Unix seconds (the robot's idea of the server's clock).
    pub time: u64,
    /// Strictly increasing per robot.
    pub counter: u64,
    /// Id of the server key the robot trusts and expects the answer under.
    pub server_key: &'a str,
    pub body_digest: [u8; 32],
}

impl RequestHead<'_> {
    pub fn text(&self) -> String {
        format!(
            "k8s4r-request-v1\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.method,
            self.target,
            self.robot,
            self.time,
            self.counter,
            self.server_key,
            crate::api::hex::encode(&self.body_digest)
        )
    }

    /// The headers that carry this head's time, counter and server key
    /// (method, target and robot are on the request line).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            (super::TIME, self.time.to_string()),
            (super::COUNTER, self.counter.to_string()),
            (super::SERVER_KEY, self.server_key.to_string()),
        ]
    }

    /// Additional data of a body sealed to the server: the head minus the
    /// body digest (which covers the sealed bytes).
    pub fn seal_aad(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}\n{}",
            self.method, self.target, self.robot, self.time, self.counter
        )
    }
}

/// Everything the server's answer signature covers: the request it answers
/// (by that request's signature), so an answer cannot be replayed to
/// another request.
pub struct AnswerHead<'a> {
    /// The request's signature, or its MAC when it came in a session.
    pub request_signature: &'a [u8],
    pub status: u16,
    /// The server's clock, unix seconds (robots without a real-time clock
    /// set theirs from it).
    pub time: u64,
    pub content_type: &'a str,
    pub body_digest: [u8; 32],
}

impl AnswerHead<'_> {
    pub fn text(&self) -> String {
        format!(
            "k8s4r-answer-v1\n{}\n{}\n{}\n{}\n{}",
            crate::api::hex::encode(self.request_signature),
            self.status,
            self.time,
            self.content_type,
            crate::api::hex::encode(&self.body_digest)
        )
    }
}

/// The server's old key vouching for its next one (key rotation).
pub fn endorsement_text(next: &PublicKeys) -> String {
    format!(
        "k8s4r-next-key-v1\n{}\n{}\n{}",
        next.id(),
        next.sign_hex(),
        next.seal_hex()
    )
}

/// `K8s4r-Next-Key` header value: `<sign hex>.<seal hex>.<signature hex>`.
pub fn next_key_header(next: &PublicKeys, endorsement: &[u8; 64]) -> String {
    format!(
        "{}.{}.{}",
        next.sign_hex(),
        next.seal_hex(),
        crate::api::hex::encode(endorsement)
    )
}

/// The next key from a `K8s4r-Next-Key` header, if `current` endorsed it.
pub fn endorsed_next_key(current: &PublicKeys, header: &str) -> Option<PublicKeys> {
    let mut parts = header.trim().split('.');
    let (sign, seal, sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let next = PublicKeys::from_hex(sign, seal).ok()?;
    let sig = crate::api::hex::decode::<64>(sig)?;
    current.verify(endorsement_text(&next).as_bytes(), &sig).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::robot_channel::KeyPair;

    #[test]
    fn every_field_of_a_request_is_covered() {
        let base = || RequestHead {
            method: "GET",
            target: "/agent/v1/robots/r1/assignments?since=1",
            robot: "r1",
            time: 10,
            counter: 3,
            server_key: "k",
            body_digest: digest(b""),
        };
        let t = base().text();
        let mut variants = vec![];
        let mut v = base();
        v.method = "POST";
        variants.push(v.text());
        let mut v = base();
        v.target = "/agent/v1/robots/r1/assignments?since=2";
        variants.push(v.text());
        let mut v = base();
        v.robot = "r2";
        variants.push(v.text());
        let mut v = base();
        v.time = 11;
        variants.push(v.text());
        let mut v = base();
        v.counter = 4;
        variants.push(v.text());
        let mut v = base();
        v.server_key = "j";
        variants.push(v.text());
        let mut v = base();
        v.body_digest = digest(b"x");
        variants.push(v.text());
        for other in variants {
            assert_ne!(t, other);
        }
    }

    #[test]
    fn only_the_current_key_can_endorse_the_next() {
        let current = KeyPair::generate();
        let next = KeyPair::generate().public();
        let sig = current.sign(endorsement_text(&next).as_bytes());
        let header = next_key_header(&next, &sig);
        assert_eq!(endorsed_next_key(&current.public(), &header), Some(next.clone()));
        let stranger = KeyPair::generate();
        assert_eq!(endorsed_next_key(&stranger.public(), &header), None);
        let forged = next_key_header(&next, &stranger.sign(endorsement_text(&next).as_bytes()));
        assert_eq!(endorsed_next_key(&current.public(), &forged), None);
    }
}
