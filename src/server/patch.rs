//! The patch formats of PATCH: JSON merge patch (RFC 7386, what `kubectl
//! apply` sends for our kinds: objects merge recursively, `null` deletes,
//! anything else replaces) and JSON patch (RFC 6902, `kubectl patch
//! --type=json`: a list of add/remove/replace/move/copy/test operations on
//! JSON pointers, all applied or none). Written here rather than taken from
//! a crate: the applier is a hundred lines and needs only serde_json.

use serde_json::Value;

/// Apply an RFC 6902 JSON patch to `doc`; the patched document, or why the
/// patch does not apply (naming the operation and its path). `doc` itself
/// is left as it was either way.
pub fn json_patch(doc: &Value, patch: &Value) -> Result<Value, String> {
    let ops = patch
        .as_array()
        .ok_or("a JSON patch must be a JSON array of operations")?;
    let mut out = doc.clone();
    for (i, op) in ops.iter().enumerate() {
        apply_op(&mut out, op).map_err(|e| format!("JSON patch operation {i}: {e}"))?;
    }
    Ok(out)
}

fn member<'a>(op: &'a Value, name: &str) -> Result<&'a Value, String> {
    op.get(name).ok_or_else(|| format!("\"{name}\" is missing"))
}

fn pointer_member<'a>(op: &'a Value, name: &str) -> Result<&'a str, String> {
    let p = member(op, name)?
        .as_str()
        .ok_or_else(|| format!("\"{name}\" is not a string"))?;
    if !p.is_empty() && !p.starts_with('/') {
        return Err(format!("{name} {p:?} is not a JSON pointer (it must start with /)"));
    }
    Ok(p)
}

fn apply_op(doc: &mut Value, op: &Value) -> Result<(), String> {
    let name = member(op, "op")?.as_str().ok_or("\"op\" is not a string")?;
    let path = pointer_member(op, "path")?;
    match name {
        "add" => add(doc, path, member(op, "value")?.clone()),
        "remove" => remove(doc, path).map(drop),
        "replace" => {
            let target = doc
                .pointer_mut(path)
                .ok_or_else(|| format!("replace: {path} does not exist"))?;
            *target = member(op, "value")?.clone();
            Ok(())
        }
        "move" => {
            let from = pointer_member(op, "from")?;
            if path.starts_with(from) && path[from.len()..].starts_with('/') {
                return Err(format!("move: {from} cannot move into its own child {path}"));
            }
            let v = remove(doc, from)?;
            add(doc, path, v)
        }
        "copy" => {
            let from = pointer_member(op, "from")?;
            let v = doc
                .pointer(from)
                .ok_or_else(|| format!("copy: {from} does not exist"))?
                .clone();
            add(doc, path, v)
        }
        "test" => {
            let want = member(op, "value")?;
            match doc.pointer(path) {
                Some(got) if got == want => Ok(()),
                Some(got) => Err(format!("test: {path} is {got}, not {want}")),
                None => Err(format!("test: {path} does not exist")),
            }
        }
        other => Err(format!(
            "unknown op {other:?} (expected add, remove, replace, move, copy or test)"
        )),
    }
}

/// The parent of `path` and its last reference token, unescaped (RFC 6901).
fn split(path: &str) -> (&str, String) {
    let at = path.rfind('/').unwrap_or(0);
    let token = path[at..].trim_start_matches('/');
    (&path[..at], token.replace("~1", "/").replace("~0", "~"))
}

/// An array index as RFC 6901 writes one: digits, no leading zero.
fn index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    (digits && (token == "0" || !token.starts_with('0')))
        .then(|| token.parse().ok())
        .flatten()
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, token) = split(path);
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(token, value);
            Ok(())
        }
        Some(Value::Array(items)) => {
            let at = if token == "-" { Some(items.len()) } else { index(&token) };
            match at {
                Some(i) if i <= items.len() => {
                    items.insert(i, value);
                    Ok(())
                }
                _ => Err(format!(
                    "add: {path}: no index {token:?} in an array of {}",
                    items.len()
                )),
            }
        }
        Some(_) => Err(format!("add: the parent of {path} is neither an object nor an array")),
        None => Err(format!("add: the parent of {path} does not exist")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    if path.is_empty() {
        return Err("remove: the whole document cannot be removed".into());
    }
    let (parent, token) = split(path);
    let removed = match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => map.remove(&token),
        Some(Value::Array(items)) => index(&token).filter(|i| *i < items.len()).map(|i| items.remove(i)),
        _ => None,
    };
    removed.ok_or_else(|| format!("remove: {path} does not exist"))
}

pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    if let Value::Object(map) = target {
        for (k, v) in patch_map {
            if v.is_null() {
                map.remove(k);
            } else {
                merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The examples of RFC 7386, appendix A.
    #[test]
    fn rfc7386_examples() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (json!({"a":"b","b":"c"}), json!({"a":null}), json!({"b":"c"})),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (json!({}), json!({"a":{"bb":{"ccc":null}}}), json!({"a":{"bb":{}}})),
        ];
        for (mut target, patch, want) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, want, "patch {patch}");
        }
    }

    fn patched(doc: Value, ops: Value) -> Result<Value, String> {
        json_patch(&doc, &ops)
    }

    /// Each operation, with examples after RFC 6902 appendix A.
    #[test]
    fn rfc6902_operations() {
        let doc = json!({"foo": "bar", "baz": [1, 2], "a/b": 1, "m~n": 2});
        let ok = |ops: Value| patched(doc.clone(), ops).unwrap();
        assert_eq!(
            ok(json!([{"op": "add", "path": "/x", "value": {"y": 1}}]))["x"],
            json!({"y": 1})
        );
        assert_eq!(
            ok(json!([{"op": "add", "path": "/baz/1", "value": 9}]))["baz"],
            json!([1, 9, 2])
        );
        assert_eq!(
            ok(json!([{"op": "add", "path": "/baz/-", "value": 3}]))["baz"],
            json!([1, 2, 3])
        );
        assert_eq!(ok(json!([{"op": "add", "path": "", "value": [1]}])), json!([1]));
        assert_eq!(ok(json!([{"op": "remove", "path": "/baz/0"}]))["baz"], json!([2]));
        assert!(
            ok(json!([{"op": "remove", "path": "/a~1b"}])).get("a/b").is_none(),
            "~1 is /"
        );
        assert_eq!(
            ok(json!([{"op": "replace", "path": "/m~0n", "value": 5}]))["m~n"],
            5,
            "~0 is ~"
        );
        let moved = ok(json!([{"op": "move", "from": "/foo", "path": "/qux"}]));
        assert_eq!((moved.get("foo"), &moved["qux"]), (None, &json!("bar")));
        let copied = ok(json!([{"op": "copy", "from": "/baz", "path": "/c"}]));
        assert_eq!((&copied["baz"], &copied["c"]), (&json!([1, 2]), &json!([1, 2])));
        assert_eq!(ok(json!([{"op": "test", "path": "/baz", "value": [1, 2]}])), doc);
    }

    #[test]
    fn a_failing_operation_applies_nothing_and_says_why() {
        let doc = json!({"foo": "bar", "baz": [1, 2]});
        let cases = [
            (
                json!([{"op": "add", "path": "/n", "value": 1}, {"op": "test", "path": "/foo", "value": "x"}]),
                "test: /foo is \"bar\"",
            ),
            (
                json!([{"op": "test", "path": "/nope", "value": 1}]),
                "/nope does not exist",
            ),
            (
                json!([{"op": "replace", "path": "/nope", "value": 1}]),
                "replace: /nope does not exist",
            ),
            (
                json!([{"op": "remove", "path": "/baz/2"}]),
                "remove: /baz/2 does not exist",
            ),
            (json!([{"op": "add", "path": "/baz/3", "value": 1}]), "no index \"3\""),
            (json!([{"op": "add", "path": "/baz/01", "value": 1}]), "no index \"01\""),
            (
                json!([{"op": "add", "path": "/a/b", "value": 1}]),
                "parent of /a/b does not exist",
            ),
            (json!([{"op": "move", "from": "/baz", "path": "/baz/0"}]), "own child"),
            (
                json!([{"op": "copy", "from": "/x", "path": "/y"}]),
                "copy: /x does not exist",
            ),
            (json!([{"op": "frob", "path": "/foo"}]), "unknown op \"frob\""),
            (json!([{"op": "add", "path": "foo", "value": 1}]), "not a JSON pointer"),
            (json!([{"op": "add", "path": "/foo"}]), "\"value\" is missing"),
            (json!({"op": "add"}), "JSON array"),
        ];
        for (ops, want) in cases {
            let err = patched(doc.clone(), ops.clone()).unwrap_err();
            assert!(err.contains(want), "{ops}: {err:?} lacks {want:?}");
        }
    }
}
