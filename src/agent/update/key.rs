//! The release key a robot trusts: `--release-key` (64 hex digits, or a
//! file holding them) wins; else the key the server sent at registration
//! or in the first poll answer that carried one, kept in
//! `<data-dir>/release.pub` and never replaced by the server afterwards (a
//! control plane taken over later cannot swap it). No key: no update.

use crate::api::agent_release::parse_public_key;
use crate::api::hex;
use std::path::Path;

pub const FILE: &str = "release.pub";
pub const ENV: &str = "K8S4R_RELEASE_KEY";

/// A `--release-key` value: the key itself or a file holding it.
pub fn parse_setting(text: &str) -> Result<[u8; 32], String> {
    if let Ok(key) = parse_public_key(text) {
        return Ok(key);
    }
    let content = std::fs::read_to_string(text).map_err(|e| format!("--release-key {text}: {e}"))?;
    parse_public_key(&content).map_err(|e| format!("--release-key {text}: {e}"))
}

/// The key kept from the server, if any.
pub fn learned(data_dir: &Path) -> Option<[u8; 32]> {
    let text = std::fs::read_to_string(data_dir.join(FILE)).ok()?;
    parse_public_key(&text).ok()
}

/// Keep the server's key unless one is kept already. Returns whether the
/// offered key differs from the one kept (said once by the caller).
pub fn learn(data_dir: &Path, offered: &str) -> Result<bool, String> {
    let key = parse_public_key(offered).map_err(|e| e.to_string())?;
    match learned(data_dir) {
        Some(kept) => Ok(kept != key),
        None => crate::atomic_file::write(
            &data_dir.join(FILE),
            format!("{}\n", hex::encode(&key)).as_bytes(),
            0o644,
        )
        .map(|()| false)
        .map_err(|e| format!("{}: {e}", data_dir.join(FILE).display())),
    }
}
