//! `k8s4r-agent run -f job.yaml`: run a Job's task groups on this machine
//! with no server. The Job is expanded into the same assigned tasks the
//! control plane would send (`<job>-<group>-r<i>-<task>`, placement filled
//! in), and the same reconcile code runs them.
//!
//! When it ends:
//! - batch and service Jobs alike finish when every task has finished
//!   (exit 0 completes a task, failures follow the restart policy): group
//!   daemons and proxies are then stopped and the exit status is 0 only if
//!   every task succeeded. A service Job's tasks normally run until stopped,
//!   so for those this is SIGINT/SIGTERM; a service task that exits 0 has
//!   done its job and is not restarted (this is how
//!   compat/test-taskgroup-simple.yaml runs to success);
//! - SIGINT/SIGTERM stop everything gracefully (SIGTERM, killTimeout,
//!   SIGKILL), unless `--keep-running`: then the agent exits at once and
//!   leaves every process running; the next `run` on the same data dir
//!   re-adopts them.

use super::reconcile::{AssignedTask, Outcome, ReconcileConfig, Reconciler};
use super::supervisor::{Supervisor, SupervisorConfig};
use crate::api::{AnyObject, Job};
use std::io::Write;

pub struct RunOptions {
    pub file: String,
    pub keep_running: bool,
    /// `--artifact-max-size` (else the environment's, else the default).
    pub artifact_max_bytes: Option<u64>,
    pub supervisor: SupervisorConfig,
    pub reconcile: ReconcileConfig,
}

/// Expand a Job into its assigned tasks, exactly as the control plane
/// splits it (`api::job_expansion`).
pub fn expand(job: &Job) -> Vec<AssignedTask> {
    use crate::api::job_expansion::{self, task_group_name};
    // Each group's name in the Job, found by the key its tasks carry.
    let group_of = |key: Option<&String>| {
        job.spec
            .task_groups
            .iter()
            .find(|g| key.is_some_and(|k| *k == task_group_name(job.name(), &g.name)))
            .map(|g| g.name.clone())
            .unwrap_or_default()
    };
    job_expansion::expand(job)
        .into_iter()
        .map(|(name, spec)| AssignedTask {
            name,
            job_type: job.spec.job_type,
            group: group_of(spec.task_group_name.as_ref()),
            spec: spec.into(),
        })
        .collect()
}

/// Read, decode and validate the Job of `file`.
pub fn load_job(file: &str) -> Result<Job, String> {
    let sources = crate::cli::read_sources(file)?;
    let mut jobs = Vec::new();
    for checked in crate::cli::check_sources(&sources) {
        match checked.result {
            Ok(decoded) => {
                for w in &decoded.warnings {
                    eprintln!("warning: {}: {w}", checked.source);
                }
                if let AnyObject::Job(job) = decoded.object {
                    jobs.push(job);
                }
            }
            Err(errs) => return Err(format!("{}:\n  {}", checked.source, errs.join("\n  "))),
        }
    }
    match jobs.len() {
        1 => Ok(jobs.remove(0)),
        0 => Err(format!("{file}: no Job found (run takes one Job)")),
        n => Err(format!("{file}: {n} Jobs found; run takes one")),
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub fn run(opts: RunOptions) -> Result<i32, String> {
    let job = load_job(&opts.file)?;
    let mut desired = expand(&job);
    let (mut sup, notices) = Supervisor::new(opts.supervisor).map_err(|e| e.to_string())?;
    if let Some(max) = opts.artifact_max_bytes {
        sup.set_artifact_max_bytes(max);
    }
    for n in notices {
        say(&format!("agent: {n}"));
    }
    say(&format!(
        "job {}: {} task(s) in {} group(s)",
        job.name(),
        desired.len(),
        job.spec.task_groups.len()
    ));
    let mut rec = Reconciler::new(opts.reconcile);
    let mut stopping = false;
    let mut exit_code = 0;
    loop {
        let recheck = rec.step(&desired, &mut sup, &mut |line| say(&line));
        if stopping {
            if sup.all_finished() {
                break;
            }
        } else if sup.shutdown_requested() {
            if opts.keep_running {
                sup.checkpoint().map_err(|e| e.to_string())?;
                say("agent: signalled; leaving tasks running (--keep-running)");
                return Ok(0);
            }
            say("agent: signalled; stopping everything");
            exit_code = i32::from(failures(&desired, &rec, &sup) > 0);
            stopping = true;
            desired.clear();
            continue;
        } else if let Some(code) = finished(&desired, &rec, &sup) {
            say(&format!(
                "job {}: {}",
                job.name(),
                if code == 0 {
                    "all tasks succeeded"
                } else {
                    "some tasks failed"
                }
            ));
            exit_code = code;
            stopping = true;
            desired.clear();
            continue;
        }
        sup.run_once(recheck).map_err(|e| e.to_string())?;
    }
    sup.checkpoint().map_err(|e| e.to_string())?;
    Ok(exit_code)
}

fn failures(desired: &[AssignedTask], rec: &Reconciler, sup: &Supervisor) -> usize {
    desired
        .iter()
        .filter(|t| matches!(rec.outcome(t, sup), Outcome::Failed(_)))
        .count()
}

/// Some(exit code) once every task has an outcome.
fn finished(desired: &[AssignedTask], rec: &Reconciler, sup: &Supervisor) -> Option<i32> {
    let mut failed = false;
    for t in desired {
        match rec.outcome(t, sup) {
            Outcome::Succeeded => {}
            Outcome::Failed(reason) => {
                if sup.view(&t.name).is_none() {
                    // Never started (its group failed): say why once, at the end.
                    say(&format!("{} r{} {}: {reason}", t.group_key(), t.replica(), t.spec.name));
                }
                failed = true;
            }
            Outcome::Waiting | Outcome::Running => return None,
        }
    }
    Some(i32::from(failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_replicas_with_placement() {
        let yaml = r#"
apiVersion: robot.k8s4r.io/v1alpha1
kind: Job
metadata: {name: j}
spec:
  taskGroups:
    - name: g
      count: 2
      initTasks: [{name: i, driver: exec, config: {execConfig: {command: /bin/true}}}]
      restartPolicy: {attempts: 4}
      tasks: [{name: t, driver: exec, config: {execConfig: {command: /bin/true}}}]
"#;
        let job: Job = serde_yaml_ng::from_str(yaml).unwrap();
        let tasks = expand(&job);
        assert_eq!(
            tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            vec!["j-g-r0-t", "j-g-r1-t"]
        );
        assert_eq!(tasks[1].replica(), 1);
        assert_eq!(tasks[1].group(), "g");
        assert_eq!(tasks[0].group_key(), "j-g");
        assert_eq!(tasks[0].spec.init_tasks.len(), 1);
        assert_eq!(tasks[0].spec.restart_policy.as_ref().unwrap().attempts, Some(4));
    }
}
