//! The canonical form of a robot's desired set, shared by the server that
//! sends delta assignments and the agent that applies them. No I/O here.
//!
//! Each task has a *version hash*, computed by the server: SHA-256 over the
//! JSON array `[name, uid, generation, labels, annotations, spec]` of the stored
//! Task (object keys sorted, as serde_json writes a map; a missing field is
//! null, missing annotations `{}`), lowercase hex. Status, the server's own
//! bookkeeping annotations (`robot.k8s4r.io/...`) and other metadata are
//! left out: a status report must not make a task look changed; a Task
//! deleted and created again (a new uid, its status reset) is a new
//! version. The *digest* of a set is SHA-256 over one line
//! `<name> <version hash>\n` per task, in byte order of the names,
//! lowercase hex; the empty set's digest is SHA-256 of nothing. An agent
//! holding the same names at the same versions computes the same digest,
//! which is how it proves that the deltas it applied left it where the
//! server is.
//!
//! **The group form** (polls with `groups=1` beside `delta=1`): a
//! TaskGroup's shared data — what the control plane copies into each of
//! its Tasks ([`GROUP_FIELDS`] of the spec: `jobName`, `jobType`,
//! `initTasks`, the group's merged `network`, `constraints`,
//! `disconnect`) — travels once per group, as a [`GroupPart`] keyed by
//! the group's `taskGroupName` (`{job}-{group}`) with the group's name in
//! its Job (`groupName`, the Tasks' `robot.k8s4r.io/taskgroup` label). A
//! task whose group fields are the group part's travels without them and
//! refers to its group by `spec.taskGroupName` (the robot fills them in
//! again: [`GroupPart::fill`]); a task whose group fields differ (replicas
//! of one group mid-rollout) travels with all of them, `jobName` included,
//! and keeps its own. The group part is what most of the group's tasks on
//! the robot carry (on a tie, the part the robot holds, else the first
//! task's in byte order of the names): the control plane writes a group's
//! Tasks one by one, so an answer in between carries the tasks of the
//! smaller side with their own fields, and the part changes once. Then a task's version hash is
//! over the task as it travels (its spec without the group fields when
//! they were left out; `generation` left out, as it only follows the
//! spec), a group's version hash is SHA-256 over the JSON of its part
//! (keys sorted), and the digest's lines are the tasks' `<name> <version
//! hash>\n`, then one `group <key> <version hash>\n` per group, in byte
//! order of the keys (a task name has no space, so no line of one kind
//! reads as the other). A change to a group's shared data (a new init
//! task, a network change) changes every Task object of the group on the
//! server, but reaches the robot as one group part, its tasks unchanged.

use super::types::{Constraint, DisconnectPolicy, JobType, NetworkConfig, TaskSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Hex digits of a version hash or a digest.
pub const HASH_HEX_LEN: usize = 64;

/// The digest of a set given as `(name, version hash)` pairs in name order
/// (a `BTreeMap`'s iteration order). Pairs out of order give a different
/// digest, never a wrong match.
pub fn digest<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut h = Sha256::new();
    for (name, version) in pairs {
        h.update(name.as_bytes());
        h.update(b" ");
        h.update(version.as_bytes());
        h.update(b"\n");
    }
    super::hex::encode(&h.finalize())
}

/// The digest of a set in the group form: the task lines of [`digest`],
/// then `group <key> <version hash>` per group, both in name order.
pub fn digest_with_groups<'a>(
    tasks: impl IntoIterator<Item = (&'a str, &'a str)>,
    groups: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut h = Sha256::new();
    for (name, version) in tasks {
        h.update(name.as_bytes());
        h.update(b" ");
        h.update(version.as_bytes());
        h.update(b"\n");
    }
    for (key, version) in groups {
        h.update(b"group ");
        h.update(key.as_bytes());
        h.update(b" ");
        h.update(version.as_bytes());
        h.update(b"\n");
    }
    super::hex::encode(&h.finalize())
}

/// The Task spec fields (camelCase, as on the wire) that hold a group's
/// shared data, copied by the control plane into each of its Tasks
/// ([`crate::api::job_expansion::place_task`]).
pub const GROUP_FIELDS: [&str; 6] = [
    "jobName",
    "jobType",
    "initTasks",
    "network",
    "constraints",
    "disconnect",
];

/// A TaskGroup's shared data, sent once per group in the group form.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupPart {
    /// The group's name in its Job (`K8S4R_TASKGROUP`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_type: Option<JobType>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_tasks: Vec<TaskSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnect: Option<DisconnectPolicy>,
}

impl GroupPart {
    /// Give `spec` its group's fields back, unless it travelled with its
    /// own (it has a `jobName`): the spec as the control plane stored it.
    pub fn fill(&self, spec: &mut TaskSpec) {
        if spec.job_name.is_some() {
            return;
        }
        spec.job_name.clone_from(&self.job_name);
        spec.job_type = self.job_type;
        spec.init_tasks.clone_from(&self.init_tasks);
        spec.network.clone_from(&self.network);
        spec.constraints.clone_from(&self.constraints);
        spec.disconnect.clone_from(&self.disconnect);
    }

    /// Undo [`GroupPart::fill`]: the spec as it travelled without its
    /// group's fields.
    pub fn strip(spec: &mut TaskSpec) {
        spec.job_name = None;
        spec.job_type = None;
        spec.init_tasks = Vec::new();
        spec.network = None;
        spec.constraints = Vec::new();
        spec.disconnect = None;
    }
}

/// True if `text` looks like a version hash or digest (64 lowercase hex
/// digits): what an agent accepts from an answer or its own state file.
pub fn is_hash(text: &str) -> bool {
    text.len() == HASH_HEX_LEN && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_sha256_of_the_documented_lines() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let want = super::super::hex::encode(&Sha256::digest(format!("one {a}\ntwo {b}\n").as_bytes()));
        assert_eq!(digest([("one", a.as_str()), ("two", b.as_str())]), want);
        assert_eq!(
            digest(std::iter::empty()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_ne!(
            digest([("one", a.as_str())]),
            digest([("one", b.as_str())]),
            "another version of the same name is another set"
        );
        assert!(is_hash(&a) && !is_hash("A".repeat(64).as_str()) && !is_hash("ab"));
    }

    #[test]
    fn the_group_forms_digest_adds_one_line_per_group() {
        let a = "a".repeat(64);
        let g = "c".repeat(64);
        let want = super::super::hex::encode(&Sha256::digest(format!("one {a}\ngroup j-g {g}\n").as_bytes()));
        assert_eq!(digest_with_groups([("one", a.as_str())], [("j-g", g.as_str())]), want);
        assert_eq!(
            digest_with_groups([("one", a.as_str())], []),
            digest([("one", a.as_str())]),
            "no groups: the task form's digest"
        );
        assert_ne!(
            digest_with_groups([("one", a.as_str())], [("j-g", a.as_str())]),
            digest_with_groups([("one", a.as_str())], [("j-g", g.as_str())]),
            "another version of a group is another set"
        );
    }

    #[test]
    fn a_group_part_fills_only_tasks_that_travelled_without_their_own() {
        let part = GroupPart {
            group_name: Some("g".into()),
            job_name: Some("j".into()),
            job_type: Some(JobType::Batch),
            init_tasks: vec![TaskSpec {
                name: "setup".into(),
                ..TaskSpec::default()
            }],
            ..GroupPart::default()
        };
        let mut bare = TaskSpec {
            name: "t".into(),
            task_group_name: Some("j-g".into()),
            ..TaskSpec::default()
        };
        part.fill(&mut bare);
        assert_eq!(
            (bare.job_name.as_deref(), bare.job_type, bare.init_tasks.len()),
            (Some("j"), Some(JobType::Batch), 1)
        );
        let mut own = TaskSpec {
            name: "t".into(),
            job_name: Some("j".into()),
            ..TaskSpec::default()
        };
        part.fill(&mut own);
        assert!(
            own.init_tasks.is_empty() && own.job_type.is_none(),
            "its own fields stay"
        );
        let mut again = bare.clone();
        GroupPart::strip(&mut again);
        part.fill(&mut again);
        assert_eq!(again, bare, "strip undoes fill");
    }
}
