//! The rollout planner: a pure function from a snapshot of one task group's
//! replicas (which version each runs, its robot's Online state, its health
//! as reported) to the replicas that get the new version now, the ones that
//! go back to the base version, and where the group's rollout stands. No
//! I/O, no clock: `now_ms` comes in, so every rule is unit-tested here.
//!
//! The rules, in order:
//! - a settled rollout settles every replica: Succeeded puts the new
//!   version on all (an offline robot gets it when it comes back), Failed
//!   with autoRevert puts the base version on all, Failed without it only
//!   makes a half replica (a task deleted by hand) whole at the version it
//!   shows;
//! - no update block, a revert, or no base version of the group (the
//!   Job's first version, or a group new in this one): every replica at
//!   once, never reverted;
//! - an updated replica found unhealthy, or no progress for
//!   progressDeadline, fails the rollout (autoRevert: back to base);
//! - canaries first (until promoted), then maxParallel at a time, each batch
//!   only once the previous one is healthy (system jobs: `stagger` apart);
//! - an offline robot is never picked, never failed, never waited for: it
//!   is counted pending and gets the settled version when it returns;
//! - a robot whose task holds an update lock keeps its slot (the rollout
//!   waits for it) until the lock goes or `lockDeadline` passes, when the
//!   lock is overridden.

use crate::api::rollout::RolloutState;
use crate::api::update_strategy::Strategy;
use std::time::Duration;

/// One replica of the group (one robot's copy, for system jobs).
#[derive(Clone, Debug, PartialEq)]
pub struct Replica {
    /// Runs the rollout's version (its tasks' specs are that version's).
    pub on_target: bool,
    /// Runs the base version.
    pub on_base: bool,
    /// Shows the new version: a task at a spec only the new version has
    /// (also when the replica is neither whole on target nor on base).
    pub shows_target: bool,
    /// Its robot is Online.
    pub online: bool,
    /// Health of the new version on it (meaningful when `on_target`).
    pub health: Health,
    /// When the new version was written to it (ms since the epoch).
    pub updated_at_ms: Option<i64>,
    /// Since when (ms) its robot holds the new version back by an update lock.
    pub locked_since_ms: Option<i64>,
}

/// An updated replica's health, read from what its robot reports.
#[derive(Clone, Debug, PartialEq)]
pub enum Health {
    /// Not (yet) healthy; healthy at the earliest this far from now.
    Waiting(Option<Duration>),
    /// Healthy since this time (ms since the epoch).
    Healthy(i64),
    /// Failed, or not healthy within healthyDeadline.
    Unhealthy(String),
}

/// What the planner needs beyond the replicas.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    /// The group's update block with defaults; `None`: all at once.
    pub strategy: Option<&'a Strategy>,
    /// System job: percentages and `stagger` apply.
    pub system: bool,
    /// The rollout's stored state.
    pub state: RolloutState,
    pub paused: bool,
    pub promoted: bool,
    /// A revert: restores a known version at once.
    pub at_once: bool,
    /// The group has a base version to keep and revert to.
    pub has_base: bool,
    /// When the rollout started (ms since the epoch).
    pub started_ms: i64,
    pub now_ms: i64,
}

/// Where the group's rollout stands.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Progressing,
    Paused,
    WaitingForPromotion,
    /// Every online replica runs the new version, healthy.
    Done,
    Failed(String),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    pub total: usize,
    pub updated: usize,
    pub healthy: usize,
    pub unhealthy: usize,
    pub pending: usize,
    pub canaries: usize,
    pub locked: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Indices of replicas to put on the new version now.
    pub update: Vec<usize>,
    /// Indices of replicas to put back on the base version now.
    pub revert: Vec<usize>,
    /// Indices of locked replicas whose lockDeadline passed: update anyway.
    pub override_lock: Vec<usize>,
    pub outcome: Outcome,
    /// The canaries are placed and healthy, and the group promotes itself.
    pub auto_promote: bool,
    /// Look again after this long (a health or a deadline falls due).
    pub wake_in: Option<Duration>,
    pub counts: Counts,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The time from `now` until `at`, if it is still ahead.
fn until(at: i64, now: i64) -> Option<Duration> {
    let left = at.checked_sub(now)?;
    (left > 0).then(|| Duration::from_millis(left as u64))
}

fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Replicas that are not on `version` (by the test `on`).
fn all_but(replicas: &[Replica], on: impl Fn(&Replica) -> bool) -> Vec<usize> {
    (0..replicas.len()).filter(|i| !on(&replicas[*i])).collect()
}

fn healthy_new(r: &Replica) -> bool {
    r.on_target && matches!(r.health, Health::Healthy(_))
}

pub fn plan(input: &Input<'_>, replicas: &[Replica]) -> Plan {
    let now = input.now_ms;
    let in_flight =
        |r: &Replica| r.on_target && r.online && r.locked_since_ms.is_none() && matches!(r.health, Health::Waiting(_));
    let locked = |r: &Replica| r.on_target && r.online && r.locked_since_ms.is_some();
    let counts = Counts {
        total: replicas.len(),
        updated: replicas.iter().filter(|r| r.on_target).count(),
        healthy: replicas.iter().filter(|r| healthy_new(r)).count(),
        unhealthy: replicas
            .iter()
            .filter(|r| r.on_target && r.online && matches!(r.health, Health::Unhealthy(_)))
            .count(),
        pending: replicas.iter().filter(|r| !r.online && !healthy_new(r)).count(),
        canaries: 0,
        locked: replicas.iter().filter(|r| locked(r)).count(),
    };
    let mut out = Plan {
        update: vec![],
        revert: vec![],
        override_lock: vec![],
        outcome: Outcome::Progressing,
        auto_promote: false,
        wake_in: None,
        counts,
    };
    let auto_revert = input.strategy.is_some_and(|s| s.auto_revert) && input.has_base;
    let fail = |mut out: Plan, why: String| {
        if auto_revert {
            out.revert = all_but(replicas, |r| r.on_base);
        }
        out.outcome = Outcome::Failed(why);
        out
    };
    match input.state {
        RolloutState::Succeeded => {
            out.update = all_but(replicas, |r| r.on_target);
            out.outcome = Outcome::Done;
            return out;
        }
        RolloutState::Failed | RolloutState::Superseded => {
            let mut out = fail(out, "failed".into());
            if !auto_revert {
                // Nothing goes back, but a replica left half (a task
                // deleted by hand) is made whole at the version it shows.
                for (i, r) in replicas.iter().enumerate().filter(|(_, r)| !r.on_target && !r.on_base) {
                    if r.shows_target {
                        out.update.push(i);
                    } else {
                        out.revert.push(i);
                    }
                }
            }
            return out;
        }
        _ => {}
    }
    let Some(s) = input.strategy.filter(|_| !input.at_once && input.has_base) else {
        out.update = all_but(replicas, |r| r.on_target);
        out.outcome = Outcome::Done;
        return out;
    };

    // Health first: one unhealthy updated replica fails the rollout.
    if let Some(why) = replicas.iter().find_map(|r| match &r.health {
        Health::Unhealthy(why) if r.on_target && r.online => Some(why.clone()),
        _ => None,
    }) {
        return fail(out, why);
    }
    // Progress: the in-flight batch must bring a healthy replica within
    // progressDeadline of its start or of the last healthy one.
    let last_healthy = replicas
        .iter()
        .filter_map(|r| match r.health {
            Health::Healthy(at) if r.on_target => Some(at),
            _ => None,
        })
        .max();
    let flight_start = replicas
        .iter()
        .filter(|r| in_flight(r))
        .filter_map(|r| r.updated_at_ms)
        .min();
    if let Some(start) = flight_start {
        let since = last_healthy.map_or(start, |h| h.max(start)).max(input.started_ms);
        let deadline = since.saturating_add(ms(s.progress_deadline));
        if now >= deadline {
            return fail(
                out,
                format!(
                    "no replica became healthy within progressDeadline ({:?})",
                    s.progress_deadline
                ),
            );
        }
        out.wake_in = until(deadline, now);
    }
    for r in replicas.iter().filter(|r| in_flight(r)) {
        if let Health::Waiting(w) = r.health {
            out.wake_in = earliest(out.wake_in, w);
        }
    }
    // A held lock is waited for up to lockDeadline, then overridden.
    for (i, r) in replicas.iter().enumerate().filter(|(_, r)| locked(r)) {
        let until_ms = r.locked_since_ms.unwrap_or(now).saturating_add(ms(s.lock_deadline));
        match until(until_ms, now) {
            Some(wait) => out.wake_in = earliest(out.wake_in, Some(wait)),
            None => out.override_lock.push(i),
        }
    }

    let total = replicas.len();
    let eligible: Vec<usize> = (0..total)
        .filter(|i| !replicas[*i].on_target && replicas[*i].online)
        .collect();
    // A locked robot keeps its slot: the rollout waits for it.
    let flying = replicas.iter().filter(|r| in_flight(r) || locked(r)).count();
    let canaries = s.canary.of(total).min(total);
    if !input.promoted && canaries > 0 {
        out.counts.canaries = out.counts.updated.min(canaries);
        if out.counts.healthy >= canaries {
            if s.auto_promote {
                out.auto_promote = true;
            } else {
                out.outcome = Outcome::WaitingForPromotion;
                return out;
            }
        } else {
            if input.paused {
                out.outcome = Outcome::Paused;
                return out;
            }
            let want = canaries.saturating_sub(out.counts.updated);
            out.update = eligible.into_iter().take(want).collect();
            return out;
        }
    }
    if eligible.is_empty() && flying == 0 {
        out.outcome = Outcome::Done;
        return out;
    }
    if input.paused {
        out.outcome = Outcome::Paused;
        return out;
    }
    let parallel = s.max_parallel.of(total).max(1);
    let budget = parallel.saturating_sub(flying);
    if budget == 0 {
        return out;
    }
    if input.system {
        // The next batch starts `stagger` after the last one started.
        let last_batch = replicas.iter().filter_map(|r| r.updated_at_ms).max();
        if let Some(at) = last_batch.map(|t| t.saturating_add(ms(s.stagger))) {
            if let Some(wait) = until(at, now) {
                out.wake_in = earliest(out.wake_in, Some(wait));
                return out;
            }
        }
    }
    out.update = eligible.into_iter().take(budget).collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::update_strategy::{CountOrPercent, UpdateStrategy};

    const NOW: i64 = 1_000_000;

    fn strategy(f: impl FnOnce(&mut Strategy)) -> Strategy {
        let mut s = UpdateStrategy::default().resolve();
        f(&mut s);
        s
    }

    fn input(s: &Strategy) -> Input<'_> {
        Input {
            strategy: Some(s),
            system: false,
            state: RolloutState::Progressing,
            paused: false,
            promoted: false,
            at_once: false,
            has_base: true,
            started_ms: NOW - 1000,
            now_ms: NOW,
        }
    }

    fn old() -> Replica {
        Replica {
            on_target: false,
            on_base: true,
            shows_target: false,
            online: true,
            health: Health::Waiting(None),
            updated_at_ms: None,
            locked_since_ms: None,
        }
    }

    fn new(health: Health) -> Replica {
        Replica {
            on_target: true,
            on_base: false,
            shows_target: true,
            online: true,
            health,
            updated_at_ms: Some(NOW - 500),
            locked_since_ms: None,
        }
    }

    fn offline(mut r: Replica) -> Replica {
        r.online = false;
        r
    }

    #[test]
    fn one_at_a_time_each_after_the_previous_is_healthy() {
        let s = strategy(|_| {});
        let i = input(&s);
        assert_eq!(plan(&i, &[old(), old(), old()]).update, [0]);
        let waiting = [new(Health::Waiting(Some(Duration::from_secs(3)))), old(), old()];
        let p = plan(&i, &waiting);
        assert!(p.update.is_empty());
        assert_eq!(p.outcome, Outcome::Progressing);
        assert_eq!(p.wake_in, Some(Duration::from_secs(3)));
        assert_eq!(plan(&i, &[new(Health::Healthy(NOW)), old(), old()]).update, [1]);
        let done = plan(&i, &vec![new(Health::Healthy(NOW)); 3]);
        assert_eq!(done.outcome, Outcome::Done);
        assert_eq!(done.counts.healthy, 3);
    }

    #[test]
    fn max_parallel_percentage_of_a_system_group() {
        let s = strategy(|s| {
            s.max_parallel = CountOrPercent::Percent(10);
            s.stagger = Duration::ZERO;
        });
        let mut i = input(&s);
        i.system = true;
        let replicas = vec![old(); 1000];
        assert_eq!(plan(&i, &replicas).update.len(), 100);
    }

    #[test]
    fn stagger_spaces_system_batches() {
        let s = strategy(|s| s.stagger = Duration::from_secs(30));
        let mut i = input(&s);
        i.system = true;
        let p = plan(&i, &[new(Health::Healthy(NOW)), old()]);
        assert!(p.update.is_empty());
        assert_eq!(p.wake_in, Some(Duration::from_millis(29_500)));
        i.now_ms = NOW + 30_000;
        assert_eq!(plan(&i, &[new(Health::Healthy(NOW)), old()]).update, [1]);
    }

    #[test]
    fn canary_then_wait_for_promotion_then_the_rest() {
        let s = strategy(|s| {
            s.canary = CountOrPercent::Count(1);
            s.max_parallel = CountOrPercent::Count(2);
        });
        let mut i = input(&s);
        let p = plan(&i, &[old(), old(), old()]);
        assert_eq!(p.update, [0]);
        let canary = [new(Health::Healthy(NOW)), old(), old()];
        let p = plan(&i, &canary);
        assert_eq!(p.outcome, Outcome::WaitingForPromotion);
        assert!(p.update.is_empty());
        assert_eq!(p.counts.canaries, 1);
        i.promoted = true;
        assert_eq!(plan(&i, &canary).update, [1, 2]);
    }

    #[test]
    fn auto_promote_goes_on_by_itself() {
        let s = strategy(|s| {
            s.canary = CountOrPercent::Count(1);
            s.auto_promote = true;
        });
        let p = plan(&input(&s), &[new(Health::Healthy(NOW)), old()]);
        assert!(p.auto_promote);
        assert_eq!(p.update, [1]);
    }

    #[test]
    fn an_unhealthy_canary_fails_and_auto_revert_reverts_it_only() {
        let s = strategy(|s| {
            s.canary = CountOrPercent::Count(1);
            s.auto_revert = true;
        });
        let replicas = [new(Health::Unhealthy("exited with code 1".into())), old(), old()];
        let p = plan(&input(&s), &replicas);
        assert_eq!(p.outcome, Outcome::Failed("exited with code 1".into()));
        assert_eq!(p.revert, [0]);
        assert!(p.update.is_empty());
        // Settled as failed: stays reverted, nobody gets the new version.
        let mut i = input(&s);
        i.state = RolloutState::Failed;
        let p = plan(&i, &replicas);
        assert_eq!((p.update.len(), p.revert.clone()), (0, vec![0]));
        // Without autoRevert the failed replica is left as it is.
        let s = strategy(|s| s.canary = CountOrPercent::Count(1));
        assert!(plan(&input(&s), &replicas).revert.is_empty());
        // Settled as failed without autoRevert: whole replicas stay, half
        // ones (a task deleted by hand) are made whole at the version they
        // show.
        let half = |shows_target| Replica {
            on_target: false,
            on_base: false,
            shows_target,
            ..old()
        };
        let mut i = input(&s);
        i.state = RolloutState::Failed;
        let p = plan(&i, &[new(Health::Healthy(NOW)), old(), half(true), half(false)]);
        assert_eq!((p.update, p.revert), (vec![2], vec![3]));
    }

    #[test]
    fn offline_robots_are_skipped_counted_pending_and_settled_later() {
        let s = strategy(|_| {});
        let i = input(&s);
        let replicas = [offline(old()), old()];
        let p = plan(&i, &replicas);
        assert_eq!(p.update, [1]);
        assert_eq!(p.counts.pending, 1);
        // Updated, then cut off before healthy: neither failed nor blocking.
        let cut = [offline(new(Health::Unhealthy("gone".into()))), old()];
        let p = plan(&i, &cut);
        assert_eq!(p.outcome, Outcome::Progressing);
        assert_eq!(p.update, [1]);
        // Everyone online is done: the rollout is done; settling then
        // writes the new version for the offline robot too.
        let p = plan(&i, &[offline(old()), new(Health::Healthy(NOW))]);
        assert_eq!(p.outcome, Outcome::Done);
        let mut settled = i.clone();
        settled.state = RolloutState::Succeeded;
        assert_eq!(plan(&settled, &[offline(old()), new(Health::Healthy(NOW))]).update, [0]);
    }

    #[test]
    fn a_locked_robot_is_waited_for_then_overridden_at_the_deadline() {
        let s = strategy(|s| s.lock_deadline = Duration::from_secs(60));
        let i = input(&s);
        let mut held = new(Health::Waiting(None));
        held.locked_since_ms = Some(NOW - 1000);
        let p = plan(&i, &[held.clone(), old()]);
        assert_eq!(p.counts.locked, 1);
        assert!(p.update.is_empty(), "maxParallel 1: the locked robot keeps its slot");
        assert!(p.override_lock.is_empty());
        assert_eq!(p.wake_in, Some(Duration::from_secs(59)));
        assert_eq!(p.outcome, Outcome::Progressing);
        held.locked_since_ms = Some(NOW - 60_000);
        assert_eq!(plan(&i, &[held, old()]).override_lock, [0]);
    }

    #[test]
    fn progress_deadline_fails_a_stuck_batch() {
        let s = strategy(|s| {
            s.progress_deadline = Duration::from_secs(60);
            s.auto_revert = true;
        });
        let mut i = input(&s);
        let mut stuck = new(Health::Waiting(None));
        stuck.updated_at_ms = Some(NOW - 61_000);
        i.started_ms = NOW - 61_000;
        let p = plan(&i, &[stuck, old()]);
        assert!(matches!(p.outcome, Outcome::Failed(ref w) if w.contains("progressDeadline")));
        assert_eq!(p.revert, [0]);
    }

    #[test]
    fn pause_holds_new_updates_but_not_failure() {
        let s = strategy(|_| {});
        let mut i = input(&s);
        i.paused = true;
        let p = plan(&i, &[new(Health::Healthy(NOW)), old()]);
        assert_eq!((p.outcome, p.update.len()), (Outcome::Paused, 0));
        let p = plan(&i, &[new(Health::Unhealthy("x".into())), old()]);
        assert!(matches!(p.outcome, Outcome::Failed(_)));
    }

    #[test]
    fn no_update_block_first_version_and_reverts_go_at_once() {
        let s = strategy(|_| {});
        let mut i = input(&s);
        i.strategy = None;
        assert_eq!(plan(&i, &[old(), old()]).update, [0, 1]);
        let mut i = input(&s);
        i.at_once = true;
        assert_eq!(plan(&i, &[old(), offline(old())]).update, [0, 1]);
        let mut i = input(&s);
        i.has_base = false;
        assert_eq!(plan(&i, &[old(), old()]).outcome, Outcome::Done);
    }

    #[test]
    fn a_group_without_a_base_is_never_reverted() {
        // A group new in this version: its replicas have nothing to go
        // back to (reverting would delete what the next pass creates).
        let s = strategy(|s| s.auto_revert = true);
        let mut i = input(&s);
        i.has_base = false;
        let replicas = [new(Health::Unhealthy("exited".into())), old()];
        let p = plan(&i, &replicas);
        assert!(p.revert.is_empty());
        assert_eq!(p.update, [1]);
        i.state = RolloutState::Failed;
        assert!(plan(&i, &replicas).revert.is_empty());
    }
}
