//! The API contract: the original manifests validate unchanged, bad manifests
//! fail with the exact field path and reason, and decode → encode → decode is
//! lossless for every example.

use k8s4r::api::{self, AnyObject};
use serde_json::{json, Value};
use std::path::Path;

fn decode_one(text: &str) -> Result<api::Decoded<AnyObject>, Vec<String>> {
    let mut docs = api::decode_all(text);
    assert_eq!(docs.len(), 1, "expected one document");
    match docs.remove(0) {
        Err(e) => Err(e.to_string().lines().map(String::from).collect()),
        Ok(d) => {
            let errs: Vec<String> = api::validate(&d.object).iter().map(|e| e.to_string()).collect();
            if errs.is_empty() {
                Ok(d)
            } else {
                Err(errs)
            }
        }
    }
}

#[test]
fn compat_manifests_validate_unchanged() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/compat");
    if !dir.exists() {
        eprintln!(
            "SKIP: {} is absent (only present in the project workspace and CI)",
            dir.display()
        );
        return;
    }
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in api::decode_all(&text) {
            let d = doc.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let errs = api::validate(&d.object);
            assert!(errs.is_empty(), "{}: {errs:?}", path.display());
            assert!(
                d.warnings.is_empty(),
                "{}: unexpected unknown fields {:?}",
                path.display(),
                d.warnings
            );
            seen += 1;
        }
    }
    assert_eq!(seen, 3, "compat/ has three objects");
}

#[test]
fn examples_validate_and_round_trip() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in api::decode_all(&text) {
            let d = doc.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(api::validate(&d.object).is_empty(), "{}", path.display());
            assert!(d.warnings.is_empty(), "{}: {:?}", path.display(), d.warnings);
            assert_round_trip(&d.object);
            seen += 1;
        }
    }
    assert!(seen >= 4);
}

fn assert_round_trip(obj: &AnyObject) {
    // Through YAML and through JSON: both must give back the same object.
    let yaml = serde_yaml_ng::to_string(obj).unwrap();
    let again = api::decode_all(&yaml).remove(0).unwrap();
    assert_eq!(&again.object, obj, "YAML round trip changed {}:\n{yaml}", obj.name());
    let json = serde_json::to_string(obj).unwrap();
    let again = api::decode_all(&json).remove(0).unwrap();
    assert_eq!(&again.object, obj, "JSON round trip changed {}", obj.name());
    assert!(again.warnings.is_empty());
}

#[test]
fn compat_round_trip() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/compat");
    if !dir.exists() {
        eprintln!("SKIP: ../shared/compat is absent");
        return;
    }
    for name in ["job-with-envoy-proxy.yaml", "test-taskgroup-simple.yaml", "robot.yaml"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        for doc in api::decode_all(&text) {
            assert_round_trip(&doc.unwrap().object);
        }
    }
}

/// A valid Job that every bad case starts from.
fn base_job() -> Value {
    json!({
        "apiVersion": "robot.k8s4r.io/v1alpha1",
        "kind": "Job",
        "metadata": {"name": "demo", "namespace": "default"},
        "spec": {
            "type": "service",
            "taskGroups": [{
                "name": "g",
                "count": 1,
                "initTasks": [{"name": "init", "driver": "exec", "config": {"execConfig": {"command": "/bin/true"}}}],
                "network": {
                    "spiffe": {"trustDomain": "example.org", "agentSocketPath": "/run/spire/sockets/agent.sock"},
                    "upstreams": [
                        {"name": "db", "localPort": 5432, "upstream": "db.example.com:5432", "protocol": "tcp"},
                        {"name": "api", "localPort": 8080, "upstream": "api.example.com:443", "protocol": "http"}
                    ]
                },
                "tasks": [{
                    "name": "app", "driver": "exec",
                    "config": {"execConfig": {"command": "/bin/sh", "args": ["-c", "true"]}},
                    "artifacts": [{"getterSource": "http://example.com/a.tgz", "relativeDest": "local/a.tgz",
                                   "getterOptions": {"checksum": format!("sha256:{}", "a".repeat(64))}}],
                    "templates": [{"destPath": "local/app.conf", "embeddedTmpl": "x=${X}"}]
                }]
            }]
        }
    })
}

/// Set `value` at a JSON pointer, creating missing object members.
fn set(doc: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let parent = doc
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no parent for {pointer}"));
    match parent {
        Value::Object(m) => {
            m.insert(key.to_string(), value);
        }
        Value::Array(a) => {
            let i: usize = key.parse().unwrap();
            if i == a.len() {
                a.push(value)
            } else {
                a[i] = value
            }
        }
        _ => panic!("{pointer}: parent is not a container"),
    }
}

fn remove(doc: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    doc.pointer_mut(parent).unwrap().as_object_mut().unwrap().remove(key);
}

enum Edit {
    Set(&'static str, Value),
    Remove(&'static str),
}
use Edit::*;

fn apply(edits: Vec<Edit>) -> String {
    let mut doc = base_job();
    for e in edits {
        match e {
            Set(p, v) => set(&mut doc, p, v),
            Remove(p) => remove(&mut doc, p),
        }
    }
    serde_json::to_string(&doc).unwrap()
}

const G: &str = "spec.taskGroups[0]";

#[test]
fn base_job_is_valid() {
    decode_one(&apply(vec![])).expect("base job must be valid");
}

#[test]
fn bad_manifests_name_field_and_reason() {
    let cases: Vec<(Vec<Edit>, String)> = vec![
        (vec![Set("/metadata/name", json!("Bad_Name"))], "metadata.name: \"Bad_Name\" is not a valid DNS-1123 subdomain (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)".into()),
        (vec![Remove("/metadata/name")], "metadata.name: is required".into()),
        (vec![Set("/metadata/name", json!("a".repeat(254)))], format!("metadata.name: {:?} is longer than 253 characters", "a".repeat(254))),
        (vec![Set("/metadata/namespace", json!("my.ns"))], "metadata.namespace: \"my.ns\" is not a valid DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit)".into()),
        (vec![Set("/metadata/labels", json!({"app": "bad value!"}))], "metadata.labels[app]: \"bad value!\" is not a valid label value (at most 63 of A-Z a-z 0-9 - _ ., starting and ending alphanumeric)".into()),
        (vec![Set("/spec/name", json!("other"))], "spec.name: \"other\" must match metadata.name \"demo\" (or be omitted)".into()),
        (vec![Set("/spec/priority", json!(101))], "spec.priority: 101 is out of range (0-100)".into()),
        (vec![Set("/spec/type", json!("cron"))], "spec.type: unknown variant `cron`, expected one of `batch`, `service`, `system`".into()),
        (vec![Set("/spec/taskGroups", json!([]))], "spec.taskGroups: at least one task group is required".into()),
        (vec![Set("/spec/taskGroups/1", base_job()["spec"]["taskGroups"][0].clone())], "spec.taskGroups[1].name: duplicate task group name \"g\"".into()),
        (vec![Set("/spec/taskGroups/0/name", json!("G1"))], format!("{G}.name: \"G1\" is not a valid DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit)")),
        (vec![Set("/spec/taskGroups/0/count", json!(0))], format!("{G}.count: 0 is out of range (1-10000)")),
        (vec![Set("/spec/taskGroups/0/count", json!(10001))], format!("{G}.count: 10001 is out of range (1-10000)")),
        (vec![Set("/spec/taskGroups/0/count", json!("three"))], format!("{G}.count: invalid type: string \"three\", expected i32")),
        (vec![Set("/spec/taskGroups/0/tasks", json!([]))], format!("{G}.tasks: at least one task is required")),
        (vec![Set("/spec/taskGroups/0/initTasks/0/name", json!("app"))], format!("{G}.tasks[0].name: duplicate task name \"app\" in this task group")),
        (vec![Set(concat!("/spec/taskGroups/0/tasks/0", "/driver"), json!("qemu"))], format!("{G}.tasks[0].driver: unknown driver \"qemu\" (supported: exec, raw_exec)")),
        (vec![Set("/spec/taskGroups/0/tasks/0/driver", json!("docker"))], format!("{G}.tasks[0].driver: \"docker\" is not supported by this agent (supported: exec, raw_exec)")),
        (vec![Set("/spec/taskGroups/0/tasks/0/config/execConfig/command", json!(""))], format!("{G}.tasks[0].config.execConfig.command: must not be empty")),
        (vec![Set("/spec/taskGroups/0/tasks/0/config", json!({}))], format!("{G}.tasks[0].config.execConfig: is required for driver \"exec\"")),
        (vec![Set("/spec/taskGroups/0/tasks/0/env", json!({"1BAD": "x"}))], format!("{G}.tasks[0].env[1BAD]: \"1BAD\" is not a valid environment variable name (letters, digits, '_', '.', '-', not starting with a digit)")),
        (vec![Set("/spec/taskGroups/0/tasks/0/user", json!("root; rm"))], format!("{G}.tasks[0].user: \"root; rm\" is not a valid user name or uid")),
        (vec![Set("/spec/taskGroups/0/tasks/0/killTimeout", json!("5x"))], format!("{G}.tasks[0].killTimeout: invalid duration \"5x\": unknown unit \"x\" (use ns, us, ms, s, m or h)")),
        (vec![Set("/spec/taskGroups/0/tasks/0/timeout", json!("10"))], format!("{G}.tasks[0].timeout: invalid duration \"10\": missing unit (use ns, us, ms, s, m or h)")),
        (vec![Set("/spec/taskGroups/0/tasks/0/restartPolicy", json!({"attempts": -1}))], format!("{G}.tasks[0].restartPolicy.attempts: -1 must be 0 or more")),
        (vec![Set("/spec/taskGroups/0/restartPolicy", json!({"delay": "soon"}))], format!("{G}.restartPolicy.delay: invalid duration \"soon\": expected a number at \"soon\"")),
        (vec![Set("/spec/taskGroups/0/restartPolicy", json!({"mode": "retry"}))], format!("{G}.restartPolicy.mode: unknown variant `retry`, expected `fail` or `delay`")),
        (vec![Set("/spec/taskGroups/0/tasks/0/resources", json!({"memory": "12XB"}))], format!("{G}.tasks[0].resources.memory: invalid quantity \"12XB\": unknown suffix \"XB\" (use m, k, M, G, T, Ki, Mi, Gi, Ti)")),
        (vec![Set("/spec/taskGroups/0/tasks/0/resources", json!({"cpu": "-1"}))], format!("{G}.tasks[0].resources.cpu: invalid quantity \"-1\": must not be negative")),
        (vec![Set("/spec/taskGroups/0/tasks/0/templates/0/destPath", json!("../../etc/passwd"))], format!("{G}.tasks[0].templates[0].destPath: \"../../etc/passwd\" escapes the task directory ('..' is not allowed)")),
        (vec![Set("/spec/taskGroups/0/tasks/0/templates/0/destPath", json!("/etc/passwd"))], format!("{G}.tasks[0].templates[0].destPath: \"/etc/passwd\" is absolute: paths are relative to the task directory (or start with ${{K8S4R_TASK_DIR}} / ${{K8S4R_ALLOC_DIR}}, or Nomad's /local, /secrets, /alloc)")),
        (vec![Set("/spec/taskGroups/0/tasks/0/artifacts/0/relativeDest", json!("/localx/a"))], format!("{G}.tasks[0].artifacts[0].relativeDest: \"/localx/a\" is absolute: paths are relative to the task directory (or start with ${{K8S4R_TASK_DIR}} / ${{K8S4R_ALLOC_DIR}}, or Nomad's /local, /secrets, /alloc)")),
        (vec![Set("/spec/taskGroups/0/tasks/0/templates/0/destPath", json!("/secrets/../../x"))], format!("{G}.tasks[0].templates[0].destPath: \"/secrets/../../x\" escapes the task directory ('..' is not allowed)")),
        (vec![Set("/spec/taskGroups/0/tasks/0/timeout", json!("3000000000000000h"))], format!("{G}.tasks[0].timeout: \"3000000000000000h\" is longer than the maximum of 87600h (10 years)")),
        (vec![Set("/spec/taskGroups/0/restartPolicy", json!({"interval": "87601h"}))], format!("{G}.restartPolicy.interval: \"87601h\" is longer than the maximum of 87600h (10 years)")),
        (vec![Set("/spec/taskGroups/0/tasks/0/templates/0/perms", json!("0999"))], format!("{G}.tasks[0].templates[0].perms: \"0999\" is not an octal file mode such as \"0644\"")),
        (vec![Remove("/spec/taskGroups/0/tasks/0/templates/0/embeddedTmpl")], format!("{G}.tasks[0].templates[0]: one of embeddedTmpl or sourcePath is required")),
        (vec![Set("/spec/taskGroups/0/tasks/0/templates/0/changeMode", json!("reload"))], format!("{G}.tasks[0].templates[0].changeMode: \"reload\" is not one of restart, noop, signal")),
        (vec![Set("/spec/taskGroups/0/tasks/0/artifacts/0/relativeDest", json!("local/../../x"))], format!("{G}.tasks[0].artifacts[0].relativeDest: \"local/../../x\" escapes the task directory ('..' is not allowed)")),
        (vec![Set("/spec/taskGroups/0/tasks/0/artifacts/0/getterSource", json!("s3://bucket/key"))], format!("{G}.tasks[0].artifacts[0].getterSource: \"s3://bucket/key\": only http://, https:// and file:// sources are supported")),
        (vec![Set("/spec/taskGroups/0/tasks/0/artifacts/0/getterOptions", json!({"checksum": "md5:abc"}))], format!("{G}.tasks[0].artifacts[0].getterOptions.checksum: \"md5:abc\" is not a supported checksum (expected sha256:<64 hex digits>)")),
        (vec![Set("/spec/taskGroups/0/tasks/0/artifacts/0/getterOptions", json!({"checksum": "sha256:abcd"}))], format!("{G}.tasks[0].artifacts[0].getterOptions.checksum: sha256 checksum must be 64 hex digits, got 4 characters")),
        (vec![Set("/spec/taskGroups/0/tasks/0/artifacts/0/getterMode", json!("git"))], format!("{G}.tasks[0].artifacts[0].getterMode: \"git\" is not one of any, file, dir")),
        (vec![Set("/spec/taskGroups/0/network/upstreams/1/localPort", json!(70000))], format!("{G}.network.upstreams[1].localPort: 70000 is not a valid port (1-65535)")),
        (vec![Set("/spec/taskGroups/0/network/upstreams/1/localPort", json!(0))], format!("{G}.network.upstreams[1].localPort: 0 is not a valid port (1-65535)")),
        (vec![Set("/spec/taskGroups/0/network/upstreams/1/localPort", json!(5432))], format!("{G}.network.upstreams[1].localPort: port 5432 is already used by upstream \"db\" in this task group")),
        (vec![Set("/spec/taskGroups/0/network/upstreams/1/name", json!("db"))], format!("{G}.network.upstreams[1].name: duplicate upstream name \"db\" in this task group")),
        (vec![Set("/spec/taskGroups/0/network/upstreams/0/upstream", json!("db.example.com"))], format!("{G}.network.upstreams[0].upstream: \"db.example.com\" is not host:port (e.g. db.example.com:5432)")),
        (vec![Set("/spec/taskGroups/0/network/upstreams/0/upstream", json!("db.example.com:99999"))], format!("{G}.network.upstreams[0].upstream: \"db.example.com:99999\": port \"99999\" is not a valid port (1-65535)")),
        (vec![Set("/spec/taskGroups/0/network/upstreams/0/protocol", json!("udp"))], format!("{G}.network.upstreams[0].protocol: unknown variant `udp`, expected one of `tcp`, `http`, `grpc`")),
        (vec![Remove("/spec/taskGroups/0/network/spiffe"), Set("/spec/taskGroups/0/network/upstreams/1/tls", json!(false))], format!("{G}.network.upstreams[0].tls: tls is on (the default) but the network has no spiffe block or tlsFiles to get certificates from; add one or set tls: false")),
        (vec![Set("/spec/taskGroups/0/network/spiffe/trustDomain", json!("Example.ORG"))], format!("{G}.network.spiffe.trustDomain: \"Example.ORG\" is not a valid trust domain (lowercase letters, digits, '.', '-', '_')")),
        (vec![Set("/spec/taskGroups/0/network/spiffe/agentSocketPath", json!("run/agent.sock"))], format!("{G}.network.spiffe.agentSocketPath: \"run/agent.sock\" must be an absolute path")),
        (vec![Set("/spec/taskGroups/0/network/upstreams/0/spiffeID", json!("spiffe://other.org/db"))], format!("{G}.network.upstreams[0].spiffeID: \"spiffe://other.org/db\" is not in trust domain \"example.org\"")),
        (vec![Set("/spec/taskGroups/0/network/type", json!("istio"))], format!("{G}.network.type: \"istio\" is not supported (envoy or none)")),
        (vec![Set("/spec/taskGroups/0/network/upstreams", json!([]))], format!("{G}.network.upstreams: at least one upstream is required when the proxy is enabled")),
        (vec![Set("/spec/taskGroups/0/tasks/0/network", json!({"spiffe": {"trustDomain": "example.org"}, "upstreams": [{"name": "cache", "localPort": 8080, "upstream": "cache:6379"}]}))], format!("{G}.tasks[0].network.upstreams[0].localPort: port 8080 is already used by upstream \"api\" in this task group")),
        (vec![Set("/spec/taskGroups/0/constraints", json!([{"lTarget": "${attr.kernel.name}", "operand": "~=", "rTarget": "linux"}]))], format!("{G}.constraints[0].operand: \"~=\" is not one of =, !=, >, >=, <, <=, regexp, set_contains, version")),
        (vec![Set("/spec/robotSelector", json!({"matchExpressions": [{"key": "arch", "operator": "In"}]}))], "spec.robotSelector.matchExpressions[0].values: must not be empty for operator In".into()),
        (vec![Set("/spec/robotSelector", json!({"matchExpressions": [{"key": "arch", "operator": "Near", "values": ["x"]}]}))], "spec.robotSelector.matchExpressions[0].operator: \"Near\" is not one of In, NotIn, Exists, DoesNotExist".into()),
        (vec![Set("/spec/taskGroups/0/tasks/0/targetRobot", json!("robot-1"))], format!("{G}.tasks[0].targetRobot: is set by the control plane and not allowed in a task template")),
        (vec![Set("/spec/taskGroups/0/tasks/0/scope", json!("robot"))], format!("{G}.tasks[0].scope: robot scope is only allowed on init tasks with daemon: true")),
        (vec![Set("/spec/taskGroups/0/tasks/0/services", json!([{"name": "web", "checks": [{"name": "h", "type": "http", "portLabel": "0"}]}]))], format!("{G}.tasks[0].services[0].checks[0].portLabel: \"0\" is not a valid port (1-65535)")),
        (vec![Set("/spec/taskGroups/0/tasks/0/services", json!([{"name": "web", "checks": [{"name": "h", "type": "script"}]}]))], format!("{G}.tasks[0].services[0].checks[0].command: is required for script checks")),
        (vec![Set("/spec/taskGroups/0/tasks/0/services", json!([{"name": "web", "checks": [{"name": "h", "type": "tcp", "portLabel": "80", "interval": "often"}]}]))], format!("{G}.tasks[0].services[0].checks[0].interval: invalid duration \"often\": expected a number at \"often\"")),
        (vec![Set("/spec/taskGroups/0/network/inbound", json!([{"name": "metrics", "port": 9443, "targetPort": 9090}]))], format!("{G}.network.inbound[0].allowedSpiffeIDs: list at least one SPIFFE ID; nothing is allowed by default")),
        (vec![Set("/spec/taskGroups/0/network/inbound", json!([{"name": "metrics", "port": 5432, "targetPort": 9090, "allowedSpiffeIDs": ["spiffe://example.org/c"]}]))], format!("{G}.network.inbound[0].port: port 5432 is already used by \"db\" in this task group")),
        (vec![Set("/spec/taskGroups/0/network/inbound", json!([{"name": "metrics", "port": 9443, "targetPort": 9090, "allowedSpiffeIDs": ["spiffe://other.org/c"]}]))], format!("{G}.network.inbound[0].allowedSpiffeIDs[0]: \"spiffe://other.org/c\" is not in trust domain \"example.org\"")),
        (vec![Set("/spec/taskGroups/0/network/inbound", json!([{"name": "metrics", "port": 9443, "targetPort": 0, "allowedSpiffeIDs": ["spiffe://example.org/c"]}]))], format!("{G}.network.inbound[0].targetPort: 0 is not a valid port (1-65535)")),
        (vec![Set("/spec/taskGroups/0/disconnect", json!({"lostAfter": "soon"}))], format!("{G}.disconnect.lostAfter: invalid duration \"soon\": expected a number at \"soon\"")),
        (vec![Set("/spec/taskGroups/0/disconnect", json!({"reconcile": "newest"}))], format!("{G}.disconnect.reconcile: \"newest\" is not one of keepOriginal, keepReplacement, bestScore, longestRunning")),
        (vec![Set("/kind", json!("Pod"))], "kind: \"Pod\" is not a kind of robot.k8s4r.io/v1alpha1 (expected Job, TaskGroup, Task, Robot or AgentRelease)".into()),
        (vec![Set("/apiVersion", json!("batch/v1"))], "apiVersion: \"batch/v1\" is not supported (expected \"robot.k8s4r.io/v1alpha1\")".into()),
    ];
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    for (edits, expected) in cases {
        let text = apply(edits);
        match decode_one(&text) {
            Ok(_) => panic!("expected error {expected:?}, but the manifest was accepted"),
            Err(errs) => assert_eq!(errs, vec![expected.clone()], "for expected {expected:?}"),
        }
    }
}

#[test]
fn all_problems_reported_at_once() {
    let text = apply(vec![
        Set("/spec/taskGroups/0/count", json!(0)),
        Set("/spec/taskGroups/0/network/upstreams/0/localPort", json!(70000)),
        Set("/spec/taskGroups/0/tasks/0/killTimeout", json!("x")),
    ]);
    let errs = decode_one(&text).unwrap_err();
    assert_eq!(errs.len(), 3, "{errs:?}");
}

#[test]
fn unknown_fields_are_warnings_with_paths() {
    let text = apply(vec![
        Set("/spec/taskGroups/0/tasks/0/comand", json!("/bin/sh")),
        Set("/spec/extra", json!(1)),
    ]);
    let d = decode_one(&text).expect("unknown fields are not errors");
    assert_eq!(
        d.warnings,
        vec![
            "unknown field \"spec.extra\"",
            "unknown field \"spec.taskGroups[0].tasks[0].comand\""
        ]
    );
}

/// The two patterns of the earlier Go implementation's manifests that are
/// accepted unchanged: Nomad-style absolute task paths, and service checks
/// on a `portLabel` that names no port (a warning naming the field: the
/// check is not run).
#[test]
fn original_manifest_patterns_validate_with_warnings() {
    let text = apply(vec![
        Set(
            "/spec/taskGroups/0/tasks/0/templates/0/destPath",
            json!("/local/app.conf"),
        ),
        Set(
            "/spec/taskGroups/0/tasks/0/templates/1",
            json!({"destPath": "/secrets/token", "embeddedTmpl": "t"}),
        ),
        Set(
            "/spec/taskGroups/0/tasks/0/templates/2",
            json!({"destPath": "/alloc/shared.conf", "embeddedTmpl": "s"}),
        ),
        Set(
            "/spec/taskGroups/0/tasks/0/artifacts/0/relativeDest",
            json!("/local/bin/"),
        ),
        Set(
            "/spec/taskGroups/0/tasks/0/services",
            json!([{"name": "app", "portLabel": "http", "checks": [
                {"name": "alive", "type": "http", "path": "/health", "interval": "10s", "timeout": "2s"},
                {"name": "tcp-up", "type": "tcp", "portLabel": "rpc"}]}]),
        ),
    ]);
    let d = api::decode_all(&text).remove(0).unwrap();
    let found = api::review(&d.object);
    assert_eq!(found.errors, vec![], "accepted unchanged");
    let warnings: Vec<String> = found.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        vec![
            format!("{G}.tasks[0].services[0].portLabel: \"http\" names no port this agent can probe (http checks need a port number, 1-65535): the check \"alive\" is not run"),
            format!("{G}.tasks[0].services[0].checks[1].portLabel: \"rpc\" names no port this agent can probe (tcp checks need a port number, 1-65535): the check \"tcp-up\" is not run"),
        ]
    );
    // Through the CLI both binaries share: `ok`, the warnings on stderr, exit 0.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("original.json");
    std::fs::write(&file, &text).unwrap();
    let out = validate_cli(&file);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok Job/demo\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for w in &warnings {
        assert!(
            stderr.contains(&format!("warning: {}: Job/demo: {w}", file.display())),
            "{stderr}"
        );
    }
}

/// An artifact fetched over plain http without a checksum is accepted
/// with a warning on its `getterSource` (integrity not verified); with a
/// checksum, from a file, or over https (which an agent without TLS
/// refuses when it fetches, not here) it is not warned about.
#[test]
fn plain_http_artifacts_without_a_checksum_are_a_warning_with_their_path() {
    let text = apply(vec![
        Set(
            "/spec/taskGroups/0/tasks/0/artifacts/1",
            json!({"getterSource": "http://example.com/tool", "getterOptions": {"filename": "t"}}),
        ),
        Set(
            "/spec/taskGroups/0/tasks/0/artifacts/2",
            json!({"getterSource": "https://example.com/b.tgz"}),
        ),
        Set(
            "/spec/taskGroups/0/tasks/0/artifacts/3",
            json!({"getterSource": "file:///opt/c.bin"}),
        ),
        Set(
            "/spec/taskGroups/0/initTasks/0/artifacts",
            json!([{"getterSource": "http://10.0.0.1/init.sh"}]),
        ),
    ]);
    let d = api::decode_all(&text).remove(0).unwrap();
    let found = api::review(&d.object);
    assert_eq!(found.errors, vec![], "accepted");
    let warnings: Vec<String> = found.warnings.iter().map(|w| w.to_string()).collect();
    let unverified = |field: &str, url: &str| {
        format!("{G}.{field}.getterSource: \"{url}\" is fetched over plain http without getterOptions.checksum (sha256:<hex>): integrity not verified; robots with --require-artifact-checksums refuse it")
    };
    assert_eq!(
        warnings,
        vec![
            unverified("initTasks[0].artifacts[0]", "http://10.0.0.1/init.sh"),
            unverified("tasks[0].artifacts[1]", "http://example.com/tool"),
        ]
    );
    // `k8s4r validate` prints them and still says ok.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("unverified.json");
    std::fs::write(&file, &text).unwrap();
    let out = validate_cli(&file);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for w in &warnings {
        assert!(
            stderr.contains(&format!("warning: {}: Job/demo: {w}", file.display())),
            "{stderr}"
        );
    }
}

/// `k8s4r validate -f FILE`.
fn validate_cli(file: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_k8s4r"))
        .arg("validate")
        .arg("-f")
        .arg(file)
        .output()
        .unwrap()
}

/// A Job whose timeout would overflow every agent's clock is refused
/// before it reaches one, with the field and the limit.
#[test]
fn k8s4r_validate_refuses_a_huge_timeout_with_its_field_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("huge.json");
    std::fs::write(
        &file,
        apply(vec![Set(
            "/spec/taskGroups/0/tasks/0/timeout",
            json!("3000000000000000h"),
        )]),
    )
    .unwrap();
    let out = validate_cli(&file);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "error: {}: {G}.tasks[0].timeout: \"3000000000000000h\" is longer than the maximum of 87600h (10 years)\n",
            file.display()
        )
    );
}

#[test]
fn malformed_yaml_reports_line_and_column() {
    let text = "apiVersion: robot.k8s4r.io/v1alpha1\nkind: Job\nmetadata:\n  name: [oops\n";
    let err = api::decode_all(text).remove(0).unwrap_err();
    match err {
        api::DecodeError::Syntax { line, column, .. } => {
            assert_eq!(line, Some(5));
            assert!(column.is_some());
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn multi_document_and_lists() {
    let text = format!(
        "{}\n---\n{}\n",
        serde_yaml_ng::to_string(&base_job()).unwrap(),
        serde_yaml_ng::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": [base_job(), base_job()]}))
            .unwrap()
    );
    let docs = api::decode_all(&text);
    assert_eq!(docs.len(), 3);
    assert!(docs.iter().all(|d| d.is_ok()));
}

#[test]
fn robot_selector_accepts_flat_and_structured_forms() {
    let flat = apply(vec![Set("/spec/robotSelector", json!({"env": "prod"}))]);
    let structured = apply(vec![Set(
        "/spec/robotSelector",
        json!({"matchLabels": {"env": "prod"}}),
    )]);
    for text in [flat, structured] {
        let d = decode_one(&text).unwrap();
        let AnyObject::Job(job) = d.object else { panic!() };
        let sel = job.spec.robot_selector.unwrap();
        let mut labels = api::StringMap::new();
        assert!(!sel.matches(&labels));
        labels.insert("env".into(), "prod".into());
        assert!(sel.matches(&labels));
    }
}
