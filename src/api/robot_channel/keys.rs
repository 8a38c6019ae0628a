//! A party's two keys: Ed25519 to sign (RFC 8032, dalek) and X25519 to
//! receive sealed bodies (HPKE, RFC 9180: DHKEM(X25519, HKDF-SHA256),
//! HKDF-SHA256, ChaCha20-Poly1305, base mode, single shot). Robots and the
//! server hold the same kind of pair.

use super::ChannelError;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use sha2::{Digest, Sha256};

type SealKem = X25519HkdfSha256;
/// Bytes of the encapsulated key that starts every sealed body.
pub const ENC_LEN: usize = 32;

/// A private key pair. Its secret halves never leave the party.
pub struct KeyPair {
    sign: SigningKey,
    seal: <SealKem as Kem>::PrivateKey,
}

/// The public halves: what the other party pins, verifies and seals to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKeys {
    pub sign: [u8; 32],
    pub seal: [u8; 32],
}

impl KeyPair {
    /// A fresh pair from the operating system's randomness.
    pub fn generate() -> Self {
        let mut sign = [0u8; 32];
        let mut seal = [0u8; 32];
        super::random(&mut sign);
        super::random(&mut seal);
        // 32 random bytes are a valid X25519 secret (clamped when used).
        Self::from_secret(&sign, &seal).expect("32 random bytes make a key pair")
    }

    pub fn from_secret(sign: &[u8; 32], seal: &[u8; 32]) -> Result<Self, ChannelError> {
        Ok(KeyPair {
            sign: SigningKey::from_bytes(sign),
            seal: <SealKem as Kem>::PrivateKey::from_bytes(seal).map_err(|_| ChannelError::BadKey("seal"))?,
        })
    }

    /// The secret halves (sign, seal), for the key file only.
    pub fn secret(&self) -> ([u8; 32], [u8; 32]) {
        (self.sign.to_bytes(), self.seal.to_bytes().into())
    }

    pub fn public(&self) -> PublicKeys {
        PublicKeys {
            sign: self.sign.verifying_key().to_bytes(),
            seal: <SealKem as Kem>::sk_to_pk(&self.seal).to_bytes().into(),
        }
    }

    /// The sealing key pair, for a session's auth-mode setup (`session`).
    pub(super) fn seal_pair(&self) -> (<SealKem as Kem>::PrivateKey, <SealKem as Kem>::PublicKey) {
        (self.seal.clone(), <SealKem as Kem>::sk_to_pk(&self.seal))
    }

    pub(super) fn seal_secret(&self) -> &<SealKem as Kem>::PrivateKey {
        &self.seal
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.sign.sign(message).to_bytes()
    }

    /// Open a body sealed to this pair with [`PublicKeys::seal_to`] and the
    /// same `info` and `aad`.
    pub fn open(&self, info: &[u8], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, ChannelError> {
        if sealed.len() < ENC_LEN {
            return Err(ChannelError::Open);
        }
        let (enc, ciphertext) = sealed.split_at(ENC_LEN);
        let enc = <SealKem as Kem>::EncappedKey::from_bytes(enc).map_err(|_| ChannelError::Open)?;
        hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, SealKem>(
            &OpModeR::Base,
            &self.seal,
            &enc,
            info,
            ciphertext,
            aad,
        )
        .map_err(|_| ChannelError::Open)
    }
}

impl PublicKeys {
    /// Both keys as `<sign hex>` and `<seal hex>`.
    pub fn from_hex(sign: &str, seal: &str) -> Result<Self, ChannelError> {
        let sign = crate::api::hex::decode::<32>(sign).ok_or(ChannelError::BadKey("sign"))?;
        let seal = crate::api::hex::decode::<32>(seal).ok_or(ChannelError::BadKey("seal"))?;
        VerifyingKey::from_bytes(&sign).map_err(|_| ChannelError::BadKey("sign"))?;
        <SealKem as Kem>::PublicKey::from_bytes(&seal).map_err(|_| ChannelError::BadKey("seal"))?;
        Ok(PublicKeys { sign, seal })
    }

    pub fn sign_hex(&self) -> String {
        crate::api::hex::encode(&self.sign)
    }

    pub fn seal_hex(&self) -> String {
        crate::api::hex::encode(&self.seal)
    }

    /// SHA-256 of the signing key: what a join token pins.
    pub fn pin(&self) -> [u8; 32] {
        Sha256::digest(self.sign).into()
    }

    /// A short name for the pair (first 16 hex digits of the pin), sent in
    /// `K8s4r-Server-Key` so a verifier knows which key to use.
    pub fn id(&self) -> String {
        crate::api::hex::encode(&self.pin()[..8])
    }

    /// Strict Ed25519 verification (no malleable or small-order forms).
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.sign) else {
            return false;
        };
        key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(signature))
            .is_ok()
    }

    /// Seal `plaintext` so that only the holder of this pair can open it:
    /// the 32-byte encapsulated key, then the ciphertext and its tag.
    pub fn seal_to(&self, info: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, ChannelError> {
        let pk = <SealKem as Kem>::PublicKey::from_bytes(&self.seal).map_err(|_| ChannelError::BadKey("seal"))?;
        let (enc, ciphertext) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, SealKem, _>(
            &OpModeS::Base,
            &pk,
            info,
            plaintext,
            aad,
            &mut rand_core::UnwrapErr(rand_core::OsRng),
        )
        .map_err(|_| ChannelError::Seal)?;
        let mut out = Vec::with_capacity(ENC_LEN + ciphertext.len());
        out.extend_from_slice(&enc.to_bytes());
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_body_opens_only_with_its_key_info_and_aad() {
        let robot = KeyPair::generate();
        let other = KeyPair::generate();
        let sealed = robot.public().seal_to(b"info", b"aad", b"secret env").unwrap();
        assert_eq!(robot.open(b"info", b"aad", &sealed).unwrap(), b"secret env");
        assert!(other.open(b"info", b"aad", &sealed).is_err());
        assert!(robot.open(b"other", b"aad", &sealed).is_err());
        assert!(robot.open(b"info", b"other", &sealed).is_err());
        for i in 0..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[i] ^= 1;
            assert!(
                robot.open(b"info", b"aad", &flipped).is_err(),
                "byte {i} flipped still opens"
            );
        }
        assert!(!String::from_utf8_lossy(&sealed).contains("secret"));
    }

    #[test]
    fn signatures_verify_only_for_their_message_and_key() {
        let a = KeyPair::generate();
        let b = KeyPair::generate();
        let sig = a.sign(b"msg");
        assert!(a.public().verify(b"msg", &sig));
        assert!(!a.public().verify(b"msg2", &sig));
        assert!(!b.public().verify(b"msg", &sig));
    }

    #[test]
    fn keys_survive_their_text_and_secret_forms() {
        let a = KeyPair::generate();
        let p = a.public();
        assert_eq!(PublicKeys::from_hex(&p.sign_hex(), &p.seal_hex()).unwrap(), p);
        let (s, x) = a.secret();
        assert_eq!(KeyPair::from_secret(&s, &x).unwrap().public(), p);
        assert!(PublicKeys::from_hex("00", &p.seal_hex()).is_err());
        assert_eq!(p.id().len(), 16);
    }
}
