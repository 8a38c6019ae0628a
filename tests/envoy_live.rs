//! The runtime form, live: a real Envoy per group on 127.0.0.1 high ports,
//! a plaintext app on one side and real servers on the other. Skips (with a
//! message) only when `envoy` is not on PATH.

mod common;
mod envoy_fixtures;

use common::wait_for;
use envoy_fixtures::*;
use k8s4r::api::Protocol;
use k8s4r::envoy::{self, EnvoyError, GroupProxy};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

fn group(name: &str, dir: &Path, envoy_bin: &Path, upstreams: Vec<k8s4r::api::Upstream>) -> GroupProxy {
    GroupProxy {
        envoy_bin: envoy_bin.to_path_buf(),
        ..proxy(name, dir, plain_network(upstreams))
    }
}

/// A group `name` whose one tcp upstream `db` (on the returned local
/// port) is a fresh echo server.
fn echo_group(bin: &Path, tmp: &Path, name: &str) -> (Server, u16, GroupProxy) {
    let echo = Server::echo();
    let port = free_port();
    let g = group(
        name,
        &tmp.join(name),
        bin,
        vec![upstream(
            "db",
            port,
            &format!("127.0.0.1:{}", echo.port),
            Protocol::Tcp,
            false,
        )],
    );
    (echo, port, g)
}

#[test]
fn plaintext_tcp_http_and_grpc_through_envoy() {
    let Some(bin) = envoy_or_skip("plaintext_tcp_http_and_grpc_through_envoy") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let echo = Server::echo();
    let web = Server::http();
    let h2 = H2Server::start(&bin, tmp.path());
    let (tcp_port, http_port, grpc_port) = (free_port(), free_port(), free_port());
    let g = group(
        "plain",
        &tmp.path().join("plain"),
        &bin,
        vec![
            upstream(
                "db",
                tcp_port,
                &format!("127.0.0.1:{}", echo.port),
                Protocol::Tcp,
                false,
            ),
            upstream(
                "api",
                http_port,
                &format!("localhost:{}", web.port),
                Protocol::Http,
                false,
            ),
            upstream(
                "rpc",
                grpc_port,
                &format!("127.0.0.1:{}", h2.port),
                Protocol::Grpc,
                false,
            ),
        ],
    );
    let _envoy = Envoy::run(&g);

    let msg = b"SELECT 1; -- through the group's proxy";
    assert_eq!(echo_through(tcp_port, msg).unwrap(), msg);

    let (status, body) = http_get(http_port, "/v1/status").unwrap();
    assert_eq!(status, 200, "{body}");
    // The upstream sees its own name, not the app's 127.0.0.1:<localPort>.
    assert_eq!(body, "host=localhost;path=/v1/status");

    // The app speaks HTTP/1.1; the server accepts HTTP/2 only: a 200 proves
    // the grpc upstream leg is HTTP/2.
    let (status, body) = http_get(grpc_port, "/pkg.Service/Method").unwrap();
    assert_eq!((status, body.as_str()), (200, "h2 only"));

    // gRPC apps speak HTTP/2 without TLS (h2c, prior knowledge) to the
    // proxy; curl plays such an app when it is installed.
    let curl = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--http2-prior-knowledge"])
        .arg(format!("http://127.0.0.1:{grpc_port}/pkg.Service/Method"))
        .output();
    match curl {
        Ok(out) => {
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(String::from_utf8_lossy(&out.stdout), "h2 only");
        }
        Err(_) => eprintln!("note: curl not found, h2c from the app side not exercised"),
    }
}

#[test]
fn admin_is_a_private_unix_socket_and_flags_avoid_collisions() {
    let Some(bin) = envoy_or_skip("admin_is_a_private_unix_socket_and_flags_avoid_collisions") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_echo, port, g) = echo_group(&bin, tmp.path(), "admin");
    let launch = envoy::prepare(&g).unwrap();
    assert_eq!(launch.admin_socket, g.dir.join("admin/admin.sock"));
    for flag in ["--disable-hot-restart", "--concurrency"] {
        assert!(launch.argv.iter().any(|a| a == flag), "{:?}", launch.argv);
    }
    let mut e = Envoy::start(&launch, g.dir.join("envoy.log"));
    e.wait_ready();
    let meta = std::fs::metadata(&launch.admin_socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let info = envoy::admin::get(&launch.admin_socket, "/server_info").unwrap();
    assert_eq!(info.status, 200);
    assert!(info.body.contains("\"state\": \"LIVE\""), "{}", info.body);
    assert!(info.body.contains("\"concurrency\": 1"), "{}", info.body);
    // No TCP listener besides the app's port: nothing on Envoy's classic 9901/19000.
    let listeners = envoy::admin::get(&launch.admin_socket, "/listeners").unwrap().body;
    assert_eq!(listeners.trim(), format!("out-db::127.0.0.1:{port}"));
}

#[test]
fn two_groups_on_one_machine_run_side_by_side() {
    let Some(bin) = envoy_or_skip("two_groups_on_one_machine_run_side_by_side") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let echo = Server::echo();
    let (pa, pb) = (free_port(), free_port());
    let target = format!("127.0.0.1:{}", echo.port);
    let a = group(
        "a",
        &tmp.path().join("a"),
        &bin,
        vec![upstream("db", pa, &target, Protocol::Tcp, false)],
    );
    let b = group(
        "b",
        &tmp.path().join("b"),
        &bin,
        vec![upstream("db", pb, &target, Protocol::Tcp, false)],
    );
    let ea = Envoy::run(&a);
    let eb = Envoy::run(&b);
    assert_ne!(ea.pid(), eb.pid());
    assert_eq!(echo_through(pa, b"a").unwrap(), b"a");
    assert_eq!(echo_through(pb, b"b").unwrap(), b"b");
    assert!(!ea.log_text().contains("unable to bind domain socket"));
    assert!(!eb.log_text().contains("unable to bind domain socket"));
}

#[test]
fn live_update_adds_an_upstream_without_restarting_envoy() {
    let Some(bin) = envoy_or_skip("live_update_adds_an_upstream_without_restarting_envoy") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let echo = Server::echo();
    let web = Server::http();
    let (pa, pb) = (free_port(), free_port());
    let mut g = group(
        "live",
        &tmp.path().join("live"),
        &bin,
        vec![upstream(
            "db",
            pa,
            &format!("127.0.0.1:{}", echo.port),
            Protocol::Tcp,
            false,
        )],
    );
    let e = Envoy::run(&g);
    let pid = e.pid();
    let mut long_lived = connect(pa).unwrap();
    assert_eq!(roundtrip(&mut long_lived, b"before").unwrap(), b"before");
    let listeners_before = e.stat("listener_manager.listener_create_success");

    g.network.upstreams.push(upstream(
        "api",
        pb,
        &format!("127.0.0.1:{}", web.port),
        Protocol::Http,
        false,
    ));
    envoy::update(&g).unwrap();

    let (status, body) = wait_for("the new upstream answers", READY, || {
        http_get(pb, "/new").ok().filter(|(s, _)| *s == 200)
    });
    assert_eq!((status, body.as_str()), (200, "host=127.0.0.1;path=/new"));
    assert_eq!(e.pid(), pid);
    assert_eq!(e.stat("listener_manager.listener_create_success"), listeners_before + 1);
    assert_eq!(e.stat("listener_manager.lds.update_rejected"), 0);
    // The unchanged listener was left alone: its connection still works.
    assert_eq!(roundtrip(&mut long_lived, b"after").unwrap(), b"after");
    assert_eq!(e.stat("listener_manager.listener_modified"), 0);

    // An update with nothing new writes nothing and changes nothing.
    let before = std::fs::metadata(g.dir.join("xds/lds.json"))
        .unwrap()
        .modified()
        .unwrap();
    envoy::update(&g).unwrap();
    assert_eq!(
        std::fs::metadata(g.dir.join("xds/lds.json"))
            .unwrap()
            .modified()
            .unwrap(),
        before
    );

    // Removing the new upstream takes its listener away, live.
    g.network.upstreams.pop();
    envoy::update(&g).unwrap();
    wait_for("the removed listener is gone", READY, || {
        (e.stat("listener_manager.total_listeners_active") == 1).then_some(())
    });
    assert_eq!(roundtrip(&mut long_lived, b"still").unwrap(), b"still");
    assert_eq!(e.pid(), pid);
}

#[test]
fn a_busy_local_port_fails_early_naming_port_and_owner() {
    let Some(bin) = envoy_or_skip("a_busy_local_port_fails_early_naming_port_and_owner") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let g = group(
        "busy",
        &tmp.path().join("busy"),
        &bin,
        vec![upstream("db", port, "127.0.0.1:1", Protocol::Tcp, false)],
    );
    let err = envoy::prepare(&g).unwrap_err();
    assert!(matches!(err, EnvoyError::Port(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("port {port}")), "{msg}");
    assert!(msg.contains("upstream \"db\""), "{msg}");
    assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
}

#[test]
fn after_kill_9_prepare_and_start_bring_the_proxy_back() {
    let Some(bin) = envoy_or_skip("after_kill_9_prepare_and_start_bring_the_proxy_back") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_echo, port, g) = echo_group(&bin, tmp.path(), "crash");
    let mut first = Envoy::run(&g);
    Command::new("kill")
        .args(["-9", &first.pid().to_string()])
        .status()
        .unwrap();
    first.child.wait().unwrap();
    // The stale admin socket is still there; prepare clears it.
    assert!(g.dir.join("admin/admin.sock").exists());
    let second = Envoy::run(&g);
    assert_ne!(second.pid(), first.pid());
    assert_eq!(echo_through(port, b"back").unwrap(), b"back");
}

/// Not documented by Envoy, so pinned here: when an upstream's target
/// changes (same listener, changed cluster), new connections go to the new
/// target at once and a connection already open keeps working on the old one.
#[test]
fn changing_an_upstream_target_keeps_open_connections() {
    let Some(bin) = envoy_or_skip("changing_an_upstream_target_keeps_open_connections") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (old, new) = (Server::echo(), Server::echo());
    let port = free_port();
    let mut g = group(
        "retarget",
        &tmp.path().join("retarget"),
        &bin,
        vec![upstream(
            "db",
            port,
            &format!("127.0.0.1:{}", old.port),
            Protocol::Tcp,
            false,
        )],
    );
    let e = Envoy::run(&g);
    let mut open = connect(port).unwrap();
    assert_eq!(roundtrip(&mut open, b"1").unwrap(), b"1");

    g.network.upstreams[0].upstream = format!("127.0.0.1:{}", new.port);
    envoy::update(&g).unwrap();
    wait_for("the cluster update is applied", READY, || {
        (e.stat("cluster_manager.cds.update_success") >= 2).then_some(())
    });
    assert_eq!(e.stat("listener_manager.listener_modified"), 0);
    let before = new.accepted();
    assert_eq!(echo_through(port, b"2").unwrap(), b"2");
    assert!(new.accepted() > before, "a new connection reaches the new target");
    assert_eq!(
        roundtrip(&mut open, b"3").unwrap(),
        b"3",
        "the open connection survives"
    );
}

#[test]
fn upstream_health_is_reported_from_envoy_health_checks() {
    let Some(bin) = envoy_or_skip("upstream_health_is_reported_from_envoy_health_checks") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let echo = Server::echo();
    // A port nobody listens on: taken from the kernel, then released.
    let closed = free_port();
    let g = group(
        "health",
        &tmp.path().join("health"),
        &bin,
        vec![
            upstream(
                "up",
                free_port(),
                &format!("127.0.0.1:{}", echo.port),
                Protocol::Tcp,
                false,
            ),
            upstream(
                "down",
                free_port(),
                &format!("127.0.0.1:{closed}"),
                Protocol::Tcp,
                false,
            ),
        ],
    );
    let _e = Envoy::run(&g);
    // Cluster initialisation waits for the first health check, so /ready
    // implies a verdict for every host.
    let mut health = envoy::upstream_health(&g).unwrap();
    health.sort_by(|a, b| a.upstream.cmp(&b.upstream));
    let summary: Vec<(&str, bool)> = health.iter().map(|h| (h.upstream.as_str(), h.healthy)).collect();
    assert_eq!(summary, [("down", false), ("up", true)], "{health:?}");
    assert!(health[0].flags.contains("failed_active_hc"), "{health:?}");
}

#[test]
fn changed_options_are_applied_to_resources_and_ask_for_a_restart() {
    let Some(bin) = envoy_or_skip("changed_options_are_applied_to_resources_and_ask_for_a_restart") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let g = group(
        "opts",
        &tmp.path().join("opts"),
        &bin,
        vec![upstream("db", free_port(), "127.0.0.1:1", Protocol::Tcp, false)],
    );
    envoy::prepare(&g).unwrap();
    envoy::update(&g).unwrap();
    let extras = envoy::ProxyExtras {
        options: envoy::ProxyOptions {
            max_heap_bytes: 32 << 20,
            buffer_limit_bytes: 16 << 10,
            ..Default::default()
        },
        ..Default::default()
    };
    let err = envoy::update_with(&g, &extras).unwrap_err().to_string();
    assert!(err.contains("needs an Envoy restart"), "{err}");
    let lds = std::fs::read_to_string(g.dir.join("xds/lds.json")).unwrap();
    assert!(lds.contains("\"per_connection_buffer_limit_bytes\": 16384"), "{lds}");
}

#[test]
fn a_deep_group_directory_still_gets_an_admin_socket() {
    let Some(bin) = envoy_or_skip("a_deep_group_directory_still_gets_an_admin_socket") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let echo = Server::echo();
    // Two maximal DNS-label names, as long job and group names would give.
    let dir = tmp.path().join("a".repeat(63)).join("b".repeat(63)).join("envoy");
    let port = free_port();
    let target = format!("127.0.0.1:{}", echo.port);
    let g = group(
        "deep",
        &dir,
        &bin,
        vec![upstream("db", port, &target, Protocol::Tcp, false)],
    );
    let launch = envoy::prepare(&g).unwrap();
    assert!(!launch.admin_socket.starts_with(&dir));
    assert!(launch.admin_socket.as_os_str().len() <= envoy::config::MAX_SOCKET_PATH);
    // The socket's own directory: the agent's, writable by the proxy's
    // group and sticky; the shared parent: the agent's, 0711.
    let parent = launch.admin_socket.parent().unwrap();
    assert_eq!(std::fs::metadata(parent).unwrap().permissions().mode() & 0o7777, 0o1770);
    let shared = parent.parent().unwrap();
    assert_eq!(std::fs::metadata(shared).unwrap().permissions().mode() & 0o777, 0o711);
    let mut e = Envoy::start(&launch, dir.join("envoy.log"));
    e.wait_ready();
    // Every helper finds the same socket from the directory alone.
    assert_eq!(envoy::upstream_health(&g).unwrap().len(), 1);
    assert_eq!(echo_through(port, b"deep").unwrap(), b"deep");
    drop(e);
    envoy::remove(&g).unwrap();
    assert!(!launch.admin_socket.exists());
    assert!(!dir.join("envoy.json").exists() && !dir.join("xds").exists());
}

/// A port taken after `prepare` checked it (a race with another program):
/// Envoy itself still says LIVE, but `is_ready` must not, and the reasons
/// name the upstream, the port and who holds it.
#[test]
fn a_port_taken_after_prepare_keeps_the_proxy_not_ready_and_named() {
    let Some(bin) = envoy_or_skip("a_port_taken_after_prepare_keeps_the_proxy_not_ready_and_named") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let echo = Server::echo();
    let (free, raced) = (free_port(), free_port());
    let target = format!("127.0.0.1:{}", echo.port);
    let g = group(
        "race",
        &tmp.path().join("race"),
        &bin,
        vec![
            upstream("ok", free, &target, Protocol::Tcp, false),
            upstream("raced", raced, &target, Protocol::Tcp, false),
        ],
    );
    let launch = envoy::prepare(&g).unwrap();
    let thief = std::net::TcpListener::bind(("127.0.0.1", raced)).unwrap();
    let e = Envoy::start(&launch, g.dir.join("envoy.log"));
    wait_for("Envoy LIVE with one listener", READY, || {
        let live = envoy::admin::get(&launch.admin_socket, "/ready").is_ok_and(|r| r.status == 200);
        (live && e.stat("listener_manager.lds.update_rejected") >= 1).then_some(())
    });
    assert!(!envoy::is_ready(&launch.admin_socket));
    let reasons = envoy::not_ready_reasons(&g);
    let named = reasons
        .iter()
        .find(|r| r.contains("upstream \"raced\""))
        .unwrap_or_else(|| panic!("{reasons:?}"));
    assert!(named.contains(&raced.to_string()), "{named}");
    assert!(named.contains(&format!("pid {}", std::process::id())), "{named}");
    // The other upstream works meanwhile.
    assert_eq!(echo_through(free, b"ok").unwrap(), b"ok");
    drop(thief);
}
