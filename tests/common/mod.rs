//! Helpers shared by integration tests: deadlines instead of sleeps, temp
//! dirs, paths to the built binaries.
#![allow(dead_code)]

pub mod netns;
pub mod standalone;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Let every user pass through the directories above `dir` (o+x, no read):
/// a root agent runs the groups' Envoys as an unprivileged user, which must
/// reach its files, and test temp dirs are 0700. As on a robot, where the
/// data dir's parents are /var/lib.
pub fn searchable_by_all(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for ancestor in dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(ancestor) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            let _ = std::fs::set_permissions(ancestor, std::fs::Permissions::from_mode(mode | 0o001));
        }
    }
}

/// Files a group's proxy reads (certificates, keys) made readable by it,
/// as an operator does for the proxy's user, and the way to them
/// searchable. Test keys only: a robot would give them the proxy's group.
pub fn share_with_proxy(files: &[&std::path::Path]) {
    use std::os::unix::fs::PermissionsExt;
    for f in files {
        searchable_by_all(f);
        let mode = std::fs::metadata(f).unwrap().permissions().mode();
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(mode | 0o004)).unwrap();
    }
}

/// Poll `cond` until it returns `Some`, or panic with `what` after `timeout`.
/// The poll interval is short and bounded; this is a wait for a condition,
/// not a sleep standing in for synchronisation.
pub fn wait_for<T>(what: &str, timeout: Duration, cond: impl FnMut() -> Option<T>) -> T {
    wait_for_or_explain(what, timeout, cond, String::new)
}

/// [`wait_for`], and on a timeout the panic message adds what `explain`
/// returns then (a log tail, the object's status).
pub fn wait_for_or_explain<T>(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Option<T>,
    explain: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}{}", explain());
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Check that `check` holds throughout `window` (sampled every 100 ms):
/// the counterpart of [`wait_for`] for "nothing bad happens for this long".
/// Panics with the failure and when it came.
pub fn throughout(what: &str, window: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    while start.elapsed() < window {
        if let Err(e) = check() {
            panic!("{what} failed after {:?}: {e}", start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_k8s4r-agent"))
}

/// Directory of the shared workspace files (`../shared`), if present. Tests
/// that need it skip with a message when it is absent (a user's clone).
pub fn shared_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIP: {} is absent (present only in the project workspace and CI)",
            dir.display()
        );
        None
    }
}

/// A connected `k8s4r-agent` (`--server URL --join-token T --name ROBOT
/// --labels L --data-dir DIR --no-cgroups` plus `extra`), its output in
/// `<data>.log`. On drop it is killed (-9) and every task it started is
/// stopped, so no test leaves processes behind; a failing test prints its log.
pub struct ConnectedAgent {
    child: Option<std::process::Child>,
    pub data: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    /// A command the agent runs under, e.g. `ip netns exec NS`.
    wrapper: Vec<String>,
    /// The agent binary (a copy, for tests that replace it; default
    /// [`agent_bin`]) and extra environment, used by [`Self::spawn`].
    pub binary: PathBuf,
    pub env: Vec<(String, String)>,
}

impl ConnectedAgent {
    pub fn start(
        server: &str,
        token: &str,
        name: &str,
        labels: &str,
        data: &std::path::Path,
        extra: &[&str],
    ) -> ConnectedAgent {
        ConnectedAgent::launch(
            Vec::new(),
            ConnectedAgent::args_for(server, token, name, labels, data, extra),
            data,
        )
    }

    /// An agent started with exactly `args` and `--data-dir data` (e.g. its
    /// settings in a config file).
    pub fn start_args(args: &[&str], data: &std::path::Path) -> ConnectedAgent {
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.extend(["--data-dir".to_string(), data.display().to_string()]);
        ConnectedAgent::launch(Vec::new(), args, data)
    }

    /// Like [`ConnectedAgent::start`], inside network namespace `netns`.
    pub fn start_in_netns(
        netns: &str,
        server: &str,
        token: &str,
        name: &str,
        labels: &str,
        data: &std::path::Path,
    ) -> ConnectedAgent {
        let wrapper = ["ip", "netns", "exec", netns].map(String::from).to_vec();
        ConnectedAgent::launch(
            wrapper,
            ConnectedAgent::args_for(server, token, name, labels, data, &[]),
            data,
        )
    }

    fn launch(wrapper: Vec<String>, args: Vec<String>, data: &std::path::Path) -> ConnectedAgent {
        searchable_by_all(data);
        let mut a = ConnectedAgent {
            child: None,
            data: data.to_path_buf(),
            log: data.with_extension("log"),
            args,
            wrapper,
            binary: agent_bin(),
            env: Vec::new(),
        };
        a.spawn();
        a
    }

    /// Like [`ConnectedAgent::start`], running `binary` with `env` added.
    pub fn start_binary(
        binary: &std::path::Path,
        env: &[(&str, &str)],
        server: &str,
        token: &str,
        name: &str,
        labels: &str,
        data: &std::path::Path,
    ) -> ConnectedAgent {
        searchable_by_all(data);
        let mut a = ConnectedAgent {
            child: None,
            data: data.to_path_buf(),
            log: data.with_extension("log"),
            args: ConnectedAgent::args_for(server, token, name, labels, data, &[]),
            wrapper: Vec::new(),
            binary: binary.to_path_buf(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        a.spawn();
        a
    }

    fn args_for(
        server: &str,
        token: &str,
        name: &str,
        labels: &str,
        data: &std::path::Path,
        extra: &[&str],
    ) -> Vec<String> {
        let mut args: Vec<String> = [
            "--server",
            server,
            "--join-token",
            token,
            "--name",
            name,
            "--labels",
            labels,
            "--no-cgroups",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
        args.extend(["--data-dir".to_string(), data.display().to_string()]);
        args
    }

    /// (Re)start the process with the same arguments and data.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let mut cmd = match self.wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = std::process::Command::new(program);
                c.args(rest).arg(&self.binary);
                c
            }
            None => std::process::Command::new(&self.binary),
        };
        let child = cmd
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().expect("dup agent log"))
            .stderr(log)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("start k8s4r-agent");
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The process's exit status, once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// A task's stdout as `k8s4r-agent logs TASK` prints it.
    pub fn task_output(&self, task: &str) -> String {
        let out = std::process::Command::new(agent_bin())
            .args(["logs", task, "--data-dir"])
            .arg(&self.data)
            .output()
            .expect("run k8s4r-agent logs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for ConnectedAgent {
    fn drop(&mut self) {
        self.kill9();
        let _ = k8s4r::agent::stop_all(&self.data);
        if std::thread::panicking() {
            eprintln!("--- agent log {} ---\n{}", self.log.display(), self.log_text());
        }
    }
}

/// A loopback HTTP server answering every request with `body`; its port,
/// and the request line of every request it answered.
pub fn serve_recording(body: &'static [u8]) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&requests);
    std::thread::spawn(move || {
        for mut s in listener.incoming().map_while(Result::ok) {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&request)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            seen.lock().unwrap().push(line);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(body);
        }
    });
    (port, requests)
}

/// A loopback HTTP server for the files of `dir` (GET, `Range: bytes=N-`
/// answered 206); every request's line and Range header, recorded.
pub fn serve_dir(dir: PathBuf) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&requests);
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let (dir, seen) = (dir.clone(), std::sync::Arc::clone(&seen));
            std::thread::spawn(move || serve_one(stream, &dir, &seen));
        }
    });
    (port, requests)
}

fn serve_one(stream: std::net::TcpStream, dir: &std::path::Path, seen: &std::sync::Mutex<Vec<String>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    let _ = reader.read_line(&mut line);
    let mut from = 0u64;
    let mut record = line.trim().to_string();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.trim().strip_prefix("Range: bytes=") {
            from = v.trim_end_matches('-').parse().unwrap_or(0);
            record.push_str(&format!(" Range: bytes={from}-"));
        }
    }
    seen.lock().unwrap().push(record);
    let name = line.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/');
    let mut out = &stream;
    let Ok(mut file) = std::fs::File::open(dir.join(name)) else {
        let _ = write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        return;
    };
    let size = file.metadata().unwrap().len();
    let head = if from > 0 {
        use std::io::Seek;
        file.seek(std::io::SeekFrom::Start(from)).unwrap();
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {from}-{}/{size}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            size - 1,
            size - from
        )
    } else {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n")
    };
    let _ = out.write_all(head.as_bytes());
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = file.read(&mut buf) {
        if n == 0 || out.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}
