//! `kubectl auth can-i` and `kubectl auth whoami`: the
//! SelfSubjectAccessReview (authorization.k8s.io/v1), answered by the same
//! [`decide`] the API's middleware uses, and the SelfSubjectReview
//! (authentication.k8s.io/v1), the requester's user as authenticated.

use super::authz::{decide, Request, Resource, Target};
use super::User;
use crate::server::status::Status;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccessReview {
    spec: AccessReviewSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccessReviewSpec {
    resource_attributes: Option<ResourceAttributes>,
    non_resource_attributes: Option<NonResourceAttributes>,
}

#[derive(Deserialize)]
#[serde(default)]
#[derive(Default)]
struct ResourceAttributes {
    namespace: String,
    verb: String,
    group: String,
    version: String,
    resource: String,
    subresource: String,
    name: String,
}

#[derive(Deserialize)]
struct NonResourceAttributes {
    #[serde(default)]
    path: String,
    #[serde(default)]
    verb: String,
}

/// The review `body` asks for, answered for `user`: the body with its
/// `status` (`allowed`, `reason`) filled in.
pub fn access_review(user: &User, mut body: Value) -> Result<Value, Status> {
    let review: AccessReview = serde_path_to_error::deserialize(&body).map_err(|e| {
        let field = e.path().to_string();
        Status::bad_request(format!("{field}: {}", e.into_inner()))
    })?;
    let request = match (review.spec.resource_attributes, review.spec.non_resource_attributes) {
        (Some(r), None) => {
            if r.verb.is_empty() {
                return Err(Status::bad_request("spec.resourceAttributes.verb: required"));
            }
            Request {
                verb: r.verb,
                target: Target::Resource(Resource {
                    group: r.group,
                    version: r.version,
                    resource: r.resource,
                    subresource: r.subresource,
                    namespace: r.namespace,
                    name: r.name,
                }),
            }
        }
        (None, Some(n)) => {
            if n.verb.is_empty() || n.path.is_empty() {
                return Err(Status::bad_request(
                    "spec.nonResourceAttributes: both path and verb are required",
                ));
            }
            Request {
                verb: n.verb,
                target: Target::Path(n.path),
            }
        }
        _ => {
            return Err(Status::bad_request(
                "spec: exactly one of resourceAttributes or nonResourceAttributes must be given",
            ))
        }
    };
    let decision = decide(user, &request);
    let mut status = json!({"allowed": decision.allowed});
    if !decision.reason.is_empty() {
        status["reason"] = json!(decision.reason);
    }
    body["status"] = status;
    body["kind"] = json!("SelfSubjectAccessReview");
    body["apiVersion"] = json!("authorization.k8s.io/v1");
    Ok(body)
}

/// The SelfSubjectReview of `user`.
pub fn self_review(user: &User) -> Value {
    json!({
        "kind": "SelfSubjectReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "status": {"userInfo": {"username": user.name, "groups": user.groups}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::auth::{OPERATORS, VIEWERS};

    fn user(group: &str) -> User {
        User {
            name: "u".into(),
            groups: vec![group.into()],
        }
    }

    fn can(group: &str, spec: Value) -> Value {
        let body = json!({"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
                          "metadata": {"creationTimestamp": null}, "spec": spec, "status": {"allowed": false}});
        access_review(&user(group), body).unwrap()["status"].clone()
    }

    #[test]
    fn answers_from_the_same_rules_as_the_api() {
        let create_jobs = json!({"resourceAttributes":
            {"namespace": "default", "verb": "create", "group": "robot.k8s4r.io", "resource": "jobs"}});
        assert_eq!(can(OPERATORS, create_jobs.clone())["allowed"], true);
        assert_eq!(can(VIEWERS, create_jobs)["allowed"], false);
        let logs = json!({"resourceAttributes":
            {"namespace": "default", "verb": "get", "group": "robot.k8s4r.io", "resource": "tasks", "subresource": "log"}});
        assert_eq!(can(VIEWERS, logs)["allowed"], true);
        let tokens = json!({"nonResourceAttributes": {"path": "/agent/v1/jointokens", "verb": "post"}});
        assert_eq!(can(OPERATORS, tokens)["allowed"], false);
    }

    #[test]
    fn a_malformed_review_names_the_field() {
        let u = user(VIEWERS);
        for (body, want) in [
            (json!({"spec": {}}), "exactly one of"),
            (json!({}), "spec"),
            (
                json!({"spec": {"resourceAttributes": {"verb": 3}}}),
                "spec.resourceAttributes.verb",
            ),
            (
                json!({"spec": {"resourceAttributes": {"resource": "jobs"}}}),
                "verb: required",
            ),
            (
                json!({"spec": {"nonResourceAttributes": {"verb": "get"}}}),
                "path and verb",
            ),
        ] {
            let e = access_review(&u, body).unwrap_err();
            assert_eq!(e.code, 400);
            assert!(e.message.contains(want), "{}", e.message);
        }
    }

    #[test]
    fn whoami_shows_name_and_groups() {
        let v = self_review(&user(VIEWERS));
        assert_eq!(v["status"]["userInfo"], json!({"username": "u", "groups": [VIEWERS]}));
    }
}
