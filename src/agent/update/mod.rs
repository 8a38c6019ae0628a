//! Over-the-air self-update of the connected agent, restarting no task.
//!
//! The server's poll answer may offer an [`AgentUpdate`] (one signed
//! architecture entry of an AgentRelease). The agent:
//! 1. checks it before downloading anything (`check`): the Ed25519
//!    signature by the release key (`key`) over version, architecture,
//!    size and SHA-256; this robot's architecture; no downgrade without
//!    `allowDowngrade`; room on the data dir's and the binary's
//!    filesystems (not read-only, not full);
//! 2. downloads it into `<data-dir>/update/` with resume, bounded by the
//!    signed size, and verifies size and SHA-256 (`fetch`, in a thread);
//! 3. saves its tasks' state, keeps the running binary as `<binary>.prev`,
//!    renames the new one into place and execs it: same pid, so the tasks
//!    stay its children and are re-adopted from state.json (`install`);
//! 4. the new agent counts its starts in `update/pending.json` (`guard`):
//!    it is on probation until a verified poll answer; a fourth start after
//!    three that never reached the server, or the deadline (default 5 min)
//!    passing while the server answers but not to it, restores `.prev`
//!    and execs that, which reports the release as rolled back.
//!
//! Every outcome is kept in `update/last.json` and reported as the Robot's
//! `status.lastUpdate`; a refused or rolled-back binary is not tried again.
//! Test-only fault points: `fault`.

pub mod check;
pub mod fault;
pub mod fetch;
pub mod guard;
pub mod install;
pub mod key;
pub mod record;

use crate::agent::supervisor::{signals, Waker};
use crate::api::agent_release::{this_arch, AgentUpdate, UpdateOutcome, UpdateResult};
use fetch::FetchError;
use record::{Last, Pending};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a new agent has to reach the server (while the network is up).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(300);
pub const DEADLINE_ENV: &str = "K8S4R_UPDATE_DEADLINE";
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(600);

pub struct Settings {
    pub data_dir: PathBuf,
    /// The agent binary to replace (as started).
    pub binary: PathBuf,
    /// `--release-key`; else the key learned from the server.
    pub release_key: Option<[u8; 32]>,
    pub deadline: Duration,
}

/// A download thread's result, once it has one (a Mutex rather than a
/// channel: one value, and less code on the robot's flash).
type Outcome = Arc<Mutex<Option<Result<PathBuf, FetchError>>>>;

struct Download {
    offer: AgentUpdate,
    done: Outcome,
}

pub struct Updater {
    s: Settings,
    /// A new version on probation, and its deadline.
    probation: Option<(Pending, Instant)>,
    offer: Option<AgentUpdate>,
    download: Option<Download>,
    retry_at: Option<Instant>,
    retry_delay: Duration,
    last: Option<Last>,
    /// `last` changed (or the agent started) and is not reported yet.
    unsent: bool,
    said_other_key: bool,
}

fn say(line: &str) {
    eprintln!("agent: {line}");
}

impl Updater {
    /// The start of a connected agent: count the start of a version on
    /// probation, or roll it back (exec'ing the previous agent: this then
    /// does not return).
    pub fn start(s: Settings) -> Updater {
        let mut u = Updater {
            last: record::load_last(&s.data_dir),
            s,
            probation: None,
            offer: None,
            download: None,
            retry_at: None,
            retry_delay: RETRY_FIRST,
            unsent: false,
            said_other_key: false,
        };
        u.unsent = u.last.is_some();
        let current = crate::agent::version::current();
        match guard::on_start(record::load_pending(&u.s.data_dir), current) {
            guard::StartAction::Nothing => {}
            guard::StartAction::Stale => {
                let _ = record::clear_pending(&u.s.data_dir);
            }
            guard::StartAction::Counted(p) => {
                if let Err(e) = record::save_pending(&u.s.data_dir, &p) {
                    say(&format!("update: counting this start: {e}"));
                }
                say(&format!(
                    "update: {} is on probation (start {} of {}) until it reaches the server",
                    p.version,
                    p.starts,
                    guard::MAX_STARTS
                ));
                if p.starts == 1 {
                    fault::at("kill-after-exec");
                }
                fault::at("exit-at-start");
                let deadline = crate::agent::clock::after(Instant::now(), u.s.deadline);
                u.probation = Some((p, deadline));
            }
            guard::StartAction::RollBack(p) => {
                let why = format!(
                    "{} starts of {} did not reach the server; rolled back to {}",
                    p.starts, p.version, p.from_version
                );
                u.roll_back(&p, why);
            }
        }
        u
    }

    /// Restore `.prev` and exec it; returns only if that is impossible.
    fn roll_back(&mut self, p: &Pending, why: String) {
        say(&format!("update: {why}"));
        // The result first: a power cut after the swap back must not let
        // the old agent try the same binary again.
        let last = Last::new(&p.release, &p.version, &p.sha256, UpdateOutcome::RolledBack, why);
        if let Err(e) = record::save_last(&self.s.data_dir, &last) {
            say(&format!("update: recording the rollback: {e}"));
        }
        self.last = Some(last);
        self.unsent = true;
        match install::restore_prev(&self.s.binary) {
            Ok(true) => {
                let _ = record::clear_pending(&self.s.data_dir);
                let e = install::exec(&self.s.binary);
                say(&format!("update: starting the previous agent: {e}"));
            }
            Ok(false) => {
                let _ = record::clear_pending(&self.s.data_dir);
                say("update: no previous agent to roll back to; keeping this one");
            }
            Err(e) => say(&format!("update: restoring the previous agent: {e}")),
        }
        self.probation = None;
    }

    /// What the latest verified poll answer says (every answer: a missing
    /// offer withdraws the last one).
    pub fn offered(&mut self, offer: Option<AgentUpdate>, server_key: Option<&str>) {
        if let (None, Some(k)) = (self.s.release_key, server_key) {
            match key::learn(&self.s.data_dir, k) {
                Ok(true) if !self.said_other_key => {
                    say("update: the server sends another release key than the one kept; keeping the first");
                    self.said_other_key = true;
                }
                Ok(_) => {}
                Err(e) => say(&format!("update: the server's release key: {e}")),
            }
        }
        self.offer = offer;
    }

    /// A verified answer arrived: a version on probation is good.
    pub fn reached_server(&mut self) {
        let Some((p, _)) = self.probation.take() else {
            return;
        };
        let message = format!("{} runs (start {}), replacing {}", p.version, p.starts, p.from_version);
        say(&format!("update: {message}"));
        self.set_last(Last::new(
            &p.release,
            &p.version,
            &p.sha256,
            UpdateOutcome::Applied,
            message,
        ));
        let _ = record::clear_pending(&self.s.data_dir);
        record::remove_parts(&self.s.data_dir, None);
    }

    fn set_last(&mut self, last: Last) {
        if let Err(e) = record::save_last(&self.s.data_dir, &last) {
            say(&format!("update: recording the result: {e}"));
        }
        self.last = Some(last);
        self.unsent = true;
    }

    fn refuse(&mut self, offer: &AgentUpdate, why: String) {
        say(&format!("update: refused {} {}: {why}", offer.release, offer.version));
        self.set_last(Last::new(
            &offer.release,
            &offer.version,
            &offer.binary.sha256,
            UpdateOutcome::Refused,
            why,
        ));
        record::remove_parts(&self.s.data_dir, None);
    }

    /// The result to report, once per change (and once per start).
    pub fn take_report(&mut self) -> Option<UpdateResult> {
        if !std::mem::take(&mut self.unsent) {
            return None;
        }
        self.last.as_ref().map(|l| l.result.clone())
    }

    /// Move the update on. `server_answers` says whether the server is
    /// reachable (it answered, if not with a verified answer) since the
    /// last verified one; `before_exec` saves the tasks' state. Returns
    /// when to be called again at the latest.
    pub fn step(
        &mut self,
        server_answers: bool,
        waker: &Arc<Waker>,
        before_exec: &mut dyn FnMut() -> Result<(), String>,
    ) -> Option<Instant> {
        let now = Instant::now();
        if let Some((p, deadline)) = self.probation.clone() {
            if now < deadline {
                return Some(deadline);
            }
            if server_answers {
                let why = format!(
                    "{} did not reach the server within {:?} while the server answered; rolled back to {}",
                    p.version, self.s.deadline, p.from_version
                );
                // The previous agent reads the tasks' state from the
                // snapshot alone. Rolling back matters more than a state
                // it could not save (it then re-adopts from an older one).
                if let Err(e) = before_exec() {
                    say(&format!("update: saving the tasks' state before rolling back: {e}"));
                }
                self.roll_back(&p, why);
            }
            return None;
        }
        let finished = self
            .download
            .as_ref()
            .and_then(|d| d.done.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(result) = finished {
            let d = self.download.take()?;
            let current = self.offer.as_ref().is_some_and(|o| o.binary == d.offer.binary);
            match result {
                _ if !current => {}
                Ok(part) => self.swap(&d.offer, &part, before_exec),
                Err(FetchError::Transport(m)) => {
                    self.retry_at = Some(crate::agent::clock::after(now, self.retry_delay));
                    say(&format!(
                        "update: downloading {}: {m}; retrying in {:?}",
                        d.offer.version, self.retry_delay
                    ));
                    self.retry_delay = (self.retry_delay * 2).min(RETRY_MAX);
                }
                Err(e) => self.refuse(&d.offer, e.to_string()),
            }
        }
        let offer = self.offer.clone()?;
        if self.download.is_some() {
            return None;
        }
        if let Some(at) = self.retry_at.filter(|at| now < *at) {
            return Some(at);
        }
        let current = crate::agent::version::current();
        let key = self.s.release_key.or_else(|| key::learned(&self.s.data_dir));
        match check::decide(&offer, key.as_ref(), current, this_arch(), self.last.as_ref()) {
            check::Decision::Skip => None,
            check::Decision::Refuse(why) => {
                self.refuse(&offer, why);
                None
            }
            check::Decision::Fetch => {
                let room = check::room(&self.s.data_dir, offer.binary.size)
                    .and_then(|()| check::room(binary_dir(&self.s.binary), offer.binary.size));
                if let Err(why) = room {
                    self.refuse(&offer, why);
                    return None;
                }
                record::remove_parts(&self.s.data_dir, Some(&offer.binary.sha256));
                say(&format!(
                    "update: downloading {} {} from {}",
                    offer.release, offer.version, offer.binary.url
                ));
                let done = Outcome::default();
                let (data_dir, binary, waker, out) = (
                    self.s.data_dir.clone(),
                    offer.binary.clone(),
                    Arc::clone(waker),
                    Arc::clone(&done),
                );
                signals::spawn_worker(move || {
                    let result = fetch::fetch(&data_dir, &binary);
                    *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
                    waker.wake();
                });
                self.download = Some(Download { offer, done });
                None
            }
        }
    }

    /// The verified download becomes the agent: swap and exec.
    fn swap(&mut self, offer: &AgentUpdate, part: &Path, before_exec: &mut dyn FnMut() -> Result<(), String>) {
        fault::at("kill-after-verify");
        if let Err(why) = before_exec() {
            say(&format!(
                "update: saving the tasks' state before the swap: {why}; not now"
            ));
            self.retry_at = Some(crate::agent::clock::after(Instant::now(), self.retry_delay));
            return;
        }
        let pending = Pending {
            release: offer.release.clone(),
            version: offer.version.clone(),
            from_version: crate::agent::version::current().to_string(),
            sha256: offer.binary.sha256.clone(),
            starts: 0,
        };
        if let Err(why) = install::install(&self.s.data_dir, &self.s.binary, part, &pending) {
            self.refuse(offer, why);
            return;
        }
        fault::at("kill-after-rename");
        say(&format!("update: {} installed; starting it in place", offer.version));
        let e = install::exec(&self.s.binary);
        // Not startable at all: the previous agent goes back at once.
        let _ = install::restore_prev(&self.s.binary);
        let _ = record::clear_pending(&self.s.data_dir);
        self.refuse(offer, format!("starting {}: {e}", self.s.binary.display()));
    }

    /// When the deadline of a version on probation falls.
    pub fn deadline(&self) -> Option<Instant> {
        self.probation.as_ref().map(|(_, d)| *d)
    }
}

fn binary_dir(binary: &Path) -> &Path {
    binary
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}
