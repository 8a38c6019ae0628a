//! Robot-local revert: while a staged rollout with `autoRevert` updates a
//! task, the server hands the robot the previous version's spec with it
//! (Task annotations [`ANN_PREVIOUS_SPEC`], [`ANN_AUTO_REVERT`]). If the new
//! version is not healthy (running `minHealthyTime` without a restart)
//! within `healthyDeadline`, or fails, the robot goes back to the previous
//! spec on its own, at once, connected or not, and keeps it until the
//! server changes the task again; it reports the task with reason
//! [`REASON`] so the server fails the rollout and reverts the rest.
//!
//! A task the new version adds has no previous spec: the server says so
//! with [`ABSENT`] as the previous spec, and going back means stopping the
//! task (it leaves the set the supervisor runs, its status is still
//! reported, with reason [`REASON`]) until the server deletes it or
//! changes it again.
//!
//! Update locks (balena's term): a task that must not be interrupted now (a
//! robot mid-mission) creates [`LOCK_FILE`] in its task directory; while it
//! exists, a new spec for the task waits (the task keeps running the spec it
//! has) and the task reports `updateLocked`, which the rollout counts and
//! waits for, up to its `lockDeadline`; then the server sets
//! [`ANN_LOCK_OVERRIDE`] and the update goes ahead.
//!
//! The decision is pure (`Rollback::choose` takes what the supervisor
//! sees and the time); the little state it needs (offers, and which tasks
//! went back) is kept in `rollback.json` in the data dir, so an agent
//! restarted while reverted stays reverted.

use super::ordered;
use super::reconcile::{AssignedTask, DesiredSpec, Outcome, Reconciler};
use super::supervisor::Units;
use crate::api::{Task, TaskSpec, TaskStatus};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// On a Task: the spec the robot ran before this version (JSON), or
/// [`ABSENT`].
pub const ANN_PREVIOUS_SPEC: &str = "rollout.k8s4r.io/previous-spec";
/// [`ANN_PREVIOUS_SPEC`] of a task the new version adds: going back stops it.
pub const ABSENT: &str = "absent";
/// On a Task: `healthyDeadlineMs,minHealthyTimeMs`: revert on the robot.
pub const ANN_AUTO_REVERT: &str = "rollout.k8s4r.io/auto-revert";
/// The status reason of a task the robot put back on its previous version.
pub const REASON: &str = "RolledBack";
/// In a task directory: the task holds an update lock.
pub const LOCK_FILE: &str = "k8s4r-update.lock";
/// On a Task: its rollout's lockDeadline passed; update despite the lock.
pub const ANN_LOCK_OVERRIDE: &str = "rollout.k8s4r.io/lock-override";
/// How often a held lock is looked at again.
const LOCK_RECHECK: Duration = Duration::from_secs(1);

/// What the server offered for one task. Specs are kept as text, not as
/// `TaskSpec`s: serializing a `TaskSpec` (or parsing one from another
/// reader) would compile a second copy of its serde code into the agent,
/// about 130 KiB on aarch64.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Offer {
    /// The new spec's identity ([`spec_id`]): the offer holds for it only.
    new: String,
    /// The previous version's spec, as the server sent it (JSON), or [`ABSENT`].
    previous: String,
    deadline_ms: u64,
    min_healthy_ms: u64,
    /// Why the robot went back, once it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reverted: Option<String>,
}

/// What the supervisor shows of a task's unit now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub running: bool,
    pub failed: bool,
    pub restarts: u32,
}

#[derive(Default)]
struct Watch {
    first_seen: Option<Instant>,
    run: Option<(Instant, u32)>,
    healthy: bool,
}

#[derive(Default)]
pub struct Rollback {
    file: Option<PathBuf>,
    offers: BTreeMap<String, Offer>,
    watch: BTreeMap<String, Watch>,
    /// The spec each task of the last set runs (in its order), and whether
    /// the server overrides its lock.
    applied: Vec<(String, Arc<DesiredSpec>)>,
    overridden: std::collections::BTreeSet<String>,
    /// Tasks whose new spec waits for their lock.
    deferred: std::collections::BTreeSet<String>,
    /// Tasks that went back to not existing: stopped, still reported.
    stopped: Vec<AssignedTask>,
}

/// Where a task goes back to.
#[derive(Debug, PartialEq)]
pub enum Previous {
    Spec(Box<TaskSpec>),
    /// The previous version has no such task: stop it.
    Absent,
}

/// A spec's identity that survives agent restarts and updates: SHA-256 of
/// its `Debug` form (std's hasher may change between Rust releases).
fn spec_id(spec: &TaskSpec) -> String {
    use sha2::{Digest, Sha256};
    crate::api::hex::encode(&Sha256::digest(format!("{spec:?}").as_bytes()))
}

/// The previous spec of an offer, through the one typed decoder the agent
/// already has (as every answer is read).
fn parse_spec(text: &str) -> Option<TaskSpec> {
    let value = serde_json::from_slice(text.as_bytes()).ok()?;
    crate::api::decode::decode_typed(value).ok().map(|d| d.object)
}

fn previous(text: &str) -> Option<Previous> {
    if text == ABSENT {
        return Some(Previous::Absent);
    }
    parse_spec(text).map(|s| Previous::Spec(Box::new(s)))
}

fn offer_of(t: &Task) -> Option<Offer> {
    let ann = &t.metadata.annotations;
    let (deadline, min) = ann.get(ANN_AUTO_REVERT)?.split_once(',')?;
    let previous = ann.get(ANN_PREVIOUS_SPEC)?;
    self::previous(previous)?;
    Some(Offer {
        new: spec_id(&t.spec),
        previous: previous.clone(),
        deadline_ms: deadline.parse().ok()?,
        min_healthy_ms: min.parse().ok()?,
        reverted: None,
    })
}

impl Rollback {
    /// The state kept in `data_dir` (none yet: empty).
    pub fn load(data_dir: &Path) -> Rollback {
        let file = data_dir.join("rollback.json");
        let offers = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Rollback {
            file: Some(file),
            offers,
            ..Default::default()
        }
    }

    fn save(&self) -> Result<(), String> {
        let Some(file) = &self.file else { return Ok(()) };
        let bytes = serde_json::to_vec(&self.offers).map_err(|e| e.to_string())?;
        crate::atomic_file::write(file, &bytes, 0o600).map_err(|e| format!("{}: {e}", file.display()))
    }

    /// A new desired set from the server: keep the offers it makes (a
    /// reverted task stays reverted while the server still asks for the
    /// spec it went back from). The complete set: each of its tasks
    /// changed, and every other name removed.
    pub fn learn(&mut self, tasks: &[Task]) -> Result<(), String> {
        let present = |n: &String| tasks.iter().any(|t| t.metadata.name == *n);
        let mut gone: Vec<String> = Vec::new();
        for name in self.offers.keys().chain(&self.overridden).chain(self.watch.keys()) {
            if !present(name) && !gone.contains(name) {
                gone.push(name.clone());
            }
        }
        self.learn_changes(tasks, &gone)
    }

    /// What a delta changed: the tasks it added or changed, and the names
    /// it removed.
    pub fn learn_changes(&mut self, changed: &[Task], removed: &[String]) -> Result<(), String> {
        let mut offers_changed = false;
        for name in removed {
            self.overridden.remove(name);
            self.watch.remove(name);
            offers_changed |= self.offers.remove(name).is_some();
        }
        for t in changed {
            let name = &t.metadata.name;
            if t.metadata.annotations.contains_key(ANN_LOCK_OVERRIDE) {
                self.overridden.insert(name.clone());
            } else {
                self.overridden.remove(name);
            }
            let Some(mut offer) = offer_of(t) else {
                self.watch.remove(name);
                offers_changed |= self.offers.remove(name).is_some();
                continue;
            };
            match self.offers.get(name).filter(|o| o.new == offer.new) {
                Some(old) => offer.reverted = old.reverted.clone(),
                None => {
                    self.watch.remove(name);
                }
            }
            if self.offers.get(name) != Some(&offer) {
                self.offers.insert(name.clone(), offer);
                offers_changed = true;
            }
        }
        if offers_changed {
            self.save()?;
        }
        Ok(())
    }

    /// The spec task `name` (desired `spec`) runs now, given what the
    /// supervisor `seen` of it at `now`; and when to look again. Goes back
    /// to the previous spec when the new one fails or is not healthy in time.
    pub fn choose(
        &mut self,
        name: &str,
        spec: &TaskSpec,
        seen: Option<Seen>,
        now: Instant,
    ) -> (Option<Previous>, Option<Instant>) {
        let Some(offer) = self.offers.get_mut(name) else {
            return (None, None);
        };
        if offer.new != spec_id(spec) {
            return (None, None);
        }
        if offer.reverted.is_some() {
            return (previous(&offer.previous), None);
        }
        let w = self.watch.entry(name.to_string()).or_default();
        if w.healthy {
            return (None, None);
        }
        let first = *w.first_seen.get_or_insert(now);
        let min = Duration::from_millis(offer.min_healthy_ms);
        let deadline = crate::agent::clock::after(first, Duration::from_millis(offer.deadline_ms));
        let seen = seen.unwrap_or(Seen {
            running: false,
            failed: false,
            restarts: 0,
        });
        let mut why = None;
        if seen.failed {
            why = Some("the new version failed".to_string());
        } else if seen.running {
            let (since, restarts) = *w.run.get_or_insert((now, seen.restarts));
            if restarts != seen.restarts {
                w.run = Some((now, seen.restarts));
            } else if now.saturating_duration_since(since) >= min {
                w.healthy = true;
                return (None, None);
            }
        } else {
            w.run = None;
        }
        if why.is_none() && now >= deadline {
            why = Some(format!(
                "the new version was not healthy within healthyDeadline ({:?})",
                Duration::from_millis(offer.deadline_ms)
            ));
        }
        match why {
            Some(why) => {
                offer.reverted = Some(why);
                let previous = previous(&offer.previous);
                // Kept even if the write fails: going back matters more.
                let _ = self.save();
                (previous, None)
            }
            None => {
                let healthy_at = w.run.map(|(s, _)| crate::agent::clock::after(s, min));
                (None, Some(healthy_at.map_or(deadline, |h| h.min(deadline))))
            }
        }
    }

    /// `tasks` as they run now: a task whose new version failed its health
    /// runs its previous spec, or, if the previous version has no such
    /// task, is left out (and kept for [`Rollback::stopped`]); a changed
    /// spec waits while its task holds an update lock. None: all run as
    /// they are (no copy of the set is made: this runs on every wake-up).
    /// Also when to look again. `tasks` is in name order (as the connected
    /// loop keeps its set). `same_names`: the caller knows `tasks` has
    /// the names of the set of the call before (the connected loop does,
    /// from the answers), so they are not compared again (with 1,000 tasks
    /// that was 1,000 string comparisons per wake-up).
    pub fn apply(
        &mut self,
        tasks: &[AssignedTask],
        same_names: bool,
        rec: &Reconciler,
        sup: &impl Units,
        now: Instant,
    ) -> (Option<Vec<AssignedTask>>, Option<Instant>) {
        let mut wake: Option<Instant> = None;
        self.deferred.clear();
        self.stopped.clear();
        // Per task that does not run as it is: its spec, or None (left out).
        let mut altered: Vec<(usize, Option<Arc<DesiredSpec>>)> = Vec::new();
        // What each task ran last time, at the task's index (rebuilt when
        // the set's names change, not on every wake-up).
        let aligned = |applied: &[(String, Arc<DesiredSpec>)]| {
            applied.len() == tasks.len() && applied.iter().zip(tasks).all(|((n, _), t)| *n == t.name)
        };
        debug_assert!(
            tasks.windows(2).all(|w| w[0].name < w[1].name),
            "the set is not in name order"
        );
        if same_names && self.applied.len() == tasks.len() {
            debug_assert!(aligned(&self.applied), "told the names are the same, yet they differ");
        } else {
            // Both in name order (the set by contract, `applied` as made
            // from an earlier set): one walk of both, each name moved, not
            // cloned, and no name compared more than the walk needs (with
            // 1,000 tasks, checking both orders and the alignment first
            // was most of this call's cost on a turn that adds a task).
            let mut old = std::mem::take(&mut self.applied).into_iter().peekable();
            self.applied = tasks
                .iter()
                .map(|t| {
                    ordered::reaches(&mut old, |(n, _)| n.as_str(), &t.name)
                        .then(|| old.next())
                        .flatten()
                        .unwrap_or_else(|| (t.name.clone(), Arc::clone(&t.spec)))
                })
                .collect();
        }
        for (i, t) in tasks.iter().enumerate() {
            let applied = &mut self.applied[i].1;
            // An update lock holds a changed spec back. (The lock file is
            // looked at only for a changed spec.)
            if !Arc::ptr_eq(applied, &t.spec) && **applied != *t.spec {
                let running = sup.view(&t.name).filter(|v| v.phase.pid().is_some());
                if running.is_some_and(|v| !self.overridden.contains(&t.name) && v.dir.join(LOCK_FILE).exists()) {
                    self.deferred.insert(t.name.clone());
                    wake = wake
                        .into_iter()
                        .chain(Some(crate::agent::clock::after(now, LOCK_RECHECK)))
                        .min();
                    altered.push((i, Some(Arc::clone(applied))));
                    continue;
                }
            }
            if !Arc::ptr_eq(applied, &t.spec) {
                *applied = Arc::clone(&t.spec);
            }
            if !self.offers.contains_key(&t.name) {
                continue;
            }
            let seen = sup.view(&t.name).map(|v| {
                let outcome = rec.outcome(t, sup);
                Seen {
                    running: outcome == Outcome::Running,
                    failed: matches!(outcome, Outcome::Failed(_)),
                    restarts: v.restarts,
                }
            });
            let (back, at) = self.choose(&t.name, &t.spec, seen, now);
            wake = wake.into_iter().chain(at).min();
            match back {
                Some(Previous::Spec(spec)) => altered.push((i, Some((*spec).into()))),
                Some(Previous::Absent) => {
                    self.stopped.push(t.clone());
                    altered.push((i, None));
                }
                None => {}
            }
        }
        if altered.is_empty() {
            return (None, wake);
        }
        let mut out = Vec::with_capacity(tasks.len());
        let mut next = altered.into_iter().peekable();
        for (i, t) in tasks.iter().enumerate() {
            match next.next_if(|(j, _)| *j == i) {
                Some((_, Some(spec))) => out.push(AssignedTask { spec, ..t.clone() }),
                Some((_, None)) => {}
                None => out.push(t.clone()),
            }
        }
        (Some(out), wake)
    }

    /// The tasks the last [`Rollback::apply`] left out because their
    /// previous version does not have them: still desired by the server,
    /// so their status (reverted) is still reported.
    pub fn stopped(&self) -> &[AssignedTask] {
        &self.stopped
    }

    /// Does any task's status carry a mark now ([`Self::mark`]), or is
    /// any task stopped by a revert?
    pub fn marks_any(&self) -> bool {
        !self.deferred.is_empty() || !self.offers.is_empty() || !self.stopped.is_empty()
    }

    /// A task the robot put back on its previous version says so in its status.
    pub fn mark(&self, name: &str, status: &mut TaskStatus) {
        if self.deferred.contains(name) {
            status.update_locked = Some(true);
        }
        if let Some((offer, why)) = self.offers.get(name).and_then(|o| Some((o, o.reverted.as_ref()?))) {
            let stopped = if offer.previous == ABSENT {
                ", which does not have this task (stopped)"
            } else {
                ""
            };
            status.reason = Some(REASON.to_string());
            status.message = Some(format!("the robot went back to the previous version{stopped}: {why}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(v: &str, offer: bool) -> Task {
        let mut t: Task = serde_json::from_value(json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Task",
            "metadata": {"name": "t"}, "spec": {"name": "main", "driver": "exec", "env": {"V": v}}}))
        .unwrap();
        if offer {
            let prev = json!({"name": "main", "driver": "exec", "env": {"V": "1"}}).to_string();
            t.metadata.annotations.insert(ANN_PREVIOUS_SPEC.into(), prev);
            t.metadata
                .annotations
                .insert(ANN_AUTO_REVERT.into(), "5000,1000".into());
        }
        t
    }

    /// The V of the spec a task went back to.
    fn back_to(p: Option<Previous>) -> String {
        match p {
            Some(Previous::Spec(s)) => s.env["V"].clone(),
            other => panic!("not back to a spec: {other:?}"),
        }
    }

    const RUNNING: Seen = Seen {
        running: true,
        failed: false,
        restarts: 0,
    };

    #[test]
    fn a_failing_new_version_goes_back_at_once_and_stays_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut rb = Rollback::load(dir.path());
        let t = task("2", true);
        rb.learn(std::slice::from_ref(&t)).unwrap();
        let now = Instant::now();
        let (spec, wake) = rb.choose("t", &t.spec, Some(RUNNING), now);
        assert!(spec.is_none());
        assert_eq!(wake, Some(now + Duration::from_secs(1)));
        let failed = Seen {
            failed: true,
            ..RUNNING
        };
        let (spec, _) = rb.choose("t", &t.spec, Some(failed), now);
        assert_eq!(back_to(spec), "1");
        let mut st = TaskStatus::default();
        rb.mark("t", &mut st);
        assert_eq!(st.reason.as_deref(), Some(REASON));
        // A restarted agent (same offer from its cache) stays back.
        let mut again = Rollback::load(dir.path());
        again.learn(std::slice::from_ref(&t)).unwrap();
        assert_eq!(back_to(again.choose("t", &t.spec, None, now).0), "1");
        // The server moves the task on (here: back to version 1): done.
        again.learn(&[task("1", false)]).unwrap();
        assert!(again.choose("t", &task("1", false).spec, None, now).0.is_none());
    }

    #[test]
    fn healthy_in_time_keeps_the_new_version_restarts_start_over_and_the_deadline_reverts() {
        let mut rb = Rollback::default();
        let t = task("2", true);
        rb.learn(std::slice::from_ref(&t)).unwrap();
        let now = Instant::now();
        rb.choose("t", &t.spec, Some(RUNNING), now);
        let restarted = Seen { restarts: 1, ..RUNNING };
        assert!(rb
            .choose("t", &t.spec, Some(restarted), now + Duration::from_millis(900))
            .0
            .is_none());
        // 1 s after the first start but only 0.1 s into the restarted run.
        assert!(rb
            .choose("t", &t.spec, Some(restarted), now + Duration::from_millis(1000))
            .0
            .is_none());
        assert!(rb
            .choose("t", &t.spec, Some(restarted), now + Duration::from_millis(1900))
            .0
            .is_none());
        // Healthy: never reverted afterwards, even past the deadline.
        assert!(rb.choose("t", &t.spec, None, now + Duration::from_secs(9)).0.is_none());

        let mut rb = Rollback::default();
        rb.learn(std::slice::from_ref(&t)).unwrap();
        rb.choose("t", &t.spec, None, now);
        assert!(rb
            .choose("t", &t.spec, None, now + Duration::from_millis(4999))
            .0
            .is_none());
        assert!(rb.choose("t", &t.spec, None, now + Duration::from_secs(5)).0.is_some());
        // No offer: nothing to do.
        assert_eq!(rb.choose("x", &t.spec, None, now), (None, None));
    }

    #[test]
    fn an_added_task_that_fails_is_stopped_and_stays_stopped_until_the_server_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut rb = Rollback::load(dir.path());
        let mut t = task("2", true);
        t.metadata.annotations.insert(ANN_PREVIOUS_SPEC.into(), ABSENT.into());
        rb.learn(std::slice::from_ref(&t)).unwrap();
        let now = Instant::now();
        assert_eq!(rb.choose("t", &t.spec, Some(RUNNING), now).0, None);
        let failed = Seen {
            failed: true,
            ..RUNNING
        };
        assert_eq!(rb.choose("t", &t.spec, Some(failed), now).0, Some(Previous::Absent));
        let mut st = TaskStatus::default();
        rb.mark("t", &mut st);
        assert_eq!(st.reason.as_deref(), Some(REASON));
        let msg = st.message.unwrap_or_default();
        assert!(
            msg.contains("does not have this task") && msg.contains("failed"),
            "{msg}"
        );
        // A restarted agent keeps it stopped.
        let mut again = Rollback::load(dir.path());
        again.learn(std::slice::from_ref(&t)).unwrap();
        assert_eq!(again.choose("t", &t.spec, None, now).0, Some(Previous::Absent));
        // Not healthy in time stops it too.
        let mut late = Rollback::default();
        late.learn(std::slice::from_ref(&t)).unwrap();
        late.choose("t", &t.spec, None, now);
        let past = now + Duration::from_secs(5);
        assert_eq!(late.choose("t", &t.spec, None, past).0, Some(Previous::Absent));
        // The server deletes it (a revert): nothing is kept.
        again.learn(&[]).unwrap();
        assert_eq!(again.choose("t", &t.spec, None, now), (None, None));
    }

    #[test]
    fn an_offer_with_a_previous_spec_that_does_not_parse_is_ignored() {
        let mut t = task("2", true);
        t.metadata
            .annotations
            .insert(ANN_PREVIOUS_SPEC.into(), "absent-ish".into());
        let mut rb = Rollback::default();
        rb.learn(std::slice::from_ref(&t)).unwrap();
        let failed = Seen {
            failed: true,
            ..RUNNING
        };
        assert_eq!(rb.choose("t", &t.spec, Some(failed), Instant::now()), (None, None));
    }

    /// A supervisor that runs nothing (no task has started yet).
    /// Units as a test fixes them: none, or every one running in a
    /// directory (where its task may hold the update lock).
    struct Fixed(Option<(std::path::PathBuf, crate::agent::supervisor::machine::Phase)>);

    const NO_UNITS: Fixed = Fixed(None);

    impl Units for Fixed {
        fn now(&self) -> Instant {
            Instant::now()
        }
        fn view(&self, _: &str) -> Option<crate::agent::supervisor::UnitView<'_>> {
            self.0.as_ref().map(|(dir, phase)| crate::agent::supervisor::UnitView {
                phase,
                restarts: 0,
                health: None,
                last_exit: None,
                dir,
                label: "",
            })
        }
        fn names(&self) -> Vec<&str> {
            Vec::new()
        }
        fn has_process(&self, _: &str) -> bool {
            self.0.is_some()
        }
        fn ensure(&mut self, _: crate::agent::supervisor::UnitSpec) {}
        fn retain(&mut self, _: &dyn Fn(&str) -> bool) {}
        fn take_changes(&mut self) -> Vec<crate::agent::supervisor::Change> {
            Vec::new()
        }
    }

    use crate::agent::reconcile::tests::reconciler;

    /// What a locked task ran survives the set's names changing around it
    /// (tasks added before, between and after it, others removed).
    #[test]
    fn a_locked_task_keeps_what_it_ran_while_the_names_around_it_change() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOCK_FILE), "").unwrap();
        let rec = reconciler(dir.path());
        let units = Fixed(Some((
            dir.path().to_path_buf(),
            crate::agent::supervisor::machine::Phase::Running { pid: 1, deadline: None },
        )));
        let assigned = |name: &str, v: &str| AssignedTask {
            name: name.into(),
            job_type: crate::api::JobType::Service,
            group: "g".into(),
            spec: task(v, false).spec.into(),
        };
        let v = |ts: &[AssignedTask], name: &str| ts.iter().find(|t| t.name == name).unwrap().spec.env["V"].clone();
        let mut rb = Rollback::default();
        let now = Instant::now();
        let (run, _) = rb.apply(&[assigned("b", "1"), assigned("d", "1")], false, &rec, &units, now);
        assert!(run.is_none(), "first sight: as they are");
        // In name order: a and c added, d removed, b changed (held back).
        let set_of = |specs: &[(&str, &str)]| specs.iter().map(|(n, v)| assigned(n, v)).collect::<Vec<_>>();
        let set = set_of(&[("a", "1"), ("b", "2"), ("c", "1"), ("e", "1")]);
        let run = rb.apply(&set, false, &rec, &units, now).0.expect("b held back");
        assert_eq!(v(&run, "b"), "1", "b keeps running what it ran");
        assert_eq!((v(&run, "a"), v(&run, "e")), ("1".into(), "1".into()));
        // e removed, f added last, b changed again.
        let set = set_of(&[("a", "1"), ("b", "3"), ("c", "1"), ("f", "1")]);
        let run = rb.apply(&set, false, &rec, &units, now).0.expect("b still held back");
        assert_eq!(v(&run, "b"), "1");
        assert_eq!(run.len(), 4);
        // The same names again, said so by the caller (not compared): as before.
        let run = rb.apply(&set, true, &rec, &units, now).0.expect("b held back still");
        assert_eq!((v(&run, "b"), run.len()), ("1".into(), 4));
    }

    /// A caller that says the names are the same when they are not is
    /// caught in debug builds (every test), not followed.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "told the names are the same, yet they differ")]
    fn same_names_said_wrongly_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let rec = reconciler(dir.path());
        let one = |name: &str| AssignedTask {
            name: name.into(),
            job_type: crate::api::JobType::Service,
            group: "g".into(),
            spec: task("1", false).spec.into(),
        };
        let mut rb = Rollback::default();
        let now = Instant::now();
        rb.apply(&[one("a")], false, &rec, &NO_UNITS, now);
        rb.apply(&[one("b")], true, &rec, &NO_UNITS, now);
    }

    #[test]
    fn apply_leaves_out_an_added_task_gone_back_and_keeps_it_to_report() {
        let dir = tempfile::tempdir().unwrap();
        let rec = reconciler(dir.path());
        let mut added = task("2", true);
        added
            .metadata
            .annotations
            .insert(ANN_PREVIOUS_SPEC.into(), ABSENT.into());
        let mut other = task("1", false);
        other.metadata.name = "u".into();
        let tasks = [added, other];
        let mut rb = Rollback::default();
        rb.learn(&tasks).unwrap();
        let assigned: Vec<AssignedTask> = tasks
            .iter()
            .map(|t| AssignedTask {
                name: t.metadata.name.clone(),
                job_type: crate::api::JobType::Service,
                group: "g".into(),
                spec: t.spec.clone().into(),
            })
            .collect();
        let now = Instant::now();
        let (run, wake) = rb.apply(&assigned, false, &rec, &NO_UNITS, now);
        assert!(run.is_none(), "both run as they are");
        assert_eq!(wake, Some(now + Duration::from_secs(5)));
        assert!(rb.stopped().is_empty());
        // Not started within healthyDeadline: stopped, still reported.
        let (run, _) = rb.apply(&assigned, false, &rec, &NO_UNITS, now + Duration::from_secs(5));
        let names = |ts: &[AssignedTask]| ts.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&run.unwrap()), ["u"]);
        assert_eq!(names(rb.stopped()), ["t"]);
    }
}
