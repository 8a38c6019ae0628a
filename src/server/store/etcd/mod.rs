//! The etcd v3 backend, for several stateless server replicas.
//!
//! Keys are laid out as Kubernetes does: `<prefix>/<plural>/<namespace>/<name>`
//! (`<prefix>/<plural>/<name>` without a namespace), values are the objects'
//! JSON. An object's resourceVersion is its etcd mod revision; creates are
//! transactions on `create_revision == 0`, conditional updates and deletes on
//! `mod_revision == expected`.
//!
//! One etcd watch over the prefix feeds the shared [`EventLog`], so every
//! replica's watchers (the controllers' cache, long-polling robots, kubectl
//! watches) see each change, whichever replica wrote it. A write returns only
//! once its own change has reached this replica's log, so a replica reads its
//! own writes in its watches as the SQLite store does. A replica starts its
//! history up to `history` revisions in the past, so a watch can resume on
//! any replica from a resourceVersion another one returned.
//!
//! A store opened [`EtcdStore::connect_on_demand`] (the events) starts its
//! watch only when something first watches it, and its writes do not wait
//! for their echo: every replica decoding every event that nobody watches
//! was a third of a follower's CPU during a 10,000-robot dispatch.

pub mod client;
pub mod compact;
pub mod endpoints;
pub mod tls;

use super::{
    stamp_revision, BatchOp, BoxFuture, Event, EventKind, EventLog, Key, Listed, Prev, Store, StoreError, Stored, Watch,
};
use client::{Client, Compare, CompareResult, EtcdError, KeyValue, Op, Txn, WatchEvent};
pub use endpoints::Endpoints;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// The key prefix of a production server.
pub const DEFAULT_PREFIX: &str = "/k8s4r";
/// Events (kubectl get events), apart from the objects as with SQLite.
pub const EVENTS_PREFIX: &str = "/k8s4r-events";
/// The key the elected leader holds (outside both prefixes' ranges).
pub const LEADER_KEY: &str = "/k8s4r-leader";

/// How long a write waits for its change to come back through the watch.
const ECHO_WAIT: Duration = Duration::from_secs(5);

pub struct EtcdStore {
    client: Arc<Client>,
    prefix: String,
    log: Arc<EventLog>,
    /// The revision the log starts after.
    start: u64,
    /// The watch feeding the log: from the start, or from the first
    /// [`Store::watch`] of an on-demand store.
    feeder: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Whether a write waits until its change is in the log.
    echo: bool,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        if let Some(f) = self.feeder.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            f.abort();
        }
    }
}

fn backend(e: EtcdError) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn decode_value(bytes: &[u8], rev: u64) -> Result<Value, StoreError> {
    let mut v: Value =
        serde_json::from_slice(bytes).map_err(|e| StoreError::Backend(format!("corrupt object: {e}")))?;
    stamp_revision(&mut v, rev);
    Ok(v)
}

/// From a failed txn's read of the key: the revision the key is at, or
/// None when it does not exist.
fn current_revision(resp: &Value) -> Result<Option<u64>, StoreError> {
    let range = &resp["responses"][0]["response_range"];
    let kvs = client::kvs(range).map_err(StoreError::Backend)?;
    Ok(kvs.first().map(|kv| kv.mod_revision))
}

fn succeeded(resp: &Value) -> bool {
    resp.get("succeeded").and_then(Value::as_bool) == Some(true)
}

impl EtcdStore {
    /// Connect to the cluster at `endpoints`, keeping objects under `prefix`
    /// and `history` changes for resumable watches.
    pub async fn connect(endpoints: &Endpoints, prefix: &str, history: usize) -> Result<Self, StoreError> {
        let store = Self::open(endpoints, prefix, history, true).await?;
        store.start_feed();
        Ok(store)
    }

    /// [`EtcdStore::connect`] for records nobody reads back through a
    /// watch as they are written (events: listed, never watched by the
    /// server itself): the watch starts with the first [`Store::watch`]
    /// (replaying from the connection on), and writes return without
    /// waiting for their echo, so a watch may see a write only after it
    /// returned.
    pub async fn connect_on_demand(endpoints: &Endpoints, prefix: &str, history: usize) -> Result<Self, StoreError> {
        Self::open(endpoints, prefix, history, false).await
    }

    async fn open(endpoints: &Endpoints, prefix: &str, history: usize, echo: bool) -> Result<Self, StoreError> {
        let client = Arc::new(Client::new(endpoints));
        let prefix = prefix.trim_end_matches('/').to_string();
        let now = client::header_revision(&client.range(prefix.as_bytes(), None).await.map_err(backend)?);
        // Start the history up to `history` revisions back (as far as etcd
        // has not compacted them): a watch from a resourceVersion that
        // another replica handed out shortly before resumes here too.
        let start = now.saturating_sub(history as u64);
        Ok(EtcdStore {
            client,
            prefix,
            log: EventLog::new(history, start),
            start,
            feeder: std::sync::Mutex::new(None),
            echo,
        })
    }

    /// Start feeding the log, unless it is fed already.
    fn start_feed(&self) {
        let mut feeder = self.feeder.lock().unwrap_or_else(|e| e.into_inner());
        if feeder.is_none() {
            let (client, prefix, log) = (self.client.clone(), self.prefix.clone(), self.log.clone());
            *feeder = Some(tokio::spawn(feed(client, prefix, log, self.start)));
        }
    }

    /// The client, shared with leader election.
    pub fn client(&self) -> Arc<Client> {
        self.client.clone()
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, k: &Key) -> Vec<u8> {
        if k.namespace.is_empty() {
            format!("{}/{}/{}", self.prefix, k.resource, k.name).into_bytes()
        } else {
            format!("{}/{}/{}/{}", self.prefix, k.resource, k.namespace, k.name).into_bytes()
        }
    }

    /// The store key of an etcd key under our prefix.
    fn parse_key(prefix: &str, raw: &[u8]) -> Option<Key> {
        let s = std::str::from_utf8(raw).ok()?;
        let rest = s.strip_prefix(prefix)?.strip_prefix('/')?;
        let (resource, rest) = rest.split_once('/')?;
        let (ns, name) = rest.split_once('/').unwrap_or(("", rest));
        if resource.is_empty() || name.is_empty() || name.contains('/') {
            return None;
        }
        Some(Key::new(resource, ns, name))
    }

    fn stored(&self, key: &Key, kv: &KeyValue) -> Result<Stored, StoreError> {
        Ok(Stored {
            key: key.clone(),
            value: Arc::new(decode_value(&kv.value, kv.mod_revision)?),
            revision: kv.mod_revision,
        })
    }

    /// Run one write transaction: `success` if `compare` holds; otherwise
    /// the key is read, to tell NotFound from Conflict.
    async fn txn(&self, key: &Key, compare: Compare, success: Op) -> Result<Value, StoreError> {
        let txn = Txn {
            compare: vec![compare],
            success: vec![success],
            failure: vec![Op::RequestRange {
                key: client::b64(&self.key(key)),
            }],
        };
        self.client.txn(&txn).await.map_err(backend)
    }

    /// The key is at revision `expected`, or exists when None.
    fn compare_for(&self, key: &Key, expected: Option<u64>) -> Compare {
        let key = client::b64(&self.key(key));
        match expected {
            Some(mod_revision) => Compare::Mod {
                key,
                result: CompareResult::Equal,
                mod_revision,
            },
            None => Compare::Create {
                key,
                result: CompareResult::Greater,
                create_revision: 0,
            },
        }
    }

    /// The key does not exist.
    fn absent(b64_key: String) -> Compare {
        Compare::Create {
            key: b64_key,
            result: CompareResult::Equal,
            create_revision: 0,
        }
    }

    fn failure(key: &Key, expected: Option<u64>, resp: &Value) -> StoreError {
        match current_revision(resp) {
            Err(e) => e,
            Ok(None) => StoreError::NotFound(key.clone()),
            Ok(Some(actual)) => StoreError::Conflict {
                key: key.clone(),
                expected: expected.unwrap_or(0),
                actual,
            },
        }
    }

    async fn create_raw(&self, key: &Key, value: Value) -> Result<Stored, StoreError> {
        let text = serde_json::to_vec(&value).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.create_text(key, value, &text).await
    }

    /// [`EtcdStore::create_raw`] of `value` whose JSON is `text`.
    async fn create_text(&self, key: &Key, value: Value, text: &[u8]) -> Result<Stored, StoreError> {
        let k = client::b64(&self.key(key));
        let put = Op::RequestPut {
            key: k.clone(),
            value: client::b64(text),
        };
        let resp = self.txn(key, Self::absent(k), put).await?;
        if !succeeded(&resp) {
            return Err(StoreError::AlreadyExists(key.clone()));
        }
        let rev = client::header_revision(&resp);
        let mut value = value;
        stamp_revision(&mut value, rev);
        Ok(Stored {
            key: key.clone(),
            value: Arc::new(value),
            revision: rev,
        })
    }

    async fn update_raw(&self, key: &Key, value: Value, expected: Option<u64>) -> Result<Stored, StoreError> {
        let text = serde_json::to_vec(&value).map_err(|e| StoreError::Backend(e.to_string()))?;
        let put = Op::RequestPut {
            key: client::b64(&self.key(key)),
            value: client::b64(&text),
        };
        let resp = self.txn(key, self.compare_for(key, expected), put).await?;
        if !succeeded(&resp) {
            return Err(Self::failure(key, expected, &resp));
        }
        let rev = client::header_revision(&resp);
        let mut value = value;
        stamp_revision(&mut value, rev);
        Ok(Stored {
            key: key.clone(),
            value: Arc::new(value),
            revision: rev,
        })
    }

    async fn delete_raw(&self, key: &Key, expected: Option<u64>) -> Result<Stored, StoreError> {
        let delete = Op::RequestDeleteRange {
            key: client::b64(&self.key(key)),
            prev_kv: true,
        };
        let resp = self.txn(key, self.compare_for(key, expected), delete).await?;
        if !succeeded(&resp) {
            return Err(Self::failure(key, expected, &resp));
        }
        let rev = client::header_revision(&resp);
        let deleted = &resp["responses"][0]["response_delete_range"];
        let prev = client::prev_kvs(deleted).map_err(StoreError::Backend)?;
        let last = prev.first().ok_or_else(|| StoreError::NotFound(key.clone()))?;
        Ok(Stored {
            key: key.clone(),
            value: Arc::new(decode_value(&last.value, rev)?),
            revision: rev,
        })
    }

    /// Creates in one transaction, so all at one revision; if a key is
    /// taken (the transaction then writes nothing), each create on its own
    /// (at once; the client bounds what is in flight) for its own outcome.
    async fn create_group(&self, group: Vec<Create>) -> Vec<Result<Stored, StoreError>> {
        if group.len() > 1 {
            let mut txn = Txn {
                compare: Vec::with_capacity(group.len()),
                success: Vec::with_capacity(group.len()),
                failure: Vec::new(),
            };
            for (key, _, text) in &group {
                let k = client::b64(&self.key(key));
                txn.compare.push(Self::absent(k.clone()));
                txn.success.push(Op::RequestPut {
                    key: k,
                    value: client::b64(text),
                });
            }
            let resp = match self.client.txn(&txn).await {
                Ok(resp) => resp,
                Err(e) => return vec![Err(backend(e))],
            };
            if succeeded(&resp) {
                let rev = client::header_revision(&resp);
                return group
                    .into_iter()
                    .map(|(key, mut value, _)| {
                        stamp_revision(&mut value, rev);
                        Ok(Stored {
                            key,
                            value: Arc::new(value),
                            revision: rev,
                        })
                    })
                    .collect();
            }
        }
        let each = group
            .into_iter()
            .map(|(key, value, text)| async move { self.create_text(&key, value, &text).await });
        futures_util::future::join_all(each).await
    }

    /// Wait until this replica's watchers can see revision `rev`.
    async fn echo(&self, rev: u64) {
        if self.echo && !self.log.wait_for(rev, ECHO_WAIT).await {
            log::warn!("etcd: the watch has not delivered revision {rev} after {ECHO_WAIT:?}");
        }
    }

    async fn echoed(&self, r: Result<Stored, StoreError>) -> Result<Stored, StoreError> {
        if let Ok(s) = &r {
            self.echo(s.revision).await;
        }
        r
    }
}

/// Turn one etcd watch event into a store event (None: not an object key).
fn event_of(prefix: &str, e: &WatchEvent) -> Result<Option<Event>, StoreError> {
    let Some(key) = EtcdStore::parse_key(prefix, &e.kv.key) else {
        return Ok(None);
    };
    let rev = e.kv.mod_revision;
    let (kind, value) = if e.deleted {
        // A delete carries no value: its last state is the previous one.
        let mut last = match &e.prev {
            Some(p) => decode_value(&p.value, p.mod_revision)?,
            None => Value::Null,
        };
        stamp_revision(&mut last, rev);
        (EventKind::Deleted, last)
    } else if e.kv.create_revision == e.kv.mod_revision {
        (EventKind::Added, decode_value(&e.kv.value, rev)?)
    } else {
        (EventKind::Modified, decode_value(&e.kv.value, rev)?)
    };
    let prev = match (&e.prev, kind) {
        (Some(p), EventKind::Modified | EventKind::Deleted) => {
            Some(Prev::new(std::str::from_utf8(&p.value).map_err(|err| {
                StoreError::Backend(format!("{key}: not UTF-8: {err}"))
            })?))
        }
        _ => None,
    };
    Ok(Some(Event {
        kind,
        revision: rev,
        key,
        value: Arc::new(value),
        prev,
    }))
}

/// Keep `log` fed from one etcd watch of the prefix, re-establishing it
/// (on another member if need be) after `last`. If etcd compacted away
/// changes we have not seen, the log is reset: its watchers re-list.
async fn feed(client: Arc<Client>, prefix: String, log: Arc<EventLog>, mut last: u64) {
    let start = format!("{prefix}/").into_bytes();
    let end = client::prefix_end(&start);
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut stream = match client.watch(&start, &end, last + 1).await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("etcd: starting the watch from {}: {e}", last + 1);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        loop {
            match stream.next().await {
                Ok(batch) => {
                    backoff = Duration::from_millis(50);
                    // etcd sends a revision's changes (a batch's creates,
                    // one transaction) in one message: published together.
                    let mut events = Vec::with_capacity(batch.events.len());
                    for e in &batch.events {
                        match event_of(&prefix, e) {
                            Ok(Some(ev)) if ev.revision > last => events.push(ev),
                            Ok(_) => {}
                            Err(err) => log::error!("etcd: skipping an undecodable change: {err}"),
                        }
                    }
                    if let Some(rev) = events.last().map(|e| e.revision) {
                        last = rev;
                        log.publish_all(events);
                    }
                }
                Err(EtcdError::Compacted { compact_revision, .. }) => {
                    log::warn!("etcd: watch compacted at {compact_revision}; watchers re-list");
                    // Changes up to compact_revision are gone: watchers
                    // not past it must re-list.
                    last = last.max(compact_revision);
                    log.reset(last);
                    break;
                }
                Err(e) => {
                    log::warn!("etcd: watch broke after {last}: {e}; resuming");
                    tokio::time::sleep(backoff).await;
                    break;
                }
            }
        }
    }
}

impl Store for EtcdStore {
    fn get<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<Option<Stored>, StoreError>> {
        Box::pin(async move {
            let resp = self.client.range(&self.key(key), None).await.map_err(backend)?;
            let kvs = client::kvs(&resp).map_err(StoreError::Backend)?;
            kvs.first().map(|kv| self.stored(key, kv)).transpose()
        })
    }

    fn list<'a>(&'a self, resource: &'a str, namespace: Option<&'a str>) -> BoxFuture<'a, Result<Listed, StoreError>> {
        Box::pin(async move {
            let start = match namespace {
                Some(ns) if !ns.is_empty() => format!("{}/{resource}/{ns}/", self.prefix),
                _ => format!("{}/{resource}/", self.prefix),
            }
            .into_bytes();
            let resp = self
                .client
                .range(&start, Some(&client::prefix_end(&start)))
                .await
                .map_err(backend)?;
            let revision = client::header_revision(&resp);
            let mut items = Vec::new();
            for kv in client::kvs(&resp).map_err(StoreError::Backend)? {
                let Some(key) = Self::parse_key(&self.prefix, &kv.key) else {
                    continue;
                };
                if key.resource != resource || namespace.is_some_and(|ns| ns != key.namespace) {
                    continue;
                }
                items.push(self.stored(&key, &kv)?);
            }
            items.sort_by(|a, b| (&a.key.namespace, &a.key.name).cmp(&(&b.key.namespace, &b.key.name)));
            Ok(Listed { items, revision })
        })
    }

    fn create<'a>(&'a self, key: &'a Key, value: Value) -> BoxFuture<'a, Result<Stored, StoreError>> {
        Box::pin(async move {
            let r = self.create_raw(key, value).await;
            self.echoed(r).await
        })
    }

    fn update<'a>(
        &'a self,
        key: &'a Key,
        value: Value,
        expected: Option<u64>,
    ) -> BoxFuture<'a, Result<Stored, StoreError>> {
        Box::pin(async move {
            let r = self.update_raw(key, value, expected).await;
            self.echoed(r).await
        })
    }

    fn delete<'a>(&'a self, key: &'a Key, expected: Option<u64>) -> BoxFuture<'a, Result<Stored, StoreError>> {
        Box::pin(async move {
            let r = self.delete_raw(key, expected).await;
            self.echoed(r).await
        })
    }

    fn revision(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let resp = self.client.range(self.prefix.as_bytes(), None).await.map_err(backend)?;
            Ok(client::header_revision(&resp))
        })
    }

    fn watch(&self, from: u64) -> Result<Watch, StoreError> {
        self.start_feed();
        self.log.watch(from)
    }

    /// Runs of creates in one transaction each (`create_group`),
    /// other operations one transaction each (etcd cannot give each
    /// operation of one transaction its own outcome), then one wait for
    /// all of them to reach the watch.
    fn batch(&self, ops: Vec<BatchOp>) -> BoxFuture<'_, Result<Vec<Result<Stored, StoreError>>, StoreError>> {
        Box::pin(async move {
            use futures_util::stream::{self, StreamExt};
            let mut out = Vec::with_capacity(ops.len());
            let mut highest = 0;
            // A transaction costs etcd a raft round, an fsync share and its
            // JSON gateway's decoding whatever it carries: 10,000 Tasks one
            // transaction each cost etcd 16 s of CPU. Ops on distinct keys do
            // not depend on each other, so creates go in groups and the
            // units go out concurrently (etcd commits concurrent proposals
            // together); the results keep the ops' order. Ops on a repeated
            // key keep the sequential order, one by one.
            let distinct = {
                let mut keys = std::collections::HashSet::with_capacity(ops.len());
                ops.iter().all(|op| keys.insert(op.key().clone()))
            };
            let (units, concurrency) = if distinct {
                (group_creates(ops)?, BATCH_CONCURRENCY)
            } else {
                (ops.into_iter().map(Unit::One).collect(), 1)
            };
            let mut results = stream::iter(units)
                .map(|unit| async move {
                    match unit {
                        Unit::Creates(group) => self.create_group(group).await,
                        Unit::One(BatchOp::Create(k, v)) => vec![self.create_raw(&k, v).await],
                        Unit::One(BatchOp::Update(k, v, e)) => vec![self.update_raw(&k, v, e).await],
                        Unit::One(BatchOp::Delete(k, e)) => vec![self.delete_raw(&k, e).await],
                    }
                })
                .buffered(concurrency);
            while let Some(rs) = results.next().await {
                for r in rs {
                    match r {
                        Err(e @ StoreError::Backend(_)) => return Err(e),
                        Ok(s) => {
                            highest = highest.max(s.revision);
                            out.push(Ok(s));
                        }
                        Err(e) => out.push(Err(e)),
                    }
                }
            }
            if highest > 0 {
                self.echo(highest).await;
            }
            Ok(out)
        })
    }
}

/// Txns of one batch in flight at once (etcd's gateway connections are
/// pooled; more than this gains little and only queues in etcd).
const BATCH_CONCURRENCY: usize = 32;
/// Creates in one transaction: etcd refuses more operations than its
/// `--max-txn-ops` (128 by default) ...
const GROUP_OPS: usize = 128;
/// ... or a request over `--max-request-bytes` (1.5 MiB by default; values
/// travel base64-encoded, 4/3 of their size, inside JSON).
const GROUP_BYTES: usize = 1 << 20;

/// A create ready to go: key, object, its JSON text.
type Create = (Key, Value, Vec<u8>);

/// What one transaction of a batch carries.
enum Unit {
    Creates(Vec<Create>),
    One(BatchOp),
}

/// `ops` (on distinct keys) as transactions: consecutive creates grouped
/// within etcd's limits, every other op alone.
fn group_creates(ops: Vec<BatchOp>) -> Result<Vec<Unit>, StoreError> {
    let mut units = Vec::new();
    let mut group: Vec<Create> = Vec::new();
    let mut bytes = 0;
    for op in ops {
        match op {
            BatchOp::Create(k, v) => {
                let text = serde_json::to_vec(&v).map_err(|e| StoreError::Backend(e.to_string()))?;
                let size = (text.len() + k.name.len() + 64) * 4 / 3;
                if group.len() == GROUP_OPS || (!group.is_empty() && bytes + size > GROUP_BYTES) {
                    units.push(Unit::Creates(std::mem::take(&mut group)));
                    bytes = 0;
                }
                bytes += size;
                group.push((k, v, text));
            }
            other => {
                if !group.is_empty() {
                    units.push(Unit::Creates(std::mem::take(&mut group)));
                    bytes = 0;
                }
                units.push(Unit::One(other));
            }
        }
    }
    if !group.is_empty() {
        units.push(Unit::Creates(group));
    }
    Ok(units)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for k in [Key::new("jobs", "default", "a"), Key::new("_jointokens", "", "abc")] {
            let raw = if k.namespace.is_empty() {
                format!("/k8s4r/{}/{}", k.resource, k.name)
            } else {
                format!("/k8s4r/{}/{}/{}", k.resource, k.namespace, k.name)
            };
            assert_eq!(EtcdStore::parse_key("/k8s4r", raw.as_bytes()), Some(k));
        }
        assert_eq!(EtcdStore::parse_key("/k8s4r", b"/k8s4r/jobs"), None);
        assert_eq!(EtcdStore::parse_key("/k8s4r", b"/other/jobs/a/b"), None);
        assert_eq!(EtcdStore::parse_key("/k8s4r", b"/k8s4r/jobs/a/b/c"), None);
        assert_eq!(EtcdStore::parse_key("/k8s4r", b"\xff"), None);
    }
}
