//! The API's operations on objects, independent of HTTP: get, list, create,
//! replace, patch, delete and watch, with the metadata rules of Kubernetes
//! (uid, creationTimestamp, generation, resourceVersion preconditions) and
//! admission. Controllers write through it too, so every object in the
//! store went through the same checks.

use super::admission::{admit, Admitted, FieldValidation};
use super::object;
use super::patch::{json_patch, merge_patch};
use super::resources::{self, Resource};
use super::selector::{FieldSelector, LabelSelector};
use super::status::Status;
use super::store::{Event, EventKind, Key, Store, StoreError, Stored, Watch};
use super::time;
use serde_json::Value;
use std::sync::Arc;

#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct WriteOptions<'a> {
    pub validation: FieldValidation,
    pub dry_run: bool,
    /// Who writes (the request's fieldManager): its changes to the object
    /// are recorded as its fields in managedFields (an Update operation,
    /// see [`super::apply`]); None for the control plane's own writes.
    pub manager: Option<&'a str>,
}

/// Which part of an object a write may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// metadata + spec (the main resource); status is kept.
    Main,
    /// status only (the /status subresource).
    Status,
    /// Everything (controllers).
    All,
}

#[derive(Debug)]
pub struct Written {
    /// The object as stored, shared with the store's watch history.
    pub object: Arc<Value>,
    pub warnings: Vec<String>,
    /// Validation's warnings about the object as it was just stored; empty
    /// when nothing was stored (a dry run, an unchanged object). The HTTP
    /// layer records them as Warning events on the object.
    pub findings: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
}

#[derive(Debug, Default)]
pub struct ListResult {
    pub items: Vec<Value>,
    pub revision: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Propagation {
    /// Delete now; the garbage collector removes dependents.
    #[default]
    Background,
    /// Delete dependents first, then the object.
    Foreground,
    /// Keep dependents, without the owner reference.
    Orphan,
}

#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub propagation: Propagation,
    pub resource_version: Option<u64>,
    pub uid: Option<String>,
}

/// Resources that may own others (owner before dependent).
const CASCADE: &[&str] = &["jobs", "taskgroups", "tasks", "rollouts"];

fn key(res: &Resource, ns: &str, name: &str) -> Key {
    Key::new(res.plural, ns, name)
}

impl Registry {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Registry { store }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn map_err(res: &Resource, name: &str, e: StoreError) -> Status {
        match e {
            StoreError::NotFound(_) => Status::not_found(res.subject(name)),
            StoreError::AlreadyExists(_) => Status::already_exists(res.subject(name)),
            StoreError::Conflict { .. } => Status::conflict(res.subject(name)),
            other => other.into(),
        }
    }

    pub async fn get(&self, res: &Resource, ns: &str, name: &str) -> Result<Value, Status> {
        self.get_stored(res, ns, name)
            .await
            .map(|s| Arc::unwrap_or_clone(s.value))
    }

    async fn get_stored(&self, res: &Resource, ns: &str, name: &str) -> Result<Stored, Status> {
        self.store
            .get(&key(res, ns, name))
            .await
            .map_err(|e| Self::map_err(res, name, e))?
            .ok_or_else(|| Status::not_found(res.subject(name)))
    }

    pub async fn list(&self, res: &Resource, opts: &ListOptions) -> Result<ListResult, Status> {
        let listed = self.store.list(res.plural, opts.namespace.as_deref()).await?;
        let start = match &opts.continue_token {
            Some(t) if !t.is_empty() => Some(decode_continue(t)?),
            _ => None,
        };
        let mut matching = listed.items.into_iter().filter(|s| {
            start
                .as_ref()
                .is_none_or(|(ns, name)| (s.key.namespace.as_str(), s.key.name.as_str()) > (ns.as_str(), name.as_str()))
                && opts.labels.matches(object::labels(&s.value))
                && opts.fields.matches(&s.value)
        });
        let mut items = Vec::new();
        let mut last = None;
        let limit = opts.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        for s in matching.by_ref() {
            if items.len() == limit {
                let rest = 1 + matching.count();
                return Ok(ListResult {
                    items,
                    revision: listed.revision,
                    continue_token: last.map(|(ns, name): (String, String)| encode_continue(&ns, &name)),
                    remaining: Some(rest),
                });
            }
            last = Some((s.key.namespace.clone(), s.key.name.clone()));
            items.push(Arc::unwrap_or_clone(s.value));
        }
        Ok(ListResult {
            items,
            revision: listed.revision,
            continue_token: None,
            remaining: None,
        })
    }

    pub async fn create(
        &self,
        res: &Resource,
        ns: &str,
        body: Value,
        part: Part,
        opts: WriteOptions<'_>,
    ) -> Result<Written, Status> {
        let (name, value, admitted) = Self::prepare_create(res, ns, body, part, opts)?;
        if opts.dry_run {
            return Ok(Written {
                object: Arc::new(value),
                warnings: admitted.warnings,
                findings: Vec::new(),
            });
        }
        let stored = self
            .store
            .create(&key(res, ns, &name), value)
            .await
            .map_err(|e| Self::map_err(res, &name, e))?;
        Ok(Written {
            object: stored.value,
            warnings: admitted.warnings,
            findings: admitted.findings,
        })
    }

    /// Create several objects with one store batch (one commit on SQLite);
    /// each gets its own result.
    pub async fn create_many(
        &self,
        res: &Resource,
        ns: &str,
        bodies: Vec<Value>,
        part: Part,
        opts: WriteOptions<'_>,
    ) -> Result<Vec<Result<Written, Status>>, Status> {
        let mut out: Vec<Option<Result<Written, Status>>> = Vec::with_capacity(bodies.len());
        let mut ops = Vec::new();
        let mut slots = Vec::new();
        for body in bodies {
            match Self::prepare_create(res, ns, body, part, opts) {
                Ok((name, value, admitted)) => {
                    slots.push((out.len(), name.clone(), admitted));
                    ops.push(crate::server::store::BatchOp::Create(key(res, ns, &name), value));
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        let results = self.store.batch(ops).await?;
        for ((i, name, admitted), r) in slots.into_iter().zip(results) {
            out[i] = Some(
                r.map(|s| Written {
                    object: s.value,
                    warnings: admitted.warnings,
                    findings: admitted.findings,
                })
                .map_err(|e| Self::map_err(res, &name, e)),
            );
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Status::internal("batch result missing"))))
            .collect())
    }

    /// Admission and metadata of a new object: (name, object, what
    /// admission said besides).
    fn prepare_create(
        res: &Resource,
        ns: &str,
        mut body: Value,
        part: Part,
        opts: WriteOptions<'_>,
    ) -> Result<(String, Value, Admitted), Status> {
        let body_ns = object::namespace(&body).to_string();
        // A cluster-scoped object (ns empty) has no namespace: one in the
        // body is dropped, as Kubernetes does.
        if !ns.is_empty() && !body_ns.is_empty() && body_ns != ns {
            return Err(Status::bad_request(format!(
                "the namespace of the object ({body_ns}) does not match the namespace on the request ({ns})"
            )));
        }
        let meta = object::meta_mut(&mut body).ok_or_else(|| Status::bad_request("the body must be a JSON object"))?;
        set_namespace(meta, ns);
        let name = meta.get("name").and_then(Value::as_str).unwrap_or("").to_string();
        if name.is_empty() {
            match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => {
                    let generated = format!("{prefix}{}", object::name_suffix());
                    meta.insert("name".into(), Value::String(generated));
                }
                _ => {
                    return Err(Status::invalid(
                        res.subject(""),
                        &[crate::api::FieldError::new(
                            "metadata.name",
                            "name or generateName is required",
                        )],
                    ))
                }
            }
        }
        let name = object::name(&body).to_string();
        let mut admitted = admit(res, body, &name, opts.validation)?;
        let mut value = std::mem::take(&mut admitted.value);
        let meta = object::meta_mut(&mut value).ok_or_else(|| Status::internal("object without metadata"))?;
        for f in ["resourceVersion", "deletionTimestamp", "generateName"] {
            meta.remove(f);
        }
        meta.insert("uid".into(), Value::String(object::new_uid()));
        meta.insert("creationTimestamp".into(), Value::String(time::now_rfc3339()));
        meta.insert("generation".into(), Value::from(1));
        if part != Part::All {
            if let Some(o) = value.as_object_mut() {
                o.remove("status");
            }
        }
        super::conditions::derive(res.kind, None, &mut value);
        if res.kind == "Robot" {
            fold_declared_labels(None, &mut value);
        }
        if let (Some(manager), Part::Main) = (opts.manager, part) {
            super::apply::track_update(None, &mut value, manager);
        }
        Ok((name, value, admitted))
    }

    /// PUT: replace `part` of the object. The body's resourceVersion, if
    /// set, must be current (409 otherwise).
    pub async fn replace(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        body: Value,
        part: Part,
        opts: WriteOptions<'_>,
    ) -> Result<Written, Status> {
        let current = self.get_stored(res, ns, name).await?;
        let expected = match object::meta_str(&body, "resourceVersion") {
            None | Some("") => current.revision,
            Some(rv) => rv.parse().map_err(|_| {
                Status::bad_request(format!(
                    "metadata.resourceVersion {rv:?} is not a valid resource version"
                ))
            })?,
        };
        self.write_update(res, &current, body, part, expected, opts).await
    }

    /// PATCH with a JSON merge patch. Without a resourceVersion in the patch
    /// it applies to the latest object (retrying on races).
    pub async fn patch(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        patch: &Value,
        part: Part,
        opts: WriteOptions<'_>,
    ) -> Result<Written, Status> {
        self.patch_known(res, None, ns, name, patch, part, opts).await
    }

    /// [`Registry::patch`] first tried over `known`, a copy of the object
    /// the caller holds (the cache's): no read when it is current, as
    /// Kubernetes' GuaranteedUpdate starts from its watch cache. The write
    /// is conditional on `known`'s resourceVersion, so a stale copy costs a
    /// conflict and then the ordinary patch, never a lost write. What a
    /// robot's heartbeat takes (one write instead of a read and a write).
    #[allow(clippy::too_many_arguments)]
    pub async fn patch_known(
        &self,
        res: &Resource,
        known: Option<&Value>,
        ns: &str,
        name: &str,
        patch: &Value,
        part: Part,
        opts: WriteOptions<'_>,
    ) -> Result<Written, Status> {
        if !patch.is_object() {
            return Err(Status::bad_request("a merge patch must be a JSON object"));
        }
        let pinned = object::meta_str(patch, "resourceVersion")
            .map(|rv| {
                rv.parse::<u64>().map_err(|_| {
                    Status::bad_request(format!(
                        "metadata.resourceVersion {rv:?} is not a valid resource version"
                    ))
                })
            })
            .transpose()?;
        let current = known.filter(|_| pinned.is_none()).and_then(|v| {
            Some(Stored {
                key: key(res, ns, name),
                revision: object::resource_version(v)?,
                value: Arc::new(v.clone()),
            })
        });
        if let Some(current) = current {
            let mut body = (*current.value).clone();
            merge_patch(&mut body, patch);
            let expected = current.revision;
            match self.write_update(res, &current, body, part, expected, opts).await {
                Err(e) if e.reason == "Conflict" || e.code == 404 => {}
                other => return other,
            }
        }
        self.patch_with(res, ns, name, pinned, part, opts, |current| {
            let mut patched = current.clone();
            merge_patch(&mut patched, patch);
            Ok(patched)
        })
        .await
    }

    /// PATCH with an RFC 6902 JSON patch (a `test` operation on
    /// /metadata/resourceVersion pins the version, as in Kubernetes).
    pub async fn json_patch(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        patch: &Value,
        part: Part,
        opts: WriteOptions<'_>,
    ) -> Result<Written, Status> {
        self.patch_with(res, ns, name, None, part, opts, |current| {
            json_patch(current, patch).map_err(Status::bad_request)
        })
        .await
    }

    /// Server-side apply of `config` by `manager` (see [`super::apply`]):
    /// creates the object when it does not exist; `true` when it did not.
    #[allow(clippy::too_many_arguments)]
    pub async fn apply(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        mut config: Value,
        manager: &str,
        force: bool,
        opts: WriteOptions<'_>,
    ) -> Result<(Written, bool), Status> {
        let given = object::meta_str(&config, "name").unwrap_or("");
        if !given.is_empty() && given != name {
            return Err(Status::bad_request(format!(
                "metadata.name {given:?} does not match the request ({name:?})"
            )));
        }
        if let Some(m) = object::meta_mut(&mut config) {
            m.insert("name".into(), Value::String(name.into()));
            set_namespace(m, ns);
        }
        let normalize = |v: Value| admit(res, v, name, FieldValidation::Ignore).map(|a| a.value);
        // The apply records its own ownership (an Apply operation).
        let opts = WriteOptions { manager: None, ..opts };
        for _ in 0..5 {
            match self.get_stored(res, ns, name).await {
                Err(e) if e.code == 404 => {
                    let obj = super::apply::apply(None, &config, manager, force, normalize)?;
                    match self.create(res, ns, obj, Part::Main, opts).await {
                        Err(e) if e.reason == "AlreadyExists" => continue,
                        other => return other.map(|w| (w, true)),
                    }
                }
                Err(e) => return Err(e),
                Ok(_) => {
                    let w = self
                        .patch_with(res, ns, name, None, Part::Main, opts, |current| {
                            super::apply::apply(Some(current), &config, manager, force, normalize)
                        })
                        .await?;
                    return Ok((w, false));
                }
            }
        }
        Err(Status::conflict(res.subject(name)))
    }

    /// Write `patched(latest object)`; unless `pinned` names the version
    /// the patch is for, a race with another writer is retried on the
    /// newer object.
    #[allow(clippy::too_many_arguments)]
    async fn patch_with(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        pinned: Option<u64>,
        part: Part,
        opts: WriteOptions<'_>,
        patched: impl Fn(&Value) -> Result<Value, Status>,
    ) -> Result<Written, Status> {
        let mut attempts = 0;
        loop {
            let current = self.get_stored(res, ns, name).await?;
            let body = patched(&current.value)?;
            let expected = pinned.unwrap_or(current.revision);
            match self.write_update(res, &current, body, part, expected, opts).await {
                Err(e) if e.reason == "Conflict" && pinned.is_none() && attempts < 5 => attempts += 1,
                other => return other,
            }
        }
    }

    async fn write_update(
        &self,
        res: &Resource,
        current: &Stored,
        mut body: Value,
        part: Part,
        expected: u64,
        opts: WriteOptions<'_>,
    ) -> Result<Written, Status> {
        let (ns, name) = (current.key.namespace.as_str(), current.key.name.as_str());
        if !body.is_object() {
            return Err(Status::bad_request("the body must be a JSON object"));
        }
        for (field, want) in [("name", name), ("namespace", ns)] {
            let got = object::meta_str(&body, field).unwrap_or("");
            if !got.is_empty() && got != want && !(field == "namespace" && ns.is_empty()) {
                return Err(Status::bad_request(format!(
                    "metadata.{field} {got:?} does not match the request ({want:?})"
                )));
            }
        }
        if let Some(m) = object::meta_mut(&mut body) {
            m.insert("name".into(), Value::String(name.into()));
            set_namespace(m, ns);
        }
        let admitted = admit(res, body, name, opts.validation)?;
        let mut new = admitted.value;
        let cur = &current.value;
        let (Some(new_obj), Some(cur_obj)) = (new.as_object_mut(), cur.as_object()) else {
            return Err(Status::internal("stored object is not a JSON object"));
        };
        match part {
            Part::Main => copy_field(new_obj, cur_obj, "status"),
            Part::Status => {
                copy_field(new_obj, cur_obj, "spec");
                copy_field(new_obj, cur_obj, "metadata");
            }
            Part::All => {}
        }
        if let (Some(m), Some(cm)) = (object::meta_mut(&mut new), object::meta(cur)) {
            for f in ["uid", "creationTimestamp", "deletionTimestamp"] {
                match cm.get(f) {
                    Some(v) => m.insert(f.into(), v.clone()),
                    None => m.remove(f),
                };
            }
            m.remove("generateName");
            // A replace without managedFields keeps them (as Kubernetes).
            if !m.contains_key("managedFields") {
                if let Some(v) = cm.get("managedFields") {
                    m.insert("managedFields".into(), v.clone());
                }
            }
            let spec_changed = new.get("spec") != cur.get("spec");
            let generation = object::generation(cur).max(1) + i64::from(spec_changed);
            if let Some(m) = object::meta_mut(&mut new) {
                m.insert("generation".into(), Value::from(generation));
                m.insert("resourceVersion".into(), Value::String(current.revision.to_string()));
            }
        }
        super::conditions::derive(res.kind, Some(cur), &mut new);
        if res.kind == "Robot" {
            fold_declared_labels(Some(cur), &mut new);
        }
        if let (Some(manager), Part::Main) = (opts.manager, part) {
            super::apply::track_update(Some(cur), &mut new, manager);
        }
        if expected != current.revision {
            return Err(Status::conflict(res.subject(name)));
        }
        if new == **cur || opts.dry_run {
            // Nothing changes: no write, no event (as Kubernetes does).
            return Ok(Written {
                object: if opts.dry_run { Arc::new(new) } else { cur.clone() },
                warnings: admitted.warnings,
                findings: Vec::new(),
            });
        }
        let stored = self
            .store
            .update(&current.key, new, Some(expected))
            .await
            .map_err(|e| Self::map_err(res, name, e))?;
        Ok(Written {
            object: stored.value,
            warnings: admitted.warnings,
            findings: admitted.findings,
        })
    }

    pub async fn delete(&self, res: &Resource, ns: &str, name: &str, opts: &DeleteOptions) -> Result<Value, Status> {
        let current = self.get_stored(res, ns, name).await?;
        if let Some(uid) = &opts.uid {
            if uid != object::uid(&current.value) {
                return Err(Status::conflict(res.subject(name)));
            }
        }
        if opts.resource_version.is_some_and(|rv| rv != current.revision) {
            return Err(Status::conflict(res.subject(name)));
        }
        let uid = object::uid(&current.value).to_string();
        match opts.propagation {
            Propagation::Background => {}
            Propagation::Orphan => self.orphan_dependents(ns, &uid).await?,
            Propagation::Foreground => Box::pin(self.delete_dependents(ns, &uid)).await?,
        }
        // Without a resourceVersion precondition, a concurrent status write
        // (controllers, agents) must not fail the delete: retry on the
        // latest version of the same object (same uid).
        let mut current = current;
        for _ in 0..10 {
            match self.store.delete(&current.key, Some(current.revision)).await {
                Ok(deleted) => return Ok(Arc::unwrap_or_clone(deleted.value)),
                Err(StoreError::Conflict { .. }) if opts.resource_version.is_none() => {
                    let latest = self.get_stored(res, ns, name).await?;
                    if object::uid(&latest.value) != uid {
                        return Err(Status::conflict(res.subject(name)));
                    }
                    current = latest;
                }
                Err(e) => return Err(Self::map_err(res, name, e)),
            }
        }
        Err(Status::conflict(res.subject(name)))
    }

    /// Objects in `ns` owned by `uid`.
    pub async fn dependents(&self, ns: &str, uid: &str) -> Result<Vec<Stored>, Status> {
        let mut out = Vec::new();
        for plural in CASCADE {
            let listed = self.store.list(plural, Some(ns)).await?;
            out.extend(
                listed
                    .items
                    .into_iter()
                    .filter(|s| object::owner_uids(&s.value).contains(&uid)),
            );
        }
        Ok(out)
    }

    async fn delete_dependents(&self, ns: &str, uid: &str) -> Result<(), Status> {
        for dep in self.dependents(ns, uid).await? {
            let Some(res) = resources::by_plural(&dep.key.resource) else {
                continue;
            };
            let opts = DeleteOptions {
                propagation: Propagation::Foreground,
                ..Default::default()
            };
            match Box::pin(self.delete(res, ns, &dep.key.name, &opts)).await {
                Err(e) if e.code == 404 => {}
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }

    async fn orphan_dependents(&self, ns: &str, uid: &str) -> Result<(), Status> {
        for dep in self.dependents(ns, uid).await? {
            // Controllers may write the dependent meanwhile: retry on races.
            let mut current = Some(dep);
            for _ in 0..10 {
                let Some(cur) = current.take() else { break };
                let mut v = (*cur.value).clone();
                if let Some(m) = object::meta_mut(&mut v) {
                    if let Some(refs) = m.get_mut("ownerReferences").and_then(Value::as_array_mut) {
                        refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid));
                        if refs.is_empty() {
                            m.remove("ownerReferences");
                        }
                    }
                }
                match self.store.update(&cur.key, v, Some(cur.revision)).await {
                    Ok(_) | Err(StoreError::NotFound(_)) => {}
                    Err(StoreError::Conflict { .. }) => current = self.store.get(&cur.key).await?,
                    Err(e) => return Err(e.into()),
                }
            }
            if current.is_some() {
                return Err(Status::new(
                    409,
                    "Conflict",
                    "the dependents kept changing; retry the delete",
                ));
            }
        }
        Ok(())
    }

    /// Changes to `res` after revision `from`, filtered and shaped for one
    /// client (see [`ResourceWatch::next`]).
    pub fn watch(&self, res: &'static Resource, from: u64, opts: ListOptions) -> Result<ResourceWatch, Status> {
        let inner = self.store.watch(from).map_err(Status::from)?;
        Ok(ResourceWatch { res, inner, opts })
    }
}

fn copy_field(to: &mut serde_json::Map<String, Value>, from: &serde_json::Map<String, Value>, field: &str) {
    match from.get(field) {
        Some(v) => to.insert(field.into(), v.clone()),
        None => to.remove(field),
    };
}

fn encode_continue(ns: &str, name: &str) -> String {
    object::hex(format!("{ns}/{name}").as_bytes())
}

fn decode_continue(token: &str) -> Result<(String, String), Status> {
    let bad = || Status::bad_request(format!("continue token {token:?} is invalid"));
    if token.len() % 2 != 0 {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..token.len())
        .step_by(2)
        .map(|i| token.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (ns, name) = text.split_once('/').ok_or_else(bad)?;
    Ok((ns.to_string(), name.to_string()))
}

/// A watch on one resource (optionally one namespace and selectors).
pub struct ResourceWatch {
    res: &'static Resource,
    inner: Watch,
    opts: ListOptions,
}

/// One event as a client sees it.
#[derive(Clone, Debug)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub revision: u64,
    pub object: Arc<Value>,
}

impl ResourceWatch {
    fn matches(&self, v: &Value) -> bool {
        (self
            .opts
            .namespace
            .as_deref()
            .is_none_or(|ns| object::namespace(v) == ns))
            && self.opts.labels.matches(object::labels(v))
            && self.opts.fields.matches(v)
    }

    /// The next change visible to this watch. An object that stops
    /// matching the selectors is reported as DELETED, one that starts
    /// matching as ADDED (as Kubernetes does).
    pub async fn next(&mut self) -> Result<WatchEvent, Status> {
        loop {
            let Event {
                kind,
                revision,
                key,
                value,
                prev,
            } = self.inner.next().await.map_err(Status::from)?;
            if key.resource != self.res.plural {
                continue;
            }
            let now = self.matches(&value);
            // Only a watch with selectors decodes the state before.
            let before = match &prev {
                None => false,
                // Without selectors only the namespace counts: the same.
                Some(_) if self.opts.labels.is_empty() && self.opts.fields.is_empty() => now,
                Some(p) => p.decode().is_ok_and(|p| self.matches(&p)),
            };
            let kind = match kind {
                EventKind::Added if now => EventKind::Added,
                EventKind::Deleted if now => EventKind::Deleted,
                EventKind::Modified => match (before, now) {
                    (true, true) => EventKind::Modified,
                    (false, true) => EventKind::Added,
                    (true, false) => EventKind::Deleted,
                    (false, false) => continue,
                },
                _ => continue,
            };
            return Ok(WatchEvent {
                kind,
                revision,
                object: value,
            });
        }
    }

    pub fn revision(&self) -> u64 {
        self.inner.last_revision()
    }
}

/// One label set per Robot: a change of its declared labels
/// (`spec.labels`: an agent's, or a manifest's in the original CRD's form)
/// is carried into `metadata.labels`, the set selectors match, keeping
/// what the operator changed there (see [`crate::api::robot_labels`]).
fn fold_declared_labels(old: Option<&Value>, new: &mut Value) {
    let previous = object::string_map(old.and_then(|o| o.pointer("/spec/labels")));
    let declared = object::string_map(new.pointer("/spec/labels"));
    if previous == declared {
        return;
    }
    let current = object::string_map(new.pointer("/metadata/labels"));
    let merged = crate::api::robot_labels::merge_report(&current, &previous, &declared);
    if let Some(m) = object::meta_mut(new) {
        if merged.is_empty() {
            m.remove("labels");
        } else {
            m.insert("labels".into(), serde_json::json!(merged));
        }
    }
}

/// `metadata.namespace` of an object stored under `ns`: none for a
/// cluster-scoped object (`ns` empty).
fn set_namespace(meta: &mut serde_json::Map<String, Value>, ns: &str) {
    if ns.is_empty() {
        meta.remove("namespace");
    } else {
        meta.insert("namespace".into(), Value::String(ns.into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let t = encode_continue("default", "a.b");
        assert_eq!(decode_continue(&t).unwrap(), ("default".into(), "a.b".into()));
        assert!(decode_continue("zz").is_err());
        assert!(decode_continue("abc").is_err());
    }

    /// A heartbeat writes over the cache's copy of the Robot without a
    /// read; a copy older than the store (another replica, or an operator,
    /// wrote since) must cost a conflict and a re-read, never the newer
    /// write.
    #[test]
    fn a_patch_over_a_stale_copy_loses_no_write() {
        use crate::server::resources::ROBOTS;
        use crate::server::store::sqlite::SqliteStore;
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path(), 100).unwrap());
        let registry = Registry::new(store);
        let opts = WriteOptions::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let body = serde_json::json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Robot",
                "metadata": {"name": "r1", "namespace": "default"}, "spec": {"robotId": "r1"},
                "status": {"phase": "Online"}});
            let first = registry
                .create(&ROBOTS, "default", body, Part::All, opts)
                .await
                .unwrap()
                .object;
            // Current copy: written over, one revision on.
            let beat = serde_json::json!({"status": {"lastHeartbeatTime": "2026-12-06T08:00:00Z"}});
            let w = registry
                .patch_known(&ROBOTS, Some(&first), "default", "r1", &beat, Part::Status, opts)
                .await
                .unwrap();
            assert_eq!(w.object["status"]["lastHeartbeatTime"], "2026-12-06T08:00:00Z");
            // `first` is stale now: the phase written meanwhile must stay.
            let offline = serde_json::json!({"status": {"phase": "Offline"}});
            registry
                .patch(&ROBOTS, "default", "r1", &offline, Part::Status, opts)
                .await
                .unwrap();
            let beat = serde_json::json!({"status": {"lastHeartbeatTime": "2026-12-06T08:01:00Z"}});
            let w = registry
                .patch_known(&ROBOTS, Some(&first), "default", "r1", &beat, Part::Status, opts)
                .await
                .unwrap();
            assert_eq!(w.object["status"]["phase"], "Offline", "{}", w.object);
            assert_eq!(w.object["status"]["lastHeartbeatTime"], "2026-12-06T08:01:00Z");
            let stored = registry.get(&ROBOTS, "default", "r1").await.unwrap();
            assert_eq!(stored["status"]["phase"], "Offline");
            // Deleted meanwhile: NotFound, as the plain patch says.
            registry
                .delete(&ROBOTS, "default", "r1", &DeleteOptions::default())
                .await
                .unwrap();
            let e = registry
                .patch_known(&ROBOTS, Some(&first), "default", "r1", &beat, Part::Status, opts)
                .await
                .unwrap_err();
            assert_eq!(e.code, 404);
        });
    }
}
