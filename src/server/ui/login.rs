//! Log in with a bearer token (one of `--token-auth-file` or
//! `--admin-token-file`): the token is checked as the API checks it and
//! never stored; the browser gets a session cookie instead. Log out ends
//! the session on the server.

use super::{csrf_ok, refuse, same_origin, view, UiState};
use crate::server::auth::authn::Denied;
use crate::server::auth::session::{COOKIE, SESSION_TTL};
use axum::extract::{Form, State};
use axum::http::{header, request::Parts, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use std::collections::HashMap;

pub async fn form(State(ui): State<UiState>, parts: Parts) -> Response {
    if ui.viewer(&parts).is_some() {
        return Redirect::to("/ui/fleet").into_response();
    }
    login_page(StatusCode::OK, None)
}

fn login_page(code: StatusCode, error: Option<&str>) -> Response {
    let mut r = view::page(
        "Log in",
        None,
        "",
        html! {
            @if let Some(e) = error { p.error { (e) } }
            form #login method="post" action="/ui/login" {
                label for="token" { "Bearer token (from --token-auth-file or --admin-token-file)" }
                input #token type="password" name="token" autocomplete="off" required;
                button #login-submit type="submit" { "Log in" }
            }
            p.hint { "A browser that presents a client certificate of this cluster needs no token." }
        },
    );
    *r.status_mut() = code;
    r
}

pub async fn login(State(ui): State<UiState>, parts: Parts, Form(f): Form<HashMap<String, String>>) -> Response {
    if !same_origin(&parts.headers) {
        return refuse(StatusCode::FORBIDDEN, "a login must come from this server's own page");
    }
    let token = f.get("token").map(String::as_str).unwrap_or("");
    let user = match ui.app.authn.user_of_token(token) {
        Ok(u) => u,
        Err(Denied::RobotToken) => {
            return login_page(
                StatusCode::FORBIDDEN,
                Some("A robot token cannot log in to the dashboard."),
            )
        }
        Err(Denied::UnknownToken) => return login_page(StatusCode::UNAUTHORIZED, Some("That token is not valid.")),
    };
    log::info!("dashboard: {} logged in", user.name);
    let (id, _) = ui.sessions.create(user);
    let cookie = format!(
        "{COOKIE}={id}; Path=/ui; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    let mut r = Redirect::to("/ui/fleet").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

pub async fn logout(State(ui): State<UiState>, parts: Parts, Form(f): Form<HashMap<String, String>>) -> Response {
    let Some(viewer) = ui.viewer(&parts) else {
        return super::to_login();
    };
    if !same_origin(&parts.headers) || !csrf_ok(&viewer, f.get("csrf").map(String::as_str)) {
        return refuse(StatusCode::FORBIDDEN, "the form's CSRF token is missing or wrong");
    }
    if let Some(id) = super::session_id(&parts.headers) {
        ui.sessions.remove(id);
    }
    let mut r = Redirect::to("/ui/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("k8s4r_session=; Path=/ui; HttpOnly; Secure; SameSite=Strict; Max-Age=0"),
    );
    r
}
