//! The data directory's layout and the units' names: the one place that
//! knows where a unit lives and what it is called.
//!
//! ```text
//! <data dir>/
//!   state.json state.log             the supervisor's state: snapshot and journal (`supervisor::state`)
//!   agent.lock agent.pid             one agent per data dir
//!   alloc/<key>/                     a task group on this robot, key `<job>-<group>`
//!     alloc/                         shared by the group's units: K8S4R_ALLOC_DIR
//!     init/<init>/                   unit `<key>-<init>` (init tasks, group daemons)
//!     r<i>/<task>/                   unit `<key>-r<i>-<task>` (a task replica)
//!     envoy/ envoy-launch.json       unit `<key>-envoy` (the group's own proxy)
//!   robot/<name>/                    unit `robot-<name>` (robot-scoped daemons;
//!                                    `robot/envoy/` is the robot-wide proxy)
//! ```
//!
//! A unit's directory is its process's cwd, with `local/` and `logs/`.
//! Names are built from their parts here and never parsed apart (`-` occurs
//! inside the parts); going back from the disk reads the directory tree
//! ([`Layout::unit_dirs`]). Every part must be one plain path component
//! ([`UnitId::check`]), so no unit can live outside the data directory.
//!
//! A task's unit is named after its Task object (`api::job_expansion`:
//! `<job>-<group>-r<i>-<task>`, or `<job>-<group>-<task>.<robot>` for a
//! system Job); [`UnitId::name`] gives the first form, which is what the
//! directory tree tells of a task whose Task object is gone.

use std::path::{Component, Path, PathBuf};

/// The robot-scoped name of the robot-wide Envoy (`--proxy-mode shared`):
/// unit `robot-envoy` in `robot/envoy/`.
pub const ROBOT_PROXY: &str = "envoy";

/// One unit, by what it is for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum UnitId {
    /// A replica of a task of group `group` (the group's key).
    Task { group: String, replica: u32, task: String },
    /// An init task or group daemon of group `group`.
    Init { group: String, task: String },
    /// The group's own Envoy (`--proxy-mode per-group`).
    Proxy { group: String },
    /// A robot-scoped daemon, shared by every group that declares it, or
    /// the robot-wide Envoy ([`ROBOT_PROXY`]).
    Robot { name: String },
}

impl UnitId {
    pub fn robot_proxy() -> UnitId {
        UnitId::Robot {
            name: ROBOT_PROXY.to_string(),
        }
    }

    /// The unit's name in the supervisor, the state file and `logs`.
    pub fn name(&self) -> String {
        match self {
            UnitId::Task { group, replica, task } => format!("{group}-r{replica}-{task}"),
            UnitId::Init { group, task } => format!("{group}-{task}"),
            UnitId::Proxy { group } => format!("{group}-envoy"),
            UnitId::Robot { name } => format!("robot-{name}"),
        }
    }

    /// The group it belongs to (none for robot-scoped units).
    pub fn group(&self) -> Option<&str> {
        match self {
            UnitId::Task { group, .. } | UnitId::Init { group, .. } | UnitId::Proxy { group } => Some(group),
            UnitId::Robot { .. } => None,
        }
    }

    /// Every part must be one plain path component: not empty, not `.` or
    /// `..`, no `/` and no NUL. The control plane only sends DNS names;
    /// this keeps a unit inside the data directory whatever arrives.
    pub fn check(&self) -> Result<(), String> {
        let parts: &[(&str, &str)] = match self {
            UnitId::Task { group, task, .. } => &[("task group", group), ("task", task)],
            UnitId::Init { group, task } => &[("task group", group), ("init task", task)],
            UnitId::Proxy { group } => &[("task group", group)],
            UnitId::Robot { name } => &[("robot-scoped daemon", name)],
        };
        for (what, part) in parts {
            check_component(part).map_err(|why| format!("{what} name {part:?} {why}"))?;
        }
        Ok(())
    }
}

/// Is `part` a single normal path component?
fn check_component(part: &str) -> Result<(), &'static str> {
    if part.is_empty() {
        return Err("is empty");
    }
    if part.contains('\0') {
        return Err("contains NUL");
    }
    let mut components = Path::new(part).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(c)), None) if c == part => Ok(()),
        _ => Err("is not a plain directory name"),
    }
}

/// The data directory, and where each unit lives in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(data_dir: impl Into<PathBuf>) -> Layout {
        Layout { root: data_dir.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Held (flock) by the agent that owns the directory.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("agent.lock")
    }

    /// The owning agent's pid, for `stop-all`.
    pub fn pid_file(&self) -> PathBuf {
        self.root.join("agent.pid")
    }

    /// Where every group's directory is (the directory gc sweeps it).
    pub fn groups_dir(&self) -> PathBuf {
        self.root.join("alloc")
    }

    /// Group `key`'s directory.
    pub fn group_dir(&self, key: &str) -> PathBuf {
        self.groups_dir().join(key)
    }

    /// How group `key`'s own Envoy was launched, kept next to its config
    /// so the next agent re-adopts it as it is.
    pub fn proxy_launch_file(&self, key: &str) -> PathBuf {
        self.group_dir(key).join("envoy-launch.json")
    }

    /// A unit's directory: its cwd, `local/`, `logs/` (a proxy's config).
    pub fn dir(&self, unit: &UnitId) -> PathBuf {
        match unit {
            UnitId::Task { group, replica, task } => self.group_dir(group).join(format!("r{replica}")).join(task),
            UnitId::Init { group, task } => self.group_dir(group).join("init").join(task),
            UnitId::Proxy { group } => self.group_dir(group).join("envoy"),
            UnitId::Robot { name } => self.root.join("robot").join(name),
        }
    }

    /// The directory a unit shares (K8S4R_ALLOC_DIR): its group's, or a
    /// robot-scoped unit's own.
    pub fn alloc_dir(&self, unit: &UnitId) -> PathBuf {
        match unit.group() {
            Some(group) => self.group_dir(group).join("alloc"),
            None => self.dir(unit),
        }
    }

    /// Every unit directory on disk, so logs stay readable (and leftover
    /// processes can be placed) after the agent has forgotten the units.
    pub fn unit_dirs(&self) -> Vec<(UnitId, PathBuf)> {
        let mut out = Vec::new();
        for (group, group_dir) in subdirs(&self.groups_dir()) {
            for (sub, sub_dir) in subdirs(&group_dir) {
                if sub == "init" {
                    out.extend(subdirs(&sub_dir).into_iter().map(|(task, d)| {
                        let group = group.clone();
                        (UnitId::Init { group, task }, d)
                    }));
                } else if sub == "envoy" {
                    out.push((UnitId::Proxy { group: group.clone() }, sub_dir));
                } else if let Some(replica) = sub.strip_prefix('r').and_then(|n| n.parse::<u32>().ok()) {
                    out.extend(subdirs(&sub_dir).into_iter().map(|(task, d)| {
                        let group = group.clone();
                        (UnitId::Task { group, replica, task }, d)
                    }));
                }
            }
        }
        out.extend(
            subdirs(&self.root.join("robot"))
                .into_iter()
                .map(|(name, d)| (UnitId::Robot { name }, d)),
        );
        out
    }

    /// A unit's directory by unit name or, if unambiguous, task name.
    pub fn find_unit_dir(&self, task: &str) -> Result<PathBuf, String> {
        let units: Vec<(String, PathBuf)> = self.unit_dirs().into_iter().map(|(u, d)| (u.name(), d)).collect();
        if let Some((_, d)) = units.iter().find(|(n, _)| n == task) {
            return Ok(d.clone());
        }
        let suffix = format!("-{task}");
        let matches: Vec<&(String, PathBuf)> = units.iter().filter(|(n, _)| n.ends_with(&suffix)).collect();
        match matches.as_slice() {
            [(_, d)] => Ok(d.clone()),
            [] => Err(format!("no task {task:?} in {}", self.root.display())),
            many => Err(format!(
                "{task:?} is ambiguous: {}",
                many.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
            )),
        }
    }
}

/// The subdirectories of `dir` with UTF-8 names (no other name is a unit's).
fn subdirs(dir: &Path) -> Vec<(String, PathBuf)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            e.file_type().ok()?.is_dir().then(|| (name, e.path()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<UnitId> {
        vec![
            UnitId::Task {
                group: "web-api".into(),
                replica: 2,
                task: "server".into(),
            },
            UnitId::Init {
                group: "web-api".into(),
                task: "migrate".into(),
            },
            UnitId::Proxy {
                group: "web-api".into(),
            },
            UnitId::Robot {
                name: "spire-agent".into(),
            },
            UnitId::robot_proxy(),
        ]
    }

    #[test]
    fn names_and_directories_of_every_kind_of_unit() {
        let l = Layout::new("/d");
        let got: Vec<(String, PathBuf, PathBuf)> = every_kind()
            .iter()
            .map(|u| (u.name(), l.dir(u), l.alloc_dir(u)))
            .collect();
        let want = [
            (
                "web-api-r2-server",
                "/d/alloc/web-api/r2/server",
                "/d/alloc/web-api/alloc",
            ),
            (
                "web-api-migrate",
                "/d/alloc/web-api/init/migrate",
                "/d/alloc/web-api/alloc",
            ),
            ("web-api-envoy", "/d/alloc/web-api/envoy", "/d/alloc/web-api/alloc"),
            ("robot-spire-agent", "/d/robot/spire-agent", "/d/robot/spire-agent"),
            ("robot-envoy", "/d/robot/envoy", "/d/robot/envoy"),
        ];
        let want: Vec<(String, PathBuf, PathBuf)> = want
            .iter()
            .map(|(n, d, a)| (n.to_string(), PathBuf::from(d), PathBuf::from(a)))
            .collect();
        assert_eq!(got, want);
        assert_eq!(
            l.proxy_launch_file("web-api"),
            Path::new("/d/alloc/web-api/envoy-launch.json")
        );
    }

    #[test]
    fn the_directory_tree_gives_back_every_unit_and_its_name() {
        let data = tempfile::tempdir().unwrap();
        let l = Layout::new(data.path());
        let mut units = every_kind();
        for u in &units {
            std::fs::create_dir_all(l.dir(u).join("logs")).unwrap();
        }
        // What is not a unit's directory is not read as one.
        std::fs::create_dir_all(l.group_dir("web-api").join("alloc/r0/x")).unwrap();
        std::fs::create_dir_all(l.group_dir("web-api").join("rx/y")).unwrap();
        std::fs::write(l.group_dir("web-api").join("r3"), b"a file").unwrap();
        let mut found = l.unit_dirs();
        found.sort();
        units.sort();
        let dirs: Vec<(UnitId, PathBuf)> = units.iter().map(|u| (u.clone(), l.dir(u))).collect();
        assert_eq!(found, dirs);

        assert_eq!(l.find_unit_dir("web-api-migrate").unwrap(), l.dir(&units[1]));
        assert_eq!(
            l.find_unit_dir("spire-agent").unwrap(),
            l.dir(&units[4]),
            "by task name"
        );
        let err = l.find_unit_dir("envoy").unwrap_err();
        assert!(err.contains("ambiguous") && err.contains("robot-envoy"), "{err}");
        assert!(l.find_unit_dir("nope").unwrap_err().contains("no task"));
    }

    #[test]
    fn parts_that_are_not_one_plain_directory_name_are_refused() {
        for bad in ["", ".", "..", "a/b", "/abs", "a\0b", "x/.."] {
            let units = [
                UnitId::Task {
                    group: "g".into(),
                    replica: 0,
                    task: bad.into(),
                },
                UnitId::Init {
                    group: bad.into(),
                    task: "t".into(),
                },
                UnitId::Proxy { group: bad.into() },
                UnitId::Robot { name: bad.into() },
            ];
            for u in units {
                let err = u.check().unwrap_err();
                assert!(err.contains(&format!("{bad:?}")), "{err}");
            }
        }
        for u in every_kind() {
            assert_eq!(u.check(), Ok(()), "{u:?}");
        }
        let dotted = UnitId::Init {
            group: "job.v2-g".into(),
            task: "a..b".into(),
        };
        assert_eq!(dotted.check(), Ok(()), "dots inside a name are fine");
    }
}
