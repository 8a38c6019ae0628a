//! `k8s4r migrate`: copy a fleet's state from the SQLite data directory of a
//! stopped server into etcd, for the highly available control plane.
//!
//! Every object (API objects, the hashed join tokens, robots' public keys,
//! the server's secrets, events) is created under the etcd prefixes the
//! server uses. The target must hold no
//! k8s4r state yet. Afterwards etcd's revision is moved past the SQLite one,
//! so agents that polled the old server (and remember its revision) are
//! answered in full by the new one.

use super::progress::Progress;
use super::store::etcd::endpoints::EndpointError;
use super::store::etcd::tls::TlsFiles;
use super::store::etcd::{client::Client, Endpoints, EtcdStore, DEFAULT_PREFIX, EVENTS_PREFIX};
use super::store::sqlite::{OpenError, SqliteStore};
use super::store::{Key, Store, StoreError};
use lexopt::prelude::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const USAGE: &str = "\
k8s4r migrate — move a control plane's state from SQLite to etcd

USAGE:
    k8s4r migrate --from-data DIR --to-etcd URL[,URL...] [OPTIONS]

OPTIONS:
    --etcd-cafile FILE       CA certificates (PEM) etcd's serving certificate must
                             chain to; required for https:// endpoints
    --etcd-certfile FILE     Client certificate (PEM) presented to etcd
    --etcd-keyfile FILE      Its private key (PEM); with --etcd-certfile

Stop the server first. Copies every object, token and event from the data
directory DIR into etcd (which must hold no k8s4r state yet); then start the
servers with --etcd URL (and the same TLS flags).
";

#[derive(Debug)]
pub enum MigrateError {
    /// `--to-etcd` and its TLS flags do not make a usable connection.
    Endpoints(EndpointError),
    /// The directory holds no server database.
    NoDatabase(PathBuf),
    Open(OpenError),
    Source(StoreError),
    Target(StoreError),
    /// The target already holds k8s4r objects.
    NotEmpty(String),
}

impl std::fmt::Display for MigrateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MigrateError::Endpoints(e) => write!(f, "{e}"),
            MigrateError::NoDatabase(p) => write!(f, "{} holds no k8s4r.db", p.display()),
            MigrateError::Open(e) => write!(f, "opening the data directory: {e}"),
            MigrateError::Source(e) => write!(f, "reading the SQLite store: {e}"),
            MigrateError::Target(e) => write!(f, "writing to etcd: {e}"),
            MigrateError::NotEmpty(r) => write!(f, "etcd already holds k8s4r {r}; refusing to merge"),
        }
    }
}

impl std::error::Error for MigrateError {}

/// What was copied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub objects: usize,
    pub events: usize,
    pub source_revision: u64,
    pub target_revision: u64,
}

/// `k8s4r migrate ...`
pub fn cmd_migrate(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let mut from: Option<PathBuf> = None;
    let mut to: Vec<String> = Vec::new();
    let mut tls = TlsFiles::default();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("from-data") => from = Some(parser.value()?.into()),
            Long("to-etcd") => to = super::cli::url_list(&parser.value()?.string()?),
            Long("etcd-cafile") => tls.ca = Some(parser.value()?.into()),
            Long("etcd-certfile") => tls.cert = Some(parser.value()?.into()),
            Long("etcd-keyfile") => tls.key = Some(parser.value()?.into()),
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(0);
            }
            other => return Err(other.unexpected()),
        }
    }
    let (Some(from), false) = (from, to.is_empty()) else {
        eprint!("{USAGE}");
        return Ok(2);
    };
    let endpoints = match Endpoints::new(&to, &tls) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {}", MigrateError::Endpoints(e));
            return Ok(1);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    match rt.block_on(migrate(&from, &endpoints)) {
        Ok(s) => {
            println!(
                "migrated {} objects and {} events (SQLite revision {}, etcd now at {})",
                s.objects, s.events, s.source_revision, s.target_revision
            );
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(1)
        }
    }
}

/// Copy `data` (a server's SQLite data directory) into etcd at `endpoints`.
pub async fn migrate(data: &Path, endpoints: &Endpoints) -> Result<Summary, MigrateError> {
    if !data.join("k8s4r.db").exists() {
        return Err(MigrateError::NoDatabase(data.to_path_buf()));
    }
    let source = SqliteStore::open(data, 1).map_err(MigrateError::Open)?;
    let objects = EtcdStore::connect(endpoints, DEFAULT_PREFIX, 1)
        .await
        .map_err(MigrateError::Target)?;
    let source_revision = source.revision().await.map_err(MigrateError::Source)?;
    let copied = copy_all(&source, &objects, "objects").await?;
    let events_dir = data.join("events");
    let events = if events_dir.join("k8s4r.db").exists() {
        let src = SqliteStore::open(&events_dir, 1).map_err(MigrateError::Open)?;
        let dst = EtcdStore::connect_on_demand(endpoints, EVENTS_PREFIX, 1)
            .await
            .map_err(MigrateError::Target)?;
        copy_all(&src, &dst, "events").await?
    } else {
        0
    };
    let target_revision = advance_past(&objects.client(), source_revision)
        .await
        .map_err(MigrateError::Target)?;
    Ok(Summary {
        objects: copied,
        events,
        source_revision,
        target_revision,
    })
}

/// Copy every item of `source` into `target` (`what` names them in the
/// progress shown).
async fn copy_all(source: &SqliteStore, target: &EtcdStore, what: &str) -> Result<usize, MigrateError> {
    let resources = source.resources().map_err(MigrateError::Source)?;
    for r in &resources {
        if !target
            .list(r, None)
            .await
            .map_err(MigrateError::Target)?
            .items
            .is_empty()
        {
            return Err(MigrateError::NotEmpty(r.clone()));
        }
    }
    let mut listed = Vec::with_capacity(resources.len());
    for r in &resources {
        listed.push((r, source.list(r, None).await.map_err(MigrateError::Source)?.items));
    }
    let total = listed.iter().map(|(_, items)| items.len()).sum::<usize>();
    let progress = Progress::new(&format!("copying {what}"), total as u64);
    for (r, items) in listed {
        for item in items {
            let key = Key::new(r, &item.key.namespace, &item.key.name);
            target
                .create(&key, Arc::unwrap_or_clone(item.value))
                .await
                .map_err(MigrateError::Target)?;
            progress.inc(1);
        }
    }
    progress.finish("copied");
    Ok(total)
}

/// Write a marker key until etcd's revision is above `rev`; the revision
/// reached.
async fn advance_past(client: &Arc<Client>, rev: u64) -> Result<u64, StoreError> {
    let backend = |e: super::store::etcd::client::EtcdError| StoreError::Backend(e.to_string());
    let key = super::store::etcd::client::b64(b"/k8s4r-migrated");
    let mut progress: Option<Progress> = None;
    loop {
        let resp = client
            .txn(&json!({"success": [{"request_put": {"key": key, "value": ""}}]}))
            .await
            .map_err(backend)?;
        let now = super::store::etcd::client::header_revision(&resp);
        if now > rev {
            if let Some(p) = &progress {
                p.finish("reached");
            }
            return Ok(now);
        }
        // One write a revision: many for a long-lived fleet.
        progress
            .get_or_insert_with(|| {
                Progress::new(&format!("moving etcd's revision past {rev}"), rev.saturating_sub(now))
            })
            .inc(1);
    }
}
