//! Certificates and keys brought by the operator (`--tls-cert-file`,
//! `--tls-private-key-file`, `--client-ca-file`, named as kube-apiserver
//! names them), read as PEM. Every error names the flag and the file.

use super::TlsError;
use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;

/// Larger PEM files than this are refused (a bundle of a few hundred CAs
/// fits).
const MAX_PEM: u64 = 1 << 20;

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let fail = |e: String| TlsError::File(flag, path.to_path_buf(), e);
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > MAX_PEM {
        return Err(fail(format!("larger than {MAX_PEM} bytes")));
    }
    Ok(bytes)
}

/// Every certificate in the PEM file given with `flag` (at least one).
pub fn certs(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs_in(flag, path, &read(flag, path)?)
}

/// Every certificate of PEM text (at least one); `flag` and `path` name
/// where it came from in errors.
pub fn certs_in(flag: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |e: String| TlsError::File(flag, path.to_path_buf(), e);
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(fail("holds no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// The private key in the PEM file given with `flag` (PKCS#8, SEC1 or
/// PKCS#1).
pub fn key(flag: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    key_in(flag, path, &read(flag, path)?)
}

pub fn key_in(flag: &'static str, path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| TlsError::File(flag, path.to_path_buf(), format!("no usable private key: {e}")))
}

/// One certificate as PEM text.
pub fn to_pem(cert: &CertificateDer<'_>) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips_and_bad_files_name_the_flag() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        let back = certs_in("--f", Path::new("f"), to_pem(&der).as_bytes()).unwrap();
        assert_eq!(back, [der]);
        let err = certs_in("--tls-cert-file", Path::new("/x.pem"), b"junk").unwrap_err();
        assert!(err.to_string().contains("--tls-cert-file /x.pem"), "{err}");
        let err = key_in("--tls-private-key-file", Path::new("/k"), b"").unwrap_err();
        assert!(err.to_string().contains("--tls-private-key-file"), "{err}");
        assert!(key_in("--k", Path::new("k"), key.serialize_pem().as_bytes()).is_ok());
    }
}
