//! The agent's flash budget: the stripped static agents `make agent` /
//! `make cross` built must stay under the sizes in
//! `.ci/agent-size-budget.txt` (with the reason for each). Exact sizes and
//! idle RSS are measured by `make bench`; `make bloat` shows where the
//! bytes go.

use std::path::Path;

const MIB: u64 = 1024 * 1024;

fn check(arch: &str, budget: u64) {
    let bin =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/{arch}-unknown-linux-musl/release/k8s4r-agent"));
    let Ok(meta) = std::fs::metadata(&bin) else {
        eprintln!(
            "SKIP: {} is missing (make agent / make cross build it; make test does)",
            bin.display()
        );
        return;
    };
    let size = meta.len();
    eprintln!(
        "{arch} agent: {size} bytes ({:.2} MiB), budget {:.2} MiB",
        size as f64 / MIB as f64,
        budget as f64 / MIB as f64
    );
    assert!(
        size <= budget,
        "{} is {size} bytes, over the {budget}-byte budget",
        bin.display()
    );
}

/// The budget of `arch` in .ci/agent-size-budget.txt ("arch bytes" lines).
fn budget(arch: &str) -> u64 {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/agent-size-budget.txt");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (a, bytes) = l.split_once(char::is_whitespace)?;
            (a == arch).then(|| bytes.trim().replace(',', "").parse().expect("bytes in the budget file"))
        })
        .unwrap_or_else(|| panic!("{}: no budget for {arch}", file.display()))
}

#[test]
fn aarch64_agent_fits_the_flash_budget() {
    check("aarch64", budget("aarch64"));
}

#[test]
fn x86_64_agent_fits_the_flash_budget() {
    check("x86_64", budget("x86_64"));
}
