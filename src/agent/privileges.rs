//! The robot's privilege policy for the processes the agent starts and
//! what they may run, from flags, the environment or the config file (same
//! keys as connected mode; `run` and connected mode parse the flags here):
//!
//! - `--allow-root-tasks BOOL` (`K8S4R_ALLOW_ROOT_TASKS`): may a task run as
//!   uid 0? True by default so existing Jobs keep working; on a robot that
//!   runs other people's Jobs it is the first thing to turn off. A refused
//!   task fails with a status saying why (see `supervisor::spawn`).
//! - `--default-user USER` (`K8S4R_DEFAULT_USER`): who runs a task whose
//!   manifest names no `user` (only a root agent can switch users).
//! - `--proxy-user USER` (`K8S4R_PROXY_USER`): who runs the groups' Envoys
//!   when the agent is root. Default: `k8s4r-proxy` when the robot has that
//!   account (robot images made by `make image` do), else `nobody`. A
//!   dedicated account is better: a task running as the proxy's user could
//!   signal or trace the proxy. `root` keeps the proxy privileged.
//! - `--require-artifact-checksums[=BOOL]` (`K8S4R_REQUIRE_ARTIFACT_CHECKSUMS`):
//!   refuse a task with an `http://` artifact that has no sha256 checksum
//!   (anyone on the path could swap the file), before it downloads
//!   anything. Off by default: validation only warns about such artifacts.
//! - `--proxy-mode per-group|shared` (`K8S4R_PROXY_MODE`): one Envoy per
//!   TaskGroup (`<taskGroup>-envoy`, the default: a crash touches one
//!   group) or one robot-wide Envoy (`robot-envoy`) carrying every group's
//!   listeners, ≈ 14 MiB less private memory per group after the first.
//!   It rides with this policy because it decides how the agent runs the
//!   processes it starts, and must survive the hand-over to `run` too.

use lexopt::ValueExt;
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Privileges {
    pub allow_root_tasks: bool,
    pub default_user: Option<String>,
    /// None: the proxy runs as the agent's user (given or not, a non-root
    /// agent cannot switch).
    pub proxy_user: Option<String>,
    pub require_artifact_checksums: bool,
    pub proxy_mode: ProxyMode,
}

impl Default for Privileges {
    fn default() -> Self {
        Privileges {
            allow_root_tasks: true,
            default_user: None,
            proxy_user: None,
            require_artifact_checksums: false,
            proxy_mode: ProxyMode::PerGroup,
        }
    }
}

/// How the groups' network proxies run on this robot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ProxyMode {
    /// `<taskGroup>-envoy`: one Envoy per group, living and dying with it.
    #[default]
    PerGroup,
    /// `robot-envoy`: one Envoy for every group, updated live as groups
    /// come and go.
    Shared,
}

impl ProxyMode {
    pub fn parse(text: &str) -> Option<ProxyMode> {
        match text {
            "per-group" => Some(ProxyMode::PerGroup),
            "shared" => Some(ProxyMode::Shared),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::PerGroup => "per-group",
            ProxyMode::Shared => "shared",
        }
    }
}

/// The dedicated account robot images create for the proxies.
pub const PROXY_ACCOUNT: &str = "k8s4r-proxy";

/// The proxy's user when none is configured, from passwd-format text.
pub fn default_proxy_user(passwd: &str) -> &'static str {
    let has = |name: &str| passwd.lines().any(|l| l.split(':').next() == Some(name));
    if has(PROXY_ACCOUNT) {
        PROXY_ACCOUNT
    } else {
        "nobody"
    }
}

/// The environment names of the flags, for settings maps.
pub const KEYS: [(&str, &str); 5] = [
    ("allow-root-tasks", "K8S4R_ALLOW_ROOT_TASKS"),
    ("default-user", "K8S4R_DEFAULT_USER"),
    ("proxy-user", "K8S4R_PROXY_USER"),
    ("require-artifact-checksums", "K8S4R_REQUIRE_ARTIFACT_CHECKSUMS"),
    ("proxy-mode", "K8S4R_PROXY_MODE"),
];

/// Flags that mean `true` alone; `--flag=false` says otherwise.
const SWITCHES: [&str; 1] = ["require-artifact-checksums"];

/// If `flag` (a long option's name) is one of the policy's, take its value
/// from `parser` into `settings` under its environment name and say so.
pub fn take_flag(
    flag: &str,
    parser: &mut lexopt::Parser,
    settings: &mut BTreeMap<String, String>,
) -> Result<bool, lexopt::Error> {
    let Some((_, key)) = KEYS.iter().find(|(f, _)| *f == flag) else {
        return Ok(false);
    };
    let value = match parser.optional_value() {
        Some(v) => v.string()?,
        None if SWITCHES.contains(&flag) => "true".to_string(),
        None => parser.value()?.string()?,
    };
    settings.insert(key.to_string(), value);
    Ok(true)
}

impl Privileges {
    /// From settings keyed by environment name, highest priority first
    /// (flags, environment, config file); empty values count as unset.
    /// The proxy's default user is looked up in /etc/passwd when the agent
    /// is root.
    pub fn resolve(sources: &[&BTreeMap<String, String>]) -> Result<Privileges, String> {
        let is_root = rustix::process::geteuid().is_root();
        let passwd = if is_root {
            std::fs::read_to_string("/etc/passwd").unwrap_or_default()
        } else {
            String::new()
        };
        Self::resolve_for(sources, is_root, &passwd)
    }

    fn resolve_for(sources: &[&BTreeMap<String, String>], is_root: bool, passwd: &str) -> Result<Privileges, String> {
        let get = |key: &str| {
            sources
                .iter()
                .find_map(|m| m.get(key).filter(|v| !v.is_empty()).cloned())
        };
        let switch = |key: &str, flag: &str, default: bool| match get(key) {
            None => Ok(default),
            Some(v) => parse_bool(&v).ok_or_else(|| format!("--{flag} {v:?}: expected true or false")),
        };
        let allow_root_tasks = switch("K8S4R_ALLOW_ROOT_TASKS", "allow-root-tasks", true)?;
        let default_user = get("K8S4R_DEFAULT_USER");
        if let Some(user) = &default_user {
            crate::api::validate::check_user(user).map_err(|e| format!("--default-user: {e}"))?;
        }
        let proxy_user = get("K8S4R_PROXY_USER");
        if let Some(user) = &proxy_user {
            crate::api::validate::check_user(user).map_err(|e| format!("--proxy-user: {e}"))?;
        }
        let proxy_user = is_root.then(|| proxy_user.unwrap_or_else(|| default_proxy_user(passwd).to_string()));
        let require_artifact_checksums =
            switch("K8S4R_REQUIRE_ARTIFACT_CHECKSUMS", "require-artifact-checksums", false)?;
        let proxy_mode = match get("K8S4R_PROXY_MODE") {
            None => ProxyMode::default(),
            Some(v) => {
                ProxyMode::parse(&v).ok_or_else(|| format!("--proxy-mode {v:?}: expected per-group or shared"))?
            }
        };
        Ok(Privileges {
            allow_root_tasks,
            default_user,
            proxy_user,
            require_artifact_checksums,
            proxy_mode,
        })
    }

    /// The same policy as `run` flags (for an agent that hands over to
    /// `run -f`).
    pub fn as_flags(&self) -> Vec<String> {
        let mut flags = vec!["--allow-root-tasks".to_string(), self.allow_root_tasks.to_string()];
        if let Some(u) = &self.default_user {
            flags.extend(["--default-user".to_string(), u.clone()]);
        }
        if let Some(u) = &self.proxy_user {
            flags.extend(["--proxy-user".to_string(), u.clone()]);
        }
        flags.push(format!(
            "--require-artifact-checksums={}",
            self.require_artifact_checksums
        ));
        flags.extend(["--proxy-mode".to_string(), self.proxy_mode.as_str().to_string()]);
        flags
    }
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_keep_compatibility_and_flags_win() {
        assert_eq!(Privileges::resolve_for(&[], false, "").unwrap(), Privileges::default());
        let flags = map(&[("K8S4R_ALLOW_ROOT_TASKS", "false")]);
        let file = map(&[("K8S4R_ALLOW_ROOT_TASKS", "true"), ("K8S4R_DEFAULT_USER", "robot")]);
        let p = Privileges::resolve_for(&[&flags, &file], false, "").unwrap();
        assert!(!p.allow_root_tasks);
        assert_eq!(p.default_user.as_deref(), Some("robot"));
        assert_eq!(p.proxy_user, None, "a non-root agent cannot switch the proxy's user");
    }

    #[test]
    fn a_root_agent_runs_its_proxies_unprivileged() {
        let plain = "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n";
        let image = format!("{plain}k8s4r-proxy:x:998:998::/:/bin/false\n");
        let user = |passwd: &str, flags: &BTreeMap<String, String>| {
            Privileges::resolve_for(&[flags], true, passwd).unwrap().proxy_user
        };
        let none = BTreeMap::new();
        assert_eq!(user(plain, &none).as_deref(), Some("nobody"));
        assert_eq!(user(&image, &none).as_deref(), Some("k8s4r-proxy"));
        let chosen = map(&[("K8S4R_PROXY_USER", "envoy")]);
        assert_eq!(user(&image, &chosen).as_deref(), Some("envoy"));
    }

    #[test]
    fn bad_values_name_the_flag() {
        let bad = map(&[("K8S4R_ALLOW_ROOT_TASKS", "maybe")]);
        assert!(Privileges::resolve(&[&bad])
            .unwrap_err()
            .starts_with("--allow-root-tasks"));
        let bad = map(&[("K8S4R_DEFAULT_USER", "root; rm")]);
        assert!(Privileges::resolve(&[&bad]).unwrap_err().starts_with("--default-user"));
        let bad = map(&[("K8S4R_PROXY_MODE", "robot")]);
        assert!(Privileges::resolve(&[&bad]).unwrap_err().starts_with("--proxy-mode"));
        let bad = map(&[("K8S4R_REQUIRE_ARTIFACT_CHECKSUMS", "sometimes")]);
        assert!(Privileges::resolve(&[&bad])
            .unwrap_err()
            .starts_with("--require-artifact-checksums"));
    }

    /// Both command lines take the policy's flags through `take_flag`: a
    /// switch alone is true, `=false` turns it off, others need a value.
    #[test]
    fn flags_parse_alike_and_survive_the_hand_over_to_run() {
        let parse = |args: &[&str]| {
            let mut parser = lexopt::Parser::from_args(args.iter().copied());
            let mut settings = BTreeMap::new();
            while let Some(lexopt::Arg::Long(flag)) = parser.next().unwrap() {
                let flag = flag.to_string();
                assert!(take_flag(&flag, &mut parser, &mut settings).unwrap(), "{flag}");
            }
            Privileges::resolve_for(&[&settings], false, "").unwrap()
        };
        let strict = parse(&[
            "--require-artifact-checksums",
            "--allow-root-tasks",
            "false",
            "--proxy-mode",
            "shared",
        ]);
        assert!(strict.require_artifact_checksums && !strict.allow_root_tasks);
        assert_eq!(strict.proxy_mode, ProxyMode::Shared);
        assert_eq!(
            parse(&[]).proxy_mode,
            ProxyMode::PerGroup,
            "one Envoy per group by default"
        );
        assert!(!parse(&["--require-artifact-checksums=false"]).require_artifact_checksums);
        let flags = strict.as_flags();
        assert_eq!(parse(&flags.iter().map(String::as_str).collect::<Vec<_>>()), strict);
        let env = map(&[("K8S4R_REQUIRE_ARTIFACT_CHECKSUMS", "yes")]);
        assert!(
            Privileges::resolve_for(&[&env], false, "")
                .unwrap()
                .require_artifact_checksums
        );
    }
}
