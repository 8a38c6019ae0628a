//! `k8s4r robot reset` and `k8s4r robot-keys`: robot identities and the
//! server's robot-channel keys, through the API.

use super::{bounded_duration_arg, path_segment};
use crate::server::{kubeclient, robot_channel};
use lexopt::prelude::*;
use std::time::Duration;

const ROBOT_USAGE: &str = "\
k8s4r robot — robot identities

USAGE:
    k8s4r robot reset NAME    Unbind robot NAME's keys: its agent is refused (401)
                              from then on, and a join token may register the name
                              with new keys (a re-imaged robot, say)

";

const ROBOT_KEYS_USAGE: &str = "\
k8s4r robot-keys — the server's robot-channel keys

USAGE:
    k8s4r robot-keys list                  Key ids, pins, and which is current
    k8s4r robot-keys rotate [--overlap DUR]
                                           Make a new current key; the old one keeps
                                           answering robots for DUR [default: 24h],
                                           each answer telling them the new one

";

/// The options every operator command takes, and its other words.
struct AdminArgs {
    client: kubeclient::ClientFlags,
    words: Vec<String>,
    overlap: Option<Duration>,
}

fn admin_args(parser: &mut lexopt::Parser, usage: &str, overlap: bool) -> Result<Option<AdminArgs>, lexopt::Error> {
    let mut a = AdminArgs {
        client: kubeclient::ClientFlags::default(),
        words: Vec::new(),
        overlap: None,
    };
    while let Some(arg) = parser.next()? {
        match arg {
            Long(flag) if kubeclient::ClientFlags::owns(flag) => {
                let flag = flag.to_string();
                a.client.set(&flag, parser)?;
            }
            Long("overlap") if overlap => {
                a.overlap = Some(bounded_duration_arg(
                    parser,
                    "--overlap",
                    robot_channel::server_keys::MAX_OVERLAP,
                )?)
            }
            Short('h') | Long("help") => {
                print!("{usage}{}", kubeclient::USAGE);
                return Ok(None);
            }
            Value(v) if a.words.len() < 2 => a.words.push(v.string()?),
            other => return Err(other.unexpected()),
        }
    }
    Ok(Some(a))
}

/// One operator request through the kubeconfig's client; the answer's body.
fn admin_request(
    client: &kubeclient::ClientFlags,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<String, String> {
    kubeclient::KubeClient::new(client).and_then(|c| {
        c.request(method, path, body)?
            .ok()
            .map_err(|e| format!("{method} {}{path}: {e}", c.server))
    })
}

/// `k8s4r robot reset NAME`
pub fn cmd_robot(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let Some(a) = admin_args(parser, ROBOT_USAGE, false)? else {
        return Ok(0);
    };
    let [verb, name] = a.words.as_slice() else {
        eprint!("{ROBOT_USAGE}");
        return Ok(2);
    };
    if verb != "reset" {
        eprint!("{ROBOT_USAGE}");
        return Ok(2);
    }
    let path = format!("/agent/v1/robotkeys/{}", path_segment(name));
    match admin_request(&a.client, "DELETE", &path, None) {
        Ok(_) => {
            println!("robot {name}: keys reset; a join token may register the name again");
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(1)
        }
    }
}

/// `k8s4r robot-keys list|rotate [--overlap DUR]`
pub fn cmd_robot_keys(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let Some(a) = admin_args(parser, ROBOT_KEYS_USAGE, true)? else {
        return Ok(0);
    };
    let base = "/agent/v1/serverkeys".to_string();
    let (method, url, body) = match a.words.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["list"] if a.overlap.is_none() => ("GET", base, None),
        ["rotate"] => {
            let req = crate::api::agent_protocol::RotateRequest {
                overlap_seconds: a.overlap.map(|d| d.as_secs()),
            };
            (
                "POST",
                format!("{base}/rotate"),
                Some(serde_json::to_string(&req).map_err(|e| e.to_string())?),
            )
        }
        _ => {
            eprint!("{ROBOT_KEYS_USAGE}{}", kubeclient::USAGE);
            return Ok(2);
        }
    };
    let text = match admin_request(&a.client, method, &url, body.as_deref()) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(1);
        }
    };
    match serde_json::from_str::<crate::api::agent_protocol::ServerKeyList>(&text) {
        Ok(list) => {
            println!("{:<18}{:<22}{:<22}PIN", "ID", "CREATED", "RETIRES");
            for k in list.items {
                let retires = match (&k.retire_at, k.current) {
                    (_, true) => "<current>".to_string(),
                    (Some(at), false) => at.clone(),
                    (None, false) => "-".to_string(),
                };
                println!("{:<18}{:<22}{retires:<22}{}", k.id, k.created, k.pin);
            }
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: unexpected answer from {url}: {e}");
            Ok(1)
        }
    }
}
