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
//! sees each Task as the control plane stored it.
//!
//! On disk, one durable write per change: a complete set is written whole
//! (`assignments.json`, the snapshot: atomic rename); a delta is appended to
//! `assignments.log` as one line (what it added or changed with their
//! versions, the names it removed, the group parts it added or changed
//! with their versions and the groups it removed, the revision it applies
//! to and the one it makes). A line that removes or changes something is
//! fdatasync'd before the robot stops, replaces or forgets anything: the
//! flush is owed ([`append_log::Owed`], [`Kept::owed`]) and the supervisor
//! settles it before its first such step, so a rebooted robot, offline,
//! never runs again what was stopped or changed; the delta's new tasks
//! start first, without waiting for the disk. A delta that only adds tasks
//! and groups owes nothing (the next flushed line, or the kernel, takes it
//! along): a power loss that drops it leaves the set as if it had not come
//! yet, and the new tasks wait for the server after the reboot. A line
//! replayed at start is owed again (the agent before may have crashed
//! before it settled). Loading replays the log onto
//! the snapshot while each line applies to the revision the one before
//! made; the first line that does not (torn by a crash mid-append,
//! unreadable, or left from before the snapshot) ends the replay, and the
//! next save writes a new snapshot instead of appending after it. The log
//! is folded into a new snapshot once it is larger than the snapshot (or
//! 64 KiB): the log is removed first, so a crash in between leaves an older
//! snapshot, which the server brings up to date (a resumed set is always
//! verified against the server's digest, see `Poller`).
//!
//! The snapshot holds the tasks filled with their group's data, with the
//! names of those that travelled without it (`bare`, stripped again on
//! load so the next change to their group still reaches them): an older
//! agent (a self-update rolled back) reads it as it always did and runs
//! each task with its group's data. A log line holds its tasks as they
//! travelled (a bare one is the one without `jobName` whose group the set
//! holds, as in memory), so it needs no such names; only this agent reads
//! the log.

use crate::agent::append_log::{self, AppendLog};
use crate::api::agent_protocol::Assignments;
use crate::api::assignment_set::{self, GroupPart};
use crate::api::{StringMap, Task};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io;
use std::path::Path;

/// The snapshot (under the data dir).
pub const FILE: &str = "assignments.json";
/// The deltas since the snapshot, one JSON line each.
pub const LOG: &str = "assignments.log";
/// The log is folded into a new snapshot once larger than this and than
/// the snapshot: replaying it costs at most about as much as the snapshot.
const COMPACT_AFTER_BYTES: u64 = 64 * 1024;

#[derive(Debug, Default)]
pub struct Kept {
    /// The revision the set is at; 0: unknown (ask for the complete set).
    revision: u64,
    /// Name → (version hash, task as it travelled). Boxed: a Task is
    /// ≈ 2 KB inline, and a map node holds eleven.
    tasks: BTreeMap<String, (String, Box<Task>)>,
    /// Group form: `taskGroupName` → the group's part.
    groups: BTreeMap<String, GroupPart>,
    /// Group form: `taskGroupName` → version hash. (Map types the agent
    /// has already: each new one costs flash.)
    group_versions: StringMap,
    /// What the last answers changed and `save` has not written yet.
    unsaved: Unsaved,
    /// The log (its valid lines), appended to once written in this run.
    log: AppendLog,
    /// Bytes in the snapshot.
    snapshot_bytes: u64,
    /// The log's flush that acting on its last line needs (module doc).
    owed: append_log::Owed,
}

/// What `save` has to write.
#[derive(Debug, Default)]
enum Unsaved {
    #[default]
    Nothing,
    /// One delta: from `base`, these task names and group keys removed and
    /// these (re)written.
    Delta {
        base: u64,
        removed: Vec<String>,
        changed: Vec<String>,
        removed_groups: Vec<String>,
        changed_groups: Vec<String>,
        /// Every task and group it names is new here (module doc).
        adds_only: bool,
    },
    /// A complete set, several deltas, or a log that cannot be appended
    /// to: write a new snapshot.
    Snapshot,
}

/// One line of the log: one delta, its tasks as they travelled.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Record<'a> {
    base: u64,
    revision: u64,
    removed: &'a [String],
    versions: BTreeMap<&'a str, &'a str>,
    tasks: Vec<&'a Task>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    removed_groups: &'a [String],
    /// Owned: the answer's map types (no new ones in the agent).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    groups: BTreeMap<String, GroupPart>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
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
    /// The complete set, when the receiver must take it whole (a complete
    /// answer, a group changed, or it replaces an update the receiver has
    /// not taken: [`Update::make_complete`]); else None: the receiver
    /// applies `changed` and `removed` to the set it has (the work of an
    /// answer grows with what it changed, not with the set).
    pub tasks: Option<Vec<Task>>,
    /// The tasks the answer carried (their status is the server's latest).
    pub changed: Vec<Task>,
    /// It came as a delta (else as the complete set), removing these tasks.
    pub delta: bool,
    pub removed: Vec<String>,
    /// Tasks in the set.
    pub total: usize,
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
                self.total,
                self.changed.len(),
                self.removed.len()
            )?;
            if self.groups_changed > 0 {
                write!(f, "; {} task group(s) changed", self.groups_changed)?;
            }
            write!(f, ")")
        } else {
            write!(f, "{} tasks (complete set)", self.total)
        }
    }
}

impl Update {
    /// Carry the complete set from `kept`: this update replaces one not
    /// taken yet, whose changes would be lost otherwise.
    pub fn make_complete(&mut self, kept: &Kept) {
        if self.tasks.is_none() {
            self.tasks = Some(kept.tasks());
        }
    }
}

/// The snapshot: the tasks filled (module doc).
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

    /// The flush the supervisor settles before it stops, replaces or
    /// forgets anything (module doc); one debt, shared by every clone.
    pub fn owed(&self) -> append_log::Owed {
        self.owed.clone()
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
        let groups_removed = a.removed_groups.len();
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        if new {
            self.unsaved = match self.unsaved {
                Unsaved::Nothing if a.delta => Unsaved::Delta {
                    base: self.revision,
                    removed: a.removed.clone(),
                    changed: keyed.iter().map(|(n, _, _)| n.clone()).collect(),
                    removed_groups: a.removed_groups.clone(),
                    changed_groups: groups.keys().cloned().collect(),
                    adds_only: a.removed.is_empty()
                        && a.removed_groups.is_empty()
                        && keyed.iter().all(|(n, _, _)| !self.tasks.contains_key(n))
                        && groups.keys().all(|k| !self.groups.contains_key(k)),
                },
                _ => Unsaved::Snapshot,
            };
            if a.delta {
                for name in &a.removed {
                    if self.tasks.remove(name).is_some() {
                        removed.push(name.clone());
                    }
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
                self.tasks.insert(name.clone(), (version, Box::new(t)));
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
            // A group's fields reach its tasks as they are handed on: a
            // changed group changes tasks the answer did not carry.
            let whole = !a.delta || groups_changed > 0 || groups_removed > 0;
            Taken::Changed(Update {
                tasks: whole.then(|| self.tasks()),
                changed,
                delta: a.delta,
                removed,
                total: self.tasks.len(),
                groups_changed,
                group_names: self.group_names(),
            })
        } else {
            Taken::Same
        }
    }

    /// The kept set from the data dir (the snapshot, then the log); an
    /// empty one at revision 0 when there is none, it cannot be read, or it
    /// lacks version hashes (then its tasks still run until the server
    /// answers).
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
            serde_json::Value::Array(_) => (0, null.clone(), value, null.clone(), null.clone(), null),
            mut v => (
                v.get("revision").and_then(serde_json::Value::as_u64).unwrap_or(0),
                take(&mut v, "versions"),
                take(&mut v, "tasks"),
                take(&mut v, "groups"),
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
        let Ok(mut tasks) = crate::api::decode::decode_typed::<Vec<Task>>(tasks).map(|d| d.object) else {
            return Kept::default();
        };
        let Some(groups) = decode_groups(groups) else {
            return Kept::default();
        };
        // Kept filled; held as it travelled.
        for t in tasks.iter_mut().filter(|t| bare.contains(&t.metadata.name.as_str())) {
            GroupPart::strip(&mut t.spec);
        }
        let mut kept = Kept {
            revision,
            snapshot_bytes: std::fs::metadata(data_dir.join(FILE)).map_or(0, |m| m.len()),
            ..Kept::default()
        };
        let groups_versioned = kept.insert_groups(groups, &group_versions);
        if !kept.insert_all(tasks, &versions) || !groups_versioned {
            kept.revision = 0;
        }
        kept.replay(data_dir);
        kept
    }

    /// Add `tasks` with their `versions`; false if one has no valid version.
    fn insert_all(&mut self, tasks: Vec<Task>, versions: &serde_json::Value) -> bool {
        let mut all = true;
        for t in tasks {
            let version = hash_of(versions, &t.metadata.name);
            all &= version.is_some();
            let version = version.unwrap_or_default().to_string();
            self.tasks.insert(t.metadata.name.clone(), (version, Box::new(t)));
        }
        all
    }

    /// Add group parts with their `versions`; false if one has no valid
    /// version.
    fn insert_groups(&mut self, groups: BTreeMap<String, GroupPart>, versions: &serde_json::Value) -> bool {
        let mut all = true;
        for (key, part) in groups {
            let version = hash_of(versions, &key);
            all &= version.is_some();
            let version = version.unwrap_or_default().to_string();
            self.group_versions.insert(key.clone(), version);
            self.groups.insert(key, part);
        }
        all
    }

    /// Apply the log's lines that follow on from the snapshot (module doc).
    fn replay(&mut self, data_dir: &Path) {
        let Ok(bytes) = std::fs::read(data_dir.join(LOG)) else {
            return;
        };
        let mut used = 0;
        for line in append_log::complete_lines(&bytes) {
            if self.revision == 0 || !self.apply_line(line) {
                break;
            }
            used += line.len();
        }
        self.log = AppendLog::with_bytes(used as u64);
        if used > 0 {
            // Acted on now, maybe never flushed by the agent before.
            if let Ok(file) = std::fs::File::open(data_dir.join(LOG)) {
                self.owed.owe(file);
            }
        }
        if used < bytes.len() {
            // Appending after a line that ends the replay would be lost.
            self.unsaved = Unsaved::Snapshot;
        }
    }

    /// One log line, if it applies to the revision the set is at: in the
    /// order `take` applied it (removals, then groups, then tasks).
    fn apply_line(&mut self, line: &[u8]) -> bool {
        let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(line) else {
            return false;
        };
        let field = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_u64);
        let (Some(base), Some(revision)) = (field(&v, "base"), field(&v, "revision")) else {
            return false;
        };
        let names = |v: &serde_json::Value, k: &str| match v.get(k) {
            Some(r) => serde_json::from_value::<Vec<String>>(r.clone()).ok(),
            None => Some(Vec::new()),
        };
        // `removed` is always written; `removedGroups` only when not empty.
        let removed = v.get("removed").and_then(|_| names(&v, "removed"));
        let removed_groups = names(&v, "removedGroups");
        let tasks = v.get_mut("tasks").map(serde_json::Value::take).unwrap_or_default();
        let tasks = crate::api::decode::decode_typed::<Vec<Task>>(tasks).map(|d| d.object);
        let groups = decode_groups(v.get_mut("groups").map(serde_json::Value::take).unwrap_or_default());
        let (Some(removed), Some(removed_groups), Ok(tasks), Some(groups)) = (removed, removed_groups, tasks, groups)
        else {
            return false;
        };
        let versions = v.get("versions").cloned().unwrap_or_default();
        let group_versions = v.get("groupVersions").cloned().unwrap_or_default();
        let versioned = tasks.iter().all(|t| hash_of(&versions, &t.metadata.name).is_some())
            && groups.keys().all(|k| hash_of(&group_versions, k).is_some());
        if base != self.revision || revision == 0 || !versioned {
            return false;
        }
        for name in &removed {
            self.tasks.remove(name);
        }
        for key in &removed_groups {
            self.groups.remove(key);
            self.group_versions.remove(key);
        }
        self.insert_groups(groups, &group_versions);
        self.insert_all(tasks, &versions);
        self.revision = revision;
        true
    }

    /// Write what changed since the last save: one line appended to the
    /// log for a delta, else a new snapshot (module doc). After a failure
    /// the next save writes a snapshot.
    pub fn save(&mut self, data_dir: &Path) -> io::Result<()> {
        let result = match std::mem::take(&mut self.unsaved) {
            Unsaved::Nothing => return Ok(()),
            Unsaved::Delta {
                base,
                removed,
                changed,
                removed_groups,
                changed_groups,
                adds_only,
            } if self.log.bytes() <= self.snapshot_bytes.max(COMPACT_AFTER_BYTES) => {
                let changed: Vec<&(String, Box<Task>)> = changed.iter().filter_map(|n| self.tasks.get(n)).collect();
                let record = Record {
                    base,
                    revision: self.revision,
                    removed: &removed,
                    versions: changed
                        .iter()
                        .map(|(v, t)| (t.metadata.name.as_str(), v.as_str()))
                        .collect(),
                    tasks: changed.iter().map(|(_, t)| &**t).collect(),
                    removed_groups: &removed_groups,
                    groups: changed_groups
                        .iter()
                        .filter_map(|k| Some((k.clone(), self.groups.get(k)?.clone())))
                        .collect(),
                    group_versions: changed_groups
                        .iter()
                        .filter_map(|k| Some((k.clone(), self.group_versions.get(k)?.clone())))
                        .collect(),
                };
                serde_json::to_vec(&record)
                    .map_err(io::Error::other)
                    .and_then(|line| match adds_only {
                        true => self.log.append_unflushed(&data_dir.join(LOG), line),
                        false => self.log.append_owed(&data_dir.join(LOG), line, &self.owed),
                    })
            }
            _ => self.write_snapshot(data_dir),
        };
        if result.is_err() {
            self.unsaved = Unsaved::Snapshot;
        }
        result
    }

    /// The whole set as the new snapshot; the log goes first (module doc).
    fn write_snapshot(&mut self, data_dir: &Path) -> io::Result<()> {
        self.log.remove(&data_dir.join(LOG))?;
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
        let bytes = serde_json::to_vec(&stored).map_err(io::Error::other)?;
        // Its directory fsync also makes the log's removal durable.
        crate::atomic_file::write(&data_dir.join(FILE), &bytes, 0o600)?;
        self.snapshot_bytes = bytes.len() as u64;
        // Everything the log held is in the durable snapshot now.
        self.owed.forgive();
        Ok(())
    }

    /// Fold the log into a new snapshot now (tests read the set from the
    /// snapshot alone).
    pub fn compact(data_dir: &Path) -> io::Result<()> {
        Kept::load(data_dir).write_snapshot(data_dir)
    }
}

/// The version hash `versions` (a JSON object) holds for `name`, if valid.
fn hash_of<'a>(versions: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    versions
        .get(name)
        .and_then(serde_json::Value::as_str)
        .filter(|v| assignment_set::is_hash(v))
}

/// Group parts as stored (absent: none), through the agent's one typed
/// decoder; None if they cannot be read.
fn decode_groups(groups: serde_json::Value) -> Option<BTreeMap<String, GroupPart>> {
    if groups.is_null() {
        return Some(BTreeMap::new());
    }
    crate::api::decode::decode_typed(groups).ok().map(|d| d.object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

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
        assert_eq!(
            (names(u.tasks.as_deref().unwrap()), kept.revision()),
            (vec!["a", "b"], 5)
        );
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
        assert!(u.tasks.is_none(), "a delta hands on only what changed");
        assert_eq!((u.total, names(&kept.tasks())), (3, vec!["a", "b", "c"]));
        assert_eq!(names(&u.changed), ["b", "c"], "only what the answer carried");
        // Remove a.
        let mut a = answer(9, true, &[], &["a"], &[("b", 'c'), ("c", 'c')]);
        let Taken::Changed(u) = kept.take(&mut a, 8) else {
            panic!("removal not taken")
        };
        assert_eq!((names(&kept.tasks()), u.changed.len()), (vec!["b", "c"], 0));
        assert_eq!(
            (u.tasks.is_none(), u.removed.as_slice()),
            (true, &["a".to_string()][..])
        );
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
        assert_eq!((names(u.tasks.as_deref().unwrap()), kept.revision()), (vec!["a"], 7));
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
        assert_eq!(names(u.tasks.as_deref().unwrap()), ["a", "b"]);
        // Without a digest (an answer to a poll without delta=1), an answer
        // at `since` has nothing new.
        let mut a = answer(5, false, &[], &[], &[]);
        a.digest = None;
        assert!(matches!(kept.take(&mut a, 5), Taken::Same));
        assert_eq!(kept.tasks().len(), 2);
    }

    /// A group's part whose one init task is `init`.
    fn part(init: &str) -> GroupPart {
        GroupPart {
            group_name: Some("g".into()),
            job_name: Some("j".into()),
            init_tasks: vec![crate::api::TaskSpec {
                name: init.into(),
                ..Default::default()
            }],
            ..GroupPart::default()
        }
    }

    /// `a` in the group form: with these group parts (key, init task,
    /// version), its tasks in group `j-g` without their group's fields, and
    /// the digest of `all` tasks and `all_groups`.
    fn grouped(
        mut a: Assignments,
        groups: &[(&str, &str, char)],
        all: &[(&str, char)],
        all_groups: &[(&str, char)],
    ) -> Assignments {
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
    }

    #[test]
    fn the_group_form_keeps_each_groups_data_once_and_fills_its_tasks() {
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
        let tasks = u.tasks.as_deref().expect("the complete set");
        assert!(
            tasks.len() == 2
                && tasks
                    .iter()
                    .all(|t| t.spec.init_tasks[0].name == "setup" && t.spec.job_name.as_deref() == Some("j"))
        );
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
        let tasks = u.tasks.as_deref().expect("a group change hands on the complete set");
        assert!(tasks.len() == 2 && tasks.iter().all(|t| t.spec.init_tasks[0].name == "setup2"));
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
        let tasks = u.tasks.as_deref().expect("a group change hands on the complete set");
        assert!(tasks.len() == 2 && tasks.iter().all(|t| t.spec.init_tasks[0].name == "setup3"));
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

    fn lines(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join(LOG)).map_or(0, |t| t.lines().count())
    }

    fn snapshot_inode(dir: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dir.join(FILE)).unwrap().ino()
    }

    #[test]
    fn a_delta_is_one_appended_line_and_a_restart_replays_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut kept = Kept::default();
        let all = [("a", 'a'), ("b", 'b')];
        kept.take(&mut answer(5, false, &all, &[], &all), 0);
        kept.save(dir.path()).unwrap();
        let snapshot = snapshot_inode(dir.path());
        assert_eq!(lines(dir.path()), 0, "a complete set is a snapshot");
        // Change b, add c; then remove a.
        let all = [("a", 'a'), ("b", 'c'), ("c", 'c')];
        kept.take(&mut answer(6, true, &[("b", 'c'), ("c", 'c')], &[], &all), 5);
        kept.save(dir.path()).unwrap();
        let all = [("b", 'c'), ("c", 'c')];
        kept.take(&mut answer(7, true, &[], &["a"], &all), 6);
        kept.save(dir.path()).unwrap();
        assert_eq!(lines(dir.path()), 2, "one line per delta");
        assert_eq!(snapshot_inode(dir.path()), snapshot, "the snapshot is not rewritten");
        let again = Kept::load(dir.path());
        assert_eq!((again.revision(), again.digest()), (7, kept.digest()));
        assert_eq!(names(&again.tasks()), ["b", "c"]);
        assert_eq!(again.tasks["b"].0, version('c'));
        // Nothing new: nothing written.
        let mut again = again;
        again.take(&mut answer(7, true, &[], &[], &all), 7);
        again.save(dir.path()).unwrap();
        assert_eq!(lines(dir.path()), 2);
    }

    #[test]
    fn a_delta_that_stops_owes_a_flush_and_a_power_loss_never_revives_a_stop() {
        let dir = tempfile::tempdir().unwrap();
        let mut kept = Kept::default();
        kept.take(&mut answer(5, false, &[("a", 'a')], &[], &[("a", 'a')]), 0);
        kept.save(dir.path()).unwrap();
        // (answer, flush owed?)
        let steps: [(Assignments, bool); 5] = [
            (answer(6, true, &[("b", 'b')], &[], &[("a", 'a'), ("b", 'b')]), false),
            (answer(7, true, &[("b", 'c')], &[], &[("a", 'a'), ("b", 'c')]), true),
            (answer(8, true, &[], &["a"], &[("b", 'c')]), true),
            (answer(9, true, &[("a", 'a')], &[], &[("a", 'a'), ("b", 'c')]), false),
            (
                answer(10, true, &[("c", 'c')], &[], &[("a", 'a'), ("b", 'c'), ("c", 'c')]),
                false,
            ),
        ];
        let owned = |k: &Kept| {
            (
                k.revision(),
                names(&k.tasks()).iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            )
        };
        let owed = kept.owed();
        let mut at_last_flush = owned(&kept);
        let mut durable_bytes = 0;
        // A power loss now: the log as its last flush left it.
        let power_loss = |durable_bytes: usize| {
            let on_disk = std::fs::read(dir.path().join(LOG)).unwrap();
            let copy = tempfile::tempdir().unwrap();
            std::fs::copy(dir.path().join(FILE), copy.path().join(FILE)).unwrap();
            std::fs::write(copy.path().join(LOG), &on_disk[..durable_bytes]).unwrap();
            owned(&Kept::load(copy.path()))
        };
        for (i, (mut a, owes)) in steps.into_iter().enumerate() {
            let since = kept.revision();
            assert!(matches!(kept.take(&mut a, since), Taken::Changed(_)), "step {i}");
            kept.save(dir.path()).unwrap();
            assert_eq!(kept.log.flushes, 0, "step {i}: saving never waits for the disk");
            assert_eq!(owed.is_owed(), owes, "step {i}");
            // Before the supervisor settles (new tasks may have started):
            // a power loss leaves the robot where the last flush did.
            assert_eq!(power_loss(durable_bytes), at_last_flush, "step {i}");
            // It settles before it stops, replaces or forgets anything.
            let flushes = owed.flushes.load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(owed.settle().unwrap(), owes, "step {i}");
            assert_eq!(
                owed.flushes.load(std::sync::atomic::Ordering::Relaxed) - flushes,
                u64::from(owes)
            );
            if owes {
                durable_bytes = std::fs::metadata(dir.path().join(LOG)).unwrap().len() as usize;
                at_last_flush = owned(&kept);
            }
            // The robot comes back at the last stop or change, never before it.
            assert_eq!(power_loss(durable_bytes), at_last_flush, "step {i}");
        }
        assert_eq!(at_last_flush, (8, vec!["b".to_string()]));
        // A crash of the agent alone loses nothing.
        assert_eq!(owned(&Kept::load(dir.path())), owned(&kept));
    }

    #[test]
    fn a_torn_or_stale_log_line_ends_the_replay_and_the_next_save_is_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut kept = Kept::default();
        kept.take(&mut answer(5, false, &[("a", 'a')], &[], &[("a", 'a')]), 0);
        kept.save(dir.path()).unwrap();
        let all = [("a", 'a'), ("b", 'b')];
        kept.take(&mut answer(6, true, &[("b", 'b')], &[], &all), 5);
        kept.save(dir.path()).unwrap();
        // A crash in the middle of the next append.
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(LOG))
            .unwrap();
        std::io::Write::write_all(&mut log, br#"{"base":6,"revision":7,"removed":["a"],"ver"#).unwrap();
        let mut again = Kept::load(dir.path());
        assert_eq!((again.revision(), names(&again.tasks())), (6, vec!["a", "b"]));
        // Appending after the torn line would be lost on the next load.
        let all = [("a", 'a'), ("b", 'b'), ("c", 'c')];
        again.take(&mut answer(8, true, &[("c", 'c')], &[], &all), 6);
        again.save(dir.path()).unwrap();
        assert!(!dir.path().join(LOG).exists(), "folded into a snapshot");
        let loaded = Kept::load(dir.path());
        assert_eq!((loaded.revision(), loaded.digest()), (8, again.digest()));

        // A line that does not follow on from the snapshot (left from before
        // it) is not applied.
        let stale = br#"{"base":3,"revision":4,"removed":["a","b","c"],"versions":{},"tasks":[]}"#;
        std::fs::write(dir.path().join(LOG), [&stale[..], b"\n"].concat()).unwrap();
        let loaded = Kept::load(dir.path());
        assert_eq!((loaded.revision(), loaded.tasks().len()), (8, 3));
        // Nor one whose task lacks a version.
        let unversioned = format!(
            r#"{{"base":8,"revision":9,"removed":[],"versions":{{}},"tasks":[{}]}}"#,
            serde_json::to_string(&task("d")).unwrap()
        );
        std::fs::write(dir.path().join(LOG), unversioned + "\n").unwrap();
        let loaded = Kept::load(dir.path());
        assert_eq!((loaded.revision(), loaded.tasks().len()), (8, 3));
    }

    #[test]
    fn the_log_is_folded_into_the_snapshot_once_it_outgrows_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut kept = Kept::default();
        kept.take(&mut answer(1, false, &[], &[], &[]), 0);
        kept.save(dir.path()).unwrap();
        // Each delta replaces one large task (a 4 KiB annotation).
        let mut snapshots = 0;
        let mut inode = snapshot_inode(dir.path());
        for r in 2..60u64 {
            let mut a = answer(r, true, &[("big", 'a')], &[], &[("big", 'a')]);
            let big = &mut a.tasks[0];
            big.metadata
                .annotations
                .insert("n".into(), format!("{r:04}").repeat(1024));
            // The version names the content (any hash does here).
            let v = version(char::from(b'a' + (r % 6) as u8));
            a.versions.insert("big".into(), v.clone());
            a.digest = Some(assignment_set::digest([("big", v.as_str())]));
            assert!(matches!(kept.take(&mut a, r - 1), Taken::Changed(_)));
            kept.save(dir.path()).unwrap();
            if snapshot_inode(dir.path()) != inode {
                snapshots += 1;
                inode = snapshot_inode(dir.path());
            }
            let log = std::fs::metadata(dir.path().join(LOG)).map_or(0, |m| m.len());
            assert!(log <= COMPACT_AFTER_BYTES + 8 * 1024, "the log grew to {log} bytes");
        }
        assert!((1..=5).contains(&snapshots), "{snapshots} snapshots in 58 deltas");
        let loaded = Kept::load(dir.path());
        assert_eq!((loaded.revision(), loaded.digest()), (59, kept.digest()));
        assert!(loaded.tasks["big"].1.metadata.annotations["n"].starts_with("0059"));
        // Tests fold it on demand.
        Kept::compact(dir.path()).unwrap();
        assert!(!dir.path().join(LOG).exists());
        assert_eq!(Kept::load(dir.path()).digest(), kept.digest());
    }

    fn last_line(dir: &Path) -> Value {
        let log = std::fs::read_to_string(dir.join(LOG)).unwrap();
        serde_json::from_str(log.lines().last().unwrap()).unwrap()
    }

    /// `loaded` is `kept`: revision, tasks as they travelled, groups and
    /// their versions.
    fn assert_same(loaded: &Kept, kept: &Kept) {
        assert_eq!((loaded.revision(), loaded.digest()), (kept.revision(), kept.digest()));
        assert_eq!(loaded.tasks, kept.tasks, "the tasks as they travelled");
        assert_eq!(
            (&loaded.groups, &loaded.group_versions),
            (&kept.groups, &kept.group_versions)
        );
        assert_eq!(loaded.tasks(), kept.tasks(), "the tasks filled");
    }

    #[test]
    fn a_delta_that_changes_a_group_is_one_appended_line_and_a_restart_replays_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut kept = Kept::default();
        let tasks = [("a", 'a'), ("b", 'b')];
        let mut a = grouped(
            answer(5, false, &tasks, &[], &[]),
            &[("j-g", "setup", 'c')],
            &tasks,
            &[("j-g", 'c')],
        );
        kept.take(&mut a, 0);
        kept.save(dir.path()).unwrap();
        let snapshot = snapshot_inode(dir.path());
        // The group's part changes: it alone travels, one line.
        let mut a = grouped(
            answer(6, true, &[], &[], &[]),
            &[("j-g", "setup2", 'd')],
            &tasks,
            &[("j-g", 'd')],
        );
        let Taken::Changed(u) = kept.take(&mut a, 5) else {
            panic!("group change not taken")
        };
        assert_eq!((u.changed.len(), u.groups_changed), (0, 1));
        kept.save(dir.path()).unwrap();
        assert_eq!((lines(dir.path()), snapshot_inode(dir.path())), (1, snapshot));
        let line = last_line(dir.path());
        assert_eq!(line["groups"]["j-g"]["initTasks"][0]["name"], "setup2", "{line}");
        assert_eq!(
            (
                line["groupVersions"]["j-g"].as_str(),
                line["tasks"].as_array().map(Vec::len)
            ),
            (Some(version('d').as_str()), Some(0))
        );
        let again = Kept::load(dir.path());
        assert_same(&again, &kept);
        assert!(again.tasks().iter().all(|t| t.spec.init_tasks[0].name == "setup2"));
        // A task in a new group arrives with its group; then the first group
        // goes with its tasks: a line each, the tasks as they travelled.
        let all = [("a", 'a'), ("b", 'b'), ("c", 'e')];
        let mut a = grouped(
            answer(7, true, &[("c", 'e')], &[], &all),
            &[("k-g", "init-k", 'f')],
            &all,
            &[("j-g", 'd'), ("k-g", 'f')],
        );
        a.tasks[0].spec.task_group_name = Some("k-g".into());
        assert!(matches!(kept.take(&mut a, 6), Taken::Changed(_)));
        kept.save(dir.path()).unwrap();
        let line = last_line(dir.path());
        let spec = &line["tasks"][0]["spec"];
        assert_eq!(
            (&spec["taskGroupName"], &spec["jobName"], &spec["initTasks"]),
            (&json!("k-g"), &Value::Null, &Value::Null),
            "as it travelled: {line}"
        );
        assert_eq!(line["groups"]["k-g"]["initTasks"][0]["name"], "init-k", "{line}");
        let mut a = grouped(
            answer(8, true, &[], &["a", "b"], &[]),
            &[],
            &[("c", 'e')],
            &[("k-g", 'f')],
        );
        a.removed_groups = vec!["j-g".into()];
        assert!(matches!(kept.take(&mut a, 7), Taken::Changed(_)));
        kept.save(dir.path()).unwrap();
        assert_eq!((lines(dir.path()), snapshot_inode(dir.path())), (3, snapshot));
        let again = Kept::load(dir.path());
        assert_same(&again, &kept);
        assert_eq!(names(&again.tasks()), ["c"]);
        assert_eq!(again.tasks()[0].spec.init_tasks[0].name, "init-k");
        // Folded into the snapshot (the older agent's form), still the same.
        Kept::compact(dir.path()).unwrap();
        assert!(!dir.path().join(LOG).exists());
        assert_same(&Kept::load(dir.path()), &kept);
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
