//! The pages. Each asks [`Ui::may`] for the API request it stands for
//! (listing robots, getting a Job, ...) before reading anything, and shows
//! a mutating control only to a viewer the rules let use it.
//!
//! Long lists (robots, Jobs) are paged on the server ([`PAGE`] rows, one
//! read of the store per page, search and label selector included), so a
//! page of a fleet of 10,000 robots is one list and 50 rows of HTML.

use super::view::{self, age, events_table, labels, n, s, state};
use super::{api_path, csrf_ok, refuse, same_origin, to_login, Ui, UiState, Viewer};
use crate::server::auth::audit::Entry;
use crate::server::auth::authz;
use crate::server::events::RESOURCE as EVENTS;
use crate::server::registry::{DeleteOptions, ListOptions};
use crate::server::resources::{Resource, JOBS, ROBOTS, ROLLOUTS, TASKGROUPS, TASKS};
use crate::server::selector::{FieldSelector, LabelSelector};
use crate::server::status::Status;
use axum::extract::{Form, Path, Query, State};
use axum::http::{request::Parts, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// Rows on one page of a long list.
const PAGE: usize = 50;
/// Events shown on one page (the newest).
const MAX_EVENTS: usize = 200;

type Q = Query<HashMap<String, String>>;

/// The viewer, or the response that sends them away (to log in, or 403
/// when the rules do not let them read `api`).
fn admit(ui: &Ui, parts: &Parts, api: &str) -> Result<Viewer, Box<Response>> {
    let viewer = ui.viewer(parts).ok_or_else(|| Box::new(to_login()))?;
    if !Ui::may(&viewer, "GET", api, None) {
        return Err(Box::new(refuse(
            StatusCode::FORBIDDEN,
            &format!("{} may not read {api}", viewer.user.name),
        )));
    }
    Ok(viewer)
}

fn failed(e: Status) -> Response {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    refuse(code, &e.message)
}

/// Up to [`PAGE`] objects of `res` matching `labels` and `keep`, skipping
/// the first `offset` matches; and the offset of the page after, when
/// there is one. One read of the store per page whatever the filter: the
/// store lists whole collections, so reading it in chunks would cost a
/// whole read per chunk.
async fn page_of(
    ui: &Ui,
    res: &Resource,
    labels: &LabelSelector,
    keep: impl Fn(&Value) -> bool,
    offset: usize,
) -> Result<(Vec<Value>, Option<usize>), Status> {
    let opts = ListOptions {
        labels: labels.clone(),
        ..Default::default()
    };
    let listed = ui.app.registry.list(res, &opts).await?;
    let mut page: Vec<Value> = listed
        .items
        .into_iter()
        .filter(|v| keep(v))
        .skip(offset)
        .take(PAGE + 1)
        .collect();
    let more = page.len() > PAGE;
    page.truncate(PAGE);
    Ok((page, more.then(|| offset.saturating_add(PAGE))))
}

fn offset(q: &HashMap<String, String>) -> usize {
    q.get("offset").and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// The links to the pages before and after, keeping the filters.
fn pager(base: &str, filters: &[(&str, &str)], at: usize, next: Option<usize>) -> Markup {
    let link = |to: usize| {
        let mut q: Vec<String> = filters
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        q.push(format!("offset={to}"));
        format!("{base}?{}", q.join("&"))
    };
    html! {
        p.pager {
            @if at > 0 { a #prev href=(link(at.saturating_sub(PAGE))) { "← Previous page" } " " }
            @if let Some(n) = next { a #next href=(link(n)) { "Next page →" } }
        }
    }
}

/// Percent-encoding of a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Objects of `res` in `ns` whose field `field` is `value`.
async fn where_field(ui: &Ui, res: &Resource, ns: &str, field: &str, value: &str) -> Result<Vec<Value>, Status> {
    let fields = FieldSelector::parse(&format!("{field}={value}"), |f| res.supports_field(f))
        .map_err(|e| Status::bad_request(format!("fieldSelector: {e}")))?;
    let opts = ListOptions {
        namespace: Some(ns.to_string()),
        fields,
        ..Default::default()
    };
    Ok(ui.app.registry.list(res, &opts).await?.items)
}

/// The newest events (of `ns`, or all) whose object `wanted` accepts.
async fn events_of(ui: &Ui, ns: Option<&str>, wanted: impl Fn(&Value) -> bool) -> Result<Vec<Value>, Status> {
    let listed = ui.app.events.list(EVENTS, ns).await?;
    let mut items: Vec<Value> = listed
        .items
        .into_iter()
        .map(|s| std::sync::Arc::unwrap_or_clone(s.value))
        .filter(|v| wanted(v))
        .collect();
    items.sort_by_key(|v| std::cmp::Reverse(s(v, "/lastTimestamp").to_string()));
    items.truncate(MAX_EVENTS);
    Ok(items)
}

pub async fn fleet(State(ui): State<UiState>, parts: Parts, Query(q): Q) -> Response {
    let viewer = match admit(&ui, &parts, &api_path("robots", "", "")) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let search = q.get("q").map(|s| s.trim().to_string()).unwrap_or_default();
    let selector_text = q.get("selector").map(|s| s.trim().to_string()).unwrap_or_default();
    let selector = match LabelSelector::parse(&selector_text) {
        Ok(s) => s,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("label selector: {e}")),
    };
    let needle = search.to_lowercase();
    let keep = |r: &Value| needle.is_empty() || s(r, "/metadata/name").to_lowercase().contains(&needle);
    let at = offset(&q);
    let (robots, next) = match page_of(&ui, &ROBOTS, &selector, keep, at).await {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    let may_tasks = Ui::may(&viewer, "GET", &api_path("tasks", "", ""), None);
    let mut counts = Vec::with_capacity(robots.len());
    for r in &robots {
        let count = if may_tasks {
            where_field(
                &ui,
                &TASKS,
                s(r, "/metadata/namespace"),
                "spec.targetRobot",
                s(r, "/metadata/name"),
            )
            .await
            .map(|t| t.len().to_string())
            .unwrap_or_else(|_| "?".into())
        } else {
            "-".into()
        };
        counts.push(count);
    }
    let body = html! {
        form #filter method="get" action="/ui/fleet" {
            input #search type="search" name="q" value=(search) placeholder="robot name contains";
            input #selector type="text" name="selector" value=(selector_text) placeholder="label selector, e.g. site=lab";
            button type="submit" { "Filter" }
        }
        @if robots.is_empty() { p.empty { "No robots." } } @else {
            table #robots {
                thead { tr {
                    th { "Robot" } th { "Phase" } th { "Labels" } th { "Agent" }
                    th { "Last contact" } th { "Tasks" }
                    th title="Task statuses the robot still held undelivered at its last report" { "Backlog" }
                } }
                tbody {
                    @for (r, count) in robots.iter().zip(&counts) {
                        tr data-name=(s(r, "/metadata/name")) {
                            td { a href={ "/ui/robots/" (s(r, "/metadata/namespace")) "/" (s(r, "/metadata/name")) } { (s(r, "/metadata/name")) } }
                            td { (state(s(r, "/status/phase"))) }
                            td { (labels(r, "/metadata/labels")) }
                            td { (s(r, "/status/agentVersion")) }
                            td { (age(r, "/status/lastHeartbeatTime")) }
                            td.num { (count) }
                            td.num.backlog { (n(r, "/status/statusBacklog")) }
                        }
                    }
                }
            }
        }
        (pager("/ui/fleet", &[("q", &search), ("selector", &selector_text)], at, next))
    };
    view::page("Fleet", Some(&viewer), "robots", body)
}

pub async fn robot(State(ui): State<UiState>, parts: Parts, Path((ns, name)): Path<(String, String)>) -> Response {
    let viewer = match admit(&ui, &parts, &api_path("robots", &ns, &name)) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let r = match ui.app.registry.get(&ROBOTS, &ns, &name).await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let tasks = if Ui::may(&viewer, "GET", &api_path("tasks", &ns, ""), None) {
        where_field(&ui, &TASKS, &ns, "spec.targetRobot", &name)
            .await
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let events = if Ui::may(&viewer, "GET", "/api/v1/events", None) {
        events_of(&ui, Some(&ns), |e| {
            s(e, "/involvedObject/kind") == "Robot" && s(e, "/involvedObject/name") == name
        })
        .await
        .unwrap_or_default()
    } else {
        Vec::new()
    };
    let device = r
        .pointer("/status/deviceInfo")
        .map(|d| serde_json::to_string_pretty(d).unwrap_or_default());
    let body = html! {
        dl.facts {
            dt { "Phase" } dd { (state(s(&r, "/status/phase"))) }
            dt { "Message" } dd { (s(&r, "/status/message")) }
            dt { "Labels" } dd { (labels(&r, "/metadata/labels")) }
            dt { "Agent version" } dd { (s(&r, "/status/agentVersion")) }
            dt { "Last contact" } dd { (age(&r, "/status/lastHeartbeatTime")) }
        }
        h2 { "Tasks" }
        (tasks_table(&tasks))
        h2 { "Device" }
        @match device {
            Some(d) => pre.device { (d) },
            None => p.empty { "No device information reported." },
        }
        h2 { "Events" }
        (events_table(&events.iter().collect::<Vec<_>>()))
    };
    view::page(&format!("Robot {name}"), Some(&viewer), "robots,tasks", body)
}

fn tasks_table(tasks: &[Value]) -> Markup {
    html! {
        @if tasks.is_empty() { p.empty { "No tasks." } } @else {
            table.tasks {
                thead { tr { th { "Task" } th { "Job" } th { "Robot" } th { "State" } th { "Exit" } th { "Restarts" } th { "Age" } } }
                tbody {
                    @for t in tasks {
                        tr {
                            td { a href={ "/ui/tasks/" (s(t, "/metadata/namespace")) "/" (s(t, "/metadata/name")) } { (s(t, "/metadata/name")) } }
                            td { (s(t, "/spec/jobName")) }
                            td { (s(t, "/spec/targetRobot")) }
                            td { (state(s(t, "/status/state"))) }
                            td.num { (n(t, "/status/exitCode")) }
                            td.num { (n(t, "/status/restartCount")) }
                            td { (age(t, "/metadata/creationTimestamp")) }
                        }
                    }
                }
            }
        }
    }
}

pub async fn jobs(State(ui): State<UiState>, parts: Parts, Query(q): Q) -> Response {
    let viewer = match admit(&ui, &parts, &api_path("jobs", "", "")) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let at = offset(&q);
    let (jobs, next) = match page_of(&ui, &JOBS, &LabelSelector::default(), |_| true, at).await {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    // The newest version of each Job on the page, when its viewer may read
    // rollouts: one list (bounded by Jobs × --job-history).
    let rollouts = if Ui::may(&viewer, "GET", &api_path("rollouts", "", ""), None) {
        match ui.app.registry.list(&ROLLOUTS, &ListOptions::default()).await {
            Ok(l) => newest_rollouts(l.items),
            Err(e) => return failed(e),
        }
    } else {
        HashMap::new()
    };
    let body = html! {
        @if jobs.is_empty() { p.empty { "No jobs." } } @else {
            table #jobs {
                thead { tr {
                    th { "Job" } th { "Namespace" } th { "Type" } th { "State" }
                    th { "Total" } th { "Running" } th { "Succeeded" } th { "Failed" } th { "Rollout" } th { "Age" }
                } }
                tbody {
                    @for j in &jobs {
                        tr data-name=(s(j, "/metadata/name")) {
                            td { a href={ "/ui/jobs/" (s(j, "/metadata/namespace")) "/" (s(j, "/metadata/name")) } { (s(j, "/metadata/name")) } }
                            td { (s(j, "/metadata/namespace")) }
                            td { (s(j, "/spec/type")) }
                            td { (state(s(j, "/status/state"))) }
                            td.num { (n(j, "/status/totalTasks")) }
                            td.num { (n(j, "/status/runningTasks")) }
                            td.num { (n(j, "/status/succeededTasks")) }
                            td.num { (n(j, "/status/failedTasks")) }
                            td.rollout { (rollout_cell(rollouts.get(&(s(j, "/metadata/namespace").to_string(), s(j, "/metadata/name").to_string())))) }
                            td { (age(j, "/metadata/creationTimestamp")) }
                        }
                    }
                }
            }
        }
        (pager("/ui/jobs", &[], at, next))
    };
    view::page("Jobs", Some(&viewer), "jobs,rollouts", body)
}

/// The newest Rollout (highest version) of each Job, by namespace and name.
fn newest_rollouts(items: Vec<Value>) -> HashMap<(String, String), Value> {
    let mut newest: HashMap<(String, String), Value> = HashMap::new();
    for r in items {
        let key = (
            s(&r, "/metadata/namespace").to_string(),
            s(&r, "/spec/jobName").to_string(),
        );
        let version = r.pointer("/spec/version").and_then(Value::as_i64).unwrap_or(0);
        let older = newest
            .get(&key)
            .is_none_or(|o| o.pointer("/spec/version").and_then(Value::as_i64).unwrap_or(0) < version);
        if older {
            newest.insert(key, r);
        }
    }
    newest
}

/// "v3 Progressing 2/5" for a Job's newest version, a dash without one.
fn rollout_cell(rollout: Option<&Value>) -> Markup {
    match rollout {
        None => html! { "—" },
        Some(r) => html! {
            "v" (n(r, "/spec/version")) " " (state(s(r, "/status/state"))) " " (s(r, "/status/progress"))
        },
    }
}

pub async fn job(State(ui): State<UiState>, parts: Parts, Path((ns, name)): Path<(String, String)>) -> Response {
    let path = api_path("jobs", &ns, &name);
    let viewer = match admit(&ui, &parts, &path) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let j = match ui.app.registry.get(&JOBS, &ns, &name).await {
        Ok(j) => j,
        Err(e) => return failed(e),
    };
    let groups = if Ui::may(&viewer, "GET", &api_path("taskgroups", &ns, ""), None) {
        where_field(&ui, &TASKGROUPS, &ns, "spec.jobName", &name)
            .await
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let tasks = if Ui::may(&viewer, "GET", &api_path("tasks", &ns, ""), None) {
        where_field(&ui, &TASKS, &ns, "spec.jobName", &name)
            .await
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let mine: HashSet<&str> = std::iter::once(name.as_str())
        .chain(groups.iter().map(|g| s(g, "/metadata/name")))
        .chain(tasks.iter().map(|t| s(t, "/metadata/name")))
        .collect();
    let events = if Ui::may(&viewer, "GET", "/api/v1/events", None) {
        events_of(&ui, Some(&ns), |e| mine.contains(s(e, "/involvedObject/name")))
            .await
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let may_delete = Ui::may(&viewer, "DELETE", &path, None);
    let body = html! {
        dl.facts {
            dt { "Type" } dd { (s(&j, "/spec/type")) }
            dt { "State" } dd { (state(s(&j, "/status/state"))) }
            dt { "Tasks" } dd {
                (n(&j, "/status/totalTasks")) " total, " (n(&j, "/status/runningTasks")) " running, "
                (n(&j, "/status/succeededTasks")) " succeeded, " (n(&j, "/status/failedTasks")) " failed"
            }
            dt { "Description" } dd { (s(&j, "/status/statusDescription")) }
        }
        @if may_delete {
            form #delete-job.danger method="post" action={ "/ui/jobs/" (ns) "/" (name) "/delete" } {
                input type="hidden" name="csrf" value=(viewer.csrf);
                button type="submit" { "Delete job" }
            }
        }
        h2 { "Task groups" }
        @if groups.is_empty() { p.empty { "No task groups." } } @else {
            table.groups {
                thead { tr { th { "Group" } th { "State" } th { "Total" } th { "Running" } th { "Succeeded" } th { "Failed" } } }
                tbody {
                    @for g in &groups {
                        tr {
                            td { (s(g, "/metadata/name")) }
                            td { (state(s(g, "/status/state"))) }
                            td.num { (n(g, "/status/totalTasks")) }
                            td.num { (n(g, "/status/runningTasks")) }
                            td.num { (n(g, "/status/succeededTasks")) }
                            td.num { (n(g, "/status/failedTasks")) }
                        }
                    }
                }
            }
        }
        h2 { "Tasks" }
        (tasks_table(&tasks))
        h2 { "Events" }
        (events_table(&events.iter().collect::<Vec<_>>()))
    };
    view::page(&format!("Job {name}"), Some(&viewer), "jobs,taskgroups,tasks", body)
}

pub async fn delete_job(
    State(ui): State<UiState>,
    parts: Parts,
    Path((ns, name)): Path<(String, String)>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let Some(viewer) = ui.viewer(&parts) else {
        return refuse(StatusCode::UNAUTHORIZED, "log in first");
    };
    let path = api_path("jobs", &ns, &name);
    let request = authz::parse("DELETE", &path, None);
    let resp = if !same_origin(&parts.headers) || !csrf_ok(&viewer, f.get("csrf").map(String::as_str)) {
        refuse(StatusCode::FORBIDDEN, "the form's CSRF token is missing or wrong")
    } else if !authz::decide(&viewer.user, &request).allowed {
        refuse(
            StatusCode::FORBIDDEN,
            &authz::forbidden_message(&viewer.user.name, &request),
        )
    } else {
        match ui
            .app
            .registry
            .delete(&JOBS, &ns, &name, &DeleteOptions::default())
            .await
        {
            Ok(_) => Redirect::to("/ui/jobs").into_response(),
            Err(e) => failed(e),
        }
    };
    // Recorded as the API's DELETE would be, refusals included.
    if ui.app.audit.enabled() {
        ui.app.audit.record(&Entry {
            request: &request,
            uri: parts.uri.path(),
            user: Some(&viewer.user),
            source_ip: parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
            user_agent: parts
                .headers
                .get(axum::http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok()),
            code: resp.status().as_u16(),
            received: std::time::SystemTime::now(),
        });
    }
    resp
}

pub async fn task(State(ui): State<UiState>, parts: Parts, Path((ns, name)): Path<(String, String)>) -> Response {
    let viewer = match admit(&ui, &parts, &api_path("tasks", &ns, &name)) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let t = match ui.app.registry.get(&TASKS, &ns, &name).await {
        Ok(t) => t,
        Err(e) => return failed(e),
    };
    let may_log = Ui::may(&viewer, "GET", &format!("{}/log", api_path("tasks", &ns, &name)), None);
    let events = if Ui::may(&viewer, "GET", "/api/v1/events", None) {
        events_of(&ui, Some(&ns), |e| s(e, "/involvedObject/name") == name)
            .await
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let body = html! {
        dl.facts {
            dt { "Job" } dd { a href={ "/ui/jobs/" (ns) "/" (s(&t, "/spec/jobName")) } { (s(&t, "/spec/jobName")) } }
            dt { "Robot" } dd { a href={ "/ui/robots/" (ns) "/" (s(&t, "/spec/targetRobot")) } { (s(&t, "/spec/targetRobot")) } }
            dt { "State" } dd { (state(s(&t, "/status/state"))) }
            dt { "Exit code" } dd { (n(&t, "/status/exitCode")) }
            dt { "Restarts" } dd { (n(&t, "/status/restartCount")) }
            dt { "Message" } dd { (s(&t, "/status/message")) }
        }
        h2 { "Log (tail, live)" }
        @if may_log {
            pre #log data-src={ "/ui/tasks/" (ns) "/" (name) "/log?tailLines=200" } { "…" }
        } @else {
            p.empty { "You may not read this task's log." }
        }
        h2 { "Events" }
        (events_table(&events.iter().collect::<Vec<_>>()))
    };
    view::page(&format!("Task {name}"), Some(&viewer), "tasks", body)
}

pub async fn events(State(ui): State<UiState>, parts: Parts) -> Response {
    let viewer = match admit(&ui, &parts, "/api/v1/events") {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let events = match events_of(&ui, None, |_| true).await {
        Ok(e) => e,
        Err(e) => return failed(e),
    };
    view::page(
        "Events",
        Some(&viewer),
        "jobs,tasks,robots",
        events_table(&events.iter().collect::<Vec<_>>()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(encode("site-1_x.y~"), "site-1_x.y~");
    }
}
