//! How a Job expands into TaskGroups and Tasks, and their names — one definition shared by
//! the control plane's controller and the agent's standalone `run -f`, so
//! the two can never disagree on names, the network a task carries, or
//! which policy applies.

use super::types::{Job, JobType, NetworkConfig, TaskGroupTemplate, TaskSpec};
use super::validate::check_dns_subdomain;

/// The TaskGroup object of `group` in `job`: `{job}-{group}`. Also the key
/// of the group on a robot (`<taskGroup>-envoy`, its directory).
pub fn task_group_name(job: &str, group: &str) -> String {
    format!("{job}-{group}")
}

/// The Task object of one replica of one task: `{job}-{group}-r{i}-{task}`.
pub fn task_name(job: &str, group: &str, replica: i32, task: &str) -> String {
    format!("{job}-{group}-r{replica}-{task}")
}

/// The Task object of `task` of a system job's group on `robot`:
/// `{job}-{group}-{task}.{robot}` (a system group has one replica per
/// robot). The robot's name comes after a dot because names of robots may
/// contain `-`: the part before the first dot that follows `{job}-{group}-`
/// is the task (a DNS label, no dots), so two robots or two tasks of one
/// group never share a name. The name depends on nothing but these four
/// names, so it is the same after any restart. Should it not be a valid
/// DNS subdomain of at most 253 characters (a long or many-labelled robot
/// name), the robot's part becomes `h` and 16 hex digits of the FNV-1a
/// hash of its name; the Task's `spec.targetRobot` still names the robot.
pub fn system_task_name(job: &str, group: &str, robot: &str, task: &str) -> String {
    let name = format!("{job}-{group}-{task}.{robot}");
    if check_dns_subdomain(&name).is_ok() {
        return name;
    }
    format!("{job}-{group}-{task}.h{:016x}", fnv1a64(robot.as_bytes()))
}

/// FNV-1a, 64 bits: a hash that is the same in every build and version
/// (unlike std's `DefaultHasher`), for names that must stay stable.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Replicas of `group` that [`expand`] produces: `count`, or one for a
/// system job (on a single machine "every matching robot" is this one).
pub fn local_replicas(job: &Job, group: &TaskGroupTemplate) -> i32 {
    match job.spec.job_type {
        JobType::System => 1,
        _ => group.count.max(0),
    }
}

/// The group's network with every task-level network's upstreams added:
/// one proxy serves the whole group. The first block that names a trust
/// domain or certificate files provides them.
pub fn group_network(group: Option<&NetworkConfig>, tasks: &[TaskSpec]) -> Option<NetworkConfig> {
    let mut blocks = group.into_iter().chain(tasks.iter().filter_map(|t| t.network.as_ref()));
    let mut merged = blocks.next()?.clone();
    for b in blocks {
        merged.upstreams.extend(b.upstreams.iter().cloned());
        merged.inbound.extend(b.inbound.iter().cloned());
        if merged.spiffe.is_none() {
            merged.spiffe.clone_from(&b.spiffe);
        }
        if merged.tls_files.is_none() {
            merged.tls_files.clone_from(&b.tls_files);
        }
    }
    Some(merged)
}

/// The spec of replica `replica` of `task` in `group`: the template plus
/// everything the robot needs to run it alone (group name, job type, init
/// tasks, the group's merged network, policies that fall back to the
/// group's). `targetRobot` is left for the scheduler.
pub fn place_task(job: &Job, group: &TaskGroupTemplate, task: &TaskSpec, replica: i32) -> TaskSpec {
    let mut spec = task.clone();
    spec.job_name = Some(job.name().to_string());
    spec.task_group_name = Some(task_group_name(job.name(), &group.name));
    spec.job_type = Some(job.spec.job_type);
    spec.replica_index = Some(replica);
    spec.target_robot = None;
    spec.init_tasks = group.init_tasks.clone();
    spec.network = group_network(group.network.as_ref(), &group.tasks);
    spec.constraints = group.constraints.clone();
    spec.disconnect = group.disconnect.clone();
    if spec.restart_policy.is_none() {
        spec.restart_policy = group.restart_policy.clone();
    }
    if spec.resources.is_none() {
        spec.resources = group.resources.clone();
    }
    spec
}

/// Every (task name, spec) of a Job run on one machine (the standalone
/// agent), all replicas, in a stable order. A system job's group runs one
/// replica here, named like replica 0 of a service group.
pub fn expand(job: &Job) -> Vec<(String, TaskSpec)> {
    let mut out = Vec::new();
    for group in &job.spec.task_groups {
        for replica in 0..local_replicas(job, group) {
            for task in &group.tasks {
                out.push((
                    task_name(job.name(), &group.name, replica, &task.name),
                    place_task(job, group, task, replica),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::JobType;

    const JOB: &str = r#"
apiVersion: robot.k8s4r.io/v1alpha1
kind: Job
metadata: {name: j}
spec:
  type: service
  taskGroups:
    - name: g
      count: 2
      initTasks: [{name: i, driver: exec, config: {execConfig: {command: /bin/true}}}]
      restartPolicy: {attempts: 4}
      network:
        upstreams: [{name: db, localPort: 5432, upstream: "db:5432", tls: false}]
      disconnect: {stopOnClientAfter: 1m}
      tasks:
        - name: t
          driver: exec
          config: {execConfig: {command: /bin/true}}
          network:
            upstreams: [{name: api, localPort: 8080, upstream: "api:80", tls: false}]
        - name: u
          driver: exec
          config: {execConfig: {command: /bin/true}}
"#;

    #[test]
    fn expands_replicas_with_placement() {
        let job: Job = serde_yaml_ng::from_str(JOB).unwrap();
        let tasks = expand(&job);
        let names: Vec<&str> = tasks.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["j-g-r0-t", "j-g-r0-u", "j-g-r1-t", "j-g-r1-u"]);
        let (_, u) = &tasks[3];
        assert_eq!(u.task_group_name.as_deref(), Some("j-g"));
        assert_eq!(u.job_type, Some(JobType::Service));
        assert_eq!(u.replica_index, Some(1));
        assert_eq!(u.init_tasks.len(), 1);
        assert_eq!(u.restart_policy.as_ref().unwrap().attempts, Some(4));
        assert!(u.disconnect.is_some());
        // Every task of the group carries the group's one merged network.
        let ups: Vec<&str> = u
            .network
            .as_ref()
            .unwrap()
            .upstreams
            .iter()
            .map(|x| x.name.as_str())
            .collect();
        assert_eq!(ups, ["db", "api"]);
        assert_eq!(tasks[0].1.network, u.network);
    }

    #[test]
    fn a_system_job_runs_one_replica_on_this_machine() {
        let mut job: Job = serde_yaml_ng::from_str(JOB).unwrap();
        job.spec.job_type = JobType::System;
        let tasks = expand(&job);
        let names: Vec<&str> = tasks.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["j-g-r0-t", "j-g-r0-u"], "count is not used for system jobs");
        assert_eq!(tasks[0].1.job_type, Some(JobType::System));
        assert_eq!(tasks[0].1.replica_index, Some(0));
    }

    #[test]
    fn system_task_names_are_per_robot_unique_and_valid() {
        assert_eq!(system_task_name("j", "g", "robot-1", "main"), "j-g-main.robot-1");
        assert_eq!(
            system_task_name("j", "g", "lab.example.com", "main"),
            "j-g-main.lab.example.com"
        );
        // Dashes in robot and task names cannot make two names equal.
        assert_ne!(
            system_task_name("j", "g", "r", "x-main"),
            system_task_name("j", "g", "r-x", "main")
        );
        // Too long for a name: a stable hash of the robot's name instead.
        let robot = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(50)
        );
        let long = system_task_name("job", "group", &robot, "main");
        assert!(check_dns_subdomain(&long).is_ok(), "{long}");
        assert_eq!(long, system_task_name("job", "group", &robot, "main"), "stable");
        assert!(long.starts_with("job-group-main.h") && long.len() == "job-group-main.h".len() + 16);
        let other = format!("{robot}e");
        assert_ne!(long, system_task_name("job", "group", &other, "main"));
        // The hash itself is fixed across builds (FNV-1a test vector).
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
