//! The robot's privilege policy for the processes the agent starts, from
//! flags, the environment or the config file (same keys as connected mode):
//!
//! - `--allow-root-tasks BOOL` [`K8S4R_ALLOW_ROOT_TASKS`]: may a task run as
//!   uid 0? True by default so existing Jobs keep working; on a robot that
//!   runs other people's Jobs it is the first thing to turn off. A refused
//!   task fails with a status saying why (see `supervisor::spawn`).
//! - `--default-user USER` [`K8S4R_DEFAULT_USER`]: who runs a task whose
//!   manifest names no `user` (only a root agent can switch users).

use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Privileges {
    pub allow_root_tasks: bool,
    pub default_user: Option<String>,
}

impl Default for Privileges {
    fn default() -> Self {
        Privileges {
            allow_root_tasks: true,
            default_user: None,
        }
    }
}

/// The environment names of the flags, for settings maps.
pub const KEYS: [(&str, &str); 2] = [
    ("allow-root-tasks", "K8S4R_ALLOW_ROOT_TASKS"),
    ("default-user", "K8S4R_DEFAULT_USER"),
];

impl Privileges {
    /// From settings keyed by environment name, highest priority first
    /// (flags, environment, config file); empty values count as unset.
    pub fn resolve(sources: &[&BTreeMap<String, String>]) -> Result<Privileges, String> {
        let get = |key: &str| {
            sources
                .iter()
                .find_map(|m| m.get(key).filter(|v| !v.is_empty()).cloned())
        };
        let allow_root_tasks = match get("K8S4R_ALLOW_ROOT_TASKS") {
            None => true,
            Some(v) => parse_bool(&v).ok_or_else(|| format!("--allow-root-tasks {v:?}: expected true or false"))?,
        };
        let default_user = get("K8S4R_DEFAULT_USER");
        if let Some(user) = &default_user {
            crate::api::validate::check_user(user).map_err(|e| format!("--default-user: {e}"))?;
        }
        Ok(Privileges {
            allow_root_tasks,
            default_user,
        })
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
        assert_eq!(Privileges::resolve(&[]).unwrap(), Privileges::default());
        let flags = map(&[("K8S4R_ALLOW_ROOT_TASKS", "false")]);
        let file = map(&[("K8S4R_ALLOW_ROOT_TASKS", "true"), ("K8S4R_DEFAULT_USER", "robot")]);
        let p = Privileges::resolve(&[&flags, &file]).unwrap();
        assert!(!p.allow_root_tasks);
        assert_eq!(p.default_user.as_deref(), Some("robot"));
    }

    #[test]
    fn bad_values_name_the_flag() {
        let bad = map(&[("K8S4R_ALLOW_ROOT_TASKS", "maybe")]);
        assert!(Privileges::resolve(&[&bad])
            .unwrap_err()
            .starts_with("--allow-root-tasks"));
        let bad = map(&[("K8S4R_DEFAULT_USER", "root; rm")]);
        assert!(Privileges::resolve(&[&bad]).unwrap_err().starts_with("--default-user"));
    }
}
