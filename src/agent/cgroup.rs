//! Memory and CPU limits through cgroup v2, when the hierarchy is there and
//! writable. Each unit gets `<root>/<unit>/` with `memory.max` and `cpu.max`;
//! its process joins before exec (see `sys::ChildSetup`). Stopping a unit
//! also writes `cgroup.kill`, which reaches descendants that left the
//! process group. Without a writable cgroup v2 the agent logs one line at
//! start-up and runs tasks without these limits.

use rustix::fd::OwnedFd;
use std::io;
use std::path::{Path, PathBuf};

pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup/k8s4r";

#[derive(Debug)]
pub enum CgroupError {
    Unavailable(String),
    Setup(PathBuf, io::Error),
}

impl std::fmt::Display for CgroupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CgroupError::Unavailable(why) => f.write_str(why),
            CgroupError::Setup(p, e) => write!(f, "cgroup {}: {e}", p.display()),
        }
    }
}

impl std::error::Error for CgroupError {}

/// Limits for one unit, in cgroup units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpu_millis: Option<u64>,
}

/// The agent's cgroup subtree.
#[derive(Debug)]
pub struct Cgroups {
    root: PathBuf,
}

impl Cgroups {
    /// Use `root` (created if missing) when cgroup v2 is mounted above it
    /// and writable, enabling the memory and cpu controllers for children.
    pub fn detect(root: &Path) -> Result<Cgroups, CgroupError> {
        let parent = root.parent().unwrap_or(Path::new("/"));
        if !parent.join("cgroup.controllers").exists() {
            return Err(CgroupError::Unavailable(format!(
                "cgroup v2 is not mounted at {}: memory/cpu limits are not enforced",
                parent.display()
            )));
        }
        let setup = |p: &Path, e| {
            CgroupError::Unavailable(format!(
                "cgroup v2 at {} is not writable ({e}): memory/cpu limits are not enforced",
                p.display()
            ))
        };
        std::fs::create_dir_all(root).map_err(|e| setup(root, e))?;
        // Best effort: a controller the kernel lacks is simply not enabled.
        for dir in [parent, root] {
            for ctl in ["+memory", "+cpu"] {
                let _ = std::fs::write(dir.join("cgroup.subtree_control"), ctl);
            }
        }
        Ok(Cgroups {
            root: root.to_path_buf(),
        })
    }

    fn dir(&self, unit: &str) -> PathBuf {
        self.root.join(unit)
    }

    /// Create the unit's cgroup with its limits; returns `cgroup.procs`
    /// opened for the child to join.
    pub fn prepare(&self, unit: &str, limits: Limits) -> Result<OwnedFd, CgroupError> {
        let dir = self.dir(unit);
        let err = |e| CgroupError::Setup(dir.clone(), e);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err(e)),
        }
        let memory = limits.memory_bytes.map_or("max".to_string(), |b| b.to_string());
        std::fs::write(dir.join("memory.max"), memory).map_err(err)?;
        // cpu.max is "<quota> <period>": millicores * 100 us per 100 ms.
        let cpu = limits
            .cpu_millis
            .map_or("max 100000".to_string(), |m| format!("{} 100000", (m * 100).max(1000)));
        std::fs::write(dir.join("cpu.max"), cpu).map_err(err)?;
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .map_err(err)?;
        Ok(OwnedFd::from(procs))
    }

    /// Kill everything in the unit's cgroup (kernel 5.14+; older kernels
    /// rely on the process-group kill alone).
    pub fn kill(&self, unit: &str) {
        let _ = std::fs::write(self.dir(unit).join("cgroup.kill"), "1");
    }

    /// Remove the (empty) cgroup of a finished unit.
    pub fn remove(&self, unit: &str) {
        let _ = std::fs::remove_dir(self.dir(unit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_written_in_cgroup_units() {
        // A stand-in hierarchy: plain files where the kernel would have its own.
        let fake = tempfile::tempdir().unwrap();
        std::fs::write(fake.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        let cg = Cgroups::detect(&fake.path().join("k8s4r")).unwrap();
        let unit = fake.path().join("k8s4r/j-g-r0-t");
        std::fs::create_dir_all(&unit).unwrap();
        std::fs::write(unit.join("cgroup.procs"), "").unwrap();
        cg.prepare(
            "j-g-r0-t",
            Limits {
                memory_bytes: Some(128 << 20),
                cpu_millis: Some(250),
            },
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(unit.join("memory.max")).unwrap(), "134217728");
        // 250 millicores = 25 ms of CPU per 100 ms period.
        assert_eq!(std::fs::read_to_string(unit.join("cpu.max")).unwrap(), "25000 100000");
        cg.prepare("j-g-r0-t", Limits::default()).unwrap();
        assert_eq!(std::fs::read_to_string(unit.join("memory.max")).unwrap(), "max");
        assert_eq!(std::fs::read_to_string(unit.join("cpu.max")).unwrap(), "max 100000");
    }

    #[test]
    fn missing_hierarchy_is_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let err = Cgroups::detect(&dir.path().join("k8s4r")).unwrap_err().to_string();
        assert!(err.contains("not enforced"), "{err}");
    }
}
