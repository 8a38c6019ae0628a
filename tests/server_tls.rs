#![cfg(feature = "server")]
//! The control plane on its secure defaults: HTTPS with a generated CA
//! whose certificate verifies for every name it should (and no other),
//! `--insecure-http` on loopback only, the plain agent listener serving the
//! agent protocol only, bring-your-own certificates, client certificates
//! from `k8s4r kubeconfig`, the admin kubeconfig (0600, still valid after a
//! restart), and an official Kubernetes client library (Python's) driven
//! from the same kubeconfig.

mod common;
mod server_util;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use server_util::{have_kubectl, server_bin, wait_for, Robot, Server};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const JOBS: &str = "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs";

/// `host:port` of a base URL.
fn addr_of(base: &str) -> &str {
    base.split_once("://").map_or(base, |(_, a)| a)
}

/// A rustls client trusting `roots`, presenting `identity` if given.
fn client_config(
    roots: &[CertificateDer<'static>],
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(k8s4r::server::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store);
    Arc::new(match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    })
}

/// GET `path` over TLS to `addr`, verifying the server as `name`: the raw
/// answer, or why the connection failed.
fn tls_get(addr: &str, name: &str, config: Arc<rustls::ClientConfig>, path: &str) -> Result<String, String> {
    let tcp = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let server_name = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(config, server_name).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let request = format!("GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    // The server may close without close_notify: what came counts.
    let read = tls.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply).into_owned();
    match read {
        _ if text.starts_with("HTTP/1.1 ") => Ok(text),
        Err(e) => Err(e.to_string()),
        Ok(_) => Err(format!("not an HTTP answer: {text:?}")),
    }
}

fn certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem).map(|c| c.unwrap()).collect()
}

/// The CA, client certificate and key of a kubeconfig file.
fn kubeconfig_parts(path: &Path) -> k8s4r::server::kubeconfig::Resolved {
    k8s4r::server::kubeconfig::load(path).unwrap()
}

fn identity(r: &k8s4r::server::kubeconfig::Resolved) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = certs(r.cert_pem.as_ref().expect("a client certificate"));
    let key = PrivateKeyDer::from_pem_slice(r.key_pem.as_ref().expect("a client key")).unwrap();
    (chain, key)
}

/// The generated CA of a running server (from its admin kubeconfig).
fn server_ca(s: &Server) -> Vec<CertificateDer<'static>> {
    certs(&kubeconfig_parts(&s.kubeconfig).ca_pem.expect("CA data"))
}

#[test]
fn the_certificate_verifies_for_localhost_loopback_and_tls_sans_only() {
    let s = Server::start_with(&["--tls-san", "k8s.example.test", "--tls-san", "10.9.8.7"]);
    assert!(s.base.starts_with("https://127.0.0.1:"), "{}", s.base);
    let config = client_config(&server_ca(&s), None);
    for name in ["localhost", "127.0.0.1", "k8s.example.test", "10.9.8.7"] {
        let reply =
            tls_get(addr_of(&s.base), name, config.clone(), "/version").unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(reply.starts_with("HTTP/1.1 200"), "{name}: {reply}");
    }
    let wrong = tls_get(addr_of(&s.base), "elsewhere.example.test", config.clone(), "/version");
    assert!(
        wrong.is_err(),
        "a name not in the certificate must not verify: {wrong:?}"
    );
    // A client that trusts another CA refuses the server.
    let other = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let stranger = client_config(&[other.der().clone()], None);
    assert!(tls_get(addr_of(&s.base), "localhost", stranger, "/version").is_err());
    // A bad --tls-san is an error naming the flag.
    let out = Command::new(server_bin())
        .args(["server", "--tls-san", "not a name"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-san"), "{out:?}");
}

#[test]
fn plain_http_to_the_https_port_gets_no_answer() {
    let s = Server::start();
    let mut tcp = std::net::TcpStream::connect(addr_of(&s.base)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    let _ = tcp.read_to_end(&mut reply);
    assert!(
        !String::from_utf8_lossy(&reply).contains("HTTP/1.1 200"),
        "plain HTTP must not be served on the HTTPS port: {:?}",
        String::from_utf8_lossy(&reply)
    );
    // The server is unharmed.
    assert_eq!(s.get("/version").status, 200);
}

#[test]
fn insecure_http_is_refused_off_loopback_and_serves_on_it() {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(server_bin())
        .args([
            "server",
            "--insecure-http",
            "--listen",
            "0.0.0.0:0",
            "--agent-listen",
            "127.0.0.1:0",
        ])
        .arg("--data")
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for("the server to refuse --insecure-http", Duration::from_secs(20), || {
        child.try_wait().unwrap()
    });
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--insecure-http") && stderr.contains("loopback"),
        "{stderr}"
    );

    let s = Server::start_with(&["--insecure-http"]);
    assert!(s.base.starts_with("http://127.0.0.1:"), "{}", s.base);
    assert_eq!(s.get("/version").status, 200);
    let r = s.send_json("POST", JOBS, &a_job("plain"));
    assert_eq!(r.status, 201, "{}", r.body);
    // Still authenticated: the harness's bearer token above; none, 401.
    let anonymous = s.request("GET", JOBS, "", None, &[("Authorization", "")]);
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    if have_kubectl() {
        // kubectl sends no credentials over plain HTTP: refused.
        let out = s.kubectl(&["get", "jobs"]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("credentials"));
    }
}

#[test]
fn the_agent_listener_serves_the_agent_protocol_only() {
    let s = Server::start();
    assert!(s.agent_base.starts_with("http://127.0.0.1:"), "{}", s.agent_base);
    let join = s.join_token();
    // Registration and polls: served on the agent listener.
    let mut robot = Robot::register(&s, &join, "r1", json!({}));
    assert!(robot.task_names().is_empty());
    for path in [
        JOBS,
        "/version",
        "/metrics",
        "/api",
        "/apis/",
        "/ui/",
        "/agent/v1/jointokens",
        "/openapi/v3",
    ] {
        let p = robot.prepare("GET", path, None);
        let headers: Vec<(&str, &str)> = p.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = s.agent_request("GET", path, "", None, &headers);
        assert_eq!(r.status, 404, "{path} on the agent listener: {}", r.body);
    }
    let r = s.agent_json("POST", JOBS, &a_job("sneaky"), &[]);
    assert_eq!(r.status, 404, "{}", r.body);
    let r = s.agent_json("POST", "/agent/v1/jointokens", &json!({}), &[]);
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(s.object("jobs", "sneaky").is_none());
    // HTTP/1.1 only: an HTTP/2 client (prior knowledge) gets no HTTP/2.
    let addr = s.agent_base.trim_start_matches("http://");
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 "),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    // The HTTPS listener serves the agent protocol too.
    let p = robot.prepare("GET", "/agent/v1/robots/r1/assignments?wait=0s", None);
    let headers: Vec<(&str, &str)> = p.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = s.request("GET", &p.target, "", None, &headers);
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A CA made with rcgen: (certificate, key).
fn test_ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    (params.self_signed(&key).unwrap(), key)
}

/// A leaf certificate signed by `ca`: (certificate PEM, key PEM).
fn test_leaf(
    ca: &(rcgen::Certificate, rcgen::KeyPair),
    sans: &[&str],
    cn: &str,
    org: Option<&str>,
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    if let Some(o) = org {
        params.distinguished_name.push(rcgen::DnType::OrganizationName, o);
    }
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, &ca.0, &ca.1).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[test]
fn bring_your_own_serving_certificate_and_client_ca() {
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| -> String {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let serving_ca = test_ca("my serving CA");
    let client_ca = test_ca("my client CA");
    let (leaf, leaf_key) = test_leaf(&serving_ca, &["127.0.0.1", "localhost"], "my-server", None, ServerAuth);
    // The chain file: the leaf, then the CA clients should trust.
    let chain = file("chain.pem", &format!("{leaf}{}", serving_ca.0.pem()));
    let key = file("key.pem", &leaf_key);
    let client_cas = file("client-ca.pem", &client_ca.0.pem());

    // Half of a pair is an error naming both flags.
    let out = Command::new(server_bin())
        .args(["server", "--listen", "127.0.0.1:0", "--agent-listen", "127.0.0.1:0"])
        .args(["--tls-cert-file", &chain, "--data"])
        .arg(dir.path().join("half"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--tls-cert-file") && err.contains("--tls-private-key-file"),
        "{err}"
    );

    let s = Server::start_with(&[
        "--tls-cert-file",
        &chain,
        "--tls-private-key-file",
        &key,
        "--client-ca-file",
        &client_cas,
    ]);
    // admin.kubeconfig trusts the chain's last certificate, and carries no
    // client certificate the server would refuse.
    let admin = kubeconfig_parts(&s.kubeconfig);
    assert_eq!(certs(admin.ca_pem.as_ref().unwrap()), [serving_ca.0.der().clone()]);
    assert!(admin.cert_pem.is_none(), "no certificate of the generated CA");
    let anonymous = client_config(&[serving_ca.0.der().clone()], None);
    let reply = tls_get(addr_of(&s.base), "localhost", anonymous, "/version").unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // A certificate from the operator's client CA is accepted...
    let (cert, cert_key) = test_leaf(&client_ca, &[], "byo-user", Some("k8s4r:admins"), ClientAuth);
    let mine = (
        certs(cert.as_bytes()),
        PrivateKeyDer::from_pem_slice(cert_key.as_bytes()).unwrap(),
    );
    let config = client_config(&[serving_ca.0.der().clone()], Some(mine));
    let reply = tls_get(addr_of(&s.base), "127.0.0.1", config, JOBS).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // ... one from the generated CA (which it replaces) is refused.
    let generated = std::process::Command::new(server_bin())
        .args([
            "kubeconfig",
            "--user",
            "old-admin",
            "--group",
            "system:masters",
            "--data",
        ])
        .arg(s.data.path())
        .output()
        .unwrap();
    assert!(generated.status.success(), "{generated:?}");
    let other = dir.path().join("generated.kubeconfig");
    std::fs::write(&other, &generated.stdout).unwrap();
    let config = client_config(&[serving_ca.0.der().clone()], Some(identity(&kubeconfig_parts(&other))));
    let refused = tls_get(addr_of(&s.base), "127.0.0.1", config, JOBS);
    assert!(refused.is_err(), "a client certificate from another CA: {refused:?}");
}

/// The subject of the client certificate in a kubeconfig: (CN, [O...]).
fn subject(r: &k8s4r::server::kubeconfig::Resolved) -> (String, Vec<String>) {
    let der = identity(r).0.remove(0);
    let user = k8s4r::server::tls::listener::cert_user(&der).expect("a CN");
    (user.0.name, user.0.groups)
}

#[test]
fn kubeconfig_issues_client_certificates_the_server_accepts() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let alice = dir.path().join("alice.kubeconfig");
    let out = Command::new(server_bin())
        .args([
            "kubeconfig",
            "--user",
            "alice",
            "--group",
            "k8s4r:viewers",
            "--group",
            "team-a",
        ])
        .args(["--server", &s.base, "-o"])
        .arg(&alice)
        .arg("--data")
        .arg(s.data.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&alice).unwrap().permissions().mode() & 0o777, 0o600);
    let parts = kubeconfig_parts(&alice);
    assert_eq!(parts.server, s.base);
    assert_eq!(
        subject(&parts),
        (
            "alice".to_string(),
            vec!["k8s4r:viewers".to_string(), "team-a".to_string()]
        )
    );
    // The server accepts it in the handshake and answers.
    let config = client_config(&server_ca(&s), Some(identity(&parts)));
    let reply = tls_get(addr_of(&s.base), "127.0.0.1", config, JOBS).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    if have_kubectl() {
        let out = s
            .kubectl_cmd()
            .env("KUBECONFIG", &alice)
            .args(["get", "jobs"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // The admin kubeconfig's certificate: admin in system:masters.
    let admin = kubeconfig_parts(&s.kubeconfig);
    assert_eq!(
        subject(&admin),
        ("admin".to_string(), vec!["system:masters".to_string()])
    );

    // Bad names are refused, naming the flag; no store is created by a
    // wrong --data.
    for (args, want) in [
        (vec!["--user", ""], "--user"),
        (vec!["--user", "a\u{7}b"], "control"),
        (vec!["--group", &"g".repeat(300)], "limit"),
    ] {
        let out = Command::new(server_bin())
            .arg("kubeconfig")
            .args(&args)
            .arg("--data")
            .arg(s.data.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let nowhere = dir.path().join("no-server-here");
    let out = Command::new(server_bin())
        .args(["kubeconfig", "--data"])
        .arg(&nowhere)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("k8s4r.db"), "{out:?}");
    assert!(!nowhere.exists(), "a wrong --data creates nothing");
}

#[test]
fn the_admin_kubeconfig_is_private_and_survives_a_restart() {
    let mut s = Server::start();
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&s.kubeconfig), 0o600);
    assert_eq!(
        s.kubeconfig,
        s.data.path().canonicalize().unwrap().join("admin.kubeconfig")
    );
    assert_eq!(mode(s.data.path()), 0o700, "the data directory holds the CA key");
    let before = kubeconfig_parts(&s.kubeconfig);
    let old = s.data.path().join("before-restart.kubeconfig");
    std::fs::copy(&s.kubeconfig, &old).unwrap();
    assert_eq!(s.send_json("POST", JOBS, &a_job("kept")).status, 201);

    s.restart();
    let after = kubeconfig_parts(&s.kubeconfig);
    assert_eq!(after.ca_pem, before.ca_pem, "the same CA after a restart");
    assert_eq!(mode(&s.kubeconfig), 0o600);
    // The old file's certificate is still accepted (the port changed, so
    // the new URL is given).
    let config = client_config(&certs(before.ca_pem.as_ref().unwrap()), Some(identity(&before)));
    let reply = tls_get(addr_of(&s.base), "127.0.0.1", config, &format!("{JOBS}/kept")).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    if have_kubectl() {
        let out = s
            .kubectl_cmd()
            .env("KUBECONFIG", &old)
            .args(["--server", &s.base, "get", "job", "kept"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // The k8s4r CLI talks through the kubeconfig too.
    let out = s.k8s4r_cmd().args(["token", "create"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = s
        .k8s4r_cmd()
        .env_remove("KUBECONFIG")
        .env("HOME", s.data.path())
        .args(["token", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no kubeconfig"),
        "{out:?}"
    );
}

fn a_job(name: &str) -> Value {
    json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job", "metadata": {"name": name},
        "spec": {"taskGroups": [{"name": "g", "tasks": [{"name": "t", "driver": "exec",
            "config": {"execConfig": {"command": "/bin/true"}}}]}]}})
}

/// The venv `.ci/install-tools.sh` makes with Kubernetes' Python client.
fn python_client() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME");
    let python = PathBuf::from(home).join(".cache/k8s4r/pyclient/bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import kubernetes"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} cannot import kubernetes: run .ci/install-tools.sh (make tools), which installs it",
        python.display()
    );
    python
}

const PYTHON_SCRIPT: &str = r#"
import json, sys
from kubernetes import client, config

config.load_kube_config(config_file=sys.argv[1])
api = client.CustomObjectsApi()
g, v, ns, plural = "robot.k8s4r.io", "v1alpha1", "default", "jobs"
job = json.loads(sys.argv[2])
created = api.create_namespaced_custom_object(g, v, ns, plural, job)
got = api.get_namespaced_custom_object(g, v, ns, plural, job["metadata"]["name"])
listed = api.list_namespaced_custom_object(g, v, ns, plural)
version = client.VersionApi().get_code()
print(json.dumps({
    "created": created["metadata"]["uid"],
    "got": got["metadata"]["uid"],
    "names": [j["metadata"]["name"] for j in listed["items"]],
    "gitVersion": version.git_version,
}))
"#;

#[test]
fn the_official_python_client_works_from_the_generated_kubeconfig() {
    let python = python_client();
    let s = Server::start();
    assert_eq!(s.send_json("POST", JOBS, &a_job("from-rust")).status, 201);
    let out = Command::new(python)
        .args(["-c", PYTHON_SCRIPT])
        .arg(&s.kubeconfig)
        .arg(a_job("from-python").to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stored = s.object("jobs", "from-python").expect("the job the client created");
    assert_eq!(seen["created"], stored["metadata"]["uid"]);
    assert_eq!(seen["got"], stored["metadata"]["uid"]);
    let mut names: Vec<&str> = seen["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["from-python", "from-rust"]);
    assert_eq!(seen["gitVersion"], s.get("/version").json()["gitVersion"]);
}

#[test]
fn replicas_on_one_etcd_share_the_ca_and_the_serving_certificate() {
    let etcd = server_util::etcd::Etcd::start();
    let a = Server::start_with(&["--etcd", &etcd.endpoints()]);
    let b = Server::start_with(&["--etcd", &etcd.endpoints(), "--tls-san", "replica-b.example.test"]);
    let (ka, kb) = (kubeconfig_parts(&a.kubeconfig), kubeconfig_parts(&b.kubeconfig));
    assert_eq!(ka.ca_pem, kb.ca_pem, "one CA for every replica");
    // Each replica accepts the other's admin certificate, and serves a
    // certificate that covers the names either wanted.
    for (server, creds) in [(&a, &kb), (&b, &ka)] {
        let config = client_config(&certs(creds.ca_pem.as_ref().unwrap()), Some(identity(creds)));
        let reply = tls_get(addr_of(&server.base), "127.0.0.1", config, JOBS).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
    let config = client_config(&certs(ka.ca_pem.as_ref().unwrap()), None);
    let reply = tls_get(addr_of(&b.base), "replica-b.example.test", config, "/version").unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}
