//! JSON Schemas of the types whose serde form is written by hand (server
//! builds only: they feed the OpenAPI document `kubectl explain` reads).

use super::types::RobotSelector;
use super::units::{Duration, Quantity};
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use std::borrow::Cow;

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration such as 30s, 5m, 1h30m or 250ms (a bare number means seconds).",
        })
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> Cow<'static, str> {
        "Quantity".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A Kubernetes quantity such as 512Mi, 2Gi, 500m or 2.",
            "x-kubernetes-int-or-string": true,
        })
    }
}

impl JsonSchema for RobotSelector {
    fn schema_name() -> Cow<'static, str> {
        "RobotSelector".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let requirement = generator.subschema_for::<super::types::LabelSelectorRequirement>();
        json_schema!({
            "type": "object",
            "description": "Which robots may run the Job: a plain label map ({env: prod}, the original form) or a Kubernetes LabelSelector (matchLabels, matchExpressions).",
            "properties": {
                "matchLabels": {"type": "object", "additionalProperties": {"type": "string"},
                    "description": "Labels a robot must all have, with these values."},
                "matchExpressions": {"type": "array", "items": requirement,
                    "description": "Requirements a robot's labels must all meet (In, NotIn, Exists, DoesNotExist)."},
            },
            "additionalProperties": {"type": "string"},
        })
    }
}
