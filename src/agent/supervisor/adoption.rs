//! Processes an earlier agent left: restored from the saved state
//! (verified by pid + start time + boot id) or, when the last agent was
//! killed before recording them, found among the process-group leaders
//! the host lists (/proc); watched through a pidfd (or /proc polling)
//! since they are not our children.

use super::host::Host;
use super::logs;
use super::machine::{Event, Exit, Phase};
use super::procfs::{self, Leader, ProcIdentity};
use super::state::{SavedPhase, SavedUnit};
use super::{Supervisor, Unit, Watch, PROC_POLL_INTERVAL};
use crate::agent::clock;
use crate::agent::layout::Layout;
use rustix::fd::AsFd;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

impl Supervisor {
    /// Take over what an earlier agent saved about a unit: a finished unit
    /// keeps its outcome (nothing is run again); a live process is
    /// re-adopted (verified by pid + start time); a process that ended
    /// while no agent watched is reported as such. Returns the event to
    /// feed the unit's machine, if any.
    pub(super) fn restore(&mut self, unit: &mut Unit, saved: SavedUnit) -> Option<Event> {
        unit.machine.restart_count = saved.restarts;
        unit.machine.last_exit = saved.last_exit;
        match saved.phase {
            SavedPhase::Completed => {
                unit.machine.phase = Phase::Completed;
                None
            }
            SavedPhase::Failed => {
                let reason = saved.message.unwrap_or_else(|| "failed".into());
                unit.machine.phase = Phase::Failed { reason };
                None
            }
            SavedPhase::Running => match (saved.pid, saved.start_time) {
                (Some(pid), Some(start_time)) => {
                    let id = ProcIdentity { pid, start_time };
                    unit.identity = Some(id);
                    if !self.host.is_alive(id) {
                        return Some(Event::Exited(Exit::Unknown));
                    }
                    unit.watch = match self.host.pidfd(pid) {
                        Some(fd) => {
                            self.watcher.watch_once(fd.as_fd());
                            Watch::Pidfd(fd)
                        }
                        None => Watch::ProcPoll(clock::after(Instant::now(), PROC_POLL_INTERVAL)),
                    };
                    let logs_dir = unit.spec.dir.join("logs");
                    unit.pumps = logs::STREAMS
                        .iter()
                        .filter_map(|s| logs::reopen_stream(&logs_dir, s, self.log_limits).ok())
                        .collect();
                    for pump in &unit.pumps {
                        self.watcher.watch_log(pump.fd(), &unit.spec.name);
                    }
                    let age = procfs::age(start_time).unwrap_or_default();
                    Some(Event::Adopted { pid, age })
                }
                // It was waiting to (re)start when the agent stopped.
                _ => Some(Event::Start),
            },
        }
    }
}

/// Processes an earlier agent started but was killed before it recorded
/// them (state is written before the agent sleeps, so a kill -9 between a
/// fork and that write loses the pid): found among the process-group
/// leaders the host lists (every unit is started with setsid; the real
/// host reads /proc) whose working directory, or
/// else `K8S4R_TASK_DIR`, is a unit's directory, and recorded as leftovers
/// so they are re-adopted (or stopped, when unwanted) instead of started a
/// second time. Only units without a live recorded process and without a
/// final outcome are considered; a leader whose parent is another such
/// leader of the same unit (a task's own `setsid` child) is not the unit's
/// process. Returns notices for the log.
pub(super) fn claim_unrecorded(
    host: &dyn Host,
    layout: &Layout,
    leftovers: &mut BTreeMap<String, SavedUnit>,
) -> Vec<String> {
    let dirs: HashMap<PathBuf, String> = layout
        .unit_dirs()
        .into_iter()
        .map(|(unit, dir)| (dir, unit.name()))
        .collect();
    if dirs.is_empty() {
        return Vec::new();
    }
    let open = |name: &str| match leftovers.get(name) {
        None => true,
        Some(u) if u.phase == SavedPhase::Running => !matches!(
            (u.pid, u.start_time),
            (Some(pid), Some(start_time)) if host.is_alive(ProcIdentity { pid, start_time })
        ),
        Some(_) => false,
    };
    let unit_of = |leader: &Leader| -> Option<&String> {
        leader
            .cwd
            .as_ref()
            .and_then(|cwd| dirs.get(cwd))
            .or_else(|| dirs.get(leader.task_dir.as_ref()?))
    };
    let mut found: BTreeMap<String, Vec<(ProcIdentity, i32)>> = BTreeMap::new();
    for leader in host.group_leaders() {
        if let Some(name) = unit_of(&leader).filter(|n| open(n)) {
            found.entry(name.clone()).or_default().push((leader.id, leader.ppid));
        }
    }
    let mut notices = Vec::new();
    for (name, mut procs) in found {
        let leaders: Vec<i32> = procs.iter().map(|(id, _)| id.pid).collect();
        procs.retain(|(_, ppid)| !leaders.contains(ppid));
        let Some((id, _)) = procs.into_iter().min_by_key(|(id, _)| id.start_time) else {
            continue;
        };
        let dir = dirs.iter().find(|(_, n)| **n == name).map(|(d, _)| d.clone());
        let saved = leftovers.remove(&name);
        let unit = SavedUnit {
            phase: SavedPhase::Running,
            pid: Some(id.pid),
            start_time: Some(id.start_time),
            dir: saved.as_ref().map(|u| u.dir.clone()).or(dir).unwrap_or_default(),
            restarts: saved.as_ref().map_or(0, |u| u.restarts),
            last_exit: saved.as_ref().and_then(|u| u.last_exit),
            message: None,
            kill_timeout_ms: saved.as_ref().map_or(0, |u| u.kill_timeout_ms),
        };
        leftovers.insert(name.clone(), unit);
        notices.push(format!(
            "{name}: pid {} runs but was not recorded (the last agent was killed while starting it); taking it over",
            id.pid
        ));
    }
    notices
}
