//! `POST .../selfsubjectaccessreviews` (`kubectl auth can-i`) and
//! `POST .../selfsubjectreviews` (`kubectl auth whoami`); the answers come
//! from [`crate::server::auth::review`], for the user [`super::guard`]
//! authenticated.

use super::{json, parse_body};
use crate::server::auth::{review, User};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;

pub async fn access_review(
    Extension(user): Extension<User>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match parse_body(&headers, body).and_then(|v| review::access_review(&user, v)) {
        Ok(v) => json(StatusCode::CREATED, &v),
        Err(e) => e.into_response(),
    }
}

pub async fn self_review(Extension(user): Extension<User>) -> Response {
    json(StatusCode::CREATED, &review::self_review(&user))
}
