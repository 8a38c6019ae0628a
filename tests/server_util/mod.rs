//! Harness for the control-plane tests: start the real `k8s4r server` on an
//! ephemeral port with a temp data dir, on its secure defaults, and talk to
//! it as an operator would (HTTPS with the generated admin.kubeconfig's CA
//! and client certificate: raw, kubectl, the k8s4r CLI) or as a robot does
//! (plain HTTP to the agent listener). Every wait has a deadline; nothing
//! sleeps in place of a condition.
#![allow(dead_code)]

pub mod etcd;

use k8s4r::api::agent_protocol::RegisterRequest;
use k8s4r::api::robot_channel::JoinToken;
use k8s4r::server::ready::{self, Ready};
pub use k8s4r::server::robot_channel::client::{Prepared, RobotSession};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
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
    /// The Kubernetes API: `https://127.0.0.1:PORT` (`http://` with
    /// `--insecure-http`).
    pub base: String,
    /// The plain-HTTP agent listener, where robots talk.
    pub agent_base: String,
    /// `<data>/admin.kubeconfig`, written by the server.
    pub kubeconfig: PathBuf,
    /// Trusts the server's CA; no client certificate (see [`Started::client`]).
    client: ureq::Agent,
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
    /// Every header (name lowercase) and the body's bytes as received.
    pub headers: Vec<(String, String)>,
    pub bytes: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {}", self.body))
    }
}

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A plain-HTTP client (the robots' side).
fn plain_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(REQUEST_TIMEOUT))
        .build()
        .into()
}

/// What a started server printed.
struct Started {
    child: Child,
    base: String,
    agent_base: String,
    kubeconfig: PathBuf,
}

impl Started {
    /// A client trusting the kubeconfig's CA, built once per start.
    fn client(&self) -> ureq::Agent {
        let mut resolved = k8s4r::server::kubeconfig::load(&self.kubeconfig).expect("the admin kubeconfig");
        // Requests authenticate with bearer tokens (the harness's admin
        // token, or a test's own), so a test's token decides who it is;
        // kubectl and the k8s4r CLI use the kubeconfig's certificate.
        resolved.cert_pem = None;
        resolved.key_pem = None;
        k8s4r::server::kubeclient::agent(&resolved, Some(REQUEST_TIMEOUT)).expect("a client from the admin kubeconfig")
    }
}

fn spawn(data: &Path, args: &[String], env: &[(String, String)]) -> Started {
    let mut child = ready::loopback(&server_bin(), data)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start k8s4r server");
    let ready = Ready::wait(child.stdout.take().expect("stdout"), STARTUP).unwrap_or_else(|e| panic!("{e}"));
    Started {
        child,
        base: ready.base,
        agent_base: ready.agent_base,
        kubeconfig: ready.kubeconfig,
    }
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
        let started = spawn(data.path(), &args, &env);
        Server {
            client: started.client(),
            child: Some(started.child),
            base: started.base,
            agent_base: started.agent_base,
            kubeconfig: started.kubeconfig,
            data,
            cache: tempfile::tempdir().expect("tempdir"),
            args,
            env,
            token,
            admin,
        }
    }

    /// A handle on this running server for another thread: same addresses
    /// and credentials; it does not own the process.
    pub fn handle(&self) -> Server {
        Server {
            child: None,
            base: self.base.clone(),
            agent_base: self.agent_base.clone(),
            kubeconfig: self.kubeconfig.clone(),
            client: self.client.clone(),
            data: tempfile::tempdir().expect("tempdir"),
            cache: tempfile::tempdir().expect("tempdir"),
            args: vec![],
            env: vec![],
            token: Some(ADMIN_TOKEN.to_string()),
            admin: Some(ADMIN_TOKEN.to_string()),
        }
    }

    /// Start the server process again on its data and arguments (new
    /// ports, a new admin certificate from the same CA).
    fn respawn(&mut self) {
        let started = spawn(self.data.path(), &self.args, &self.env);
        self.client = started.client();
        self.child = Some(started.child);
        self.base = started.base;
        self.agent_base = started.agent_base;
        self.kubeconfig = started.kubeconfig;
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
        self.kill();
        self.respawn();
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the server's process has ended (a zombie not yet reaped),
    /// read from /proc so robots borrowing the server can keep it.
    pub fn has_exited(&self) -> bool {
        let Some(pid) = self.pid() else { return true };
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                stat.rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    }

    /// Reap the server's ended process: its exit status.
    pub fn reap(&mut self) -> Option<std::process::ExitStatus> {
        self.child.take()?.wait().ok()
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
        self.respawn();
    }

    /// Stop and start again on the same data directory (new port).
    pub fn restart(&mut self) {
        self.stop();
        self.respawn();
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

    /// One request to the Kubernetes API as the admin; `body` is sent
    /// as-is with `content_type`.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Reply {
        // Robots carry their own credentials, never a user's.
        let user_path = !k8s4r::server::auth::is_robot_channel(path.split('?').next().unwrap_or(path));
        let brings_own = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
        let default_auth = self.auth_header().filter(|_| user_path && !brings_own);
        let mut all = headers.to_vec();
        if let Some((k, v)) = &default_auth {
            all.push((k, v.as_str()));
        }
        send(&self.client, method, &self.url(path), content_type, body, &all)
    }

    /// One request to the agent listener, as a robot sends it.
    pub fn agent_request(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let url = format!("{}{path}", self.agent_base);
        send(&plain_agent(), method, &url, content_type, body, headers)
    }

    /// A robot's JSON request to the agent listener.
    pub fn agent_json(&self, method: &str, path: &str, body: &Value, headers: &[(&str, &str)]) -> Reply {
        self.agent_request(
            method,
            path,
            "application/json",
            Some(body.to_string().as_bytes()),
            headers,
        )
    }
}

/// One HTTP request with `a`.
fn send(
    a: &ureq::Agent,
    method: &str,
    url: &str,
    content_type: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
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
    let headers = resp
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let status = resp.status().as_u16();
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .unwrap_or_default();
    Reply {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
        warnings,
        content_type,
        headers,
        bytes,
    }
}

impl Server {
    /// GET `path` as the admin on another thread, handing the answer's
    /// body (or the failure) to `read` there: for long responses (watches).
    fn get_on_thread(&self, path: &str, read: impl FnOnce(Result<ureq::Body, String>) + Send + 'static) {
        let url = self.url(path);
        let auth = self.auth_header();
        let client = self.client.clone();
        std::thread::spawn(move || {
            let mut req = client.get(&url);
            if let Some((k, v)) = auth {
                req = req.header(k, v);
            }
            read(req.call().map(|r| r.into_body()).map_err(|e| format!("GET {url}: {e}")));
        });
    }

    /// Stream the lines of a long response (a watch) into a channel.
    pub fn stream(&self, path: &str) -> mpsc::Receiver<String> {
        let (tx, rx) = mpsc::channel();
        self.get_on_thread(path, move |body| {
            let body = body.unwrap_or_else(|e| panic!("{e}"));
            for line in BufReader::new(body.into_reader()).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    }

    /// Read a long response (a watch) to its end on another thread: Ok
    /// once its body ended as HTTP ends one, Err if the connection was cut.
    pub fn read_to_end(&self, path: &str) -> mpsc::Receiver<Result<(), String>> {
        let (tx, rx) = mpsc::channel();
        self.get_on_thread(path, move |body| {
            let ended = body.and_then(|body| {
                let mut all = Vec::new();
                body.into_reader()
                    .read_to_end(&mut all)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
            let _ = tx.send(ended);
        });
        rx
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, "", None, &[])
    }

    pub fn send_json(&self, method: &str, path: &str, body: &Value) -> Reply {
        self.request(method, path, "application/json", Some(body.to_string().as_bytes()), &[])
    }

    /// A JSON merge patch (RFC 7386) of the object at `path`.
    pub fn merge_patch(&self, path: &str, patch: &Value) -> Reply {
        self.request(
            "PATCH",
            path,
            "application/merge-patch+json",
            Some(patch.to_string().as_bytes()),
            &[],
        )
    }

    /// kubectl with the server's admin.kubeconfig.
    pub fn kubectl_cmd(&self) -> Command {
        let mut c = Command::new("kubectl");
        c.env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .arg("--cache-dir")
            .arg(self.cache.path())
            .arg("--request-timeout=30s");
        c
    }

    /// `k8s4r` (token, logs, ...) with the server's admin.kubeconfig.
    pub fn k8s4r_cmd(&self) -> Command {
        let mut c = Command::new(server_bin());
        c.env("KUBECONFIG", &self.kubeconfig);
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

    /// One request written as raw HTTP/1.1 text to the Kubernetes API (for
    /// what an HTTP client library would not send), with the default
    /// `Authorization` header added after the request line, over TLS as
    /// the admin unless the server runs with --insecure-http; the whole raw
    /// answer.
    pub fn raw(&self, request: &str) -> String {
        use std::io::{Read, Write};
        let request = match (self.auth_header(), request.split_once("\r\n")) {
            (Some((k, v)), Some((line, rest))) => format!("{line}\r\n{k}: {v}\r\n{rest}"),
            _ => request.to_string(),
        };
        let (tls, addr) = match self.base.strip_prefix("https://") {
            Some(a) => (true, a),
            None => (false, self.base.trim_start_matches("http://")),
        };
        let tcp = std::net::TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut reply = Vec::new();
        if tls {
            let conn = rustls::ClientConnection::new(self.tls_client_config(), "127.0.0.1".try_into().expect("an IP"))
                .expect("a TLS client");
            let mut c = rustls::StreamOwned::new(conn, tcp);
            c.write_all(request.as_bytes()).expect("send");
            // The server may close without close_notify: what came counts.
            let _ = c.read_to_end(&mut reply);
        } else {
            let mut c = tcp;
            c.write_all(request.as_bytes()).expect("send");
            let _ = c.read_to_end(&mut reply);
        }
        String::from_utf8_lossy(&reply).into_owned()
    }

    /// A rustls client trusting the admin kubeconfig's CA and presenting
    /// its client certificate.
    pub fn tls_client_config(&self) -> std::sync::Arc<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let r = k8s4r::server::kubeconfig::load(&self.kubeconfig).expect("the admin kubeconfig");
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&r.ca_pem.expect("CA data")) {
            roots.add(c.expect("a CA certificate")).expect("a usable CA");
        }
        let chain: Vec<_> = CertificateDer::pem_slice_iter(&r.cert_pem.expect("a client certificate"))
            .map(|c| c.expect("a client certificate"))
            .collect();
        let key = PrivateKeyDer::from_pem_slice(&r.key_pem.expect("a client key")).expect("a client key");
        let config = rustls::ClientConfig::builder_with_provider(k8s4r::server::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("the client certificate");
        std::sync::Arc::new(config)
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

impl Reply {
    /// One header's value (names are case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }
}

/// A simulated robot speaking the agent API over the signed, sealed robot
/// channel (k8s4r's own client side of it): every request is signed (and
/// its body sealed), every answer's signature is checked and its body
/// opened, so the tests that use it exercise the real protocol. An answer
/// that does not verify fails the test.
pub struct Robot<'a> {
    pub server: &'a Server,
    pub name: String,
    /// Keys, counter, trusted server key, clock offset.
    pub session: RobotSession,
    pub since: u64,
    pub seq: u64,
    /// The desired set of the last answer that carried one: an answer
    /// with nothing new since `since` leaves its tasks out, and the robot
    /// keeps what it has (as the agent does).
    tasks: Value,
}

impl<'a> Robot<'a> {
    /// A robot that registered before (its `session` kept) polling
    /// `server` again from `since`, e.g. after the server moved or restarted.
    pub fn resume(server: &'a Server, name: &str, session: RobotSession, since: u64) -> Robot<'a> {
        Robot {
            server,
            name: name.into(),
            session,
            since,
            seq: 0,
            tasks: json!([]),
        }
    }

    /// Register `name` with join token `join` and robot labels `labels`;
    /// the registration must succeed.
    pub fn register(server: &'a Server, join: &str, name: &str, labels: Value) -> Robot<'a> {
        let fields = json!({"labels": labels,
            "deviceInfo": {"hostname": format!("{name}.local"), "platform": {"os": "linux", "arch": "x86_64"}}});
        let (robot, r) = Robot::try_register(server, join, name, fields);
        assert_eq!(r.status, 200, "register {name}: {}", r.body);
        robot
    }

    /// Register `name` (new keys) with `fields` of the RegisterRequest
    /// (labels, namespace, deviceInfo...); the verified answer, whatever its
    /// status.
    pub fn try_register(server: &'a Server, join: &str, name: &str, fields: Value) -> (Robot<'a>, Reply) {
        let token = JoinToken::parse(join).unwrap_or_else(|e| panic!("join token {join:?}: {e}"));
        let mut robot = Robot {
            server,
            name: name.into(),
            session: RobotSession::new(name, token.pin),
            since: 0,
            seq: 0,
            tasks: json!([]),
        };
        let r = robot.register_again(join, fields);
        (robot, r)
    }

    /// Register again with this robot's keys and `join`.
    pub fn register_again(&mut self, join: &str, fields: Value) -> Reply {
        let token = JoinToken::parse(join).unwrap_or_else(|e| panic!("join token {join:?}: {e}"));
        // The given fields over an empty request (the session fills in the
        // token id, name, keys, time, nonce and proof).
        let mut v = serde_json::to_value(RegisterRequest::default()).expect("a RegisterRequest serialises");
        for (k, f) in fields.as_object().expect("RegisterRequest fields as an object") {
            v[k] = f.clone();
        }
        let req: RegisterRequest = serde_json::from_value(v).expect("RegisterRequest fields");
        let p = self.session.register(&token, req);
        self.exchange(&p)
    }

    /// A signed request (its body sealed), not sent.
    pub fn prepare(&mut self, method: &str, path: &str, body: Option<&Value>) -> Prepared {
        let plain = body.map(|b| b.to_string().into_bytes());
        self.session
            .request(method, path, plain.as_deref())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Send a prepared request as it is; the raw answer, unverified.
    pub fn send_raw(&self, p: &Prepared, body: &[u8]) -> Reply {
        // `request` sets the Content-Type of a body itself.
        let headers: Vec<(&str, &str)> = p
            .headers
            .iter()
            .filter(|(k, _)| *k != "Content-Type")
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        let content_type = p
            .headers
            .iter()
            .find(|(k, _)| *k == "Content-Type")
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        let body = (!body.is_empty() || p.method == "POST").then_some(body);
        self.server
            .agent_request(&p.method, &p.target, content_type, body, &headers)
    }

    /// Verify `r`, the answer to `p`: Ok(the opened body), or why not.
    pub fn verify(&mut self, p: &Prepared, r: &Reply) -> Result<Vec<u8>, String> {
        self.session.answer(p, r.status, &|name| r.header(name), &r.bytes)
    }

    /// Send `p` and verify its answer (which must verify); the reply's body
    /// is the opened one.
    pub fn exchange(&mut self, p: &Prepared) -> Reply {
        let mut r = self.send_raw(p, &p.body);
        let opened = self
            .verify(p, &r)
            .unwrap_or_else(|e| panic!("{} {} answered {}: {e}: {}", p.method, p.target, r.status, r.body));
        r.body = String::from_utf8_lossy(&opened).into_owned();
        r.bytes = opened;
        r
    }

    /// One signed request under this robot's path; the verified answer.
    pub fn send(&mut self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let p = self.prepare(method, path, body);
        self.exchange(&p)
    }

    fn assignments_path(&self, wait: &str) -> String {
        format!(
            "/agent/v1/robots/{}/assignments?since={}&wait={wait}",
            self.name, self.since
        )
    }

    /// One long poll; returns the full reply and advances `since`.
    pub fn poll(&mut self, wait: &str) -> Value {
        let path = self.assignments_path(wait);
        let r = self.send("GET", &path, None);
        assert_eq!(r.status, 200, "poll {}: {}", self.name, r.body);
        let mut v = r.json();
        let revision = v["revision"].as_u64().unwrap();
        if revision == self.since && self.since != 0 {
            v["tasks"] = self.tasks.clone();
        } else {
            self.tasks = v["tasks"].clone();
        }
        self.since = revision;
        v
    }

    /// A poll from `since` that may fail: the verified answer.
    pub fn try_poll(&mut self, wait: &str) -> Reply {
        let path = self.assignments_path(wait);
        self.send("GET", &path, None)
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

    /// A status report that may fail: the verified answer.
    pub fn try_report(&mut self, body: &Value) -> Reply {
        let path = format!("/agent/v1/robots/{}/status", self.name);
        self.send("POST", &path, Some(body))
    }

    pub fn report_seq(&mut self, task: &str, seq: u64, status: Value) -> Value {
        let body = json!({"updates": [{"task": task, "seq": seq, "status": status}]});
        let r = self.try_report(&body);
        assert_eq!(r.status, 200, "status from {}: {}", self.name, r.body);
        r.json()
    }
}

/// Start `k8s4r server ARGS` (temp data dir, any port) expecting it to give
/// up: its exit code and stderr, once it has exited within `within`.
pub fn server_refuses(args: &[&str], within: Duration) -> (Option<i32>, String) {
    let data = tempfile::tempdir().expect("tempdir");
    // stderr to a file: a pipe nobody reads while waiting could fill up.
    let err_path = data.path().join("stderr");
    let err = std::fs::File::create(&err_path).expect("stderr file");
    let mut child = Command::new(server_bin())
        .args(["server", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path().join("data"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("start k8s4r server");
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for("the server to give up", within, || child.try_wait().ok().flatten())
    }));
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    match waited {
        Ok(status) => (status.code(), stderr),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("k8s4r server {args:?} still runs after {within:?}; it said:\n{stderr}");
        }
    }
}
