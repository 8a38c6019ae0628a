//! The supervisor through its library API (the connected agent uses it the
//! same way): real processes, waits on conditions with deadlines.

mod common;

use common::wait_for;
use k8s4r::agent::supervisor::cgroup::Limits;
use k8s4r::agent::supervisor::logs::LogLimits;
use k8s4r::agent::supervisor::machine::{Phase, Policy};
use k8s4r::agent::supervisor::{DirOwner, Supervisor, SupervisorConfig, UnitSpec};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// A supervisor reaps every child of the process (waitpid(-1)), so two in
/// one test process would steal each other's exits: one test at a time.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills whatever still runs in `dir` (by working directory) when a test
/// ends, even by a failed assertion.
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            if std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(&self.0)) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

fn daemon(data: &Path, name: &str, value: &str, revision: u64) -> UnitSpec {
    UnitSpec {
        name: name.into(),
        label: name.into(),
        argv: vec!["/bin/sleep".into(), "300".into()],
        env: BTreeMap::from([("VALUE".to_string(), value.to_string())]),
        dir: data.join(name),
        alloc_dir: data.join("alloc"),
        user: None,
        dir_owner: DirOwner::Task,
        alloc_users: Vec::new(),
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

/// A supervisor on `data`, as the tests here run it (root tasks allowed,
/// no cgroups).
fn config_for(data: &Path) -> SupervisorConfig {
    SupervisorConfig {
        data_dir: data.to_path_buf(),
        log_limits: LogLimits::default(),
        cgroup_root: None,
        allow_root_tasks: true,
        require_artifact_checksums: false,
    }
}

#[test]
fn a_changed_spec_replaces_the_process_and_an_unchanged_one_does_not() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _cleanup = Cleanup(data.clone());
    let config = config_for(&data);
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
    let again = Supervisor::new(config_for(&data));
    assert!(again.err().unwrap().to_string().contains("another agent is running"));

    sup.retain(|_| false);
    run_until(&mut sup, "everything to stop", |s| {
        s.retain(|_| false);
        s.all_finished().then_some(())
    });
    // Stopped and reaped by the supervisor: no process, not even a zombie.
    assert!(!Path::new(&format!("/proc/{second}")).exists());
}

/// A task's own process is reaped alone, through its pidfd, with its exit
/// code; the SIGCHLD that came with it does not walk every child at once;
/// an orphan it leaves (the agent is the subreaper; the task's group is
/// killed when it ends) is still reaped, by the sweep.
#[test]
fn a_child_is_reaped_through_its_pidfd_and_its_orphan_by_the_sweep_after() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _cleanup = Cleanup(data.clone());
    let (mut sup, _) = Supervisor::new(config_for(&data)).unwrap();
    let rules = k8s4r::agent::supervisor::machine::RestartRules {
        attempts: 0,
        interval: Duration::from_secs(60),
        delay: Duration::from_secs(1),
        delay_mode: false,
    };
    let orphan_file = data.join("orphan.pid");
    let spec = UnitSpec {
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("sleep 0.3 & echo $! > {}; exit 3", orphan_file.display()),
        ],
        policy: Policy::RunToCompletion(rules),
        ..daemon(&data, "t", "x", 1)
    };
    let (pidfd_before, sweeps_before) = sup.reap_counts();
    sup.ensure(spec);
    let reason = run_until(&mut sup, "the task's exit", |s| match &s.view("t")?.phase {
        Phase::Failed { reason } => Some(reason.clone()),
        _ => None,
    });
    assert!(reason.contains("exited 3"), "{reason}");
    let (pidfd, sweeps) = sup.reap_counts();
    assert_eq!(pidfd, pidfd_before + 1, "reaped through its pidfd");
    assert_eq!(sweeps, sweeps_before, "no waitpid(-1) walk for it");
    let orphan: i32 = std::fs::read_to_string(&orphan_file).unwrap().trim().parse().unwrap();
    run_until(&mut sup, "the orphan reaped (gone from /proc, not a zombie)", |_| {
        (!Path::new(&format!("/proc/{orphan}")).exists()).then_some(())
    });
    assert!(sup.reap_counts().1 > sweeps, "the sweep reaped the orphan");
}

/// Envoy from K8S4R_ENVOY or PATH, if installed.
fn envoy_bin() -> Option<std::path::PathBuf> {
    let found = std::env::var_os("K8S4R_ENVOY")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|d| d.join("envoy"))
                .find(|p| p.is_file())
        });
    if found.is_none() {
        eprintln!("SKIP: no envoy binary (set K8S4R_ENVOY or put envoy on PATH)");
    }
    found
}

#[test]
fn a_network_change_updates_the_running_proxy_and_restarts_tasks_with_new_variables() {
    let _serial = one_at_a_time();
    use k8s4r::agent::reconcile::{AssignedTask, ReconcileConfig, Reconciler};
    use k8s4r::api::{JobType, NetworkConfig, TaskSpec, Upstream};
    let Some(envoy) = envoy_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _cleanup = Cleanup(data.clone());
    let config = config_for(&data);
    let (mut sup, _) = Supervisor::new(config).unwrap();
    let mut rec = Reconciler::new(ReconcileConfig {
        robot: "r".into(),
        data_dir: data.clone(),
        envoy_bin: envoy,
        gc_after: None,
        default_user: None,
        proxy_user: None,
        proxy_mode: Default::default(),
    });
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let upstream = |name: &str| Upstream {
        name: name.into(),
        local_port: i64::from(port()),
        upstream: "127.0.0.1:9".into(),
        tls: Some(false),
        ..Default::default()
    };
    let task = |upstreams: Vec<Upstream>| {
        let spec: TaskSpec = serde_json::from_value(serde_json::json!({
            "name": "t", "driver": "exec", "jobName": "j", "taskGroupName": "j-g", "replicaIndex": 0,
            "config": {"execConfig": {"command": "/bin/sleep", "args": ["300"]}}
        }))
        .unwrap();
        let spec = TaskSpec {
            network: Some(NetworkConfig {
                upstreams,
                ..Default::default()
            }),
            ..spec
        };
        vec![AssignedTask {
            name: "j-g-r0-t".into(),
            job_type: JobType::Service,
            group: "g".into(),
            spec: spec.into(),
        }]
    };
    let a = upstream("alpha");
    let v1 = task(vec![a.clone()]);
    let mut notices = Vec::new();
    drive_until(
        &mut sup,
        &mut rec,
        &v1,
        &mut notices,
        "the task behind its proxy",
        &|s| pid_of(s, "j-g-r0-t").is_some(),
    );
    let envoy_pid = pid_of(&sup, "j-g-envoy").unwrap();
    let task_pid = pid_of(&sup, "j-g-r0-t").unwrap();
    assert!(env_of(task_pid).contains("PROXY_ALPHA_PORT="));

    let v2 = task(vec![a, upstream("beta")]);
    drive_until(
        &mut sup,
        &mut rec,
        &v2,
        &mut notices,
        "the task with the new variables",
        &|s| pid_of(s, "j-g-r0-t").is_some_and(|p| p != task_pid && env_of(p).contains("PROXY_BETA_PORT=")),
    );
    assert!(
        notices.iter().any(|n| n == "proxy config updated in place"),
        "{notices:?}"
    );
    assert_eq!(
        pid_of(&sup, "j-g-envoy"),
        Some(envoy_pid),
        "Envoy keeps running through the update"
    );

    drive_until(&mut sup, &mut rec, &[], &mut notices, "everything to stop", &|s| {
        s.all_finished()
    });
}

/// Reconcile and supervise until `done`, collecting the group notices.
fn drive_until(
    sup: &mut Supervisor,
    rec: &mut k8s4r::agent::reconcile::Reconciler,
    desired: &[k8s4r::agent::reconcile::AssignedTask],
    notices: &mut Vec<String>,
    what: &str,
    done: &dyn Fn(&Supervisor) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, recheck) = rec.pass(desired, sup);
        notices.extend(rec.take_notices().into_iter().map(|(_, m)| m));
        if done(sup) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        let next = Instant::now() + Duration::from_millis(100);
        sup.run_once(Some(recheck.unwrap_or(next).min(next))).unwrap();
    }
}

#[test]
fn a_damaged_state_file_is_set_aside_not_fatal() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("state.json"), "{torn").unwrap();
    let config = config_for(&data);
    let (_sup, notices) = Supervisor::new(config).unwrap();
    assert!(
        notices.iter().any(|n| n.contains("state.json was damaged")),
        "{notices:?}"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("state.json.damaged")).unwrap(),
        "{torn"
    );
}

#[test]
fn a_damaged_state_journal_is_set_aside_and_the_snapshot_kept() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let snapshot = r#"{"bootId": "another boot", "units": {}, "generation": 1}"#;
    std::fs::write(data.join("state.json"), snapshot).unwrap();
    // A whole line the agent cannot have written, then another line.
    std::fs::write(
        data.join("state.log"),
        "{\"bootId\":\"b\",\"generation\":1,\"units\":7}\n{\"bootId\":\"b\",\"generation\":1}\n",
    )
    .unwrap();
    let config = config_for(&data);
    let (_sup, notices) = Supervisor::new(config).unwrap();
    assert!(
        notices.iter().any(|n| n.contains("state.log was damaged")),
        "{notices:?}"
    );
    assert!(data.join("state.log.damaged").exists());
    assert!(!data.join("state.log").exists());
    // The snapshot was read (and folded forward), not set aside.
    assert!(!data.join("state.json.damaged").exists());
    let state = k8s4r::agent::supervisor::state::StateFile::read(&data).unwrap();
    assert!(state.units.is_empty());
}

/// A thread reading a socket (10 s timeout) is sent SIGCHLD while it waits
/// (the agent's handler installed); for a worker, data follows once the
/// signal shows pending on it. What its read returned.
///
/// x86_64 only: CI runs the aarch64 tests under qemu-user, which emulates
/// the guest's signal mask, so the kernel's per-thread `SigPnd` read here
/// says nothing there (the mask itself is checked on both, by
/// `signals::tests::a_worker_thread_never_takes_the_loops_signals`).
#[cfg(target_arch = "x86_64")]
fn read_through_sigchld(worker: bool) -> std::io::Result<usize> {
    use k8s4r::agent::supervisor::signals::{spawn_worker, Wakeups};
    use std::io::{Read, Write};
    let _wakeups = Wakeups::install().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let body = move || {
        // SAFETY: both only name the calling thread.
        // (pthread_t is a pointer on musl: sent as a number.)
        tx.send(unsafe { (libc::gettid(), libc::pthread_self() as usize) })
            .unwrap();
        (&client).read(&mut [0u8; 8])
    };
    let reader = if worker {
        spawn_worker(body)
    } else {
        std::thread::spawn(body)
    };
    let (tid, thread) = rx.recv().unwrap();
    let proc_file = |f: &str| std::fs::read_to_string(format!("/proc/self/task/{tid}/{f}")).unwrap_or_default();
    wait_for("the reader asleep in its read", Duration::from_secs(10), || {
        proc_file("stat")
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('S'))
            .then_some(())
    });
    // SAFETY: the thread is alive (it has not been joined).
    let sent = unsafe { libc::pthread_kill(thread as libc::pthread_t, libc::SIGCHLD) };
    assert_eq!(sent, 0);
    if worker {
        let sigchld = 1u64 << (libc::SIGCHLD - 1);
        wait_for("SIGCHLD pending on the worker", Duration::from_secs(10), || {
            proc_file("status")
                .lines()
                .find_map(|l| l.strip_prefix("SigPnd:"))
                .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
                .is_some_and(|m| m & sigchld != 0)
                .then_some(())
        });
        server.write_all(b"x").unwrap();
    }
    reader.join().unwrap()
}

/// A task's exit is a SIGCHLD, which the kernel gives to any thread not
/// blocking it, and a socket read with a timeout is not restarted after a
/// handler: the connected agent's long poll failed ("cannot reach the
/// server") when a task ended. Its other threads block the signal.
#[cfg(target_arch = "x86_64")]
#[test]
fn a_tasks_exit_signal_never_cuts_a_worker_threads_read() {
    let _one = one_at_a_time();
    let plain = read_through_sigchld(false);
    assert_eq!(
        plain.as_ref().map_err(|e| e.kind()),
        Err(std::io::ErrorKind::Interrupted),
        "a plain thread's read is cut short (what the worker is for): {plain:?}"
    );
    assert_eq!(read_through_sigchld(true).unwrap(), 1);
}
