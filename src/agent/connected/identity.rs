//! The robot's identity, as kept in the data dir (identity.json, 0600):
//! server URL, name, namespace and the server's public keys. No secret is
//! in it: the robot's own key is robot.key (see `keys`). It is obtained
//! once by registering (`register.rs`); the channel keeps it current.

use super::config::AgentConfig;
use super::keys::read_private;
use crate::api::robot_channel::PublicKeys;
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
