#![cfg(feature = "server")]
//! The store conformance suite against a real etcd, exactly as against
//! SQLite, plus what only etcd shows: two stores (two server replicas) on
//! one cluster see each other's writes in their watches, a new replica
//! resumes watches from recent revisions, and the leader compacts etcd.

mod common;
mod server_util;

use k8s4r::server::store::etcd::EtcdStore;
use k8s4r::server::store::{conformance, EventKind, Key, Store, StoreError};
use serde_json::json;
use server_util::etcd::Etcd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn etcd_passes_the_conformance_suite() {
    let etcd = Etcd::start();
    let endpoints = etcd.endpoint_list();
    let n = AtomicUsize::new(0);
    // Each check gets an empty store: its own key prefix on the cluster.
    let open = |history: usize| -> Arc<dyn Store> {
        let prefix = format!("/conformance-{}", n.fetch_add(1, Ordering::Relaxed));
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                Arc::new(
                    EtcdStore::connect(&endpoints, &prefix, history)
                        .await
                        .expect("connect to etcd"),
                ) as Arc<dyn Store>
            })
        })
    };
    runtime().block_on(conformance::run_all(&open));
}

async fn next_event(w: &mut k8s4r::server::store::Watch) -> k8s4r::server::store::Event {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("event within 5 s")
        .expect("event")
}

#[test]
fn two_replicas_see_each_others_writes() {
    let etcd = Etcd::start();
    let endpoints = etcd.endpoint_list();
    runtime().block_on(async {
        let a = EtcdStore::connect(&endpoints, "/k8s4r", 100).await.unwrap();
        let b = EtcdStore::connect(&endpoints, "/k8s4r", 100).await.unwrap();
        let mut wa = a.watch(a.revision().await.unwrap()).unwrap();
        let k = Key::new("jobs", "default", "x");
        let created = b.create(&k, json!({"metadata": {"name": "x"}})).await.unwrap();
        let e = next_event(&mut wa).await;
        assert_eq!(
            (e.kind, e.revision, e.key.clone()),
            (EventKind::Added, created.revision, k.clone())
        );
        // A stale write through A after B's update is a Conflict.
        let updated = b
            .update(&k, json!({"metadata": {"name": "x"}, "n": 1}), None)
            .await
            .unwrap();
        match a
            .update(&k, json!({"metadata": {"name": "x"}}), Some(created.revision))
            .await
        {
            Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, updated.revision),
            other => panic!("stale update through the other replica must conflict: {other:?}"),
        }
        let e = next_event(&mut wa).await;
        assert_eq!((e.kind, e.revision), (EventKind::Modified, updated.revision));
        assert_eq!(a.get(&k).await.unwrap().unwrap().value["n"], 1);
    });
}

#[test]
fn a_new_replica_resumes_watches_from_recent_revisions() {
    let etcd = Etcd::start();
    let endpoints = etcd.endpoint_list();
    runtime().block_on(async {
        let s = EtcdStore::connect(&endpoints, "/k8s4r", 3).await.unwrap();
        let mut revs = Vec::new();
        for i in 0..6 {
            let k = Key::new("jobs", "d", &format!("j{i}"));
            revs.push(s.create(&k, json!({})).await.unwrap().revision);
        }
        assert!(
            matches!(s.watch(revs[0]), Err(StoreError::Expired { .. })),
            "beyond a replica's history: Expired"
        );
        // A replica started now replays recent history from etcd: a watch
        // from a revision the first replica returned resumes on it.
        let late = EtcdStore::connect(&endpoints, "/k8s4r", 100).await.unwrap();
        let mut w = late.watch(revs[0]).unwrap();
        for r in &revs[1..] {
            let e = next_event(&mut w).await;
            assert_eq!((e.kind, e.revision), (EventKind::Added, *r));
        }
        assert_eq!(
            late.list("jobs", None).await.unwrap().items.len(),
            6,
            "state is in etcd"
        );
        // History older than what a replica keeps is Expired there too.
        let small = EtcdStore::connect(&endpoints, "/k8s4r", 2).await.unwrap();
        assert!(matches!(small.watch(revs[0]), Err(StoreError::Expired { .. })));
    });
}

/// The events store: no etcd watch (so no replica decodes every event)
/// until something watches it; then the watch replays what was written
/// since the store connected, and follows.
#[test]
fn an_on_demand_store_watches_etcd_only_once_watched() {
    let etcd = Etcd::start();
    let endpoints = etcd.endpoint_list();
    runtime().block_on(async {
        const WATCHERS: &str = "etcd_debugging_mvcc_watcher_total";
        let before = etcd.metric(WATCHERS);
        let s = EtcdStore::connect_on_demand(&endpoints, "/k8s4r-events", 10)
            .await
            .unwrap();
        let from = s.revision().await.unwrap();
        let first = s.create(&Key::new("events", "d", "a"), json!({"n": 0})).await.unwrap();
        assert_eq!(etcd.metric(WATCHERS), before, "no etcd watch before anyone watches");
        let mut w = s.watch(from).unwrap();
        let e = next_event(&mut w).await;
        assert_eq!((e.kind, e.revision), (EventKind::Added, first.revision), "replayed");
        let second = s
            .update(&Key::new("events", "d", "a"), json!({"n": 1}), None)
            .await
            .unwrap();
        let e = next_event(&mut w).await;
        assert_eq!((e.kind, e.revision), (EventKind::Modified, second.revision), "followed");
        assert_eq!(
            etcd.metric(WATCHERS),
            before + 1,
            "one etcd watch, however many watchers"
        );
        let _again = s.watch(second.revision).unwrap();
        assert_eq!(etcd.metric(WATCHERS), before + 1);
    });
}

#[test]
fn the_leader_compacts_etcd_history() {
    use k8s4r::server::store::etcd::client::{prefix_end, Client, EtcdError};
    use k8s4r::server::store::etcd::compact;
    let etcd = Etcd::start();
    let endpoints = etcd.endpoint_list();
    runtime().block_on(async {
        let s = EtcdStore::connect(&endpoints, "/k8s4r", 100).await.unwrap();
        let k = Key::new("jobs", "d", "a");
        let first = s.create(&k, json!({"n": 0})).await.unwrap().revision;
        let last = s.update(&k, json!({"n": 1}), None).await.unwrap().revision;
        let client = Arc::new(Client::new(&endpoints));
        let (leader, rx) = tokio::sync::watch::channel(true);
        let compactor = tokio::spawn(compact::run(client.clone(), rx, Duration::from_millis(100)));
        // Until etcd answers a watch from `first` with "compacted".
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let prefix = b"/k8s4r/".to_vec();
        loop {
            let mut w = client.watch(&prefix, &prefix_end(&prefix), first).await.unwrap();
            // The first message acknowledges the watch; the second says
            // "compacted", or replays history if it is still there.
            let mut compacted = None;
            for _ in 0..2 {
                match tokio::time::timeout(Duration::from_secs(2), w.next()).await {
                    Ok(Err(EtcdError::Compacted { compact_revision, .. })) => compacted = Some(compact_revision),
                    Ok(Ok(batch)) if batch.events.is_empty() => continue,
                    _ => break,
                }
            }
            if let Some(rev) = compacted {
                assert!(rev > first);
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "etcd was not compacted");
            s.update(&k, json!({"n": 2}), None).await.unwrap();
        }
        compactor.abort();
        drop(leader);
        // The current state is untouched, and a replica joining now works.
        assert_eq!(s.get(&k).await.unwrap().unwrap().value["n"], 2);
        assert!(s.get(&k).await.unwrap().unwrap().revision > last);
        let late = EtcdStore::connect(&endpoints, "/k8s4r", 100).await.unwrap();
        assert_eq!(late.list("jobs", None).await.unwrap().items.len(), 1);
    });
}
