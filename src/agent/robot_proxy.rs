//! `--proxy-mode shared`: the robot-wide Envoy, unit `robot-envoy`
//! (directory `robot/envoy/`, like the robot-scoped daemons), as reconcile
//! drives it. Each pass, every group whose init tasks are done asks to be
//! a member ([`RobotProxy::want`], told what the admin socket said of its
//! part before the pass, [`RobotProxy::observe`]); after the pass, before
//! its units start, the members are written at once
//! ([`RobotProxy::apply`]): unchanged groups' resources stay byte
//! for byte the same, so Envoy keeps them and their connections. The
//! unit's pre-start hook renders every current member, so an Envoy that
//! died comes back with every group's config. A group's tasks start once
//! its own listeners are served ([`RobotProxy::want`] says so).

use super::specs::{self, hash_debug, ProxyUnit, PROXY_READY_TIMEOUT};
use super::supervisor::{UnitSpec, Units};
use crate::agent::layout::UnitId;
use crate::api::NetworkConfig;
use crate::envoy::shared::{self, Member, SharedProxy};
use crate::envoy::{EnvoyError, ProxyExtras};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The unit's name.
fn unit_name() -> String {
    UnitId::robot_proxy().name()
}

pub struct RobotProxy {
    proxy: SharedProxy,
    user: Option<String>,
    /// The unit's PATH.
    path: String,
    /// The members as last written: read by the unit's pre-start hook on
    /// every (re)start.
    written: Arc<Mutex<Vec<Member>>>,
    /// Each written member's network, to see what changed.
    applied: BTreeMap<String, NetworkConfig>,
    /// Members asked for during this pass.
    wanted: BTreeMap<String, NetworkConfig>,
    /// Per group: since when it waits for its part, and whether it was
    /// ready once (then a restart of the Envoy does not hold its tasks).
    joined: BTreeMap<String, (Instant, bool)>,
}

/// What a group's part of the robot-wide proxy is.
pub enum Part {
    /// Served (`newly`: since this call).
    Ready { newly: bool },
    /// Look again at this time.
    NotYet(Instant),
}

fn member(key: &str, network: &NetworkConfig) -> Member {
    Member {
        key: key.to_string(),
        network: network.clone(),
        extras: ProxyExtras::default(),
    }
}

impl RobotProxy {
    pub fn new(proxy: SharedProxy, user: Option<String>, path: String) -> Self {
        RobotProxy {
            proxy,
            user,
            path,
            written: Arc::new(Mutex::new(Vec::new())),
            applied: BTreeMap::new(),
            wanted: BTreeMap::new(),
            joined: BTreeMap::new(),
        }
    }

    /// Group `key` wants its part with `network`; is it served yet
    /// (`served`: Envoy serves its listeners, see [`Self::observe`])? A
    /// group not ready within [`PROXY_READY_TIMEOUT`] of asking fails, with
    /// what Envoy says about its own upstreams (`reasons`).
    pub fn want(
        &mut self,
        key: &str,
        network: &NetworkConfig,
        now: Instant,
        poll: Duration,
        served: bool,
        reasons: Option<&str>,
    ) -> Result<Part, String> {
        self.wanted.insert(key.to_string(), network.clone());
        let (since, ready) = *self.joined.entry(key.to_string()).or_insert((now, false));
        if ready {
            return Ok(Part::Ready { newly: false });
        }
        if self.applied.get(key) == Some(network) && served {
            self.joined.insert(key.to_string(), (since, true));
            return Ok(Part::Ready { newly: true });
        }
        if now.saturating_duration_since(since) > PROXY_READY_TIMEOUT {
            let reasons = reasons.unwrap_or_default();
            return Err(format!(
                "its part of the robot-wide proxy ({}) not ready after {PROXY_READY_TIMEOUT:?}: {reasons}",
                unit_name()
            ));
        }
        Ok(Part::NotYet(crate::agent::clock::after(now, poll)))
    }

    /// What [`Self::want`] needs to know of group `key`'s part, asked of the
    /// admin socket before a pass: whether Envoy serves it (asked only
    /// while it waits with its network written), and, past its deadline,
    /// why not.
    pub fn observe(&self, key: &str, network: &NetworkConfig, now: Instant) -> (bool, Option<String>) {
        let waiting = self.joined.get(key).filter(|(_, ready)| !ready);
        let served = self.joined.get(key).is_none_or(|(_, ready)| !ready)
            && self.applied.get(key) == Some(network)
            && shared::is_ready(&self.proxy, &member(key, network));
        let overdue = waiting.is_some_and(|(since, _)| now.saturating_duration_since(*since) > PROXY_READY_TIMEOUT);
        let reasons = (overdue && !served).then(|| shared::not_ready_reasons(&self.proxy, key).join("; "));
        (served, reasons)
    }

    /// After a pass: write the members wanted this pass plus those of
    /// `draining` groups (gone, their tasks still stopping). Returns the
    /// groups that could not join, with why (the others are written without
    /// them), and the unit to run while there is any member.
    pub fn apply(
        &mut self,
        draining: &BTreeSet<String>,
        sup: &impl Units,
    ) -> (Vec<(String, String)>, Option<UnitSpec>) {
        let wanted = std::mem::take(&mut self.wanted);
        self.joined.retain(|k, _| wanted.contains_key(k));
        let mut next = self.applied.clone();
        next.retain(|k, _| wanted.contains_key(k) || draining.contains(k));
        let changed: Vec<(&String, &NetworkConfig)> = wanted
            .iter()
            .filter(|(k, n)| self.applied.get(*k) != Some(*n))
            .collect();
        let mut failures = Vec::new();
        if next.len() != self.applied.len() || !changed.is_empty() {
            let mut all = next.clone();
            all.extend(changed.iter().map(|(k, n)| ((*k).clone(), (*n).clone())));
            // All at once, so a re-adopted Envoy never sees a partial set;
            // one group at a time only to find which one cannot join.
            match self.write(&all, sup) {
                Ok(()) => next = all,
                Err(_) => {
                    if let Err(e) = self.write(&next, sup) {
                        failures.extend(changed.iter().map(|(k, _)| ((*k).clone(), e.to_string())));
                    } else {
                        for (k, n) in &changed {
                            let mut with = next.clone();
                            with.insert((*k).clone(), (*n).clone());
                            match self.write(&with, sup) {
                                Ok(()) => next = with,
                                Err(e) => failures.push(((*k).clone(), format!("proxy: {e}"))),
                            }
                        }
                    }
                }
            }
            self.applied = next;
        }
        let unit = self.in_use().then(|| self.unit());
        (failures, unit)
    }

    /// Is the unit needed (any member)?
    pub fn in_use(&self) -> bool {
        !self.applied.is_empty()
    }

    /// Write the files for `set`: the first start renders everything afresh
    /// (checking the ports are free), a running Envoy gets the xDS files
    /// rewritten live.
    fn write(&self, set: &BTreeMap<String, NetworkConfig>, sup: &impl Units) -> Result<(), EnvoyError> {
        let members: Vec<Member> = set.iter().map(|(k, n)| member(k, n)).collect();
        let name = unit_name();
        if sup.view(&name).is_some() || sup.has_process(&name) {
            shared::update(&self.proxy, &members)?;
        } else {
            // Made as any unit's directory (the proxy's user reaches it),
            // before `prepare` makes its own private ones inside.
            std::fs::create_dir_all(&self.proxy.dir).map_err(|e| EnvoyError::Write(self.proxy.dir.clone(), e))?;
            shared::prepare(&self.proxy, &members)?;
        }
        *self.written.lock().unwrap_or_else(|e| e.into_inner()) = members;
        Ok(())
    }

    fn unit(&self) -> UnitSpec {
        let proxy = self.proxy.clone();
        let written = Arc::clone(&self.written);
        let unit = UnitId::robot_proxy();
        ProxyUnit {
            name: unit.name(),
            label: "robot envoy".to_string(),
            argv: self.proxy.argv(),
            dir: self.proxy.dir.clone(),
            alloc_dir: self.proxy.dir.clone(),
            user: self.user.clone(),
            path: self.path.clone(),
            // Every (re)start renders every current member afresh and
            // clears a stale admin socket.
            pre_start: specs::pre_start(move || {
                let members = written.lock().unwrap_or_else(|e| e.into_inner()).clone();
                shared::prepare(&proxy, &members)
                    .map(|l| l.argv)
                    .map_err(|e| format!("proxy: {e}"))
            }),
            // Groups come and go through the files, not by a new process:
            // only the binary and its user make a new revision.
            revision: hash_debug(&(&self.proxy.envoy_bin, &self.user)),
        }
        .build()
    }
}
