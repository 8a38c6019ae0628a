//! The serving certificate of the HTTPS listener, issued by the CA and kept
//! in the store (secret `tls-serving`) with the names it covers, so that
//! replicas on one etcd agree on it. Reissued when a name this server wants
//! is missing (covering the stored names too, so replicas with different
//! hostnames converge on one certificate) or when it expires within
//! `RENEW_BEFORE`.

use super::ca::{Ca, Issued, CERT_LIFETIME};
use super::TlsError;
use crate::server::secrets;
use crate::server::store::Store;
use crate::server::store::StoreError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

const SECRET: &str = "tls-serving";
/// Renew a certificate that has less than this left.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// Replicas racing to reissue: each round one of them wins.
const ATTEMPTS: usize = 5;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredCert {
    #[serde(flatten)]
    issued: Issued,
    sans: Vec<String>,
    /// Unix seconds.
    not_after: i64,
}

impl StoredCert {
    fn serves(&self, wanted: &[String], now: i64) -> bool {
        let fresh_until = crate::server::time::unix_after(now, RENEW_BEFORE);
        wanted.iter().all(|w| self.sans.contains(w)) && self.not_after > fresh_until
    }
}

/// The stored serving certificate if it covers `wanted` and is not about
/// to expire; otherwise a new one, stored.
pub async fn load_or_issue(store: &dyn Store, ca: &Ca, wanted: &[String]) -> Result<Issued, TlsError> {
    for _ in 0..ATTEMPTS {
        let now = crate::server::time::now_unix();
        let current = secrets::load_versioned(store, SECRET).await.map_err(TlsError::Store)?;
        let (mut sans, revision) = match current {
            None => (Vec::new(), None),
            Some((value, revision)) => match serde_json::from_value::<StoredCert>(value) {
                Ok(stored) if stored.serves(wanted, now) => return Ok(stored.issued),
                Ok(stored) => (stored.sans, Some(revision)),
                Err(e) => {
                    log::warn!("the stored serving certificate is unreadable ({e}); issuing a new one");
                    (Vec::new(), Some(revision))
                }
            },
        };
        sans.extend(wanted.iter().cloned());
        sans.sort();
        sans.dedup();
        let fresh = StoredCert {
            issued: ca.issue_serving_cert(&sans)?,
            sans,
            not_after: crate::server::time::unix_after(now, CERT_LIFETIME),
        };
        let value = serde_json::to_value(&fresh).map_err(|e| TlsError::Secret(SECRET, e.to_string()))?;
        let written = match revision {
            // First start: whoever stores first wins; the loop then checks
            // that the winner's certificate covers this server's names.
            None => secrets::load_or_create(store, SECRET, || Ok(value)).await.map(|_| ()),
            Some(rev) => secrets::replace(store, SECRET, value, Some(rev)).await,
        };
        match written {
            Ok(()) if revision.is_some() => return Ok(fresh.issued),
            Ok(()) | Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => continue,
            Err(e) => return Err(TlsError::Store(e)),
        }
    }
    Err(TlsError::Secret(
        SECRET,
        format!("other replicas replaced it {ATTEMPTS} times in a row"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::sqlite::SqliteStore;

    #[tokio::test]
    async fn a_missing_name_reissues_covering_the_old_names_too() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), 10).unwrap();
        let ca = Ca::load_or_create(&store).await.unwrap();
        let a = ["localhost".to_string()];
        let first = load_or_issue(&store, &ca, &a).await.unwrap();
        assert_eq!(
            load_or_issue(&store, &ca, &a).await.unwrap(),
            first,
            "kept while it covers"
        );
        let b = ["k8s.example.com".to_string()];
        let second = load_or_issue(&store, &ca, &b).await.unwrap();
        assert_ne!(second, first);
        // The new one covers both: a replica wanting `a` keeps it.
        assert_eq!(load_or_issue(&store, &ca, &a).await.unwrap(), second);
    }
}
