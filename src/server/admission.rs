//! Admission: turn a request body into an object of the resource's kind,
//! checked by the shared validation. Unknown fields are warnings, or errors
//! under `fieldValidation=Strict`; what validation warns about is always a
//! warning (fieldValidation concerns fields only, as in Kubernetes), and
//! also kept apart so that the HTTP layer records it as an event on the
//! stored object.

use super::resources::Resource;
use super::status::Status;
use crate::api::{self, AnyObject, DecodeError, FieldError};
use serde_json::Value;

/// The `fieldValidation` query parameter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(text: Option<&str>) -> Result<Self, Status> {
        match text {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(Status::bad_request(format!(
                "fieldValidation {other:?} is invalid (expected Ignore, Warn or Strict)"
            ))),
        }
    }
}

/// A decoded, valid object re-encoded in canonical form (unknown fields
/// dropped), plus the warnings to send back.
#[derive(Debug)]
pub struct Admitted {
    pub value: Value,
    /// Every warning, for the response's `Warning` headers.
    pub warnings: Vec<String>,
    /// Validation's warnings alone (`field: message`), for events.
    pub findings: Vec<String>,
}

/// Decode `value` as `res.kind` and validate it. `name` is used in error
/// messages when the body carries none.
pub fn admit(res: &Resource, value: Value, name: &str, validation: FieldValidation) -> Result<Admitted, Status> {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    if !kind.is_empty() && kind != res.kind {
        return Err(Status::bad_request(format!(
            "the body is a {kind:?} but the URL is for {} ({})",
            res.kind, res.plural
        )));
    }
    let decoded = match api::decode::decode_value(value) {
        Ok(d) => d,
        Err(DecodeError::Syntax { message, .. }) => return Err(Status::bad_request(message)),
        Err(DecodeError::Invalid(errs)) => return Err(invalid(res, name, &errs)),
    };
    let warnings = match validation {
        FieldValidation::Ignore => vec![],
        FieldValidation::Warn => decoded.warnings,
        FieldValidation::Strict if decoded.warnings.is_empty() => vec![],
        FieldValidation::Strict => {
            return Err(Status::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                res.kind,
                api::meta::VERSION,
                res.kind,
                decoded.warnings.join(", ")
            )))
        }
    };
    let found = api::review(&decoded.object);
    if !found.errors.is_empty() {
        return Err(invalid(res, name, &found.errors));
    }
    let findings: Vec<String> = found.warnings.iter().map(|w| w.to_string()).collect();
    let mut warnings = warnings;
    warnings.extend(findings.iter().cloned());
    let value = encode(&decoded.object)?;
    Ok(Admitted {
        value,
        warnings,
        findings,
    })
}

fn invalid(res: &Resource, name: &str, errors: &[FieldError]) -> Status {
    Status::invalid(res.subject(name), errors)
}

fn encode(obj: &AnyObject) -> Result<Value, Status> {
    serde_json::to_value(obj).map_err(|e| Status::internal(format!("encoding object: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::resources::{JOBS, ROBOTS};
    use serde_json::json;

    fn robot(extra: Value) -> Value {
        let mut v =
            json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Robot", "metadata": {"name": "r1"}, "spec": {}});
        crate::server::patch::merge_patch(&mut v, &extra);
        v
    }

    #[test]
    fn unknown_fields_warn_or_fail() {
        let v = robot(json!({"spec": {"foo": 1}}));
        let a = admit(&ROBOTS, v.clone(), "r1", FieldValidation::Warn).unwrap();
        assert_eq!(a.warnings, vec!["unknown field \"spec.foo\"".to_string()]);
        assert!(a.value["spec"].get("foo").is_none(), "unknown fields are pruned");
        let e = admit(&ROBOTS, v.clone(), "r1", FieldValidation::Strict).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.contains("spec.foo"), "{e}");
        assert!(admit(&ROBOTS, v, "r1", FieldValidation::Ignore)
            .unwrap()
            .warnings
            .is_empty());
    }

    #[test]
    fn validation_warnings_are_warnings_in_every_mode_and_kept_apart() {
        let job = json!({"apiVersion": "robot.k8s4r.io/v1alpha1", "kind": "Job", "metadata": {"name": "j"},
            "spec": {"taskGroups": [{"name": "g", "tasks": [{"name": "t", "driver": "exec",
                "config": {"execConfig": {"command": "/bin/true"}}, "extra": 1,
                "services": [{"name": "web", "portLabel": "http", "checks": [{"name": "up", "type": "http"}]}]}]}]}});
        let want = "spec.taskGroups[0].tasks[0].services[0].portLabel: \"http\" names no port this agent can probe (http checks need a port number, 1-65535): the check \"up\" is not run";
        let a = admit(&JOBS, job.clone(), "j", FieldValidation::Warn).unwrap();
        assert_eq!(a.findings, vec![want.to_string()]);
        assert_eq!(
            a.warnings,
            vec![
                "unknown field \"spec.taskGroups[0].tasks[0].extra\"".to_string(),
                want.to_string()
            ]
        );
        let a = admit(&JOBS, job.clone(), "j", FieldValidation::Ignore).unwrap();
        assert_eq!(a.warnings, vec![want.to_string()]);
        let mut known = job;
        known["spec"]["taskGroups"][0]["tasks"][0]
            .as_object_mut()
            .unwrap()
            .remove("extra");
        let a = admit(&JOBS, known, "j", FieldValidation::Strict).unwrap();
        assert_eq!(a.warnings, vec![want.to_string()]);
    }

    #[test]
    fn wrong_kind_and_invalid_fields() {
        assert_eq!(
            admit(&JOBS, robot(json!({})), "r1", FieldValidation::Warn)
                .unwrap_err()
                .code,
            400
        );
        let e = admit(
            &ROBOTS,
            robot(json!({"spec": {"labels": {"bad key": "x"}}})),
            "r1",
            FieldValidation::Warn,
        )
        .unwrap_err();
        assert_eq!(e.code, 422);
        let causes = &e.details.unwrap().causes;
        assert!(causes[0].field.starts_with("spec.labels"), "{causes:?}");
        let e = admit(
            &ROBOTS,
            robot(json!({"spec": {"labels": 5}})),
            "r1",
            FieldValidation::Warn,
        )
        .unwrap_err();
        assert_eq!(e.code, 422, "a type error names its field: {e}");
    }
}
