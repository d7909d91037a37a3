//! Values as Go's `encoding/json` writes them, for builtins whose OPA result is a
//! marshalled Go struct (see [`super::x509_certificates`]): nil slices as `null`,
//! `[]byte` as base64, big integers as exact numbers, object identifiers as arcs.

use std::collections::BTreeMap;

use anyhow::anyhow;
use base64::Engine as _;
use regorus::Value;

/// A Go struct: an object of its field names.
/// The elements of an array or a set, in order (empty for anything else): what
/// Go's printers walk for a slice.
pub fn elements(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        Value::Set(s) => s.iter().collect(),
        _ => Vec::new(),
    }
}

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

/// An `asn1.ObjectIdentifier`: its arcs, where Go's reader takes the encoding
/// (minimal base-128 arcs below 2^31, none cut short); an error otherwise.
pub fn oid(o: &x509_parser::der_parser::oid::Oid<'_>) -> anyhow::Result<Value> {
    let arcs = go_oid_arcs(o.as_bytes()).ok_or_else(|| anyhow!("x509: malformed OID"))?;
    Ok(Value::from(
        arcs.into_iter().map(Value::from).collect::<Vec<_>>(),
    ))
}

/// The arcs of the DER object identifier content `der`, as Go reads them.
pub fn go_oid_arcs(der: &[u8]) -> Option<Vec<u64>> {
    let mut arcs = Vec::new();
    let mut rest = der;
    while !rest.is_empty() {
        if rest[0] == 0x80 {
            return None; // not minimal
        }
        let mut value: u64 = 0;
        loop {
            let (&b, tail) = rest.split_first()?;
            rest = tail;
            if value >= 1 << (31 - 7) {
                return None;
            }
            value = (value << 7) | u64::from(b & 0x7f);
            if b & 0x80 == 0 {
                break;
            }
        }
        if arcs.is_empty() {
            let first = (value / 40).min(2);
            arcs.push(first);
            arcs.push(value - 40 * first);
        } else {
            arcs.push(value);
        }
    }
    (!arcs.is_empty()).then_some(arcs)
}
