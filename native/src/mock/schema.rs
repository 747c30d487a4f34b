//! The smallest JSON value that fits a JSON schema: what the mock answers with for structured
//! output (`response_format` / `output_config.format`) and as a tool call's arguments.
//!
//! The rule, per schema: `const` → it; `enum` → its first value; `$ref` (`#/$defs/...`,
//! `#/definitions/...`) → the referenced schema; `anyOf`/`oneOf` → the first branch that is not
//! `{"type": "null"}`; `allOf` → the merged branches. Then by `type` (the first non-null one of
//! a list; inferred as object from `properties`/`required`, as array from `items`):
//! - object: every `required` property, filled by its own schema (other properties left out);
//! - array: `minItems` items (0 by default) made from `items` (or `prefixItems`);
//! - string: a value for a known `format` (`date`, `date-time`, `time`, `email`, `uri`,
//!   `uuid`, ...), else `minLength` times `"x"` (so `""` by default);
//! - integer and number: 0, moved into `minimum`/`maximum`/`exclusive*` bounds and onto a
//!   `multipleOf`;
//! - boolean: `false`; null: `null`; no type at all: `null`.
//!
//! References and nesting deeper than 32 levels end in `null`.

use serde_json::{json, Map, Value};

/// The smallest instance of `schema` (see the module documentation).
pub(crate) fn minimal_instance(schema: &Value) -> Value {
    instance(schema, schema, 0)
}

const MAX_DEPTH: usize = 32;

fn instance(schema: &Value, root: &Value, depth: usize) -> Value {
    let Value::Object(s) = schema else {
        // `true` (anything goes) and `false` (nothing does) have no better answer.
        return Value::Null;
    };
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    if let Some(value) = s.get("const") {
        return value.clone();
    }
    if let Some(Value::Array(values)) = s.get("enum") {
        if let Some(first) = values.first() {
            return first.clone();
        }
    }
    if let Some(Value::String(reference)) = s.get("$ref") {
        return match resolve(root, reference) {
            Some(target) => instance(target, root, depth + 1),
            None => Value::Null,
        };
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(branches)) = s.get(key) {
            let branch = branches
                .iter()
                .find(|b| b.get("type").and_then(Value::as_str) != Some("null"))
                .or(branches.first());
            if let Some(branch) = branch {
                return instance(branch, root, depth + 1);
            }
        }
    }
    if let Some(Value::Array(branches)) = s.get("allOf") {
        let mut merged = s.clone();
        merged.remove("allOf");
        for branch in branches {
            if let Value::Object(b) = branch {
                merge(&mut merged, b);
            }
        }
        return instance(&Value::Object(merged), root, depth + 1);
    }
    match schema_type(s) {
        Some("object") => object(s, root, depth),
        Some("array") => array(s, root, depth),
        Some("string") => string(s),
        Some("integer") => number(s, true),
        Some("number") => number(s, false),
        Some("boolean") => Value::Bool(false),
        _ => Value::Null,
    }
}

/// The schema's type: `type` (the first non-null one of a list), else inferred.
fn schema_type(s: &Map<String, Value>) -> Option<&str> {
    match s.get("type") {
        Some(Value::String(t)) => Some(t),
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .or(Some("null")),
        _ if s.contains_key("properties") || s.contains_key("required") => Some("object"),
        _ if s.contains_key("items") || s.contains_key("prefixItems") => Some("array"),
        _ => None,
    }
}

/// Resolves a local reference (`#`, `#/$defs/name`, `#/definitions/name`, any JSON pointer).
fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    root.pointer(pointer)
}

/// Merges `branch` into `into`: properties and required lists add up, other keys are set.
fn merge(into: &mut Map<String, Value>, branch: &Map<String, Value>) {
    for (key, value) in branch {
        match (key.as_str(), into.get_mut(key), value) {
            ("properties", Some(Value::Object(mine)), Value::Object(theirs)) => {
                mine.extend(theirs.clone());
            }
            ("required", Some(Value::Array(mine)), Value::Array(theirs)) => {
                mine.extend(theirs.iter().cloned());
            }
            _ => {
                into.insert(key.clone(), value.clone());
            }
        }
    }
}

fn object(s: &Map<String, Value>, root: &Value, depth: usize) -> Value {
    let properties = s.get("properties").and_then(Value::as_object);
    let mut out = Map::new();
    for name in s
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let value = match properties.and_then(|p| p.get(name)) {
            Some(property) => instance(property, root, depth + 1),
            // Required but not described: anything fits; a string reads best.
            None => Value::String(String::new()),
        };
        out.insert(name.to_string(), value);
    }
    Value::Object(out)
}

fn array(s: &Map<String, Value>, root: &Value, depth: usize) -> Value {
    let min = s
        .get("minItems")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        .min(64) as usize;
    let prefix = s.get("prefixItems").and_then(Value::as_array);
    let items = (0..min)
        .map(|i| match prefix.and_then(|p| p.get(i)) {
            Some(item) => instance(item, root, depth + 1),
            None => s
                .get("items")
                .map_or(Value::Null, |item| instance(item, root, depth + 1)),
        })
        .collect();
    Value::Array(items)
}

fn string(s: &Map<String, Value>) -> Value {
    let format = s.get("format").and_then(Value::as_str).unwrap_or_default();
    let known = match format {
        "date" => Some("1970-01-01"),
        "date-time" => Some("1970-01-01T00:00:00Z"),
        "time" => Some("00:00:00Z"),
        "duration" => Some("P0D"),
        "email" | "idn-email" => Some("user@example.com"),
        "hostname" | "idn-hostname" => Some("example.com"),
        "ipv4" => Some("127.0.0.1"),
        "ipv6" => Some("::1"),
        "uri" | "iri" | "url" => Some("https://example.com"),
        "uri-reference" | "iri-reference" => Some("/"),
        "uuid" => Some("00000000-0000-0000-0000-000000000000"),
        _ => None,
    };
    if let Some(value) = known {
        return json!(value);
    }
    let min = s
        .get("minLength")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        .min(1024) as usize;
    Value::String("x".repeat(min))
}

fn number(s: &Map<String, Value>, integer: bool) -> Value {
    let bound = |key: &str| s.get(key).and_then(Value::as_f64);
    let step = if integer { 1.0 } else { 0.5 };
    let mut value: f64 = 0.0;
    if let Some(min) = bound("minimum") {
        value = value.max(min);
    }
    if let Some(min) = bound("exclusiveMinimum") {
        if value <= min {
            value = if integer {
                min.floor() + 1.0
            } else {
                min + step
            };
        }
    }
    if let Some(max) = bound("maximum") {
        value = value.min(max);
    }
    if let Some(max) = bound("exclusiveMaximum") {
        if value >= max {
            value = if integer {
                max.ceil() - 1.0
            } else {
                max - step
            };
        }
    }
    if let Some(multiple) = bound("multipleOf").filter(|m| *m > 0.0) {
        let up = (value / multiple).ceil() * multiple;
        let below_max = bound("maximum").is_none_or(|max| up <= max)
            && bound("exclusiveMaximum").is_none_or(|max| up < max);
        value = if below_max {
            up
        } else {
            (value / multiple).floor() * multiple
        };
    }
    let value = if integer { value.ceil() } else { value };
    // A whole number is written as one (`0`, not `0.0`): valid for `number` too.
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        return json!(value as i64);
    }
    json!(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_properties_are_filled_by_type() {
        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer", "minimum": 18},
                "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "ok": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
                "kind": {"type": "string", "enum": ["cat", "dog"]},
                "when": {"type": "string", "format": "date-time"},
                "nick": {"type": ["string", "null"], "minLength": 3},
                "optional": {"type": "string"},
                "address": {"$ref": "#/$defs/address"},
                "either": {"anyOf": [{"type": "null"}, {"type": "integer", "const": 7}]}
            },
            "required": ["name", "age", "score", "ok", "tags", "kind", "when", "nick", "address", "either"],
            "additionalProperties": false,
            "$defs": {"address": {"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"]}}
        });
        assert_eq!(
            minimal_instance(&schema),
            json!({
                "name": "", "age": 18, "score": 0.5, "ok": false, "tags": ["", ""],
                "kind": "cat", "when": "1970-01-01T00:00:00Z", "nick": "xxx",
                "address": {"city": ""}, "either": 7
            })
        );
    }

    #[test]
    fn odd_schemas_still_give_an_answer() {
        assert_eq!(minimal_instance(&json!({})), Value::Null);
        assert_eq!(minimal_instance(&json!(true)), Value::Null);
        assert_eq!(
            minimal_instance(&json!({"required": ["a"]})),
            json!({"a": ""})
        );
        let merged = json!({"allOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            {"properties": {"b": {"type": "boolean"}}, "required": ["b"]}
        ]});
        assert_eq!(minimal_instance(&merged), json!({"a": 0, "b": false}));
        // A schema that refers to itself ends instead of recursing forever.
        let looped = json!({"$ref": "#"});
        assert_eq!(minimal_instance(&looped), Value::Null);
        let bounded = json!({"type": "integer", "maximum": -3, "multipleOf": 2});
        assert_eq!(minimal_instance(&bounded), json!(-4));
        let tuple = json!({"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "minItems": 2});
        assert_eq!(minimal_instance(&tuple), json!([0, ""]));
    }
}
