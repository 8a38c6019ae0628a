//! The agent API (`/agent/v1`, plain HTTP + JSON): request and response
//! bodies shared by the server and the agent. No I/O here.
//!
//! Every request and answer is signed, and bodies under `robots/` are
//! sealed: the wire format is [`crate::api::robot_channel`].
//!
//! - `POST /agent/v1/register` — [`RegisterRequest`] → [`RegisterResponse`]:
//!   proof of a join token (from `k8s4r token create`) binds the name to the
//!   robot's keys.
//! - `GET /agent/v1/robots/{name}/assignments?since=REV&wait=30s[&delta=1[&verify=1]]`
//!   → [`Assignments`]: the desired set of Tasks for this robot. Answers at
//!   once when the set changed after `since`, else when it changes or
//!   `wait` runs out. Each poll is the robot's heartbeat. Without `delta=1`
//!   an answer with changes holds the complete set; with it, only what
//!   changed since `since` when the server still knows what it sent then
//!   (see [`Assignments::delta`]), plus the digest of the complete set
//!   ([`crate::api::assignment_set`]). `verify=1` asks for the digest even
//!   when nothing changed (an agent resuming from its state file).
//! - `POST /agent/v1/robots/{name}/status` with a [`StatusReport`]
//!   → [`StatusReply`]. Per-task sequence numbers make re-sending a batch
//!   harmless; device info rides along.
//! - `POST /agent/v1/jointokens` → [`JoinToken`], `GET` → [`JoinTokenList`],
//!   `DELETE /agent/v1/jointokens/{id}` revokes one (operator tool);
//!   `DELETE /agent/v1/robotkeys/{robot}` unbinds a robot's keys (`k8s4r
//!   robot reset`), `POST /agent/v1/serverkeys/rotate` rotates the server's
//!   key ([`RotateRequest`] → [`ServerKeyList`]).
//!
//! Errors are Kubernetes `Status` objects, signed (401 unknown robot, bad
//! signature, stale time, replayed counter; 409 a name bound to other keys).

use super::agent_release::{AgentUpdate, UpdateResult};
use super::assignment_set::GroupPart;
use super::types::{StringMap, Task, TaskStatus};
use serde::{Deserialize, Serialize};

pub const PREFIX: &str = "/agent/v1";

/// `POST /agent/v1/register` (a signed request by the robot's new key; see
/// [`crate::api::robot_channel`]). The join secret itself is never sent:
/// `proof` shows the robot knows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    /// The id part of the join token (`K8R1<pin>::<id>.<secret>`).
    pub token_id: String,
    /// The robot's name (a DNS-1123 subdomain), unique in the fleet.
    pub name: String,
    /// Namespace of the Robot object; default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels the robot reports (spec.labels; operator-only keys dropped).
    #[serde(default, skip_serializing_if = "StringMap::is_empty")]
    pub labels: StringMap,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_info: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// The robot's Ed25519 public key, hex.
    pub signing_key: String,
    /// The robot's X25519 public key, hex.
    pub sealing_key: String,
    /// Unix seconds of the claim (within the server's clock skew).
    pub time: u64,
    /// 32 hex digits, fresh per attempt.
    pub nonce: String,
    /// Hex HMAC-SHA256 of the claim keyed by SHA-256(join secret)
    /// ([`crate::api::robot_channel::Claim::prove`]).
    pub proof: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterResponse {
    pub name: String,
    pub namespace: String,
    pub poll_interval_seconds: u64,
    /// The public half of the release key (`--release-public-key` on the
    /// server, hex), for robots started without `--release-key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_key: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignments {
    /// Pass back as `since` on the next poll.
    pub revision: u64,
    /// Every Task placed on this robot (with its last known status); a task
    /// missing here must be stopped. Empty, and to be ignored, when
    /// `revision` is the `since` the poll named: the robot has that set.
    /// In a delta answer, only the tasks added or changed after `since`.
    /// With `delta=1` each task carries only what an agent reads: apiVersion,
    /// kind, metadata name, namespace, uid, generation, labels and annotations
    /// (not the server's `robot.k8s4r.io/` bookkeeping), spec, and status
    /// state and pid; with `groups=1` also no `generation`, and a task
    /// whose group fields are its group's part (`groups`) without them.
    pub tasks: Vec<Task>,
    /// `tasks` and `removed` are changes to the set the robot held at
    /// `since` (only when the poll asked `delta=1`); false: `tasks` is the
    /// complete set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delta: bool,
    /// In a delta answer: names no longer in the set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// With `delta=1`: the version hash of each task in `tasks`, by name.
    #[serde(default, skip_serializing_if = "StringMap::is_empty")]
    pub versions: StringMap,
    /// With `delta=1`: the digest of the complete set at `revision`, when
    /// anything changed or the poll asked `verify=1`. An agent whose set
    /// has another digest asks for the complete set (`since=0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// With `groups=1` (the group form, [`crate::api::assignment_set`]):
    /// the shared data of each TaskGroup added or changed, by
    /// `taskGroupName`; its tasks in `tasks` travel without it. The digest
    /// then covers the groups too.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub groups: std::collections::BTreeMap<String, GroupPart>,
    /// With `groups=1`: the version hash of each group in `groups`.
    #[serde(default, skip_serializing_if = "StringMap::is_empty")]
    pub group_versions: StringMap,
    /// With `groups=1`, in a delta answer: groups no longer in the set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_groups: Vec<String>,
    /// How long the next poll should wait (`wait=`); grows with the fleet so
    /// the server's request rate stays bounded.
    pub poll_interval_seconds: u64,
    /// The robot is marked Offline (its tasks Lost) after this long without
    /// a poll.
    pub offline_after_seconds: u64,
    /// The server may hold a poll this long (ask it as `wait`): it then
    /// counts the robot alive while its TCP connection answers keepalive
    /// probes, sent every `probe_seconds`. Zero (older servers, or over
    /// HTTPS): poll every `poll_interval_seconds`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hold_seconds: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub probe_seconds: u64,
    /// Operators asking for task output (`k8s4r logs`): the agent answers
    /// each with a [`LogUpload`] to `POST /agent/v1/robots/{name}/logs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_requests: Vec<LogRequest>,
    /// A new agent to install (an AgentRelease's entry for this robot's
    /// architecture), in every answer while the release is offered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_update: Option<AgentUpdate>,
    /// As in [`RegisterResponse`]: kept by a robot that has no release key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_key: Option<String>,
}

/// Largest log tail an agent uploads for one request.
pub const MAX_LOG_UPLOAD: usize = 256 * 1024;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogRequest {
    pub id: String,
    /// Task name on this robot.
    pub task: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// Last lines wanted; none = everything kept (bounded by MAX_LOG_UPLOAD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail_lines: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogUpload {
    pub id: String,
    pub task: String,
    /// The output (lossy UTF-8), at most MAX_LOG_UPLOAD bytes: the newest.
    #[serde(default)]
    pub text: String,
    /// Older output was cut to respect the limit.
    #[serde(default)]
    pub truncated: bool,
    /// Why there is no output (unknown task, unreadable logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    #[serde(default)]
    pub updates: Vec<TaskStatusUpdate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_info: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// Task statuses the agent still holds undelivered beyond this report
    /// (it sends them in batches, oldest first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<u64>,
    /// The agent's architecture (x86_64, aarch64, armv7), with device info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// How the last self-update ended, when that changed (and after each
    /// agent start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<UpdateResult>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatusUpdate {
    /// Task name (namespace = the robot's).
    pub task: String,
    /// Increases with every status the agent produces for this task; the
    /// server applies an update only if `seq` is greater than the last one.
    pub seq: u64,
    pub status: TaskStatus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    Applied,
    /// Already applied (same or newer seq): safe to drop from the outbox.
    Duplicate,
    /// The task is not (or no longer) placed on this robot.
    NotAssigned,
    NotFound,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusResult {
    pub task: String,
    pub seq: u64,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReply {
    pub results: Vec<StatusResult>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinTokenRequest {
    /// Lifetime in seconds; default one day, or the server's
    /// `--max-join-token-ttl` if shorter; more than that is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// Distinct robots the token may register (at least 1); the server's
    /// `--max-robots-per-join-token` applies if smaller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<u64>,
    /// The one robot name the token may register.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinToken {
    pub token: String,
    pub expires: String,
    /// Public name of the token (a prefix of its hash) for `list`/`revoke`.
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `GET /agent/v1/jointokens`: the tokens the server knows, never their
/// secrets (only hashes are stored).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JoinTokenList {
    pub items: Vec<JoinTokenInfo>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JoinTokenInfo {
    pub id: String,
    pub expires: String,
    pub expired: bool,
    /// Robots the token registered so far.
    #[serde(default)]
    pub robots: u64,
    /// The token's own limit on robots (`token create --uses`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<u64>,
    /// The one robot name the token may register (`token create --name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `POST /agent/v1/serverkeys/rotate`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RotateRequest {
    /// How long the old key keeps answering robots that have not switched
    /// yet; default one day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap_seconds: Option<u64>,
}

/// The server's robot-channel keys (public halves only).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerKeyList {
    pub items: Vec<ServerKeyInfo>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerKeyInfo {
    /// First 16 hex digits of the pin.
    pub id: String,
    /// Hex SHA-256 of the signing key, as join tokens carry it.
    pub pin: String,
    pub created: String,
    /// When the key stops answering (a rotated-out key), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<String>,
    /// The key new join tokens pin and answers move robots to.
    pub current: bool,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
pub(crate) fn is_zero(n: &u64) -> bool {
    *n == 0
}
