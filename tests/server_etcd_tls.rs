#![cfg(feature = "server")]
//! The control plane on an etcd that serves clients over TLS and requires
//! their certificates (`--client-cert-auth`), as a production etcd does:
//! with kube-apiserver's `--etcd-cafile`, `--etcd-certfile` and
//! `--etcd-keyfile` the real server keeps its objects there across restarts
//! and `k8s4r migrate` moves a SQLite fleet there; without the client
//! certificate, with the wrong CA, or without any CA it stops at once with
//! an error that says which, instead of hanging or trusting anyone.

mod common;
mod server_util;

use serde_json::{json, Value};
use server_util::etcd::{Etcd, Pki};
use server_util::{server_bin, server_refuses, Server};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// How long a server refusing its etcd may take to say so: the connect
/// timeout and one request deadline, with room for a slow machine.
const GIVE_UP: Duration = Duration::from_secs(30);

fn jobs_path() -> &'static str {
    "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs"
}

fn job(name: &str) -> Value {
    json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job", "metadata": {"name": name},
           "spec": {"type": "batch", "taskGroups": [{"name": "g", "count": 1,
             "tasks": [{"name": "main", "driver": "exec", "config": {"execConfig": {"command": "/bin/true"}}}]}]}})
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// `--etcd URL` with the CA and the client certificate: all three flags.
fn tls_args<'a>(url: &'a str, ca: &'a Path, pki: &'a Pki) -> Vec<&'a str> {
    vec![
        "--etcd",
        url,
        "--etcd-cafile",
        path(ca),
        "--etcd-certfile",
        path(&pki.client_cert),
        "--etcd-keyfile",
        path(&pki.client_key),
    ]
}

#[test]
fn the_server_keeps_its_objects_in_etcd_over_tls_with_a_client_certificate() {
    let pki = Arc::new(Pki::generate());
    let etcd = Etcd::start_tls(pki.clone());
    let url = etcd.endpoints();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let mut s = Server::start_with(&tls_args(&url, &pki.ca, &pki));
    let r = s.send_json("POST", jobs_path(), &job("over-tls"));
    assert_eq!(r.status, 201, "{}", r.body);
    let uid = r.json()["metadata"]["uid"].clone();
    assert_eq!(
        s.object("jobs", "over-tls").expect("job read back")["metadata"]["uid"],
        uid
    );
    // It is in etcd itself, under the key layout of kube-apiserver.
    let stored: Value = serde_json::from_slice(&etcd.value("/k8s4r/jobs/default/over-tls").expect("the Job in etcd"))
        .expect("JSON in etcd");
    assert_eq!(stored["metadata"]["uid"], uid);

    s.restart();
    assert_eq!(
        s.object("jobs", "over-tls").expect("job after a restart")["metadata"]["uid"],
        uid
    );
}

#[test]
fn without_a_client_certificate_etcd_refuses_and_the_server_says_so() {
    let pki = Arc::new(Pki::generate());
    let etcd = Etcd::start_tls(pki.clone());
    let url = etcd.endpoints();
    let (code, err) = server_refuses(&["--etcd", &url, "--etcd-cafile", path(&pki.ca)], GIVE_UP);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("connecting to etcd") && err.contains(&url), "{err}");
    // etcd's alert (BadCertificate from Go's TLS, CertificateRequired
    // from others), and what would help.
    assert!(err.contains("received fatal alert"), "etcd's reason: {err}");
    assert!(
        err.contains("etcd refused this client") && err.contains("--etcd-certfile and --etcd-keyfile"),
        "what would help: {err}"
    );
}

#[test]
fn an_etcd_certificate_from_another_ca_is_refused() {
    let pki = Arc::new(Pki::generate());
    let etcd = Etcd::start_tls(pki.clone());
    let url = etcd.endpoints();
    let (code, err) = server_refuses(&tls_args(&url, &pki.other_ca, &pki), GIVE_UP);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&url), "{err}");
    assert!(err.contains("invalid peer certificate: UnknownIssuer"), "{err}");
    assert!(
        err.contains("does not check out against --etcd-cafile"),
        "what would help: {err}"
    );
}

#[test]
fn https_to_a_member_serving_plain_http_is_refused_clearly() {
    let pki = Pki::generate();
    let plain = Etcd::start();
    let wrong = plain.endpoints().replace("http://", "https://");
    let (code, err) = server_refuses(&tls_args(&wrong, &pki.ca, &pki), GIVE_UP);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&wrong) && err.contains("is this member serving TLS?"),
        "{err}"
    );
}

#[test]
fn mistakes_in_the_etcd_flags_are_refused_before_connecting() {
    let pki = Pki::generate();
    let (ca, cert, key) = (path(&pki.ca), path(&pki.client_cert), path(&pki.client_key));
    // Nothing listens here: each mistake is found before any connection.
    let https = "https://127.0.0.1:9";
    let cases: [(&[&str], i32, &str); 7] = [
        (&["--etcd", https], 1, "https:// etcd endpoints need --etcd-cafile"),
        (
            &["--etcd", https, "--etcd-cafile", ca, "--etcd-certfile", cert],
            1,
            "--etcd-certfile needs --etcd-keyfile",
        ),
        (
            &["--etcd", https, "--etcd-cafile", ca, "--etcd-keyfile", key],
            1,
            "--etcd-keyfile needs --etcd-certfile",
        ),
        (
            &["--etcd", https, "--etcd-cafile", "/nonexistent/ca.pem"],
            1,
            "--etcd-cafile /nonexistent/ca.pem: No such file",
        ),
        (
            &["--etcd", "http://127.0.0.1:9,https://127.0.0.1:9", "--etcd-cafile", ca],
            1,
            "mix http:// and https://",
        ),
        (
            &["--etcd", "http://127.0.0.1:9", "--etcd-cafile", ca],
            1,
            "--etcd-cafile is for https:// etcd endpoints",
        ),
        (&["--etcd-cafile", ca], 2, "--etcd-cafile needs --etcd"),
    ];
    for (args, want_code, want) in cases {
        let (code, err) = server_refuses(args, GIVE_UP);
        assert_eq!(code, Some(want_code), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?} must say {want:?}: {err}");
    }
}

#[test]
fn migrate_moves_a_sqlite_fleet_into_etcd_over_tls() {
    let pki = Arc::new(Pki::generate());
    let etcd = Etcd::start_tls(pki.clone());
    let url = etcd.endpoints();
    let mut old = Server::start();
    let r = old.send_json("POST", jobs_path(), &job("moved"));
    assert_eq!(r.status, 201, "{}", r.body);
    let uid = r.json()["metadata"]["uid"].clone();
    old.stop();

    let migrate = |args: &[&str]| {
        Command::new(server_bin())
            .args(["migrate", "--from-data", path(old.data.path()), "--to-etcd", &url])
            .args(args)
            .output()
            .expect("run k8s4r migrate")
    };
    let refused = migrate(&[]);
    assert_eq!(refused.status.code(), Some(1));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("need --etcd-cafile"), "{said}");

    let tls = tls_args(&url, &pki.ca, &pki);
    let out = migrate(&tls[2..]);
    assert!(
        out.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = Server::start_with(&tls);
    assert_eq!(new.object("jobs", "moved").expect("job moved")["metadata"]["uid"], uid);
}
