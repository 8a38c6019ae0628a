//! The server's side of a message: opening what a robot sealed to it,
//! sealing answers to the robot, and signing every answer (errors too)
//! bound to the request it answers.

use super::server_keys::ServerKey;
use crate::api::hex;
use crate::api::robot_channel::{self as wire, AnswerHead, ChannelError, PublicKeys, RequestHead, SessionKeys};

/// A body robot `robot` sealed to `key` for the request `head`.
pub fn open(key: &ServerKey, robot: &str, head: &RequestHead<'_>, sealed: &[u8]) -> Result<Vec<u8>, ChannelError> {
    key.pair.open(
        wire::info_to_server(robot).as_bytes(),
        head.seal_aad().as_bytes(),
        sealed,
    )
}

/// `plain` sealed to robot `robot` (keys `to`), bound to the request
/// signature it answers.
pub fn seal(to: &PublicKeys, robot: &str, request_signature: &[u8], plain: &[u8]) -> Result<Vec<u8>, ChannelError> {
    to.seal_to(wire::info_to_robot(robot).as_bytes(), request_signature, plain)
}

/// What an answer signature covers besides its key.
pub struct Answered<'a> {
    /// The request's signature, or its MAC in a session.
    pub request_signature: &'a [u8],
    pub status: u16,
    pub time: u64,
    /// The Content-Type header as sent ("" when there is none).
    pub content_type: &'a str,
    /// The body as sent.
    pub body: &'a [u8],
}

/// The headers that sign an answer with `signer`: time, key id, signature,
/// and while `signer` is not `current`, the current key endorsed by it.
/// With `keys`, also the signer's public keys (registration answers, which
/// the robot checks against its join token's pin).
pub fn headers(signer: &ServerKey, current: &ServerKey, a: &Answered<'_>, keys: bool) -> Vec<(&'static str, String)> {
    let signature = signer.pair.sign(head(a).text().as_bytes());
    let mut out = common(signer, current, a, (wire::SIGNATURE, hex::encode(&signature)));
    if keys {
        out.push((
            wire::SERVER_KEYS,
            format!("{}.{}", signer.public.sign_hex(), signer.public.seal_hex()),
        ));
    }
    out
}

/// The headers of an answer to a request made in `session`: as
/// [`headers`], with the session's MAC in place of the signature.
pub fn session_headers(
    session: &SessionKeys,
    signer: &ServerKey,
    current: &ServerKey,
    a: &Answered<'_>,
) -> Vec<(&'static str, String)> {
    let mac = session.answer_mac(&head(a).text());
    common(signer, current, a, (wire::MAC, hex::encode(&mac)))
}

fn head<'a>(a: &'a Answered<'a>) -> AnswerHead<'a> {
    AnswerHead {
        request_signature: a.request_signature,
        status: a.status,
        time: a.time,
        content_type: a.content_type,
        body_digest: wire::digest(a.body),
    }
}

/// Time, key id, `proof`, the endorsed current key while `signer` is an
/// older one, and that sessions are taken.
fn common(
    signer: &ServerKey,
    current: &ServerKey,
    a: &Answered<'_>,
    proof: (&'static str, String),
) -> Vec<(&'static str, String)> {
    let mut out = vec![
        (wire::TIME, a.time.to_string()),
        (wire::SERVER_KEY, signer.id.clone()),
        proof,
        (wire::SESSIONS, "1".to_string()),
    ];
    if signer.id != current.id {
        let endorsement = signer.pair.sign(wire::endorsement_text(&current.public).as_bytes());
        out.push((wire::NEXT_KEY, wire::next_key_header(&current.public, &endorsement)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::robot_channel::{endorsed_next_key, KeyPair};

    fn key() -> ServerKey {
        let pair = KeyPair::generate();
        let public = pair.public();
        ServerKey {
            id: public.id(),
            public,
            pair,
            created: 0,
            retire_at: None,
        }
    }

    fn get<'a>(h: &'a [(&str, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn an_answer_verifies_for_its_request_only_and_names_the_next_key() {
        let (old, new) = (key(), key());
        let sig = [7u8; 64];
        let a = Answered {
            request_signature: &sig,
            status: 200,
            time: 50,
            content_type: wire::SEALED,
            body: b"sealed bytes",
        };
        let h = headers(&old, &new, &a, true);
        let signature = hex::decode::<64>(get(&h, wire::SIGNATURE).unwrap()).unwrap();
        let text = |request_signature, status| {
            AnswerHead {
                request_signature,
                status,
                time: 50,
                content_type: wire::SEALED,
                body_digest: wire::digest(b"sealed bytes"),
            }
            .text()
        };
        assert!(old.public.verify(text(&sig, 200).as_bytes(), &signature));
        assert!(!old.public.verify(text(&[8; 64], 200).as_bytes(), &signature));
        assert!(!old.public.verify(text(&sig, 401).as_bytes(), &signature));
        assert_eq!(get(&h, wire::SERVER_KEY), Some(old.id.as_str()));
        let next = endorsed_next_key(&old.public, get(&h, wire::NEXT_KEY).unwrap());
        assert_eq!(next, Some(new.public.clone()));
        let keys = get(&h, wire::SERVER_KEYS).unwrap();
        assert_eq!(keys, format!("{}.{}", old.public.sign_hex(), old.public.seal_hex()));
        let plain = headers(&new, &new, &a, false);
        assert_eq!(get(&plain, wire::NEXT_KEY), None);
        assert_eq!(get(&plain, wire::SERVER_KEYS), None);
    }

    #[test]
    fn sealed_bodies_open_only_for_their_request() {
        let server = key();
        let robot = KeyPair::generate();
        let head = RequestHead {
            method: "POST",
            target: "/agent/v1/robots/r1/status",
            robot: "r1",
            time: 1,
            counter: 2,
            server_key: &server.id,
            body_digest: [0; 32],
        };
        let info = wire::info_to_server("r1");
        let sealed = server
            .public
            .seal_to(info.as_bytes(), head.seal_aad().as_bytes(), b"report")
            .unwrap();
        assert_eq!(open(&server, "r1", &head, &sealed).unwrap(), b"report");
        assert!(open(&server, "r2", &head, &sealed).is_err());
        let replayed = RequestHead { counter: 3, ..head };
        assert!(open(&server, "r1", &replayed, &sealed).is_err());
        let sig = [1u8; 64];
        let answer = seal(&robot.public(), "r1", &sig, b"tasks").unwrap();
        let info = wire::info_to_robot("r1");
        assert_eq!(robot.open(info.as_bytes(), &sig, &answer).unwrap(), b"tasks");
        assert!(robot.open(info.as_bytes(), &[2; 64], &answer).is_err());
    }
}
