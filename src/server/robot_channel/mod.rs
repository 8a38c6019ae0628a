//! The server side of the robot channel (wire format:
//! [`crate::api::robot_channel`]): the server's keys and their rotation
//! ([`server_keys`]), the robots' keys and counters ([`robots`]), request
//! checks ([`verify`]), signed, sealed answers ([`answer`]) and the agent
//! listener's TCP settings ([`link`]). The HTTP
//! layer applies them to every `/agent/v1/register` and
//! `/agent/v1/robots/` request in one place
//! (`crate::server::http::channel`).

pub mod answer;
pub mod client;
pub mod link;
pub mod robots;
pub mod server_keys;
pub mod verify;

use crate::api::robot_channel::{SessionKeys, SEALED};
use crate::server::store::StoreError;
use crate::server::tokens::Tokens;
use robots::{Robot, Robots};
use server_keys::{ServerKey, ServerKeys};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use verify::{check_time, Refusal, SignedRequest};

pub struct Channel {
    pub keys: ServerKeys,
    pub robots: Robots,
    /// `--robot-clock-skew`.
    pub skew: Duration,
    refused: AtomicU64,
}

/// A robot request that passed every check.
pub struct Verified {
    pub robot: Arc<Robot>,
    /// The server key the robot named (its answer is signed with it).
    pub key: Arc<ServerKey>,
    /// The opened body (empty when there was none).
    pub body: Vec<u8>,
    /// The session it came in (its answer is authenticated and sealed with
    /// it), or None: signed.
    pub session: Option<SessionKeys>,
}

/// The server's clock in unix seconds (never negative).
pub fn now() -> u64 {
    u64::try_from(crate::server::time::now_unix()).unwrap_or(0)
}

impl Channel {
    pub fn new(keys: ServerKeys, tokens: Arc<Tokens>, skew: Duration) -> Self {
        Channel {
            keys,
            robots: Robots::new(tokens),
            skew,
            refused: AtomicU64::new(0),
        }
    }

    /// Log and count a refused message (`k8s4r_robot_channel_refused_total`).
    pub fn refuse(&self, robot: &str, what: &str, reason: &dyn std::fmt::Display) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        log::warn!("robot channel: refused {what} from robot {robot:?}: {reason}");
    }

    pub fn refused_total(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The checks of a request under `/agent/v1/robots/{robot}/`, in order:
    /// a server key it may name, a robot bound to keys, the signature (or
    /// its session's MAC), the
    /// time, the counter (only a request that passed all else spends
    /// one), then the sealed body.
    pub async fn verify(
        &self,
        robot: &str,
        signed: &SignedRequest,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Verified, Refusal> {
        let key = self
            .keys
            .find(&signed.server_key)
            .await
            .ok_or_else(|| Refusal::UnknownServerKey(signed.server_key.clone()))?;
        let found = self.robots.get(robot).await.map_err(|e| {
            // The store failing is no reason to let a request through.
            log::warn!("robot channel: reading robot {robot:?}: {e}");
            Refusal::UnknownRobot
        })?;
        let found = found.ok_or(Refusal::UnknownRobot)?;
        let head = signed.head(robot);
        let session = match &signed.session {
            None => {
                if !found.keys.verify(head.text().as_bytes(), &signed.signature) {
                    return Err(Refusal::BadSignature);
                }
                None
            }
            Some((enc, mac)) => {
                let session = found.session(&key, enc).map_err(Refusal::Session)?;
                if !session.request_mac_ok(&head.text(), mac) {
                    return Err(Refusal::BadMac);
                }
                Some(session)
            }
        };
        check_time(signed.time, now(), self.skew)?;
        found.accept(signed.counter).map_err(|last| Refusal::Replayed {
            counter: signed.counter,
            last,
        })?;
        let body = if body.is_empty() {
            Vec::new()
        } else {
            let media = content_type.and_then(|t| t.split(';').next()).map(str::trim);
            if media != Some(SEALED) {
                return Err(Refusal::NotSealed);
            }
            match &session {
                Some(s) => s.open_request(head.seal_aad().as_bytes(), body),
                None => answer::open(&key, robot, &head, body),
            }
            .map_err(Refusal::Open)?
        };
        Ok(Verified {
            robot: found,
            key,
            body,
            session,
        })
    }

    /// Persist robot `name`'s counter (with its heartbeat write).
    pub async fn save_counter(&self, name: &str) -> Result<(), StoreError> {
        self.robots.save_counter(name).await
    }
}
