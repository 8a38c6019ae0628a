//! s6 (Debian package `s6`): one `s6-svscan` on a scan directory, which
//! starts one `s6-supervise` per service directory.
//!
//! Every service has a `down` file so nothing starts before it is asked.
//! A request is one byte written to the service's `supervise/control` FIFO
//! (`u` = up, `o` = once: up, no restart when it exits), exactly what
//! `s6-svc -u` / `s6-svc -o` write, without the client's own process start
//! (≈1 ms) counted against s6. Service output is not captured (no logger
//! services): s6's default.
//!
//! A run is over for s6-supervise only after it has also tried to run
//! `./finish` (it forks for it even when there is none); a command that
//! arrives before that is taken as "don't restart" and dropped. So the
//! cycles wait with `s6-svwait -D` (down and finished) before the next `o`.
//!
//! Restarts: s6-supervise restarts a dead service at once, but never
//! sooner than 1 s after its previous start (built in, not configurable in
//! 2.11); the benchmark kills sleepers that have run longer than that.

use super::{Group, Supervision, Workload};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct S6 {
    scan: PathBuf,
    sleepers: usize,
    svscan: Group,
}

fn service(scan: &Path, name: &str, script: &str) {
    let dir = scan.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let run = dir.join("run");
    std::fs::write(&run, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("down"), "").unwrap();
}

/// Write one command byte to a running s6-supervise. Non-blocking open:
/// ENXIO until s6-supervise has the FIFO open for reading.
fn control(scan: &Path, name: &str, cmd: &[u8]) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(scan.join(name).join("supervise/control"))?
        .write_all(cmd)
}

impl S6 {
    pub fn start(dir: &Path, w: &Workload) -> S6 {
        let scan = dir.join("scan");
        for k in 0..w.sleepers {
            service(&scan, &format!("sleep{k}"), &w.sleeper_script(k));
        }
        service(&scan, "short", &w.short_script());
        let svscan = Group::spawn(
            // Its default limit is 500 services (the large robot has more).
            Command::new("s6-svscan")
                .args(["-c", &(w.sleepers + 16).to_string()])
                .arg(&scan)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let s6 = S6 {
            scan,
            sleepers: w.sleepers,
            svscan,
        };
        let names: Vec<String> = (0..w.sleepers)
            .map(|k| format!("sleep{k}"))
            .chain(["short".into()])
            .collect();
        let wait = Duration::from_secs(30) + Duration::from_millis(30) * w.sleepers as u32;
        super::wait_until("every s6-supervise listening", wait, || {
            names.iter().all(|n| control(&s6.scan, n, b"").is_ok())
        });
        s6
    }
}

impl Supervision for S6 {
    fn name(&self) -> &'static str {
        "s6"
    }

    fn describe(&self) -> serde_json::Value {
        let version = Command::new("dpkg-query")
            .args(["-W", "-f", "${Version}", "s6"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        serde_json::json!({
            "version": version,
            "tree": "s6-svscan + one s6-supervise per service",
            "driver": "one byte to supervise/control per service (what s6-svc -u / -o write)",
            "restart": "immediate, but at most one start per second per service (built in)",
            "output": "not captured (no logger services, s6's default)",
        })
    }

    fn tree(&self) -> Vec<u32> {
        let root = self.svscan.pid();
        std::iter::once(root).chain(super::procstat::children(root)).collect()
    }

    fn start_sleepers(&mut self) -> Instant {
        let t0 = Instant::now();
        for k in 0..self.sleepers {
            control(&self.scan, &format!("sleep{k}"), b"u").expect("s6 control");
        }
        t0
    }

    fn start_short(&mut self, _cycle: usize) -> Instant {
        let t0 = Instant::now();
        control(&self.scan, "short", b"o").expect("s6 control");
        t0
    }

    fn wait_stopped(&mut self, pid: u32) {
        super::wait_reaped(pid, Duration::from_secs(30));
        let status = Command::new("s6-svwait")
            .args(["-D", "-t", "30000"])
            .arg(self.scan.join("short"))
            .status()
            .expect("s6-svwait");
        assert!(status.success(), "s6-svwait -D: {status}");
    }
}
