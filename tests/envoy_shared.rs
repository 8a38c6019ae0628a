//! `--proxy-mode shared`, the proxy side: one robot-wide Envoy carrying
//! several groups' resources, each group's scoped by its name, updated
//! live as groups come and go, brought back after kill -9, and each
//! group's inbound RBAC its own. Real Envoy on loopback.

mod common;
mod envoy_fixtures;

use common::wait_for;
use envoy_fixtures::*;
use k8s4r::api::{NetworkConfig, Protocol};
use k8s4r::envoy::shared::{self, Member, SharedProxy};
use k8s4r::envoy::{check, GroupProxy, Inbound, ProxyExtras};
use std::path::Path;
use std::process::Command;

/// Group `key` with one tcp upstream `db` on `port` to `target`.
fn member(key: &str, port: u16, target: u16) -> Member {
    Member {
        key: key.into(),
        network: plain_network(vec![upstream(
            "db",
            port,
            &format!("127.0.0.1:{target}"),
            Protocol::Tcp,
            false,
        )]),
        extras: ProxyExtras::default(),
    }
}

fn robot_proxy(bin: &Path, dir: &Path) -> SharedProxy {
    SharedProxy {
        robot: "r1".into(),
        dir: dir.join("robot-envoy"),
        envoy_bin: bin.to_path_buf(),
        // No active health checks: the echo servers count the groups'
        // connections only.
        options: k8s4r::envoy::ProxyOptions {
            health_check_interval_s: 0,
            ..Default::default()
        },
    }
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn two_groups_share_one_envoy_each_reaching_only_its_own_upstream() {
    let Some(bin) = envoy_or_skip("two_groups_share_one_envoy_each_reaching_only_its_own_upstream") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (echo_a, echo_b) = (Server::echo(), Server::echo());
    let (pa, pb) = (free_port(), free_port());
    let robot = robot_proxy(&bin, tmp.path());
    let members = [member("job-a", pa, echo_a.port), member("job-b", pb, echo_b.port)];
    let launch = shared::prepare(&robot, &members).unwrap();
    let mut e = Envoy::start(&launch, tmp.path().join("envoy.log"));
    e.wait_ready();

    assert_eq!(echo_through(pa, b"a").unwrap(), b"a");
    assert_eq!(echo_through(pb, b"b").unwrap(), b"b");
    assert_eq!(
        (echo_a.accepted(), echo_b.accepted()),
        (1, 1),
        "each group reached its own upstream only"
    );
    // By construction: each listener names only its own group's cluster,
    // and the structural check refuses any config where one would not.
    let dir = robot.dir.clone();
    let (boot, lds, cds) = (
        json(&dir.join("envoy.json")),
        json(&dir.join("xds/lds.json")),
        json(&dir.join("xds/cds.json")),
    );
    check::check_runtime(&boot, &lds, &cds).unwrap();
    let names: Vec<&str> = lds["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    assert_eq!(names, ["job-a/out-db", "job-b/out-db"]);
    let mut crossed = lds.clone();
    crossed["resources"][0]["filter_chains"][0]["filters"][0]["typed_config"]["cluster"] = "job-b/out-db".into();
    let err = check::check_runtime(&boot, &crossed, &cds).unwrap_err();
    assert!(err.contains("of another group"), "{err}");
    assert_eq!(boot["node"]["id"], "robot/r1");
    // A port two groups want is refused, naming both.
    let clash = shared::update(
        &robot,
        &[member("job-a", pa, echo_a.port), member("job-c", pa, echo_b.port)],
    )
    .unwrap_err();
    assert!(clash.to_string().contains("job-a and job-c"), "{clash}");
}

#[test]
fn groups_come_and_go_while_another_groups_connection_stays_up() {
    let Some(bin) = envoy_or_skip("groups_come_and_go_while_another_groups_connection_stays_up") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (echo_a, echo_b, echo_c) = (Server::echo(), Server::echo(), Server::echo());
    let robot = robot_proxy(&bin, tmp.path());
    // A port free a moment ago can be taken meanwhile (twice in CI, by a
    // socket /proc could not name): then other ports, as a user would.
    let (pa, launch) = (0..5)
        .find_map(|_| {
            let (pa, pb) = (free_port(), free_port());
            let members = [member("job-a", pa, echo_a.port), member("job-b", pb, echo_b.port)];
            match shared::prepare(&robot, &members) {
                Err(k8s4r::envoy::EnvoyError::Port(busy)) => {
                    eprintln!("retrying with other ports: {busy}");
                    None
                }
                other => Some((pa, other.unwrap())),
            }
        })
        .expect("five sets of free ports were all taken");
    let pc = free_port();
    let a = member("job-a", pa, echo_a.port);
    let mut e = Envoy::start(&launch, tmp.path().join("envoy.log"));
    e.wait_ready();
    let pid = e.pid();
    let mut long_lived = connect(pa).unwrap();
    assert_eq!(roundtrip(&mut long_lived, b"1").unwrap(), b"1");

    // job-c arrives, job-b leaves: one update.
    shared::update(&robot, &[a.clone(), member("job-c", pc, echo_c.port)]).unwrap();
    wait_for("job-c's proxy answers", READY, || echo_through(pc, b"c").ok());
    wait_for("job-b's listener is gone", READY, || {
        (e.stat("listener_manager.total_listeners_active") == 2).then_some(())
    });
    assert_eq!(
        roundtrip(&mut long_lived, b"2").unwrap(),
        b"2",
        "job-a's connection stays up"
    );
    assert_eq!(e.pid(), pid);
    assert_eq!(
        e.stat("listener_manager.listener_modified"),
        0,
        "job-a's listener untouched"
    );
    assert_eq!(e.stat("listener_manager.lds.update_rejected"), 0);

    // The last other group leaves too.
    shared::update(&robot, std::slice::from_ref(&a)).unwrap();
    wait_for("job-c's listener is gone", READY, || {
        (e.stat("listener_manager.total_listeners_active") == 1).then_some(())
    });
    assert_eq!(roundtrip(&mut long_lived, b"3").unwrap(), b"3");
    assert_eq!(e.pid(), pid);

    // kill -9: prepare and start bring every group's part back.
    Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    e.child.wait().unwrap();
    let members = [a, member("job-c", pc, echo_c.port)];
    let launch = shared::prepare(&robot, &members).unwrap();
    let mut again = Envoy::start(&launch, tmp.path().join("envoy2.log"));
    again.wait_ready();
    assert_ne!(again.pid(), pid);
    assert_eq!(echo_through(pa, b"a").unwrap(), b"a");
    assert_eq!(echo_through(pc, b"c").unwrap(), b"c");
    shared::remove(&robot).unwrap_or_else(|err| panic!("{err}"));
}

/// Group `key` with only an inbound mTLS listener on `port` in front of
/// `target`, presenting `svid` and admitting `allowed` only.
fn inbound_member(key: &str, ca: &Ca, svid: &Leaf, port: u16, target: u16, allowed: &str) -> Member {
    Member {
        key: key.into(),
        network: NetworkConfig {
            enabled: Some(true),
            tls_files: Some(ca.files(svid)),
            spiffe: Some(spiffe("example.org", None)),
            ..Default::default()
        },
        extras: ProxyExtras {
            inbound: vec![Inbound {
                name: "api".into(),
                port: port.into(),
                target_port: target.into(),
                address: Some("127.0.0.1".into()),
                allowed_spiffe_ids: vec![allowed.into()],
                spiffe: None,
            }],
            ..Default::default()
        },
    }
}

/// A peer elsewhere: its own Envoy with identity `id`, reaching group A's
/// and group B's inbound ports (each pinned to that group's identity) on
/// its local ports `to_a` and `to_b`.
fn peer(bin: &Path, dir: &Path, ca: &Ca, id: &str, serial: u32, to: [(u16, u16, &str); 2]) -> Envoy {
    let leaf = ca.leaf(&format!("peer-{serial}"), id, serial);
    let network = NetworkConfig {
        tls_files: Some(ca.files(&leaf)),
        spiffe: Some(spiffe("example.org", None)),
        upstreams: to
            .iter()
            .enumerate()
            .map(|(i, (local, inbound, group_id))| tls_upstream(&format!("to-{i}"), *local, *inbound, Some(group_id)))
            .collect(),
        ..Default::default()
    };
    let g = GroupProxy {
        envoy_bin: bin.to_path_buf(),
        ..proxy("peer", dir, network)
    };
    let launch = k8s4r::envoy::prepare_with(
        &g,
        &ProxyExtras {
            // No health checks: the echo servers count the peers' own
            // connections only.
            options: k8s4r::envoy::ProxyOptions {
                health_check_interval_s: 0,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    let mut e = Envoy::start(&launch, dir.join("envoy.log"));
    e.wait_ready();
    e
}

/// Inbound RBAC holds per group in one shared Envoy: a peer group A's
/// policy admits reaches A's task and is refused by group B's inbound
/// listener (and the other way round), each group presenting its own
/// identity.
#[test]
fn inbound_rbac_holds_per_group_in_one_shared_envoy() {
    let Some(bin) = envoy_or_skip("inbound_rbac_holds_per_group_in_one_shared_envoy") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new(tmp.path(), "example.org");
    let (echo_a, echo_b) = (Server::echo(), Server::echo());
    let (id_a, id_b) = (
        "spiffe://example.org/robot/r1/job-a",
        "spiffe://example.org/robot/r1/job-b",
    );
    let (peer_a, peer_b) = ("spiffe://example.org/peer/a", "spiffe://example.org/peer/b");
    let (in_a, in_b) = (free_port(), free_port());
    let robot = robot_proxy(&bin, tmp.path());
    let members = [
        inbound_member("job-a", &ca, &ca.leaf("job-a", id_a, 1), in_a, echo_a.port, peer_a),
        inbound_member("job-b", &ca, &ca.leaf("job-b", id_b, 2), in_b, echo_b.port, peer_b),
    ];
    let launch = shared::prepare(&robot, &members).unwrap();
    let mut e = Envoy::start(&launch, tmp.path().join("envoy.log"));
    e.wait_ready();

    // Peer A's local ports: [to group A, to group B]; the same for peer B.
    let [a_to_a, a_to_b, b_to_a, b_to_b] = [(); 4].map(|_| free_port());
    let _pa = peer(
        &bin,
        &tmp.path().join("peer-a"),
        &ca,
        peer_a,
        10,
        [(a_to_a, in_a, id_a), (a_to_b, in_b, id_b)],
    );
    let _pb = peer(
        &bin,
        &tmp.path().join("peer-b"),
        &ca,
        peer_b,
        11,
        [(b_to_a, in_a, id_a), (b_to_b, in_b, id_b)],
    );

    assert_eq!(echo_through(a_to_a, b"a to a").unwrap(), b"a to a");
    assert_eq!(echo_through(b_to_b, b"b to b").unwrap(), b"b to b");
    for (port, what) in [(a_to_b, "peer A at group B"), (b_to_a, "peer B at group A")] {
        let r = echo_through(port, b"crossing");
        assert!(r.is_err(), "{what}: expected a refusal, got {r:?}");
    }
    // Refused in the handshake by the other group's listener, so neither
    // task ever saw the crossing peer.
    assert_eq!(
        (echo_a.accepted(), echo_b.accepted()),
        (1, 1),
        "each task reached by its own group's peer only"
    );
    wait_for("both refusals counted by the groups' listeners", READY, || {
        let refused = |g: &str| e.stat(&format!("listener.{g}/in-api.ssl.fail_verify_san"));
        (refused("job-a") >= 1 && refused("job-b") >= 1).then_some(())
    });
}
