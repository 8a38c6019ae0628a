//! `--proxy-mode shared` with the real agent (`k8s4r-agent run -f`) and
//! real Envoy on loopback: one `robot-envoy` carries every group's part.
//!
//! - two groups each reach their own upstream through their own
//!   `PROXY_DB_*` port, and no listener of one names the other's cluster;
//! - a group joins and leaves while another group's long-lived connection
//!   stays up through the same Envoy process;
//! - kill -9 of the shared Envoy: every group's proxy is back, tasks
//!   untouched;
//! - per-group → shared and back across an agent restart: tasks keep
//!   running.

mod common;

use common::standalone::*;
use common::wait_for;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

/// A TCP server on 127.0.0.1 answering every line of a connection with
/// `<tag>:<line>`, for as long as the connection lasts; its port.
fn tagged_upstream(tag: &'static str) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&s);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if write!(&s, "{tag}:{line}").is_err() {
                        break;
                    }
                    line.clear();
                }
            });
        }
    });
    port
}

/// One line there and back on an open connection.
fn exchange(s: &mut TcpStream, line: &str) -> Option<String> {
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    writeln!(s, "{line}").ok()?;
    let mut reply = String::new();
    BufReader::new(&*s).read_line(&mut reply).ok()?;
    Some(reply.trim_end().to_string())
}

/// A fresh connection to `port`, one line: the reply.
fn through(port: u16, line: &str) -> Option<String> {
    exchange(&mut TcpStream::connect(("127.0.0.1", port)).ok()?, line)
}

/// Group `name` with upstream `db` (`local_port` → `upstream_port`), one
/// task that writes its PROXY_ variables to `alloc/proxy.env` and waits for
/// `alloc/done`; `init` is YAML for its initTasks (or empty).
fn group(name: &str, local_port: u16, upstream_port: u16, init: &str) -> String {
    format!(
        r#"    - name: {name}
      network:
        upstreams: [{{name: db, localPort: {local_port}, upstream: "127.0.0.1:{upstream_port}", tls: false}}]
{init}      tasks:
        - {{name: t, driver: exec, config: {{execConfig: {{command: /bin/sh, args: ["-c", "env | grep ^PROXY_ > $K8S4R_ALLOC_DIR/proxy.env; while [ ! -e $K8S4R_ALLOC_DIR/done ]; do sleep 0.05; done"]}}}}}}
"#
    )
}

fn run(sb: &Sandbox, groups: &[String], envoy: &Path, extra: &[&str]) -> Agent {
    let file = sb.job(&job("j", "service", &groups.concat()));
    let mut args = vec!["--envoy-bin", envoy.to_str().unwrap()];
    args.extend_from_slice(extra);
    sb.run(&file, &args)
}

fn shared(sb: &Sandbox, groups: &[String], envoy: &Path) -> Agent {
    run(sb, groups, envoy, &["--proxy-mode", "shared"])
}

/// Pids at the end of every line containing `what`.
fn pids(agent: &Agent, what: &str) -> Vec<i32> {
    agent
        .lines_with(what)
        .iter()
        .filter_map(|(_, l)| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

fn done(sb: &Sandbox, key: &str) {
    std::fs::write(sb.data().join(format!("alloc/{key}/alloc/done")), "").unwrap();
}

fn stop(sb: &Sandbox, mut agent: Agent, keys: &[&str]) {
    for key in keys {
        done(sb, key);
    }
    assert_eq!(agent.wait_exit(), 0, "{}", agent.output());
    assert!(sandbox_pids(&sb.data()).is_empty(), "everything stopped");
}

#[test]
fn two_groups_share_one_envoy_each_reaching_only_its_own_upstream() {
    let Some(envoy) = envoy_bin() else { return };
    let (up_a, up_b) = (tagged_upstream("a"), tagged_upstream("b"));
    let (pa, pb) = (free_port(), free_port());
    let sb = Sandbox::new();
    let agent = shared(&sb, &[group("a", pa, up_a, ""), group("b", pb, up_b, "")], &envoy);
    agent.pid_of("j-a r0 t: running pid");
    agent.pid_of("j-b r0 t: running pid");
    let envoys = pids(&agent, "envoy: running pid");
    assert_eq!(envoys.len(), 1, "one Envoy for both groups: {}", agent.output());
    assert_eq!(pids(&agent, "robot envoy: running pid"), envoys);

    // Each task got its own port, which leads to its own upstream only.
    for (key, port, tag) in [("j-a", pa, "a"), ("j-b", pb, "b")] {
        let env_file = sb.data().join(format!("alloc/{key}/alloc/proxy.env"));
        let env = wait_for("the task's PROXY_ variables", T, || {
            std::fs::read_to_string(&env_file).ok().filter(|e| e.ends_with('\n'))
        });
        assert!(env.contains(&format!("PROXY_DB_PORT={port}\n")), "{key}: {env}");
        assert!(
            env.contains(&format!("PROXY_DB_ADDR=127.0.0.1:{port}\n")),
            "{key}: {env}"
        );
        assert_eq!(through(port, "hi").as_deref(), Some(&*format!("{tag}:hi")));
    }
    // By construction: each group's listener names its own cluster only
    // (the structural check refuses a listener naming another group's).
    let dir = sb.data().join("robot/envoy");
    let read = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(f)).unwrap()).unwrap()
    };
    let (boot, lds, cds) = (read("envoy.json"), read("xds/lds.json"), read("xds/cds.json"));
    k8s4r::envoy::check::check_runtime(&boot, &lds, &cds).unwrap();
    let routes: Vec<(String, String)> = lds["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let cluster = &l["filter_chains"][0]["filters"][0]["typed_config"]["cluster"];
            (l["name"].as_str().unwrap().into(), cluster.as_str().unwrap().into())
        })
        .collect();
    assert_eq!(
        routes,
        [
            ("j-a/out-db".to_string(), "j-a/out-db".to_string()),
            ("j-b/out-db".to_string(), "j-b/out-db".to_string())
        ]
    );
    assert!(
        sb.data().join("alloc/j-a/envoy").read_dir().is_err(),
        "no per-group proxy files in shared mode"
    );
    stop(&sb, agent, &["j-a", "j-b"]);
}

#[test]
fn a_group_joins_and_leaves_while_another_groups_connection_stays_up() {
    let Some(envoy) = envoy_bin() else { return };
    let (up_a, up_c) = (tagged_upstream("a"), tagged_upstream("c"));
    let (pa, pc) = (free_port(), free_port());
    let sb = Sandbox::new();
    // Group c joins once its init task sees `alloc/go`, and leaves the
    // proxy when its task has completed (a finished group's proxy part is
    // released while the Job still runs).
    let wait_go = r#"      initTasks:
        - {name: gate, driver: exec, config: {execConfig: {command: /bin/sh, args: ["-c", "while [ ! -e $K8S4R_ALLOC_DIR/go ]; do sleep 0.05; done"]}}}
"#;
    let agent = shared(&sb, &[group("a", pa, up_a, ""), group("c", pc, up_c, wait_go)], &envoy);
    agent.pid_of("j-a r0 t: running pid");
    let envoy_pid = agent.pid_of("robot envoy: running pid");
    let mut long_lived = wait_for("a's proxy", T, || TcpStream::connect(("127.0.0.1", pa)).ok());
    assert_eq!(exchange(&mut long_lived, "1").as_deref(), Some("a:1"));
    assert!(through(pc, "x").is_none(), "c has no listener yet");

    std::fs::write(sb.data().join("alloc/j-c/alloc/go"), "").unwrap();
    agent.pid_of("j-c r0 t: running pid");
    assert_eq!(
        through(pc, "x").as_deref(),
        Some("c:x"),
        "c's part is served once its task runs"
    );
    assert_eq!(exchange(&mut long_lived, "2").as_deref(), Some("a:2"));

    done(&sb, "j-c");
    agent.wait_line("j-c: all tasks ended");
    wait_for("c's listener gone", T, || through(pc, "x").is_none().then_some(()));
    assert_eq!(
        exchange(&mut long_lived, "3").as_deref(),
        Some("a:3"),
        "a's connection stays up"
    );
    assert_eq!(pids(&agent, "envoy: running pid"), [envoy_pid], "same Envoy throughout");
    assert!(alive(envoy_pid));
    stop(&sb, agent, &["j-a"]);
}

#[test]
fn a_killed_shared_envoy_comes_back_with_every_group_and_tasks_untouched() {
    let Some(envoy) = envoy_bin() else { return };
    let (up_a, up_b) = (tagged_upstream("a"), tagged_upstream("b"));
    let (pa, pb) = (free_port(), free_port());
    let sb = Sandbox::new();
    let agent = shared(&sb, &[group("a", pa, up_a, ""), group("b", pb, up_b, "")], &envoy);
    let tasks = [
        agent.pid_of("j-a r0 t: running pid"),
        agent.pid_of("j-b r0 t: running pid"),
    ];
    let first = agent.pid_of("robot envoy: running pid");
    wait_for("traffic through a", T, || through(pa, "1"));

    signal(first as u32, "KILL");
    let second = wait_for("the shared Envoy started again", T, || {
        pids(&agent, "robot envoy: running pid")
            .into_iter()
            .find(|p| *p != first)
    });
    assert!(!alive(first));
    assert_eq!(wait_for("a's proxy back", T, || through(pa, "2")), "a:2");
    assert_eq!(wait_for("b's proxy back", T, || through(pb, "2")), "b:2");
    for pid in tasks {
        assert!(alive(pid), "a task died with the proxy");
    }
    assert_eq!(agent.lines_with("r0 t: running pid").len(), 2, "{}", agent.output());
    assert!(alive(second));
    stop(&sb, agent, &["j-a", "j-b"]);
}

/// The robot's tasks run under an agent with proxy `from` (flags), the
/// agent leaves them running and one with `to` takes over: the old mode's
/// Envoys (pids on lines `old`) stop, the new one (`new`) serves both
/// groups, and the tasks are adopted, never started again.
fn switch_keeps_tasks_running(from: &[&str], old: &[&str], to: &[&str], new: &[&str]) {
    let Some(envoy) = envoy_bin() else { return };
    let (up_a, up_b) = (tagged_upstream("a"), tagged_upstream("b"));
    let (pa, pb) = (free_port(), free_port());
    let sb = Sandbox::new();
    let groups = [group("a", pa, up_a, ""), group("b", pb, up_b, "")];
    let before = run(&sb, &groups, &envoy, &[from, &["--keep-running"]].concat());
    let tasks = [
        before.pid_of("j-a r0 t: running pid"),
        before.pid_of("j-b r0 t: running pid"),
    ];
    let old: Vec<i32> = old.iter().map(|l| before.pid_of(l)).collect();
    assert_eq!(wait_for("traffic through a", T, || through(pa, "1")), "a:1");
    signal(before.child.id(), "TERM");
    before.wait_line("leaving tasks running");
    drop(before);

    let mut after = run(&sb, &groups, &envoy, to);
    let new: Vec<i32> = new.iter().map(|l| after.pid_of(l)).collect();
    assert_eq!(wait_for("a through the new proxy", T, || through(pa, "2")), "a:2");
    assert_eq!(wait_for("b through the new proxy", T, || through(pb, "2")), "b:2");
    // Adopted, not started again, once each group's proxy is served.
    after.pid_of("j-a r0 t: adopted running pid");
    after.pid_of("j-b r0 t: adopted running pid");
    for pid in old {
        assert!(!alive(pid), "the old mode's Envoys are stopped");
    }
    for pid in tasks {
        assert!(alive(pid), "the tasks keep running across the switch");
    }
    assert!(
        after.lines_with("r0 t: running pid").is_empty(),
        "no task started again: {}",
        after.output()
    );
    assert!(new.iter().all(|p| alive(*p)));
    // Re-adopted tasks' exit codes are unknowable: stop them by signal.
    signal(after.child.id(), "TERM");
    assert_eq!(after.wait_exit(), 0, "{}", after.output());
    assert!(sandbox_pids(&sb.data()).is_empty(), "everything stopped");
}

#[test]
fn switching_from_per_group_to_shared_across_an_agent_restart_keeps_tasks_running() {
    switch_keeps_tasks_running(
        &[],
        &["j-a envoy: running pid", "j-b envoy: running pid"],
        &["--proxy-mode", "shared"],
        &["robot envoy: running pid"],
    );
}

#[test]
fn switching_back_from_shared_to_per_group_keeps_tasks_running() {
    switch_keeps_tasks_running(
        &["--proxy-mode", "shared"],
        &["robot envoy: running pid"],
        &["--proxy-mode", "per-group"],
        &["j-a envoy: running pid", "j-b envoy: running pid"],
    );
}
