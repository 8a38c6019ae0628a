//! `Status`: the Kubernetes error object. It is both what the API sends on
//! the wire and the error type of every API operation (as in kube-rs).

use crate::api::FieldError;
use serde::Serialize;
use std::fmt;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub metadata: ListMeta,
    pub status: &'static str,
    pub message: String,
    pub reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Box<StatusDetails>>,
    pub code: u16,
}

/// Status carries an empty `metadata: {}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ListMeta {}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusDetails {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatusCause {
    pub reason: String,
    pub message: String,
    pub field: String,
}

/// What an error is about: `jobs.robot.k8s4r.io "name"`.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    pub kind: &'a str,
    pub plural: &'a str,
    pub name: &'a str,
}

const GROUP: &str = crate::api::meta::GROUP;

impl Status {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Status {
            kind: "Status",
            api_version: "v1",
            metadata: Default::default(),
            status: "Failure",
            message: message.into(),
            reason,
            details: None,
            code,
        }
    }

    pub fn success() -> Self {
        Status {
            status: "Success",
            reason: "",
            ..Status::new(200, "", "")
        }
    }

    fn with_subject(mut self, s: Subject<'_>) -> Self {
        self.details = Some(Box::new(StatusDetails {
            name: s.name.to_string(),
            group: GROUP.to_string(),
            kind: s.plural.to_string(),
            ..Default::default()
        }));
        self
    }

    pub fn not_found(s: Subject<'_>) -> Self {
        Status::new(
            404,
            "NotFound",
            format!("{}.{GROUP} \"{}\" not found", s.plural, s.name),
        )
        .with_subject(s)
    }

    pub fn already_exists(s: Subject<'_>) -> Self {
        Status::new(
            409,
            "AlreadyExists",
            format!("{}.{GROUP} \"{}\" already exists", s.plural, s.name),
        )
        .with_subject(s)
    }

    pub fn conflict(s: Subject<'_>) -> Self {
        Status::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {}.{GROUP} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                s.plural, s.name
            ),
        )
        .with_subject(s)
    }

    /// 422 with one cause per field problem; kubectl prints
    /// `The Job "x" is invalid:` and one `* field: message` line per cause.
    pub fn invalid(s: Subject<'_>, errors: &[FieldError]) -> Self {
        let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        let message = format!("{} \"{}\" is invalid: {}", s.kind, s.name, join_causes(&list));
        let mut st = Status::new(422, "Invalid", message).with_subject(s);
        if let Some(d) = st.details.as_mut() {
            d.kind = s.kind.to_string();
            d.causes = errors
                .iter()
                .map(|e| StatusCause {
                    reason: "FieldValueInvalid".into(),
                    message: e.message.clone(),
                    field: e.field.clone(),
                })
                .collect();
        }
        st
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Status::new(400, "BadRequest", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Status::new(403, "Forbidden", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Status::new(401, "Unauthorized", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Status::new(405, "MethodNotAllowed", message)
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Status::new(410, "Expired", message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Status::new(413, "RequestEntityTooLarge", message)
    }

    /// 429; with `retry_after`, clients (and `Retry-After`) wait that long.
    pub fn too_many_requests(message: impl Into<String>, retry_after: Option<u32>) -> Self {
        let mut st = Status::new(429, "TooManyRequests", message);
        if retry_after.is_some() {
            st.details = Some(Box::new(StatusDetails {
                retry_after_seconds: retry_after,
                ..Default::default()
            }));
        }
        st
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Status::new(415, "UnsupportedMediaType", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Status::new(500, "InternalError", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Status::new(503, "ServiceUnavailable", message)
    }

    pub fn path_not_found(path: &str) -> Self {
        Status::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }
}

fn join_causes(list: &[String]) -> String {
    if list.len() == 1 {
        list[0].clone()
    } else {
        format!("[{}]", list.join(", "))
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for Status {}

impl From<crate::server::store::StoreError> for Status {
    /// Store errors that reach the API without a subject are server faults
    /// or expired watches; callers map NotFound/Conflict themselves.
    fn from(e: crate::server::store::StoreError) -> Self {
        use crate::server::store::StoreError as E;
        match e {
            E::Expired { .. } => Status::gone(e.to_string()),
            E::NotFound(ref k) => Status::new(404, "NotFound", format!("{k} not found")),
            E::AlreadyExists(ref k) => Status::new(409, "AlreadyExists", format!("{k} already exists")),
            E::Conflict { .. } => Status::new(409, "Conflict", e.to_string()),
            E::Backend(m) => Status::internal(format!("storage: {m}")),
        }
    }
}
