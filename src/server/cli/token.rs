//! `k8s4r token`: create, list and revoke join tokens through the API.

use super::{count_arg, duration_arg, path_segment};
use crate::server::kubeclient;
use lexopt::prelude::*;

const TOKEN_USAGE: &str = "\
k8s4r token — join tokens for robots, and revocation

USAGE:
    k8s4r token create [--ttl DUR] [--uses N] [--name ROBOT]
                                       Print a new join token (last line)
    k8s4r token list                   Join tokens: id, expiry, robots registered
                                       of its uses, bound name (never secrets)
    k8s4r token revoke ID|TOKEN        Revoke a join token (id prefix of 8+ hex digits)
    k8s4r token revoke --robot NAME    Same as `k8s4r robot reset NAME`

OPTIONS:
    --ttl DUR           Lifetime of a new token, at most the server's
                        --max-join-token-ttl [default: 24h, or that limit if shorter]
    --uses N            Distinct robots the token may register (registering a
                        name again uses none); the server's
                        --max-robots-per-join-token applies if smaller
    --name ROBOT        The token registers only the robot named ROBOT
";

pub fn cmd_token(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let mut client = kubeclient::ClientFlags::default();
    let mut terms = crate::api::agent_protocol::JoinTokenRequest::default();
    let mut words: Vec<String> = Vec::new();
    let mut robot = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Long(flag) if kubeclient::ClientFlags::owns(flag) => {
                let flag = flag.to_string();
                client.set(&flag, parser)?;
            }
            Long("ttl") => terms.ttl_seconds = Some(duration_arg(parser, "--ttl")?.as_secs()),
            Long("uses") => {
                let uses = count_arg(parser, "--uses", u64::MAX)?;
                if uses == 0 {
                    return Err("--uses: must be at least 1".into());
                }
                terms.uses = Some(uses);
            }
            Long("name") => terms.name = Some(parser.value()?.string()?),
            Long("robot") => robot = Some(parser.value()?.string()?),
            Short('h') | Long("help") => {
                print!("{TOKEN_USAGE}{}", kubeclient::USAGE);
                return Ok(0);
            }
            Value(v) if words.len() < 2 => words.push(v.string()?),
            other => return Err(other.unexpected()),
        }
    }
    let base = "/agent/v1";
    let (method, path, body) = match (words.iter().map(String::as_str).collect::<Vec<_>>().as_slice(), &robot) {
        // No --ttl: the server's default, which its limit may shorten.
        (["create"], None) => (
            "POST",
            format!("{base}/jointokens"),
            Some(serde_json::to_string(&terms).map_err(|e| e.to_string())?),
        ),
        (["list"], None) => ("GET", format!("{base}/jointokens"), None),
        (["revoke", id], None) => ("DELETE", format!("{base}/jointokens/{}", path_segment(id)), None),
        (["revoke"], Some(name)) => ("DELETE", format!("{base}/robotkeys/{}", path_segment(name)), None),
        _ => {
            eprint!("{TOKEN_USAGE}{}", kubeclient::USAGE);
            return Ok(2);
        }
    };
    let answer = kubeclient::KubeClient::new(&client).and_then(|c| {
        let url = format!("{}{path}", c.server);
        c.request(method, &path, body.as_deref())?
            .ok()
            .map_err(|e| format!("{method} {url}: {e}"))
    });
    let text = match answer {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(1);
        }
    };
    use crate::api::agent_protocol::{JoinToken, JoinTokenList};
    let unexpected = |e: serde_json::Error| {
        eprintln!("error: unexpected answer to {method} {path}: {e}");
        Ok(1)
    };
    match words[0].as_str() {
        "create" => match serde_json::from_str::<JoinToken>(&text) {
            Ok(t) => {
                let uses = t.uses.map(|n| format!(", {n} uses")).unwrap_or_default();
                let name = t.name.map(|n| format!(", robot {n} only")).unwrap_or_default();
                eprintln!("join token {} (expires {}{uses}{name}):", t.id, t.expires);
                println!("{}", t.token);
                Ok(0)
            }
            Err(e) => unexpected(e),
        },
        "list" => match serde_json::from_str::<JoinTokenList>(&text) {
            Ok(list) => {
                println!("{:<14}{:<22}{:<9}{:<10}NAME", "ID", "EXPIRES", "STATE", "USED");
                for t in list.items {
                    let state = if t.expired { "expired" } else { "valid" };
                    // "1/3": one robot of the three it was created for.
                    let used = match t.uses {
                        Some(n) => format!("{}/{n}", t.robots),
                        None => t.robots.to_string(),
                    };
                    let name = t.name.as_deref().unwrap_or("<any>");
                    println!("{:<14}{:<22}{state:<9}{used:<10}{name}", t.id, t.expires);
                }
                Ok(0)
            }
            Err(e) => unexpected(e),
        },
        _ => {
            println!("revoked");
            Ok(0)
        }
    }
}
