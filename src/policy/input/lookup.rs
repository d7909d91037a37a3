//! One path of the input document, computed from the facts without building
//! the document (the decision memo's keys).

use regorus::Value;

use super::document::{address, build_input, headers};
use super::facts::InputFacts;
use super::interned::{s, Interned, INTERNED};
use super::parse::parsed_path;
use crate::policy::exact_json::json_to_value;

/// The value of the input document at `path` (`Undefined` where it has none) —
/// exactly what a lookup in [`build_input`]'s document gives — computed from the
/// facts without building the document for the fields a decision key usually
/// names; any other path falls back to building it.
pub fn value_at(f: &InputFacts<'_>, path: &[String]) -> Value {
    let k: &Interned = &INTERNED;
    // The path as `&str`s on the stack (keys are short paths): no allocation per
    // request. Longer paths take the slow way.
    let mut view = [""; 8];
    if path.len() > view.len() {
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        return fallback(f, &p);
    }
    for (slot, seg) in view.iter_mut().zip(path) {
        *slot = seg.as_str();
    }
    let p = &view[..path.len()];
    let http = f.http.as_ref();
    let (leaf, rest): (Option<Value>, &[&str]) = match p {
        ["attributes", "source", "principal", rest @ ..] => (f.source_principal.map(s), rest),
        ["attributes", "destination", "principal", rest @ ..] => {
            (f.destination_principal.map(s), rest)
        }
        ["attributes", "source", "address", rest @ ..] => {
            (Some(address(k, &f.source_address)), rest)
        }
        ["attributes", "destination", "address", rest @ ..] => {
            (Some(address(k, &f.destination_address)), rest)
        }
        ["attributes", "request", "http", field, rest @ ..] if http.is_some() => {
            let Some(h) = http else {
                return Value::Undefined;
            };
            match *field {
                "id" => (Some(s(h.id)), rest),
                "method" => (Some(k.word(h.method)), rest),
                "path" => (Some(s(h.path)), rest),
                "host" => (Some(s(h.host)), rest),
                "scheme" => (Some(k.word(h.scheme)), rest),
                "protocol" => (Some(k.word(h.protocol)), rest),
                "size" => (h.size.map(Value::from), rest),
                "headers" => match rest {
                    [name, ..] => {
                        let pseudo = [&s(h.host), &k.word(h.method), &s(h.path), &k.word(h.scheme)];
                        let one = headers(k, h, |n| n == *name, pseudo);
                        return lookup(&one, &p[4..]).clone();
                    }
                    [] => return fallback(f, p),
                },
                _ => return fallback(f, p),
            }
        }
        ["attributes", "request", ..] if http.is_none() => return Value::Undefined,
        ["parsed_path", rest @ ..] => match http {
            Some(h) => (
                Some(parsed_path(
                    h.path.split_once('?').map_or(h.path, |(p, _)| p),
                )),
                rest,
            ),
            None => return Value::Undefined,
        },
        ["attributes", "metadataContext", "filterMetadata", "envoy.filters.http.jwt_authn", name, rest @ ..] =>
        {
            match f.jwt {
                Some((payload, claims)) if payload == *name => {
                    // Walk the claims JSON first, convert only what is reached.
                    let mut v = claims;
                    let mut rest = rest;
                    while let [seg, more @ ..] = rest {
                        match v.as_object().and_then(|o| o.get(*seg)) {
                            Some(next) => v = next,
                            None => match v {
                                serde_json::Value::Object(_) => return Value::Undefined,
                                // Arrays and scalars: let the value lookup decide.
                                _ => break,
                            },
                        }
                        rest = more;
                    }
                    (Some(json_to_value(v)), rest)
                }
                _ => return Value::Undefined,
            }
        }
        ["source_principal", rest @ ..] => (f.source_principal.map(s), rest),
        ["version", rest @ ..] => (Some(k.version_value.clone()), rest),
        _ => return fallback(f, p),
    };
    match leaf {
        Some(v) => lookup(&v, rest).clone(),
        None => Value::Undefined,
    }
}

/// A path the fast cases of [`value_at`] do not cover: from the full document.
pub(super) fn fallback(f: &InputFacts<'_>, path: &[&str]) -> Value {
    lookup(&build_input(f), path).clone()
}

/// The value at `path` inside `v` (string keys only; anything else is undefined).
pub(super) fn lookup<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut v = v;
    for seg in path {
        v = match v {
            Value::Object(o) => o.get(&Value::from(*seg)).unwrap_or(&Value::Undefined),
            _ => &Value::Undefined,
        };
    }
    v
}
