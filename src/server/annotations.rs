//! The labels and annotations the server writes on the objects it owns
//! (TaskGroups and Tasks of a Job), in one place: the controllers set them,
//! the cache indexes by them, the robot API clears them.

/// The Job a TaskGroup or Task belongs to.
pub const LABEL_JOB: &str = "robot.k8s4r.io/job";
/// The TaskGroup (its name in the Job) a TaskGroup or Task belongs to.
pub const LABEL_GROUP: &str = "robot.k8s4r.io/taskgroup";
/// A Task's replica index in its group.
pub const LABEL_REPLICA: &str = "robot.k8s4r.io/replica";

/// How often a Task's replica was moved to another robot.
pub const ANN_RESCHEDULES: &str = "robot.k8s4r.io/reschedules";
/// Last status sequence number applied from the agent.
pub const ANN_STATUS_SEQ: &str = "robot.k8s4r.io/status-seq";
/// When a task on an Offline robot was first marked Unknown.
pub const ANN_UNKNOWN_SINCE: &str = "robot.k8s4r.io/unknown-since";
/// The robot a replica was moved away from while it was lost, until settled.
pub const ANN_ORIGINAL_ROBOT: &str = "robot.k8s4r.io/original-robot";
/// When the original copy was placed (RFC 3339).
pub const ANN_ORIGINAL_PLACED_AT: &str = "robot.k8s4r.io/original-placed-at";
/// When the current placement was made (RFC 3339); absent for the first
/// placement, which is the Task's creationTimestamp.
pub const ANN_PLACED_AT: &str = "robot.k8s4r.io/placed-at";
