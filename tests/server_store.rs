#![cfg(feature = "server")]
//! The store conformance suite on the embedded SQLite backend, plus what
//! only a persistent backend can show: state and revisions survive a reopen.

use k8s4r::server::store::sqlite::SqliteStore;
use k8s4r::server::store::{conformance, Key, Store};
use serde_json::json;
use std::sync::Arc;

#[test]
fn sqlite_passes_the_conformance_suite() {
    let dirs = std::sync::Mutex::new(Vec::new());
    let open = |history: usize| -> Arc<dyn Store> {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path(), history).expect("open sqlite store");
        dirs.lock().unwrap().push(dir);
        Arc::new(store)
    };
    conformance::run_all_blocking(&open);
}

#[test]
fn sqlite_keeps_objects_and_revisions_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let k = Key::new("jobs", "default", "a");
        let rev = {
            let s = SqliteStore::open(dir.path(), 10).unwrap();
            s.create(&k, json!({"metadata": {"name": "a"}, "spec": {"n": 1}}))
                .await
                .unwrap();
            let d = s
                .create(&Key::new("jobs", "default", "b"), json!({"metadata": {"name": "b"}}))
                .await
                .unwrap();
            s.delete(&d.key, None).await.unwrap();
            s.revision().await.unwrap()
        };
        let s = SqliteStore::open(dir.path(), 10).unwrap();
        assert!(s.path().exists());
        assert_eq!(s.revision().await.unwrap(), rev, "the revision survives a restart");
        let got = s.get(&k).await.unwrap().expect("object survives a restart");
        assert_eq!(got.value["spec"]["n"], 1);
        assert!(s.get(&Key::new("jobs", "default", "b")).await.unwrap().is_none());
        let next = s.create(&Key::new("jobs", "default", "c"), json!({})).await.unwrap();
        assert_eq!(next.revision, rev + 1, "revisions continue, never reused");
        // History before the restart is gone: resuming there is Expired,
        // resuming at the restart revision works.
        assert!(s.watch(rev - 1).is_err());
        assert!(s.watch(rev).is_ok());
    });
}
