//! The agent API's logic: registration (a join token's proof binds a robot
//! name to the robot's keys), the long poll that hands each robot its
//! desired Task set (complete, or what changed: [`assignments`]), and idempotent status reports. Requests reach
//! it verified as one robot's ([`crate::server::robot_channel`]), and open
//! only that robot's objects.

use crate::api::agent_protocol::{
    JoinToken, JoinTokenList, JoinTokenRequest, LogUpload, Outcome, RegisterRequest, RegisterResponse, ServerKeyList,
    StatusReply, StatusReport, StatusResult,
};
use crate::api::robot_channel::{Claim, PublicKeys};
use crate::api::validate::check_dns_subdomain;
use crate::api::FieldError;
use crate::server::annotations::{ANN_STATUS_SEQ, ANN_UNKNOWN_SINCE};
use crate::server::assignments::{self, Ask};
use crate::server::controllers::Hub;
use crate::server::events::{Kind, Recorder};
use crate::server::fleet::{self, Heartbeat};
use crate::server::limits::Limits;
use crate::server::object;
use crate::server::poll_slots::PollSlots;
use crate::server::registry::{Part, Registry, WriteOptions};
use crate::server::resources::{ROBOTS, TASKS};
use crate::server::robot_channel::link::{self, HoldTiming, Link};
use crate::server::robot_channel::verify::{check_time, Refusal, SignedRequest};
use crate::server::robot_channel::{self, Channel};
use crate::server::status::Status;
use crate::server::stored_task;
use crate::server::time;
use crate::server::tokens::{Bound, RevokeError, RobotIdentity, RobotRecord, TokenError, Tokens, UsesLimit};
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub struct Agents {
    pub registry: Registry,
    pub tokens: Arc<Tokens>,
    /// The robot channel's keys, robots and checks.
    pub channel: Channel,
    pub hub: Arc<Hub>,
    pub events: Recorder,
    /// Operators' requests for task output, answered by the robots.
    pub logs: Arc<crate::server::task_logs::Logs>,
    /// Caps on what one robot or join token can make the server hold.
    pub limits: Limits,
    /// The one long poll each robot may have open.
    pub polls: PollSlots,
    /// The agent release key's public half (hex), `--release-public-key`.
    pub release_key: Option<String>,
    /// True once the server is stopping: held polls answer at once (a
    /// graceful stop waits for every answer, and a poll may be held for
    /// an hour).
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// How long an operator's log request waits for the robot's answer.
pub const LOG_TIMEOUT: Duration = Duration::from_secs(15);

fn token_error(e: TokenError) -> Status {
    match e {
        TokenError::Invalid => Status::unauthorized("the join token is unknown or expired"),
        TokenError::JoinTokenUsedUp(UsesLimit::Token(limit)) => Status::too_many_requests(
            format!(
                "this join token has registered the {limit} robots it was created for \
                 (k8s4r token create --uses {limit}); create another join token"
            ),
            None,
        ),
        TokenError::BoundToName(bound) => Status::forbidden(format!(
            "this join token registers only robot {bound:?} (k8s4r token create --name {bound})"
        )),
        TokenError::JoinTokenUsedUp(UsesLimit::Server(limit)) => Status::too_many_requests(
            format!(
                "this join token has registered its limit of {limit} robots \
                 (--max-robots-per-join-token); create another join token"
            ),
            None,
        ),
        TokenError::Contended => Status::new(
            503,
            "ServiceUnavailable",
            "the join token is being used by many registrations at once; retry",
        ),
        TokenError::NameRegistered(name) => Status::new(
            409,
            "AlreadyExists",
            format!("robot {name} is registered with another key; `k8s4r robot reset {name}` lets a new one take it"),
        ),
        TokenError::NameTaken(ns) => Status::new(
            409,
            "AlreadyExists",
            format!("a robot with this name is registered in namespace {ns:?}"),
        ),
        TokenError::Store(e) => e.into(),
    }
}

fn revoke_error(e: RevokeError, what: &str) -> Status {
    match e {
        RevokeError::NotFound => Status::new(404, "NotFound", format!("{what} not found")),
        RevokeError::Ambiguous(n) => Status::bad_request(format!("{what} matches {n} tokens: give more of the id")),
        RevokeError::Store(e) => e.into(),
    }
}

/// The wire form of [`crate::api::agent_protocol::Assignments`], serialised straight from the cached
/// Task objects (they were admitted as Tasks when written; decoding them
/// again per poll would only cost CPU).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AssignmentsView {
    pub revision: u64,
    pub tasks: Vec<Shared>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub delta: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    #[serde(skip_serializing_if = "crate::api::StringMap::is_empty")]
    pub versions: crate::api::StringMap,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The group form's group parts (`groups=1`).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub groups: std::collections::BTreeMap<String, Shared>,
    #[serde(skip_serializing_if = "crate::api::StringMap::is_empty")]
    pub group_versions: crate::api::StringMap,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed_groups: Vec<String>,
    pub poll_interval_seconds: u64,
    pub offline_after_seconds: u64,
    /// Over the agent listener: how long a poll may be held (the agent
    /// asks that as its `wait`) and how often its connection is probed.
    #[serde(skip_serializing_if = "crate::api::agent_protocol::is_zero")]
    pub hold_seconds: u64,
    #[serde(skip_serializing_if = "crate::api::agent_protocol::is_zero")]
    pub probe_seconds: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub log_requests: Vec<crate::api::agent_protocol::LogRequest>,
    /// An agent release to install (see `agent_rollout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_update: Option<crate::api::agent_release::AgentUpdate>,
    /// With an agent update: the release key, for robots that have none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_key: Option<String>,
}

/// A cached object, serialised in place.
#[derive(Debug)]
pub struct Shared(pub Arc<Value>);

impl Serialize for Shared {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Now plus `d`, for a deadline (a duration too large to add is as good as
/// never).
/// Two readings of a connection's last acknowledgement this close are
/// the same acknowledgement.
const SAME_ACK: Duration = Duration::from_millis(50);

fn after(d: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(86_400 * 365)))
        .unwrap_or(now)
}

const INTERNAL: WriteOptions = WriteOptions {
    validation: crate::server::admission::FieldValidation::Ignore,
    dry_run: false,
    manager: None,
};

impl Agents {
    pub async fn create_join_token(&self, req: &JoinTokenRequest) -> Result<JoinToken, Status> {
        let terms = self.limits.join_terms(req)?;
        let pin = self.channel.keys.current().public.pin();
        let (token, expires, id) = self.tokens.create_join(&terms, pin).await.map_err(token_error)?;
        Ok(JoinToken {
            token,
            expires,
            id,
            uses: terms.uses,
            name: terms.name,
        })
    }

    pub async fn list_join_tokens(&self) -> Result<JoinTokenList, Status> {
        let items = self.tokens.list_join().await.map_err(token_error)?;
        Ok(JoinTokenList { items })
    }

    pub async fn revoke_join_token(&self, id: &str) -> Result<(), Status> {
        self.tokens
            .revoke_join(id)
            .await
            .map_err(|e| revoke_error(e, &format!("join token {id:?}")))
    }

    /// Unbind robot `name`'s keys (`k8s4r robot reset`); the Robot object
    /// and its tasks stay (the robot goes Offline unless a robot registers
    /// the name again with a join token).
    pub async fn reset_robot(&self, name: &str) -> Result<(), Status> {
        let reset = self.tokens.reset_robot(name).await;
        // Forgotten here either way: another replica may have reset it.
        self.channel.robots.forget(name);
        reset.map_err(|e| revoke_error(e, &format!("keys of robot {name:?}")))?;
        log::info!("robot {name:?}: keys reset; a join token may bind the name to new keys");
        Ok(())
    }

    /// Add a new server key; the current one answers for `overlap` more.
    pub async fn rotate_server_keys(&self, overlap: Duration) -> Result<ServerKeyList, Status> {
        let list = self.channel.keys.rotate(overlap).await.map_err(|e| match e {
            robot_channel::server_keys::KeyError::Contended => Status::new(409, "Conflict", e.to_string()),
            e => Status::internal(e.to_string()),
        })?;
        log::info!("robot channel: server key rotated; the old one answers for {overlap:?} more");
        // Held polls answer now, endorsing the new key, rather than up to
        // --poll-hold later (robots polling other replicas hear of it with
        // their next answer: keep the overlap above --poll-hold).
        self.hub.fleet.wake_all();
        Ok(list)
    }

    /// A refused registration: logged, counted, 401.
    fn refuse_registration(&self, name: &str, reason: impl std::fmt::Display) -> Status {
        self.channel.refuse(name, "registration", &reason);
        Status::unauthorized(reason.to_string())
    }

    /// `signed`: the request's signature headers. A name not registered is
    /// bound to the keys the request carries; a name bound to them already
    /// registers again; a name bound to other keys is 409.
    pub async fn register(&self, req: RegisterRequest, signed: &SignedRequest) -> Result<RegisterResponse, Status> {
        let name = req.name.as_str();
        if self.channel.keys.find(&signed.server_key).await.is_none() {
            return Err(self.refuse_registration(name, Refusal::UnknownServerKey(signed.server_key.clone())));
        }
        let keys = PublicKeys::from_hex(&req.signing_key, &req.sealing_key)
            .map_err(|e| Status::bad_request(format!("signingKey, sealingKey: {e}")))?;
        let proof =
            crate::api::hex::decode::<32>(&req.proof).ok_or_else(|| Status::bad_request("proof: not 64 hex digits"))?;
        if let Some(d) = &req.device_info {
            self.limits.check_device_info(d)?;
        }
        let ns = req
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let subject = ROBOTS.subject(name);
        if let Err(e) = check_dns_subdomain(name) {
            return Err(Status::invalid(subject, &[FieldError::new("name", e)]));
        }
        if let Err(e) = check_dns_subdomain(&ns) {
            return Err(Status::invalid(subject, &[FieldError::new("namespace", e)]));
        }
        if !keys.verify(signed.head(name).text().as_bytes(), &signed.signature) {
            return Err(self.refuse_registration(name, Refusal::BadSignature));
        }
        let now = robot_channel::now();
        check_time(signed.time, now, self.channel.skew).map_err(|e| self.refuse_registration(name, e))?;
        check_time(req.time, now, self.channel.skew).map_err(|e| self.refuse_registration(name, e))?;
        let grant = match self.tokens.check_join(&req.token_id).await {
            Ok(g) => g,
            Err(TokenError::Invalid) => {
                return Err(
                    self.refuse_registration(name, format!("join token {:?} is unknown or expired", req.token_id))
                )
            }
            Err(e) => return Err(token_error(e)),
        };
        let claim = Claim {
            token_id: &req.token_id,
            namespace: &ns,
            name,
            keys: &keys,
            time: req.time,
            nonce: &req.nonce,
        };
        if !claim.check(&grant.secret_hash, &proof) {
            return Err(
                self.refuse_registration(name, format!("the proof does not match join token {:?}", req.token_id))
            );
        }
        // Bind the name (or find it bound to these keys) before touching
        // the Robot.
        let record = RobotRecord {
            namespace: ns.clone(),
            keys,
            counter: signed.counter,
        };
        match self
            .tokens
            .bind_robot(&grant, self.limits.robots_per_join_token, name, &record)
            .await
        {
            Ok(Bound::New) => self.channel.robots.bound(name, record),
            Ok(Bound::Again) => {
                let bound = self.channel.robots.get(name).await?;
                let last = bound.map(|r| r.accept(signed.counter));
                if let Some(Err(last)) = last {
                    return Err(self.refuse_registration(
                        name,
                        Refusal::Replayed {
                            counter: signed.counter,
                            last,
                        },
                    ));
                }
            }
            Err(e @ (TokenError::NameRegistered(_) | TokenError::NameTaken(_))) => {
                let status = token_error(e);
                self.channel.refuse(name, "registration", &status.message);
                return Err(status);
            }
            Err(e) => return Err(token_error(e)),
        }
        // Operator-only labels a robot claims are dropped (and said so).
        let (labels, refused) = crate::api::robot_labels::split_claim(&req.labels);
        let mut status = json!({"phase": "Online", "lastHeartbeatTime": time::now_rfc3339()});
        if let Some(d) = &req.device_info {
            status["deviceInfo"] = d.clone();
        }
        if let Some(v) = &req.agent_version {
            status["agentVersion"] = json!(v);
        }
        let robot = match self.registry.get(&ROBOTS, &ns, name).await {
            Err(e) if e.code == 404 => {
                let body = json!({
                    "apiVersion": crate::api::API_VERSION, "kind": "Robot",
                    "metadata": {"name": name, "namespace": ns, "labels": labels},
                    "spec": {"robotId": name, "labels": labels},
                    "status": status,
                });
                self.registry.create(&ROBOTS, &ns, body, Part::All, INTERNAL).await?
            }
            Err(e) => return Err(e),
            Ok(current) => {
                // An agent adds to or changes its declared labels, never
                // removes one (it may have come from the Robot's manifest);
                // the registry carries the change into metadata.labels,
                // the one label set. A key declared before that is missing
                // there (removed by the operator, or a Robot stored before
                // there was one set) is put back, as a kubelet does.
                let string_map = object::string_map;
                let now = string_map(current.pointer("/metadata/labels"));
                let previous = string_map(current.pointer("/spec/labels"));
                let mut declared = previous.clone();
                declared.extend(labels);
                let merged = crate::api::robot_labels::merge_report(&now, &previous, &declared);
                let patch = json!({"status": status,
                    "metadata": {"labels": label_patch(&now, &merged)},
                    "spec": {"labels": declared}});
                self.registry
                    .patch(&ROBOTS, &ns, name, &patch, Part::All, INTERNAL)
                    .await?
            }
        };
        self.events.record(
            &robot.object,
            Kind::Normal,
            "Registered",
            "the agent registered with a join token",
        );
        if !refused.is_empty() {
            self.events.record(
                &robot.object,
                Kind::Warning,
                "OperatorLabelsIgnored",
                format!(
                    "the agent claimed labels only operators may set (kubectl label robot): {}; ignored",
                    refused.join(", ")
                ),
            );
        }
        self.hub.fleet.wrote_heartbeat(&ns, name);
        Ok(RegisterResponse {
            name: req.name,
            namespace: ns,
            poll_interval_seconds: self.hub.fleet.poll_interval().as_secs().max(1),
            release_key: self.release_key.clone(),
        })
    }

    /// Record a sign of life; write it to the Robot when the stored one is
    /// getting old (whichever replica wrote it) or the Robot is not Online.
    /// Returns how long the stored heartbeat stays fresh.
    async fn heartbeat(&self, id: &RobotIdentity) -> Result<Duration, Status> {
        self.heartbeat_seen(id, std::time::Instant::now()).await
    }

    /// [`Agents::heartbeat`] for a sign of life `seen` earlier (a held
    /// poll's last TCP acknowledgement).
    async fn heartbeat_seen(&self, id: &RobotIdentity, seen: std::time::Instant) -> Result<Duration, Status> {
        let (ns, name) = (id.namespace.as_str(), id.name.as_str());
        let ago = seen.elapsed();
        let cached = self.hub.cache.get("robots", ns, name);
        let online = cached
            .as_ref()
            .and_then(|r| r.get("status")?.get("phase")?.as_str().map(|p| p == "Online"))
            .unwrap_or(false);
        if !online {
            // Whatever heartbeat the Robot holds, it must turn Online now.
            self.hub.fleet.forget_persisted(ns, name);
        }
        let stored_age = cached
            .as_deref()
            .filter(|_| online)
            .and_then(fleet::stored_heartbeat_age);
        if let Heartbeat::FreshFor(left) = self.hub.fleet.heartbeat_seen(ns, name, stored_age, seen) {
            return Ok(left);
        }
        let at = time::now_unix().saturating_sub(i64::try_from(ago.as_secs()).unwrap_or(i64::MAX));
        let patch =
            json!({"status": {"phase": "Online", "lastHeartbeatTime": time::format_rfc3339(at), "message": null}});
        match self
            .registry
            .patch_known(&ROBOTS, cached.as_deref(), ns, name, &patch, Part::Status, INTERNAL)
            .await
        {
            Ok(w) => {
                if !online {
                    self.events
                        .record(&w.object, Kind::Normal, "RobotOnline", "heartbeats resumed");
                    // Back: its next answer carries the whole set (not a
                    // delta, whose unchanged tasks the agent would not look
                    // at), so the agent sees what the server marked Lost
                    // meanwhile and reports its tasks again.
                    self.hub.fleet.forget_delivered(ns, name);
                    if let Some(rev) = object::resource_version(&w.object) {
                        self.hub.fleet.wake(ns, name, rev);
                    }
                }
                // The robot's request counter goes to the store with its
                // heartbeat, not with every request.
                if let Err(e) = self.channel.save_counter(name).await {
                    log::warn!("robot {ns}/{name}: saving its request counter: {e}");
                }
            }
            Err(e) => {
                self.hub.fleet.forget_persisted(ns, name);
                return Err(if e.code == 404 {
                    Status::new(
                        404,
                        "NotFound",
                        format!("robot {ns}/{name} was deleted; register again"),
                    )
                } else {
                    e
                });
            }
        }
        Ok(self.hub.fleet.heartbeat_refresh())
    }

    /// The answer to a poll at `revision`. A robot that named this very
    /// revision as `since` has this set already and gets no tasks: agents
    /// take the set only from an answer whose revision differs from their
    /// `since` (every agent so far did), so an idle poll on a metered link
    /// costs a few hundred bytes, not the whole set each time. An agent
    /// that asked for deltas gets only what changed when the server
    /// remembers the set it delivered at `since` ([`assignments`]).
    fn desired(&self, id: &RobotIdentity, revision: u64, since: u64, ask: Ask) -> AssignmentsView {
        let agent_update = self.hub.rollouts.offer_for(&self.hub.cache, &id.namespace, &id.name);
        let mut view = AssignmentsView {
            revision,
            tasks: Vec::new(),
            delta: false,
            removed: Vec::new(),
            versions: crate::api::StringMap::new(),
            digest: None,
            groups: std::collections::BTreeMap::new(),
            group_versions: crate::api::StringMap::new(),
            removed_groups: Vec::new(),
            poll_interval_seconds: self.hub.fleet.poll_interval().as_secs().max(1),
            offline_after_seconds: self.hub.fleet.offline_after().as_secs(),
            hold_seconds: 0,
            probe_seconds: 0,
            log_requests: self.logs.broker.take_unsent(&id.namespace, &id.name),
            release_key: agent_update.as_ref().and(self.release_key.clone()),
            agent_update,
        };
        let (ns, name) = (id.namespace.as_str(), id.name.as_str());
        if !ask.delta {
            if revision != since {
                view.tasks = self
                    .hub
                    .cache
                    .tasks_on_robot(ns, name)
                    .into_iter()
                    .map(Shared)
                    .collect();
            }
            return view;
        }
        let kept = self.hub.fleet.delivered(ns, name);
        // A set remembered in the other form is no base (an agent updated
        // in between gets the complete set).
        let base = kept
            .iter()
            .find(|d| d.revision == since && since != 0 && d.grouped == ask.groups);
        if revision == since {
            // Nothing new; a resuming agent still learns whether its set
            // is the server's (unknown here: the complete set, below).
            match (ask.verify, base) {
                (false, _) => return view,
                (true, Some(b)) => {
                    view.delta = true;
                    view.digest = Some(b.digest().to_string());
                    return view;
                }
                (true, None) => {}
            }
        }
        let now = assignments::delivered(
            self.hub.cache.tasks_on_robot(ns, name),
            revision,
            kept.last().map(|d| &**d),
            ask.groups,
        );
        let answer = assignments::answer(&now, base.map(|d| &**d));
        self.hub.fleet.remember_delivered(ns, name, Arc::new(now));
        view.delta = answer.delta;
        view.tasks = answer.tasks.into_iter().map(Shared).collect();
        view.removed = answer.removed;
        view.versions = answer.versions;
        view.groups = answer.groups.into_iter().map(|(k, g)| (k, Shared(g))).collect();
        view.group_versions = answer.group_versions;
        view.removed_groups = answer.removed_groups;
        view.digest = Some(answer.digest);
        view
    }

    /// The long poll: answer when the robot's desired set has a revision
    /// above `since`, or after `wait`: at most the fleet's interval, or,
    /// over a connection the server can watch (`link`, the agent
    /// listener), up to `--poll-hold` with the connection's TCP keepalive
    /// as the heartbeat meanwhile.
    pub async fn poll(
        &self,
        id: &RobotIdentity,
        since: u64,
        wait: Duration,
        ask: Ask,
        link: Option<&Link>,
    ) -> Result<AssignmentsView, Status> {
        // The heartbeat writes are boxed: inline, their futures would size
        // this one, which every robot keeps for its whole held poll.
        let fresh_for = Box::pin(self.heartbeat(id)).await?;
        let interval = self.hub.fleet.poll_interval();
        let offline_after = self.hub.fleet.offline_after();
        let timing = HoldTiming::for_offline_after(offline_after);
        // Held past the interval only when asked, and only where the
        // robot's acknowledgements can be read; the probes are set up here.
        let hold = self
            .hub
            .fleet
            .poll_hold()
            .filter(|_| link.is_some() && offline_after >= link::MIN_OFFLINE_AFTER);
        let held = link
            .filter(|_| hold.is_some() && wait > interval)
            .filter(|l| match l.hold(timing, offline_after) {
                Ok(()) => true,
                Err(e) => {
                    log::debug!("robot {}: not holding its poll: {e}", id.name);
                    false
                }
            });
        let wait = wait.min(match (held, hold) {
            (Some(_), Some(hold)) => hold,
            _ => interval,
        });
        let (_, notify) = self.hub.fleet.subscribe(&id.namespace, &id.name);
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let rev = self.hub.fleet.revision(&id.namespace, &id.name);
        let stopping = *self.stopping.borrow();
        if rev <= since && !wait.is_zero() && !stopping && !self.logs.broker.has_unsent(&id.namespace, &id.name) {
            // The robot holding its poll open is alive: its stored heartbeat
            // is refreshed when it falls due during the wait, not only when
            // the robot comes back (that could be a whole wait too late).
            // Held longer than the interval, it is alive while its end of
            // the connection answers the probes: the heartbeat written is
            // its last acknowledgement's time, and a connection silent
            // past the offline limit (or closed) ends the poll.
            let end = after(wait);
            let mut fresh_for = fresh_for;
            // The last acknowledgement this poll counted: only a newer one
            // is news (the kernel's clock for it ticks in milliseconds, so
            // the same one read twice differs by a few).
            let mut counted: Option<std::time::Instant> = None;
            let stop = crate::server::stopped_signal(self.stopping.clone());
            tokio::pin!(stop);
            loop {
                let next = match held {
                    Some(_) => fresh_for.min(timing.check),
                    None => fresh_for,
                };
                let woken = tokio::select! {
                    changed = tokio::time::timeout_at(after(next).min(end), notified.as_mut()) => changed.is_ok(),
                    () = stop.as_mut() => true,
                };
                if woken {
                    break;
                }
                fresh_for = match held.map(Link::ack_age) {
                    None => Box::pin(self.heartbeat(id)).await?,
                    Some(Ok(ago)) if ago < offline_after => {
                        let seen = std::time::Instant::now()
                            .checked_sub(ago)
                            .unwrap_or_else(std::time::Instant::now);
                        // An old acknowledgement read again is no sign of
                        // life: counting it could turn a robot Online that
                        // the liveness controller has just (rightly) marked
                        // Offline, while its link is down.
                        if counted.is_none_or(|before| before.checked_add(SAME_ACK).is_none_or(|b| seen > b)) {
                            counted = Some(seen);
                            Box::pin(self.heartbeat_seen(id, seen)).await?
                        } else {
                            timing.check
                        }
                    }
                    Some(Ok(_) | Err(_)) => break,
                };
                if tokio::time::Instant::now() >= end {
                    break;
                }
            }
        }
        let rev = self.hub.fleet.revision(&id.namespace, &id.name);
        let mut view = self.desired(id, rev, since, ask);
        if let Some(hold) = hold {
            view.hold_seconds = hold.as_secs();
            view.probe_seconds = timing.probe.as_secs();
        }
        Ok(view)
    }

    /// [`Agents::poll`] holding the robot's one poll slot: a newer poll
    /// from the same robot ends this one with 429 (see [`PollSlots`]).
    /// Ending it drops the older poll wherever it is, which is no different
    /// from its client hanging up: `poll` must stay safe to cancel anywhere.
    pub async fn poll_exclusive(
        &self,
        id: &RobotIdentity,
        since: u64,
        wait: Duration,
        ask: Ask,
        link: Option<&Link>,
    ) -> Result<AssignmentsView, Status> {
        let mut slot = self.polls.enter(&id.namespace, &id.name);
        tokio::select! {
            answer = self.poll(id, since, wait, ask, link) => answer,
            () = slot.superseded() => Err(Status::too_many_requests(
                format!(
                    "a newer poll from robot {:?} replaced this one (one long poll per robot; \
                     is a second agent using this robot's identity?)",
                    id.name
                ),
                Some(1),
            )),
        }
    }

    /// An operator wants a task's output: ask the robot it runs on (through
    /// its long poll, woken now) and wait for the upload.
    pub async fn task_log(
        &self,
        ns: &str,
        task: &str,
        stream: &str,
        tail_lines: Option<u32>,
    ) -> Result<LogUpload, Status> {
        if stream != "stdout" && stream != "stderr" {
            return Err(Status::bad_request(format!(
                "stream {stream:?} must be stdout or stderr"
            )));
        }
        let obj = self
            .hub
            .cache
            .get("tasks", ns, task)
            .ok_or_else(|| Status::new(404, "NotFound", format!("tasks.robot.k8s4r.io {task:?} not found")))?;
        let robot = obj
            .get("spec")
            .and_then(|s| s.get("targetRobot"))
            .and_then(Value::as_str)
            .ok_or_else(|| Status::bad_request(format!("task {task:?} is not placed on a robot yet")))?
            .to_string();
        let online = self
            .hub
            .cache
            .get("robots", ns, &robot)
            .and_then(|r| r.get("status")?.get("phase")?.as_str().map(|p| p == "Online"))
            .unwrap_or(false);
        if !online {
            return Err(Status::new(
                503,
                "ServiceUnavailable",
                format!("robot {robot:?} is offline; its logs stay on the robot until it is back"),
            ));
        }
        let (id, rx) = self.logs.ask(ns, &robot, task, stream, tail_lines, LOG_TIMEOUT).await?;
        // Wake the robot's poll if it waits here (other replicas' relays
        // wake theirs when they see the stored request).
        let (_, notify) = self.hub.fleet.subscribe(ns, &robot);
        notify.notify_waiters();
        let answer = tokio::time::timeout(LOG_TIMEOUT, rx).await;
        self.logs.finish(&id).await;
        match answer {
            Ok(Ok(upload)) => match &upload.error {
                Some(e) => Err(Status::new(404, "NotFound", format!("robot {robot:?}: {e}"))),
                None => Ok(upload),
            },
            _ => Err(Status::new(
                504,
                "Timeout",
                format!("robot {robot:?} did not send the log within {LOG_TIMEOUT:?}"),
            )),
        }
    }

    /// A robot's answer to a log request (asked on this or another replica).
    pub async fn upload_log(&self, id: &RobotIdentity, upload: LogUpload) -> Result<(), Status> {
        if self.logs.answer(&id.namespace, &id.name, upload).await? {
            Ok(())
        } else {
            Err(Status::new(
                404,
                "NotFound",
                "no operator is waiting for this log (timed out?)".to_string(),
            ))
        }
    }

    pub async fn report(&self, id: &RobotIdentity, report: StatusReport) -> Result<StatusReply, Status> {
        self.limits.check_report(&report)?;
        self.heartbeat(id).await?;
        let (ns, robot) = (id.namespace.as_str(), id.name.as_str());
        if report.device_info.is_some()
            || report.agent_version.is_some()
            || report.backlog.is_some()
            || report.architecture.is_some()
            || report.last_update.is_some()
        {
            let cached = self.hub.cache.get("robots", ns, robot);
            let status = cached.as_ref().and_then(|r| r.get("status"));
            let mut patch = json!({});
            if let Some(d) = &report.device_info {
                if status.and_then(|s| s.get("deviceInfo")) != Some(d) {
                    patch["deviceInfo"] = d.clone();
                }
            }
            if let Some(v) = &report.agent_version {
                if status.and_then(|s| s.get("agentVersion")).and_then(Value::as_str) != Some(v) {
                    patch["agentVersion"] = json!(v);
                    patch["agentVersionTime"] = json!(crate::server::time::now_rfc3339());
                }
            }
            if let Some(n) = report.backlog {
                if status.and_then(|s| s.get("statusBacklog")).and_then(Value::as_u64) != Some(n) {
                    patch["statusBacklog"] = json!(n);
                }
            }
            if let Some(a) = &report.architecture {
                if status.and_then(|s| s.get("architecture")).and_then(Value::as_str) != Some(a) {
                    patch["architecture"] = json!(a);
                }
            }
            let new_update = report.last_update.as_ref().and_then(|u| {
                let value = serde_json::to_value(u).ok()?;
                (status.and_then(|s| s.get("lastUpdate")) != Some(&value)).then_some((u, value))
            });
            if let Some((u, value)) = &new_update {
                patch["lastUpdate"] = value.clone();
                if u.result != crate::api::agent_release::UpdateOutcome::Applied {
                    // Read from the store, not the cache: two failures
                    // reported close together must both be kept.
                    let stored = self.registry.get(&ROBOTS, ns, robot).await?;
                    let mut failed: Vec<String> = stored
                        .pointer("/status/failedUpdates")
                        .and_then(|f| serde_json::from_value(f.clone()).ok())
                        .unwrap_or_default();
                    if !failed.contains(&u.version) {
                        failed.push(u.version.clone());
                        let over = failed.len().saturating_sub(crate::api::types::MAX_FAILED_UPDATES);
                        failed.drain(..over);
                        patch["failedUpdates"] = json!(failed);
                    }
                }
            }
            if patch.as_object().is_some_and(|m| !m.is_empty()) {
                let w = self
                    .registry
                    .patch(&ROBOTS, ns, robot, &json!({"status": patch}), Part::Status, INTERNAL)
                    .await?;
                if let Some((u, _)) = new_update {
                    self.record_update(&w.object, u);
                }
            }
        }
        let mut results = Vec::with_capacity(report.updates.len());
        for u in report.updates {
            let outcome = self.apply_status(ns, robot, &u).await?;
            results.push(StatusResult {
                task: u.task,
                seq: u.seq,
                outcome,
            });
        }
        Ok(StatusReply { results })
    }

    /// An event on the Robot for each new self-update result.
    fn record_update(&self, robot: &Value, u: &crate::api::agent_release::UpdateResult) {
        use crate::api::agent_release::UpdateOutcome as O;
        let (kind, reason) = match u.result {
            O::Applied => (Kind::Normal, "AgentUpdated"),
            O::Refused => (Kind::Warning, "AgentUpdateRefused"),
            O::RolledBack => (Kind::Warning, "AgentUpdateRolledBack"),
        };
        let message = format!("{} {}: {}", u.release, u.version, u.message);
        self.events.record(robot, kind, reason, message);
    }

    fn record_transition(&self, task: &Value, robot: &str, st: &crate::api::TaskStatus) {
        use crate::api::TaskState as S;
        let detail = st.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
        let (kind, reason, message) = match st.state {
            S::Running => (Kind::Normal, "Started", format!("running on robot {robot}{detail}")),
            S::Completed => (
                Kind::Normal,
                "Completed",
                format!("exited with code {}{detail}", st.exit_code.unwrap_or(0)),
            ),
            S::Failed => (
                Kind::Warning,
                "Failed",
                match (st.exit_code, st.signal) {
                    (_, Some(sig)) => format!("killed by signal {sig}{detail}"),
                    (Some(c), _) => format!("exited with code {c}{detail}"),
                    _ => format!("failed{detail}"),
                },
            ),
            other => (Kind::Normal, "StateChanged", format!("{}{detail}", other.as_str())),
        };
        self.events.record(task, kind, reason, message);
    }

    async fn apply_status(
        &self,
        ns: &str,
        robot: &str,
        u: &crate::api::agent_protocol::TaskStatusUpdate,
    ) -> Result<Outcome, Status> {
        for _ in 0..5 {
            let cur = match self.registry.get(&TASKS, ns, &u.task).await {
                Ok(v) => v,
                Err(e) if e.code == 404 => return Ok(Outcome::NotFound),
                Err(e) => return Err(e),
            };
            if stored_task::target_robot(&cur) != Some(robot) {
                return Ok(Outcome::NotAssigned);
            }
            let last: u64 = object::annotation(&cur, ANN_STATUS_SEQ)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if u.seq <= last {
                return Ok(Outcome::Duplicate);
            }
            let mut body = cur.clone();
            body["status"] = serde_json::to_value(&u.status).map_err(|e| Status::bad_request(e.to_string()))?;
            object::set_annotation(&mut body, ANN_STATUS_SEQ, Some(&u.seq.to_string()));
            // Heard from again: no longer Unknown.
            object::set_annotation(&mut body, ANN_UNKNOWN_SINCE, None);
            let before = cur.get("status").and_then(|s| s.get("state")).cloned();
            match self
                .registry
                .replace(&TASKS, ns, &u.task, body, Part::All, INTERNAL)
                .await
            {
                Ok(w) => {
                    if before.as_ref() != Some(&serde_json::to_value(u.status.state).unwrap_or_default()) {
                        self.record_transition(&w.object, robot, &u.status);
                    }
                    return Ok(Outcome::Applied);
                }
                Err(e) if e.reason == "Conflict" => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Status::conflict(TASKS.subject(&u.task)))
    }
}

/// A merge patch turning label map `old` into `new` (removed keys null).
fn label_patch(
    old: &std::collections::BTreeMap<String, String>,
    new: &std::collections::BTreeMap<String, String>,
) -> Value {
    let mut p = serde_json::Map::new();
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        p.insert(k.clone(), Value::Null);
    }
    p.extend(new.iter().map(|(k, v)| (k.clone(), json!(v))));
    Value::Object(p)
}
