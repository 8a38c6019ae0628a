//! Harness for the control-plane tests: start the real `k8s4r server` on an
//! ephemeral port with a temp data dir, talk to it over HTTP (raw, kubectl,
//! or as a simulated robot speaking the agent API). Every wait has a
//! deadline; nothing sleeps in place of a condition.
#![allow(dead_code)]

pub mod etcd;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const STARTUP: Duration = Duration::from_secs(20);

pub fn server_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_k8s4r"))
}

/// Waits with a deadline: the one helper every test shares.
pub use crate::common::wait_for;

pub struct Server {
    child: Option<Child>,
    pub base: String,
    pub data: tempfile::TempDir,
    cache: tempfile::TempDir,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// The bearer token requests carry unless they bring their own.
    token: Option<String>,
    /// The admin token the harness's own helpers use (`metric`,
    /// `join_token`, `cli_auth_args`): the harness's, or the one a test
    /// configured with `--admin-token-file`.
    admin: Option<String>,
}

/// The admin token of servers the harness configures itself.
pub const ADMIN_TOKEN: &str = "harness-admin-token-0123456789abcdef";

/// Flags that configure credentials: a test passing one speaks for itself
/// (and its requests carry only the headers it gives).
const AUTH_FLAGS: &[&str] = &["--token-auth-file", "--admin-token-file", "--auth-token-file"];

/// Where the admin token is for `k8s4r token --token-file`.
const ADMIN_TOKEN_FILE: &str = "harness-admin-token";

/// The harness's credentials for a new server in `data`: a token file
/// with an admin (its flags, and the token requests then carry), unless
/// `args` configure credentials already.
fn harness_credentials(data: &Path, args: &[String]) -> (Vec<String>, Option<String>) {
    if args.iter().any(|a| AUTH_FLAGS.contains(&a.as_str())) {
        return (vec![], None);
    }
    let file = data.join("harness-tokens.csv");
    std::fs::write(&file, format!("{ADMIN_TOKEN},admin,0,k8s4r:admins\n")).expect("write the token file");
    std::fs::write(data.join(ADMIN_TOKEN_FILE), ADMIN_TOKEN).expect("write the admin token");
    let flags = vec!["--token-auth-file".to_string(), file.display().to_string()];
    (flags, Some(ADMIN_TOKEN.to_string()))
}

/// The token of `--admin-token-file FILE` (or `--auth-token-file`) in `args`.
fn configured_admin(args: &[String]) -> Option<String> {
    let at = args
        .iter()
        .position(|a| a == "--admin-token-file" || a == "--auth-token-file")?;
    let text = std::fs::read_to_string(args.get(at + 1)?).ok()?;
    Some(text.trim().to_string())
}

pub struct Reply {
    pub status: u16,
    pub body: String,
    pub warnings: Vec<String>,
    pub content_type: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {}", self.body))
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn spawn(data: &Path, args: &[String], env: &[(String, String)]) -> (Child, String) {
    let mut child = Command::new(server_bin())
        .args(["server", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start k8s4r server");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let base = rx
        .recv_timeout(STARTUP)
        .unwrap_or_else(|_| panic!("server did not print its address within {STARTUP:?}"));
    (child, base)
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    pub fn start_with(args: &[&str]) -> Server {
        Server::start_with_env(args, &[])
    }

    /// With extra environment variables (test-only switches of the server).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let data = tempfile::tempdir().expect("tempdir");
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (auth_flags, token) = harness_credentials(data.path(), &args);
        let admin = token.clone().or_else(|| configured_admin(&args));
        args.extend(auth_flags);
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let (child, base) = spawn(data.path(), &args, &env);
        Server {
            child: Some(child),
            base,
            data,
            cache: tempfile::tempdir().expect("tempdir"),
            args,
            env,
            token,
            admin,
        }
    }

    /// A handle on an already running server (for other threads); it does
    /// not own the process.
    pub fn attach(base: &str) -> Server {
        Server {
            child: None,
            base: base.to_string(),
            data: tempfile::tempdir().expect("tempdir"),
            cache: tempfile::tempdir().expect("tempdir"),
            args: vec![],
            env: vec![],
            token: Some(ADMIN_TOKEN.to_string()),
            admin: Some(ADMIN_TOKEN.to_string()),
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM: graceful shutdown.
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if c.try_wait().ok().flatten().is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// SIGKILL the server (no shutdown at all) and start it again on the
    /// same data directory.
    pub fn crash_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let (child, base) = spawn(self.data.path(), &self.args, &self.env);
        self.child = Some(child);
        self.base = base;
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL the server and leave it dead.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start a stopped or killed server again on its data directory and
    /// arguments (new port).
    pub fn start_again(&mut self) {
        self.kill();
        let (child, base) = spawn(self.data.path(), &self.args, &self.env);
        self.child = Some(child);
        self.base = base;
    }

    /// Stop and start again on the same data directory (new port).
    pub fn restart(&mut self) {
        self.stop();
        let (child, base) = spawn(self.data.path(), &self.args, &self.env);
        self.child = Some(child);
        self.base = base;
    }

    /// The `Authorization` header requests carry by default, if any.
    pub fn auth_header(&self) -> Option<(&'static str, String)> {
        self.token.as_ref().map(|t| ("Authorization", format!("Bearer {t}")))
    }

    /// An admin's `Authorization` header, for the harness's own helpers.
    fn admin_headers(&self) -> Vec<(&'static str, String)> {
        self.admin
            .iter()
            .map(|t| ("Authorization", format!("Bearer {t}")))
            .collect()
    }

    /// Flags that give `k8s4r token` / `k8s4r logs` the harness's admin
    /// credentials (none for a server the test configured itself).
    pub fn cli_auth_args(&self) -> Vec<String> {
        match &self.token {
            Some(_) => vec![
                "--token-file".into(),
                self.data.path().join(ADMIN_TOKEN_FILE).display().to_string(),
            ],
            None => vec![],
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// One HTTP request; `body` is sent as-is with `content_type`.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let url = self.url(path);
        let a = agent();
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        // Robots carry their own credentials, never a user's.
        let user_path = !k8s4r::server::auth::is_robot_channel(path.split('?').next().unwrap_or(path));
        if user_path && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization")) {
            if let Some((k, v)) = self.auth_header() {
                req = req.header(k, v);
            }
        }
        if body.is_some() {
            req = req.header("Content-Type", content_type);
        }
        let result = match body {
            Some(b) => a.run(req.body(b.to_vec()).expect("request")),
            None => a.run(req.body(()).expect("request")),
        };
        let mut resp = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let warnings = resp
            .headers()
            .get_all("warning")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .unwrap_or_default();
        Reply {
            status,
            body,
            warnings,
            content_type,
        }
    }

    /// Stream the lines of a long response (a watch) into a channel.
    pub fn stream(&self, path: &str) -> mpsc::Receiver<String> {
        let url = self.url(path);
        let auth = self.auth_header();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut req = agent().get(&url);
            if let Some((k, v)) = auth {
                req = req.header(k, v);
            }
            let resp = req.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
            let reader = BufReader::new(resp.into_body().into_reader());
            for line in reader.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, "", None, &[])
    }

    /// `POST /agent/v1/register` with `body`; `proof`: the robot token of
    /// an earlier registration of the name (a name that is registered is
    /// registered again only with it).
    pub fn register(&self, body: &Value, proof: Option<&str>) -> Reply {
        let auth = proof.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        self.request(
            "POST",
            "/agent/v1/register",
            "application/json",
            Some(body.to_string().as_bytes()),
            &headers,
        )
    }

    pub fn send_json(&self, method: &str, path: &str, body: &Value) -> Reply {
        self.request(method, path, "application/json", Some(body.to_string().as_bytes()), &[])
    }

    pub fn kubectl_cmd(&self) -> Command {
        let mut c = Command::new("kubectl");
        c.env("KUBECONFIG", "/dev/null")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .arg("--server")
            .arg(&self.base)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .arg("--request-timeout=30s");
        if let Some(t) = &self.token {
            c.arg("--token").arg(t);
        }
        c
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_cmd().args(args).output().expect("run kubectl")
    }

    /// kubectl that must succeed; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn object(&self, plural: &str, name: &str) -> Option<Value> {
        let r = self.get(&format!(
            "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/{plural}/{name}"
        ));
        (r.status == 200).then(|| r.json())
    }

    pub fn list(&self, plural: &str, query: &str) -> Value {
        let r = self.get(&format!(
            "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/{plural}{query}"
        ));
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    /// Panics the server process has caught so far (`/metrics`); bad input
    /// must never cause one.
    pub fn panics(&self) -> u64 {
        self.metric("k8s4r_panics_total")
    }

    /// One counter or gauge of `/metrics`.
    pub fn metric(&self, name: &str) -> u64 {
        let admin = self.admin_headers();
        let headers: Vec<(&str, &str)> = admin.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = self.request("GET", "/metrics", "", None, &headers);
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{}", r.body))
    }

    /// One request written as raw HTTP/1.1 text (for what an HTTP client
    /// library would not send), with the default `Authorization` header
    /// added after the request line; returns the whole raw answer.
    pub fn raw(&self, request: &str) -> String {
        use std::io::{Read, Write};
        let request = match (self.auth_header(), request.split_once("\r\n")) {
            (Some((k, v)), Some((line, rest))) => format!("{line}\r\n{k}: {v}\r\n{rest}"),
            _ => request.to_string(),
        };
        let addr = self.base.trim_start_matches("http://").to_string();
        let mut c = std::net::TcpStream::connect(&addr).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        c.write_all(request.as_bytes()).expect("send");
        let mut reply = Vec::new();
        let _ = c.read_to_end(&mut reply);
        String::from_utf8_lossy(&reply).into_owned()
    }

    /// Events about one object as (reason, message, count): repeats of one
    /// reason and message are one Event with a count.
    pub fn events_of(&self, kind: &str, name: &str) -> Vec<(String, String, u64)> {
        let path = format!(
            "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3D{name},involvedObject.kind%3D{kind}"
        );
        let r = self.get(&path);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["reason"].as_str().unwrap_or("").to_string(),
                    e["message"].as_str().unwrap_or("").to_string(),
                    e["count"].as_u64().unwrap_or(1),
                )
            })
            .collect()
    }

    pub fn join_token(&self) -> String {
        let admin = self.admin_headers();
        let headers: Vec<(&str, &str)> = admin.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = self.request(
            "POST",
            "/agent/v1/jointokens",
            "application/json",
            Some(b"{}"),
            &headers,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["token"].as_str().unwrap().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether the real kubectl is installed; prints a loud SKIP if not.
pub fn have_kubectl() -> bool {
    let ok = Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIP: kubectl is not installed; the kubectl compatibility tests did not run");
    }
    ok
}

/// Whole seconds since a Robot's `lastHeartbeatTime`, as kubectl's
/// LAST-HEARTBEAT column counts them.
pub fn heartbeat_age(robot: &Value) -> i64 {
    let at = robot["status"]["lastHeartbeatTime"]
        .as_str()
        .and_then(k8s4r::server::time::parse_rfc3339)
        .unwrap_or_else(|| panic!("no lastHeartbeatTime: {robot}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    i64::try_from(now).expect("seconds fit") - at
}

/// A simulated robot speaking the agent API.
pub struct Robot<'a> {
    pub server: &'a Server,
    pub name: String,
    pub token: String,
    pub since: u64,
    pub seq: u64,
}

impl<'a> Robot<'a> {
    pub fn register(server: &'a Server, join: &str, name: &str, labels: Value) -> Robot<'a> {
        let r = server.send_json(
            "POST",
            "/agent/v1/register",
            &json!({"joinToken": join, "name": name, "labels": labels,
                    "deviceInfo": {"hostname": format!("{name}.local"), "platform": {"os": "linux", "arch": "x86_64"}}}),
        );
        assert_eq!(r.status, 200, "register {name}: {}", r.body);
        Robot {
            server,
            name: name.into(),
            token: r.json()["token"].as_str().unwrap().to_string(),
            since: 0,
            seq: 0,
        }
    }

    pub fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// One long poll; returns the full reply and advances `since`.
    pub fn poll(&mut self, wait: &str) -> Value {
        let path = format!(
            "/agent/v1/robots/{}/assignments?since={}&wait={wait}",
            self.name, self.since
        );
        let r = self
            .server
            .request("GET", &path, "", None, &[("Authorization", &self.auth())]);
        assert_eq!(r.status, 200, "poll {}: {}", self.name, r.body);
        let v = r.json();
        self.since = v["revision"].as_u64().unwrap();
        v
    }

    /// Names of the tasks in the robot's desired set (polling without wait).
    pub fn task_names(&mut self) -> Vec<String> {
        let v = self.poll("0s");
        let mut names: Vec<String> = v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    }

    /// Keep long-polling (`wait` each time) from another thread, as a live
    /// agent does, while `observe` runs on this one; returns its result
    /// and how many polls were answered. A failed poll fails the test.
    pub fn polling_while<T>(&mut self, wait: &str, observe: impl FnOnce() -> T) -> (T, u64) {
        use std::sync::atomic::{AtomicBool, Ordering};
        // Stops the poller also when `observe` panics (the scope would
        // otherwise wait for it forever).
        struct Stop<'s>(&'s AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let poller = scope.spawn(|| {
                let mut polls = 0;
                while !stop.load(Ordering::SeqCst) {
                    self.poll(wait);
                    polls += 1;
                }
                polls
            });
            let seen = {
                let _stop = Stop(&stop);
                observe()
            };
            (seen, poller.join().expect("the polling thread"))
        })
    }

    pub fn report(&mut self, task: &str, state: &str) -> Value {
        self.seq += 1;
        let seq = self.seq;
        self.report_seq(task, seq, json!({"state": state}))
    }

    pub fn report_seq(&self, task: &str, seq: u64, status: Value) -> Value {
        let body = json!({"updates": [{"task": task, "seq": seq, "status": status}]});
        let r = self.server.request(
            "POST",
            &format!("/agent/v1/robots/{}/status", self.name),
            "application/json",
            Some(body.to_string().as_bytes()),
            &[("Authorization", &self.auth())],
        );
        assert_eq!(r.status, 200, "status from {}: {}", self.name, r.body);
        r.json()
    }
}
