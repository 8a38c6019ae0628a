#![cfg(feature = "server")]
//! The real kubectl against the real server: apply (with validation, no
//! --validate=false), get with server-side columns, -o yaml, get -w,
//! describe, delete with cascade, re-apply removing a field, errors.

mod common;
mod server_util;

use serde_json::json;
use server_util::{have_kubectl, wait_for, Robot, Server};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn apply_get_describe_delete_examples() {
    if !have_kubectl() {
        return;
    }
    let s = Server::start();
    let out = s.kubectl_ok(&["apply", "-f", examples().to_str().unwrap()]);
    for line in [
        "job.robot.k8s4r.io/quickstart created",
        "job.robot.k8s4r.io/network-demo created",
    ] {
        assert!(out.contains(line), "apply output lacks {line:?}:\n{out}");
    }
    // The Robot example (a robot that is never Online without its agent)
    // lives in examples/extra/, out of the default directory.
    assert!(!out.contains("robot.robot.k8s4r.io/"), "{out}");
    // Re-applying unchanged manifests writes nothing.
    let again = s.kubectl_ok(&["apply", "-f", examples().to_str().unwrap()]);
    assert!(again.contains("job.robot.k8s4r.io/quickstart unchanged"), "{again}");

    // Server-side columns, from the CRD printer columns.
    let jobs = s.kubectl_ok(&["get", "jobs"]);
    let header: Vec<&str> = jobs.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "TYPE",
            "STATE",
            "TOTAL",
            "RUNNING",
            "SUCCEEDED",
            "FAILED",
            "AGE"
        ]
    );
    let qs = jobs
        .lines()
        .find(|l| l.starts_with("quickstart "))
        .expect("quickstart row");
    assert!(qs.split_whitespace().nth(1) == Some("batch"), "{qs}");
    // The controller creates Tasks at once, Pending while no robot fits.
    let tasks = wait_for("quickstart tasks", T, || {
        let out = s.kubectl_ok(&["get", "rtask", "-l", "robot.k8s4r.io/job=quickstart"]);
        (out.lines().count() == 3).then_some(out)
    });
    let header: Vec<&str> = tasks.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "JOB", "ROBOT", "STATE", "EXIT", "RESTARTS", "AGE"]);
    assert!(
        tasks.contains("quickstart-hello-r0-greet") && tasks.contains("quickstart-hello-r1-greet"),
        "{tasks}"
    );
    assert!(tasks.contains("pending"), "{tasks}");
    let robot = examples().join("extra/robot.yaml");
    let out = s.kubectl_ok(&["apply", "-f", robot.to_str().unwrap()]);
    assert!(out.contains("robot.robot.k8s4r.io/robot-001 created"), "{out}");
    let robots = s.kubectl_ok(&["get", "robots"]);
    assert!(
        robots.starts_with("NAME") && robots.contains("PHASE") && robots.contains("LAST-HEARTBEAT"),
        "{robots}"
    );
    let wide = s.kubectl_ok(&["get", "tasks", "-o", "wide"]);
    assert!(wide.lines().next().unwrap().contains("REASON"), "{wide}");
    assert!(wide.contains("Unschedulable"), "{wide}");

    // -o yaml: the stored object with metadata and the controller's status.
    let y = s.kubectl_ok(&["get", "job", "quickstart", "-o", "yaml"]);
    for needle in [
        "kind: Job",
        "resourceVersion:",
        "uid:",
        "creationTimestamp:",
        "kubectl.kubernetes.io/last-applied-configuration",
        "totalTasks: 2",
    ] {
        assert!(y.contains(needle), "-o yaml lacks {needle:?}:\n{y}");
    }
    let list = s.kubectl_ok(&["get", "taskgroups", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v["kind"], "List");
    assert!(v["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["metadata"]["name"] == "quickstart-hello"));

    // describe shows spec, status and (no) events.
    let d = s.kubectl_ok(&["describe", "job", "quickstart"]);
    assert!(
        d.contains("Name:         quickstart") && d.contains("Status Description:") && d.contains("Events:"),
        "{d}"
    );
    assert!(
        d.contains("robots are available"),
        "describe explains why tasks are pending:\n{d}"
    );

    // kubectl get events: what the controllers recorded.
    let ev = wait_for("FailedScheduling events", T, || {
        let out = s.kubectl_ok(&["get", "events"]);
        out.contains("FailedScheduling").then_some(out)
    });
    assert!(
        ev.starts_with("LAST SEEN") && ev.contains("task/quickstart-hello-r0-greet"),
        "{ev}"
    );

    // delete cascades Job -> TaskGroups -> Tasks.
    let out = s.kubectl_ok(&["delete", "job", "quickstart"]);
    assert!(out.contains("job.robot.k8s4r.io \"quickstart\" deleted"), "{out}");
    wait_for("cascade delete of quickstart's taskgroups and tasks", T, || {
        let tg = s.kubectl_ok(&["get", "taskgroups", "-o", "name"]);
        let t = s.kubectl_ok(&["get", "tasks", "-o", "name"]);
        (!tg.contains("quickstart") && !t.contains("quickstart")).then_some(())
    });
    assert!(
        s.kubectl_ok(&["get", "tasks", "-o", "name"])
            .contains("network-demo-app-r0-client"),
        "other jobs untouched"
    );
    let missing = s.kubectl(&["get", "job", "quickstart"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NotFound"));
}

#[test]
fn compat_manifests_apply_unchanged() {
    if !have_kubectl() {
        return;
    }
    let Some(shared) = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/compat")
        .canonicalize()
        .ok()
    else {
        eprintln!("SKIP: ../shared/compat is absent (present only in the project workspace and CI)");
        return;
    };
    let s = Server::start();
    for f in ["robot.yaml", "test-taskgroup-simple.yaml", "job-with-envoy-proxy.yaml"] {
        let out = s.kubectl_ok(&["apply", "-f", shared.join(f).to_str().unwrap()]);
        assert!(out.contains("created"), "{f}: {out}");
    }
    let jobs = s.kubectl_ok(&["get", "rjob", "-o", "name"]);
    assert!(
        jobs.contains("job.robot.k8s4r.io/test-taskgroup-simple") && jobs.contains("job.robot.k8s4r.io/test-proxy-job"),
        "{jobs}"
    );
    wait_for("tasks of the compat jobs", T, || {
        let t = s.kubectl_ok(&["get", "tasks", "-o", "name"]);
        (t.contains("test-taskgroup-simple-simple-group-r0-verify-and-run")
            && t.contains("test-proxy-job-proxy-group-r0-"))
        .then_some(())
    });
}

#[test]
fn reapply_removes_a_deleted_field_and_validation_errors_name_fields() {
    if !have_kubectl() {
        return;
    }
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let robot = |extra: &str| {
        format!(
            "apiVersion: robot.k8s4r.io/v1alpha1\nkind: Robot\nmetadata:\n  name: r1\n  labels:\n    zone: a\n{extra}spec:\n  description: picker\n  labels:\n    fleet: warehouse\n"
        )
    };
    let f = write(&dir, "r.yaml", &robot("    tier: gold\n"));
    s.kubectl_ok(&["apply", "-f", &f]);
    assert_eq!(s.object("robots", "r1").unwrap()["metadata"]["labels"]["tier"], "gold");
    let f = write(&dir, "r.yaml", &robot(""));
    let out = s.kubectl_ok(&["apply", "-f", &f]);
    assert!(out.contains("configured"), "{out}");
    let r = s.object("robots", "r1").unwrap();
    assert!(
        r["metadata"]["labels"].get("tier").is_none(),
        "re-apply removes the field: {r}"
    );
    assert_eq!(r["metadata"]["labels"]["zone"], "a");

    // 422 with one line per cause, each naming its field.
    let bad = write(
        &dir,
        "bad.yaml",
        "apiVersion: robot.k8s4r.io/v1alpha1\nkind: Job\nmetadata:\n  name: bad\nspec:\n  taskGroups:\n    - name: g\n      network:\n        upstreams:\n          - {name: a, localPort: 1000, upstream: 'a:1', tls: false}\n          - {name: b, localPort: 70000, upstream: 'b:1', tls: false}\n      tasks:\n        - {name: t, driver: exec, config: {execConfig: {command: /bin/true}}}\n",
    );
    let out = s.kubectl(&["apply", "-f", &bad]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("The Job \"bad\" is invalid"), "{err}");
    assert!(
        err.contains("spec.taskGroups[0].network.upstreams[1].localPort: 70000 is not a valid port"),
        "{err}"
    );

    // Unknown fields: kubectl asks for Strict validation, so they fail.
    let unknown = write(
        &dir,
        "u.yaml",
        &robot("").replace("  description: picker\n", "  description: picker\n  colour: red\n"),
    );
    let out = s.kubectl(&["apply", "-f", &unknown]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown field \\\"spec.colour\\\"") || err.contains("unknown field \"spec.colour\""),
        "{err}"
    );
    // ... and are a warning when asked to warn.
    let out = s.kubectl(&["apply", "--validate=warn", "-f", &unknown]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Warning: unknown field \"spec.colour\""), "{err}");
    // kubectl patch --type=merge works; strategic (the default) is 415.
    s.kubectl_ok(&[
        "patch",
        "robot",
        "r1",
        "--type=merge",
        "-p",
        r#"{"spec":{"description":"packer"}}"#,
    ]);
    assert_eq!(s.object("robots", "r1").unwrap()["spec"]["description"], "packer");
    let out = s.kubectl(&["patch", "robot", "r1", "-p", r#"{"spec":{"description":"x"}}"#]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("strategic merge patch is not supported"));
}

#[test]
fn get_watch_sees_changes() {
    if !have_kubectl() {
        return;
    }
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let robot = |desc: &str| {
        format!(
            "apiVersion: robot.k8s4r.io/v1alpha1\nkind: Robot\nmetadata:\n  name: w1\nspec:\n  description: {desc}\n"
        )
    };
    s.kubectl_ok(&["apply", "-f", &write(&dir, "r.yaml", &robot("one"))]);
    let mut w = Lines::of(s.kubectl_cmd().args([
        "get",
        "robots",
        "-w",
        "-o",
        "custom-columns=NAME:.metadata.name,DESC:.spec.description",
    ]));
    w.expect("w1 one");
    s.kubectl_ok(&["apply", "-f", &write(&dir, "r.yaml", &robot("two"))]);
    w.expect("w1 two");
    s.kubectl_ok(&[
        "apply",
        "-f",
        &write(&dir, "r2.yaml", &robot("three").replace("w1", "w2")),
    ]);
    w.expect("w2 three");
}

/// A long-running kubectl (`get -w`, `logs -f`) whose output lines are
/// read as they come; killed when dropped.
struct Lines {
    child: std::process::Child,
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn of(cmd: &mut std::process::Command) -> Lines {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Lines {
            child,
            rx,
            seen: Vec::new(),
        }
    }

    /// Wait for a line whose words start with `want`'s.
    fn expect(&mut self, want: &str) {
        let want: Vec<&str> = want.split_whitespace().collect();
        let deadline = std::time::Instant::now() + T;
        while !self
            .seen
            .iter()
            .any(|l| l.split_whitespace().take(want.len()).eq(want.iter().copied()))
        {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!("kubectl did not print {want:?}; saw {:?}", self.seen),
            }
        }
    }

    /// Every line until kubectl exits by itself (within `within`), and
    /// its exit status.
    fn until_exit(&mut self, within: Duration) -> (Vec<String>, std::process::ExitStatus) {
        let status = wait_for("kubectl to finish by itself", within, || {
            self.child.try_wait().ok().flatten()
        });
        // Exited: its output is complete once the reader has seen EOF.
        self.seen.extend(self.rx.iter());
        (self.seen.clone(), status)
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn explain_documents_nested_fields_from_the_api_types() {
    if !have_kubectl() {
        return;
    }
    let s = Server::start();
    let upstreams = s.kubectl_ok(&["explain", "jobs.spec.taskGroups.network.upstreams"]);
    for want in [
        "localPort",
        "upstream",
        "spiffeID",
        "Port the app connects to on 127.0.0.1",
    ] {
        assert!(upstreams.contains(want), "explain lacks {want:?}:\n{upstreams}");
    }
    // Optional blocks are followed too (they are nullable in the schema).
    let disconnect = s.kubectl_ok(&["explain", "jobs.spec.taskGroups.disconnect"]);
    assert!(disconnect.contains("lostAfter"), "{disconnect}");
    let state = s.kubectl_ok(&["explain", "tasks.status.state"]);
    assert!(state.contains("FIELD: state"), "{state}");
    let selector = s.kubectl_ok(&["explain", "jobs.spec.robotSelector"]);
    assert!(selector.contains("matchExpressions"), "{selector}");
    // Every field has a description, from the types' doc comments.
    let groups = s.kubectl_ok(&["explain", "job.spec.taskGroups"]);
    assert!(!groups.contains("<no description>"), "{groups}");
    assert!(groups.contains("How many replicas of the group to run"), "{groups}");
    let restart = s.kubectl_ok(&["explain", "job.spec.taskGroups.restartPolicy.mode"]);
    assert!(restart.contains("once `attempts` restarts happened"), "{restart}");
    // An enum lists its allowed values.
    let kind = s.kubectl_ok(&["explain", "job.spec.type"]);
    assert!(
        kind.contains("ENUM:") && kind.contains("batch") && kind.contains("system"),
        "{kind}"
    );
    let state = s.kubectl_ok(&["explain", "task.status.state"]);
    assert!(state.contains("ENUM:") && state.contains("lost"), "{state}");
}

/// A batch Job of one task on robots labelled fleet=a.
fn one_task_job(name: &str) -> String {
    format!(
        "apiVersion: robot.k8s4r.io/v1alpha1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n  type: batch\n  robotSelector:\n    fleet: a\n  taskGroups:\n  - name: g\n    tasks:\n    - name: main\n      driver: exec\n      config:\n        execConfig:\n          command: /bin/true\n"
    )
}

/// The robot's only task, once placed.
fn placed_task(robot: &mut Robot) -> String {
    wait_for("the task placed on the robot", T, || robot.task_names().pop())
}

#[test]
fn kubectl_wait_for_conditions_of_robots_tasks_and_jobs() {
    if !have_kubectl() {
        return;
    }
    let s = Server::start();
    let join = s.join_token();
    let mut r1 = Robot::register(&s, &join, "r1", json!({"fleet": "a"}));
    s.kubectl_ok(&["wait", "--for=condition=Ready", "robot/r1", "--timeout=20s"]);

    let dir = tempfile::tempdir().unwrap();
    s.kubectl_ok(&["apply", "-f", &write(&dir, "job.yaml", &one_task_job("hello"))]);
    let task = placed_task(&mut r1);
    r1.report(&task, "running");
    s.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        &format!("task/{task}"),
        "--timeout=20s",
    ]);

    // kubectl waits while the Job runs, and returns once it completes.
    let waiting = s
        .kubectl_cmd()
        .args(["wait", "--for=condition=Complete", "job/hello", "--timeout=30s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let complete_while_running = wait_for("the Job running", T, || {
        let job = s.object("jobs", "hello")?;
        (job["status"]["state"] == "running").then(|| job["status"]["conditions"][0].clone())
    });
    assert_eq!(complete_while_running["type"], "Complete");
    assert_eq!(
        complete_while_running["status"], "False",
        "a running Job is not Complete"
    );
    r1.report(&task, "completed");
    let out = waiting.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("job.robot.k8s4r.io/hello condition met"), "{text}");
    s.kubectl_ok(&[
        "wait",
        "--for=condition=Succeeded",
        &format!("task/{task}"),
        "--timeout=20s",
    ]);
    let job = s.object("jobs", "hello").unwrap();
    let conditions = job["status"]["conditions"].as_array().unwrap();
    let failed = conditions.iter().find(|c| c["type"] == "Failed").unwrap();
    assert_eq!(failed["status"], "False", "{job}");
    let complete = conditions.iter().find(|c| c["type"] == "Complete").unwrap();
    assert_eq!(complete["reason"], "AllTasksSucceeded");
    assert!(
        complete["lastTransitionTime"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{complete}"
    );
}

#[test]
fn kubectl_patch_type_json() {
    if !have_kubectl() {
        return;
    }
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    s.kubectl_ok(&["apply", "-f", &write(&dir, "job.yaml", &one_task_job("hello"))]);
    let out = s.kubectl_ok(&[
        "patch",
        "job",
        "hello",
        "--type=json",
        "-p",
        r#"[{"op":"test","path":"/spec/type","value":"batch"},
            {"op":"replace","path":"/spec/taskGroups/0/count","value":2},
            {"op":"add","path":"/metadata/labels","value":{"team":"a"}},
            {"op":"copy","from":"/spec/taskGroups/0/tasks/0","path":"/spec/taskGroups/0/tasks/-"},
            {"op":"replace","path":"/spec/taskGroups/0/tasks/1/name","value":"second"}]"#,
    ]);
    assert!(out.contains("job.robot.k8s4r.io/hello patched"), "{out}");
    let job = s.object("jobs", "hello").unwrap();
    assert_eq!(job["spec"]["taskGroups"][0]["count"], 2);
    assert_eq!(job["metadata"]["labels"]["team"], "a");
    assert_eq!(job["spec"]["taskGroups"][0]["tasks"][1]["name"], "second");

    // A failed test applies nothing, and says which operation failed.
    let refused = s.kubectl(&[
        "patch",
        "job",
        "hello",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/labels"},{"op":"test","path":"/spec/type","value":"service"}]"#,
    ]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(err.contains("operation 1: test: /spec/type is \"batch\""), "{err}");
    assert_eq!(s.object("jobs", "hello").unwrap()["metadata"]["labels"]["team"], "a");
    // The result is validated like any write.
    let invalid = s.kubectl(&[
        "patch",
        "job",
        "hello",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/taskGroups/0/count","value":-1}]"#,
    ]);
    assert!(!invalid.status.success());
    let err = String::from_utf8_lossy(&invalid.stderr);
    assert!(err.contains("count"), "{err}");
}

#[test]
fn describe_job_shows_the_events_of_its_tasks() {
    if !have_kubectl() {
        return;
    }
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    // No robot is labelled fleet=a: the Task gets a FailedScheduling warning.
    s.kubectl_ok(&["apply", "-f", &write(&dir, "job.yaml", &one_task_job("lonely"))]);
    let described = wait_for("the Task's warning in the Job's describe", T, || {
        let out = s.kubectl_ok(&["describe", "job", "lonely"]);
        out.contains("FailedScheduling").then_some(out)
    });
    let events = described.split("Events:").nth(1).unwrap_or_default();
    assert!(
        events.contains("Warning") && events.contains("FailedScheduling"),
        "{described}"
    );
    // The Task's own describe keeps it too, and another Job's does not show it.
    let task = s.kubectl_ok(&["describe", "task", "lonely-g-r0-main"]);
    assert!(task.contains("FailedScheduling"), "{task}");
    s.kubectl_ok(&["apply", "-f", &write(&dir, "other.yaml", &one_task_job("lonely2"))]);
    let about = wait_for("lonely2's events", T, || {
        let r = s.get(
            "/api/v1/namespaces/default/events?fieldSelector=involvedObject.kind%3DJob,involvedObject.name%3Dlonely2",
        );
        let names: Vec<String> = r.json()["items"]
            .as_array()?
            .iter()
            .map(|e| e["involvedObject"]["name"].as_str().unwrap_or("").to_string())
            .collect();
        (!names.is_empty()).then_some(names)
    });
    assert!(about.iter().all(|n| n.starts_with("lonely2")), "{about:?}");
}

#[test]
fn kubectl_apply_server_side_create_update_conflict_force() {
    if !have_kubectl() {
        return;
    }
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let first = write(&dir, "job.yaml", &one_task_job("ssa"));
    let out = s.kubectl_ok(&["apply", "--server-side", "-f", &first]);
    assert!(out.contains("job.robot.k8s4r.io/ssa serverside-applied"), "{out}");
    let job = s.object("jobs", "ssa").unwrap();
    let managed = &job["metadata"]["managedFields"][0];
    assert_eq!(managed["manager"], "kubectl");
    assert_eq!(managed["operation"], "Apply");
    assert!(managed["fieldsV1"]["f:spec"].get("f:taskGroups").is_some(), "{managed}");

    // The same manager changes its fields and drops one (the selector).
    let second = write(
        &dir,
        "job2.yaml",
        &one_task_job("ssa")
            .replace("  robotSelector:\n    fleet: a\n", "")
            .replace("type: batch", "type: service"),
    );
    s.kubectl_ok(&["apply", "--server-side", "-f", &second]);
    let job = s.object("jobs", "ssa").unwrap();
    assert_eq!(job["spec"]["type"], "service");
    assert!(job["spec"].get("robotSelector").is_none(), "{job}");

    // Another manager changing a field kubectl owns: 409 naming both.
    let third = write(
        &dir,
        "job3.yaml",
        &one_task_job("ssa").replace("robotSelector:\n    fleet: a\n  ", ""),
    );
    let refused = s.kubectl(&["apply", "--server-side", "--field-manager=flux", "-f", &third]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(err.contains("conflict with \"kubectl\""), "{err}");
    assert!(err.contains(".spec.type"), "{err}");
    assert_eq!(
        s.object("jobs", "ssa").unwrap()["spec"]["type"],
        "service",
        "nothing written"
    );

    // --force-conflicts takes the field over.
    s.kubectl_ok(&[
        "apply",
        "--server-side",
        "--field-manager=flux",
        "--force-conflicts",
        "-f",
        &third,
    ]);
    let job = s.object("jobs", "ssa").unwrap();
    assert_eq!(job["spec"]["type"], "batch");
    let managers: Vec<(String, bool)> = job["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let owns_type = m["fieldsV1"]["f:spec"].get("f:type").is_some();
            (m["manager"].as_str().unwrap().to_string(), owns_type)
        })
        .collect();
    assert!(managers.contains(&("flux".into(), true)), "{managers:?}");
    assert!(managers.contains(&("kubectl".into(), false)), "{managers:?}");

    // Other writes are Update operations: kubectl label owns the label it
    // set, and an apply changing it conflicts with kubectl-label.
    s.kubectl_ok(&["label", "job", "ssa", "team=a"]);
    let labelled = write(
        &dir,
        "job4.yaml",
        &one_task_job("ssa")
            .replace("robotSelector:\n    fleet: a\n  ", "")
            .replace("  name: ssa\n", "  name: ssa\n  labels:\n    team: b\n"),
    );
    let refused = s.kubectl(&["apply", "--server-side", "--field-manager=flux", "-f", &labelled]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(err.contains("conflict with \"kubectl-label\""), "{err}");
    assert!(err.contains(".metadata.labels.team"), "{err}");
    // A client-side apply's create is recorded too.
    s.kubectl_ok(&["apply", "-f", &write(&dir, "csa.yaml", &one_task_job("csa"))]);
    let csa = s.object("jobs", "csa").unwrap();
    let entry = &csa["metadata"]["managedFields"][0];
    assert_eq!(entry["manager"], "kubectl-client-side-apply", "{csa}");
    assert_eq!(entry["operation"], "Update");
    assert!(entry["fieldsV1"]["f:spec"].get("f:taskGroups").is_some(), "{entry}");
}

#[test]
fn core_view_get_pods_nodes_and_kubectl_logs() {
    if !have_kubectl() {
        return;
    }
    let s = Server::start();
    let join = s.join_token();
    let mut r1 = Robot::register(&s, &join, "r1", json!({"fleet": "a"}));
    let dir = tempfile::tempdir().unwrap();
    s.kubectl_ok(&["apply", "-f", &write(&dir, "job.yaml", &one_task_job("logged"))]);
    let task = placed_task(&mut r1);
    r1.report(&task, "running");

    let nodes = s.kubectl_ok(&["get", "nodes"]);
    let row: Vec<&str> = nodes.lines().nth(1).unwrap_or("").split_whitespace().collect();
    assert_eq!(row[..3], ["r1", "Ready", "robot"], "{nodes}");
    let pods = s.kubectl_ok(&["get", "pods", "-o", "wide"]);
    let row: Vec<&str> = pods.lines().nth(1).unwrap_or("").split_whitespace().collect();
    assert_eq!(row[..4], [task.as_str(), "1/1", "Running", "0"], "{pods}");
    assert_eq!(row.last(), Some(&"r1"), "{pods}");
    let phase = s.kubectl_ok(&["get", "pod", &task, "-o", "jsonpath={.status.phase} {.spec.nodeName}"]);
    assert_eq!(phase, "Running r1");
    // kubectl describe node lists the robot's pods (fieldSelector spec.nodeName).
    let described = s.kubectl_ok(&["describe", "node", "r1"]);
    assert!(described.contains(&task), "{described}");

    // kubectl logs asks for the pod, then pods/NAME/log; the robot's agent
    // answers with the log when it next polls (a live agent long-polls).
    let logs = std::thread::scope(|scope| {
        let asked = scope.spawn(|| s.kubectl(&["logs", &task, "--tail", "2"]));
        let mut served = false;
        while !asked.is_finished() {
            let poll = r1.poll("1s");
            for req in poll["logRequests"].as_array().into_iter().flatten() {
                // As the agent does: the last tailLines lines.
                let all = ["line 1", "line 2", "line 3"];
                let n = req["tailLines"]
                    .as_u64()
                    .map_or(all.len(), |n| (n as usize).min(all.len()));
                let text: String = all[all.len() - n..].iter().map(|l| format!("{l}\n")).collect();
                let body = json!({"task": req["task"], "id": req["id"], "text": text});
                let up = r1.send("POST", "/agent/v1/robots/r1/logs", Some(&body));
                assert_eq!(up.status, 200, "{}", up.body);
                served = true;
            }
        }
        (asked.join().unwrap(), served)
    });
    let (out, served) = logs;
    assert!(served, "no log request reached the robot");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "line 2\nline 3\n");

    // Read-only: kubectl delete pod is refused.
    let refused = s.kubectl(&["delete", "pod", &task]);
    assert!(!refused.status.success());
    assert!(s.object("tasks", &task).is_some());
}

#[test]
fn one_label_set_per_robot_for_agents_selectors_and_kubectl_label() {
    if !have_kubectl() {
        return;
    }
    let s = Server::start();
    let join = s.join_token();
    let claim = json!({"demo": "true", "zone": "lab", "k8s4r.io/env": "production"});
    let mut r1 = Robot::register(&s, &join, "r1", claim.clone());
    let found = s.kubectl_ok(&["get", "robots", "-l", "demo=true", "-o", "name"]);
    assert_eq!(found.trim(), "robot.robot.k8s4r.io/r1", "a robot labelled by its agent");
    let claimed = s.kubectl_ok(&["get", "robots", "-l", "k8s4r.io/env", "-o", "name"]);
    assert_eq!(claimed.trim(), "", "operator-only labels a robot claims are dropped");

    // kubectl label edits the same set, and selectors (the scheduler's
    // too) see it.
    s.kubectl_ok(&["label", "robot", "r1", "fleet=a", "zone=hall-2", "--overwrite"]);
    let dir = tempfile::tempdir().unwrap();
    s.kubectl_ok(&["apply", "-f", &write(&dir, "job.yaml", &one_task_job("labelled"))]);
    assert_eq!(placed_task(&mut r1), "labelled-g-r0-main");
    s.kubectl_ok(&["label", "robot", "r1", "demo-"]);
    let gone = s.kubectl_ok(&["get", "robots", "-l", "demo=true", "-o", "name"]);
    assert_eq!(gone.trim(), "", "kubectl label removes an agent's label");

    // The agent registers again: its keys come back, the operator's value
    // of zone stays; a key it no longer reports stays (an agent only adds
    // and changes: its labels may have come from the Robot's manifest).
    let again = json!({"demo": "true", "zone": "lab"});
    let r = r1.register_again(&join, json!({"labels": again}));
    assert_eq!(r.status, 200, "{}", r.body);
    let labels = s.object("robots", "r1").unwrap()["metadata"]["labels"].clone();
    assert_eq!(
        labels,
        json!({"demo": "true", "zone": "hall-2", "fleet": "a"}),
        "{labels}"
    );
    let r = r1.register_again(&join, json!({"labels": {"zone": "lab"}}));
    assert_eq!(r.status, 200, "{}", r.body);
    let labels = s.object("robots", "r1").unwrap()["metadata"]["labels"].clone();
    assert_eq!(
        labels,
        json!({"demo": "true", "zone": "hall-2", "fleet": "a"}),
        "{labels}"
    );

    // A Robot manifest in the original CRD's form (labels in spec.labels):
    // the same one set, before and after its agent registers.
    let manifest = "apiVersion: robot.k8s4r.io/v1alpha1\nkind: Robot\nmetadata:\n  name: r2\nspec:\n  labels:\n    fleet: warehouse\n";
    s.kubectl_ok(&["apply", "-f", &write(&dir, "r2.yaml", manifest)]);
    let found = s.kubectl_ok(&["get", "robots", "-l", "fleet=warehouse", "-o", "name"]);
    assert_eq!(found.trim(), "robot.robot.k8s4r.io/r2");
    let _r2 = Robot::register(&s, &join, "r2", json!({"arch": "arm64"}));
    let r2 = s.object("robots", "r2").unwrap();
    assert_eq!(
        r2["metadata"]["labels"],
        json!({"fleet": "warehouse", "arch": "arm64"}),
        "{r2}"
    );
    let again = s.kubectl_ok(&["apply", "-f", &write(&dir, "r2.yaml", manifest)]);
    assert!(again.contains("unchanged"), "{again}");
}

/// `kubectl get nodes -w` and `get pods -w` follow a real agent and its
/// task; `kubectl logs -f --tail 1` prints the newest line, then every new
/// line exactly once in order, and ends by itself when the task completes.
#[test]
fn kubectl_follows_logs_and_watches_pods_and_nodes() {
    if !have_kubectl() {
        return;
    }
    let s = Server::start();
    let data = tempfile::tempdir().unwrap();
    let mut nodes = Lines::of(s.kubectl_cmd().args(["get", "nodes", "-w"]));
    let mut pods = Lines::of(s.kubectl_cmd().args(["get", "pods", "-w"]));
    let _agent = common::ConnectedAgent::start(
        &s.agent_base,
        &s.join_token(),
        "follow-bot",
        "fleet=a",
        &data.path().join("agent"),
        &[],
    );
    nodes.expect("follow-bot Ready robot");
    // 40 lines over ~10 s: long enough to start following while it runs.
    let ticks = "['-c', 'for i in $(seq 1 40); do echo tick-$i; sleep 0.25; done']";
    let job = one_task_job("ticker").replace(
        "command: /bin/true",
        &format!("command: /bin/sh\n          args: {ticks}"),
    );
    let dir = tempfile::tempdir().unwrap();
    s.kubectl_ok(&["apply", "-f", &write(&dir, "ticker.yaml", &job)]);
    let task = "ticker-g-r0-main";
    pods.expect(&format!("{task} 1/1 Running"));
    let mut follow = Lines::of(s.kubectl_cmd().args(["logs", task, "-f", "--tail", "1"]));
    let (lines, status) = follow.until_exit(Duration::from_secs(60));
    assert!(status.success(), "kubectl logs -f failed: {lines:?}");
    let numbers: Vec<u32> = lines
        .iter()
        .map(|l| {
            l.strip_prefix("tick-")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{l:?} in {lines:?}"))
        })
        .collect();
    assert_eq!(
        numbers.last(),
        Some(&40),
        "follow ends with the task's last line: {lines:?}"
    );
    assert!(
        numbers.len() >= 2,
        "--tail 1 then new lines, not only the end: {lines:?}"
    );
    let first = numbers[0];
    assert_eq!(numbers, (first..=40).collect::<Vec<_>>(), "each line once, in order");
    pods.expect(&format!("{task} 0/1 Completed"));
    // --tail N without -f, from the real agent's files.
    let tail = s.kubectl_ok(&["logs", task, "--tail", "2"]);
    assert_eq!(tail, "tick-39\ntick-40\n");
}
