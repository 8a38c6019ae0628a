//! The behaviour every [`Store`] backend must have, written once over the
//! trait. A backend's test calls [`run_all`] with a factory of fresh, empty
//! stores; the factory's argument is the number of history events to keep.
//!
//! Each check panics with a message naming the broken rule.

use super::{BatchOp, EventKind, Key, Store, StoreError};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub type Factory<'a> = &'a dyn Fn(usize) -> Arc<dyn Store>;

/// Run every check; each on a fresh store.
pub async fn run_all(open: Factory<'_>) {
    create_then_get(open(100).as_ref()).await;
    create_twice_is_already_exists(open(100).as_ref()).await;
    update_compare_and_swap(open(100).as_ref()).await;
    update_missing_is_not_found(open(100).as_ref()).await;
    delete_compare_and_swap(open(100).as_ref()).await;
    list_filters_and_sorts(open(100).as_ref()).await;
    list_field_reads_one_string_field(open(100).as_ref()).await;
    revisions_are_global_and_monotonic(open(100).as_ref()).await;
    watch_delivers_in_order(open(100).as_ref()).await;
    watch_resumes_from_revision(open(100).as_ref()).await;
    watch_too_old_is_expired(open(3).as_ref()).await;
    batch_applies_each_operation(open(100).as_ref()).await;
    batch_of_many_creates_is_written_and_watched_whole(open(1000).as_ref()).await;
}

/// [`run_all`] on its own runtime, for plain `#[test]`s.
pub fn run_all_blocking(open: Factory<'_>) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run_all(open));
}

fn obj(name: &str, n: i64) -> Value {
    json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job", "metadata": {"name": name}, "spec": {"n": n}})
}

fn rv_of(v: &Value) -> String {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

pub async fn create_then_get(s: &dyn Store) {
    let k = Key::new("jobs", "default", "a");
    assert!(s.get(&k).await.unwrap().is_none(), "get of a missing key must be None");
    let created = s.create(&k, obj("a", 1)).await.unwrap();
    assert!(created.revision > 0, "revisions start above 0");
    assert_eq!(
        rv_of(&created.value),
        created.revision.to_string(),
        "resourceVersion is stamped on create"
    );
    let got = s.get(&k).await.unwrap().expect("created object must be readable");
    assert_eq!(got.revision, created.revision);
    assert_eq!(got.value, created.value, "get returns what create stored");
    assert_eq!(got.value["spec"]["n"], 1);
}

pub async fn create_twice_is_already_exists(s: &dyn Store) {
    let k = Key::new("jobs", "default", "a");
    s.create(&k, obj("a", 1)).await.unwrap();
    match s.create(&k, obj("a", 2)).await {
        Err(StoreError::AlreadyExists(key)) => assert_eq!(key, k),
        other => panic!("second create must be AlreadyExists, got {other:?}"),
    }
    assert_eq!(
        s.get(&k).await.unwrap().unwrap().value["spec"]["n"],
        1,
        "failed create must not write"
    );
    // Same name, other namespace or resource: independent keys.
    s.create(&Key::new("jobs", "other", "a"), obj("a", 3)).await.unwrap();
    s.create(&Key::new("tasks", "default", "a"), obj("a", 4)).await.unwrap();
}

pub async fn update_compare_and_swap(s: &dyn Store) {
    let k = Key::new("jobs", "default", "a");
    let c = s.create(&k, obj("a", 1)).await.unwrap();
    let u = s.update(&k, obj("a", 2), Some(c.revision)).await.unwrap();
    assert!(u.revision > c.revision, "update bumps the revision");
    assert_eq!(rv_of(&u.value), u.revision.to_string());
    match s.update(&k, obj("a", 3), Some(c.revision)).await {
        Err(StoreError::Conflict { expected, actual, .. }) => {
            assert_eq!(
                (expected, actual),
                (c.revision, u.revision),
                "conflict names both revisions"
            )
        }
        other => panic!("update with a stale revision must be Conflict, got {other:?}"),
    }
    assert_eq!(
        s.get(&k).await.unwrap().unwrap().value["spec"]["n"],
        2,
        "failed CAS must not write"
    );
    let uncond = s.update(&k, obj("a", 4), None).await.unwrap();
    assert!(uncond.revision > u.revision, "unconditional update works");
}

pub async fn update_missing_is_not_found(s: &dyn Store) {
    let k = Key::new("jobs", "default", "nope");
    assert!(matches!(
        s.update(&k, obj("nope", 1), None).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(s.delete(&k, None).await, Err(StoreError::NotFound(_))));
}

pub async fn delete_compare_and_swap(s: &dyn Store) {
    let k = Key::new("jobs", "default", "a");
    let c = s.create(&k, obj("a", 1)).await.unwrap();
    let u = s.update(&k, obj("a", 2), None).await.unwrap();
    assert!(
        matches!(s.delete(&k, Some(c.revision)).await, Err(StoreError::Conflict { .. })),
        "delete with a stale revision must be Conflict"
    );
    let d = s.delete(&k, Some(u.revision)).await.unwrap();
    assert_eq!(d.value["spec"]["n"], 2, "delete returns the last state");
    assert!(d.revision > u.revision, "delete bumps the revision");
    assert!(s.get(&k).await.unwrap().is_none(), "deleted object is gone");
    s.create(&k, obj("a", 5)).await.expect("a deleted name can be reused");
}

pub async fn list_filters_and_sorts(s: &dyn Store) {
    for (ns, name) in [("b", "z"), ("a", "y"), ("b", "a"), ("a", "x")] {
        s.create(&Key::new("jobs", ns, name), obj(name, 0)).await.unwrap();
    }
    s.create(&Key::new("tasks", "a", "t"), obj("t", 0)).await.unwrap();
    let all = s.list("jobs", None).await.unwrap();
    let names: Vec<_> = all
        .items
        .iter()
        .map(|o| format!("{}/{}", o.key.namespace, o.key.name))
        .collect();
    assert_eq!(
        names,
        ["a/x", "a/y", "b/a", "b/z"],
        "list is sorted by namespace, name and holds only the resource"
    );
    assert_eq!(
        all.revision,
        s.revision().await.unwrap(),
        "list reports the current revision"
    );
    let a = s.list("jobs", Some("a")).await.unwrap();
    assert_eq!(a.items.len(), 2, "namespace filter");
    assert!(s.list("robots", None).await.unwrap().items.is_empty());
    for o in &all.items {
        assert_eq!(
            rv_of(&o.value),
            o.revision.to_string(),
            "listed objects carry their resourceVersion"
        );
    }
}

pub async fn list_field_reads_one_string_field(s: &dyn Store) {
    let with = |name: &str, at: Value| {
        let mut o = obj(name, 0);
        o["lastTimestamp"] = at;
        o
    };
    s.create(
        &Key::new("events", "b", "e1"),
        with("e1", json!("2026-01-02T00:00:00Z")),
    )
    .await
    .unwrap();
    s.create(&Key::new("events", "a", "e2"), with("e2", json!(7)))
        .await
        .unwrap();
    s.create(&Key::new("events", "a", "e3"), obj("e3", 0)).await.unwrap();
    s.create(&Key::new("jobs", "a", "j"), with("j", json!("x")))
        .await
        .unwrap();
    let e1 = s.get(&Key::new("events", "b", "e1")).await.unwrap().unwrap();
    let got = s.list_field("events", "lastTimestamp").await.unwrap();
    let seen: Vec<(String, Option<&str>)> = got
        .iter()
        .map(|f| (format!("{}/{}", f.key.namespace, f.key.name), f.value.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            ("a/e2".to_string(), None),
            ("a/e3".to_string(), None),
            ("b/e1".to_string(), Some("2026-01-02T00:00:00Z"))
        ],
        "sorted, this resource only, a string field or None"
    );
    assert_eq!(got[2].revision, e1.revision, "with each object's revision");
    assert_eq!(got[2].key.resource, "events");
}

pub async fn revisions_are_global_and_monotonic(s: &dyn Store) {
    let r0 = s.revision().await.unwrap();
    let a = s.create(&Key::new("jobs", "d", "a"), obj("a", 0)).await.unwrap();
    let b = s.create(&Key::new("tasks", "d", "b"), obj("b", 0)).await.unwrap();
    let c = s.update(&Key::new("jobs", "d", "a"), obj("a", 1), None).await.unwrap();
    assert!(r0 < a.revision && a.revision < b.revision && b.revision < c.revision);
    assert_eq!(s.revision().await.unwrap(), c.revision);
    let failed = s.create(&Key::new("jobs", "d", "a"), obj("a", 0)).await;
    assert!(failed.is_err());
    assert_eq!(
        s.revision().await.unwrap(),
        c.revision,
        "failed writes do not consume revisions"
    );
}

async fn next(w: &mut super::Watch) -> super::Event {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("watch event within 5 s")
        .expect("watch event")
}

pub async fn watch_delivers_in_order(s: &dyn Store) {
    let start = s.revision().await.unwrap();
    let mut w = s.watch(start).unwrap();
    let k = Key::new("jobs", "d", "a");
    let c = s.create(&k, obj("a", 1)).await.unwrap();
    let u = s.update(&k, obj("a", 2), None).await.unwrap();
    let d = s.delete(&k, None).await.unwrap();
    let e1 = next(&mut w).await;
    assert_eq!((e1.kind, e1.revision), (EventKind::Added, c.revision));
    assert!(e1.prev.is_none());
    let e2 = next(&mut w).await;
    assert_eq!((e2.kind, e2.revision), (EventKind::Modified, u.revision));
    assert_eq!(
        e2.prev.as_ref().unwrap().decode().unwrap()["spec"]["n"],
        1,
        "modified carries the previous state"
    );
    assert_eq!(e2.value["spec"]["n"], 2);
    let e3 = next(&mut w).await;
    assert_eq!((e3.kind, e3.revision), (EventKind::Deleted, d.revision));
    assert_eq!(e3.value["spec"]["n"], 2, "deleted carries the last state");
    assert_eq!(
        rv_of(&e3.value),
        d.revision.to_string(),
        "deleted object carries the deletion revision"
    );
    // A concurrent writer: events stay gap-free and ordered.
    let mut w2 = s.watch(s.revision().await.unwrap()).unwrap();
    let mut revs = Vec::new();
    for i in 0..50 {
        revs.push(
            s.create(&Key::new("tasks", "d", &format!("t{i}")), obj("t", i))
                .await
                .unwrap()
                .revision,
        );
    }
    for r in revs {
        assert_eq!(next(&mut w2).await.revision, r, "watch delivers every change in order");
    }
}

pub async fn watch_resumes_from_revision(s: &dyn Store) {
    let mut revs = Vec::new();
    for i in 0..5 {
        revs.push(
            s.create(&Key::new("jobs", "d", &format!("j{i}")), obj("j", i))
                .await
                .unwrap()
                .revision,
        );
    }
    // Resume after the second write: exactly the last three, from history.
    let mut w = s.watch(revs[1]).unwrap();
    for r in &revs[2..] {
        let e = next(&mut w).await;
        assert_eq!(e.revision, *r, "resumed watch replays history after the start revision");
        assert_eq!(e.kind, EventKind::Added);
    }
    // ...then continues live.
    let live = s.update(&Key::new("jobs", "d", "j0"), obj("j", 9), None).await.unwrap();
    assert_eq!(next(&mut w).await.revision, live.revision);
    assert_eq!(w.last_revision(), live.revision);
}

/// Needs a store keeping only 3 history events.
pub async fn watch_too_old_is_expired(s: &dyn Store) {
    let first = s
        .create(&Key::new("jobs", "d", "j0"), obj("j", 0))
        .await
        .unwrap()
        .revision;
    for i in 1..10 {
        s.create(&Key::new("jobs", "d", &format!("j{i}")), obj("j", i))
            .await
            .unwrap();
    }
    match s.watch(first) {
        Err(StoreError::Expired { requested, oldest }) => {
            assert_eq!(requested, first);
            assert!(oldest > first);
        }
        Err(e) => panic!("watch from a compacted revision must be Expired, got {e:?}"),
        Ok(_) => panic!("watch from a compacted revision must be Expired, got a watch"),
    }
    let now = s.revision().await.unwrap();
    assert!(s.watch(now - 2).is_ok(), "recent history is still watchable");
}

pub async fn batch_applies_each_operation(s: &dyn Store) {
    let a = Key::new("tasks", "d", "a");
    let b = Key::new("tasks", "d", "b");
    let first = s.create(&a, obj("a", 0)).await.unwrap();
    let start = s.revision().await.unwrap();
    let mut w = s.watch(start).unwrap();
    let results = s
        .batch(vec![
            BatchOp::Create(b.clone(), obj("b", 1)),
            BatchOp::Create(a.clone(), obj("a", 9)),
            BatchOp::Update(a.clone(), obj("a", 2), Some(first.revision)),
            BatchOp::Update(b.clone(), obj("b", 3), Some(first.revision)),
            BatchOp::Delete(Key::new("tasks", "d", "zz"), None),
        ])
        .await
        .expect("batch");
    assert_eq!(results.len(), 5);
    let created = results[0].as_ref().expect("create in a batch");
    assert!(
        matches!(results[1], Err(StoreError::AlreadyExists(_))),
        "{:?}",
        results[1]
    );
    let updated = results[2].as_ref().expect("update in a batch");
    assert!(
        matches!(results[3], Err(StoreError::Conflict { .. })),
        "{:?}",
        results[3]
    );
    assert!(matches!(results[4], Err(StoreError::NotFound(_))), "{:?}", results[4]);
    assert!(
        created.revision > start && updated.revision > created.revision,
        "revisions in order"
    );
    assert_eq!(s.get(&a).await.unwrap().unwrap().value["spec"]["n"], 2);
    assert_eq!(
        s.get(&b).await.unwrap().unwrap().value["spec"]["n"],
        1,
        "a failed op writes nothing"
    );
    assert_eq!(
        next(&mut w).await.revision,
        created.revision,
        "batch writes are watched"
    );
    assert_eq!(next(&mut w).await.revision, updated.revision);
}

/// 300 creates, a create of a taken key and an update in one batch (more
/// than one etcd transaction may carry): each op has its own outcome, each
/// write is stored with the revision it reports, and a watch from before
/// the batch sees every one of them, in revision order.
pub async fn batch_of_many_creates_is_written_and_watched_whole(s: &dyn Store) {
    let first = s.create(&Key::new("tasks", "d", "x"), obj("x", 0)).await.unwrap();
    let taken = s.create(&Key::new("tasks", "d", "y"), obj("y", 0)).await.unwrap();
    let mut ops: Vec<BatchOp> = (0..300)
        .map(|i| BatchOp::Create(Key::new("tasks", "d", &format!("t{i:03}")), obj(&format!("t{i:03}"), i)))
        .collect();
    ops.insert(75, BatchOp::Create(Key::new("tasks", "d", "y"), obj("y", 1)));
    ops.insert(
        150,
        BatchOp::Update(Key::new("tasks", "d", "x"), obj("x", 1), Some(first.revision)),
    );
    let results = s.batch(ops).await.expect("batch");
    assert_eq!(results.len(), 302);
    assert!(
        matches!(results[75], Err(StoreError::AlreadyExists(_))),
        "{:?}",
        results[75]
    );
    assert_eq!(
        s.get(&taken.key).await.unwrap().unwrap().revision,
        taken.revision,
        "a failed create writes nothing"
    );
    let mut want = std::collections::BTreeMap::new();
    for (i, r) in results.iter().enumerate().filter(|(i, _)| *i != 75) {
        let st = r.as_ref().unwrap_or_else(|e| panic!("op {i} of the batch: {e}"));
        assert_eq!(st.value["metadata"]["resourceVersion"], st.revision.to_string());
        let got = s.get(&st.key).await.unwrap().expect("stored");
        assert_eq!(
            got.revision, st.revision,
            "{} is stored at the revision it reported",
            st.key
        );
        want.insert(st.key.name.clone(), st.revision);
    }
    assert_eq!(want["x"], results[150].as_ref().unwrap().revision);
    let mut w = s.watch(taken.revision).unwrap();
    let mut seen = std::collections::BTreeMap::new();
    let mut last = 0;
    while seen.len() < want.len() {
        let e = next(&mut w).await;
        assert!(e.revision >= last, "watch in revision order");
        last = e.revision;
        seen.insert(e.key.name.clone(), e.revision);
    }
    assert_eq!(seen, want, "the watch sees every write of the batch at its revision");
}
