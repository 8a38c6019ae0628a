//! Compaction of etcd's history, as the Kubernetes API server does it: etcd
//! keeps every revision until told otherwise, so the leader periodically
//! compacts up to the revision it saw one interval earlier. Watchers (the
//! replicas' change feeds) therefore always have at least one interval of
//! history to resume from.

use super::client::{self, Client};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The default interval (the API server's default, too).
pub const INTERVAL: Duration = Duration::from_secs(300);

/// Every `interval`, while `leader` is true, compact up to the revision
/// read one interval before. Runs until `leader`'s sender is dropped.
pub async fn run(client: Arc<Client>, mut leader: watch::Receiver<bool>, interval: Duration) {
    let mut previous: Option<u64> = None;
    loop {
        if leader.wait_for(|l| *l).await.is_err() {
            return;
        }
        let now = match client.range(b"/", None).await {
            Ok(r) => Some(client::header_revision(&r)),
            Err(e) => {
                log::warn!("etcd compaction: reading the revision: {e}");
                None
            }
        };
        if let Some(rev) = previous.filter(|&p| p > 0) {
            match client.compact(rev).await {
                Ok(()) => log::debug!("etcd: compacted up to revision {rev}"),
                // Already compacted past it (another leader did): fine.
                Err(e) if e.to_string().contains("compacted") => {}
                Err(e) => log::warn!("etcd compaction at {rev}: {e}"),
            }
        }
        previous = now;
        tokio::time::sleep(interval).await;
        if !*leader.borrow() {
            // Leadership was lost meanwhile: start over when it returns.
            previous = None;
        }
    }
}
