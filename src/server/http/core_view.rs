//! A read-only core/v1 view of the fleet, as KubeEdge presents edge nodes:
//! each Task as a Pod (one container, the task), each Robot as a Node.
//! Enough for `kubectl get pods`, `kubectl logs TASK [--tail N]`,
//! `kubectl get nodes`, `kubectl describe node`, `kubectl get pods -w` and
//! dashboards written for Kubernetes. Listing, getting and watching only:
//! the objects are written as Tasks and Robots, and a watch here is the
//! watch of those, each object converted.

use super::k8s::{list_options, Params};
use super::table::{self, CONTENT_TYPE};
use super::watch::{self, View};
use super::{json, json_as, AppState};
use crate::server::object;
use crate::server::resources::{ROBOTS, TASKS};
use crate::server::selector::FieldSelector;
use crate::server::status::Status;
use crate::server::time;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::collections::HashMap;

fn params(q: Params) -> Result<HashMap<String, String>, Status> {
    q.map(|Query(m)| m)
        .map_err(|e| Status::bad_request(format!("invalid query string: {e}")))
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The metadata a view object keeps of its source.
fn view_meta(src: &Value, namespaced: bool) -> Value {
    let mut m = json!({});
    for f in [
        "name",
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "labels",
        "annotations",
    ] {
        if let Some(v) = src.pointer(&format!("/metadata/{f}")) {
            m[f] = v.clone();
        }
    }
    if namespaced {
        m["namespace"] = json!(object::namespace(src));
        if let Some(o) = src.pointer("/metadata/ownerReferences") {
            m["ownerReferences"] = o.clone();
        }
    }
    m
}

fn condition_status(src: &Value, kind: &str) -> Option<Value> {
    src.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .cloned()
}

/// A Task as a Pod of one container named after the task.
pub fn pod(task: &Value) -> Value {
    let state = str_at(task, "/status/state");
    let phase = match state {
        "running" => "Running",
        "completed" => "Succeeded",
        "failed" => "Failed",
        "lost" | "unknown" => "Unknown",
        _ => "Pending",
    };
    let container = match str_at(task, "/spec/name") {
        "" => "main",
        n => n,
    };
    let command = str_at(task, "/spec/config/execConfig/command");
    let image = format!("{}:{command}", str_at(task, "/spec/driver"));
    let status = task.get("status").cloned().unwrap_or(json!({}));
    let started = status.get("startedAt").cloned().unwrap_or(Value::Null);
    let container_state = match state {
        "running" => json!({"running": {"startedAt": started}}),
        "completed" | "failed" => json!({"terminated": {
            "exitCode": status.get("exitCode").cloned().unwrap_or(json!(if state == "failed" { 1 } else { 0 })),
            "reason": if state == "completed" { "Completed" } else { "Error" },
            "message": status.get("message").cloned().unwrap_or(Value::Null),
            "startedAt": started, "finishedAt": status.get("finishedAt").cloned().unwrap_or(Value::Null)}}),
        _ => json!({"waiting": {"reason": status.get("reason").cloned().unwrap_or(json!(phase)),
            "message": status.get("message").cloned().unwrap_or(Value::Null)}}),
    };
    let ready = condition_status(task, "Ready");
    let is_ready = ready.as_ref().is_some_and(|c| c["status"] == "True");
    let mut conditions = vec![json!({"type": "PodScheduled",
        "status": if str_at(task, "/spec/targetRobot").is_empty() { "False" } else { "True" }})];
    if let Some(r) = ready {
        let mut containers_ready = r.clone();
        containers_ready["type"] = json!("ContainersReady");
        conditions.extend([r, containers_ready]);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": view_meta(task, true),
        "spec": {"nodeName": str_at(task, "/spec/targetRobot"), "restartPolicy": "Never",
                 "containers": [{"name": container, "image": image}]},
        "status": {"phase": phase, "conditions": conditions, "startTime": started,
            "message": status.get("message").cloned().unwrap_or(Value::Null),
            "containerStatuses": [{"name": container, "image": image, "ready": is_ready,
                "restartCount": status.get("restartCount").cloned().unwrap_or(json!(0)),
                "started": state == "running", "state": container_state}]},
    })
}

/// A Robot as a Node.
pub fn node(robot: &Value) -> Value {
    let mut meta = view_meta(robot, false);
    meta["labels"]["kubernetes.io/hostname"] = json!(object::name(robot));
    meta["labels"]["node-role.kubernetes.io/robot"] = json!("");
    let mut ready = condition_status(robot, "Ready")
        .unwrap_or_else(|| json!({"type": "Ready", "status": "Unknown", "reason": "NeverConnected"}));
    ready["lastHeartbeatTime"] = robot
        .pointer("/status/lastHeartbeatTime")
        .cloned()
        .unwrap_or(Value::Null);
    let info = robot.pointer("/status/deviceInfo").cloned().unwrap_or(json!({}));
    let hostname = info
        .get("hostname")
        .and_then(Value::as_str)
        .unwrap_or(object::name(robot));
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": meta,
        "spec": {},
        "status": {
            "conditions": [ready],
            "addresses": [{"type": "Hostname", "address": hostname}],
            "nodeInfo": {
                "kubeletVersion": str_at(robot, "/status/agentVersion"),
                "operatingSystem": str_at(&info, "/platform/os"),
                "architecture": str_at(&info, "/platform/arch"),
                "osImage": str_at(&info, "/platform/os"),
            },
        },
    })
}

fn col(name: &str, priority: u8) -> Value {
    json!({"name": name, "type": "string", "format": if name == "Name" { "name" } else { "" },
           "priority": priority, "description": ""})
}

fn age(v: &Value, now: i64) -> String {
    time::parse_rfc3339(str_at(v, "/metadata/creationTimestamp"))
        .map(|t| time::human_age(now - t))
        .unwrap_or_default()
}

fn pod_row(p: &Value, now: i64) -> Vec<Value> {
    let c = &p["status"]["containerStatuses"][0];
    let status = match (&c["state"]["terminated"]["reason"], &c["state"]["waiting"]["reason"]) {
        (Value::String(r), _) | (_, Value::String(r)) => r.clone(),
        _ => p["status"]["phase"].as_str().unwrap_or("").to_string(),
    };
    let ready = if c["ready"] == true { "1/1" } else { "0/1" };
    vec![
        json!(object::name(p)),
        json!(ready),
        json!(status),
        c["restartCount"].clone(),
        json!(age(p, now)),
        p["spec"]["nodeName"].clone(),
    ]
}

fn node_row(n: &Value, now: i64) -> Vec<Value> {
    let ready = n["status"]["conditions"][0]["status"] == "True";
    vec![
        json!(object::name(n)),
        json!(if ready { "Ready" } else { "NotReady" }),
        json!("robot"),
        json!(age(n, now)),
        n["status"]["nodeInfo"]["kubeletVersion"].clone(),
    ]
}

fn pod_columns() -> Vec<Value> {
    vec![
        col("Name", 0),
        col("Ready", 0),
        col("Status", 0),
        col("Restarts", 0),
        col("Age", 0),
        col("Node", 1),
    ]
}

fn node_columns() -> Vec<Value> {
    vec![
        col("Name", 0),
        col("Status", 0),
        col("Roles", 0),
        col("Age", 0),
        col("Version", 0),
    ]
}

/// A Table of view objects; column definitions only when `headers` (a
/// watch sends them with its first event).
fn table_of(
    items: &[Value],
    headers: bool,
    meta: Value,
    columns: fn() -> Vec<Value>,
    row: fn(&Value, i64) -> Vec<Value>,
) -> Value {
    let now = time::now_unix();
    let rows: Vec<Value> = items
        .iter()
        .map(|v| {
            json!({"cells": row(v, now), "object": {"kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1", "metadata": v["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
           "columnDefinitions": if headers { columns() } else { Vec::new() }, "rows": rows})
}

fn pod_table(items: &[Value], headers: bool, meta: Value) -> Value {
    table_of(items, headers, meta, pod_columns, pod_row)
}

fn node_table(items: &[Value], headers: bool, meta: Value) -> Value {
    table_of(items, headers, meta, node_columns, node_row)
}

/// Objects as a list, or as a Table when kubectl asks for one.
fn render(
    kind: &str,
    items: &[Value],
    revision: u64,
    headers: &HeaderMap,
    table: fn(&[Value], bool, Value) -> Value,
) -> Response {
    let meta = json!({"resourceVersion": revision.to_string()});
    if table::wants_table(accept(headers)) {
        return json_as(StatusCode::OK, &table(items, true, meta), CONTENT_TYPE);
    }
    json(
        StatusCode::OK,
        &json!({"kind": format!("{kind}List"), "apiVersion": "v1", "metadata": meta, "items": items}),
    )
}

fn is_watch(q: &HashMap<String, String>) -> bool {
    q.get("watch").is_some_and(|w| w == "1" || w == "true")
}

/// A fieldSelector over the view's own fields (`spec.nodeName`,
/// `status.phase`: what `kubectl describe node` sends), applied after
/// converting.
fn view_fields(q: &HashMap<String, String>, extra: &[&str]) -> Result<FieldSelector, Status> {
    match q.get("fieldSelector") {
        Some(s) => FieldSelector::parse(s, |f| {
            matches!(f, "metadata.name" | "metadata.namespace") || extra.contains(&f)
        })
        .map_err(|e| Status::bad_request(format!("fieldSelector: {e}"))),
        None => Ok(FieldSelector::default()),
    }
}

async fn list_pods(app: AppState, ns: Option<&str>, q: Params, headers: HeaderMap) -> Result<Response, Status> {
    let mut q = params(q)?;
    let fields = view_fields(&q, &["spec.nodeName", "status.phase"])?;
    q.remove("fieldSelector");
    let opts = list_options(&TASKS, ns, &q)?;
    if is_watch(&q) {
        let view = View {
            kind: "Pod",
            api_version: "v1",
            convert: pod,
            fields,
            table: pod_table,
        };
        return watch::serve(app, &TASKS, Some(view), opts, &q, accept(&headers)).await;
    }
    let listed = app.registry.list(&TASKS, &opts).await?;
    let pods: Vec<Value> = listed.items.iter().map(pod).filter(|p| fields.matches(p)).collect();
    Ok(render("Pod", &pods, listed.revision, &headers, pod_table))
}

pub async fn list_pods_ns(
    State(app): State<AppState>,
    Path(ns): Path<String>,
    q: Params,
    headers: HeaderMap,
) -> Response {
    list_pods(app, Some(&ns), q, headers)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub async fn list_pods_all(State(app): State<AppState>, q: Params, headers: HeaderMap) -> Response {
    list_pods(app, None, q, headers)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub async fn get_pod(
    State(app): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        let task = app
            .registry
            .get(&TASKS, &ns, &name)
            .await
            .map_err(|e| renamed(e, "pods", &name))?;
        let p = pod(&task);
        if table::wants_table(accept(&headers)) {
            let rv = str_at(&p, "/metadata/resourceVersion").parse().unwrap_or(0);
            return Ok(render("Pod", &[p], rv, &headers, pod_table));
        }
        Ok(json(StatusCode::OK, &p))
    };
    r.await.unwrap_or_else(|e: Status| e.into_response())
}

/// `kubectl logs TASK [--tail N]`: the task's log, fetched as the
/// tasks/NAME/log route fetches it.
pub async fn pod_log(State(app): State<AppState>, Path((ns, name)): Path<(String, String)>, q: Params) -> Response {
    super::agent::task_log_of(&app, &ns, &name, q).await
}

async fn robots(app: &AppState) -> Result<(Vec<Value>, u64), Status> {
    let listed = app
        .registry
        .list(&ROBOTS, &list_options(&ROBOTS, None, &HashMap::new())?)
        .await?;
    Ok((listed.items, listed.revision))
}

pub async fn list_nodes(State(app): State<AppState>, q: Params, headers: HeaderMap) -> Response {
    let r = async {
        let mut q = params(q)?;
        let fields = view_fields(&q, &[])?;
        q.remove("fieldSelector");
        let opts = list_options(&ROBOTS, None, &q)?;
        if is_watch(&q) {
            let view = View {
                kind: "Node",
                api_version: "v1",
                convert: node,
                fields,
                table: node_table,
            };
            return watch::serve(app, &ROBOTS, Some(view), opts, &q, accept(&headers)).await;
        }
        let listed = app.registry.list(&ROBOTS, &opts).await?;
        let nodes: Vec<Value> = listed.items.iter().map(node).filter(|n| fields.matches(n)).collect();
        Ok(render("Node", &nodes, listed.revision, &headers, node_table))
    };
    r.await.unwrap_or_else(|e: Status| e.into_response())
}

/// A Node by name: the Robot of that name (in whichever namespace; Nodes
/// are cluster-wide).
pub async fn get_node(State(app): State<AppState>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    let r = async {
        let (all, revision) = robots(&app).await?;
        let robot = all
            .iter()
            .find(|r| object::name(r) == name)
            .ok_or_else(|| Status::new(404, "NotFound", format!("nodes \"{name}\" not found")))?;
        let n = node(robot);
        if table::wants_table(accept(&headers)) {
            return Ok(render("Node", &[n], revision, &headers, node_table));
        }
        Ok(json(StatusCode::OK, &n))
    };
    r.await.unwrap_or_else(|e: Status| e.into_response())
}

fn accept(headers: &HeaderMap) -> &str {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// A Task's 404 read as the Pod's (`pods "x" not found`).
fn renamed(e: Status, plural: &str, name: &str) -> Status {
    if e.code == 404 {
        Status::new(404, "NotFound", format!("{plural} \"{name}\" not found"))
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_read_as_pods_and_robots_as_nodes() {
        let task = json!({"metadata": {"name": "j-g-r0-main", "namespace": "default", "uid": "u"},
            "spec": {"name": "main", "driver": "exec", "targetRobot": "r1", "config": {"execConfig": {"command": "/bin/true"}}},
            "status": {"state": "completed", "exitCode": 0, "conditions": [{"type": "Ready", "status": "False"}]}});
        let p = pod(&task);
        assert_eq!(p["status"]["phase"], "Succeeded");
        assert_eq!(p["spec"]["nodeName"], "r1");
        assert_eq!(p["spec"]["containers"][0]["name"], "main");
        assert_eq!(
            p["status"]["containerStatuses"][0]["state"]["terminated"]["reason"],
            "Completed"
        );
        let row = pod_row(&p, 0);
        assert_eq!((&row[1], &row[2]), (&json!("0/1"), &json!("Completed")));
        let robot = json!({"metadata": {"name": "r1", "namespace": "default", "labels": {"demo": "true"}},
            "status": {"phase": "Online", "agentVersion": "0.1.0", "conditions": [{"type": "Ready", "status": "True"}],
                       "deviceInfo": {"hostname": "r1.local", "platform": {"os": "linux", "arch": "x86_64"}}}});
        let n = node(&robot);
        assert_eq!(n["metadata"]["labels"]["demo"], "true");
        assert!(n["metadata"].get("namespace").is_none(), "Nodes are cluster-wide");
        assert_eq!(n["status"]["nodeInfo"]["architecture"], "x86_64");
        assert_eq!(node_row(&n, 0)[1], "Ready");
        let never = node(&json!({"metadata": {"name": "r2"}}));
        assert_eq!(node_row(&never, 0)[1], "NotReady");
    }
}
