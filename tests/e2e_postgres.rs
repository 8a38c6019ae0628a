//! Issue 8's seed flow on real parts, end to end: a Job with a `network`
//! block goes through the control plane to a connected agent; the group's
//! Envoy carries the app's plaintext PostgreSQL connection to
//! 127.0.0.1:localPort over mTLS (the robot's SVID and trust bundle from a
//! SPIRE stand-in on a unix socket) to a server-side Envoy that requires a
//! client certificate and allows only the robot's SPIFFE ID, in front of a
//! real PostgreSQL started by the test. Two more Jobs must not get the row:
//! one pins the wrong server identity (the robot's Envoy refuses the
//! server), one runs with another robot's SVID (the server's RBAC refuses
//! it); not a byte of theirs reaches PostgreSQL.
//!
//! Skips (with a message) when not root or when envoy, openssl, psql or
//! the PostgreSQL server binaries are missing.

mod common;
mod envoy_fixtures;
mod server_util;

use common::{wait_for, ConnectedAgent};
use envoy_fixtures::sds::SdsServer;
use envoy_fixtures::{free_port, Ca, ServerSide};
use k8s4r::envoy::{self, config::Layout};
use serde_json::{json, Value};
use server_util::Server;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const JOBS: &str = "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs";
const ROBOT: &str = "robot-pg";
const DB_ID: &str = "spiffe://example.org/db";
const WAIT: Duration = Duration::from_secs(30);

/// A PostgreSQL server on 127.0.0.1:port, run as the `postgres` user from a
/// fresh cluster in a temp dir (trust auth). Stopped on drop.
struct Postgres {
    port: u16,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Postgres {
    fn start(bin: &Path, user: (u32, u32)) -> Postgres {
        let dir = tempfile::Builder::new().prefix("k8s4r-pg").tempdir().unwrap();
        std::os::unix::fs::chown(dir.path(), Some(user.0), Some(user.1)).unwrap();
        let data = dir.path().join("data");
        let as_postgres = |program: &str| {
            let mut c = Command::new(bin.join(program));
            c.uid(user.0)
                .gid(user.1)
                .current_dir(dir.path())
                .env("LC_ALL", "C")
                .stdin(Stdio::null());
            c
        };
        let out = as_postgres("initdb")
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let log = dir.path().join("postgres.log");
        let file = std::fs::File::create(&log).unwrap();
        let mut child = as_postgres("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args(["-c", "fsync=off", "-c", "log_connections=on"])
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start postgres");
        wait_for("PostgreSQL accepts connections", WAIT, || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "postgres exited ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            let ready = Command::new("pg_isready")
                .args([
                    "-q",
                    "-t",
                    "1",
                    "-U",
                    "postgres",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ])
                .status()
                .is_ok_and(|s| s.success());
            ready.then_some(())
        });
        Postgres {
            port,
            child,
            log,
            _dir: dir,
        }
    }

    /// Run SQL directly (not through any proxy); returns psql's output.
    fn psql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args([
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-p", &self.port.to_string(), "-tAc", sql])
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        use rustix::process::{kill_process, Pid, Signal};
        // SIGQUIT: immediate shutdown; the postmaster takes its backends with it.
        if let Some(pid) = Pid::from_raw(self.child.id() as i32) {
            let _ = kill_process(pid, Signal::QUIT);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) {
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- postgres log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// What the test needs from the machine, or None after saying what is missing.
struct Tools {
    envoy: PathBuf,
    pg_bin: PathBuf,
    postgres_user: (u32, u32),
}

fn tools_or_skip(test: &str) -> Option<Tools> {
    let skip = |why: &str| {
        eprintln!("SKIP {test}: {why}");
        None
    };
    if !rustix::process::geteuid().is_root() {
        return skip("needs root (PostgreSQL runs as the postgres user)");
    }
    let envoy = envoy_fixtures::envoy_or_skip(test)?;
    for (tool, arg) in [
        ("openssl", "version"),
        ("psql", "--version"),
        ("pg_isready", "--version"),
    ] {
        let found = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return skip(&format!(
                "`{tool}` is not installed (apt-get install postgresql openssl)"
            ));
        }
    }
    // The newest /usr/lib/postgresql/<version>/bin with initdb and postgres.
    let pg_bin = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").is_file() && bin.join("postgres").is_file())
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin);
    let Some(pg_bin) = pg_bin else {
        return skip("no PostgreSQL server in /usr/lib/postgresql/<version>/bin (apt-get install postgresql)");
    };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let postgres_user = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == "postgres").then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    });
    let Some(postgres_user) = postgres_user else {
        return skip("no `postgres` system user");
    };
    Some(Tools {
        envoy,
        pg_bin,
        postgres_user,
    })
}

/// A batch Job whose `count` replicas ask PostgreSQL for this robot's note
/// through their group's Envoy: upstream `db` on 127.0.0.1:`local_port`,
/// mTLS to `server_port`, which must present `peer_id`.
#[derive(Clone, Copy)]
struct AppJob<'a> {
    name: &'a str,
    count: u32,
    local_port: u16,
    server_port: u16,
    peer_id: &'a str,
    /// The SPIRE agent socket the robot's Envoy gets its SVID from.
    spire: &'a Path,
    /// The group's init task appends a line here.
    init_log: &'a Path,
    /// An app that got no row waits for this file before it exits 1.
    hold: Option<&'a Path>,
}

impl AppJob<'_> {
    fn json(&self) -> Value {
        // The app speaks plaintext (sslmode=disable): mTLS is Envoy's
        // business. A few tries only in case the proxy needs a moment.
        let hold = self
            .hold
            .map(|f| format!("while [ ! -e {} ]; do sleep 0.05; done\n", f.display()))
            .unwrap_or_default();
        let app = format!(
            r#"exec 2>&1
export PGCONNECT_TIMEOUT=5 PGSSLMODE=disable
echo "replica $K8S4R_REPLICA asks $PROXY_DB_ADDR"
for try in 1 2 3; do
  if row=$(psql -X -h 127.0.0.1 -p "$PROXY_DB_PORT" -U postgres -d postgres -tAc "select note from robot_notes where robot = '$K8S4R_ROBOT'"); then
    echo "row: $row"
    exit 0
  fi
  sleep 0.2
done
echo "no row"
{hold}exit 1"#
        );
        let init = format!("echo \"$K8S4R_JOB/$K8S4R_TASKGROUP\" >> {}", self.init_log.display());
        json!({
            "apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job",
            "metadata": {"name": self.name, "namespace": "default"},
            "spec": {"type": "batch", "robotSelector": {"matchLabels": {"postgres-e2e": "true"}}, "taskGroups": [{
                "name": "app", "count": self.count,
                "initTasks": [{"name": "prepare", "driver": "exec", "config": {"execConfig": {
                    "command": "/bin/sh", "args": ["-c", init]
                }}}],
                "network": {
                    "spiffe": {"trustDomain": "example.org", "agentSocketPath": self.spire.display().to_string()},
                    "upstreams": [{
                        "name": "db", "localPort": self.local_port,
                        "upstream": format!("localhost:{}", self.server_port),
                        "protocol": "tcp", "tls": true, "spiffeID": self.peer_id
                    }]
                },
                "tasks": [{"name": "query", "driver": "exec", "config": {"execConfig": {
                    "command": "/bin/sh", "args": ["-c", app]
                }}}]
            }]}
        })
    }
}

fn post(server: &Server, job: &AppJob) {
    let r = server.send_json("POST", JOBS, &job.json());
    assert_eq!(r.status, 201, "{}", r.body);
}

/// The app's output once it has said how it ended (its log is written by
/// the agent's pump, which may trail the exit status a little).
fn app_output(agent: &ConnectedAgent, task: &str) -> String {
    wait_for(&format!("{task} says how it ended"), WAIT, || {
        let out = agent.task_output(task);
        (out.contains("no row") || out.contains("row: ")).then_some(out)
    })
}

/// Wait until the Job is completed or failed; returns the state.
fn finished(server: &Server, name: &str) -> String {
    let done = |s: &String| s == "completed" || s == "failed";
    wait_for(&format!("job {name} finished"), WAIT, || {
        let j = server.object("jobs", name)?;
        j["status"]["state"].as_str().map(String::from).filter(done)
    })
}

#[test]
fn app_reaches_real_postgres_only_through_envoy_mtls_with_the_right_spiffe_ids() {
    let test = "app_reaches_real_postgres_only_through_envoy_mtls_with_the_right_spiffe_ids";
    let Some(tools) = tools_or_skip(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();

    // The database and a row only it knows.
    let pg = Postgres::start(&tools.pg_bin, tools.postgres_user);
    let secret = format!(
        "note-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    pg.psql(&format!(
        "create table robot_notes (robot text primary key, note text not null); \
         insert into robot_notes values ('{ROBOT}', '{secret}')"
    ));

    // PKI: the database's identity, the robot's SVID from the SPIRE stand-in.
    let ca = Ca::new(tmp.path(), "example.org");
    let robot_id = format!("spiffe://example.org/robot/{ROBOT}");
    let svid = ca.leaf("robot", &robot_id, 2);
    let spire = SdsServer::spire(&tmp.path().join("spire-agent.sock"), &svid, &ca);
    let db_side = ServerSide::start(
        &tools.envoy,
        &tmp.path().join("db-side"),
        ca.files(&ca.leaf("db", DB_ID, 1)),
        Some("example.org"),
        &[&robot_id],
        pg.port,
    );
    // Bytes the server-side Envoy passed on to PostgreSQL and got back
    // from it (health checks send none).
    let to_db = || db_side.envoy.stat("cluster.in-api-local.upstream_cx_tx_bytes_total");
    let from_db = || db_side.envoy.stat("cluster.in-api-local.upstream_cx_rx_bytes_total");
    let handshakes = || db_side.envoy.stat("listener.in-api.ssl.handshake");
    assert_eq!((to_db(), from_db()), (0, 0));

    // The control plane and a connected agent.
    let server = Server::start();
    let agent = ConnectedAgent::start(
        &server.agent_base,
        &server.join_token(),
        ROBOT,
        "postgres-e2e=true",
        &tmp.path().join("agent"),
        &["--envoy-bin", &tools.envoy.to_string_lossy()],
    );

    // Two replicas of the app, one robot: one init run, one Envoy, both
    // get the row through 127.0.0.1:localPort.
    let init_log = tmp.path().join("init-runs");
    let local_port = free_port();
    let app = AppJob {
        name: "pg-mtls",
        count: 2,
        local_port,
        server_port: db_side.port,
        peer_id: DB_ID,
        spire: &spire.socket,
        init_log: &init_log,
        hold: None,
    };
    post(&server, &app);
    let state = finished(&server, "pg-mtls");
    let outputs: Vec<String> = (0..2)
        .map(|r| app_output(&agent, &format!("pg-mtls-app-r{r}-query")))
        .collect();
    assert_eq!(state, "completed", "outputs: {outputs:#?}");
    for (r, out) in outputs.iter().enumerate() {
        assert!(
            out.contains(&format!("replica {r} asks 127.0.0.1:{local_port}")),
            "{out}"
        );
        assert!(out.contains(&format!("row: {secret}")), "replica {r}: {out}");
        let task = server.object("tasks", &format!("pg-mtls-app-r{r}-query")).unwrap();
        assert_eq!(task["spec"]["targetRobot"], ROBOT, "{task}");
        assert_eq!(task["status"]["exitCode"], 0, "{task}");
    }
    assert_eq!(
        std::fs::read_to_string(&init_log).unwrap(),
        "pg-mtls/app\n",
        "the init task runs once per TaskGroup"
    );
    let log = agent.log_text();
    assert_eq!(
        log.matches("app envoy: running").count(),
        1,
        "one Envoy for both replicas:\n{log}"
    );
    // Proof the bytes went through mTLS, not around it: the server-side
    // Envoy completed handshakes, let the robot's ID in, and carried the
    // app's queries and PostgreSQL's answers.
    assert!(handshakes() >= 2, "handshakes: {}", handshakes());
    assert!(db_side.envoy.stat("in-api.rbac.allowed") >= 2);
    assert_eq!(db_side.envoy.stat("in-api.rbac.denied"), 0);
    let (sent, answered) = (to_db(), from_db());
    assert!(
        sent > 0 && answered > secret.len() as u64,
        "sent {sent}, answered {answered}"
    );
    let asked = spire.requested();
    assert!(asked.iter().any(|n| n == "default"), "{asked:?}");
    assert!(asked.iter().any(|n| n == "spiffe://example.org"), "{asked:?}");

    // The upstream pins an identity the database does not have: the
    // robot's Envoy refuses the server's certificate.
    let hold = tmp.path().join("release-wrong-id");
    let wrong_id = AppJob {
        name: "pg-wrong-id",
        count: 1,
        local_port: free_port(),
        peer_id: "spiffe://example.org/not-the-db",
        hold: Some(&hold),
        ..app
    };
    post(&server, &wrong_id);
    let out = app_output(&agent, "pg-wrong-id-app-r0-query");
    assert!(!out.contains(&secret), "{out}");
    let robot_envoy = Layout::new(&agent.data.join("alloc/pg-wrong-id-app/envoy")).admin_socket;
    let refused = envoy::admin::stat(&robot_envoy, "cluster.out-db.ssl.fail_verify_san");
    assert!(
        matches!(refused, Ok(Some(n)) if n >= 1),
        "the robot's Envoy checked the server's SPIFFE ID: {refused:?}"
    );
    std::fs::write(&hold, b"").unwrap();
    assert_eq!(finished(&server, "pg-wrong-id"), "failed", "{out}");
    assert!(out.contains("psql: error"), "the app saw the connection fail: {out}");

    // A workload whose SPIRE agent hands it another robot's identity: the
    // server-side Envoy's RBAC refuses it.
    let intruder_svid = ca.leaf("intruder", "spiffe://example.org/robot/intruder", 3);
    let intruder_spire = SdsServer::spire(&tmp.path().join("intruder-agent.sock"), &intruder_svid, &ca);
    let intruder = AppJob {
        name: "pg-intruder",
        count: 1,
        local_port: free_port(),
        spire: &intruder_spire.socket,
        ..app
    };
    post(&server, &intruder);
    let state = finished(&server, "pg-intruder");
    let out = app_output(&agent, "pg-intruder-app-r0-query");
    assert_eq!(state, "failed", "{out}");
    assert!(out.contains("psql: error"), "the app saw the connection fail: {out}");
    assert!(!out.contains(&secret), "{out}");
    // Refused in the mTLS handshake: the allowed IDs are the peer SANs.
    assert!(db_side.envoy.stat("listener.in-api.ssl.fail_verify_san") >= 1);

    assert_eq!(
        (to_db(), from_db()),
        (sent, answered),
        "no byte of the refused apps reached PostgreSQL"
    );
}
