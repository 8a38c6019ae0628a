//! The proxy benchmark (`make bench`), an ignored test so it runs only when
//! asked: `cargo test --release --test envoy_bench -- --ignored --nocapture`.
//!
//! Measures, with the real Envoy, and writes `target/bench/proxy.json`:
//! - render time per config (static one-file form and runtime form);
//! - idle memory per group: RSS and private memory of the second of two
//!   Envoys (the binary's pages are shared between them), with our config
//!   and flags vs Envoy's defaults (no overload manager or buffer limits,
//!   one worker per hardware thread);
//! - memory with a stalled upstream: 50 app connections pushing data to an
//!   upstream that never reads, i.e. what the per-connection buffer limit
//!   (32 KiB vs Envoy's 1 MiB) is for;
//! - memory by proxy mode: 1, 5 and 10 groups, one Envoy per group vs the
//!   robot-wide one (`--proxy-mode shared`), PSS and private anonymous
//!   memory summed over the proxy processes (also alone:
//!   `proxy_modes_memory`);
//! - added latency app → upstream: 10,000 64-byte request/response round
//!   trips on one connection, direct vs through the plain proxy vs through
//!   mTLS (robot Envoy → server Envoy → echo), p50/p99.

mod common;
mod envoy_fixtures;

use envoy_fixtures::*;
use k8s4r::api::{NetworkConfig, Protocol, Upstream};
use k8s4r::envoy::config::{render_runtime, render_static, Identity, Layout};
use k8s4r::envoy::{self, plan, GroupProxy, Inbound, Launch, ProxyExtras};
use std::path::Path;
use std::time::{Duration, Instant};

const ROUND_TRIPS: usize = 10_000;
const RENDERS: u32 = 2_000;

#[test]
#[ignore = "benchmark: run with --ignored (make bench)"]
fn proxy_benchmark() {
    let Some(bin) = envoy_or_skip("proxy_benchmark") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let render = render_times();
    let memory = idle_memory(&bin, tmp.path());
    let stalled = stalled_memory(&bin, tmp.path());
    let latency = latencies(&bin, tmp.path());
    let modes = modes_memory(&bin, tmp.path());
    let report = format!(
        "{{\n  \"envoy\": {:?},\n  \"render\": {render},\n  \"idle_memory\": {memory},\n  \"stalled_upstream_memory\": {stalled},\n  \"proxy_modes_memory\": {modes},\n  \"latency_us\": {latency}\n}}\n",
        envoy_version(&bin)
    );
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("proxy.json"), &report).unwrap();
    serde_json::from_str::<serde_json::Value>(&report).expect("the report is JSON");
    println!("{report}");
}

#[test]
#[ignore = "benchmark: run with --ignored (make bench)"]
fn proxy_modes_memory() {
    let Some(bin) = envoy_or_skip("proxy_modes_memory") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    println!("{}", modes_memory(&bin, tmp.path()));
}

/// (PSS, private anonymous) of a process in KiB, from smaps_rollup.
fn pss_and_anon(pid: u32) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        smaps
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (field("Pss:"), field("Anonymous:"))
}

/// 1, 5 and 10 groups (each `demo_network`), idle: one Envoy per group vs
/// one robot-wide Envoy; PSS and anonymous memory summed over the proxy
/// processes, the median of three runs.
fn modes_memory(bin: &Path, tmp: &Path) -> String {
    let echo = Server::echo();
    let median = |mut v: Vec<(u64, u64)>| {
        v.sort();
        let pss = v[v.len() / 2].0;
        v.sort_by_key(|x| x.1);
        (pss, v[v.len() / 2].1)
    };
    let per_group = |n: usize, run: usize| -> (u64, u64) {
        let envoys: Vec<Envoy> = (0..n)
            .map(|i| {
                let dir = tmp.join(format!("modes-group-{n}-{run}-{i}"));
                let g = GroupProxy {
                    envoy_bin: bin.to_path_buf(),
                    ..proxy(&format!("g{i}"), &dir, demo_network(echo.port))
                };
                let mut e = Envoy::start(&envoy::prepare(&g).unwrap(), dir.join("envoy.log"));
                e.wait_ready();
                e
            })
            .collect();
        envoys
            .iter()
            .map(|e| pss_and_anon(e.pid()))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    let shared = |n: usize, run: usize| -> (u64, u64) {
        let robot = envoy::shared::SharedProxy {
            robot: "bench".into(),
            dir: tmp.join(format!("modes-shared-{n}-{run}")),
            envoy_bin: bin.to_path_buf(),
            options: Default::default(),
        };
        let members: Vec<envoy::shared::Member> = (0..n)
            .map(|i| envoy::shared::Member {
                key: format!("job-g{i}"),
                network: demo_network(echo.port),
                extras: ProxyExtras::default(),
            })
            .collect();
        let launch = envoy::shared::prepare(&robot, &members).unwrap();
        let mut e = Envoy::start(&launch, robot.dir.join("envoy.log"));
        e.wait_ready();
        pss_and_anon(e.pid())
    };
    let mut rows = Vec::new();
    for n in [1, 5, 10] {
        let (gp, ga) = median((0..3).map(|r| per_group(n, r)).collect());
        let (sp, sa) = median((0..3).map(|r| shared(n, r)).collect());
        println!(
            "groups {n:>2}: per group {:>4} MiB PSS / {:>4} MiB anon | shared {:>4} MiB PSS / {:>4} MiB anon",
            gp / 1024,
            ga / 1024,
            sp / 1024,
            sa / 1024
        );
        rows.push(format!(
            "{{\"groups\": {n}, \"per_group\": {{\"pss_kib\": {gp}, \"anon_kib\": {ga}}}, \"shared\": {{\"pss_kib\": {sp}, \"anon_kib\": {sa}}}}}"
        ));
    }
    format!("[{}]", rows.join(", "))
}

fn envoy_version(bin: &Path) -> String {
    let out = std::process::Command::new(bin).arg("--version").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Mean time to plan + render the SPIRE example's group, both forms.
fn render_times() -> String {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/extra/spire-mtls.yaml")).unwrap();
    let doc = k8s4r::api::decode_all(&text).into_iter().next().unwrap().unwrap();
    let k8s4r::api::AnyObject::Job(job) = doc.object else {
        panic!("the example is a Job")
    };
    let g = &job.spec.task_groups[0];
    let network = envoy::group_network(g.network.as_ref(), &g.tasks).unwrap();
    let layout = Layout::new(Path::new("/run/k8s4r/groups/telemetry-uplink/envoy"));
    let id = Identity {
        node_id: "telemetry/uplink".into(),
        admin_socket: &layout.admin_socket,
    };
    let opts = Default::default();
    let mut size = 0;
    let start = Instant::now();
    for _ in 0..RENDERS {
        let p = plan::plan(&network, &[]).unwrap();
        size = render_static(&p, &id, &opts).unwrap().len();
    }
    let static_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(RENDERS);
    let mut sizes = (0, 0, 0);
    let start = Instant::now();
    for _ in 0..RENDERS {
        let p = plan::plan(&network, &[]).unwrap();
        let rt = render_runtime(&p, "telemetry/uplink", &layout, &opts).unwrap();
        sizes = (rt.bootstrap.len(), rt.lds.len(), rt.cds.len());
    }
    let runtime_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(RENDERS);
    format!(
        "{{\"config\": \"examples/extra/spire-mtls.yaml (2 upstreams, SPIRE SDS)\", \"static_us\": {static_us:.1}, \
         \"static_bytes\": {size}, \"runtime_us\": {runtime_us:.1}, \"bootstrap_bytes\": {}, \"lds_bytes\": {}, \"cds_bytes\": {}}}",
        sizes.0, sizes.1, sizes.2
    )
}

/// (VmRSS, private) in KiB.
fn memory_of(pid: u32) -> (u64, u64) {
    let field = |text: &str, names: &[&str]| -> u64 {
        text.lines()
            .filter(|l| names.iter().any(|n| l.starts_with(n)))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    (
        field(&status, &["VmRSS:"]),
        field(&smaps, &["Private_Clean:", "Private_Dirty:"]),
    )
}

fn idle_memory(bin: &Path, tmp: &Path) -> String {
    let echo = Server::echo();
    let two = |name: &str, defaults: bool| -> (u64, u64) {
        let envoys: Vec<Envoy> = (0..2)
            .map(|i| {
                let dir = tmp.join(format!("mem-{name}-{i}"));
                let g = GroupProxy {
                    envoy_bin: bin.to_path_buf(),
                    ..proxy(&format!("{name}{i}"), &dir, demo_network(echo.port))
                };
                let mut launch = envoy::prepare(&g).unwrap();
                if defaults {
                    launch = envoy_defaults(&launch, &dir);
                }
                let mut e = Envoy::start(&launch, dir.join("envoy.log"));
                e.wait_ready();
                e
            })
            .collect();
        memory_of(envoys[1].pid())
    };
    let (ours_rss, ours_private) = two("ours", false);
    let (def_rss, def_private) = two("defaults", true);
    format!(
        "{{\"upstreams\": 2, \"ours\": {{\"flags\": \"--concurrency 1 --disable-hot-restart\", \"rss_kib\": {ours_rss}, \"private_kib\": {ours_private}}}, \
         \"envoy_defaults\": {{\"flags\": \"--use-dynamic-base-id (concurrency = {} hardware threads)\", \"rss_kib\": {def_rss}, \"private_kib\": {def_private}}}}}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    )
}

const STALLED_CONNECTIONS: usize = 50;

/// RSS of one Envoy while STALLED_CONNECTIONS app connections push up to
/// 8 MiB each towards an upstream that accepts and never reads.
fn stalled_memory(bin: &Path, tmp: &Path) -> String {
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_port = sink.local_addr().unwrap().port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for c in sink.incoming().flatten() {
            keep.lock().unwrap().push(c); // accepted, never read
        }
    });
    let measure = |name: &str, defaults: bool| -> u64 {
        let dir = tmp.join(format!("stalled-{name}"));
        let port = free_port();
        let network = plain_network(vec![upstream(
            "sink",
            port,
            &format!("127.0.0.1:{sink_port}"),
            Protocol::Tcp,
            false,
        )]);
        let g = GroupProxy {
            envoy_bin: bin.to_path_buf(),
            ..proxy(name, &dir, network)
        };
        let mut launch = envoy::prepare(&g).unwrap();
        if defaults {
            launch = envoy_defaults(&launch, &dir);
        }
        let mut e = Envoy::start(&launch, dir.join("envoy.log"));
        e.wait_ready();
        let pushers: Vec<_> = (0..STALLED_CONNECTIONS)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut s = connect(port).unwrap();
                    s.set_write_timeout(Some(Duration::from_millis(300))).unwrap();
                    let chunk = vec![b'x'; 64 * 1024];
                    let mut sent = 0;
                    while sent < 8 << 20 {
                        match std::io::Write::write(&mut s, &chunk) {
                            Ok(n) => sent += n,
                            Err(_) => break, // back-pressure reached the app
                        }
                    }
                    s
                })
            })
            .collect();
        let conns: Vec<_> = pushers.into_iter().map(|p| p.join().unwrap()).collect();
        let rss = memory_of(e.pid()).0;
        drop(conns);
        rss
    };
    let ours = measure("ours", false);
    let defaults = measure("defaults", true);
    held.lock().unwrap().clear();
    format!(
        "{{\"connections\": {STALLED_CONNECTIONS}, \"ours_32k_buffers_rss_kib\": {ours}, \"envoy_default_1m_buffers_rss_kib\": {defaults}}}"
    )
}

/// The same group with Envoy's defaults: no overload manager, no buffer
/// limits, workers = hardware threads, hot restart on (dynamic base id so
/// two can run).
fn envoy_defaults(launch: &Launch, dir: &Path) -> Launch {
    let strip = |path: &Path, f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
    };
    strip(&dir.join("envoy.json"), &|v| {
        v.as_object_mut().unwrap().remove("overload_manager");
    });
    for file in ["xds/lds.json", "xds/cds.json"] {
        strip(&dir.join(file), &|v| {
            for r in v["resources"].as_array_mut().unwrap() {
                r.as_object_mut().unwrap().remove("per_connection_buffer_limit_bytes");
            }
        });
    }
    Launch {
        argv: vec![
            launch.argv[0].clone(),
            "-c".into(),
            dir.join("envoy.json").to_string_lossy().into_owned(),
            "--use-dynamic-base-id".into(),
        ],
        admin_socket: launch.admin_socket.clone(),
    }
}

fn demo_network(echo_port: u16) -> NetworkConfig {
    plain_network(vec![
        upstream(
            "db",
            free_port(),
            &format!("127.0.0.1:{echo_port}"),
            Protocol::Tcp,
            false,
        ),
        upstream(
            "api",
            free_port(),
            &format!("127.0.0.1:{echo_port}"),
            Protocol::Http,
            false,
        ),
    ])
}

/// p50/p99 of 10,000 round trips on one connection to `port`, in µs.
fn round_trips(port: u16) -> (f64, f64) {
    let mut s = connect(port).unwrap();
    s.set_nodelay(true).unwrap();
    let msg = [7u8; 64];
    for _ in 0..200 {
        roundtrip(&mut s, &msg).unwrap(); // warm up
    }
    let mut times: Vec<Duration> = (0..ROUND_TRIPS)
        .map(|_| {
            let t = Instant::now();
            roundtrip(&mut s, &msg).unwrap();
            t.elapsed()
        })
        .collect();
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)].as_secs_f64() * 1e6;
    (at(0.50), at(0.99))
}

fn latencies(bin: &Path, tmp: &Path) -> String {
    let echo = Server::echo();
    let direct = round_trips(echo.port);

    let plain_port = free_port();
    let g = GroupProxy {
        envoy_bin: bin.to_path_buf(),
        ..proxy(
            "plain",
            &tmp.join("lat-plain"),
            plain_network(vec![upstream(
                "db",
                plain_port,
                &format!("127.0.0.1:{}", echo.port),
                Protocol::Tcp,
                false,
            )]),
        )
    };
    let _plain = Envoy::run(&g);
    let plain = round_trips(plain_port);

    // mTLS: robot Envoy → server Envoy (inbound, RBAC) → echo.
    let ca = Ca::new(tmp, "example.org");
    let server_id = "spiffe://example.org/server";
    let robot_id = "spiffe://example.org/robot";
    let inbound_port = free_port();
    let server = GroupProxy {
        envoy_bin: bin.to_path_buf(),
        ..proxy(
            "server",
            &tmp.join("lat-server"),
            NetworkConfig {
                tls_files: Some(ca.files(&ca.leaf("server", server_id, 1))),
                spiffe: Some(spiffe("example.org", None)),
                ..Default::default()
            },
        )
    };
    let extras = ProxyExtras {
        inbound: vec![Inbound {
            name: "api".into(),
            port: inbound_port.into(),
            target_port: echo.port.into(),
            address: Some("127.0.0.1".into()),
            allowed_spiffe_ids: vec![robot_id.into()],
            spiffe: None,
        }],
        ..Default::default()
    };
    let launch = envoy::prepare_with(&server, &extras).unwrap();
    let mut server_envoy = Envoy::start(&launch, tmp.join("lat-server/envoy.log"));
    server_envoy.wait_ready();
    let mtls_port = free_port();
    let robot = GroupProxy {
        envoy_bin: bin.to_path_buf(),
        ..proxy(
            "robot",
            &tmp.join("lat-robot"),
            NetworkConfig {
                tls_files: Some(ca.files(&ca.leaf("robot", robot_id, 2))),
                spiffe: Some(spiffe("example.org", None)),
                upstreams: vec![Upstream {
                    spiffe_id: Some(server_id.into()),
                    ..upstream(
                        "db",
                        mtls_port,
                        &format!("localhost:{inbound_port}"),
                        Protocol::Tcp,
                        true,
                    )
                }],
                ..Default::default()
            },
        )
    };
    let _robot = Envoy::run(&robot);
    let mtls = round_trips(mtls_port);

    let fmt = |(p50, p99): (f64, f64)| format!("{{\"p50\": {p50:.1}, \"p99\": {p99:.1}}}");
    format!(
        "{{\"round_trips\": {ROUND_TRIPS}, \"bytes\": 64, \"direct\": {}, \"proxy_plain\": {}, \
         \"proxy_mtls_two_envoys\": {}, \"added_p50_plain\": {:.1}, \"added_p50_mtls\": {:.1}}}",
        fmt(direct),
        fmt(plain),
        fmt(mtls),
        plain.0 - direct.0,
        mtls.0 - direct.0
    )
}
