//! How a started server says it is ready: three lines on stdout, printed
//! together once it accepts connections. `serve` writes them; whoever
//! started the server reads them (the tests' harness, `k8s4r bench`), and
//! both start it on loopback the same way ([`loopback`]).
//!
//! ```text
//! listening on https://127.0.0.1:PORT
//! agent channel on http://127.0.0.1:PORT
//! export KUBECONFIG=<data>/admin.kubeconfig
//! ```

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq)]
pub struct Ready {
    /// The operators' API, `https://host:port` (`http://` without TLS).
    pub base: String,
    /// The robots' plain agent listener, `http://host:port`.
    pub agent_base: String,
    /// The generated admin kubeconfig.
    pub kubeconfig: PathBuf,
}

impl Ready {
    /// The three lines, as one string (written in one go).
    pub fn lines(&self) -> String {
        format!(
            "listening on {}\nagent channel on {}\nexport KUBECONFIG={}\n",
            self.base,
            self.agent_base,
            self.kubeconfig.display()
        )
    }

    /// Read the three lines off a started server's stdout, within `within`.
    /// The rest of its stdout is drained on a thread, so the server never
    /// blocks on a full pipe.
    pub fn wait(stdout: ChildStdout, within: Duration) -> Result<Ready, String> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut base, mut agent_base, mut kubeconfig) = (None, None, None);
        let deadline = Instant::now() + within;
        while base.is_none() || agent_base.is_none() || kubeconfig.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).map_err(|e| match e {
                mpsc::RecvTimeoutError::Timeout => {
                    format!("the server did not print its addresses and kubeconfig within {within:?}")
                }
                mpsc::RecvTimeoutError::Disconnected => "the server exited before printing its addresses".into(),
            })?;
            let line = line.trim();
            if let Some(a) = line.strip_prefix("listening on ") {
                base = Some(a.to_string());
            } else if let Some(a) = line.strip_prefix("agent channel on ") {
                agent_base = Some(a.to_string());
            } else if let Some(k) = line.strip_prefix("export KUBECONFIG=") {
                kubeconfig = Some(PathBuf::from(k));
            }
        }
        Ok(Ready {
            base: base.unwrap_or_default(),
            agent_base: agent_base.unwrap_or_default(),
            kubeconfig: kubeconfig.unwrap_or_default(),
        })
    }
}

/// `exe server` on loopback ports the kernel picks, its data in `data`,
/// with the secure defaults (HTTPS for operators, the generated admin
/// kubeconfig); add flags with `.args`.
pub fn loopback(exe: &Path, data: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args([
        "server",
        "--listen",
        "127.0.0.1:0",
        "--agent-listen",
        "127.0.0.1:0",
        "--data",
    ])
    .arg(data);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    #[test]
    fn the_lines_written_are_the_lines_read() {
        let ready = Ready {
            base: "https://127.0.0.1:6443".into(),
            agent_base: "http://127.0.0.1:7000".into(),
            kubeconfig: "/data/admin.kubeconfig".into(),
        };
        let mut child = Command::new("/bin/sh")
            .args([
                "-c",
                &format!(
                    "echo starting; printf '{}'; sleep 30",
                    ready.lines().replace('\n', "\\n")
                ),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let got = Ready::wait(child.stdout.take().unwrap(), Duration::from_secs(10));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(got, Ok(ready));
        let mut quiet = Command::new("/bin/sh")
            .args(["-c", "echo listening on x"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let err = Ready::wait(quiet.stdout.take().unwrap(), Duration::from_secs(10)).unwrap_err();
        let _ = quiet.wait();
        assert!(err.contains("exited before"), "{err}");
    }
}
