//! Connected mode: the robot registers with the control plane, long-polls
//! its complete desired set of tasks, runs it with the same reconcile code
//! as `run -f`, and reports statuses through an on-disk outbox.
//!
//! Three threads, no async runtime:
//! - the main thread owns the supervisor and reconciler and sleeps in the
//!   supervisor's poll(); the others wake it through its waker;
//! - the poller holds one long-poll open (`wait=30s`, or as long as the
//!   server holds it, an hour by default, while its TCP keepalive probes
//!   say both ends are there), which is also the heartbeat, and hands
//!   every new desired set to the main thread;
//! - the reporter sends the outbox (and the device facts when they change).
//!
//! Losing the server changes nothing on the robot: the last desired set is
//! cached on disk and keeps running; statuses wait in the outbox;
//! reconnects back off exponentially with jitter. SIGTERM exits cleanly and
//! leaves every task running for the next agent, which re-adopts them.
//!
//! The network is not trusted (plain HTTP, no TLS stack): every request is
//! signed by the robot's key (`keys`, `counter`), every answer must be
//! signed by the server's and bound to its request, and bodies are sealed
//! both ways (`channel`). An answer that fails a check is refused and
//! counts as the server being unreachable: it never changes what runs.

pub mod backoff;
mod changes;
pub mod channel;
#[cfg(test)]
mod channel_tests;
pub mod cli;
pub mod client;
pub mod config;
pub mod counter;
pub mod desired;
pub mod device_facts;
pub mod identity;
pub mod keys;
pub mod outbox;
pub mod register;
pub mod restart_delay;
pub mod waiting;

use super::reconcile::{self, AssignedTask, Outcome, ReconcileConfig, Reconciler, Since};
use super::supervisor::machine::{Exit, Phase};
use super::supervisor::{signals, Supervisor, SupervisorConfig, Waker};
use crate::agent::clock;
use crate::api::agent_protocol::{Assignments, StatusReport};
use crate::api::agent_release::{AgentUpdate, UpdateResult};
use crate::api::{JobType, Task, TaskState, TaskStatus};
use backoff::Backoff;
use client::{Client, ClientError};
use config::AgentConfig;
use identity::Identity;
use outbox::Outbox;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const DEFAULT_POLL_WAIT: Duration = Duration::from_secs(30);
/// Longest long poll, whatever the server asks for.
const MAX_POLL_WAIT: Duration = Duration::from_secs(3600);
/// Longest held poll (the server probes its connection meanwhile).
const MAX_POLL_HOLD: Duration = Duration::from_secs(86_400);
/// How often the device's facts are read; they go to the server only when
/// changed or due for a refresh (see [`device_facts`]).
pub const DEVICE_INFO_EVERY: Duration = device_facts::CHECK_EVERY;
const RETRY_BASE: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(60);

pub struct ConnectedOptions {
    pub config: AgentConfig,
    /// The config file, re-read while the server refuses the robot.
    pub watch: waiting::ConfigWatch,
    /// Largest artifact download, when set by flag or config file.
    pub artifact_max_bytes: Option<u64>,
    pub supervisor: SupervisorConfig,
    pub reconcile: ReconcileConfig,
    pub update: super::update::Settings,
}

/// What the poller hands to the main thread.
#[derive(Default)]
struct Inbox {
    latest: Option<desired::Update>,
    /// Since when the server has been unreachable (monotonic clock, so a
    /// robot's clock jump cannot shorten or stretch it).
    offline_since: Option<Instant>,
    /// The latest verified answer's agent update and release key.
    offer: Option<(Option<AgentUpdate>, Option<String>)>,
    /// A verified answer arrived (a new agent on probation is good).
    reached: bool,
    /// Since the last verified answer, the server answered but not
    /// acceptably: the network is up (a new agent's deadline counts).
    server_answers: bool,
}

/// State shared by the three threads, with a condition variable so the
/// background threads can sleep interruptibly.
struct Shared {
    inbox: Mutex<Inbox>,
    outbox: Mutex<Outbox>,
    /// A self-update result to report (set with the outbox locked).
    last_update: Mutex<Option<UpdateResult>>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    /// Hold `outbox` released for up to `d` (statuses keep coming in),
    /// returning early when told to stop and, if `woken_ends`, when woken.
    fn wait<'a>(&'a self, mut outbox: MutexGuard<'a, Outbox>, d: Duration, woken_ends: bool) -> MutexGuard<'a, Outbox> {
        let until = clock::after(Instant::now(), d);
        while !self.stop.load(Ordering::SeqCst) {
            let Some(left) = until.checked_duration_since(Instant::now()).filter(|l| !l.is_zero()) else {
                break;
            };
            outbox = self
                .changed
                .wait_timeout(outbox, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            if woken_ends {
                break;
            }
        }
        outbox
    }

    /// Sleep up to `d`, returning early when told to stop or when woken.
    fn pause(&self, d: Duration) {
        drop(self.wait(lock(&self.outbox), d, true));
    }
}

fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stderr().lock();
    let _ = writeln!(out, "{line}");
}

pub fn run(opts: ConnectedOptions) -> Result<i32, String> {
    let data_dir = opts.supervisor.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let (mut sup, notices) = Supervisor::new(opts.supervisor).map_err(|e| e.to_string())?;
    // The outbox's journal folded in before a rollback can happen: the
    // agent rolled back to reads outbox.json alone.
    let outbox = Outbox::open(&data_dir).map_err(|e| format!("outbox: {e}"))?;
    // With the data dir locked (one agent): a new agent on probation counts
    // this start, or rolls back before anything else.
    let mut updater = super::update::Updater::start(opts.update);
    if let Some(max) = opts.artifact_max_bytes {
        sup.set_artifact_max_bytes(max);
    }
    for n in notices {
        say(&format!("agent: {n}"));
    }
    // The robot's key and request counter, before anything is sent.
    let keys = keys::load_or_create(&data_dir).map_err(|e| e.to_string())?;
    let counter = counter::Counter::open(&data_dir).map_err(|e| format!("request counter: {e}"))?;
    let channel = Arc::new(channel::Channel::new(data_dir.clone(), keys, counter));
    let client = Client::new(&opts.config.server, Arc::clone(&channel));
    let Some(identity) = obtain_identity(&client, &opts.config, &opts.watch, &data_dir, &mut sup)? else {
        say("agent: signalled before registering; exiting");
        return Ok(0);
    };
    // Its kept-alive connection goes with it: an idle one left open would
    // cost the server's keepalive probes for as long as the agent runs.
    drop(client);
    say(&format!(
        "agent: robot {} connected to {}",
        identity.name, opts.config.server
    ));
    // The join token came from the config file: it is not needed again.
    let from_file = opts.watch.read.as_ref().ok().and_then(|f| f.get("K8S4R_JOIN_TOKEN"));
    if from_file.is_some_and(|t| !t.is_empty() && Some(t) == opts.config.join_token.as_ref()) {
        let file = std::path::Path::new(opts.watch.file());
        match config::forget_join_token(file) {
            Ok(true) => say(&format!(
                "agent: registered; removed the join token from {} (the robot's key and identity are kept in the data dir)",
                file.display()
            )),
            Ok(false) => {}
            Err(e) => say(&format!(
                "agent: could not remove the join token from {}: {e}",
                file.display()
            )),
        }
    }

    let shared = Arc::new(Shared {
        inbox: Mutex::new(Inbox::default()),
        outbox: Mutex::new(outbox),
        last_update: Mutex::new(None),
        changed: Condvar::new(),
        stop: AtomicBool::new(false),
    });
    let waker = sup.waker().map_err(|e| format!("waker: {e}"))?;
    let update_waker = Arc::new(sup.waker().map_err(|e| format!("waker: {e}"))?);
    // The last desired set keeps running until the server answers.
    let kept = desired::Kept::load(&data_dir);
    sup.settle_before_stopping(kept.owed());
    let mut desired = assigned_tasks(&kept.tasks(), &kept.group_names(), &[]);
    spawn_poller(
        Arc::clone(&shared),
        Client::new(&opts.config.server, Arc::clone(&channel)),
        waker,
        data_dir.clone(),
        kept,
    );
    spawn_reporter(
        Arc::clone(&shared),
        Client::new(&opts.config.server, channel),
        data_dir.clone(),
    );

    let mut rollback = super::rollback::Rollback::load(&data_dir);
    let mut rec = Reconciler::new(opts.reconcile);
    let mut queued = Queued::default();
    let mut changes = changes::Changes::default();
    // The set the revert looked at last turn was derived (offline stops).
    let mut derived_before = true;
    loop {
        // The set's names as the turn before (no answer added or removed one).
        let mut same_names = true;
        if let Some(a) = lock(&shared.inbox).latest.take() {
            let learned = match &a.tasks {
                Some(all) => {
                    desired = assigned_tasks(all, &a.group_names, &desired);
                    same_names = false;
                    changes.complete();
                    rollback.learn(all)
                }
                None => {
                    same_names &= !apply_changes(&mut desired, &a.changed, &a.removed, &a.group_names);
                    changes.delta(
                        a.changed
                            .iter()
                            .map(|t| t.name().to_string())
                            .chain(a.removed.iter().cloned()),
                    );
                    rollback.learn_changes(&a.changed, &a.removed)
                }
            };
            if let Err(e) = learned {
                say(&format!("agent: rollback state: {e}"));
            }
            // Level-triggered both ways: where the server's record of a task
            // lost what we reported (a reschedule resets it), report again.
            let mut outbox = lock(&shared.outbox);
            for t in &a.changed {
                outbox.server_disagrees(t.name(), &t.status.clone().unwrap_or_default(), !a.delta);
            }
        }
        let offline_since = lock(&shared.inbox).offline_since;
        let update_at = step_update(&mut updater, &shared, &update_waker, &mut sup);
        let (online, stop_at) = apply_disconnect_policy(&desired, offline_since, Instant::now());
        let offline_stops = online.is_some();
        let online = online.as_deref().unwrap_or(&desired);
        // A rollout's new version that fails on this robot: back to the previous.
        let derived = std::mem::replace(&mut derived_before, offline_stops);
        let same_names = same_names && !offline_stops && !derived;
        let (reverted, revert_at) = rollback.apply(online, same_names, &rec, &sup, Instant::now());
        // A set the loop derived (offline stops, a revert) changes apart
        // from the answers: compared whole, as the step after it is.
        let told = changes.for_step(offline_stops || reverted.is_some());
        rec.tell(told.clone());
        let running = reverted.as_deref().unwrap_or(online);
        let recheck = rec
            .step(running, &mut sup, &mut |line| say(&line))
            .into_iter()
            .chain(stop_at)
            .chain(update_at)
            .chain(revert_at)
            .min();
        // The outbox may only say what state.json already says: a kill -9
        // between the two must not leave a restarted agent contradicting a
        // status the server may already have.
        sup.flush().map_err(|e| e.to_string())?;
        queue_statuses(&shared, running, &told, &rec, &sup, &rollback, &mut queued);
        if sup.shutdown_requested() {
            sup.checkpoint().map_err(|e| e.to_string())?;
            if let Err(e) = lock(&shared.outbox).compact() {
                say(&format!("agent: outbox: {e}"));
            }
            shared.stop.store(true, Ordering::SeqCst);
            shared.changed.notify_all();
            say("agent: signalled; exiting and leaving tasks running for the next agent");
            return Ok(0);
        }
        sup.run_once(recheck).map_err(|e| e.to_string())?;
    }
}

/// Hand the self-update what the poller learned, move it on, and queue
/// its result for the reporter. When to look again at the latest.
fn step_update(
    updater: &mut super::update::Updater,
    shared: &Shared,
    waker: &Arc<Waker>,
    sup: &mut Supervisor,
) -> Option<Instant> {
    let server_answers = {
        let mut inbox = lock(&shared.inbox);
        if std::mem::take(&mut inbox.reached) {
            updater.reached_server();
        }
        if let Some((offer, key)) = inbox.offer.take() {
            updater.offered(offer, key.as_deref());
        }
        inbox.server_answers
    };
    // Before an exec, everything whole in the snapshots (an older agent
    // reads those alone).
    let at = updater.step(server_answers, waker, &mut || {
        sup.checkpoint().map_err(|e| e.to_string())?;
        lock(&shared.outbox).compact().map_err(|e| format!("outbox: {e}"))
    });
    if let Some(result) = updater.take_report() {
        let _outbox = lock(&shared.outbox);
        *lock(&shared.last_update) = Some(result);
        shared.changed.notify_all();
    }
    at.into_iter().chain(updater.deadline()).min()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Stored identity, or register. Whatever fails (the server unreachable,
/// or refusing the join token, or no join token yet) is retried with
/// backoff, saying what is wrong (a refusal once a minute), while the
/// config file is re-read: once it changes, the agent starts afresh from
/// it. None if signalled meanwhile.
fn obtain_identity(
    client: &Client,
    config: &AgentConfig,
    watch: &waiting::ConfigWatch,
    data_dir: &Path,
    sup: &mut Supervisor,
) -> Result<Option<Identity>, String> {
    if let Some(id) = identity::load(data_dir, config) {
        client.channel().set_identity(id.clone());
        return Ok(Some(id));
    }
    let mut backoff = Backoff::new(RETRY_BASE, RETRY_MAX);
    let mut reminder = waiting::Reminder::new(watch.intervals.notice);
    loop {
        let e = match register::register(client, config, data_dir, super::device::collect(data_dir)) {
            Ok(id) => return Ok(Some(id)),
            Err(e) => e,
        };
        let pause = backoff.next_delay();
        match &e {
            register::RegisterError::Client(ClientError::Transport(_) | ClientError::Refused(_)) => {
                say(&format!("agent: {e}; retrying in {pause:.1?}"))
            }
            _ => watch.remind(&mut reminder, &e.to_string(), "retrying with backoff, "),
        }
        // Sleep in the supervisor (signals end it), looking at the config
        // file every recheck interval.
        let retry_at = Instant::now().checked_add(pause);
        loop {
            let now = Instant::now();
            if retry_at.is_some_and(|t| now >= t) {
                break;
            }
            let step = now.checked_add(watch.intervals.recheck);
            sup.run_once([retry_at, step].into_iter().flatten().min())
                .map_err(|e| e.to_string())?;
            if sup.shutdown_requested() {
                return Ok(None);
            }
            if watch.changed() {
                return Err(waiting::start_afresh(watch));
            }
        }
    }
}

fn spawn_poller(shared: Arc<Shared>, client: Client, waker: Waker, data_dir: PathBuf, kept: desired::Kept) {
    signals::spawn_worker(move || {
        let mut poller = Poller::new(kept);
        while !shared.stop.load(Ordering::SeqCst) {
            let result = client.assignments(poller.since, poller.wait, poller.verify, poller.silence);
            let after = poller.take(result, &mut lock(&shared.inbox), &data_dir);
            match after {
                AfterPoll::Answered { wake, log_requests } => {
                    if wake {
                        waker.wake();
                    }
                    // A new connection may be the moment to flush statuses.
                    shared.changed.notify_all();
                    for req in log_requests {
                        let upload = read_log(&data_dir, &req);
                        if let Err(e) = client.upload_log(&upload) {
                            say(&format!("agent: sending the log of {}: {e}", req.task));
                        }
                    }
                }
                AfterPoll::Failed(pause) => {
                    waker.wake();
                    shared.pause(pause)
                }
                AfterPoll::Again => {}
            }
        }
    });
}

/// The poller's memory between long polls.
struct Poller {
    since: u64,
    wait: Duration,
    /// A held poll: give up on a connection silent this long.
    silence: Option<Duration>,
    /// After a held poll went silent: the next poll is not held (it waits
    /// the poll interval), so a path that swallows the probes still sees
    /// answers; the one after it holds again.
    unheld: Option<Duration>,
    /// Said that a held poll went silent (said again after a held poll is
    /// answered).
    told_silent: bool,
    /// Ask for the digest even if nothing changed (a set loaded from disk).
    verify: bool,
    kept: desired::Kept,
    backoff: Backoff,
    reported_down: bool,
    /// A verified answer came since the agent started.
    answered: bool,
}

/// What one long poll's outcome leaves the poller thread to do.
enum AfterPoll {
    /// Answered (and verified): wake the main thread if the desired set
    /// changed or the server is back; answer these log requests.
    Answered {
        wake: bool,
        log_requests: Vec<crate::api::agent_protocol::LogRequest>,
    },
    /// Unreachable, refused or an error status: pause this long.
    Failed(Duration),
    /// A held poll went silent: poll again at once (not held).
    Again,
}

impl Poller {
    fn new(kept: desired::Kept) -> Poller {
        Poller {
            since: kept.revision(),
            verify: kept.revision() != 0,
            kept,
            wait: Duration::ZERO, // the first poll answers at once
            silence: None,
            unheld: None,
            told_silent: false,
            backoff: Backoff::new(RETRY_BASE, RETRY_MAX),
            reported_down: false,
            answered: false,
        }
    }

    /// Apply one long poll's outcome to the inbox. Only a verified answer
    /// reaches the desired set; any failure, a refused (forged, altered,
    /// replayed) answer included, leaves it as it is and counts as the
    /// server being unreachable.
    fn take(&mut self, result: Result<Assignments, ClientError>, inbox: &mut Inbox, data_dir: &Path) -> AfterPoll {
        // Test fault: a build whose channel refuses every answer.
        let result = match result {
            Ok(_) if super::update::fault::armed("refuse-answers") => Err(ClientError::Refused("test fault".into())),
            other => other,
        };
        match result {
            Ok(mut a) => {
                self.backoff.reset();
                if self.reported_down {
                    say("agent: server reachable again");
                    self.reported_down = false;
                }
                // The server's number, within reason: a long poll that
                // outlasts MAX_POLL_WAIT would look like a dead server.
                // Held polls may last longer: the server's keepalive probes
                // (every probe_seconds) say meanwhile that it is there, and
                // a quarter of that again (at least 2 s, for the kernel's
                // whole-second keepalive timers) without any is silence.
                if self.silence.is_some() {
                    self.told_silent = false;
                }
                // Held only where a silent connection can be told from a
                // quiet one (the kernel counts received segments).
                (self.wait, self.silence) =
                    if a.hold_seconds > 0 && a.probe_seconds > 0 && crate::tcp_info::counts_segments() {
                        let probe = Duration::from_secs(a.probe_seconds).min(MAX_POLL_WAIT);
                        (
                            Duration::from_secs(a.hold_seconds).min(MAX_POLL_HOLD),
                            Some(probe.saturating_add((probe / 4).max(Duration::from_secs(2)))),
                        )
                    } else if a.poll_interval_seconds > 0 {
                        (Duration::from_secs(a.poll_interval_seconds).min(MAX_POLL_WAIT), None)
                    } else {
                        (DEFAULT_POLL_WAIT, None)
                    };
                self.unheld = (a.poll_interval_seconds > 0)
                    .then(|| Duration::from_secs(a.poll_interval_seconds).min(MAX_POLL_WAIT));
                let fresh = match self.kept.take(&mut a, self.since) {
                    desired::Taken::Same => false,
                    desired::Taken::Changed(mut update) => {
                        say(&format!("agent: desired set at revision {}: {update}", a.revision));
                        if let Err(e) = self.kept.save(data_dir) {
                            say(&format!("agent: caching assignments: {e}"));
                        }
                        if inbox.latest.is_some() {
                            update.make_complete(&self.kept);
                        }
                        inbox.latest = Some(update);
                        true
                    }
                    desired::Taken::Mismatch(why) => {
                        say(&format!("agent: {why}; asking for the complete set"));
                        self.wait = Duration::ZERO;
                        false
                    }
                };
                self.since = self.kept.revision();
                self.verify = false;
                let log_requests = std::mem::take(&mut a.log_requests);
                // Online again: tasks stopped by stopOnClientAfter may run.
                let back = inbox.offline_since.take().is_some();
                let update = a.agent_update.take();
                let offered = update.is_some();
                inbox.offer = Some((update, a.release_key.take()));
                inbox.reached = true;
                inbox.server_answers = false;
                // The first verified answer since the start ends a new
                // version's probation: wake the main thread for it even if
                // nothing changed (else it waited for its next timer, up to
                // the update deadline: seen when the server had already
                // stopped offering the release the agent just installed).
                let first = !std::mem::replace(&mut self.answered, true);
                AfterPoll::Answered {
                    wake: back || fresh || offered || first,
                    log_requests,
                }
            }
            Err(ClientError::Silent(d)) => {
                if !std::mem::replace(&mut self.told_silent, true) {
                    say(&format!(
                        "agent: {}; polling again, the next poll not held",
                        ClientError::Silent(d)
                    ));
                }
                self.wait = self.unheld.unwrap_or(DEFAULT_POLL_WAIT);
                self.silence = None;
                AfterPoll::Again
            }
            Err(e) => {
                inbox.offline_since.get_or_insert_with(Instant::now);
                if !matches!(e, ClientError::Transport(_)) {
                    inbox.server_answers = true;
                }
                // Only a signed answer saying the server no longer knows
                // this robot (wiped, or reset by an operator) forgets the
                // identity, so the next start registers: an unsigned or
                // forged 401 is refused like any tampering and changes
                // nothing.
                if e.is_unknown_robot() {
                    let _ = std::fs::remove_file(data_dir.join(identity::FILE));
                }
                if !self.reported_down {
                    say(&format!("agent: {e}; tasks keep running, retrying with backoff"));
                    self.reported_down = true;
                }
                AfterPoll::Failed(self.backoff.next_delay())
            }
        }
    }
}

/// Most status updates in one report; halved while the server answers 413
/// (its `--max-status-updates` is lower).
const REPORT_BATCH: usize = 500;
/// How long after an acknowledgement the reporter, with nothing to send,
/// writes it down if no status write has taken it along (see `outbox`).
const ACKS_SAVED_AFTER: Duration = Duration::from_secs(1);
/// At most one report per this long: a status that changes within it of
/// the last report waits for the rest of it, so the statuses of a burst (a
/// task started and done at once, a group starting) go in one signed and
/// sealed report instead of one each. An isolated change goes at once.
/// (Nomad's client batches allocation updates the same way, over 200 ms.)
pub const REPORT_SPACING: Duration = Duration::from_millis(20);

fn spawn_reporter(shared: Arc<Shared>, client: Client, data_dir: PathBuf) {
    signals::spawn_worker(move || {
        let mut backoff = Backoff::new(RETRY_BASE, RETRY_MAX);
        let mut device_due = Instant::now();
        let mut device_gate = device_facts::Gate::default();
        let mut batch = REPORT_BATCH;
        let mut last_sent: Option<Instant> = None;
        while !shared.stop.load(Ordering::SeqCst) {
            let (updates, backlog, check_device) = {
                let mut outbox = lock(&shared.outbox);
                let now = Instant::now();
                if outbox.is_empty() && now < device_due && lock(&shared.last_update).is_none() {
                    // Acknowledgements wait for a quiet moment to be written
                    // (or for the next status, whose write takes them along):
                    // a second after the first of them, with nothing to send.
                    let acks_due = outbox.acks_unsaved().map(|since| clock::after(since, ACKS_SAVED_AFTER));
                    let until = acks_due.map_or(device_due, |due| due.min(device_due));
                    outbox = shared.wait(outbox, until.saturating_duration_since(now), true);
                    if outbox.is_empty() && acks_due.is_some_and(|due| Instant::now() >= due) {
                        if let Err(e) = outbox.save_acks() {
                            say(&format!("agent: outbox: {e}"));
                        }
                    }
                }
                // Spacing holds back statuses only: a round woken for
                // acknowledgements or device facts goes on at once.
                let spacing_left =
                    last_sent.and_then(|at| clock::after(at, REPORT_SPACING).checked_duration_since(Instant::now()));
                if let (Some(left), false) = (spacing_left, outbox.is_empty()) {
                    outbox = shared.wait(outbox, left, false);
                }
                let mut updates = outbox.pending();
                // In batches the server takes (--max-status-updates), oldest
                // first: a robot back from a long outage with more pending
                // is not refused forever, and no task waits behind busier
                // ones; the rest go next round.
                updates.sort_by_key(|u| u.seq);
                let pending = updates.len();
                updates.truncate(batch);
                let backlog = (pending - updates.len()) as u64;
                (updates, backlog, Instant::now() >= device_due)
            };
            // Read when due, sent when changed (or due for a refresh).
            let device_info = if check_device {
                let facts = super::device::collect(&data_dir);
                if device_gate.wants(&facts, Instant::now()) {
                    Some(facts)
                } else {
                    device_due = clock::after(Instant::now(), DEVICE_INFO_EVERY);
                    None
                }
            } else {
                None
            };
            let send_device = device_info.is_some();
            let last_update = lock(&shared.last_update).take();
            if updates.is_empty() && !send_device && last_update.is_none() {
                continue;
            }
            let report = StatusReport {
                updates,
                device_info,
                agent_version: Some(super::version::current().to_string()),
                backlog: Some(backlog),
                architecture: send_device.then(|| crate::api::agent_release::this_arch().to_string()),
                last_update,
            };
            last_sent = Some(Instant::now());
            let result = client.report(&report);
            if let (Err(_), Some(r)) = (&result, &report.last_update) {
                // Reported again next time, unless a newer one came.
                lock(&shared.last_update).get_or_insert_with(|| r.clone());
            }
            match result {
                Ok(reply) => {
                    backoff.reset();
                    if let Some(facts) = &report.device_info {
                        device_gate.delivered(facts, Instant::now());
                        device_due = clock::after(Instant::now(), DEVICE_INFO_EVERY);
                    }
                    // Every outcome (applied, duplicate, not assigned, not
                    // found) means the server needs this status no more.
                    let acked: Vec<(String, u64)> = reply.results.into_iter().map(|r| (r.task, r.seq)).collect();
                    lock(&shared.outbox).acknowledge(&acked);
                }
                // Too large for this server: smaller batches, at once.
                Err(ClientError::Status { code: 413, .. }) if batch > 1 && report.updates.len() > 1 => {
                    batch = (report.updates.len() / 2).max(1);
                    log::debug!("status report too large; batches of {batch} from now on");
                }
                Err(e) => {
                    let pause = backoff.next_delay();
                    log::debug!("status report failed: {e}; retrying in {pause:?}");
                    shared.pause(pause);
                }
            }
        }
    });
}

/// The tasks to keep running: all of them (None: no copy is made), except
/// those whose group says to stop once the server has been unreachable for
/// `stopOnClientAfter`. Also returns when the next such deadline falls, to
/// wake up for it.
pub fn apply_disconnect_policy(
    desired: &[AssignedTask],
    offline_since: Option<Instant>,
    now: Instant,
) -> (Option<Vec<AssignedTask>>, Option<Instant>) {
    let Some(since) = offline_since else {
        return (None, None);
    };
    let mut next = None;
    let keep = desired
        .iter()
        .filter(|t| {
            let Some(limit) = t
                .spec
                .disconnect
                .as_ref()
                .and_then(|d| d.stop_on_client_after.as_ref()?.get())
            else {
                return true;
            };
            let deadline = clock::after(since, limit);
            if now >= deadline {
                return false;
            }
            next = next.into_iter().chain(Some(deadline)).min();
            true
        })
        .cloned()
        .collect();
    (Some(keep), next)
}

/// Answer an operator's log request from the task's log files: the newest
/// output, at most MAX_LOG_UPLOAD bytes.
fn read_log(data_dir: &Path, req: &crate::api::agent_protocol::LogRequest) -> crate::api::agent_protocol::LogUpload {
    use crate::api::agent_protocol::{LogUpload, MAX_LOG_UPLOAD};
    let mut upload = LogUpload {
        id: req.id.clone(),
        task: req.task.clone(),
        ..Default::default()
    };
    if req.stream != "stdout" && req.stream != "stderr" {
        upload.error = Some(format!("stream {:?} must be stdout or stderr", req.stream));
        return upload;
    }
    match super::find_unit_dir(data_dir, &req.task) {
        Err(e) => upload.error = Some(e),
        Ok(dir) => {
            let bytes = super::logs::read_tail(&dir.join("logs"), &req.stream, req.tail_lines.map(|n| n as usize));
            let start = bytes.len().saturating_sub(MAX_LOG_UPLOAD);
            upload.truncated = start > 0;
            upload.text = String::from_utf8_lossy(&bytes[start..]).into_owned();
        }
    }
    upload
}

/// Turn the server's Task objects into the reconciler's assigned tasks;
/// `group_names`: each group's name in its Job, by `taskGroupName` (the
/// group form's). A set from a server without the group form names no
/// groups: then the name is what `taskGroupName` (`{job}-{group}`) has
/// after the job's. A task whose spec equals its spec in `previous` keeps
/// that spec's allocation (see [`AssignedTask::spec`]).
pub fn assigned_tasks(
    tasks: &[Task],
    group_names: &BTreeMap<String, String>,
    previous: &[AssignedTask],
) -> Vec<AssignedTask> {
    tasks.iter().map(|t| assigned(t, group_names, previous)).collect()
}

/// A delta onto `desired` (in name order, as [`assigned_tasks`] makes it):
/// the `removed` names out, the `changed` tasks in. Whether a name came or
/// went.
pub fn apply_changes(
    desired: &mut Vec<AssignedTask>,
    changed: &[Task],
    removed: &[String],
    group_names: &BTreeMap<String, String>,
) -> bool {
    let at = |desired: &[AssignedTask], name: &str| desired.binary_search_by(|d| d.name.as_str().cmp(name));
    let mut moved = false;
    for name in removed {
        if let Ok(i) = at(desired, name) {
            desired.remove(i);
            moved = true;
        }
    }
    for t in changed {
        let task = assigned(t, group_names, desired);
        match at(desired, &t.metadata.name) {
            Ok(i) => desired[i] = task,
            Err(i) => {
                desired.insert(i, task);
                moved = true;
            }
        }
    }
    moved
}

/// One task of the set, its spec shared with `previous`'s (in name order)
/// when equal.
fn assigned(t: &Task, group_names: &BTreeMap<String, String>, previous: &[AssignedTask]) -> AssignedTask {
    let key = t.spec.task_group_name.as_deref().unwrap_or("");
    let group = group_names.get(key).cloned().unwrap_or_else(|| {
        let job = t.spec.job_name.as_deref().unwrap_or("");
        key.strip_prefix(job)
            .and_then(|r| r.strip_prefix('-'))
            .unwrap_or(key)
            .to_string()
    });
    let same = previous
        .binary_search_by(|p| p.name.as_str().cmp(&t.metadata.name))
        .ok()
        .map(|i| &previous[i].spec)
        .filter(|p| ****p == t.spec);
    let spec = same.map_or_else(|| t.spec.clone().into(), Arc::clone);
    AssignedTask {
        name: t.metadata.name.clone(),
        job_type: t.spec.job_type.unwrap_or(JobType::Service),
        group,
        spec,
    }
}

/// What [`queue_statuses`] remembers between passes.
#[derive(Default)]
struct Queued {
    /// A hash of the reported tasks' names: the outbox drops statuses of
    /// tasks that left only when they changed.
    members: Option<u64>,
    /// The last pass marked statuses (a revert, a lock): all are looked
    /// at again once, to take the marks away.
    marked: bool,
}

/// Queue the status of every desired task that can have changed: those of
/// the groups the step planned (the others' units did not move and their
/// tasks did not change), those the outbox forgot, and all while a revert
/// or a lock marks any. The outbox drops repeats and writes only on change.
fn queue_statuses(
    shared: &Shared,
    desired: &[AssignedTask],
    since: &Since,
    rec: &Reconciler,
    sup: &Supervisor,
    rollback: &super::rollback::Rollback,
    last: &mut Queued,
) {
    // A task stopped by a robot-local revert is still the server's: its
    // status says it went back.
    let tasks = || desired.iter().chain(rollback.stopped());
    let marked = rollback.marks_any();
    let all = marked || std::mem::replace(&mut last.marked, marked);
    let mut outbox = lock(&shared.outbox);
    // Few (a server that reset a task): looked through, not indexed.
    let forgotten = outbox.take_forgotten();
    let replanned = rec.replanned();
    let status = |t: &AssignedTask| {
        let mut status = task_status(t, rec, sup);
        rollback.mark(&t.name, &mut status);
        (t.name.clone(), status)
    };
    let picked = |t: &&AssignedTask| all || replanned.contains(t.group_key_str()) || forgotten.contains(&t.name);
    // One write for the whole pass, before the reporter (waiting on this
    // lock) can send any of it.
    let queued = if all || !rollback.stopped().is_empty() {
        outbox.push_all(tasks().filter(picked).map(status))
    } else {
        // The replanned groups' tasks, found through the reconciler's
        // books, not by a look at every task's group (with 1,000 tasks
        // that was a string comparison each, per wake-up), and the
        // forgotten ones of other groups.
        let of_groups = replanned
            .iter()
            .flat_map(|key| rec.group_tasks(key))
            .filter_map(|n| reconcile::task_named(desired, n))
            .filter(|t| replanned.contains(t.group_key_str()));
        let others = forgotten
            .iter()
            .enumerate()
            .filter(|(i, n)| !forgotten[..*i].contains(n))
            .filter_map(|(_, n)| reconcile::task_named(desired, n))
            .filter(|t| !replanned.contains(t.group_key_str()));
        let found: Vec<&AssignedTask> = of_groups.chain(others).collect();
        #[cfg(debug_assertions)]
        {
            let mut by_books: Vec<&str> = found.iter().map(|t| t.name.as_str()).collect();
            by_books.sort_unstable();
            let mut walked: Vec<&str> = tasks().filter(picked).map(|t| t.name.as_str()).collect();
            walked.sort_unstable();
            assert_eq!(by_books, walked, "the books' statuses are not the whole walk's");
        }
        outbox.push_all(found.into_iter().map(status))
    }
    .unwrap_or_else(|e| {
        say(&format!("agent: outbox: {e}"));
        false
    });
    match (since, rollback.stopped().is_empty()) {
        // Told which names changed (and no revert stopped any): the
        // statuses of those that left go, found without a look at every
        // name.
        (Since::Touched(touched), true) => {
            let left: Vec<&str> = touched
                .iter()
                .filter(|n| reconcile::task_named(desired, n).is_none())
                .map(String::as_str)
                .collect();
            if !touched.is_empty() {
                last.members = None;
            }
            if let Err(e) = outbox.forget(&left) {
                say(&format!("agent: outbox: {e}"));
            }
        }
        _ => {
            let members = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                tasks().for_each(|t| t.name.hash(&mut h));
                h.finish()
            };
            if last.members != Some(members) {
                // In name order: as the loop hands the set on, else through a set.
                let mut names: Vec<&str> = tasks().map(|t| t.name.as_str()).collect();
                if !names.is_sorted() {
                    let sorted: std::collections::BTreeSet<&str> = names.into_iter().collect();
                    names = sorted.into_iter().collect();
                }
                match outbox.retain(&names) {
                    Ok(()) => last.members = Some(members),
                    Err(e) => say(&format!("agent: outbox: {e}")),
                }
            }
        }
    }
    drop(outbox);
    if queued {
        shared.changed.notify_all();
    }
}

/// What the server should know about one task right now.
pub fn task_status(t: &AssignedTask, rec: &Reconciler, sup: &Supervisor) -> TaskStatus {
    let view = sup.view(&t.name);
    let mut status = TaskStatus::default();
    status.state = match rec.outcome(t, sup) {
        Outcome::Waiting if view.is_some() => TaskState::Starting,
        Outcome::Waiting => TaskState::Pending,
        Outcome::Running => TaskState::Running,
        Outcome::Succeeded => TaskState::Completed,
        Outcome::Failed(reason) => {
            status.message = Some(reason);
            TaskState::Failed
        }
    };
    if let Some(v) = view {
        status.pid = v.phase.pid();
        status.restart_count = Some(v.restarts as i32);
        status.health = v.health.map(String::from);
        match v.last_exit {
            Some(Exit::Code(c)) => status.exit_code = Some(c),
            Some(Exit::Signal(s)) => status.signal = Some(s),
            Some(Exit::Unknown) | None => {}
        }
        if let Phase::Backoff { .. } = v.phase {
            status.reason = Some("restarting after backoff".into());
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::reconcile::DesiredSpec;
    use crate::api::{DisconnectPolicy, Duration as KDuration, TaskSpec};

    fn task(name: &str, stop_after: Option<&str>) -> AssignedTask {
        AssignedTask {
            name: name.into(),
            job_type: JobType::Service,
            group: "g".into(),
            spec: Arc::new(DesiredSpec::from(TaskSpec {
                disconnect: stop_after.map(|d| DisconnectPolicy {
                    stop_on_client_after: Some(KDuration::new(d)),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        }
    }

    /// A task of group `g` of Job `j` as the server sends it, run as `user`.
    fn server_task(name: &str, user: &str) -> Task {
        let mut t = Task::default();
        t.metadata.name = name.into();
        t.spec.job_name = Some("j".into());
        t.spec.task_group_name = Some("j-g".into());
        t.spec.user = Some(user.into());
        t
    }

    /// An unchanged spec keeps its allocation from answer to answer, so
    /// the reconciler hashes it once; a changed one gets a new one.
    #[test]
    fn an_unchanged_spec_is_shared_with_the_previous_set() {
        let names = BTreeMap::new();
        let first = assigned_tasks(&[server_task("a", "x"), server_task("b", "x")], &names, &[]);
        let next = assigned_tasks(&[server_task("a", "x"), server_task("b", "y")], &names, &first);
        assert!(Arc::ptr_eq(&first[0].spec, &next[0].spec), "a: unchanged, shared");
        assert!(!Arc::ptr_eq(&first[1].spec, &next[1].spec), "b: changed");
        assert_eq!(next[1].spec.user.as_deref(), Some("y"));
        assert_eq!(next[0].group, "g");
    }

    /// A delta applied to the set the main loop has is the set built from
    /// the complete answer; the tasks it did not carry keep their specs.
    #[test]
    fn a_delta_applied_is_the_complete_set_and_leaves_the_rest_alone() {
        let names = BTreeMap::new();
        let all = ["a", "c", "e", "g"].map(|n| server_task(n, "x"));
        let first = assigned_tasks(&all, &names, &[]);
        let mut patched = assigned_tasks(&all, &names, &[]);
        for (p, f) in patched.iter_mut().zip(&first) {
            p.spec = Arc::clone(&f.spec);
        }
        // Added at the front, in the middle and at the end; one changed;
        // two removed (one of them unknown).
        let changed = [
            server_task("0", "x"),
            server_task("d", "x"),
            server_task("e", "y"),
            server_task("z", "x"),
        ];
        assert!(
            apply_changes(&mut patched, &changed, &["c".into(), "nope".into()], &names),
            "names came and went"
        );
        let after = ["0", "a", "d", "e", "g", "z"].map(|n| server_task(n, if n == "e" { "y" } else { "x" }));
        let whole = assigned_tasks(&after, &names, &first);
        let view = |set: &[AssignedTask]| {
            set.iter()
                .map(|t| (t.name.clone(), t.group.clone(), t.spec.user.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(view(&patched), view(&whole));
        assert!(
            Arc::ptr_eq(&patched[1].spec, &first[0].spec),
            "a: not carried, untouched"
        );
        assert!(
            Arc::ptr_eq(&patched[4].spec, &first[3].spec),
            "g: not carried, untouched"
        );
        assert!(!Arc::ptr_eq(&patched[3].spec, &first[2].spec), "e: changed");
        // Only changed in place, or removing what is not there: the names stay.
        assert!(!apply_changes(
            &mut patched,
            &[server_task("e", "z")],
            &["nope".into()],
            &names
        ));
    }

    #[test]
    fn stop_on_client_after_stops_only_its_groups_and_only_when_due() {
        let desired = vec![task("keep", None), task("stop", Some("10s"))];
        let t0 = Instant::now();
        let (all, next) = apply_disconnect_policy(&desired, None, t0);
        assert_eq!((all, next), (None, None), "online: everything runs");
        let (early, next) = apply_disconnect_policy(&desired, Some(t0), t0 + Duration::from_secs(5));
        assert_eq!(early.unwrap().len(), 2);
        assert_eq!(
            next,
            Some(t0 + Duration::from_secs(10)),
            "wake up when the limit falls due"
        );
        let (late, next) = apply_disconnect_policy(&desired, Some(t0), t0 + Duration::from_secs(10));
        assert_eq!(
            late.unwrap().iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["keep"]
        );
        assert_eq!(next, None);
    }
}
