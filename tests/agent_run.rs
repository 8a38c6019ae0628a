//! Black-box tests of `k8s4r-agent run`: the real binary, real processes,
//! temp data dirs. Every wait is for a condition with a deadline; every
//! process a test starts is killed by a Drop guard (found through the
//! K8S4R_ALLOC_DIR in its environment, so grandchildren are found too).

mod common;

use common::standalone::*;
use common::{agent_bin, serve_recording, shared_dir, wait_for};
use k8s4r::agent::supervisor::state::StateFile;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

#[test]
fn compat_taskgroup_simple_runs_to_success() {
    let Some(shared) = shared_dir() else { return };
    let file = shared.join("compat/test-taskgroup-simple.yaml");
    let sb = Sandbox::new();
    let mut agent = sb.run(&file, &[]);
    assert_eq!(agent.wait_exit(), 0, "{}", agent.output());
    let out = agent.output();
    for want in [
        "simple-group setup-workspace: exited 0",
        "simple-group background-service: running pid",
        "simple-group r0 verify-and-run: running pid",
        "simple-group r0 verify-and-run: exited 0",
        "all tasks succeeded",
        "simple-group background-service: stopped",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let log = std::fs::read_to_string(
        sb.data()
            .join("alloc/test-taskgroup-simple-simple-group/r0/verify-and-run/logs/stdout"),
    )
    .unwrap();
    assert!(log.contains("Main task completed successfully"), "{log}");
    assert!(sandbox_pids(&sb.data()).is_empty(), "processes left behind");
}

#[test]
fn init_tasks_run_once_in_order_and_a_failure_fails_the_group() {
    let sb = Sandbox::new();
    let ok = sb.job(&job(
        "order",
        "batch",
        r#"    - name: g
      count: 2
      initTasks:
        - {name: first, driver: exec, config: {execConfig: {command: /bin/sh, args: ["-c", "sleep 0.2; echo first >> $K8S4R_ALLOC_DIR/trace"]}}}
        - {name: second, driver: exec, config: {execConfig: {command: /bin/sh, args: ["-c", "echo second >> $K8S4R_ALLOC_DIR/trace"]}}}
      tasks:
        - {name: main, driver: exec, config: {execConfig: {command: /bin/sh, args: ["-c", "echo main-$K8S4R_REPLICA >> $K8S4R_ALLOC_DIR/trace"]}}}
"#,
    ));
    let mut agent = sb.run(&ok, &[]);
    assert_eq!(agent.wait_exit(), 0, "{}", agent.output());
    let trace = std::fs::read_to_string(sb.data().join("alloc/order-g/alloc/trace")).unwrap();
    let mut lines: Vec<&str> = trace.lines().collect();
    // Init tasks once (not per replica), in order, before any task.
    assert_eq!(&lines[..2], ["first", "second"], "{trace}");
    lines.sort();
    assert_eq!(lines, ["first", "main-0", "main-1", "second"]);

    let sb = Sandbox::new();
    let failing = sb.job(&job(
        "broken",
        "batch",
        r#"    - name: g
      initTasks:
        - {name: setup, driver: exec, config: {execConfig: {command: /bin/sh, args: ["-c", "echo disk not mounted >&2; exit 3"]}}}
        - {name: never, driver: exec, config: {execConfig: {command: /bin/sh, args: ["-c", "touch $K8S4R_ALLOC_DIR/never"]}}}
      tasks:
        - {name: main, driver: exec, config: {execConfig: {command: /bin/true}}}
"#,
    ));
    let mut agent = sb.run(&failing, &[]);
    assert_eq!(agent.wait_exit(), 1, "{}", agent.output());
    let out = agent.output();
    assert!(out.contains("task group failed: init task setup exited 3"), "{out}");
    assert!(out.contains("[stderr] disk not mounted"), "log tail missing:\n{out}");
    assert!(
        out.contains("g r0 main: not started: init task setup exited 3"),
        "{out}"
    );
    assert!(!out.contains("never: running"), "{out}");
    assert!(!sb.data().join("alloc/broken-g/alloc/never").exists());
}

#[test]
fn daemon_is_restarted_after_kill_9_and_stopped_with_its_group() {
    let sb = Sandbox::new();
    let file = sb.job(&job(
        "daemons",
        "service",
        r#"    - name: g
      initTasks:
        - name: helper
          driver: exec
          daemon: true
          restartPolicy: {delay: 100ms}
          config: {execConfig: {command: /bin/sleep, args: ["300"]}}
      tasks:
        - {name: main, driver: exec, config: {execConfig: {command: /bin/sh, args: ["-c", "while [ ! -e $K8S4R_ALLOC_DIR/done ]; do sleep 0.05; done"]}}}
"#,
    ));
    let mut agent = sb.run(&file, &[]);
    let first = agent.pid_of("g helper: running pid");
    agent.wait_line("g r0 main: running pid");
    unsafe_free_kill(first);
    agent.wait_line("g helper: killed by signal 9; restarting in 100ms");
    let second = wait_for("a new helper pid", T, || {
        let pids: Vec<i32> = agent
            .lines_with("g helper: running pid")
            .iter()
            .map(|(_, l)| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        pids.get(1).copied()
    });
    assert_ne!(first, second);
    assert!(alive(second));
    std::fs::write(sb.data().join("alloc/daemons-g/alloc/done"), "").unwrap();
    assert_eq!(agent.wait_exit(), 0, "{}", agent.output());
    assert!(!alive(second), "the daemon must stop with its group");
}

#[test]
fn restart_policy_counts_and_backs_off_exponentially() {
    let sb = Sandbox::new();
    let file = sb.job(&job(
        "flaky",
        "batch",
        r#"    - name: g
      tasks:
        - name: t
          driver: exec
          restartPolicy: {attempts: 3, interval: 1m, delay: 100ms, mode: fail}
          config: {execConfig: {command: /bin/sh, args: ["-c", "date +%s%N >> $K8S4R_ALLOC_DIR/runs; exit 1"]}}
"#,
    ));
    let mut agent = sb.run(&file, &[]);
    assert_eq!(agent.wait_exit(), 1, "{}", agent.output());
    let out = agent.output();
    assert!(out.contains("restarting in 100ms (restart 1/3)"), "{out}");
    assert!(out.contains("restarting in 200ms (restart 2/3)"), "{out}");
    assert!(out.contains("restarting in 400ms (restart 3/3)"), "{out}");
    assert!(out.contains("g r0 t: failed: exited 1 (after 3 restarts)"), "{out}");
    assert_eq!(agent.lines_with("g r0 t: running pid").len(), 4, "{out}");
    // Each run wrote its own start time (ns): measured by the tasks, not by
    // when this test happened to read the agent's output.
    let starts: Vec<u128> = std::fs::read_to_string(sb.data().join("alloc/flaky-g/alloc/runs"))
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(starts.len(), 4);
    for (i, want) in [100u128, 200, 400].iter().enumerate() {
        let gap_ms = (starts[i + 1] - starts[i]) / 1_000_000;
        assert!(
            gap_ms >= *want,
            "restart {} came after {gap_ms} ms, before its {want} ms backoff",
            i + 1
        );
    }
}

/// A task whose program cannot start fails with the reason, named for a
/// person (not found; not executable), and its group's other task runs.
#[test]
fn a_task_that_cannot_start_says_why_and_its_neighbour_runs() {
    let sb = Sandbox::new();
    let file = sb.job(&job(
        "nostart",
        "batch",
        r#"    - name: g
      tasks:
        - name: missing
          driver: exec
          restartPolicy: {attempts: 0, mode: fail}
          config: {execConfig: {command: no-such-program-k8s4r}}
        - name: notexec
          driver: exec
          restartPolicy: {attempts: 0, mode: fail}
          config: {execConfig: {command: /etc/passwd}}
        - name: fine
          driver: exec
          config: {execConfig: {command: /bin/sh, args: ["-c", "echo fine > $K8S4R_ALLOC_DIR/fine"]}}
"#,
    ));
    let mut agent = sb.run(&file, &[]);
    assert_eq!(agent.wait_exit(), 1, "{}", agent.output());
    let out = agent.output();
    assert!(
        out.contains("g r0 missing: failed: failed to start: no-such-program-k8s4r: command not found"),
        "{out}"
    );
    let denied = std::io::Error::from_raw_os_error(13);
    assert!(
        out.contains(&format!("g r0 notexec: failed: failed to start: /etc/passwd: {denied}")),
        "{out}"
    );
    let fine = std::fs::read_to_string(sb.data().join("alloc/nostart-g/alloc/fine")).unwrap();
    assert_eq!(fine.trim(), "fine");
}

#[test]
fn timeout_kills_a_process_tree_of_three_generations() {
    let sb = Sandbox::new();
    // task -> child -> grandchild; the grandchild ignores SIGTERM, so only
    // the SIGKILL after killTimeout can end it.
    let file = sb.job(&job(
        "slow",
        "batch",
        r#"    - name: g
      tasks:
        - name: t
          driver: exec
          timeout: 1s
          killTimeout: 300ms
          config:
            execConfig:
              command: /bin/sh
              args:
                - -c
                - |
                  sh -c 'trap "" TERM; sleep 300 & echo $! > grandchild.pid; wait' &
                  echo $! > child.pid
                  wait
"#,
    ));
    let mut agent = sb.run(&file, &[]);
    assert_eq!(agent.wait_exit(), 1, "{}", agent.output());
    let out = agent.output();
    assert!(out.contains("g r0 t: timed out after 1s, sending SIGTERM"), "{out}");
    assert!(out.contains("g r0 t: failed: timed out after 1s"), "{out}");
    let dir = sb.data().join("alloc/slow-g/r0/t");
    let task_pid: i32 = agent.pid_of("g r0 t: running pid");
    for f in ["child.pid", "grandchild.pid"] {
        let pid: i32 = std::fs::read_to_string(dir.join(f)).unwrap().trim().parse().unwrap();
        assert!(!alive(pid), "{f} ({pid}) survived");
    }
    assert!(!alive(task_pid));
    assert!(sandbox_pids(&sb.data()).is_empty());
}

#[test]
fn log_rotation_cap_holds_under_50_mib_of_output() {
    let sb = Sandbox::new();
    let file = sb.job(&job(
        "chatty",
        "batch",
        r#"    - name: g
      tasks:
        - name: t
          driver: exec
          config: {execConfig: {command: /bin/sh, args: ["-c", "yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 52428800; echo; echo the-end"]}}
"#,
    ));
    let mut agent = sb.run(&file, &["--log-max-size", "1Mi", "--log-max-files", "3"]);
    assert_eq!(agent.wait_exit(), 0, "{}", agent.output());
    let logs = sb.data().join("alloc/chatty-g/r0/t/logs");
    let mut total = 0;
    let mut files = 0;
    for e in std::fs::read_dir(&logs).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if name.starts_with("stdout") {
            let len = e.metadata().unwrap().len();
            assert!(len <= 1024 * 1024, "{name} is {len} bytes");
            total += len;
            files += 1;
        }
    }
    assert_eq!(files, 3);
    assert!(total <= 3 * 1024 * 1024);
    let out = sb.agent_cmd(&["logs", "chatty-g-r0-t", "--tail", "1"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "the-end\n");
}

#[test]
fn no_zombies_after_200_short_tasks() {
    let sb = Sandbox::new();
    // Each short task also leaves an orphan behind for the subreaper.
    let file = sb.job(&job(
        "many",
        "service",
        r#"    - name: short
      count: 200
      tasks:
        - {name: t, driver: exec, config: {execConfig: {command: /bin/sh, args: ["-c", "sleep 0.01 & exit 0"]}}}
    - name: long
      tasks:
        - {name: keep, driver: exec, config: {execConfig: {command: /bin/sleep, args: ["300"]}}}
"#,
    ));
    let mut agent = sb.run(&file, &[]);
    wait_for("200 tasks to exit", T, || {
        (agent.lines_with(": exited 0").len() == 200).then_some(())
    });
    let agent_pid = agent.child.id() as i32;
    let zombies = || -> Vec<i32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                    let rest: Vec<&str> = s
                        .rsplit_once(')')
                        .map(|(_, r)| r.split_whitespace().collect())
                        .unwrap_or_default();
                    rest.first() == Some(&"Z") && rest.get(1) == Some(&agent_pid.to_string().as_str())
                })
            })
            .collect()
    };
    // Orphans exit shortly after their parents; all must be reaped.
    wait_for("no zombie children of the agent", T, || {
        zombies().is_empty().then_some(())
    });
    signal(agent.child.id(), "TERM");
    assert_eq!(agent.wait_exit(), 0, "{}", agent.output());
    assert!(agent.output().contains("long r0 keep: stopped"));
}

#[test]
fn agent_killed_with_9_readopts_its_ten_tasks() {
    let sb = Sandbox::new();
    let file = sb.job(&job(
        "fleet",
        "service",
        r#"    - name: g
      count: 10
      tasks:
        - {name: t, driver: exec, config: {execConfig: {command: /bin/sh, args: ["-c", "echo started; exec sleep 300"]}}}
"#,
    ));
    let collect = |agent: &Agent, what: &str| -> BTreeSet<i32> {
        wait_for(&format!("10 {what} lines"), T, || {
            let lines = agent.lines_with(what);
            (lines.len() == 10).then(|| {
                lines
                    .iter()
                    .map(|(_, l)| l.rsplit(' ').next().unwrap().parse().unwrap())
                    .collect()
            })
        })
    };
    let mut first = sb.run(&file, &[]);
    let pids = collect(&first, ": running pid");
    wait_for("the state file to list 10 pids", T, || {
        let state = StateFile::read(&sb.data()).ok()?;
        (state.units.values().filter(|u| u.pid.is_some()).count() == 10).then_some(())
    });
    signal(first.child.id(), "KILL");
    first.wait_exit();

    let mut second = sb.run(&file, &[]);
    let adopted = collect(&second, ": adopted running pid");
    assert_eq!(adopted, pids, "{}", second.output());
    assert!(
        !second.output().contains(": running pid"),
        "nothing may be started twice:\n{}",
        second.output()
    );
    let live: BTreeSet<i32> = sandbox_pids(&sb.data()).into_iter().collect();
    assert_eq!(live, pids, "exactly the ten original processes run");

    // An adopted task that exits is noticed (through its pidfd), with an
    // unknown exit status, and its restart policy applies.
    let victim = *pids.iter().next().unwrap();
    unsafe_free_kill(victim);
    let line = second.wait_line("exited (exit code unknown");
    assert!(line.contains("restarting in"), "{line}");
    wait_for("the replacement to start", T, || {
        (second.lines_with(": running pid").len() == 1).then_some(())
    });
    // Output of the adopted tasks kept flowing into their logs.
    let log = sb.data().join("alloc/fleet-g/r3/t/logs/stdout");
    wait_for("r3's output in its log", T, || {
        std::fs::read_to_string(&log).ok().filter(|s| s == "started\n")
    });
    signal(second.child.id(), "TERM");
    assert_eq!(second.wait_exit(), 0, "{}", second.output());
    assert!(sandbox_pids(&sb.data()).is_empty());
}

#[test]
fn keep_running_leaves_tasks_and_stop_all_stops_them() {
    let sb = Sandbox::new();
    let file = sb.job(&job(
        "kept",
        "service",
        r#"    - name: g
      tasks:
        - {name: t, driver: exec, killTimeout: 200ms, config: {execConfig: {command: /bin/sh, args: ["-c", "trap '' TERM; sleep 300 & wait"]}}}
"#,
    ));
    let mut agent = sb.run(&file, &["--keep-running"]);
    let pid = agent.pid_of("g r0 t: running pid");
    signal(agent.child.id(), "TERM");
    assert_eq!(agent.wait_exit(), 0);
    assert!(alive(pid), "--keep-running must leave the task running");
    let out = sb.agent_cmd(&["stop-all"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "stopped 1 process group(s)\n");
    // stop-all escalated to SIGKILL for the process that ignores SIGTERM.
    wait_for("the task to be gone", T, || {
        (!alive(pid) && sandbox_pids(&sb.data()).is_empty()).then_some(())
    });
}

/// Serve `body` over HTTP on 127.0.0.1 for as many requests as come.
fn serve(body: &'static [u8]) -> u16 {
    serve_recording(body).0
}

fn sha256_hex(data: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    out.stdin.as_ref().unwrap().write_all(data).unwrap();
    let o = out.wait_with_output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn templates_and_artifacts_are_in_place_and_a_bad_checksum_fails_cleanly() {
    let sb = Sandbox::new();
    let body: &'static [u8] = b"#!/bin/sh\necho tool ok\n";
    let port = serve(body);
    let good = sha256_hex(body);
    let src = sb.path().join("payload.txt");
    std::fs::write(&src, "from a file\n").unwrap();
    let file = sb.job(&job(
        "stuff",
        "batch",
        &format!(
            r#"    - name: g
      tasks:
        - name: good
          driver: exec
          env: {{GREETING: hello}}
          templates:
            - {{destPath: local/conf/app.conf, perms: "0600", embeddedTmpl: "greeting=${{GREETING}} task={{{{ env \"K8S4R_TASK\" }}}}\n"}}
          artifacts:
            - {{getterSource: "http://127.0.0.1:{port}/dl/tool.sh", getterOptions: {{checksum: "sha256:{good}"}}}}
            - {{getterSource: "file://{src}", relativeDest: "${{K8S4R_ALLOC_DIR}}/shared/"}}
          config: {{execConfig: {{command: /bin/sh, args: ["-c", "cat local/conf/app.conf; sh local/tool.sh; cat $K8S4R_ALLOC_DIR/shared/payload.txt"]}}}}
        - name: bad
          driver: exec
          artifacts:
            - {{getterSource: "http://127.0.0.1:{port}/dl/evil.sh", getterOptions: {{checksum: "sha256:{zeros}"}}}}
          config: {{execConfig: {{command: /bin/true}}}}
"#,
            src = src.display(),
            zeros = "0".repeat(64)
        ),
    ));
    let mut agent = sb.run(&file, &[]);
    assert_eq!(agent.wait_exit(), 1, "{}", agent.output());
    let out = agent.output();
    let task = sb.data().join("alloc/stuff-g/r0/good");
    let stdout = std::fs::read_to_string(task.join("logs/stdout")).unwrap();
    assert_eq!(stdout, "greeting=hello task=good\ntool ok\nfrom a file\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(task.join("local/conf/app.conf"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert!(
        out.contains(&format!("g r0 bad: failed: failed to start: artifact http://127.0.0.1:{port}/dl/evil.sh: checksum mismatch: expected sha256:{}, got sha256:{good}", "0".repeat(64))),
        "{out}"
    );
    let local: Vec<_> = std::fs::read_dir(sb.data().join("alloc/stuff-g/r0/bad/local"))
        .unwrap()
        .collect();
    assert!(local.is_empty(), "nothing half-written may remain: {local:?}");
}

/// `--require-artifact-checksums`: a task with a plain-http artifact that
/// has no checksum fails naming the artifact and the flag, and nothing of
/// it is downloaded (not even its checksummed artifact listed first); a
/// task whose http artifact has a checksum runs. Without the flag the same
/// Job runs entirely, with validation's warning.
#[test]
fn require_artifact_checksums_refuses_unverified_http_before_any_download() {
    let body: &'static [u8] = b"#!/bin/sh\necho verified\n";
    let (port, requests) = serve_recording(body);
    let sum = sha256_hex(body);
    let groups = format!(
        r#"    - name: g
      tasks:
        - name: checked
          driver: exec
          artifacts: [{{getterSource: "http://127.0.0.1:{port}/checked.sh", getterOptions: {{checksum: "sha256:{sum}"}}}}]
          config: {{execConfig: {{command: /bin/sh, args: [local/checked.sh]}}}}
        - name: unchecked
          driver: exec
          artifacts:
            - {{getterSource: "http://127.0.0.1:{port}/first.sh", getterOptions: {{checksum: "sha256:{sum}"}}}}
            - {{getterSource: "http://127.0.0.1:{port}/unverified.sh"}}
          config: {{execConfig: {{command: /bin/sh, args: [local/unverified.sh]}}}}
"#
    );
    let sb = Sandbox::new();
    let file = sb.job(&job("integrity", "batch", &groups));
    let mut agent = sb.run(&file, &["--require-artifact-checksums"]);
    assert_eq!(agent.wait_exit(), 1, "{}", agent.output());
    let out = agent.output();
    let refused = format!("g r0 unchecked: failed: failed to start: artifact http://127.0.0.1:{port}/unverified.sh (artifacts[1]): plain http without getterOptions.checksum, refused by --require-artifact-checksums (K8S4R_REQUIRE_ARTIFACT_CHECKSUMS); nothing was downloaded");
    assert!(
        out.lines().any(|l| l.ends_with(&refused)),
        "missing {refused:?} in:\n{out}"
    );
    assert!(out.contains("g r0 checked: exited 0"), "{out}");
    let task = |t: &str| sb.data().join("alloc/integrity-g/r0").join(t);
    assert_eq!(
        std::fs::read_to_string(task("checked").join("logs/stdout")).unwrap(),
        "verified\n"
    );
    assert_eq!(
        *requests.lock().unwrap(),
        vec!["GET /checked.sh HTTP/1.1".to_string()],
        "the refused task downloaded something"
    );
    assert_eq!(std::fs::read_dir(task("unchecked").join("local")).unwrap().count(), 0);

    // The policy is the robot's: without the flag the same Job runs, and
    // validation said what was not verified.
    requests.lock().unwrap().clear();
    let sb = Sandbox::new();
    let file = sb.job(&job("integrity", "batch", &groups));
    let mut agent = sb.run_keeping_stderr(&file, &[]);
    assert_eq!(agent.wait_exit(), 0, "{}\n{}", agent.output(), sb.stderr());
    assert_eq!(requests.lock().unwrap().len(), 3);
    let warning = format!("spec.taskGroups[0].tasks[1].artifacts[1].getterSource: \"http://127.0.0.1:{port}/unverified.sh\" is fetched over plain http without getterOptions.checksum (sha256:<hex>): integrity not verified");
    assert!(sb.stderr().contains(&warning), "{}", sb.stderr());
}

#[test]
fn path_traversal_is_refused_lexically_and_through_symlinks() {
    let sb = Sandbox::new();
    let file = sb.job(&job(
        "escape",
        "batch",
        r#"    - name: g
      tasks:
        - name: t
          driver: exec
          templates: [{destPath: "../../outside.txt", embeddedTmpl: "x"}]
          config: {execConfig: {command: /bin/true}}
"#,
    ));
    let out = sb.agent_cmd(&["run", "--no-cgroups", "-f", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("templates[0].destPath: \"../../outside.txt\" escapes the task directory"),
        "{err}"
    );
    assert!(!sb.path().join("outside.txt").exists());

    // The task replaces its own local/conf with a symlink out of the task
    // directory; on restart the template must not be written through it.
    let sb = Sandbox::new();
    let outside = sb.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let file = sb.job(&job(
        "escape",
        "batch",
        &format!(
            r#"    - name: g
      tasks:
        - name: t
          driver: exec
          restartPolicy: {{attempts: 1, delay: 10ms}}
          templates: [{{destPath: "local/conf/app.conf", embeddedTmpl: "x"}}]
          config: {{execConfig: {{command: /bin/sh, args: ["-c", "rm -rf local/conf && ln -s {} local/conf; exit 1"]}}}}
"#,
            outside.display()
        ),
    ));
    let mut agent = sb.run(&file, &[]);
    assert_eq!(agent.wait_exit(), 1, "{}", agent.output());
    let out = agent.output();
    assert!(
        out.contains("path \"local/conf/app.conf\" refused: \"conf\" is a symlink or not a directory"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "written through the symlink"
    );
}

/// The two patterns of the earlier Go implementation's manifests, run
/// unchanged: Nomad-style absolute task paths land in the task directory
/// (`/local`, `/secrets`, the latter private) and the group's (`/alloc`);
/// checks on a `portLabel` that names no port are warned about and never
/// run, while a runnable check of the same service does run (the task
/// waits for its third probe, so the others had every chance to run too).
#[test]
fn original_manifest_patterns_run_with_warnings() {
    let sb = Sandbox::new();
    let src = sb.path().join("payload.txt");
    std::fs::write(&src, "fetched\n").unwrap();
    let file = sb.job(&job(
        "original",
        "batch",
        &format!(
            r#"    - name: g
      tasks:
        - name: t
          driver: exec
          env: {{GREETING: hello}}
          templates:
            - {{destPath: /local/app.conf, embeddedTmpl: "greeting=${{GREETING}}\n"}}
            - {{destPath: /secrets/token, perms: "0600", embeddedTmpl: "s3cret\n"}}
            - {{destPath: /alloc/shared.conf, embeddedTmpl: "shared\n"}}
          artifacts:
            - {{getterSource: "file://{src}", relativeDest: /local/bin/}}
          services:
            - name: app
              portLabel: http
              checks:
                - {{name: alive, type: http, path: /health, interval: 50ms, timeout: 1s}}
                - {{name: rpc-up, type: tcp, portLabel: rpc, interval: 50ms, timeout: 1s}}
                - {{name: probed, type: script, command: /bin/sh, args: ["-c", "echo . >> local/probes"], interval: 50ms, timeout: 1s}}
          config: {{execConfig: {{command: /bin/sh, args: ["-c", "cat local/app.conf secrets/token $K8S4R_ALLOC_DIR/shared.conf local/bin/payload.txt; until [ $(cat local/probes 2>/dev/null | wc -l) -ge 3 ]; do sleep 0.05; done"]}}}}
"#,
            src = src.display()
        ),
    ));
    let mut agent = sb.run_keeping_stderr(&file, &[]);
    assert_eq!(agent.wait_exit(), 0, "{}\n{}", agent.output(), sb.stderr());
    let task = sb.data().join("alloc/original-g/r0/t");
    assert_eq!(
        std::fs::read_to_string(task.join("logs/stdout")).unwrap(),
        "greeting=hello\ns3cret\nshared\nfetched\n"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&task.join("secrets")), 0o700);
    assert_eq!(mode(&task.join("secrets/token")), 0o600);
    assert!(sb.data().join("alloc/original-g/alloc/shared.conf").is_file());
    let out = agent.output();
    assert!(out.contains("g r0 t: health: healthy"), "the script check ran:\n{out}");
    assert!(
        !out.contains("app/alive") && !out.contains("app/rpc-up"),
        "checks on no port never run:\n{out}"
    );
    let stderr = sb.stderr();
    let t = "spec.taskGroups[0].tasks[0].services[0]";
    for want in [
        format!("{t}.portLabel: \"http\" names no port this agent can probe (http checks need a port number, 1-65535): the check \"alive\" is not run"),
        format!("{t}.checks[1].portLabel: \"rpc\" names no port this agent can probe (tcp checks need a port number, 1-65535): the check \"rpc-up\" is not run"),
    ] {
        assert!(stderr.contains(&format!("warning: {}: {want}", file.display())), "missing {want:?} in:\n{stderr}");
    }
}

/// A timeout that would overflow the clock is refused before anything
/// runs, naming the field and the limit (the agent's arithmetic is
/// saturating anyway: e2e_connected's cached-assignments test).
#[test]
fn run_refuses_a_duration_past_the_limit_with_its_field_path() {
    let sb = Sandbox::new();
    let file = sb.job(&job(
        "huge",
        "batch",
        r#"    - name: g
      tasks:
        - {name: t, driver: exec, timeout: 3000000000000000h, config: {execConfig: {command: /bin/true}}}
"#,
    ));
    let out = sb.agent_cmd(&["run", "--no-cgroups", "-f", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.taskGroups[0].tasks[0].timeout: \"3000000000000000h\" is longer than the maximum of 87600h (10 years)"),
        "{err}"
    );
    assert!(!sb.data().join("alloc").exists(), "nothing ran");
}

/// Envoy from K8S4R_ENVOY or PATH, if installed.
#[test]
fn network_group_starts_its_proxy_first_and_tasks_reach_the_upstream_through_it() {
    let Some(envoy) = envoy_bin() else { return };
    let upstream_port = pong_upstream();
    let local_port = free_port();
    let sb = Sandbox::new();
    let file = sb.job(&job(
        "net",
        "batch",
        &format!(
            r#"    - name: g
      network:
        upstreams: [{{name: echo-svc, localPort: {local_port}, upstream: "127.0.0.1:{upstream_port}", tls: false}}]
      tasks:
        - name: t
          driver: exec
          config:
            execConfig:
              command: /bin/bash
              args: ["-c", "exec 3<>/dev/tcp/127.0.0.1/$PROXY_ECHO_SVC_PORT; echo ping >&3; head -1 <&3; echo $PROXY_ECHO_SVC_ADDR"]
"#
        ),
    ));
    let mut agent = sb.run(&file, &["--envoy-bin", envoy.to_str().unwrap()]);
    assert_eq!(agent.wait_exit(), 0, "{}", agent.output());
    let out = agent.output();
    let pos = |pat: &str| out.find(pat).unwrap_or_else(|| panic!("missing {pat:?} in:\n{out}"));
    assert!(pos("g envoy: running pid") < pos("net-g: proxy ready"));
    assert!(pos("net-g: proxy ready") < pos("g r0 t: running pid"));
    assert!(out.contains("g envoy: stopped"), "{out}");
    let stdout = std::fs::read_to_string(sb.data().join("alloc/net-g/r0/t/logs/stdout")).unwrap();
    assert_eq!(stdout, format!("pong:ping\n127.0.0.1:{local_port}\n"));
}

/// A group whose tasks have all ended gives its proxy and daemons back at
/// once, while another group of the same Job still runs.
#[test]
fn a_finished_group_releases_its_proxy_and_daemons_while_the_job_runs_on() {
    let Some(envoy) = envoy_bin() else { return };
    let local_port = free_port();
    let sb = Sandbox::new();
    let file = sb.job(&job(
        "two",
        "batch",
        &format!(
            r#"    - name: net
      network:
        upstreams: [{{name: svc, localPort: {local_port}, upstream: "127.0.0.1:9", tls: false}}]
      initTasks:
        - {{name: helper, driver: exec, daemon: true, config: {{execConfig: {{command: /bin/sleep, args: ["300"]}}}}}}
      tasks:
        - {{name: t, driver: exec, config: {{execConfig: {{command: /bin/true}}}}}}
    - name: slow
      tasks:
        - {{name: t, driver: exec, config: {{execConfig: {{command: /bin/sh, args: ["-c", "while [ ! -e $K8S4R_ALLOC_DIR/../../release ]; do sleep 0.05; done"]}}}}}}
"#
        ),
    ));
    let mut agent = sb.run(&file, &["--envoy-bin", envoy.to_str().unwrap()]);
    agent.wait_line("net r0 t: exited 0");
    let proxy = agent.pid_of("net envoy: running pid");
    let daemon = agent.pid_of("net helper: running pid");
    agent.wait_line("two-net: all tasks ended: proxy and group daemons released");
    agent.wait_line("net envoy: stopped");
    agent.wait_line("net helper: stopped");
    wait_for("the proxy and the daemon to be gone", T, || {
        (!alive(proxy) && !alive(daemon)).then_some(())
    });
    assert!(
        agent.lines_with("slow r0 t: exited").is_empty(),
        "the other group still runs:\n{}",
        agent.output()
    );
    std::fs::write(sb.data().join("alloc/release"), "").unwrap();
    assert_eq!(agent.wait_exit(), 0, "{}", agent.output());
    assert_eq!(
        agent.lines_with("net envoy: running pid").len(),
        1,
        "{}",
        agent.output()
    );
}

#[test]
fn a_group_whose_proxy_cannot_start_fails_cleanly() {
    let sb = Sandbox::new();
    let file = sb.job(&job(
        "noproxy",
        "batch",
        r#"    - name: g
      network:
        upstreams: [{name: db, localPort: 15432, upstream: "db.example.com:5432", tls: false}]
      tasks:
        - {name: t, driver: exec, config: {execConfig: {command: /bin/true}}}
"#,
    ));
    let mut agent = sb.run(&file, &["--envoy-bin", "/nonexistent/envoy"]);
    assert_eq!(agent.wait_exit(), 1, "{}", agent.output());
    let out = agent.output();
    assert!(
        out.contains("noproxy-g: task group failed: proxy: envoy binary \"/nonexistent/envoy\" not found"),
        "{out}"
    );
    assert!(out.contains("g r0 t: not started: proxy:"), "{out}");
}

#[test]
fn service_checks_set_the_task_health() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sb = Sandbox::new();
    let file = sb.job(&job(
        "checked",
        "service",
        &format!(
            r#"    - name: g
      tasks:
        - name: web
          driver: exec
          services:
            - name: web
              checks:
                - {{name: ready-file, type: script, command: /bin/sh, args: ["-c", "test -e local/ready"], interval: 50ms, timeout: 1s}}
                - {{name: port, type: tcp, portLabel: "{port}", interval: 50ms, timeout: 1s}}
          config: {{execConfig: {{command: /bin/sh, args: ["-c", "while [ ! -e $K8S4R_ALLOC_DIR/done ]; do sleep 0.05; done"]}}}}
"#
        ),
    ));
    let mut agent = sb.run(&file, &[]);
    agent.wait_line("g r0 web: health: unhealthy (web/ready-file: script exited 1)");
    std::fs::write(sb.data().join("alloc/checked-g/r0/web/local/ready"), "").unwrap();
    agent.wait_line("g r0 web: health: healthy");
    drop(listener);
    agent.wait_line("g r0 web: health: unhealthy (web/port: tcp 127.0.0.1");
    std::fs::write(sb.data().join("alloc/checked-g/alloc/done"), "").unwrap();
    assert_eq!(agent.wait_exit(), 0, "{}", agent.output());
}

#[test]
fn a_robot_scoped_daemon_runs_once_for_all_groups() {
    let sb = Sandbox::new();
    // Both groups declare it; the second one slightly differently (the
    // first declaration wins, nothing flips back and forth).
    let spire = |secs: u32| {
        format!(
            r#"{{name: spire-agent, driver: exec, daemon: true, scope: robot, config: {{execConfig: {{command: /bin/sh, args: ["-c", "echo up >> $K8S4R_TASK_DIR/../starts; exec sleep {secs}"]}}}}}}"#
        )
    };
    let (spire_a, spire_b) = (spire(300), spire(301));
    let file = sb.job(&job(
        "shared",
        "service",
        &format!(
            r#"    - name: a
      initTasks: [{spire_a}]
      tasks:
        - {{name: t, driver: exec, config: {{execConfig: {{command: /bin/sh, args: ["-c", "while [ ! -e $K8S4R_ALLOC_DIR/../../done ]; do sleep 0.05; done"]}}}}}}
    - name: b
      count: 2
      initTasks: [{spire_b}]
      tasks:
        - {{name: t, driver: exec, config: {{execConfig: {{command: /bin/sh, args: ["-c", "while [ ! -e $K8S4R_ALLOC_DIR/../../done ]; do sleep 0.05; done"]}}}}}}
"#
        ),
    ));
    let mut agent = sb.run(&file, &[]);
    for t in ["a r0 t", "b r0 t", "b r1 t"] {
        agent.wait_line(&format!("{t}: running pid"));
    }
    assert_eq!(
        agent.lines_with("robot spire-agent: running pid").len(),
        1,
        "{}",
        agent.output()
    );
    // "running" means exec'd, not that the shell has written its line yet.
    let starts = sb.data().join("robot/starts");
    let recorded = wait_for("the daemon to record its start", T, || {
        std::fs::read_to_string(&starts).ok().filter(|s| s.ends_with('\n'))
    });
    assert_eq!(recorded, "up\n");
    std::fs::write(sb.data().join("alloc/done"), "").unwrap();
    assert!(!agent.output().contains("spec changed"), "{}", agent.output());
    assert_eq!(agent.wait_exit(), 0, "{}", agent.output());
    assert!(agent.output().contains("robot spire-agent: stopped"));
}

#[test]
fn logs_follow_prints_new_output() {
    let sb = Sandbox::new();
    let file = sb.job(&job(
        "talk",
        "service",
        r#"    - name: g
      tasks:
        - {name: t, driver: exec, config: {execConfig: {command: /bin/sh, args: ["-c", "echo first; while [ ! -e $K8S4R_ALLOC_DIR/go ]; do sleep 0.05; done; echo second; echo oops >&2"]}}}
"#,
    ));
    let mut agent = sb.run(&file, &[]);
    agent.wait_line("g r0 t: running pid");
    let log = sb.data().join("alloc/talk-g/r0/t/logs/stdout");
    wait_for("the first line in the log", T, || {
        std::fs::read_to_string(&log).ok().filter(|s| s == "first\n")
    });
    struct KillOnDrop(Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut follow = KillOnDrop(
        Command::new(agent_bin())
            .args(["logs", "t", "-f", "--data-dir"])
            .arg(sb.data())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Lines arrive on a channel so every wait has a deadline.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    assert_eq!(rx.recv_timeout(T).unwrap(), "first");
    std::fs::write(sb.data().join("alloc/talk-g/alloc/go"), "").unwrap();
    assert_eq!(rx.recv_timeout(T).unwrap(), "second");
    drop(follow);
    let err = sb.agent_cmd(&["logs", "talk-g-r0-t", "--stderr"]);
    assert_eq!(String::from_utf8_lossy(&err.stdout), "oops\n");
    assert_eq!(agent.wait_exit(), 0, "{}", agent.output());
}

#[test]
fn tasks_run_as_their_user_when_the_agent_is_root() {
    if skip_unless_root("user switching needs the agent to run as root") {
        return;
    }
    let sb = Sandbox::new();
    let file = sb.job(&job(
        "users",
        "batch",
        r#"    - name: g
      tasks:
        - name: t
          driver: exec
          user: nobody
          templates:
            - {destPath: local/secret.txt, perms: "0600", embeddedTmpl: "for ${K8S4R_TASK} only\n"}
            - {destPath: local/app.conf, embeddedTmpl: "key: value\n"}
          config: {execConfig: {command: /bin/sh, args: ["-c", "id -u; id -G; cat local/secret.txt local/app.conf; touch local/mine secrets/token"]}}
"#,
    ));
    let mut agent = sb.run(&file, &[]);
    assert_eq!(agent.wait_exit(), 0, "{}", agent.output());
    let dir = sb.data().join("alloc/users-g/r0/t");
    let out = std::fs::read_to_string(dir.join("logs/stdout")).unwrap();
    // uid, groups (root's dropped), and templates the task can read.
    assert_eq!(out, "65534\n65534\nfor t only\nkey: value\n");
    use std::os::unix::fs::MetadataExt;
    let owner_and_mode = |p: &str| {
        let m = std::fs::symlink_metadata(dir.join(p)).unwrap();
        (m.uid(), m.gid(), m.mode() & 0o7777)
    };
    assert_eq!(owner_and_mode("local/mine").0, 65534);
    // Its directories are its own and private; logs/ is the agent's; a
    // template without perms is readable by the task's user only.
    for own in [".", "local", "secrets"] {
        assert_eq!(owner_and_mode(own), (65534, 65534, 0o700), "{own}");
    }
    assert_eq!(owner_and_mode("logs"), (0, 0, 0o700));
    assert_eq!(owner_and_mode("local/app.conf"), (65534, 65534, 0o600));
}

#[test]
fn a_slow_download_does_not_stall_other_tasks() {
    // The server holds its answer until the test lets it go.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (release, released) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Some(mut s) = listener.incoming().map_while(Result::ok).next() {
            let _ = released.recv();
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbin");
        }
    });
    let sb = Sandbox::new();
    let file = sb.job(&job(
        "mixed",
        "batch",
        &format!(
            r#"    - name: slow
      tasks:
        - name: t
          driver: exec
          artifacts: [{{getterSource: "http://127.0.0.1:{port}/big.bin"}}]
          config: {{execConfig: {{command: /bin/cat, args: [local/big.bin]}}}}
    - name: quick
      tasks:
        - {{name: t, driver: exec, config: {{execConfig: {{command: /bin/true}}}}}}
"#
        ),
    ));
    let mut agent = sb.run(&file, &[]);
    agent.wait_line("quick r0 t: exited 0");
    assert!(agent.lines_with("slow r0 t: running").is_empty(), "{}", agent.output());
    release.send(()).unwrap();
    assert_eq!(agent.wait_exit(), 0, "{}", agent.output());
    let out = std::fs::read_to_string(sb.data().join("alloc/mixed-slow/r0/t/logs/stdout")).unwrap();
    assert_eq!(out, "bin");
}

#[test]
fn an_endless_writer_is_still_timed_out_and_capped() {
    let sb = Sandbox::new();
    // `yes` never pauses; the agent must still fire its timeout.
    let file = sb.job(&job(
        "flood",
        "batch",
        r#"    - name: g
      tasks:
        - {name: t, driver: exec, timeout: 300ms, killTimeout: 200ms, config: {execConfig: {command: /usr/bin/yes}}}
"#,
    ));
    let mut agent = sb.run(&file, &["--log-max-size", "256Ki", "--log-max-files", "2"]);
    assert_eq!(agent.wait_exit(), 1, "{}", agent.output());
    assert!(
        agent.output().contains("g r0 t: failed: timed out after 300ms"),
        "{}",
        agent.output()
    );
    for f in ["stdout", "stdout.1"] {
        let len = std::fs::metadata(sb.data().join("alloc/flood-g/r0/t/logs").join(f))
            .unwrap()
            .len();
        assert!(len <= 256 * 1024, "{f} is {len} bytes");
    }
}

#[test]
fn tasks_get_the_injected_environment_and_their_own() {
    let sb = Sandbox::new();
    let file = sb.job(&job(
        "envs",
        "batch",
        r#"    - name: grp
      count: 2
      tasks:
        - name: show
          driver: exec
          env: {MY_FILE: "${K8S4R_TASK_DIR}/local/x", K8S4R_ROBOT: spoofed}
          config: {execConfig: {command: /bin/sh, args: ["-c", "env | grep -E '^(K8S4R_|MY_)' | sort; pwd"]}}
"#,
    ));
    let mut agent = sb.run(&file, &["--robot", "bot-7"]);
    assert_eq!(agent.wait_exit(), 0, "{}", agent.output());
    let data = sb.data();
    let task_dir = data.join("alloc/envs-grp/r1/show");
    let out = std::fs::read_to_string(task_dir.join("logs/stdout")).unwrap();
    let want = format!(
        "K8S4R_ALLOC_DIR={alloc}\nK8S4R_JOB=envs\nK8S4R_REPLICA=1\nK8S4R_ROBOT=bot-7\nK8S4R_TASK=show\nK8S4R_TASKGROUP=grp\nK8S4R_TASK_DIR={dir}\nMY_FILE={dir}/local/x\n{dir}\n",
        alloc = data.join("alloc/envs-grp/alloc").display(),
        dir = task_dir.display()
    );
    assert_eq!(out, want);
}

#[test]
fn on_shutdown_tasks_stop_before_the_daemons_they_rely_on() {
    let sb = Sandbox::new();
    let file = sb.job(&job(
        "order-stop",
        "service",
        r#"    - name: g
      initTasks:
        - {name: helper, driver: exec, daemon: true, config: {execConfig: {command: /bin/sleep, args: ["300"]}}}
      tasks:
        - name: main
          driver: exec
          config: {execConfig: {command: /bin/sh, args: ["-c", "trap 'sleep 0.2; exit 0' TERM; touch $K8S4R_ALLOC_DIR/up; while :; do sleep 0.05; done"]}}
"#,
    ));
    let mut agent = sb.run(&file, &[]);
    agent.wait_line("g r0 main: running pid");
    wait_for("the task to be up", T, || {
        sb.data().join("alloc/order-stop-g/alloc/up").exists().then_some(())
    });
    signal(agent.child.id(), "TERM");
    assert_eq!(agent.wait_exit(), 0, "{}", agent.output());
    let out = agent.output();
    let pos = |pat: &str| out.find(pat).unwrap_or_else(|| panic!("missing {pat:?} in:\n{out}"));
    assert!(pos("g r0 main: stopped") < pos("g helper: stopping"), "{out}");
}

#[test]
fn a_task_that_ended_while_the_agent_was_down_is_reported_and_restarted() {
    let sb = Sandbox::new();
    let file = sb.job(&job(
        "gap",
        "service",
        r#"    - name: g
      count: 2
      tasks:
        - {name: t, driver: exec, restartPolicy: {attempts: 1, delay: 10ms}, config: {execConfig: {command: /bin/sleep, args: ["300"]}}}
"#,
    ));
    let mut first = sb.run(&file, &[]);
    let r0 = first.pid_of("g r0 t: running pid");
    let r1 = first.pid_of("g r1 t: running pid");
    wait_for("both pids in the state file", T, || {
        let state = StateFile::read(&sb.data()).ok()?;
        let pids: Vec<i32> = state.units.values().filter_map(|u| u.pid).collect();
        (pids.contains(&r0) && pids.contains(&r1)).then_some(())
    });
    signal(first.child.id(), "KILL");
    first.wait_exit();
    unsafe_free_kill(r0);
    wait_for("r0 to be gone", T, || (!alive(r0)).then_some(()));

    let mut second = sb.run(&file, &[]);
    let line = second.wait_line("g r0 t: exited (exit code unknown");
    assert!(line.contains("restarting in 10ms (restart 1/1)"), "{line}");
    let new_r0 = second.pid_of("g r0 t: running pid");
    assert_ne!(new_r0, r0);
    assert_eq!(second.pid_of("g r1 t: adopted running pid"), r1);
    signal(second.child.id(), "TERM");
    assert_eq!(second.wait_exit(), 0, "{}", second.output());
}

/// The agent raises its own open-file soft limit (it holds two log pipes
/// and a pidfd per task) and gives each task the limit it was given.
#[test]
fn tasks_get_the_open_file_limit_the_agent_was_given() {
    let sb = Sandbox::new();
    let file = sb.job(&job(
        "files",
        "batch",
        r#"    - name: g
      tasks:
        - {name: t, driver: exec, config: {execConfig: {command: /bin/sh, args: ["-c", "ulimit -n; while [ ! -e $K8S4R_ALLOC_DIR/done ]; do sleep 0.05; done"]}}}
"#,
    ));
    let mut agent = sb.run_with_open_files(&file, 256);
    agent.wait_line("g r0 t: running pid");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", agent.child.id())).unwrap();
    let files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect();
    assert_eq!(
        files[0], files[1],
        "the agent's soft limit is raised to its hard one:\n{limits}"
    );
    assert_ne!(files[0], "256", "{limits}");
    let stdout = sb.data().join("alloc/files-g/r0/t/logs/stdout");
    wait_for("the task's limit in its output", T, || {
        std::fs::read_to_string(&stdout).ok().filter(|s| !s.is_empty())
    });
    assert_eq!(std::fs::read_to_string(&stdout).unwrap(), "256\n");
    std::fs::write(sb.data().join("alloc/files-g/alloc/done"), "").unwrap();
    assert_eq!(agent.wait_exit(), 0, "{}", agent.output());
}

/// A task the agent started but had not recorded yet (it was killed while
/// starting it) is stopped too: found by the unit directory it runs in.
#[test]
fn stop_all_stops_a_task_that_was_never_recorded() {
    use std::os::unix::process::CommandExt;
    let sb = Sandbox::new();
    let dir = sb.data().join("alloc/lost-g/r0/t");
    std::fs::create_dir_all(&dir).unwrap();
    let mut task = Command::new("/bin/sleep")
        .arg("300")
        .current_dir(&dir)
        .process_group(0)
        .spawn()
        .unwrap();
    let out = sb.agent_cmd(&["stop-all"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status = wait_for("the unrecorded task to end", T, || task.try_wait().unwrap());
    assert!(!status.success(), "{status}");
}

#[test]
fn stop_all_stops_a_running_agent_and_its_tasks() {
    let sb = Sandbox::new();
    let file = sb.job(&job(
        "busy",
        "service",
        r#"    - name: g
      tasks:
        - {name: t, driver: exec, config: {execConfig: {command: /bin/sleep, args: ["300"]}}}
"#,
    ));
    let mut agent = sb.run(&file, &[]);
    let pid = agent.pid_of("g r0 t: running pid");
    let out = sb.agent_cmd(&["stop-all"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The agent was asked to stop (SIGTERM) and took its task down with it.
    assert_eq!(agent.wait_exit(), 0, "{}", agent.output());
    assert!(agent.output().contains("g r0 t: stopped"), "{}", agent.output());
    assert!(!alive(pid));
}
