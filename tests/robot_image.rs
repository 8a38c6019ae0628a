//! The robot image: cross/rootfs.sh builds a busybox-init root filesystem
//! with the static agent; this test boots it as PID 1 of new PID and mount
//! namespaces (chroot), and checks what a robot team relies on: init starts
//! the agent, the agent runs its job, a killed agent is respawned by init
//! and re-adopts its task (same process, not a second one), and poweroff
//! stops everything cleanly.
//!
//! Needs root, `unshare`, busybox-static (make tools) and the static agent
//! (make agent); skips with a message otherwise.

mod common;

use common::wait_for;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn static_agent() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/x86_64-unknown-linux-musl/release/k8s4r-agent");
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIP: {} is missing; `make agent` builds it (make test does)",
            p.display()
        );
        None
    }
}

fn can_boot() -> bool {
    let root = rustix::process::geteuid().is_root();
    let tools = ["unshare", "chroot", "busybox"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !(root && tools) {
        eprintln!("SKIP: booting the image needs root, unshare, chroot and busybox (make tools)");
    }
    root && tools
}

const JOB: &str = r#"
apiVersion: robot.k8s4r.io/v1alpha1
kind: Job
metadata: {name: heartbeat}
spec:
  type: service
  taskGroups:
  - name: beat
    tasks:
    - name: beat
      driver: exec
      config: {execConfig: {command: /bin/sh, args: ["-c", "echo beating; exec sleep 3600"]}}
"#;

/// Processes whose root directory is `rootfs`: everything inside the image.
fn inside(rootfs: &Path) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read_link(e.path().join("root")).ok().as_deref() != Some(rootfs) {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ").trim().to_string();
        if !cmd.is_empty() {
            out.push((pid, cmd));
        }
    }
    out
}

fn find(rootfs: &Path, needle: &str) -> Vec<u32> {
    inside(rootfs)
        .into_iter()
        .filter(|(_, c)| c.contains(needle))
        .map(|(p, _)| p)
        .collect()
}

struct Boot {
    child: Child,
    rootfs: PathBuf,
}

impl Drop for Boot {
    fn drop(&mut self) {
        // Killing the namespace's init kills every process in it.
        for (pid, cmd) in inside(&self.rootfs) {
            if cmd == "init" {
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(pid as i32).unwrap(),
                    rustix::process::Signal::KILL,
                );
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn busybox_init_boots_the_agent_respawns_it_and_powers_off_cleanly() {
    let (Some(agent), true) = (static_agent(), can_boot()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    let job = tmp.path().join("job.yaml");
    std::fs::write(&job, JOB).unwrap();
    let tarball = tmp.path().join("robot.tar.gz");
    let status = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("cross/rootfs.sh"))
        .args(["--arch", "x86_64", "--agent"])
        .arg(&agent)
        .arg("--out")
        .arg(&rootfs)
        .arg("--tar")
        .arg(&tarball)
        .arg("--job")
        .arg(&job)
        .status()
        .unwrap();
    assert!(status.success(), "rootfs.sh failed");
    assert!(std::fs::metadata(&tarball).unwrap().len() > 0, "a tarball to flash");
    let inittab = std::fs::read_to_string(rootfs.join("etc/inittab")).unwrap();
    assert!(inittab.contains("::respawn:/etc/init.d/k8s4r-agent"), "{inittab}");
    let rootfs = rootfs.canonicalize().unwrap();

    let child = Command::new("unshare")
        .args(["--pid", "--mount", "--fork", "--propagation", "private", "chroot"])
        .arg(&rootfs)
        .arg("/sbin/init")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("unshare");
    let mut boot = Boot {
        child,
        rootfs: rootfs.clone(),
    };

    // init -> agent -> task.
    let first_agent = wait_for("the agent started by init", Duration::from_secs(20), || {
        find(&rootfs, "k8s4r-agent run").first().copied()
    });
    let task = wait_for("the job's task", Duration::from_secs(20), || {
        find(&rootfs, "sleep 3600").first().copied()
    });
    let log = rootfs.join("var/log/k8s4r-agent.log");
    // The agent persists a unit once it runs; only then can a successor adopt it.
    let state = rootfs.join("var/lib/k8s4r/state.json");
    wait_for("the task's pid persisted", Duration::from_secs(20), || {
        std::fs::read_to_string(&state).ok()?.contains("\"pid\"").then_some(())
    });

    // kill -9 the agent: init respawns it and it re-adopts the same task.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(first_agent as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let second_agent = wait_for("init to respawn the agent", Duration::from_secs(20), || {
        find(&rootfs, "k8s4r-agent run").into_iter().find(|p| *p != first_agent)
    });
    wait_for("the new agent to re-adopt the task", Duration::from_secs(20), || {
        std::fs::read_to_string(&log)
            .ok()?
            .contains("adopted running pid")
            .then_some(())
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert_ne!(second_agent, first_agent);
    assert_eq!(
        find(&rootfs, "sleep 3600"),
        vec![task],
        "same task process, not a second one: {text}"
    );

    // poweroff (busybox init's SIGUSR2): shutdown actions stop the tasks.
    let init = inside(&rootfs).into_iter().find(|(_, c)| c == "init").expect("init").0;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(init as i32).unwrap(),
        rustix::process::Signal::USR2,
    )
    .unwrap();
    let status = wait_for("the image to power off", Duration::from_secs(30), || {
        boot.child.try_wait().ok().flatten()
    });
    let _ = status;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("shutdown: tasks stopped"), "{text}");
    assert!(
        text.contains("beat r0 beat: stopping (SIGTERM)"),
        "graceful stop: {text}"
    );
    assert!(
        inside(&rootfs).is_empty(),
        "nothing left running: {:?}",
        inside(&rootfs)
    );
}
