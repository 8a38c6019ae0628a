//! The agent API over plain HTTP (the agent's own small client; blocking,
//! no async runtime).
//! HTTP stays here: callers get typed requests and responses.

use crate::agent::http::{HttpError, Request, Response};
use crate::api::agent_protocol::{
    Assignments, LogUpload, RegisterRequest, RegisterResponse, StatusReply, StatusReport, PREFIX,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// Largest response we read: a robot's full desired set stays far below.
const MAX_RESPONSE: u64 = 16 << 20;
/// Added to the long-poll wait so the server answers before we give up.
const POLL_SLACK: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub enum ClientError {
    /// Could not reach the server or the connection broke.
    Transport(String),
    /// The server answered with an error status (message from its Status).
    Status { code: u16, message: String },
    /// The answer was not what the protocol says.
    Decode(String),
}

impl ClientError {
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, ClientError::Status { code: 401, .. })
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Transport(m) => write!(f, "cannot reach the server: {m}"),
            ClientError::Status { code, message } => write!(f, "server answered {code}: {message}"),
            ClientError::Decode(m) => write!(f, "unexpected answer from the server: {m}"),
        }
    }
}

impl std::error::Error for ClientError {}

pub struct Client {
    base: String,
    user_agent: String,
}

impl Client {
    pub fn new(base: &str) -> Self {
        Client {
            base: base.trim_end_matches('/').to_string(),
            user_agent: format!("k8s4r-agent/{}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// `proof`: the robot token of an earlier registration of this name,
    /// which the server asks for before it replaces a registered robot.
    pub fn register(&self, req: &RegisterRequest, proof: Option<&str>) -> Result<RegisterResponse, ClientError> {
        self.post(&format!("{PREFIX}/register"), proof, req)
    }

    /// Long poll: returns at once if the desired set changed after `since`,
    /// else when it changes or `wait` is over.
    pub fn assignments(
        &self,
        robot: &str,
        token: &str,
        since: u64,
        wait: Duration,
    ) -> Result<Assignments, ClientError> {
        let url = format!(
            "{}{PREFIX}/robots/{robot}/assignments?since={since}&wait={}s",
            self.base,
            wait.as_secs()
        );
        let auth = format!("Bearer {token}");
        let headers = [
            ("Authorization", auth.as_str()),
            ("Accept", "application/json"),
            ("User-Agent", &self.user_agent),
        ];
        let req = Request {
            method: "GET",
            url: &url,
            headers: &headers,
            body: None,
            timeout: wait.saturating_add(POLL_SLACK),
        };
        read_json(req.send())
    }

    pub fn report(&self, robot: &str, token: &str, report: &StatusReport) -> Result<StatusReply, ClientError> {
        self.post(&format!("{PREFIX}/robots/{robot}/status"), Some(token), report)
    }

    pub fn upload_log(&self, robot: &str, token: &str, upload: &LogUpload) -> Result<(), ClientError> {
        self.post::<_, serde_json::Value>(&format!("{PREFIX}/robots/{robot}/logs"), Some(token), upload)
            .map(|_| ())
    }

    fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
        body: &B,
    ) -> Result<R, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        let url = format!("{}{path}", self.base);
        let auth = token.map(|t| format!("Bearer {t}")).unwrap_or_default();
        let mut headers = vec![
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
            ("User-Agent", self.user_agent.as_str()),
        ];
        if token.is_some() {
            headers.push(("Authorization", auth.as_str()));
        }
        let req = Request {
            method: "POST",
            url: &url,
            headers: &headers,
            body: Some(&bytes),
            timeout: REQUEST_TIMEOUT,
        };
        read_json(req.send())
    }
}

fn read_json<R: DeserializeOwned>(response: Result<Response, HttpError>) -> Result<R, ClientError> {
    let response = response.map_err(|e| ClientError::Transport(e.to_string()))?;
    let code = response.status;
    let body = response
        .read_body(MAX_RESPONSE)
        .map_err(|e| ClientError::Transport(e.to_string()))?;
    if !(200..300).contains(&code) {
        // Errors are Kubernetes Status objects; fall back to the raw text.
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
        return Err(ClientError::Status { code, message });
    }
    // Through the one typed decoder the agent already has (api::decode):
    // a second serde instantiation of every API type would grow the binary.
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.to_string()))?;
    crate::api::decode::decode_typed(value)
        .map(|d| d.object)
        .map_err(|e| ClientError::Decode(e.to_string()))
}
