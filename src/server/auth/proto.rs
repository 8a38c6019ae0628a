//! Just enough of Kubernetes' protobuf encoding to read the two reviews
//! kubectl sends that way (`kubectl auth can-i` and `whoami` use the
//! built-in clientset, which posts `application/vnd.kubernetes.protobuf`
//! and accepts JSON back).
//!
//! A body is the magic `k8s\0` and a `runtime.Unknown` (1: TypeMeta, 2: the
//! object's bytes). A SelfSubjectAccessReview is 2: spec, whose 1:
//! resourceAttributes are (namespace, verb, group, version, resource,
//! subresource, name) as fields 1..7 and 2: nonResourceAttributes (path,
//! verb) as 1..2. Everything else is skipped; malformed input is an error,
//! never a panic.

use serde_json::{json, Map, Value};

const MAGIC: &[u8] = b"k8s\0";

/// Why a protobuf body could not be read.
#[derive(Debug, PartialEq, Eq)]
pub struct ProtoError(pub String);

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid protobuf body: {}", self.0)
    }
}

enum Wire<'a> {
    Varint,
    Bytes(&'a [u8]),
}

/// The fields of one message, in order: (number, value).
fn fields(mut buf: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, ProtoError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let number = key >> 3;
        let wire = match key & 7 {
            0 => {
                varint(&mut buf)?;
                Wire::Varint
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).map_err(|_| ProtoError("length too large".into()))?;
                if len > buf.len() {
                    return Err(ProtoError(format!(
                        "field {number}: {len} bytes announced, {} left",
                        buf.len()
                    )));
                }
                let (value, rest) = buf.split_at(len);
                buf = rest;
                Wire::Bytes(value)
            }
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                buf = buf
                    .get(n..)
                    .ok_or_else(|| ProtoError(format!("field {number}: truncated")))?;
                Wire::Varint
            }
            t => return Err(ProtoError(format!("field {number}: unsupported wire type {t}"))),
        };
        out.push((number, wire));
    }
    Ok(out)
}

fn varint(buf: &mut &[u8]) -> Result<u64, ProtoError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first().ok_or_else(|| ProtoError("truncated varint".into()))?;
        *buf = rest;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(ProtoError("varint longer than 10 bytes".into()))
}

/// The last length-delimited field `number` of a message (protobuf's rule
/// for repeated singular fields).
fn bytes_field<'a>(msg: &[(u64, Wire<'a>)], number: u64) -> Option<&'a [u8]> {
    msg.iter().rev().find_map(|(n, w)| match w {
        Wire::Bytes(b) if *n == number => Some(*b),
        _ => None,
    })
}

/// String fields `names[i]` = field number i + 1, as a JSON object.
fn strings(buf: &[u8], names: &[&str]) -> Result<Value, ProtoError> {
    let msg = fields(buf)?;
    let mut obj = Map::new();
    for (i, name) in names.iter().enumerate() {
        if let Some(b) = bytes_field(&msg, i as u64 + 1) {
            let s = std::str::from_utf8(b).map_err(|_| ProtoError(format!("{name}: not UTF-8")))?;
            obj.insert((*name).to_string(), json!(s));
        }
    }
    Ok(Value::Object(obj))
}

/// The object inside a `k8s\0` envelope.
fn unwrap_envelope(body: &[u8]) -> Result<&[u8], ProtoError> {
    let inner = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| ProtoError("no k8s protobuf magic".into()))?;
    let unknown = fields(inner)?;
    Ok(bytes_field(&unknown, 2).unwrap_or(&[]))
}

/// A protobuf SelfSubjectAccessReview as its JSON form (`{"spec": ...}`).
pub fn access_review_json(body: &[u8]) -> Result<Value, ProtoError> {
    let review = fields(unwrap_envelope(body)?)?;
    let spec = fields(bytes_field(&review, 2).unwrap_or(&[]))?;
    let mut out = Map::new();
    if let Some(r) = bytes_field(&spec, 1) {
        let names = [
            "namespace",
            "verb",
            "group",
            "version",
            "resource",
            "subresource",
            "name",
        ];
        out.insert("resourceAttributes".into(), strings(r, &names)?);
    }
    if let Some(n) = bytes_field(&spec, 2) {
        out.insert("nonResourceAttributes".into(), strings(n, &["path", "verb"])?);
    }
    Ok(json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": out}))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What kubectl 1.32 sent for `kubectl auth can-i create jobs.robot.k8s4r.io`.
    const CAN_I: &[u8] = b"k8s\x00\n2\n\x17authorization.k8s.io/v1\x12\x17SelfSubjectAccessReview\x12M\n\x10\n\x00\x12\x00\x1a\x00\"\x00*\x002\x008\x00B\x00\x12/\n-\n\x07default\x12\x06create\x1a\x0erobot.k8s4r.io\"\x00*\x04jobs2\x00:\x00\x1a\x08\x08\x00\x12\x00\x1a\x00 \x00\x1a\x00\"\x00";

    #[test]
    fn reads_what_kubectl_sends() {
        let v = access_review_json(CAN_I).unwrap();
        assert_eq!(
            v["spec"],
            json!({"resourceAttributes": {"namespace": "default", "verb": "create", "group": "robot.k8s4r.io",
                   "version": "", "resource": "jobs", "subresource": "", "name": ""}})
        );
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert!(access_review_json(b"{}").is_err());
        for cut in 5..CAN_I.len() - 1 {
            // Every truncation either decodes to something or is an error.
            let _ = access_review_json(&CAN_I[..cut]);
        }
        assert!(access_review_json(b"k8s\x00\x12\x7f").is_err(), "length past the end");
        assert!(access_review_json(b"k8s\x00\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80").is_err());
        assert!(access_review_json(b"k8s\x00\x0b").is_err(), "wire type 3");
    }
}
