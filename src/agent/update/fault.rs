//! Test-only fault points of the self-update, so the tests can kill the
//! agent (SIGKILL, as a power cut would) at each step, or make a release
//! that dies at every start: `K8S4R_TEST_FAULT=<point>[@<version>]`, where
//! the version limits it to the agent reporting that version (a patched
//! copy). Points: `exit-at-start` (exit 70 once the start was counted),
//! `kill-mid-download` (after half the bytes are written and synced),
//! `kill-after-verify`, `kill-after-rename`, `kill-after-exec` (the new
//! agent's first step). Unset (every robot), nothing happens.

pub const ENV: &str = "K8S4R_TEST_FAULT";

/// Whether the fault `point` is set for this agent.
pub fn armed(point: &str) -> bool {
    let Ok(spec) = std::env::var(ENV) else {
        return false;
    };
    let (name, version) = match spec.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (spec.as_str(), None),
    };
    name == point && version.is_none_or(|v| v == crate::agent::version::current())
}

/// Die here if the fault `point` is set: SIGKILL for `kill-*`, exit 70 for
/// `exit-at-start`.
pub fn at(point: &str) {
    if !armed(point) {
        return;
    }
    eprintln!("agent: test fault {point}");
    if point.starts_with("kill-") {
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
    std::process::exit(70);
}
