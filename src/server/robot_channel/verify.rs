//! What a robot's request must show before anything acts on it: its
//! signature headers, a signature by the robot's key over the request as
//! received (or, in a session, the session's MAC: `api::robot_channel::
//! session`), a time within the allowed skew, and a counter above every
//! one accepted before. Each refusal says which check failed.

use crate::api::hex;
use crate::api::robot_channel::{self as wire, ChannelError, RequestHead};
use axum::http::HeaderMap;
use std::time::Duration;

/// Longest `--robot-clock-skew`.
pub const MAX_SKEW: Duration = Duration::from_secs(86_400);
pub const DEFAULT_SKEW: Duration = Duration::from_secs(300);

/// A request's signature headers and what the signature covers besides.
#[derive(Clone, Debug)]
pub struct SignedRequest {
    pub method: String,
    /// Path and query as on the request line.
    pub target: String,
    pub time: u64,
    pub counter: u64,
    /// Id of the server key the robot trusts.
    pub server_key: String,
    /// The robot's signature; zeros (which never verify) in a session.
    pub signature: [u8; 64],
    /// In a session: its encapsulated key and the request's MAC.
    pub session: Option<([u8; 32], [u8; 32])>,
    pub body_digest: [u8; 32],
}

impl SignedRequest {
    /// The signature headers of a request; Err names the one missing or
    /// malformed.
    pub fn parse(method: &str, target: &str, headers: &HeaderMap, body: &[u8]) -> Result<Self, Refusal> {
        let text = |name: &'static str| {
            headers
                .get(name)
                .ok_or(Refusal::Header(name, "missing"))?
                .to_str()
                .map(str::trim)
                .map_err(|_| Refusal::Header(name, "not text"))
        };
        let number = |name: &'static str| {
            text(name)?
                .parse::<u64>()
                .map_err(|_| Refusal::Header(name, "not a number"))
        };
        let server_key = text(wire::SERVER_KEY)?;
        if server_key.is_empty() || server_key.len() > 64 {
            return Err(Refusal::Header(wire::SERVER_KEY, "not a key id"));
        }
        let hex32 =
            |name: &'static str| hex::decode::<32>(text(name)?).ok_or(Refusal::Header(name, "not 64 hex digits"));
        let session = match headers.contains_key(wire::SESSION) {
            true => Some((hex32(wire::SESSION)?, hex32(wire::MAC)?)),
            false => None,
        };
        let signature = match session {
            Some(_) => [0; 64],
            None => hex::decode::<64>(text(wire::SIGNATURE)?)
                .ok_or(Refusal::Header(wire::SIGNATURE, "not 128 hex digits"))?,
        };
        Ok(SignedRequest {
            method: method.to_string(),
            target: target.to_string(),
            time: number(wire::TIME)?,
            counter: number(wire::COUNTER)?,
            server_key: server_key.to_string(),
            signature,
            session,
            body_digest: wire::digest(body),
        })
    }

    pub fn head<'a>(&'a self, robot: &'a str) -> RequestHead<'a> {
        RequestHead {
            method: &self.method,
            target: &self.target,
            robot,
            time: self.time,
            counter: self.counter,
            server_key: &self.server_key,
            body_digest: self.body_digest,
        }
    }
}

/// What an answer binds to: the request's signature, or in a session its
/// MAC, even when it did not verify; 64 zeros when there is none to read.
pub fn request_proof(headers: &HeaderMap) -> Vec<u8> {
    let read = |name| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    match read(wire::SESSION) {
        Some(_) => read(wire::MAC).and_then(hex::decode::<32>).map(|m| m.to_vec()),
        None => read(wire::SIGNATURE).and_then(hex::decode::<64>).map(|s| s.to_vec()),
    }
    .unwrap_or_else(|| vec![0; 64])
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A signature header is missing or malformed: (header, what is wrong).
    Header(&'static str, &'static str),
    UnknownRobot,
    UnknownServerKey(String),
    BadSignature,
    /// A session this server does not take (why).
    Session(String),
    BadMac,
    /// `time` is off the server's `now` by more than `skew` seconds.
    TimeOff {
        time: u64,
        now: u64,
        skew: u64,
    },
    /// `counter` was taken before, or is older than the window below
    /// `last` (the highest accepted).
    Replayed {
        counter: u64,
        last: u64,
    },
    /// A body that is not sealed where every body must be.
    NotSealed,
    Open(ChannelError),
}

impl Refusal {
    /// 400 for a body that does not open, 401 for the rest.
    pub fn code(&self) -> u16 {
        match self {
            Refusal::NotSealed | Refusal::Open(_) => 400,
            _ => 401,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Header(name, what) => write!(f, "the {name} header is {what} (every request is signed)"),
            Refusal::UnknownRobot => f.write_str("unknown robot: no keys are registered under this name"),
            Refusal::UnknownServerKey(id) => write!(
                f,
                "unknown server key {id:?}: it was rotated out (register again with a new join token)"
            ),
            Refusal::BadSignature => f.write_str("bad signature: the request does not verify with the robot's key"),
            Refusal::Session(why) => write!(f, "session refused: {why} (sign the request instead)"),
            Refusal::BadMac => f.write_str("bad session MAC: the request does not verify with its session's key"),
            Refusal::TimeOff { time, now, skew } => write!(
                f,
                "the request time is off by {}s (robot {time}, server {now}; at most {skew}s, \
                 --robot-clock-skew): take the time from this answer's K8s4r-Time",
                time.abs_diff(*now)
            ),
            Refusal::Replayed { counter, last } => write!(
                f,
                "replayed counter: {counter} was accepted before or is more than {} below {last}, \
                 the highest one accepted from this robot",
                super::robots::WINDOW
            ),
            Refusal::NotSealed => write!(f, "the body is not sealed (Content-Type {})", wire::SEALED),
            Refusal::Open(e) => write!(f, "{e}"),
        }
    }
}

/// Is `time` within `skew` of `now`?
pub fn check_time(time: u64, now: u64, skew: Duration) -> Result<(), Refusal> {
    if time.abs_diff(now) > skew.as_secs() {
        return Err(Refusal::TimeOff {
            time,
            now,
            skew: skew.as_secs(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::robot_channel::{KeyPair, COUNTER, SERVER_KEY, SIGNATURE, TIME};

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_signed_request_parses_and_verifies_only_as_sent() {
        let robot = KeyPair::generate();
        let target = "/agent/v1/robots/r1/assignments?since=3";
        let head = RequestHead {
            method: "GET",
            target,
            robot: "r1",
            time: 100,
            counter: 7,
            server_key: "abcd",
            body_digest: wire::digest(b""),
        };
        let sig = robot.sign(head.text().as_bytes());
        let h = headers(&[
            (TIME, "100".into()),
            (COUNTER, "7".into()),
            (SERVER_KEY, "abcd".into()),
            (SIGNATURE, hex::encode(&sig)),
        ]);
        let parsed = SignedRequest::parse("GET", target, &h, b"").unwrap();
        assert!(robot
            .public()
            .verify(parsed.head("r1").text().as_bytes(), &parsed.signature));
        assert_eq!(request_proof(&h), sig.to_vec());
        let moved = SignedRequest::parse("GET", "/agent/v1/robots/r1/assignments?since=0", &h, b"").unwrap();
        assert!(!robot
            .public()
            .verify(moved.head("r1").text().as_bytes(), &moved.signature));
        let with_body = SignedRequest::parse("GET", target, &h, b"x").unwrap();
        assert!(!robot
            .public()
            .verify(with_body.head("r1").text().as_bytes(), &with_body.signature));
        assert!(!robot
            .public()
            .verify(parsed.head("r2").text().as_bytes(), &parsed.signature));
    }

    #[test]
    fn a_missing_or_malformed_header_is_named() {
        let full = [
            (TIME, "1".to_string()),
            (COUNTER, "1".into()),
            (SERVER_KEY, "k".into()),
            (SIGNATURE, "00".repeat(64)),
        ];
        for i in 0..full.len() {
            let mut some = full.to_vec();
            let (name, _) = some.remove(i);
            let e = SignedRequest::parse("GET", "/", &headers(&some), b"").unwrap_err();
            assert_eq!(e, Refusal::Header(name, "missing"));
            assert!(e.to_string().contains(name));
        }
        let mut bad = full.to_vec();
        bad[3].1 = "zz".into();
        assert_eq!(
            SignedRequest::parse("GET", "/", &headers(&bad), b"").unwrap_err(),
            Refusal::Header(SIGNATURE, "not 128 hex digits")
        );
        assert_eq!(request_proof(&headers(&bad)), vec![0; 64]);
    }

    #[test]
    fn the_time_must_be_within_the_skew_either_way() {
        let skew = Duration::from_secs(300);
        assert!(check_time(1000, 1300, skew).is_ok());
        assert!(check_time(1300, 1000, skew).is_ok());
        let e = check_time(1000, 4600, skew).unwrap_err();
        assert!(e.to_string().contains("time is off by 3600s"), "{e}");
        assert!(check_time(4600, 1000, skew).is_err());
        assert!(check_time(u64::MAX, 0, skew).is_err());
    }
}
