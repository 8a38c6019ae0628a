//! HTTP: the Kubernetes-compatible API under `/api`, `/apis` and `/openapi`,
//! and the agent API under `/agent/v1`. Handlers only translate between HTTP
//! and the domain ([`Registry`], [`crate::server::fleet`]); errors are
//! [`Status`] objects.

mod agent;
mod agent_http1;
pub mod agent_listener;
mod channel;
mod core_view;
mod discovery;
mod events;
mod guard;
mod k8s;
mod log_follow;
mod openapi;
mod reviews;
pub mod table;
mod watch;

pub use agent_listener::is_robot_channel;

use crate::server::agents::Agents;
use crate::server::limits::Limits;
use crate::server::registry::Registry;
use crate::server::status::Status;
use crate::server::time::{MAX_DURATION, MAX_DURATION_TEXT};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use futures_util::FutureExt;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Everything the handlers need.
pub struct App {
    /// Who a request is from (certificate, bearer token).
    pub authn: crate::server::auth::authn::Authenticator,
    /// Where mutating requests are recorded.
    pub audit: crate::server::auth::audit::Audit,
    pub registry: Registry,
    /// Where Events are kept (`/api/v1/namespaces/{ns}/events`).
    pub events: Arc<dyn crate::server::store::Store>,
    pub agents: Agents,
    pub limits: Limits,
    /// One permit per open watch (`limits.watches` in all).
    pub watch_slots: Arc<tokio::sync::Semaphore>,
    /// True once the server is stopping: watches end (the client watches
    /// again, on another replica or after the restart).
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Serve `GET /debug/panic`, a handler that panics: for tests of panic
    /// containment only (`K8S4R_TEST_PANIC_ROUTE=1`), never in production.
    pub test_panic_route: bool,
}

pub type AppState = Arc<App>;

/// Largest request body (as Kubernetes: 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// The group-version prefix of every robot.k8s4r.io path.
const GV: &str = "/apis/robot.k8s4r.io/v1alpha1";

/// Discovery paths that kube-apiserver also serves with a trailing slash
/// (client libraries ask for `/apis/` and `/version/`).
const DISCOVERY: &[&str] = &[
    "/version",
    "/healthz",
    "/livez",
    "/readyz",
    "/metrics",
    "/api",
    "/api/v1",
    "/apis",
    "/apis/robot.k8s4r.io",
    GV,
    "/openapi/v3",
    "/openapi/v3/apis/robot.k8s4r.io/v1alpha1",
    "/apis/authorization.k8s.io",
    "/apis/authorization.k8s.io/v1",
    "/apis/authentication.k8s.io",
    "/apis/authentication.k8s.io/v1",
];

pub fn router(app: AppState) -> Router {
    router_with(app, Router::new())
}

/// The API with `pages` beside it: the dashboard (`/ui/`, built by
/// `crate::server::ui`, which authenticates and authorizes its requests
/// itself: browser sessions, CSRF tokens, the same authz rules). Passed in
/// so this module need not know the dashboard.
pub fn router_with(app: AppState, pages: Router) -> Router {
    // Outside the routes: a slash must be removed before routing, and a
    // panic anywhere below (middleware included) must become a 500.
    // The robot channel signs every answer on its paths, a panic's 500
    // too: it sits between two panic containers.
    let inner = Router::new()
        .merge(pages)
        .fallback_service(routes(app.clone()))
        .layer(axum::middleware::from_fn(without_trailing_slash));
    around_all(inner, app)
}

/// What every listener puts around all it serves: the robot channel, which
/// signs every answer on its paths, a panic's 500 too (it sits between two
/// panic containers).
fn around_all(inner: Router, app: AppState) -> Router {
    with_channel(inner, app).layer(axum::middleware::from_fn(contain_panics))
}

/// The robot channel around `inner`, with a panic container between them;
/// the outer container is the caller's.
fn with_channel(inner: Router, app: AppState) -> Router {
    inner
        .layer(axum::middleware::from_fn(contain_panics))
        .layer(axum::middleware::from_fn_with_state(app, channel::robot_channel))
}

/// The robot channel's routes, the one list of them ([`routes`] and the
/// agent listener's [`agent_router`] serve them).
/// `with_body`: what the routes that take a body get around them.
fn robot_routes(
    r: Router<AppState>,
    with_body: impl Fn(MethodRouter<AppState>) -> MethodRouter<AppState>,
) -> Router<AppState> {
    r.route("/agent/v1/register", with_body(post(agent::register)))
        .route("/agent/v1/robots/{name}/assignments", get(agent::assignments))
        .route("/agent/v1/robots/{name}/status", with_body(post(agent::status)))
        .route("/agent/v1/robots/{name}/logs", with_body(post(agent::upload_log)))
}

/// The agent listener's router: the robot channel's routes and nothing
/// else (every other path 404), behind the layers that act on them. The
/// API's other layers pass the channel's requests through untouched (the
/// guard leaves their authentication to the channel, the channel bounds
/// their bodies before the size check would, and no discovery path has a
/// slash to drop), and each layer costs every robot a boxed future for as
/// long as its poll is held: the body type is checked on the routes that
/// take a body only (not the held poll's), and the outermost panic
/// container is the connection's (`agent_http1`, inline).
pub fn agent_router(app: AppState) -> Router {
    let routes = robot_routes(Router::new(), |m| {
        m.layer(axum::middleware::from_fn(require_known_body_type))
    })
    .fallback(not_found)
    .method_not_allowed_fallback(method_not_allowed)
    .layer(DefaultBodyLimit::max(MAX_BODY))
    .with_state(app.clone());
    with_channel(routes, app)
}

fn routes(app: AppState) -> Router {
    let g = GV;
    let mut r = robot_routes(Router::new(), |m| m)
        .route(
            "/version",
            get(|| async { json(StatusCode::OK, &discovery::version()) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route(
            "/apis",
            get(|| async { json(StatusCode::OK, &discovery::api_group_list()) }),
        )
        .route(
            "/apis/robot.k8s4r.io",
            get(|| async { json(StatusCode::OK, &discovery::api_group()) }),
        )
        .route(g, get(|| async { json(StatusCode::OK, &discovery::resource_list()) }))
        .route("/openapi/v3", get(|| async { json(StatusCode::OK, &openapi::root()) }))
        .route(
            "/openapi/v3/apis/robot.k8s4r.io/v1alpha1",
            get(|| async { json(StatusCode::OK, &openapi::group_version_doc().0) }),
        )
        // Collections across namespaces, and cluster-scoped kinds (whose
        // objects live here; `k8s::scoped` refuses the wrong scope).
        .route(&format!("{g}/{{plural}}"), get(k8s::list_all).post(k8s::create))
        .route(
            &format!("{g}/{{plural}}/{{name}}"),
            get(k8s::get_item)
                .put(k8s::put_item)
                .patch(k8s::patch_item)
                .delete(k8s::delete_item),
        )
        .route(
            &format!("{g}/{{plural}}/{{name}}/status"),
            get(k8s::get_item).put(k8s::put_status).patch(k8s::patch_status),
        )
        .route(
            &format!("{g}/namespaces/{{ns}}/{{plural}}"),
            get(k8s::list_ns).post(k8s::create),
        )
        .route(
            &format!("{g}/namespaces/{{ns}}/{{plural}}/{{name}}"),
            get(k8s::get_item)
                .put(k8s::put_item)
                .patch(k8s::patch_item)
                .delete(k8s::delete_item),
        )
        .route(
            &format!("{g}/namespaces/{{ns}}/{{plural}}/{{name}}/status"),
            get(k8s::get_item).put(k8s::put_status).patch(k8s::patch_status),
        )
        .route(
            "/api",
            get(|| async { json(StatusCode::OK, &discovery::core_versions()) }),
        )
        .route(
            "/api/v1",
            get(|| async { json(StatusCode::OK, &discovery::core_resources()) }),
        )
        .route("/api/v1/events", get(events::list_all))
        .route("/api/v1/pods", get(core_view::list_pods_all))
        .route("/api/v1/namespaces/{ns}/pods", get(core_view::list_pods_ns))
        .route("/api/v1/namespaces/{ns}/pods/{name}", get(core_view::get_pod))
        .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(core_view::pod_log))
        .route("/api/v1/nodes", get(core_view::list_nodes))
        .route("/api/v1/nodes/{name}", get(core_view::get_node))
        .route("/api/v1/namespaces/{ns}/events", get(events::list_ns))
        .route(
            "/agent/v1/jointokens",
            post(agent::create_join_token).get(agent::list_join_tokens),
        )
        .route("/agent/v1/jointokens/{id}", delete(agent::revoke_join_token))
        .route("/agent/v1/robotkeys/{name}", delete(agent::reset_robot))
        .route("/agent/v1/robottokens/{name}", delete(agent::reset_robot))
        .route("/agent/v1/serverkeys", get(agent::list_server_keys))
        .route("/agent/v1/serverkeys/rotate", post(agent::rotate_server_keys))
        .route(
            &format!("{g}/namespaces/{{ns}}/{{plural}}/{{name}}/log"),
            get(agent::task_log),
        );
    for g in discovery::REVIEW_GROUPS {
        let gv = format!("/apis/{}/{}", g.group, discovery::REVIEW_VERSION);
        r = r
            .route(
                &format!("/apis/{}", g.group),
                get(move || async move { json(StatusCode::OK, &discovery::review_group(g)) }),
            )
            .route(
                &gv,
                get(move || async move { json(StatusCode::OK, &discovery::review_resources(g)) }),
            );
    }
    r = r
        .route(reviews::ACCESS_REVIEWS, post(reviews::access_review))
        .route(reviews::SELF_REVIEWS, post(reviews::self_review));
    if app.test_panic_route {
        r = r.route("/debug/panic", get(deliberate_panic));
    }
    r.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(require_known_body_type))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard::guard))
        .layer(axum::middleware::from_fn(reject_oversized))
        .with_state(app)
}

/// The Prometheus text: panics, and how much of each cap is in use.
async fn metrics(axum::extract::State(app): axum::extract::State<AppState>) -> Response {
    let watches = app.limits.watches.saturating_sub(app.watch_slots.available_permits());
    let text = format!(
        "{}{}# HELP k8s4r_watches_open Watches being served (at most --max-watches).\n\
         # TYPE k8s4r_watches_open gauge\n\
         k8s4r_watches_open {watches}\n\
         # HELP k8s4r_long_polls_open Robots with a long poll open (one each at most).\n\
         # TYPE k8s4r_long_polls_open gauge\n\
         k8s4r_long_polls_open {}\n\
         # HELP k8s4r_robot_channel_refused_total Robot requests refused (bad signature, stale time, replayed counter, ...).\n\
         # TYPE k8s4r_robot_channel_refused_total counter\n\
         k8s4r_robot_channel_refused_total {}\n",
        crate::server::panics::metrics_text(),
        app.audit.metrics_text(),
        app.agents.polls.open(),
        app.agents.channel.refused_total(),
    );
    let mut r = text.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

async fn deliberate_panic() -> &'static str {
    panic!("deliberate panic (K8S4R_TEST_PANIC_ROUTE is set)")
}

/// A panicking request answers 500 and loses only itself; the panic hook
/// (crate::server::panics) has counted and logged it.
async fn contain_panics(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let what = format!("{} {}", req.method(), req.uri().path());
    match std::panic::AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(resp) => resp,
        Err(_) => panicked(&what),
    }
}

/// The answer to a request (`what`: its method and path) whose handling
/// panicked.
fn panicked(what: &str) -> Response {
    Status::internal(format!(
        "the server hit a bug handling {what} (logged, and counted as k8s4r_panics_total in /metrics)"
    ))
    .into_response()
}

/// `/apis/` is `/apis` (see [`DISCOVERY`]).
async fn without_trailing_slash(mut req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let path = req.uri().path();
    let bare = path.strip_suffix('/').filter(|b| DISCOVERY.contains(b));
    if let Some(bare) = bare {
        let rewritten = match req.uri().query() {
            Some(q) => format!("{bare}?{q}"),
            None => bare.to_string(),
        };
        let mut parts = req.uri().clone().into_parts();
        if let Ok(pq) = rewritten.parse() {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = axum::http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    next.run(req).await
}

/// Media types a request body may have, as kube-apiserver accepts them:
/// objects as JSON or YAML, and the four patch types (the PATCH handler
/// tells which of those it supports).
const BODY_TYPES: &[&str] = &[
    "application/json",
    "application/yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

fn has_body(headers: &HeaderMap) -> bool {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    length.is_some_and(|n| n > 0) || headers.contains_key(header::TRANSFER_ENCODING)
}

/// 415 for a body in any other media type. This also stops a web page
/// from writing to the API: a browser sends a cross-origin POST without
/// asking first only as text/plain, form data, or with no Content-Type at
/// all, and none of those is accepted on plain HTTP (kube-apiserver reads
/// a body without a Content-Type as JSON; this server does so over TLS
/// only). Protobuf, which
/// kubectl uses for its access reviews, is accepted there only (a browser
/// asks first before sending it cross-origin).
async fn require_known_body_type(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if has_body(req.headers()) {
        let given = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("?"));
        let media = given.map(|t| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
        // Over TLS a body without a type is JSON, as kube-apiserver reads
        // it (Kubernetes' Python client sends none); no browser completes a
        // handshake with the HTTPS listener without trusting the cluster's
        // CA, so the rule is for the plain-HTTP listeners.
        let untyped_over_tls = given.is_none() && crate::server::tls::listener::over_tls(&req);
        let known = media.as_deref().is_some_and(|m| {
            BODY_TYPES.contains(&m) || (m == reviews::PROTOBUF && reviews::takes_protobuf(req.uri().path()))
        }) || untyped_over_tls;
        if !known {
            let what = match given {
                Some(t) => format!("Content-Type {t:?} is not supported"),
                None => "a request body needs a Content-Type".to_string(),
            };
            return Status::unsupported_media_type(format!(
                "{what}: send application/json or application/yaml (or a patch type with PATCH)"
            ))
            .into_response();
        }
    }
    next.run(req).await
}

/// A whole number of seconds from query parameter `name`, at most
/// [`MAX_DURATION`].
pub fn seconds_param(name: &str, text: &str) -> Result<Duration, Status> {
    let n: u64 = text.parse().map_err(|_| {
        Status::bad_request(format!(
            "{name}: {text:?} is not a whole number of seconds from 0 to {MAX_DURATION_TEXT}"
        ))
    })?;
    check_seconds(name, n)?;
    Ok(Duration::from_secs(n))
}

/// 400 when `seconds` (of field or parameter `name`) is over [`MAX_DURATION`].
pub fn check_seconds(name: &str, seconds: u64) -> Result<(), Status> {
    if seconds > MAX_DURATION.as_secs() {
        return Err(Status::bad_request(format!(
            "{name}: {seconds} seconds is more than the limit of {MAX_DURATION_TEXT}"
        )));
    }
    Ok(())
}

/// Refuse a body whose declared length is over the limit before reading
/// it (bodies without a length are cut off at the limit while read).
async fn reject_oversized(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Status::too_large(format!("the request body is larger than {MAX_BODY} bytes")).into_response();
    }
    next.run(req).await
}

async fn not_found(uri: axum::http::Uri) -> Response {
    Status::path_not_found(uri.path()).into_response()
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    Status::method_not_allowed(format!("{method} is not supported on {}", uri.path())).into_response()
}

impl IntoResponse for Status {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.details.as_ref().and_then(|d| d.retry_after_seconds);
        let mut resp = json(code, &self);
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

pub fn json<T: serde::Serialize>(code: StatusCode, body: &T) -> Response {
    json_as(code, body, "application/json")
}

pub fn json_as<T: serde::Serialize>(code: StatusCode, body: &T, content_type: &'static str) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            code,
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            bytes,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding response: {e}")).into_response(),
    }
}

/// Add one `Warning: 299 - "..."` header per warning.
pub fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

/// Read a request body as one JSON value (JSON, or YAML when the
/// Content-Type says so). Oversized bodies are 413, malformed ones 400.
pub fn parse_body(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Value, Status> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Status::too_large(format!("the request body is larger than {MAX_BODY} bytes"))
        } else {
            Status::bad_request(format!("reading the request body: {e}"))
        }
    })?;
    if bytes.is_empty() {
        return Err(Status::bad_request("the request body is empty"));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if content_type.contains("yaml") {
        let text = std::str::from_utf8(&bytes).map_err(|_| Status::bad_request("the request body is not UTF-8"))?;
        let mut docs = crate::api::decode::parse_documents(text);
        return match docs.len() {
            1 => docs
                .remove(0)
                .map_err(|e| Status::bad_request(format!("invalid YAML: {e}"))),
            0 => Err(Status::bad_request("the request body holds no document")),
            _ => Err(Status::bad_request("the request body holds more than one document")),
        };
    }
    serde_json::from_slice(&bytes).map_err(|e| Status::bad_request(format!("invalid JSON in the request body: {e}")))
}
