//! Task output without SSH: an operator asks for a task's log, the request
//! rides on the robot's next long-poll answer (the poll is woken at once),
//! the agent uploads the tail, and the waiting operator request gets it.
//!
//! With several replicas the operator's request and the robot's long poll
//! may reach different replicas, so requests go through the store (the
//! internal `_logrequests` resource, never served by the Kubernetes API):
//! every replica relays the requests it sees to the robots polling it, and
//! an upload that arrives where nobody waits is written back into the
//! request, where the asking replica's relay picks it up. On one replica the
//! same path runs, plus a direct in-memory hand-off.

use super::fleet::Fleet;
use super::object::{hex, random_bytes};
use super::store::{EventKind, Key, Store, StoreError};
use super::time;
use crate::api::agent_protocol::{LogRequest, LogUpload};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

pub const LOG_REQUESTS: &str = "_logrequests";

/// One request as stored: who it is for, until when it matters, and the
/// robot's answer once it arrived on a replica where nobody waited.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredRequest {
    namespace: String,
    robot: String,
    request: LogRequest,
    expires: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upload: Option<LogUpload>,
}

/// A request to hand to a robot polling this replica.
struct Offer {
    request: LogRequest,
    /// Handed to the robot already (on a poll answer).
    sent: bool,
}

/// An operator request made on this replica, waiting for its upload.
struct Waiter {
    robot: (String, String),
    reply: oneshot::Sender<LogUpload>,
}

/// This replica's in-memory side: offers per robot, local waiters by id.
#[derive(Default)]
pub struct LogBroker {
    offers: Mutex<HashMap<(String, String), Vec<Offer>>>,
    waiters: Mutex<HashMap<String, Waiter>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LogBroker {
    /// Wait here for the upload answering `id`, sent by robot `ns/robot`.
    pub fn wait(&self, ns: &str, robot: &str, id: &str) -> oneshot::Receiver<LogUpload> {
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter {
            robot: (ns.to_string(), robot.to_string()),
            reply: tx,
        };
        lock(&self.waiters).insert(id.to_string(), waiter);
        rx
    }

    /// Offer a request to `robot`'s next poll here; false if already known.
    pub fn offer(&self, ns: &str, robot: &str, request: LogRequest) -> bool {
        let mut offers = lock(&self.offers);
        let list = offers.entry((ns.to_string(), robot.to_string())).or_default();
        if list.iter().any(|o| o.request.id == request.id) {
            return false;
        }
        list.push(Offer { request, sent: false });
        true
    }

    /// Whether `robot` has requests it has not been given yet.
    pub fn has_unsent(&self, ns: &str, robot: &str) -> bool {
        lock(&self.offers)
            .get(&(ns.to_string(), robot.to_string()))
            .is_some_and(|v| v.iter().any(|o| !o.sent))
    }

    /// The requests to put on this poll answer (marked as given).
    pub fn take_unsent(&self, ns: &str, robot: &str) -> Vec<LogRequest> {
        let mut offers = lock(&self.offers);
        let Some(list) = offers.get_mut(&(ns.to_string(), robot.to_string())) else {
            return Vec::new();
        };
        list.iter_mut()
            .filter(|o| !o.sent)
            .map(|o| {
                o.sent = true;
                o.request.clone()
            })
            .collect()
    }

    /// Hand `upload` from robot `ns/robot` to its waiter on this replica;
    /// false when nobody waits here (or the waiter asked another robot).
    pub fn deliver(&self, ns: &str, robot: &str, upload: LogUpload) -> bool {
        let mut waiters = lock(&self.waiters);
        let mine = waiters
            .get(&upload.id)
            .is_some_and(|w| w.robot.0 == ns && w.robot.1 == robot);
        if !mine {
            return false;
        }
        let w = waiters.remove(&upload.id).expect("checked above");
        drop(waiters);
        self.drop_offer(&upload.id);
        w.reply.send(upload).is_ok()
    }

    /// Forget request `id` everywhere on this replica.
    pub fn forget(&self, id: &str) {
        lock(&self.waiters).remove(id);
        self.drop_offer(id);
    }

    fn drop_offer(&self, id: &str) {
        let mut offers = lock(&self.offers);
        offers.retain(|_, list| {
            list.retain(|o| o.request.id != id);
            !list.is_empty()
        });
    }
}

/// The log requests of the whole control plane: the store plus this
/// replica's broker.
pub struct Logs {
    store: Arc<dyn Store>,
    pub broker: LogBroker,
}

impl Logs {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Logs {
            store,
            broker: LogBroker::default(),
        }
    }

    /// Ask robot `ns/robot` for a task's log; the receiver gets the upload.
    /// Call [`Logs::finish`] with the id once answered or given up.
    pub async fn ask(
        &self,
        ns: &str,
        robot: &str,
        task: &str,
        stream: &str,
        tail_lines: Option<u32>,
        patience: Duration,
    ) -> Result<(String, oneshot::Receiver<LogUpload>), StoreError> {
        self.sweep_expired().await;
        let id = format!("log-{}", hex(&random_bytes::<8>()));
        let request = LogRequest {
            id: id.clone(),
            task: task.to_string(),
            stream: stream.to_string(),
            tail_lines,
        };
        let rx = self.broker.wait(ns, robot, &id);
        let record = StoredRequest {
            namespace: ns.to_string(),
            robot: robot.to_string(),
            request: request.clone(),
            expires: time::unix_after(time::now_unix(), patience).saturating_add(1),
            upload: None,
        };
        let value = serde_json::to_value(&record).map_err(|e| StoreError::Backend(e.to_string()))?;
        if let Err(e) = self.store.create(&Key::new(LOG_REQUESTS, "", &id), value).await {
            self.broker.forget(&id);
            return Err(e);
        }
        // The robot may poll this very replica: no need to wait for the relay.
        self.broker.offer(ns, robot, request);
        Ok((id, rx))
    }

    /// The request is answered or abandoned: remove it everywhere.
    pub async fn finish(&self, id: &str) {
        self.broker.forget(id);
        match self.store.delete(&Key::new(LOG_REQUESTS, "", id), None).await {
            Ok(_) | Err(StoreError::NotFound(_)) => {}
            Err(e) => log::warn!("logs: removing request {id}: {e}"),
        }
    }

    /// Robot `ns/robot` answers: hand it over here, or write it into the
    /// stored request for the replica that asked. False: nobody asked this
    /// robot for it (any more).
    pub async fn answer(&self, ns: &str, robot: &str, upload: LogUpload) -> Result<bool, StoreError> {
        if self.broker.deliver(ns, robot, upload.clone()) {
            return Ok(true);
        }
        self.broker.drop_offer(&upload.id);
        let key = Key::new(LOG_REQUESTS, "", &upload.id);
        let Some(stored) = self.store.get(&key).await? else {
            return Ok(false);
        };
        let Ok(mut record) = serde_json::from_value::<StoredRequest>(Arc::unwrap_or_clone(stored.value)) else {
            return Ok(false);
        };
        // A robot answers only what was asked of it.
        if record.namespace != ns || record.robot != robot || record.upload.is_some() {
            return Ok(false);
        }
        record.upload = Some(upload);
        let value = serde_json::to_value(&record).map_err(|e| StoreError::Backend(e.to_string()))?;
        match self.store.update(&key, value, Some(stored.revision)).await {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound(_) | StoreError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Requests whose asker crashed stay behind: drop the expired ones.
    async fn sweep_expired(&self) {
        let Ok(listed) = self.store.list(LOG_REQUESTS, None).await else {
            return;
        };
        let now = time::now_unix();
        for s in listed.items {
            let expired = s.value.get("expires").and_then(|e| e.as_i64()).is_none_or(|e| e < now);
            if expired {
                let _ = self.store.delete(&s.key, Some(s.revision)).await;
            }
        }
    }

    /// Apply one stored request to this replica: offer it to its robot (and
    /// wake the robot's long poll) or hand its upload to a local waiter.
    fn relay_one(&self, fleet: &Fleet, id: &str, value: Option<&serde_json::Value>) {
        let Some(record) = value.and_then(|v| serde_json::from_value::<StoredRequest>(v.clone()).ok()) else {
            self.broker.forget(id);
            return;
        };
        if record.expires < time::now_unix() {
            return;
        }
        match record.upload {
            Some(upload) => {
                // Answered: deliver it if asked here; stop offering it anyway.
                if !self.broker.deliver(&record.namespace, &record.robot, upload) {
                    self.broker.drop_offer(id);
                }
            }
            None => {
                if self.broker.offer(&record.namespace, &record.robot, record.request) {
                    fleet.subscribe(&record.namespace, &record.robot).1.notify_waiters();
                }
            }
        }
    }

    /// Follow `_logrequests` in the store for as long as the server runs.
    pub async fn relay(self: Arc<Self>, fleet: Arc<Fleet>) {
        loop {
            let started = async {
                let from = self.store.revision().await?;
                for s in self.store.list(LOG_REQUESTS, None).await?.items {
                    self.relay_one(&fleet, &s.key.name, Some(&s.value));
                }
                self.store.watch(from)
            }
            .await;
            let mut watch = match started {
                Ok(w) => w,
                Err(e) => {
                    log::warn!("logs: following log requests: {e}; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            loop {
                match watch.next().await {
                    Ok(ev) if ev.key.resource == LOG_REQUESTS => {
                        let value = (ev.kind != EventKind::Deleted).then_some(&*ev.value);
                        self.relay_one(&fleet, &ev.key.name, value);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if !matches!(e, StoreError::Expired { .. }) {
                            log::warn!("logs: watch: {e}; re-listing");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(id: &str, text: &str) -> LogUpload {
        LogUpload {
            id: id.into(),
            task: "t".into(),
            text: text.into(),
            ..Default::default()
        }
    }

    fn request(id: &str) -> LogRequest {
        LogRequest {
            id: id.into(),
            task: "t".into(),
            stream: "stdout".into(),
            tail_lines: Some(10),
        }
    }

    #[tokio::test]
    async fn a_request_is_given_once_and_answered_once() {
        let b = LogBroker::default();
        let rx = b.wait("default", "r1", "log-1");
        assert!(b.offer("default", "r1", request("log-1")));
        assert!(!b.offer("default", "r1", request("log-1")), "offered once");
        assert!(b.has_unsent("default", "r1"));
        assert_eq!(b.take_unsent("default", "r1").len(), 1);
        assert!(!b.has_unsent("default", "r1"));
        assert!(b.take_unsent("default", "r1").is_empty(), "given once");
        assert!(b.deliver("default", "r1", upload("log-1", "hi\n")));
        assert_eq!(rx.await.unwrap().text, "hi\n");
        assert!(!b.deliver("default", "r1", upload("log-1", "again")), "answered once");
    }

    #[tokio::test]
    async fn another_robot_cannot_answer_and_forget_drops_everything() {
        let b = LogBroker::default();
        let _rx = b.wait("default", "r1", "log-2");
        b.offer("default", "r1", request("log-2"));
        assert!(!b.deliver("default", "r2", upload("log-2", "forged")));
        b.forget("log-2");
        assert!(!b.has_unsent("default", "r1"));
        assert!(!b.deliver("default", "r1", upload("log-2", "late")));
    }
}
