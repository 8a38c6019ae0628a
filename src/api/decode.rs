//! Turning manifest text (YAML or JSON, one or many documents) into typed
//! objects. Unknown fields are not dropped silently: they come back as
//! warnings with their paths, the way kubectl reports them. Type errors name
//! the field; YAML syntax errors name the line and column.

#[cfg(feature = "server")]
use super::agent_release::AgentRelease;
use super::findings::FieldError;
use super::meta::API_VERSION;
use super::types::{Job, Robot, Task, TaskGroup};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Any object of our API group.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
#[allow(clippy::large_enum_variant)] // short-lived; boxing would only add noise
pub enum AnyObject {
    Job(Job),
    TaskGroup(TaskGroup),
    Task(Task),
    Robot(Robot),
    /// Written by the server, steered by operators: not in the agent.
    #[cfg(feature = "server")]
    Rollout(super::rollout::Rollout),
    #[cfg(feature = "server")]
    AgentRelease(AgentRelease),
}

impl AnyObject {
    pub fn kind(&self) -> &'static str {
        match self {
            AnyObject::Job(_) => "Job",
            AnyObject::TaskGroup(_) => "TaskGroup",
            AnyObject::Task(_) => "Task",
            AnyObject::Robot(_) => "Robot",
            #[cfg(feature = "server")]
            AnyObject::Rollout(_) => "Rollout",
            #[cfg(feature = "server")]
            AnyObject::AgentRelease(_) => "AgentRelease",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            AnyObject::Job(o) => o.name(),
            AnyObject::TaskGroup(o) => o.name(),
            AnyObject::Task(o) => o.name(),
            AnyObject::Robot(o) => o.name(),
            #[cfg(feature = "server")]
            AnyObject::Rollout(o) => o.name(),
            #[cfg(feature = "server")]
            AnyObject::AgentRelease(o) => o.name(),
        }
    }
}

/// One document that did not decode.
#[derive(Clone, Debug, PartialEq)]
pub enum DecodeError {
    /// Not well-formed YAML/JSON.
    Syntax {
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
    /// Well-formed, but not one of our objects, or a field has the wrong type.
    Invalid(Vec<FieldError>),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Syntax {
                line: Some(l),
                column: Some(c),
                message,
            } => write!(f, "line {l}, column {c}: {message}"),
            DecodeError::Syntax { message, .. } => f.write_str(message),
            DecodeError::Invalid(errs) => {
                let lines: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
                f.write_str(&lines.join("\n"))
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// A decoded document plus the unknown fields it carried.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded<T> {
    pub object: T,
    pub warnings: Vec<String>,
}

/// Split text into documents and parse each to a JSON value. JSON input
/// (first non-blank character `{` or `[`) goes through serde_json; anything
/// else through the YAML parser. Empty YAML documents are skipped.
pub fn parse_documents(text: &str) -> Vec<Result<serde_json::Value, DecodeError>> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let mut out = Vec::new();
        for value in serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>() {
            match value {
                Ok(v) => out.push(Ok(v)),
                Err(e) => {
                    out.push(Err(DecodeError::Syntax {
                        line: Some(e.line()),
                        column: Some(e.column()),
                        message: e.to_string(),
                    }));
                    break;
                }
            }
        }
        return out;
    }
    if let Some(line) = too_deep(text) {
        return vec![Err(DecodeError::Syntax {
            line: Some(line),
            column: None,
            message: format!("document is nested deeper than {MAX_FLOW_NESTING} levels"),
        })];
    }
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        match serde_json::Value::deserialize(doc) {
            Ok(serde_json::Value::Null) => {}
            Ok(v) => out.push(Ok(v)),
            Err(e) => {
                let loc = e.location();
                let mut message = e.to_string();
                // serde_yaml appends " at line L column C"; we report it separately.
                if let Some(i) = message.find(" at line ") {
                    message.truncate(i);
                }
                out.push(Err(DecodeError::Syntax {
                    line: loc.as_ref().map(|l| l.line()),
                    column: loc.map(|l| l.column()),
                    message,
                }));
                // After a syntax error the parser cannot resynchronise.
                break;
            }
        }
    }
    out
}

/// Deepest `[`/`{` nesting we parse. Real manifests stay far below; the
/// YAML parser's time grows quadratically with flow nesting, so a hostile
/// document is refused before it reaches the parser.
pub const MAX_FLOW_NESTING: usize = 128;

/// The line where flow nesting first exceeds [`MAX_FLOW_NESTING`], if it
/// does. Quoted strings and comments are skipped; a cheap over-approximation
/// is fine because legitimate documents are nowhere near the limit.
fn too_deep(text: &str) -> Option<usize> {
    let (mut depth, mut line) = (0usize, 1usize);
    let mut quote: Option<u8> = None;
    let mut comment = false;
    let mut prev = b' ';
    for &b in text.as_bytes() {
        if b == b'\n' {
            line += 1;
            comment = false;
            // Plain YAML scalars cannot span lines with an open single quote
            // in block context; resetting keeps an odd apostrophe harmless.
            if quote == Some(b'\'') {
                quote = None;
            }
        } else if comment {
        } else if let Some(q) = quote {
            if b == q && prev != b'\\' {
                quote = None;
            }
        } else {
            match b {
                b'"' | b'\'' => quote = Some(b),
                b'#' if prev.is_ascii_whitespace() => comment = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_FLOW_NESTING {
                        return Some(line);
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        prev = b;
    }
    None
}

/// Expand `kind: List` documents (what `kubectl get -o yaml` prints) into items.
fn expand_lists(values: Vec<Result<serde_json::Value, DecodeError>>) -> Vec<Result<serde_json::Value, DecodeError>> {
    let mut out = Vec::new();
    for v in values {
        match v {
            Ok(serde_json::Value::Object(mut map))
                if map
                    .get("kind")
                    .and_then(|k| k.as_str())
                    .is_some_and(|k| k == "List" || k.ends_with("List"))
                    && map.contains_key("items") =>
            {
                if let Some(serde_json::Value::Array(items)) = map.remove("items") {
                    out.extend(items.into_iter().map(Ok));
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Decode every document in `text` into one of our objects.
pub fn decode_all(text: &str) -> Vec<Result<Decoded<AnyObject>, DecodeError>> {
    expand_lists(parse_documents(text))
        .into_iter()
        .map(|v| v.and_then(decode_value))
        .collect()
}

/// Decode one JSON value into the object its `apiVersion`/`kind` names.
pub fn decode_value(value: serde_json::Value) -> Result<Decoded<AnyObject>, DecodeError> {
    let invalid = |field: &str, message: String| DecodeError::Invalid(vec![FieldError::new(field, message)]);
    let map = value
        .as_object()
        .ok_or_else(|| invalid("", "expected an object with apiVersion, kind, metadata and spec".into()))?;
    let api_version = map.get("apiVersion").and_then(|v| v.as_str()).unwrap_or("");
    let kind = map.get("kind").and_then(|v| v.as_str()).unwrap_or("");
    if api_version != API_VERSION {
        return Err(invalid(
            "apiVersion",
            format!("{api_version:?} is not supported (expected {API_VERSION:?})"),
        ));
    }
    match kind {
        "Job" => decode_typed::<Job>(value).map(|d| d.map(AnyObject::Job)),
        "TaskGroup" => decode_typed::<TaskGroup>(value).map(|d| d.map(AnyObject::TaskGroup)),
        "Task" => decode_typed::<Task>(value).map(|d| d.map(AnyObject::Task)),
        "Robot" => decode_typed::<Robot>(value).map(|d| d.map(AnyObject::Robot)),
        #[cfg(feature = "server")]
        "Rollout" => decode_typed::<super::rollout::Rollout>(value).map(|d| d.map(AnyObject::Rollout)),
        #[cfg(feature = "server")]
        "AgentRelease" => decode_typed::<AgentRelease>(value).map(|d| d.map(AnyObject::AgentRelease)),
        "" => Err(invalid("kind", "is required".into())),
        other => Err(invalid(
            "kind",
            format!("{other:?} is not a kind of {API_VERSION} (expected Job, TaskGroup, Task, Robot or AgentRelease)"),
        )),
    }
}

impl<T> Decoded<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Decoded<U> {
        Decoded {
            object: f(self.object),
            warnings: self.warnings,
        }
    }
}

/// Deserialize a value into `T`, collecting unknown fields as warnings and
/// naming the field of a type error.
pub fn decode_typed<T: DeserializeOwned>(value: serde_json::Value) -> Result<Decoded<T>, DecodeError> {
    let mut warnings = Vec::new();
    let mut on_unknown =
        |path: serde_ignored::Path<'_>| warnings.push(format!("unknown field \"{}\"", ignored_path(&path)));
    // A trait object, not the closure's own type: the deserializer type is
    // then the same for every T, so the (large) serde code for the nested
    // API types is generated once instead of once per kind.
    let mut on_unknown: &mut dyn FnMut(serde_ignored::Path<'_>) = &mut on_unknown;
    let ignored = serde_ignored::Deserializer::new(value, &mut on_unknown);
    match serde_path_to_error::deserialize::<_, T>(ignored) {
        Ok(object) => Ok(Decoded { object, warnings }),
        Err(e) => {
            let field = e.path().to_string();
            let field = if field == "." { String::new() } else { field };
            Err(DecodeError::Invalid(vec![FieldError::new(
                &field,
                e.into_inner().to_string(),
            )]))
        }
    }
}

fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => {
            let p = ignored_path(parent);
            if p.is_empty() {
                key.clone()
            } else {
                format!("{p}.{key}")
            }
        }
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => {
            ignored_path(parent)
        }
    }
}
