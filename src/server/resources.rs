//! The kinds the API serves: REST names, discovery facts, printer columns
//! (from the original CRDs' additionalPrinterColumns) and the fields a
//! fieldSelector may name.

use crate::server::status::Subject;

/// One column of `kubectl get`; `path` is a dotted JSON path into the object.
#[derive(Debug)]
pub struct Column {
    pub name: &'static str,
    pub kind: ColumnKind,
    pub path: &'static str,
    pub description: &'static str,
    /// 0: always shown; 1: only with `-o wide`.
    pub priority: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnKind {
    String,
    Integer,
    /// A timestamp shown as an age.
    Age,
}

impl ColumnKind {
    pub fn openapi_type(self) -> &'static str {
        match self {
            ColumnKind::String | ColumnKind::Age => "string",
            ColumnKind::Integer => "integer",
        }
    }
}

#[derive(Debug)]
pub struct Resource {
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub columns: &'static [Column],
    /// Beyond metadata.name and metadata.namespace.
    pub field_selectors: &'static [&'static str],
    /// Objects live in a namespace (`/namespaces/{ns}/{plural}`); false:
    /// cluster-scoped (`/{plural}`, kept under the empty namespace).
    pub namespaced: bool,
}

impl Resource {
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    pub fn subject<'a>(&'a self, name: &'a str) -> Subject<'a> {
        Subject {
            kind: self.kind,
            plural: self.plural,
            name,
        }
    }

    pub fn supports_field(&self, field: &str) -> bool {
        matches!(field, "metadata.name" | "metadata.namespace") || self.field_selectors.contains(&field)
    }
}

pub const CATEGORIES: &[&str] = &["k8s4r"];

const fn col(name: &'static str, kind: ColumnKind, path: &'static str, description: &'static str) -> Column {
    Column {
        name,
        kind,
        path,
        description,
        priority: 0,
    }
}

const fn wide(name: &'static str, kind: ColumnKind, path: &'static str, description: &'static str) -> Column {
    Column {
        name,
        kind,
        path,
        description,
        priority: 1,
    }
}

use ColumnKind::{Age, Integer, String as Str};

pub static JOBS: Resource = Resource {
    kind: "Job",
    plural: "jobs",
    singular: "job",
    short_names: &["rjob"],
    columns: &[
        col("Type", Str, "spec.type", "batch, service or system"),
        col("State", Str, "status.state", "Lifecycle state"),
        col("Total", Integer, "status.totalTasks", "Total tasks"),
        col("Running", Integer, "status.runningTasks", "Running tasks"),
        col("Succeeded", Integer, "status.succeededTasks", "Succeeded tasks"),
        col("Failed", Integer, "status.failedTasks", "Failed tasks"),
        col("Age", Age, "metadata.creationTimestamp", "Time since creation"),
        wide("Priority", Integer, "spec.priority", "Scheduling priority"),
        wide(
            "Message",
            Str,
            "status.statusDescription",
            "Why the job is in this state",
        ),
    ],
    field_selectors: &["spec.type", "status.state"],
    namespaced: true,
};

pub static TASKGROUPS: Resource = Resource {
    kind: "TaskGroup",
    plural: "taskgroups",
    singular: "taskgroup",
    short_names: &["rtg"],
    columns: &[
        col("Job", Str, "spec.jobName", "Owning job"),
        col("State", Str, "status.state", "Lifecycle state"),
        col("Total", Integer, "status.totalTasks", "Total tasks"),
        col("Running", Integer, "status.runningTasks", "Running tasks"),
        col("Succeeded", Integer, "status.succeededTasks", "Succeeded tasks"),
        col("Failed", Integer, "status.failedTasks", "Failed tasks"),
        col("Age", Age, "metadata.creationTimestamp", "Time since creation"),
        wide(
            "Message",
            Str,
            "status.statusDescription",
            "Why the group is in this state",
        ),
    ],
    field_selectors: &["spec.jobName", "spec.groupName", "status.state"],
    namespaced: true,
};

pub static TASKS: Resource = Resource {
    kind: "Task",
    plural: "tasks",
    singular: "task",
    short_names: &["rtask"],
    columns: &[
        col("Job", Str, "spec.jobName", "Owning job"),
        col("Robot", Str, "spec.targetRobot", "Robot the task is placed on"),
        col("State", Str, "status.state", "Lifecycle state"),
        col("Exit", Integer, "status.exitCode", "Exit code of the last run"),
        col("Restarts", Integer, "status.restartCount", "Restarts on the robot"),
        col("Age", Age, "metadata.creationTimestamp", "Time since creation"),
        wide("Driver", Str, "spec.driver", "Task driver"),
        wide("Reason", Str, "status.reason", "Why the task is in this state"),
        wide("Message", Str, "status.message", "Details"),
    ],
    field_selectors: &["spec.targetRobot", "spec.jobName", "spec.taskGroupName", "status.state"],
    namespaced: true,
};

pub static ROBOTS: Resource = Resource {
    kind: "Robot",
    plural: "robots",
    singular: "robot",
    short_names: &["rb"],
    columns: &[
        col("Phase", Str, "status.phase", "Online, Offline or Pending"),
        col(
            "Hostname",
            Str,
            "status.deviceInfo.hostname",
            "Host name reported by the agent",
        ),
        col(
            "Last-Heartbeat",
            Age,
            "status.lastHeartbeatTime",
            "Time since the last heartbeat persisted",
        ),
        col("Age", Age, "metadata.creationTimestamp", "Time since creation"),
        col("Version", Str, "status.agentVersion", "Agent version the robot reports"),
        wide("OS", Str, "status.deviceInfo.platform.os", "Operating system"),
        wide("Arch", Str, "status.architecture", "CPU architecture of the agent"),
        wide(
            "Update",
            Str,
            "status.lastUpdate.result",
            "How the last agent update ended",
        ),
    ],
    field_selectors: &["status.phase", "spec.robotId"],
    namespaced: true,
};

/// Versions of Jobs and their staged rollouts (`controllers::rollout`).
pub static ROLLOUTS: Resource = Resource {
    kind: "Rollout",
    plural: "rollouts",
    singular: "rollout",
    short_names: &["ro"],
    columns: &[
        col("Job", Str, "spec.jobName", "The Job this is a version of"),
        col("Version", Integer, "spec.version", "The Job's version"),
        col("State", Str, "status.state", "Where the rollout is"),
        col("Canaries", Integer, "status.canaries", "Replicas updated as canaries"),
        col("Healthy", Integer, "status.healthy", "Updated replicas found healthy"),
        col(
            "Unhealthy",
            Integer,
            "status.unhealthy",
            "Updated replicas found unhealthy",
        ),
        col(
            "Locked",
            Integer,
            "status.locked",
            "Replicas whose task holds an update lock",
        ),
        col("Progress", Str, "status.progress", "Replicas on this version / all"),
        col(
            "Age",
            Age,
            "metadata.creationTimestamp",
            "Time since the version was made",
        ),
        wide(
            "Pending",
            Integer,
            "status.pending",
            "Replicas on offline robots, skipped until back",
        ),
        wide("Message", Str, "status.message", "Why the rollout is in its state"),
    ],
    field_selectors: &["spec.jobName", "status.state"],
    namespaced: true,
};

/// Agent releases: cluster-scoped (one release key, one fleet; a release
/// narrows itself with robotSelector and namespaces).
pub static AGENTRELEASES: Resource = Resource {
    kind: "AgentRelease",
    plural: "agentreleases",
    singular: "agentrelease",
    short_names: &["arel"],
    columns: &[
        col("Version", Str, "spec.version", "Agent version the release installs"),
        col("Selected", Integer, "status.selected", "Robots the release selects"),
        col("Updated", Integer, "status.updated", "Robots that report the version"),
        col(
            "Updating",
            Integer,
            "status.updating",
            "Robots offered the release, not done yet",
        ),
        col("Failed", Integer, "status.failed", "Robots that refused or rolled back"),
        col("Age", Age, "metadata.creationTimestamp", "Time since creation"),
        wide("Max-Parallel", Integer, "spec.maxParallel", "Robots updating at once"),
        wide(
            "Healthy",
            Integer,
            "status.healthy",
            "Robots Online on the version for minHealthyTime",
        ),
        wide("Message", Str, "status.message", "Where the rollout is"),
    ],
    field_selectors: &["spec.version"],
    namespaced: false,
};

pub static ALL: [&Resource; 6] = [&JOBS, &TASKGROUPS, &TASKS, &ROBOTS, &ROLLOUTS, &AGENTRELEASES];

pub fn by_plural(plural: &str) -> Option<&'static Resource> {
    ALL.iter().copied().find(|r| r.plural == plural)
}
