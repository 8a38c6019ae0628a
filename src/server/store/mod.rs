//! Storage of API objects: a key/value store with a single monotonic revision
//! (the `resourceVersion` of every object, as etcd's revision is in
//! Kubernetes), compare-and-swap updates, and a watch that can resume from a
//! revision.
//!
//! The [`Store`] trait is object-safe so the server holds an
//! `Arc<dyn Store>`; every backend must pass [`conformance`].

pub mod conformance;
pub mod etcd;
mod log;
pub mod sqlite;

pub use log::{EventLog, Watch};

use serde_json::Value;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where an object lives: resource (plural, e.g. `jobs`), namespace, name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub resource: String,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(resource: &str, namespace: &str, name: &str) -> Self {
        Key {
            resource: resource.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.resource, self.namespace, self.name)
    }
}

/// An object as stored. `value.metadata.resourceVersion` always equals
/// `revision` (the revision of the last write to this key).
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    pub key: Key,
    /// Shared with the change's event in the watch history (and from there
    /// with the controllers' cache): one tree per object, not one per holder.
    pub value: Arc<Value>,
    pub revision: u64,
}

/// Result of a list: the objects, sorted by (namespace, name), and the store
/// revision the list was read at.
#[derive(Clone, Debug, Default)]
pub struct Listed {
    pub items: Vec<Stored>,
    pub revision: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Added,
    Modified,
    Deleted,
}

/// One change. For `Deleted`, `value` is the last state of the object (with
/// its resourceVersion set to the deletion revision, as Kubernetes does).
#[derive(Clone, Debug)]
pub struct Event {
    pub kind: EventKind,
    pub revision: u64,
    pub key: Key,
    pub value: Arc<Value>,
    /// The state before this change (`None` for `Added`).
    pub prev: Option<Prev>,
}

/// The state before a change as the store held it, JSON text: decoded only
/// by the watchers that need it (a watch with selectors, to tell an object
/// that stops matching). As a decoded tree in every event, the history
/// held a second copy of each object it covers (≈ 100 MB at 2,000 robots)
/// and every write decoded the row it replaced.
#[derive(Clone, Debug)]
pub struct Prev(Arc<str>);

impl Prev {
    pub fn new(text: &str) -> Prev {
        Prev(Arc::from(text))
    }

    pub fn decode(&self) -> Result<Value, StoreError> {
        serde_json::from_str(&self.0).map_err(|e| StoreError::Backend(format!("decoding a stored object: {e}")))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum StoreError {
    NotFound(Key),
    AlreadyExists(Key),
    /// Compare-and-swap failed: the object is at `actual`, not `expected`.
    Conflict {
        key: Key,
        expected: u64,
        actual: u64,
    },
    /// A watch asked for history that is no longer kept.
    Expired {
        requested: u64,
        oldest: u64,
    },
    /// The backend failed (I/O, corruption, ...).
    Backend(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::NotFound(k) => write!(f, "{k} not found"),
            StoreError::AlreadyExists(k) => write!(f, "{k} already exists"),
            StoreError::Conflict { key, expected, actual } => {
                write!(f, "{key}: resourceVersion {expected} is stale (current {actual})")
            }
            StoreError::Expired { requested, oldest } => {
                write!(f, "too old resource version: {requested} (oldest available {oldest})")
            }
            StoreError::Backend(m) => write!(f, "storage backend: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// The storage contract. Every method is atomic; revisions increase across
/// all keys, strictly except that the creates of one [`Store::batch`] may
/// share one (etcd puts them in one transaction); a watch delivers every
/// change after its start revision exactly once, in revision order, never
/// parts of a shared revision apart, and a watch from a shared revision
/// delivers all of its changes again (a client cut off in the middle of them
/// cannot say which it saw; a repeat is harmless to a watcher that keeps
/// state, a loss is not). Whoever answers per revision takes a shared one
/// whole: the cache applies a revision's changes before it wakes any robot
/// (`controllers::Hub::apply_all`, fed by [`log::Watch::next_revision`]).
pub trait Store: Send + Sync + 'static {
    fn get<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<Option<Stored>, StoreError>>;
    /// All objects of `resource`, in one namespace or (None) all of them.
    fn list<'a>(&'a self, resource: &'a str, namespace: Option<&'a str>) -> BoxFuture<'a, Result<Listed, StoreError>>;
    /// Fails with `AlreadyExists` if the key is taken.
    fn create<'a>(&'a self, key: &'a Key, value: Value) -> BoxFuture<'a, Result<Stored, StoreError>>;
    /// Replace; with `expected = Some(rev)` only if the object is at `rev`.
    fn update<'a>(
        &'a self,
        key: &'a Key,
        value: Value,
        expected: Option<u64>,
    ) -> BoxFuture<'a, Result<Stored, StoreError>>;
    /// Remove; with `expected = Some(rev)` only if the object is at `rev`.
    /// Returns the last state.
    fn delete<'a>(&'a self, key: &'a Key, expected: Option<u64>) -> BoxFuture<'a, Result<Stored, StoreError>>;
    /// The current revision.
    fn revision(&self) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// Every change with a revision greater than `from`.
    fn watch(&self, from: u64) -> Result<Watch, StoreError>;

    /// Every object of `resource` (all namespaces, sorted as [`list`]) with
    /// the string at its top-level `field` (None when absent or not a
    /// string): what a sweep over many objects needs, without holding them
    /// all decoded at once. SQLite reads the field in SQL; the default
    /// decodes the list and keeps only the field.
    ///
    /// [`list`]: Store::list
    fn list_field<'a>(
        &'a self,
        resource: &'a str,
        field: &'static str,
    ) -> BoxFuture<'a, Result<Vec<Field>, StoreError>> {
        Box::pin(async move {
            let listed = self.list(resource, None).await?;
            Ok(listed
                .items
                .into_iter()
                .map(|o| Field {
                    value: o.value[field].as_str().map(str::to_string),
                    key: o.key,
                    revision: o.revision,
                })
                .collect())
        })
    }

    /// Several writes, applied in order, each with its own result (not
    /// atomic as a whole: a failed operation does not stop the others).
    /// Backends may commit them together, and creates of distinct keys may
    /// get one revision; the default runs them one by one.
    /// `Err` only when the backend itself failed.
    fn batch(&self, ops: Vec<BatchOp>) -> BoxFuture<'_, Result<Vec<Result<Stored, StoreError>>, StoreError>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(ops.len());
            for op in ops {
                let r = match op {
                    BatchOp::Create(k, v) => self.create(&k, v).await,
                    BatchOp::Update(k, v, e) => self.update(&k, v, e).await,
                    BatchOp::Delete(k, e) => self.delete(&k, e).await,
                };
                match r {
                    Err(e @ StoreError::Backend(_)) => return Err(e),
                    other => out.push(other),
                }
            }
            Ok(out)
        })
    }
}

/// One object as [`Store::list_field`] lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    pub key: Key,
    pub revision: u64,
    pub value: Option<String>,
}

/// One operation of [`Store::batch`].
#[derive(Clone, Debug)]
pub enum BatchOp {
    Create(Key, Value),
    Update(Key, Value, Option<u64>),
    Delete(Key, Option<u64>),
}

impl BatchOp {
    pub fn key(&self) -> &Key {
        match self {
            BatchOp::Create(k, _) | BatchOp::Update(k, _, _) | BatchOp::Delete(k, _) => k,
        }
    }
}

/// Write `rev` into `value.metadata.resourceVersion`.
pub fn stamp_revision(value: &mut Value, rev: u64) {
    if let Some(obj) = value.as_object_mut() {
        let meta = obj
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
        }
    }
}
