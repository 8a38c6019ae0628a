//! Controllers: level-triggered reconcilers run by one worker over a
//! de-duplicating queue. The [`Hub`] feeds the cache from the store's watch
//! and turns changes into work (and into wake-ups for long-polling robots).
//!
//! Everything here acts on the store through the [`Registry`]. Every
//! replica keeps the cache (it serves the robots' long polls); only the
//! elected leader (`server::election`, on etcd) runs the workers:
//! [`run_when_leading`] starts them when leadership is gained and stops them
//! when it is lost. [`run`] is the single-replica case (always leading).
//!
//! The cache (`server::cache`) and the fleet (`server::fleet`) sit beside
//! this module; the labels and annotations written here are in
//! `server::annotations`, stored Task fields are read through
//! `server::stored_task`, and Task objects are built in `task_objects.rs`.

mod agent_releases;
pub mod disconnect;
mod gc;
mod job_status;
pub mod jobs;
pub mod liveness;
pub mod rollout;
mod snapshot;
mod system;
mod task_objects;

use crate::server::annotations::ANN_ORIGINAL_ROBOT;
use crate::server::cache::{Cache, Change, RESOURCES};
use crate::server::events::Recorder;
use crate::server::fleet::Fleet;
use crate::server::object;
use crate::server::registry::Registry;
use crate::server::status::Status;
use crate::server::store::{EventKind, StoreError};
use crate::server::stored_task;
use futures_util::FutureExt;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// One unit of work.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Work {
    /// Reconcile a Job: its TaskGroups, Tasks, placement and status.
    Job { namespace: String, name: String },
    /// Delete objects whose owners are gone.
    Gc,
    /// Mark silent robots Offline and their tasks Lost.
    Liveness,
    /// The status of the AgentReleases (one plan over the fleet).
    AgentReleases,
}

/// What a reconcile asks for next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Done,
    RequeueAfter(Duration),
}

/// A FIFO of work that holds each item at most once.
pub struct Queue {
    tx: mpsc::UnboundedSender<Work>,
    pending: Mutex<HashSet<Work>>,
}

impl Queue {
    fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<Work>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Queue {
                tx,
                pending: Mutex::new(HashSet::new()),
            }),
            rx,
        )
    }

    pub fn add(&self, w: Work) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.insert(w.clone()) {
            let _ = self.tx.send(w);
        }
    }

    fn take(&self, w: &Work) {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(w);
    }

    pub fn add_after(self: &Arc<Self>, w: Work, d: Duration) {
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            q.add(w);
        });
    }
}

/// The cache plus the fan-out of its changes.
pub struct Hub {
    pub cache: Arc<Cache>,
    pub fleet: Arc<Fleet>,
    pub queue: Arc<Queue>,
    /// The AgentRelease plans polls read; the controller refreshes them
    /// before it wakes robots that enter a window.
    pub rollouts: crate::server::agent_rollout::Memo,
}

/// What of a Robot matters to scheduling (not its heartbeat time).
fn robot_facts(v: &Value) -> (Option<&Value>, Option<&Value>, Option<&Value>) {
    (
        v.get("status").and_then(|s| s.get("phase")),
        object::meta(v).and_then(|m| m.get("labels")),
        v.get("spec"),
    )
}

/// One key's state at a revision, for [`Hub::apply_all`].
pub struct State<'a> {
    pub resource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub revision: u64,
    /// None: deleted.
    pub new: Option<Arc<Value>>,
}

impl Hub {
    /// Apply one state to the cache and fan out the change, if any.
    pub fn apply(&self, resource: &str, ns: &str, name: &str, revision: u64, new: Option<Arc<Value>>) {
        if let Some(c) = self.cache.apply(resource, ns, name, revision, new) {
            self.dispatch(&c);
        }
    }

    /// Apply several states, then fan out their changes. States that share
    /// a revision (the creates of one etcd transaction) must come through
    /// here together: a robot's long poll is answered once per revision
    /// (the one it is woken with), so a robot woken after the first of
    /// its Tasks reached the cache and answered before the second would
    /// not hear of the second until its next change.
    pub fn apply_all<'a>(&self, states: impl IntoIterator<Item = State<'a>>) {
        let changes: Vec<Change> = states
            .into_iter()
            .filter_map(|s| self.cache.apply(s.resource, s.namespace, s.name, s.revision, s.new))
            .collect();
        for c in &changes {
            self.dispatch(c);
        }
    }

    fn job_of(c: &Change) -> Option<String> {
        let v = c.new.as_deref().or(c.prev.as_deref())?;
        stored_task::job_name(v).map(str::to_string)
    }

    fn dispatch(&self, c: &Change) {
        let ns = c.namespace.clone();
        match c.resource {
            "tasks" => {
                self.fleet.on_task_change(c);
                // A returning robot's copy kept or let go without a move:
                // its desired set changed.
                let original = |v: &Option<Arc<Value>>| {
                    v.as_deref()
                        .and_then(|v| object::annotation(v, ANN_ORIGINAL_ROBOT))
                        .map(str::to_string)
                };
                let (before, after) = (original(&c.prev), original(&c.new));
                if before != after {
                    for robot in [before, after].into_iter().flatten() {
                        self.fleet.wake(&ns, &robot, c.revision);
                    }
                }
                if let Some(job) = Self::job_of(c) {
                    self.queue.add(Work::Job {
                        namespace: ns,
                        name: job,
                    });
                }
            }
            // An operator's pause, resume or promote reaches the Job's rollout.
            "taskgroups" | "rollouts" => {
                if let Some(job) = Self::job_of(c) {
                    self.queue.add(Work::Job {
                        namespace: ns,
                        name: job,
                    });
                }
                if c.new.is_none() {
                    self.queue.add(Work::Gc);
                }
            }
            "jobs" => {
                self.queue.add(Work::Job {
                    namespace: ns,
                    name: c.name.clone(),
                });
                if c.new.is_none() {
                    self.queue.add(Work::Gc);
                }
            }
            "agentreleases" => self.queue.add(Work::AgentReleases),
            "robots" => {
                // Only what a rollout plan reads: a persisted heartbeat
                // (a thousand a second in a big fleet) changes none of it.
                let facts = |v: &Option<Arc<Value>>| v.as_deref().map(crate::server::agent_rollout::RobotFacts::of);
                if facts(&c.prev) != facts(&c.new) {
                    self.queue.add(Work::AgentReleases);
                }
                let changed = c.prev.as_deref().map(robot_facts) != c.new.as_deref().map(robot_facts);
                if c.new.is_none() {
                    self.fleet.forget(&ns, &c.name);
                }
                if changed {
                    // Placement may change for every job of the namespace;
                    // higher priority first.
                    let mut jobs: Vec<(i64, String)> = self
                        .cache
                        .list("jobs", Some(&ns))
                        .iter()
                        .map(|j| {
                            let p = j
                                .get("spec")
                                .and_then(|s| s.get("priority"))
                                .and_then(Value::as_i64)
                                .unwrap_or(50);
                            (-p, object::name(j).to_string())
                        })
                        .collect();
                    jobs.sort();
                    for (_, name) in jobs {
                        self.queue.add(Work::Job {
                            namespace: ns.clone(),
                            name,
                        });
                    }
                    // Liveness acts on robots that went away or changed
                    // phase, at once rather than at its next tick. A robot
                    // that just registered gives it nothing to do: a
                    // whole-fleet scan per registration made registering
                    // N robots cost O(N²) (three quarters of the server's
                    // CPU while 10,000 registered).
                    let phase_changed = match (c.prev.as_deref(), c.new.as_deref()) {
                        (Some(prev), Some(new)) => robot_facts(prev).0 != robot_facts(new).0,
                        (_, None) => true,
                        (None, Some(_)) => false,
                    };
                    if phase_changed {
                        self.queue.add(Work::Liveness);
                    }
                }
            }
            _ => {}
        }
    }

    /// Keep the cache in step with the store: list everything, then watch;
    /// re-list when the watch falls behind. Signals `synced` after the
    /// first full list.
    pub async fn run(self: Arc<Self>, registry: Registry, synced: watch::Sender<bool>) {
        let store = registry.store().clone();
        loop {
            let start = match store.revision().await {
                Ok(r) => r,
                Err(e) => {
                    log::error!("cache: reading the store revision: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Before the list: robots first seen while listing must start
            // at this revision, so agents that polled before a restart get
            // their full set at once.
            self.fleet.set_base_revision(start);
            let mut ok = true;
            for res in RESOURCES {
                match store.list(res, None).await {
                    Ok(listed) => {
                        let present: HashSet<(String, String)> = listed
                            .items
                            .iter()
                            .map(|s| (s.key.namespace.clone(), s.key.name.clone()))
                            .collect();
                        let gone = self.cache.missing_from(res, &present);
                        let gone = gone.iter().map(|(ns, name)| State {
                            resource: res,
                            namespace: ns,
                            name,
                            revision: listed.revision,
                            new: None,
                        });
                        // Objects listed may share a revision: applied whole.
                        let mut items = listed.items;
                        let listed = items.iter_mut().map(|s| State {
                            resource: res,
                            namespace: &s.key.namespace,
                            name: &s.key.name,
                            revision: s.revision,
                            new: Some(s.value.clone()),
                        });
                        self.apply_all(gone.chain(listed));
                    }
                    Err(e) => {
                        log::error!("cache: listing {res}: {e}");
                        ok = false;
                        break;
                    }
                }
            }
            if !ok {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            let _ = synced.send(true);
            let mut w = match store.watch(start) {
                // The cache must see every change and a re-list costs it
                // every object: it holds the history through a burst.
                Ok(mut w) => {
                    w.hold();
                    w
                }
                Err(e) => {
                    log::warn!("cache: watch from {start}: {e}; re-listing");
                    continue;
                }
            };
            loop {
                match w.next_revision().await {
                    Ok(events) => {
                        let revision = events.last().map_or(0, |e| e.revision);
                        self.apply_all(events.iter().map(|ev| State {
                            resource: &ev.key.resource,
                            namespace: &ev.key.namespace,
                            name: &ev.key.name,
                            revision: ev.revision,
                            new: match ev.kind {
                                EventKind::Deleted => None,
                                _ => Some(ev.value.clone()),
                            },
                        }));
                        self.cache.compact(revision);
                    }
                    Err(StoreError::Expired { .. }) => {
                        log::warn!("cache: watch fell behind; re-listing");
                        break;
                    }
                    Err(e) => {
                        log::error!("cache: watch failed: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
            }
        }
    }
}

/// What reconcilers share.
pub struct Ctx {
    pub registry: Registry,
    pub hub: Arc<Hub>,
    pub events: Recorder,
    /// Robots a system group's replica does not fit on, and why, as last
    /// told in a FailedScheduling event (told again only when it changes).
    unfit: Mutex<system::Unfit>,
    /// Robots each AgentRelease was last offered to (woken when they enter).
    offered: Mutex<agent_releases::Offered>,
}

impl Ctx {
    fn cache(&self) -> &Cache {
        &self.hub.cache
    }

    /// Write-through: record an object we just wrote.
    /// Write-through of `v` as written (the tree the store's watch history
    /// holds too, where the store shares it).
    fn wrote(&self, resource: &str, v: &Arc<Value>) {
        if let Some(rev) = object::resource_version(v) {
            self.hub
                .apply(resource, object::namespace(v), object::name(v), rev, Some(v.clone()));
        }
    }

    /// Write-through of objects written together (one store batch, whose
    /// creates may share a revision: see [`Hub::apply_all`]).
    fn wrote_all(&self, resource: &str, objects: Vec<Arc<Value>>) {
        self.hub.apply_all(objects.iter().filter_map(|v| {
            Some(State {
                resource,
                namespace: object::namespace(v),
                name: object::name(v),
                revision: object::resource_version(v)?,
                new: Some(v.clone()),
            })
        }));
    }

    fn deleted(&self, resource: &str, v: &Value) {
        if let Some(rev) = object::resource_version(v) {
            self.hub
                .apply(resource, object::namespace(v), object::name(v), rev, None);
        }
    }
}

/// Start the hub, the worker and the periodic ticks. Returns the hub (for
/// the agent API) once the cache has its first full view.
pub async fn run(registry: Registry, fleet: Arc<Fleet>, events: Recorder) -> Arc<Hub> {
    run_when_leading(registry, fleet, events, watch::channel(true).1).await
}

/// [`run`] on one of several replicas: the cache always, the workers only
/// while `leader` says this replica leads.
pub async fn run_when_leading(
    registry: Registry,
    fleet: Arc<Fleet>,
    events: Recorder,
    leader: watch::Receiver<bool>,
) -> Arc<Hub> {
    let (hub, work) = start_cache(registry.clone(), fleet).await;
    start_workers(registry, hub.clone(), work, events, leader);
    hub
}

/// The part every server replica runs: the cache (the agent API answers
/// from it) and the work queue it fills. Returns once the cache holds a full
/// view.
pub async fn start_cache(registry: Registry, fleet: Arc<Fleet>) -> (Arc<Hub>, mpsc::UnboundedReceiver<Work>) {
    let (queue, rx) = Queue::new();
    let hub = Arc::new(Hub {
        cache: Arc::new(Cache::default()),
        fleet,
        queue,
        rollouts: Default::default(),
    });
    let (synced_tx, mut synced_rx) = watch::channel(false);
    crate::server::panics::spawn_essential("the cache", hub.clone().run(registry, synced_tx));
    let _ = synced_rx.wait_for(|s| *s).await;
    (hub, rx)
}

/// The part only the leader runs: the reconcile worker and its ticks. Work
/// queued while `leader` is false is dropped; on gaining leadership every
/// Job is reconciled afresh from the cache.
pub fn start_workers(
    registry: Registry,
    hub: Arc<Hub>,
    mut rx: mpsc::UnboundedReceiver<Work>,
    events: Recorder,
    leader: watch::Receiver<bool>,
) {
    let queue = hub.queue.clone();
    let fleet = hub.fleet.clone();
    let ctx = Ctx {
        registry,
        hub: hub.clone(),
        events,
        unfit: Mutex::default(),
        offered: Mutex::default(),
    };
    let leading = leader.clone();
    crate::server::panics::spawn_essential("the reconcile worker", async move {
        while let Some(w) = rx.recv().await {
            ctx.hub.queue.take(&w);
            if !*leading.borrow() {
                continue;
            }
            let work = async {
                match &w {
                    Work::Job { namespace, name } => jobs::reconcile(&ctx, namespace, name).await,
                    Work::Gc => gc::collect(&ctx).await,
                    Work::Liveness => liveness::check(&ctx).await,
                    Work::AgentReleases => agent_releases::reconcile(&ctx).await,
                }
            };
            // A reconcile that panics (a bug, counted in /metrics) must not
            // stop every other Job's: it is retried later, like an error.
            let outcome: Result<Next, Status> = std::panic::AssertUnwindSafe(work)
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(Status::internal("the reconcile panicked")));
            match outcome {
                Ok(Next::Done) => {}
                Ok(Next::RequeueAfter(d)) => ctx.hub.queue.add_after(w, d),
                Err(e) if e.reason == "Conflict" || e.reason == "AlreadyExists" || e.code == 404 => {
                    // Raced with another writer: the cache will catch up.
                    log::debug!("reconcile {w:?}: {e}; retrying");
                    ctx.hub.queue.add_after(w, Duration::from_millis(50));
                }
                Err(e) => {
                    log::error!("reconcile {w:?}: {e}");
                    ctx.hub.queue.add_after(w, Duration::from_secs(2));
                }
            }
        }
    });

    // Ticks: liveness often (bounded by the offline threshold), GC rarely.
    let q = queue.clone();
    let f = fleet.clone();
    let ticks_leader = leader.clone();
    crate::server::panics::spawn_essential("the controller ticks", async move {
        let mut gc_at = tokio::time::Instant::now();
        loop {
            let tick = (f.offline_after() / 4).clamp(Duration::from_millis(100), Duration::from_secs(2));
            tokio::time::sleep(tick).await;
            if !*ticks_leader.borrow() {
                continue;
            }
            q.add(Work::Liveness);
            if gc_at.elapsed() >= Duration::from_secs(60) {
                gc_at = tokio::time::Instant::now();
                q.add(Work::Gc);
            }
        }
    });
    crate::server::panics::spawn_essential("the leadership watcher", async move {
        let mut leader = leader;
        while leader.wait_for(|l| *l).await.is_ok() {
            queue.add(Work::Gc);
            // Also moves releases stored under a namespace to the cluster scope.
            queue.add(Work::AgentReleases);
            for j in hub.cache.list("jobs", None) {
                queue.add(Work::Job {
                    namespace: object::namespace(&j).to_string(),
                    name: object::name(&j).to_string(),
                });
            }
            if leader.wait_for(|l| !*l).await.is_err() {
                break;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::fleet::FleetConfig;
    use serde_json::json;

    /// 300 Tasks of one robot share a revision (one etcd transaction): the
    /// moment the robot's revision shows it, every one of them is in the
    /// cache. A poll reads the revision first and the set after it, so one
    /// answered in between would carry part of the set under the whole
    /// one's revision and never be told the rest. A second thread reads as
    /// a poll does, as fast as it can, while the hub takes the revision.
    #[test]
    fn a_robot_woken_at_a_shared_revision_finds_all_of_it_in_the_cache() {
        const TASKS: usize = 300;
        let (queue, _work) = Queue::new();
        let hub = Arc::new(Hub {
            cache: Arc::new(Cache::default()),
            fleet: Arc::new(Fleet::new(FleetConfig::default())),
            queue,
            rollouts: Default::default(),
        });
        let start = hub.fleet.revision("d", "r1");
        let rev = start + 10;
        let reader = std::thread::spawn({
            let hub = hub.clone();
            move || loop {
                if hub.fleet.revision("d", "r1") >= rev {
                    return hub.cache.tasks_on_robot("d", "r1").len();
                }
                std::hint::spin_loop();
            }
        });
        let tasks: Vec<(String, Arc<Value>)> = (0..TASKS)
            .map(|i| {
                let name = format!("t{i:03}");
                let task = json!({"metadata": {"name": name, "namespace": "d", "uid": name},
                                  "spec": {"targetRobot": "r1", "jobName": "j"}});
                (name, Arc::new(task))
            })
            .collect();
        hub.apply_all(tasks.iter().map(|(name, task)| State {
            resource: "tasks",
            namespace: "d",
            name,
            revision: rev,
            new: Some(task.clone()),
        }));
        assert_eq!(reader.join().unwrap(), TASKS, "woken with part of the revision");
    }

    /// A robot that registers queues no whole-fleet liveness scan (one per
    /// registration made registering N robots O(N²)); one that goes away
    /// or changes phase does, at once.
    #[test]
    fn liveness_is_queued_when_a_robot_leaves_or_changes_phase_not_when_one_registers() {
        let (queue, mut work) = Queue::new();
        let hub = Hub {
            cache: Arc::new(Cache::default()),
            fleet: Arc::new(Fleet::new(FleetConfig::default())),
            queue,
            rollouts: Default::default(),
        };
        let robot = |phase: &str| {
            Arc::new(
                json!({"metadata": {"name": "r1", "namespace": "d", "uid": "u1", "labels": {"a": "b"}},
                            "status": {"phase": phase}}),
            )
        };
        let mut revision = 0;
        let mut apply = |new: Option<Arc<Value>>| {
            revision += 1;
            hub.apply_all(std::iter::once(State {
                resource: "robots",
                namespace: "d",
                name: "r1",
                revision,
                new,
            }));
            let mut queued = Vec::new();
            while let Ok(w) = work.try_recv() {
                hub.queue.take(&w);
                queued.push(w);
            }
            queued.contains(&Work::Liveness)
        };
        assert!(!apply(Some(robot("Online"))), "registered");
        assert!(apply(Some(robot("Offline"))), "phase changed");
        assert!(!apply(Some(robot("Offline"))), "nothing it reads changed");
        assert!(apply(None), "deleted");
    }
}
