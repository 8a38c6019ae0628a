//! The audit log (`--audit-log-path`): one JSON line per mutating request,
//! allowed or refused, in the shape of Kubernetes audit events
//! (`audit.k8s.io/v1` `Event`, level Metadata, stage ResponseComplete).
//!
//! A line is small and written with one `write` under a mutex, so a request
//! holds a runtime thread only for that. A failed write is logged and
//! counted (`k8s4r_audit_write_failures_total`), never fatal: the request it
//! records has already been answered. The file is created 0600 without
//! following a symlink, appended to, and rotated to `FILE.1` at
//! `--audit-log-maxsize`.

use super::authz::{Request, Target};
use super::User;
use serde_json::{json, Value};
use std::fs::File;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

/// The user of a request without credentials, as Kubernetes names it.
const ANONYMOUS: &str = "system:anonymous";
const UNAUTHENTICATED: &str = "system:unauthenticated";
/// Default `--audit-log-maxsize` in MiB.
pub const DEFAULT_MAX_MB: u64 = 100;

/// What one audited request did.
pub struct Entry<'a> {
    pub request: &'a Request,
    /// Path and query as received.
    pub uri: &'a str,
    /// None: anonymous, or credentials that named no user.
    pub user: Option<&'a User>,
    pub source_ip: Option<IpAddr>,
    pub user_agent: Option<&'a str>,
    pub code: u16,
    pub received: SystemTime,
}

impl Entry<'_> {
    /// The `audit.k8s.io/v1` Event.
    pub fn to_event(&self, audit_id: &str, now: SystemTime) -> Value {
        use crate::server::time::format_rfc3339_micros as ts;
        let user = match self.user {
            Some(u) => json!({"username": u.name, "groups": u.groups}),
            None => json!({"username": ANONYMOUS, "groups": [UNAUTHENTICATED]}),
        };
        let mut event = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "Metadata",
            "auditID": audit_id,
            "stage": "ResponseComplete",
            "requestURI": self.uri,
            "verb": self.request.verb,
            "user": user,
            "sourceIPs": self.source_ip.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
            "responseStatus": {"metadata": {}, "code": self.code},
            "requestReceivedTimestamp": ts(self.received),
            "stageTimestamp": ts(now),
        });
        if let Some(ua) = self.user_agent {
            event["userAgent"] = json!(ua);
        }
        if let Target::Resource(r) = &self.request.target {
            let mut obj = json!({"resource": r.resource, "apiGroup": r.group, "apiVersion": r.version});
            for (field, value) in [
                ("subresource", &r.subresource),
                ("namespace", &r.namespace),
                ("name", &r.name),
            ] {
                if !value.is_empty() {
                    obj[field] = json!(value);
                }
            }
            event["objectRef"] = obj;
        }
        event
    }
}

enum Sink {
    Stdout,
    File(LogFile),
}

struct LogFile {
    path: PathBuf,
    file: File,
    /// Bytes in `file` (rotation is decided without a stat per line).
    size: u64,
    /// Rotate before a line would take the file past this; 0: never.
    max: u64,
}

impl LogFile {
    fn open(path: &Path, max: u64) -> std::io::Result<LogFile> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)?;
        let meta = file.metadata()?;
        if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "audit log {}: readable by others (mode {:o}); it records who did what",
                path.display(),
                meta.permissions().mode() & 0o777
            );
        }
        // Devices (a pipe, /dev/stderr) never rotate.
        let max = if meta.is_file() { max } else { 0 };
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
            size: meta.len(),
            max,
        })
    }

    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let len = line.len() as u64;
        if self.max > 0 && self.size > 0 && self.size.saturating_add(len) > self.max {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            std::fs::rename(&self.path, &old)?;
            *self = LogFile::open(&self.path, self.max)?;
        }
        self.file.write_all(line)?;
        self.size = self.size.saturating_add(len);
        Ok(())
    }
}

/// Where audit events go (nowhere without `--audit-log-path`).
pub struct Audit {
    sink: Option<Mutex<Sink>>,
    written: AtomicU64,
    failures: AtomicU64,
}

impl Audit {
    pub fn disabled() -> Audit {
        Audit {
            sink: None,
            written: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// `path` `-` is standard output; a file rotates to `FILE.1` past
    /// `max_bytes` (0: never).
    pub fn open(path: &Path, max_bytes: u64) -> std::io::Result<Audit> {
        let sink = if path == Path::new("-") {
            Sink::Stdout
        } else {
            Sink::File(LogFile::open(path, max_bytes)?)
        };
        Ok(Audit {
            sink: Some(Mutex::new(sink)),
            ..Audit::disabled()
        })
    }

    pub fn enabled(&self) -> bool {
        self.sink.is_some()
    }

    /// Write one event; a failure is logged and counted.
    pub fn record(&self, entry: &Entry<'_>) {
        let Some(sink) = &self.sink else { return };
        let event = entry.to_event(&crate::server::object::new_uid(), SystemTime::now());
        let mut line = event.to_string().into_bytes();
        line.push(b'\n');
        let result = match &mut *sink.lock().unwrap_or_else(|e| e.into_inner()) {
            Sink::Stdout => std::io::stdout().lock().write_all(&line),
            Sink::File(f) => f.write_line(&line),
        };
        match result {
            Ok(()) => {
                self.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                // Every failure counts; the log gets the 1st, 2nd, 4th, ...
                // so a full disk does not flood it.
                if n.is_power_of_two() {
                    log::error!("writing the audit log ({n} failed writes so far): {e}");
                }
            }
        }
    }

    /// The Prometheus lines of the audit log.
    pub fn metrics_text(&self) -> String {
        format!(
            "# HELP k8s4r_audit_events_total Audit events written.\n\
             # TYPE k8s4r_audit_events_total counter\n\
             k8s4r_audit_events_total {}\n\
             # HELP k8s4r_audit_write_failures_total Audit events that could not be written.\n\
             # TYPE k8s4r_audit_write_failures_total counter\n\
             k8s4r_audit_write_failures_total {}\n",
            self.written.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::authz::parse;
    use super::*;

    fn entry<'a>(req: &'a Request, user: Option<&'a User>) -> Entry<'a> {
        Entry {
            request: req,
            uri: "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs/x",
            user,
            source_ip: Some("127.0.0.1".parse().unwrap()),
            user_agent: Some("kubectl/v1.32"),
            code: 200,
            received: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn events_have_the_kubernetes_shape() {
        let req = parse(
            "DELETE",
            "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs/x",
            None,
        );
        let alice = User {
            name: "alice".into(),
            groups: vec!["k8s4r:operators".into()],
        };
        let e = entry(&req, Some(&alice)).to_event("id-1", SystemTime::UNIX_EPOCH);
        assert_eq!(e["kind"], "Event");
        assert_eq!(e["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(e["verb"], "delete");
        assert_eq!(e["user"], json!({"username": "alice", "groups": ["k8s4r:operators"]}));
        assert_eq!(e["sourceIPs"], json!(["127.0.0.1"]));
        assert_eq!(
            e["objectRef"],
            json!({"resource": "jobs", "namespace": "default", "name": "x",
                   "apiGroup": "robot.k8s4r.io", "apiVersion": "v1alpha1"})
        );
        assert_eq!(e["responseStatus"]["code"], 200);
        assert_eq!(e["requestReceivedTimestamp"], "1970-01-01T00:00:00.000000Z");
        let paths = parse("POST", "/agent/v1/jointokens", None);
        let anon = entry(&paths, None).to_event("id-2", SystemTime::UNIX_EPOCH);
        assert_eq!(anon["user"]["username"], ANONYMOUS);
        assert_eq!(anon["verb"], "post");
        assert!(anon.get("objectRef").is_none());
    }

    #[test]
    fn appends_rotates_and_refuses_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let req = parse("POST", "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs", None);
        // Lines are equally long here (same request, fixed-width times).
        Audit::open(&path, 0).unwrap().record(&entry(&req, None));
        let line = std::fs::metadata(&path).unwrap().len();
        // Room for three lines: the 4th rotates, 4 to 6 go to the new file.
        let a = Audit::open(&path, 3 * line + line / 2).unwrap();
        for _ in 0..5 {
            a.record(&entry(&req, None));
        }
        let now = std::fs::read_to_string(&path).unwrap();
        let old = std::fs::read_to_string(dir.path().join("audit.log.1")).unwrap();
        assert_eq!((old.lines().count(), now.lines().count()), (3, 3));
        for line in now.lines().chain(old.lines()) {
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["verb"], "create");
        }
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(Audit::open(&link, 0).is_err(), "a symlink is not followed");
    }

    #[test]
    fn a_failed_write_is_counted_not_fatal() {
        let a = Audit::open(Path::new("/dev/full"), 0).unwrap();
        let req = parse("POST", "/agent/v1/jointokens", None);
        a.record(&entry(&req, None));
        a.record(&entry(&req, None));
        assert!(a.metrics_text().contains("k8s4r_audit_write_failures_total 2\n"));
        assert!(a.metrics_text().contains("k8s4r_audit_events_total 0\n"));
    }
}
