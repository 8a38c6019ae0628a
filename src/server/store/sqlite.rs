//! The embedded default backend: one SQLite file (WAL mode) in the data
//! directory. Writes are serialised by one connection lock; each write is one
//! transaction that bumps the revision kept in the `meta` table.

use super::{
    stamp_revision, BatchOp, BoxFuture, Event, EventKind, EventLog, Field, Key, Listed, Prev, Store, StoreError,
    Stored, Watch,
};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub struct SqliteStore {
    conn: Mutex<Connection>,
    log: Arc<EventLog>,
    path: PathBuf,
}

/// Why opening the database failed.
#[derive(Debug)]
pub enum OpenError {
    CreateDir(PathBuf, std::io::Error),
    Open(PathBuf, rusqlite::Error),
    Schema(PathBuf, rusqlite::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::CreateDir(p, e) => write!(f, "creating data directory {}: {e}", p.display()),
            OpenError::Open(p, e) => write!(f, "opening {}: {e}", p.display()),
            OpenError::Schema(p, e) => write!(f, "initialising {}: {e}", p.display()),
        }
    }
}

impl std::error::Error for OpenError {}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn decode(text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Backend(format!("corrupt object: {e}")))
}

impl SqliteStore {
    /// Open (or create) `<dir>/k8s4r.db`, keeping `history` events for
    /// resumable watches.
    pub fn open(dir: &Path, history: usize) -> Result<Self, OpenError> {
        std::fs::create_dir_all(dir).map_err(|e| OpenError::CreateDir(dir.to_path_buf(), e))?;
        let path = dir.join("k8s4r.db");
        let conn = Connection::open(&path).map_err(|e| OpenError::Open(path.clone(), e))?;
        let schema = |e| OpenError::Schema(path.clone(), e);
        conn.pragma_update(None, "journal_mode", "WAL").map_err(schema)?;
        // WAL + NORMAL: commits are durable against crashes of the process
        // (not of the machine) without an fsync each; checkpoints (which do
        // fsync) are batched over a larger WAL.
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(schema)?;
        conn.pragma_update(None, "wal_autocheckpoint", 8192).map_err(schema)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(schema)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS objects (
                 resource  TEXT NOT NULL,
                 namespace TEXT NOT NULL,
                 name      TEXT NOT NULL,
                 revision  INTEGER NOT NULL,
                 value     TEXT NOT NULL,
                 PRIMARY KEY (resource, namespace, name)
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', 0);",
        )
        .map_err(schema)?;
        let rev: i64 = conn
            .query_row("SELECT value FROM meta WHERE key = 'revision'", [], |r| r.get(0))
            .map_err(schema)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            log: EventLog::new(history, rev as u64),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every resource (plural) that has objects, sorted.
    pub fn resources(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT DISTINCT resource FROM objects ORDER BY resource")
            .map_err(backend)?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_row(tx: &Connection, key: &Key) -> Result<Option<(u64, String)>, StoreError> {
        tx.prepare_cached("SELECT revision, value FROM objects WHERE resource = ?1 AND namespace = ?2 AND name = ?3")
            .map_err(backend)?
            .query_row(params![key.resource, key.namespace, key.name], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
            })
            .optional()
            .map_err(backend)
    }

    fn next_revision(tx: &Transaction<'_>) -> Result<u64, StoreError> {
        tx.prepare_cached("UPDATE meta SET value = value + 1 WHERE key = 'revision' RETURNING value")
            .map_err(backend)?
            .query_row([], |r| r.get::<_, i64>(0))
            .map(|v| v as u64)
            .map_err(backend)
    }

    /// One change inside an open transaction: read the current row, let
    /// `decide` check it and produce the new state, write it. Nothing is
    /// written when `decide` fails.
    fn apply_in(
        tx: &Transaction<'_>,
        key: &Key,
        decide: impl FnOnce(Option<u64>) -> Result<Option<Value>, StoreError>,
    ) -> Result<Event, StoreError> {
        // The stored text is decoded only for a delete (its event carries
        // the last state); a write needs just the current revision.
        let current = Self::read_row(tx, key)?;
        let existed = current.is_some();
        let next = decide(current.as_ref().map(|(rev, _)| *rev))?;
        let rev = Self::next_revision(tx)?;
        let prev = current.as_ref().map(|(_, text)| Prev::new(text));
        let (kind, value) = match next {
            Some(mut value) => {
                stamp_revision(&mut value, rev);
                let text = serde_json::to_string(&value).map_err(|e| StoreError::Backend(e.to_string()))?;
                tx.prepare_cached(
                    "INSERT INTO objects (resource, namespace, name, revision, value) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (resource, namespace, name) DO UPDATE SET revision = ?4, value = ?5",
                )
                .map_err(backend)?
                .execute(params![key.resource, key.namespace, key.name, rev as i64, text])
                .map_err(backend)?;
                (if existed { EventKind::Modified } else { EventKind::Added }, value)
            }
            None => {
                tx.prepare_cached("DELETE FROM objects WHERE resource = ?1 AND namespace = ?2 AND name = ?3")
                    .map_err(backend)?
                    .execute(params![key.resource, key.namespace, key.name])
                    .map_err(backend)?;
                let mut last = match &current {
                    Some((_, text)) => decode(text)?,
                    None => Value::Null,
                };
                stamp_revision(&mut last, rev);
                (EventKind::Deleted, last)
            }
        };
        Ok(Event {
            kind,
            revision: rev,
            key: key.clone(),
            value: Arc::new(value),
            prev,
        })
    }

    fn stored(e: &Event) -> Stored {
        Stored {
            key: e.key.clone(),
            value: e.value.clone(),
            revision: e.revision,
        }
    }

    /// One write in its own transaction; published under the connection
    /// lock so events are published in revision order.
    fn write(
        &self,
        key: &Key,
        decide: impl FnOnce(Option<u64>) -> Result<Option<Value>, StoreError>,
    ) -> Result<Stored, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(backend)?;
        let event = Self::apply_in(&tx, key, decide)?;
        tx.commit().map_err(backend)?;
        let stored = Self::stored(&event);
        self.log.publish(event);
        Ok(stored)
    }

    /// What `op` writes given the current revision (its value moved, not
    /// copied: a batch of new Tasks is megabytes of trees).
    fn decide(op: BatchOp) -> impl FnOnce(Option<u64>) -> Result<Option<Value>, StoreError> {
        move |current| match (op, current) {
            (BatchOp::Create(k, _), Some(_)) => Err(StoreError::AlreadyExists(k)),
            (BatchOp::Create(_, v), None) => Ok(Some(v)),
            (BatchOp::Update(k, _, _) | BatchOp::Delete(k, _), None) => Err(StoreError::NotFound(k)),
            (BatchOp::Update(k, v, expected), Some(rev)) => {
                Self::check_expected(&k, expected, rev)?;
                Ok(Some(v))
            }
            (BatchOp::Delete(k, expected), Some(rev)) => {
                Self::check_expected(&k, expected, rev)?;
                Ok(None)
            }
        }
    }

    fn check_expected(key: &Key, expected: Option<u64>, actual: u64) -> Result<(), StoreError> {
        match expected {
            Some(e) if e != actual => Err(StoreError::Conflict {
                key: key.clone(),
                expected: e,
                actual,
            }),
            _ => Ok(()),
        }
    }
}

impl Store for SqliteStore {
    fn get<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<Option<Stored>, StoreError>> {
        Box::pin(async move {
            let conn = self.lock();
            match Self::read_row(&conn, key)? {
                None => Ok(None),
                Some((revision, text)) => Ok(Some(Stored {
                    key: key.clone(),
                    value: Arc::new(decode(&text)?),
                    revision,
                })),
            }
        })
    }

    fn list<'a>(&'a self, resource: &'a str, namespace: Option<&'a str>) -> BoxFuture<'a, Result<Listed, StoreError>> {
        Box::pin(async move {
            let mut conn = self.lock();
            // A read transaction: the items and the revision are one snapshot.
            let tx = conn.transaction().map_err(backend)?;
            let revision = tx
                .query_row("SELECT value FROM meta WHERE key = 'revision'", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map_err(backend)? as u64;
            let mut stmt = tx
                .prepare_cached(
                    "SELECT namespace, name, revision, value FROM objects
                     WHERE resource = ?1 AND (?2 IS NULL OR namespace = ?2)
                     ORDER BY namespace, name",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![resource, namespace], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)? as u64,
                        r.get::<_, String>(3)?,
                    ))
                })
                .map_err(backend)?;
            let mut items = Vec::new();
            for row in rows {
                let (ns, name, rev, text) = row.map_err(backend)?;
                items.push(Stored {
                    key: Key::new(resource, &ns, &name),
                    value: Arc::new(decode(&text)?),
                    revision: rev,
                });
            }
            Ok(Listed { items, revision })
        })
    }

    fn list_field<'a>(
        &'a self,
        resource: &'a str,
        field: &'static str,
    ) -> BoxFuture<'a, Result<Vec<Field>, StoreError>> {
        Box::pin(async move {
            let conn = self.lock();
            let path = format!("$.\"{}\"", field.replace('"', ""));
            let mut stmt = conn
                .prepare_cached(
                    "SELECT namespace, name, revision,
                            CASE json_type(value, ?2) WHEN 'text' THEN json_extract(value, ?2) END
                     FROM objects WHERE resource = ?1 ORDER BY namespace, name",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![resource, path], |r| {
                    Ok(Field {
                        key: Key::new(resource, &r.get::<_, String>(0)?, &r.get::<_, String>(1)?),
                        revision: r.get::<_, i64>(2)? as u64,
                        value: r.get::<_, Option<String>>(3)?,
                    })
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
    }

    fn create<'a>(&'a self, key: &'a Key, value: Value) -> BoxFuture<'a, Result<Stored, StoreError>> {
        Box::pin(async move {
            self.write(key, |current| match current {
                Some(_) => Err(StoreError::AlreadyExists(key.clone())),
                None => Ok(Some(value)),
            })
        })
    }

    fn update<'a>(
        &'a self,
        key: &'a Key,
        value: Value,
        expected: Option<u64>,
    ) -> BoxFuture<'a, Result<Stored, StoreError>> {
        Box::pin(async move {
            self.write(key, |current| match current {
                None => Err(StoreError::NotFound(key.clone())),
                Some(rev) => {
                    Self::check_expected(key, expected, rev)?;
                    Ok(Some(value))
                }
            })
        })
    }

    fn delete<'a>(&'a self, key: &'a Key, expected: Option<u64>) -> BoxFuture<'a, Result<Stored, StoreError>> {
        Box::pin(async move {
            self.write(key, |current| match current {
                None => Err(StoreError::NotFound(key.clone())),
                Some(rev) => {
                    Self::check_expected(key, expected, rev)?;
                    Ok(None)
                }
            })
        })
    }

    fn revision(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let conn = self.lock();
            conn.query_row("SELECT value FROM meta WHERE key = 'revision'", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|v| v as u64)
            .map_err(backend)
        })
    }

    fn watch(&self, from: u64) -> Result<Watch, StoreError> {
        self.log.watch(from)
    }

    /// All operations in one transaction (one commit), each with its own
    /// result; a failed operation writes nothing and does not stop the rest.
    fn batch(&self, ops: Vec<BatchOp>) -> BoxFuture<'_, Result<Vec<Result<Stored, StoreError>>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.lock();
            let tx = conn.transaction().map_err(backend)?;
            let mut results = Vec::with_capacity(ops.len());
            let mut events = Vec::with_capacity(ops.len());
            for op in ops {
                let key = op.key().clone();
                match Self::apply_in(&tx, &key, Self::decide(op)) {
                    Ok(e) => {
                        results.push(Ok(Self::stored(&e)));
                        events.push(e);
                    }
                    Err(e @ StoreError::Backend(_)) => return Err(e),
                    Err(e) => results.push(Err(e)),
                }
            }
            tx.commit().map_err(backend)?;
            for e in events {
                self.log.publish(e);
            }
            Ok(results)
        })
    }
}
