//! One long poll per robot. A robot never needs two at once: a second poll
//! means the first one's connection died unseen (its answer would go
//! nowhere) or two agents share one identity. The newer poll wins and the
//! older one ends at once, answered 429 so that a duplicate agent backs off
//! rather than the two waking each other in a loop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::watch;

type NsName = (String, String);

/// Per robot, the generation of its current poll (robots without an open
/// poll have no entry).
#[derive(Default)]
pub struct PollSlots {
    current: Mutex<HashMap<NsName, watch::Sender<u64>>>,
    next: AtomicU64,
}

/// A poll's hold on its robot's slot; released on drop.
pub struct Slot<'a> {
    slots: &'a PollSlots,
    key: NsName,
    generation: u64,
    current: watch::Receiver<u64>,
}

impl PollSlots {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NsName, watch::Sender<u64>>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take robot `ns/name`'s slot, ending the poll that held it.
    pub fn enter(&self, ns: &str, name: &str) -> Slot<'_> {
        let generation = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let key = (ns.to_string(), name.to_string());
        let mut map = self.lock();
        let current = match map.get(&key) {
            Some(tx) => {
                tx.send_replace(generation);
                tx.subscribe()
            }
            None => {
                let (tx, rx) = watch::channel(generation);
                map.insert(key.clone(), tx);
                rx
            }
        };
        Slot {
            slots: self,
            key,
            generation,
            current,
        }
    }

    /// Robots with a poll open (for tests and metrics).
    pub fn open(&self) -> usize {
        self.lock().len()
    }
}

impl Slot<'_> {
    /// Resolves once a newer poll of the same robot took the slot.
    pub async fn superseded(&mut self) {
        loop {
            if *self.current.borrow_and_update() != self.generation {
                return;
            }
            if self.current.changed().await.is_err() {
                // The entry is gone, so it is not ours: a newer poll took
                // it and finished already.
                return;
            }
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut map = self.slots.lock();
        if map.get(&self.key).is_some_and(|tx| *tx.borrow() == self.generation) {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_newer_poll_ends_the_older_one_of_the_same_robot_only() {
        let slots = PollSlots::default();
        let mut first = slots.enter("default", "r1");
        let mut other = slots.enter("default", "r2");
        let quiet = tokio::time::timeout(Duration::from_millis(50), first.superseded()).await;
        assert!(quiet.is_err(), "nothing replaced the first poll yet");
        let mut second = slots.enter("default", "r1");
        tokio::time::timeout(Duration::from_secs(5), first.superseded())
            .await
            .expect("the first poll ends when the second starts");
        drop(first);
        assert_eq!(slots.open(), 2, "the older poll's end leaves the newer one's slot");
        let quiet = tokio::time::timeout(Duration::from_millis(50), second.superseded()).await;
        assert!(quiet.is_err());
        let quiet = tokio::time::timeout(Duration::from_millis(50), other.superseded()).await;
        assert!(quiet.is_err(), "another robot's poll is untouched");
        drop(second);
        drop(other);
        assert_eq!(slots.open(), 0);
    }
}
