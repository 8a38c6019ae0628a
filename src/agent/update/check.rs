//! What is checked before a byte is downloaded: the signature over version,
//! architecture, size and SHA-256 (so a bad one costs no download and no
//! swap), this robot's architecture, a downgrade, and room to write on the
//! data dir's and the binary's filesystems. [`decide`] is pure.

use super::record::Last;
use crate::api::agent_release::{compare_versions, verify, AgentUpdate, UpdateOutcome};
use std::cmp::Ordering;
use std::path::Path;

#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Nothing to do: this version runs, or this binary was already
    /// refused or rolled back here (and reported).
    Skip,
    /// Refused (reported on the Robot); the running agent is untouched.
    Refuse(String),
    /// Download it.
    Fetch,
}

/// Whether to download the offered release.
pub fn decide(offer: &AgentUpdate, key: Option<&[u8; 32]>, current: &str, arch: &str, last: Option<&Last>) -> Decision {
    if offer.version == current {
        return Decision::Skip;
    }
    if last.is_some_and(|l| l.sha256 == offer.binary.sha256 && l.result.result != UpdateOutcome::Applied) {
        return Decision::Skip;
    }
    let Some(key) = key else {
        return Decision::Refuse(
            "no release key on this robot (--release-key, or the server's --release-public-key at registration)".into(),
        );
    };
    if let Err(e) = verify(key, &offer.version, &offer.binary) {
        return Decision::Refuse(format!("release {} {}: {e}", offer.release, offer.version));
    }
    if offer.binary.arch != arch {
        return Decision::Refuse(format!(
            "release {} is for {}, this robot is {arch}",
            offer.release, offer.binary.arch
        ));
    }
    if compare_versions(&offer.version, current) == Ordering::Less && !offer.allow_downgrade {
        return Decision::Refuse(format!(
            "{} is older than the running {current}: a downgrade needs allowDowngrade: true",
            offer.version
        ));
    }
    Decision::Fetch
}

/// Whether `dir` can take `bytes` more: writable (not a read-only mount)
/// and with that much free space for an unprivileged writer.
pub fn room(dir: &Path, bytes: u64) -> Result<(), String> {
    let st = rustix::fs::statvfs(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
        return Err(format!("{}: read-only filesystem", dir.display()));
    }
    if rustix::fs::access(dir, rustix::fs::Access::WRITE_OK).is_err() {
        return Err(format!("{}: not writable by the agent", dir.display()));
    }
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    if free < bytes {
        return Err(format!(
            "{}: {free} bytes free, {bytes} needed: filesystem full",
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::agent_release::{public_key, sign, ReleaseBinary};

    const SECRET: [u8; 32] = [9u8; 32];

    fn offer(version: &str, arch: &str) -> AgentUpdate {
        let sha = "ab".repeat(32);
        AgentUpdate {
            release: "r1".into(),
            version: version.into(),
            allow_downgrade: false,
            binary: ReleaseBinary {
                arch: arch.into(),
                url: "http://h/a".into(),
                size: 10,
                signature: sign(&SECRET, version, arch, 10, &sha),
                sha256: sha,
            },
        }
    }

    #[test]
    fn checks_in_order_signature_arch_downgrade() {
        let key = public_key(&SECRET);
        let k = Some(&key);
        assert_eq!(
            decide(&offer("0.2.0", "x86_64"), k, "0.1.0", "x86_64", None),
            Decision::Fetch
        );
        assert_eq!(
            decide(&offer("0.1.0", "x86_64"), k, "0.1.0", "x86_64", None),
            Decision::Skip
        );
        let mut forged = offer("0.2.0", "x86_64");
        forged.binary.size = 11;
        assert!(matches!(decide(&forged, k, "0.1.0", "x86_64", None), Decision::Refuse(m) if m.contains("signature")));
        let other = public_key(&[1u8; 32]);
        assert!(
            matches!(decide(&offer("0.2.0", "x86_64"), Some(&other), "0.1.0", "x86_64", None), Decision::Refuse(m) if m.contains("signature"))
        );
        assert!(
            matches!(decide(&offer("0.2.0", "x86_64"), None, "0.1.0", "x86_64", None), Decision::Refuse(m) if m.contains("no release key"))
        );
        assert!(
            matches!(decide(&offer("0.2.0", "aarch64"), k, "0.1.0", "x86_64", None), Decision::Refuse(m) if m.contains("is for aarch64"))
        );
        let old = offer("0.0.9", "x86_64");
        assert!(
            matches!(decide(&old, k, "0.1.0", "x86_64", None), Decision::Refuse(m) if m.contains("allowDowngrade"))
        );
        let mut allowed = old.clone();
        allowed.allow_downgrade = true;
        assert_eq!(decide(&allowed, k, "0.1.0", "x86_64", None), Decision::Fetch);
    }

    #[test]
    fn a_binary_that_failed_here_is_not_tried_again() {
        let key = public_key(&SECRET);
        let o = offer("0.2.0", "x86_64");
        let failed = Last::new(
            "r1",
            "0.2.0",
            &o.binary.sha256,
            UpdateOutcome::RolledBack,
            String::new(),
        );
        assert_eq!(decide(&o, Some(&key), "0.1.0", "x86_64", Some(&failed)), Decision::Skip);
        let applied = Last::new("r0", "0.1.0", &o.binary.sha256, UpdateOutcome::Applied, String::new());
        assert_eq!(
            decide(&o, Some(&key), "0.1.0", "x86_64", Some(&applied)),
            Decision::Fetch
        );
    }

    #[test]
    fn room_needs_a_writable_directory_with_space() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(room(dir.path(), 1), Ok(()));
        let err = room(dir.path(), u64::MAX).unwrap_err();
        assert!(err.contains("filesystem full"), "{err}");
    }
}
