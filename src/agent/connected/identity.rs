//! The robot's identity: registered once with a join token, then the
//! per-robot token is kept in the data dir (mode 0600) and reused.

use super::client::{Client, ClientError};
use super::config::AgentConfig;
use crate::agent::state::write_atomic;
use crate::api::agent_protocol::RegisterRequest;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub server: String,
    pub name: String,
    pub namespace: String,
    pub token: String,
}

const FILE: &str = "identity.json";

/// The stored identity, if it belongs to this server and robot name.
pub fn load(data_dir: &Path, config: &AgentConfig) -> Option<Identity> {
    let bytes = std::fs::read(data_dir.join(FILE)).ok()?;
    let id: Identity = serde_json::from_slice(&bytes).ok()?;
    (id.server == config.server && id.name == config.name).then_some(id)
}

#[derive(Debug)]
pub enum RegisterError {
    /// No stored token and no join token to get one.
    NoJoinToken,
    Client(ClientError),
    Save(std::io::Error),
}

impl std::fmt::Display for RegisterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegisterError::NoJoinToken => {
                f.write_str("not registered yet and no join token (--join-token or K8S4R_JOIN_TOKEN)")
            }
            RegisterError::Client(e) => write!(f, "registering: {e}"),
            RegisterError::Save(e) => write!(f, "saving the robot token: {e}"),
        }
    }
}

/// Trade the join token for a robot token and keep it.
pub fn register(
    client: &Client,
    config: &AgentConfig,
    data_dir: &Path,
    device_info: serde_json::Value,
) -> Result<Identity, RegisterError> {
    let join_token = config.join_token.clone().ok_or(RegisterError::NoJoinToken)?;
    // A token this robot was given before (another server address, say)
    // proves it is the robot of that name: the server replaces a registered
    // robot only for itself.
    let earlier = std::fs::read(data_dir.join(FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<Identity>(&b).ok())
        .filter(|id| id.name == config.name);
    let reply = client
        .register(
            // Placeholder until the agent side of the signed channel
            // (its own branch) replaces this module: unsigned, the server
            // refuses it (401).
            &RegisterRequest {
                token_id: join_token,
                name: config.name.clone(),
                namespace: Some(config.namespace.clone()),
                labels: config.labels.clone(),
                device_info: Some(device_info),
                agent_version: Some(crate::agent::device::AGENT_VERSION.to_string()),
                ..RegisterRequest::default()
            },
            earlier.as_ref().map(|id| id.token.as_str()),
        )
        .map_err(RegisterError::Client)?;
    let id = Identity {
        server: config.server.clone(),
        name: reply.name,
        namespace: reply.namespace,
        token: String::new(),
    };
    let bytes = serde_json::to_vec(&id).map_err(|e| RegisterError::Save(std::io::Error::other(e)))?;
    write_atomic(&data_dir.join(FILE), &bytes, 0o600).map_err(RegisterError::Save)?;
    Ok(id)
}
