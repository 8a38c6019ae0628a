//! Facts about processes and the machine read from /proc, used to recognise
//! a process the agent started before it restarted: the pid alone can be
//! recycled, pid + start time within one boot cannot.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Identity of one running process: pid plus its start time in clock ticks
/// since boot (field 22 of `/proc/<pid>/stat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcIdentity {
    pub pid: i32,
    pub start_time: u64,
}

/// The parts of `/proc/<pid>/stat` the agent needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub start_time: u64,
}

impl ProcStat {
    /// Zombies and dead tasks are gone as far as supervision is concerned.
    pub fn is_alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parse `/proc/<pid>/stat`. The command name (field 2) may contain spaces
/// and parentheses, so fields are counted after the *last* ')'.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // after ')' : state(3) ppid(4) pgrp(5) ... starttime(22) => index 19
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

pub fn read_stat(pid: i32) -> io::Result<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat: unexpected format"),
        )
    })
}

/// Is `id` still the same live process (not exited, not a recycled pid)?
pub fn is_same_live_process(id: ProcIdentity) -> bool {
    read_stat(id.pid).is_ok_and(|s| s.start_time == id.start_time && s.is_alive())
}

/// A live process-group leader, as the scan for unrecorded leftovers sees
/// it: who it is, its parent, and where it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    pub id: ProcIdentity,
    pub ppid: i32,
    /// Its working directory (`/proc/<pid>/cwd`), if readable.
    pub cwd: Option<PathBuf>,
    /// `K8S4R_TASK_DIR` from its environment (`/proc/<pid>/environ`), if
    /// set and readable.
    pub task_dir: Option<PathBuf>,
}

/// Every live process that leads its process group, except `except` (the
/// agent itself).
pub fn group_leaders(except: i32) -> Vec<Leader> {
    let pids = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok());
    let mut out = Vec::new();
    for pid in pids.filter(|p| *p != except) {
        let Ok(stat) = read_stat(pid) else { continue };
        if stat.pgrp != pid || !stat.is_alive() {
            continue;
        }
        let task_dir = std::fs::read(format!("/proc/{pid}/environ")).ok().and_then(|env| {
            let dir = env
                .split(|b| *b == 0)
                .find_map(|v| v.strip_prefix(b"K8S4R_TASK_DIR="))?;
            Some(PathBuf::from(std::ffi::OsStr::from_bytes(dir)))
        });
        out.push(Leader {
            id: ProcIdentity {
                pid,
                start_time: stat.start_time,
            },
            ppid: stat.ppid,
            cwd: std::fs::read_link(format!("/proc/{pid}/cwd")).ok(),
            task_dir,
        });
    }
    out
}

/// How long a process started `start_time` clock ticks after boot has been
/// running. /proc counts in USER_HZ, which is 100 on every Linux ABI.
pub fn age(start_time: u64) -> Option<std::time::Duration> {
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    let started = start_time as f64 / 100.0;
    // try_: a garbled /proc/uptime (inf) is no age, not a panic.
    std::time::Duration::try_from_secs_f64((secs - started).max(0.0)).ok()
}

/// This boot's random id; a saved pid from another boot means nothing.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "1234 (my (weird) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.pgrp, 1234);
        assert_eq!(s.start_time, 987654);
        assert!(s.is_alive());
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) Z 1").is_none());
    }

    #[test]
    fn own_process_is_recognised_and_a_wrong_start_time_is_not() {
        let pid = std::process::id() as i32;
        let stat = read_stat(pid).unwrap();
        assert!(is_same_live_process(ProcIdentity {
            pid,
            start_time: stat.start_time
        }));
        assert!(!is_same_live_process(ProcIdentity {
            pid,
            start_time: stat.start_time + 1
        }));
        assert!(!boot_id().is_empty());
        // This test process started moments ago (less than an hour, surely).
        assert!(age(stat.start_time).unwrap() < std::time::Duration::from_secs(3600));
    }

    #[test]
    fn a_group_leader_is_listed_with_its_directory_and_task_dir() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path().canonicalize().unwrap();
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .current_dir(&cwd)
            .env("K8S4R_TASK_DIR", "/data/alloc/j-g/r0/web")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // spawn may return while the kernel still sets up the new program's
        // stack (a vfork parent resumes early): its environment shows a
        // moment later.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let leaders = loop {
            let leaders = group_leaders(std::process::id() as i32);
            let seen = leaders.iter().any(|l| l.id.pid == pid && l.task_dir.is_some());
            if seen || std::time::Instant::now() > deadline {
                break leaders;
            }
            std::thread::yield_now();
        };
        let _ = child.kill();
        let _ = child.wait();
        let leader = leaders
            .iter()
            .find(|l| l.id.pid == pid)
            .expect("the child leads its group");
        assert_eq!(leader.ppid, std::process::id() as i32);
        assert_eq!(leader.cwd.as_deref(), Some(cwd.as_path()));
        assert_eq!(leader.task_dir, Some(PathBuf::from("/data/alloc/j-g/r0/web")));
        assert!(leaders.iter().all(|l| l.id.pid != std::process::id() as i32));
    }
}
