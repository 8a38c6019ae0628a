//! Reading the fields of a stored Task (or TaskGroup), which the
//! controllers, the cache and the fleet keep as raw JSON: the one accessor,
//! so every reader agrees on what a field holds.
//!
//! The rule: a spec string that is missing, not a string, or empty reads as
//! `None`. An empty `targetRobot` is a Task placed nowhere, an empty
//! `jobName` or `taskGroupName` names nothing (validation refuses empty
//! names, so only hand-made objects carry them).

use crate::api::TaskState;
use serde_json::Value;

/// `spec.<field>` as a non-empty string.
pub fn spec_str<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get("spec")?.get(field)?.as_str().filter(|s| !s.is_empty())
}

/// The robot the Task is placed on.
pub fn target_robot(v: &Value) -> Option<&str> {
    spec_str(v, "targetRobot")
}

/// The Job the Task or TaskGroup belongs to.
pub fn job_name(v: &Value) -> Option<&str> {
    spec_str(v, "jobName")
}

/// The TaskGroup (its object name, `{job}-{group}`) the Task belongs to.
pub fn task_group_name(v: &Value) -> Option<&str> {
    spec_str(v, "taskGroupName")
}

/// `status.state`; a missing or unknown state is the default (pending).
pub fn state(v: &Value) -> TaskState {
    v.get("status")
        .and_then(|s| s.get("state"))
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_missing_and_non_string_fields_read_as_absent() {
        let t = json!({"spec": {"targetRobot": "r1", "jobName": "", "taskGroupName": 3}});
        assert_eq!(target_robot(&t), Some("r1"));
        assert_eq!(job_name(&t), None);
        assert_eq!(task_group_name(&t), None);
        assert_eq!(target_robot(&json!({})), None);
    }

    #[test]
    fn state_defaults_when_missing_or_unknown() {
        assert_eq!(state(&json!({"status": {"state": "running"}})), TaskState::Running);
        assert_eq!(
            state(&json!({"status": {"state": "no-such-state"}})),
            TaskState::default()
        );
        assert_eq!(state(&json!({})), TaskState::default());
    }
}
