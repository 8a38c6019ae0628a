//! `POST .../selfsubjectaccessreviews` (`kubectl auth can-i`) and
//! `POST .../selfsubjectreviews` (`kubectl auth whoami`); the answers come
//! from [`crate::server::auth::review`], for the user [`super::guard`]
//! authenticated. kubectl posts these two in protobuf (and accepts JSON
//! back): they are the only requests that may.

use super::{json, parse_body, MAX_BODY};
use crate::server::auth::{proto, review, User};
use crate::server::status::Status;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;

pub const ACCESS_REVIEWS: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
pub const SELF_REVIEWS: &str = "/apis/authentication.k8s.io/v1/selfsubjectreviews";
/// Kubernetes' protobuf media type.
pub const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// Whether a body at `path` may be protobuf.
pub fn takes_protobuf(path: &str) -> bool {
    path == ACCESS_REVIEWS || path == SELF_REVIEWS
}

fn is_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(PROTOBUF))
}

pub async fn access_review(
    Extension(user): Extension<User>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request = if is_protobuf(&headers) {
        body.map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                Status::too_large(format!("the request body is larger than {MAX_BODY} bytes"))
            }
            _ => Status::bad_request(format!("reading the request body: {e}")),
        })
        .and_then(|b| proto::access_review_json(&b).map_err(|e| Status::bad_request(e.to_string())))
    } else {
        parse_body(&headers, body)
    };
    match request.and_then(|v| review::access_review(&user, v)) {
        Ok(v) => json(StatusCode::CREATED, &v),
        Err(e) => e.into_response(),
    }
}

/// The body (empty in what kubectl sends) asks nothing: the answer is the
/// requester.
pub async fn self_review(Extension(user): Extension<User>) -> Response {
    json(StatusCode::CREATED, &review::self_review(&user))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::auth::authz::{self, Target};

    #[test]
    fn the_paths_are_the_review_resources() {
        for (path, group, resource) in [
            (ACCESS_REVIEWS, authz::AUTHORIZATION_GROUP, authz::ACCESS_REVIEWS),
            (SELF_REVIEWS, authz::AUTHENTICATION_GROUP, authz::SELF_REVIEWS),
        ] {
            let req = authz::parse("POST", path, None);
            let Target::Resource(r) = req.target else {
                panic!("{path}")
            };
            assert_eq!((r.group.as_str(), r.resource.as_str()), (group, resource));
        }
    }
}
