//! The tasks of one placed replica across two versions: every task the new
//! version or the base version of its group has, with its object (if it
//! exists) and its spec at either version (`None`: that version has no
//! such task, so the new version added or removed it). A replica changes
//! version as a whole: its changed tasks are written, its added tasks
//! created and its removed tasks deleted together, in its turn, so adding
//! or removing a task is paced (and reverted) like changing one.
//!
//! A group the base version does not have is new, like a new Job: its
//! replicas are created at once with the new version's tasks, never rolled.

use super::super::task_objects::to_value;
use super::versions::Versions;
use crate::api::job_expansion;
use crate::api::{Job, OwnerReference, TaskGroupTemplate};
use crate::server::status::Status;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// One task of a replica.
pub struct RolledTask {
    pub name: String,
    /// Its object, if it exists.
    pub cur: Option<Arc<Value>>,
    /// Its spec at the new version (`None`: the new version removed it).
    pub target: Option<Value>,
    /// Its spec at the base version (`None`: the base has no such task).
    pub base: Option<Value>,
}

/// What puts a task at a version.
#[derive(Debug, PartialEq)]
pub enum Step<'a> {
    /// Absent, and to stay so.
    Nothing,
    Create(&'a Value),
    /// Write this spec over the object (also when it is the same: the
    /// version starts anew).
    Write(&'a Value, &'a Value),
    Delete,
}

impl RolledTask {
    /// Is the task as `want` says: there with that spec, or absent?
    pub fn is_at(&self, want: Option<&Value>) -> bool {
        match (&self.cur, want) {
            (None, None) => true,
            (Some(cur), Some(spec)) => cur.get("spec") == Some(spec),
            _ => false,
        }
    }

    /// The step that puts the task at `want`.
    pub fn step_to<'a>(&'a self, want: Option<&'a Value>) -> Step<'a> {
        match (&self.cur, want) {
            (None, None) => Step::Nothing,
            (None, Some(spec)) => Step::Create(spec),
            (Some(cur), Some(spec)) => Step::Write(cur, spec),
            (Some(_), None) => Step::Delete,
        }
    }
}

/// One replica: its robot, index and tasks.
pub struct ReplicaTasks {
    pub robot: String,
    /// Its replica index (a system group's is always 0).
    pub index: i32,
    pub tasks: Vec<RolledTask>,
}

impl ReplicaTasks {
    /// Every task as the new version has it (added ones there, removed
    /// ones gone).
    pub fn on_target(&self) -> bool {
        self.tasks.iter().all(|t| t.is_at(t.target.as_ref()))
    }

    /// Every task as the base version has it.
    pub fn on_base(&self) -> bool {
        self.tasks.iter().all(|t| t.is_at(t.base.as_ref()))
    }

    /// A task exists at a spec only the new version has: the replica was
    /// updated (even if another of its tasks is missing).
    pub fn shows_target(&self) -> bool {
        self.tasks
            .iter()
            .any(|t| t.cur.is_some() && t.target != t.base && t.is_at(t.target.as_ref()))
    }

    /// The objects of the tasks that exist.
    pub fn objects(&self) -> impl Iterator<Item = &Arc<Value>> {
        self.tasks.iter().filter_map(|t| t.cur.as_ref())
    }
}

/// One group's placed replicas, for the rollout.
pub struct GroupReplicas<'a> {
    pub g: &'a TaskGroupTemplate,
    /// The owner of the group's Tasks (its TaskGroup), for tasks created.
    pub owner: OwnerReference,
    pub replicas: Vec<ReplicaTasks>,
}

/// The names of the tasks of group `g` (new version) and `base` (the
/// group at the base version): the new version's, then those only the
/// base has.
pub fn task_names<'a>(g: &'a TaskGroupTemplate, base: Option<&'a TaskGroupTemplate>) -> Vec<&'a str> {
    let mut names: Vec<&str> = g.tasks.iter().map(|t| t.name.as_str()).collect();
    for t in base.map(|b| b.tasks.as_slice()).unwrap_or_default() {
        if !names.contains(&t.name.as_str()) {
            names.push(&t.name);
        }
    }
    names
}

/// Replica `index` of group `g` on `robot`: its tasks (`name_of` names
/// each by its name in the group) with their objects from `existing`.
pub fn replica(
    versions: &Versions,
    job: &Job,
    g: &TaskGroupTemplate,
    index: i32,
    robot: &str,
    existing: &HashMap<String, Arc<Value>>,
    name_of: impl Fn(&str) -> String,
) -> Result<ReplicaTasks, Status> {
    let mut tasks = Vec::new();
    for n in task_names(g, versions.base_group(&g.name)) {
        let on_robot = |mut spec: crate::api::TaskSpec| {
            spec.target_robot = Some(robot.to_string());
            to_value(&spec)
        };
        let target = g.tasks.iter().find(|t| t.name == n);
        let target = target.map(|t| on_robot(job_expansion::place_task(job, g, t, index)));
        let base = versions.base_task(&g.name, n, index).map(on_robot);
        let name = name_of(n);
        tasks.push(RolledTask {
            cur: existing.get(&name).cloned(),
            name,
            target: target.transpose()?,
            base: base.transpose()?,
        });
    }
    Ok(ReplicaTasks {
        robot: robot.to_string(),
        index,
        tasks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn group(tasks: &[&str]) -> TaskGroupTemplate {
        let tasks: Vec<Value> = tasks.iter().map(|t| json!({"name": t, "driver": "exec"})).collect();
        serde_json::from_value(json!({"name": "g", "tasks": tasks})).unwrap()
    }

    /// A task whose object has spec `cur` (None: no object).
    fn task(cur: Option<u32>, target: Option<u32>, base: Option<u32>) -> RolledTask {
        let spec = |v: u32| json!({"env": {"V": v.to_string()}});
        RolledTask {
            name: "t".into(),
            cur: cur.map(|v| Arc::new(json!({"spec": spec(v)}))),
            target: target.map(spec),
            base: base.map(spec),
        }
    }

    fn replica_of(tasks: Vec<RolledTask>) -> ReplicaTasks {
        ReplicaTasks {
            robot: "r1".into(),
            index: 0,
            tasks,
        }
    }

    #[test]
    fn names_are_the_new_versions_then_those_only_the_base_has() {
        let (new, base) = (group(&["main", "side"]), group(&["old", "main"]));
        assert_eq!(task_names(&new, Some(&base)), ["main", "side", "old"]);
        assert_eq!(task_names(&new, None), ["main", "side"]);
    }

    #[test]
    fn an_added_task_is_on_target_once_created_and_on_base_while_absent() {
        // v1 {main}, v2 {main, side}.
        let before = replica_of(vec![task(Some(1), Some(1), Some(1)), task(None, Some(2), None)]);
        assert!(before.on_base() && !before.on_target());
        assert_eq!(
            before.tasks[1].step_to(before.tasks[1].target.as_ref()),
            Step::Create(&json!({"env": {"V": "2"}}))
        );
        let after = replica_of(vec![task(Some(1), Some(1), Some(1)), task(Some(2), Some(2), None)]);
        assert!(after.on_target() && !after.on_base());
        // Going back deletes it.
        assert_eq!(after.tasks[1].step_to(None), Step::Delete);
        assert_eq!(after.objects().count(), 2);
    }

    #[test]
    fn a_removed_task_is_on_base_while_there_and_on_target_once_gone() {
        // v1 {main, side}, v2 {main}.
        let before = replica_of(vec![task(Some(1), Some(1), Some(1)), task(Some(1), None, Some(1))]);
        assert!(before.on_base() && !before.on_target());
        assert_eq!(before.tasks[1].step_to(None), Step::Delete);
        let after = replica_of(vec![task(Some(1), Some(1), Some(1)), task(None, None, Some(1))]);
        assert!(after.on_target() && !after.on_base());
        assert_eq!(after.objects().count(), 1);
        // Going back creates it again with the base spec; absent stays absent.
        assert_eq!(
            after.tasks[1].step_to(after.tasks[1].base.as_ref()),
            Step::Create(&json!({"env": {"V": "1"}}))
        );
        assert_eq!(after.tasks[1].step_to(None), Step::Nothing);
    }

    #[test]
    fn a_half_written_replica_is_on_neither_version() {
        // v2 changes main and adds side; only main was written.
        let half = replica_of(vec![task(Some(2), Some(2), Some(1)), task(None, Some(2), None)]);
        assert!(!half.on_target() && !half.on_base());
        assert!(half.shows_target(), "main is at a spec only v2 has");
        // On base with a task deleted by hand: an unchanged task shows
        // nothing (both versions have its spec).
        let base_half = replica_of(vec![task(Some(1), Some(1), Some(1)), task(None, Some(2), Some(1))]);
        assert!(!base_half.on_target() && !base_half.on_base() && !base_half.shows_target());
    }
}
