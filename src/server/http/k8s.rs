//! Handlers of `/apis/robot.k8s4r.io/v1alpha1/...`: parse the request into
//! registry calls and render the result (object, list or Table).

use super::table::{self, Include};
use super::{json, json_as, parse_body, with_warnings, AppState};
use crate::api::meta::API_VERSION;
use crate::server::admission::FieldValidation;
use crate::server::events::Kind;
use crate::server::registry::{DeleteOptions, ListOptions, Part, Propagation, WriteOptions, Written};
use crate::server::resources::{self, Resource};
use crate::server::selector::{FieldSelector, LabelSelector};
use crate::server::status::Status;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::collections::HashMap;

pub type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

fn params(q: Params) -> Result<HashMap<String, String>, Status> {
    q.map(|Query(m)| m)
        .map_err(|e| Status::bad_request(format!("invalid query string: {e}")))
}

/// What validation warned about an object just stored becomes a Warning
/// event on it too: the apply's `Warning:` lines scroll away, `kubectl
/// describe` keeps telling.
fn record_findings(app: &AppState, w: &Written) {
    for finding in &w.findings {
        app.agents
            .events
            .record(&w.object, Kind::Warning, "ValidationWarning", finding.clone());
    }
}

fn resource(plural: &str) -> Result<&'static Resource, Status> {
    resources::by_plural(plural).ok_or_else(|| Status::path_not_found(&format!("/apis/{API_VERSION}/{plural}")))
}

/// A route's path parameters: `ns` (absent on cluster-scoped paths),
/// `plural`, `name` (absent on collections).
pub type Route = Path<HashMap<String, String>>;

/// The resource, namespace and name a route names, the resource served at
/// that scope: a namespaced kind under `namespaces/{ns}/`, a cluster-scoped
/// one without (its objects kept under the empty namespace). A path of the
/// wrong scope is not found, as in Kubernetes.
fn scoped(p: &HashMap<String, String>) -> Result<(&'static Resource, String, String), Status> {
    let plural = p.get("plural").map(String::as_str).unwrap_or("");
    let res = resource(plural)?;
    let ns = p.get("ns").cloned().unwrap_or_default();
    if res.namespaced == ns.is_empty() {
        let path = if ns.is_empty() {
            format!("/apis/{API_VERSION}/{plural}")
        } else {
            format!("/apis/{API_VERSION}/namespaces/{ns}/{plural}")
        };
        return Err(Status::path_not_found(&path));
    }
    Ok((res, ns, p.get("name").cloned().unwrap_or_default()))
}

fn accept(headers: &HeaderMap) -> &str {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Longest fieldManager, as kube-apiserver allows.
const MAX_MANAGER: usize = 128;

fn write_options<'a>(q: &'a HashMap<String, String>, headers: &'a HeaderMap) -> Result<WriteOptions<'a>, Status> {
    // Without a fieldManager, the user agent's program name (as Kubernetes).
    let manager = q.get("fieldManager").map(String::as_str).or_else(|| {
        let agent = headers.get(header::USER_AGENT)?.to_str().ok()?;
        agent.split('/').next().filter(|a| !a.is_empty())
    });
    if let Some(m) = manager.filter(|m| m.len() > MAX_MANAGER || m.chars().any(char::is_control)) {
        return Err(Status::bad_request(format!(
            "fieldManager {:?}... must be at most {MAX_MANAGER} printable characters",
            m.chars().take(32).collect::<String>()
        )));
    }
    Ok(WriteOptions {
        validation: FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?,
        dry_run: q.get("dryRun").is_some_and(|v| v == "All"),
        manager,
    })
}

pub fn list_options(res: &Resource, ns: Option<&str>, q: &HashMap<String, String>) -> Result<ListOptions, Status> {
    let labels = match q.get("labelSelector") {
        Some(s) => LabelSelector::parse(s).map_err(|e| Status::bad_request(format!("labelSelector: {e}")))?,
        None => LabelSelector::default(),
    };
    let fields = match q.get("fieldSelector") {
        Some(s) => FieldSelector::parse(s, |f| res.supports_field(f))
            .map_err(|e| Status::bad_request(format!("fieldSelector: {e}")))?,
        None => FieldSelector::default(),
    };
    let limit = match q.get("limit").map(String::as_str) {
        None | Some("") => None,
        Some(l) => Some(
            l.parse()
                .map_err(|_| Status::bad_request(format!("limit {l:?} is not a number")))?,
        ),
    };
    Ok(ListOptions {
        namespace: ns.map(str::to_string),
        labels,
        fields,
        limit,
        continue_token: q.get("continue").cloned(),
    })
}

fn is_watch(q: &HashMap<String, String>) -> bool {
    q.get("watch").is_some_and(|w| w == "1" || w == "true")
}

fn result(r: Result<Response, Status>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

pub async fn list_all(
    State(app): State<AppState>,
    Path(plural): Path<String>,
    q: Params,
    headers: HeaderMap,
) -> Response {
    result(list(app, &plural, None, q, &headers).await)
}

pub async fn list_ns(State(app): State<AppState>, Path(p): Route, q: Params, headers: HeaderMap) -> Response {
    result(
        async {
            let (res, ns, _) = scoped(&p)?;
            list(app, res.plural, Some(&ns), q, &headers).await
        }
        .await,
    )
}

async fn list(
    app: AppState,
    plural: &str,
    ns: Option<&str>,
    q: Params,
    headers: &HeaderMap,
) -> Result<Response, Status> {
    let res = resource(plural)?;
    let q = params(q)?;
    let opts = list_options(res, ns, &q)?;
    if is_watch(&q) {
        return super::watch::serve(app, res, None, opts, &q, accept(headers)).await;
    }
    let listed = app.registry.list(res, &opts).await?;
    let mut list_meta = json!({"resourceVersion": listed.revision.to_string()});
    if let Some(c) = &listed.continue_token {
        list_meta["continue"] = json!(c);
    }
    if let Some(n) = listed.remaining {
        list_meta["remainingItemCount"] = json!(n);
    }
    if table::wants_table(accept(headers)) {
        let include = Include::parse(q.get("includeObject").map(String::as_str));
        let t = table::table(res, &listed.items, include, true, list_meta);
        return Ok(json_as(StatusCode::OK, &t, table::CONTENT_TYPE));
    }
    Ok(json(
        StatusCode::OK,
        &json!({"kind": res.list_kind(), "apiVersion": API_VERSION, "metadata": list_meta, "items": listed.items}),
    ))
}

fn render_object(
    res: &Resource,
    code: StatusCode,
    obj: &Value,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> Response {
    if table::wants_table(accept(headers)) {
        let include = Include::parse(q.get("includeObject").map(String::as_str));
        let rv = obj["metadata"]["resourceVersion"].clone();
        let t = table::table(res, [obj], include, true, json!({"resourceVersion": rv}));
        return json_as(code, &t, table::CONTENT_TYPE);
    }
    json(code, obj)
}

pub async fn get_item(State(app): State<AppState>, Path(p): Route, q: Params, headers: HeaderMap) -> Response {
    result(
        async {
            let (res, ns, name) = scoped(&p)?;
            let q = params(q)?;
            let obj = app.registry.get(res, &ns, &name).await?;
            Ok(render_object(res, StatusCode::OK, &obj, &headers, &q))
        }
        .await,
    )
}

pub async fn create(
    State(app): State<AppState>,
    Path(p): Route,
    q: Params,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    result(
        async {
            let (res, ns, _) = scoped(&p)?;
            let q = params(q)?;
            let body = parse_body(&headers, body)?;
            let w = app
                .registry
                .create(res, &ns, body, Part::Main, write_options(&q, &headers)?)
                .await?;
            record_findings(&app, &w);
            Ok(with_warnings(
                render_object(res, StatusCode::CREATED, &w.object, &headers, &q),
                &w.warnings,
            ))
        }
        .await,
    )
}

async fn replace(
    app: AppState,
    p: HashMap<String, String>,
    part: Part,
    q: Params,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    result(
        async {
            let (res, ns, name) = scoped(&p)?;
            let q = params(q)?;
            let body = parse_body(&headers, body)?;
            let w = app
                .registry
                .replace(res, &ns, &name, body, part, write_options(&q, &headers)?)
                .await?;
            record_findings(&app, &w);
            Ok(with_warnings(
                render_object(res, StatusCode::OK, &w.object, &headers, &q),
                &w.warnings,
            ))
        }
        .await,
    )
}

pub async fn put_item(
    State(app): State<AppState>,
    Path(p): Route,
    q: Params,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    replace(app, p, Part::Main, q, headers, body).await
}

pub async fn put_status(
    State(app): State<AppState>,
    Path(p): Route,
    q: Params,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    replace(app, p, Part::Status, q, headers, body).await
}

async fn patch(
    app: AppState,
    p: HashMap<String, String>,
    part: Part,
    q: Params,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    result(
        async {
            let (res, ns, name) = scoped(&p)?;
            let q = params(q)?;
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let media = content_type.split(';').next().unwrap_or("").trim();
            let opts = write_options(&q, &headers)?;
            let w = match media {
                "application/merge-patch+json" => {
                    let patch = parse_body(&headers, body)?;
                    app.registry.patch(res, &ns, &name, &patch, part, opts).await?
                }
                "application/json-patch+json" => {
                    let patch = parse_body(&headers, body)?;
                    app.registry.json_patch(res, &ns, &name, &patch, part, opts).await?
                }
                "application/strategic-merge-patch+json" => {
                    return Err(Status::unsupported_media_type(
                        "strategic merge patch is not supported for robot.k8s4r.io resources; use --type=merge or --type=json",
                    ))
                }
                "application/apply-patch+yaml" if part == Part::Main => {
                    let config = parse_body(&headers, body)?;
                    let manager = q.get("fieldManager").map(String::as_str).unwrap_or("");
                    let force = q.get("force").is_some_and(|f| f == "true");
                    let (w, created) = app
                        .registry
                        .apply(res, &ns, &name, config, manager, force, opts)
                        .await?;
                    record_findings(&app, &w);
                    let code = if created { StatusCode::CREATED } else { StatusCode::OK };
                    return Ok(with_warnings(
                        render_object(res, code, &w.object, &headers, &q),
                        &w.warnings,
                    ));
                }
                "application/apply-patch+yaml" => {
                    return Err(Status::unsupported_media_type(
                        "server-side apply of the status subresource is not supported; apply the object",
                    ))
                }
                other => {
                    return Err(Status::unsupported_media_type(format!(
                        "the patch content type {other:?} is not supported (expected application/merge-patch+json or application/json-patch+json)"
                    )))
                }
            };
            record_findings(&app, &w);
            Ok(with_warnings(
                render_object(res, StatusCode::OK, &w.object, &headers, &q),
                &w.warnings,
            ))
        }
        .await,
    )
}

pub async fn patch_item(
    State(app): State<AppState>,
    Path(p): Route,
    q: Params,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    patch(app, p, Part::Main, q, headers, body).await
}

pub async fn patch_status(
    State(app): State<AppState>,
    Path(p): Route,
    q: Params,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    patch(app, p, Part::Status, q, headers, body).await
}

fn propagation(text: Option<&str>) -> Result<Propagation, Status> {
    match text {
        None | Some("") | Some("Background") => Ok(Propagation::Background),
        Some("Foreground") => Ok(Propagation::Foreground),
        Some("Orphan") => Ok(Propagation::Orphan),
        Some(other) => Err(Status::bad_request(format!(
            "propagationPolicy {other:?} is invalid (expected Background, Foreground or Orphan)"
        ))),
    }
}

pub async fn delete_item(
    State(app): State<AppState>,
    Path(p): Route,
    q: Params,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    result(
        async {
            let (res, ns, name) = scoped(&p)?;
            let q = params(q)?;
            // DeleteOptions may come as a body (kubectl) or as query parameters.
            let body = match body {
                Ok(b) if b.is_empty() => Value::Null,
                other => parse_body(&headers, other)?,
            };
            let mut policy = q.get("propagationPolicy").map(String::as_str);
            if let Some(p) = body.get("propagationPolicy").and_then(Value::as_str) {
                policy = Some(p);
            }
            if body.get("orphanDependents").and_then(Value::as_bool) == Some(true) {
                policy = Some("Orphan");
            }
            let pre = body.get("preconditions");
            let opts = DeleteOptions {
                propagation: propagation(policy)?,
                resource_version: pre
                    .and_then(|p| p.get("resourceVersion"))
                    .and_then(Value::as_str)
                    .map(|rv| {
                        rv.parse()
                            .map_err(|_| Status::bad_request(format!("precondition resourceVersion {rv:?} is invalid")))
                    })
                    .transpose()?,
                uid: pre
                    .and_then(|p| p.get("uid"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
            };
            let deleted = app.registry.delete(res, &ns, &name, &opts).await?;
            Ok(json(StatusCode::OK, &deleted))
        }
        .await,
    )
}
