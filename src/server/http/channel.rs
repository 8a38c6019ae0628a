//! The robot channel on HTTP, in one place: every request to
//! `/agent/v1/robots/{name}/` is verified (signature, time, counter) and its
//! sealed body opened before a handler sees it; every answer there and on
//! `/agent/v1/register`, errors included, is signed and bound to the
//! request it answers, and a robot's 200 answers are sealed to it. A
//! request that came in a session the server took is answered in it
//! (MAC and sealing with the session's keys); a refused one is signed. The
//! handlers behind it read plain JSON and the verified robot
//! ([`Robot`] as a request extension).

use super::{AppState, MAX_BODY};
use crate::api::robot_channel::{self as wire, PublicKeys, SessionKeys};
use crate::server::robot_channel::answer::{self, Answered};
use crate::server::robot_channel::robots::Robot;
use crate::server::robot_channel::verify::{request_proof, Refusal, SignedRequest};
use crate::server::robot_channel::{self, Channel};
use crate::server::status::Status;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Largest answer read back for signing (assignments of a robot with many
/// tasks are the big ones).
const MAX_ANSWER: usize = 64 << 20;

const REGISTER: &str = "/agent/v1/register";
const ROBOTS: &str = "/agent/v1/robots/";

fn refusal_status(r: &Refusal) -> Status {
    match r.code() {
        400 => Status::bad_request(r.to_string()),
        _ => Status::unauthorized(r.to_string()),
    }
}

/// Does a registration body carry a join token in the clear (an agent from
/// before the signed channel)?
fn sends_join_token(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| v.get("joinToken").is_some())
}

/// The robot a registration body names, for the log of a refusal.
fn claimed_name(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("name")?.as_str().map(|n| n.chars().take(253).collect()))
        .unwrap_or_else(|| "?".into())
}

pub async fn robot_channel(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let robot = if path == REGISTER {
        None
    } else if let Some(rest) = path.strip_prefix(ROBOTS) {
        Some(rest.split('/').next().unwrap_or("").to_string())
    } else {
        return next.run(req).await;
    };
    let channel = &app.agents.channel;
    channel.keys.refresh().await;
    let request_sig = request_proof(req.headers());
    let named = req
        .headers()
        .get(wire::SERVER_KEY)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string());
    // Opening and signing are boxed, and only what signing needs is kept
    // across the handler: every robot keeps this future for its whole
    // held poll (3.8 KB inline, ≈ 0.9 KB so).
    let (opened, seal_to) = Box::pin(open(channel, robot.as_deref(), req)).await;
    let response = match opened {
        Ok(req) => next.run(req).await,
        Err(refused) => refused,
    };
    Box::pin(sign(
        channel,
        response,
        named.as_deref(),
        &request_sig,
        seal_to,
        robot.is_none(),
    ))
    .await
}

/// Whom a robot's 200 answer is sealed to: its keys, its name and the
/// session its request came in.
type SealTo = (PublicKeys, String, Option<SessionKeys>);

/// A request on the channel's paths as its handler reads it (its body
/// opened, the robot verified and attached), or the answer refusing it;
/// and whom a 200 answer is sealed to. `robot`: the name in the path, None
/// for a registration.
async fn open(channel: &Channel, robot: Option<&str>, req: Request) -> (Result<Request, Response>, Option<SealTo>) {
    let (mut parts, body) = req.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| parts.uri.path().to_string());
    let what = format!("{} {}", parts.method, parts.uri.path());
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(_) => {
            let too_large = Status::too_large(format!("the request body is larger than {MAX_BODY} bytes"));
            return (Err(too_large.into_response()), None);
        }
    };
    let signed = match SignedRequest::parse(parts.method.as_str(), &target, &parts.headers, &bytes) {
        Ok(signed) => signed,
        Err(refusal) => {
            let name = robot.map_or_else(|| claimed_name(&bytes), str::to_string);
            channel.refuse(&name, &what, &refusal);
            let answer = if robot.is_none() && sends_join_token(&bytes) {
                super::agent::old_agent().into_response()
            } else {
                refusal_status(&refusal).into_response()
            };
            return (Err(answer), None);
        }
    };
    let Some(name) = robot else {
        if signed.session.is_some() {
            let refusal = Refusal::Session("registration is signed".into());
            channel.refuse(&claimed_name(&bytes), &what, &refusal);
            return (Err(refusal_status(&refusal).into_response()), None);
        }
        parts.extensions.insert(signed);
        return (Ok(Request::from_parts(parts, Body::from(bytes))), None);
    };
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    match channel.verify(name, &signed, content_type, &bytes).await {
        Err(refusal) => {
            channel.refuse(name, &what, &refusal);
            (Err(refusal_status(&refusal).into_response()), None)
        }
        Ok(v) => {
            let seal_to = Some((v.robot.keys.clone(), name.to_string(), v.session));
            // The handler reads the opened body as JSON.
            parts.headers.remove(header::CONTENT_TYPE);
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(v.body.len()));
            if !v.body.is_empty() {
                parts
                    .headers
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            parts.extensions.insert::<Arc<Robot>>(v.robot);
            (Ok(Request::from_parts(parts, Body::from(v.body))), seal_to)
        }
    }
}

/// Seal a 200 answer to the robot (when `seal_to`) and sign the answer with
/// the key the request named (the current one when it named none held);
/// in the request's session, seal and authenticate with its keys instead.
async fn sign(
    channel: &Channel,
    response: Response,
    named: Option<&str>,
    request_sig: &[u8],
    seal_to: Option<SealTo>,
    register: bool,
) -> Response {
    let session = seal_to.as_ref().and_then(|(_, _, s)| s.clone());
    let (mut parts, body) = response.into_parts();
    let mut body = match axum::body::to_bytes(body, MAX_ANSWER).await {
        Ok(b) => b.to_vec(),
        Err(e) => {
            let (p, b) = Status::internal(format!("reading the answer: {e}"))
                .into_response()
                .into_parts();
            parts = p;
            axum::body::to_bytes(b, MAX_ANSWER)
                .await
                .map(|b| b.to_vec())
                .unwrap_or_default()
        }
    };
    if let (StatusCode::OK, Some((keys, robot, session))) = (parts.status, seal_to) {
        let sealed = match &session {
            Some(s) => s.seal_answer(request_sig, &body),
            None => answer::seal(&keys, &robot, request_sig, &body),
        };
        match sealed {
            Ok(sealed) => {
                body = sealed;
                parts
                    .headers
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(wire::SEALED));
            }
            Err(e) => {
                let (p, b) = Status::internal(format!("sealing the answer: {e}"))
                    .into_response()
                    .into_parts();
                parts = p;
                body = axum::body::to_bytes(b, MAX_ANSWER)
                    .await
                    .map(|b| b.to_vec())
                    .unwrap_or_default();
            }
        }
    }
    let current = channel.keys.current();
    let signer = match named {
        Some(id) => channel.keys.find(id).await.unwrap_or_else(|| current.clone()),
        None => current.clone(),
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let answered = Answered {
        request_signature: request_sig,
        status: parts.status.as_u16(),
        time: robot_channel::now(),
        content_type: &content_type,
        body: &body,
    };
    let headers = match &session {
        Some(s) => answer::session_headers(s, &signer, &current, &answered),
        None => answer::headers(&signer, &current, &answered, register),
    };
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            parts.headers.insert(name, v);
        }
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}
