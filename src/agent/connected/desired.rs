//! The desired set as the server last described it, kept between polls
//! and across restarts (`assignments.json`), with each task's version hash
//! ([`crate::api::assignment_set`]). The poller applies each answer here:
//! a complete set replaces it, a delta changes only the tasks it names, and
//! the answer's digest must then match the set's, or the set is marked
//! unknown (revision 0) so the next poll asks for the complete one. Until
//! that arrives the robot keeps running what it ran: a mismatch never
//! reaches the reconciler.

use crate::api::agent_protocol::Assignments;
use crate::api::assignment_set;
use crate::api::Task;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The state file (under the data dir).
pub const FILE: &str = "assignments.json";

#[derive(Debug, Default)]
pub struct Kept {
    /// The revision the set is at; 0: unknown (ask for the complete set).
    revision: u64,
    /// Name → (version hash, task).
    tasks: BTreeMap<String, (String, Task)>,
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
}

impl std::fmt::Display for Update {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.delta {
            write!(
                f,
                "{} tasks (delta: {} added or changed, {} removed)",
                self.tasks.len(),
                self.changed.len(),
                self.removed
            )
        } else {
            write!(f, "{} tasks (complete set)", self.tasks.len())
        }
    }
}

#[derive(Serialize)]
struct Stored<'a> {
    revision: u64,
    versions: BTreeMap<&'a str, &'a str>,
    tasks: Vec<&'a Task>,
}

impl Kept {
    /// The revision to poll `since`.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn tasks(&self) -> Vec<Task> {
        self.tasks.values().map(|(_, t)| t.clone()).collect()
    }

    /// The digest of the set as kept.
    pub fn digest(&self) -> String {
        assignment_set::digest(self.tasks.iter().map(|(n, (v, _))| (n.as_str(), v.as_str())))
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
        let mut changed = Vec::new();
        let mut removed = 0;
        if new {
            if a.delta {
                for name in &a.removed {
                    removed += usize::from(self.tasks.remove(name).is_some());
                }
            } else {
                self.tasks.clear();
            }
            for (name, version, t) in keyed {
                changed.push(t.clone());
                self.tasks.insert(name, (version, t));
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
        let (revision, versions, tasks) = match value {
            // The complete set alone (agents before delta assignments).
            serde_json::Value::Array(_) => (0, serde_json::Value::Null, value),
            mut v => (
                v.get("revision").and_then(serde_json::Value::as_u64).unwrap_or(0),
                v.get_mut("versions").map(serde_json::Value::take).unwrap_or_default(),
                v.get_mut("tasks").map(serde_json::Value::take).unwrap_or_default(),
            ),
        };
        // Through the one typed decoder the agent has (api::decode).
        let Ok(tasks) = crate::api::decode::decode_typed::<Vec<Task>>(tasks).map(|d| d.object) else {
            return Kept::default();
        };
        let mut kept = Kept {
            revision,
            tasks: BTreeMap::new(),
        };
        for t in tasks {
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
            tasks: self.tasks.values().map(|(_, t)| t).collect(),
        };
        let bytes = serde_json::to_vec(&stored).map_err(std::io::Error::other)?;
        crate::atomic_file::write(&data_dir.join(FILE), &bytes, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::StringMap;

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
