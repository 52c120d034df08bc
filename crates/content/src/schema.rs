//! JSON value validation by socket kind (gc-protocol.md §3.7), with the platform's error texts.
//!
//! The platform validates every JSON value against a draft-07 schema per socket kind with
//! python-jsonschema and reports the first error as
//! `JSON does not fulfill schema: instance <message without the instance's own text>`
//! (it strips `str(instance) + " "` from jsonschema's message, so `5` against `integer` becomes
//! `instance is not of type 'string'` while `"abc"` keeps its quotes: `instance 'abc' is not of type
//! 'integer'`). This module holds the built-in schemas as JSON (one table, annotation kinds
//! generated from one description each) and a small draft-07 evaluator for the keywords they use,
//! producing jsonschema's messages with Python reprs.
//!
//! Decisions: `integer` accepts `1.0`, as draft-07 and python-jsonschema do; booleans are never
//! numbers; `null` is refused for every kind, also where the kind's schema would accept it
//! (Anything, unknown kinds), because the platform never stores a null value.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::{Map, Value, json};

/// Check `value` against the built-in schema of the socket kind (its label, e.g. `"Integer"`).
/// The error is the full message the platform puts under `__all__`, starting with
/// `"JSON does not fulfill schema: instance "`.
pub fn validate_value(kind: &str, value: &serde_json::Value) -> Result<(), String> {
    if let Some(schema) = builtin_schema(kind) {
        validate_against(schema, value)?;
    }
    if value.is_null() {
        return Err(platform_message(
            &format!(
                "{} should not be valid under {{'type': 'null'}}",
                py_repr(value)
            ),
            value,
        ));
    }
    Ok(())
}

/// The built-in schema for a socket kind, by label (case-insensitive) or internal code.
/// `None` for kinds without a JSON value (images, files) and unknown kinds.
pub fn builtin_schema(kind: &str) -> Option<&'static Value> {
    let key = kind.trim().to_ascii_lowercase();
    SCHEMAS.get(key.as_str())
}

/// Validate `value` against any schema built from the supported keywords; the error is the
/// platform's message for the first failure.
pub fn validate_against(schema: &Value, value: &Value) -> Result<(), String> {
    match first_error(schema, value) {
        None => Ok(()),
        Some(e) => Err(platform_message(&e.message, e.instance)),
    }
}

/// The platform's wrapping of a jsonschema message.
fn platform_message(message: &str, instance: &Value) -> String {
    let stripped = message.replace(&(py_str(instance) + " "), "");
    format!("JSON does not fulfill schema: instance {stripped}")
}

// ---------------------------------------------------------------------------------------------
// The built-in schemas

/// Kinds whose value is JSON: (internal code, label, schema).
static SCHEMAS: LazyLock<HashMap<String, Value>> = LazyLock::new(|| {
    let mut kinds: Vec<(&str, &str, Value)> = vec![
        ("STR", "String", json!({"type": "string"})),
        ("INT", "Integer", json!({"type": "integer"})),
        ("FLT", "Float", json!({"type": "number"})),
        ("BOOL", "Bool", json!({"type": "boolean"})),
        ("JSON", "Anything", json!({})),
        // A Vega-Lite specification; only its outer shape is checked here.
        ("CHART", "Chart", json!({"type": "object"})),
        ("CHOI", "Choice", json!({"type": "string"})),
        (
            "MCHO",
            "Multiple choice",
            json!({"type": "array", "items": {"type": "string"}}),
        ),
        (
            "ATRG",
            "Affine transform registration",
            json!({
                "type": "object",
                "properties": {
                    "3d_affine_transform": {
                        "type": "array",
                        "items": {
                            "type": "array",
                            "items": {"type": "number"},
                            "minItems": 4,
                            "maxItems": 4,
                        },
                        "minItems": 4,
                        "maxItems": 4,
                    },
                },
                "required": ["3d_affine_transform"],
            }),
        ),
    ];
    for a in ANNOTATIONS {
        kinds.push((a.code, a.label, a.single_schema()));
        kinds.push((a.multiple_code, a.multiple_label, a.multiple_schema()));
    }
    let mut map = HashMap::new();
    for (code, label, schema) in kinds {
        map.insert(code.to_ascii_lowercase(), schema.clone());
        map.insert(label.to_ascii_lowercase(), schema);
    }
    map
});

/// One reader-study annotation kind and its "Multiple …" form.
struct Annotation {
    code: &'static str,
    label: &'static str,
    /// The `type` value; `None` for polygons, which carry none.
    type_name: Option<&'static str>,
    /// The geometry properties, all required.
    fields: fn() -> Vec<(&'static str, Value)>,
    multiple_code: &'static str,
    multiple_label: &'static str,
    /// The list property of the multiple form.
    items_key: &'static str,
}

fn point() -> Value {
    json!({"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3})
}

fn points(n: Option<u64>) -> Value {
    let mut v = json!({"type": "array", "items": point()});
    if let (Some(n), Some(obj)) = (n, v.as_object_mut()) {
        obj.insert("minItems".into(), json!(n));
        obj.insert("maxItems".into(), json!(n));
    }
    v
}

fn probability() -> Value {
    json!({"type": "number", "minimum": 0, "maximum": 1})
}

fn version() -> Value {
    json!({
        "type": "object",
        "properties": {
            "major": {"type": "number", "minimum": 0, "multipleOf": 1.0},
            "minor": {"type": "number", "minimum": 0, "multipleOf": 1.0},
        },
        "required": ["major", "minor"],
        "additionalProperties": false,
    })
}

const ANNOTATIONS: [Annotation; 8] = [
    Annotation {
        code: "2DBB",
        label: "2D bounding box",
        type_name: Some("2D bounding box"),
        fields: || vec![("corners", points(Some(4)))],
        multiple_code: "M2DB",
        multiple_label: "Multiple 2D bounding boxes",
        items_key: "boxes",
    },
    Annotation {
        code: "DIST",
        label: "Distance measurement",
        type_name: Some("Distance measurement"),
        fields: || vec![("start", point()), ("end", point())],
        multiple_code: "MDIS",
        multiple_label: "Multiple distance measurements",
        items_key: "lines",
    },
    Annotation {
        code: "POIN",
        label: "Point",
        type_name: Some("Point"),
        fields: || vec![("point", point())],
        multiple_code: "MPOI",
        multiple_label: "Multiple points",
        items_key: "points",
    },
    Annotation {
        code: "POLY",
        label: "Polygon",
        type_name: None,
        fields: || {
            vec![
                ("name", json!({"type": "string"})),
                ("seed_point", point()),
                ("path_points", points(None)),
                ("sub_type", json!({"type": "string"})),
                (
                    "groups",
                    json!({"type": "array", "items": {"type": "string"}}),
                ),
            ]
        },
        multiple_code: "MPOL",
        multiple_label: "Multiple polygons",
        items_key: "polygons",
    },
    Annotation {
        code: "LINE",
        label: "Line",
        type_name: Some("Line"),
        fields: || {
            vec![
                ("seed_points", points(None)),
                (
                    "path_point_lists",
                    json!({"type": "array", "items": points(None)}),
                ),
            ]
        },
        multiple_code: "MLIN",
        multiple_label: "Multiple lines",
        items_key: "lines",
    },
    Annotation {
        code: "ANGL",
        label: "Angle",
        type_name: Some("Angle"),
        fields: || {
            vec![(
                "lines",
                json!({"type": "array", "items": points(Some(2)), "minItems": 2, "maxItems": 2}),
            )]
        },
        multiple_code: "MANG",
        multiple_label: "Multiple angles",
        items_key: "angles",
    },
    Annotation {
        code: "ELLI",
        label: "Ellipse",
        type_name: Some("Ellipse"),
        fields: || {
            vec![
                ("major_axis", points(Some(2))),
                ("minor_axis", points(Some(2))),
            ]
        },
        multiple_code: "MELL",
        multiple_label: "Multiple ellipses",
        items_key: "ellipses",
    },
    Annotation {
        code: "3ANG",
        label: "Three-point angle",
        type_name: Some("Three-point angle"),
        fields: || vec![("angle", points(Some(3)))],
        multiple_code: "M3AN",
        multiple_label: "Multiple three-point angles",
        items_key: "angles",
    },
];

impl Annotation {
    fn object(properties: Map<String, Value>, required: Vec<&str>) -> Value {
        json!({"type": "object", "properties": properties, "required": required})
    }

    /// The annotation on its own: `type`, geometry, optional `name`/`probability`, `version`.
    fn single_schema(&self) -> Value {
        let fields = (self.fields)();
        let mut props = Map::new();
        let mut required = vec!["version"];
        if let Some(t) = self.type_name {
            props.insert("type".into(), json!({"enum": [t]}));
            required.push("type");
        }
        for (name, schema) in &fields {
            props.insert((*name).into(), schema.clone());
            required.push(name);
        }
        props
            .entry("name")
            .or_insert_with(|| json!({"type": "string"}));
        props.insert("probability".into(), probability());
        props.insert("version".into(), version());
        Self::object(props, required)
    }

    /// One element of the multiple form: geometry with optional `name`/`probability`.
    fn element_schema(&self) -> Value {
        let fields = (self.fields)();
        let mut props = Map::new();
        let mut required = Vec::new();
        for (name, schema) in &fields {
            props.insert((*name).into(), schema.clone());
            required.push(*name);
        }
        props
            .entry("name")
            .or_insert_with(|| json!({"type": "string"}));
        props.insert("probability".into(), probability());
        Self::object(props, required)
    }

    fn multiple_schema(&self) -> Value {
        let mut props = Map::new();
        props.insert("type".into(), json!({"enum": [self.multiple_label]}));
        props.insert(
            self.items_key.into(),
            json!({"type": "array", "items": self.element_schema()}),
        );
        props.insert("name".into(), json!({"type": "string"}));
        props.insert("version".into(), version());
        Self::object(props, vec!["version", "type", self.items_key])
    }
}

// ---------------------------------------------------------------------------------------------
// A draft-07 evaluator for the keywords above, first error in schema order (as
// `Draft7Validator.validate` raises it).

struct SchemaError<'v> {
    message: String,
    instance: &'v Value,
}

fn error<'v>(instance: &'v Value, message: String) -> Option<SchemaError<'v>> {
    Some(SchemaError { message, instance })
}

fn is_type(value: &Value, ty: &str) -> bool {
    match ty {
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => match value {
            Value::Number(n) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            _ => false,
        },
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "null" => value.is_null(),
        _ => false,
    }
}

fn first_error<'v>(schema: &Value, instance: &'v Value) -> Option<SchemaError<'v>> {
    let Value::Object(keywords) = schema else {
        // `true` accepts everything, `false` nothing.
        return match schema {
            Value::Bool(false) => error(
                instance,
                format!("False schema does not allow {}", py_repr(instance)),
            ),
            _ => None,
        };
    };
    for (keyword, arg) in keywords {
        let found = match keyword.as_str() {
            "type" => type_error(arg, instance),
            "enum" => enum_error(arg, instance),
            "properties" => properties_error(arg, instance),
            "required" => required_error(arg, instance),
            "additionalProperties" => additional_properties_error(arg, keywords, instance),
            "items" => items_error(arg, instance),
            "minItems" | "maxItems" => length_error(keyword, arg, instance),
            "minimum" | "maximum" => bound_error(keyword, arg, instance),
            "multipleOf" => multiple_of_error(arg, instance),
            "allOf" => arg
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| first_error(s, instance))
                .next(),
            "not" => first_error(arg, instance).is_none().then(|| SchemaError {
                message: format!(
                    "{} should not be valid under {}",
                    py_repr(instance),
                    py_repr(arg)
                ),
                instance,
            }),
            _ => None,
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

/// `type`: one type name or a list of them.
fn type_error<'v>(arg: &Value, instance: &'v Value) -> Option<SchemaError<'v>> {
    let types: Vec<&str> = match arg {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return None,
    };
    if types.iter().any(|t| is_type(instance, t)) {
        return None;
    }
    let listed: Vec<String> = types.iter().map(|t| py_repr_str(t)).collect();
    error(
        instance,
        format!("{} is not of type {}", py_repr(instance), listed.join(", ")),
    )
}

fn enum_error<'v>(arg: &Value, instance: &'v Value) -> Option<SchemaError<'v>> {
    let options = arg.as_array().map(Vec::as_slice).unwrap_or_default();
    if options.iter().any(|o| json_equal(o, instance)) {
        None
    } else {
        error(
            instance,
            format!("{} is not one of {}", py_repr(instance), py_repr(arg)),
        )
    }
}

/// `properties`: the first error of a present property, in the schema's order.
fn properties_error<'v>(arg: &Value, instance: &'v Value) -> Option<SchemaError<'v>> {
    let (Value::Object(props), Value::Object(obj)) = (arg, instance) else {
        return None;
    };
    props
        .iter()
        .filter_map(|(name, sub)| obj.get(name).and_then(|v| first_error(sub, v)))
        .next()
}

fn required_error<'v>(arg: &Value, instance: &'v Value) -> Option<SchemaError<'v>> {
    let (Value::Array(names), Value::Object(obj)) = (arg, instance) else {
        return None;
    };
    names
        .iter()
        .filter_map(Value::as_str)
        .find(|n| !obj.contains_key(*n))
        .and_then(|n| {
            error(
                instance,
                format!("{} is a required property", py_repr_str(n)),
            )
        })
}

/// `additionalProperties`: `false`, or a schema for the properties the sibling `properties` does
/// not declare.
fn additional_properties_error<'v>(
    arg: &Value,
    keywords: &Map<String, Value>,
    instance: &'v Value,
) -> Option<SchemaError<'v>> {
    let Value::Object(obj) = instance else {
        return None;
    };
    let declared = keywords.get("properties").and_then(Value::as_object);
    let extras: Vec<&String> = obj
        .keys()
        .filter(|k| declared.is_none_or(|d| !d.contains_key(*k)))
        .collect();
    match arg {
        Value::Bool(false) if !extras.is_empty() => {
            let listed: Vec<String> = extras.iter().map(|k| py_repr_str(k)).collect();
            let verb = if extras.len() == 1 { "was" } else { "were" };
            error(
                instance,
                format!(
                    "Additional properties are not allowed ({} {verb} unexpected)",
                    listed.join(", ")
                ),
            )
        }
        Value::Object(_) => extras
            .iter()
            .filter_map(|k| first_error(arg, &obj[k.as_str()]))
            .next(),
        _ => None,
    }
}

/// `items`: one schema for every element, or a tuple of schemas by position.
fn items_error<'v>(arg: &Value, instance: &'v Value) -> Option<SchemaError<'v>> {
    let Value::Array(items) = instance else {
        return None;
    };
    match arg {
        Value::Array(tuple) => tuple
            .iter()
            .zip(items)
            .filter_map(|(s, v)| first_error(s, v))
            .next(),
        _ => items.iter().filter_map(|v| first_error(arg, v)).next(),
    }
}

/// `minItems` and `maxItems`.
fn length_error<'v>(keyword: &str, arg: &Value, instance: &'v Value) -> Option<SchemaError<'v>> {
    let (Value::Array(items), Some(limit)) = (instance, arg.as_u64()) else {
        return None;
    };
    let n = items.len() as u64;
    let repr = py_repr(instance);
    match keyword {
        "minItems" if n < limit => {
            let what = if limit == 1 {
                "should be non-empty"
            } else {
                "is too short"
            };
            error(instance, format!("{repr} {what}"))
        }
        "maxItems" if n > limit => {
            let what = if limit == 0 {
                "is expected to be empty"
            } else {
                "is too long"
            };
            error(instance, format!("{repr} {what}"))
        }
        _ => None,
    }
}

/// `minimum` and `maximum`; booleans are not numbers here.
fn bound_error<'v>(keyword: &str, arg: &Value, instance: &'v Value) -> Option<SchemaError<'v>> {
    let (Some(v), Some(limit)) = (instance.as_f64(), arg.as_f64()) else {
        return None;
    };
    if instance.is_boolean() {
        return None;
    }
    match keyword {
        "minimum" if v < limit => error(
            instance,
            format!(
                "{} is less than the minimum of {}",
                py_repr(instance),
                py_repr(arg)
            ),
        ),
        "maximum" if v > limit => error(
            instance,
            format!(
                "{} is greater than the maximum of {}",
                py_repr(instance),
                py_repr(arg)
            ),
        ),
        _ => None,
    }
}

fn multiple_of_error<'v>(arg: &Value, instance: &'v Value) -> Option<SchemaError<'v>> {
    let (Some(v), Some(d)) = (instance.as_f64(), arg.as_f64()) else {
        return None;
    };
    let q = v / d;
    if d != 0.0 && q.is_finite() && q.fract() != 0.0 {
        error(
            instance,
            format!(
                "{} is not a multiple of {}",
                py_repr(instance),
                py_repr(arg)
            ),
        )
    } else {
        None
    }
}

/// JSON equality as jsonschema compares: numbers by value, booleans never equal to numbers.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

// ---------------------------------------------------------------------------------------------
// Python reprs of JSON values (as Python's json module loads them)

/// `str(value)` in Python: the text itself for strings, the repr otherwise.
fn py_str(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => py_repr(other),
    }
}

/// `repr(value)` in Python.
fn py_repr(value: &Value) -> String {
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.to_string()
            } else if let Some(u) = n.as_u64() {
                u.to_string()
            } else {
                py_float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => py_repr_str(s),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(py_repr).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", py_repr_str(k), py_repr(v)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
    }
}

/// Python's repr of a str: single quotes unless the text has `'` and no `"`.
fn py_repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's repr of a float: shortest round-trip digits, scientific below 1e-4 and from 1e16.
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if negative { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let body = if exp >= 0 {
            let point = exp as usize + 1;
            let (int_part, frac) = if digits.len() > point {
                (digits[..point].to_string(), digits[point..].to_string())
            } else {
                (format!("{digits:0<point$}"), String::new())
            };
            format!("{int_part}.{}", if frac.is_empty() { "0" } else { &frac })
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        };
        format!("{sign}{body}")
    } else {
        let (first, rest) = digits.split_at(1.min(digits.len()));
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{esign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (kind label, value, expected error). The expected messages were produced by
    /// python-jsonschema (Draft7Validator, first error) on the same schemas with the platform's
    /// message formula, so they pin both the schemas and the wording.
    const TABLE: &[(&str, &str, Option<&str>)] = &[
        ("String", r#""abc""#, None),
        (
            "String",
            r#"5"#,
            Some("JSON does not fulfill schema: instance is not of type 'string'"),
        ),
        (
            "String",
            r#"null"#,
            Some("JSON does not fulfill schema: instance is not of type 'string'"),
        ),
        ("Integer", r#"3"#, None),
        ("Integer", r#"1.0"#, None),
        (
            "Integer",
            r#""abc""#,
            Some("JSON does not fulfill schema: instance 'abc' is not of type 'integer'"),
        ),
        (
            "Integer",
            r#"1.5"#,
            Some("JSON does not fulfill schema: instance is not of type 'integer'"),
        ),
        (
            "Integer",
            r#"true"#,
            Some("JSON does not fulfill schema: instance is not of type 'integer'"),
        ),
        ("Float", r#"2.5"#, None),
        ("Float", r#"7"#, None),
        (
            "Float",
            r#""2.5""#,
            Some("JSON does not fulfill schema: instance '2.5' is not of type 'number'"),
        ),
        (
            "Float",
            r#"false"#,
            Some("JSON does not fulfill schema: instance is not of type 'number'"),
        ),
        ("Bool", r#"true"#, None),
        (
            "Bool",
            r#"0"#,
            Some("JSON does not fulfill schema: instance is not of type 'boolean'"),
        ),
        (
            "Bool",
            r#""true""#,
            Some("JSON does not fulfill schema: instance 'true' is not of type 'boolean'"),
        ),
        ("Anything", r#"{"a": [1, null]}"#, None),
        ("Anything", r#""x""#, None),
        (
            "Anything",
            r#"null"#,
            Some(
                "JSON does not fulfill schema: instance should not be valid under {'type': 'null'}",
            ),
        ),
        ("Chart", r#"{"mark": "bar"}"#, None),
        (
            "Chart",
            r#"[1]"#,
            Some("JSON does not fulfill schema: instance is not of type 'object'"),
        ),
        ("Choice", r#""yes""#, None),
        (
            "Choice",
            r#"1"#,
            Some("JSON does not fulfill schema: instance is not of type 'string'"),
        ),
        ("Multiple choice", r#"["a", "b"]"#, None),
        ("Multiple choice", r#"[]"#, None),
        (
            "Multiple choice",
            r#"["a", 2]"#,
            Some("JSON does not fulfill schema: instance is not of type 'string'"),
        ),
        (
            "Multiple choice",
            r#""a""#,
            Some("JSON does not fulfill schema: instance 'a' is not of type 'array'"),
        ),
        (
            "Affine transform registration",
            r#"{"3d_affine_transform": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}"#,
            None,
        ),
        (
            "Affine transform registration",
            r#"{"3d_affine_transform": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]}"#,
            Some("JSON does not fulfill schema: instance is too short"),
        ),
        (
            "Affine transform registration",
            r#"{"3d_affine_transform": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, "1"]]}"#,
            Some("JSON does not fulfill schema: instance '1' is not of type 'number'"),
        ),
        (
            "Affine transform registration",
            r#"{}"#,
            Some(
                "JSON does not fulfill schema: instance '3d_affine_transform' is a required property",
            ),
        ),
        (
            "2D bounding box",
            r#"{"type": "2D bounding box", "corners": [[1, 2.5, 3], [1, 2.5, 3], [1, 2.5, 3], [1, 2.5, 3]], "name": "b", "probability": 0.5, "version": {"major": 1, "minor": 0}}"#,
            None,
        ),
        (
            "2D bounding box",
            r#"{"type": "2D bounding box", "corners": [[1, 2.5, 3], [1, 2.5, 3], [1, 2.5, 3]], "version": {"major": 1, "minor": 0}}"#,
            Some("JSON does not fulfill schema: instance is too short"),
        ),
        (
            "2D bounding box",
            r#"{"type": "2D bounding box", "version": {"major": 1, "minor": 0}}"#,
            Some("JSON does not fulfill schema: instance 'corners' is a required property"),
        ),
        (
            "2D bounding box",
            r#"{"type": "Box", "corners": [[1, 2.5, 3], [1, 2.5, 3], [1, 2.5, 3], [1, 2.5, 3]], "version": {"major": 1, "minor": 0}}"#,
            Some("JSON does not fulfill schema: instance 'Box' is not one of ['2D bounding box']"),
        ),
        (
            "2D bounding box",
            r#"{"type": "2D bounding box", "corners": [[1, 2.5, 3], [1, 2.5, 3], [1, 2.5, 3], [1, 2]], "version": {"major": 1, "minor": 0}}"#,
            Some("JSON does not fulfill schema: instance is too short"),
        ),
        (
            "2D bounding box",
            r#"{"type": "2D bounding box", "corners": [[1, 2.5, 3], [1, 2.5, 3], [1, 2.5, 3], [1, 2.5, 3]], "probability": 1.5, "version": {"major": 1, "minor": 0}}"#,
            Some("JSON does not fulfill schema: instance is greater than the maximum of 1"),
        ),
        (
            "2D bounding box",
            r#"{"type": "2D bounding box", "corners": [[1, 2.5, 3], [1, 2.5, 3], [1, 2.5, 3], [1, 2.5, 3]], "version": {"major": 1, "minor": 0, "patch": 2}}"#,
            Some(
                "JSON does not fulfill schema: instance Additional properties are not allowed ('patch' was unexpected)",
            ),
        ),
        (
            "2D bounding box",
            r#"{"type": "2D bounding box", "corners": [[1, 2.5, 3], [1, 2.5, 3], [1, 2.5, 3], [1, 2.5, 3]], "version": {"major": 1.5, "minor": 0}}"#,
            Some("JSON does not fulfill schema: instance is not a multiple of 1.0"),
        ),
        (
            "Multiple 2D bounding boxes",
            r#"{"type": "Multiple 2D bounding boxes", "boxes": [{"corners": [[1, 2.5, 3], [1, 2.5, 3], [1, 2.5, 3], [1, 2.5, 3]]}], "version": {"major": 1, "minor": 0}}"#,
            None,
        ),
        (
            "Multiple 2D bounding boxes",
            r#"{"type": "Multiple 2D bounding boxes", "boxes": [{"name": "x"}], "version": {"major": 1, "minor": 0}}"#,
            Some("JSON does not fulfill schema: instance 'corners' is a required property"),
        ),
        (
            "Point",
            r#"{"type": "Point", "point": [1, 2.5, 3], "version": {"major": 1, "minor": 0}}"#,
            None,
        ),
        (
            "Point",
            r#"{"type": "Point", "point": [1, 2], "version": {"major": 1, "minor": 0}}"#,
            Some("JSON does not fulfill schema: instance is too short"),
        ),
        (
            "Point",
            r#"{"type": "Point", "point": [1, 2.5, 3]}"#,
            Some("JSON does not fulfill schema: instance 'version' is a required property"),
        ),
        (
            "Multiple points",
            r#"{"type": "Multiple points", "points": [{"point": [1, 2.5, 3]}], "version": {"major": 1, "minor": 0}}"#,
            None,
        ),
        (
            "Multiple points",
            r#"{"type": "Multiple points", "points": [{"point": [1, 2, 3, 4]}], "version": {"major": 1, "minor": 0}}"#,
            Some("JSON does not fulfill schema: instance is too long"),
        ),
        (
            "Distance measurement",
            r#"{"type": "Distance measurement", "start": [1, 2.5, 3], "end": [1, 2.5, 3], "version": {"major": 1, "minor": 0}}"#,
            None,
        ),
        (
            "Distance measurement",
            r#"{"type": "Distance measurement", "start": [1, 2.5, 3], "version": {"major": 1, "minor": 0}}"#,
            Some("JSON does not fulfill schema: instance 'end' is a required property"),
        ),
        (
            "Multiple distance measurements",
            r#"{"type": "Multiple distance measurements", "lines": [{"start": [1, 2.5, 3], "end": [1, 2.5, 3]}], "version": {"major": 1, "minor": 0}}"#,
            None,
        ),
        (
            "Multiple distance measurements",
            r#"{"type": "Multiple distance measurements", "lines": {}, "version": {"major": 1, "minor": 0}}"#,
            Some("JSON does not fulfill schema: instance is not of type 'array'"),
        ),
        (
            "Line",
            r#"{"type": "Line", "seed_points": [[1, 2.5, 3]], "path_point_lists": [[[1, 2.5, 3], [1, 2.5, 3]]], "version": {"major": 1, "minor": 0}}"#,
            None,
        ),
        (
            "Line",
            r#"{"type": "Line", "seed_points": [[1, 2.5, 3]], "version": {"major": 1, "minor": 0}}"#,
            Some(
                "JSON does not fulfill schema: instance 'path_point_lists' is a required property",
            ),
        ),
        (
            "Multiple lines",
            r#"{"type": "Multiple lines", "lines": [{"seed_points": [[1, 2.5, 3]], "path_point_lists": [[[1, 2.5, 3]]]}], "version": {"major": 1, "minor": 0}}"#,
            None,
        ),
        (
            "Multiple lines",
            r#"{"type": "Multiple lines", "lines": [{"seed_points": [[1, 2.5, 3]], "path_point_lists": [[1, 2.5, 3]]}], "version": {"major": 1, "minor": 0}}"#,
            Some("JSON does not fulfill schema: instance is not of type 'array'"),
        ),
        (
            "Polygon",
            r#"{"name": "p", "seed_point": [1, 2.5, 3], "path_points": [[1, 2.5, 3], [1, 2.5, 3]], "sub_type": "poly", "groups": [], "version": {"major": 1, "minor": 0}}"#,
            None,
        ),
        (
            "Polygon",
            r#"{"name": "p", "seed_point": [1, 2.5, 3], "path_points": [[1, 2.5, 3], [1, 2.5, 3]], "sub_type": "poly", "version": {"major": 1, "minor": 0}}"#,
            Some("JSON does not fulfill schema: instance 'groups' is a required property"),
        ),
        (
            "Multiple polygons",
            r#"{"type": "Multiple polygons", "polygons": [{"name": "p", "seed_point": [1, 2.5, 3], "path_points": [[1, 2.5, 3]], "sub_type": "poly", "groups": ["g"]}], "version": {"major": 1, "minor": 0}}"#,
            None,
        ),
        (
            "Multiple polygons",
            r#"{"type": "Multiple polygons", "polygons": [{"name": "p", "seed_point": [1, 2.5, 3], "path_points": [[1, 2.5, 3]], "sub_type": "poly", "groups": [1]}], "version": {"major": 1, "minor": 0}}"#,
            Some("JSON does not fulfill schema: instance is not of type 'string'"),
        ),
        (
            "Angle",
            r#"{"type": "Angle", "lines": [[[1, 2.5, 3], [1, 2.5, 3]], [[1, 2.5, 3], [1, 2.5, 3]]], "version": {"major": 1, "minor": 0}}"#,
            None,
        ),
        (
            "Angle",
            r#"{"type": "Angle", "lines": [[[1, 2.5, 3], [1, 2.5, 3]]], "version": {"major": 1, "minor": 0}}"#,
            Some("JSON does not fulfill schema: instance is too short"),
        ),
        (
            "Multiple angles",
            r#"{"type": "Multiple angles", "angles": [{"lines": [[[1, 2.5, 3], [1, 2.5, 3]], [[1, 2.5, 3], [1, 2.5, 3]]]}], "version": {"major": 1, "minor": 0}}"#,
            None,
        ),
        (
            "Multiple angles",
            r#"{"type": "Multiple angles", "angles": [{"lines": [[[1, 2.5, 3], [1, 2.5, 3]], [[1, 2.5, 3]]]}], "version": {"major": 1, "minor": 0}}"#,
            Some("JSON does not fulfill schema: instance is too short"),
        ),
        (
            "Ellipse",
            r#"{"type": "Ellipse", "major_axis": [[1, 2.5, 3], [1, 2.5, 3]], "minor_axis": [[1, 2.5, 3], [1, 2.5, 3]], "version": {"major": 1, "minor": 0}}"#,
            None,
        ),
        (
            "Ellipse",
            r#"{"type": "Ellipse", "major_axis": [[1, 2.5, 3], [1, 2.5, 3]], "minor_axis": [[1, 2.5, 3], [1, 2.5, 3], [1, 2.5, 3]], "version": {"major": 1, "minor": 0}}"#,
            Some("JSON does not fulfill schema: instance is too long"),
        ),
        (
            "Multiple ellipses",
            r#"{"type": "Multiple ellipses", "ellipses": [{"major_axis": [[1, 2.5, 3], [1, 2.5, 3]], "minor_axis": [[1, 2.5, 3], [1, 2.5, 3]]}], "version": {"major": 1, "minor": 0}}"#,
            None,
        ),
        (
            "Multiple ellipses",
            r#"{"type": "Multiple ellipses", "ellipses": [{"major_axis": [[1, 2.5, 3], [1, 2.5, 3]]}], "version": {"major": 1, "minor": 0}}"#,
            Some("JSON does not fulfill schema: instance 'minor_axis' is a required property"),
        ),
        (
            "Three-point angle",
            r#"{"type": "Three-point angle", "angle": [[1, 2.5, 3], [1, 2.5, 3], [1, 2.5, 3]], "version": {"major": 1, "minor": 0}}"#,
            None,
        ),
        (
            "Three-point angle",
            r#"{"type": "Three-point angle", "angle": [[1, 2.5, 3], [1, 2.5, 3], "x"], "version": {"major": 1, "minor": 0}}"#,
            Some("JSON does not fulfill schema: instance 'x' is not of type 'array'"),
        ),
        (
            "Multiple three-point angles",
            r#"{"type": "Multiple three-point angles", "angles": [{"angle": [[1, 2.5, 3], [1, 2.5, 3], [1, 2.5, 3]]}], "version": {"major": 1, "minor": 0}}"#,
            None,
        ),
        (
            "Multiple three-point angles",
            r#"{"type": "Multiple three-point angles", "angles": [{"angle": [[1, 2.5, 3], [1, 2.5, 3], [1, 2.5, 3]]}], "version": {"major": 1}}"#,
            Some("JSON does not fulfill schema: instance 'minor' is a required property"),
        ),
    ];

    #[test]
    fn every_kind_accepts_and_rejects_as_the_platform_does() {
        let mut kinds = std::collections::BTreeSet::new();
        for (kind, json, expected) in TABLE {
            let value: Value = serde_json::from_str(json).unwrap();
            let got = validate_value(kind, &value);
            assert_eq!(
                got.as_ref().err().map(String::as_str),
                *expected,
                "{kind}: {json}"
            );
            kinds.insert(*kind);
        }
        // Every JSON kind of the protocol table is covered, valid and invalid.
        assert_eq!(kinds.len(), 25);
        for kind in &kinds {
            let outcomes: Vec<bool> = TABLE
                .iter()
                .filter(|r| r.0 == *kind)
                .map(|r| r.2.is_none())
                .collect();
            assert!(
                outcomes.contains(&true) && outcomes.contains(&false),
                "{kind}"
            );
        }
    }

    #[test]
    fn kinds_are_found_by_label_in_any_case_and_by_code() {
        let three = serde_json::json!(3);
        let text = serde_json::json!("x");
        for kind in ["Integer", "integer", "INTEGER", "INT", " Integer "] {
            assert!(validate_value(kind, &three).is_ok());
            assert!(validate_value(kind, &text).is_err(), "{kind}");
        }
        assert_eq!(
            builtin_schema("M2DB"),
            builtin_schema("Multiple 2D bounding boxes")
        );
        assert!(builtin_schema("Image").is_none());
        assert!(builtin_schema("PDF file").is_none());
    }

    #[test]
    fn unknown_kinds_accept_anything_but_null() {
        assert_eq!(
            validate_value("Some future kind", &serde_json::json!({"a": 1})),
            Ok(())
        );
        assert_eq!(validate_value("Image", &serde_json::json!([1, 2])), Ok(()));
        assert_eq!(
            validate_value("Some future kind", &Value::Null),
            Err(
                "JSON does not fulfill schema: instance should not be valid under {'type': 'null'}"
                    .into()
            )
        );
    }

    #[test]
    fn messages_start_with_the_platform_prefix() {
        for (kind, json, expected) in TABLE {
            if expected.is_some() {
                let err = validate_value(kind, &serde_json::from_str(json).unwrap()).unwrap_err();
                assert!(
                    err.starts_with("JSON does not fulfill schema: instance "),
                    "{err}"
                );
            }
        }
    }

    #[test]
    fn custom_schemas_use_the_same_evaluator() {
        let schema =
            serde_json::json!({"allOf": [{"type": "number"}, {"minimum": 0, "maximum": 10}]});
        assert_eq!(validate_against(&schema, &serde_json::json!(5)), Ok(()));
        assert_eq!(
            validate_against(&schema, &serde_json::json!(11)),
            Err("JSON does not fulfill schema: instance is greater than the maximum of 10".into())
        );
        let tuple =
            serde_json::json!({"type": "array", "items": [{"type": "string"}], "maxItems": 0});
        assert_eq!(
            validate_against(&tuple, &serde_json::json!([1])),
            Err("JSON does not fulfill schema: instance is not of type 'string'".into())
        );
        assert_eq!(
            validate_against(
                &serde_json::json!({"type": ["string", "null"]}),
                &serde_json::json!(1)
            ),
            Err("JSON does not fulfill schema: instance is not of type 'string', 'null'".into())
        );
    }

    #[test]
    fn python_reprs() {
        let cases: &[(&str, &str)] = &[
            ("null", "None"),
            ("true", "True"),
            ("-12", "-12"),
            ("18446744073709551615", "18446744073709551615"),
            ("1.0", "1.0"),
            ("-0.0", "-0.0"),
            ("0.1", "0.1"),
            ("1e20", "1e+20"),
            ("1.5e-7", "1.5e-07"),
            ("0.0001", "0.0001"),
            ("0.00001", "1e-05"),
            ("1234567890123456.0", "1234567890123456.0"),
            ("123.456", "123.456"),
            (r#""it's""#, r#""it's""#),
            (r#""say \"x\" it's""#, r#"'say "x" it\'s'"#),
            (r#""a\nb\\c\u00e9\u0001""#, r"'a\nb\\cé\x01'"),
            (
                r#"[1, "a", null, {"k": [true]}]"#,
                "[1, 'a', None, {'k': [True]}]",
            ),
            ("{}", "{}"),
        ];
        for (json, repr) in cases {
            let v: Value = serde_json::from_str(json).unwrap();
            assert_eq!(py_repr(&v), *repr, "{json}");
        }
        assert_eq!(py_str(&serde_json::json!("abc")), "abc");
        // (Built directly: serde_json's default parser may round this literal differently.)
        assert_eq!(
            py_repr(&serde_json::json!(12345678901234567.0f64)),
            "1.2345678901234568e+16"
        );
    }
}
