//! HTTPS for the Kubernetes API (rustls on ring, no OpenSSL).
//!
//! - `ca`: the generated CA, kept in the store; client certificates.
//! - `serving`: the serving certificate it issues, kept in the store.
//! - `sans`: the names that certificate must cover (`--tls-san`).
//! - `files`: bring-your-own PEM files (`--tls-cert-file`, ...).
//! - `subject`: client certificate subjects with one O per group.
//! - `listener`: the TLS listener; verified client certificates become
//!   [`crate::server::auth::CertUser`] request extensions.
//!
//! Client certificates are optional at the TLS layer (a bearer token or no
//! credential at all reaches the HTTP layer, which decides); one that is
//! presented must chain to the client CA, or the handshake fails.

pub mod ca;
pub mod files;
pub mod listener;
pub mod sans;
pub mod serving;
mod subject;

use crate::server::store::{Store, StoreError};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// The TLS flags of `k8s4r server`.
#[derive(Clone, Debug, Default)]
pub struct TlsFlags {
    /// `--tls-san`: more names for the generated serving certificate.
    pub sans: Vec<String>,
    /// `--tls-cert-file` and `--tls-private-key-file`: serve with these
    /// instead of a generated certificate.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// `--client-ca-file`: accept client certificates this CA bundle signed
    /// instead of the generated CA's.
    pub client_ca_file: Option<PathBuf>,
}

/// Why TLS could not be set up.
#[derive(Debug)]
pub enum TlsError {
    Store(StoreError),
    /// A stored secret is unusable (its name, why).
    Secret(&'static str, String),
    /// Making or signing a certificate failed (which, why).
    Certificate(&'static str, String),
    /// An operator's file (flag, path, why).
    File(&'static str, PathBuf, String),
    /// rustls refused the configuration.
    Config(String),
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Store(e) => write!(f, "reading or writing TLS secrets in the store: {e}"),
            TlsError::Secret(name, e) => write!(f, "the stored secret {name}: {e}"),
            TlsError::Certificate(what, e) => write!(f, "making {what}: {e}"),
            TlsError::File(flag, path, e) => write!(f, "{flag} {}: {e}", path.display()),
            TlsError::Config(e) => write!(f, "the TLS configuration: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// What the HTTPS listener serves with, and what its clients should trust.
pub struct Https {
    pub config: Arc<rustls::ServerConfig>,
    /// PEM of the certificate clients verify the server with (the
    /// generated CA, or the last certificate of `--tls-cert-file`'s chain).
    pub trust_pem: String,
}

/// The HTTPS configuration for a server listening on `listen`.
pub async fn configure(
    flags: &TlsFlags,
    store: &dyn Store,
    ca: &ca::Ca,
    listen: SocketAddr,
) -> Result<Https, TlsError> {
    let (chain, key, trust_pem) = match (&flags.cert_file, &flags.key_file) {
        (Some(cert), Some(key)) => {
            let chain = files::certs("--tls-cert-file", cert)?;
            let key = files::key("--tls-private-key-file", key)?;
            let trust = chain.last().map(files::to_pem).unwrap_or_default();
            (chain, key, trust)
        }
        (None, None) => {
            let wanted = sans::wanted(listen, sans::hostname(), &flags.sans);
            let issued = serving::load_or_issue(store, ca, &wanted).await?;
            let generated = std::path::Path::new("<generated>");
            let chain = files::certs_in("the serving certificate", generated, issued.cert_pem.as_bytes())?;
            let key = files::key_in("the serving certificate", generated, issued.key_pem.as_bytes())?;
            (chain, key, ca.cert_pem().to_string())
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(TlsError::Config(
                "--tls-cert-file and --tls-private-key-file go together: give both or neither".into(),
            ))
        }
    };
    let client_cas = match &flags.client_ca_file {
        Some(path) => files::certs("--client-ca-file", path)?,
        None => files::certs_in(
            "the generated CA",
            std::path::Path::new("<store>"),
            ca.cert_pem().as_bytes(),
        )?,
    };
    Ok(Https {
        config: server_config(chain, key, client_cas)?,
        trust_pem,
    })
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_cas: Vec<CertificateDer<'static>>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for ca in client_cas {
        roots
            .add(ca)
            .map_err(|e| TlsError::Config(format!("a client CA certificate: {e}")))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Config(format!("the client certificate verifier: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("the serving certificate and key: {e}")))?;
    // HTTP/1.1 only: what the server speaks (kubectl and client libraries
    // fall back to it).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// rustls on *ring*, the backend Cargo.toml picks (aws-lc-rs would need a
/// C and cmake toolchain). rustls 0.23.48 deprecates this provider because
/// it has no post-quantum key exchange; classic ECDHE is what kubectl and
/// the client libraries offer anyway.
#[allow(deprecated)]
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
