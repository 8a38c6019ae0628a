//! How a Job is split into TaskGroups and Tasks — one definition shared by
//! the control plane's controller and the agent's standalone `run -f`, so
//! the two can never disagree on names, the network a task carries, or
//! which policy applies.

use super::types::{Job, NetworkConfig, TaskGroupTemplate, TaskSpec};

/// The TaskGroup object of `group` in `job`: `{job}-{group}`. Also the key
/// of the group on a robot (`<taskGroup>-envoy`, its directory).
pub fn task_group_name(job: &str, group: &str) -> String {
    format!("{job}-{group}")
}

/// The Task object of one replica of one task: `{job}-{group}-r{i}-{task}`.
pub fn task_name(job: &str, group: &str, replica: i32, task: &str) -> String {
    format!("{job}-{group}-r{replica}-{task}")
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

/// Every (task name, spec) of a Job, all replicas, in a stable order.
pub fn expand(job: &Job) -> Vec<(String, TaskSpec)> {
    let mut out = Vec::new();
    for group in &job.spec.task_groups {
        for replica in 0..group.count.max(0) {
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
}
