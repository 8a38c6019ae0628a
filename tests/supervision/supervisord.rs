//! supervisord (Debian package `supervisor`, Python): one process,
//! `supervisord -n -c FILE`, with one `[program:x]` per command.
//!
//! Driven through its XML-RPC interface over its unix socket — what
//! `supervisorctl` itself uses — called from this test directly, so
//! supervisorctl's own Python start-up (≈100 ms per command) is not counted
//! against supervisord. `supervisor.startProcessGroup("sleepers", false)`
//! starts the sleepers in one request; `supervisor.startProcess("short",
//! false)` starts the short command.
//!
//! Configuration: sleepers `autorestart=true` (restarted at once after an
//! unexpected exit, supervisord's default for a process that was RUNNING);
//! the short command `startsecs=0` (a command that exits at once is not a
//! failed start) and `autorestart=false`. Output is captured to per-program
//! log files (`AUTO`, the default).

use super::{Group, Supervision, Workload};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Supervisord {
    socket: PathBuf,
    daemon: Group,
}

/// Quote for supervisord's shell-like `command=` parser (Python shlex).
fn shlex_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r#"'"'"'"#))
}

fn config(dir: &Path, w: &Workload, socket: &Path) -> String {
    let mut c = format!(
        "[unix_http_server]\nfile={sock}\n\n\
         [supervisord]\nnodaemon=true\nlogfile={dir}/supervisord.log\npidfile={dir}/supervisord.pid\n\
         childlogdir={dir}/logs\n\n\
         [rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n",
        sock = socket.display(),
        dir = dir.display()
    );
    let mut names = Vec::new();
    for k in 0..w.sleepers {
        names.push(format!("sleep{k}"));
        c.push_str(&format!(
            "[program:sleep{k}]\ncommand=/bin/sh -c {}\nautostart=false\nautorestart=true\n\n",
            shlex_quote(&w.sleeper_script(k))
        ));
    }
    c.push_str(&format!("[group:sleepers]\nprograms={}\n\n", names.join(",")));
    c.push_str(&format!(
        "[program:short]\ncommand=/bin/sh -c {}\nautostart=false\nautorestart=false\nstartsecs=0\n",
        shlex_quote(&w.short_script())
    ));
    c
}

/// One XML-RPC call; panics on a transport error or a fault.
fn call(socket: &Path, method: &str, params: &[&str]) -> std::io::Result<String> {
    let params: String = params
        .iter()
        .map(|p| format!("<param><value>{p}</value></param>"))
        .collect();
    let body = format!(
        "<?xml version=\"1.0\"?><methodCall><methodName>{method}</methodName><params>{params}</params></methodCall>"
    );
    let mut s = UnixStream::connect(socket)?;
    write!(
        s,
        "POST /RPC2 HTTP/1.0\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    if !reply.starts_with("HTTP/1.0 200") && !reply.starts_with("HTTP/1.1 200") || reply.contains("<fault>") {
        return Err(std::io::Error::other(format!("{method}: {reply}")));
    }
    Ok(reply)
}

impl Supervisord {
    pub fn start(dir: &Path, w: &Workload) -> Supervisord {
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let socket = dir.join("supervisor.sock");
        let conf = dir.join("supervisord.conf");
        std::fs::write(&conf, config(dir, w, &socket)).unwrap();
        let daemon = Group::spawn(
            Command::new("supervisord")
                .arg("-n")
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let s = Supervisord { socket, daemon };
        super::wait_until("supervisord answering", Duration::from_secs(30), || {
            call(&s.socket, "supervisor.getState", &[]).is_ok_and(|r| r.contains("RUNNING"))
        });
        s
    }
}

impl Supervision for Supervisord {
    fn name(&self) -> &'static str {
        "supervisord"
    }

    fn describe(&self) -> serde_json::Value {
        let version = Command::new("supervisord")
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        serde_json::json!({
            "version": version,
            "tree": "one supervisord (python3) process",
            "driver": "XML-RPC over its unix socket (supervisorctl's interface): startProcessGroup, startProcess",
            "restart": "autorestart=true: immediate (its default for a process that was RUNNING)",
            "output": "captured to per-program log files (AUTO, the default)",
        })
    }

    fn tree(&self) -> Vec<u32> {
        vec![self.daemon.pid()]
    }

    fn start_sleepers(&mut self) -> Instant {
        let t0 = Instant::now();
        call(
            &self.socket,
            "supervisor.startProcessGroup",
            &["<string>sleepers</string>", "<boolean>0</boolean>"],
        )
        .expect("startProcessGroup");
        t0
    }

    fn start_short(&mut self, _cycle: usize) -> Instant {
        let t0 = Instant::now();
        call(
            &self.socket,
            "supervisor.startProcess",
            &["<string>short</string>", "<boolean>0</boolean>"],
        )
        .expect("startProcess");
        t0
    }
}
