//! A lost robot comes back (Nomad's `disconnect.reconcile`): while it was
//! Offline its replica was placed on another robot, and the robot kept its
//! own copy running on its own. Exactly one copy may survive.
//!
//! When a replica is moved off a lost robot, the Task remembers that robot
//! (`robot.k8s4r.io/original-robot`) unless the group keeps the
//! replacement anyway. That robot's desired set keeps the Task until the
//! copies are settled, so a returning agent does not stop its copy before
//! the server has chosen. Once the robot is Online again the job reconciler
//! settles: the chosen copy's robot becomes (or stays) the Task's
//! `targetRobot`, the other robot's desired set no longer has it, and that
//! agent stops its copy.
//!
//! - `keepOriginal`: the returning robot's copy;
//! - `keepReplacement`: the replacement (the robot stops its copy as soon
//!   as it is back; nothing is remembered);
//! - `bestScore` (default): the copy on the robot the scheduler ranks
//!   better now (fit, then spread, then load); a tie keeps the replacement;
//! - `longestRunning`: the copy placed first (the server's placement time).
//!
//! A replacement that is not placed, or whose robot is not Online, always
//! loses: the returning copy is the only one that can run.

use super::task_objects::ALL;
use super::Ctx;
use crate::api::job_expansion::task_name;
use crate::api::{DisconnectPolicy, Job, TaskGroupTemplate};
use crate::server::annotations::{
    ANN_ORIGINAL_PLACED_AT, ANN_ORIGINAL_ROBOT, ANN_PLACED_AT, ANN_STATUS_SEQ, ANN_UNKNOWN_SINCE,
};
use crate::server::events::Kind;
use crate::server::object;
use crate::server::registry::Part;
use crate::server::resources::TASKS;
use crate::server::scheduler;
use crate::server::status::Status;
use crate::server::stored_task;
use crate::server::time;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    KeepOriginal,
    KeepReplacement,
    BestScore,
    LongestRunning,
}

impl Mode {
    /// The group's mode; bestScore when absent (validation refuses others).
    pub fn of(policy: Option<&DisconnectPolicy>) -> Mode {
        match policy.and_then(|d| d.reconcile.as_deref()) {
            Some("keepOriginal") => Mode::KeepOriginal,
            Some("keepReplacement") => Mode::KeepReplacement,
            Some("longestRunning") => Mode::LongestRunning,
            _ => Mode::BestScore,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::KeepOriginal => "keepOriginal",
            Mode::KeepReplacement => "keepReplacement",
            Mode::BestScore => "bestScore",
            Mode::LongestRunning => "longestRunning",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    Original,
    Replacement,
}

/// What the server knows about the two copies of one replica when the
/// original's robot is Online again.
#[derive(Clone, Copy, Debug)]
pub struct Copies {
    /// The replacement is placed on a robot that is Online.
    pub replacement_online: bool,
    /// Placement times (unix seconds).
    pub original_placed_at: i64,
    pub replacement_placed_at: i64,
}

/// Which copy survives. `original_scores_better` is asked only for
/// bestScore.
pub fn decide(mode: Mode, copies: Copies, original_scores_better: impl FnOnce() -> bool) -> Keep {
    if !copies.replacement_online {
        return Keep::Original;
    }
    let original = match mode {
        Mode::KeepOriginal => true,
        Mode::KeepReplacement => false,
        Mode::LongestRunning => copies.original_placed_at < copies.replacement_placed_at,
        Mode::BestScore => original_scores_better(),
    };
    if original {
        Keep::Original
    } else {
        Keep::Replacement
    }
}

/// When `task`'s current placement was made.
pub fn placed_at(task: &Value) -> Option<i64> {
    object::annotation(task, ANN_PLACED_AT)
        .or_else(|| object::meta_str(task, "creationTimestamp"))
        .and_then(time::parse_rfc3339)
}

/// Annotations for a replica moved off the lost robot `from` (on `body`,
/// the Task being rewritten; `cur` is its state before the move).
pub fn on_moved(body: &mut Value, cur: &Value, g: &TaskGroupTemplate, from: Option<&str>) {
    let now = time::now_rfc3339();
    match from {
        Some(lost) if Mode::of(g.disconnect.as_ref()) != Mode::KeepReplacement => {
            let since = placed_at(cur).map(time::format_rfc3339).unwrap_or_else(|| now.clone());
            object::set_annotation(body, ANN_ORIGINAL_ROBOT, Some(lost));
            object::set_annotation(body, ANN_ORIGINAL_PLACED_AT, Some(&since));
        }
        _ => {
            object::set_annotation(body, ANN_ORIGINAL_ROBOT, None);
            object::set_annotation(body, ANN_ORIGINAL_PLACED_AT, None);
        }
    }
    object::set_annotation(body, ANN_PLACED_AT, Some(&now));
}

fn robot_online(ctx: &Ctx, ns: &str, robot: &str) -> Option<bool> {
    let r = ctx.cache().get("robots", ns, robot)?;
    Some(r.get("status").and_then(|s| s.get("phase")).and_then(Value::as_str) == Some("Online"))
}

/// Settle every replica of group `g` whose original robot is back (or
/// deleted). Updates `existing` with what it wrote. A replica whose robot
/// is still Offline waits (the robot being Online again requeues the Job).
pub async fn settle(
    ctx: &Ctx,
    ns: &str,
    job: &Job,
    g: &TaskGroupTemplate,
    tg_name: &str,
    existing: &mut HashMap<String, Arc<Value>>,
) -> Result<(), Status> {
    let name = job.metadata.name.as_str();
    let mode = Mode::of(g.disconnect.as_ref());
    for i in 0..g.count {
        let names: Vec<String> = g
            .tasks
            .iter()
            .map(|t| task_name(name, &g.name, i, &t.name))
            .filter(|n| existing.contains_key(n))
            .collect();
        let current: Vec<Arc<Value>> = names.iter().map(|n| existing[n].clone()).collect();
        let Some(original) = current
            .iter()
            .find_map(|t| object::annotation(t, ANN_ORIGINAL_ROBOT))
            .map(str::to_string)
        else {
            continue;
        };
        let keep = match robot_online(ctx, ns, &original) {
            Some(false) => continue,
            // The robot was deleted: its copy is gone with it.
            None => Keep::Replacement,
            Some(true) => {
                let replacement = current.iter().find_map(|t| stored_task::target_robot(t));
                let copies = Copies {
                    replacement_online: replacement.is_some_and(|r| robot_online(ctx, ns, r) == Some(true)),
                    original_placed_at: current
                        .iter()
                        .find_map(|t| object::annotation(t, ANN_ORIGINAL_PLACED_AT).and_then(time::parse_rfc3339))
                        .unwrap_or(i64::MIN),
                    replacement_placed_at: current.iter().filter_map(|t| placed_at(t)).max().unwrap_or(i64::MAX),
                };
                decide(mode, copies, || {
                    let robots = super::snapshot::snapshot(ctx, ns);
                    let find = |n: &str| robots.iter().find(|r| r.name == n);
                    let req = super::snapshot::placement_request(ns, tg_name, job, g);
                    match (find(&original), replacement.and_then(find)) {
                        (Some(o), Some(r)) => {
                            scheduler::original_scores_better(&req, o, &scheduler::without_replica(&req, r))
                        }
                        _ => false,
                    }
                })
            }
        };
        for (tname, cur) in names.iter().zip(&current) {
            let replacement = stored_task::target_robot(cur).map(str::to_string);
            let mut body = (**cur).clone();
            let since = object::annotation(cur, ANN_ORIGINAL_PLACED_AT).map(str::to_string);
            object::set_annotation(&mut body, ANN_ORIGINAL_ROBOT, None);
            object::set_annotation(&mut body, ANN_ORIGINAL_PLACED_AT, None);
            let message = match keep {
                Keep::Original => {
                    body["spec"]["targetRobot"] = json!(original);
                    body["status"] = json!({"state": "scheduled", "reason": "Reconnected",
                        "message": format!("robot {original} is back; disconnect.reconcile {} keeps its copy", mode.name())});
                    object::set_annotation(&mut body, ANN_PLACED_AT, since.as_deref());
                    // The returning agent numbers its statuses afresh for us.
                    object::set_annotation(&mut body, ANN_STATUS_SEQ, None);
                    object::set_annotation(&mut body, ANN_UNKNOWN_SINCE, None);
                    match &replacement {
                        Some(r) => format!(
                            "robot {original} is back: {} keeps its copy; the copy on robot {r} is stopped",
                            mode.name()
                        ),
                        None => format!("robot {original} is back: its copy is the only one"),
                    }
                }
                Keep::Replacement => format!(
                    "robot {original} is back: {} keeps the copy on robot {}; robot {original} stops its copy",
                    mode.name(),
                    replacement.as_deref().unwrap_or("(none)")
                ),
            };
            let w = ctx.registry.replace(&TASKS, ns, tname, body, Part::All, ALL).await?;
            ctx.wrote("tasks", &w.object);
            ctx.events.record(&w.object, Kind::Normal, "Reconciled", message);
            if keep == Keep::Original {
                // Only the status changed (it is not part of a task's
                // version): the robot's next answer carries its complete
                // set, now, so its agent sees that the server waits for
                // the task's state and reports it again, whenever the
                // robot polled since it came back (a held poll would
                // otherwise wait out its hold).
                ctx.hub.fleet.forget_delivered(ns, &original);
                if let Some(rev) = object::resource_version(&w.object) {
                    ctx.hub.fleet.wake(ns, &original, rev);
                }
            }
            existing.insert(tname.clone(), w.object);
        }
        log::info!(
            "job {ns}/{name} group {} replica {i}: robot {original} is back; kept the {}",
            g.name,
            if keep == Keep::Original {
                "original"
            } else {
                "replacement"
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copies(replacement_online: bool, original: i64, replacement: i64) -> Copies {
        Copies {
            replacement_online,
            original_placed_at: original,
            replacement_placed_at: replacement,
        }
    }

    fn policy(mode: &str) -> DisconnectPolicy {
        DisconnectPolicy {
            reconcile: Some(mode.into()),
            ..Default::default()
        }
    }

    #[test]
    fn modes_parse_and_default_to_best_score() {
        for m in [
            Mode::KeepOriginal,
            Mode::KeepReplacement,
            Mode::BestScore,
            Mode::LongestRunning,
        ] {
            assert_eq!(Mode::of(Some(&policy(m.name()))), m);
        }
        assert_eq!(Mode::of(None), Mode::BestScore);
        assert_eq!(Mode::of(Some(&DisconnectPolicy::default())), Mode::BestScore);
    }

    #[test]
    fn keep_original_and_keep_replacement_ignore_everything_else() {
        let both = copies(true, 100, 50);
        assert_eq!(decide(Mode::KeepOriginal, both, || false), Keep::Original);
        assert_eq!(decide(Mode::KeepReplacement, both, || true), Keep::Replacement);
    }

    #[test]
    fn longest_running_keeps_the_copy_placed_first() {
        assert_eq!(
            decide(Mode::LongestRunning, copies(true, 100, 200), || false),
            Keep::Original
        );
        assert_eq!(
            decide(Mode::LongestRunning, copies(true, 300, 200), || true),
            Keep::Replacement
        );
        assert_eq!(
            decide(Mode::LongestRunning, copies(true, 200, 200), || true),
            Keep::Replacement,
            "a tie keeps the replacement"
        );
    }

    #[test]
    fn best_score_asks_the_scheduler() {
        assert_eq!(decide(Mode::BestScore, copies(true, 0, 0), || true), Keep::Original);
        assert_eq!(decide(Mode::BestScore, copies(true, 0, 0), || false), Keep::Replacement);
    }

    #[test]
    fn a_replacement_that_cannot_run_always_loses() {
        for m in [
            Mode::KeepOriginal,
            Mode::KeepReplacement,
            Mode::BestScore,
            Mode::LongestRunning,
        ] {
            assert_eq!(
                decide(m, copies(false, 300, 200), || panic!("not asked")),
                Keep::Original,
                "{m:?}"
            );
        }
    }
}
