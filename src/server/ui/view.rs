//! The page shell (navigation, who is logged in, the script and style
//! files) and small pieces the pages share. maud escapes every value
//! interpolated here; nothing is written into the page unescaped.

use super::Viewer;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};
use serde_json::Value;

/// What a page's live updates follow: the resources whose changes make
/// the script reload the page's main part (`data-watch`).
pub fn page(title: &str, viewer: Option<&Viewer>, watch: &str, body: Markup) -> Response {
    let doc = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · k8s4r" }
                link rel="stylesheet" href="/ui/static/app.css";
                script src="/ui/static/app.js" defer {}
            }
            body data-watch=(watch) {
                header {
                    a.brand href="/ui/fleet" { "k8s4r" }
                    nav {
                        a href="/ui/fleet" { "Fleet" }
                        a href="/ui/jobs" { "Jobs" }
                        a href="/ui/events" { "Events" }
                    }
                    @if let Some(v) = viewer {
                        span.who { (v.user.name) }
                        @if v.session {
                            form.inline method="post" action="/ui/logout" {
                                input type="hidden" name="csrf" value=(v.csrf);
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                    span #live.live title="live updates" {}
                }
                main #main { h1 { (title) } (body) }
            }
        }
    };
    Html(doc.into_string()).into_response()
}

/// A page that only says why (a refusal, a missing object).
pub fn message_page(code: StatusCode, message: &str) -> Response {
    let mut r = page(
        code.canonical_reason().unwrap_or("Error"),
        None,
        "",
        html! { p.error { (message) } },
    );
    *r.status_mut() = code;
    r
}

/// The string at JSON pointer `p`, or "".
pub fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

/// The number at `p` as text, or "".
pub fn n(v: &Value, p: &str) -> String {
    v.pointer(p)
        .and_then(Value::as_i64)
        .map(|x| x.to_string())
        .unwrap_or_default()
}

/// "name=value" pairs of the object at `p`.
pub fn labels(v: &Value, p: &str) -> Markup {
    html! {
        @if let Some(m) = v.pointer(p).and_then(Value::as_object) {
            @for (k, val) in m {
                span.label { (k) "=" (val.as_str().unwrap_or("")) }
            }
        }
    }
}

/// A state word with a class for its colour.
pub fn state(word: &str) -> Markup {
    let class = match word.to_ascii_lowercase().as_str() {
        "online" | "running" | "succeeded" | "complete" | "completed" | "normal" => "ok",
        "offline" | "failed" | "lost" | "warning" | "dead" => "bad",
        _ => "other",
    };
    html! { span class={ "state " (class) } { (word) } }
}

/// The age of an RFC 3339 time, as kubectl shows it.
pub fn age(v: &Value, p: &str) -> String {
    use crate::server::time;
    v.pointer(p)
        .and_then(Value::as_str)
        .and_then(time::parse_rfc3339)
        .map(|t| time::human_age(time::now_unix().saturating_sub(t)))
        .unwrap_or_else(|| "-".into())
}

/// The table of Events `items`.
pub fn events_table(items: &[&Value]) -> Markup {
    html! {
        @if items.is_empty() {
            p.empty { "No events." }
        } @else {
            table #events {
                thead { tr { th { "Age" } th { "Type" } th { "Reason" } th { "Object" } th { "Message" } } }
                tbody {
                    @for e in items {
                        tr {
                            td { (age(e, "/lastTimestamp")) }
                            td { (state(s(e, "/type"))) }
                            td { (s(e, "/reason")) }
                            td { (s(e, "/involvedObject/kind").to_lowercase()) "/" (s(e, "/involvedObject/name")) }
                            td { (s(e, "/message")) }
                        }
                    }
                }
            }
        }
    }
}
