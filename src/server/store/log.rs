//! The in-process change log every backend shares: a bounded history of
//! events in revision order, and a signal carrying the latest revision.
//! Watchers read the history from their own position, so a slow watcher
//! costs no memory beyond the history itself; one that falls out of it gets
//! `Expired` (and must re-list), as with etcd compaction.
//!
//! A watcher may hold the history ([`Watch::hold`]): events it has not
//! read stay past the capacity, up to [`HELD`] times it, so the
//! controllers' cache rides out a burst (a version for 10,000 robots is
//! 20,000 changes in seconds) instead of falling out and re-listing every
//! object, which costs far more than the events kept meanwhile. Once it
//! has caught up, the next publish trims the history back.
//!
//! A writer waiting for its own change to come back (etcd's echo) waits
//! on its revision alone: a publish wakes only the writers whose revision
//! it reached. (Waiting on the latest-revision signal woke every waiting
//! writer on every publish: with hundreds of heartbeats in flight on etcd,
//! each change polled hundreds of request futures, most of the server's
//! CPU during a 10,000-robot dispatch.)

use super::{Event, StoreError};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, watch};

/// Events a watcher takes from the history per lock.
const BATCH: usize = 256;

/// How far past its capacity the history grows for a watcher that holds
/// it ([`Watch::hold`]): a bound on the memory a slow holder may cost.
pub const HELD: usize = 4;

pub struct EventLog {
    inner: Mutex<Inner>,
    latest: watch::Sender<u64>,
}

struct Inner {
    history: VecDeque<Event>,
    capacity: usize,
    /// Holding watchers (by id): the last revision each has read.
    holds: BTreeMap<u64, u64>,
    next_hold: u64,
    /// Changes at or below this revision are no longer kept.
    compacted: u64,
    /// The highest revision published (or reset to).
    latest: u64,
    /// Writers waiting for a revision above `latest`, by that revision.
    waiting: BTreeMap<u64, Vec<oneshot::Sender<()>>>,
}

impl Inner {
    /// Drop events beyond the capacity, except those a holder has not
    /// read yet, while the history stays within HELD times the capacity.
    fn trim(&mut self) {
        let held = self.holds.values().min().copied();
        let most = self.capacity.saturating_mul(HELD);
        while self.history.len() > self.capacity {
            let unread = held.is_some_and(|h| self.history.front().is_some_and(|e| e.revision > h));
            if unread && self.history.len() <= most {
                break;
            }
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.revision;
            }
        }
    }

    /// `rev` is published: the waiters it reached, to wake once unlocked.
    fn reached(&mut self, rev: u64) -> BTreeMap<u64, Vec<oneshot::Sender<()>>> {
        self.latest = self.latest.max(rev);
        let later = match self.latest.checked_add(1) {
            Some(next) => self.waiting.split_off(&next),
            None => BTreeMap::new(),
        };
        std::mem::replace(&mut self.waiting, later)
    }
}

fn wake(reached: BTreeMap<u64, Vec<oneshot::Sender<()>>>) {
    for tx in reached.into_values().flatten() {
        // A waiter that gave up (timed out) dropped its end: nothing to do.
        let _ = tx.send(());
    }
}

impl EventLog {
    /// A log that keeps the last `capacity` events; `start` is the store's
    /// revision when it was opened (no history before it).
    pub fn new(capacity: usize, start: u64) -> Arc<Self> {
        Arc::new(EventLog {
            inner: Mutex::new(Inner {
                history: VecDeque::new(),
                capacity: capacity.max(1),
                holds: BTreeMap::new(),
                next_hold: 0,
                compacted: start,
                latest: start,
                waiting: BTreeMap::new(),
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
        self.publish_all(std::iter::once(event));
    }

    /// Record changes in revision order, seen by watchers (and
    /// [`EventLog::wait_for`]) all at once: every change of a revision that
    /// several share must be in one call, so a writer waiting for its
    /// revision finds all of them.
    pub fn publish_all(&self, events: impl IntoIterator<Item = Event>) {
        let mut latest = None;
        let reached = {
            let mut inner = self.lock();
            for event in events {
                latest = Some(event.revision);
                inner.history.push_back(event);
            }
            inner.trim();
            latest.map(|rev| inner.reached(rev))
        };
        if let Some(rev) = latest {
            self.latest.send_replace(rev);
        }
        wake(reached.unwrap_or_default());
    }

    /// Forget the history: watchers not yet past `rev` get `Expired` (and
    /// re-list). For a backend whose own change feed lost events.
    pub fn reset(&self, rev: u64) {
        let reached = {
            let mut inner = self.lock();
            inner.history.clear();
            inner.compacted = inner.compacted.max(rev);
            inner.reached(rev)
        };
        self.latest.send_modify(|r| *r = (*r).max(rev));
        wake(reached);
    }

    /// Wait until a change at `rev` or later has been published (or the
    /// log was reset past it), at most `limit`. False on timeout.
    pub async fn wait_for(&self, rev: u64, limit: std::time::Duration) -> bool {
        let rx = {
            let mut inner = self.lock();
            if inner.latest >= rev {
                return true;
            }
            // Senders of waiters that timed out are dropped here, so the
            // map holds only live waiters (and those of the last moment).
            if let Some(list) = inner.waiting.get_mut(&rev) {
                list.retain(|tx| !tx.is_closed());
            }
            let (tx, rx) = oneshot::channel();
            inner.waiting.entry(rev).or_default().push(tx);
            rx
        };
        tokio::time::timeout(limit, rx).await.is_ok_and(|r| r.is_ok())
    }

    /// A watch of every change after `from`, and of every change at `from`
    /// too when several share it (the watcher may have seen only some).
    pub fn watch(self: &Arc<Self>, from: u64) -> Result<Watch, StoreError> {
        let inner = self.lock();
        if from < inner.compacted {
            return Err(StoreError::Expired {
                requested: from,
                oldest: inner.compacted,
            });
        }
        let at = inner.history.partition_point(|e| e.revision < from);
        let shared = inner
            .history
            .range(at..)
            .take_while(|e| e.revision == from)
            .nth(1)
            .is_some();
        Ok(Watch {
            log: self.clone(),
            rx: self.latest.subscribe(),
            buffer: VecDeque::new(),
            last: if shared { from - 1 } else { from },
            hold: None,
        })
    }

    /// About BATCH events after `after` (never splitting a revision), or
    /// Expired if they are gone. A holder's (`hold`) position moves to
    /// the last event read.
    fn read_after(&self, after: u64, into: &mut VecDeque<Event>, hold: Option<u64>) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if after < inner.compacted {
            return Err(StoreError::Expired {
                requested: after,
                oldest: inner.compacted,
            });
        }
        let h = &inner.history;
        let start = h.partition_point(|e| e.revision <= after);
        let mut end = (start + BATCH).min(h.len());
        while end > start && end < h.len() && h[end].revision == h[end - 1].revision {
            end += 1;
        }
        into.extend(h.range(start..end).cloned());
        let read = into.back().map_or(after, |e| e.revision.max(after));
        if let Some(pos) = hold.and_then(|id| inner.holds.get_mut(&id)) {
            *pos = read;
        }
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
    /// This watcher's hold on the history, if it took one.
    hold: Option<u64>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(id) = self.hold {
            self.log.lock().holds.remove(&id);
        }
    }
}

impl Watch {
    /// Keep the events this watcher has not read in the history, up to
    /// `HELD` (4) times its capacity (see the module doc). For the one
    /// in-process consumer that must see every change and pays most for
    /// a re-list: the controllers' cache.
    pub fn hold(&mut self) {
        let mut inner = self.log.lock();
        if self.hold.is_none() {
            let id = inner.next_hold;
            inner.next_hold += 1;
            inner.holds.insert(id, self.last);
            self.hold = Some(id);
        }
    }

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
            self.log.read_after(self.last, &mut self.buffer, self.hold)?;
            if self.buffer.is_empty() && self.rx.changed().await.is_err() {
                return Err(StoreError::Backend("store closed".into()));
            }
        }
    }

    /// The next revision's changes, all of them (a revision that several
    /// share is never split: see [`EventLog::publish_all`]).
    pub async fn next_revision(&mut self) -> Result<Vec<Event>, StoreError> {
        let first = self.next().await?;
        let rev = first.revision;
        let mut all = vec![first];
        // Reads take whole revisions, so the rest is in the buffer.
        while self.buffer.front().is_some_and(|e| e.revision == rev) {
            all.extend(self.buffer.pop_front());
        }
        Ok(all)
    }

    /// The revision of the last change delivered (or the start revision).
    pub fn last_revision(&self) -> u64 {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::super::{EventKind, Key};
    use super::*;
    use serde_json::json;

    fn event(name: &str, revision: u64) -> Event {
        Event {
            kind: EventKind::Added,
            revision,
            key: Key::new("tasks", "d", name),
            value: Arc::new(json!({"metadata": {"name": name}})),
            prev: None,
        }
    }

    fn drain(w: &mut Watch, n: usize) -> Vec<(String, u64)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        (0..n)
            .map(|_| {
                let e = rt.block_on(w.next()).unwrap();
                (e.key.name, e.revision)
            })
            .collect()
    }

    /// 300 changes of one etcd transaction (another client's: k8s4r writes
    /// one object per revision) share revision 2: one read takes all of
    /// them (a watcher resumes by revision, so a read that stopped at 256
    /// would lose the other 44), and a watch resuming from the shared
    /// revision gets all of them again rather than none.
    #[test]
    fn a_shared_revision_is_read_whole_and_redelivered_on_resume() {
        let log = EventLog::new(1000, 0);
        log.publish(event("first", 1));
        log.publish_all((0..300).map(|i| event(&format!("t{i}"), 2)));
        log.publish(event("last", 3));

        let mut w = log.watch(0).unwrap();
        let seen = drain(&mut w, 302);
        assert_eq!(seen[0], ("first".to_string(), 1));
        assert!(seen[1..301].iter().all(|(_, r)| *r == 2));
        assert_eq!(seen[301], ("last".to_string(), 3));
        let mut buffer = VecDeque::new();
        log.read_after(1, &mut buffer, None).unwrap();
        assert_eq!(
            buffer.len(),
            300,
            "past BATCH to the shared revision's end, and no further"
        );

        let mut whole = log.watch(1).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let revision = rt.block_on(whole.next_revision()).unwrap();
        assert_eq!(revision.len(), 300, "a shared revision comes whole");
        assert_eq!(rt.block_on(whole.next_revision()).unwrap()[0].key.name, "last");

        let mut again = log.watch(2).unwrap();
        let seen = drain(&mut again, 301);
        assert_eq!(seen.iter().filter(|(_, r)| *r == 2).count(), 300);
        assert_eq!(seen[300].1, 3);
        assert_eq!(
            log.watch(3).unwrap().last_revision(),
            3,
            "a revision of one change is not repeated"
        );
    }

    /// A watcher that holds the history is not expired by a burst past the
    /// capacity, up to HELD times it (others read what it kept); once the
    /// holder has read, the next publish trims back to the capacity; and a
    /// dropped holder holds nothing.
    #[test]
    fn a_holding_watcher_rides_out_a_burst_within_its_bound() {
        let log = EventLog::new(10, 0);
        let mut held = log.watch(0).unwrap();
        held.hold();
        for rev in 1..=35 {
            log.publish(event(&format!("t{rev}"), rev));
        }
        assert_eq!(log.lock().history.len(), 35, "kept for the holder");
        let seen = drain(&mut held, 35);
        assert_eq!(
            seen.iter().map(|(_, r)| *r).collect::<Vec<_>>(),
            (1..=35).collect::<Vec<_>>()
        );
        log.publish(event("next", 36));
        assert_eq!(log.lock().history.len(), 10, "trimmed once read");

        // Past HELD times the capacity the holder is expired like anyone.
        for rev in 37..=37 + (10 * HELD) as u64 {
            log.publish(event(&format!("t{rev}"), rev));
        }
        assert_eq!(log.lock().history.len(), 10 * HELD);
        assert!(matches!(drain_result(&mut held), Err(StoreError::Expired { .. })));

        drop(held);
        log.publish(event("last", 100));
        assert_eq!(log.lock().history.len(), 10, "a dropped holder holds nothing");
        assert!(log.lock().holds.is_empty());
        assert!(matches!(log.watch(50), Err(StoreError::Expired { .. })));
    }

    fn drain_result(w: &mut Watch) -> Result<Event, StoreError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(w.next())
    }

    /// A writer waits for its own revision: a publish below it leaves it
    /// waiting, one at or past it (or a reset past it) answers it, and one
    /// that gave up leaves nothing behind that a later publish trips on.
    #[test]
    fn a_writer_is_answered_when_its_revision_is_published_and_not_before() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let log = EventLog::new(100, 1);
            let limit = std::time::Duration::from_secs(30);
            assert!(log.wait_for(1, limit).await, "the start revision is there already");
            let five = tokio::spawn({
                let log = log.clone();
                async move { log.wait_for(5, limit).await }
            });
            let nine = tokio::spawn({
                let log = log.clone();
                async move { log.wait_for(9, limit).await }
            });
            let gave_up = log.wait_for(7, std::time::Duration::from_millis(1)).await;
            assert!(!gave_up, "nothing reached 7 within its limit");
            while log.lock().waiting.values().map(Vec::len).sum::<usize>() < 3 {
                tokio::task::yield_now().await;
            }
            log.publish(event("a", 4));
            tokio::task::yield_now().await;
            assert!(!five.is_finished() && !nine.is_finished(), "4 answers neither");
            log.publish(event("b", 7));
            assert!(five.await.unwrap(), "7 is past 5");
            assert!(!nine.is_finished());
            assert_eq!(log.lock().waiting.keys().collect::<Vec<_>>(), vec![&9], "only 9 waits");
            log.reset(12);
            assert!(nine.await.unwrap(), "a reset past 9 answers it");
            assert!(log.lock().waiting.is_empty());
        });
    }
}
