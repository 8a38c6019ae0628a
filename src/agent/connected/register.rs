//! Registering the robot once with a join token: proving the secret
//! without sending it, checking the server's key against the token's pin,
//! and keeping the answer as the robot's [`Identity`].

use super::channel::Channel;
use super::client::{Client, ClientError};
use super::config::AgentConfig;
use super::identity::{self, Identity};
use crate::api::agent_protocol::RegisterRequest;
use crate::api::robot_channel::{nonce, ChannelError, Claim, JoinToken};
use std::path::Path;

#[derive(Debug)]
pub enum RegisterError {
    /// No stored identity and no join token to get one.
    NoJoinToken,
    /// The join token cannot be used (no server pin, malformed).
    JoinToken(ChannelError),
    Client(ClientError),
    Save(std::io::Error),
}

impl std::fmt::Display for RegisterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegisterError::NoJoinToken => {
                f.write_str("not registered yet and no join token (--join-token or K8S4R_JOIN_TOKEN)")
            }
            RegisterError::JoinToken(e) => write!(f, "{e}"),
            RegisterError::Client(ClientError::Status { code: 409, message }) => write!(
                f,
                "registering: the server refuses this robot's key (409): {message}; an operator's \
                 `k8s4r robot reset NAME` lets this robot take the name"
            ),
            RegisterError::Client(e) => write!(f, "registering: {e}"),
            RegisterError::Save(e) => write!(f, "saving the robot's identity: {e}"),
        }
    }
}

/// The registration request: a claim of name and keys at `time`, proven
/// with the join secret (which is not sent).
fn claim(
    channel: &Channel,
    config: &AgentConfig,
    token: &JoinToken,
    time: u64,
    device_info: &serde_json::Value,
) -> RegisterRequest {
    let keys = channel.public();
    let nonce = nonce();
    let claim = Claim {
        token_id: &token.id,
        namespace: &config.namespace,
        name: &config.name,
        keys: &keys,
        time,
        nonce: &nonce,
    };
    let proof = claim.prove(&token.secret_hash());
    RegisterRequest {
        token_id: token.id.clone(),
        name: config.name.clone(),
        namespace: Some(config.namespace.clone()),
        labels: config.labels.clone(),
        device_info: Some(device_info.clone()),
        agent_version: Some(crate::agent::version::current().to_string()),
        signing_key: keys.sign_hex(),
        sealing_key: keys.seal_hex(),
        time,
        nonce,
        proof: crate::api::hex::encode(&proof),
    }
}

/// Prove the join token, bind this robot's keys to its name, and keep what
/// the server answered (its keys checked against the token's pin).
pub fn register(
    client: &Client,
    config: &AgentConfig,
    data_dir: &Path,
    device_info: serde_json::Value,
) -> Result<Identity, RegisterError> {
    let text = config.join_token.as_deref().ok_or(RegisterError::NoJoinToken)?;
    let token = JoinToken::parse(text).map_err(RegisterError::JoinToken)?;
    let channel = client.channel();
    // A robot without a real-time clock learns the server's time from the
    // first signed answer (a 401 saying the claim is stale): then it
    // claims again at once with the corrected time.
    let mut attempts = 0;
    let (reply, server_keys) = loop {
        attempts += 1;
        let claimed = channel.now();
        match client.register(
            &config.name,
            &token.pin,
            &claim(channel, config, &token, claimed, &device_info),
        ) {
            Err(ClientError::Status { code: 401, .. })
                if attempts == 1 && channel.now().abs_diff(claimed) > super::client::CLOCK_OFF =>
            {
                continue
            }
            result => break result.map_err(RegisterError::Client)?,
        }
    };
    let mut id = Identity {
        server: config.server.clone(),
        name: reply.name,
        namespace: reply.namespace,
        server_sign: String::new(),
        server_seal: String::new(),
    };
    id.set_server_keys(&server_keys);
    identity::save(data_dir, &id).map_err(RegisterError::Save)?;
    // Kept unless the robot has one already (see update::key).
    if let Some(key) = &reply.release_key {
        let _ = crate::agent::update::key::learn(data_dir, key);
    }
    channel.set_identity(id.clone());
    Ok(id)
}
