//! `k8s4r logs TASK [-f] [--tail N] [--stderr]`: a task's output fetched
//! from its robot through the control plane — no SSH to the robot. The same
//! endpoint works with kubectl:
//! `kubectl get --raw "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/tasks/TASK/log?tailLines=20"`.

use lexopt::prelude::*;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

const USAGE: &str = "\
k8s4r logs TASK [OPTIONS] — a task's output, fetched from its robot

OPTIONS:
    -f, --follow         Keep printing new output (every 2 s)
    --tail N             Only the last N lines
    --stderr             Standard error instead of standard output
    -n, --namespace NS   [default: default]
    --server URL         Control plane [default: http://127.0.0.1:7443]
    --token-file FILE    Operator bearer token (servers run with --admin-token-file)
    -h, --help           Print help

Also: kubectl get --raw \"/apis/robot.k8s4r.io/v1alpha1/namespaces/NS/tasks/TASK/log?tailLines=N\"
";

const FOLLOW_EVERY: Duration = Duration::from_secs(2);

pub fn cmd_logs(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let mut task = None;
    let mut follow = false;
    let mut tail = None;
    let mut stream = "stdout";
    let mut ns = "default".to_string();
    let mut server = "http://127.0.0.1:7443".to_string();
    let mut token = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Short('f') | Long("follow") => follow = true,
            Long("tail") => tail = Some(parser.value()?.parse::<u32>()?),
            Long("stderr") => stream = "stderr",
            Short('n') | Long("namespace") => ns = parser.value()?.string()?,
            Long("server") => server = parser.value()?.string()?,
            Long("token-file") => {
                let p: PathBuf = parser.value()?.into();
                let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                token = Some(text.trim().to_string());
            }
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(0);
            }
            Value(v) if task.is_none() => task = Some(v.string()?),
            other => return Err(other.unexpected()),
        }
    }
    let Some(task) = task else {
        eprint!("{USAGE}");
        return Ok(2);
    };
    let base = format!(
        "{}/apis/robot.k8s4r.io/v1alpha1/namespaces/{ns}/tasks/{task}/log?stream={stream}",
        server.trim_end_matches('/')
    );
    let fetch = |tail: Option<u32>| -> Result<String, String> {
        let url = match tail {
            Some(n) => format!("{base}&tailLines={n}"),
            None => base.clone(),
        };
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut req = agent.get(&url);
        if let Some(t) = &token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let mut resp = req.call().map_err(|e| format!("GET {url}: {e}"))?;
        let code = resp.status().as_u16();
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("GET {url}: {e}"))?;
        if code != 200 {
            let msg = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("message")?.as_str().map(String::from))
                .unwrap_or(body);
            return Err(msg);
        }
        Ok(body)
    };
    let mut out = std::io::stdout().lock();
    let mut seen = match fetch(tail) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(1);
        }
    };
    let _ = out.write_all(seen.as_bytes());
    let _ = out.flush();
    if !follow {
        return Ok(0);
    }
    loop {
        std::thread::sleep(FOLLOW_EVERY);
        match fetch(None) {
            Ok(text) => {
                let fresh = new_part(&seen, &text);
                let _ = out.write_all(fresh.as_bytes());
                let _ = out.flush();
                seen = text;
            }
            Err(e) => eprintln!("warning: {e}"),
        }
    }
}

/// What `now` has beyond `before`. The robot sends its newest output, so
/// `now` starts somewhere inside `before` (older output may have rotated
/// away): find the overlap where `now` begins, print what follows it.
fn new_part<'a>(before: &str, now: &'a str) -> &'a str {
    let first = &now[..now.find('\n').map_or(now.len(), |i| i + 1)];
    let mut end = before.len();
    while !first.is_empty() {
        let Some(pos) = before[..end].rfind(first) else { break };
        if let Some(rest) = now.strip_prefix(&before[pos..]) {
            return rest;
        }
        end = pos;
    }
    now
}

#[cfg(test)]
mod tests {
    use super::new_part;

    #[test]
    fn only_new_output_is_printed() {
        assert_eq!(new_part("", "a\n"), "a\n");
        assert_eq!(new_part("a\n", "a\nb\n"), "b\n");
        // Older output rotated away: the end of what was printed is found.
        assert_eq!(new_part("a\nb\n", "b\nc\n"), "c\n");
        assert_eq!(new_part("x\n", "y\n"), "y\n");
    }
}
