//! Caps on what one client can make the server hold. Each is a `k8s4r
//! server` flag whose default is below (and in `--help`); hitting one
//! answers a Kubernetes Status naming the limit and its flag: 429
//! TooManyRequests for counts, 413 RequestEntityTooLarge for sizes, 400
//! BadRequest for a join token asked to live longer than the server allows.
//!
//! Time is bounded separately: every duration a request names is at most
//! [`crate::server::time::MAX_DURATION`].

use crate::api::agent_protocol::{JoinTokenRequest, StatusReport};
use crate::api::validate::check_dns_subdomain;
use crate::server::status::Status;
use crate::server::tokens::JoinTerms;
use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Watches open at once, all clients together (`--max-watches`).
    pub watches: usize,
    /// Task status updates in one agent report (`--max-status-updates`).
    pub status_updates: usize,
    /// Size of a robot's `deviceInfo` as JSON, in bytes (`--max-device-info`).
    pub device_info_bytes: usize,
    /// Robots one join token may create (`--max-robots-per-join-token`);
    /// registering again under a known name creates none.
    pub robots_per_join_token: u64,
    /// Longest lifetime of a join token, in seconds (`--max-join-token-ttl`):
    /// a leaked token is useless after at most this long.
    pub join_token_ttl_seconds: u64,
}

/// A join token's lifetime when none is asked for (if the server allows it).
pub const DEFAULT_JOIN_TOKEN_TTL_SECONDS: u64 = 86_400;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            watches: 1000,
            status_updates: 1000,
            device_info_bytes: 64 * 1024,
            robots_per_join_token: 1000,
            join_token_ttl_seconds: DEFAULT_JOIN_TOKEN_TTL_SECONDS,
        }
    }
}

/// Bytes of `v` as compact JSON, counted without building the text.
fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(b.len());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    // Writing a Value into a counter cannot fail.
    let _ = serde_json::to_writer(&mut n, v);
    n.0
}

impl Limits {
    pub fn check_device_info(&self, device_info: &Value) -> Result<(), Status> {
        let size = json_len(device_info);
        if size > self.device_info_bytes {
            return Err(Status::too_large(format!(
                "deviceInfo: {size} bytes is more than the limit of {} (--max-device-info)",
                self.device_info_bytes
            )));
        }
        Ok(())
    }

    pub fn check_report(&self, report: &StatusReport) -> Result<(), Status> {
        if report.updates.len() > self.status_updates {
            return Err(Status::too_large(format!(
                "updates: {} status updates in one report is more than the limit of {} \
                 (--max-status-updates); send them in several reports",
                report.updates.len(),
                self.status_updates
            )));
        }
        match &report.device_info {
            Some(d) => self.check_device_info(d),
            None => Ok(()),
        }
    }

    /// What a new join token may be, or 400 naming every field that asks
    /// for too much: a lifetime over `--max-join-token-ttl` (no lifetime:
    /// a day, or that limit if shorter), zero uses, a name no robot can have.
    pub fn join_terms(&self, req: &JoinTokenRequest) -> Result<JoinTerms, Status> {
        let max = self.join_token_ttl_seconds;
        let ttl_seconds = req.ttl_seconds.unwrap_or(DEFAULT_JOIN_TOKEN_TTL_SECONDS.min(max));
        let mut problems = Vec::new();
        if ttl_seconds > max {
            problems.push(format!(
                "ttlSeconds: {ttl_seconds} seconds is more than the limit of {max} seconds (--max-join-token-ttl)"
            ));
        }
        if req.uses == Some(0) {
            problems.push("uses: must be at least 1".to_string());
        }
        if let Some(Err(e)) = req.name.as_deref().map(check_dns_subdomain) {
            problems.push(format!("name: {e}"));
        }
        if !problems.is_empty() {
            return Err(Status::bad_request(problems.join("; ")));
        }
        Ok(JoinTerms {
            ttl_seconds,
            uses: req.uses,
            name: req.name.clone(),
        })
    }

    /// 429 for a watch over the limit (the client may retry shortly).
    pub fn watches_exhausted(&self) -> Status {
        Status::too_many_requests(
            format!(
                "too many watches: the server holds at most {} at once (--max-watches)",
                self.watches
            ),
            Some(1),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes_are_counted_as_compact_json() {
        let v = json!({"hostname": "r1", "cpu": {"cores": 4}, "list": [1, 2.5, "x"]});
        assert_eq!(json_len(&v), serde_json::to_vec(&v).unwrap().len());
        let limits = Limits {
            device_info_bytes: json_len(&v),
            ..Limits::default()
        };
        assert!(limits.check_device_info(&v).is_ok());
        let bigger = json!({"hostname": "r1", "cpu": {"cores": 40}, "list": [1, 2.5, "x"]});
        let e = limits.check_device_info(&bigger).unwrap_err();
        assert_eq!((e.code, e.reason), (413, "RequestEntityTooLarge"));
        assert!(e.message.starts_with("deviceInfo:"), "{}", e.message);
    }

    #[test]
    fn join_tokens_live_at_most_the_servers_limit() {
        let limits = Limits::default();
        let ask = |ttl| JoinTokenRequest {
            ttl_seconds: ttl,
            ..JoinTokenRequest::default()
        };
        assert_eq!(limits.join_terms(&ask(None)).unwrap().ttl_seconds, 86_400);
        assert_eq!(limits.join_terms(&ask(Some(86_400))).unwrap().ttl_seconds, 86_400);
        let e = limits.join_terms(&ask(Some(86_401))).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(
            e.message.starts_with("ttlSeconds: 86401 seconds")
                && e.message.contains("86400 seconds (--max-join-token-ttl)"),
            "{}",
            e.message
        );
        let short = Limits {
            join_token_ttl_seconds: 600,
            ..Limits::default()
        };
        assert_eq!(
            short.join_terms(&ask(None)).unwrap().ttl_seconds,
            600,
            "the default shrinks to the limit"
        );
        let long = Limits {
            join_token_ttl_seconds: 7 * 86_400,
            ..Limits::default()
        };
        assert_eq!(
            long.join_terms(&ask(None)).unwrap().ttl_seconds,
            86_400,
            "the default stays a day"
        );
    }

    #[test]
    fn join_terms_name_every_bad_field() {
        let req = JoinTokenRequest {
            ttl_seconds: Some(u64::MAX),
            uses: Some(0),
            name: Some("Not A Name".into()),
        };
        let e = Limits::default().join_terms(&req).unwrap_err();
        assert_eq!(e.code, 400);
        for field in ["ttlSeconds:", "uses:", "name:"] {
            assert!(e.message.contains(field), "{field} missing in {}", e.message);
        }
        let req = JoinTokenRequest {
            ttl_seconds: Some(60),
            uses: Some(3),
            name: Some("r1".into()),
        };
        let terms = Limits::default().join_terms(&req).unwrap();
        assert_eq!(
            (terms.ttl_seconds, terms.uses, terms.name.as_deref()),
            (60, Some(3), Some("r1"))
        );
    }
}
