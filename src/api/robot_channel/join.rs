//! Join tokens and the registration proof.
//!
//! A join token is `K8R1<pin>::<id>.<secret>`: the pin is the hex SHA-256
//! of the server's signing key (as kubeadm's discovery hash and k3s's `K10`
//! tokens), `id` names the token in the store and in logs, `secret` is
//! shown once. The server keeps only SHA-256(secret), and that hash is the
//! HMAC key of the proof: a robot proves it knows the secret without
//! sending it, binding the proof to its name, keys, time and a nonce.

use super::keys::PublicKeys;
use super::ChannelError;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const JOIN_TOKEN_PREFIX: &str = "K8R1";
/// Longest token text accepted (ours are about 130 bytes).
const MAX_TOKEN: usize = 256;

#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the server's signing key.
    pub pin: [u8; 32],
    pub id: String,
    pub secret: String,
}

// The secret stays out of logs and panics.
impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JoinToken {{ id: {:?}, .. }}", self.id)
    }
}

fn is_token_word(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl JoinToken {
    pub fn parse(text: &str) -> Result<Self, ChannelError> {
        let bad = |why: &'static str| ChannelError::BadJoinToken(why);
        let text = text.trim();
        if text.len() > MAX_TOKEN {
            return Err(bad("longer than any join token"));
        }
        let rest = text
            .strip_prefix(JOIN_TOKEN_PREFIX)
            .ok_or(bad("it does not start with K8R1 (tokens from before the signed channel have no server pin: create a new one with `k8s4r token create`)"))?;
        let (pin, creds) = rest.split_once("::").ok_or(bad("no '::' after the server pin"))?;
        let pin = crate::api::hex::decode::<32>(pin).ok_or(bad("the server pin is not 64 hex digits"))?;
        let (id, secret) = creds.split_once('.').ok_or(bad("no '.' between id and secret"))?;
        if !is_token_word(id) || !is_token_word(secret) {
            return Err(bad("id and secret are 1 to 64 letters, digits or '-'"));
        }
        Ok(JoinToken {
            pin,
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    pub fn to_text(&self) -> String {
        format!(
            "{JOIN_TOKEN_PREFIX}{}::{}.{}",
            crate::api::hex::encode(&self.pin),
            self.id,
            self.secret
        )
    }

    /// What the server stores, and the proof's key.
    pub fn secret_hash(&self) -> [u8; 32] {
        secret_hash(&self.secret)
    }
}

pub fn secret_hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// What a registering robot claims and proves.
pub struct Claim<'a> {
    pub token_id: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub keys: &'a PublicKeys,
    pub time: u64,
    /// 32 hex digits, fresh per attempt.
    pub nonce: &'a str,
}

impl Claim<'_> {
    fn text(&self) -> String {
        format!(
            "k8s4r-register-v1\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.token_id,
            self.namespace,
            self.name,
            self.keys.sign_hex(),
            self.keys.seal_hex(),
            self.time,
            self.nonce
        )
    }

    fn mac(&self, secret_hash: &[u8; 32]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret_hash).expect("HMAC takes any key length");
        mac.update(self.text().as_bytes());
        mac
    }

    /// HMAC-SHA256(key = SHA-256(secret), claim text).
    pub fn prove(&self, secret_hash: &[u8; 32]) -> [u8; 32] {
        self.mac(secret_hash).finalize().into_bytes().into()
    }

    /// Constant-time check of a proof.
    pub fn check(&self, secret_hash: &[u8; 32], proof: &[u8; 32]) -> bool {
        self.mac(secret_hash).verify_slice(proof).is_ok()
    }
}

/// A fresh nonce: 16 random bytes as hex.
pub fn nonce() -> String {
    let mut b = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::UnwrapErr(rand_core::OsRng), &mut b);
    crate::api::hex::encode(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::robot_channel::KeyPair;

    #[test]
    fn a_token_round_trips_and_bad_ones_say_why() {
        let t = JoinToken {
            pin: [7; 32],
            id: "abc123".into(),
            secret: "s3cret".into(),
        };
        assert_eq!(JoinToken::parse(&t.to_text()).unwrap(), t);
        assert!(!format!("{t:?}").contains("s3cret"));
        for bad in [
            "k8s4r-join-abc",
            "K8R1abcd::id.secret",
            "K8R10707::id.secret",
            &format!("K8R1{}::idsecret", "07".repeat(32)),
            &format!("K8R1{}::id.sec ret", "07".repeat(32)),
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn a_proof_holds_for_its_claim_only() {
        let keys = KeyPair::generate().public();
        let other = KeyPair::generate().public();
        let claim = |name, keys, time| Claim {
            token_id: "id",
            namespace: "default",
            name,
            keys,
            time,
            nonce: "00",
        };
        let h = secret_hash("secret");
        let proof = claim("r1", &keys, 5).prove(&h);
        assert!(claim("r1", &keys, 5).check(&h, &proof));
        assert!(!claim("r2", &keys, 5).check(&h, &proof));
        assert!(!claim("r1", &other, 5).check(&h, &proof));
        assert!(!claim("r1", &keys, 6).check(&h, &proof));
        assert!(!claim("r1", &keys, 5).check(&secret_hash("guess"), &proof));
    }
}
