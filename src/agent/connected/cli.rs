//! `k8s4r-agent [connect] --server URL --join-token T --name ROBOT ...`:
//! the command line of connected mode. Settings may also come from the
//! environment and a config file (see `config`).

use super::config::{self, Settings};
use super::waiting::{self, ConfigWatch, Intervals, Start};
use super::{restart_delay, say, ConnectedOptions};
use crate::agent::{cgroup, default_data_dir, default_envoy, logs::LogLimits, reconcile, supervisor, update};
use lexopt::prelude::*;
use std::ffi::OsString;
use std::path::PathBuf;

pub const USAGE: &str = "\
k8s4r-agent [connect] [OPTIONS]

Connected mode: register with the control plane once (join token), then
long-poll this robot's tasks and run them; statuses go through an on-disk
outbox. Plain HTTP, every message signed and bodies sealed (the robot's key
is <data-dir>/robot.key). SIGTERM exits and leaves tasks running for the
next agent.

OPTIONS (each also as an environment variable, or a KEY=value line in the
config file; flags win over the environment, the environment over the file):
    --server URL          Control plane, http://HOST:PORT          [K8S4R_SERVER]
    --join-token TOKEN    From `k8s4r token create` (it pins the server's key);
                          needed once                              [K8S4R_JOIN_TOKEN]
    --name ROBOT          This robot's name [default: hostname]    [K8S4R_NAME]
    --labels k=v,...      Labels robotSelector matches             [K8S4R_LABELS]
    --namespace NS        Namespace of the Robot [default: default] [K8S4R_NAMESPACE]
    --data-dir DIR        State, task directories, logs            [K8S4R_DATA_DIR]
    --config FILE         Settings file [default: /etc/k8s4r/agent.env if present]
    --envoy-bin PATH      Envoy for task groups with a network     [K8S4R_ENVOY]
    --log-max-size BYTES  Size cap of each task log file [default 1Mi]
    --log-max-files N     Log files kept per stream [default 3]
    --artifact-max-size SIZE  Largest artifact download [default 512Mi] [K8S4R_ARTIFACT_MAX_SIZE]
    --gc-after DURATION   Remove a departed group's directory (and logs) this long
                          after it was last needed [default 1h]   [K8S4R_GC_AFTER]
    --no-cgroups          Do not use cgroups for task limits
    --allow-root-tasks BOOL  May tasks run as root? Turn this off first on an untrusted
                          network [default true]                 [K8S4R_ALLOW_ROOT_TASKS]
    --default-user USER   User for tasks that name none (root agent only) [K8S4R_DEFAULT_USER]
    --proxy-user USER     User of the groups' Envoys when the agent is root
                          [default k8s4r-proxy if it exists, else nobody] [K8S4R_PROXY_USER]
    --require-artifact-checksums[=BOOL]  Refuse a task with an http:// artifact that
                          has no sha256 checksum, before any download
                          [default false]          [K8S4R_REQUIRE_ARTIFACT_CHECKSUMS]
    --proxy-mode MODE     per-group: one Envoy per task group; shared: one
                          robot-wide Envoy for all [default per-group] [K8S4R_PROXY_MODE]
    --config-recheck DURATION  While the agent has nothing to do (no server or
                          job file yet, or the server refuses it), re-read the
                          config file this often [default 10s] [K8S4R_CONFIG_RECHECK]
    --waiting-notice DURATION  ...and say what is missing this often
                          [default 1m]                          [K8S4R_WAITING_NOTICE]
    --release-key KEY|FILE  Public release key (64 hex digits, or a file holding
                          them) agent updates must be signed with [default: the
                          one the server sent at registration] [K8S4R_RELEASE_KEY]
    --update-deadline DURATION  A self-updated agent must reach the server within
                          this (while the server answers), else the previous one
                          comes back [default 5m]             [K8S4R_UPDATE_DEADLINE]
    -h, --help            Print help

With no server and no job file (K8S4R_JOB_FILE: the job it then runs as
`run -f`), or a server that refuses it, the agent waits: it says what is
missing and re-reads its config file, and once that changes starts afresh
in the same process. Errors it cannot wait out (a bad flag, an unusable data
dir) end it after a delay that grows while they repeat (<data-dir>/restart-delay).
";

/// Parse connected-mode options and run. `first` is a long option's name
/// the caller already took from the parser (the agent started without a
/// subcommand). Settings it can wait for (no server yet, a server that
/// refuses it) do not end it (see `waiting`); an error that does exits
/// after a growing delay (see `restart_delay`), as init would only start
/// the agent again at once.
pub fn cmd_connect(first: Option<String>, parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let mut data_dir = None;
    match connect(first, parser, &mut data_dir) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("error: {e}");
            restart_delay::before_exit(&data_dir.unwrap_or_else(default_data_dir));
            Ok(2)
        }
    }
}

/// `data_dir` is set as soon as it is known, for the restart delay.
fn connect(
    first: Option<String>,
    parser: &mut lexopt::Parser,
    data_dir: &mut Option<PathBuf>,
) -> Result<i32, lexopt::Error> {
    let mut flags = Settings::new();
    let mut config_file = None;
    let mut envoy_bin = None;
    let mut limits = LogLimits::default();
    let mut artifact_max_bytes = None;
    let mut gc_after = None;
    let mut cgroup_root = Some(PathBuf::from(cgroup::DEFAULT_ROOT));
    let mut pending = first;
    loop {
        let name = match pending.take() {
            Some(name) => name,
            None => match parser.next()? {
                Some(Long(l)) => l.to_string(),
                Some(Short('h')) => "help".to_string(),
                Some(other) => return Err(other.unexpected()),
                None => break,
            },
        };
        if crate::agent::privileges::take_flag(&name, parser, &mut flags)? {
            continue;
        }
        let key = match name.as_str() {
            "server" => "K8S4R_SERVER",
            "join-token" => "K8S4R_JOIN_TOKEN",
            "name" => "K8S4R_NAME",
            "labels" => "K8S4R_LABELS",
            "namespace" => "K8S4R_NAMESPACE",
            "config-recheck" => waiting::RECHECK_ENV,
            "release-key" => update::key::ENV,
            "update-deadline" => update::DEADLINE_ENV,
            "waiting-notice" => waiting::NOTICE_ENV,
            "config" => {
                config_file = Some(parser.value()?.string()?);
                continue;
            }
            "data-dir" => {
                *data_dir = Some(PathBuf::from(parser.value()?));
                continue;
            }
            "envoy-bin" => {
                envoy_bin = Some(PathBuf::from(parser.value()?));
                continue;
            }
            "log-max-size" => {
                limits.max_bytes = crate::agent::parse_log_max_size(&parser.value()?.string()?)?;
                continue;
            }
            "log-max-files" => {
                limits.max_files = parser.value()?.parse::<u32>()?.max(1);
                continue;
            }
            "artifact-max-size" => {
                artifact_max_bytes = Some(parse_artifact_max(&parser.value()?.string()?)?);
                continue;
            }
            "gc-after" => {
                gc_after = Some(parse_gc_after(&parser.value()?.string()?)?);
                continue;
            }
            "no-cgroups" => {
                cgroup_root = None;
                continue;
            }
            "help" => {
                print!("{USAGE}");
                return Ok(0);
            }
            other => return Err(format!("invalid option '--{other}'; see k8s4r-agent connect --help").into()),
        };
        flags.insert(key.to_string(), parser.value()?.string()?);
    }
    let env = config::env_settings();
    let intervals = Intervals::from_settings(&[&flags, &env]).map_err(|e| e.to_string())?;
    let watch = ConfigWatch {
        read: config::file_settings(config_file.as_deref()),
        path: config_file,
        intervals,
    };
    // Until the file can be read, the defaults: the agent waits for the
    // file then, and starts afresh from it once it can.
    let file = watch.read.as_ref().ok().cloned().unwrap_or_default();
    let data_dir = data_dir
        .get_or_insert_with(|| {
            file.get("K8S4R_DATA_DIR")
                .filter(|d| !d.is_empty())
                .map_or_else(default_data_dir, PathBuf::from)
        })
        .clone();
    let privileges = crate::agent::privileges::Privileges::resolve(&[&flags, &env, &file])?;
    let hostname = rustix::system::uname().nodename().to_string_lossy().into_owned();
    let config = match waiting::decide(&flags, &env, &watch.read, &hostname) {
        Start::Connect(config) => config,
        Start::RunJob(job) => {
            say(&format!("agent: no server; running the job file {}", job.display()));
            let mut args: Vec<OsString> = vec![
                "run".into(),
                "-f".into(),
                job.into(),
                "--data-dir".into(),
                data_dir.into(),
            ];
            if cgroup_root.is_none() {
                args.push("--no-cgroups".into());
            }
            // The policy from flags, environment or file holds there too.
            args.extend(privileges.as_flags().into_iter().map(OsString::from));
            let e = waiting::exec_agent(&args);
            return Err(format!("starting `k8s4r-agent run`: {e}").into());
        }
        Start::Wait(reason) => {
            return waiting::until_configured(&watch, reason, &|file| waiting::decide(&flags, &env, file, &hostname))
                .map_err(Into::into)
        }
    };
    let envoy_bin = envoy_bin
        .or_else(|| file.get("K8S4R_ENVOY").filter(|d| !d.is_empty()).map(PathBuf::from))
        .unwrap_or_else(default_envoy);
    // The environment variable is read by the supervisor itself; the
    // config file's line counts when neither flag nor environment gave one.
    if artifact_max_bytes.is_none() && std::env::var_os(crate::agent::artifacts::MAX_SIZE_ENV).is_none() {
        if let Some(text) = file
            .get(crate::agent::artifacts::MAX_SIZE_ENV)
            .filter(|t| !t.is_empty())
        {
            artifact_max_bytes = Some(parse_artifact_max(text)?);
        }
    }
    let gc_after = match gc_after {
        Some(d) => d,
        None => match std::env::var(GC_AFTER_ENV)
            .ok()
            .or_else(|| file.get(GC_AFTER_ENV).cloned())
        {
            Some(text) if !text.is_empty() => parse_gc_after(&text)?,
            _ => DEFAULT_GC_AFTER,
        },
    };
    let update = update_settings(&[&flags, &env, &file], &data_dir)?;
    let opts = ConnectedOptions {
        update,
        artifact_max_bytes,
        supervisor: supervisor::SupervisorConfig {
            data_dir: data_dir.clone(),
            log_limits: limits,
            cgroup_root,
            allow_root_tasks: privileges.allow_root_tasks,
            require_artifact_checksums: privileges.require_artifact_checksums,
        },
        reconcile: reconcile::ReconcileConfig {
            robot: config.name.clone(),
            data_dir,
            envoy_bin,
            gc_after: Some(gc_after),
            default_user: privileges.default_user,
            proxy_user: privileges.proxy_user,
            proxy_mode: privileges.proxy_mode,
        },
        config,
        watch,
    };
    Ok(super::run(opts)?)
}

fn parse_artifact_max(text: &str) -> Result<u64, lexopt::Error> {
    crate::agent::artifacts::parse_max_size(text).map_err(|e| format!("--{e}").into())
}

const GC_AFTER_ENV: &str = "K8S4R_GC_AFTER";
const DEFAULT_GC_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// Bounded like a manifest's durations: it is added to the clock.
fn parse_gc_after(text: &str) -> Result<std::time::Duration, lexopt::Error> {
    crate::api::Duration::parse_bounded(text).map_err(|e| format!("--gc-after {text:?}: {e}").into())
}

/// The self-update's settings: the release key and the deadline from the
/// first source that has them, the binary as this process was started.
fn update_settings(sources: &[&Settings], data_dir: &std::path::Path) -> Result<update::Settings, lexopt::Error> {
    let get = |key: &str| sources.iter().find_map(|m| m.get(key).filter(|v| !v.is_empty()));
    let release_key = get(update::key::ENV)
        .map(|text| update::key::parse_setting(text))
        .transpose()?;
    let deadline = match get(update::DEADLINE_ENV) {
        Some(text) => {
            crate::api::Duration::parse_bounded(text).map_err(|e| format!("--update-deadline {text:?}: {e}"))?
        }
        None => update::DEFAULT_DEADLINE,
    };
    // /proc/self/exe: the path this agent was started from (before any swap).
    let binary = std::env::current_exe().map_err(|e| format!("the agent's own binary: {e}"))?;
    Ok(update::Settings {
        data_dir: data_dir.to_path_buf(),
        binary,
        release_key,
        deadline,
    })
}
