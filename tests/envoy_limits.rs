//! What a network peer can and cannot do to a group's proxy: a flood of
//! idle connections to an inbound port must not starve the apps' loopback
//! proxies (issue 22, the review's High finding). Real Envoy on loopback.

mod common;
mod envoy_fixtures;

use common::wait_for;
use envoy_fixtures::*;
use k8s4r::api::Protocol;
use k8s4r::envoy::{self, GroupProxy, Inbound, ProxyExtras, ProxyOptions};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// More connections than the overload manager's global budget (1,024).
const FLOOD: usize = 1_100;

/// The test holds `FLOOD` sockets at once: raise the soft fd limit to what
/// it needs (within the hard limit); Envoy inherits it.
fn raise_fd_limit(want: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current.is_some_and(|c| c < want) {
        l.current = Some(l.maximum.map_or(want, |m| m.min(want)));
        setrlimit(Resource::Nofile, l).expect("raise RLIMIT_NOFILE");
    }
    let now = getrlimit(Resource::Nofile).current;
    assert!(
        now.is_none_or(|c| c >= want),
        "fd limit {now:?} < {want}: cannot run the flood"
    );
}

#[test]
fn an_inbound_flood_does_not_starve_the_apps_outbound_proxy() {
    let Some(bin) = envoy_or_skip("an_inbound_flood_does_not_starve_the_apps_outbound_proxy") else {
        return;
    };
    raise_fd_limit(4096);
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new(tmp.path(), "example.org");
    let leaf = ca.leaf("robot", "spiffe://example.org/robot", 1);
    let echo = Server::echo();
    let (out_port, in_port) = (free_port(), free_port());
    let mut network = plain_network(vec![upstream(
        "db",
        out_port,
        &format!("127.0.0.1:{}", echo.port),
        Protocol::Tcp,
        false,
    )]);
    network.tls_files = Some(ca.files(&leaf));
    let g = GroupProxy {
        envoy_bin: bin.clone(),
        ..proxy("flood", &tmp.path().join("flood"), network)
    };
    let options = ProxyOptions {
        // Short, so the test sees idle peers dropped within its deadline.
        inbound_handshake_timeout_s: 3,
        ..Default::default()
    };
    let limit = options.inbound_max_connections;
    let extras = ProxyExtras {
        inbound: vec![Inbound {
            name: "api".into(),
            port: in_port.into(),
            target_port: echo.port.into(),
            address: Some("127.0.0.1".into()),
            allowed_spiffe_ids: vec!["spiffe://example.org/peer".into()],
            spiffe: None,
        }],
        options,
    };
    let launch = envoy::prepare_with(&g, &extras).unwrap();
    let mut e = Envoy::start(&launch, g.dir.join("envoy.log"));
    e.wait_ready();

    // The app's long-lived connection, open before the flood.
    let mut app = connect(out_port).unwrap();
    assert_eq!(roundtrip(&mut app, b"before").unwrap(), b"before");

    let started = Instant::now();
    let mut flood: Vec<TcpStream> = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        let s = TcpStream::connect_timeout(&([127, 0, 0, 1], in_port).into(), IO)
            .unwrap_or_else(|err| panic!("flood connection {i}: {err}"));
        flood.push(s);
    }
    // Envoy has taken every connect off the backlog: its own limit closed
    // the ones past it, the rest wait in their handshake.
    wait_for("the flood accepted by Envoy", READY, || {
        let seen =
            e.stat("listener.in-api.downstream_cx_total") + e.stat("listener.in-api.downstream_global_cx_overflow");
        (seen >= FLOOD as u64).then_some(())
    });
    // Meanwhile the app's proxy keeps forwarding: new connections and the
    // one it already had.
    for i in 0..50 {
        let msg = format!("during {i}");
        assert_eq!(echo_through(out_port, msg.as_bytes()).unwrap(), msg.as_bytes());
    }
    assert_eq!(roundtrip(&mut app, b"still").unwrap(), b"still");
    assert_eq!(e.stat("listener.out-db.downstream_global_cx_overflow"), 0);
    assert_eq!(e.stat("listener.in-api.downstream_global_cx_overflow"), 0);

    let active = e.stat("connection_limit.in-api.active_connections");
    assert!(
        active <= u64::from(limit),
        "{active} inbound connections held, limit {limit}"
    );
    assert!(
        e.stat("connection_limit.in-api.limited_connections") >= (FLOOD as u64).saturating_sub(limit.into()),
        "connections past the inbound limit are refused"
    );

    // Idle peers never finish a handshake: dropped after its timeout.
    wait_for("idle inbound peers dropped after the handshake timeout", READY, || {
        (e.stat("listener.in-api.downstream_cx_transport_socket_connect_timeout") >= 1
            && e.stat("connection_limit.in-api.active_connections") == 0)
            .then_some(())
    });
    // Refused peers are in the failures-only access log; the app's
    // connections (outbound, never refused) are not.
    let log = e.log_text();
    assert!(log.contains("inbound in-api: refused 127.0.0.1:"), "{log}");
    assert!(!log.contains("out-db"), "{log}");
    drop(flood);
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    e.wait_ready();
}
