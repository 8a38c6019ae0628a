//! A tiny placeholder filler for the JSON templates in `templates/`.
//!
//! A template is JSON plus whole-line comments: a line whose first
//! non-blank characters are `//` says why a setting is there and is dropped
//! before filling ([`strip_comments`]). Placeholders live inside strings:
//! - `{{name}}` anywhere inside a JSON string is replaced by the value,
//!   escaped as JSON string content (so a hostile name cannot break out);
//! - `"{{raw:name}}"` (the whole string, quotes included) is replaced by a
//!   pre-rendered JSON fragment: a number, an object, a list, `null`.
//!
//! Every placeholder must be given and every given value must be used, so a
//! typo fails loudly in tests instead of producing a silently wrong config.

use std::fmt;

/// A value for one placeholder.
#[derive(Clone, Debug, PartialEq)]
pub enum Slot {
    /// Plain text, escaped into a JSON string.
    Text(String),
    /// A JSON fragment inserted as is (the caller made it).
    Json(String),
}

impl Slot {
    pub fn text(s: impl Into<String>) -> Slot {
        Slot::Text(s.into())
    }
    pub fn json(s: impl Into<String>) -> Slot {
        Slot::Json(s.into())
    }
    pub fn number(n: impl Into<u64>) -> Slot {
        Slot::Json(n.into().to_string())
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum RenderError {
    /// `{{` without a matching `}}`.
    Unclosed { template: &'static str, offset: usize },
    /// A placeholder with no value.
    Missing { template: &'static str, name: String },
    /// A value no placeholder asked for.
    Unused { template: &'static str, name: String },
    /// `raw:` placeholder given text, or a text placeholder given JSON, or a
    /// `raw:` placeholder that is not a whole JSON string.
    Kind { template: &'static str, name: String },
    /// The filled template is not JSON (a fragment was malformed).
    NotJson { template: &'static str, error: String },
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenderError::Unclosed { template, offset } => {
                write!(f, "template {template}: unclosed placeholder at byte {offset}")
            }
            RenderError::Missing { template, name } => write!(f, "template {template}: no value for {{{{{name}}}}}"),
            RenderError::Unused { template, name } => {
                write!(f, "template {template}: value {name:?} is not used by the template")
            }
            RenderError::Kind { template, name } => {
                write!(
                    f,
                    "template {template}: placeholder {name:?} used with the wrong kind of value"
                )
            }
            RenderError::NotJson { template, error } => {
                write!(f, "template {template}: result is not valid JSON: {error}")
            }
        }
    }
}

impl std::error::Error for RenderError {}

/// A named template (the name only appears in errors).
#[derive(Clone, Copy, Debug)]
pub struct Template {
    pub name: &'static str,
    pub text: &'static str,
}

/// Fill `template` with `vars` and check that the result is JSON.
pub fn fill(template: Template, vars: &[(&str, Slot)]) -> Result<String, RenderError> {
    let stripped = strip_comments(template.text);
    let src = stripped.as_str();
    let mut out = String::with_capacity(src.len() + 256);
    let mut used = vec![false; vars.len()];
    let mut rest = src;
    while let Some(start) = rest.find("{{") {
        let offset = src.len() - rest.len() + start;
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or(RenderError::Unclosed {
            template: template.name,
            offset,
        })?;
        let key = after[..end].trim();
        let (raw, name) = match key.strip_prefix("raw:") {
            Some(n) => (true, n),
            None => (false, key),
        };
        let index = vars
            .iter()
            .position(|(n, _)| *n == name)
            .ok_or_else(|| RenderError::Missing {
                template: template.name,
                name: name.to_string(),
            })?;
        used[index] = true;
        let kind_error = || RenderError::Kind {
            template: template.name,
            name: name.to_string(),
        };
        let mut before = &rest[..start];
        let mut tail = &after[end + 2..];
        match (&vars[index].1, raw) {
            (Slot::Text(value), false) => {
                out.push_str(before);
                escape_into(&mut out, value);
            }
            (Slot::Json(fragment), true) => {
                // The placeholder must be a whole string: drop its quotes.
                before = before.strip_suffix('"').ok_or_else(kind_error)?;
                tail = tail.strip_prefix('"').ok_or_else(kind_error)?;
                out.push_str(before);
                out.push_str(fragment);
            }
            _ => return Err(kind_error()),
        }
        rest = tail;
    }
    out.push_str(rest);
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(RenderError::Unused {
            template: template.name,
            name: vars[i].0.to_string(),
        });
    }
    serde_json::from_str::<serde::de::IgnoredAny>(&out).map_err(|e| RenderError::NotJson {
        template: template.name,
        error: e.to_string(),
    })?;
    Ok(out)
}

/// `text` without its comment lines (first non-blank characters `//`).
/// JSON has no comments and a `//` can only start a line inside a string
/// that spans lines, which JSON does not allow either, so this never drops
/// data.
pub fn strip_comments(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Escape `s` as the content of a JSON string (RFC 8259 §7).
fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

/// A JSON string literal (quotes included) for building fragments by hand.
pub fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    escape_into(&mut out, s);
    out.push('"');
    out
}

/// A JSON list of already-rendered fragments.
pub fn list(items: &[String]) -> String {
    format!("[{}]", items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Template = Template {
        name: "t",
        text: r#"{"a": "x-{{name}}-y", "n": "{{raw:n}}"}"#,
    };

    #[test]
    fn fills_text_and_raw() {
        let s = fill(T, &[("name", Slot::text("q\"\\\n")), ("n", Slot::number(7u16))]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["a"], "x-q\"\\\n-y");
        assert_eq!(v["n"], 7);
    }

    #[test]
    fn reports_missing_unused_and_wrong_kind() {
        assert!(matches!(
            fill(T, &[("name", Slot::text("a"))]),
            Err(RenderError::Missing { name, .. }) if name == "n"
        ));
        assert!(matches!(
            fill(T, &[("name", Slot::text("a")), ("n", Slot::number(1u8)), ("extra", Slot::text(""))]),
            Err(RenderError::Unused { name, .. }) if name == "extra"
        ));
        assert!(matches!(
            fill(T, &[("name", Slot::json("1")), ("n", Slot::number(1u8))]),
            Err(RenderError::Kind { .. })
        ));
        let partial = Template {
            name: "p",
            text: r#"{"a": "x{{raw:n}}"}"#,
        };
        assert!(matches!(
            fill(partial, &[("n", Slot::json("1"))]),
            Err(RenderError::Kind { .. })
        ));
        let unclosed = Template {
            name: "u",
            text: r#"{"a": "{{n"}"#,
        };
        assert!(matches!(fill(unclosed, &[]), Err(RenderError::Unclosed { .. })));
    }

    #[test]
    fn rejects_malformed_fragments() {
        assert!(matches!(
            fill(T, &[("name", Slot::text("a")), ("n", Slot::json("{"))]),
            Err(RenderError::NotJson { .. })
        ));
    }

    #[test]
    fn comment_lines_are_dropped() {
        let commented = Template {
            name: "c",
            text: "{\n  // why: a reason\n  \"a\": \"{{v}}\"\n}",
        };
        let s = fill(commented, &[("v", Slot::text("//x"))]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["a"], "//x");
    }

    #[test]
    fn quoted_escapes_control_characters() {
        assert_eq!(quoted("a\u{1}\"b"), r#""a\u0001\"b""#);
    }
}
