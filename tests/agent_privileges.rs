//! Least privilege on the robot (issue #14), attacked the way a hostile
//! task would, with the real `k8s4r-agent run` as root and real processes:
//!
//! - a task that swaps its `local/` for a symlink gets nothing through it
//!   at its next start (directories are owned by descriptor, never by path);
//! - a check script the task rewrote runs as the task's user, never root;
//! - a fork bomb stays under its `pids.max` while the agent and another
//!   task carry on;
//! - `--allow-root-tasks=false` refuses a task that would run as root, and
//!   `--default-user` gives a user to tasks that name none.

mod common;

use common::standalone::*;
use common::wait_for;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

const USER_SWITCH: &str = "user switching needs the agent to run as root";

/// A root-owned directory outside the agent's data dir standing in for
/// /etc (the real /etc is never put at risk by a test).
fn victim(sb: &Sandbox) -> PathBuf {
    let dir = sb.path().join("victim");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn owner_and_mode(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

/// The task (as nobody) replaces `local` with a symlink to the victim and
/// fails; at its restart the agent must neither chown nor chmod through the
/// link: the restart is refused with a message and the victim stays root's.
#[test]
fn a_task_that_swaps_local_for_a_symlink_gets_nothing_at_its_restart() {
    if skip_unless_root(USER_SWITCH) {
        return;
    }
    let sb = Sandbox::new();
    let victim = victim(&sb);
    let before = (owner_and_mode(&victim), owner_and_mode(&victim.join("passwd")));
    let file = sb.job(&job(
        "swap",
        "batch",
        &format!(
            r#"    - name: g
      tasks:
        - name: t
          driver: exec
          user: nobody
          restartPolicy: {{attempts: 2, delay: 10ms}}
          config:
            execConfig:
              command: /bin/sh
              args: ["-c", "mv local local.old && ln -s {victim} local && exit 1"]
"#,
            victim = victim.display()
        ),
    ));
    let mut agent = sb.run(&file, &[]);
    assert_eq!(agent.wait_exit(), 1, "{}", agent.output());
    let out = agent.output();
    let task_dir = sb.data().join("alloc/swap-g/r0/t");
    // The swap happened (the task did run as the owner of its directory)...
    assert!(
        std::fs::symlink_metadata(task_dir.join("local")).unwrap().is_symlink(),
        "{out}"
    );
    // ...and the restart refused to follow it.
    assert!(out.contains("is a symlink or not a directory"), "{out}");
    assert_eq!(
        (owner_and_mode(&victim), owner_and_mode(&victim.join("passwd"))),
        before,
        "the victim directory changed hands: {out}"
    );
    // The task's own directory is private to it.
    assert_eq!(owner_and_mode(&task_dir), (65534, 65534, 0o700));
}

/// The task writes its own check script; the check must run it exactly as
/// the task runs: uid/gid nobody, NoNewPrivs, no capabilities.
#[test]
fn a_check_script_rewritten_by_its_task_runs_as_the_task_user() {
    if skip_unless_root(USER_SWITCH) {
        return;
    }
    let sb = Sandbox::new();
    let file = sb.job(&job(
        "probe",
        "service",
        r#"    - name: g
      tasks:
        - name: t
          driver: exec
          user: nobody
          services:
            - name: t
              checks:
                - {name: own, type: script, command: /bin/sh, args: [local/check.sh], interval: 50ms, timeout: 2s}
          config:
            execConfig:
              command: /bin/sh
              args:
                - -c
                - |
                  printf '%s\n' 'grep -E "^(Uid|Gid|CapEff|NoNewPrivs):" /proc/self/status > local/probe.tmp' 'mv local/probe.tmp local/probe.out' > local/check.sh
                  while [ ! -e local/stop ]; do sleep 0.05; done
"#,
    ));
    let mut agent = sb.run(&file, &[]);
    let local = sb.data().join("alloc/probe-g/r0/t/local");
    let seen = wait_for("the check script to run", T, || {
        std::fs::read_to_string(local.join("probe.out")).ok()
    });
    let fields: Vec<String> = seen
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        fields,
        [
            "Uid: 65534 65534 65534 65534",
            "Gid: 65534 65534 65534 65534",
            "CapEff: 0000000000000000",
            "NoNewPrivs: 1"
        ],
        "{seen}"
    );
    agent.wait_line("g r0 t: health: healthy");
    std::fs::write(local.join("stop"), "").unwrap();
    assert_eq!(agent.wait_exit(), 0, "{}", agent.output());
}

/// A cgroup root of this test's own (v2, or v1 pids on hybrid systems),
/// removed afterwards; None (with a SKIP message) without either.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new(name: &str) -> Option<TestCgroup> {
        let base = Path::new("/sys/fs/cgroup");
        let v2 = base.join("cgroup.controllers").exists();
        let v1 = base.join("pids/cgroup.procs").exists();
        if !is_root() || !(v2 || v1) {
            eprintln!("SKIP: needs root and a cgroup v2 or v1 pids hierarchy");
            return None;
        }
        Some(TestCgroup(base.join(format!("{name}-{}", std::process::id()))))
    }
    /// Where the unit's pids.max lives.
    fn unit_dir(&self, unit: &str) -> PathBuf {
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let root = if v2 {
            self.0.clone()
        } else {
            Path::new("/sys/fs/cgroup/pids").join(self.0.file_name().unwrap())
        };
        root.join(unit)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for root in [
            self.0.clone(),
            Path::new("/sys/fs/cgroup/pids").join(self.0.file_name().unwrap()),
        ] {
            let Ok(entries) = std::fs::read_dir(&root) else {
                continue;
            };
            for e in entries.flatten().filter(|e| e.path().is_dir()) {
                let procs = std::fs::read_to_string(e.path().join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                    unsafe_free_kill(pid);
                }
                let _ = std::fs::remove_dir(e.path());
            }
            let _ = std::fs::remove_dir(&root);
        }
    }
}

/// A fork bomb with `resources.pids: 16` beside a task that counts: the
/// bomb's cgroup never holds more than 16 processes, the counter keeps
/// counting, and the agent still stops everything on SIGTERM.
#[test]
fn a_fork_bomb_stays_under_pids_max_while_the_agent_and_another_task_carry_on() {
    let Some(cg) = TestCgroup::new("k8s4r-bomb") else {
        return;
    };
    let sb = Sandbox::new();
    let file = sb.job(&job(
        "bomb",
        "service",
        r#"    - name: g
      tasks:
        - name: bomb
          driver: exec
          user: nobody
          resources: {pids: 16}
          config: {execConfig: {command: /bin/sh, args: ["-c", "b() { b | b & }; b; while :; do b 2>/dev/null; sleep 0.01; done"]}}
        - name: counter
          driver: exec
          config: {execConfig: {command: /bin/sh, args: ["-c", "i=0; while :; do i=$((i+1)); echo $i > local/n.tmp; mv local/n.tmp local/n; sleep 0.05; done"]}}
"#,
    ));
    let cgroup_root = cg.0.display().to_string();
    let mut agent = sb.run(&file, &["--cgroup-root", &cgroup_root]);
    agent.wait_line("g r0 bomb: running pid");
    agent.wait_line("g r0 counter: running pid");
    let bomb = cg.unit_dir("bomb-g-r0-bomb");
    assert_eq!(std::fs::read_to_string(bomb.join("pids.max")).unwrap().trim(), "16");
    let count = |f: &str| -> u64 {
        std::fs::read_to_string(bomb.join(f))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    // The bomb has hit its cap (the kernel counted refused forks)...
    wait_for("the bomb to hit pids.max", T, || {
        std::fs::read_to_string(bomb.join("pids.events"))
            .ok()
            .filter(|e| e.split_whitespace().nth(1).is_some_and(|n| n != "0"))
    });
    // ...and the other task still makes progress.
    let counter = sb.data().join("alloc/bomb-g/r0/counter/local/n");
    let read_n = || -> u64 {
        std::fs::read_to_string(&counter)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let first = read_n();
    wait_for("the counter to advance under the bomb", T, || {
        (read_n() >= first + 10).then_some(())
    });
    assert!(count("pids.current") <= 16, "pids.current {}", count("pids.current"));
    if bomb.join("pids.peak").exists() {
        assert!(count("pids.peak") <= 16, "pids.peak {}", count("pids.peak"));
    }
    // The agent is responsive: it stops everything, the bomb included.
    signal(agent.child.id(), "TERM");
    agent.wait_exit();
    wait_for("the bomb's cgroup to empty", T, || {
        (count("pids.current") == 0).then_some(())
    });
}

/// `--allow-root-tasks=false`: a task without a user (the agent is root) and
/// one with `user: root` are refused with a clear reason; one with a user
/// runs. `--default-user nobody` makes the task without a user run as nobody.
#[test]
fn root_tasks_follow_the_robot_policy() {
    if skip_unless_root(USER_SWITCH) {
        return;
    }
    let groups = r#"    - name: g
      tasks:
        - {name: anon, driver: exec, config: {execConfig: {command: /bin/sh, args: ["-c", "id -u"]}}}
        - {name: asroot, driver: exec, user: root, config: {execConfig: {command: /bin/sh, args: ["-c", "id -u"]}}}
        - {name: asnobody, driver: exec, user: nobody, config: {execConfig: {command: /bin/sh, args: ["-c", "id -u"]}}}
"#;
    let sb = Sandbox::new();
    let file = sb.job(&job("policy", "batch", groups));
    let mut agent = sb.run(&file, &["--allow-root-tasks", "false"]);
    assert_eq!(agent.wait_exit(), 1, "{}", agent.output());
    let out = agent.output();
    for t in ["anon", "asroot"] {
        let refused: Vec<String> = out
            .lines()
            .filter(|l| l.contains(&format!("g r0 {t}:")) && l.contains("refusing to run as root"))
            .map(String::from)
            .collect();
        assert!(!refused.is_empty(), "{t} was not refused:\n{out}");
    }
    let stdout =
        |sb: &Sandbox, t: &str| std::fs::read_to_string(sb.data().join(format!("alloc/policy-g/r0/{t}/logs/stdout")));
    assert_eq!(stdout(&sb, "asnobody").unwrap(), "65534\n");
    assert!(stdout(&sb, "anon").unwrap_or_default().is_empty(), "anon ran");

    let sb = Sandbox::new();
    let file = sb.job(&job(
        "policy",
        "batch",
        groups
            .replace("        - {name: asroot", "        # - {name: asroot")
            .as_str(),
    ));
    let mut agent = sb.run_with_env(
        &file,
        &["--default-user", "nobody"],
        &[("K8S4R_ALLOW_ROOT_TASKS", "false")],
    );
    assert_eq!(agent.wait_exit(), 0, "{}", agent.output());
    assert_eq!(stdout(&sb, "anon").unwrap(), "65534\n");
}

/// The group's shared directory is the group's: owned by the one user its
/// tasks run as (0700, so other groups' tasks cannot read it), where two
/// of them pass a file; tasks as two users with a group in common share it
/// through that group (root's, 02770); users with no group in common can
/// only read it (the agent's, 0755).
#[test]
fn the_groups_shared_directory_belongs_to_its_users() {
    if skip_unless_root(USER_SWITCH) {
        return;
    }
    // Debian's sync has nobody's primary group (nogroup); daemon does not.
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let gid_of = |user: &str| {
        passwd
            .lines()
            .find(|l| l.starts_with(&format!("{user}:")))
            .and_then(|l| l.split(':').nth(3)?.parse::<u32>().ok())
    };
    let (Some(nogroup), Some(sync_gid), Some(daemon_gid)) = (gid_of("nobody"), gid_of("sync"), gid_of("daemon")) else {
        eprintln!("SKIP: needs the accounts nobody, sync and daemon");
        return;
    };
    assert!(
        nogroup == sync_gid && nogroup != daemon_gid,
        "unexpected accounts: {passwd}"
    );
    let sb = Sandbox::new();
    let file = sb.job(&job(
        "share",
        "batch",
        r#"    - name: one
      tasks:
        - {name: writer, driver: exec, user: nobody, config: {execConfig: {command: /bin/sh, args: ["-c", "echo hi > $K8S4R_ALLOC_DIR/msg.tmp && mv $K8S4R_ALLOC_DIR/msg.tmp $K8S4R_ALLOC_DIR/msg"]}}}
        - {name: reader, driver: exec, user: nobody, config: {execConfig: {command: /bin/sh, args: ["-c", "while [ ! -e $K8S4R_ALLOC_DIR/msg ]; do sleep 0.05; done; cat $K8S4R_ALLOC_DIR/msg"]}}}
    - name: grouped
      tasks:
        - {name: writer, driver: exec, user: nobody, config: {execConfig: {command: /bin/sh, args: ["-c", "echo from-nobody > $K8S4R_ALLOC_DIR/msg.tmp && mv $K8S4R_ALLOC_DIR/msg.tmp $K8S4R_ALLOC_DIR/msg"]}}}
        - {name: reader, driver: exec, user: sync, config: {execConfig: {command: /bin/sh, args: ["-c", "while [ ! -e $K8S4R_ALLOC_DIR/msg ]; do sleep 0.05; done; cat $K8S4R_ALLOC_DIR/msg"]}}}
    - name: apart
      tasks:
        - {name: a, driver: exec, user: nobody, config: {execConfig: {command: /bin/true}}}
        - {name: b, driver: exec, user: daemon, config: {execConfig: {command: /bin/true}}}
"#,
    ));
    let mut agent = sb.run(&file, &[]);
    assert_eq!(agent.wait_exit(), 0, "{}", agent.output());
    let read = |p: &str| std::fs::read_to_string(sb.data().join(p)).unwrap();
    assert_eq!(read("alloc/share-one/r0/reader/logs/stdout"), "hi\n");
    assert_eq!(read("alloc/share-grouped/r0/reader/logs/stdout"), "from-nobody\n");
    assert_eq!(
        owner_and_mode(&sb.data().join("alloc/share-one/alloc")),
        (65534, nogroup, 0o700)
    );
    assert_eq!(
        owner_and_mode(&sb.data().join("alloc/share-grouped/alloc")),
        (0, nogroup, 0o2770)
    );
    assert_eq!(
        owner_and_mode(&sb.data().join("alloc/share-apart/alloc")),
        (0, 0, 0o755)
    );
}
