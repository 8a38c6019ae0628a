//! `?watch=1`: a chunked stream of one JSON event per line, as the API
//! server sends them. Starts with ADDED events for every existing object when
//! no resourceVersion is given; otherwise resumes after it (410 Expired when
//! that history is gone).
//!
//! The core/v1 view (Pods, Nodes) watches its source kind (Tasks, Robots)
//! through the same stream, each object shown through a [`View`].

use super::table::{self, Include};
use super::AppState;
use crate::api::meta::API_VERSION;
use crate::server::registry::{ListOptions, ResourceWatch};
use crate::server::resources::Resource;
use crate::server::selector::FieldSelector;
use crate::server::status::Status;
use crate::server::store::EventKind;
use crate::server::time;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::time::{Duration, Instant};

/// How often an idle watch with `allowWatchBookmarks` gets a bookmark.
const BOOKMARK_EVERY: Duration = Duration::from_secs(2);

/// How a view shows the objects of the kind it is made of: the core/v1
/// view's Pods from Tasks, Nodes from Robots.
pub struct View {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub convert: fn(&Value) -> Value,
    /// A fieldSelector over the converted objects (`spec.nodeName`).
    pub fields: FieldSelector,
    /// A Table of converted objects (column definitions when `headers`).
    pub table: fn(&[Value], bool, Value) -> Value,
}

struct Stream {
    res: &'static Resource,
    view: Option<View>,
    initial: VecDeque<Value>,
    watch: ResourceWatch,
    as_table: bool,
    include: Include,
    headers_sent: bool,
    bookmarks: bool,
    /// None: no bookmarks, or none representable (then never).
    next_bookmark: Option<Instant>,
    /// From `timeoutSeconds`; None: the watch lasts until the client leaves.
    deadline: Option<Instant>,
    done: bool,
    /// This watch's place under `--max-watches`, freed when it ends.
    _permit: tokio::sync::OwnedSemaphorePermit,
    /// The server's stop: the watch ends.
    stopping: tokio::sync::watch::Receiver<bool>,
}

/// Sleep until `at`; forever when there is no such time.
async fn until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn kind_name(k: EventKind) -> &'static str {
    match k {
        EventKind::Added => "ADDED",
        EventKind::Modified => "MODIFIED",
        EventKind::Deleted => "DELETED",
    }
}

impl Stream {
    /// An event's line; None when a view's fieldSelector leaves it out.
    fn line(&mut self, kind: &str, obj: &Value) -> Option<Bytes> {
        if let Some(view) = &self.view {
            let shown = (view.convert)(obj);
            if !view.fields.matches(&shown) {
                return None;
            }
            let object = if self.as_table {
                let rv = shown["metadata"]["resourceVersion"].clone();
                let t = (view.table)(&[shown], !self.headers_sent, json!({"resourceVersion": rv}));
                self.headers_sent = true;
                t
            } else {
                shown
            };
            return Some(event_line(kind, &object));
        }
        let object = if self.as_table {
            let rv = obj["metadata"]["resourceVersion"].clone();
            let t = table::table(
                self.res,
                [obj],
                self.include,
                !self.headers_sent,
                json!({"resourceVersion": rv}),
            );
            self.headers_sent = true;
            t
        } else {
            obj.clone()
        };
        Some(event_line(kind, &object))
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(line) = self.next_event().await? {
                return Some(line);
            }
        }
    }

    /// The next event: Some(None) for one a view leaves out.
    async fn next_event(&mut self) -> Option<Option<Bytes>> {
        if self.done {
            return None;
        }
        if let Some(obj) = self.initial.pop_front() {
            return Some(self.line("ADDED", &obj));
        }
        tokio::select! {
            ev = self.watch.next() => match ev {
                Ok(ev) => {
                    self.next_bookmark = self.bookmark_after();
                    let obj = Arc::clone(&ev.object);
                    Some(self.line(kind_name(ev.kind), &obj))
                }
                Err(status) => {
                    self.done = true;
                    Some(Some(event_line("ERROR", &serde_json::to_value(status).unwrap_or_default())))
                }
            },
            () = until(self.next_bookmark) => {
                self.next_bookmark = self.bookmark_after();
                let (kind, api_version) = match &self.view {
                    Some(v) => (v.kind, v.api_version),
                    None => (self.res.kind, API_VERSION),
                };
                let obj = json!({
                    "kind": kind,
                    "apiVersion": api_version,
                    "metadata": {"resourceVersion": self.watch.revision().to_string()},
                });
                Some(Some(event_line("BOOKMARK", &obj)))
            },
            () = until(self.deadline) => None,
            () = crate::server::stopped_signal(self.stopping.clone()) => None,
        }
    }

    fn bookmark_after(&self) -> Option<Instant> {
        self.bookmarks.then(|| time::deadline_in(BOOKMARK_EVERY)).flatten()
    }
}

/// One watch event as a line of JSON.
fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut text = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    text.push(b'\n');
    Bytes::from(text)
}

/// Serve a watch of `res`, shown as stored or through `view`.
pub async fn serve(
    app: AppState,
    res: &'static Resource,
    view: Option<View>,
    mut opts: ListOptions,
    q: &HashMap<String, String>,
    accept: &str,
) -> Result<Response, Status> {
    opts.limit = None;
    opts.continue_token = None;
    let timeout = match q.get("timeoutSeconds").map(String::as_str) {
        None | Some("") => None,
        Some(t) => Some(super::seconds_param("timeoutSeconds", t)?),
    };
    let permit = app
        .watch_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| app.limits.watches_exhausted())?;
    let (initial, from) = match q.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => {
            let listed = app.registry.list(res, &opts).await?;
            (listed.items.into(), listed.revision)
        }
        Some(rv) => (
            VecDeque::new(),
            rv.parse::<u64>()
                .map_err(|_| Status::bad_request(format!("resourceVersion {rv:?} is not a valid resource version")))?,
        ),
    };
    let watch = app.registry.watch(res, from, opts)?;
    let as_table = table::wants_table(accept);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true" || v == "1");
    let state = Stream {
        res,
        view,
        initial,
        watch,
        as_table,
        include: Include::parse(q.get("includeObject").map(String::as_str)),
        headers_sent: false,
        bookmarks,
        next_bookmark: bookmarks.then(|| time::deadline_in(BOOKMARK_EVERY)).flatten(),
        deadline: timeout.and_then(time::deadline_in),
        done: false,
        _permit: permit,
        stopping: app.stopping.clone(),
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        st.next_chunk().await.map(|b| (Ok::<_, Infallible>(b), st))
    });
    let content_type = if as_table {
        table::CONTENT_TYPE
    } else {
        "application/json"
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, HeaderValue::from_static(content_type))
        .header(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))
        .body(Body::from_stream(stream))
        .map_err(|e| Status::internal(format!("building watch response: {e}")))
}
