//! The supervisor through its library API (the connected agent uses it the
//! same way): real processes, waits on conditions with deadlines.

mod common;

use common::wait_for;
use k8s4r::agent::cgroup::Limits;
use k8s4r::agent::logs::LogLimits;
use k8s4r::agent::supervisor::machine::{Phase, Policy};
use k8s4r::agent::supervisor::{Supervisor, SupervisorConfig, UnitSpec};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

fn daemon(data: &Path, name: &str, value: &str, revision: u64) -> UnitSpec {
    UnitSpec {
        name: name.into(),
        label: name.into(),
        argv: vec!["/bin/sleep".into(), "300".into()],
        env: BTreeMap::from([("VALUE".to_string(), value.to_string())]),
        dir: data.join(name),
        alloc_dir: data.join("alloc"),
        user: None,
        policy: Policy::Daemon {
            base_delay: Duration::from_millis(50),
        },
        timeout: None,
        kill_timeout: Duration::from_secs(2),
        templates: Vec::new(),
        artifacts: Vec::new(),
        checks: Vec::new(),
        limits: Limits::default(),
        pre_start: None,
        revision,
    }
}

fn pid_of(sup: &Supervisor, name: &str) -> Option<i32> {
    match sup.view(name)?.phase {
        Phase::Running { pid, .. } => Some(*pid),
        _ => None,
    }
}

fn env_of(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    String::from_utf8_lossy(&raw).replace('\0', "\n")
}

/// Drive the supervisor until `cond` holds (bounded by a deadline).
fn run_until<T>(sup: &mut Supervisor, what: &str, mut cond: impl FnMut(&mut Supervisor) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = cond(sup) {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sup.run_once(Some((Instant::now() + Duration::from_millis(100)).min(deadline)))
            .unwrap();
    }
}

#[test]
fn a_changed_spec_replaces_the_process_and_an_unchanged_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = SupervisorConfig {
        data_dir: data.clone(),
        log_limits: LogLimits::default(),
        cgroup_root: None,
    };
    let (mut sup, _) = Supervisor::new(config).unwrap();

    sup.ensure(daemon(&data, "d", "one", 1));
    let first = pid_of(&sup, "d").expect("started at once");
    assert!(env_of(first).contains("VALUE=one"));
    sup.ensure(daemon(&data, "d", "one", 1));
    assert_eq!(pid_of(&sup, "d"), Some(first), "same spec: same process");

    sup.ensure(daemon(&data, "d", "two", 2));
    let second = run_until(&mut sup, "the replacement", |s| pid_of(s, "d").filter(|p| *p != first));
    assert!(env_of(second).contains("VALUE=two"));
    wait_for("the old process to be gone", Duration::from_secs(5), || {
        (!Path::new(&format!("/proc/{first}")).exists()).then_some(())
    });
    let changes: Vec<String> = sup.take_changes().into_iter().map(|c| c.message).collect();
    assert!(changes.iter().any(|m| m == "spec changed; replacing"), "{changes:?}");

    // A second agent on the same directory is refused (one owner of the tasks).
    let again = Supervisor::new(SupervisorConfig {
        data_dir: data.clone(),
        log_limits: LogLimits::default(),
        cgroup_root: None,
    });
    assert!(again.err().unwrap().to_string().contains("another agent is running"));

    sup.retain(|_| false);
    run_until(&mut sup, "everything to stop", |s| {
        s.retain(|_| false);
        s.all_finished().then_some(())
    });
    // Stopped and reaped by the supervisor: no process, not even a zombie.
    assert!(!Path::new(&format!("/proc/{second}")).exists());
}
