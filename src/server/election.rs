//! Leader election among server replicas on etcd: the leader holds one key
//! attached to its lease. A candidate creates the key in a transaction that
//! requires it to be absent (`create_revision == 0`); the leader keeps its
//! lease alive and steps down on its own before the lease can have expired
//! in etcd, so two replicas never both believe they lead. When a leader dies
//! its lease expires after the TTL and the key goes with it.

use crate::server::store::etcd::client::{self, Client, EtcdError};
use crate::server::time;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Lease lifetime: how long a dead leader blocks a successor at most.
pub const TTL_SECONDS: u64 = 3;

/// Why this replica stopped campaigning on a lease.
#[derive(Debug)]
pub enum ElectionError {
    Etcd(EtcdError),
    /// etcd says the lease is gone.
    LeaseExpired(u64),
    /// No keepalive succeeded before the lease could have expired.
    NotRenewed(u64),
}

impl std::fmt::Display for ElectionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ElectionError::Etcd(e) => write!(f, "{e}"),
            ElectionError::LeaseExpired(id) => write!(f, "lease {id:x} expired"),
            ElectionError::NotRenewed(id) => write!(f, "lease {id:x} not renewed in time"),
        }
    }
}

impl std::error::Error for ElectionError {}

impl From<EtcdError> for ElectionError {
    fn from(e: EtcdError) -> Self {
        ElectionError::Etcd(e)
    }
}

#[derive(Clone)]
pub struct Election {
    client: Arc<Client>,
    key: String,
    /// Who we are (written as the key's value, for operators).
    id: String,
    leader: watch::Sender<bool>,
    lease: Arc<std::sync::Mutex<Option<u64>>>,
    /// Set by [`Election::resign`]: campaign no more.
    resigned: Arc<AtomicBool>,
}

impl Election {
    /// Campaign for `key` in the background. The receiver says whether this
    /// replica leads right now. `client` should be the election's own, so
    /// that renewals never queue behind store traffic.
    pub fn start(client: Arc<Client>, key: String, id: String) -> (Election, watch::Receiver<bool>) {
        let (tx, rx) = watch::channel(false);
        let e = Election {
            client,
            key,
            id,
            leader: tx,
            lease: Arc::new(std::sync::Mutex::new(None)),
            resigned: Arc::new(AtomicBool::new(false)),
        };
        crate::server::panics::spawn_essential("the leader election", e.clone().run());
        (e, rx)
    }

    /// Give leadership up at once (on shutdown): revoke the lease, so a
    /// successor need not wait for it to expire.
    pub async fn resign(&self) {
        self.resigned.store(true, Ordering::SeqCst);
        self.leader.send_replace(false);
        let lease = self.lease.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(id) = lease {
            if let Err(e) = self.client.lease_revoke(id).await {
                log::warn!("election: revoking lease {id:x}: {e}");
            }
        }
    }

    async fn run(self) {
        let tick = Duration::from_millis(TTL_SECONDS * 1000 / 4);
        while !self.resigned.load(Ordering::SeqCst) {
            let asked = Instant::now();
            let lease = match self.client.lease_grant(TTL_SECONDS).await {
                Ok(id) => id,
                Err(e) => {
                    log::warn!("election: granting a lease: {e}");
                    tokio::time::sleep(tick).await;
                    continue;
                }
            };
            *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease);
            if let Err(e) = self.hold(lease, asked, tick).await {
                log::warn!("election: {e}");
            }
            if self.leader.send_replace(false) {
                log::warn!("election: no longer the leader; controllers stop");
            }
            tokio::time::sleep(tick).await;
        }
    }

    /// Campaign and lead on one lease (granted on a request sent at
    /// `asked`) until it is lost or this replica resigns.
    async fn hold(&self, lease: u64, asked: Instant, tick: Duration) -> Result<(), ElectionError> {
        // Renewed before each use; `valid_until` is when etcd may at the
        // earliest have dropped the lease: the time the last successful
        // keepalive was *sent*, plus the TTL, minus a safety margin.
        let margin = Duration::from_millis(500);
        // Checked arithmetic throughout; where a time is not representable
        // the lease counts as ending now (the safe side).
        let lease_for = |ttl: u64| Duration::from_secs(ttl).saturating_sub(margin);
        let mut valid_until = time::later_or_now(asked, lease_for(TTL_SECONDS));
        while !self.resigned.load(Ordering::SeqCst) {
            if !*self.leader.borrow() && self.try_acquire(lease).await? && !self.resigned.load(Ordering::SeqCst) {
                log::info!("election: this replica ({}) leads; controllers start", self.id);
                self.leader.send_replace(true);
            }
            let wake = time::later_or_now(Instant::now(), tick).min(valid_until);
            tokio::time::sleep_until(wake).await;
            let sent = Instant::now();
            let renewed = tokio::time::timeout_at(valid_until, self.client.lease_keepalive(lease)).await;
            match renewed {
                Ok(Ok(ttl)) if ttl > 0 => {
                    // etcd's answer, trusted no further than what was asked.
                    valid_until = time::later_or_now(sent, lease_for(ttl.min(TTL_SECONDS)));
                }
                Ok(Ok(_)) => return Err(ElectionError::LeaseExpired(lease)),
                Ok(Err(e)) if Instant::now() < valid_until => log::warn!("election: keepalive: {e}"),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(ElectionError::NotRenewed(lease)),
            }
        }
        Ok(())
    }

    async fn try_acquire(&self, lease: u64) -> Result<bool, EtcdError> {
        let k = client::b64(self.key.as_bytes());
        let req = json!({
            "compare": [{"target": "CREATE", "key": k, "result": "EQUAL", "create_revision": "0"}],
            "success": [{"request_put": {"key": k, "value": client::b64(self.id.as_bytes()), "lease": lease.to_string()}}],
            "failure": [],
        });
        let resp = self.client.txn(&req).await?;
        Ok(resp.get("succeeded").and_then(serde_json::Value::as_bool) == Some(true))
    }
}
