//! An in-memory view of the API objects (an informer), fed by the store's
//! watch and by the controllers' own writes (write-through, so a reconcile
//! never acts on a state older than what it just wrote). Indexed by robot
//! and by job. Every change is reported once, with the previous state.

use crate::server::annotations::ANN_ORIGINAL_ROBOT;
use crate::server::object;
use crate::server::stored_task;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

pub const RESOURCES: [&str; 6] = ["jobs", "taskgroups", "tasks", "robots", "rollouts", "agentreleases"];

type NsName = (String, String);

#[derive(Default)]
struct Inner {
    objects: HashMap<&'static str, BTreeMap<NsName, (u64, Arc<Value>)>>,
    /// Deleted keys and the deletion revision, until the watch passes it.
    tombstones: HashMap<(&'static str, NsName), u64>,
    /// (ns, robot) -> task names (placed there, or its unsettled originals).
    by_robot: HashMap<NsName, BTreeSet<String>>,
    /// (resource, ns, job) -> names of taskgroups/tasks of that job.
    by_job: HashMap<(&'static str, NsName), BTreeSet<String>>,
    uids: HashMap<String, (&'static str, NsName)>,
}

/// One change to the cached state.
#[derive(Clone, Debug)]
pub struct Change {
    pub resource: &'static str,
    pub namespace: String,
    pub name: String,
    pub revision: u64,
    pub prev: Option<Arc<Value>>,
    pub new: Option<Arc<Value>>,
}

#[derive(Default)]
pub struct Cache {
    inner: RwLock<Inner>,
}

pub fn resource_name(resource: &str) -> Option<&'static str> {
    RESOURCES.iter().copied().find(|r| *r == resource)
}

impl Inner {
    fn index(&mut self, resource: &'static str, key: &NsName, v: &Value, add: bool) {
        let ns = key.0.clone();
        let uid = object::uid(v);
        if !uid.is_empty() {
            if add {
                self.uids.insert(uid.to_string(), (resource, key.clone()));
            } else {
                self.uids.remove(uid);
            }
        }
        let edit = |set: &mut BTreeSet<String>| {
            if add {
                set.insert(key.1.clone());
            } else {
                set.remove(&key.1);
            }
        };
        if resource == "tasks" {
            // A robot's desired set: the tasks placed on it, and the copies
            // it ran before it was lost until they are settled
            // (disconnect.rs).
            let original = object::annotation(v, ANN_ORIGINAL_ROBOT).filter(|r| !r.is_empty());
            for robot in stored_task::target_robot(v).into_iter().chain(original) {
                let k = (ns.clone(), robot.to_string());
                edit(self.by_robot.entry(k.clone()).or_default());
                if self.by_robot.get(&k).is_some_and(BTreeSet::is_empty) {
                    self.by_robot.remove(&k);
                }
            }
        }
        if resource == "tasks" || resource == "taskgroups" || resource == "rollouts" {
            if let Some(job) = stored_task::job_name(v) {
                let k = (resource, (ns, job.to_string()));
                edit(self.by_job.entry(k.clone()).or_default());
                if self.by_job.get(&k).is_some_and(BTreeSet::is_empty) {
                    self.by_job.remove(&k);
                }
            }
        }
    }
}

impl Cache {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Apply the state of one key at `revision` (`None`: deleted). Ignored
    /// if the cache already knows a state at least that new.
    pub fn apply(
        &self,
        resource: &str,
        ns: &str,
        name: &str,
        revision: u64,
        new: Option<Arc<Value>>,
    ) -> Option<Change> {
        let resource = resource_name(resource)?;
        let key = (ns.to_string(), name.to_string());
        let mut inner = self.write();
        let tomb = (resource, key.clone());
        if inner.tombstones.get(&tomb).is_some_and(|r| *r >= revision) {
            return None;
        }
        let map = inner.objects.entry(resource).or_default();
        if map.get(&key).is_some_and(|(r, _)| *r >= revision) {
            return None;
        }
        let prev = match &new {
            Some(v) => map.insert(key.clone(), (revision, v.clone())),
            None => map.remove(&key),
        }
        .map(|(_, v)| v);
        if new.is_none() {
            prev.as_ref()?;
            inner.tombstones.insert(tomb, revision);
        } else {
            inner.tombstones.remove(&tomb);
        }
        if let Some(p) = &prev {
            inner.index(resource, &key, p, false);
        }
        if let Some(n) = &new {
            inner.index(resource, &key, n, true);
        }
        Some(Change {
            resource,
            namespace: key.0,
            name: key.1,
            revision,
            prev,
            new,
        })
    }

    /// Forget tombstones the watch has passed.
    pub fn compact(&self, watched: u64) {
        let mut inner = self.write();
        if !inner.tombstones.is_empty() {
            inner.tombstones.retain(|_, r| *r > watched);
        }
    }

    /// Keys cached for `resource` that are not in `present` (after a
    /// re-list: they were deleted while the watch was down).
    pub fn missing_from(&self, resource: &str, present: &std::collections::HashSet<NsName>) -> Vec<NsName> {
        let inner = self.read();
        inner
            .objects
            .get(resource)
            .map(|m| m.keys().filter(|k| !present.contains(*k)).cloned().collect())
            .unwrap_or_default()
    }

    pub fn get(&self, resource: &str, ns: &str, name: &str) -> Option<Arc<Value>> {
        let inner = self.read();
        inner
            .objects
            .get(resource)?
            .get(&(ns.to_string(), name.to_string()))
            .map(|(_, v)| v.clone())
    }

    pub fn list(&self, resource: &str, ns: Option<&str>) -> Vec<Arc<Value>> {
        let inner = self.read();
        let Some(map) = inner.objects.get(resource) else {
            return vec![];
        };
        match ns {
            None => map.values().map(|(_, v)| v.clone()).collect(),
            Some(ns) => map
                .range((ns.to_string(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, (_, v))| v.clone())
                .collect(),
        }
    }

    /// The robot's desired set: tasks placed on it (`spec.targetRobot`)
    /// and copies it ran before it was lost, until they are settled.
    pub fn tasks_on_robot(&self, ns: &str, robot: &str) -> Vec<Arc<Value>> {
        let inner = self.read();
        let Some(names) = inner.by_robot.get(&(ns.to_string(), robot.to_string())) else {
            return vec![];
        };
        let tasks = inner.objects.get("tasks");
        names
            .iter()
            .filter_map(|n| tasks?.get(&(ns.to_string(), n.clone())).map(|(_, v)| v.clone()))
            .collect()
    }

    /// Taskgroups or tasks (`resource`) whose spec.jobName is `job`.
    pub fn of_job(&self, resource: &'static str, ns: &str, job: &str) -> Vec<Arc<Value>> {
        let inner = self.read();
        let Some(names) = inner.by_job.get(&(resource, (ns.to_string(), job.to_string()))) else {
            return vec![];
        };
        let objs = inner.objects.get(resource);
        names
            .iter()
            .filter_map(|n| objs?.get(&(ns.to_string(), n.clone())).map(|(_, v)| v.clone()))
            .collect()
    }

    pub fn uid_exists(&self, uid: &str) -> bool {
        self.read().uids.contains_key(uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn newer_wins_and_tombstones_block_stale_events() {
        let c = Cache::default();
        let t = |robot: &str| {
            Arc::new(json!({"metadata": {"name": "t", "uid": "u1"}, "spec": {"targetRobot": robot, "jobName": "j"}}))
        };
        assert!(c.apply("tasks", "d", "t", 5, Some(t("r1"))).is_some());
        assert!(
            c.apply("tasks", "d", "t", 4, Some(t("r2"))).is_none(),
            "older state ignored"
        );
        let ch = c.apply("tasks", "d", "t", 6, Some(t("r2"))).unwrap();
        assert_eq!(ch.prev.unwrap()["spec"]["targetRobot"], "r1");
        assert!(c.tasks_on_robot("d", "r1").is_empty());
        assert_eq!(c.tasks_on_robot("d", "r2").len(), 1);
        assert_eq!(c.of_job("tasks", "d", "j").len(), 1);
        assert!(c.apply("tasks", "d", "t", 8, None).is_some());
        assert!(
            c.apply("tasks", "d", "t", 7, Some(t("r3"))).is_none(),
            "stale event after a delete"
        );
        assert!(c.tasks_on_robot("d", "r2").is_empty());
        assert!(!c.uid_exists("u1"));
        c.compact(8);
        assert!(c.apply("tasks", "d", "t", 9, Some(t("r1"))).is_some(), "recreated");
        assert_eq!(c.list("tasks", Some("d")).len(), 1);
        assert!(c.list("tasks", Some("e")).is_empty());
    }

    #[test]
    fn an_unsettled_original_stays_in_its_robots_desired_set() {
        let c = Cache::default();
        let t = |robot: &str, original: Option<&str>| {
            let mut v = json!({"metadata": {"name": "t", "uid": "u1"}, "spec": {"targetRobot": robot, "jobName": "j"}});
            if let Some(o) = original {
                v["metadata"]["annotations"] = json!({ANN_ORIGINAL_ROBOT: o});
            }
            Arc::new(v)
        };
        c.apply("tasks", "d", "t", 1, Some(t("a", None)));
        c.apply("tasks", "d", "t", 2, Some(t("b", Some("a"))));
        assert_eq!(
            c.tasks_on_robot("d", "a").len(),
            1,
            "the returning robot keeps its copy"
        );
        assert_eq!(c.tasks_on_robot("d", "b").len(), 1);
        c.apply("tasks", "d", "t", 3, Some(t("b", None)));
        assert!(c.tasks_on_robot("d", "a").is_empty(), "settled: robot a stops its copy");
        c.apply("tasks", "d", "t", 4, Some(t("a", Some("a"))));
        c.apply("tasks", "d", "t", 5, Some(t("a", None)));
        assert_eq!(c.tasks_on_robot("d", "a").len(), 1);
    }
}
