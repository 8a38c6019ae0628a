//! The robot's identity: registered once with a join token (proving the
//! secret without sending it, and checking the server's key against the
//! token's pin), then kept in the data dir (identity.json, 0600): server
//! URL, name, namespace and the server's public keys. No secret is in it:
//! the robot's own key is robot.key (see `keys`).

use super::channel::Channel;
use super::client::{Client, ClientError};
use super::config::AgentConfig;
use super::keys::read_private;
use crate::api::agent_protocol::RegisterRequest;
use crate::api::robot_channel::{nonce, ChannelError, Claim, JoinToken, PublicKeys};
use crate::atomic_file;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub server: String,
    pub name: String,
    pub namespace: String,
    /// The server's Ed25519 key the robot trusts, hex.
    pub server_sign: String,
    /// The server's X25519 key status and log bodies are sealed to, hex.
    pub server_seal: String,
}

impl Identity {
    pub fn server_keys(&self) -> Option<PublicKeys> {
        PublicKeys::from_hex(&self.server_sign, &self.server_seal).ok()
    }

    pub fn set_server_keys(&mut self, keys: &PublicKeys) {
        self.server_sign = keys.sign_hex();
        self.server_seal = keys.seal_hex();
    }
}

pub const FILE: &str = "identity.json";

/// The stored identity, if it belongs to this server and robot name and
/// holds valid server keys (an identity from before the signed channel,
/// with a bearer token, does not: the robot registers again).
pub fn load(data_dir: &Path, config: &AgentConfig) -> Option<Identity> {
    let (bytes, _) = read_private(&data_dir.join(FILE), 64 * 1024).ok()??;
    let id: Identity = serde_json::from_slice(&bytes).ok()?;
    id.server_keys()?;
    (id.server == config.server && id.name == config.name).then_some(id)
}

pub fn save(data_dir: &Path, id: &Identity) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(id).map_err(std::io::Error::other)?;
    atomic_file::write(&data_dir.join(FILE), &bytes, 0o600)
}

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
        agent_version: Some(crate::agent::device::AGENT_VERSION.to_string()),
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
    save(data_dir, &id).map_err(RegisterError::Save)?;
    channel.set_identity(id.clone());
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::robot_channel::KeyPair;
    use std::os::unix::fs::PermissionsExt;

    fn config() -> AgentConfig {
        AgentConfig {
            server: "http://s:1".into(),
            join_token: None,
            name: "r1".into(),
            namespace: "default".into(),
            labels: Default::default(),
        }
    }

    #[test]
    fn the_identity_is_0600_without_secrets_and_must_hold_server_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut id = Identity {
            server: "http://s:1".into(),
            name: "r1".into(),
            namespace: "default".into(),
            server_sign: String::new(),
            server_seal: String::new(),
        };
        id.set_server_keys(&KeyPair::generate().public());
        save(dir.path(), &id).unwrap();
        let path = dir.path().join(FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load(dir.path(), &config()), Some(id.clone()));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("token"), "{text}");

        // Another robot name or server: not ours.
        let other = AgentConfig {
            name: "r2".into(),
            ..config()
        };
        assert_eq!(load(dir.path(), &other), None);
        // An identity from before the signed channel (a bearer token, no
        // server keys) means registering again.
        std::fs::write(
            &path,
            r#"{"server":"http://s:1","name":"r1","namespace":"default","token":"t"}"#,
        )
        .unwrap();
        assert_eq!(load(dir.path(), &config()), None);
        id.server_sign = "00".into();
        save(dir.path(), &id).unwrap();
        assert_eq!(load(dir.path(), &config()), None, "a damaged server key is no identity");
    }
}
