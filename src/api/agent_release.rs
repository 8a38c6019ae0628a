//! Agent releases: what a robot needs to replace its own agent over the
//! air, and the one check that makes it safe over plain HTTP. No I/O here.
//!
//! A release names a version and one binary per architecture (URL, size,
//! SHA-256) and carries, per binary, an Ed25519 signature by the release key
//! over [`signed_message`]: the lines
//!
//! ```text
//! k8s4r-agent-release-v1
//! <version>
//! <arch>
//! <size in bytes, decimal>
//! <sha256, 64 lowercase hex digits>
//! ```
//!
//! joined by `\n` (no trailing newline). The release key is made and kept
//! offline (`k8s4r release keygen`, `k8s4r release sign`); the server only
//! relays what was signed, so a compromised control plane cannot push a
//! binary of its own. A robot checks the signature before it downloads a
//! byte and the size and SHA-256 of what it downloaded before it uses it.
//!
//! The agent's version lives in a patchable slot ([`VERSION_SLOT_MARKER`]):
//! a second build with another version string is a byte patch of a copy
//! ([`patch_version`]), no rebuild.

use super::hex;
use super::meta::Object;
use super::types::RobotSelector;
pub use super::types::{UpdateOutcome, UpdateResult};
use super::units::Duration;
use super::update_strategy::CountOrPercent;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

pub type AgentRelease = Object<AgentReleaseSpec, AgentReleaseStatus>;

/// Architectures a release may carry, as `std::env::consts::ARCH` names
/// them (armv7 for 32-bit arm).
pub const ARCHES: &[&str] = &["x86_64", "aarch64", "armv7"];
/// Longest version string (it must fit the binary's version slot).
pub const MAX_VERSION_LEN: usize = 39;
/// Most namespaces a release may list.
pub const MAX_NAMESPACES: usize = 100;
/// Largest agent binary a release may name.
pub const MAX_BINARY_SIZE: u64 = 256 << 20;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct AgentReleaseSpec {
    /// The agent version this release installs (as `k8s4r-agent --version` prints it), e.g. 0.2.0. Dotted numbers, optionally with a -suffix; at most 39 characters of [0-9A-Za-z.+-].
    pub version: String,
    /// Let robots with a newer agent install this older version. Without it they refuse (a downgrade is usually a mistake).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_downgrade: bool,
    /// Which robots get the release (labels, as a Job's robotSelector); none = every robot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robot_selector: Option<RobotSelector>,
    /// Only robots of these namespaces (the release itself is cluster-scoped); none = every namespace. At most 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
    /// How many robots may be updating at once: a robot counts as updating from when it is offered the release until it reports the new version (healthy) or a failure. Default 1 (a canary of one); at most 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    /// Failed robots (refused or rolled back) the rollout tolerates; one more halts it. Default 0: the first failure halts the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<u32>,
    /// Offer the release to no robot for now (an agent already swapping finishes).
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,
    /// Robots updated first (a count, or a percentage of the selected robots such as "5%", rounded up): the rest wait until that many report the version and stay Online for minHealthyTime. Default 0: no canary phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CountOrPercent>,
    /// When the rollout halts (more failures than maxFailures), offer the robots that already run this version the newest earlier AgentRelease for their architecture, as a downgrade they accept (allowDowngrade for that offer only).
    #[serde(default, skip_serializing_if = "is_false")]
    pub auto_revert: bool,
    /// Take the release back now (`k8s4r release revert NAME`): offer it to no robot, and offer the robots that run its version the newest earlier AgentRelease for their architecture, as autoRevert does on a halt.
    #[serde(default, skip_serializing_if = "is_false")]
    pub revert: bool,
    /// How long a canary must report the new version while Online to count healthy (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_healthy_time: Option<Duration>,
    /// One signed binary per architecture.
    #[serde(default)]
    pub binaries: Vec<ReleaseBinary>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// minHealthyTime when the release does not say.
pub const DEFAULT_MIN_HEALTHY: std::time::Duration = std::time::Duration::from_secs(10);

/// One architecture's binary, signed by the release key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ReleaseBinary {
    /// x86_64, aarch64 or armv7.
    pub arch: String,
    /// Where robots download it: http:// (integrity comes from the signature) or file://.
    pub url: String,
    /// Exact size in bytes.
    pub size: u64,
    /// SHA-256 of the binary, 64 lowercase hex digits.
    pub sha256: String,
    /// Ed25519 signature by the release key over the lines k8s4r-agent-release-v1, version, arch, size, sha256 (hex, 128 digits).
    pub signature: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct AgentReleaseStatus {
    /// Robots the release selects.
    #[serde(default)]
    pub selected: u32,
    /// Robots that report the release's version.
    #[serde(default)]
    pub updated: u32,
    /// Robots offered the release that have not reported the new version yet.
    #[serde(default)]
    pub updating: u32,
    /// Robots that refused the release or rolled it back.
    #[serde(default)]
    pub failed: u32,
    /// Updated robots Online on the version for minHealthyTime.
    #[serde(default)]
    pub healthy: u32,
    /// Canaries the rollout waits for before the rest (0: none, or done).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub canaries: u32,
    /// Why the rollout is where it is, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What a poll answer tells a robot to install (one architecture's entry).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentUpdate {
    /// The AgentRelease's name.
    pub release: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_downgrade: bool,
    pub binary: ReleaseBinary,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseError {
    /// A field that is malformed (its name, what is wrong).
    Field(&'static str, String),
    /// The signature does not verify with the release key.
    Signature,
}

impl std::fmt::Display for ReleaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReleaseError::Field(field, why) => write!(f, "{field}: {why}"),
            ReleaseError::Signature => f.write_str("signature does not verify with the release key"),
        }
    }
}

impl std::error::Error for ReleaseError {}

/// The exact bytes the release key signs for one binary.
pub fn signed_message(version: &str, arch: &str, size: u64, sha256: &str) -> String {
    format!("k8s4r-agent-release-v1\n{version}\n{arch}\n{size}\n{sha256}")
}

/// A release key's public half from its file text (64 hex digits).
pub fn parse_public_key(text: &str) -> Result<[u8; 32], ReleaseError> {
    let key = hex::decode::<32>(text.trim())
        .ok_or_else(|| ReleaseError::Field("release key", "expected 64 hex digits".into()))?;
    VerifyingKey::from_bytes(&key)
        .map_err(|_| ReleaseError::Field("release key", "not an Ed25519 public key".into()))?;
    Ok(key)
}

/// Sign one binary's facts with the release key's secret half.
pub fn sign(secret: &[u8; 32], version: &str, arch: &str, size: u64, sha256: &str) -> String {
    let key = SigningKey::from_bytes(secret);
    hex::encode(
        &key.sign(signed_message(version, arch, size, sha256).as_bytes())
            .to_bytes(),
    )
}

/// The public half of a release key's secret.
pub fn public_key(secret: &[u8; 32]) -> [u8; 32] {
    SigningKey::from_bytes(secret).verifying_key().to_bytes()
}

/// Check a binary entry's shape and its signature (strict Ed25519).
pub fn verify(public: &[u8; 32], version: &str, binary: &ReleaseBinary) -> Result<(), ReleaseError> {
    check_version(version)?;
    check_binary_fields(binary)?;
    let sig = hex::decode::<64>(&binary.signature).ok_or(ReleaseError::Signature)?;
    let key = VerifyingKey::from_bytes(public).map_err(|_| ReleaseError::Signature)?;
    let message = signed_message(version, &binary.arch, binary.size, &binary.sha256);
    key.verify_strict(message.as_bytes(), &ed25519_dalek::Signature::from_bytes(&sig))
        .map_err(|_| ReleaseError::Signature)
}

/// A version as releases and the version slot accept it.
pub fn check_version(v: &str) -> Result<(), ReleaseError> {
    let bad = |why: &str| Err(ReleaseError::Field("version", format!("{v:?} {why}")));
    if v.is_empty() || v.len() > MAX_VERSION_LEN {
        return bad(&format!("must be 1-{MAX_VERSION_LEN} characters"));
    }
    if !v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
    {
        return bad("may only hold letters, digits, '.', '-' and '+'");
    }
    if !v.as_bytes()[0].is_ascii_digit() {
        return bad("must start with a digit (e.g. 0.2.0)");
    }
    Ok(())
}

/// A binary entry's fields, each checked (not its signature).
pub fn check_binary_fields(b: &ReleaseBinary) -> Result<(), ReleaseError> {
    if !ARCHES.contains(&b.arch.as_str()) {
        return Err(ReleaseError::Field(
            "arch",
            format!("{:?} is not one of {}", b.arch, ARCHES.join(", ")),
        ));
    }
    if !(b.url.starts_with("http://") || b.url.starts_with("file://")) || b.url.len() > 2048 {
        return Err(ReleaseError::Field(
            "url",
            format!(
                "{:?} must be an http:// or file:// URL of at most 2048 characters",
                b.url
            ),
        ));
    }
    if b.size == 0 || b.size > MAX_BINARY_SIZE {
        return Err(ReleaseError::Field(
            "size",
            format!("{} is out of range (1-{MAX_BINARY_SIZE})", b.size),
        ));
    }
    if b.sha256.len() != 64 || !b.sha256.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ReleaseError::Field("sha256", "expected 64 lowercase hex digits".into()));
    }
    if b.signature.len() != 128 || hex::decode::<64>(&b.signature).is_none() {
        return Err(ReleaseError::Field("signature", "expected 128 hex digits".into()));
    }
    Ok(())
}

/// Every problem of a spec (besides its robotSelector and the names in
/// its namespaces, which `validate` checks as it checks every name), each
/// with its field path. Signatures are not checked here: the server need not hold
/// the release key; robots check them.
pub fn spec_problems(spec: &AgentReleaseSpec) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Err(ReleaseError::Field(_, m)) = check_version(&spec.version) {
        out.push(("spec.version".to_string(), m));
    }
    if let Some(n) = spec.max_parallel.filter(|n| !(1..=10_000).contains(n)) {
        out.push(("spec.maxParallel".into(), format!("{n} is out of range (1-10000)")));
    }
    if spec.binaries.is_empty() {
        out.push(("spec.binaries".into(), "at least one binary is required".into()));
    }
    match &spec.canary {
        Some(CountOrPercent::Count(n)) if !(0..=10_000).contains(n) => {
            out.push(("spec.canary".into(), format!("{n} is out of range (0-10000)")))
        }
        Some(CountOrPercent::Percent(p)) if *p > 100 => {
            out.push(("spec.canary".into(), format!("{p}% is more than 100%")))
        }
        Some(CountOrPercent::Invalid(t)) => out.push((
            "spec.canary".into(),
            format!("{t:?} is neither a count nor a percentage such as \"5%\""),
        )),
        _ => {}
    }
    if let Some(e) = spec.min_healthy_time.as_ref().and_then(Duration::error) {
        out.push(("spec.minHealthyTime".into(), e.to_string()));
    }
    let namespaces = spec.namespaces.as_deref().unwrap_or_default();
    if namespaces.len() > MAX_NAMESPACES {
        out.push((
            "spec.namespaces".into(),
            format!("{} namespaces, at most {MAX_NAMESPACES}", namespaces.len()),
        ));
    }
    for (i, b) in spec.binaries.iter().enumerate() {
        if let Err(ReleaseError::Field(field, m)) = check_binary_fields(b) {
            out.push((format!("spec.binaries[{i}].{field}"), m));
        }
        if spec.binaries[..i].iter().any(|o| o.arch == b.arch) {
            out.push((
                format!("spec.binaries[{i}].arch"),
                format!("duplicate architecture {:?}", b.arch),
            ));
        }
    }
    out
}

/// Order two versions: dot-separated parts compared as numbers (a part's
/// leading letters as text first: rc2 < rc10); a `-suffix` (pre-release) sorts before the
/// same version without one; `+build` is ignored. 0.10.0 > 0.9.1 > 0.9.1-rc1.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> (&str, Option<&str>) {
        let v = v.split('+').next().unwrap_or(v);
        match v.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (v, None),
        }
    }
    // "rc10" is (rc, 10): letters as text, the trailing number as a number.
    fn part_key(p: &str) -> (&str, Option<u64>) {
        let digits = p.len() - p.bytes().rev().take_while(u8::is_ascii_digit).count();
        (&p[..digits], p[digits..].parse().ok())
    }
    fn parts(a: &str, b: &str) -> Ordering {
        let mut x = a.split('.');
        let mut y = b.split('.');
        loop {
            match (x.next(), y.next()) {
                (None, None) => return Ordering::Equal,
                (None, Some(_)) => return Ordering::Less,
                (Some(_), None) => return Ordering::Greater,
                (Some(p), Some(q)) => {
                    let o = part_key(p).cmp(&part_key(q));
                    if o != Ordering::Equal {
                        return o;
                    }
                }
            }
        }
    }
    let ((ca, pa), (cb, pb)) = (split(a), split(b));
    parts(ca, cb).then_with(|| match (pa, pb) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(p), Some(q)) => parts(p, q),
    })
}

/// The architecture of this build, as releases name it.
pub fn this_arch() -> &'static str {
    match std::env::consts::ARCH {
        "arm" => "armv7",
        other => other,
    }
}

// ------------------------------------------------------------ version slot

/// Marks the agent's version slot: the marker, then the version padded with
/// NUL bytes to [`VERSION_SLOT_LEN`] bytes in all. The agent reads its
/// version from there at run time (a volatile read, so the compiler cannot
/// fold the build's version into the code).
pub const VERSION_SLOT_MARKER: &[u8; 24] = b"K8S4R-AGENT-VERSION-SLOT";
pub const VERSION_SLOT_LEN: usize = VERSION_SLOT_MARKER.len() + 1 + MAX_VERSION_LEN;

/// The slot's bytes for a version (build time).
pub const fn version_slot(version: &str) -> [u8; VERSION_SLOT_LEN] {
    let mut out = [0u8; VERSION_SLOT_LEN];
    let mut i = 0;
    while i < VERSION_SLOT_MARKER.len() {
        out[i] = VERSION_SLOT_MARKER[i];
        i += 1;
    }
    out[i] = b'=';
    let v = version.as_bytes();
    assert!(v.len() <= MAX_VERSION_LEN, "version too long for the slot");
    let mut j = 0;
    while j < v.len() {
        out[i + 1 + j] = v[j];
        j += 1;
    }
    out
}

/// The version a slot's bytes hold.
pub fn slot_version(slot: &[u8]) -> Option<&str> {
    let rest = slot.strip_prefix(VERSION_SLOT_MARKER.as_slice())?.strip_prefix(b"=")?;
    let rest = rest.get(..MAX_VERSION_LEN)?;
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end])
        .ok()
        .filter(|v| check_version(v).is_ok())
}

/// Where the one version slot of a binary's bytes starts.
fn find_slot(binary: &[u8]) -> Result<usize, ReleaseError> {
    let marker = VERSION_SLOT_MARKER.as_slice();
    let mut hits = binary
        .windows(marker.len())
        .enumerate()
        .filter(|(i, w)| *w == marker && slot_version(&binary[*i..]).is_some())
        .map(|(i, _)| i);
    match (hits.next(), hits.next()) {
        (Some(i), None) => Ok(i),
        (None, _) => Err(ReleaseError::Field(
            "binary",
            "no k8s4r agent version slot found (not a k8s4r-agent binary?)".into(),
        )),
        (Some(_), Some(_)) => Err(ReleaseError::Field("binary", "more than one version slot".into())),
    }
}

/// The version a binary's slot holds.
pub fn binary_version(binary: &[u8]) -> Result<&str, ReleaseError> {
    let at = find_slot(binary)?;
    slot_version(&binary[at..]).ok_or_else(|| ReleaseError::Field("binary", "unreadable version slot".into()))
}

/// Rewrite a binary's version in place (same length: nothing else moves).
pub fn patch_version(binary: &mut [u8], version: &str) -> Result<(), ReleaseError> {
    check_version(version)?;
    let at = find_slot(binary)?;
    binary[at..at + VERSION_SLOT_LEN].copy_from_slice(&version_slot(version));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(secret: &[u8; 32], version: &str) -> ReleaseBinary {
        let sha = hex::encode(&[7u8; 32]);
        ReleaseBinary {
            arch: "aarch64".into(),
            url: "http://h/k8s4r-agent".into(),
            size: 1000,
            signature: sign(secret, version, "aarch64", 1000, &sha),
            sha256: sha,
        }
    }

    #[test]
    fn a_signature_binds_version_arch_size_and_checksum() {
        let secret = [3u8; 32];
        let public = public_key(&secret);
        let good = entry(&secret, "0.2.0");
        assert_eq!(verify(&public, "0.2.0", &good), Ok(()));
        assert_eq!(verify(&public, "0.2.1", &good), Err(ReleaseError::Signature));
        for tamper in [
            |b: &mut ReleaseBinary| b.arch = "x86_64".into(),
            |b: &mut ReleaseBinary| b.size += 1,
            |b: &mut ReleaseBinary| b.sha256 = hex::encode(&[8u8; 32]),
        ] {
            let mut b = good.clone();
            tamper(&mut b);
            assert_eq!(verify(&public, "0.2.0", &b), Err(ReleaseError::Signature));
        }
        // The URL is not signed: a mirror may serve the same bytes.
        let mut moved = good.clone();
        moved.url = "http://mirror/agent".into();
        assert_eq!(verify(&public, "0.2.0", &moved), Ok(()));
        assert_eq!(
            verify(&public_key(&[4u8; 32]), "0.2.0", &good),
            Err(ReleaseError::Signature)
        );
        assert_eq!(
            signed_message("1.0", "x86_64", 5, "ab"),
            "k8s4r-agent-release-v1\n1.0\nx86_64\n5\nab"
        );
    }

    #[test]
    fn malformed_fields_are_named() {
        let secret = [3u8; 32];
        let mut b = entry(&secret, "0.2.0");
        b.arch = "mips".into();
        assert!(matches!(check_binary_fields(&b), Err(ReleaseError::Field("arch", _))));
        let mut b = entry(&secret, "0.2.0");
        b.size = 0;
        assert!(matches!(check_binary_fields(&b), Err(ReleaseError::Field("size", _))));
        b.size = MAX_BINARY_SIZE + 1;
        assert!(matches!(check_binary_fields(&b), Err(ReleaseError::Field("size", _))));
        let mut b = entry(&secret, "0.2.0");
        b.url = "https://h/x".into();
        assert!(matches!(check_binary_fields(&b), Err(ReleaseError::Field("url", _))));
        assert!(check_version("v1").is_err());
        assert!(check_version(&"1".repeat(40)).is_err());
        assert!(check_version("1.2 3").is_err());
        assert!(parse_public_key("zz").is_err());
        assert_eq!(
            parse_public_key(&hex::encode(&public_key(&secret))).unwrap(),
            public_key(&secret)
        );
    }

    #[test]
    fn versions_order_numerically_with_prereleases_first() {
        use Ordering::*;
        assert_eq!(compare_versions("0.10.0", "0.9.1"), Greater);
        assert_eq!(compare_versions("0.9.1", "0.9.1-rc1"), Greater);
        assert_eq!(compare_versions("0.9.1-rc2", "0.9.1-rc10"), Less);
        assert_eq!(compare_versions("1.0", "1.0.0"), Less);
        assert_eq!(compare_versions("1.0.0+b7", "1.0.0"), Equal);
    }

    #[test]
    fn the_version_slot_is_patched_in_place() {
        let mut binary = b"prefix".to_vec();
        binary.extend_from_slice(&version_slot("0.1.0"));
        binary.extend_from_slice(b"suffix K8S4R-AGENT-VERSION-SLOT in a string");
        let len = binary.len();
        assert_eq!(binary_version(&binary), Ok("0.1.0"));
        patch_version(&mut binary, "0.2.0-test").unwrap();
        assert_eq!(binary_version(&binary), Ok("0.2.0-test"));
        assert_eq!(binary.len(), len);
        assert!(patch_version(&mut binary, "bad version").is_err());
        assert!(binary_version(b"no slot here").is_err());
        let mut twice = version_slot("1.0").to_vec();
        twice.extend_from_slice(&version_slot("1.1"));
        assert!(binary_version(&twice).is_err());
    }
}
