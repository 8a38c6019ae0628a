//! Caps on what one client can make the server hold. Each is a `k8s4r
//! server` flag whose default is below (and in `--help`); hitting one
//! answers a Kubernetes Status naming the limit and its flag: 429
//! TooManyRequests for counts, 413 RequestEntityTooLarge for sizes.
//!
//! Time is bounded separately: every duration a request names is at most
//! [`crate::server::time::MAX_DURATION`].

use crate::api::agent_protocol::StatusReport;
use crate::server::status::Status;
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            watches: 1000,
            status_updates: 1000,
            device_info_bytes: 64 * 1024,
            robots_per_join_token: 1000,
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
}
