//! Memory, CPU and process-count limits through cgroups, when a hierarchy
//! is there and writable. Each unit gets `<root>/<unit>/` with `memory.max`,
//! `cpu.max` and `pids.max` (a fork bomb stays inside it); its process joins
//! before exec (see `sys::ChildSetup`), and so do its script checks.
//! Stopping a unit also writes `cgroup.kill`, which reaches descendants that
//! left the process group.
//!
//! Robots often boot cgroup v1 or a hybrid layout (older L4T/Jetson and
//! Raspberry Pi kernels) where the unified hierarchy has no controllers.
//! There the process cap still holds through the v1 `pids` hierarchy
//! (`<parent>/pids/<root name>/<unit>/`, same `pids.max` and `cgroup.procs`
//! files); memory and CPU limits need v2 and are reported as not enforced.
//! Without any writable hierarchy the agent logs one line at start-up and
//! runs tasks without these limits.

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
    /// Processes and threads in the unit's cgroup (None: no limit).
    pub pids_max: Option<u64>,
}

/// The agent's cgroup subtrees: the unified (v2) one, or, on a v1/hybrid
/// system, the v1 `pids` one.
#[derive(Debug)]
pub struct Cgroups {
    root: PathBuf,
    version: Version,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    /// memory.max, cpu.max, pids.max, cgroup.kill.
    V2,
    /// The v1 pids controller only: pids.max.
    V1Pids,
}

impl Cgroups {
    /// Use `root` (created if missing) when cgroup v2 is mounted above it
    /// and writable, enabling the memory, cpu and pids controllers for
    /// children; else the v1 pids hierarchy beside it. The notice says what
    /// is not enforced.
    pub fn detect(root: &Path) -> Result<(Cgroups, Option<String>), CgroupError> {
        let parent = root.parent().unwrap_or(Path::new("/"));
        let v2_error = if parent.join("cgroup.controllers").exists() {
            match std::fs::create_dir_all(root) {
                Ok(()) => {
                    // Best effort: a controller the kernel lacks is simply not enabled.
                    for dir in [parent, root] {
                        for ctl in ["+memory", "+cpu", "+pids"] {
                            let _ = std::fs::write(dir.join("cgroup.subtree_control"), ctl);
                        }
                    }
                    let cg = Cgroups {
                        root: root.to_path_buf(),
                        version: Version::V2,
                    };
                    return Ok((cg, None));
                }
                Err(e) => format!("cgroup v2 at {} is not writable ({e})", root.display()),
            }
        } else {
            format!("cgroup v2 is not mounted at {}", parent.display())
        };
        let name = root.file_name().unwrap_or(std::ffi::OsStr::new("k8s4r"));
        let v1 = parent.join("pids").join(name);
        let v1_usable = parent.join("pids/pids.max").exists() || parent.join("pids/cgroup.procs").exists();
        if v1_usable && std::fs::create_dir_all(&v1).is_ok() {
            let notice = format!(
                "{v2_error}: memory/cpu limits are not enforced; process counts (pids.max) are, through cgroup v1 at {}",
                v1.display()
            );
            let cg = Cgroups {
                root: v1,
                version: Version::V1Pids,
            };
            return Ok((cg, Some(notice)));
        }
        Err(CgroupError::Unavailable(format!(
            "{v2_error}: memory/cpu/pids limits are not enforced"
        )))
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
        if self.version == Version::V2 {
            let memory = limits.memory_bytes.map_or("max".to_string(), |b| b.to_string());
            std::fs::write(dir.join("memory.max"), memory).map_err(err)?;
            // cpu.max is "<quota> <period>": millicores * 100 us per 100 ms.
            let cpu = limits.cpu_millis.map_or("max 100000".to_string(), |m| {
                format!("{} 100000", m.saturating_mul(100).max(1000))
            });
            std::fs::write(dir.join("cpu.max"), cpu).map_err(err)?;
        }
        // Without the pids controller (an old kernel, or a parent that does
        // not delegate it) there is no pids.max: no process cap.
        let pids_max = dir.join("pids.max");
        if pids_max.exists() {
            let pids = limits.pids_max.map_or("max".to_string(), |n| n.to_string());
            std::fs::write(pids_max, pids).map_err(err)?;
        }
        self.join_existing(unit)
    }

    /// `cgroup.procs` of a unit's existing cgroup, for a process that must
    /// count against the unit's limits (its script checks).
    pub fn join_existing(&self, unit: &str) -> Result<OwnedFd, CgroupError> {
        let path = self.dir(unit).join("cgroup.procs");
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| CgroupError::Setup(path.clone(), e))?;
        Ok(OwnedFd::from(procs))
    }

    /// Kill everything in the unit's cgroup: `cgroup.kill` on v2 (kernel
    /// 5.14+); on v1, SIGKILL to every listed process until none is left
    /// (bounded: a fork bomb is capped by pids.max, and killed processes
    /// cannot fork).
    pub fn kill(&self, unit: &str) {
        let dir = self.dir(unit);
        if self.version == Version::V2 && std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        // A process forked while the list was read shows up in the next
        // read; stop once a read brings none not signalled already (killed
        // processes stay listed until reaped).
        let mut signalled = std::collections::HashSet::new();
        for _ in 0..100 {
            let fresh: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .filter(|pid| signalled.insert(*pid))
                .collect();
            if fresh.is_empty() {
                return;
            }
            for pid in fresh.into_iter().filter_map(rustix::process::Pid::from_raw) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
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
        let (cg, notice) = Cgroups::detect(&fake.path().join("k8s4r")).unwrap();
        assert_eq!(notice, None);
        let unit = fake.path().join("k8s4r/j-g-r0-t");
        std::fs::create_dir_all(&unit).unwrap();
        std::fs::write(unit.join("cgroup.procs"), "").unwrap();
        std::fs::write(unit.join("pids.max"), "max").unwrap();
        cg.prepare(
            "j-g-r0-t",
            Limits {
                memory_bytes: Some(128 << 20),
                cpu_millis: Some(250),
                pids_max: Some(64),
            },
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(unit.join("memory.max")).unwrap(), "134217728");
        // 250 millicores = 25 ms of CPU per 100 ms period.
        assert_eq!(std::fs::read_to_string(unit.join("cpu.max")).unwrap(), "25000 100000");
        assert_eq!(std::fs::read_to_string(unit.join("pids.max")).unwrap(), "64");
        cg.prepare("j-g-r0-t", Limits::default()).unwrap();
        assert_eq!(std::fs::read_to_string(unit.join("memory.max")).unwrap(), "max");
        assert_eq!(std::fs::read_to_string(unit.join("cpu.max")).unwrap(), "max 100000");
        assert_eq!(std::fs::read_to_string(unit.join("pids.max")).unwrap(), "max");
    }

    #[test]
    fn missing_hierarchy_is_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let err = Cgroups::detect(&dir.path().join("k8s4r")).unwrap_err().to_string();
        assert!(err.contains("not enforced"), "{err}");
    }

    #[test]
    fn a_v1_pids_hierarchy_still_caps_processes() {
        // A hybrid layout: no v2 controllers above the root, a v1 pids tree beside it.
        let fake = tempfile::tempdir().unwrap();
        std::fs::create_dir(fake.path().join("pids")).unwrap();
        std::fs::write(fake.path().join("pids/cgroup.procs"), "").unwrap();
        let (cg, notice) = Cgroups::detect(&fake.path().join("k8s4r")).unwrap();
        let notice = notice.unwrap();
        assert!(notice.contains("memory/cpu limits are not enforced"), "{notice}");
        let unit = fake.path().join("pids/k8s4r/u");
        std::fs::create_dir_all(&unit).unwrap();
        std::fs::write(unit.join("cgroup.procs"), "").unwrap();
        std::fs::write(unit.join("pids.max"), "max").unwrap();
        cg.prepare(
            "u",
            Limits {
                memory_bytes: Some(1 << 20),
                cpu_millis: None,
                pids_max: Some(32),
            },
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(unit.join("pids.max")).unwrap(), "32");
        assert!(!unit.join("memory.max").exists());
    }
}
