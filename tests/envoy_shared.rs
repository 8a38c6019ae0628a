//! `--proxy-mode shared`, the proxy side: one robot-wide Envoy carrying
//! several groups' resources, each group's scoped by its name, updated
//! live as groups come and go, and brought back after kill -9. Real Envoy
//! on loopback.

mod common;
mod envoy_fixtures;

use common::wait_for;
use envoy_fixtures::*;
use k8s4r::api::Protocol;
use k8s4r::envoy::shared::{self, Member, SharedProxy};
use k8s4r::envoy::{check, ProxyExtras};
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
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let robot = robot_proxy(&bin, tmp.path());
    let a = member("job-a", pa, echo_a.port);
    let launch = shared::prepare(&robot, &[a.clone(), member("job-b", pb, echo_b.port)]).unwrap();
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
