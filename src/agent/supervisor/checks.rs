//! Service checks (`services[].checks[]`): http, tcp and script probes run
//! on their interval while the task runs; their outcome is the task's
//! health. Network probes run on a short-lived thread each (blocking I/O
//! with a timeout, never in the supervision loop); script probes are
//! processes, so the supervisor starts and reaps them like everything else.

use crate::api::Service;
use crate::http_client::{HttpError, Request};
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

/// Run an http or tcp probe against 127.0.0.1 (blocking: the connect, and
/// each read and write, bounded by `timeout`). An http probe passes on a
/// status from 200 to 399 (a redirect is not followed: it is an answer);
/// only the head is read, never the body.
pub fn run_network_probe(probe: &Probe, timeout: Duration) -> Result<(), String> {
    match probe {
        Probe::Tcp { port } => TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], *port)), timeout)
            .map(|_| ())
            .map_err(|e| format!("tcp 127.0.0.1:{port}: {e}")),
        Probe::Http { port, path } => {
            let fail = |e: &dyn std::fmt::Display| format!("http 127.0.0.1:{port}{path}: {e}");
            if !path.starts_with('/') {
                return Err(fail(&HttpError::Target(path.clone())));
            }
            let url = format!("http://127.0.0.1:{port}{path}");
            let request = Request {
                headers: &[("User-Agent", "k8s4r-agent")],
                ..Request::get(&url, timeout)
            };
            let status = request.send_once().map_err(|e| fail(&e))?.status;
            if (200..400).contains(&status) {
                Ok(())
            } else {
                Err(fail(&format!("status {status}")))
            }
        }
        Probe::Script { .. } => Err("script probes are run by the supervisor".into()),
    }
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
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::time::Instant;

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

    /// Python's `http.server` on a free loopback port, serving `dir`;
    /// killed when dropped.
    struct PythonHttp {
        child: std::process::Child,
        port: u16,
    }

    impl PythonHttp {
        fn start(dir: &std::path::Path) -> PythonHttp {
            let child = std::process::Command::new("python3")
                .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory"])
                .arg(dir)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("python3 (the tests' HTTP server) must be installed");
            // Killed on drop from here on, a failed start included.
            let mut server = PythonHttp { child, port: 0 };
            // "Serving HTTP on 127.0.0.1 port 41234 (...)": the port it bound.
            let stdout = server.child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = BufReader::new(stdout).read_line(&mut line);
                let _ = tx.send(line);
            });
            let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
            server.port = line
                .split(" port ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next()?.parse().ok())
                .unwrap_or_else(|| panic!("http.server did not say its port: {line:?}"));
            server
        }
    }

    impl Drop for PythonHttp {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[test]
    fn http_probes_against_a_real_http_server() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("healthz"), "ok").unwrap();
        std::fs::create_dir(dir.path().join("app")).unwrap();
        let server = PythonHttp::start(dir.path());
        let probe = |path: &str| {
            run_network_probe(
                &Probe::Http {
                    port: server.port,
                    path: path.into(),
                },
                Duration::from_secs(5),
            )
        };
        assert_eq!(probe("/healthz"), Ok(()));
        assert_eq!(probe("/healthz?verbose=1"), Ok(()));
        // A directory without its slash: 301, an answer in 200-399.
        assert_eq!(probe("/app"), Ok(()));
        let err = probe("/missing").unwrap_err();
        assert_eq!(err, format!("http 127.0.0.1:{}/missing: status 404", server.port));
        let err = probe("healthz").unwrap_err();
        assert!(err.contains("is not a request path"), "{err}");
        assert_eq!(
            run_network_probe(&Probe::Tcp { port: server.port }, Duration::from_secs(5)),
            Ok(())
        );
    }

    /// Answers each connection with the next of `answers` (whole), after
    /// reading the request head; then stops listening.
    fn scripted(answers: Vec<&'static str>) -> (u16, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut heads = Vec::new();
            for answer in answers {
                let (s, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(&s);
                let mut head = String::new();
                while !head.ends_with("\r\n\r\n") && reader.read_line(&mut head).is_ok_and(|n| n > 0) {}
                (&s).write_all(answer.as_bytes()).unwrap();
                heads.push(head);
            }
            heads
        });
        (port, server)
    }

    #[test]
    fn http_probe_edges() {
        let t = Duration::from_secs(2);
        let (port, server) = scripted(vec![
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
            // An answer, not followed: no request for /elsewhere below.
            "HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
            // A body far larger than anything read: the status decides.
            "HTTP/1.0 200 OK\r\nContent-Length: 100000000\r\n\r\npartial",
            "SSH-2.0-OpenSSH_9.6\r\n",
        ]);
        let probe = Probe::Http {
            port,
            path: "/ready".into(),
        };
        let err = run_network_probe(&probe, t).unwrap_err();
        assert_eq!(err, format!("http 127.0.0.1:{port}/ready: status 503"));
        assert_eq!(run_network_probe(&probe, t), Ok(()));
        assert_eq!(run_network_probe(&probe, t), Ok(()));
        let err = run_network_probe(&probe, t).unwrap_err();
        assert!(err.contains("bad HTTP response"), "{err}");
        let heads = server.join().unwrap();
        assert!(heads[0].starts_with("GET /ready HTTP/1.1\r\n"), "{heads:?}");
        assert!(heads[0].contains(&format!("Host: 127.0.0.1:{port}\r\n")), "{heads:?}");
        assert!(heads[0].contains("User-Agent: k8s4r-agent\r\n"), "{heads:?}");
        assert!(heads.iter().all(|h| h.starts_with("GET /ready ")), "{heads:?}");
        // Nothing listens any more.
        assert!(run_network_probe(&Probe::Tcp { port }, t).is_err());
        assert!(run_network_probe(&probe, t)
            .unwrap_err()
            .contains("connecting to 127.0.0.1"));
    }

    #[test]
    fn http_probe_times_out_on_a_silent_server() {
        // Accepts (the kernel does, from the backlog) and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let started = Instant::now();
        let err = run_network_probe(&Probe::Http { port, path: "/".into() }, Duration::from_millis(200)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(err.starts_with(&format!("http 127.0.0.1:{port}/: ")), "{err}");
        drop(listener);
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
