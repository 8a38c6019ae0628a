//! Label and field selectors, as `kubectl -l` / `--field-selector` send them.

use serde_json::{Map, Value};

#[derive(Clone, Debug, PartialEq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// `app=web,tier!=db,env in (a,b),!legacy` — every requirement must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector(Vec<LabelReq>);

/// Split at commas that are not inside parentheses.
fn split_top(text: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("unbalanced ')' in {text:?}"));
                }
            }
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced '(' in {text:?}"));
    }
    out.push(&text[start..]);
    Ok(out.into_iter().map(str::trim).filter(|s| !s.is_empty()).collect())
}

fn check_key(k: &str) -> Result<String, String> {
    let ok = !k.is_empty() && k.len() <= 317 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
    if ok {
        Ok(k.to_string())
    } else {
        Err(format!("invalid label key {k:?}"))
    }
}

fn set_values(text: &str) -> Result<Vec<String>, String> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("expected (v1,v2) after in/notin, found {text:?}"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in split_top(text)? {
            let req = if let Some(k) = part.strip_prefix('!') {
                LabelReq::NotExists(check_key(k.trim())?)
            } else if let Some((k, v)) = part.split_once("!=") {
                LabelReq::NotEq(check_key(k.trim())?, v.trim().to_string())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                LabelReq::Eq(check_key(k.trim())?, v.trim().to_string())
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                LabelReq::NotIn(check_key(k.trim())?, set_values(rest)?)
            } else if let Some((k, rest)) = part.split_once(" in ") {
                LabelReq::In(check_key(k.trim())?, set_values(rest)?)
            } else {
                LabelReq::Exists(check_key(part)?)
            };
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
        })
    }
}

/// `metadata.name=x,spec.targetRobot!=r1`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `supported` says which field paths may be used.
    pub fn parse(text: &str, supported: impl Fn(&str) -> bool) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in split_top(text)? {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid field selector {part:?} (expected field=value or field!=value)"
                ));
            };
            let field = field.trim();
            if !supported(field) {
                return Err(format!("field label not supported: {field}"));
            }
            reqs.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0
            .iter()
            .all(|(f, equal, v)| (crate::server::object::field_string(obj, f) == *v) == *equal)
    }

    /// The value required for `field` by an `=` requirement, if any (lets
    /// callers narrow a scan, e.g. by robot).
    pub fn required(&self, field: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, eq, _)| f == field && *eq)
            .map(|(_, _, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn label_selectors() {
        let l = labels(json!({"app": "web", "env": "prod"}));
        let t = |s: &str| LabelSelector::parse(s).unwrap().matches(Some(&l));
        assert!(t("app=web"));
        assert!(t("app==web,env"));
        assert!(!t("app!=web"));
        assert!(t("env in (prod, dev)"));
        assert!(!t("env notin (prod)"));
        assert!(t("!legacy"));
        assert!(!t("legacy"));
        assert!(t(""));
        assert!(LabelSelector::parse("env in (a").is_err());
        assert!(LabelSelector::parse("bad key=1").is_err());
    }

    #[test]
    fn field_selectors() {
        let o = json!({"metadata": {"name": "a"}, "spec": {"targetRobot": "r1"}});
        let all = |_: &str| true;
        assert!(FieldSelector::parse("metadata.name=a", all).unwrap().matches(&o));
        assert!(FieldSelector::parse("spec.targetRobot!=r2", all).unwrap().matches(&o));
        assert!(!FieldSelector::parse("metadata.name=b", all).unwrap().matches(&o));
        assert!(FieldSelector::parse("spec.x=1", |f| f == "metadata.name").is_err());
        assert_eq!(
            FieldSelector::parse("spec.targetRobot=r1", all)
                .unwrap()
                .required("spec.targetRobot"),
            Some("r1")
        );
    }
}
