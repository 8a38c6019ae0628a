//! What /proc says about a set of processes: memory and CPU time.

use std::path::Path;

/// Memory of a set of processes, summed, in KiB.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Memory {
    /// VmRSS: counts pages shared between the processes (and with every
    /// other user of libc) once per process.
    pub rss_kib: u64,
    /// Proportional set size: each shared page divided among its users, so
    /// the sum is the tree's fair share of RAM.
    pub pss_kib: u64,
    /// Private pages only (Private_Clean + Private_Dirty): what freeing
    /// the tree would give back at least.
    pub uss_kib: u64,
    pub processes: usize,
}

fn field(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

pub fn memory(pids: &[u32]) -> Memory {
    let mut m = Memory::default();
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        m.rss_kib += field(&status, "VmRSS:");
        m.pss_kib += field(&rollup, "Pss:");
        m.uss_kib += field(&rollup, "Private_Clean:") + field(&rollup, "Private_Dirty:");
        m.processes += 1;
    }
    m
}

/// Private anonymous memory (heap, stacks) of one process, KiB: where a
/// leak shows first.
pub fn anonymous_kib(pid: u32) -> u64 {
    field(
        &std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default(),
        "Anonymous:",
    )
}

/// CPU time of the processes, in nanoseconds, summed over their threads:
/// the first field of /proc/PID/task/TID/schedstat is the scheduler's exact
/// run time. utime + stime from /proc/PID/stat come in 10 ms ticks, too
/// coarse for 100 small processes that each run for microseconds.
pub fn cpu_ns(pids: &[u32]) -> u64 {
    pids.iter()
        .flat_map(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter_map(|t| {
            std::fs::read_to_string(t.path().join("schedstat"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Direct children of `parent`.
pub fn children(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            k8s4r::agent::supervisor::procfs::read_stat(*pid as i32)
                .is_ok_and(|s| s.ppid == parent as i32 && s.is_alive())
        })
        .collect()
}

/// Open file descriptors of one process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(Path::new("/proc").join(pid.to_string()).join("fd")).map_or(0, |d| d.count())
}

/// Threads of one process.
pub fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}
