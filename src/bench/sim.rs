//! One simulated robot of the benchmarks: its own keep-alive connection to
//! the agent listener and its robot-channel session, so it signs, seals,
//! verifies and opens as an agent does (the channel's cost is part of what
//! is measured). Shared by `fleet.rs`, `rollout.rs` and `job_rollout.rs`.

use super::fleet::Conn;
use crate::api::agent_protocol::{RegisterRequest, StatusReport};
use crate::api::robot_channel::JoinToken;
use crate::server::robot_channel::client::RobotSession;

pub(super) struct SimRobot {
    pub(super) name: String,
    session: RobotSession,
    conn: Conn,
}

/// A fresh join token from the server behind `kubeconfig` (as an admin).
pub(super) async fn join_token(kubeconfig: &std::path::Path) -> Result<JoinToken, String> {
    let body = super::fleet::admin_request(kubeconfig, "POST", "/agent/v1/jointokens", "{}".into()).await?;
    let join: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    JoinToken::parse(join["token"].as_str().ok_or("no join token")?).map_err(|e| e.to_string())
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
