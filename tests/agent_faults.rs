//! Faults and hostile conditions on the robot (issue #11, agent side): the
//! real `k8s4r-agent run`, real processes, temp data dirs, loopback only.
//!
//! - the wall clock jumping an hour either way changes no timeout and no
//!   restart backoff (the agent times with the monotonic clock);
//! - `kill -9` of the agent, ten times in a row, with 50 tasks running:
//!   every task re-adopted, none lost, none started twice;
//! - artifacts cut short, redirected in a loop or too large fail their task
//!   with a message naming the artifact and the reason, and leave nothing;
//! - `user:` drops every privilege;
//! - the group's Envoy listens on 127.0.0.1 only, its admin socket is private.

mod common;

use common::standalone::*;
use common::wait_for;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Clock jumps

/// libfaketime's preload library, or None (with a SKIP message).
fn libfaketime() -> Option<PathBuf> {
    let multiarch = format!("{}-linux-gnu", std::env::consts::ARCH);
    let mut candidates: Vec<PathBuf> = std::env::var_os("K8S4R_LIBFAKETIME")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    for lib in ["/usr/lib", "/usr/lib64", "/usr/local/lib", "/lib"] {
        candidates.push(Path::new(lib).join(&multiarch).join("faketime/libfaketime.so.1"));
        candidates.push(Path::new(lib).join("faketime/libfaketime.so.1"));
    }
    let found = candidates.into_iter().find(|p| p.is_file());
    if found.is_none() {
        eprintln!("SKIP: libfaketime not found (apt install faketime, or set K8S4R_LIBFAKETIME)");
    }
    found
}

/// Seconds since boot as the tasks see it (/proc/uptime: CLOCK_BOOTTIME,
/// which libfaketime does not touch and the test does not fake).
fn uptime() -> f64 {
    let text = std::fs::read_to_string("/proc/uptime").unwrap();
    text.split_whitespace().next().unwrap().parse().unwrap()
}

/// Replace the faketime offset file atomically (libfaketime re-reads it on
/// every clock call with FAKETIME_NO_CACHE=1).
fn set_offset(file: &Path, offset: &str) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("{offset}\n")).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

fn numbers(file: &Path) -> Vec<f64> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The agent runs with libfaketime preloaded; the test moves the realtime
/// clock +1 h, -1 h (a 2 h step back) and +1 h again while a task's
/// `timeout` and a task's restart backoff are pending. Task processes do not
/// inherit the preload (the agent clears their environment) and every time
/// is read from /proc/uptime, so all measurements are on the real,
/// monotonic clock.
///
/// Why this fails for an agent that timed with SystemTime: the timed task
/// prints a line every 100 ms, so the agent wakes (log pump) ten times a
/// second; after the +1 h step a wall-clock deadline is an hour in the past
/// and fires at the next wake-up, seconds before the 4 s timeout (the
/// `>= 3.0 s` check, which leaves the shell a second to start), and a wall-clock backoff ends at once (the
/// spacing checks); after the -1 h step a wall-clock deadline lies an hour
/// ahead and nothing would happen before the 30 s deadline of `wait_exit`.
/// Checked once by letting libfaketime fake the monotonic clock as well
/// (FAKETIME_DONT_FAKE_MONOTONIC=0): the restart after the -1 h step never
/// came and the test failed ("waiting for run 3"); with forward steps only,
/// the 4 s timeout fired 1.0 s after the start.
#[test]
fn clock_jumps_change_neither_timeouts_nor_restart_backoff() {
    let Some(lib) = libfaketime() else { return };
    let sb = Sandbox::new();
    let offset = sb.path().join("faketime.rc");
    set_offset(&offset, "+0");
    let file = sb.job(&job(
        "clock",
        "batch",
        r#"    - name: g
      tasks:
        - name: timed
          driver: exec
          timeout: 4s
          killTimeout: 5s
          config:
            execConfig:
              command: /bin/sh
              args:
                - -c
                - |
                  trap 'read up _ < /proc/uptime; echo $up > term; exit 0' TERM
                  read up _ < /proc/uptime; echo $up > start
                  while :; do echo tick; sleep 0.1; done
        - name: flaky
          driver: exec
          restartPolicy: {attempts: 3, interval: 1m, delay: 600ms, mode: fail}
          config: {execConfig: {command: /bin/sh, args: ["-c", "read up _ < /proc/uptime; echo $up >> runs; exit 1"]}}
"#,
    ));
    let lib = lib.to_str().unwrap();
    let offset_file = offset.to_str().unwrap();
    let env = [
        ("LD_PRELOAD", lib),
        ("FAKETIME_TIMESTAMP_FILE", offset_file),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let mut agent = sb.run_with_env(&file, &[], &env);
    let dir = sb.data().join("alloc/clock-g/r0");
    let start_file = dir.join("timed/start");
    let runs_file = dir.join("flaky/runs");
    let start = wait_for("the timed task's start", T, || numbers(&start_file).first().copied());
    let runs_seen = |n: usize| {
        wait_for(&format!("run {n} of the flaky task"), T, || {
            (numbers(&runs_file).len() >= n).then_some(())
        })
    };

    // Controls: the preload is in the agent, and a process reading the
    // realtime clock under the same settings sees the jump.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", agent.child.id())).unwrap();
    assert!(maps.contains("libfaketime"), "libfaketime is not loaded in the agent");
    let faked_now = || -> i64 {
        let out = Command::new("date").arg("+%s").envs(env).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let real_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };

    runs_seen(1);
    set_offset(&offset, "+1h");
    let first_jump = uptime();
    let skew = faked_now() - real_now();
    assert!(
        (3590..=3610).contains(&skew),
        "the faked clock is {skew} s off, not +1 h"
    );
    runs_seen(2);
    set_offset(&offset, "-1h");
    let skew = faked_now() - real_now();
    assert!(
        (-3610..=-3590).contains(&skew),
        "the faked clock is {skew} s off, not -1 h"
    );
    runs_seen(3);
    set_offset(&offset, "+1h");

    assert_eq!(agent.wait_exit(), 1, "{}", agent.output());
    let out = agent.output();
    assert!(out.contains("g r0 timed: failed: timed out after 4s"), "{out}");
    assert!(out.contains("g r0 flaky: failed: exited 1 (after 3 restarts)"), "{out}");

    // The timeout fired at its time: not early (4 s, less a generous second
    // for the shell's own start-up), not never (the agent finished within wait_exit's deadline).
    let term = wait_for("the timed task's SIGTERM time", T, || {
        numbers(&dir.join("timed/term")).first().copied()
    });
    let ran = term - start;
    assert!(ran >= 3.0, "the 4 s timeout fired after {ran:.2} s");
    if first_jump - start > 2.0 {
        eprintln!(
            "note: the machine is slow; the first jump came {:.2} s after the start",
            first_jump - start
        );
    }
    // Backoff kept its spacing: each run starts at least its delay after the
    // previous one (uptime has 10 ms steps).
    let runs = numbers(&runs_file);
    assert_eq!(runs.len(), 4, "{runs:?}");
    for (i, delay) in [0.6, 1.2, 2.4].iter().enumerate() {
        let gap = runs[i + 1] - runs[i];
        assert!(
            gap >= delay - 0.02,
            "restart {} came {gap:.2} s after the run before, not {delay} s",
            i + 1
        );
    }
    assert!(sandbox_pids(&sb.data()).is_empty());
}

// ---------------------------------------------------------------------------
// kill -9 of the agent

/// Pids at the end of lines containing `what`, by task label.
fn pids_by_label(agent: &Agent, what: &str) -> BTreeMap<String, i32> {
    agent
        .lines_with(what)
        .iter()
        .map(|(_, l)| {
            let (label, _) = l.split_once(": ").unwrap();
            (label.to_string(), l.rsplit(' ').next().unwrap().parse().unwrap())
        })
        .collect()
}

/// 50 tasks; the agent is killed with SIGKILL while it starts them, then
/// restarted and killed ten more times at different moments (before it has
/// read its state, in the middle of re-adopting, after). Throughout, exactly
/// one process per task runs, always the same: none lost, none started twice.
#[test]
fn fifty_tasks_survive_ten_agent_kill_9s_with_none_lost_or_duplicated() {
    const N: usize = 50;
    let sb = Sandbox::new();
    let file = sb.job(&job(
        "fleet",
        "service",
        &format!(
            r#"    - name: g
      count: {N}
      tasks:
        - {{name: t, driver: exec, config: {{execConfig: {{command: /bin/sleep, args: ["300"]}}}}}}
"#
        ),
    ));
    // First kill: while the agent starts the 50 tasks, before it can have
    // recorded them all. The next agent takes over every task that runs,
    // recorded or not, and starts only the others.
    let mut first = sb.run(&file, &[]);
    // Polled tightly (the window between the starts and their record is a
    // few milliseconds), still with a deadline.
    let deadline = Instant::now() + T;
    while first.lines_with(": running pid").is_empty() {
        assert!(Instant::now() < deadline, "no task started within {T:?}");
        std::thread::sleep(Duration::from_micros(200));
    }
    signal(first.child.id(), "KILL");
    first.wait_exit();
    let started_first = pids_by_label(&first, ": running pid");
    let mut second = sb.run(&file, &[]);
    let original = wait_for("50 tasks running", T, || {
        let mut all = pids_by_label(&second, ": adopted running pid");
        all.extend(pids_by_label(&second, ": running pid"));
        (all.len() == N).then_some(all)
    });
    for (label, pid) in &started_first {
        assert_eq!(
            original.get(label),
            Some(pid),
            "{label} was started twice:\n{}",
            second.output()
        );
    }
    let pids: BTreeSet<i32> = original.values().copied().collect();
    assert_eq!(pids.len(), N, "one process per task");
    wait_for("the state file to list 50 pids", T, || {
        let state = k8s4r::agent::supervisor::state::StateFile::read(&sb.data()).ok()?;
        (state.units.values().filter(|u| u.pid.is_some()).count() == N).then_some(())
    });
    let live: BTreeSet<i32> = sandbox_pids(&sb.data()).into_iter().collect();
    assert_eq!(live, pids, "exactly one process per task:\n{}", second.output());
    signal(second.child.id(), "KILL");
    second.wait_exit();

    // How many re-adoptions to see before each kill: 0 kills the agent
    // while it starts (or reads its state), others in the middle, N after.
    let kill_after = [N, 0, 25, N, 1, 49, 10, N, 37, N];
    for (round, seen) in kill_after.iter().enumerate() {
        let mut agent = sb.run(&file, &[]);
        if *seen > 0 {
            wait_for(&format!("round {round}: {seen} adoptions"), T, || {
                (agent.lines_with(": adopted running pid").len() >= *seen).then_some(())
            });
        }
        signal(agent.child.id(), "KILL");
        agent.wait_exit();
        let out = agent.output();
        assert!(
            !out.contains(": running pid"),
            "round {round}: a task was started again:\n{out}"
        );
        for (label, pid) in pids_by_label(&agent, ": adopted running pid") {
            assert_eq!(
                original.get(&label),
                Some(&pid),
                "round {round}: {label} adopted another pid"
            );
        }
        let live: BTreeSet<i32> = sandbox_pids(&sb.data()).into_iter().collect();
        assert_eq!(live, pids, "round {round}: exactly the 50 original processes run");
    }

    let mut last = sb.run(&file, &[]);
    let adopted = wait_for("50 adoptions", T, || {
        let pids = pids_by_label(&last, ": adopted running pid");
        (pids.len() == N).then_some(pids)
    });
    assert_eq!(adopted, original);
    assert!(!last.output().contains(": running pid"), "{}", last.output());
    signal(last.child.id(), "TERM");
    assert_eq!(last.wait_exit(), 0, "{}", last.output());
    assert_eq!(last.lines_with(": stopped").len(), N, "{}", last.output());
    assert!(sandbox_pids(&sb.data()).is_empty());
}

// ---------------------------------------------------------------------------
// Artifacts

/// A hostile artifact server on 127.0.0.1: each path misbehaves its own way.
fn hostile_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || answer(s));
        }
    });
    port
}

fn answer(mut s: std::net::TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let hundred = [b'x'; 100];
    // Write errors are expected: the agent hangs up on what it refuses.
    let _ = match path.as_str() {
        "/ok.bin" => s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
            .and_then(|_| s.write_all(&hundred)),
        // 1000 bytes announced, 100 sent, then the connection closes.
        "/short.bin" => s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            .and_then(|_| s.write_all(&hundred)),
        // A chunk of 0x100 bytes announced, 100 sent, closed.
        "/chunks.bin" => s
            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100\r\n")
            .and_then(|_| s.write_all(&hundred)),
        "/a" => s.write_all(b"HTTP/1.1 302 Found\r\nLocation: /b\r\nContent-Length: 0\r\n\r\n"),
        "/b" => s.write_all(b"HTTP/1.1 302 Found\r\nLocation: /a\r\nContent-Length: 0\r\n\r\n"),
        // 2 MiB announced (the limit is 1 MiB): refused before any byte.
        "/big.bin" => s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2097152\r\n\r\n")
            .and_then(|_| s.write_all(&vec![b'x'; 2 << 20])),
        // 2 MiB in chunks, no length announced: refused once over the limit.
        "/endless.bin" => {
            let chunk = [b'y'; 64 * 1024];
            let mut r = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
            for _ in 0..32 {
                r = r
                    .and_then(|_| s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()))
                    .and_then(|_| s.write_all(&chunk))
                    .and_then(|_| s.write_all(b"\r\n"));
            }
            r.and_then(|_| s.write_all(b"0\r\n\r\n"))
        }
        _ => s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
    };
}

/// Every way a download can go wrong fails its task with the artifact and
/// the reason named, and leaves nothing at the destination (no partial
/// file, no temp file); a good artifact beside them still arrives.
#[test]
fn broken_artifact_downloads_fail_cleanly_and_leave_nothing() {
    let port = hostile_server();
    let base = format!("http://127.0.0.1:{port}");
    let sb = Sandbox::new();
    let tasks = [
        ("ok", "ok.bin"),
        ("short", "short.bin"),
        ("chunks", "chunks.bin"),
        ("loop", "a"),
        ("big", "big.bin"),
        ("endless", "endless.bin"),
    ];
    let mut groups = String::from("    - name: g\n      tasks:\n");
    for (task, path) in tasks {
        groups.push_str(&format!(
            "        - {{name: {task}, driver: exec, artifacts: [{{getterSource: \"{base}/{path}\", getterOptions: {{filename: dl.bin}}}}], config: {{execConfig: {{command: /bin/true}}}}}}\n"
        ));
    }
    let file = sb.job(&job("dl", "batch", &groups));
    let mut agent = sb.run(&file, &["--artifact-max-size", "1Mi"]);
    assert_eq!(agent.wait_exit(), 1, "{}", agent.output());
    let out = agent.output();
    let want = [
        ("ok", "exited 0".to_string()),
        (
            "short",
            format!("failed: failed to start: artifact {base}/short.bin: truncated: the connection closed after 100 of 1000 bytes"),
        ),
        (
            "chunks",
            format!("failed: failed to start: artifact {base}/chunks.bin: truncated: the connection closed before the last chunk"),
        ),
        (
            "loop",
            format!("failed: failed to start: artifact {base}/a: redirect loop: {base}/a -> {base}/b -> {base}/a"),
        ),
        (
            "big",
            format!("failed: failed to start: artifact {base}/big.bin: 2097152 bytes announced, more than the 1048576-byte artifact limit (K8S4R_ARTIFACT_MAX_SIZE)"),
        ),
        (
            "endless",
            format!("failed: failed to start: artifact {base}/endless.bin: larger than the 1048576-byte artifact limit (K8S4R_ARTIFACT_MAX_SIZE)"),
        ),
    ];
    for (task, message) in &want {
        let line = format!("dl-g r0 {task}: {message}");
        assert!(out.lines().any(|l| l == line), "missing {line:?} in:\n{out}");
    }
    let task_dir = |t: &str| sb.data().join("alloc/dl-g/r0").join(t).join("local");
    assert_eq!(std::fs::read(task_dir("ok").join("dl.bin")).unwrap(), vec![b'x'; 100]);
    for (task, _) in &want[1..] {
        let left: Vec<_> = std::fs::read_dir(task_dir(task))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{task}: nothing half-written may remain: {left:?}");
    }
}

// ---------------------------------------------------------------------------
// Privileges

/// A task with `user: nobody` (the agent is root) runs with no capability
/// at all and all of uid/gid real, effective and saved switched: it cannot
/// write a root-owned 0644 file in its own directory nor create a file in a
/// root-owned 0755 directory.
#[test]
fn a_task_with_a_user_has_no_privileges_left() {
    if skip_unless_root("user switching needs the agent to run as root") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    // Laid out before the agent starts; it chowns the task directory and
    // local/ to the task's user, not what is inside.
    let local = sb.data().join("alloc/priv-g/r0/t/local");
    std::fs::create_dir_all(local.join("rootdir")).unwrap();
    std::fs::set_permissions(local.join("rootdir"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(local.join("rootfile"), "root's\n").unwrap();
    std::fs::set_permissions(local.join("rootfile"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let file = sb.job(&job(
        "priv",
        "batch",
        r#"    - name: g
      tasks:
        - name: t
          driver: exec
          user: nobody
          config:
            execConfig:
              command: /bin/sh
              args:
                - -c
                - |
                  if echo mine >> local/rootfile 2>/dev/null; then echo file: written; else echo file: denied; fi
                  if touch local/rootdir/new 2>/dev/null; then echo dir: written; else echo dir: denied; fi
                  grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapAmb|NoNewPrivs):' /proc/self/status
"#,
    ));
    let mut agent = sb.run(&file, &[]);
    assert_eq!(agent.wait_exit(), 0, "{}", agent.output());
    let out = std::fs::read_to_string(sb.data().join("alloc/priv-g/r0/t/logs/stdout")).unwrap();
    let fields: BTreeMap<&str, String> = out
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k, v.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect();
    let want: BTreeMap<&str, String> = [
        ("file", "denied"),
        ("dir", "denied"),
        ("Uid", "65534 65534 65534 65534"),
        ("Gid", "65534 65534 65534 65534"),
        ("Groups", "65534"),
        ("CapInh", "0000000000000000"),
        ("CapPrm", "0000000000000000"),
        ("CapEff", "0000000000000000"),
        ("CapAmb", "0000000000000000"),
        // No setuid program can give the privileges back.
        ("NoNewPrivs", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_string()))
    .collect();
    assert_eq!(fields, want, "{out}");
    assert_eq!(std::fs::read_to_string(local.join("rootfile")).unwrap(), "root's\n");
    assert!(!local.join("rootdir/new").exists());
}

// ---------------------------------------------------------------------------
// The group's Envoy

/// `ss` lines (no header) for `args`, or None when ss is missing.
fn ss(args: &[&str]) -> Option<String> {
    let out = Command::new("ss").args(args).output().ok()?;
    assert!(
        out.status.success(),
        "ss {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A group with a network: its Envoy, seen from outside with `ss`, listens
/// on 127.0.0.1 only (the app's local port and nothing else: no TCP admin
/// port, nothing on a wildcard address), and its admin is a unix socket
/// that neither the group nor others may open.
#[test]
fn the_group_proxy_listens_on_loopback_only_with_a_private_admin_socket() {
    let Some(envoy) = envoy_bin() else { return };
    if ss(&["-V"]).is_none() {
        eprintln!("SKIP: ss (iproute2) is not installed");
        return;
    }
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_port = upstream.local_addr().unwrap().port();
    let local_port = free_port();
    let sb = Sandbox::new();
    let mut agent = proxied_service(&sb, "net", local_port, upstream_port, &envoy);
    let pid = agent.pid_of("g envoy: running pid");
    agent.wait_line("g r0 t: running pid");
    let owned = |line: &&str| line.contains(&format!("pid={pid},"));

    let sockets = ss(&["-ltunpH"]).unwrap();
    let locals: BTreeSet<String> = sockets
        .lines()
        .filter(owned)
        .map(|l| l.split_whitespace().nth(4).unwrap().to_string())
        .collect();
    assert_eq!(
        locals,
        BTreeSet::from([format!("127.0.0.1:{local_port}")]),
        "Envoy's listening sockets:\n{sockets}"
    );

    let unix = ss(&["-lxpH"]).unwrap();
    let paths: Vec<PathBuf> = unix
        .lines()
        .filter(owned)
        .map(|l| PathBuf::from(l.split_whitespace().nth(4).unwrap()))
        .collect();
    assert!(
        paths.iter().any(|p| p.ends_with("admin.sock")),
        "no admin socket among Envoy's unix sockets:\n{unix}"
    );
    use std::os::unix::fs::PermissionsExt;
    for p in &paths {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", p.display());
    }

    std::fs::write(sb.data().join("alloc/net-g/alloc/done"), "").unwrap();
    assert_eq!(agent.wait_exit(), 0, "{}", agent.output());
    assert!(!alive(pid), "the proxy must stop with its group");
}

/// A root agent runs the group's Envoy as the proxy user (nobody here):
/// no capability, NoNewPrivs, and nothing of its config it could rewrite:
/// every file and directory is root's, readable through the group only;
/// the one directory it may write (for its admin socket) is sticky. The
/// proxy still carries traffic.
#[test]
fn the_group_proxy_runs_as_an_unprivileged_user_that_cannot_rewrite_its_config() {
    let Some(envoy) = envoy_bin() else { return };
    if skip_unless_root("the proxy user is switched only by a root agent") {
        return;
    }
    let upstream_port = pong_upstream();
    let local_port = free_port();
    let sb = Sandbox::new();
    let mut agent = proxied_service(&sb, "pu", local_port, upstream_port, &envoy);
    let pid = agent.pid_of("g envoy: running pid");
    agent.wait_line("g r0 t: running pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> String {
        let line = status.lines().find(|l| l.starts_with(&format!("{name}:"))).unwrap();
        line.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")
    };
    assert_eq!(field("Uid"), "65534 65534 65534 65534", "{status}");
    assert_eq!(field("CapEff"), "0000000000000000", "{status}");
    assert_eq!(field("NoNewPrivs"), "1", "{status}");

    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let dir = sb.data().join("alloc/pu-g/envoy");
    let mut checked = 0;
    let mut stack = vec![dir.clone()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let name = p.strip_prefix(&dir).unwrap().display().to_string();
        if meta.file_type().is_socket() {
            // Envoy's own admin socket: private to it (and root).
            assert_eq!(meta.mode() & 0o077, 0, "{name} is mode {:o}", meta.mode());
            continue;
        }
        assert_eq!(meta.uid(), 0, "{name} is not root's");
        if name == "admin" {
            // Where Envoy creates its socket: writable by its group, sticky.
            assert_eq!(meta.mode() & 0o1002, 0o1000, "{name} is mode {:o}", meta.mode());
        } else {
            assert_eq!(
                meta.mode() & 0o022,
                0,
                "{name} is writable by others: mode {:o}",
                meta.mode()
            );
        }
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
        checked += 1;
    }
    assert!(
        checked >= 5,
        "envoy.json, xds/, sds/, admin/ and the listeners at least"
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", local_port)).unwrap();
    s.write_all(b"ping\n").unwrap();
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).unwrap();
    assert_eq!(reply, "pong:ping\n");
    std::fs::write(sb.data().join("alloc/pu-g/alloc/done"), "").unwrap();
    assert_eq!(agent.wait_exit(), 0, "{}", agent.output());
}

/// A service Job `job` whose group `g` has one plain upstream through its
/// Envoy (`localPort` → `upstream_port`) and a task that waits for the file
/// `alloc/<job>-g/alloc/done`; the agent running it.
fn proxied_service(sb: &Sandbox, job_name: &str, local_port: u16, upstream_port: u16, envoy: &Path) -> Agent {
    let file = sb.job(&job(
        job_name,
        "service",
        &format!(
            r#"    - name: g
      network:
        upstreams: [{{name: up, localPort: {local_port}, upstream: "127.0.0.1:{upstream_port}", tls: false}}]
      tasks:
        - {{name: t, driver: exec, config: {{execConfig: {{command: /bin/sh, args: ["-c", "while [ ! -e $K8S4R_ALLOC_DIR/done ]; do sleep 0.05; done"]}}}}}}
"#
        ),
    ));
    sb.run(&file, &["--envoy-bin", envoy.to_str().unwrap()])
}

/// kill -9 of a group's Envoy: the agent starts it again (a new pid that
/// listens on the same port and carries traffic), and the group's task is
/// not touched (same pid, never restarted).
#[test]
fn a_killed_group_proxy_is_restarted_and_its_tasks_are_untouched() {
    let Some(envoy) = envoy_bin() else { return };
    let upstream_port = pong_upstream();
    let local_port = free_port();
    let sb = Sandbox::new();
    let mut agent = proxied_service(&sb, "kp", local_port, upstream_port, &envoy);
    let first = agent.pid_of("g envoy: running pid");
    let task = agent.pid_of("g r0 t: running pid");
    let through_proxy = || -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", local_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"ping\n").ok()?;
        let mut reply = String::new();
        BufReader::new(&s).read_line(&mut reply).ok()?;
        (reply == "pong:ping\n").then_some(reply)
    };
    wait_for("traffic through the first proxy", T, through_proxy);

    signal(first as u32, "KILL");
    let second = wait_for("the proxy started again", T, || {
        let pids: Vec<i32> = agent
            .lines_with("g envoy: running pid")
            .iter()
            .filter_map(|(_, l)| l.rsplit(' ').next()?.parse().ok())
            .collect();
        pids.into_iter().find(|p| *p != first)
    });
    assert!(!alive(first));
    wait_for("traffic through the restarted proxy", T, through_proxy);
    assert!(alive(task), "the group's task died with its proxy");
    assert_eq!(agent.lines_with("g r0 t: running pid").len(), 1, "{}", agent.output());
    assert!(alive(second));
    std::fs::write(sb.data().join("alloc/kp-g/alloc/done"), "").unwrap();
    signal(agent.child.id(), "TERM");
    assert_eq!(agent.wait_exit(), 0, "{}", agent.output());
}
