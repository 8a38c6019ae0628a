//! Helpers of the side-by-side supervision benchmark (tests/supervision_bench.rs):
//! the workload every system runs, how a run is observed (the supervised
//! commands report themselves through a FIFO), what /proc says about the
//! supervisors, and one module per system under test.
#![allow(dead_code)]

pub mod agent;
pub mod fake_control_plane;
pub mod procstat;
pub mod s6;
pub mod supervisord;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The same commands for every system. Each one says "I run, as pid P" by
/// writing one line to the FIFO *itself*, so a start is measured by what
/// the process did, never by the supervisor's own claim. `$$` is the shell's
/// pid, which `exec sleep` keeps.
#[derive(Clone, Debug)]
pub struct Workload {
    pub fifo: PathBuf,
    pub sleepers: usize,
}

impl Workload {
    /// Sleeper `k`: report, then sleep for the rest of the run.
    pub fn sleeper_script(&self, k: usize) -> String {
        format!("echo s{k} $$ > {}; exec sleep 3600", self.fifo.display())
    }

    /// The short command of the start/stop cycles: report and exit 0.
    pub fn short_script(&self) -> String {
        format!("echo c $$ > {}", self.fifo.display())
    }
}

/// A system under test, driven through its own control interface.
pub trait Supervision {
    fn name(&self) -> &'static str;
    /// What drives it and how it is configured, for the report.
    fn describe(&self) -> serde_json::Value;
    /// The supervision tree: the supervisor processes, never the commands
    /// they run.
    fn tree(&self) -> Vec<u32>;
    /// Ask for every sleeper to run (one request where the system has one);
    /// returns when the request went out.
    fn start_sleepers(&mut self) -> Instant;
    /// Ask for the short command to run once more (the previous run has
    /// exited and been reaped); returns when the request went out.
    fn start_short(&mut self, cycle: usize) -> Instant;
    /// Wait until the short command (`pid`) has stopped as far as the
    /// system is concerned, so that the next start is accepted: by default
    /// when the supervisor has reaped it.
    fn wait_stopped(&mut self, pid: u32) {
        wait_reaped(pid, Duration::from_secs(30));
    }
}

/// One line from a supervised command.
#[derive(Clone, Debug)]
pub struct Event {
    pub tag: String,
    pub pid: u32,
    pub at: Instant,
}

/// Reads the FIFO on a thread and timestamps every line as it arrives.
/// Remembers every pid it saw so that Drop can end them whatever the
/// supervisor did (only if still the same process: pid + start time).
pub struct Events {
    fifo: PathBuf,
    rx: Receiver<Event>,
    seen: Vec<k8s4r::agent::supervisor::procfs::ProcIdentity>,
}

impl Events {
    pub fn open(fifo: &Path) -> Events {
        let status = std::process::Command::new("mkfifo").arg(fifo).status().expect("mkfifo");
        assert!(status.success(), "mkfifo {}", fifo.display());
        // Read-write: the open does not wait for a writer, and the reader
        // never sees end-of-file between two writers.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(fifo)
            .expect("open the FIFO");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(file).lines() {
                let at = Instant::now();
                let Ok(line) = line else { return };
                let mut parts = line.split_whitespace();
                let (Some(tag), Some(pid)) = (parts.next(), parts.next().and_then(|p| p.parse().ok())) else {
                    continue;
                };
                if tag == "quit"
                    || tx
                        .send(Event {
                            tag: tag.into(),
                            pid,
                            at,
                        })
                        .is_err()
                {
                    return;
                }
            }
        });
        Events {
            fifo: fifo.to_path_buf(),
            rx,
            seen: Vec::new(),
        }
    }

    /// The next line, or a panic naming what did not happen.
    pub fn next(&mut self, what: &str, timeout: Duration) -> Event {
        match self.rx.recv_timeout(timeout) {
            Ok(e) => {
                if let Ok(stat) = k8s4r::agent::supervisor::procfs::read_stat(e.pid as i32) {
                    self.seen.push(k8s4r::agent::supervisor::procfs::ProcIdentity {
                        pid: e.pid as i32,
                        start_time: stat.start_time,
                    });
                }
                e
            }
            Err(RecvTimeoutError::Timeout) => panic!("no report from {what} within {timeout:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("the FIFO reader stopped"),
        }
    }

    /// Nothing else reported in `quiet` (catches a supervisor starting a
    /// command twice).
    pub fn expect_silence(&mut self, quiet: Duration) {
        if let Ok(e) = self.rx.recv_timeout(quiet) {
            panic!("unexpected report {e:?}");
        }
    }

    /// Kill -9 every reporting process that is still the one that reported.
    pub fn kill_reported(&self) {
        use rustix::process::{kill_process, Pid, Signal};
        for id in &self.seen {
            if k8s4r::agent::supervisor::procfs::is_same_live_process(*id) {
                if let Some(pid) = Pid::from_raw(id.pid) {
                    let _ = kill_process(pid, Signal::KILL);
                }
            }
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.kill_reported();
        // End the reader thread.
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&self.fifo) {
            let _ = f.write_all(b"quit 0\n");
        }
    }
}

/// Wait until `pid` is gone from /proc, i.e. its parent has reaped it (a
/// zombie still has its /proc entry). Polls: nothing else tells a
/// non-parent when a process is reaped.
pub fn wait_reaped(pid: u32, timeout: Duration) {
    let path = format!("/proc/{pid}");
    let deadline = Instant::now() + timeout;
    while Path::new(&path).exists() {
        assert!(Instant::now() < deadline, "pid {pid} not reaped within {timeout:?}");
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// A process group started for the benchmark: TERM, a grace period, then
/// KILL on drop.
pub struct Group {
    pub child: std::process::Child,
}

impl Group {
    pub fn spawn(cmd: &mut std::process::Command) -> Group {
        use std::os::unix::process::CommandExt;
        let child = cmd
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        Group { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        use rustix::process::{kill_process_group, Pid, Signal};
        let Some(pgid) = Pid::from_raw(self.child.id() as i32) else {
            return;
        };
        let _ = kill_process_group(pgid, Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = kill_process_group(pgid, Signal::KILL);
        let _ = self.child.wait();
    }
}

/// Poll `cond` until true or panic after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
