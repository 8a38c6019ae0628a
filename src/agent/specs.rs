//! What every unit built from the desired set shares, for `reconcile` and
//! `robot_proxy` alike: the PATH tasks get, the default kill timeout, the
//! revision hash, and the one builder of a proxy's unit.

use super::supervisor::cgroup::Limits;
use super::supervisor::machine::Policy;
use super::supervisor::{DirOwner, PreStart, UnitSpec};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a proxy may take to answer /ready before the group fails.
pub const PROXY_READY_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The PATH tasks get: the agent's own (so `run -f` on a developer machine
/// finds the same tools), or a standard one.
pub fn task_path() -> String {
    std::env::var("PATH")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_PATH.to_string())
}

/// Hash of a value's Debug form, streamed into the hasher: the spec of
/// every desired unit is fingerprinted on every pass, so no string is built.
pub fn hash_debug(value: &impl std::fmt::Debug) -> u64 {
    use std::fmt::Write;
    use std::hash::Hasher;
    struct Feed<'a>(&'a mut std::collections::hash_map::DefaultHasher);
    impl Write for Feed<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0.write(s.as_bytes());
            Ok(())
        }
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let _ = write!(Feed(&mut h), "{value:?}");
    h.finish()
}

/// An Envoy's unit, a group's own or the robot-wide one.
pub struct ProxyUnit {
    pub name: String,
    pub label: String,
    pub argv: Vec<String>,
    /// Its config directory (the agent's, readable by `user`'s group).
    pub dir: PathBuf,
    pub alloc_dir: PathBuf,
    pub user: Option<String>,
    /// Its PATH (see [`task_path`]).
    pub path: String,
    /// Renders the config afresh and clears a stale admin socket before
    /// every (re)start; returns the argv to exec.
    pub pre_start: PreStart,
    /// What makes a new process (see each caller).
    pub revision: u64,
}

impl ProxyUnit {
    /// A daemon restarted 1 s after any exit, with nothing of a task's
    /// (no templates, artifacts, checks or limits).
    pub fn build(self) -> UnitSpec {
        UnitSpec {
            name: self.name,
            label: self.label,
            argv: self.argv,
            env: BTreeMap::from([("PATH".to_string(), self.path)]),
            dir: self.dir,
            alloc_dir: self.alloc_dir,
            user: self.user,
            dir_owner: DirOwner::Agent,
            alloc_users: Vec::new(),
            policy: Policy::Daemon {
                base_delay: Duration::from_secs(1),
            },
            timeout: None,
            kill_timeout: DEFAULT_KILL_TIMEOUT,
            templates: Vec::new(),
            artifacts: Vec::new(),
            checks: Vec::new(),
            limits: Limits::default(),
            pre_start: Some(self.pre_start),
            revision: self.revision,
        }
    }
}

/// A pre-start hook from a closure.
pub fn pre_start(f: impl Fn() -> Result<Vec<String>, String> + Send + Sync + 'static) -> PreStart {
    PreStart(Arc::new(f))
}
