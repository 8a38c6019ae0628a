//! Starting one unit's process, in three steps:
//! 1. `prepare` (quick): directories, the user and its groups, templates;
//! 2. `fetch_artifacts` (maybe slow, so on a worker thread when needed);
//! 3. `exec` (quick): log pipes, cgroup, then `sys::launch` (a clone
//!    sharing the agent's memory: new session, limits, cgroup join, user
//!    switch, exec).
//!
//! Every string and descriptor the child needs is prepared before the
//! start, and a failure before exec comes back as an error, so `exec`
//! returns only once the task's program is running.

use super::cgroup::{CgroupError, Cgroups};
use super::logs::{self, LogError, LogLimits, LogPump};
use super::procfs::{self, ProcIdentity};
use super::sys::launch::{self, LaunchError};
use super::sys::{ChildSetup, Credentials};
use super::{DirOwner, UnitSpec};
use crate::agent::accounts::{self, Account};
use crate::agent::artifacts::{self, ArtifactError};
use crate::agent::templates::{self, TemplateError};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::process::{Resource, Rlimit};
use std::path::PathBuf;

#[derive(Debug)]
pub enum SpawnError {
    Dir(PathBuf, std::io::Error),
    Template(TemplateError),
    Artifact(ArtifactError),
    Logs(LogError),
    User(String),
    Cgroup(CgroupError),
    Exec(String, LaunchError),
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
            SpawnError::Exec(cmd, e) if e.not_found() => write!(f, "{cmd}: command not found"),
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
    /// May a task run as uid 0 (no `user`, or a user that is root)?
    pub allow_root: bool,
}

pub struct Spawned {
    pub identity: ProcIdentity,
    pub pumps: Vec<LogPump>,
}

/// What `prepare` found out, for `exec` (the default: run as the agent's user).
#[derive(Clone, Debug, Default)]
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
    let account = run_as(spec, ctx)?;
    make_dirs(spec, account.as_ref(), ctx.is_root)?;
    let prepared = Prepared { account };
    templates::write_all(&spec.templates, &spec.env, &spec.dir, &spec.alloc_dir, prepared.owner())
        .map_err(SpawnError::Template)?;
    Ok(prepared)
}

/// The unit's user (None: the agent's own), under the robot's policy:
/// switching users needs root (without it tasks run as the agent's user);
/// a task that would run as uid 0 is refused when the robot forbids root
/// tasks.
fn run_as(spec: &UnitSpec, ctx: &SpawnContext<'_>) -> Result<Option<Account>, SpawnError> {
    if !ctx.is_root {
        return Ok(None);
    }
    let root_refused = || {
        SpawnError::User(format!(
            "refusing to run as root: this robot forbids root tasks (--allow-root-tasks=false); \
             give the task a `user:` or start the agent with --default-user ({})",
            spec.user
                .as_deref()
                .map_or("no user given".to_string(), |u| format!("user {u:?} is uid 0"))
        ))
    };
    let Some(user) = spec.user.as_deref() else {
        return if ctx.allow_root { Ok(None) } else { Err(root_refused()) };
    };
    let account = accounts::lookup(user).map_err(SpawnError::User)?;
    if account.uid == 0 && !ctx.allow_root {
        return Err(root_refused());
    }
    Ok(Some(account))
}

/// The unit's directories, created and owned through descriptors opened
/// with `O_NOFOLLOW | O_DIRECTORY`, never by path: the task owns its
/// directory and may have swapped `local` for a symlink to /etc since its
/// last run; a path-based chown at the next start would follow the link
/// and hand /etc to the task.
///
/// Task directory (cwd), `local/` and `secrets/`: the task's, 0700 (for
/// [`DirOwner::Agent`] units the directory is the agent's, readable by the
/// unit's group, with no `local/`). `logs/`: the agent's, 0700 (the task
/// writes its output through pipes the agent opened). The group's alloc
/// directory, shared by the group's tasks (`alloc_users`): the one user's
/// (0700) when they all run as one; root's with a group all of them are in
/// (02770) when they run as several; readable by all (0755) when they share
/// no group; the agent's (0700) when none has a user.
fn make_dirs(spec: &UnitSpec, account: Option<&Account>, is_root: bool) -> Result<(), SpawnError> {
    let owner = account.map(|a| (a.uid, a.gid));
    // The parents (`alloc/<job>-<group>/r0/`, ...) are the agent's: nothing
    // the task controls is on the way.
    for parent in [spec.dir.parent(), spec.alloc_dir.parent()].into_iter().flatten() {
        std::fs::create_dir_all(parent).map_err(|e| SpawnError::Dir(parent.to_path_buf(), e))?;
    }
    let task = dirfd::open_or_create(None, &spec.dir)?;
    let own_dirs: &[&str] = match spec.dir_owner {
        DirOwner::Task => {
            dirfd::own(&task, &spec.dir, owner, 0o700)?;
            &["local", "secrets"]
        }
        DirOwner::Agent => {
            // The agent's uid, the unit's group, setgid: readable by the
            // unit, written by the agent only.
            let me = rustix::process::geteuid().as_raw();
            dirfd::own(&task, &spec.dir, account.map(|a| (me, a.gid)), 0o2750)?;
            if let Some(a) = account.filter(|a| !a.can_reach(&spec.dir)) {
                return Err(SpawnError::User(format!(
                    "user {:?} cannot reach {}: a directory on the way is not searchable by it; \
                     let it through (chmod o+x) or choose another --proxy-user",
                    a.name,
                    spec.dir.display()
                )));
            }
            &[]
        }
    };
    for name in own_dirs {
        let path = spec.dir.join(name);
        let sub = dirfd::open_or_create(Some(&task), &path)?;
        dirfd::own(&sub, &path, owner, 0o700)?;
    }
    let logs = spec.dir.join("logs");
    let sub = dirfd::open_or_create(Some(&task), &logs)?;
    dirfd::own(&sub, &logs, None, 0o700)?;
    // A robot-scoped daemon's alloc directory is its own directory.
    if spec.alloc_dir != spec.dir {
        let alloc = dirfd::open_or_create(None, &spec.alloc_dir)?;
        let (owner, mode) = alloc_access(&spec.alloc_users, is_root)?;
        dirfd::own(&alloc, &spec.alloc_dir, Some(owner), mode)?;
    }
    Ok(())
}

/// (owner, mode) of a group's shared directory for the users of its tasks
/// (see `make_dirs`).
fn alloc_access(users: &[String], is_root: bool) -> Result<((u32, u32), u32), SpawnError> {
    let me = (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw());
    if !is_root || users.is_empty() {
        return Ok((me, 0o700));
    }
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    let accounts = accounts::lookup_all(&names).map_err(SpawnError::User)?;
    if let [one] = accounts.as_slice() {
        return Ok(((one.uid, one.gid), 0o700));
    }
    let shared = accounts[0]
        .groups
        .iter()
        .chain(std::iter::once(&accounts[0].gid))
        .find(|g| accounts.iter().all(|a| a.gid == **g || a.groups.contains(g)));
    Ok(match shared {
        Some(g) => ((me.0, *g), 0o2770),
        None => (me, 0o755),
    })
}

/// Directories by descriptor, never following a symlink in the last
/// component (the only one a task can change: parents are the agent's).
mod dirfd {
    use super::SpawnError;
    use rustix::fd::OwnedFd;
    use rustix::fs::{Mode, OFlags};
    use std::path::Path;

    /// `path` (or its last component under `parent`), created 0700 if
    /// missing, opened without following a symlink.
    pub fn open_or_create(parent: Option<&OwnedFd>, path: &Path) -> Result<OwnedFd, SpawnError> {
        let name = path
            .file_name()
            .ok_or_else(|| SpawnError::Dir(path.to_path_buf(), std::io::ErrorKind::InvalidInput.into()))?;
        let err = |e: rustix::io::Errno| SpawnError::Dir(path.to_path_buf(), e.into());
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(0o700);
        let made = match parent {
            Some(dir) => rustix::fs::mkdirat(dir, name, mode),
            None => rustix::fs::mkdir(path, mode),
        };
        match made {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(err(e)),
        }
        let opened = match parent {
            Some(dir) => rustix::fs::openat(dir, name, flags, Mode::empty()),
            None => rustix::fs::open(path, flags, Mode::empty()),
        };
        opened.map_err(|e| match e {
            rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => SpawnError::Dir(
                path.to_path_buf(),
                std::io::Error::other("is a symlink or not a directory (replaced by the task?); refusing to follow it"),
            ),
            e => err(e),
        })
    }

    /// Owner (None: leave it, the agent's) and exact mode, by descriptor.
    pub fn own(dir: &OwnedFd, path: &Path, owner: Option<(u32, u32)>, mode: u32) -> Result<(), SpawnError> {
        let err = |e: rustix::io::Errno| SpawnError::Dir(path.to_path_buf(), e.into());
        if let Some((uid, gid)) = owner {
            rustix::fs::fchown(
                dir,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(err)?;
        }
        rustix::fs::fchmod(dir, Mode::from_raw_mode(mode)).map_err(err)
    }
}

/// Second step, possibly slow (downloads), so the supervisor runs it on a
/// worker thread when there is anything to fetch. With
/// `require_checksums`, a plain-http artifact without one fails the step
/// before anything is fetched.
pub fn fetch_artifacts(
    artifacts: &[crate::api::Artifact],
    dir: &std::path::Path,
    alloc_dir: &std::path::Path,
    owner: Option<(u32, u32)>,
    max_bytes: u64,
    require_checksums: bool,
) -> Result<(), SpawnError> {
    if require_checksums {
        artifacts::require_checksums(artifacts).map_err(SpawnError::Artifact)?;
    }
    artifacts::fetch_all(artifacts, dir, alloc_dir, owner, max_bytes).map_err(SpawnError::Artifact)
}

/// Last step, quick: log pipes, cgroup, the start.
pub fn exec(spec: &UnitSpec, ctx: &SpawnContext<'_>, prepared: &Prepared) -> Result<Spawned, SpawnError> {
    let logs_dir = spec.dir.join("logs");
    let account = &prepared.account;
    let argv = match &spec.pre_start {
        Some(hook) => (hook.0)().map_err(SpawnError::PreStart)?,
        None => spec.argv.clone(),
    };
    let cgroup_procs = match ctx.cgroups {
        Some(cg) => Some(cg.prepare(&spec.name, spec.limits).map_err(SpawnError::Cgroup)?),
        None => None,
    };
    let mut pumps = Vec::new();
    let mut task_ends = Vec::new();
    for stream in logs::STREAMS {
        let (pump, task_end) = logs::open_stream(&logs_dir, stream, ctx.log_limits).map_err(SpawnError::Logs)?;
        pumps.push(pump);
        task_ends.push(task_end);
    }
    let [stdout, stderr] = [&task_ends[0], &task_ends[1]].map(|f| f.as_fd());
    let pid = launch_unit(spec, &argv, account.as_ref(), cgroup_procs, Some([stdout, stderr]))?;
    // The task's ends of the log FIFOs close here; the supervisor reaps
    // every child with waitpid(-1) on SIGCHLD.
    drop(task_ends);
    let stat = procfs::read_stat(pid).map_err(|e| SpawnError::Identity(pid, e))?;
    Ok(Spawned {
        identity: ProcIdentity {
            pid,
            start_time: stat.start_time,
        },
        pumps,
    })
}

/// The open-file limit this process had before [`raise_open_files`]
/// raised it: what tasks get back.
static TASK_OPEN_FILES: std::sync::OnceLock<Rlimit> = std::sync::OnceLock::new();

/// Raise this process's open-file soft limit to its hard limit, once: the
/// agent holds two log pipes and a pidfd per task, so 1,000 tasks need
/// more than 3,000 descriptors, and an init (busybox's, systemd's) leaves
/// a soft limit of 1,024. Tasks get the limit as it was (a program that
/// uses `select` breaks on descriptors past 1,024). A notice if the raise
/// failed.
pub fn raise_open_files() -> Option<String> {
    let before = *TASK_OPEN_FILES.get_or_init(|| rustix::process::getrlimit(Resource::Nofile));
    if before.current == before.maximum {
        return None;
    }
    let raised = Rlimit {
        current: before.maximum,
        maximum: before.maximum,
    };
    rustix::process::setrlimit(Resource::Nofile, raised).err().map(|e| {
        let fit = before
            .current
            .map_or(String::new(), |n| format!(" (at most about {} tasks)", n / 3));
        format!("cannot raise the open-file limit ({e}): each task holds three descriptors{fit}")
    })
}

/// Put the open-file limit back as this process was given it, before it
/// execs itself (a self-update): the new agent then keeps the same one
/// for its tasks, and raises its own again.
pub fn restore_open_files() {
    if let Some(files) = TASK_OPEN_FILES.get() {
        let _ = rustix::process::setrlimit(Resource::Nofile, *files);
    }
}

/// What the child does before exec, the same for a task and its script
/// checks: its cgroup, no core dumps, the open-file limit the agent was
/// given, its user.
fn child_setup(account: Option<&Account>, cgroup_procs: Option<rustix::fd::OwnedFd>) -> ChildSetup {
    // No core dumps: a crash-looping task must not fill a robot's flash.
    // The hard limit is kept: lowering it would be irreversible for the task.
    let hard = rustix::process::getrlimit(Resource::Core).maximum;
    let mut rlimits = vec![(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: hard,
        },
    )];
    if let Some(files) = TASK_OPEN_FILES.get() {
        rlimits.push((Resource::Nofile, *files));
    }
    let credentials = account.map(|account| Credentials {
        uid: rustix::process::Uid::from_raw(account.uid),
        gid: rustix::process::Gid::from_raw(account.gid),
        groups: account
            .groups
            .iter()
            .map(|g| rustix::process::Gid::from_raw(*g))
            .collect(),
    });
    ChildSetup {
        cgroup_procs,
        rlimits,
        credentials,
    }
}

/// Start a script probe exactly as its task runs: same user and groups,
/// NoNewPrivs, the task's cgroup (so its pids.max and memory count the
/// probe), environment and directory; output discarded; its own process
/// group so a timeout can kill all of it. The task can rewrite the script,
/// so running it with more rights than the task would hand those rights
/// to the task.
pub fn spawn_probe(spec: &UnitSpec, ctx: &SpawnContext<'_>, argv: &[String]) -> Result<i32, SpawnError> {
    let account = run_as(spec, ctx)?;
    let cgroup_procs = match ctx.cgroups {
        Some(cg) => Some(cg.join_existing(&spec.name).map_err(SpawnError::Cgroup)?),
        None => None,
    };
    launch_unit(spec, argv, account.as_ref(), cgroup_procs, None)
}

/// Start `argv` as the unit runs it, for its process and its script
/// checks alike: its environment (HOME from its account unless set), its
/// directory, no stdin, `output` as stdout and stderr (None: discarded), and the child setup
/// (new session, limits, its cgroup, its user). Returns the pid.
fn launch_unit(
    spec: &UnitSpec,
    argv: &[String],
    account: Option<&Account>,
    cgroup_procs: Option<OwnedFd>,
    output: Option<[BorrowedFd<'_>; 2]>,
) -> Result<i32, SpawnError> {
    let program = argv
        .first()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| SpawnError::PreStart("no command to run".into()))?;
    let home = account
        .filter(|_| !spec.env.contains_key("HOME"))
        .map(|a| ("HOME", a.home.as_str()));
    let env = spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(home);
    let setup = child_setup(account, cgroup_procs);
    launch::launch(argv, env, &spec.dir, output, &setup).map_err(|e| SpawnError::Exec(program.clone(), e))
}
