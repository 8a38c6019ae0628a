//! `k8s4r logs TASK [-f] [--tail N] [--stderr]`: a task's output fetched
//! from its robot through the control plane — no SSH to the robot. The same
//! endpoint works with kubectl:
//! `kubectl get --raw "/apis/robot.k8s4r.io/v1alpha1/namespaces/default/tasks/TASK/log?tailLines=20"`.

use crate::server::kubeclient::{self, KubeClient};
use lexopt::prelude::*;
use std::io::Write;
use std::time::Duration;

const USAGE: &str = "\
k8s4r logs TASK [OPTIONS] — a task's output, fetched from its robot

OPTIONS:
    -f, --follow         Keep printing new output (every 2 s)
    --tail N             Only the last N lines
    --stderr             Standard error instead of standard output
    -n, --namespace NS   [default: default]
    -h, --help           Print help
{CLIENT}
Also: kubectl get --raw \"/apis/robot.k8s4r.io/v1alpha1/namespaces/NS/tasks/TASK/log?tailLines=N\"
";

fn usage() -> String {
    USAGE.replace("{CLIENT}", kubeclient::USAGE)
}

const FOLLOW_EVERY: Duration = Duration::from_secs(2);

pub fn cmd_logs(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let mut task = None;
    let mut follow = false;
    let mut tail = None;
    let mut stream = "stdout";
    let mut ns = "default".to_string();
    let mut client = kubeclient::ClientFlags::default();
    while let Some(arg) = parser.next()? {
        match arg {
            Long(flag) if kubeclient::ClientFlags::owns(flag) => {
                let flag = flag.to_string();
                client.set(&flag, parser)?;
            }
            Short('f') | Long("follow") => follow = true,
            Long("tail") => tail = Some(parser.value()?.parse::<u32>()?),
            Long("stderr") => stream = "stderr",
            Short('n') | Long("namespace") => ns = parser.value()?.string()?,
            Short('h') | Long("help") => {
                print!("{}", usage());
                return Ok(0);
            }
            Value(v) if task.is_none() => task = Some(v.string()?),
            other => return Err(other.unexpected()),
        }
    }
    let Some(task) = task else {
        eprint!("{}", usage());
        return Ok(2);
    };
    let client = match KubeClient::new(&client) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(1);
        }
    };
    let base = format!("/apis/robot.k8s4r.io/v1alpha1/namespaces/{ns}/tasks/{task}/log?stream={stream}");
    let fetch = |tail: Option<u32>| -> Result<String, String> {
        let path = match tail {
            Some(n) => format!("{base}&tailLines={n}"),
            None => base.clone(),
        };
        client.request("GET", &path, None)?.ok()
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
