//! Reading and writing the metadata of stored objects, which are kept as
//! JSON values.

use serde_json::{Map, Value};

pub fn meta(v: &Value) -> Option<&Map<String, Value>> {
    v.get("metadata")?.as_object()
}

pub fn meta_mut(v: &mut Value) -> Option<&mut Map<String, Value>> {
    let obj = v.as_object_mut()?;
    obj.entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
}

pub fn meta_str<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    meta(v)?.get(field)?.as_str()
}

pub fn name(v: &Value) -> &str {
    meta_str(v, "name").unwrap_or("")
}

pub fn namespace(v: &Value) -> &str {
    meta_str(v, "namespace").unwrap_or("")
}

pub fn uid(v: &Value) -> &str {
    meta_str(v, "uid").unwrap_or("")
}

pub fn resource_version(v: &Value) -> Option<u64> {
    meta_str(v, "resourceVersion").and_then(|s| s.parse().ok())
}

pub fn generation(v: &Value) -> i64 {
    meta(v)
        .and_then(|m| m.get("generation"))
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

pub fn labels(v: &Value) -> Option<&Map<String, Value>> {
    meta(v)?.get("labels")?.as_object()
}

pub fn annotation<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    meta(v)?.get("annotations")?.get(key)?.as_str()
}

pub fn set_annotation(v: &mut Value, key: &str, value: Option<&str>) {
    let Some(m) = meta_mut(v) else { return };
    match value {
        Some(val) => {
            let ann = m.entry("annotations").or_insert_with(|| Value::Object(Map::new()));
            if let Some(a) = ann.as_object_mut() {
                a.insert(key.to_string(), Value::String(val.to_string()));
            }
        }
        None => {
            if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
                a.remove(key);
                if a.is_empty() {
                    m.remove("annotations");
                }
            }
        }
    }
}

/// UIDs of this object's owners.
pub fn owner_uids(v: &Value) -> Vec<&str> {
    meta(v)
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array)
        .map(|refs| refs.iter().filter_map(|r| r.get("uid")?.as_str()).collect())
        .unwrap_or_default()
}

/// Follow a dotted path (`status.deviceInfo.hostname`).
pub fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, part| cur.get(part))
}

/// A field's value as a selector compares it: strings as-is, numbers and
/// booleans in their JSON spelling, missing as "".
pub fn field_string(v: &Value, path: &str) -> String {
    match lookup(v, path) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// A random RFC 4122 version 4 UUID.
pub fn new_uid() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Bytes from the kernel's CSPRNG (`/dev/urandom`). Panics only if the
/// kernel offers no randomness at all, where no secure server can run.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use std::io::Read;
    static URANDOM: std::sync::OnceLock<std::sync::Mutex<std::fs::File>> = std::sync::OnceLock::new();
    let file = URANDOM
        .get_or_init(|| std::sync::Mutex::new(std::fs::File::open("/dev/urandom").expect("opening /dev/urandom")));
    let mut b = [0u8; N];
    file.lock()
        .unwrap_or_else(|e| e.into_inner())
        .read_exact(&mut b)
        .expect("reading /dev/urandom");
    b
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `generateName` suffix: five characters of [a-z0-9] minus look-alikes.
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    random_bytes::<5>()
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// A JSON map of strings (labels) as a BTreeMap; non-strings are skipped.
pub fn string_map(v: Option<&Value>) -> std::collections::BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, x)| Some((k.clone(), x.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}
