//! Subjects with several values of one attribute: a client certificate
//! names each of its user's groups as an O, as kube-apiserver reads them,
//! but rcgen keeps one value per attribute type. So the certificate rcgen
//! made (with the CN only) gets its subject replaced by one encoded here
//! (RFC 5280 Name: a SEQUENCE of single-attribute SETs, UTF8String values)
//! and its to-be-signed part signed again with the CA key, through
//! rustls's ECDSA P-256 signer. Only DER framing is done here; the
//! signature is rustls's (ring's).

use rustls::pki_types::PrivateKeyDer;
use rustls::SignatureScheme;

/// DER of `O=groups[0], ..., CN=common_name` (Go's and kube's order).
pub fn encode_name(common_name: &str, groups: &[String]) -> Vec<u8> {
    const CN: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];
    const O: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x0a];
    let attribute = |oid: &[u8], value: &str| {
        let utf8 = tlv(0x0c, value.as_bytes());
        let pair = tlv(0x30, &[oid, &utf8].concat());
        tlv(0x31, &pair)
    };
    let mut rdns: Vec<u8> = groups.iter().flat_map(|g| attribute(O, g)).collect();
    rdns.extend(attribute(CN, common_name));
    tlv(0x30, &rdns)
}

/// `cert` (DER, signed by the CA) with its subject replaced by `subject`
/// (DER of a Name) and signed again with `ca_key` (ECDSA P-256, PEM).
pub fn with_subject(cert: &[u8], subject: &[u8], ca_key: &PrivateKeyDer<'_>) -> Result<Vec<u8>, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| format!("reading it back: {e}"))?;
    let tbs = parsed.tbs_certificate.as_ref();
    let old = parsed.tbs_certificate.subject.as_raw();
    let offset_in = |outer: &[u8], inner: &[u8]| (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize);
    let start = offset_in(tbs, old).ok_or("the subject is outside the certificate")?;
    let (header, _) = split_header(tbs).ok_or("a malformed certificate")?;
    if start < header || start + old.len() > tbs.len() {
        return Err("the subject is outside the to-be-signed part".into());
    }
    let content = [&tbs[header..start], subject, &tbs[start + old.len()..]].concat();
    let tbs = tlv(0x30, &content);
    let key = super::crypto_provider()
        .key_provider
        .load_private_key(ca_key.clone_key())
        .map_err(|e| format!("the CA key: {e}"))?;
    let signer = key
        .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
        .ok_or("the CA key is not ECDSA P-256")?;
    let signature = signer.sign(&tbs).map_err(|e| format!("signing: {e}"))?;
    // AlgorithmIdentifier ecdsa-with-SHA256 (RFC 5758), no parameters.
    const ECDSA_SHA256: &[u8] = &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    let bits = tlv(0x03, &[&[0u8][..], &signature].concat());
    Ok(tlv(0x30, &[&tbs[..], ECDSA_SHA256, &bits].concat()))
}

/// One DER tag-length-value.
fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let len = value.len();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(value);
    out
}

/// (header length, content length) of the DER element at the start of
/// `der`.
fn split_header(der: &[u8]) -> Option<(usize, usize)> {
    let first = *der.get(1)?;
    if first < 0x80 {
        return Some((2, first as usize));
    }
    let n = (first & 0x7f) as usize;
    if n == 0 || n > 4 {
        return None;
    }
    let len = der
        .get(2..2 + n)?
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | *b as usize);
    Some((2 + n, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::FromDer;

    #[test]
    fn lengths_use_the_short_and_long_forms() {
        assert_eq!(tlv(0x04, &[1, 2]), [0x04, 2, 1, 2]);
        let long = tlv(0x04, &[0; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(split_header(&long), Some((4, 300)));
        assert_eq!(split_header(&tlv(0x30, &[0; 5])), Some((2, 5)));
    }

    #[test]
    fn a_name_with_several_groups_reads_back_in_order() {
        let der = encode_name("alice", &["a".into(), "b".into(), "c".into()]);
        let (_, name) = x509_parser::x509::X509Name::from_der(&der).unwrap();
        let os: Vec<&str> = name.iter_organization().map(|o| o.as_str().unwrap()).collect();
        assert_eq!(os, ["a", "b", "c"]);
        assert_eq!(name.iter_common_name().next().unwrap().as_str().unwrap(), "alice");
    }
}
