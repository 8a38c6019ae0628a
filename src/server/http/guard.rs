//! The door of every request: authenticate, authorize, audit. Health paths
//! and the robot channel pass untouched (see [`crate::server::auth`]);
//! everything else needs a user the rules allow: 401 without one, 403 when
//! the rules say no. An allowed request carries its [`User`] in its
//! extensions (the self reviews answer from it). Mutating requests,
//! allowed or not, are written to the audit log with their answer's code.

use super::AppState;
use crate::server::auth::audit::Entry;
use crate::server::auth::authn::Denied;
use crate::server::auth::authz::{self, Request, Target};
use crate::server::auth::{is_public, is_robot_channel, User};
use crate::server::status::{Status, StatusDetails};
use axum::extract::{ConnectInfo, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::time::SystemTime;

pub async fn guard(
    State(app): State<AppState>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    if is_public(path) || is_robot_channel(path) {
        return next.run(req).await;
    }
    let received = SystemTime::now();
    let request = authz::parse(req.method().as_str(), path, req.uri().query());
    let (user, refusal) = match app.authn.authenticate(req.extensions(), req.headers()) {
        Ok(Some(user)) => {
            let refusal = (!authz::decide(&user, &request).allowed).then(|| forbidden(&user, &request));
            (Some(user), refusal)
        }
        Ok(None) => (
            None,
            Some(Status::unauthorized(
                "Unauthorized: this server needs a client certificate or Authorization: Bearer <token> \
                 (kubectl sends a token only over https)",
            )),
        ),
        Err(Denied::UnknownToken) => (
            None,
            Some(Status::unauthorized("Unauthorized: the bearer token is not valid")),
        ),
        // The robot is known; it just may not use this API.
        Err(Denied::RobotToken) => (
            None,
            Some(Status::forbidden(
                "a robot token may only use its own /agent/v1/robots/<name>/ endpoints",
            )),
        ),
    };
    let audit = (app.audit.enabled() && request.is_mutating()).then(|| AuditContext::of(&req));
    let resp = match refusal {
        Some(status) => status.into_response(),
        None => {
            if let Some(u) = &user {
                req.extensions_mut().insert(u.clone());
            }
            next.run(req).await
        }
    };
    if let Some(ctx) = audit {
        app.audit.record(&Entry {
            request: &request,
            uri: &ctx.uri,
            user: user.as_ref(),
            source_ip: ctx.source,
            user_agent: ctx.user_agent.as_deref(),
            code: resp.status().as_u16(),
            received,
        });
    }
    resp
}

/// What the audit event needs from the request, taken before the request
/// moves into its handler.
struct AuditContext {
    uri: String,
    source: Option<std::net::IpAddr>,
    user_agent: Option<String>,
}

impl AuditContext {
    fn of(req: &axum::extract::Request) -> Self {
        AuditContext {
            uri: req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
                .to_string(),
            source: req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()),
            user_agent: req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(String::from),
        }
    }
}

/// 403 as kube-apiserver words it, with the resource in `details`.
fn forbidden(user: &User, request: &Request) -> Status {
    let mut status = Status::forbidden(authz::forbidden_message(&user.name, request));
    if let Target::Resource(r) = &request.target {
        status.details = Some(Box::new(StatusDetails {
            name: r.name.clone(),
            group: r.group.clone(),
            kind: r.resource.clone(),
            ..Default::default()
        }));
    }
    status
}
