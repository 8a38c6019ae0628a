//! `k8s4r bench report`: one readable markdown page from the JSON files the
//! benchmarks of `make bench` write to `target/bench/`. Every figure is put
//! next to a reference measured in the same run (another supervisor,
//! Envoy's defaults, a direct connection, SQLite), as a ratio where one
//! helps. A missing or unreadable file becomes "not run"; numbers are only
//! ever read from the files, never typed in here. The key comparisons are
//! also drawn as SVG charts next to the report, which links them
//! ([`super::charts`]).

use super::charts::{self, Chart};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;

/// A markdown table.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, out: &mut String) {
        for (i, r) in self.rows.iter().enumerate() {
            let _ = writeln!(out, "| {} |", r.join(" | "));
            if i == 0 {
                let _ = writeln!(out, "|{}", "---|".repeat(r.len()));
            }
        }
        out.push('\n');
    }
}

/// The number at a dotted path (`a.b.0.c`), if there is one.
fn num(v: &Value, path: &str) -> Option<f64> {
    path.split('.')
        .try_fold(v, |v, key| match key.parse::<usize>() {
            Ok(i) if v.is_array() => v.get(i),
            _ => v.get(key),
        })?
        .as_f64()
}

fn or_dash(v: Option<String>) -> String {
    v.unwrap_or_else(|| "—".into())
}

fn mib_from_kib(kib: Option<f64>) -> String {
    or_dash(kib.map(|k| format!("{:.1} MiB", k / 1024.0)))
}

fn ms(v: Option<f64>) -> String {
    or_dash(v.map(|v| {
        if v >= 100.0 {
            format!("{v:.0} ms")
        } else {
            format!("{v:.2} ms")
        }
    }))
}

/// `a ÷ b` as "0.25×".
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => {
            let r = a / b;
            if r >= 10.0 {
                format!("{r:.0}×")
            } else if r >= 0.1 {
                format!("{r:.2}×")
            } else {
                format!("{r:.3}×")
            }
        }
        _ => "—".into(),
    }
}

fn read(dir: &Path, file: &str) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(dir.join(file)).ok()?).ok()
}

/// Link `chart` from the report and keep it to be written beside it.
fn link_chart(out: &mut String, charts: &mut Vec<Chart>, chart: Option<Chart>) {
    if let Some(c) = chart {
        let _ = writeln!(out, "![{}]({})\n", c.title, c.file);
        charts.push(c);
    }
}

fn not_run(out: &mut String, files: &[&str]) {
    let files: Vec<String> = files.iter().map(|f| format!("`target/bench/{f}`")).collect();
    let _ = writeln!(out, "_not run_ (no readable {})\n", files.join(" or "));
}

fn supervision(out: &mut String, charts: &mut Vec<Chart>, dir: &Path) {
    out.push_str("## Supervision: k8s4r-agent vs s6 vs supervisord\n\n");
    let Some(doc) = read(dir, "supervision.json") else {
        return not_run(out, &["supervision.json"]);
    };
    let w = &doc["workload"];
    let _ = writeln!(
        out,
        "Same workload for each, one run: {} `sleep` services started by one request, then {} start/stop \
         cycles of a short command (at most {} s each), then kill -9 of {} sleepers. Starts are timed from the request to the \
         process's own report (a line to a FIFO); memory and CPU are the supervisor processes only. \
         {} CPUs, load average {} before, {} after. Method: `tests/supervision_bench.rs`.\n",
        w["sleepers"],
        w["cycles"],
        w["cycle_time_limit_s"],
        w["restarts"],
        doc["cpus"],
        doc["load_average"]["before"].as_str().unwrap_or("?"),
        doc["load_average"]["after"].as_str().unwrap_or("?"),
    );
    let systems: Vec<&Value> = doc["systems"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let find = |name: &str| {
        systems
            .iter()
            .find(|s| s["system"] == name && s.get("skipped").is_none())
            .copied()
    };
    let (agent, s6, sd) = (find("k8s4r-agent"), find("s6"), find("supervisord"));
    let mut header = vec!["".to_string()];
    header.extend(systems.iter().map(|s| s["system"].as_str().unwrap_or("?").to_string()));
    header.extend(["agent ÷ s6".into(), "agent ÷ supervisord".into()]);
    let mut t = Table::new(&header.iter().map(String::as_str).collect::<Vec<_>>());
    type Cell = fn(Option<f64>) -> String;
    let rows: [(&str, &str, Cell); 14] = [
        (
            "tree PSS, 100 sleepers",
            "memory_kib.with_100_sleepers.pss_kib",
            mib_from_kib,
        ),
        (
            "tree RSS (summed), 100 sleepers",
            "memory_kib.with_100_sleepers.rss_kib",
            mib_from_kib,
        ),
        (
            "tree private (USS), 100 sleepers",
            "memory_kib.with_100_sleepers.uss_kib",
            mib_from_kib,
        ),
        ("supervisor processes", "memory_kib.with_100_sleepers.processes", |v| {
            or_dash(v.map(|v| format!("{v:.0}")))
        }),
        ("start 100: all running", "start_100_ms.all_running", ms),
        ("start 100: p50 per service", "start_100_ms.each.p50", ms),
        ("start/stop cycles done", "cycles_done", |v| {
            or_dash(v.map(|v| format!("{v:.0}")))
        }),
        ("start/stop cycle: start p50", "cycle_start_ms.p50", ms),
        ("start/stop cycle: start p99", "cycle_start_ms.p99", ms),
        ("restart after kill -9: p50", "restart_ms.p50", ms),
        ("restart after kill -9: p99", "restart_ms.p99", ms),
        ("CPU: start 100", "cpu_ms.start_100", ms),
        ("CPU per start/stop cycle", "cpu_ms.per_cycle", ms),
        ("CPU per restart", "cpu_ms.per_restart", ms),
    ];
    for (label, path, cell) in rows {
        let mut r = vec![label.to_string()];
        r.extend(systems.iter().map(|s| cell(num(s, path))));
        // Counts are no costs: no ratio.
        let counts = path.ends_with("processes") || path == "cycles_done";
        let a = agent.and_then(|a| num(a, path)).filter(|_| !counts);
        r.push(ratio(a, s6.and_then(|s| num(s, path))));
        r.push(ratio(a, sd.and_then(|s| num(s, path))));
        t.row(r);
    }
    t.render(out);
    link_chart(out, charts, charts::supervision(&doc));
    for s in &systems {
        let name = s["system"].as_str().unwrap_or("?");
        if let Some(why) = s["skipped"].as_str() {
            let _ = writeln!(out, "- {name}: skipped ({why})");
            continue;
        }
        let setup = &s["setup"];
        let _ = writeln!(
            out,
            "- **{name}** {}: driven by {}; restart: {}; output: {}.",
            setup["version"].as_str().unwrap_or(""),
            setup["driver"].as_str().unwrap_or("?"),
            setup["restart"].as_str().unwrap_or("?"),
            setup["output"].as_str().unwrap_or("?"),
        );
    }
    out.push('\n');
}

fn agent_footprint(out: &mut String, dir: &Path) {
    out.push_str("## Agent footprint\n\n");
    let agent = read(dir, "agent.json");
    let cycles = read(dir, "agent-cycles.json");
    let e2e = read(dir, "e2e.json");
    let sup = read(dir, "supervision.json");
    if agent.is_none() && cycles.is_none() {
        return not_run(out, &["agent.json", "agent-cycles.json"]);
    }
    // References from the same run: the other supervisors with nothing to do.
    let idle_of = |name: &str| {
        sup.as_ref()?["systems"]
            .as_array()?
            .iter()
            .find(|s| s["system"] == name)
            .and_then(|s| num(s, "memory_kib.idle_no_services.pss_kib"))
    };
    let mut t = Table::new(&["", "k8s4r-agent", "reference (same run)"]);
    if let Some(a) = &agent {
        let size = |p: &str| or_dash(num(a, p).map(|b| format!("{:.2} MiB", b / 1048576.0)));
        t.row(vec![
            "stripped static binary, x86_64 / aarch64".into(),
            format!("{} / {}", size("musl_size_bytes"), size("aarch64_musl_size_bytes")),
            "goal: aarch64 ≤ 1.5 MiB".into(),
        ]);
        t.row(vec![
            format!("idle RSS, {} tasks (private)", a["idle_tasks"]),
            format!(
                "{} ({:.0} KiB)",
                mib_from_kib(num(a, "idle_rss_kib")),
                num(a, "idle_anon_kib").unwrap_or(0.0)
            ),
            format!(
                "PSS, 101 services configured, none running: s6 tree {}, supervisord {}",
                mib_from_kib(idle_of("s6")),
                mib_from_kib(idle_of("supervisord"))
            ),
        ]);
        t.row(vec![
            format!("idle CPU / disk writes over {} s", a["idle_seconds"]),
            format!(
                "{} ms / {} bytes",
                num(a, "idle_cpu_ms").unwrap_or(-1.0),
                num(a, "idle_write_bytes").unwrap_or(-1.0)
            ),
            "goal ≈ 0 / 0".into(),
        ]);
        t.row(vec![
            "assignment → exec, in-process, p50 / p99".into(),
            format!(
                "{} / {}",
                ms(num(a, "exec_latency_ms.p50")),
                ms(num(a, "exec_latency_ms.p99"))
            ),
            "goal p99 ≤ 5 ms".into(),
        ]);
    }
    if let Some(e) = &e2e {
        t.row(vec![
            "connected agent RSS: idle / with tasks while polling".into(),
            format!(
                "{} / {}",
                mib_from_kib(num(e, "agent_rss_kib.idle")),
                mib_from_kib(num(e, "agent_rss_kib.polling_with_tasks"))
            ),
            "—".into(),
        ]);
    }
    if let Some(c) = &cycles {
        cycle_rows(&mut t, c);
    }
    t.render(out);
    if cycles.is_none() {
        not_run(out, &["agent-cycles.json"]);
    }
}

/// The footprint over many start/stop cycles, first sample after the
/// warm-up as the reference.
fn cycle_rows(t: &mut Table, c: &Value) {
    let samples = c["samples"].as_array().cloned().unwrap_or_default();
    let warm = samples
        .iter()
        .find(|s| s["cycles"] == c["warmup_cycles"])
        .or(samples.first());
    let last = samples.last();
    let (Some(warm), Some(last)) = (warm, last) else {
        return;
    };
    let done = num(c, "cycles_done").unwrap_or(0.0);
    t.row(vec![
        format!(
            "RSS over {done:.0} task cycles (of {}), after warm-up → end",
            c["cycles_wanted"]
        ),
        format!(
            "{} → {} ({:+.0} KiB; private {:+.0} KiB)",
            mib_from_kib(num(warm, "rss_kib")),
            mib_from_kib(num(last, "rss_kib")),
            num(c, "rss_growth_kib.after_warmup_to_end").unwrap_or(0.0),
            num(c, "anonymous_growth_kib.after_warmup_to_end").unwrap_or(0.0),
        ),
        "flat = 0 KiB growth".into(),
    ]);
    // CPU per cycle early vs late: a cost that grows with history shows here.
    let per_cycle = |a: &Value, b: &Value| {
        let n = num(b, "cycles")? - num(a, "cycles")?;
        (n > 0.0).then(|| (num(b, "cpu_ms").unwrap_or(0.0) - num(a, "cpu_ms").unwrap_or(0.0)) / n)
    };
    let early = samples.get(1).and_then(|s| per_cycle(&samples[0], s));
    let late = (samples.len() >= 2)
        .then(|| per_cycle(&samples[samples.len() - 2], &samples[samples.len() - 1]))
        .flatten();
    t.row(vec![
        "agent CPU per cycle, first → last interval".into(),
        format!("{} → {}", ms(early), ms(late)),
        format!("{} later", ratio(late, early)),
    ]);
    t.row(vec![
        "state.json + state.log / outbox.json / fds / threads at end".into(),
        format!(
            "{:.1} KiB / {:.0} KiB / {} / {}",
            state_kib(last),
            num(last, "outbox_json_bytes").unwrap_or(0.0) / 1024.0,
            last["fds"],
            last["threads"]
        ),
        format!(
            "after warm-up: {:.1} KiB / {:.1} KiB / {} / {}",
            state_kib(warm),
            num(warm, "outbox_json_bytes").unwrap_or(0.0) / 1024.0,
            warm["fds"],
            warm["threads"]
        ),
    ]);
}

/// The agent's state files in a footprint sample (snapshot + journal).
fn state_kib(sample: &Value) -> f64 {
    (num(sample, "state_json_bytes").unwrap_or(0.0) + num(sample, "state_log_bytes").unwrap_or(0.0)) / 1024.0
}

fn proxy(out: &mut String, charts: &mut Vec<Chart>, dir: &Path) {
    out.push_str("## Proxy: one Envoy per TaskGroup\n\n");
    let Some(p) = read(dir, "proxy.json") else {
        return not_run(out, &["proxy.json"]);
    };
    let _ = writeln!(out, "{}\n", p["envoy"].as_str().unwrap_or("").trim());
    let mut t = Table::new(&["", "k8s4r's config and flags", "Envoy defaults", "ours ÷ defaults"]);
    for (label, ours, def) in [
        (
            "idle, 2nd Envoy: RSS",
            "idle_memory.ours.rss_kib",
            "idle_memory.envoy_defaults.rss_kib",
        ),
        (
            "idle, 2nd Envoy: private",
            "idle_memory.ours.private_kib",
            "idle_memory.envoy_defaults.private_kib",
        ),
        (
            "50 connections to a stalled upstream: RSS",
            "stalled_upstream_memory.ours_32k_buffers_rss_kib",
            "stalled_upstream_memory.envoy_default_1m_buffers_rss_kib",
        ),
    ] {
        let (a, b) = (num(&p, ours), num(&p, def));
        t.row(vec![label.into(), mib_from_kib(a), mib_from_kib(b), ratio(a, b)]);
    }
    t.render(out);
    let us = |path: &str| or_dash(num(&p, path).map(|v| format!("{v:.1} µs")));
    let mut t = Table::new(&["64-byte round trip", "p50", "p99", "p50 ÷ direct"]);
    let direct = num(&p, "latency_us.direct.p50");
    for (label, key) in [
        ("direct", "direct"),
        ("through the group's Envoy (plain)", "proxy_plain"),
        ("mTLS through two Envoys", "proxy_mtls_two_envoys"),
    ] {
        t.row(vec![
            label.into(),
            us(&format!("latency_us.{key}.p50")),
            us(&format!("latency_us.{key}.p99")),
            ratio(num(&p, &format!("latency_us.{key}.p50")), direct),
        ]);
    }
    t.render(out);
    proxy_modes(out, charts, &p);
}

/// Memory by proxy mode: one Envoy per group vs the robot-wide one.
fn proxy_modes(out: &mut String, charts: &mut Vec<Chart>, p: &Value) {
    let Some(rows) = p["proxy_modes_memory"].as_array() else {
        return;
    };
    out.push_str(
        "Memory by proxy mode (idle, loopback, median of 3; PSS / private anonymous memory summed over the \
         proxy processes):\n\n",
    );
    let mut t = Table::new(&[
        "groups on the robot",
        "one Envoy per group",
        "one shared Envoy",
        "shared ÷ per group (anon)",
    ]);
    for r in rows {
        let cell = |mode: &str| match (num(&r[mode], "pss_kib"), num(&r[mode], "anon_kib")) {
            (Some(pss), Some(anon)) => format!("{:.0} MiB / {:.0} MiB", pss / 1024.0, anon / 1024.0),
            _ => "—".into(),
        };
        t.row(vec![
            r["groups"].to_string(),
            cell("per_group"),
            cell("shared"),
            ratio(num(&r["shared"], "anon_kib"), num(&r["per_group"], "anon_kib")),
        ]);
    }
    t.render(out);
    link_chart(out, charts, charts::proxy_modes(p));
}

fn end_to_end(out: &mut String, dir: &Path) {
    out.push_str("## End to end: Job posted → process running on a connected robot\n\n");
    let Some(e) = read(dir, "e2e.json") else {
        return not_run(out, &["e2e.json"]);
    };
    let agent = read(dir, "agent.json");
    let mut t = Table::new(&["", "p50", "p99"]);
    t.row(vec![
        format!(
            "POST Job → process running, real server (SQLite) + agent, {} jobs",
            e["jobs"]
        ),
        ms(num(&e, "apply_to_running_ms.p50")),
        ms(num(&e, "apply_to_running_ms.p99")),
    ]);
    if let Some(a) = &agent {
        t.row(vec![
            "of which the agent's assignment → exec (in-process)".into(),
            ms(num(a, "exec_latency_ms.p50")),
            ms(num(a, "exec_latency_ms.p99")),
        ]);
    }
    t.render(out);
}

fn control_plane(out: &mut String, charts: &mut Vec<Chart>, dir: &Path) {
    out.push_str("## Control plane: SQLite vs etcd, simulated robots long-polling\n\n");
    let sqlite = read(dir, "server.json");
    let etcd = read(dir, "server-etcd.json");
    if sqlite.is_none() && etcd.is_none() {
        return not_run(out, &["server.json", "server-etcd.json"]);
    }
    // Every run, keyed by (robots, setup label).
    let mut runs: Vec<(u64, String, Value)> = Vec::new();
    for doc in [&sqlite, &etcd].into_iter().flatten() {
        for r in doc["runs"].as_array().into_iter().flatten() {
            let store = r["store"].as_str().unwrap_or("sqlite");
            let label = match store {
                "etcd" => format!("etcd, {} replica(s)", r["replicas"].as_u64().unwrap_or(1)),
                other => other.to_string(),
            };
            runs.push((r["robots"].as_u64().unwrap_or(0), label, r.clone()));
        }
    }
    runs.sort_by(|a, b| (a.0, a.1 != "sqlite", &a.1).cmp(&(b.0, b.1 != "sqlite", &b.1)));
    let _ = writeln!(
        out,
        "A Job with count = N robots; delivery = from the create request until a robot's long poll returns its \
         Task. CPU is the server processes' (and etcd's) user + system time during the dispatch; the simulated \
         robots share the machine. `k8s4r bench robots`.\n"
    );
    let mut t = Table::new(&[
        "robots",
        "store",
        "delivery p50",
        "delivery p99",
        "p99 ÷ SQLite",
        "CPU during dispatch",
        "of which etcd",
        "server RSS peak",
        "error",
    ]);
    for (n, label, r) in &runs {
        let sqlite_p99 = runs
            .iter()
            .find(|(m, l, _)| m == n && l == "sqlite")
            .and_then(|(_, _, s)| num(s, "delivery_p99_seconds"));
        let secs = |k: &str| num(r, k).map(|s| s * 1e3);
        t.row(vec![
            n.to_string(),
            label.clone(),
            ms(secs("delivery_p50_seconds")),
            ms(secs("delivery_p99_seconds")),
            ratio(num(r, "delivery_p99_seconds"), sqlite_p99),
            ms(num(r, "server_cpu_ms_dispatch")),
            ms(num(r, "store_cpu_ms_dispatch").filter(|_| label.as_str() != "sqlite")),
            or_dash(num(r, "server_peak_rss_mib").map(|m| format!("{m:.0} MiB"))),
            r["error"].as_str().unwrap_or("").to_string(),
        ]);
    }
    t.render(out);
    link_chart(out, charts, charts::control_plane(&runs));
}

/// Bytes with a unit that reads at a glance.
fn size(b: Option<f64>) -> String {
    or_dash(b.map(|b| {
        if b >= 1024.0 * 1024.0 {
            format!("{:.1} MiB", b / (1024.0 * 1024.0))
        } else if b >= 1024.0 {
            format!("{:.1} KiB", b / 1024.0)
        } else {
            format!("{b:.0} B")
        }
    }))
}

/// The link: bytes a connected robot moves (`link.json`, measured by the
/// recording relay), next to the same bench run on the commit before the
/// link work (`link-before.json`, copied in by `make bench`).
fn link(out: &mut String, dir: &Path) {
    out.push_str("## Link: bytes per robot, through a recording relay\n\n");
    let Some(now) = read(dir, "link.json") else {
        return not_run(out, &["link.json"]);
    };
    let before = read(dir, "link-before.json");
    let mut t = Table::new(&["", "before", "now", "now ÷ before"]);
    let rows = [
        (
            "idle, no tasks, per month (application)",
            "idle_no_tasks.app_bytes_month",
        ),
        (
            "idle, no tasks, per month (with TCP/IP)",
            "idle_no_tasks.total_bytes_month",
        ),
        (
            "idle, no tasks, per month, held polls (the default; TCP/IP on the wire), Offline after 90 s",
            "idle_no_tasks_held_poll_by_offline_after.0.total_bytes_month",
        ),
        (
            "idle, 10 running tasks, per month (with TCP/IP)",
            "idle_10_tasks.total_bytes_month",
        ),
        (
            "one task added to a robot with 100 (the poll answer)",
            "one_task_added_to_100.total",
        ),
        ("a status change (its report)", "status_change.total"),
        ("a log request (poll answer + upload)", "log_request.total"),
    ];
    for (label, path) in rows {
        let b = before.as_ref().and_then(|v| num(v, path));
        let n = num(&now, path);
        t.row(vec![label.into(), size(b), size(n), ratio(n, b)]);
    }
    t.render(out);
    let _ = writeln!(
        out,
        "Measured with polls every {}s (not held; held polls measured on their own: a probe and its answer {} B on the wire), \
         scaled to a month of polls every {}s and a device report every {}s. {}.\n",
        now["measured_with"]["poll_interval_secs"],
        or_dash(num(&now, "held_poll_probe.ip_bytes").map(|b| format!("{b:.0}"))),
        now["month_at"]["poll_interval_secs"],
        now["month_at"]["device_report_secs"],
        now["tcp_ip"].as_str().unwrap_or("")
    );
}

fn agent_rollout(out: &mut String, dir: &Path) {
    out.push_str("## Agent release rolled out to simulated robots (canary, then maxParallel N/10)\n\n");
    let Some(doc) = read(dir, "rollout.json") else {
        return not_run(out, &["rollout.json"]);
    };
    let mut t = Table::new(&[
        "robots",
        "canaries updated (s)",
        "next robot (s)",
        "all updated (s)",
        "install p50 / p99 (s)",
        "server CPU (ms)",
        "store writes (per robot)",
        "server RSS (MiB)",
    ]);
    for r in doc["runs"].as_array().into_iter().flatten() {
        if let Some(e) = r["error"].as_str() {
            t.row(vec![
                r["robots"].to_string(),
                format!("failed: {e}"),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
            continue;
        }
        let f = |k: &str| num(r, k).map_or("—".into(), |v| format!("{v:.1}"));
        t.row(vec![
            r["robots"].to_string(),
            format!("{} ({})", f("canaries_updated_seconds"), r["canaries"]),
            f("first_beyond_canaries_seconds"),
            f("all_updated_seconds"),
            format!("{} / {}", f("install_p50_seconds"), f("install_p99_seconds")),
            format!("{:.0}", num(r, "server_cpu_ms_rollout").unwrap_or(0.0)),
            format!(
                "{} ({} beyond idle; idle {}/s)",
                r["store_writes_rollout"],
                f("store_writes_beyond_idle_per_robot"),
                f("store_writes_idle_per_second")
            ),
            f("server_peak_rss_mib"),
        ]);
    }
    t.render(out);
    out.push_str(
        "A robot installs by reporting the new version (download and exec are the agent tests' part). The release \
         has `canary: 1%`, `minHealthyTime: 5s`, maxParallel N/10: the next robot installs only once every canary \
         has been on the version and Online for 5 s (the bench fails otherwise). Each later step waits for the \
         robots' next poll (every 2 s here); the store takes one Robot status write per robot plus the release's \
         status.\n\n",
    );
}

fn job_rollout(out: &mut String, dir: &Path) {
    out.push_str(
        "## Job versions rolled out to simulated robots (a bad one with 5% canaries, a good one 10% at a time)\n\n",
    );
    let Some(doc) = read(dir, "job-rollout.json") else {
        return not_run(out, &["job-rollout.json"]);
    };
    let mut t = Table::new(&[
        "robots",
        "bad: got it / canaries",
        "bad: failed (s)",
        "bad: all back on good (s) / goal",
        "good: maxParallel",
        "good: all updated (s)",
        "good: server CPU (ms)",
        "server RSS (MiB)",
    ]);
    for r in doc["runs"].as_array().into_iter().flatten() {
        let f = |k: &str| num(r, k).map_or("—".into(), |v| format!("{v:.1}"));
        if let Some(e) = r["error"].as_str() {
            let mut row = vec![r["robots"].to_string(), format!("failed: {e}")];
            row.resize(8, String::new());
            t.row(row);
            continue;
        }
        t.row(vec![
            r["robots"].to_string(),
            format!("{} / {}", r["bad"]["robots_that_got_it"], r["bad"]["canaries"]),
            f("bad.rollout_failed_seconds"),
            format!("{} / {}", f("bad.all_back_on_good_seconds"), f("bad.goal_seconds")),
            r["good"]["max_parallel"].to_string(),
            f("good.all_updated_seconds"),
            format!("{:.0}", num(r, "good.server_cpu_ms").unwrap_or(0.0)),
            f("server_peak_rss_mib"),
        ]);
    }
    t.render(out);
    out.push_str(
        "A simulated robot fails a task whose spec says so (exit 1) and runs any other; offered the previous \
         version (autoRevert), it goes back to it at once and says so, as the agent does. The goal for the bad \
         version is healthyDeadline + one poll interval; the good one takes about one minHealthyTime plus a \
         poll per batch.\n\n",
    );
}

/// The soak (`make soak`, not part of `make bench`): a section only when
/// its JSON is there.
fn soak(out: &mut String, charts: &mut Vec<Chart>, dir: &Path) {
    let Some(doc) = read(dir, "soak.json") else { return };
    out.push_str("## Soak (`make soak`)\n\n");
    if let Some(e) = doc["error"].as_str() {
        let _ = writeln!(out, "{} robots: failed: {e}\n", doc["robots"]);
        return;
    }
    let v = &doc["verdict"];
    let f = |k: &str| num(v, k).map_or("—".into(), |x| format!("{x:.1}"));
    let deliveries: Vec<f64> = doc["versions_delivered"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["all_robots_seconds"].as_f64())
        .collect();
    let mut t = Table::new(&[
        "robots",
        "minutes",
        "versions (slowest to all, s)",
        "server RSS after warm-up / first-half max / end (MiB)",
        "store first / end (MiB)",
        "flat",
    ]);
    t.row(vec![
        doc["robots"].to_string(),
        format!("{:.0}", num(&doc, "minutes").unwrap_or(0.0)),
        format!(
            "{} ({:.1})",
            deliveries.len(),
            deliveries.iter().copied().fold(0.0, f64::max)
        ),
        format!(
            "{} / {} / {}",
            f("rss_first_mib"),
            f("rss_first_half_max_mib"),
            f("rss_end_mib")
        ),
        format!("{} / {}", f("store_first_mib"), f("store_end_mib")),
        if v["flat"] == true { "yes" } else { "no" }.to_string(),
    ]);
    t.render(out);
    let _ = writeln!(
        out,
        "A new version of the Job on every robot every {:.0} s, the server sampled every {:.0} s; flat: {}.\n",
        num(&doc, "churn_every_seconds").unwrap_or(0.0),
        num(&doc, "sample_every_seconds").unwrap_or(0.0),
        v["rule"].as_str().unwrap_or("")
    );
    link_chart(out, charts, super::soak::chart(&doc));
}

/// The whole report from the JSON files in `dir`, and the charts it links.
pub fn render(dir: &Path) -> (String, Vec<Chart>) {
    let mut charts = Vec::new();
    let mut out = String::from(
        "# k8s4r benchmarks\n\nWritten by `make bench` from the JSON files next to this one; every figure \
         comes from that run, side by side with a reference measured in the same run on the same machine.\n\n",
    );
    supervision(&mut out, &mut charts, dir);
    agent_footprint(&mut out, dir);
    proxy(&mut out, &mut charts, dir);
    end_to_end(&mut out, dir);
    control_plane(&mut out, &mut charts, dir);
    agent_rollout(&mut out, dir);
    job_rollout(&mut out, dir);
    link(&mut out, dir);
    soak(&mut out, &mut charts, dir);
    (out, charts)
}

/// `k8s4r bench report`: write `out` and its charts beside it, and print
/// the report.
pub fn write(dir: &Path, out: &Path) -> Result<(), String> {
    let (text, charts) = render(dir);
    let beside = out.parent().unwrap_or(Path::new("."));
    for c in &charts {
        let file = beside.join(c.file);
        std::fs::write(&file, &c.svg).map_err(|e| format!("writing {}: {e}", file.display()))?;
    }
    std::fs::write(out, &text).map_err(|e| format!("writing {}: {e}", out.display()))?;
    print!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_say_not_run() {
        let dir = std::env::temp_dir().join(format!("k8s4r-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (text, charts) = render(&dir);
        assert_eq!(text.matches("_not run_").count(), 8, "{text}");
        assert!(charts.is_empty() && !text.contains(".svg"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ratios_and_paths() {
        let v: Value = serde_json::json!({"a": [{"b": 2.0}]});
        assert_eq!(num(&v, "a.0.b"), Some(2.0));
        assert_eq!(ratio(Some(1.0), Some(4.0)), "0.25×");
        assert_eq!(ratio(Some(1.0), None), "—");
    }
}
