//! Validation of a manifest against the generated CRD schema, the way the
//! kube-apiserver does it: OpenAPI keywords (types, required fields, enums,
//! ranges, lengths, patterns, unknown fields), then the schema's CEL rules
//! (`x-kubernetes-validations`) on the defaulted object.
//!
//! Running the same schema the apiserver runs means a folder of manifests is
//! judged the same way with or without a cluster.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use kube_cel::{CompiledSchema, Validator, compile_schema};
use serde_json::Value;

/// One validation failure at one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted field path, for example `spec.limit.requests` or
    /// `spec.operations[0].method`; empty for the object itself.
    pub path: String,
    /// What is wrong, in the apiserver's words where possible.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

struct KindSchema {
    schema: Value,
}

thread_local! {
    /// The CEL validator and compiled rules of each kind, per thread (the
    /// evaluator is not shared between threads; compiling takes
    /// milliseconds, once per thread and kind), so that files are checked
    /// in parallel.
    static CEL: RefCell<HashMap<String, (Validator, CompiledSchema)>> = RefCell::new(HashMap::new());
}

static SCHEMAS: LazyLock<HashMap<String, KindSchema>> = LazyLock::new(|| {
    crate::crds()
        .into_iter()
        .map(|(_, crd)| {
            let kind = crd.spec.names.kind.clone();
            let schema = crd.spec.versions[0]
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .map(|s| serde_json::to_value(s).expect("schema serializes"))
                .unwrap_or(Value::Null);
            (kind, KindSchema { schema })
        })
        .collect()
});

/// Validates a whole object (apiVersion, kind, metadata, spec) of a Tollgate
/// kind against its CRD schema. Returns every failure found, schema errors
/// first; CEL rules run only when the schema checks pass (as in the apiserver,
/// rules never see ill-typed values).
pub fn validate_object(kind: &str, object: &Value) -> Result<(), Vec<FieldError>> {
    let Some(ks) = SCHEMAS.get(kind) else {
        return Err(vec![FieldError { path: "kind".into(), message: format!("unknown kind {kind:?}") }]);
    };
    let mut errors = Vec::new();
    // Status is written by the operator, never read from manifests.
    let mut body = object.clone();
    if let Some(map) = body.as_object_mut() {
        map.remove("status");
    }
    walk(&ks.schema, &body, "", &mut errors, true);
    if !errors.is_empty() {
        return Err(errors);
    }
    let cel_errors = CEL.with_borrow_mut(|kinds| {
        let (validator, compiled) =
            kinds.entry(kind.to_string()).or_insert_with(|| (Validator::new(), compile_schema(&ks.schema)));
        validator.validate_compiled(compiled, &body, None).err()
    });
    for e in cel_errors.map(|e| e.into_vec()).unwrap_or_default() {
        errors.push(FieldError { path: e.field_path.trim_start_matches('.').to_string(), message: e.message });
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 { format!("{}...", s.chars().take(57).collect::<String>()) } else { s }
}

fn walk(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>, root: bool) {
    if value.is_null() {
        // The apiserver drops nulls of non-nullable fields; treat as absent.
        return;
    }
    let err = |errors: &mut Vec<FieldError>, message: String| {
        errors.push(FieldError { path: path.to_string(), message });
    };
    if schema.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true) {
        let t = type_name(value);
        if t != "integer" && t != "string" {
            err(errors, format!("Invalid value: {}: must be an integer or a string", short(value)));
            return;
        }
        if let Some(branches) = schema.get("anyOf").and_then(Value::as_array) {
            for b in branches {
                if b.get("type").and_then(Value::as_str) == Some(t) {
                    check_scalar(b, value, path, errors);
                }
            }
        }
        return;
    }
    let ty = schema.get("type").and_then(Value::as_str);
    match ty {
        Some("object") => {
            let Some(map) = value.as_object() else {
                err(
                    errors,
                    format!("Invalid value: {}: must be of type object, got {}", short(value), type_name(value)),
                );
                return;
            };
            let props = schema.get("properties").and_then(Value::as_object);
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for r in required.iter().filter_map(Value::as_str) {
                    if map.get(r).is_none_or(Value::is_null) {
                        errors.push(FieldError { path: join(path, r), message: "Required value".into() });
                    }
                }
            }
            let preserve = schema.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool) == Some(true);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, v) in map {
                let child = join(path, k);
                if root && (k == "apiVersion" || k == "kind" || k == "metadata") {
                    continue;
                }
                if let Some(s) = props.and_then(|p| p.get(k)) {
                    walk(s, v, &child, errors, false);
                } else if let Some(a) = additional {
                    walk(a, v, &child, errors, false);
                } else if !preserve && props.is_some() {
                    errors.push(FieldError { path: child, message: format!("unknown field {k:?}") });
                }
            }
            if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
                && map.len() as u64 > max
            {
                err(errors, format!("Too many: {}: must have at most {max} items", map.len()));
            }
        }
        Some("array") => {
            let Some(items) = value.as_array() else {
                err(
                    errors,
                    format!("Invalid value: {}: must be of type array, got {}", short(value), type_name(value)),
                );
                return;
            };
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < min
            {
                err(errors, format!("Invalid value: {}: should have at least {min} items", items.len()));
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && items.len() as u64 > max
            {
                err(errors, format!("Too many: {}: must have at most {max} items", items.len()));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    walk(item_schema, v, &format!("{path}[{i}]"), errors, false);
                }
            }
            check_list_map_keys(schema, items, path, errors);
        }
        Some(t @ ("string" | "integer" | "number" | "boolean")) => {
            let actual = type_name(value);
            let ok = actual == t || (t == "number" && actual == "integer");
            if !ok {
                err(errors, format!("Invalid value: {}: must be of type {t}, got {actual}", short(value)));
                return;
            }
            check_scalar(schema, value, path, errors);
        }
        _ => {}
    }
}

fn check_scalar(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let mut err = |message: String| errors.push(FieldError { path: path.to_string(), message });
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(|v| v.to_string()).collect();
        err(format!("Unsupported value: {}: supported values: {}", short(value), list.join(", ")));
        return;
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            err(format!("Invalid value: {}: should be greater than or equal to {min}", short(value)));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            err(format!("Invalid value: {}: should be less than or equal to {max}", short(value)));
        }
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            err(format!("Invalid value: {}: should be at least {min} chars long", short(value)));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            err(format!("Too long: may not be more than {max} bytes"));
        }
        if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
            match compiled_pattern(p) {
                Ok(re) if !re.is_match(s) => err(format!("Invalid value: {}: should match '{p}'", short(value))),
                Ok(_) => {}
                Err(e) => err(format!("schema pattern {p:?} does not compile: {e}")),
            }
        }
    }
}

/// The schema's `pattern`s, compiled once (a schema has a handful; compiling
/// one per validated string dominated loading thousands of manifests).
fn compiled_pattern(pattern: &str) -> Result<regex::Regex, String> {
    static CACHE: LazyLock<Mutex<HashMap<String, Result<regex::Regex, String>>>> = LazyLock::new(Default::default);
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    cache.entry(pattern.to_string()).or_insert_with(|| regex::Regex::new(pattern).map_err(|e| e.to_string())).clone()
}

fn check_list_map_keys(schema: &Value, items: &[Value], path: &str, errors: &mut Vec<FieldError>) {
    let list_type = schema.get("x-kubernetes-list-type").and_then(Value::as_str);
    match list_type {
        Some("map") => {
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut seen = std::collections::HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let key: Vec<&Value> = keys.iter().map(|k| item.get(*k).unwrap_or(&Value::Null)).collect();
                if !seen.insert(serde_json::to_string(&key).unwrap_or_default()) {
                    let shown: Vec<String> = keys.iter().zip(&key).map(|(k, v)| format!("\"{k}\":{v}")).collect();
                    errors.push(FieldError {
                        path: format!("{path}[{i}]"),
                        message: format!("Duplicate value: map[string]interface {{}}{{{}}}", shown.join(", ")),
                    });
                }
            }
        }
        Some("set") => {
            let mut seen = std::collections::HashSet::new();
            for (i, item) in items.iter().enumerate() {
                if !seen.insert(item.to_string()) {
                    errors
                        .push(FieldError { path: format!("{path}[{i}]"), message: format!("Duplicate value: {item}") });
                }
            }
        }
        _ => {}
    }
}
