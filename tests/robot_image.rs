//! The robot image: cross/rootfs.sh builds a busybox-init root filesystem
//! with the static agent; this test boots it as PID 1 of new PID and mount
//! namespaces (chroot), and checks what a robot team relies on: init starts
//! the agent, the agent runs its job, a killed agent is respawned by init
//! and re-adopts its task (same process, not a second one), and poweroff
//! stops everything cleanly.
//!
//! Runs for x86_64 natively and for aarch64 under qemu-user (binfmt_misc,
//! registered by `make tools`). Needs root, `unshare`, busybox-static and the
//! static agents (`make agent`, `make cross`); skips with a message otherwise.

mod common;
mod server_util;

use common::{wait_for, wait_for_or_explain};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn static_agent(arch: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/{arch}-unknown-linux-musl/release/k8s4r-agent"));
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIP: {} is missing; `make agent` / `make cross` build it (make test does)",
            p.display()
        );
        None
    }
}

/// Can this kernel run aarch64 binaries directly (qemu-user via binfmt_misc)?
fn aarch64_runs_here() -> bool {
    let ok = std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64").is_ok_and(|s| s.starts_with("enabled"));
    if !ok {
        eprintln!("SKIP: qemu-aarch64 is not registered with binfmt_misc (make tools registers it where allowed)");
    }
    ok
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

/// The namespace's PID 1: the child of `unshare` (its cmdline may carry a
/// qemu prefix under binfmt, so it is found by parentage, not by name).
fn init_pid(unshare: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        // Fields after the parenthesised command name: state ppid ...
        let ppid: u32 = stat.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == unshare).then_some(pid)
    })
}

fn find(rootfs: &Path, needle: &str) -> Vec<u32> {
    inside(rootfs)
        .into_iter()
        .filter(|(_, c)| c.contains(needle))
        .map(|(p, _)| p)
        .collect()
}

/// The running image: `unshare` and, below it, the namespace's init.
struct Boot {
    child: Child,
}

impl Drop for Boot {
    fn drop(&mut self) {
        // Killing the namespace's init kills every process in it.
        if let Some(pid) = init_pid(self.child.id()) {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid as i32).unwrap(),
                rustix::process::Signal::KILL,
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn x86_64_image_boots_respawns_the_agent_and_powers_off_cleanly() {
    if let (Some(agent), true) = (static_agent("x86_64"), can_boot()) {
        boot_image("x86_64", &agent);
    }
}

#[test]
fn aarch64_image_boots_under_qemu_user() {
    if let (true, Some(agent), true) = (can_boot(), static_agent("aarch64"), aarch64_runs_here()) {
        boot_image("aarch64", &agent);
    }
}

/// Build the image under `tmp` with cross/rootfs.sh (`extra` its options
/// beyond arch, agent and output); returns its root, canonical.
fn build_rootfs(tmp: &Path, arch: &str, agent: &Path, extra: &[&std::ffi::OsStr]) -> PathBuf {
    let rootfs = tmp.join("rootfs");
    let status = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("cross/rootfs.sh"))
        .args(["--arch", arch, "--agent"])
        .arg(agent)
        .arg("--out")
        .arg(&rootfs)
        .args(extra)
        .status()
        .unwrap();
    assert!(status.success(), "rootfs.sh failed");
    let inittab = std::fs::read_to_string(rootfs.join("etc/inittab")).unwrap();
    assert!(inittab.contains("::respawn:/etc/init.d/k8s4r-agent"), "{inittab}");
    rootfs.canonicalize().unwrap()
}

/// Boot `rootfs`: its /sbin/init as PID 1 of new PID and mount namespaces.
/// How long one step of a booted image may take: the five image tests run
/// at once, two of them under qemu-user, and 20 s ran out on a loaded
/// 2-core CI machine.
const STEP: Duration = Duration::from_secs(120);

fn boot(rootfs: &Path) -> Boot {
    let child = Command::new("unshare")
        .args(["--pid", "--mount", "--fork", "--propagation", "private", "chroot"])
        .arg(rootfs)
        .arg("/sbin/init")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("unshare");
    Boot { child }
}

fn boot_image(arch: &str, agent: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job.yaml");
    std::fs::write(&job, JOB).unwrap();
    let tarball = tmp.path().join("robot.tar.gz");
    let rootfs = build_rootfs(
        tmp.path(),
        arch,
        agent,
        &["--tar".as_ref(), tarball.as_os_str(), "--job".as_ref(), job.as_os_str()],
    );
    assert!(std::fs::metadata(&tarball).unwrap().len() > 0, "a tarball to flash");
    let mut boot = boot(&rootfs);

    // init -> agent -> task.
    // (Failed twice in CI under load, once at 20 s and once at 120 s,
    // never here: say what the image was running and what the agent wrote.)
    let first_agent = wait_for_or_explain(
        "the agent started by init",
        STEP,
        || find(&rootfs, "k8s4r-agent run").first().copied(),
        || {
            format!(
                "\nprocesses in the image: {:?}\nagent log: {}\nunshare exited: {:?}",
                inside(&rootfs),
                std::fs::read_to_string(rootfs.join("var/log/k8s4r-agent.log")).unwrap_or_else(|e| e.to_string()),
                boot.child.try_wait()
            )
        },
    );
    let task = wait_for("the job's task", STEP, || find(&rootfs, "sleep 3600").first().copied());
    let log = rootfs.join("var/log/k8s4r-agent.log");
    // The agent persists a unit once it runs; only then can a successor adopt it.
    let data = rootfs.join("var/lib/k8s4r");
    wait_for("the task's pid persisted", STEP, || {
        let state = k8s4r::agent::supervisor::state::StateFile::read(&data).ok()?;
        state.units.values().any(|u| u.pid.is_some()).then_some(())
    });

    // kill -9 the agent: init respawns it and it re-adopts the same task.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(first_agent as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let second_agent = wait_for("init to respawn the agent", STEP, || {
        find(&rootfs, "k8s4r-agent run").into_iter().find(|p| *p != first_agent)
    });
    wait_for("the new agent to re-adopt the task", STEP, || {
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
    let init = init_pid(boot.child.id()).expect("the image's init");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(init as i32).unwrap(),
        rustix::process::Signal::USR2,
    )
    .unwrap();
    wait_for("the image to power off", Duration::from_secs(30), || {
        boot.child.try_wait().ok().flatten()
    });
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

/// CPU time (user + system, with the reaped children's) of every process
/// in the image, in clock ticks: what a respawn loop burns shows up in
/// init's children's times even after those processes are gone.
fn image_cpu_ticks(rootfs: &Path) -> u64 {
    inside(rootfs)
        .into_iter()
        .filter_map(|(pid, _)| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // After "(comm) ": state is field 3; utime, stime, cutime and
            // cstime are fields 14 to 17.
            let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
            Some(
                fields
                    .get(11..15)?
                    .iter()
                    .filter_map(|f| f.parse::<u64>().ok())
                    .sum::<u64>(),
            )
        })
        .sum()
}

fn clock_ticks_per_second() -> u64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().expect("getconf");
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("CLK_TCK")
}

/// An image built without --server or --job (what `make image` makes):
/// the agent waits instead of exiting into init's respawn loop. Over a
/// minute the whole image uses under 1% of a CPU, the agent stays the same
/// process, and its log says what it is missing once a minute. (Busybox
/// init sleeps 1 s between respawns, so on a fast x86 host the old respawn
/// loop measured 0.1%: it is caught by a new agent process every second and
/// a line a second in the log, which is what fills a robot's console.)
#[test]
fn an_unconfigured_image_waits_quietly() {
    const WINDOW: Duration = Duration::from_secs(60);
    let (Some(agent), true) = (static_agent("x86_64"), can_boot()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = build_rootfs(tmp.path(), "x86_64", agent.as_path(), &[]);
    let _boot = boot(&rootfs);
    let log = rootfs.join("var/log/k8s4r-agent.log");
    let agent_pids = || find(&rootfs, "k8s4r-agent --data-dir");
    // Its first words (whatever they are) say init has started it.
    wait_for("init to start the agent", STEP, || {
        (std::fs::metadata(&log).ok()?.len() > 0).then_some(())
    });
    // Every agent process seen in the window: one, unless it exits and
    // init starts another.
    let mut seen = std::collections::BTreeSet::new();
    let (start, cpu_before) = (std::time::Instant::now(), image_cpu_ticks(&rootfs));
    common::throughout("watching the agent", WINDOW, || {
        seen.extend(agent_pids());
        Ok(())
    });
    let used = image_cpu_ticks(&rootfs).saturating_sub(cpu_before);
    let elapsed = start.elapsed();
    let share = used as f64 / clock_ticks_per_second() as f64 / elapsed.as_secs_f64();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!(
        "unconfigured image: {used} ticks of CPU in {elapsed:?} ({:.3}% of a CPU), agent pids {seen:?}",
        share * 100.0
    );
    assert!(share < 0.01, "{:.2}% of a CPU\n{text}", share * 100.0);
    assert_eq!(seen.len(), 1, "one agent process throughout: {seen:?}\n{text}");
    let missing = "waiting: no server";
    let said = text.matches(missing).count();
    assert!(
        (1..=2).contains(&said),
        "said once a minute, {said} times in {elapsed:?}: {text}"
    );
}

/// Over-the-air updates in the image (init is busybox, the agent
/// /usr/bin/k8s4r-agent, connected to a control plane on the host): a good
/// release (the same static agent with another version in its slot) is
/// applied in place, the agent keeps its process and both tasks theirs; a
/// release that dies at start is restarted by init three times and then
/// rolled back, the tasks untouched; a release with a forged signature is
/// refused before anything is downloaded; then a kill -9 at each of
/// `kill_points` while a release is applied leaves a working agent (init
/// respawns it, it finishes the update) and starts no task twice.
fn update_in_image(arch: &str, agent: &Path, kill_points: &[&str]) {
    use server_util::Server;
    use std::process::Command;
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("release");
    let k8s4r = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(server_util::server_bin()).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    k8s4r(&["release".as_ref(), "keygen".as_ref(), "--out".as_ref(), key.as_os_str()]);
    let public = key.with_extension("pub");
    let server = Server::start_with(&[
        "--poll-interval",
        "1s",
        "--release-public-key",
        public.to_str().unwrap(),
    ]);
    let token = server.join_token();
    let rootfs = build_rootfs(
        tmp.path(),
        arch,
        agent,
        &[
            "--server".as_ref(),
            server.agent_base.as_ref(),
            "--join-token".as_ref(),
            token.as_ref(),
            "--name".as_ref(),
            "img".as_ref(),
        ],
    );
    // Test-only faults: the "0.9.2-dies" build exits at every start; a
    // fault written to FAULT_FILE applies to the next start only (init's
    // script consumes it), and the agent exec'd from that start inherits it.
    let script = rootfs.join("etc/init.d/k8s4r-agent");
    let text = std::fs::read_to_string(&script).unwrap();
    std::fs::write(
        &script,
        text.replace(
            "exec /usr/bin",
            &format!(
                "f=$(cat {FAULT_FILE} 2>/dev/null); rm -f {FAULT_FILE}\n\
                 K8S4R_TEST_FAULT=${{f:-exit-at-start@0.9.2-dies}} exec /usr/bin"
            ),
        ),
    )
    .unwrap();
    let files = tmp.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let (port, requests) = common::serve_dir(files.clone());
    let mut booted = boot(&rootfs);
    let status = || {
        server
            .object("robots", "img")
            .map(|r| r["status"].clone())
            .unwrap_or_default()
    };
    let slow = Duration::from_secs(120);
    // (Timed out once at 120 s in CI, the image tests side by side on 2
    // cores under qemu; 17 s alone: a longer bound, and what the image ran.)
    wait_for_or_explain(
        "the image's robot Online",
        slow * 2,
        || (status()["phase"] == "Online").then_some(()),
        || {
            format!(
                "\nrobot status: {}\nprocesses in the image: {:?}\nagent log: {}\nunshare exited: {:?}",
                status(),
                inside(&rootfs),
                std::fs::read_to_string(rootfs.join("var/log/k8s4r-agent.log")).unwrap_or_else(|e| e.to_string()),
                booted.child.try_wait()
            )
        },
    );
    let pair: Vec<serde_json::Value> = ["a", "b"]
        .map(|t| {
            serde_json::json!({"name": t, "driver": "exec",
                "config": {"execConfig": {"command": "/bin/sh", "args": ["-c", "exec sleep 3600"]}}})
        })
        .to_vec();
    let job = serde_json::json!({
        "apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job",
        "metadata": {"name": "pair", "namespace": "default"},
        "spec": {"type": "service", "taskGroups": [{"name": "g", "tasks": pair}]}
    });
    let r = server.send_json("POST", "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs", &job);
    assert_eq!(r.status, 201, "{}", r.body);
    let tasks = wait_for("two tasks in the image", slow, || {
        let found = find(&rootfs, "sleep 3600");
        (found.len() == 2).then_some(found)
    });
    let agent_pid = find(&rootfs, "k8s4r-agent --data-dir")[0];
    let release = |name: &str, version: &str, key: &Path| {
        let file = files.join(version);
        k8s4r(&[
            "release".as_ref(),
            "set-version".as_ref(),
            "--version".as_ref(),
            version.as_ref(),
            agent.as_os_str(),
            file.as_os_str(),
        ]);
        let url = format!("http://127.0.0.1:{port}/{version}");
        let yaml = k8s4r(&[
            "release".as_ref(),
            "sign".as_ref(),
            "--key".as_ref(),
            key.as_os_str(),
            "--arch".as_ref(),
            arch.as_ref(),
            "--url".as_ref(),
            url.as_ref(),
            "--name".as_ref(),
            name.as_ref(),
            file.as_os_str(),
        ]);
        let body: serde_json::Value = serde_yaml_ng::from_str(&yaml).unwrap();
        let r = server.send_json("POST", "/apis/robot.k8s4r.io/v1alpha1/agentreleases", &body);
        assert_eq!(r.status, 201, "{}", r.body);
    };
    let same = |what: &str| {
        assert_eq!(
            find(&rootfs, "sleep 3600"),
            tasks,
            "{what}: the same two task processes"
        );
    };
    let log = rootfs.join("var/log/k8s4r-agent.log");

    release("a-good", "0.9.1-good", &key.with_extension("key"));
    wait_for("0.9.1-good reported", slow, || {
        let s = status();
        (s["agentVersion"] == "0.9.1-good" && s["lastUpdate"]["result"] == "Applied").then_some(())
    });
    same("after the update");
    assert_eq!(
        find(&rootfs, "k8s4r-agent --data-dir"),
        vec![agent_pid],
        "exec in place: init saw nothing"
    );
    assert!(rootfs.join("usr/bin/k8s4r-agent.prev").exists());

    release("b-dies", "0.9.2-dies", &key.with_extension("key"));
    let s = wait_for("0.9.2-dies rolled back", Duration::from_secs(180), || {
        let s = status();
        (s["lastUpdate"]["result"] == "RolledBack").then_some(s)
    });
    assert_eq!(s["agentVersion"], "0.9.1-good", "{s}");
    same("after the rollback");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("test fault exit-at-start").count(), 3, "{text}");

    let other = tmp.path().join("other");
    k8s4r(&[
        "release".as_ref(),
        "keygen".as_ref(),
        "--out".as_ref(),
        other.as_os_str(),
    ]);
    let before = requests.lock().unwrap().len();
    release("c-forged", "0.9.3-forged", &other.with_extension("key"));
    let s = wait_for("0.9.3-forged refused", slow, || {
        let s = status();
        (s["lastUpdate"]["version"] == "0.9.3-forged").then_some(s)
    });
    assert_eq!(s["lastUpdate"]["result"], "Refused", "{s}");
    assert_eq!(requests.lock().unwrap().len(), before, "nothing downloaded");
    same("after the refusal");

    // kill -9 at each step of an update, respawned by init: each release
    // still ends Applied, with the same two tasks. The fault of step i is in
    // the environment of the agent that receives release i; it is written to
    // FAULT_FILE before release i-1 and so taken by the start that step i-1's
    // kill causes (the first by a kill of an idle agent), scoped to the
    // version that meets it, so the recovery of step i-1 passes through it.
    let versions: Vec<String> = (0..kill_points.len()).map(|i| format!("0.9.{}-k{i}", i + 4)).collect();
    let scoped = |i: usize| {
        let point = kill_points[i];
        // kill-after-exec strikes in the new agent, the others in the old.
        let meets = if point == "kill-after-exec" {
            versions[i].as_str()
        } else if i == 0 {
            "0.9.1-good"
        } else {
            versions[i - 1].as_str()
        };
        format!("{point}@{meets}")
    };
    let fault_file = rootfs.join(FAULT_FILE.trim_start_matches('/'));
    let agent_now = || find(&rootfs, "k8s4r-agent --data-dir");
    if !kill_points.is_empty() {
        std::fs::write(&fault_file, scoped(0)).unwrap();
        let idle = agent_now()[0];
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(idle as i32).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        wait_for("init to respawn the idle agent, armed", slow, || {
            (!fault_file.exists() && agent_now().iter().any(|p| *p != idle)).then_some(())
        });
    }
    for (i, point) in kill_points.iter().enumerate() {
        let step = std::time::Instant::now();
        let version = versions[i].as_str();
        if i + 1 < kill_points.len() {
            std::fs::write(&fault_file, scoped(i + 1)).unwrap();
        }
        release(&format!("k{i}"), version, &key.with_extension("key"));
        let s = wait_for_or_explain(
            &format!("{point}: {version} applied"),
            slow,
            || {
                let s = status();
                let done = s["lastUpdate"]["version"] == version
                    && (s["lastUpdate"]["result"] != "Applied" || s["agentVersion"] == version);
                done.then_some(s)
            },
            || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!(
                    "\nRobot status: {}\nagent log (last 60 lines):\n{}",
                    status(),
                    tail.join("\n")
                )
            },
        );
        assert_eq!(s["lastUpdate"]["result"], "Applied", "{point}: {s}");
        assert_eq!(s["agentVersion"], version, "{point}: {s}");
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            text.matches(&format!("test fault {point}")).count(),
            1,
            "{point}: killed once: {text}"
        );
        // Init's start took the next step's fault: the kill happened.
        assert!(!fault_file.exists(), "{point}: init restarted the agent");
        same(point);
        assert_eq!(
            std::fs::read(rootfs.join("usr/bin/k8s4r-agent")).unwrap(),
            std::fs::read(files.join(version)).unwrap(),
            "{point}: the new binary in place"
        );
        let mut left: Vec<String> = std::fs::read_dir(rootfs.join("var/lib/k8s4r/update"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["last.json"], "{point}: nothing left behind");
        eprintln!("{arch}: {point} step in {:?}", step.elapsed());
    }
}

/// The steps of an update a kill -9 (a power cut) may hit.
const KILL_POINTS: [&str; 4] = [
    "kill-mid-download",
    "kill-after-verify",
    "kill-after-rename",
    "kill-after-exec",
];

/// Where the test leaves a fault for the agent's next start (see
/// `update_in_image`).
const FAULT_FILE: &str = "/etc/k8s4r/test-fault";

#[test]
fn x86_64_image_updates_its_agent_over_the_air() {
    if let (Some(agent), true) = (static_agent("x86_64"), can_boot()) {
        update_in_image("x86_64", &agent, &KILL_POINTS);
    }
}

#[test]
fn aarch64_image_updates_its_agent_over_the_air_under_qemu_user() {
    if let (true, Some(agent), true) = (can_boot(), static_agent("aarch64"), aarch64_runs_here()) {
        update_in_image("aarch64", &agent, &KILL_POINTS);
    }
}
