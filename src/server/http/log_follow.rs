//! `kubectl logs TASK -f`: a task's log followed as a chunked text stream.
//!
//! A robot keeps its tasks' logs and sends a tail only when asked (on its
//! long poll, [`crate::server::agents::Agents::task_log`]); there is no
//! push. Following is therefore asking again every [`FOLLOW_EVERY`] and
//! sending what is new since the last answer ([`new_output`]). It ends when
//! the task is finished (after one last look) or gone, or when the client
//! leaves; a robot that is offline for a while only pauses it. A follow
//! holds one `--max-watches` permit, as a watch does.

use super::AppState;
use crate::api::types::TaskState;
use crate::server::resources::TASKS;
use crate::server::status::Status;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use std::convert::Infallible;
use std::time::Duration;

/// How often a followed log is asked for again: as often as the dashboard's
/// log tail, so a follow costs the robot's link no more than an open page.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(2);

/// What `next` (the newest answer) holds beyond `prev` (the one before).
///
/// Both are the newest part of one growing log, at most the upload limit
/// each. While the log fits, `next` starts with `prev` and the rest is new:
/// exact. Once it no longer fits (or the robot dropped an old rotated file)
/// both are windows of the log, and what is new follows the longest start
/// of `next` that ends `prev`; that is exact too unless the whole window is
/// one text repeated (then a repeat can be taken for old output).
pub fn new_output<'a>(prev: &str, next: &'a str) -> &'a str {
    if let Some(rest) = next.strip_prefix(prev) {
        return rest;
    }
    // The overlap starts at a character boundary of `next` (its start) and
    // ends at one (it equals a suffix of valid UTF-8), so the slice is safe;
    // `get` keeps it so regardless.
    next.get(overlap(prev.as_bytes(), next.as_bytes())..).unwrap_or("")
}

/// The length of the longest prefix of `next` that is a suffix of `prev`
/// (Knuth–Morris–Pratt: linear in both lengths, which the upload limit
/// bounds).
fn overlap(prev: &[u8], next: &[u8]) -> usize {
    if next.is_empty() {
        return 0;
    }
    let mut failure = vec![0usize; next.len()];
    let mut k = 0;
    for i in 1..next.len() {
        while k > 0 && next[i] != next[k] {
            k = failure[k - 1];
        }
        if next[i] == next[k] {
            k += 1;
        }
        failure[i] = k;
    }
    let mut k = 0;
    for &c in prev {
        while k > 0 && (k == next.len() || c != next[k]) {
            k = failure[k - 1];
        }
        if k < next.len() && c == next[k] {
            k += 1;
        }
    }
    k
}

/// The last `n` lines of `text` (all of it when `n` is None), as the agent
/// cuts a tail.
fn last_lines(text: &str, n: Option<u32>) -> &str {
    let Some(n) = n else { return text };
    if n == 0 {
        return "";
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    let start = body
        .rmatch_indices('\n')
        .nth((n - 1) as usize)
        .map_or(0, |(i, _)| i + 1);
    &text[start..]
}

struct Follow {
    app: AppState,
    ns: String,
    name: String,
    stream: String,
    prev: String,
    /// The first chunk (the tail), sent before any waiting.
    first: Option<String>,
    done: bool,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Follow {
    /// Whether the task has finished or is gone: then one last look, and
    /// the stream ends.
    async fn finished(&self) -> bool {
        match self.app.registry.get(&TASKS, &self.ns, &self.name).await {
            Ok(task) => task
                .pointer("/status/state")
                .and_then(|s| serde_json::from_value::<TaskState>(s.clone()).ok())
                .is_some_and(TaskState::is_terminal),
            Err(e) => e.code == 404,
        }
    }

    async fn next_chunk(&mut self) -> Option<String> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        loop {
            if self.done {
                return None;
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
            self.done = self.finished().await;
            // Offline robot, slow answer: try again at the next turn.
            let Ok(upload) = self.app.agents.task_log(&self.ns, &self.name, &self.stream, None).await else {
                continue;
            };
            let new = new_output(&self.prev, &upload.text).to_string();
            self.prev = upload.text;
            if !new.is_empty() {
                return Some(new);
            }
        }
    }
}

/// Start following: the first answer (its last `tail` lines) now, or the
/// error that keeps the follow from starting (task unknown, not placed,
/// robot offline), as `kubectl logs` without `-f` would get.
pub async fn follow(app: &AppState, ns: &str, name: &str, stream: &str, tail: Option<u32>) -> Result<Response, Status> {
    let permit = app
        .watch_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| app.limits.watches_exhausted())?;
    // The whole kept log, so later answers can be compared with it.
    let upload = app.agents.task_log(ns, name, stream, None).await?;
    let state = Follow {
        app: app.clone(),
        ns: ns.to_string(),
        name: name.to_string(),
        stream: stream.to_string(),
        first: Some(last_lines(&upload.text, tail).to_string()),
        prev: upload.text,
        done: false,
        _permit: permit,
    };
    let body = futures_util::stream::unfold(state, |mut f| async move {
        let chunk = f.next_chunk().await?;
        Some((Ok::<_, Infallible>(Bytes::from(chunk)), f))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )
        .header(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))
        .body(Body::from_stream(body))
        .map_err(|e| Status::internal(format!("building log stream: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_output_is_what_follows_the_previous_answer() {
        // The log fits: the new answer extends the old one, even when every
        // line is the same.
        assert_eq!(new_output("a\nb\n", "a\nb\nc\n"), "c\n");
        assert_eq!(new_output("tick\ntick\n", "tick\ntick\ntick\n"), "tick\n");
        assert_eq!(new_output("a\n", "a\n"), "");
        assert_eq!(new_output("", "x\n"), "x\n");
        // The window moved (older output cut): what follows the overlap.
        assert_eq!(new_output("1\n2\n3\n4\n", "3\n4\n5\n6\n"), "5\n6\n");
        assert_eq!(new_output("1\n2\n3\n4\n", "4\n5\n"), "5\n");
        // No overlap at all (more new output than a window): all of it.
        assert_eq!(new_output("1\n2\n", "7\n8\n"), "7\n8\n");
        // Multi-byte text stays whole.
        assert_eq!(new_output("ä\nö\n", "ö\nü\n"), "ü\n");
    }

    #[test]
    fn tails_cut_whole_lines() {
        assert_eq!(last_lines("a\nb\nc\n", Some(2)), "b\nc\n");
        assert_eq!(last_lines("a\nb\nc", Some(2)), "b\nc");
        assert_eq!(last_lines("a\nb\n", Some(5)), "a\nb\n");
        assert_eq!(last_lines("a\nb\n", Some(0)), "");
        assert_eq!(last_lines("a\nb\n", None), "a\nb\n");
    }
}
