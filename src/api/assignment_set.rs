//! The canonical form of a robot's desired set, shared by the server that
//! sends delta assignments and the agent that applies them. No I/O here.
//!
//! Each task has a *version hash*, computed by the server: SHA-256 over the
//! JSON array `[name, uid, generation, labels, annotations, spec]` of the stored
//! Task (object keys sorted, as serde_json writes a map; a missing field is
//! null, missing annotations `{}`), lowercase hex. Status, the server's own
//! bookkeeping annotations (`robot.k8s4r.io/...`) and other metadata are
//! left out: a status report must not make a task look changed; a Task
//! deleted and created again (a new uid, its status reset) is a new
//! version. The *digest* of a set is SHA-256 over one line
//! `<name> <version hash>\n` per task, in byte order of the names,
//! lowercase hex; the empty set's digest is SHA-256 of nothing. An agent
//! holding the same names at the same versions computes the same digest,
//! which is how it proves that the deltas it applied left it where the
//! server is.

use sha2::{Digest, Sha256};

/// Hex digits of a version hash or a digest.
pub const HASH_HEX_LEN: usize = 64;

/// The digest of a set given as `(name, version hash)` pairs in name order
/// (a `BTreeMap`'s iteration order). Pairs out of order give a different
/// digest, never a wrong match.
pub fn digest<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut h = Sha256::new();
    for (name, version) in pairs {
        h.update(name.as_bytes());
        h.update(b" ");
        h.update(version.as_bytes());
        h.update(b"\n");
    }
    super::hex::encode(&h.finalize())
}

/// True if `text` looks like a version hash or digest (64 lowercase hex
/// digits): what an agent accepts from an answer or its own state file.
pub fn is_hash(text: &str) -> bool {
    text.len() == HASH_HEX_LEN && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_sha256_of_the_documented_lines() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let want = super::super::hex::encode(&Sha256::digest(format!("one {a}\ntwo {b}\n").as_bytes()));
        assert_eq!(digest([("one", a.as_str()), ("two", b.as_str())]), want);
        assert_eq!(
            digest(std::iter::empty()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_ne!(
            digest([("one", a.as_str())]),
            digest([("one", b.as_str())]),
            "another version of the same name is another set"
        );
        assert!(is_hash(&a) && !is_hash("A".repeat(64).as_str()) && !is_hash("ab"));
    }
}
