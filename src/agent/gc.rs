//! Task directories of groups that left this robot are removed some time
//! after they were last needed (`--gc-after`, default 1 h), so a robot that
//! runs a new batch Job every minute does not fill its flash with old
//! `alloc/<job>-<group>/` trees, while a finished task's logs stay readable
//! (`k8s4r logs`) for a while.
//!
//! A directory is a candidate once its group is neither desired nor
//! draining and no supervised unit (task, proxy, daemon) lives in it; the
//! clock starts then (or when this agent first saw it, after a restart).

use crate::agent::clock;
use crate::agent::layout::Layout;
use crate::agent::supervisor::Units;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How often the alloc directory is listed at most.
const SCAN_EVERY: Duration = Duration::from_secs(30);

pub struct AllocGc {
    alloc: PathBuf,
    after: Duration,
    /// Candidates and when they became one.
    unused_since: BTreeMap<String, Instant>,
    next_scan: Option<Instant>,
    /// A sweep was skipped by the throttle: the next scan is due then.
    scan_owed: bool,
}

impl AllocGc {
    pub fn new(layout: &Layout, after: Duration) -> Self {
        AllocGc {
            alloc: layout.groups_dir(),
            after,
            unused_since: BTreeMap::new(),
            next_scan: None,
            scan_owed: false,
        }
    }

    /// One look (throttled): `in_use` says whether the reconciler still
    /// needs a group key. Returns the groups whose directories were removed.
    pub fn sweep(&mut self, in_use: impl Fn(&str) -> bool, sup: &impl Units, now: Instant) -> Vec<String> {
        let due = self.next_due().is_some_and(|d| d <= now);
        if !due && self.next_scan.is_some_and(|t| now < t) {
            // Something may have left since the last scan: look then.
            self.scan_owed = true;
            return Vec::new();
        }
        self.scan_owed = false;
        self.next_scan = Some(clock::after(now, SCAN_EVERY.min(self.after)));
        let Ok(entries) = std::fs::read_dir(&self.alloc) else {
            return Vec::new();
        };
        let lived_in: Vec<PathBuf> = sup
            .names()
            .into_iter()
            .filter_map(|n| Some(sup.view(n)?.dir.to_path_buf()))
            .collect();
        let mut present = BTreeSet::new();
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let Ok(key) = entry.file_name().into_string() else {
                continue;
            };
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let dir = entry.path();
            let busy = in_use(&key) || lived_in.iter().any(|d| d.starts_with(&dir));
            if busy {
                self.unused_since.remove(&key);
                continue;
            }
            present.insert(key.clone());
            let since = *self.unused_since.entry(key.clone()).or_insert(now);
            if now.duration_since(since) >= self.after {
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => {
                        present.remove(&key);
                        removed.push(key);
                    }
                    Err(e) => log::warn!("gc: removing {}: {e}", dir.display()),
                }
            }
        }
        self.unused_since.retain(|k, _| present.contains(k));
        removed
    }

    /// When the next sweep could remove something (so an idle agent wakes).
    pub fn next_due(&self) -> Option<Instant> {
        let removal = self
            .unused_since
            .values()
            .min()
            .map(|since| clock::after(*since, self.after));
        let scan = self.next_scan.filter(|_| self.scan_owed);
        removal.into_iter().chain(scan).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::supervisor::logs::LogLimits;
    use crate::agent::supervisor::{Supervisor, SupervisorConfig};

    #[test]
    fn a_departed_groups_directory_goes_after_the_delay_and_a_used_one_stays() {
        let data = tempfile::tempdir().unwrap();
        let (sup, _) = Supervisor::new(SupervisorConfig {
            data_dir: data.path().to_path_buf(),
            log_limits: LogLimits::default(),
            cgroup_root: None,
            allow_root_tasks: true,
            require_artifact_checksums: false,
        })
        .unwrap();
        for key in ["old-g", "kept-g"] {
            std::fs::create_dir_all(data.path().join("alloc").join(key).join("r0/t/logs")).unwrap();
        }
        let mut gc = AllocGc::new(&Layout::new(data.path()), Duration::from_secs(60));
        let in_use: BTreeSet<String> = ["kept-g".to_string()].into();
        let t0 = Instant::now();
        assert!(
            gc.sweep(|k| in_use.contains(k), &sup, t0).is_empty(),
            "the clock only starts now"
        );
        assert_eq!(gc.next_due(), Some(t0 + Duration::from_secs(60)));
        assert!(gc
            .sweep(|k| in_use.contains(k), &sup, t0 + Duration::from_secs(59))
            .is_empty());
        assert_eq!(
            gc.sweep(|k| in_use.contains(k), &sup, t0 + Duration::from_secs(61)),
            vec!["old-g".to_string()]
        );
        assert!(!data.path().join("alloc/old-g").exists());
        assert!(data.path().join("alloc/kept-g/r0/t/logs").exists());
        assert_eq!(gc.next_due(), None);

        // A group that leaves right after a scan is looked at when the
        // throttle allows, not at the next unrelated event.
        let t1 = t0 + Duration::from_secs(62);
        assert!(gc.sweep(|_| false, &sup, t1).is_empty(), "throttled");
        assert_eq!(gc.next_due(), Some(t0 + Duration::from_secs(61 + 30)));
    }
}
