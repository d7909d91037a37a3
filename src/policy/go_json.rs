//! Values as Go's `encoding/json` writes them, for builtins whose OPA result is a
//! marshalled Go struct (see [`super::x509_certificates`]): nil slices as `null`,
//! `[]byte` as base64, big integers as exact numbers, object identifiers as arcs.

use std::collections::BTreeMap;

use anyhow::anyhow;
use base64::Engine as _;
use regorus::Value;

/// A Go struct: an object of its field names.
pub fn obj(fields: Vec<(&str, Value)>) -> Value {
    Value::from(
        fields
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect::<BTreeMap<_, _>>(),
    )
}

/// A Go slice: `null` when nil (nothing appended).
pub fn slice(items: Vec<Value>) -> Value {
    if items.is_empty() {
        Value::Null
    } else {
        Value::from(items)
    }
}

/// A Go `[]byte`: base64, `null` when nil.
pub fn bytes(b: Option<&[u8]>) -> Value {
    match b {
        Some(b) => Value::from(base64::engine::general_purpose::STANDARD.encode(b)),
        None => Value::Null,
    }
}

/// A `*big.Int`: an exact JSON number.
pub fn big(n: &x509_parser::num_bigint::BigUint) -> anyhow::Result<Value> {
    Value::from_numeric_string(&n.to_string()).map_err(|_| anyhow!("number"))
}

/// An `asn1.ObjectIdentifier`: its arcs.
pub fn oid(o: &x509_parser::der_parser::oid::Oid<'_>) -> anyhow::Result<Value> {
    let arcs = o
        .iter()
        .ok_or_else(|| anyhow!("object identifier arc too large"))?;
    Ok(Value::from(arcs.map(Value::from).collect::<Vec<_>>()))
}
