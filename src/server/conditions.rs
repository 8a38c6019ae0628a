//! `status.conditions`, the Kubernetes form of each kind's own state, so
//! `kubectl wait --for=condition=Complete job/NAME` works. They are
//! derived from the state on every write through the registry (the Job
//! roll-up, an agent's report, a liveness change, a `kubectl edit` of the
//! status alike), so they can never disagree with the state they describe;
//! a condition keeps its lastTransitionTime while its status stays.
//!
//! - Job, batch: Complete, Failed. Service and system: Available (every
//!   task running), Progressing (tasks still being placed or started).
//! - Robot: Ready (Online).
//! - Task: Ready (running and not unhealthy), Succeeded, Failed (failed or
//!   lost).

use crate::server::time;
use serde_json::{json, Value};

/// One wanted condition before its transition time is known.
struct Wanted {
    kind: &'static str,
    status: bool,
    reason: String,
    message: String,
}

fn wanted(kind: &'static str, status: bool, reason: &str, message: &str) -> Wanted {
    Wanted {
        kind,
        status,
        reason: reason.to_string(),
        message: message.to_string(),
    }
}

fn text<'a>(status: &'a Value, field: &str) -> &'a str {
    status.get(field).and_then(Value::as_str).unwrap_or("")
}

fn count(status: &Value, field: &str) -> i64 {
    status.get(field).and_then(Value::as_i64).unwrap_or(0)
}

/// `running` as `Running`: a state as a condition reason.
fn camel(state: &str) -> String {
    let mut c = state.chars();
    match c.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + c.as_str(),
        None => "Unknown".to_string(),
    }
}

fn job(obj: &Value, status: &Value) -> Vec<Wanted> {
    let state = text(status, "state");
    let message = text(status, "statusDescription");
    let kind = obj.pointer("/spec/type").and_then(Value::as_str).unwrap_or("batch");
    if kind == "batch" {
        let unfinished = camel(state);
        let done = state == "completed";
        let failed = state == "failed";
        return vec![
            wanted(
                "Complete",
                done,
                if done { "AllTasksSucceeded" } else { &unfinished },
                message,
            ),
            wanted(
                "Failed",
                failed,
                if failed { "TasksFailed" } else { &unfinished },
                message,
            ),
        ];
    }
    let total = count(status, "totalTasks");
    let available = total > 0 && count(status, "runningTasks") == total;
    let progressing = count(status, "pendingTasks") > 0;
    vec![
        wanted(
            "Available",
            available,
            if available {
                "AllTasksRunning"
            } else {
                "TasksNotRunning"
            },
            message,
        ),
        wanted(
            "Progressing",
            progressing,
            if progressing {
                "TasksStarting"
            } else {
                "NoTasksStarting"
            },
            message,
        ),
    ]
}

fn robot(status: &Value) -> Vec<Wanted> {
    let phase = text(status, "phase");
    let phase = if phase.is_empty() { "Pending" } else { phase };
    vec![wanted(
        "Ready",
        phase == "Online",
        &format!("Robot{phase}"),
        text(status, "message"),
    )]
}

fn task(status: &Value) -> Vec<Wanted> {
    let state = text(status, "state");
    let message = text(status, "message");
    let ready = state == "running" && text(status, "health") != "unhealthy";
    let reason = camel(state);
    vec![
        wanted("Ready", ready, if ready { "TaskRunning" } else { &reason }, message),
        wanted("Succeeded", state == "completed", &reason, message),
        wanted("Failed", matches!(state, "failed" | "lost"), &reason, message),
    ]
}

/// Set `status.conditions` of `obj` (of `kind`) from its state; `old` is
/// the stored object it replaces, if any. Condition types this server does
/// not derive, written by someone else, are kept. No status, no conditions.
pub fn derive(kind: &str, old: Option<&Value>, obj: &mut Value) {
    let Some(status) = obj.get("status").filter(|s| s.is_object()) else {
        return;
    };
    let wanted = match kind {
        "Job" => job(obj, status),
        "Robot" => robot(status),
        "Task" => task(status),
        _ => return,
    };
    let previous: Vec<Value> = old
        .and_then(|o| o.pointer("/status/conditions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out: Vec<Value> = status
        .get("conditions")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter(|c| {
                    !wanted
                        .iter()
                        .any(|w| c.get("type").and_then(Value::as_str) == Some(w.kind))
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    for w in wanted {
        let status = if w.status { "True" } else { "False" };
        let since = previous
            .iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(w.kind))
            .filter(|c| c.get("status").and_then(Value::as_str) == Some(status))
            .and_then(|c| c.get("lastTransitionTime").and_then(Value::as_str))
            .map(str::to_string)
            .unwrap_or_else(time::now_rfc3339);
        let mut c = json!({"type": w.kind, "status": status, "lastTransitionTime": since, "reason": w.reason});
        if !w.message.is_empty() {
            c["message"] = json!(w.message);
        }
        out.push(c);
    }
    obj["status"]["conditions"] = Value::Array(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition<'a>(obj: &'a Value, kind: &str) -> &'a Value {
        obj["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} condition in {obj}"))
    }

    #[test]
    fn a_batch_job_completes_and_keeps_its_transition_time() {
        let mut running =
            json!({"spec": {"type": "batch"}, "status": {"state": "running", "statusDescription": "1/1 running"}});
        derive("Job", None, &mut running);
        assert_eq!(condition(&running, "Complete")["status"], "False");
        assert_eq!(condition(&running, "Complete")["reason"], "Running");
        let mut stamped = running.clone();
        stamped["status"]["conditions"][0]["lastTransitionTime"] = json!("2020-01-01T00:00:00Z");
        let mut still = json!({"spec": {"type": "batch"}, "status": {"state": "running"}});
        derive("Job", Some(&stamped), &mut still);
        assert_eq!(
            condition(&still, "Complete")["lastTransitionTime"],
            "2020-01-01T00:00:00Z",
            "unchanged status keeps its time"
        );
        let mut done = json!({"spec": {"type": "batch"}, "status": {"state": "completed"}});
        derive("Job", Some(&stamped), &mut done);
        let complete = condition(&done, "Complete");
        assert_eq!(complete["status"], "True");
        assert_eq!(complete["reason"], "AllTasksSucceeded");
        assert_ne!(complete["lastTransitionTime"], "2020-01-01T00:00:00Z");
        assert_eq!(condition(&done, "Failed")["status"], "False");
    }

    #[test]
    fn service_jobs_robots_and_tasks() {
        let mut svc = json!({"spec": {"type": "service"}, "status": {"state": "running", "totalTasks": 2, "runningTasks": 1, "pendingTasks": 1}});
        derive("Job", None, &mut svc);
        assert_eq!(condition(&svc, "Available")["status"], "False");
        assert_eq!(condition(&svc, "Progressing")["status"], "True");
        let mut online = json!({"status": {"phase": "Online"}});
        derive("Robot", None, &mut online);
        assert_eq!(condition(&online, "Ready")["status"], "True");
        let mut offline = json!({"status": {"phase": "Offline", "message": "no heartbeat"}});
        derive("Robot", Some(&online), &mut offline);
        assert_eq!(condition(&offline, "Ready")["reason"], "RobotOffline");
        assert_eq!(condition(&offline, "Ready")["message"], "no heartbeat");
        let mut lost = json!({"status": {"state": "lost", "conditions": [{"type": "Custom", "status": "True"}]}});
        derive("Task", None, &mut lost);
        assert_eq!(condition(&lost, "Failed")["status"], "True");
        assert_eq!(condition(&lost, "Ready")["status"], "False");
        assert_eq!(
            condition(&lost, "Custom")["status"],
            "True",
            "others' conditions are kept"
        );
        let mut bare = json!({"spec": {}});
        derive("Task", None, &mut bare);
        assert_eq!(bare, json!({"spec": {}}), "no status, no conditions");
    }
}
