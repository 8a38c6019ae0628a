//! `k8s4r bench ...`: the command line of the benchmarks; the work is in
//! `fleet.rs` (robots) and `report.rs` (report).

use super::fleet::{have_kubectl, run_one, Setup};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

const USAGE: &str = "\
k8s4r bench robots N [N...] — fleet load test of the control plane
k8s4r bench rollout N [N...] — an AgentRelease rolled out to N simulated robots with
                              a canary; writes target/bench/rollout.json
k8s4r bench job-rollout N [N...] — a system Job's bad version (5% canaries, auto-revert)
                              and good version (maxParallel 10%) rolled out to N simulated
                              robots; writes target/bench/job-rollout.json
k8s4r bench report          — target/bench/report.md from the benchmarks' JSON files

OPTIONS:
    --out FILE        Where to write the results [default: target/bench/server.json,
                      for report: target/bench/report.md]
    --timeout DUR     Give up on a run after this long [default: 120s]
    --http            Create the Job with an HTTP POST even if kubectl is installed
                      (default: `kubectl apply`, timed from kubectl's start)
    --etcd            Store in a throwaway local etcd instead of SQLite
    --replicas K[,K]  Server replicas on that etcd; each size runs with each
                      count [default: 1]
";

/// `k8s4r bench robots N [N...]` and `k8s4r bench report`.
/// The longest `--timeout` a bench takes.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

pub fn cmd_bench(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    use lexopt::prelude::*;
    let mut sizes = Vec::new();
    let mut out = None;
    let mut timeout = Duration::from_secs(120);
    let mut what = None;
    let mut http_only = false;
    let mut etcd = false;
    let mut replicas: Vec<usize> = vec![1];
    while let Some(arg) = parser.next()? {
        match arg {
            Long("out") => out = Some(PathBuf::from(parser.value()?)),
            Long("http") => http_only = true,
            Long("etcd") => etcd = true,
            Long("replicas") => {
                replicas = parser
                    .value()?
                    .string()?
                    .split(',')
                    .map(|k| k.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--replicas: {e}"))?
            }
            Long("timeout") => {
                let t = parser.value()?.string()?;
                timeout = crate::api::Duration::parse(&t).map_err(|e| format!("--timeout {t:?}: {e}"))?;
                // Deadlines are `now + timeout`: a bound here keeps that
                // arithmetic from overflowing in every bench.
                if timeout > MAX_TIMEOUT {
                    return Err(format!("--timeout {t:?}: at most 24h").into());
                }
            }
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(0);
            }
            Value(v) if what.is_none() => what = Some(v.string()?),
            Value(v) => sizes.push(v.parse::<usize>()?),
            other => return Err(other.unexpected()),
        }
    }
    if what.as_deref() == Some("report") {
        let out = out.unwrap_or_else(|| PathBuf::from("target/bench/report.md"));
        let dir = out.parent().unwrap_or(std::path::Path::new(".")).to_path_buf();
        return match super::report::write(&dir, &out) {
            Ok(()) => Ok(0),
            Err(e) => {
                eprintln!("error: {e}");
                Ok(1)
            }
        };
    }
    if what.as_deref() == Some("rollout") && !sizes.is_empty() {
        let out = out.unwrap_or_else(|| PathBuf::from("target/bench/rollout.json"));
        return run_each(&sizes, &out, "k8s4r bench rollout", |n| super::rollout::run(n, timeout));
    }
    if what.as_deref() == Some("job-rollout") && !sizes.is_empty() {
        let out = out.unwrap_or_else(|| PathBuf::from("target/bench/job-rollout.json"));
        return run_each(&sizes, &out, "k8s4r bench job-rollout", |n| {
            super::job_rollout::run(n, timeout)
        });
    }
    let out = out.unwrap_or_else(|| PathBuf::from("target/bench/server.json"));
    if what.as_deref() != Some("robots") || sizes.is_empty() || replicas.is_empty() || replicas.contains(&0) {
        eprint!("{USAGE}");
        return Ok(2);
    }
    if replicas.iter().any(|&k| k > 1) && !etcd {
        eprintln!("error: --replicas needs --etcd (SQLite serves one server)");
        eprint!("{USAGE}");
        return Ok(2);
    }
    crate::server::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    let use_kubectl = !http_only && have_kubectl();
    let mut runs = Vec::new();
    let mut failed = false;
    let runs_of: Vec<(usize, Setup)> = sizes
        .iter()
        .flat_map(|&n| replicas.iter().map(move |&k| (n, Setup { etcd, replicas: k })))
        .collect();
    for (n, setup) in runs_of {
        eprintln!("bench: {n} robots, {setup:?} ...");
        match rt.block_on(run_one(n, timeout, use_kubectl, setup)) {
            Ok(r) => {
                eprintln!("bench: {r}");
                runs.push(r);
            }
            Err(e) => {
                eprintln!("bench: {n} robots failed: {e}");
                runs.push(json!({"robots": n, "error": e}));
                failed = true;
            }
        }
    }
    let doc = json!({"tool": "k8s4r bench robots", "version": crate::cli::VERSION,
                     "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1), "runs": runs});
    if let Some(dir) = out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&out, serde_json::to_string_pretty(&doc).unwrap_or_default())
        .map_err(|e| format!("writing {}: {e}", out.display()))?;
    println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    Ok(i32::from(failed))
}

/// `k8s4r bench rollout|job-rollout N...`: one `run` per size, the results
/// to `out`.
fn run_each<F: std::future::Future<Output = Result<serde_json::Value, String>>>(
    sizes: &[usize],
    out: &std::path::Path,
    tool: &str,
    run: impl Fn(usize) -> F,
) -> Result<i32, lexopt::Error> {
    crate::server::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    let mut runs = Vec::new();
    let mut failed = false;
    for &n in sizes {
        eprintln!("bench: {tool} to {n} robots ...");
        match rt.block_on(run(n)) {
            Ok(r) => {
                eprintln!("bench: {r}");
                runs.push(r);
            }
            Err(e) => {
                eprintln!("bench: {tool} to {n} robots failed: {e}");
                runs.push(json!({"robots": n, "error": e}));
                failed = true;
            }
        }
    }
    let doc = json!({"tool": tool, "version": crate::cli::VERSION, "runs": runs});
    if let Some(dir) = out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    std::fs::write(out, &text).map_err(|e| format!("writing {}: {e}", out.display()))?;
    println!("{text}");
    Ok(i32::from(failed))
}
