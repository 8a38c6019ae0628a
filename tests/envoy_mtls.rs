//! mTLS with SPIFFE identities, end to end with real Envoys: the app speaks
//! plaintext to the robot-side Envoy, which does mTLS to a server-side
//! Envoy (our inbound listener: client certificate required, RBAC on the
//! SPIFFE ID) in front of a real echo server. Certificates come from
//! openssl; the SPIRE path gets them from a gRPC SDS server on a unix
//! socket. Skips (with a message) only when `envoy` is not on PATH.

mod common;
mod envoy_fixtures;

use common::wait_for;
use envoy_fixtures::sds::{BundleForm, SdsServer};
use envoy_fixtures::*;
use k8s4r::api::{NetworkConfig, Protocol, TlsFiles, Upstream};
use k8s4r::envoy::{self, GroupProxy, Inbound, ProxyExtras};
use std::path::Path;

const SERVER_ID: &str = "spiffe://example.org/ns/prod/sa/server";
const ROBOT_ID: &str = "spiffe://example.org/robot/r1";

/// The robot side: one tls upstream to `server_port`, pinned to `peer_id`.
fn robot(bin: &Path, dir: &Path, network: NetworkConfig) -> Envoy {
    let g = GroupProxy {
        envoy_bin: bin.to_path_buf(),
        ..proxy("robot", dir, network)
    };
    Envoy::run(&g)
}

/// The proxy must refuse: the app's connection is closed without an echo.
/// The usual far side: an echo server behind a server-side Envoy that
/// demands a client certificate from a fresh example.org CA (server leaf
/// serial `serial`) and lets only ROBOT_ID in. Bind as `(echo, ca, server)`
/// so the Envoy is dropped before the echo server it fronts.
fn guarded_echo(bin: &Path, tmp: &Path, serial: u32) -> (Server, Ca, ServerSide) {
    let echo = Server::echo();
    let ca = Ca::new(tmp, "example.org");
    let server = ServerSide::start(
        bin,
        &tmp.join("server"),
        ca.files(&ca.leaf("server", SERVER_ID, serial)),
        Some("example.org"),
        &[ROBOT_ID],
        echo.port,
    );
    (echo, ca, server)
}

fn assert_refused(port: u16) {
    let r = echo_through(port, b"secret");
    assert!(r.is_err(), "expected the proxy to refuse, got {r:?}");
}

#[test]
fn files_mtls_right_id_passes_wrong_id_and_wrong_trust_domain_are_refused() {
    let Some(bin) = envoy_or_skip("files_mtls_right_id_passes_wrong_id_and_wrong_trust_domain_are_refused") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let echo = Server::echo();
    let ca = Ca::new(tmp.path(), "example.org");
    let other = Ca::new(tmp.path(), "other.org");
    let server_leaf = ca.leaf("server", SERVER_ID, 10);
    let robot_leaf = ca.leaf("robot", ROBOT_ID, 11);
    let server = ServerSide::start(
        &bin,
        &tmp.path().join("server"),
        ca.files(&server_leaf),
        Some("example.org"),
        &[ROBOT_ID],
        echo.port,
    );
    // An impostor in another trust domain claiming the server's ID.
    let impostor_leaf = other.leaf("server", SERVER_ID, 12);
    let impostor = ServerSide::start(
        &bin,
        &tmp.path().join("impostor"),
        TlsFiles {
            ca_path: ca.cert.to_string_lossy().into_owned(),
            ..other.files(&impostor_leaf)
        },
        Some("example.org"),
        &[ROBOT_ID],
        echo.port,
    );

    let (right, wrong_id, wrong_td) = (free_port(), free_port(), free_port());
    let network = NetworkConfig {
        tls_files: Some(ca.files(&robot_leaf)),
        spiffe: Some(spiffe("example.org", None)),
        upstreams: vec![
            tls_upstream("right", right, server.port, Some(SERVER_ID)),
            tls_upstream(
                "wrong-id",
                wrong_id,
                server.port,
                Some("spiffe://example.org/ns/prod/sa/other"),
            ),
            tls_upstream("wrong-td", wrong_td, impostor.port, Some(SERVER_ID)),
        ],
        ..Default::default()
    };
    let r = robot(&bin, &tmp.path().join("robot"), network);

    let msg = b"plaintext from the app, mTLS on the wire";
    assert_eq!(echo_through(right, msg).unwrap(), msg);
    assert!(server.envoy.stat("in-api.rbac.allowed") >= 1);

    assert_refused(wrong_id);
    assert!(
        r.stat("cluster.out-wrong-id.ssl.fail_verify_san") >= 1,
        "{}",
        r.log_text()
    );

    assert_refused(wrong_td);
    assert!(
        r.stat("cluster.out-wrong-td.ssl.fail_verify_error") >= 1,
        "{}",
        r.log_text()
    );
}

#[test]
fn inbound_rbac_allows_the_listed_id_and_refuses_another() {
    let Some(bin) = envoy_or_skip("inbound_rbac_allows_the_listed_id_and_refuses_another") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (echo, ca, server) = guarded_echo(&bin, tmp.path(), 20);
    // Same CA, valid chain, but an ID the server does not list.
    let intruder_leaf = ca.leaf("intruder", "spiffe://example.org/robot/intruder", 21);
    let port = free_port();
    let network = NetworkConfig {
        tls_files: Some(ca.files(&intruder_leaf)),
        spiffe: Some(spiffe("example.org", None)),
        upstreams: vec![tls_upstream("svc", port, server.port, Some(SERVER_ID))],
        ..Default::default()
    };
    let _r = robot(&bin, &tmp.path().join("intruder"), network);
    assert_refused(port);
    // Refused in the handshake (the allowed IDs are pinned as peer SANs),
    // so the task behind never even sees a connection from the intruder
    // (nor from its proxy's health checks).
    wait_for("the refused handshake is counted", READY, || {
        (server.envoy.stat("listener.in-api.ssl.fail_verify_san") >= 1).then_some(())
    });
    assert_refused(port);
    assert_eq!(echo.accepted(), 0, "a refused peer caused a connection to the task");
    assert_eq!(server.envoy.stat("in-api.rbac.allowed"), 0);

    let robot_leaf = ca.leaf("robot", ROBOT_ID, 22);
    let port = free_port();
    let network = NetworkConfig {
        tls_files: Some(ca.files(&robot_leaf)),
        spiffe: Some(spiffe("example.org", None)),
        upstreams: vec![tls_upstream("svc", port, server.port, Some(SERVER_ID))],
        ..Default::default()
    };
    let _r = robot(&bin, &tmp.path().join("robot"), network);
    assert_eq!(echo_through(port, b"allowed").unwrap(), b"allowed");
    // The app's connection and the robot's active health checks.
    assert!(server.envoy.stat("in-api.rbac.allowed") >= 1);
}

/// The serial number of the SVID Envoy currently holds, from admin /certs.
fn loaded_serials(e: &Envoy) -> String {
    envoy::admin::get(&e.admin, "/certs")
        .map(|r| r.body)
        .unwrap_or_default()
}

#[test]
fn spire_sds_gives_the_svid_and_bundle_and_rotation_needs_no_restart() {
    let Some(bin) = envoy_or_skip("spire_sds_gives_the_svid_and_bundle_and_rotation_needs_no_restart") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_echo, ca, server) = guarded_echo(&bin, tmp.path(), 30);
    let svid = ca.leaf("robot", ROBOT_ID, 0x31);
    let read = |p: &Path| std::fs::read(p).unwrap();
    let spire = SdsServer::spire(&tmp.path().join("agent.sock"), &svid, &ca);

    let (right, wrong) = (free_port(), free_port());
    let network = NetworkConfig {
        spiffe: Some(spiffe("example.org", Some(&spire.socket))),
        upstreams: vec![
            tls_upstream("db", right, server.port, Some(SERVER_ID)),
            tls_upstream("wrong", wrong, server.port, Some("spiffe://example.org/somebody-else")),
        ],
        ..Default::default()
    };
    let r = robot(&bin, &tmp.path().join("robot"), network);
    let pid = r.pid();
    let asked = spire.requested();
    assert!(asked.iter().any(|n| n == "default"), "{asked:?}");
    assert!(asked.iter().any(|n| n == "spiffe://example.org"), "{asked:?}");
    assert_eq!(spire.nacks(), 0);

    assert_eq!(echo_through(right, b"via SPIRE").unwrap(), b"via SPIRE");
    assert_refused(wrong);
    assert!(
        loaded_serials(&r).contains("\"serial_number\": \"31\""),
        "{}",
        loaded_serials(&r)
    );

    // Rotation: the agent pushes a new SVID on the open stream.
    let rotated = ca.leaf_in(
        &{
            let d = tmp.path().join("rotated");
            std::fs::create_dir_all(&d).unwrap();
            d
        },
        ROBOT_ID,
        0x32,
    );
    spire.rotate("default", &read(&rotated.cert), &read(&rotated.key));
    wait_for("Envoy holds the rotated SVID", READY, || {
        loaded_serials(&r).contains("\"serial_number\": \"32\"").then_some(())
    });
    assert_eq!(r.pid(), pid);
    assert_eq!(spire.nacks(), 0);
    assert_eq!(echo_through(right, b"after rotation").unwrap(), b"after rotation");

    // A second group on the same robot shares the one SPIRE agent.
    let port2 = free_port();
    let network2 = NetworkConfig {
        spiffe: Some(spiffe("example.org", Some(&spire.socket))),
        upstreams: vec![tls_upstream("db", port2, server.port, Some(SERVER_ID))],
        ..Default::default()
    };
    let r2 = robot(&bin, &tmp.path().join("robot2"), network2);
    assert_ne!(r2.pid(), r.pid());
    assert_eq!(echo_through(port2, b"group two").unwrap(), b"group two");
}

#[test]
fn two_trust_domains_through_two_spire_agents() {
    let Some(bin) = envoy_or_skip("two_trust_domains_through_two_spire_agents") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let echo = Server::echo();
    let ours = Ca::new(tmp.path(), "example.org");
    let partner = Ca::new(tmp.path(), "partner.net");
    const PARTNER_ID: &str = "spiffe://partner.net/billing";
    let server = ServerSide::start(
        &bin,
        &tmp.path().join("server"),
        ours.files(&ours.leaf("server", SERVER_ID, 40)),
        Some("example.org"),
        &[ROBOT_ID],
        echo.port,
    );
    let partner_server = ServerSide::start(
        &bin,
        &tmp.path().join("partner"),
        partner.files(&partner.leaf("server", PARTNER_ID, 41)),
        Some("partner.net"),
        &["spiffe://partner.net/robot/r1"],
        echo.port,
    );
    let svid = ours.leaf("robot", ROBOT_ID, 42);
    let partner_svid = partner.leaf("robot", "spiffe://partner.net/robot/r1", 43);
    let agent = SdsServer::spire(&tmp.path().join("agent.sock"), &svid, &ours);
    let partner_agent = SdsServer::spire(&tmp.path().join("partner.sock"), &partner_svid, &partner);
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    // A partner.net peer through our own agent: only example.org is trusted.
    let cross = tls_upstream("cross", p3, partner_server.port, None);
    let network = NetworkConfig {
        spiffe: Some(spiffe("example.org", Some(&agent.socket))),
        upstreams: vec![
            tls_upstream("ours", p1, server.port, Some(SERVER_ID)),
            Upstream {
                spiffe: Some(spiffe("partner.net", Some(&partner_agent.socket))),
                ..tls_upstream("partner", p2, partner_server.port, Some(PARTNER_ID))
            },
            cross,
        ],
        ..Default::default()
    };
    let r = robot(&bin, &tmp.path().join("robot"), network);
    assert_eq!(echo_through(p1, b"example.org").unwrap(), b"example.org");
    assert_eq!(echo_through(p2, b"partner.net").unwrap(), b"partner.net");
    assert_refused(p3);
    assert!(agent.requested().iter().any(|n| n == "spiffe://example.org"));
    assert!(partner_agent.requested().iter().any(|n| n == "spiffe://partner.net"));
    assert!(!agent.requested().iter().any(|n| n == "spiffe://partner.net"));
    drop(r);
}

#[test]
fn file_certificates_rotate_without_restart() {
    let Some(bin) = envoy_or_skip("file_certificates_rotate_without_restart") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_echo, ca, server) = guarded_echo(&bin, tmp.path(), 50);
    let robot_leaf = ca.leaf("robot", ROBOT_ID, 0x51);
    let port = free_port();
    let network = NetworkConfig {
        tls_files: Some(ca.files(&robot_leaf)),
        spiffe: Some(spiffe("example.org", None)),
        upstreams: vec![tls_upstream("db", port, server.port, Some(SERVER_ID))],
        ..Default::default()
    };
    let r = robot(&bin, &tmp.path().join("robot"), network);
    let pid = r.pid();
    assert_eq!(echo_through(port, b"v1").unwrap(), b"v1");
    assert!(loaded_serials(&r).contains("\"serial_number\": \"51\""));

    // A new pair made elsewhere, then moved in: key first, certificate
    // last. Envoy re-reads the pair on each move into the watched directory
    // and keeps the old pair until the two match.
    let staging = tmp.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let next = ca.leaf_in(&staging, ROBOT_ID, 0x52);
    std::fs::rename(&next.key, &robot_leaf.key).unwrap();
    std::fs::rename(&next.cert, &robot_leaf.cert).unwrap();
    wait_for("Envoy holds the rotated certificate", READY, || {
        loaded_serials(&r).contains("\"serial_number\": \"52\"").then_some(())
    });
    assert_eq!(r.pid(), pid);
    assert_eq!(echo_through(port, b"v2").unwrap(), b"v2");
}

/// http (ALPN http/1.1) and grpc (ALPN h2, HTTP/2 to an HTTP/2-only
/// server) upstreams over mTLS, the app speaking plain HTTP/1.1.
#[test]
fn http_and_grpc_upstreams_over_mtls() {
    let Some(bin) = envoy_or_skip("http_and_grpc_upstreams_over_mtls") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let web = Server::http();
    let h2 = H2Server::start(&bin, tmp.path());
    let ca = Ca::new(tmp.path(), "example.org");
    let server_files = ca.files(&ca.leaf("server", SERVER_ID, 60));
    let web_side = ServerSide::start(
        &bin,
        &tmp.path().join("web-side"),
        server_files.clone(),
        Some("example.org"),
        &[ROBOT_ID],
        web.port,
    );
    let h2_side = ServerSide::start(
        &bin,
        &tmp.path().join("h2-side"),
        server_files,
        Some("example.org"),
        &[ROBOT_ID],
        h2.port,
    );
    let (http_port, grpc_port) = (free_port(), free_port());
    let network = NetworkConfig {
        tls_files: Some(ca.files(&ca.leaf("robot", ROBOT_ID, 61))),
        spiffe: Some(spiffe("example.org", None)),
        upstreams: vec![
            Upstream {
                protocol: Some(Protocol::Http),
                ..tls_upstream("api", http_port, web_side.port, Some(SERVER_ID))
            },
            Upstream {
                protocol: Some(Protocol::Grpc),
                ..tls_upstream("rpc", grpc_port, h2_side.port, Some(SERVER_ID))
            },
        ],
        ..Default::default()
    };
    let _r = robot(&bin, &tmp.path().join("robot"), network);
    let (status, body) = http_get(http_port, "/metrics").unwrap();
    assert_eq!((status, body.as_str()), (200, "host=localhost;path=/metrics"));
    let (status, body) = http_get(grpc_port, "/pkg.Service/Call").unwrap();
    assert_eq!((status, body.as_str()), (200, "h2 only"));
}

/// A live update can bring in SPIRE: the SDS cluster and the mTLS upstream
/// arrive through CDS/LDS files, no restart, and the plain upstream's open
/// connection is untouched.
#[test]
fn live_update_adds_a_spire_mtls_upstream_without_restart() {
    let Some(bin) = envoy_or_skip("live_update_adds_a_spire_mtls_upstream_without_restart") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (echo, ca, server) = guarded_echo(&bin, tmp.path(), 70);
    let svid = ca.leaf("robot", ROBOT_ID, 71);
    let spire = SdsServer::spire(&tmp.path().join("agent.sock"), &svid, &ca);
    let (plain_port, mtls_port) = (free_port(), free_port());
    let mut g = GroupProxy {
        envoy_bin: bin.clone(),
        ..proxy(
            "robot",
            &tmp.path().join("robot"),
            plain_network(vec![upstream(
                "plain",
                plain_port,
                &format!("127.0.0.1:{}", echo.port),
                Protocol::Tcp,
                false,
            )]),
        )
    };
    let e = Envoy::run(&g);
    let pid = e.pid();
    let mut open = connect(plain_port).unwrap();
    assert_eq!(roundtrip(&mut open, b"before").unwrap(), b"before");

    g.network.spiffe = Some(spiffe("example.org", Some(&spire.socket)));
    g.network
        .upstreams
        .push(tls_upstream("secure", mtls_port, server.port, Some(SERVER_ID)));
    envoy::update(&g).unwrap();
    let echoed = wait_for("the new mTLS upstream answers", READY, || {
        echo_through(mtls_port, b"now with mTLS").ok()
    });
    assert_eq!(echoed, b"now with mTLS");
    assert_eq!(e.pid(), pid);
    assert_eq!(roundtrip(&mut open, b"after").unwrap(), b"after");
    assert_eq!(spire.nacks(), 0);
}

/// Robots boot in any order: an Envoy started before its SPIRE agent says
/// why it is not ready, then becomes ready by itself once the agent is up.
#[test]
fn envoy_waits_for_a_late_spire_agent_and_names_it_meanwhile() {
    let Some(bin) = envoy_or_skip("envoy_waits_for_a_late_spire_agent_and_names_it_meanwhile") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_echo, ca, server) = guarded_echo(&bin, tmp.path(), 80);
    let socket = tmp.path().join("late-agent.sock");
    let port = free_port();
    let g = GroupProxy {
        envoy_bin: bin.clone(),
        ..proxy(
            "robot",
            &tmp.path().join("robot"),
            NetworkConfig {
                spiffe: Some(spiffe("example.org", Some(&socket))),
                upstreams: vec![tls_upstream("db", port, server.port, Some(SERVER_ID))],
                ..Default::default()
            },
        )
    };
    let launch = envoy::prepare(&g).unwrap();
    let mut e = Envoy::start(&launch, g.dir.join("envoy.log"));
    let reasons = wait_for("a reason naming the SPIRE socket", READY, || {
        let r = envoy::not_ready_reasons(&g);
        r.iter().any(|m| m.contains("late-agent.sock")).then_some(r)
    });
    assert!(reasons.iter().any(|m| m.contains("upstream \"db\"")), "{reasons:?}");
    assert!(!envoy::is_ready(&launch.admin_socket));

    let svid = ca.leaf("robot", ROBOT_ID, 81);
    let _spire = SdsServer::spire(&socket, &svid, &ca);
    e.wait_ready();
    assert_eq!(echo_through(port, b"late but fine").unwrap(), b"late but fine");
}

/// SPIRE with `disable_spiffe_cert_validation` sends a plain `trusted_ca`:
/// the configured SPIFFE ID check must hold just the same.
#[test]
fn spire_bundles_as_plain_trusted_ca_still_check_the_id() {
    let Some(bin) = envoy_or_skip("spire_bundles_as_plain_trusted_ca_still_check_the_id") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_echo, ca, server) = guarded_echo(&bin, tmp.path(), 90);
    let svid = ca.leaf("robot", ROBOT_ID, 91);
    let read = |p: &Path| std::fs::read(p).unwrap();
    let spire = SdsServer::start_with(
        &tmp.path().join("agent.sock"),
        "default",
        (&read(&svid.cert), &read(&svid.key)),
        &[("example.org", &read(&ca.cert))],
        BundleForm::TrustedCa,
    );
    let (right, wrong) = (free_port(), free_port());
    let network = NetworkConfig {
        spiffe: Some(spiffe("example.org", Some(&spire.socket))),
        upstreams: vec![
            tls_upstream("db", right, server.port, Some(SERVER_ID)),
            tls_upstream("wrong", wrong, server.port, Some("spiffe://example.org/somebody-else")),
        ],
        ..Default::default()
    };
    let r = robot(&bin, &tmp.path().join("robot"), network);
    assert_eq!(echo_through(right, b"trusted_ca").unwrap(), b"trusted_ca");
    assert_refused(wrong);
    assert!(r.stat("cluster.out-wrong.ssl.fail_verify_san") >= 1, "{}", r.log_text());
    assert_eq!(spire.nacks(), 0);
}

/// Both sides on SPIRE: the server-side inbound listener gets its SVID and
/// bundle from its own SDS socket, requires the robot's certificate and
/// applies RBAC to the robot's SPIFFE ID.
#[test]
fn inbound_listener_with_spire_sds_and_rbac() {
    let Some(bin) = envoy_or_skip("inbound_listener_with_spire_sds_and_rbac") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let echo = Server::echo();
    let ca = Ca::new(tmp.path(), "example.org");
    let server_svid = ca.leaf("server", SERVER_ID, 100);
    let server_agent = SdsServer::spire(&tmp.path().join("server-agent.sock"), &server_svid, &ca);
    let inbound_port = free_port();
    let server = GroupProxy {
        envoy_bin: bin.clone(),
        ..proxy(
            "server",
            &tmp.path().join("server"),
            NetworkConfig {
                spiffe: Some(spiffe("example.org", Some(&server_agent.socket))),
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
            allowed_spiffe_ids: vec![ROBOT_ID.into()],
            spiffe: None,
        }],
        ..Default::default()
    };
    let launch = envoy::prepare_with(&server, &extras).unwrap();
    let mut server_envoy = Envoy::start(&launch, server.dir.join("envoy.log"));
    server_envoy.wait_ready();

    let robot_svid = ca.leaf("robot", ROBOT_ID, 101);
    let robot_agent = SdsServer::spire(&tmp.path().join("robot-agent.sock"), &robot_svid, &ca);
    let port = free_port();
    let _r = robot(
        &bin,
        &tmp.path().join("robot"),
        NetworkConfig {
            spiffe: Some(spiffe("example.org", Some(&robot_agent.socket))),
            upstreams: vec![tls_upstream("api", port, inbound_port, Some(SERVER_ID))],
            ..Default::default()
        },
    );
    assert_eq!(echo_through(port, b"spire both ways").unwrap(), b"spire both ways");
    assert!(server_envoy.stat("in-api.rbac.allowed") >= 1);
    assert_eq!(server_envoy.stat("in-api.rbac.denied"), 0);
}
