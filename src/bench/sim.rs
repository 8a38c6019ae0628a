//! One simulated robot of the benchmarks: its own keep-alive connection to
//! the agent listener and its robot-channel session, so it signs, seals,
//! verifies and opens as an agent does, in a session once the server takes
//! them (the channel's cost is part of what is measured). Shared by `fleet.rs`, `rollout.rs` and `job_rollout.rs`.

use crate::api::agent_protocol::{RegisterRequest, StatusReport};
use crate::api::robot_channel::JoinToken;
use crate::server::robot_channel::client::{Prepared, RobotSession};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long a simulated fleet may take to register: not what a bench
/// measures (10,000 robots on etcd take 70–75 s), but bounded, as a server
/// out of open files leaves robots waiting forever.
pub(super) const REGISTER_WITHIN: std::time::Duration = std::time::Duration::from_secs(600);

pub(super) struct SimRobot {
    pub(super) name: String,
    session: RobotSession,
    conn: Conn,
}

impl SimRobot {
    /// Register as `name` labelled `bench=yes` (what the benches' Jobs
    /// select), holding one of `limit`'s permits meanwhile so registrations
    /// do not all hit the server at once.
    pub(super) async fn register_labelled(
        addr: &str,
        join: &JoinToken,
        name: String,
        limit: &tokio::sync::Semaphore,
    ) -> Result<SimRobot, String> {
        let _permit = limit.acquire().await.map_err(|e| e.to_string())?;
        let labels = [("bench".to_string(), "yes".to_string())].into_iter().collect();
        let req = RegisterRequest {
            labels,
            ..RegisterRequest::default()
        };
        SimRobot::register(addr, join, name, req).await
    }

    /// Connect to `addr` and register as `name` with `join`.
    pub(super) async fn register(
        addr: &str,
        join: &JoinToken,
        name: String,
        req: RegisterRequest,
    ) -> Result<SimRobot, String> {
        let mut session = RobotSession::new(&name, join.pin);
        // As agents do: a session once the server says it takes them.
        session.sessions = true;
        let mut conn = Conn::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let p = session.register(join, req);
        let (code, reply) = conn
            .robot(&mut session, &p)
            .await
            .map_err(|e| format!("register: {e}"))?;
        if code != 200 {
            return Err(format!("register {name}: {code} {}", String::from_utf8_lossy(&reply)));
        }
        Ok(SimRobot { name, session, conn })
    }

    /// One long poll of the robot's assignments after `since`; the answer's
    /// body.
    pub(super) async fn poll(&mut self, since: u64) -> Result<Vec<u8>, String> {
        let path = format!("/agent/v1/robots/{}/assignments?since={since}&wait=60s", self.name);
        let p = self.session.request("GET", &path, None)?;
        let (code, body) = self
            .conn
            .robot(&mut self.session, &p)
            .await
            .map_err(|e| format!("poll: {e}"))?;
        if code != 200 {
            return Err(format!("poll {}: {code}", self.name));
        }
        Ok(body)
    }

    /// Long-poll from `since` until the robot's set changes; the answer's
    /// first task (None: it has none), with `since` moved to the answer's
    /// revision (the benches' Jobs put one task on each robot).
    pub(super) async fn next_first_task(&mut self, since: &mut u64) -> Result<Option<serde_json::Value>, String> {
        loop {
            let a: serde_json::Value = serde_json::from_slice(&self.poll(*since).await?).map_err(|e| e.to_string())?;
            let revision = a["revision"].as_u64().ok_or("an answer without revision")?;
            if revision != *since {
                *since = revision;
                return Ok(a["tasks"].as_array().and_then(|t| t.first()).cloned());
            }
        }
    }

    /// Report the robot's status.
    pub(super) async fn report(&mut self, r: &StatusReport) -> Result<(), String> {
        let body = serde_json::to_vec(r).map_err(|e| e.to_string())?;
        let p = self
            .session
            .request("POST", &format!("/agent/v1/robots/{}/status", self.name), Some(&body))?;
        let (code, reply) = self.conn.robot(&mut self.session, &p).await?;
        if code != 200 {
            return Err(format!(
                "report {}: {code} {}",
                self.name,
                String::from_utf8_lossy(&reply)
            ));
        }
        Ok(())
    }
}

/// One minimal HTTP/1.1 keep-alive connection to the agent listener (the
/// bench must not be the bottleneck, and the agent API needs nothing more).
pub(super) struct Conn {
    stream: BufReader<TcpStream>,
    host: String,
}

impl Conn {
    /// Connect from a loopback source address of its own for each 16,000
    /// connections (127.1.k.1): one source address has ≈ 28,000 ephemeral
    /// ports, and a fleet of 100,000 simulated robots needs a connection
    /// each. Other targets connect as usual.
    pub(super) async fn connect(addr: &str) -> std::io::Result<Conn> {
        static CONNECTIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let target = tokio::net::lookup_host(addr)
            .await?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{addr}: no address")))?;
        let s = match target {
            std::net::SocketAddr::V4(v4) if v4.ip().is_loopback() => {
                let n = CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let k = u8::try_from((n / 16_000) % 250).unwrap_or(0);
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(std::net::SocketAddr::from(([127, 1, k, 1], 0)))?;
                socket.connect(target).await?
            }
            _ => TcpStream::connect(target).await?,
        };
        s.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::new(s),
            host: addr.to_string(),
        })
    }

    /// A robot-channel request, its answer verified (and opened) by `robot`.
    pub(super) async fn robot(&mut self, robot: &mut RobotSession, p: &Prepared) -> Result<(u16, Vec<u8>), String> {
        let (code, headers, body) = self
            .exchange(&p.method, &p.target, &p.headers, &p.body)
            .await
            .map_err(|e| format!("{} {}: {e}", p.method, p.target))?;
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let body = robot.answer(p, code, &header, &body)?;
        Ok((code, body))
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<(String, String)>, Vec<u8>)> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.stream.get_mut().write_all(&bytes).await?;
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("bad status line"))?;
        let mut len = None;
        let mut got = Vec::new();
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                return Err(bad("connection closed"));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse::<usize>().ok();
                }
                got.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let mut buf = vec![0; len.ok_or_else(|| bad("no content-length"))?];
        self.stream.read_exact(&mut buf).await?;
        Ok((code, got, buf))
    }
}
