//! JSON text to a regorus value with integers beyond 64 bits kept exact, as OPA
//! keeps them (`100000000000000000001 == 100000000000000000000` is false).
//!
//! serde_json (built without `arbitrary_precision`) reads such an integer as the
//! nearest `f64`, and regorus' own `Value::from_json_str` goes through the same
//! reader. Here the text is parsed by serde_json as before (same acceptance, same
//! errors); only when the result holds a number that an `f64` may not represent
//! exactly (an integral value of 2^53 or more in magnitude) is the text read a
//! second time, pairing each number serde_json reports, in document order, with
//! its written form, which regorus reads as it reads a number in policy text
//! (integral values exactly, `1e25` included). Documents without
//! such numbers cost one extra walk over the parsed value.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

use regorus::Value;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The regorus value of `text`, which serde_json parsed into `parsed`.
pub fn to_value(text: &[u8], parsed: &serde_json::Value) -> Value {
    if !has_wide_number(parsed) {
        return json_to_value(parsed);
    }
    let numbers = number_tokens(text);
    let next = Cell::new(0);
    let seed = Exact {
        numbers: &numbers,
        next: &next,
    };
    let mut de = serde_json::Deserializer::from_slice(text);
    match seed.deserialize(&mut de) {
        Ok(v) if next.get() == numbers.len() => v,
        // Cannot happen for text serde_json accepted; keep its reading.
        _ => json_to_value(parsed),
    }
}

/// The first integer of `text` (JSON that serde_json parsed into `parsed`) that
/// does not fit in 64 bits, which a reading through serde_json rounds.
pub fn wide_integer<'a>(text: &'a [u8], parsed: &serde_json::Value) -> Option<&'a str> {
    if !has_wide_number(parsed) {
        return None;
    }
    number_tokens(text).into_iter().find(|t| {
        !t.contains(['.', 'e', 'E']) && t.parse::<i64>().is_err() && t.parse::<u64>().is_err()
    })
}

/// Whether `v` holds a number whose `f64` reading may have lost digits.
fn has_wide_number(v: &serde_json::Value) -> bool {
    const EXACT_LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53
    match v {
        serde_json::Value::Number(n) => {
            n.is_f64() && n.as_f64().is_some_and(|f| f.abs() >= EXACT_LIMIT)
        }
        serde_json::Value::Array(a) => a.iter().any(has_wide_number),
        serde_json::Value::Object(o) => o.values().any(has_wide_number),
        _ => false,
    }
}

/// The written form of every number in `text` (valid JSON), in document order.
fn number_tokens(text: &[u8]) -> Vec<&str> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => {
                i += 1;
                while i < text.len() && text[i] != b'"' {
                    i += if text[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < text.len()
                    && matches!(text[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                // ASCII by construction.
                out.push(std::str::from_utf8(&text[start..i]).unwrap_or("0"));
            }
            _ => i += 1,
        }
    }
    out
}

/// A serde seed that builds a regorus value, taking each number's written form
/// from `numbers` (the `next` one) instead of serde_json's reading.
#[derive(Clone, Copy)]
struct Exact<'a> {
    numbers: &'a [&'a str],
    next: &'a Cell<usize>,
}

impl Exact<'_> {
    fn number<E: serde::de::Error>(self, read: Value) -> Result<Value, E> {
        let i = self.next.get();
        self.next.set(i + 1);
        let Some(text) = self.numbers.get(i) else {
            return Err(E::custom("number out of step with the text"));
        };
        // regorus reads the written form as it reads a number in policy text:
        // integral values (`100000000000000000001`, `1e25`) exactly, others as `f64`.
        Ok(Value::from_numeric_string(text).unwrap_or(read))
    }
}

impl<'de> DeserializeSeed<'de> for Exact<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Exact<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Value, E> {
        self.number(Value::from(n))
    }
    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Value, E> {
        self.number(Value::from(n))
    }
    fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Value, E> {
        self.number(Value::from(n))
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Value, E> {
        Ok(Value::from(s))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            items.push(v);
        }
        Ok(Value::from(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = BTreeMap::new();
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(self)?;
            // Later duplicates win, as in serde_json's reading.
            fields.insert(Value::from(k), v);
        }
        Ok(Value::from(fields))
    }
}

/// Converts JSON into a regorus value without a text round-trip.
pub fn json_to_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::from(u)
            } else if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(t) => Value::from(t.as_str()),
        serde_json::Value::Array(a) => Value::from(a.iter().map(json_to_value).collect::<Vec<_>>()),
        serde_json::Value::Object(o) => Value::from(
            o.iter()
                .map(|(k, v)| (Value::from(k.as_str()), json_to_value(v)))
                .collect::<BTreeMap<_, _>>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(text: &str) -> Value {
        let parsed: serde_json::Value = serde_json::from_str(text).unwrap();
        to_value(text.as_bytes(), &parsed)
    }

    #[test]
    fn wide_integers_stay_exact() {
        let v = exact(
            r#"{"a": 100000000000000000001, "b": [100000000000000000000, -18446744073709551617], "s": "1 2", "k\"9": 0.5, "t": true, "e": 1e25}"#,
        );
        let a = &v["a"];
        let b = &v["b"][0];
        assert_ne!(a, b);
        assert_eq!(
            a,
            &Value::from_numeric_string("100000000000000000001").unwrap()
        );
        assert_eq!(
            &v["b"][1],
            &Value::from_numeric_string("-18446744073709551617").unwrap()
        );
        assert_eq!(v["k\"9"], Value::from(0.5));
        assert_eq!(v["s"], Value::from("1 2"));
        assert_eq!(v["t"], Value::Bool(true));
        assert_eq!(
            v["e"],
            Value::from_numeric_string("10000000000000000000000000").unwrap()
        );
    }

    #[test]
    fn wide_integers_are_found() {
        let text = r#"{"a": 1e30, "b": [18446744073709551615, -9223372036854775808], "c": 18446744073709551616}"#;
        let parsed: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            wide_integer(text.as_bytes(), &parsed),
            Some("18446744073709551616")
        );
        let text = r#"{"a": 1e30, "b": 18446744073709551615}"#;
        let parsed: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(wide_integer(text.as_bytes(), &parsed), None);
    }

    #[test]
    fn ordinary_documents_read_as_before() {
        let text = r#"{"n": 12, "f": 1.5, "big": 9007199254740991, "x": [null, "y"]}"#;
        let parsed: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(to_value(text.as_bytes(), &parsed), json_to_value(&parsed));
    }
}
