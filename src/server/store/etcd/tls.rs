//! TLS to etcd: the files an operator gives (kube-apiserver's flag names)
//! read once at start into one rustls client configuration, shared by every
//! connection of every command that talks to etcd.
//!
//! The server is checked against the CA of `--etcd-cafile` only (never the
//! system roots: an etcd cluster has its own CA), and the client proves
//! itself with `--etcd-certfile` + `--etcd-keyfile` when given.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const CA_FLAG: &str = "--etcd-cafile";
pub const CERT_FLAG: &str = "--etcd-certfile";
pub const KEY_FLAG: &str = "--etcd-keyfile";

/// Largest PEM file read: a CA bundle or a chain is a few KiB; the bound
/// keeps a wrong path (a log, a device) from being read whole.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// The TLS files for etcd, as given on the command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates (PEM) that etcd's serving certificate must chain to.
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM) presented to etcd.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

#[derive(Debug)]
pub enum TlsError {
    /// https:// endpoints and nothing to check etcd's certificate against.
    NoCa,
    /// A client certificate without its key, or the other way round.
    Unpaired { given: &'static str, missing: &'static str },
    /// A file could not be read.
    Read {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file is not what its flag needs.
    Invalid {
        flag: &'static str,
        path: PathBuf,
        detail: String,
    },
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::NoCa => write!(
                f,
                "https:// etcd endpoints need {CA_FLAG} (the CA that signed etcd's serving certificate)"
            ),
            TlsError::Unpaired { given, missing } => {
                write!(
                    f,
                    "{given} needs {missing} (a client certificate and its key go together)"
                )
            }
            TlsError::Read { flag, path, source } => write!(f, "{flag} {}: {source}", path.display()),
            TlsError::Invalid { flag, path, detail } => write!(f, "{flag} {}: {detail}", path.display()),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl TlsFiles {
    /// Whether any file was given.
    pub fn any(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// The first flag given, for "this flag needs that" messages.
    pub fn first_flag(&self) -> Option<&'static str> {
        [(CA_FLAG, &self.ca), (CERT_FLAG, &self.cert), (KEY_FLAG, &self.key)]
            .into_iter()
            .find_map(|(flag, path)| path.is_some().then_some(flag))
    }

    /// Read and check the files: the client configuration for https://
    /// endpoints.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let client = match (&self.cert, &self.key) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(TlsError::Unpaired {
                    given: CERT_FLAG,
                    missing: KEY_FLAG,
                })
            }
            (None, Some(_)) => {
                return Err(TlsError::Unpaired {
                    given: KEY_FLAG,
                    missing: CERT_FLAG,
                })
            }
            (Some(cert), Some(key)) => Some((cert, key)),
        };
        let ca = self.ca.as_ref().ok_or(TlsError::NoCa)?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(CA_FLAG, ca)? {
            roots.add(cert).map_err(|e| TlsError::Invalid {
                flag: CA_FLAG,
                path: ca.clone(),
                detail: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let provider = Arc::new(ring_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Invalid {
                flag: CA_FLAG,
                path: ca.clone(),
                detail: e.to_string(),
            })?
            .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = certificates(CERT_FLAG, cert)?;
                let text = read_bounded(KEY_FLAG, key)?;
                let der = PrivateKeyDer::from_pem_slice(&text).map_err(|e| TlsError::Invalid {
                    flag: KEY_FLAG,
                    path: key.clone(),
                    detail: format!("no PEM private key: {e}"),
                })?;
                // rustls checks that the key is the certificate's.
                builder
                    .with_client_auth_cert(chain, der)
                    .map_err(|e| TlsError::Invalid {
                        flag: KEY_FLAG,
                        path: key.clone(),
                        detail: format!("not usable with {CERT_FLAG} {}: {e}", cert.display()),
                    })?
            }
        };
        Ok(Arc::new(config))
    }
}

/// How long [`probe`] waits for a member's verdict on a handshake.
const PROBE_WAIT: Duration = Duration::from_secs(3);

/// Why a TLS member drops fresh connections, as far as one handshake shows.
/// Under TLS 1.3 a member checks the client's certificate after the client
/// has finished its side of the handshake; when the member's alert wins the
/// race with the first request, hyper reports only "canceled" and the
/// reason is lost. This handshake sends nothing and waits up to
/// `PROBE_WAIT` for that alert: the error carrying it, or None.
pub async fn probe(url: &str, config: &Arc<rustls::ClientConfig>) -> Option<std::io::Error> {
    use tokio::io::AsyncReadExt;
    let uri: hyper::Uri = url.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']').to_string();
    let name = rustls::pki_types::ServerName::try_from(host.clone()).ok()?;
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), uri.port_u16().unwrap_or(443))).await?;
        let mut tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await?;
        tls.read(&mut [0u8; 1]).await
    };
    match tokio::time::timeout(PROBE_WAIT, attempt).await {
        Ok(Err(e)) => Some(e),
        Ok(Ok(_)) | Err(_) => None,
    }
}

/// What an operator can check when a connection to a TLS member fails
/// with `cause` (one error of the chain); `handshake`: while connecting.
pub fn hint(cause: &(dyn std::error::Error + 'static), handshake: bool) -> Option<&'static str> {
    use rustls::AlertDescription as A;
    const NOT_TLS: &str = "is this member serving TLS? its client URLs must be https://";
    if let Some(io) = cause.downcast_ref::<std::io::Error>() {
        // Before any request, only the handshake reads: a member that
        // closes then did not take the ClientHello for TLS. A plain HTTP
        // member answers 400 and closes with the rest of the ClientHello
        // unread, so the kernel resets the connection and that reset may
        // reach us before the answer does.
        use std::io::ErrorKind::{ConnectionReset, UnexpectedEof};
        return (handshake && matches!(io.kind(), UnexpectedEof | ConnectionReset)).then_some(NOT_TLS);
    }
    match cause.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(_) => Some(
            "etcd's serving certificate does not check out against --etcd-cafile: it must be signed by \
             that CA and name the endpoint's host",
        ),
        rustls::Error::AlertReceived(
            A::BadCertificate
            | A::CertificateRequired
            | A::UnknownCA
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::AccessDenied,
        ) => Some(
            "etcd refused this client: it needs a client certificate signed by its --trusted-ca-file, \
             given with --etcd-certfile and --etcd-keyfile",
        ),
        rustls::Error::InvalidMessage(_) => Some(NOT_TLS),
        _ => None,
    }
}

/// rustls on ring, named explicitly: the process-wide default would be
/// ambiguous once any dependency enabled a second provider. rustls 0.23.48
/// deprecates ring for lacking post-quantum key exchange; the crate is
/// built on ring alone (Cargo.toml: aws-lc-rs would bring cmake and a C
/// toolchain into the build), and etcd's Go TLS offers only classical
/// ECDHE groups anyway.
#[allow(deprecated)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn read_bounded(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = |source| TlsError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    };
    let mut text = Vec::new();
    std::fs::File::open(path)
        .map_err(read)?
        .take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(read)?;
    if text.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::Invalid {
            flag,
            path: path.to_path_buf(),
            detail: format!("larger than {MAX_PEM_BYTES} bytes"),
        });
    }
    Ok(text)
}

/// Every certificate of a PEM file; at least one.
fn certificates(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |detail: String| TlsError::Invalid {
        flag,
        path: path.to_path_buf(),
        detail,
    };
    let text = read_bounded(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("no PEM CERTIFICATE in it".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pki {
        dir: tempfile::TempDir,
    }

    /// A CA and a client certificate it signed, as PEM files.
    fn pki() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client".to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.pem", ca.pem());
        write("client.pem", cert.pem());
        write("client-key.pem", key.serialize_pem());
        write("other-key.pem", other.serialize_pem());
        write("empty.pem", String::new());
        Pki { dir }
    }

    impl Pki {
        fn path(&self, name: &str) -> Option<PathBuf> {
            Some(self.dir.path().join(name))
        }
    }

    fn message(files: &TlsFiles) -> String {
        files.client_config().expect_err("refused").to_string()
    }

    #[test]
    fn the_first_flag_given_is_named() {
        let mut f = TlsFiles::default();
        assert!(!f.any() && f.first_flag().is_none());
        f.key = Some("k".into());
        assert_eq!(f.first_flag(), Some(KEY_FLAG));
        f.ca = Some("c".into());
        assert!(f.any());
        assert_eq!(f.first_flag(), Some(CA_FLAG));
    }

    #[test]
    fn good_files_make_a_config_with_and_without_a_client_certificate() {
        let p = pki();
        let ca_only = TlsFiles {
            ca: p.path("ca.pem"),
            ..TlsFiles::default()
        };
        assert!(!ca_only.client_config().unwrap().client_auth_cert_resolver.has_certs());
        let full = TlsFiles {
            cert: p.path("client.pem"),
            key: p.path("client-key.pem"),
            ..ca_only
        };
        assert!(full.client_config().unwrap().client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn each_problem_names_its_flag_and_file() {
        let p = pki();
        let base = TlsFiles {
            ca: p.path("ca.pem"),
            ..TlsFiles::default()
        };
        assert!(message(&TlsFiles::default()).contains(CA_FLAG));
        let half = TlsFiles {
            cert: p.path("client.pem"),
            ..base.clone()
        };
        assert!(message(&half).starts_with("--etcd-certfile needs --etcd-keyfile"));
        let half = TlsFiles {
            key: p.path("client-key.pem"),
            ..base.clone()
        };
        assert!(message(&half).starts_with("--etcd-keyfile needs --etcd-certfile"));
        let missing = TlsFiles {
            ca: p.path("nope.pem"),
            ..TlsFiles::default()
        };
        let m = message(&missing);
        assert!(m.starts_with("--etcd-cafile ") && m.contains("nope.pem"), "{m}");
        let empty = TlsFiles {
            ca: p.path("empty.pem"),
            ..TlsFiles::default()
        };
        assert!(message(&empty).contains("no PEM CERTIFICATE"));
        let key_as_cert = TlsFiles {
            ca: p.path("client-key.pem"),
            ..TlsFiles::default()
        };
        assert!(message(&key_as_cert).starts_with("--etcd-cafile "));
        let cert_as_key = TlsFiles {
            cert: p.path("client.pem"),
            key: p.path("client.pem"),
            ..base.clone()
        };
        let m = message(&cert_as_key);
        assert!(
            m.starts_with("--etcd-keyfile ") && m.contains("no PEM private key"),
            "{m}"
        );
        let wrong_key = TlsFiles {
            cert: p.path("client.pem"),
            key: p.path("other-key.pem"),
            ..base
        };
        let m = message(&wrong_key);
        assert!(
            m.starts_with("--etcd-keyfile ") && m.contains("not usable with --etcd-certfile"),
            "{m}"
        );
    }

    #[test]
    fn a_huge_file_is_not_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'a'; (MAX_PEM_BYTES + 1) as usize]).unwrap();
        let files = TlsFiles {
            ca: Some(big),
            ..TlsFiles::default()
        };
        assert!(message(&files).contains("larger than"));
    }
}
