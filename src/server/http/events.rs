//! `/api/v1/.../events`: the core/v1 Events the controllers record, for
//! `kubectl describe` (field selectors on involvedObject) and `kubectl get
//! events` (a Table). Listing only: watching events is not offered.

use super::k8s::Params;
use super::table::{self, CONTENT_TYPE};
use super::{json, json_as, AppState};
use crate::server::events::{self, supports_field, RESOURCE};
use crate::server::selector::FieldSelector;
use crate::server::status::Status;
use crate::server::time;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

pub async fn list_ns(State(app): State<AppState>, Path(ns): Path<String>, q: Params, headers: HeaderMap) -> Response {
    list(app, Some(ns), q, headers)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub async fn list_all(State(app): State<AppState>, q: Params, headers: HeaderMap) -> Response {
    list(app, None, q, headers)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn list(app: AppState, ns: Option<String>, q: Params, headers: HeaderMap) -> Result<Response, Status> {
    let q = q
        .map(|axum::extract::Query(m)| m)
        .map_err(|e| Status::bad_request(format!("invalid query string: {e}")))?;
    if q.get("watch").is_some_and(|w| w == "1" || w == "true") {
        return Err(Status::method_not_allowed(
            "watching events is not supported; list them instead",
        ));
    }
    let fields = match q.get("fieldSelector") {
        Some(s) => {
            FieldSelector::parse(s, supports_field).map_err(|e| Status::bad_request(format!("fieldSelector: {e}")))?
        }
        None => FieldSelector::default(),
    };
    let listed = app.events.list(RESOURCE, ns.as_deref()).await?;
    let mut items: Vec<&Value> = listed
        .items
        .iter()
        .map(|s| &*s.value)
        .filter(|v| events::matches(&fields, v))
        .collect();
    items.sort_by_key(|v| v["lastTimestamp"].as_str().and_then(time::parse_rfc3339).unwrap_or(0));
    let meta = json!({"resourceVersion": listed.revision.to_string()});
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if table::wants_table(accept) {
        return Ok(json_as(StatusCode::OK, &event_table(&items, meta), CONTENT_TYPE));
    }
    Ok(json(
        StatusCode::OK,
        &json!({"kind": "EventList", "apiVersion": "v1", "metadata": meta, "items": items}),
    ))
}

fn event_table(items: &[&Value], meta: Value) -> Value {
    let now = time::now_unix();
    let col = |name: &str, ty: &str, format: &str| json!({"name": name, "type": ty, "format": format, "priority": 0, "description": ""});
    let rows: Vec<Value> = items
        .iter()
        .map(|e| {
            let age = e["lastTimestamp"]
                .as_str()
                .and_then(time::parse_rfc3339)
                .map(|t| time::human_age(now - t))
                .unwrap_or_default();
            let object = format!(
                "{}/{}",
                e["involvedObject"]["kind"].as_str().unwrap_or("").to_lowercase(),
                e["involvedObject"]["name"].as_str().unwrap_or("")
            );
            json!({
                "cells": [age, e["type"], e["reason"], object, e["message"]],
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": e["metadata"]},
            })
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
        "columnDefinitions": [
            col("Last Seen", "string", ""), col("Type", "string", ""), col("Reason", "string", ""),
            col("Object", "string", ""), col("Message", "string", ""),
        ],
        "rows": rows,
    })
}
