//! Handlers of `/agent/v1`: JSON in, JSON out; the logic is in
//! [`crate::server::agents`]. Robot requests reach them verified and opened
//! (and leave them to be sealed and signed) by [`super::channel`].

use super::{json, parse_body, AppState};
use crate::api::agent_protocol::{JoinTokenRequest, RegisterRequest, RotateRequest, StatusReport};
use crate::server::robot_channel::link::Link;
use crate::server::robot_channel::robots::Robot;
use crate::server::robot_channel::server_keys::MAX_OVERLAP;
use crate::server::robot_channel::verify::SignedRequest;
use crate::server::status::Status;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

fn result<T: serde::Serialize>(r: Result<T, Status>) -> Response {
    match r {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => e.into_response(),
    }
}

fn body<T: DeserializeOwned>(headers: &HeaderMap, b: Result<Bytes, BytesRejection>) -> Result<T, Status> {
    let v = parse_body(headers, b)?;
    serde_path_to_error::deserialize(v).map_err(|e| {
        let field = e.path().to_string();
        Status::bad_request(format!("{field}: {}", e.into_inner()))
    })
}

pub async fn create_join_token(
    State(app): State<AppState>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    result(
        async {
            let req: JoinTokenRequest = match &b {
                Ok(bytes) if bytes.is_empty() => JoinTokenRequest::default(),
                _ => body(&headers, b)?,
            };
            app.agents.create_join_token(&req).await
        }
        .await,
    )
}

pub async fn list_join_tokens(State(app): State<AppState>) -> Response {
    result(app.agents.list_join_tokens().await)
}

pub async fn revoke_join_token(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    result(
        app.agents
            .revoke_join_token(&id)
            .await
            .map(|()| serde_json::json!({"revoked": id})),
    )
}

/// `DELETE /agent/v1/robotkeys/{name}` (`k8s4r robot reset`; also under its
/// old name `robottokens`).
pub async fn reset_robot(State(app): State<AppState>, Path(name): Path<String>) -> Response {
    result(
        app.agents
            .reset_robot(&name)
            .await
            .map(|()| serde_json::json!({"reset": name})),
    )
}

/// `POST /agent/v1/serverkeys/rotate` (`k8s4r robot-keys rotate`).
pub async fn rotate_server_keys(
    State(app): State<AppState>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    result(
        async {
            let req: RotateRequest = match &b {
                Ok(bytes) if bytes.is_empty() => RotateRequest::default(),
                _ => body(&headers, b)?,
            };
            let overlap = req.overlap_seconds.unwrap_or(86_400);
            if overlap > MAX_OVERLAP.as_secs() {
                return Err(Status::bad_request(format!(
                    "overlapSeconds: {overlap} is more than the limit of {}",
                    MAX_OVERLAP.as_secs()
                )));
            }
            app.agents.rotate_server_keys(Duration::from_secs(overlap)).await
        }
        .await,
    )
}

/// `GET /agent/v1/serverkeys`: the public halves of the server's keys.
pub async fn list_server_keys(State(app): State<AppState>) -> Response {
    json(StatusCode::OK, &app.agents.channel.keys.list())
}

/// 400 for an agent that sends its join token (from before the signed
/// channel).
pub fn old_agent() -> Status {
    Status::bad_request(
        "joinToken: this agent sends its join token in the clear, which this server no longer \
         accepts; upgrade the agent (it proves the token without sending it)",
    )
}

/// `POST /agent/v1/register`, signed by the keys the body claims (checked
/// by [`crate::server::agents::Agents::register`]).
pub async fn register(
    State(app): State<AppState>,
    Extension(signed): Extension<SignedRequest>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    result(
        async {
            let v = parse_body(&headers, b)?;
            if v.get("joinToken").is_some() {
                return Err(old_agent());
            }
            let req: RegisterRequest = serde_path_to_error::deserialize(v).map_err(|e| {
                let field = e.path().to_string();
                Status::bad_request(format!("{field}: {}", e.into_inner()))
            })?;
            app.agents.register(req, &signed).await
        }
        .await,
    )
}

/// A yes/no query parameter: absent or `0` is no, `1` is yes.
fn flag(q: &HashMap<String, String>, name: &str) -> Result<bool, Status> {
    match q.get(name).map(String::as_str) {
        None | Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(other) => Err(Status::bad_request(format!("{name} {other:?} must be 0 or 1"))),
    }
}

/// The long poll's `wait` (seconds, or a duration such as `30s`). Any
/// length parses; the poll itself waits at most the fleet's poll interval,
/// or `--poll-hold` where it can watch the connection.
fn parse_wait(text: Option<&String>) -> Result<Duration, Status> {
    match text.map(String::as_str) {
        None | Some("") => Ok(Duration::from_secs(30)),
        Some(t) => t
            .parse::<u64>()
            .map(Duration::from_secs)
            .or_else(|_| crate::api::Duration::parse(t))
            .map_err(|_| Status::bad_request(format!("wait {t:?} is not a duration (e.g. 30s)"))),
    }
}

pub async fn assignments(
    State(app): State<AppState>,
    Extension(robot): Extension<Arc<Robot>>,
    link: Option<Extension<Link>>,
    q: super::k8s::Params,
) -> Response {
    result(
        async {
            let q: HashMap<String, String> = q
                .map(|axum::extract::Query(m)| m)
                .map_err(|e| Status::bad_request(format!("invalid query string: {e}")))?;
            let id = &robot.id;
            let since = match q.get("since").map(String::as_str) {
                None | Some("") => 0,
                Some(s) => s
                    .parse()
                    .map_err(|_| Status::bad_request(format!("since {s:?} is not a revision")))?,
            };
            let wait = parse_wait(q.get("wait"))?;
            let ask = crate::server::assignments::Ask {
                delta: flag(&q, "delta")?,
                verify: flag(&q, "verify")?,
                groups: flag(&q, "groups")?,
            };
            app.agents
                .poll_exclusive(id, since, wait, ask, link.as_ref().map(|Extension(l)| l))
                .await
        }
        .await,
    )
}

pub async fn status(
    State(app): State<AppState>,
    Extension(robot): Extension<Arc<Robot>>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    result(
        async {
            let report: StatusReport = body(&headers, b)?;
            app.agents.report(&robot.id, report).await
        }
        .await,
    )
}

/// `POST /agent/v1/robots/{name}/logs`: a robot answers a log request.
pub async fn upload_log(
    State(app): State<AppState>,
    Extension(robot): Extension<Arc<Robot>>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    result(
        async {
            let upload: crate::api::agent_protocol::LogUpload = body(&headers, b)?;
            app.agents
                .upload_log(&robot.id, upload)
                .await
                .map(|()| serde_json::json!({}))
        }
        .await,
    )
}

/// `GET .../namespaces/{ns}/tasks/{name}/log?tailLines=N&stream=stderr`:
/// the task's output, fetched from its robot (text/plain), for `k8s4r logs`
/// and `kubectl get --raw`.
pub async fn task_log(
    State(app): State<AppState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
    q: super::k8s::Params,
) -> Response {
    if plural != "tasks" {
        return Status::new(404, "NotFound", format!("{plural} have no log; tasks do")).into_response();
    }
    task_log_of(&app, &ns, &name, q).await
}

/// A log request's answer: the tail at once, or a stream that follows.
enum LogAnswer {
    Tail(crate::api::agent_protocol::LogUpload),
    Followed(Response),
}

/// A task's log as text/plain (`tailLines`, `stream`, `follow` from the
/// query): the tasks/NAME/log route's answer, and pods/NAME/log's
/// (`kubectl logs [-f] [--tail N]`).
pub async fn task_log_of(app: &AppState, ns: &str, name: &str, q: super::k8s::Params) -> Response {
    let r = async {
        let q: HashMap<String, String> = q
            .map(|axum::extract::Query(m)| m)
            .map_err(|e| Status::bad_request(format!("invalid query string: {e}")))?;
        let tail = match q.get("tailLines").map(String::as_str) {
            None | Some("") => None,
            Some(t) => Some(
                t.parse::<u32>()
                    .map_err(|_| Status::bad_request(format!("tailLines {t:?} is not a number")))?,
            ),
        };
        let stream = q.get("stream").map(String::as_str).unwrap_or("stdout");
        if q.get("follow").is_some_and(|f| f == "true" || f == "1") {
            return super::log_follow::follow(app, ns, name, stream, tail)
                .await
                .map(LogAnswer::Followed);
        }
        app.agents.task_log(ns, name, stream, tail).await.map(LogAnswer::Tail)
    }
    .await;
    match r {
        Ok(LogAnswer::Followed(stream)) => stream,
        Ok(LogAnswer::Tail(upload)) => {
            let mut resp = (StatusCode::OK, upload.text).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            if upload.truncated {
                resp.headers_mut()
                    .insert("X-K8s4r-Truncated", header::HeaderValue::from_static("true"));
            }
            resp
        }
        Err(e) => e.into_response(),
    }
}
