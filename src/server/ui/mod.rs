//! The dashboard at `/ui/`: server-rendered HTML pages of the fleet, Jobs,
//! Tasks and Events, on the API's listener.
//!
//! Who: a browser session ([`crate::server::auth::session`], made by the
//! login page from a bearer token) or a verified client certificate. What
//! they may see or do: every page and data request is decided by
//! [`authz::decide`] as the API request it stands for ([`Ui::may`]), so a
//! viewer of the dashboard is a viewer of the API. A mutation (deleting a
//! Job) also needs the session's CSRF token and a same-origin request.
//!
//! - `login`: log in and out.
//! - `pages`: the HTML pages (fleet, robot, jobs, job, task, events).
//! - `view`: the page shell and small HTML pieces shared by the pages.
//! - `live`: server-sent events from the store's watch, and the log tail.
//! - `assets`: the embedded JavaScript and CSS.

mod assets;
mod live;
mod login;
mod pages;
mod view;

use crate::server::auth::authz;
use crate::server::auth::session::{self, Sessions};
use crate::server::auth::User;
use crate::server::http::AppState;
use crate::server::tokens;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

/// The group-version prefix of the API paths the pages stand for.
const GV: &str = "/apis/robot.k8s4r.io/v1alpha1";
/// Largest form a page posts (a login token, a CSRF token).
const MAX_FORM: usize = 16 * 1024;

/// No script but the served file, no inline style, no other origin, never
/// in a frame: what the pages need and nothing more.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub struct Ui {
    pub app: AppState,
    pub sessions: Sessions,
    /// Key of the CSRF tokens of certificate users (who have no session).
    csrf_key: String,
}

type UiState = Arc<Ui>;

/// Who is asking, and the CSRF token their forms carry.
#[derive(Clone, Debug)]
pub struct Viewer {
    pub user: User,
    pub csrf: String,
    /// Logged in with a session cookie (then a logout button is shown).
    pub session: bool,
}

pub fn router(app: AppState) -> Router {
    let mut key = [0u8; 32];
    crate::api::robot_channel::random(&mut key);
    let ui = Arc::new(Ui {
        app,
        sessions: Sessions::default(),
        csrf_key: key.iter().map(|b| format!("{b:02x}")).collect(),
    });
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/fleet") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/fleet") }))
        .route("/ui/login", get(login::form).post(login::login))
        .route("/ui/logout", post(login::logout))
        .route("/ui/static/{file}", get(assets::serve))
        .route("/ui/fleet", get(pages::fleet))
        .route("/ui/robots/{ns}/{name}", get(pages::robot))
        .route("/ui/jobs", get(pages::jobs))
        .route("/ui/jobs/{ns}/{name}", get(pages::job))
        .route("/ui/jobs/{ns}/{name}/delete", post(pages::delete_job))
        .route("/ui/tasks/{ns}/{name}", get(pages::task))
        .route("/ui/tasks/{ns}/{name}/log", get(live::log))
        .route("/ui/events", get(pages::events))
        .route("/ui/live", get(live::stream))
        .layer(DefaultBodyLimit::max(MAX_FORM))
        .layer(axum::middleware::from_fn(secure_headers))
        .with_state(ui)
}

/// Every answer: the CSP, no sniffing, no referrer to other sites, no
/// caching of pages.
async fn secure_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let is_asset = req.uri().path().starts_with("/ui/static/");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    // Not no-referrer: under it a browser sends `Origin: null` with a
    // form, and [`same_origin`] could not tell this server's pages.
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    if !is_asset {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

impl Ui {
    /// The viewer of a request: its session cookie, else its client
    /// certificate; None when it has neither.
    pub fn viewer(&self, parts: &Parts) -> Option<Viewer> {
        if let Some(id) = session_id(&parts.headers) {
            if let Some(s) = self.sessions.get(id) {
                return Some(Viewer {
                    user: s.user,
                    csrf: s.csrf,
                    session: true,
                });
            }
        }
        // Only the certificate: a bearer header is the API's business.
        match self.app.authn.authenticate(&parts.extensions, &HeaderMap::new()) {
            Ok(Some(user)) => Some(Viewer {
                csrf: tokens::hash(&format!("{}\n{}", self.csrf_key, user.name)),
                user,
                session: false,
            }),
            _ => None,
        }
    }

    /// Whether `viewer` may do what API request `method path` does, by
    /// the one decision function.
    pub fn may(viewer: &Viewer, method: &str, path: &str, query: Option<&str>) -> bool {
        authz::decide(&viewer.user, &authz::parse(method, path, query)).allowed
    }
}

fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| session::cookie(c, session::COOKIE))
}

/// The API path of `plural` (in `ns`, named `name` when not empty).
pub fn api_path(plural: &str, ns: &str, name: &str) -> String {
    match (ns, name) {
        ("", _) => format!("{GV}/{plural}"),
        (ns, "") => format!("{GV}/namespaces/{ns}/{plural}"),
        (ns, name) => format!("{GV}/namespaces/{ns}/{plural}/{name}"),
    }
}

/// A POST that changes something must come from a page of this server: a
/// browser names the page's origin (`Origin`, `Sec-Fetch-Site`) and a
/// cross-site one is refused whatever its cookie, so a form on another
/// site can neither log a browser in nor act as it.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_ok = match headers.get(header::ORIGIN).map(|v| v.to_str()) {
        None => true,
        Some(Ok(o)) => host.is_some_and(|h| o == format!("https://{h}") || o == format!("http://{h}")),
        Some(Err(_)) => false,
    };
    let site_ok = match headers.get("sec-fetch-site").map(|v| v.to_str()) {
        None => true,
        Some(Ok(s)) => s == "same-origin" || s == "none",
        Some(Err(_)) => false,
    };
    origin_ok && site_ok
}

/// Whether a form's CSRF token is the viewer's (without an early exit).
pub fn csrf_ok(viewer: &Viewer, given: Option<&str>) -> bool {
    given.is_some_and(|g| tokens::same(g, &viewer.csrf))
}

/// A refusal page with status `code`.
pub fn refuse(code: StatusCode, message: &str) -> Response {
    (code, view::message_page(code, message)).into_response()
}

/// Not logged in: pages send the browser to the login page.
pub fn to_login() -> Response {
    Redirect::to("/ui/login").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cross_site_posts_are_refused() {
        assert!(same_origin(&headers(&[("host", "h:1")])));
        assert!(same_origin(&headers(&[("host", "h:1"), ("origin", "https://h:1")])));
        assert!(!same_origin(&headers(&[("host", "h:1"), ("origin", "https://evil")])));
        assert!(!same_origin(&headers(&[
            ("host", "h:1"),
            ("sec-fetch-site", "cross-site")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "h:1"),
            ("sec-fetch-site", "same-site")
        ])));
    }

    #[test]
    fn api_paths_of_pages() {
        assert_eq!(api_path("robots", "", ""), format!("{GV}/robots"));
        assert_eq!(api_path("jobs", "default", ""), format!("{GV}/namespaces/default/jobs"));
        assert_eq!(api_path("jobs", "d", "j"), format!("{GV}/namespaces/d/jobs/j"));
    }
}
