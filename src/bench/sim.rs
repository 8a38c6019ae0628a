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

impl SimRobot {
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
