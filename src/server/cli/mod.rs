//! The `k8s4r` commands of the control plane, beside the library code they
//! drive: each file parses one command's flags and prints its answers, the
//! work itself is in `server` (or, for operator commands, a request to the
//! API through `server::kubeclient`).
//!
//! - [`serve`]: `k8s4r server`, the control plane itself.
//! - [`token`]: `k8s4r token`, join tokens.
//! - [`robot`]: `k8s4r robot reset`, `k8s4r robot-keys`.
//! - [`logs`]: `k8s4r logs`, a task's output.
//! - [`kubeconfig`]: `k8s4r kubeconfig`, credentials for another user.
//! - [`job`]: `k8s4r job history|revert|promote|pause|resume`, a Job's rollouts.
//! - [`release`]: `k8s4r release keygen|sign|set-version`, agent releases.
//!
//! (`k8s4r migrate` lives with the migration, in `server::migrate`.)

pub mod job;
pub mod kubeconfig;
pub mod logs;
pub mod release;
pub mod robot;
pub mod serve;
pub mod token;

use lexopt::ValueExt;
use std::time::Duration;

pub(super) fn duration_arg(parser: &mut lexopt::Parser, flag: &str) -> Result<Duration, lexopt::Error> {
    let text = parser.value()?.string()?;
    crate::api::Duration::parse(&text).map_err(|e| format!("{flag} {text:?}: {e}").into())
}

/// A duration flag of at most `max` (the fleet's arithmetic multiplies them).
pub(super) fn bounded_duration_arg(
    parser: &mut lexopt::Parser,
    flag: &str,
    max: Duration,
) -> Result<Duration, lexopt::Error> {
    let d = duration_arg(parser, flag)?;
    if d > max {
        return Err(format!("{flag}: {d:?} is more than the limit of {max:?}").into());
    }
    Ok(d)
}

/// A count flag of at most `max`.
pub(super) fn count_arg<T>(parser: &mut lexopt::Parser, flag: &str, max: T) -> Result<T, lexopt::Error>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let text = parser.value()?.string()?;
    let n: T = text
        .parse()
        .map_err(|_| format!("{flag} {text:?}: not a whole number"))?;
    if n > max {
        return Err(format!("{flag}: {n} is more than the limit of {max}").into());
    }
    Ok(n)
}

/// A comma-separated list of URLs (`--etcd`), blanks dropped.
pub fn url_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect()
}

/// A name or id as one URL path segment (robot names are DNS names; ids are
/// hex; anything else is escaped so it cannot change the path).
pub(super) fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
