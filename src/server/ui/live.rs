//! What keeps a page live without reloads.
//!
//! - [`stream`]: server-sent events, one `change` per store event of the
//!   resources a page follows (`?watch=jobs,tasks`), read from the same
//!   [`crate::server::registry::Registry::watch`] the API's `?watch=1`
//!   serves, under the same `--max-watches` permits. The page's script
//!   fetches the page again on a change and swaps its main part.
//! - [`log`]: a task's log tail as text, through the same path as
//!   `GET .../tasks/{name}/log` (the robot uploads it on request).

use super::{api_path, Ui, UiState};
use crate::server::registry::ListOptions;
use crate::server::resources::{self, Resource};
use crate::server::status::Status;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, request::Parts, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

/// A comment line this often, so a closed tab's stream is noticed and
/// ended (the write fails) and proxies keep the connection open.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// A stream ends after this long and the browser opens a new one (the
/// page fetches itself again then, so nothing is missed): an open tab
/// never holds a connection for good, and so never holds up a graceful
/// shutdown for longer than this.
const MAX_STREAM: Duration = Duration::from_secs(60);
/// Most lines of a log tail the page asks for.
const MAX_TAIL: u32 = 1000;

fn plain(code: StatusCode, text: String) -> Response {
    (code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

fn status(e: Status) -> Response {
    plain(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        e.message,
    )
}

pub async fn stream(State(ui): State<UiState>, parts: Parts, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(viewer) = ui.viewer(&parts) else {
        return plain(StatusCode::UNAUTHORIZED, "log in first".into());
    };
    let mut kinds: Vec<&'static Resource> = Vec::new();
    for plural in q.get("watch").map(String::as_str).unwrap_or("").split(',') {
        let Some(res) = resources::by_plural(plural.trim()) else {
            continue;
        };
        if !Ui::may(&viewer, "GET", &api_path(res.plural, "", ""), Some("watch=true")) {
            return plain(
                StatusCode::FORBIDDEN,
                format!("{} may not watch {}", viewer.user.name, res.plural),
            );
        }
        if !kinds.iter().any(|k| k.plural == res.plural) {
            kinds.push(res);
        }
    }
    if kinds.is_empty() {
        return plain(
            StatusCode::BAD_REQUEST,
            "watch: name jobs, taskgroups, tasks or robots".into(),
        );
    }
    let permit = match ui.app.watch_slots.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => return status(ui.app.limits.watches_exhausted()),
    };
    let mut watches = Vec::new();
    for res in kinds {
        // From now on: the page was rendered from the store as it is.
        let now = ListOptions {
            limit: Some(1),
            ..Default::default()
        };
        let from = match ui.app.registry.list(res, &now).await {
            Ok(l) => l.revision,
            Err(e) => return status(e),
        };
        let watch = match ui.app.registry.watch(res, from, ListOptions::default()) {
            Ok(w) => w,
            Err(e) => return status(e),
        };
        let plural = res.plural;
        watches.push(
            stream::unfold(Some(watch), move |w| async move {
                let mut w = w?;
                match w.next().await {
                    Ok(ev) => {
                        let name = ev.object["metadata"]["name"].as_str().unwrap_or("").to_string();
                        let data = serde_json::json!({"resource": plural, "name": name});
                        Some((format!("event: change\ndata: {data}\n\n"), Some(w)))
                    }
                    // History gone (410) or the store failed: the page
                    // reloads once and opens a new stream.
                    Err(_) => Some(("event: reset\ndata: {}\n\n".to_string(), None)),
                }
            })
            .boxed(),
        );
    }
    let keepalive = stream::unfold((), |()| async {
        tokio::time::sleep(KEEPALIVE).await;
        Some((": keepalive\n\n".to_string(), ()))
    })
    .boxed();
    watches.push(keepalive);
    let body = stream::select_all(watches)
        .take_until(tokio::time::sleep(MAX_STREAM))
        .map(move |line| {
            // The permit lives as long as the stream does.
            let _held = &permit;
            Ok::<_, Infallible>(Bytes::from(line))
        });
    let mut r = Response::new(Body::from_stream(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r
}

pub async fn log(
    State(ui): State<UiState>,
    parts: Parts,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(viewer) = ui.viewer(&parts) else {
        return plain(StatusCode::UNAUTHORIZED, "log in first".into());
    };
    let path = format!("{}/log", api_path("tasks", &ns, &name));
    if !Ui::may(&viewer, "GET", &path, None) {
        return plain(
            StatusCode::FORBIDDEN,
            format!("{} may not read the log of task {name}", viewer.user.name),
        );
    }
    let tail = match q.get("tailLines").map(|t| t.parse::<u32>()) {
        None => Some(200),
        Some(Ok(t)) => Some(t.min(MAX_TAIL)),
        Some(Err(_)) => return plain(StatusCode::BAD_REQUEST, "tailLines: not a number".into()),
    };
    match ui.app.agents.task_log(&ns, &name, "stdout", tail).await {
        Ok(upload) => plain(StatusCode::OK, upload.text),
        Err(e) => status(e),
    }
}
