//! `json.match_schema` and `json.verify_schema` as OPA computes them: OPA checks
//! documents with its copy of gojsonschema (JSON Schema drafts 4/6/7 in one
//! "hybrid" mode), so the error objects (`desc`, `error`, `field`, `type`), their
//! texts, their order and the schema errors `verify_schema` reports are
//! gojsonschema's. [`super::json_schema_parse`] reads a schema with gojsonschema's
//! checks and messages; [`super::json_schema_validate`] walks a document with it.
//!
//! What portcullis does not reproduce is an evaluation error, never a different
//! answer: the formats whose Go checks it lacks (times, e-mail, URIs), `$ref`s to
//! other documents, `$ref` with an `$id`/`id` below the root, `$schema` draft-04, regular
//! expressions using `\D`, `\W` or `\S` inside a character class, and numbers
//! too long for exact arithmetic.
//!
//! Where OPA's order is not fixed (gojsonschema walks Go maps: the properties of
//! an object and of a schema), portcullis reports in key order, one of OPA's orders.

use std::collections::BTreeMap;

use regorus::unstable::{Expr, Ref};
use regorus::Value;

use super::json_schema_parse::compile;
use super::json_schema_validate::validate;
use super::json_schema_values::{invalid, Parsed, SchemaError, UNSUPPORTED_FORMATS};

/// A document or schema argument as OPA takes it: JSON text, an object or an array.
fn operand(v: &Value) -> Parsed<Value> {
    match v {
        Value::String(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(parsed) => Ok(crate::policy::exact_json::to_value(
                text.as_bytes(),
                &parsed,
            )),
            Err(_) => invalid("invalid JSON string"),
        },
        Value::Object(_) | Value::Array(_) => Ok(v.clone()),
        _ => invalid("wrong type, expected string or object"),
    }
}

/// `json.verify_schema(schema)`: `[true, null]` or `[false, "jsonschema: ..."]`.
pub fn verify_schema(args: &[Value]) -> anyhow::Result<Value> {
    let schema = args.first().unwrap_or(&Value::Undefined);
    let result = operand(schema).and_then(|s| compile(&s).map(|_| ()));
    match result {
        Ok(()) => Ok(Value::from(vec![Value::from(true), Value::Null])),
        Err(SchemaError::Invalid(m)) => Ok(Value::from(vec![
            Value::from(false),
            Value::from(format!("jsonschema: {m}")),
        ])),
        Err(SchemaError::Unsupported(m)) => anyhow::bail!("json.verify_schema: {m}"),
    }
}

/// `json.match_schema(document, schema)`: `[true, []]` or `[false, [errors]]`.
pub fn match_schema(args: &[Value]) -> anyhow::Result<Value> {
    let run = || -> Parsed<Value> {
        let document = operand(args.first().unwrap_or(&Value::Undefined))?;
        let schema = compile(&operand(args.get(1).unwrap_or(&Value::Undefined))?)?;
        let issues = validate(&schema, &document)?;
        let list: Vec<Value> = issues
            .into_iter()
            .map(|i| {
                let mut o = BTreeMap::new();
                o.insert(Value::from("desc"), Value::from(i.desc.clone()));
                o.insert(
                    Value::from("error"),
                    Value::from(format!("{}: {}", i.field, i.desc)),
                );
                o.insert(Value::from("field"), Value::from(i.field));
                o.insert(Value::from("type"), Value::from(i.kind));
                Value::from(o)
            })
            .collect();
        Ok(Value::from(vec![
            Value::from(list.is_empty()),
            Value::from(list),
        ]))
    };
    match run() {
        Ok(v) => Ok(v),
        Err(SchemaError::Invalid(m) | SchemaError::Unsupported(m)) => {
            anyhow::bail!("json.match_schema: {m}")
        }
    }
}

/// The value of an expression written as a literal in the policy.
fn literal(e: &Expr) -> Option<Value> {
    match e {
        Expr::String { value, .. }
        | Expr::RawString { value, .. }
        | Expr::Number { value, .. }
        | Expr::Bool { value, .. }
        | Expr::Null { value, .. } => Some(value.clone()),
        Expr::Array { items, .. } => items
            .iter()
            .map(|x| literal(x))
            .collect::<Option<Vec<_>>>()
            .map(Value::from),
        Expr::Object { fields, .. } => fields
            .iter()
            .map(|(_, k, v)| Some((literal(k)?, literal(v)?)))
            .collect::<Option<BTreeMap<_, _>>>()
            .map(Value::from),
        _ => None,
    }
}

/// The first format of `names` that `v` names anywhere (a key `format`).
fn names_format(v: &Value, names: &[&str]) -> Option<String> {
    match v {
        Value::Object(o) => o.iter().find_map(|(k, x)| match (k, x) {
            (Value::String(k), Value::String(f)) if &**k == "format" && names.contains(&&**f) => {
                Some(f.to_string())
            }
            _ => names_format(x, names),
        }),
        Value::Array(a) => a.iter().find_map(|x| names_format(x, names)),
        _ => None,
    }
}

/// Why a call to `json.match_schema`/`json.verify_schema` (named `function`, called
/// with `params`) whose schema is written in the policy is refused at load: the
/// schema uses what portcullis cannot check as OPA does. A schema computed at run
/// time is checked when the call runs (an evaluation error).
pub fn literal_schema_refusal(function: &str, params: &[Ref<Expr>]) -> Option<String> {
    let index = match function {
        "json.match_schema" => 1,
        "json.verify_schema" => 0,
        _ => return None,
    };
    let schema = operand(&literal(params.get(index)?)?).ok()?;
    let why = match compile(&schema) {
        Err(SchemaError::Unsupported(m)) => m,
        Err(SchemaError::Invalid(_)) => return None,
        Ok(_) if index == 1 => {
            let f = names_format(&schema, UNSUPPORTED_FORMATS)?;
            format!("the format {f:?} is not supported by portcullis")
        }
        Ok(_) => return None,
    };
    Some(format!(
        "`{function}` with this schema: {why}; refused at load so that no request is decided differently from OPA"
    ))
}
