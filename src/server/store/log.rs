//! The in-process change log every backend shares: a bounded history of
//! events in revision order, and a signal carrying the latest revision.
//! Watchers read the history from their own position, so a slow watcher
//! costs no memory beyond the history itself; one that falls out of it gets
//! `Expired` (and must re-list), as with etcd compaction.

use super::{Event, StoreError};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Events a watcher takes from the history per lock.
const BATCH: usize = 256;

pub struct EventLog {
    inner: Mutex<Inner>,
    latest: watch::Sender<u64>,
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
    pub fn new(capacity: usize, start: u64) -> Arc<Self> {
        Arc::new(EventLog {
            inner: Mutex::new(Inner {
                history: VecDeque::new(),
                capacity: capacity.max(1),
                compacted: start,
            }),
            latest: watch::channel(start).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record one change. Backends call this in revision order, while still
    /// holding their write lock.
    pub fn publish(&self, event: Event) {
        let rev = event.revision;
        {
            let mut inner = self.lock();
            inner.history.push_back(event);
            while inner.history.len() > inner.capacity {
                if let Some(old) = inner.history.pop_front() {
                    inner.compacted = old.revision;
                }
            }
        }
        self.latest.send_replace(rev);
    }

    /// Forget the history: watchers not yet past `rev` get `Expired` (and
    /// re-list). For a backend whose own change feed lost events.
    pub fn reset(&self, rev: u64) {
        {
            let mut inner = self.lock();
            inner.history.clear();
            inner.compacted = inner.compacted.max(rev);
        }
        self.latest.send_modify(|r| *r = (*r).max(rev));
    }

    /// Wait until a change at `rev` or later has been published (or the
    /// log was reset past it), at most `limit`. False on timeout.
    pub async fn wait_for(&self, rev: u64, limit: std::time::Duration) -> bool {
        let mut rx = self.latest.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|r| *r >= rev))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// A watch of every change after `from`.
    pub fn watch(self: &Arc<Self>, from: u64) -> Result<Watch, StoreError> {
        let oldest = self.lock().compacted;
        if from < oldest {
            return Err(StoreError::Expired {
                requested: from,
                oldest,
            });
        }
        Ok(Watch {
            log: self.clone(),
            rx: self.latest.subscribe(),
            buffer: VecDeque::new(),
            last: from,
        })
    }

    /// Up to BATCH events after `after`, or Expired if they are gone.
    fn read_after(&self, after: u64, into: &mut VecDeque<Event>) -> Result<(), StoreError> {
        let inner = self.lock();
        if after < inner.compacted {
            return Err(StoreError::Expired {
                requested: after,
                oldest: inner.compacted,
            });
        }
        let start = inner.history.partition_point(|e| e.revision <= after);
        into.extend(inner.history.range(start..).take(BATCH).cloned());
        Ok(())
    }
}

/// A stream of changes after a start revision: first the kept history,
/// then live changes as they are published.
pub struct Watch {
    log: Arc<EventLog>,
    rx: watch::Receiver<u64>,
    buffer: VecDeque<Event>,
    last: u64,
}

impl Watch {
    /// The next change. `Expired` if this watcher fell so far behind that
    /// the changes it needs left the history (the caller must re-list).
    pub async fn next(&mut self) -> Result<Event, StoreError> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                self.last = e.revision;
                return Ok(e);
            }
            // Mark the signal seen *before* reading, so a publish after
            // the read wakes us.
            self.rx.borrow_and_update();
            self.log.read_after(self.last, &mut self.buffer)?;
            if self.buffer.is_empty() && self.rx.changed().await.is_err() {
                return Err(StoreError::Backend("store closed".into()));
            }
        }
    }

    /// The revision of the last change delivered (or the start revision).
    pub fn last_revision(&self) -> u64 {
        self.last
    }
}
