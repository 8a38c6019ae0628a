//! What the reconciler remembers per group and task between passes (its
//! books), brought in line with the desired set after a change: the task
//! names seen per group with the units supporting them, the stamps of
//! what each task's unit was built from, and the wanted set (every unit
//! the set may need; the supervisor stops the others).
//!
//! Two ways to do it. Told nothing ([`Since::Unknown`]), the books are
//! walked beside the whole set in name order. Told which names the change
//! touched ([`Since::Touched`]: the connected loop knows it from each
//! answer), only those are looked at, with the names kept while their
//! process ends: with 1,000 tasks on the robot, a change of one costs a
//! few lookups instead of a dozen walks of every name (which, through the
//! memory latency of 1,000 separately allocated names, were a fifth of the
//! agent's CPU per change). The wanted set's change comes out as the names
//! it dropped ([`Plan::dropped`](crate::agent::supervisor::Plan::dropped)),
//! so the supervisor need not walk its units to find them. Debug builds
//! (every test) check that both ways agree after each change.

use super::{group_support, AssignedTask, Reconciler};
use crate::agent::layout::UnitId;
use crate::agent::ordered;
use crate::agent::robot_proxy::RobotProxy;
use crate::agent::supervisor::Units;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The desired set by group key.
pub(super) type Groups<'a> = BTreeMap<&'a str, Vec<&'a AssignedTask>>;

/// What the reconciler remembers of one group it has seen.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct GroupBooks {
    /// Its task units (one that left it kept while its process runs).
    pub tasks: BTreeSet<String>,
    /// Every unit that supported its tasks (init daemons, proxy): kept
    /// running while the group, gone, drains.
    pub support: BTreeSet<String>,
    /// The units supporting its tasks now.
    pub wants: BTreeSet<String>,
}

/// What changed in the desired set handed to
/// [`Reconciler::step`](super::Reconciler::step) since the set the step
/// before was handed, as the set's owner knows it
/// ([`Reconciler::tell`](super::Reconciler::tell)).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Since {
    /// Not known: the set is compared whole, name by name.
    #[default]
    Unknown,
    /// Only the tasks of these names can have been added, changed or
    /// removed, and the set is in name order (as the connected loop keeps
    /// it). Empty: the same set again.
    Touched(BTreeSet<String>),
}

impl Since {
    /// Add the names another change touched (nothing if not known anyway).
    pub fn add(&mut self, names: impl IntoIterator<Item = String>) {
        if let Since::Touched(touched) = self {
            touched.extend(names);
        }
    }
}

/// The task named `name` in `desired` (in name order).
pub fn task_named<'a>(desired: &'a [AssignedTask], name: &str) -> Option<&'a AssignedTask> {
    desired
        .binary_search_by(|t| t.name.as_str().cmp(name))
        .ok()
        .map(|i| &desired[i])
}

/// The books [`Reconciler::bookkeep`] keeps, as compared in debug builds.
#[cfg(debug_assertions)]
type Books = (
    BTreeMap<String, GroupBooks>,
    BTreeMap<String, u64>,
    BTreeMap<String, u64>,
    BTreeSet<String>,
);

impl Reconciler {
    /// The groups whose tasks a change of `touched` names can have
    /// changed: where each name is now and where it was seen.
    pub(super) fn groups_of(&self, desired: &[AssignedTask], touched: &BTreeSet<String>) -> BTreeSet<String> {
        debug_assert!(
            desired.is_sorted_by(|a, b| a.name < b.name),
            "told of changes, the set is in name order"
        );
        let mut out = BTreeSet::new();
        for name in touched {
            if let Some(t) = task_named(desired, name) {
                out.insert(t.group_key());
            }
            for (key, group) in &self.seen {
                if group.tasks.contains(name) {
                    out.insert(key.clone());
                }
            }
        }
        out
    }

    /// Bring the books in line with `desired` (grouped as `groups`) after
    /// the change `since` says.
    pub(super) fn bookkeep(&mut self, desired: &[AssignedTask], groups: &Groups<'_>, sup: &impl Units, since: &Since) {
        match since {
            Since::Touched(touched) => {
                #[cfg(debug_assertions)]
                let before = self.books();
                self.bookkeep_touched(desired, groups, touched, sup);
                #[cfg(debug_assertions)]
                {
                    let touched_way = self.books();
                    (self.seen, self.ensured, self.built, self.departing) = before;
                    self.bookkeep_all(desired, groups, sup);
                    assert_eq!(touched_way, self.books(), "the books after {touched:?}");
                }
            }
            Since::Unknown => self.bookkeep_all(desired, groups, sup),
        }
        self.bookkeep_groups(groups, sup);
    }

    #[cfg(debug_assertions)]
    fn books(&self) -> Books {
        (
            self.seen.clone(),
            self.ensured.clone(),
            self.built.clone(),
            self.departing.clone(),
        )
    }

    /// The books walked beside the whole set.
    fn bookkeep_all(&mut self, desired: &[AssignedTask], groups: &Groups<'_>, sup: &impl Units) {
        // Task names are forgotten once neither desired nor running: a group
        // that cycles through new task names must not remember every one.
        // The set in name order (as the connected loop hands it on) is
        // searched and walked as it is; any other order, through a set of
        // its names.
        let in_order = desired.windows(2).all(|w| w[0].name < w[1].name);
        let names: BTreeSet<&str> = match in_order {
            true => BTreeSet::new(),
            false => desired.iter().map(|t| t.name.as_str()).collect(),
        };
        let departing = &mut self.departing;
        departing.clear();
        for (key, group) in self.seen.iter_mut() {
            let mut next = groups.get(key.as_str()).into_iter().flatten().peekable();
            group.tasks.retain(|n| {
                let desired = match in_order {
                    // The group's tasks, in name order too: one walk.
                    true => ordered::reaches(&mut next, |t| t.name.as_str(), n),
                    false => names.contains(n.as_str()),
                };
                let kept = desired || sup.has_process(n);
                if !desired && kept {
                    departing.insert(n.clone());
                }
                kept
            });
        }
        // A task that left and comes back must be ensured again (it may have
        // been stopped meanwhile).
        for stamps in [&mut self.ensured, &mut self.built] {
            let mut next = desired.iter().peekable();
            stamps.retain(|n, _| match in_order {
                // Both in name order: one walk beside the set.
                true => ordered::reaches(&mut next, |t| t.name.as_str(), n),
                false => names.contains(n.as_str()),
            });
        }
        let mode = self.config.proxy_mode;
        for (key, tasks) in groups {
            if !self.seen.contains_key(*key) {
                self.seen.insert(key.to_string(), Default::default());
            }
            let Some(group) = self.seen.get_mut(*key) else {
                continue;
            };
            let seen = &mut group.tasks;
            // The group's tasks it does not know yet: a walk beside them
            // when in name order.
            let mut known = seen.iter().peekable();
            let new: Vec<String> = tasks
                .iter()
                .filter(|t| match in_order {
                    true => !ordered::reaches(&mut known, |k| k.as_str(), &t.name),
                    false => !seen.contains(&t.name),
                })
                .map(|t| t.name.clone())
                .collect();
            seen.extend(new);
            let wants = group_support(key, tasks, mode);
            group.support.extend(wants.iter().cloned());
            group.wants = wants;
        }
    }

    /// The books where the change `touched` names: each such name, and
    /// each kept only while its process ran, is looked up where it is now
    /// and where it was seen.
    fn bookkeep_touched(
        &mut self,
        desired: &[AssignedTask],
        groups: &Groups<'_>,
        touched: &BTreeSet<String>,
        sup: &impl Units,
    ) {
        let mut recheck = touched.clone();
        recheck.extend(self.departing.iter().cloned());
        for name in &recheck {
            let here = task_named(desired, name).map(AssignedTask::group_key_str);
            let mut kept = false;
            for (key, group) in self.seen.iter_mut() {
                if Some(key.as_str()) == here || !group.tasks.contains(name) {
                    continue;
                }
                match sup.has_process(name) {
                    true => kept = true,
                    false => {
                        group.tasks.remove(name);
                    }
                }
            }
            match kept {
                true => self.departing.insert(name.clone()),
                false => self.departing.remove(name),
            };
            match here {
                Some(key) => {
                    if !self.seen.contains_key(key) {
                        self.seen.insert(key.to_string(), Default::default());
                    }
                    if let Some(group) = self.seen.get_mut(key) {
                        group.tasks.insert(name.clone());
                    }
                }
                // A task that left and comes back must be ensured again.
                None => {
                    self.ensured.remove(name);
                    self.built.remove(name);
                }
            }
        }
        // Only a touched group's tasks can need other support units now.
        let mode = self.config.proxy_mode;
        for name in touched {
            let Some(key) = task_named(desired, name).map(AssignedTask::group_key_str) else {
                continue;
            };
            if let (Some(tasks), Some(group)) = (groups.get(key), self.seen.get_mut(key)) {
                let wants = group_support(key, tasks, mode);
                group.support.extend(wants.iter().cloned());
                group.wants = wants;
            }
        }
    }

    /// Groups no longer desired: kept, with their support units
    /// (`lingering`), while any of their tasks still runs.
    fn bookkeep_groups(&mut self, groups: &Groups<'_>, sup: &impl Units) {
        self.lingering.clear();
        self.seen.retain(|key, group| {
            let desired = groups.contains_key(key.as_str());
            let draining = !desired && group.tasks.iter().any(|n| sup.has_process(n));
            if draining {
                self.lingering.extend(group.support.iter().cloned());
            }
            desired || draining
        });
        if self.robot_proxy.is_some() {
            let draining: BTreeSet<String> = self
                .seen
                .keys()
                .filter(|k| !groups.contains_key(k.as_str()))
                .cloned()
                .collect();
            self.effects.push(super::Effect::ShareProxy { draining });
        }
    }

    /// Bring the wanted set (the names of every unit the desired set may
    /// need; anything else is stopped) in line with `desired` (grouped as
    /// `groups`) after the change `since` says and the bookkeeping that
    /// followed it, in place, noting what it dropped. True if it changed.
    pub(super) fn update_wanted(&mut self, desired: &[AssignedTask], groups: &Groups<'_>, since: &Since) -> bool {
        // The units supporting each unfinished group now (as bookkeeping
        // named them).
        let mut extra = BTreeSet::new();
        for (key, group) in &self.seen {
            if groups.contains_key(key.as_str()) && !self.finished.contains(key) {
                extra.extend(group.wants.iter().cloned());
            }
        }
        // Shared by every group with a network: wanted while one is a member.
        if self.robot_proxy.as_ref().is_some_and(RobotProxy::in_use) {
            extra.insert(UnitId::robot_proxy().name());
        }
        extra.extend(self.lingering.iter().cloned());
        let wanted = Arc::make_mut(&mut self.wanted);
        let mut dropped = Vec::new();
        let mut added = false;
        match since {
            Since::Unknown => {
                // The task names in name order: as the connected loop hands
                // them on; any other order through a set (whose code the
                // agent has already; a slice sort's would cost it kilobytes).
                let tasks: Vec<&str> = match desired.is_sorted_by(|a, b| a.name < b.name) {
                    true => desired.iter().map(|t| t.name.as_str()).collect(),
                    false => desired
                        .iter()
                        .map(|t| t.name.as_str())
                        .collect::<BTreeSet<&str>>()
                        .into_iter()
                        .collect(),
                };
                // Both in name order: one walk to drop, one to find what is new.
                let mut keep = tasks.iter().peekable();
                wanted.retain(|n| {
                    let kept = ordered::reaches(&mut keep, |k| k, n) || extra.contains(n);
                    if !kept {
                        dropped.push(n.clone());
                    }
                    kept
                });
                let mut have = wanted.iter().peekable();
                let new: Vec<String> = tasks
                    .iter()
                    .filter(|n| !ordered::reaches(&mut have, |h| h.as_str(), n))
                    .map(|n| n.to_string())
                    .collect();
                added = !new.is_empty();
                wanted.extend(new);
            }
            Since::Touched(touched) => {
                // What can have left: the names touched, and the units no
                // longer supporting anything.
                for name in touched.iter().chain(self.extra.difference(&extra)) {
                    if task_named(desired, name).is_none() && !extra.contains(name) && wanted.remove(name) {
                        dropped.push(name.clone());
                    }
                }
                for name in touched.iter().filter(|n| task_named(desired, n).is_some()) {
                    added |= wanted.insert(name.clone());
                }
            }
        }
        for name in &extra {
            if !wanted.contains(name) {
                added |= wanted.insert(name.clone());
            }
        }
        self.extra = extra;
        #[cfg(debug_assertions)]
        {
            let whole: BTreeSet<String> = desired
                .iter()
                .map(|t| t.name.clone())
                .chain(self.extra.iter().cloned())
                .collect();
            assert_eq!(*self.wanted, whole, "the wanted set after {since:?}");
        }
        let changed = added || !dropped.is_empty();
        self.dropped = dropped;
        changed
    }
}
