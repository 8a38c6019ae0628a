#![cfg(feature = "server")]
//! Who may use the Kubernetes API: anonymous requests get 401 outside the
//! health paths, each group gets exactly what its rules give (403 worded
//! as kube-apiserver words it), a robot token is never a user, a bad token
//! file stops the server, every mutating request (allowed or refused) is in
//! the audit log, and `kubectl auth can-i` / `whoami` answer from the same
//! rules.

mod common;
mod server_util;

use common::wait_for;
use serde_json::{json, Value};
use server_util::{have_kubectl, server_bin, Reply, Robot, Server};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const G: &str = "/apis/robot.k8s4r.io/v1alpha1";
const JOBS: &str = "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs";
const ROBOTS: &str = "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/robots";

const ADMIN: &str = "admin-token-0123456789abcdef";
/// The `--admin-token-file` token (user "admin", system:masters).
const ROOT: &str = "root-token-0123456789abcdef";
const OPERATOR: &str = "operator-token-0123456789abcdef";
const VIEWER: &str = "viewer-token-0123456789abcdef";
/// A user in no known group.
const NOBODY: &str = "nobody-token-0123456789abcdef";

/// A server knowing the four users of the tests, with `extra` flags. The
/// one place the tests' server arguments are built.
fn server(extra: &[&str]) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(
        &tokens,
        format!(
            "# token,user,uid,groups\n\
             {ADMIN},ada,1000,\"k8s4r:admins,team-a\"\n\
             {OPERATOR},olga,1001,k8s4r:operators\n\
             {VIEWER},vera,1002,k8s4r:viewers\n\
             {NOBODY},nobody,1003\n"
        ),
    )
    .unwrap();
    let root = dir.path().join("admin-token");
    std::fs::write(&root, format!("{ROOT}\n")).unwrap();
    let mut args = vec![
        "--token-auth-file",
        tokens.to_str().unwrap(),
        "--admin-token-file",
        root.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    (Server::start_with(&args), dir)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `method path` as the holder of `token` (None: anonymous), with a JSON
/// body if given.
fn call(s: &Server, token: Option<&str>, method: &str, path: &str, body: Option<&Value>) -> Reply {
    let auth = token.map(bearer);
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let bytes = body.map(|b| b.to_string().into_bytes());
    s.request(method, path, "application/json", bytes.as_deref(), &headers)
}

fn a_job(name: &str) -> Value {
    json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job", "metadata": {"name": name},
        "spec": {"taskGroups": [{"name": "g", "tasks": [{"name": "t", "driver": "exec",
            "config": {"execConfig": {"command": "/bin/true"}}}]}]}})
}

fn a_robot(name: &str) -> Value {
    json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Robot", "metadata": {"name": name}, "spec": {}})
}

/// (code, reason, message) of a Status answer.
fn status_of(r: &Reply) -> (u16, String, String) {
    let v = r.json();
    assert_eq!(v["kind"], "Status", "{}", r.body);
    (
        r.status,
        v["reason"].as_str().unwrap_or("").to_string(),
        v["message"].as_str().unwrap_or("").to_string(),
    )
}

#[test]
fn anonymous_requests_get_401_outside_the_health_paths() {
    let (s, _dir) = server(&[]);
    for path in [
        JOBS,
        &format!("{G}/tasks"),
        "/api/v1/namespaces/default/events",
        "/apis",
        "/api",
        G,
        "/openapi/v3",
        "/metrics",
        "/agent/v1/jointokens",
        "/nowhere",
    ] {
        let r = call(&s, None, "GET", path, None);
        let (code, reason, _) = status_of(&r);
        assert_eq!((code, reason.as_str()), (401, "Unauthorized"), "GET {path}: {}", r.body);
    }
    let r = call(&s, None, "POST", JOBS, Some(&a_job("anon")));
    assert_eq!(r.status, 401, "{}", r.body);
    // A token nobody has is no better than none.
    let r = call(&s, Some("not-a-token-anyone-has"), "GET", JOBS, None);
    assert_eq!(status_of(&r).0, 401);
    for path in ["/healthz", "/livez", "/readyz", "/version", "/livez/", "/version/"] {
        let r = call(&s, None, "GET", path, None);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    }
    // The robot channel authenticates itself: a registration without a
    // valid join token is refused by it, not for want of a user.
    let r = call(
        &s,
        None,
        "POST",
        "/agent/v1/register",
        Some(&json!({"joinToken": "x", "name": "r"})),
    );
    let (code, _, message) = status_of(&r);
    assert!((400..500).contains(&code), "{}", r.body);
    assert!(!message.contains("client certificate"), "{message}");
    let anonymous = status_of(&call(&s, None, "GET", JOBS, None)).2;
    assert!(
        anonymous.contains("client certificate or Authorization: Bearer"),
        "{anonymous}"
    );
    assert!(call(&s, Some(ADMIN), "GET", &format!("{JOBS}/anon"), None).status == 404);
}

#[test]
fn each_group_gets_what_its_rules_give() {
    let (s, _dir) = server(&[]);
    // Viewers read, logs included, and change nothing.
    let r = call(&s, Some(VIEWER), "POST", JOBS, Some(&a_job("v")));
    let (code, reason, message) = status_of(&r);
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        message,
        "jobs.robot.k8s4r.io is forbidden: User \"vera\" cannot create resource \"jobs\" \
         in API group \"robot.k8s4r.io\" in the namespace \"default\""
    );
    assert_eq!(r.json()["details"], json!({"group": "robot.k8s4r.io", "kind": "jobs"}));
    // Operators run Jobs.
    assert_eq!(call(&s, Some(OPERATOR), "POST", JOBS, Some(&a_job("work"))).status, 201);
    let job = format!("{JOBS}/work");
    for path in [
        JOBS,
        job.as_str(),
        &format!("{G}/tasks"),
        ROBOTS,
        "/api/v1/namespaces/default/events",
        "/metrics",
    ] {
        for token in [VIEWER, OPERATOR] {
            let r = call(&s, Some(token), "GET", path, None);
            assert_eq!(r.status, 200, "{token} GET {path}: {}", r.body);
        }
    }
    // Authorized, the log request reaches its handler (no such task: 404).
    let log = call(
        &s,
        Some(VIEWER),
        "GET",
        &format!("{G}/namespaces/default/tasks/none/log"),
        None,
    );
    assert_eq!(log.status, 404, "{}", log.body);
    let r = call(&s, Some(VIEWER), "DELETE", &job, None);
    let (code, _, message) = status_of(&r);
    assert_eq!(code, 403);
    assert!(
        message.starts_with("jobs.robot.k8s4r.io \"work\" is forbidden: User \"vera\" cannot delete"),
        "{message}"
    );
    let patch = s.request(
        "PATCH",
        &job,
        "application/merge-patch+json",
        Some(br#"{"metadata":{"labels":{"a":"b"}}}"#),
        &[("Authorization", &bearer(OPERATOR))],
    );
    assert_eq!(patch.status, 200, "{}", patch.body);
    // ... but no robots, join tokens or robot credentials.
    let r = call(&s, Some(OPERATOR), "POST", ROBOTS, Some(&a_robot("r1")));
    assert!(
        status_of(&r).2.contains("cannot create resource \"robots\""),
        "{}",
        r.body
    );
    for (method, path) in [
        ("POST", "/agent/v1/jointokens"),
        ("GET", "/agent/v1/jointokens"),
        ("DELETE", "/agent/v1/jointokens/0123456789abcdef"),
        ("DELETE", "/agent/v1/robottokens/r1"),
    ] {
        let r = call(
            &s,
            Some(OPERATOR),
            method,
            path,
            Some(&json!({})).filter(|_| method == "POST"),
        );
        let (code, reason, message) = status_of(&r);
        assert_eq!((code, reason.as_str()), (403, "Forbidden"), "{method} {path}");
        assert_eq!(
            message,
            format!(
                "forbidden: User \"olga\" cannot {} path \"{path}\"",
                method.to_lowercase()
            )
        );
    }
    assert_eq!(call(&s, Some(OPERATOR), "DELETE", &job, None).status, 200);
    // A user in no known group sees discovery and nothing else.
    assert_eq!(call(&s, Some(NOBODY), "GET", "/apis", None).status, 200);
    assert_eq!(call(&s, Some(NOBODY), "GET", G, None).status, 200);
    for path in [JOBS, "/metrics"] {
        assert_eq!(call(&s, Some(NOBODY), "GET", path, None).status, 403, "{path}");
    }
    // Admins, from the token file or --admin-token-file, do everything.
    for (token, name) in [(ADMIN, "by-ada"), (ROOT, "by-root")] {
        let t = call(&s, Some(token), "POST", "/agent/v1/jointokens", Some(&json!({})));
        assert_eq!(t.status, 200, "{}", t.body);
        assert_eq!(call(&s, Some(token), "POST", ROBOTS, Some(&a_robot(name))).status, 201);
        assert_eq!(
            call(&s, Some(token), "DELETE", &format!("{ROBOTS}/{name}"), None).status,
            200
        );
    }
}

/// Robots authenticate by signature on their own channel only: neither a
/// robot's signed request nor a bearer token of an agent from before the
/// signed channel (`k8s4r-robot-...`) is a user of the Kubernetes API.
#[test]
fn a_robot_is_never_a_user() {
    let (s, _dir) = server(&[]);
    let t = call(&s, Some(ADMIN), "POST", "/agent/v1/jointokens", Some(&json!({})));
    let join = t.json()["token"].as_str().unwrap().to_string();
    let mut robot = Robot::register(&s, &join, "bot", json!({}));
    let old_robot_token = "k8s4r-robot-0123456789abcdef0123456789abcdef";
    for (method, path, body) in [
        ("GET", JOBS, None),
        ("POST", JOBS, Some(a_job("sneaky"))),
        ("POST", "/agent/v1/jointokens", Some(json!({}))),
        (
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            Some(json!({})),
        ),
    ] {
        let r = call(&s, Some(old_robot_token), method, path, body.as_ref());
        let (code, _, message) = status_of(&r);
        assert_eq!(code, 403, "{method} {path}");
        assert!(message.contains("robot token"), "{message}");
        let signed = robot.prepare(method, path, body.as_ref());
        let headers: Vec<(&str, &str)> = signed.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = s.request(method, path, "application/json", Some(&signed.body), &headers);
        assert_eq!(r.status, 401, "a robot's signature on {method} {path}: {}", r.body);
    }
    assert_eq!(
        call(&s, Some(ADMIN), "GET", &format!("{JOBS}/sneaky"), None).status,
        404
    );
}

/// Start the server on a token file; it must exit with an error naming the
/// file and line.
fn refused_start(tokens: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.csv");
    std::fs::write(&file, tokens).unwrap();
    let mut child = Command::new(server_bin())
        .args(["server", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .arg("--token-auth-file")
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for("the server to refuse its token file", Duration::from_secs(20), || {
        child.try_wait().unwrap()
    });
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("listening on"), "{stdout}");
    assert!(!status.success());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
    stderr
}

#[test]
fn a_malformed_token_file_stops_the_server() {
    let err = refused_start(&format!("{ADMIN},ada,1,k8s4r:admins\n{VIEWER},vera\n"));
    assert!(err.contains("line 2: 2 field(s); need at least 3"), "{err}");
    let err = refused_start(&format!("{ADMIN},ada,1\nshort,bob,2,k8s4r:viewers\n"));
    assert!(err.contains("line 2: token (field 1): shorter than 16"), "{err}");
    let err = refused_start(&format!("{ADMIN},ada,1,\"k8s4r:admins\n"));
    assert!(err.contains("line 1: field 4: a quote is not closed"), "{err}");
}

fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn mutating_requests_are_audited_allowed_or_not() {
    use std::os::unix::fs::PermissionsExt;
    let log_dir = tempfile::tempdir().unwrap();
    let log: PathBuf = log_dir.path().join("audit.log");
    let (s, _dir) = server(&["--audit-log-path", log.to_str().unwrap()]);
    assert_eq!(
        call(&s, Some(OPERATOR), "POST", JOBS, Some(&a_job("audited"))).status,
        201
    );
    assert_eq!(call(&s, Some(VIEWER), "GET", JOBS, None).status, 200);
    assert_eq!(
        call(&s, Some(OPERATOR), "DELETE", &format!("{JOBS}/audited"), None).status,
        200
    );
    assert_eq!(call(&s, Some(VIEWER), "POST", JOBS, Some(&a_job("nope"))).status, 403);
    assert_eq!(call(&s, None, "DELETE", &format!("{JOBS}/x"), None).status, 401);
    assert_eq!(
        call(&s, Some(ADMIN), "POST", "/agent/v1/jointokens", Some(&json!({}))).status,
        200
    );
    // A review changes nothing: not audited.
    let review = json!({"spec": {"resourceAttributes": {"verb": "get", "resource": "jobs"}}});
    let path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
    assert_eq!(call(&s, Some(VIEWER), "POST", path, Some(&review)).status, 201);

    // The answer is written after the line: everything is there now.
    let lines = audit_lines(&log);
    let summary: Vec<(String, String, String, String, u64)> = lines
        .iter()
        .map(|e| {
            (
                e["user"]["username"].as_str().unwrap().to_string(),
                e["verb"].as_str().unwrap().to_string(),
                e["objectRef"]["resource"].as_str().unwrap_or("").to_string(),
                e["objectRef"]["name"].as_str().unwrap_or("").to_string(),
                e["responseStatus"]["code"].as_u64().unwrap(),
            )
        })
        .collect();
    let row = |u: &str, v: &str, r: &str, n: &str, c: u64| (u.into(), v.into(), r.into(), n.into(), c);
    assert_eq!(
        summary,
        vec![
            row("olga", "create", "jobs", "", 201),
            row("olga", "delete", "jobs", "audited", 200),
            row("vera", "create", "jobs", "", 403),
            row("system:anonymous", "delete", "jobs", "x", 401),
            row("ada", "post", "", "", 200),
        ]
    );
    let first = &lines[0];
    assert_eq!(first["kind"], "Event");
    assert_eq!(first["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(first["level"], "Metadata");
    assert_eq!(first["stage"], "ResponseComplete");
    assert_eq!(first["requestURI"], JOBS);
    assert_eq!(
        first["user"]["groups"],
        json!(["k8s4r:operators", "system:authenticated"])
    );
    assert_eq!(first["sourceIPs"], json!(["127.0.0.1"]));
    assert_eq!(first["objectRef"]["apiGroup"], "robot.k8s4r.io");
    assert_eq!(first["objectRef"]["namespace"], "default");
    assert!(first["userAgent"].is_string(), "{first}");
    assert!(first["requestReceivedTimestamp"].as_str().unwrap().ends_with('Z'));
    let ids: std::collections::HashSet<&str> = lines.iter().map(|e| e["auditID"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), lines.len(), "every event has its own auditID");
    assert_eq!(lines[4]["requestURI"], "/agent/v1/jointokens");
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let metrics = call(&s, Some(VIEWER), "GET", "/metrics", None);
    assert!(
        metrics.body.contains("k8s4r_audit_events_total 5\n"),
        "{}",
        metrics.body
    );
}

#[test]
fn a_failing_audit_log_is_counted_not_fatal() {
    // /dev/full refuses every write (ENOSPC), as a full disk would.
    let (s, _dir) = server(&["--audit-log-path", "/dev/full"]);
    for name in ["a", "b"] {
        assert_eq!(call(&s, Some(OPERATOR), "POST", JOBS, Some(&a_job(name))).status, 201);
    }
    let metrics = call(&s, Some(VIEWER), "GET", "/metrics", None);
    assert!(
        metrics.body.contains("k8s4r_audit_write_failures_total 2\n"),
        "{}",
        metrics.body
    );
    assert!(metrics.body.contains("k8s4r_panics_total 0\n"), "{}", metrics.body);
}

#[test]
fn reviews_answer_from_the_same_rules() {
    let (s, _dir) = server(&[]);
    let path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
    let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"namespace": "default", "verb": "create",
                 "group": "robot.k8s4r.io", "resource": "jobs"}}});
    for (token, allowed) in [(VIEWER, false), (OPERATOR, true), (ADMIN, true), (NOBODY, false)] {
        let r = call(&s, Some(token), "POST", path, Some(&review));
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.json()["status"]["allowed"], allowed, "{token}: {}", r.body);
        // ... and the API agrees.
        let create = call(&s, Some(token), "POST", JOBS, Some(&a_job(&token[..4])));
        assert_eq!(create.status == 201, allowed, "{token}: {}", create.body);
    }
    let r = call(&s, Some(OPERATOR), "POST", path, Some(&json!({"spec": {}})));
    assert_eq!(status_of(&r).0, 400);
    let who = call(
        &s,
        Some(ADMIN),
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        Some(&json!({})),
    );
    assert_eq!(who.status, 201, "{}", who.body);
    assert_eq!(
        who.json()["status"]["userInfo"],
        json!({"username": "ada", "groups": ["k8s4r:admins", "team-a", "system:authenticated"]})
    );
    // Discovery lists both groups, as kubectl looks them up.
    let groups = call(&s, Some(NOBODY), "GET", "/apis", None).json();
    let names: Vec<&str> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"authorization.k8s.io") && names.contains(&"authentication.k8s.io"),
        "{names:?}"
    );
    for (gv, plural) in [
        ("authorization.k8s.io/v1", "selfsubjectaccessreviews"),
        ("authentication.k8s.io/v1", "selfsubjectreviews"),
    ] {
        let list = call(&s, Some(NOBODY), "GET", &format!("/apis/{gv}"), None);
        assert_eq!(list.status, 200, "{}", list.body);
        assert_eq!(list.json()["resources"][0]["name"], plural);
        let slashed = call(&s, Some(NOBODY), "GET", &format!("/apis/{gv}/"), None);
        assert_eq!(slashed.body, list.body);
    }
}

/// kubectl for the holder of `token`. kubectl sends a bearer token only
/// over https: on a plain-http server this returns None (the caller skips,
/// loudly). Certificates are not what these tests check, so the server's
/// is not verified here.
fn kubectl_as(s: &Server, token: &str, cache: &Path) -> Option<Command> {
    if !s.base.starts_with("https://") {
        eprintln!("SKIP: {} is plain http, where kubectl sends no token", s.base);
        return None;
    }
    let config = cache.join(format!("kubeconfig-{}", &token[..4]));
    std::fs::write(
        &config,
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters: [{{name: k, cluster: {{server: \"{}\", insecure-skip-tls-verify: true}}}}]\n\
             users: [{{name: u, user: {{token: \"{token}\"}}}}]\n\
             contexts: [{{name: c, context: {{cluster: k, user: u, namespace: default}}}}]\n\
             current-context: c\n",
            s.base
        ),
    )
    .unwrap();
    let mut c = Command::new("kubectl");
    c.env("KUBECONFIG", &config)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .arg("--cache-dir")
        .arg(cache.join("cache"))
        .arg("--request-timeout=30s");
    Some(c)
}

#[test]
fn kubectl_auth_can_i_and_whoami() {
    if !have_kubectl() {
        return;
    }
    let (s, dir) = server(&[]);
    for (token, want) in [(VIEWER, "no"), (OPERATOR, "yes"), (ADMIN, "yes")] {
        let Some(mut c) = kubectl_as(&s, token, dir.path()) else {
            return;
        };
        let out = c
            .args(["auth", "can-i", "create", "jobs.robot.k8s4r.io"])
            .output()
            .unwrap();
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(answer, want, "{token}: {}", String::from_utf8_lossy(&out.stderr));
        // kubectl's exit code says it too.
        assert_eq!(out.status.success(), want == "yes");
    }
    let Some(mut c) = kubectl_as(&s, VIEWER, dir.path()) else {
        return;
    };
    let out = c
        .args(["auth", "can-i", "get", "tasks", "--subresource=log"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "yes");
    let Some(mut c) = kubectl_as(&s, OPERATOR, dir.path()) else {
        return;
    };
    let out = c.args(["auth", "whoami", "-o", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"]["userInfo"]["username"], "olga");
    assert_eq!(
        v["status"]["userInfo"]["groups"],
        json!(["k8s4r:operators", "system:authenticated"])
    );
}
