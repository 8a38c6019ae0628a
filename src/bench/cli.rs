//! `k8s4r bench ...`: the command line of the benchmarks; the work is in
//! `fleet.rs` (robots), `soak.rs` (the long run) and `report.rs` (report).

use super::fleet::{have_kubectl, run_one, Setup};
use super::soak::Soak;
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
k8s4r bench soak [N]        — N simulated robots (default 10000) for --duration with a new
                              version of their Job every --churn; the server's RSS, CPU
                              and store size every --every; target/bench/soak.json and
                              soak.svg; exit 1 if the server's memory kept growing
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
    --duration DUR    soak: how long [default: 1h]
    --every DUR       soak: sample the server this often [default: 60s]
    --churn DUR       soak: a new version of the Job this often [default: 5m]
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
    let mut soak = Soak {
        robots: 10_000,
        duration: Duration::from_secs(3600),
        every: Duration::from_secs(60),
        churn: Duration::from_secs(300),
    };
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
            Long("timeout") => timeout = duration(parser, "--timeout", Duration::ZERO)?,
            Long("duration") => soak.duration = duration(parser, "--duration", Duration::ZERO)?,
            Long("every") => soak.every = duration(parser, "--every", Duration::from_millis(100))?,
            Long("churn") => soak.churn = duration(parser, "--churn", Duration::from_millis(100))?,
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
    if what.as_deref() == Some("soak") {
        let out = out.unwrap_or_else(|| PathBuf::from("target/bench/soak.json"));
        match sizes[..] {
            [] => {}
            [n] if n > 0 => soak.robots = n,
            _ => {
                eprint!("{USAGE}");
                return Ok(2);
            }
        }
        return run_soak(soak, &out);
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
    let rt = runtime()?;
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

/// A bench's runtime, with as many open files as allowed (a simulated
/// robot holds a connection).
fn runtime() -> Result<tokio::runtime::Runtime, lexopt::Error> {
    crate::server::raise_fd_limit();
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?)
}

/// A duration option's value: at least `min`, at most a day (deadlines are
/// `now + duration`: the bound keeps that arithmetic from overflowing).
fn duration(parser: &mut lexopt::Parser, flag: &str, min: Duration) -> Result<Duration, lexopt::Error> {
    let t = lexopt::ValueExt::string(parser.value()?)?;
    let d = crate::api::Duration::parse(&t).map_err(|e| format!("{flag} {t:?}: {e}"))?;
    if d > MAX_TIMEOUT {
        return Err(format!("{flag} {t:?}: at most 24h").into());
    }
    if d < min {
        return Err(format!("{flag} {t:?}: at least {min:?}").into());
    }
    Ok(d)
}

/// `k8s4r bench soak`: the run, its JSON to `out` and its chart beside it.
fn run_soak(soak: Soak, out: &std::path::Path) -> Result<i32, lexopt::Error> {
    let rt = runtime()?;
    eprintln!("bench: soak, {soak:?} ...");
    let mut doc = match rt.block_on(super::soak::run(soak)) {
        Ok(doc) => doc,
        Err(e) => json!({"robots": soak.robots, "error": e}),
    };
    doc["tool"] = json!("k8s4r bench soak");
    doc["version"] = json!(crate::cli::VERSION);
    let dir = out.parent().unwrap_or(std::path::Path::new("."));
    let _ = std::fs::create_dir_all(dir);
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    std::fs::write(out, &text).map_err(|e| format!("writing {}: {e}", out.display()))?;
    if let Some(chart) = super::soak::chart(&doc) {
        let file = dir.join(chart.file);
        std::fs::write(&file, &chart.svg).map_err(|e| format!("writing {}: {e}", file.display()))?;
        eprintln!("bench: soak chart in {}", file.display());
    }
    println!("{text}");
    if let Some(e) = doc["error"].as_str() {
        eprintln!("error: soak: {e}");
        return Ok(1);
    }
    let v = &doc["verdict"];
    eprintln!(
        "bench: soak: server RSS {:.0} MiB after warm-up, {:.0} MiB at most in the first half, {:.0} MiB at the end; store {:.1} -> {:.1} MiB",
        v["rss_first_mib"].as_f64().unwrap_or(0.0),
        v["rss_first_half_max_mib"].as_f64().unwrap_or(0.0),
        v["rss_end_mib"].as_f64().unwrap_or(0.0),
        v["store_first_mib"].as_f64().unwrap_or(0.0),
        v["store_end_mib"].as_f64().unwrap_or(0.0),
    );
    if v["flat"] != true {
        eprintln!("error: soak: the server's memory is not flat ({})", v["rule"]);
        return Ok(1);
    }
    Ok(0)
}

/// `k8s4r bench rollout|job-rollout N...`: one `run` per size, the results
/// to `out`.
fn run_each<F: std::future::Future<Output = Result<serde_json::Value, String>>>(
    sizes: &[usize],
    out: &std::path::Path,
    tool: &str,
    run: impl Fn(usize) -> F,
) -> Result<i32, lexopt::Error> {
    let rt = runtime()?;
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
