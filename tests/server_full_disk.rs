//! The SQLite store on a full disk (a 2 MiB tmpfs the test mounts): writes
//! fail with a clear Status, the server stays up, nothing stored is lost or
//! corrupted, and writes succeed again once space returns. Needs root
//! (mount); skips with a message otherwise.

mod common;
mod server_util;

use serde_json::json;
use server_util::Server;
use std::path::{Path, PathBuf};
use std::process::Command;

const JOBS: &str = "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/jobs";

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Option<Tmpfs> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIP: the full-disk test mounts a tmpfs and needs root");
            return None;
        }
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIP: cannot mount a tmpfs here");
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn job(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"taskGroups": [{"name": "g", "count": 1,
            "tasks": [{"name": "t", "driver": "exec", "config": {"execConfig": {"command": "/bin/true"}}}]}]}
    })
}

/// Fill what is left of the filesystem; returns the filler to remove.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let _ = f.flush();
    path
}

#[test]
fn a_full_disk_gives_clear_errors_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(tmp.path()) else { return };
    let data = fs.0.join("data");
    let data_arg = data.display().to_string();
    let mut server = Server::start_with(&["--data", &data_arg]);
    assert_eq!(server.send_json("POST", JOBS, &job("before")).status, 201);

    let filler = fill(&fs.0);
    let mut refused = 0;
    for i in 0..5 {
        let r = server.send_json("POST", JOBS, &job(&format!("full-{i}")));
        if r.status != 201 {
            assert!(r.status >= 500, "{}", r.body);
            let status = r.json();
            assert_eq!(status["kind"], "Status", "{}", r.body);
            assert!(
                status["message"].as_str().unwrap().contains("full"),
                "names the cause: {}",
                r.body
            );
            refused += 1;
        }
    }
    assert!(refused > 0, "a full disk must refuse some writes");
    // Still serving, and what was stored is intact.
    assert!(server.object("jobs", "before").is_some());

    std::fs::remove_file(&filler).unwrap();
    assert_eq!(
        server.send_json("POST", JOBS, &job("after")).status,
        201,
        "recovers when space returns"
    );
    server.restart();
    assert!(server.object("jobs", "before").is_some(), "survives a restart");
    assert!(server.object("jobs", "after").is_some());
    drop(server);
}
