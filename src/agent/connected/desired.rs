//! The desired set as the server last described it, kept between polls
//! and across restarts (`assignments.json`), with each task's version hash
//! ([`crate::api::assignment_set`]). The poller applies each answer here:
//! a complete set replaces it, a delta changes only the tasks it names, and
//! the answer's digest must then match the set's, or the set is marked
//! unknown (revision 0) so the next poll asks for the complete one. Until
//! that arrives the robot keeps running what it ran: a mismatch never
//! reaches the reconciler.
//!
//! In the group form (`groups=1`) the set also holds each TaskGroup's
//! shared data once, with its version hash; tasks that travelled without
//! their group's fields get them back from it when the set is handed on
//! ([`assignment_set::GroupPart::fill`]), so everything after the poller
//! sees each Task as the control plane stored it. The file holds the tasks
//! filled too (with the names of those that travelled without their
//! group's fields, `bare`): an older agent (a self-update rolled back)
//! reads it as it always did and runs each task with its group's data.

use crate::api::agent_protocol::Assignments;
use crate::api::assignment_set::{self, GroupPart};
use crate::api::{StringMap, Task};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The state file (under the data dir).
pub const FILE: &str = "assignments.json";

#[derive(Debug, Default)]
pub struct Kept {
    /// The revision the set is at; 0: unknown (ask for the complete set).
    revision: u64,
    /// Name → (version hash, task as it travelled).
    tasks: BTreeMap<String, (String, Task)>,
    /// Group form: `taskGroupName` → (version hash, the group's part).
    groups: BTreeMap<String, GroupPart>,
    /// Group form: `taskGroupName` → version hash. (Map types the agent
    /// has already: each new one costs flash.)
    group_versions: StringMap,
}

/// What one answer did to the kept set.
#[derive(Debug)]
pub enum Taken {
    /// Nothing new (and, if the answer had a digest, it matched).
    Same,
    /// The set changed: hand it to the reconciler.
    Changed(Update),
    /// The set is not the server's (the message says how): ask again for
    /// the complete set.
    Mismatch(String),
}

/// A changed desired set, for the main thread.
#[derive(Debug, Default)]
pub struct Update {
    /// The complete set.
    pub tasks: Vec<Task>,
    /// The tasks the answer carried (their status is the server's latest).
    pub changed: Vec<Task>,
    /// It came as a delta (else as the complete set), removing this many
    /// tasks.
    pub delta: bool,
    pub removed: usize,
    /// Group parts the answer carried (added or changed).
    pub groups_changed: usize,
    /// Each group's name in its Job, by `taskGroupName` (group form).
    pub group_names: BTreeMap<String, String>,
}

impl std::fmt::Display for Update {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.delta {
            write!(
                f,
                "{} tasks (delta: {} added or changed, {} removed",
                self.tasks.len(),
                self.changed.len(),
                self.removed
            )?;
            if self.groups_changed > 0 {
                write!(f, "; {} task group(s) changed", self.groups_changed)?;
            }
            write!(f, ")")
        } else {
            write!(f, "{} tasks (complete set)", self.tasks.len())
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Stored<'a> {
    revision: u64,
    versions: BTreeMap<&'a str, &'a str>,
    tasks: Vec<Task>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    bare: Vec<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    groups: &'a BTreeMap<String, GroupPart>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    group_versions: &'a StringMap,
}

impl Kept {
    /// The revision to poll `since`.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The complete set, each task with its group's fields.
    pub fn tasks(&self) -> Vec<Task> {
        self.tasks.values().map(|(_, t)| self.filled(t)).collect()
    }

    /// `t` travelled without its group's fields (they are filled in).
    fn is_bare(&self, t: &Task) -> bool {
        t.spec.job_name.is_none()
            && t.spec
                .task_group_name
                .as_ref()
                .is_some_and(|k| self.groups.contains_key(k))
    }

    fn filled(&self, t: &Task) -> Task {
        let mut t = t.clone();
        let group = t.spec.task_group_name.as_ref().and_then(|k| self.groups.get(k));
        if let Some(part) = group {
            part.fill(&mut t.spec);
        }
        t
    }

    /// Each group's name in its Job, by `taskGroupName`.
    pub fn group_names(&self) -> BTreeMap<String, String> {
        self.groups
            .iter()
            .filter_map(|(k, p)| Some((k.clone(), p.group_name.clone()?)))
            .collect()
    }

    /// The digest of the set as kept (with its groups: the group form's).
    pub fn digest(&self) -> String {
        assignment_set::digest_with_groups(
            self.tasks.iter().map(|(n, (v, _))| (n.as_str(), v.as_str())),
            self.group_versions.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
    }

    /// Apply a verified answer to a poll that named `since`.
    pub fn take(&mut self, a: &mut Assignments, since: u64) -> Taken {
        let tasks = std::mem::take(&mut a.tasks);
        let mut versions = std::mem::take(&mut a.versions);
        let mut keyed = Vec::with_capacity(tasks.len());
        for t in tasks {
            let name = t.metadata.name.clone();
            let version = versions.remove(&name).unwrap_or_default();
            keyed.push((name, version, t));
        }
        // Old news (the robot holds `revision` already): nothing to apply.
        // But a complete set with its digest (the server could not answer
        // a resuming agent's `since` with a delta) replaces whatever is kept.
        let new = a.revision != since || since == 0 || (!a.delta && a.digest.is_some());
        if new && a.delta && self.revision != since {
            let held = self.revision;
            self.revision = 0;
            return Taken::Mismatch(format!("a delta from revision {since}, but the set kept is at {held}"));
        }
        let groups = std::mem::take(&mut a.groups);
        let groups_changed = groups.len();
        let mut changed = Vec::new();
        let mut removed = 0;
        if new {
            if a.delta {
                for name in &a.removed {
                    removed += usize::from(self.tasks.remove(name).is_some());
                }
                for key in &a.removed_groups {
                    self.groups.remove(key);
                    self.group_versions.remove(key);
                }
            } else {
                self.tasks.clear();
                self.groups.clear();
                self.group_versions.clear();
            }
            for key in groups.keys() {
                let version = a.group_versions.remove(key).unwrap_or_default();
                self.group_versions.insert(key.clone(), version);
            }
            self.groups.extend(groups);
            for (name, version, t) in keyed {
                self.tasks.insert(name.clone(), (version, t));
                if let Some((_, t)) = self.tasks.get(&name) {
                    changed.push(self.filled(t));
                }
            }
            self.revision = a.revision;
        }
        if let Some(want) = &a.digest {
            let have = self.digest();
            if *want != have {
                self.revision = 0;
                return Taken::Mismatch(format!(
                    "the set kept ({} tasks, digest {have}) is not the server's (digest {want})",
                    self.tasks.len()
                ));
            }
        }
        if new {
            Taken::Changed(Update {
                tasks: self.tasks(),
                changed,
                delta: a.delta,
                removed,
                groups_changed,
                group_names: self.group_names(),
            })
        } else {
            Taken::Same
        }
    }

    /// The kept set from the data dir; an empty one at revision 0 when
    /// there is none, it cannot be read, or it lacks version hashes (then
    /// its tasks still run until the server answers).
    pub fn load(data_dir: &Path) -> Kept {
        let Some(value) = std::fs::read(data_dir.join(FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        else {
            return Kept::default();
        };
        let take = |v: &mut serde_json::Value, k: &str| v.get_mut(k).map(serde_json::Value::take).unwrap_or_default();
        let null = serde_json::Value::Null;
        let (revision, versions, tasks, groups, group_versions, bare) = match value {
            // The complete set alone (agents before delta assignments).
            serde_json::Value::Array(_) => (0, null.clone(), value, None, null.clone(), null),
            mut v => (
                v.get("revision").and_then(serde_json::Value::as_u64).unwrap_or(0),
                take(&mut v, "versions"),
                take(&mut v, "tasks"),
                v.get_mut("groups").map(serde_json::Value::take),
                take(&mut v, "groupVersions"),
                take(&mut v, "bare"),
            ),
        };
        let bare: Vec<&str> = bare
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_str)
            .collect();
        // Through the one typed decoder the agent has (api::decode).
        let Ok(tasks) = crate::api::decode::decode_typed::<Vec<Task>>(tasks).map(|d| d.object) else {
            return Kept::default();
        };
        let groups = match groups {
            None => BTreeMap::new(),
            Some(g) => match crate::api::decode::decode_typed::<BTreeMap<String, GroupPart>>(g) {
                Ok(d) => d.object,
                Err(_) => return Kept::default(),
            },
        };
        let mut kept = Kept {
            revision,
            tasks: BTreeMap::new(),
            groups,
            group_versions: StringMap::new(),
        };
        for key in kept.groups.keys() {
            let version = group_versions
                .get(key.as_str())
                .and_then(serde_json::Value::as_str)
                .filter(|v| assignment_set::is_hash(v));
            if version.is_none() {
                kept.revision = 0;
            }
            let version = version.unwrap_or_default().to_string();
            kept.group_versions.insert(key.clone(), version);
        }
        for mut t in tasks {
            // Kept filled; held as it travelled.
            if bare.contains(&t.metadata.name.as_str()) {
                GroupPart::strip(&mut t.spec);
            }
            let version = versions
                .get(t.metadata.name.as_str())
                .and_then(serde_json::Value::as_str)
                .filter(|v| assignment_set::is_hash(v));
            if version.is_none() {
                kept.revision = 0;
            }
            let version = version.unwrap_or_default().to_string();
            kept.tasks.insert(t.metadata.name.clone(), (version, t));
        }
        kept
    }

    /// Write the set to the data dir (atomically).
    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        let stored = Stored {
            revision: self.revision,
            versions: self.tasks.iter().map(|(n, (v, _))| (n.as_str(), v.as_str())).collect(),
            tasks: self.tasks(),
            bare: self
                .tasks
                .iter()
                .filter(|(_, (_, t))| self.is_bare(t))
                .map(|(n, _)| n.as_str())
                .collect(),
            groups: &self.groups,
            group_versions: &self.group_versions,
        };
        let bytes = serde_json::to_vec(&stored).map_err(std::io::Error::other)?;
        crate::atomic_file::write(&data_dir.join(FILE), &bytes, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str) -> Task {
        let mut t = Task {
            api_version: crate::api::API_VERSION.into(),
            kind: "Task".into(),
            ..Task::default()
        };
        t.metadata.name = name.into();
        t
    }

    fn version(c: char) -> String {
        c.to_string().repeat(64)
    }

    /// What the server would send: `tasks` with their versions, and the
    /// digest of `all` (the complete set at `revision`).
    fn answer(
        revision: u64,
        delta: bool,
        tasks: &[(&str, char)],
        removed: &[&str],
        all: &[(&str, char)],
    ) -> Assignments {
        let mut all: Vec<(String, String)> = all.iter().map(|(n, v)| ((*n).to_string(), version(*v))).collect();
        all.sort();
        Assignments {
            revision,
            delta,
            tasks: tasks.iter().map(|(n, _)| task(n)).collect(),
            versions: tasks
                .iter()
                .map(|(n, v)| ((*n).to_string(), version(*v)))
                .collect::<StringMap>(),
            removed: removed.iter().map(|n| (*n).to_string()).collect(),
            digest: Some(assignment_set::digest(
                all.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            )),
            ..Assignments::default()
        }
    }

    fn names(u: &[Task]) -> Vec<&str> {
        u.iter().map(|t| t.metadata.name.as_str()).collect()
    }

    #[test]
    fn complete_then_deltas_add_change_and_remove() {
        let mut kept = Kept::default();
        let mut a = answer(5, false, &[("a", 'a'), ("b", 'b')], &[], &[("a", 'a'), ("b", 'b')]);
        let Taken::Changed(u) = kept.take(&mut a, 0) else {
            panic!("complete set not taken")
        };
        assert_eq!((names(&u.tasks), kept.revision()), (vec!["a", "b"], 5));
        // Add c, change b, keep a: only b and c travel.
        let mut a = answer(
            8,
            true,
            &[("b", 'c'), ("c", 'c')],
            &[],
            &[("a", 'a'), ("b", 'c'), ("c", 'c')],
        );
        let Taken::Changed(u) = kept.take(&mut a, 5) else {
            panic!("delta not taken")
        };
        assert_eq!(names(&u.tasks), ["a", "b", "c"]);
        assert_eq!(names(&u.changed), ["b", "c"], "only what the answer carried");
        // Remove a.
        let mut a = answer(9, true, &[], &["a"], &[("b", 'c'), ("c", 'c')]);
        let Taken::Changed(u) = kept.take(&mut a, 8) else {
            panic!("removal not taken")
        };
        assert_eq!((names(&u.tasks), u.changed.len()), (vec!["b", "c"], 0));
        assert_eq!(kept.revision(), 9);
        // Nothing new, digest confirmed.
        let mut a = answer(9, true, &[], &[], &[("b", 'c'), ("c", 'c')]);
        assert!(matches!(kept.take(&mut a, 9), Taken::Same));
        assert_eq!(kept.revision(), 9);
    }

    #[test]
    fn a_digest_mismatch_asks_for_the_complete_set() {
        let mut kept = Kept::default();
        let mut a = answer(5, false, &[("a", 'a')], &[], &[("a", 'a')]);
        assert!(matches!(kept.take(&mut a, 0), Taken::Changed(_)));
        // The server's set also holds x, which this robot never got.
        let mut a = answer(6, true, &[("b", 'b')], &[], &[("a", 'a'), ("b", 'b'), ("x", 'a')]);
        let Taken::Mismatch(why) = kept.take(&mut a, 5) else {
            panic!("mismatch not seen")
        };
        assert!(why.contains("not the server's"), "{why}");
        assert_eq!(kept.revision(), 0, "the next poll asks since=0");
        // An idle answer that only confirms the digest also catches it.
        let mut kept = Kept::default();
        let mut a = answer(5, false, &[("a", 'a')], &[], &[("a", 'a')]);
        kept.take(&mut a, 0);
        let mut a = answer(5, true, &[], &[], &[("a", 'b')]);
        assert!(matches!(kept.take(&mut a, 5), Taken::Mismatch(_)));
        assert_eq!(kept.revision(), 0);
        // The complete set repairs it.
        let mut a = answer(7, false, &[("a", 'b')], &[], &[("a", 'b')]);
        let Taken::Changed(u) = kept.take(&mut a, 0) else {
            panic!("complete set not taken")
        };
        assert_eq!((names(&u.tasks), kept.revision()), (vec!["a"], 7));
    }

    #[test]
    fn a_complete_set_at_the_kept_revision_replaces_the_kept_set() {
        // Resuming at revision 5 from a file; the server (restarted) sends
        // its complete set at that same revision.
        let mut kept = Kept::default();
        let mut a = answer(5, false, &[("a", 'a')], &[], &[("a", 'a')]);
        kept.take(&mut a, 0);
        let mut a = answer(5, false, &[("a", 'b'), ("b", 'b')], &[], &[("a", 'b'), ("b", 'b')]);
        let Taken::Changed(u) = kept.take(&mut a, 5) else {
            panic!("complete set not taken")
        };
        assert_eq!(names(&u.tasks), ["a", "b"]);
        // Without a digest (an answer to a poll without delta=1), an answer
        // at `since` has nothing new.
        let mut a = answer(5, false, &[], &[], &[]);
        a.digest = None;
        assert!(matches!(kept.take(&mut a, 5), Taken::Same));
        assert_eq!(kept.tasks().len(), 2);
    }

    #[test]
    fn the_group_form_keeps_each_groups_data_once_and_fills_its_tasks() {
        let part = |init: &str| GroupPart {
            group_name: Some("g".into()),
            job_name: Some("j".into()),
            init_tasks: vec![crate::api::TaskSpec {
                name: init.into(),
                ..Default::default()
            }],
            ..GroupPart::default()
        };
        let grouped =
            |mut a: Assignments, groups: &[(&str, &str, char)], all: &[(&str, char)], all_groups: &[(&str, char)]| {
                for (key, init, v) in groups {
                    a.groups.insert((*key).to_string(), part(init));
                    a.group_versions.insert((*key).to_string(), version(*v));
                }
                let tasks: Vec<(String, String)> = all.iter().map(|(n, v)| ((*n).to_string(), version(*v))).collect();
                let gs: Vec<(String, String)> = all_groups
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), version(*v)))
                    .collect();
                a.digest = Some(assignment_set::digest_with_groups(
                    tasks.iter().map(|(n, v)| (n.as_str(), v.as_str())),
                    gs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                ));
                for t in &mut a.tasks {
                    t.spec.task_group_name = Some("j-g".into());
                }
                a
            };
        let mut kept = Kept::default();
        let mut a = grouped(
            answer(5, false, &[("a", 'a'), ("b", 'b')], &[], &[]),
            &[("j-g", "setup", 'c')],
            &[("a", 'a'), ("b", 'b')],
            &[("j-g", 'c')],
        );
        let Taken::Changed(u) = kept.take(&mut a, 0) else {
            panic!("complete set not taken")
        };
        assert!(u
            .tasks
            .iter()
            .all(|t| t.spec.init_tasks[0].name == "setup" && t.spec.job_name.as_deref() == Some("j")));
        assert_eq!(u.group_names.get("j-g").map(String::as_str), Some("g"));
        // The group's data changes: the group alone travels.
        let mut a = grouped(
            answer(6, true, &[], &[], &[]),
            &[("j-g", "setup2", 'd')],
            &[("a", 'a'), ("b", 'b')],
            &[("j-g", 'd')],
        );
        let Taken::Changed(u) = kept.take(&mut a, 5) else {
            panic!("group change not taken")
        };
        assert_eq!((u.changed.len(), u.groups_changed), (0, 1));
        assert!(u.tasks.iter().all(|t| t.spec.init_tasks[0].name == "setup2"));
        assert!(u.to_string().ends_with("0 removed; 1 task group(s) changed)"), "{u}");
        // Kept across restarts with its groups.
        let dir = tempfile::tempdir().unwrap();
        kept.save(dir.path()).unwrap();
        let mut again = Kept::load(dir.path());
        assert_eq!((again.revision(), again.digest()), (6, kept.digest()));
        assert_eq!(again.tasks()[0].spec.init_tasks[0].name, "setup2");
        // An older agent reads the tasks with their group's data.
        let file: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join(FILE)).unwrap()).unwrap();
        assert_eq!(file["tasks"][0]["spec"]["initTasks"][0]["name"], "setup2");
        // Reloaded, the tasks still follow their group's next change.
        let mut a = grouped(
            answer(7, true, &[], &[], &[]),
            &[("j-g", "setup3", 'e')],
            &[("a", 'a'), ("b", 'b')],
            &[("j-g", 'e')],
        );
        let Taken::Changed(u) = again.take(&mut a, 6) else {
            panic!("group change after a reload not taken")
        };
        assert!(u.tasks.iter().all(|t| t.spec.init_tasks[0].name == "setup3"));
        // The group removed with its tasks.
        let mut a = answer(7, true, &[], &["a", "b"], &[]);
        a.removed_groups = vec!["j-g".into()];
        assert!(matches!(kept.take(&mut a, 6), Taken::Changed(_)));
        assert!(kept.groups.is_empty() && kept.tasks.is_empty());
    }

    #[test]
    fn a_delta_to_another_revision_is_refused() {
        let mut kept = Kept::default();
        let mut a = answer(5, false, &[("a", 'a')], &[], &[("a", 'a')]);
        kept.take(&mut a, 0);
        let mut a = answer(9, true, &[("b", 'b')], &[], &[("a", 'a'), ("b", 'b')]);
        assert!(matches!(kept.take(&mut a, 7), Taken::Mismatch(_)));
        assert_eq!(kept.revision(), 0);
    }

    #[test]
    fn kept_across_restarts_and_lost_state_means_the_complete_set() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Kept::load(dir.path()).revision(), 0, "no state: ask since=0");
        let mut kept = Kept::default();
        let mut a = answer(5, false, &[("a", 'a'), ("b", 'b')], &[], &[("a", 'a'), ("b", 'b')]);
        kept.take(&mut a, 0);
        kept.save(dir.path()).unwrap();
        let again = Kept::load(dir.path());
        assert_eq!((again.revision(), again.digest()), (5, kept.digest()));
        assert_eq!(names(&again.tasks()), ["a", "b"]);
        // A file from before delta assignments: its tasks, revision 0.
        std::fs::write(dir.path().join(FILE), serde_json::to_vec(&kept.tasks()).unwrap()).unwrap();
        let old = Kept::load(dir.path());
        assert_eq!((old.revision(), old.tasks().len()), (0, 2));
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        assert_eq!(Kept::load(dir.path()).revision(), 0);
    }
}
