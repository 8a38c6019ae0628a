//! The robot agent: desired tasks in, supervised processes out.
//!
//! - `reconcile`: decides which units must run (init order, proxies, tasks)
//!   as a plan the supervisor applies; `robot_proxy`: its part for the
//!   robot-wide Envoy of `--proxy-mode shared`; `specs`: what every unit
//!   spec shares (PATH, revision hash, the proxy unit builder);
//! - `supervisor`: runs them (fork/exec, reaping, restarts, timeouts, logs,
//!   checks, persisted state and re-adoption), with what only it uses:
//!   `logs`, `state`, `checks`, `cgroup`, `procfs` and `sys` (the only
//!   `unsafe`);
//! - `layout`: the data directory's layout and the units' names;
//! - `standalone`: `run -f job.yaml`, the desired set from a file;
//! - `connected`: the desired set from the server's long poll;
//! - helpers with one job each: `templates`, `artifacts`,
//!   `manifest_paths` (a manifest's destination paths kept inside the task
//!   directory), `device`, `clock` (deadlines that cannot overflow).
//!
//! Decisions worth knowing (details in each module):
//! - units are named `<job>-<group>-r<i>-<task>` (tasks), `<job>-<group>-<init>`
//!   (init tasks and group daemons), `<job>-<group>-envoy` (the proxy;
//!   `robot-envoy` for every group with `--proxy-mode shared`) and
//!   `robot-<name>` (init tasks with `scope: robot` and `daemon: true`: one
//!   per robot whichever groups declare them), and live in the data dir as
//!   `layout` says (its one owner);
//! - a task that exits 0 is complete and not restarted, in batch and service
//!   Jobs alike; failures follow restartPolicy (default: none for batch, 2
//!   restarts in 30 min for service), daemons restart after any exit;
//! - logs go through a FIFO per stream so they survive an agent restart and
//!   the size cap is exact (`logs`);
//! - tasks outlive the agent only when asked (`run --keep-running`, or the
//!   connected agent): the next agent re-adopts them by pid + start time +
//!   boot id and watches them through a pidfd (/proc every second on
//!   kernels without pidfd_open); their exit status is then unknowable and
//!   reported as such.

pub mod accounts;
pub mod append_log;
pub mod artifacts;
pub mod clock;
pub mod connected;
pub mod device;
pub mod expand;
pub mod gc;
pub mod layout;
pub mod manifest_paths;
pub mod ordered;
pub mod privileges;
pub mod reconcile;
pub mod robot_proxy;
pub mod rollback;
pub mod specs;
pub mod standalone;
pub mod supervisor;
pub mod templates;
pub mod update;
pub mod version;

// Owned by the supervisor; named here too for the connected agent and the
// `logs`/`stop-all` commands, which read what it left on disk.
pub use supervisor::{cgroup, logs, procfs, state};

use lexopt::prelude::*;
use logs::LogLimits;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const RUN_USAGE: &str = "\
k8s4r-agent run -f FILE [OPTIONS]

Run every task group of a Job on this machine (all replicas), no server.
Prints each state change. A Job ends when all its tasks have finished
(exit 0 only if all succeeded); SIGINT/SIGTERM stop everything gracefully.

OPTIONS:
    -f, --filename FILE     The Job manifest (YAML or JSON)
    --data-dir DIR          State, task directories and logs
                            [env K8S4R_DATA_DIR; default /var/lib/k8s4r-agent as root,
                            else ~/.local/state/k8s4r-agent]
    --robot NAME            This robot's name for K8S4R_ROBOT [env K8S4R_ROBOT; default hostname]
    --envoy-bin PATH        Envoy for task groups with a network [env K8S4R_ENVOY; default envoy on PATH]
    --keep-running          On SIGINT/SIGTERM exit but leave tasks running; the next run re-adopts them
    --log-max-size BYTES    Size cap of each log file (e.g. 1Mi) [default 1Mi]
    --log-max-files N       Log files kept per stream, current one included [default 3]
    --artifact-max-size SIZE  Largest artifact download (e.g. 64Mi); a bigger one fails its task
                            [env K8S4R_ARTIFACT_MAX_SIZE; default 512Mi]
    --cgroup-root DIR       cgroup v2 directory for memory/cpu limits [default /sys/fs/cgroup/k8s4r]
    --no-cgroups            Do not use cgroups
    --allow-root-tasks BOOL May tasks run as root? [env K8S4R_ALLOW_ROOT_TASKS; default true]
    --default-user USER     User for tasks that name none (root agent only) [env K8S4R_DEFAULT_USER]
    --proxy-user USER       User of the groups' Envoys when the agent is root
                            [env K8S4R_PROXY_USER; default k8s4r-proxy if it exists, else nobody]
    --require-artifact-checksums[=BOOL]  Refuse a task with an http:// artifact that has no
                            sha256 checksum (integrity not verified), before any download
                            [env K8S4R_REQUIRE_ARTIFACT_CHECKSUMS; default false]
    --proxy-mode MODE       per-group: one Envoy per task group; shared: one robot-wide
                            Envoy (robot-envoy) for all [env K8S4R_PROXY_MODE; default per-group]
    -h, --help              Print help
";

const LOGS_USAGE: &str = "\
k8s4r-agent logs TASK [OPTIONS]

Print a task's output. TASK is a unit name (job-group-r0-task, job-group-init,
robot-name) or, if unambiguous, a task name.

OPTIONS:
    -f, --follow        Keep printing new output
    --tail N            Only the last N lines
    --stderr            Standard error instead of standard output
    --data-dir DIR      As for run
    -h, --help          Print help
";

const STOP_ALL_USAGE: &str = "\
k8s4r-agent stop-all [--data-dir DIR]

Stop every process started by agents on DIR: a running agent is sent SIGTERM
first (and waited for), then each remaining task's process group gets SIGTERM,
its killTimeout, then SIGKILL.
";

pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("K8S4R_DATA_DIR") {
        return PathBuf::from(dir);
    }
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/k8s4r-agent");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/state/k8s4r-agent")
}

fn default_robot() -> String {
    std::env::var("K8S4R_ROBOT")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "localhost".into())
}

pub fn default_envoy() -> PathBuf {
    std::env::var_os("K8S4R_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("envoy"))
}

/// `--log-max-size`: a positive size such as `1Mi` or `500000`.
pub fn parse_log_max_size(text: &str) -> Result<u64, String> {
    crate::api::Quantity::new(text)
        .units_ceil()
        .and_then(|b| u64::try_from(b).ok())
        .filter(|b| *b > 0)
        .ok_or_else(|| format!("--log-max-size {text:?}: expected a size such as 1Mi or 500000"))
}

/// `k8s4r-agent run ...`
pub fn cmd_run(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let mut file = None;
    let mut data_dir = None;
    let mut robot = None;
    let mut envoy_bin = None;
    let mut keep_running = false;
    let mut limits = LogLimits::default();
    let mut artifact_max_bytes = None;
    let mut cgroup_root = Some(PathBuf::from(cgroup::DEFAULT_ROOT));
    let mut privilege_flags = connected::config::Settings::new();
    while let Some(arg) = parser.next()? {
        match arg {
            Short('f') | Long("filename") => file = Some(parser.value()?.string()?),
            Long(flag) if privileges::KEYS.iter().any(|(f, _)| *f == flag) => {
                let flag = flag.to_string();
                privileges::take_flag(&flag, parser, &mut privilege_flags)?;
            }
            Long("data-dir") => data_dir = Some(PathBuf::from(parser.value()?)),
            Long("robot") => robot = Some(parser.value()?.string()?),
            Long("envoy-bin") => envoy_bin = Some(PathBuf::from(parser.value()?)),
            Long("keep-running") => keep_running = true,
            Long("log-max-size") => limits.max_bytes = parse_log_max_size(&parser.value()?.string()?)?,
            Long("log-max-files") => {
                limits.max_files = parser.value()?.parse::<u32>()?.max(1);
            }
            Long("artifact-max-size") => {
                let text = parser.value()?.string()?;
                artifact_max_bytes = Some(artifacts::parse_max_size(&text).map_err(|e| format!("--{e}"))?);
            }
            Long("cgroup-root") => cgroup_root = Some(PathBuf::from(parser.value()?)),
            Long("no-cgroups") => cgroup_root = None,
            Short('h') | Long("help") => {
                print!("{RUN_USAGE}");
                return Ok(0);
            }
            other => return Err(other.unexpected()),
        }
    }
    let file = file.ok_or("run needs -f FILE; see k8s4r-agent run --help")?;
    let data_dir = data_dir.unwrap_or_else(default_data_dir);
    let privileges = privileges::Privileges::resolve(&[&privilege_flags, &connected::config::env_settings()])?;
    let opts = standalone::RunOptions {
        file,
        keep_running,
        artifact_max_bytes,
        supervisor: supervisor::SupervisorConfig {
            data_dir: data_dir.clone(),
            log_limits: limits,
            cgroup_root,
            allow_root_tasks: privileges.allow_root_tasks,
            require_artifact_checksums: privileges.require_artifact_checksums,
        },
        reconcile: reconcile::ReconcileConfig {
            robot: robot.unwrap_or_else(default_robot),
            data_dir,
            envoy_bin: envoy_bin.unwrap_or_else(default_envoy),
            gc_after: None,
            default_user: privileges.default_user,
            proxy_user: privileges.proxy_user,
            proxy_mode: privileges.proxy_mode,
        },
    };
    match standalone::run(opts) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(2)
        }
    }
}

/// Find a unit's directory by unit name or, if unambiguous, task name
/// (see [`layout::Layout::find_unit_dir`]).
pub(crate) fn find_unit_dir(data_dir: &Path, task: &str) -> Result<PathBuf, String> {
    layout::Layout::new(data_dir).find_unit_dir(task)
}

/// `k8s4r-agent logs TASK [-f] [--tail N] [--stderr]`
pub fn cmd_logs(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let mut task = None;
    let mut follow = false;
    let mut tail = None;
    let mut stream = "stdout";
    let mut data_dir = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Short('f') | Long("follow") => follow = true,
            Long("tail") => tail = Some(parser.value()?.parse::<usize>()?),
            Long("stderr") => stream = "stderr",
            Long("data-dir") => data_dir = Some(PathBuf::from(parser.value()?)),
            Short('h') | Long("help") => {
                print!("{LOGS_USAGE}");
                return Ok(0);
            }
            Value(v) if task.is_none() => task = Some(v.string()?),
            other => return Err(other.unexpected()),
        }
    }
    let task = task.ok_or("logs needs TASK; see k8s4r-agent logs --help")?;
    let data_dir = data_dir.unwrap_or_else(default_data_dir);
    let dir = match find_unit_dir(&data_dir, &task) {
        Ok(d) => d.join("logs"),
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(1);
        }
    };
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    let (text, current) = logs::read_tail_and_current(&dir, stream, tail);
    let _ = out.write_all(&text);
    let _ = out.flush();
    if follow {
        if let Err(e) = logs::follow(&dir, stream, current, &mut out) {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                eprintln!("error: {}: {e}", dir.display());
                return Ok(1);
            }
        }
    }
    Ok(0)
}

/// `k8s4r-agent stop-all [--data-dir DIR]`
pub fn cmd_stop_all(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let mut data_dir = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("data-dir") => data_dir = Some(PathBuf::from(parser.value()?)),
            Short('h') | Long("help") => {
                print!("{STOP_ALL_USAGE}");
                return Ok(0);
            }
            other => return Err(other.unexpected()),
        }
    }
    let data_dir = data_dir.unwrap_or_else(default_data_dir);
    match stop_all(&data_dir) {
        Ok(n) => {
            println!("stopped {n} process group(s)");
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(1)
        }
    }
}

/// Stop the agent on `data_dir` (if one runs) and every process it left.
pub fn stop_all(data_dir: &Path) -> Result<usize, String> {
    use procfs::ProcIdentity;
    use rustix::process::{kill_process, kill_process_group, Pid, Signal};
    let layout = layout::Layout::new(data_dir);
    let lock_path = layout.lock_file();
    if let Ok(lock) = std::fs::OpenOptions::new().write(true).open(&lock_path) {
        if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            // An agent holds the directory: ask it to stop, wait for the lock.
            let pid = std::fs::read_to_string(layout.pid_file())
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            if let Some(pid) = pid.and_then(Pid::from_raw) {
                let _ = kill_process(pid, Signal::TERM);
            }
            let deadline = clock::after(Instant::now(), Duration::from_secs(60));
            while rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
                if Instant::now() > deadline {
                    return Err("the running agent did not exit within 60s".into());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let (mut file, saved) = state::StateFile::load(data_dir).map_err(|e| e.to_string())?;
    let boot = procfs::boot_id();
    let mut live: Vec<(ProcIdentity, Duration)> = saved
        .units
        .values()
        .filter(|_| saved.boot_id == boot)
        .filter_map(|u| {
            Some((
                ProcIdentity {
                    pid: u.pid?,
                    start_time: u.start_time?,
                },
                Duration::from_millis(u.kill_timeout_ms),
            ))
        })
        .filter(|(id, _)| procfs::is_same_live_process(*id))
        .collect();
    // A task started but not recorded yet (the agent was killed while
    // starting it) is found as a restarted agent finds it: a group leader
    // running in a unit directory.
    let root = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let unit_roots = [layout::Layout::new(&root).groups_dir(), root.join("robot")];
    let in_units =
        |p: &Option<std::path::PathBuf>| p.as_ref().is_some_and(|p| unit_roots.iter().any(|r| p.starts_with(r)));
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    for leader in procfs::group_leaders(me) {
        let unrecorded = !live.iter().any(|(id, _)| id.pid == leader.id.pid);
        if unrecorded && (in_units(&leader.cwd) || in_units(&leader.task_dir)) {
            live.push((leader.id, specs::DEFAULT_KILL_TIMEOUT));
        }
    }
    for (id, _) in &live {
        if let Some(pid) = Pid::from_raw(id.pid) {
            let _ = kill_process_group(pid, Signal::TERM);
        }
    }
    // Processes that are not our children cannot be waited for: watch /proc.
    let started = Instant::now();
    for (id, grace) in &live {
        while procfs::is_same_live_process(*id) && started.elapsed() < *grace {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(pid) = Pid::from_raw(id.pid) {
            let _ = kill_process_group(pid, Signal::KILL);
        }
    }
    let mut state = saved;
    for u in state.units.values_mut() {
        u.pid = None;
        u.start_time = None;
    }
    // Written whole: the next agent, or an older one, reads the snapshot.
    file.save(&state)
        .and_then(|_| file.compact())
        .map_err(|e| e.to_string())?;
    Ok(live.len())
}
