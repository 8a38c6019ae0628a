//! The in-process change log every backend shares: a bounded history (so a
//! watch can resume from a recent revision) plus a broadcast of live events.

use super::{Event, StoreError, Watch};
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::broadcast;

/// Live events a slow watcher may fall behind by before it is cut off.
const BROADCAST_CAPACITY: usize = 65_536;

pub struct EventLog {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Event>,
}

struct Inner {
    history: VecDeque<Event>,
    capacity: usize,
    /// Changes at or below this revision are no longer kept.
    compacted: u64,
}

impl EventLog {
    /// A log that keeps the last `capacity` events; `start` is the store's
    /// revision when it was opened (no history before it).
    pub fn new(capacity: usize, start: u64) -> Self {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        EventLog {
            inner: Mutex::new(Inner {
                history: VecDeque::new(),
                capacity: capacity.max(1),
                compacted: start,
            }),
            tx,
        }
    }

    /// Record and broadcast one change. Backends call this in revision
    /// order, while still holding their write lock.
    pub fn publish(&self, event: Event) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.history.push_back(event.clone());
        while inner.history.len() > inner.capacity {
            if let Some(old) = inner.history.pop_front() {
                inner.compacted = old.revision;
            }
        }
        // No receivers is fine.
        let _ = self.tx.send(event);
    }

    /// A watch of every change after `from`.
    pub fn watch(&self, from: u64) -> Result<Watch, StoreError> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if from < inner.compacted {
            return Err(StoreError::Expired {
                requested: from,
                oldest: inner.compacted,
            });
        }
        let backlog = inner.history.iter().filter(|e| e.revision > from).cloned().collect();
        // Subscribing under the lock: nothing is published between the
        // backlog copy and the subscription.
        let rx = self.tx.subscribe();
        Ok(Watch {
            backlog,
            rx,
            last: from,
        })
    }
}
