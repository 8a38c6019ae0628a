//! The robot.k8s4r.io/v1alpha1 kinds: Job, TaskGroup, Task and Robot, with the
//! fields of the original CRDs (`compat/crd/*.yaml`) plus the network proxy,
//! services and timeouts the agent implements.

use super::meta::Object;
use super::units::{Duration, Quantity};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

pub type Job = Object<JobSpec, JobStatus>;
pub type TaskGroup = Object<TaskGroupSpec, TaskGroupStatus>;
pub type Task = Object<TaskSpec, TaskStatus>;
pub type Robot = Object<RobotSpec, RobotStatus>;

pub type StringMap = BTreeMap<String, String>;

fn is_false(b: &bool) -> bool {
    !*b
}

// ---------------------------------------------------------------- Job

/// How a Job's tasks run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum JobType {
    /// Runs until every task has exited; failed tasks follow the restart policy.
    #[default]
    Batch,
    /// Long-running: exited tasks are restarted, lost ones rescheduled.
    Service,
    /// One instance on every matching robot.
    System,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    /// Legacy copy of metadata.name kept by the original CRD.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// How the Job's tasks run: batch, service or system.
    #[serde(default, rename = "type")]
    pub job_type: JobType,
    /// Priority, 0-100, as in Nomad (kept from the original CRD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Datacenters the Job may run in (kept from the original CRD).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datacenters: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robot_selector: Option<RobotSelector>,
    /// Free-form key/value metadata, available to templates.
    #[serde(default, skip_serializing_if = "StringMap::is_empty")]
    pub meta: StringMap,
    /// The groups of tasks to run; each group's tasks run together on one robot, count times.
    #[serde(default)]
    pub task_groups: Vec<TaskGroupTemplate>,
}

/// Which robots a Job may run on. Accepts both the original flat form
/// (`robotSelector: {env: prod}`) and the Kubernetes LabelSelector form
/// (`matchLabels` / `matchExpressions`); encodes back in the form it came in.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RobotSelector {
    pub match_labels: StringMap,
    pub match_expressions: Vec<LabelSelectorRequirement>,
    /// True when decoded from (or to be encoded as) matchLabels/matchExpressions.
    pub structured: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    /// The label key the requirement applies to.
    pub key: String,
    /// In, NotIn, Exists, DoesNotExist.
    pub operator: String,
    /// Values for In and NotIn (must be empty for Exists and DoesNotExist).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl RobotSelector {
    pub fn matches(&self, labels: &StringMap) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let value = labels.get(&e.key);
                match e.operator.as_str() {
                    "In" => value.is_some_and(|v| e.values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !e.values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }
}

#[derive(Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
struct StructuredSelector {
    #[serde(default, skip_serializing_if = "StringMap::is_empty")]
    match_labels: StringMap,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    match_expressions: Vec<LabelSelectorRequirement>,
}

impl Serialize for RobotSelector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.structured || !self.match_expressions.is_empty() {
            StructuredSelector {
                match_labels: self.match_labels.clone(),
                match_expressions: self.match_expressions.clone(),
            }
            .serialize(s)
        } else {
            self.match_labels.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for RobotSelector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flat(StringMap),
            Structured(StructuredSelector),
        }
        // `untagged` would swallow the inner error; say what forms are allowed.
        let value = serde_json::Value::deserialize(d)?;
        let looks_structured = value.as_object().is_some_and(|m| {
            !m.is_empty()
                && m.keys().all(|k| k == "matchLabels" || k == "matchExpressions")
                && m.values().any(|v| !v.is_string())
        });
        let raw = if looks_structured {
            serde_json::from_value::<StructuredSelector>(value).map(Raw::Structured)
        } else {
            serde_json::from_value::<StringMap>(value).map(Raw::Flat)
        }
        .map_err(|e| {
            serde::de::Error::custom(format!("expected a map of labels or matchLabels/matchExpressions: {e}"))
        })?;
        Ok(match raw {
            Raw::Flat(match_labels) => RobotSelector {
                match_labels,
                match_expressions: vec![],
                structured: false,
            },
            Raw::Structured(s) => RobotSelector {
                match_labels: s.match_labels,
                match_expressions: s.match_expressions,
                structured: true,
            },
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct TaskGroupTemplate {
    /// Name of the group, unique in the Job (a DNS label).
    pub name: String,
    /// How many replicas of the group to run (default 1); each replica runs on one robot.
    #[serde(default = "one")]
    pub count: i32,
    /// Tasks run to completion (or as daemons) before the main tasks start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_tasks: Vec<TaskSpec>,
    /// The group's tasks, started together on the same robot.
    #[serde(default)]
    pub tasks: Vec<TaskSpec>,
    /// The group's network: the Envoy proxy, its upstreams and inbound listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
    /// Placement constraints on robot attributes (${attr.os} = linux ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    /// How failed tasks are restarted on their robot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// How failed or lost replicas are moved to other robots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reschedule_policy: Option<ReschedulePolicy>,
    /// Kept from the original CRD (Nomad's ephemeral disk); not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_disk: Option<EphemeralDisk>,
    /// Free-form key/value metadata of the group.
    #[serde(default, skip_serializing_if = "StringMap::is_empty")]
    pub meta: StringMap,
    /// Resources reserved for the whole group on its robot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// What happens when the group's robot loses its connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnect: Option<DisconnectPolicy>,
    /// How a change of the group's spec reaches its robots (a staged rollout); without it, every robot at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<super::update_strategy::UpdateStrategy>,
}

fn one() -> i32 {
    1
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Constraint {
    /// Left side: an attribute such as ${attr.os} or ${meta.zone}.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub l_target: String,
    /// Comparison: =, !=, >, >=, <, <=, regexp, set_contains or version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operand: String,
    /// Right side: the value compared with.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub r_target: String,
}

/// What happens when a task's restart attempts are used up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum RestartMode {
    /// Give up (task failed) once `attempts` restarts happened within `interval`.
    #[default]
    Fail,
    /// Wait until the interval is over, then try again.
    Delay,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RestartPolicy {
    /// Restarts allowed within interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    /// The window attempts are counted in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Wait before each restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Duration>,
    /// What happens when the attempts are used up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<RestartMode>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ReschedulePolicy {
    /// Reschedules allowed within interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    /// The window attempts are counted in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Wait before the first reschedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Duration>,
    /// How the delay grows: constant, exponential or fibonacci.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_function: Option<String>,
    /// Upper bound of the growing delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<Duration>,
    /// Reschedule without limit (attempts and interval ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlimited: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct EphemeralDisk {
    /// Kept from the original CRD (Nomad's migrate); not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrate: Option<bool>,
    /// Kept from the original CRD (Nomad's size in MB); not acted on.
    #[serde(default, rename = "sizeMB", skip_serializing_if = "Option::is_none")]
    pub size_mb: Option<i32>,
    /// Kept from the original CRD (Nomad's sticky); not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<bool>,
}

/// What happens when a robot drops off the network (Nomad's `disconnect`
/// block is the model). The robot keeps running its tasks on its own; the
/// server marks them Unknown, then Lost after `lostAfter`, and replaces them
/// elsewhere only if `replace`; when the robot returns, duplicates are
/// settled by `reconcile`. A robot that cannot reach the server for
/// `stopOnClientAfter` stops the group's tasks itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct DisconnectPolicy {
    /// How long a disconnected robot's tasks stay Unknown before they are Lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_after: Option<Duration>,
    /// The robot stops the group's tasks itself after this long without the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_on_client_after: Option<Duration>,
    /// Default true: a lost service task is rescheduled on another robot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace: Option<bool>,
    /// keepOriginal, keepReplacement, bestScore (default), longestRunning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile: Option<String>,
}

impl DisconnectPolicy {
    pub fn replace(&self) -> bool {
        self.replace.unwrap_or(true)
    }
}

// ---------------------------------------------------------------- network

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    /// Defaults to true when the block is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// `envoy` (default) or `none`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub proxy_type: Option<String>,
    /// The SPIRE agent and trust domain the proxy gets its identity from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe: Option<SpiffeConfig>,
    /// Certificates from files instead of a SPIRE agent (robots without SPIRE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_files: Option<TlsFiles>,
    /// Services the tasks reach through the proxy on 127.0.0.1:localPort.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<Upstream>,
    /// Task ports exposed to the network over mTLS, for listed SPIFFE IDs only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inbound: Vec<Inbound>,
}

impl NetworkConfig {
    /// A proxy is wanted: the block is enabled and its type is not `none`.
    pub fn is_active(&self) -> bool {
        self.enabled.unwrap_or(true) && self.proxy_type.as_deref().unwrap_or("envoy") == "envoy"
    }
}

/// An inbound listener: peers reach a task's local port over mTLS, and only
/// the listed SPIFFE IDs get in (RBAC on the authenticated principal).
///
/// ```yaml
/// inbound:
///   - name: telemetry            # DNS label, unique in the group
///     port: 8443                 # opened on `address` for peers
///     address: 0.0.0.0           # optional, default 0.0.0.0
///     targetPort: 8080           # the task listens on 127.0.0.1:8080
///     allowedSpiffeIDs: [spiffe://example.org/ns/prod/sa/collector]
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Inbound {
    /// Name of the listener, a DNS label unique in the group.
    pub name: String,
    /// The port peers connect to. Kept wide so validation reports bad values.
    pub port: i64,
    /// The task's port on 127.0.0.1.
    pub target_port: i64,
    /// The address to listen on; default `0.0.0.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Peers allowed in. Empty is an error: an open mTLS port is no default.
    #[serde(default, rename = "allowedSpiffeIDs")]
    pub allowed_spiffe_ids: Vec<String>,
    /// The SPIRE agent / trust domain for this listener; default: the network's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe: Option<SpiffeConfig>,
}

impl Inbound {
    pub fn address(&self) -> &str {
        self.address.as_deref().unwrap_or("0.0.0.0")
    }
}

pub const DEFAULT_SPIRE_SOCKET: &str = "/run/spire/sockets/agent.sock";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct SpiffeConfig {
    /// The SPIFFE trust domain (example.org).
    pub trust_domain: String,
    /// Path of the SPIRE agent's Workload API socket (default /run/spire/sockets/agent.sock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_socket_path: Option<String>,
}

impl SpiffeConfig {
    pub fn socket_path(&self) -> &str {
        self.agent_socket_path.as_deref().unwrap_or(DEFAULT_SPIRE_SOCKET)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct TlsFiles {
    /// Path of the certificate (PEM) on the robot.
    pub cert_path: String,
    /// Path of the private key (PEM) on the robot.
    pub key_path: String,
    /// Path of the CA bundle (PEM) peers are checked against.
    pub ca_path: String,
}

/// What the proxy speaks to an upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Plain TCP (default).
    #[default]
    Tcp,
    /// HTTP/1.1 and HTTP/2.
    Http,
    /// gRPC over HTTP/2.
    Grpc,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Upstream {
    /// Name of the upstream, unique in the group.
    pub name: String,
    /// Port the app connects to on 127.0.0.1. Kept wide so validation, not the
    /// decoder, reports out-of-range values with their path.
    pub local_port: i64,
    /// `host:port` of the real service.
    pub upstream: String,
    /// What the proxy speaks to the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Defaults to true (as in the original CRD): mTLS with a SPIFFE identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    /// The SPIFFE ID the upstream must present; default: any ID in the trust domain.
    #[serde(default, rename = "spiffeID", skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// Per-upstream trust domain / SPIRE socket, overriding the group's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe: Option<SpiffeConfig>,
    /// tcp: a connection with no traffic either way for this long is
    /// closed (default 1h; `0s`: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
}

impl Upstream {
    pub fn protocol(&self) -> Protocol {
        self.protocol.unwrap_or_default()
    }
    pub fn tls(&self) -> bool {
        self.tls.unwrap_or(true)
    }
}

// ---------------------------------------------------------------- Task

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct DriverConfig {
    /// The command the exec driver runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_config: Option<ExecConfig>,
    /// Accepted for compatibility with the original CRD; not run by this agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_config: Option<serde_json::Value>,
    /// Accepted for compatibility with the original CRD; not run by this agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub java_config: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ExecConfig {
    /// The program to run.
    #[serde(default)]
    pub command: String,
    /// Arguments passed to the command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    /// Where to fetch the artifact from: an http://, https:// or file:// URL.
    pub getter_source: String,
    /// Where in the task directory to put it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_dest: Option<String>,
    /// any, file or dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub getter_mode: Option<String>,
    /// Options of the download (checksum ...).
    #[serde(default, skip_serializing_if = "StringMap::is_empty")]
    pub getter_options: StringMap,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Template {
    /// The template text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded_tmpl: Option<String>,
    /// A template file on the robot, instead of embeddedTmpl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_path: Option<String>,
    /// Where the rendered file is written, relative to the task directory.
    pub dest_path: String,
    /// Octal file mode, e.g. "0644".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perms: Option<String>,
    /// What happens to the task when the rendered file changes: noop, restart or signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_mode: Option<String>,
    /// The signal sent with changeMode signal (SIGHUP ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_signal: Option<String>,
    /// Left template delimiter (default {{).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_delim: Option<String>,
    /// Right template delimiter (default }}).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub right_delim: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// Name of the service.
    pub name: String,
    /// The port the service is on: a port label or a number.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub port_label: String,
    /// Tags of the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Health checks; their results are the task's health.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<ServiceCheck>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ServiceCheck {
    /// Name of the check.
    pub name: String,
    /// http, tcp, script (grpc is accepted by the old CRD but not run).
    #[serde(rename = "type")]
    pub check_type: String,
    /// How often the check runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// How long one check may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// HTTP path of an http check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A port label or a plain port number for tcp/http checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_label: Option<String>,
    /// http or https for http checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Command of a script check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Arguments of a script check's command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Kept from the original CRD (the status before the first result); not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_status: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// CPU limit, as a quantity (500m is half a core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory limit, as a quantity (512Mi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Disk for the task, as a quantity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<Quantity>,
    /// Disk operations per second (kept from the original CRD; not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<i64>,
    /// Network resources of the original CRD (accepted, not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<serde_json::Value>,
    /// Most processes and threads the task may have at once (cgroup
    /// `pids.max`), 1-4194304; default 4096. A fork bomb stays inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
}

impl Resources {
    /// `pids` when none is given: far above what a robot workload uses
    /// (a ROS 2 node has tens of threads), far below what stalls a robot.
    pub const DEFAULT_PIDS: u64 = 4096;
    /// The kernel's largest pid_max.
    pub const MAX_PIDS: i64 = 4_194_304;
}

/// A task as written in a Job (`taskGroups[].tasks[]`, `initTasks[]`) and, with
/// the placement fields filled in by the control plane, the spec of a Task
/// object. One type for both keeps the template and the object from drifting.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct TaskSpec {
    /// Name of the task, unique in its group (a DNS label).
    pub name: String,
    /// How the task runs: exec (docker and java are accepted, not run).
    pub driver: String,
    /// The driver's configuration.
    #[serde(default)]
    pub config: DriverConfig,
    /// Init tasks only: keeps running beside the main tasks instead of running to completion.
    #[serde(default, skip_serializing_if = "is_false")]
    pub daemon: bool,
    /// Environment variables of the task.
    #[serde(default, skip_serializing_if = "StringMap::is_empty")]
    pub env: StringMap,
    /// The user the task runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The task is stopped (and fails) after running this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL when the task is stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_timeout: Option<Duration>,
    /// How the task is restarted when it fails (default: the group's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// Files downloaded into the task directory before it starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<Artifact>,
    /// Files rendered into the task directory before it starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<Template>,
    /// Services the task offers, with their health checks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// Resource limits of the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// The task's own network settings (usually the group's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
    /// Robot-scoped daemon (init tasks only): one instance per robot, shared by
    /// every TaskGroup that declares it under the same name (e.g. a SPIRE agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,

    // Placement, set by the control plane on Task objects only.
    /// Task objects: the Job the task belongs to (set by the control plane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// Task objects: the TaskGroup the task belongs to (set by the control plane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_group_name: Option<String>,
    /// The Job's type, so the robot knows whether an exited task is done
    /// (batch) or should be kept running (service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_type: Option<JobType>,
    /// Task objects: which replica of its group the task is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_index: Option<i32>,
    /// Task objects: the robot the task is placed on (set by the scheduler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_robot: Option<String>,
    /// The group's init tasks, carried on every Task so the robot can run them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_tasks: Vec<TaskSpec>,
    /// Task objects: the group's constraints, carried to the robot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    /// The group's disconnect policy, carried to the robot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnect: Option<DisconnectPolicy>,
}

impl TaskSpec {
    pub fn is_robot_scoped(&self) -> bool {
        self.scope.as_deref() == Some("robot")
    }
}

/// Where a task is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting to be placed on a robot.
    #[default]
    Pending,
    /// Placed on a robot, not yet started.
    Scheduled,
    /// Being started on its robot.
    Starting,
    /// Running.
    Running,
    /// Exited successfully.
    Completed,
    /// Failed (after its restarts).
    Failed,
    /// Its robot was disconnected for longer than lostAfter.
    Lost,
    /// Its robot is disconnected; the task may still run.
    Unknown,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Completed | TaskState::Failed | TaskState::Lost)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Scheduled => "scheduled",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Lost => "lost",
            TaskState::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct TaskEvent {
    /// When it happened (RFC 3339).
    pub time: String,
    /// What happened (Started, Terminated, Restarting ...).
    #[serde(rename = "type")]
    pub event_type: String,
    /// What happened, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_message: Option<String>,
    /// Details (exit code, signal ...).
    #[serde(default, skip_serializing_if = "StringMap::is_empty")]
    pub details: StringMap,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// Where the task is in its life.
    #[serde(default)]
    pub state: TaskState,
    /// Exit code of the last run, once it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that ended the last run, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// How often the task was restarted on its robot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_count: Option<i32>,
    /// Process id of the running task on its robot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Result of the task's service checks: healthy or unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// The task holds an update lock (the file k8s4r-update.lock in its task directory): the robot keeps it on its current version for now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_locked: Option<bool>,
    /// Why the task is in its state, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Why the task is in its state, as one word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the current or last run started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When the last run ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// When the task was last restarted (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart_time: Option<String>,
    /// Kept from the original CRD; logs are fetched with kubectl logs TASK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<String>,
    /// Kept from the original CRD; logs are fetched with kubectl logs TASK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs_stdout: Option<String>,
    /// Kept from the original CRD; logs are fetched with kubectl logs TASK --stream stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs_stderr: Option<String>,
    /// The task's recent lifecycle events on its robot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<TaskEvent>,
    /// Resources the robot gave the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_resources: Option<serde_json::Value>,
    /// Kubernetes conditions derived from the state (see [`Condition`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

// ---------------------------------------------------------------- TaskGroup

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct TaskGroupSpec {
    /// The Job this group belongs to.
    pub job_name: String,
    /// The group's name in its Job.
    pub group_name: String,
    /// How many replicas of the group run.
    #[serde(default = "one")]
    pub count: i32,
    /// The group's init tasks (see Job taskGroups.initTasks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_tasks: Vec<TaskSpec>,
    /// The group's tasks (see Job taskGroups.tasks).
    #[serde(default)]
    pub tasks: Vec<TaskSpec>,
    /// The group's network (see Job taskGroups.network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
    /// The group's placement constraints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    /// The group's restart policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// The group's reschedule policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reschedule_policy: Option<ReschedulePolicy>,
    /// Kept from the original CRD (Nomad's ephemeral disk); not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_disk: Option<EphemeralDisk>,
    /// The group's free-form metadata.
    #[serde(default, skip_serializing_if = "StringMap::is_empty")]
    pub meta: StringMap,
    /// Resources reserved for the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// The group's disconnect policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnect: Option<DisconnectPolicy>,
}

/// Job and TaskGroup lifecycle, as the original implementation named it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum GroupState {
    /// No task placed yet.
    #[default]
    Pending,
    /// Tasks placed and starting.
    Scheduled,
    /// A task is running.
    Running,
    /// Every task completed.
    Completed,
    /// Tasks failed or were lost.
    Failed,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    /// The replica placed.
    pub replica_index: i32,
    /// The robot it is placed on.
    pub robot_name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct TaskGroupStatus {
    /// Where the group is in its life, rolled up from its tasks.
    #[serde(default)]
    pub state: GroupState,
    /// The task counts in words, and why tasks wait if they do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_description: Option<String>,
    /// Which robot runs which replica.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assigned_robots: Vec<Assignment>,
    /// Tasks of the group.
    #[serde(default)]
    pub total_tasks: i32,
    /// Tasks not yet running (pending, scheduled or starting).
    #[serde(default)]
    pub pending_tasks: i32,
    /// Tasks running.
    #[serde(default)]
    pub running_tasks: i32,
    /// Tasks that completed.
    #[serde(default)]
    pub succeeded_tasks: i32,
    /// Tasks that failed or were lost.
    #[serde(default)]
    pub failed_tasks: i32,
    /// When the first task started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When the group completed or failed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct GroupSummary {
    /// Tasks waiting to be placed.
    pub queued: i32,
    /// Tasks placed and starting.
    pub starting: i32,
    /// Tasks running.
    pub running: i32,
    /// Tasks that completed.
    pub complete: i32,
    /// Tasks that failed.
    pub failed: i32,
    /// Tasks lost with their robot.
    pub lost: i32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    /// Where the Job is in its life, rolled up from its tasks.
    #[serde(default)]
    pub state: GroupState,
    /// The task counts in words, and why tasks wait if they do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_description: Option<String>,
    /// Tasks of the Job.
    #[serde(default)]
    pub total_tasks: i32,
    /// Tasks not yet running (pending, scheduled or starting).
    #[serde(default)]
    pub pending_tasks: i32,
    /// Tasks running.
    #[serde(default)]
    pub running_tasks: i32,
    /// Tasks that completed.
    #[serde(default)]
    pub succeeded_tasks: i32,
    /// Tasks that failed or were lost.
    #[serde(default)]
    pub failed_tasks: i32,
    /// Names of the Job's TaskGroup objects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_groups: Vec<String>,
    /// Kept from the original CRD (empty: list tasks with -l robot.k8s4r.io/job=NAME).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<String>,
    /// Task counts per group, by state.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub task_group_summary: BTreeMap<String, GroupSummary>,
    /// Kept from the original CRD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_index: Option<i64>,
    /// Kept from the original CRD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modify_index: Option<i64>,
    /// Kubernetes conditions derived from the state (see [`Condition`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

// ---------------------------------------------------------------- Conditions

/// One observation about an object in the Kubernetes form
/// (`metav1.Condition`): what `kubectl wait --for=condition=TYPE` reads.
/// The server derives them from the object's state on every status write.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition's name: Complete or Failed (batch Jobs), Available or
    /// Progressing (service and system Jobs), Ready (Robots and Tasks),
    /// Succeeded or Failed (Tasks).
    #[serde(rename = "type")]
    pub condition_type: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    /// When `status` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_transition_time: String,
    /// Why, as one CamelCase word.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Why, for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

// ---------------------------------------------------------------- Robot

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RobotSpec {
    /// The robot's id (its name, for robots that registered themselves).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub robot_id: String,
    /// What the robot is, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The labels the robot's agent last reported (--labels). Read-only record: selectors match metadata.labels, where the agent's labels land too.
    #[serde(default, skip_serializing_if = "StringMap::is_empty")]
    pub labels: StringMap,
}

/// Whether a robot is connected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
pub enum RobotPhase {
    /// Never connected.
    #[default]
    Pending,
    /// Connected: its agent polls the server.
    Online,
    /// Not heard from for longer than the offline timeout.
    Offline,
    /// State not known.
    Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RobotStatus {
    /// Whether the robot is connected.
    #[serde(default)]
    pub phase: RobotPhase,
    /// Why the robot is in its phase, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the robot was last heard from (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<String>,
    /// Version of the robot's agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// When the server learned agentVersion (RFC 3339, the server's clock): how long the robot has run it, for an AgentRelease's canary health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version_time: Option<String>,
    /// Task statuses the robot's agent still held undelivered after its
    /// last report (it sends them in batches; a robot back from a long
    /// outage may hold many). What the robot collects while offline is
    /// known only when it reports again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_backlog: Option<u64>,
    /// CPU architecture the agent is built for (x86_64, aarch64, armv7): which AgentRelease binary it takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// How the agent's last over-the-air update ended (AgentRelease).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<UpdateResult>,
    /// Versions this robot refused or rolled back, newest last (at most
    /// [`MAX_FAILED_UPDATES`]; kept by the server from each failed
    /// `lastUpdate`): no AgentRelease offers it one of them again, though a
    /// later update overwrites `lastUpdate`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_updates: Vec<String>,
    /// Free-form device facts (hostname, platform, cpu, memory, disks, ...), in
    /// the shape of the original CRD's `deviceInfo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_info: Option<serde_json::Value>,
    /// Kubernetes conditions derived from the state (see [`Condition`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// How many versions `status.failedUpdates` keeps (the oldest goes first).
pub const MAX_FAILED_UPDATES: usize = 16;

/// How a robot's last update ended (`status.lastUpdate` of its Robot).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct UpdateResult {
    /// The AgentRelease's name.
    #[serde(default)]
    pub release: String,
    /// The version the update was to install.
    pub version: String,
    /// Applied, Refused or RolledBack.
    pub result: UpdateOutcome,
    /// Why, for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When (RFC 3339, the robot's clock).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub time: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(schemars::JsonSchema))]
pub enum UpdateOutcome {
    /// The new agent runs and reached the server.
    #[default]
    Applied,
    /// Not installed (bad signature, size or checksum, another architecture, a downgrade, no room): the running agent is untouched.
    Refused,
    /// Installed, but the new agent did not come up; the previous one is back.
    RolledBack,
}
