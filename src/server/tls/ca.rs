//! The cluster CA and the certificates it signs.
//!
//! Created on first start (ECDSA P-256, ten years) and kept in the store as
//! the secret `tls-ca`: every replica on one etcd signs with the same key,
//! a SQLite server keeps it in `--data`, and a restart keeps every issued
//! kubeconfig valid. Client certificates carry the user as the subject's CN
//! and one O per group, as kube-apiserver reads them.

use super::TlsError;
use crate::server::secrets;
use crate::server::store::Store;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

/// The store secret holding the CA.
const SECRET: &str = "tls-ca";
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Issued certificates (serving, client) live a year.
pub const CERT_LIFETIME: Duration = Duration::from_secs(365 * 86_400);
/// Certificates start an hour in the past: clocks of clients differ.
const BACKDATE: Duration = Duration::from_secs(3600);

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The CA, able to sign.
pub struct Ca {
    stored: Issued,
    key: KeyPair,
    /// The CA as rcgen needs it to sign (its subject and key identifier,
    /// read back from the stored certificate).
    issuer: rcgen::Certificate,
}

impl Ca {
    /// The stored CA, created and stored first if there is none.
    pub async fn load_or_create(store: &dyn Store) -> Result<Ca, TlsError> {
        let value = secrets::load_or_create(store, SECRET, || {
            let fresh = create().map_err(|e| e.to_string())?;
            serde_json::to_value(fresh).map_err(|e| e.to_string())
        })
        .await
        .map_err(TlsError::Store)?;
        Ca::from_value(value)
    }

    /// The stored CA, if the server has created one.
    pub async fn load(store: &dyn Store) -> Result<Option<Ca>, TlsError> {
        match secrets::load(store, SECRET).await.map_err(TlsError::Store)? {
            Some(v) => Ca::from_value(v).map(Some),
            None => Ok(None),
        }
    }

    fn from_value(value: serde_json::Value) -> Result<Ca, TlsError> {
        let bad = |e: String| TlsError::Secret(SECRET, e);
        let stored: Issued = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        let key = KeyPair::from_pem(&stored.key_pem).map_err(|e| bad(format!("its key: {e}")))?;
        let issuer = CertificateParams::from_ca_cert_pem(&stored.cert_pem)
            .and_then(|p| p.self_signed(&key))
            .map_err(|e| bad(format!("its certificate: {e}")))?;
        Ok(Ca { stored, key, issuer })
    }

    pub fn cert_pem(&self) -> &str {
        &self.stored.cert_pem
    }

    /// A client certificate for `user` in `groups` (CN = user, O = each
    /// group).
    pub fn issue_client_cert(&self, user: &str, groups: &[String]) -> Result<Issued, TlsError> {
        let what = "a client certificate";
        let mut params = leaf_params(user);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let issued = self.sign(params, what)?;
        if groups.is_empty() {
            return Ok(issued);
        }
        // rcgen holds one O; the subject with all of them is put in after.
        let fail = |e: String| TlsError::Certificate(what, e);
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).map_err(|e| fail(e.to_string()))?;
        let ca_key = PrivateKeyDer::from_pem_slice(self.stored.key_pem.as_bytes()).map_err(|e| fail(e.to_string()))?;
        let subject = super::subject::encode_name(user, groups);
        let der = super::subject::with_subject(&der, &subject, &ca_key).map_err(fail)?;
        Ok(Issued {
            cert_pem: super::files::to_pem(&CertificateDer::from(der)),
            key_pem: issued.key_pem,
        })
    }

    /// A serving certificate for `sans` (DNS names and IP addresses).
    pub fn issue_serving_cert(&self, sans: &[String]) -> Result<Issued, TlsError> {
        let mut params = leaf_params("k8s4r-server");
        params.subject_alt_names = sans
            .iter()
            .map(|s| super::sans::to_san(s))
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Certificate("the serving certificate", e))?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, "the serving certificate")
    }

    fn sign(&self, params: CertificateParams, what: &'static str) -> Result<Issued, TlsError> {
        let key = KeyPair::generate().map_err(|e| TlsError::Certificate(what, e.to_string()))?;
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(|e| TlsError::Certificate(what, e.to_string()))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A new CA; its CN carries its creation time, as k3s names its CAs, so
/// two clusters' CAs are told apart.
fn create() -> Result<Issued, TlsError> {
    let what = "the CA";
    let now = SystemTime::now();
    let since = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("k8s4r-ca@{since}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(serial());
    params.not_before = now.checked_sub(BACKDATE).unwrap_or(now).into();
    params.not_after = now.checked_add(CA_LIFETIME).unwrap_or(now).into();
    let key = KeyPair::generate().map_err(|e| TlsError::Certificate(what, e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::Certificate(what, e.to_string()))?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Parameters every issued certificate shares: CN, a random serial, a
/// year of validity, a signing key usage.
fn leaf_params(common_name: &str) -> CertificateParams {
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.serial_number = Some(serial());
    params.not_before = now.checked_sub(BACKDATE).unwrap_or(now).into();
    params.not_after = now.checked_add(CERT_LIFETIME).unwrap_or(now).into();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params
}

/// 16 random bytes, positive as DER wants serials.
fn serial() -> SerialNumber {
    let mut b = crate::server::object::random_bytes::<16>();
    b[0] &= 0x7f;
    SerialNumber::from_slice(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::sqlite::SqliteStore;

    #[tokio::test]
    async fn the_ca_is_created_once_and_signs_client_certs_with_cn_and_os() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), 10).unwrap();
        assert!(Ca::load(&store).await.unwrap().is_none());
        let a = Ca::load_or_create(&store).await.unwrap();
        let b = Ca::load_or_create(&store).await.unwrap();
        assert_eq!(a.cert_pem(), b.cert_pem());
        let issued = b
            .issue_client_cert("alice", &["k8s4r:viewers".into(), "team-a".into()])
            .unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        let user = super::super::listener::cert_user(&der).unwrap();
        assert_eq!(user.0.name, "alice");
        assert_eq!(user.0.groups, ["k8s4r:viewers", "team-a"]);
        // The re-signed certificate verifies against the CA, as the
        // listener's verifier checks it.
        let ca_der = CertificateDer::from_pem_slice(b.cert_pem().as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            super::super::crypto_provider(),
        )
        .build()
        .unwrap();
        let now = rustls::pki_types::UnixTime::now();
        verifier.verify_client_cert(&der, &[], now).unwrap();
        let other = Ca::from_value(serde_json::to_value(create().unwrap()).unwrap()).unwrap();
        let foreign = other.issue_client_cert("mallory", &["system:masters".into()]).unwrap();
        let foreign = CertificateDer::from_pem_slice(foreign.cert_pem.as_bytes()).unwrap();
        assert!(verifier.verify_client_cert(&foreign, &[], now).is_err());
    }
}
