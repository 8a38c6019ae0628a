//! `?watch=1`: a chunked stream of one JSON event per line, as the API
//! server sends them. Starts with ADDED events for every existing object when
//! no resourceVersion is given; otherwise resumes after it (410 Expired when
//! that history is gone).

use super::table::{self, Include};
use super::AppState;
use crate::api::meta::API_VERSION;
use crate::server::registry::{ListOptions, ResourceWatch};
use crate::server::resources::Resource;
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

struct Stream {
    res: &'static Resource,
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
    fn line(&mut self, kind: &str, obj: &Value) -> Bytes {
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
        let mut text = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
        text.push(b'\n');
        Bytes::from(text)
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
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
                    let mut text = serde_json::to_vec(&json!({"type": "ERROR", "object": status})).unwrap_or_default();
                    text.push(b'\n');
                    Some(Bytes::from(text))
                }
            },
            () = until(self.next_bookmark) => {
                self.next_bookmark = self.bookmark_after();
                let obj = json!({
                    "kind": self.res.kind,
                    "apiVersion": API_VERSION,
                    "metadata": {"resourceVersion": self.watch.revision().to_string()},
                });
                let mut text = serde_json::to_vec(&json!({"type": "BOOKMARK", "object": obj})).unwrap_or_default();
                text.push(b'\n');
                Some(Bytes::from(text))
            },
            () = until(self.deadline) => None,
        }
    }

    fn bookmark_after(&self) -> Option<Instant> {
        self.bookmarks.then(|| time::deadline_in(BOOKMARK_EVERY)).flatten()
    }
}

pub async fn serve(
    app: AppState,
    res: &'static Resource,
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
