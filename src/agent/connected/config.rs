//! Connected-mode settings from three sources, highest first: command-line
//! flags, environment variables, and a config file in the same `KEY=value`
//! format as the environment (default /etc/k8s4r/agent.env, what robot
//! images ship). Sources are passed in as maps so tests never touch the
//! process environment.

use crate::api::StringMap;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

pub const DEFAULT_CONFIG_FILE: &str = "/etc/k8s4r/agent.env";

#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    /// Base URL of the control plane, e.g. `http://10.0.0.5:7443`.
    pub server: String,
    /// Only needed until the robot has registered once.
    pub join_token: Option<String>,
    pub name: String,
    pub namespace: String,
    pub labels: StringMap,
}

#[derive(Debug, PartialEq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Settings keyed by their environment name (`K8S4R_SERVER`, ...).
pub type Settings = BTreeMap<String, String>;

/// Parse `KEY=value` lines; `#` comments, blank lines and an optional
/// `export ` prefix are allowed, values may be quoted.
pub fn parse_env_file(text: &str) -> Result<Settings, ConfigError> {
    let mut out = Settings::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| ConfigError(format!("line {}: expected KEY=value, got {raw:?}", i + 1)))?;
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
            .unwrap_or(v);
        out.insert(k.trim().to_string(), v.to_string());
    }
    Ok(out)
}

/// `k=v,k2=v2` → labels.
pub fn parse_labels(text: &str) -> Result<StringMap, ConfigError> {
    let mut labels = StringMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| ConfigError(format!("labels: {pair:?} is not key=value")))?;
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(labels)
}

/// Merge the sources (flags win over env, env over file) and check them.
pub fn resolve(
    flags: &Settings,
    env: &Settings,
    file: &Settings,
    default_name: &str,
) -> Result<AgentConfig, ConfigError> {
    let get = |key: &str| {
        [flags, env, file]
            .iter()
            .find_map(|m| m.get(key).filter(|v| !v.is_empty()).cloned())
    };
    let server =
        get("K8S4R_SERVER").ok_or_else(|| ConfigError("no server: pass --server URL or set K8S4R_SERVER".into()))?;
    let server = server.trim_end_matches('/').to_string();
    if !server.starts_with("http://") {
        return Err(ConfigError(format!(
            "server {server:?}: only http:// URLs are supported (the agent speaks plain HTTP)"
        )));
    }
    let name = get("K8S4R_NAME").unwrap_or_else(|| default_name.to_string());
    crate::api::validate::check_dns_subdomain(&name).map_err(|e| ConfigError(format!("robot name: {e}")))?;
    let labels = match get("K8S4R_LABELS") {
        Some(l) => parse_labels(&l)?,
        None => StringMap::new(),
    };
    Ok(AgentConfig {
        server,
        join_token: get("K8S4R_JOIN_TOKEN"),
        name,
        namespace: get("K8S4R_NAMESPACE").unwrap_or_else(|| "default".into()),
        labels,
    })
}

/// The join token is needed once: after registering, the robot's own key
/// in the data dir is what the agent uses. Blank `K8S4R_JOIN_TOKEN` in the
/// config file (other lines kept as written) and make the file 0600, so a
/// copied image or a stolen robot disk does not carry a secret that
/// registers more robots. Returns whether the file changed.
pub fn forget_join_token(path: &std::path::Path) -> std::io::Result<bool> {
    let text = std::fs::read_to_string(path)?;
    let mut changed = false;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let setting = line.trim_start();
            let setting = setting.strip_prefix("export ").unwrap_or(setting).trim_start();
            match setting.strip_prefix("K8S4R_JOIN_TOKEN=") {
                Some(value) if !value.trim().trim_matches(['"', '\'']).is_empty() => {
                    changed = true;
                    "K8S4R_JOIN_TOKEN=".to_string()
                }
                _ => line.to_string(),
            }
        })
        .collect();
    if changed {
        let mut out = lines.join("\n");
        out.push('\n');
        crate::agent::state::write_atomic(path, out.as_bytes(), 0o600)?;
    }
    Ok(changed)
}

/// The process environment's K8S4R_* variables.
pub fn env_settings() -> Settings {
    std::env::vars().filter(|(k, _)| k.starts_with("K8S4R_")).collect()
}

/// The config file's settings; a missing default file is fine, a missing
/// explicitly named one is an error.
pub fn file_settings(path: Option<&str>) -> Result<Settings, ConfigError> {
    let (path, explicit) = match path {
        Some(p) => (PathBuf::from(p), true),
        None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_env_file(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0))),
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::new()),
        Err(e) => Err(ConfigError(format!("{}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> Settings {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let file = parse_env_file(
            "# robot image\nK8S4R_SERVER=http://file:1\nexport K8S4R_NAME=\"from-file\"\nK8S4R_LABELS=a=1, b=2\n",
        )
        .unwrap();
        let env = map(&[("K8S4R_SERVER", "http://env:2/")]);
        let flags = map(&[("K8S4R_NAME", "from-flag")]);
        let c = resolve(&flags, &env, &file, "host").unwrap();
        assert_eq!(c.server, "http://env:2");
        assert_eq!(c.name, "from-flag");
        assert_eq!(c.labels.get("b").map(String::as_str), Some("2"));
        assert_eq!(c.namespace, "default");
    }

    #[test]
    fn the_join_token_is_forgotten_and_nothing_else() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.env");
        std::fs::write(
            &path,
            "# robot 7\nK8S4R_SERVER=http://s:1\nexport K8S4R_JOIN_TOKEN=\"k8s4r-join-x\"\nK8S4R_NAME=r7\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(forget_join_token(&path).unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "# robot 7\nK8S4R_SERVER=http://s:1\nK8S4R_JOIN_TOKEN=\nK8S4R_NAME=r7\n"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!forget_join_token(&path).unwrap(), "nothing left to forget");
    }

    #[test]
    fn clear_errors() {
        let none = Settings::new();
        assert!(resolve(&none, &none, &none, "h").unwrap_err().0.contains("--server"));
        let https = map(&[("K8S4R_SERVER", "https://x")]);
        assert!(resolve(&https, &none, &none, "h").unwrap_err().0.contains("plain HTTP"));
        let bad_name = map(&[("K8S4R_SERVER", "http://x"), ("K8S4R_NAME", "Bad Name")]);
        assert!(resolve(&bad_name, &none, &none, "h")
            .unwrap_err()
            .0
            .starts_with("robot name:"));
        assert!(parse_env_file("NOEQUALS").unwrap_err().0.contains("line 1"));
        assert!(parse_labels("a").is_err());
    }
}
