//! Service checks (`services[].checks[]`): http, tcp and script probes run
//! on their interval while the task runs; their outcome is the task's
//! health. Network probes run on a short-lived thread each (blocking I/O
//! with a timeout, never in the supervision loop); script probes are
//! processes, so the supervisor starts and reaps them like everything else.

use crate::api::Service;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, PartialEq)]
pub enum Probe {
    Http { port: u16, path: String },
    Tcp { port: u16 },
    Script { argv: Vec<String> },
}

#[derive(Clone, Debug, PartialEq)]
pub struct CheckSpec {
    pub name: String,
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
}

/// The checks of a task's services. Checks validation would reject (no
/// port, unknown type) are skipped.
pub fn from_services(services: &[Service]) -> Vec<CheckSpec> {
    let mut out = Vec::new();
    for s in services {
        for c in &s.checks {
            let port = c
                .port_label
                .as_deref()
                .unwrap_or(&s.port_label)
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0);
            let probe = match (c.check_type.as_str(), port) {
                ("http", Some(port)) => Probe::Http {
                    port,
                    path: c.path.clone().unwrap_or_else(|| "/".into()),
                },
                ("tcp", Some(port)) => Probe::Tcp { port },
                ("script", _) => match &c.command {
                    Some(cmd) if !cmd.is_empty() => Probe::Script {
                        argv: std::iter::once(cmd.clone()).chain(c.args.iter().cloned()).collect(),
                    },
                    _ => continue,
                },
                _ => continue,
            };
            out.push(CheckSpec {
                name: format!("{}/{}", s.name, c.name),
                probe,
                interval: c
                    .interval
                    .as_ref()
                    .and_then(|d| d.get())
                    .filter(|d| !d.is_zero())
                    .unwrap_or(DEFAULT_INTERVAL),
                timeout: c
                    .timeout
                    .as_ref()
                    .and_then(|d| d.get())
                    .filter(|d| !d.is_zero())
                    .unwrap_or(DEFAULT_TIMEOUT),
            });
        }
    }
    out
}

/// Run an http or tcp probe against 127.0.0.1 (blocking, bounded by `timeout`).
pub fn run_network_probe(probe: &Probe, timeout: Duration) -> Result<(), String> {
    let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    match probe {
        Probe::Tcp { port } => TcpStream::connect_timeout(&addr(*port), timeout)
            .map(|_| ())
            .map_err(|e| format!("tcp 127.0.0.1:{port}: {e}")),
        Probe::Http { port, path } => {
            let fail = |e: std::io::Error| format!("http 127.0.0.1:{port}{path}: {e}");
            let mut s = TcpStream::connect_timeout(&addr(*port), timeout).map_err(fail)?;
            s.set_read_timeout(Some(timeout)).map_err(fail)?;
            s.set_write_timeout(Some(timeout)).map_err(fail)?;
            // One write: a server that answers early must not see a torn request.
            let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: k8s4r-agent\r\n\r\n");
            s.write_all(request.as_bytes()).map_err(fail)?;
            // The status line may arrive in pieces: read until its end.
            let mut head = [0u8; 64];
            let mut n = 0;
            while n < head.len() && !head[..n].contains(&b'\n') {
                match s.read(&mut head[n..]).map_err(fail)? {
                    0 => break,
                    got => n += got,
                }
            }
            let status =
                parse_status(&head[..n]).ok_or_else(|| format!("http 127.0.0.1:{port}{path}: not an HTTP response"))?;
            if (200..400).contains(&status) {
                Ok(())
            } else {
                Err(format!("http 127.0.0.1:{port}{path}: status {status}"))
            }
        }
        Probe::Script { .. } => Err("script probes are run by the supervisor".into()),
    }
}

/// The status code of an HTTP/1.x status line.
fn parse_status(head: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(head).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

/// The task's health from its checks' latest results (None: no result yet).
pub fn health(results: &[(String, Option<Result<(), String>>)]) -> Option<String> {
    if results.is_empty() {
        return None;
    }
    let failing: Vec<String> = results
        .iter()
        .filter_map(|(name, r)| match r {
            Some(Err(e)) => Some(format!("{name}: {e}")),
            _ => None,
        })
        .collect();
    if !failing.is_empty() {
        Some(format!("unhealthy ({})", failing.join("; ")))
    } else if results.iter().all(|(_, r)| r.is_some()) {
        Some("healthy".into())
    } else {
        Some("pending".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ServiceCheck;
    use std::net::TcpListener;

    #[test]
    fn builds_checks_from_services() {
        let svc = Service {
            name: "web".into(),
            port_label: "8080".into(),
            checks: vec![
                ServiceCheck {
                    name: "alive".into(),
                    check_type: "http".into(),
                    path: Some("/healthz".into()),
                    ..Default::default()
                },
                ServiceCheck {
                    name: "sh".into(),
                    check_type: "script".into(),
                    command: Some("/bin/true".into()),
                    ..Default::default()
                },
                ServiceCheck {
                    name: "grpc".into(),
                    check_type: "grpc".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let checks = from_services(&[svc]);
        assert_eq!(checks.len(), 2);
        assert_eq!(
            checks[0].probe,
            Probe::Http {
                port: 8080,
                path: "/healthz".into()
            }
        );
        assert_eq!(checks[0].name, "web/alive");
        assert_eq!(checks[1].interval, DEFAULT_INTERVAL);
    }

    #[test]
    fn tcp_and_http_probes_against_a_local_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = listener.accept().unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 512];
                while !request.ends_with(b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .unwrap();
            }
        });
        let t = Duration::from_secs(2);
        assert_eq!(run_network_probe(&Probe::Http { port, path: "/".into() }, t), Ok(()));
        let err = run_network_probe(&Probe::Http { port, path: "/".into() }, t).unwrap_err();
        assert!(err.contains("status 503"), "{err}");
        server.join().unwrap();
        // Nothing listens any more.
        assert!(run_network_probe(&Probe::Tcp { port }, t).is_err());
    }

    #[test]
    fn health_summary() {
        assert_eq!(health(&[]), None);
        assert_eq!(health(&[("a".into(), None)]).unwrap(), "pending");
        assert_eq!(health(&[("a".into(), Some(Ok(())))]).unwrap(), "healthy");
        assert_eq!(
            health(&[("a".into(), Some(Ok(()))), ("b".into(), Some(Err("x".into())))]).unwrap(),
            "unhealthy (b: x)"
        );
    }
}
