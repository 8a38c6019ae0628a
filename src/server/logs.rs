//! Task output without SSH: an operator asks for a task's log, the request
//! rides on the robot's next long-poll answer (the poll is woken at once),
//! the agent uploads the tail, and the waiting operator request gets it.
//!
//! Requests live in memory on the replica that received them and are
//! answered through the replica the robot polls; with several replicas the
//! operator's request must reach the robot's replica (a known limit, noted
//! in the README), otherwise it times out with a clear message.

use crate::api::agent_protocol::{LogRequest, LogUpload};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::oneshot;

struct Pending {
    request: LogRequest,
    /// Handed to the robot already (on a poll answer).
    sent: bool,
    reply: oneshot::Sender<LogUpload>,
}

/// Outstanding log requests per robot (namespace, name).
#[derive(Default)]
pub struct LogBroker {
    pending: Mutex<HashMap<(String, String), Vec<Pending>>>,
    next_id: AtomicU64,
}

impl LogBroker {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Vec<Pending>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue a request for `robot`; the receiver gets the upload.
    pub fn request(
        &self,
        ns: &str,
        robot: &str,
        task: &str,
        stream: &str,
        tail_lines: Option<u32>,
    ) -> (String, oneshot::Receiver<LogUpload>) {
        let id = format!("log-{}", self.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        let (tx, rx) = oneshot::channel();
        let request = LogRequest {
            id: id.clone(),
            task: task.to_string(),
            stream: stream.to_string(),
            tail_lines,
        };
        self.lock()
            .entry((ns.to_string(), robot.to_string()))
            .or_default()
            .push(Pending {
                request,
                sent: false,
                reply: tx,
            });
        (id, rx)
    }

    /// Whether `robot` has requests it has not been given yet.
    pub fn has_unsent(&self, ns: &str, robot: &str) -> bool {
        self.lock()
            .get(&(ns.to_string(), robot.to_string()))
            .is_some_and(|v| v.iter().any(|p| !p.sent))
    }

    /// The requests to put on this poll answer (marked as given).
    pub fn take_unsent(&self, ns: &str, robot: &str) -> Vec<LogRequest> {
        let mut map = self.lock();
        let Some(list) = map.get_mut(&(ns.to_string(), robot.to_string())) else {
            return Vec::new();
        };
        // Requests whose operator gave up are dropped here.
        list.retain(|p| !p.reply.is_closed());
        list.iter_mut()
            .filter(|p| !p.sent)
            .map(|p| {
                p.sent = true;
                p.request.clone()
            })
            .collect()
    }

    /// The robot's answer; false when nobody waits for it any more.
    pub fn complete(&self, ns: &str, robot: &str, upload: LogUpload) -> bool {
        let mut map = self.lock();
        let key = (ns.to_string(), robot.to_string());
        let Some(list) = map.get_mut(&key) else { return false };
        let Some(i) = list.iter().position(|p| p.request.id == upload.id) else {
            return false;
        };
        let p = list.swap_remove(i);
        if list.is_empty() {
            map.remove(&key);
        }
        p.reply.send(upload).is_ok()
    }

    /// Forget a request (the operator timed out).
    pub fn cancel(&self, ns: &str, robot: &str, id: &str) {
        let mut map = self.lock();
        if let Some(list) = map.get_mut(&(ns.to_string(), robot.to_string())) {
            list.retain(|p| p.request.id != id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_is_given_once_and_answered_once() {
        let b = LogBroker::default();
        let (id, rx) = b.request("default", "r1", "t", "stdout", Some(10));
        assert!(b.has_unsent("default", "r1"));
        let given = b.take_unsent("default", "r1");
        assert_eq!(given.len(), 1);
        assert!(!b.has_unsent("default", "r1"));
        assert!(b.take_unsent("default", "r1").is_empty(), "given once");
        let upload = LogUpload {
            id: id.clone(),
            task: "t".into(),
            text: "hi\n".into(),
            ..Default::default()
        };
        assert!(b.complete("default", "r1", upload.clone()));
        assert_eq!(rx.await.unwrap().text, "hi\n");
        assert!(!b.complete("default", "r1", upload), "answered once");
    }

    #[tokio::test]
    async fn abandoned_requests_are_dropped() {
        let b = LogBroker::default();
        let (_, rx) = b.request("default", "r1", "t", "stdout", None);
        drop(rx);
        assert!(b.take_unsent("default", "r1").is_empty());
    }
}
