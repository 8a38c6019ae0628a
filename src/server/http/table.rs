//! Server-side printing: `meta.k8s.io/v1 Table` for `kubectl get`.

use crate::server::object;
use crate::server::resources::{ColumnKind, Resource};
use crate::server::time;
use serde_json::{json, Value};

pub const CONTENT_TYPE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

/// What `includeObject` asked rows to carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Include {
    None,
    #[default]
    Metadata,
    Object,
}

impl Include {
    pub fn parse(text: Option<&str>) -> Self {
        match text {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

/// Does the Accept header ask for a Table?
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| first.contains("as=Table"))
}

pub fn column_definitions(res: &Resource) -> Value {
    let mut cols = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace.",
    })];
    for c in res.columns {
        cols.push(json!({
            "name": c.name,
            "type": c.kind.openapi_type(),
            "format": if c.kind == ColumnKind::Age { "date" } else { "" },
            "priority": c.priority,
            "description": c.description,
        }));
    }
    Value::Array(cols)
}

fn cell(v: &Value, kind: ColumnKind, path: &str, now: i64) -> Value {
    match (kind, object::lookup(v, path)) {
        (_, None | Some(Value::Null)) => Value::Null,
        (ColumnKind::Age, Some(Value::String(ts))) => match time::parse_rfc3339(ts) {
            Some(t) => Value::String(time::human_age(now - t)),
            None => Value::String(ts.clone()),
        },
        (_, Some(x)) => x.clone(),
    }
}

pub fn row(res: &Resource, v: &Value, include: Include, now: i64) -> Value {
    let mut cells = vec![Value::String(object::name(v).to_string())];
    cells.extend(res.columns.iter().map(|c| cell(v, c.kind, c.path, now)));
    let mut r = json!({"cells": cells});
    match include {
        Include::None => {}
        Include::Metadata => {
            r["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": v.get("metadata").cloned().unwrap_or(Value::Null),
            })
        }
        Include::Object => r["object"] = v.clone(),
    }
    r
}

/// A Table of `items`. Column definitions are left out when `headers` is
/// false (watch events after the first, as the API server does).
pub fn table<'a>(
    res: &Resource,
    items: impl IntoIterator<Item = &'a Value>,
    include: Include,
    headers: bool,
    list_meta: Value,
) -> Value {
    let now = time::now_unix();
    let rows: Vec<Value> = items.into_iter().map(|v| row(res, v, include, now)).collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": if headers { column_definitions(res) } else { Value::Array(vec![]) },
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::resources::TASKS;

    #[test]
    fn task_rows_follow_the_columns() {
        let t = json!({"metadata": {"name": "j-g-r0-t", "creationTimestamp": time::format_rfc3339(time::now_unix() - 30)},
                       "spec": {"jobName": "j", "targetRobot": "r1"}, "status": {"state": "running", "exitCode": 0}});
        let row = row(&TASKS, &t, Include::Metadata, time::now_unix());
        let cells = row["cells"].as_array().unwrap();
        assert_eq!(cells[0], "j-g-r0-t");
        assert_eq!(cells[1], "j");
        assert_eq!(cells[2], "r1");
        assert_eq!(cells[3], "running");
        assert_eq!(cells[4], 0);
        assert_eq!(cells[5], Value::Null, "missing restarts");
        assert!(cells[6].as_str().unwrap().ends_with('s'));
        assert_eq!(row["object"]["metadata"]["name"], "j-g-r0-t");
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }
}
