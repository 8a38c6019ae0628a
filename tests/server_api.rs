#![cfg(feature = "server")]
//! The Kubernetes-compatible API over raw HTTP: discovery, OpenAPI, CRUD
//! semantics (conflicts, validation, patch, status subresource), selectors
//! and paging, Table, watch resume and expiry, hostile input, restart.

mod common;
mod server_util;

use serde_json::{json, Value};
use server_util::Server;
use std::time::Duration;

const G: &str = "/apis/robot.k8s4r.io/v1alpha1";

fn robots() -> String {
    format!("{G}/namespaces/default/robots")
}

fn robot(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Robot",
           "metadata": {"name": name, "labels": labels}, "spec": {"description": name}})
}

fn events(body: &str) -> Vec<(String, String, String)> {
    body.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("watch line is not JSON ({e}): {l}"));
            (
                v["type"].as_str().unwrap().to_string(),
                v["object"]["metadata"]["name"].as_str().unwrap_or("").to_string(),
                v["object"]["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

#[test]
fn discovery_and_openapi() {
    let s = Server::start();
    assert_eq!(s.get("/version").json()["major"], "1");
    let groups = s.get("/apis").json();
    assert_eq!(groups["groups"][0]["name"], "robot.k8s4r.io");
    let rl = s.get(G).json();
    let jobs = rl["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "jobs")
        .unwrap()
        .clone();
    assert_eq!(jobs["kind"], "Job");
    assert_eq!(jobs["shortNames"], json!(["rjob"]));
    assert!(jobs["verbs"].as_array().unwrap().contains(&json!("watch")));
    assert!(rl["resources"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == "tasks/status"));
    let root = s.get("/openapi/v3").json();
    let url = root["paths"]["apis/robot.k8s4r.io/v1alpha1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_string();
    let doc = s.get(&url).json();
    let patch = &doc["paths"]["/apis/robot.k8s4r.io/v1alpha1/namespaces/{namespace}/jobs/{name}"]["patch"];
    assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Job");
    assert!(patch["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "fieldValidation"));
    assert!(patch["requestBody"]["content"]
        .get("application/strategic-merge-patch+json")
        .is_none());
    let nf = s.get("/apis/robot.k8s4r.io/v1alpha1/namespaces/default/widgets");
    assert_eq!(nf.status, 404);
    assert_eq!(nf.json()["kind"], "Status");
}

#[test]
fn crud_conflicts_patch_and_status() {
    let s = Server::start();
    let c = s.send_json("POST", &robots(), &robot("r1", json!({"a": "1"})));
    assert_eq!(c.status, 201, "{}", c.body);
    let created = c.json();
    let rv1 = created["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    assert_eq!(created["metadata"]["generation"], 1);
    assert!(created["metadata"]["uid"].as_str().unwrap().len() == 36);
    let dup = s.send_json("POST", &robots(), &robot("r1", json!({})));
    assert_eq!(
        (dup.status, dup.json()["reason"].clone()),
        (409, json!("AlreadyExists"))
    );

    // Update with the current resourceVersion, then with the stale one: 409.
    let mut body = created.clone();
    body["spec"]["description"] = json!("changed");
    let u = s.send_json("PUT", &format!("{}/r1", robots()), &body);
    assert_eq!(u.status, 200, "{}", u.body);
    assert_eq!(u.json()["metadata"]["generation"], 2, "spec change bumps generation");
    body["spec"]["description"] = json!("lost update");
    assert_eq!(body["metadata"]["resourceVersion"], json!(rv1));
    let stale = s.send_json("PUT", &format!("{}/r1", robots()), &body);
    assert_eq!(stale.status, 409, "{}", stale.body);
    let st = stale.json();
    assert_eq!(st["reason"], "Conflict");
    assert!(st["message"].as_str().unwrap().contains("the object has been modified"));
    assert_eq!(s.object("robots", "r1").unwrap()["spec"]["description"], "changed");

    // Merge patch: null deletes, resourceVersion in a patch is a precondition.
    let p = s.request(
        "PATCH",
        &format!("{}/r1", robots()),
        "application/merge-patch+json",
        Some(br#"{"metadata":{"labels":{"a":null,"b":"2"}}}"#),
        &[],
    );
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(p.json()["metadata"]["labels"], json!({"b": "2"}));
    let pinned = format!(r#"{{"metadata":{{"resourceVersion":"{rv1}"}},"spec":{{"description":"x"}}}}"#);
    let p = s.request(
        "PATCH",
        &format!("{}/r1", robots()),
        "application/merge-patch+json",
        Some(pinned.as_bytes()),
        &[],
    );
    assert_eq!(p.status, 409);
    let p = s.request(
        "PATCH",
        &format!("{}/r1", robots()),
        "application/strategic-merge-patch+json",
        Some(b"{}"),
        &[],
    );
    assert_eq!(
        (p.status, p.json()["reason"].clone()),
        (415, json!("UnsupportedMediaType"))
    );

    // The main resource ignores status; /status changes only status.
    let mut with_status = s.object("robots", "r1").unwrap();
    with_status["status"] = json!({"phase": "Online"});
    with_status["spec"]["description"] = json!("via status");
    let u = s.send_json("PUT", &format!("{}/r1/status", robots()), &with_status);
    assert_eq!(u.status, 200, "{}", u.body);
    let after = u.json();
    assert_eq!(after["status"]["phase"], "Online");
    assert_eq!(
        after["spec"]["description"], "changed",
        "status update leaves spec alone"
    );
    let mut main = after.clone();
    main["status"] = json!({"phase": "Offline"});
    let u = s.send_json("PUT", &format!("{}/r1", robots()), &main).json();
    assert_eq!(u["status"]["phase"], "Online", "main update leaves status alone");
    assert_eq!(
        u["metadata"]["resourceVersion"], after["metadata"]["resourceVersion"],
        "no-op update writes nothing"
    );
    let ps = s.request(
        "PATCH",
        &format!("{}/r1/status", robots()),
        "application/merge-patch+json",
        Some(br#"{"status":{"message":"hi"}}"#),
        &[],
    );
    let status = &ps.json()["status"];
    assert_eq!((&status["phase"], &status["message"]), (&json!("Online"), &json!("hi")));
    assert_eq!(status["conditions"][0]["type"], "Ready", "derived from the phase");
    assert_eq!(status["conditions"][0]["status"], "True");

    // Delete with a stale precondition, then for real.
    let d = s.send_json(
        "DELETE",
        &format!("{}/r1", robots()),
        &json!({"preconditions": {"resourceVersion": rv1}}),
    );
    assert_eq!(d.status, 409);
    let d = s.send_json(
        "DELETE",
        &format!("{}/r1", robots()),
        &json!({"propagationPolicy": "Background"}),
    );
    assert_eq!(d.status, 200, "{}", d.body);
    assert_eq!(s.get(&format!("{}/r1", robots())).status, 404);
}

#[test]
fn validation_errors_and_hostile_input() {
    let s = Server::start();
    let jobs = format!("{G}/namespaces/default/jobs");
    let job = json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job", "metadata": {"name": "bad"},
        "spec": {"taskGroups": [{"name": "g", "count": 1,
            "network": {"upstreams": [
                {"name": "a", "localPort": 1000, "upstream": "a:1", "tls": false},
                {"name": "b", "localPort": 70000, "upstream": "b:1", "tls": false}]},
            "tasks": [{"name": "t", "driver": "nope", "config": {"execConfig": {"command": "/bin/true"}}}]}]}});
    let r = s.send_json("POST", &jobs, &job);
    assert_eq!(r.status, 422, "{}", r.body);
    let st = r.json();
    assert_eq!(
        (st["kind"].as_str(), st["reason"].as_str()),
        (Some("Status"), Some("Invalid"))
    );
    let fields: Vec<&str> = st["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"spec.taskGroups[0].network.upstreams[1].localPort"),
        "{fields:?}"
    );
    assert!(fields.contains(&"spec.taskGroups[0].tasks[0].driver"), "{fields:?}");
    assert_eq!(st["details"]["kind"], "Job");
    assert_eq!(st["details"]["name"], "bad");

    // A wrong type names its field too.
    let r = s.send_json("POST", &robots(), &json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Robot", "metadata": {"name": "x"}, "spec": {"labels": [1]}}));
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.json()["details"]["causes"][0]["field"], "spec.labels");

    // Unknown fields: a Warning header by default, an error under Strict.
    let mut r1 = robot("w", json!({}));
    r1["spec"]["foo"] = json!(1);
    let r = s.send_json("POST", &robots(), &r1);
    assert_eq!(r.status, 201);
    assert_eq!(r.warnings, vec![r#"299 - "unknown field \"spec.foo\"""#.to_string()]);
    assert!(r.json()["spec"].get("foo").is_none());
    r1["metadata"]["name"] = json!("w2");
    let r = s.send_json("POST", &format!("{}?fieldValidation=Strict", robots()), &r1);
    assert_eq!(r.status, 400);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("strict decoding error: unknown field \"spec.foo\""));

    // Garbage never crashes the server: 4xx Status every time.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("application/json", b"{not json".to_vec()),
        ("application/json", vec![0xff, 0xfe, 0x7b]),
        ("application/json", b"[1,2,3]".to_vec()),
        ("application/json", b"\"just a string\"".to_vec()),
        (
            "application/json",
            br#"{"apiVersion":"robot.k8s4r.io/v1alpha1","kind":"Job","metadata":{"name":"j"},"spec":5}"#.to_vec(),
        ),
        (
            "application/json",
            br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"}}"#.to_vec(),
        ),
        ("application/yaml", b"a: [unclosed".to_vec()),
        ("application/yaml", vec![0xc3, 0x28]),
        ("application/json", Vec::new()),
    ];
    for (ct, body) in cases {
        let r = s.request("POST", &jobs, ct, Some(&body), &[]);
        assert!(
            (400..500).contains(&r.status),
            "{:?} -> {} {}",
            String::from_utf8_lossy(&body),
            r.status,
            r.body
        );
        assert_eq!(r.json()["kind"], "Status", "{}", r.body);
    }
    // A body over the limit is refused from its Content-Length, before it
    // is read (raw TCP: a client still sending would race the answer).
    let reply = s.raw(&format!(
        "POST {jobs} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        4 << 20
    ));
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("RequestEntityTooLarge"), "{reply}");
    let r = s.get(&format!("{}?labelSelector=a%20in%20(b", robots()));
    assert_eq!(r.status, 400);
    let r = s.get(&format!("{}?fieldSelector=spec.nope%3Dx", robots()));
    assert_eq!(r.status, 400);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("field label not supported"));
    let r = s.get(&format!("{}?watch=1&resourceVersion=banana", robots()));
    assert_eq!(r.status, 400);

    // The agent API meets the same hostility with 4xx Statuses too.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let join = s.join_token();
    let hostile: [(&str, &[u8]); 8] = [
        ("/agent/v1/register", b"{"),
        ("/agent/v1/register", br#"{"joinToken": 7, "name": "r"}"#),
        ("/agent/v1/register", b"\xff\xfe{}"),
        ("/agent/v1/register", deep.as_bytes()),
        ("/agent/v1/register", br#"{"joinToken": "nope", "name": "../etc"}"#),
        ("/agent/v1/robots/x/status", br#"{"tasks": "no"}"#),
        ("/agent/v1/robots/..%2F..%2Fetc/status", b"{}"),
        ("/agent/v1/robots/x/logs", deep.as_bytes()),
    ];
    for (path, body) in hostile {
        let r = s.agent_request("POST", path, "application/json", Some(body), &[]);
        assert!((400..500).contains(&r.status), "POST {path}: {} {}", r.status, r.body);
        assert_eq!(r.json()["kind"], "Status", "POST {path}: {}", r.body);
    }
    let (_, r) = server_util::Robot::try_register(&s, &join, "../etc", json!({}));
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("name"), "the error names the field: {}", r.body);
    assert_eq!(s.get("/version").status, 200, "still serving");
    assert_eq!(s.panics(), 0, "hostile input made the server panic");
}

#[test]
fn selectors_paging_and_tables() {
    let s = Server::start();
    for (i, zone) in ["a", "b", "a", "c", "a"].iter().enumerate() {
        let r = s.send_json("POST", &robots(), &robot(&format!("r{i}"), json!({"zone": zone})));
        assert_eq!(r.status, 201);
    }
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&s.list("robots", "?labelSelector=zone%3Da")), ["r0", "r2", "r4"]);
    assert_eq!(
        names(&s.list("robots", "?labelSelector=zone%20notin%20(a)")),
        ["r1", "r3"]
    );
    assert_eq!(names(&s.list("robots", "?fieldSelector=metadata.name%3Dr3")), ["r3"]);
    assert_eq!(
        names(&s.list(
            "robots",
            "?fieldSelector=metadata.name!%3Dr3,metadata.namespace%3Ddefault"
        ))
        .len(),
        4
    );
    // limit/continue walks everything exactly once.
    let mut seen = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let page = s.list("robots", &format!("?limit=2&continue={token}"));
        assert!(page["items"].as_array().unwrap().len() <= 2);
        seen.extend(names(&page));
        match page["metadata"]["continue"].as_str() {
            Some(t) => token = t.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, ["r0", "r1", "r2", "r3", "r4"]);
    let all = s.get(&format!("{G}/robots"));
    assert_eq!(names(&all.json()).len(), 5, "cluster-wide list");
    assert_eq!(all.json()["kind"], "RobotList");

    let t = s.request(
        "GET",
        &robots(),
        "",
        None,
        &[(
            "Accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )],
    );
    assert!(t.content_type.contains("as=Table"), "{}", t.content_type);
    let t = t.json();
    assert_eq!(t["kind"], "Table");
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(&cols[..5], ["Name", "Phase", "Hostname", "Last-Heartbeat", "Age"]);
    assert_eq!(t["rows"].as_array().unwrap().len(), 5);
    assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(t["rows"][0]["object"]["metadata"]["namespace"], "default");
    assert!(t["metadata"]["resourceVersion"].as_str().is_some());
}

/// A watch of the robots with `query`; each call gives its next event as
/// "TYPE name".
fn watch_robots(s: &Server, query: &str) -> impl Fn() -> String {
    let rx = s.stream(&format!("{}?watch=true&timeoutSeconds=10&{query}", robots()));
    move || {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("watch event within 10 s");
        let e = events(&line).remove(0);
        format!("{} {}", e.0, e.1)
    }
}

#[test]
fn watch_resumes_and_expires() {
    let s = Server::start_with(&["--watch-history", "5"]);
    let mut revs = Vec::new();
    for i in 0..3 {
        let r = s.send_json("POST", &robots(), &robot(&format!("r{i}"), json!({})));
        revs.push(r.json()["metadata"]["resourceVersion"].as_str().unwrap().to_string());
    }
    // Resume after r0: r1 and r2 are replayed, then the stream times out.
    let r = s.get(&format!(
        "{}?watch=1&resourceVersion={}&timeoutSeconds=1",
        robots(),
        revs[0]
    ));
    assert_eq!(r.status, 200);
    let ev = events(&r.body);
    assert_eq!(
        ev,
        vec![
            ("ADDED".to_string(), "r1".to_string(), revs[1].clone()),
            ("ADDED".to_string(), "r2".to_string(), revs[2].clone())
        ]
    );
    // Without a resourceVersion: the current state as ADDED, then changes.
    let next = watch_robots(&s, "fieldSelector=metadata.name%3Dr1");
    assert_eq!(next(), "ADDED r1");
    let p = s.request(
        "PATCH",
        &format!("{}/r1", robots()),
        "application/merge-patch+json",
        Some(br#"{"spec":{"description":"new"}}"#),
        &[],
    );
    assert_eq!(p.status, 200);
    assert_eq!(next(), "MODIFIED r1");
    s.send_json("DELETE", &format!("{}/r1", robots()), &json!({}));
    assert_eq!(next(), "DELETED r1");

    // A label selector: a robot whose labels stop matching is DELETED from
    // the watch's view, one that starts matching again ADDED (the state
    // before each change decides).
    assert_eq!(
        s.send_json("POST", &robots(), &robot("z1", json!({"zone": "a"})))
            .status,
        201
    );
    let next = watch_robots(&s, "labelSelector=zone%3Da");
    assert_eq!(next(), "ADDED z1");
    for (zone, seen) in [("b", "DELETED z1"), ("a", "ADDED z1")] {
        let body = format!(r#"{{"metadata":{{"labels":{{"zone":"{zone}"}}}}}}"#);
        let p = s.request(
            "PATCH",
            &format!("{}/z1", robots()),
            "application/merge-patch+json",
            Some(body.as_bytes()),
            &[],
        );
        assert_eq!(p.status, 200, "{}", p.body);
        assert_eq!(next(), seen);
    }

    // Push r0's revision out of the 5-event history: 410 Expired.
    for i in 3..10 {
        s.send_json("POST", &robots(), &robot(&format!("r{i}"), json!({})));
    }
    let r = s.get(&format!("{}?watch=1&resourceVersion={}", robots(), revs[0]));
    assert_eq!(r.status, 410, "{}", r.body);
    let st = r.json();
    assert_eq!(
        (st["reason"].as_str(), st["code"].as_u64()),
        (Some("Expired"), Some(410))
    );

    // Bookmarks keep an idle watch's resourceVersion fresh.
    let list = s.list("robots", "");
    let rv = list["metadata"]["resourceVersion"].as_str().unwrap();
    let r = s.get(&format!(
        "{}?watch=1&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=3",
        robots()
    ));
    let ev = events(&r.body);
    assert!(ev.iter().any(|e| e.0 == "BOOKMARK" && e.2 == rv), "{}", r.body);
}

#[test]
fn restart_keeps_state() {
    let mut s = Server::start();
    let r = s.send_json("POST", &robots(), &robot("keep", json!({"x": "y"})));
    let uid = r.json()["metadata"]["uid"].clone();
    let rv: u64 = r.json()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    s.restart();
    let got = s.object("robots", "keep").expect("object survives a restart");
    assert_eq!(got["metadata"]["uid"], uid);
    assert_eq!(got["metadata"]["labels"]["x"], "y");
    let next = s.send_json("POST", &robots(), &robot("after", json!({})));
    let rv2: u64 = next.json()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv, "resourceVersions keep increasing across restarts");
}

#[test]
fn operator_token_guards_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let tf = dir.path().join("admin-token");
    std::fs::write(&tf, "s3cret-operator-token-123\n").unwrap();
    // --auth-token-file is the same option under its Kubernetes-style name.
    let s = Server::start_with(&["--auth-token-file", tf.to_str().unwrap()]);
    assert_eq!(s.get("/version").status, 200, "version stays open");
    let r = s.get(&robots());
    assert_eq!((r.status, r.json()["reason"].clone()), (401, json!("Unauthorized")));
    let bad = s.request("GET", &robots(), "", None, &[("Authorization", "Bearer wrong")]);
    assert_eq!(bad.status, 401);
    let ok = s.request(
        "GET",
        &robots(),
        "",
        None,
        &[("Authorization", "Bearer s3cret-operator-token-123")],
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(s.send_json("POST", "/agent/v1/jointokens", &json!({})).status, 401);
    // token create with the operator token; robots then use their own.
    let out = s
        .k8s4r_cmd()
        .args(["token", "create", "--token-file", tf.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let join = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_string();
    let mut robot = server_util::Robot::register(&s, &join, "r1", json!({}));
    assert!(robot.task_names().is_empty(), "robot endpoints use the robot's keys");
    // (kubectl sends bearer tokens only over https, so with kubectl the
    // token is for a TLS-terminating proxy in front of the server.)
    let listed = s.request(
        "GET",
        &robots(),
        "",
        None,
        &[("Authorization", "Bearer s3cret-operator-token-123")],
    );
    assert_eq!(listed.json()["items"][0]["metadata"]["name"], "r1");
}

#[test]
fn acknowledged_writes_survive_a_crash() {
    let mut s = Server::start();
    let mut rvs = Vec::new();
    for i in 0..20 {
        let r = s.send_json("POST", &robots(), &robot(&format!("c{i}"), json!({})));
        assert_eq!(r.status, 201);
        rvs.push(r.json()["metadata"]["resourceVersion"].as_str().unwrap().to_string());
    }
    s.crash_and_restart();
    let list = s.list("robots", "");
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        20,
        "every acknowledged create is still there"
    );
    let last: u64 = rvs.last().unwrap().parse().unwrap();
    let now: u64 = list["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
    assert!(now >= last);
}
