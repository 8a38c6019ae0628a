//! A reconciler told what changed ([`Since::Touched`]) decides as one that
//! compares the set whole: both driven through the same long run of
//! changes (tasks added, removed and respecced, groups gaining and losing
//! init daemons, stopped tasks that take a while to end), each with its own supervisor. Inside the told one, debug builds
//! check its books against the whole walk after every change
//! (`books::Reconciler::bookkeep`); here, what both ran and wanted, and
//! that the wanted set's `dropped` names are exactly what left it.

use super::tests::{reconciler, Running};
use super::*;
use crate::agent::supervisor::{Change, UnitView};

/// A supervisor stand-in: starts what a plan asks, stops what it no longer
/// wants (a `slow` task only on the pass after), and checks `dropped`.
struct Fleet {
    running: Running,
    stopping: BTreeSet<String>,
    wanted: BTreeSet<String>,
    version: u64,
    droppings_checked: usize,
}

impl Fleet {
    fn new() -> Fleet {
        Fleet {
            running: Running::new(),
            stopping: BTreeSet::new(),
            wanted: BTreeSet::new(),
            version: 0,
            droppings_checked: 0,
        }
    }
}

impl Units for Fleet {
    fn now(&self) -> Instant {
        self.running.now()
    }
    fn view(&self, name: &str) -> Option<UnitView<'_>> {
        self.running.view(name)
    }
    fn names(&self) -> Vec<&str> {
        self.running.names()
    }
    fn has_process(&self, name: &str) -> bool {
        self.running.has_process(name)
    }
    fn ensure(&mut self, spec: UnitSpec) {
        self.stopping.remove(&spec.name);
        self.running.set(&spec.name, Phase::Running { pid: 7, deadline: None });
    }
    fn retain(&mut self, wanted: &dyn Fn(&str) -> bool) {
        let stopping = &mut self.stopping;
        self.running.units.retain(|name, _| {
            let slow = name.ends_with("-slow") && stopping.insert(name.clone());
            wanted(name) || slow
        });
        self.stopping.retain(|n| self.running.units.contains_key(n));
    }
    fn take_changes(&mut self) -> Vec<Change> {
        Vec::new()
    }
    fn apply(&mut self, plan: Plan) {
        if plan.wanted_version == self.version + 1 {
            if let Some(dropped) = &plan.dropped {
                let left: BTreeSet<String> = self.wanted.difference(&plan.wanted).cloned().collect();
                assert_eq!(dropped.iter().cloned().collect::<BTreeSet<_>>(), left, "dropped");
                self.droppings_checked += 1;
            }
        }
        self.wanted = (*plan.wanted).clone();
        self.version = plan.wanted_version;
        for spec in plan.units {
            self.ensure(spec);
        }
        let wanted = plan.wanted;
        self.retain(&|n| wanted.contains(n));
    }
}

/// A small deterministic generator (xorshift), so a failure replays.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % sides as u64) as usize
    }
}

/// Task `task` of replica `replica` of group `group`, its init tasks
/// `daemons`, its spec told apart by `env`.
fn assigned(group: &str, replica: i32, task: &str, daemons: &[&str], env: usize) -> AssignedTask {
    AssignedTask {
        name: format!("j-{group}-r{replica}-{task}"),
        job_type: JobType::Service,
        group: group.into(),
        spec: Arc::new(DesiredSpec::from(TaskSpec {
            name: task.into(),
            job_name: Some("j".into()),
            task_group_name: Some(format!("j-{group}")),
            replica_index: Some(replica),
            init_tasks: daemons
                .iter()
                .map(|d| TaskSpec {
                    name: d.to_string(),
                    daemon: true,
                    ..Default::default()
                })
                .collect(),
            env: [("N".to_string(), env.to_string())].into(),
            ..Default::default()
        })),
    }
}

#[test]
fn a_reconciler_told_what_changed_decides_as_one_comparing_the_whole_set() {
    let dir = tempfile::tempdir().unwrap();
    let (mut told, mut whole) = (reconciler(dir.path()), reconciler(dir.path()));
    let (mut told_units, mut whole_units) = (Fleet::new(), Fleet::new());
    let mut dice = Dice(0x9e37_79b9_7f4a_7c15);
    let groups = ["a", "b", "c"];
    let daemon_sets: [&[&str]; 3] = [&[], &["sidecar"], &["sidecar", "log"]];
    let mut desired: BTreeMap<String, AssignedTask> = BTreeMap::new();
    for round in 0..400 {
        let mut touched = BTreeSet::new();
        for _ in 0..1 + dice.roll(3) {
            let (group, replica, task) = (groups[dice.roll(3)], dice.roll(4) as i32, ["t", "slow"][dice.roll(2)]);
            let name = format!("j-{group}-r{replica}-{task}");
            match dice.roll(4) {
                0 => {
                    desired.remove(&name);
                }
                // Tasks of a group share their init tasks: a new list is
                // the group's, given to each of its tasks.
                1 => {
                    let daemons = daemon_sets[dice.roll(3)];
                    for t in desired.values_mut().filter(|t| t.group == group) {
                        *t = assigned(group, t.replica(), &t.spec.name.clone(), daemons, round);
                        touched.insert(t.name.clone());
                    }
                }
                _ => {
                    let daemons = desired
                        .values()
                        .find(|t| t.group == group)
                        .map_or(&[][..], |t| daemon_sets[t.spec.init_tasks.len()]);
                    desired.insert(name.clone(), assigned(group, replica, task, daemons, dice.roll(2)));
                }
            }
            touched.insert(name);
        }
        let set: Vec<AssignedTask> = desired.values().cloned().collect();
        // Now and then told nothing: the next told change builds on that.
        let since = match dice.roll(10) {
            0 => Since::Unknown,
            _ => Since::Touched(touched),
        };
        told.tell(since);
        told.step(&set, &mut told_units, &mut |_| {});
        whole.step(&set, &mut whole_units, &mut |_| {});
        // And a step with nothing new, as most wake-ups are.
        told.tell(Since::Touched(BTreeSet::new()));
        told.step(&set, &mut told_units, &mut |_| {});
        whole.step(&set, &mut whole_units, &mut |_| {});
        assert_eq!(told_units.wanted, whole_units.wanted, "round {round}: wanted");
        let names = |f: &Fleet| f.running.units.keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(&told_units), names(&whole_units), "round {round}: units");
        // (Their books may differ for a while: a told change that changed
        // nothing, or an untold step after told ones, tidies them a step
        // early. The told one's are checked against the whole walk inside.)
    }
    assert!(told_units.droppings_checked > 100, "{}", told_units.droppings_checked);
    assert!(!told.departing.is_empty() || told_units.stopping.is_empty());
}
