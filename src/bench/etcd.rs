//! A throwaway single-member etcd for `k8s4r bench --etcd`: free loopback
//! ports, a temp data directory, killed and removed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct LocalEtcd {
    child: Child,
    dir: PathBuf,
    pub url: String,
}

fn free_port() -> Result<u16, String> {
    crate::envoy::ports::free_port_at(([127, 0, 0, 1], 0).into()).map_err(|e| format!("finding a free port: {e}"))
}

impl LocalEtcd {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start() -> Result<LocalEtcd, String> {
        let (client, peer) = (free_port()?, free_port()?);
        let dir = std::env::temp_dir().join(format!(
            "k8s4r-bench-etcd-{}-{}",
            std::process::id(),
            crate::server::object::name_suffix()
        ));
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(&dir)
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .arg("--initial-cluster")
            .arg(format!("default={peer_url}"))
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting etcd (Debian package etcd-server): {e}"))?;
        let etcd = LocalEtcd { child, dir, url };
        etcd.wait_healthy(Duration::from_secs(20))?;
        Ok(etcd)
    }

    fn wait_healthy(&self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(1)))
            .build()
            .into();
        while start.elapsed() < limit {
            let healthy = agent
                .get(&format!("{}/health", self.url))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .is_some_and(|b| b.contains("\"true\""));
            if healthy {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("etcd at {} not healthy within {limit:?}", self.url))
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
