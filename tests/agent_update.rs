//! Over-the-air agent updates on real parts: the control plane with a
//! release key, a connected agent running from a copy of its binary (the
//! tests replace it) with two service tasks, AgentReleases signed by
//! `k8s4r release sign`, and "another build" made by patching the copy's
//! version slot (`k8s4r release set-version`). The test is the robot's
//! init: an agent that dies is started again by it.

mod common;
mod server_util;

use common::ConnectedAgent as Agent;
use serde_json::{json, Value};
use server_util::{server_bin, wait_for, Server};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const RELEASES: &str = "/apis/robot.k8s4r.io/v1alpha1/agentreleases";
const JOBS: &str = "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs";
const ROBOT: &str = "ota-robot";
const SLOW: Duration = Duration::from_secs(90);

struct Fixture {
    dir: tempfile::TempDir,
    server: Server,
    /// The agent binary the robot runs (replaced by updates).
    bin: PathBuf,
    /// Its bytes before any update.
    original: Vec<u8>,
    /// The binaries robots download: served over HTTP with Range support.
    files: PathBuf,
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("run k8s4r");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("release");
        run(std::process::Command::new(server_bin())
            .args(["release", "keygen", "--out"])
            .arg(&key));
        let public = format!("{}.pub", key.display());
        let server = Server::start_with(&["--poll-interval", "1s", "--release-public-key", &public]);
        // A stripped copy: a tenth of the debug build's bytes to move.
        let bin_dir = dir.path().join("bin");
        std::fs::create_dir_all(&bin_dir).unwrap();
        let bin = bin_dir.join("k8s4r-agent");
        let stripped = std::process::Command::new("strip")
            .arg("-o")
            .arg(&bin)
            .arg(common::agent_bin())
            .status()
            .is_ok_and(|s| s.success());
        if !stripped {
            std::fs::copy(common::agent_bin(), &bin).unwrap();
        }
        let original = std::fs::read(&bin).unwrap();
        let files = dir.path().join("files");
        std::fs::create_dir_all(&files).unwrap();
        let (port, requests) = common::serve_dir(files.clone());
        Fixture {
            dir,
            server,
            bin,
            original,
            files,
            port,
            requests,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The connected agent (from the copy), with `env`.
    fn agent(&self, env: &[(&str, &str)]) -> Agent {
        let token = self.server.join_token();
        let agent = Agent::start_binary(
            &self.bin,
            env,
            &self.server.agent_base,
            &token,
            ROBOT,
            "ota=yes",
            &self.data(),
        );
        wait_for("the robot Online", SLOW, || {
            (self.server.object("robots", ROBOT)?["status"]["phase"] == "Online").then_some(())
        });
        agent
    }

    /// "Another build": the original with `version` in its slot, served as
    /// files/<version>; its bytes.
    fn build(&self, version: &str) -> Vec<u8> {
        let out = self.files.join(version);
        run(std::process::Command::new(server_bin())
            .args(["release", "set-version", "--version", version])
            .arg(&self.bin)
            .arg(&out));
        std::fs::read(out).unwrap()
    }

    /// `k8s4r release sign` of files/<version> (with `key`, default the
    /// server's), created on the server.
    fn release(&self, name: &str, version: &str, key: Option<&Path>) -> Value {
        let release: Value = serde_yaml_ng::from_str(&self.signed(name, version, key)).unwrap();
        let r = self.server.send_json("POST", RELEASES, &release);
        assert_eq!(r.status, 201, "{}", r.body);
        release
    }

    /// What `k8s4r release sign` prints for files/<version>.
    fn signed(&self, name: &str, version: &str, key: Option<&Path>) -> String {
        let default_key = self.dir.path().join("release.key");
        run(std::process::Command::new(server_bin())
            .args(["release", "sign", "--key"])
            .arg(key.unwrap_or(&default_key))
            .args(["--arch", k8s4r::api::agent_release::this_arch(), "--name", name])
            .args(["--url", &format!("http://127.0.0.1:{}/{version}", self.port)])
            .arg(self.files.join(version)))
    }

    /// Two service tasks; their (name, pid) once both run.
    fn two_tasks(&self) -> Vec<(String, i64)> {
        let tasks: Vec<Value> = ["a", "b"]
            .map(|t| {
                json!({"name": t, "driver": "exec", "config": {"execConfig": {
                    "command": "/bin/sh", "args": ["-c", "exec sleep 3600"]}}})
            })
            .to_vec();
        let job = json!({
            "apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job",
            "metadata": {"name": "steady", "namespace": "default"},
            "spec": {"type": "service", "robotSelector": {"ota": "yes"}, "taskGroups": [{
                "name": "g", "count": 1,
                "tasks": tasks
            }]}
        });
        let r = self.server.send_json("POST", JOBS, &job);
        assert_eq!(r.status, 201, "{}", r.body);
        wait_for("two tasks running", SLOW, || {
            let tasks = self.running();
            (tasks.len() == 2).then_some(tasks)
        })
    }

    /// (name, pid) of the running tasks, by name.
    fn running(&self) -> Vec<(String, i64)> {
        let list = self.server.list("tasks", "");
        let mut out: Vec<(String, i64)> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["status"]["state"] == "running")
            .filter_map(|t| {
                Some((
                    t["metadata"]["name"].as_str()?.to_string(),
                    t["status"]["pid"].as_i64()?,
                ))
            })
            .collect();
        out.sort();
        out
    }

    /// An AgentRelease (cluster-scoped) as stored.
    fn release_object(&self, name: &str) -> Option<Value> {
        let r = self.server.get(&format!("{RELEASES}/{name}"));
        (r.status == 200).then(|| r.json())
    }

    fn robot_status(&self) -> Value {
        self.server
            .object("robots", ROBOT)
            .map(|r| r["status"].clone())
            .unwrap_or_default()
    }

    /// The Robot's status once it reports `version`, installed by its last
    /// update.
    fn version_of(&self, version: &str) -> Value {
        wait_for(&format!("the robot reports {version}"), SLOW, || {
            let s = self.robot_status();
            (s["agentVersion"] == version && s["lastUpdate"]["version"] == version).then_some(s)
        })
    }

    fn wait_last_update(&self, result: &str) -> Value {
        wait_for(&format!("lastUpdate {result}"), SLOW, || {
            let s = self.robot_status();
            (s["lastUpdate"]["result"] == result).then_some(s)
        })
    }

    /// An event on the Robot (events are written asynchronously).
    fn wait_event(&self, reason: &str) {
        wait_for(&format!("a {reason} event"), SLOW, || {
            self.server
                .events_of("Robot", ROBOT)
                .iter()
                .any(|e| e.0 == reason)
                .then_some(())
        });
    }

    fn binary_requests(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

/// Every task keeps its pid, is alive, and was started once (restartCount
/// 0, one Started event).
fn same_tasks(f: &Fixture, before: &[(String, i64)]) {
    assert_eq!(f.running(), before, "the tasks keep their pids");
    for (name, pid) in before {
        assert!(Path::new(&format!("/proc/{pid}")).exists(), "{name} ({pid}) runs");
        let t = f.server.object("tasks", name).unwrap();
        assert_eq!(
            t["status"]["restartCount"].as_i64().unwrap_or(0),
            0,
            "{name}: {}",
            t["status"]
        );
        let started = f
            .server
            .events_of("Task", name)
            .iter()
            .filter(|e| e.0 == "Started")
            .count();
        assert!(started <= 1, "{name} started {started} times");
    }
}

#[test]
fn a_signed_release_replaces_the_agent_in_place_and_no_task_restarts() {
    let f = Fixture::new();
    let agent = f.agent(&[]);
    let tasks = f.two_tasks();
    let agent_pid = agent.pid().unwrap();
    let status = f.robot_status();
    assert_eq!(status["agentVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["architecture"], k8s4r::api::agent_release::this_arch());
    let v2 = f.build("0.1.1-ota");
    f.release("agent-0-1-1", "0.1.1-ota", None);
    let status = wait_for("the robot reports 0.1.1-ota", SLOW, || {
        let s = f.robot_status();
        (s["agentVersion"] == "0.1.1-ota" && s["lastUpdate"]["result"] == "Applied").then_some(s)
    });
    assert_eq!(status["lastUpdate"]["release"], "agent-0-1-1");
    assert_eq!(agent.pid(), Some(agent_pid), "exec in place: the same process");
    assert!(Path::new(&format!("/proc/{agent_pid}")).exists());
    assert_eq!(std::fs::read(&f.bin).unwrap(), v2, "the new binary is in place");
    assert_eq!(
        std::fs::read(f.bin.with_extension("prev")).unwrap_or_default(),
        f.original,
        "the previous one is kept as .prev"
    );
    same_tasks(&f, &tasks);
    f.wait_event("AgentUpdated");
    let release = wait_for("the release's status", SLOW, || {
        let r = f.release_object("agent-0-1-1")?;
        (r["status"]["updated"] == 1).then_some(r)
    });
    assert!(
        release["status"]["message"].as_str().unwrap().starts_with("complete"),
        "{release}"
    );
    assert!(
        !f.data().join("update/pending.json").exists(),
        "probation ended when the new agent reached the server"
    );
    // The tasks are children of the new program image: a task that dies is
    // reaped with its real exit and restarted by policy.
    let (name, pid) = tasks[0].clone();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    wait_for("the killed task seen and restarted", SLOW, || {
        let t = f.server.object("tasks", &name)?;
        let restarted = t["status"]["pid"].as_i64().is_some_and(|p| p != pid) && t["status"]["state"] == "running";
        restarted.then_some(())
    });
    let t = f.server.object("tasks", &name).unwrap();
    assert_eq!(
        t["status"]["signal"], 9,
        "the exit was reaped, not guessed: {}",
        t["status"]
    );
}

#[test]
fn a_release_that_dies_at_start_is_rolled_back_after_three_starts() {
    let f = Fixture::new();
    let mut agent = f.agent(&[("K8S4R_TEST_FAULT", "exit-at-start@0.1.1-bad")]);
    let tasks = f.two_tasks();
    f.build("0.1.1-bad");
    f.release("agent-bad", "0.1.1-bad", None);
    // Init: start the agent again whenever it exits, and count the exits.
    let mut exits = Vec::new();
    let status = wait_for("the release rolled back", SLOW, || {
        if let Some(code) = agent.exited() {
            exits.push(code.code());
            same_tasks(&f, &tasks);
            agent.spawn();
        }
        let s = f.robot_status();
        (s["lastUpdate"]["result"] == "RolledBack").then_some(s)
    });
    assert_eq!(
        exits,
        [Some(70); 3],
        "three starts of the bad release, then the rollback"
    );
    assert_eq!(status["agentVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["lastUpdate"]["version"], "0.1.1-bad");
    assert!(
        status["lastUpdate"]["message"].as_str().unwrap().contains("3 starts"),
        "{status}"
    );
    assert_eq!(
        std::fs::read(&f.bin).unwrap(),
        f.original,
        "the previous binary is back"
    );
    same_tasks(&f, &tasks);
    f.wait_event("AgentUpdateRolledBack");
    let release = wait_for("the rollout halted", SLOW, || {
        let r = f.release_object("agent-bad")?;
        (r["status"]["failed"] == 1).then_some(r)
    });
    assert!(
        release["status"]["message"].as_str().unwrap().contains("halted"),
        "{release}"
    );
    // Not tried again: the agent keeps running the old version.
    let downloads = f.binary_requests();
    common::throughout("no second attempt", Duration::from_secs(3), || {
        if agent.exited().is_some() {
            return Err("the agent exited".into());
        }
        if f.binary_requests() != downloads {
            return Err("downloaded again".into());
        }
        Ok(())
    });
    // Nor after another update overwrote lastUpdate: a forged release is
    // refused, and the rolled-back one is still not offered again (the
    // robot image test caught it downloaded and installed a second time).
    let other = f.dir.path().join("other");
    run(std::process::Command::new(server_bin())
        .args(["release", "keygen", "--out"])
        .arg(&other));
    f.build("0.1.2-forged");
    f.release("agent-forged", "0.1.2-forged", Some(&other.with_extension("key")));
    let status = wait_for("the forged release refused", SLOW, || {
        let s = f.robot_status();
        (s["lastUpdate"]["version"] == "0.1.2-forged").then_some(s)
    });
    assert_eq!(status["lastUpdate"]["result"], "Refused", "{status}");
    assert_eq!(
        status["failedUpdates"],
        serde_json::json!(["0.1.1-bad", "0.1.2-forged"]),
        "{status}"
    );
    common::throughout("no attempt after the refusal", Duration::from_secs(3), || {
        if agent.exited().is_some() {
            return Err("the agent exited".into());
        }
        if f.binary_requests() != downloads {
            return Err("downloaded again".into());
        }
        Ok(())
    });
}

#[test]
fn a_release_that_never_reaches_the_server_is_rolled_back_at_its_deadline() {
    let f = Fixture::new();
    let agent = f.agent(&[
        ("K8S4R_TEST_FAULT", "refuse-answers@0.1.1-deaf"),
        ("K8S4R_UPDATE_DEADLINE", "3s"),
    ]);
    let tasks = f.two_tasks();
    let agent_pid = agent.pid().unwrap();
    f.build("0.1.1-deaf");
    f.release("agent-deaf", "0.1.1-deaf", None);
    let status = f.wait_last_update("RolledBack");
    assert!(
        status["lastUpdate"]["message"]
            .as_str()
            .unwrap()
            .contains("did not reach the server within 3s"),
        "{status}"
    );
    assert_eq!(status["agentVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(agent.pid(), Some(agent_pid), "both execs in place");
    assert_eq!(std::fs::read(&f.bin).unwrap(), f.original);
    same_tasks(&f, &tasks);
    f.wait_event("AgentUpdateRolledBack");
}

#[test]
fn a_bad_signature_is_refused_before_any_download() {
    let f = Fixture::new();
    let agent = f.agent(&[]);
    let tasks = f.two_tasks();
    f.build("0.1.1-forged");
    let other = f.dir.path().join("other");
    run(std::process::Command::new(server_bin())
        .args(["release", "keygen", "--out"])
        .arg(&other));
    f.release("agent-forged", "0.1.1-forged", Some(&other.with_extension("key")));
    let status = f.wait_last_update("Refused");
    assert!(
        status["lastUpdate"]["message"].as_str().unwrap().contains("signature"),
        "{status}"
    );
    assert_eq!(f.binary_requests(), 0, "nothing was downloaded");
    assert_eq!(std::fs::read(&f.bin).unwrap(), f.original);
    assert!(!f.bin.with_extension("prev").exists(), "no swap");
    assert_eq!(status["agentVersion"], env!("CARGO_PKG_VERSION"));
    assert!(agent.pid().is_some());
    same_tasks(&f, &tasks);
    f.wait_event("AgentUpdateRefused");
}

#[test]
fn kill_9_at_every_step_leaves_a_working_agent_and_starts_no_task_twice() {
    for (i, point) in [
        "kill-mid-download",
        "kill-after-verify",
        "kill-after-rename",
        "kill-after-exec",
    ]
    .into_iter()
    .enumerate()
    {
        let f = Fixture::new();
        let mut agent = f.agent(&[("K8S4R_TEST_FAULT", point)]);
        let tasks = f.two_tasks();
        let version = format!("0.1.{}-k{i}", i + 2);
        let v2 = f.build(&version);
        f.release(&format!("agent-k{i}"), &version, None);
        wait_for(&format!("{point}: the agent killed"), SLOW, || agent.exited());
        // A power cut here: whatever is at the binary's path must run.
        let out = std::process::Command::new(&f.bin).arg("--version").output().unwrap();
        assert!(out.status.success(), "{point}: the binary in place runs");
        same_tasks(&f, &tasks);
        // Init starts it again (the fault was one power cut).
        agent.env.clear();
        agent.spawn();
        let status = wait_for(&format!("{point}: {version} reported"), SLOW, || {
            let s = f.robot_status();
            (s["agentVersion"] == version.as_str() && s["lastUpdate"]["result"] == "Applied").then_some(s)
        });
        assert_eq!(std::fs::read(&f.bin).unwrap(), v2, "{point}");
        same_tasks(&f, &tasks);
        if point == "kill-mid-download" {
            let ranged = f
                .requests
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.contains("Range: bytes="))
                .count();
            assert_eq!(
                ranged,
                1,
                "{point}: the download resumed: {:?}",
                f.requests.lock().unwrap()
            );
        }
        let leftovers: Vec<_> = std::fs::read_dir(f.data().join("update"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(leftovers, ["last.json"], "{point}: nothing left behind; {status}");
    }
}

/// AgentRelease is cluster-scoped: `k8s4r release sign` prints no
/// namespace, kubectl applies and lists it without one, discovery says so,
/// and the namespaced path does not serve it. A release stored under a
/// namespace (as releases were before) is moved to the cluster scope on
/// start, kept to its namespace's robots (spec.namespaces), renamed
/// `<namespace>-<name>` when a cluster release has its name; nothing lost.
#[test]
fn agent_releases_are_cluster_scoped_and_namespaced_ones_move_there_unwidened() {
    use k8s4r::server::store::{sqlite::SqliteStore, Key, Store};
    let mut f = Fixture::new();
    f.build("0.1.5");
    let yaml = f.signed("clash", "0.1.5", None);
    assert!(!yaml.contains("namespace"), "{yaml}");
    let file = f.dir.path().join("clash.yaml");
    std::fs::write(&file, &yaml).unwrap();
    f.server.kubectl_ok(&["apply", "-f", file.to_str().unwrap()]);
    let table = f.server.kubectl_ok(&["get", "agentreleases"]);
    assert!(
        table.contains("VERSION") && table.contains("clash") && table.contains("0.1.5"),
        "{table}"
    );
    assert!(!table.contains("NAMESPACE"), "{table}");
    let listed = f.server.get(RELEASES).json();
    assert!(listed["items"][0]["metadata"].get("namespace").is_none(), "{listed}");
    let discovery = f.server.get("/apis/robot.k8s4r.io/v1alpha1").json();
    let scope = |name: &str| {
        discovery["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| r["namespaced"].clone())
    };
    assert_eq!(scope("agentreleases"), Some(json!(false)));
    assert_eq!(scope("agentreleases/status"), Some(json!(false)));
    assert_eq!(scope("robots"), Some(json!(true)));
    let g = "/apis/robot.k8s4r.io/v1alpha1";
    assert_eq!(
        f.server.get(&format!("{g}/namespaces/default/agentreleases")).status,
        404
    );
    assert_eq!(
        f.server
            .get(&format!("{g}/namespaces/default/agentreleases/clash"))
            .status,
        404
    );
    assert_eq!(
        f.server.get(&format!("{g}/jobs/steady")).status,
        404,
        "a namespaced kind at a cluster path"
    );

    // Releases of an earlier version, stored under the namespace "lab".
    f.server.stop();
    let body: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    let old = |name: &str| {
        let mut v = body.clone();
        v["metadata"] = json!({"name": name, "namespace": "lab", "uid": format!("uid-{name}"),
                               "labels": {"ring": "field"}, "creationTimestamp": "2026-01-01T00:00:00Z"});
        v["spec"]["maxParallel"] = json!(3);
        v
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let store = SqliteStore::open(f.server.data.path(), 10).unwrap();
            for name in ["old", "clash"] {
                store
                    .create(&Key::new("agentreleases", "lab", name), old(name))
                    .await
                    .unwrap();
            }
        });
    f.server.start_again();
    let items = wait_for("the namespaced releases moved", SLOW, || {
        let items = f.server.get(RELEASES).json()["items"].as_array()?.clone();
        (items.len() == 3 && items.iter().all(|i| i["status"]["message"].is_string())).then_some(items)
    });
    let by_name = |n: &str| {
        items
            .iter()
            .find(|i| i["metadata"]["name"] == n)
            .unwrap_or_else(|| panic!("{n}: {items:?}"))
    };
    for (name, from) in [("old", "lab/old"), ("lab-clash", "lab/clash")] {
        let r = by_name(name);
        assert!(r["metadata"].get("namespace").is_none(), "{r}");
        assert_eq!(r["spec"]["namespaces"], json!(["lab"]), "kept to its namespace: {r}");
        assert_eq!(r["spec"]["maxParallel"], 3, "{r}");
        assert_eq!(r["metadata"]["labels"]["ring"], "field", "{r}");
        assert_eq!(r["metadata"]["annotations"]["k8s4r.io/migrated-from"], from, "{r}");
    }
    assert!(
        by_name("clash")["spec"].get("namespaces").is_none(),
        "the cluster one untouched"
    );
    let store_left = f
        .server
        .get(&format!("{g}/agentreleases?fieldSelector=metadata.namespace%3Dlab"))
        .json();
    assert_eq!(store_left["items"], json!([]), "{store_left}");
}

/// autoRevert: a release that halts (here: another robot of the fleet
/// rolled it back) takes the robots already on it back to the newest
/// earlier release, a downgrade they accept for that offer only; the tasks
/// keep their processes. Meanwhile the earlier release offers nothing to a
/// robot on the newer version (it would refuse the downgrade).
#[test]
fn a_halted_release_with_auto_revert_takes_its_robots_back_to_the_previous_release() {
    let f = Fixture::new();
    let _agent = f.agent(&[]);
    let tasks = f.two_tasks();
    f.build("0.1.1");
    f.release("agent-a", "0.1.1", None);
    f.version_of("0.1.1");
    f.build("0.1.2");
    let mut b: Value = serde_yaml_ng::from_str(&f.signed("agent-b", "0.1.2", None)).unwrap();
    b["spec"]["autoRevert"] = json!(true);
    let r = f.server.send_json("POST", RELEASES, &b);
    assert_eq!(r.status, 201, "{}", r.body);
    f.version_of("0.1.2");
    // Another robot of the fleet rolls 0.1.2 back: the rollout halts.
    let robots = "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/robots";
    let ghost =
        json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Robot", "metadata": {"name": "ghost"}, "spec": {}});
    let r = f.server.send_json("POST", robots, &ghost);
    assert_eq!(r.status, 201, "{}", r.body);
    let failed = json!({"status": {"architecture": k8s4r::api::agent_release::this_arch(), "agentVersion": "0.1.1",
        "lastUpdate": {"release": "agent-b", "version": "0.1.2", "result": "RolledBack", "message": "exited at start"}}});
    f.server.kubectl_ok(&[
        "patch",
        "robot",
        "ghost",
        "--subresource=status",
        "--type=merge",
        "-p",
        &failed.to_string(),
    ]);
    let s = f.version_of("0.1.1");
    assert_eq!(s["lastUpdate"]["release"], "agent-a", "{s}");
    assert_eq!(s["lastUpdate"]["result"], "Applied", "{s}");
    same_tasks(&f, &tasks);
    let b = f.release_object("agent-b").unwrap();
    let message = b["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("halted: 1 robot(s)") && message.contains("autoRevert"),
        "{b}"
    );
}

#[test]
fn release_revert_by_command_takes_its_robots_back_and_pause_stops_offers() {
    let f = Fixture::new();
    let _agent = f.agent(&[]);
    let tasks = f.two_tasks();
    let release_cmd = |args: &[&str]| {
        let out = f.server.k8s4r_cmd().arg("release").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    f.build("0.1.1");
    f.release("agent-a", "0.1.1", None);
    f.version_of("0.1.1");
    // Paused before a robot takes it: nobody is offered 0.1.2.
    f.build("0.1.2");
    let mut b: Value = serde_yaml_ng::from_str(&f.signed("agent-b", "0.1.2", None)).unwrap();
    b["spec"]["paused"] = json!(true);
    let r = f.server.send_json("POST", RELEASES, &b);
    assert_eq!(r.status, 201, "{}", r.body);
    let downloads = f.binary_requests();
    common::throughout("paused: not offered", Duration::from_secs(3), || {
        if f.binary_requests() != downloads {
            return Err("downloaded while paused".into());
        }
        Ok(())
    });
    assert!(release_cmd(&["resume", "agent-b"]).contains("resumed"));
    f.version_of("0.1.2");
    let out = release_cmd(&["revert", "agent-b"]);
    assert!(out.contains("reverted"), "{out}");
    let s = f.version_of("0.1.1");
    assert_eq!(s["lastUpdate"]["release"], "agent-a", "{s}");
    same_tasks(&f, &tasks);
    let b = wait_for("agent-b's status says reverted", SLOW, || {
        let b = f.release_object("agent-b")?;
        b["status"]["message"].as_str()?.starts_with("reverted:").then_some(b)
    });
    assert_eq!(b["spec"]["revert"], true, "{b}");
    // A name that is not one is refused before any request.
    let out = f
        .server
        .k8s4r_cmd()
        .args(["release", "revert", "a/b"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME \"a/b\""));
}

#[test]
fn a_served_binary_that_is_not_the_signed_one_is_refused_and_nothing_is_left() {
    let f = Fixture::new();
    let agent = f.agent(&[]);
    let tasks = f.two_tasks();
    let agent_pid = agent.pid().unwrap();
    let mut bytes = f.build("0.1.1-evil");
    let release: Value = serde_yaml_ng::from_str(&f.signed("agent-evil", "0.1.1-evil", None)).unwrap();
    // A mirror (or anyone on the plain-http path) serves other bytes of
    // the signed size: one flipped bit in the middle.
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(f.files.join("0.1.1-evil"), &bytes).unwrap();
    let r = f.server.send_json("POST", RELEASES, &release);
    assert_eq!(r.status, 201, "{}", r.body);
    let status = f.wait_last_update("Refused");
    let message = status["lastUpdate"]["message"].as_str().unwrap();
    assert!(
        message.contains("sha256") && message.contains("the release says"),
        "{status}"
    );
    assert_eq!(f.binary_requests(), 1, "downloaded once, not retried");
    assert_eq!(
        std::fs::read(&f.bin).unwrap(),
        f.original,
        "the running agent untouched"
    );
    assert!(!f.bin.with_extension("prev").exists(), "no swap");
    assert_eq!(agent.pid(), Some(agent_pid));
    let left: Vec<_> = std::fs::read_dir(f.data().join("update"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["last.json"], "no download left behind");
    assert_eq!(status["failedUpdates"], json!(["0.1.1-evil"]), "{status}");
    same_tasks(&f, &tasks);
    f.wait_event("AgentUpdateRefused");
}
