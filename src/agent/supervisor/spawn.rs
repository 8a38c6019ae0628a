//! Starting one unit's process, in three steps:
//! 1. `prepare` (quick): directories, the user and its groups, templates;
//! 2. `fetch_artifacts` (maybe slow, so on a worker thread when needed);
//! 3. `exec` (quick): log pipes, cgroup, then fork/exec through
//!    `std::process::Command` with the pre-exec hook of `sys` (new session,
//!    limits, cgroup join, user switch).
//!
//! Every string and descriptor the child needs is prepared before fork;
//! `std::process::Command` builds argv/envp before forking and reports an
//! exec failure back through a close-on-exec pipe, so `exec` returns only
//! once the task's program is running.

use super::UnitSpec;
use crate::agent::artifacts::{self, ArtifactError};
use crate::agent::cgroup::{CgroupError, Cgroups};
use crate::agent::logs::{self, LogError, LogLimits, LogPump};
use crate::agent::procfs::{self, ProcIdentity};
use crate::agent::sys::{self, ChildSetup, Credentials};
use crate::agent::templates::{self, TemplateError};
use rustix::process::{Resource, Rlimit};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[derive(Debug)]
pub enum SpawnError {
    Dir(PathBuf, std::io::Error),
    Template(TemplateError),
    Artifact(ArtifactError),
    Logs(LogError),
    User(String),
    Cgroup(CgroupError),
    Exec(String, std::io::Error),
    Identity(i32, std::io::Error),
    PreStart(String),
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpawnError::Dir(p, e) => write!(f, "creating {}: {e}", p.display()),
            SpawnError::Template(e) => e.fmt(f),
            SpawnError::Artifact(e) => e.fmt(f),
            SpawnError::Logs(e) => e.fmt(f),
            SpawnError::User(m) => f.write_str(m),
            SpawnError::Cgroup(e) => e.fmt(f),
            SpawnError::Exec(cmd, e) if e.kind() == std::io::ErrorKind::NotFound => {
                write!(f, "{cmd}: command not found")
            }
            SpawnError::Exec(cmd, e) => write!(f, "{cmd}: {e}"),
            SpawnError::Identity(pid, e) => write!(f, "reading /proc/{pid}/stat of the new process: {e}"),
            SpawnError::PreStart(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for SpawnError {}

/// What the supervisor needs besides the unit itself.
pub struct SpawnContext<'a> {
    pub log_limits: LogLimits,
    pub cgroups: Option<&'a Cgroups>,
    /// Only root can switch users; others run tasks as themselves.
    pub is_root: bool,
}

pub struct Spawned {
    pub identity: ProcIdentity,
    pub pumps: Vec<LogPump>,
}

/// An account from /etc/passwd.
#[derive(Clone, Debug, PartialEq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    /// Primary and supplementary groups (filled from /etc/group).
    pub groups: Vec<u32>,
}

/// Look `user` (a name or a numeric uid) up in passwd-format `text`.
pub fn lookup_user(text: &str, user: &str) -> Option<Account> {
    let numeric = user.parse::<u32>().ok();
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        let (uid, gid) = (f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?);
        (f[0] == user || numeric == Some(uid)).then(|| Account {
            name: f[0].to_string(),
            uid,
            gid,
            home: f.get(5).unwrap_or(&"/").to_string(),
            groups: vec![gid],
        })
    })
}

/// The primary group plus every group of group-format `text` that lists
/// `user` as a member.
pub fn supplementary_groups(text: &str, user: &str, primary: u32) -> Vec<u32> {
    let mut groups = vec![primary];
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split(':').collect();
        let (Some(gid), Some(members)) = (f.get(2).and_then(|g| g.parse::<u32>().ok()), f.get(3)) else {
            continue;
        };
        if members.split(',').any(|m| m.trim() == user) && !groups.contains(&gid) {
            groups.push(gid);
        }
    }
    groups
}

/// What `prepare` found out, for `exec`.
#[derive(Clone, Debug)]
pub struct Prepared {
    account: Option<Account>,
}

impl Prepared {
    /// (uid, gid) files written for the task must belong to.
    pub fn owner(&self) -> Option<(u32, u32)> {
        self.account.as_ref().map(|a| (a.uid, a.gid))
    }
}

/// First step of a start, quick: directories, the user, templates.
pub fn prepare(spec: &UnitSpec, ctx: &SpawnContext<'_>) -> Result<Prepared, SpawnError> {
    let logs_dir = spec.dir.join("logs");
    for dir in [&spec.dir, &spec.dir.join("local"), &logs_dir, &spec.alloc_dir] {
        std::fs::create_dir_all(dir).map_err(|e| SpawnError::Dir(dir.clone(), e))?;
    }
    // Switching users needs root; without it tasks run as the agent's user.
    let account = match spec.user.as_deref().filter(|_| ctx.is_root) {
        Some(user) => {
            let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
            let mut account = lookup_user(&passwd, user)
                .ok_or_else(|| SpawnError::User(format!("user {user:?} not found in /etc/passwd")))?;
            // Device access on robots is often by group (dialout, video, gpio).
            let group_file = std::fs::read_to_string("/etc/group").unwrap_or_default();
            account.groups = supplementary_groups(&group_file, &account.name, account.gid);
            // The task must be able to write its own directory (not `logs/`,
            // which only the agent writes).
            for dir in [&spec.dir, &spec.dir.join("local")] {
                std::os::unix::fs::chown(dir, Some(account.uid), Some(account.gid))
                    .map_err(|e| SpawnError::Dir(dir.clone(), e))?;
            }
            Some(account)
        }
        None => None,
    };
    let prepared = Prepared { account };
    templates::write_all(&spec.templates, &spec.env, &spec.dir, &spec.alloc_dir, prepared.owner())
        .map_err(SpawnError::Template)?;
    Ok(prepared)
}

/// Second step, possibly slow (downloads), so the supervisor runs it on a
/// worker thread when there is anything to fetch.
pub fn fetch_artifacts(
    artifacts: &[crate::api::Artifact],
    dir: &std::path::Path,
    alloc_dir: &std::path::Path,
    owner: Option<(u32, u32)>,
    max_bytes: u64,
) -> Result<(), SpawnError> {
    artifacts::fetch_all(artifacts, dir, alloc_dir, owner, max_bytes).map_err(SpawnError::Artifact)
}

/// Last step, quick: log pipes, cgroup, fork/exec.
pub fn exec(spec: &UnitSpec, ctx: &SpawnContext<'_>, prepared: &Prepared) -> Result<Spawned, SpawnError> {
    let logs_dir = spec.dir.join("logs");
    let account = &prepared.account;
    let argv = match &spec.pre_start {
        Some(hook) => (hook.0)().map_err(SpawnError::PreStart)?,
        None => spec.argv.clone(),
    };
    let program = argv
        .first()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| SpawnError::PreStart("no command to run".into()))?;
    let mut cmd = Command::new(program);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.dir)
        .stdin(Stdio::null());

    let mut pumps = Vec::new();
    for stream in logs::STREAMS {
        let (pump, task_end) = logs::open_stream(&logs_dir, stream, ctx.log_limits).map_err(SpawnError::Logs)?;
        if stream == "stdout" {
            cmd.stdout(task_end);
        } else {
            cmd.stderr(task_end);
        }
        pumps.push(pump);
    }

    let mut credentials = None;
    if let Some(account) = account {
        if !spec.env.contains_key("HOME") {
            cmd.env("HOME", &account.home);
        }
        credentials = Some(Credentials {
            uid: rustix::process::Uid::from_raw(account.uid),
            gid: rustix::process::Gid::from_raw(account.gid),
            groups: account
                .groups
                .iter()
                .map(|g| rustix::process::Gid::from_raw(*g))
                .collect(),
        });
    }

    let cgroup_procs = match ctx.cgroups {
        Some(cg) => Some(cg.prepare(&spec.name, spec.limits).map_err(SpawnError::Cgroup)?),
        None => None,
    };
    // No core dumps: a crash-looping task must not fill a robot's flash.
    // The hard limit is kept: lowering it would be irreversible for the task.
    let hard = rustix::process::getrlimit(Resource::Core).maximum;
    let rlimits = vec![(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: hard,
        },
    )];
    sys::install_child_setup(
        &mut cmd,
        ChildSetup {
            cgroup_procs,
            rlimits,
            credentials,
        },
    );

    let child = cmd.spawn().map_err(|e| SpawnError::Exec(program.clone(), e))?;
    let pid = child.id() as i32;
    // The Child handle is dropped without waiting: the supervisor reaps
    // every child with waitpid(-1) on SIGCHLD.
    drop(child);
    let stat = procfs::read_stat(pid).map_err(|e| SpawnError::Identity(pid, e))?;
    Ok(Spawned {
        identity: ProcIdentity {
            pid,
            start_time: stat.start_time,
        },
        pumps,
    })
}

/// Start a script probe: same environment and directory as its task, output
/// discarded, its own process group so a timeout can kill all of it.
pub fn spawn_probe(spec: &UnitSpec, argv: &[String]) -> std::io::Result<i32> {
    let program = argv.first().ok_or(std::io::ErrorKind::InvalidInput)?;
    let child = Command::new(program)
        .args(&argv[1..])
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    Ok(child.id() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_users_by_name_and_uid() {
        let passwd = "# comment\nroot:x:0:0:root:/root:/bin/sh\nbot:x:1001:1002::/home/bot:/bin/sh\nbroken\n";
        let bot = lookup_user(passwd, "bot").unwrap();
        assert_eq!(
            (bot.name.as_str(), bot.uid, bot.gid, bot.home.as_str()),
            ("bot", 1001, 1002, "/home/bot")
        );
        assert_eq!(lookup_user(passwd, "0").unwrap().home, "/root");
        assert_eq!(lookup_user(passwd, "nobody"), None);
    }

    #[test]
    fn supplementary_groups_come_from_membership_lists() {
        let group = "root:x:0:\ndialout:x:20:bot,other\nvideo:x:44:bot\nbots:x:1002:\nbad\n";
        assert_eq!(supplementary_groups(group, "bot", 1002), vec![1002, 20, 44]);
        assert_eq!(supplementary_groups(group, "bo", 1002), vec![1002]);
    }
}
