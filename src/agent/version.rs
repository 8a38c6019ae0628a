//! The agent's version, from a slot in its own binary: the marker
//! `K8S4R-AGENT-VERSION-SLOT=` then the version, NUL-padded (see
//! [`crate::api::agent_release::version_slot`]). It is read at run time, so
//! a copy of the binary patched with `k8s4r release set-version` (or
//! [`crate::api::agent_release::patch_version`]) is "another build" without
//! rebuilding: what the over-the-air update tests install.

use crate::api::agent_release::{slot_version, version_slot, VERSION_SLOT_LEN};
use std::sync::OnceLock;

#[used]
static SLOT: [u8; VERSION_SLOT_LEN] = version_slot(env!("CARGO_PKG_VERSION"));

/// This agent's version (as `k8s4r-agent --version` prints it).
pub fn current() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let slot = super::supervisor::sys::read_volatile(&SLOT);
        slot_version(&slot).unwrap_or(env!("CARGO_PKG_VERSION")).to_string()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_unpatched_build_reports_its_package_version() {
        assert_eq!(super::current(), env!("CARGO_PKG_VERSION"));
    }
}
