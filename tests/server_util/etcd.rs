//! A real etcd for tests: one member or a small cluster on free loopback
//! ports, each with its own temp data directory, killed on drop; or one
//! member serving clients over TLS and requiring their certificates.

use k8s4r::server::store::etcd::Endpoints;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// How long etcd members may take to report healthy: 20 s was too short
/// for four suites starting members at once on a loaded 2-core CI machine.
const READY: Duration = Duration::from_secs(60);

/// A loopback port free a moment ago (probed without listening: see
/// `k8s4r::envoy::ports::free_port_at`).
fn free_port() -> u16 {
    k8s4r::envoy::ports::free_port_at(([127, 0, 0, 1], 0).into()).expect("a free loopback port")
}

/// Certificates for an etcd that serves clients over TLS, as PEM files in
/// a temp directory: a CA, etcd's serving certificate (127.0.0.1,
/// localhost) and a client certificate signed by it, and a second CA that
/// signed neither.
pub struct Pki {
    /// The CA that signed etcd's and the client's certificates.
    pub ca: PathBuf,
    /// A CA that signed nothing here.
    pub other_ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    etcd_cert: PathBuf,
    etcd_key: PathBuf,
    _dir: tempfile::TempDir,
}

fn ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().expect("CA key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    (params.self_signed(&key).expect("CA certificate"), key)
}

impl Pki {
    pub fn generate() -> Pki {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, pem: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, pem).expect("write PEM");
            p
        };
        let (ca_cert, ca_key) = ca("k8s4r test etcd CA");
        let leaf = |cn: &str, sans: &[&str], usages| {
            let key = rcgen::KeyPair::generate().expect("key");
            let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
            let mut params = rcgen::CertificateParams::new(sans).expect("params");
            params.distinguished_name.push(rcgen::DnType::CommonName, cn);
            params.extended_key_usages = usages;
            let cert = params.signed_by(&key, &ca_cert, &ca_key).expect("sign");
            (cert.pem(), key.serialize_pem())
        };
        // etcd's JSON gateway reaches etcd's own gRPC port with this
        // certificate as its client certificate: it needs both usages.
        let (etcd_cert, etcd_key) = leaf("etcd", &["127.0.0.1", "localhost"], vec![ServerAuth, ClientAuth]);
        let (client_cert, client_key) = leaf("k8s4r", &[], vec![ClientAuth]);
        Pki {
            ca: write("ca.pem", ca_cert.pem()),
            other_ca: write("other-ca.pem", ca("another CA").0.pem()),
            client_cert: write("client.pem", client_cert),
            client_key: write("client-key.pem", client_key),
            etcd_cert: write("etcd.pem", etcd_cert),
            etcd_key: write("etcd-key.pem", etcd_key),
            _dir: dir,
        }
    }

    /// An HTTP client that trusts the CA and presents the client certificate.
    fn agent(&self) -> ureq::Agent {
        use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
        let read = |p: &Path| std::fs::read(p).expect("read PEM");
        let (ca, cert, key) = (read(&self.ca), read(&self.client_cert), read(&self.client_key));
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::new_with_certs(&[Certificate::from_pem(&ca).expect("CA")]))
            .client_cert(Some(ClientCert::new_with_certs(
                &[Certificate::from_pem(&cert).expect("client certificate")],
                PrivateKey::from_pem(&key).expect("client key"),
            )))
            .build();
        ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into()
    }
}

pub struct Member {
    pub name: String,
    pub client_url: String,
    peer_url: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
    initial_cluster: String,
    /// Clients over TLS with certificates from this.
    tls: Option<Arc<Pki>>,
    /// For health checks (with the client certificate under TLS).
    agent: ureq::Agent,
}

impl Member {
    fn spawn(&mut self, state: &str) {
        let mut cmd = Command::new("etcd");
        if let Some(pki) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&pki.etcd_cert)
                .arg("--key-file")
                .arg(&pki.etcd_key)
                .arg("--trusted-ca-file")
                .arg(&pki.ca)
                .arg("--client-cert-auth");
        }
        let child = cmd
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.client_url])
            .args(["--advertise-client-urls", &self.client_url])
            .args(["--listen-peer-urls", &self.peer_url])
            .args(["--initial-advertise-peer-urls", &self.peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "k8s4r-test"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd (Debian package etcd-server)");
        self.child = Some(child);
    }

    /// SIGKILL this member.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on its data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn("existing");
    }

    fn healthy(&self) -> bool {
        self.agent
            .get(&format!("{}/health", self.client_url))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .is_some_and(|b| b.contains("\"true\""))
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Etcd {
    pub members: Vec<Member>,
}

impl Etcd {
    pub fn start() -> Etcd {
        Etcd::cluster(1)
    }

    /// One member serving clients on `https://127.0.0.1:PORT` with the
    /// certificates of `pki`, requiring a client certificate it signed.
    pub fn start_tls(pki: Arc<Pki>) -> Etcd {
        Etcd::start_members(1, Some(pki))
    }

    /// `n` members forming one cluster; returns once all are healthy.
    pub fn cluster(n: usize) -> Etcd {
        Etcd::start_members(n, None)
    }

    fn start_members(n: usize, tls: Option<Arc<Pki>>) -> Etcd {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let agent = match &tls {
            Some(pki) => pki.agent(),
            None => ureq::Agent::new_with_defaults(),
        };
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
            .collect();
        let mut members: Vec<Member> = ports
            .iter()
            .enumerate()
            .map(|(i, (c, p))| Member {
                name: format!("m{i}"),
                client_url: format!("{scheme}://127.0.0.1:{c}"),
                peer_url: format!("http://127.0.0.1:{p}"),
                child: None,
                dir: tempfile::tempdir().expect("tempdir"),
                initial_cluster: initial.join(","),
                tls: tls.clone(),
                agent: agent.clone(),
            })
            .collect();
        for m in &mut members {
            m.spawn("new");
        }
        let etcd = Etcd { members };
        etcd.wait_healthy();
        etcd
    }

    /// Wait until every running member reports healthy.
    pub fn wait_healthy(&self) {
        super::wait_for("etcd healthy", READY, || {
            self.members
                .iter()
                .filter(|m| m.child.is_some())
                .all(Member::healthy)
                .then_some(())
        });
    }

    /// The client URLs, comma-separated (for `--etcd`).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client_url.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The value of `key`, read from the first member (with the client
    /// certificate under TLS); None when absent.
    pub fn value(&self, key: &str) -> Option<Vec<u8>> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let m = &self.members[0];
        let body = serde_json::json!({ "key": b64.encode(key) }).to_string();
        let text = m
            .agent
            .post(&format!("{}/v3/kv/range", m.client_url))
            .send(body.as_str())
            .unwrap_or_else(|e| panic!("etcd range {key}: {e}"))
            .body_mut()
            .read_to_string()
            .expect("etcd answer");
        let v: serde_json::Value = serde_json::from_str(&text).expect("etcd JSON");
        let value = v["kvs"][0]["value"].as_str()?;
        Some(b64.decode(value).expect("base64 value"))
    }

    /// The first member's count `name` (a gauge or counter of whole
    /// things) from its /metrics.
    pub fn metric(&self, name: &str) -> u64 {
        let m = &self.members[0];
        let text = m
            .agent
            .get(&format!("{}/metrics", m.client_url))
            .call()
            .unwrap_or_else(|e| panic!("etcd metrics: {e}"))
            .body_mut()
            .read_to_string()
            .expect("etcd metrics text");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or_else(|| panic!("etcd has no metric {name}"))
    }

    /// The http:// members' endpoints, for opening stores in the test.
    pub fn endpoint_list(&self) -> Endpoints {
        let urls: Vec<String> = self.members.iter().map(|m| m.client_url.clone()).collect();
        Endpoints::http(&urls).expect("http endpoints")
    }
}
