//! Admission: turn a request body into an object of the resource's kind,
//! checked by the shared validation. Unknown fields are warnings, or errors
//! under `fieldValidation=Strict`.

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
    pub warnings: Vec<String>,
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
    let errors = api::validate(&decoded.object);
    if !errors.is_empty() {
        return Err(invalid(res, name, &errors));
    }
    let value = encode(&decoded.object)?;
    Ok(Admitted { value, warnings })
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
