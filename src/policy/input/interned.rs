//! The document's fixed key names, common words and object templates, built
//! once: cloning one is a reference-count increment, not an allocation.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regorus::value::Object;
use regorus::Value;

pub(super) fn s(v: &str) -> Value {
    Value::from(v)
}

/// Pre-built values for the document's fixed key names and common strings.
/// Cloning one is a reference-count increment, not an allocation: a decision
/// builds this document for every request.
pub(super) struct Interned {
    // Document keys.
    pub(super) address: Value,
    pub(super) attributes: Value,
    pub(super) body: Value,
    pub(super) destination: Value,
    pub(super) filter_metadata: Value,
    pub(super) headers: Value,
    pub(super) host: Value,
    pub(super) http: Value,
    pub(super) id: Value,
    pub(super) jwt_authn: Value,
    pub(super) metadata_context: Value,
    pub(super) method: Value,
    pub(super) parsed_body: Value,
    pub(super) parsed_path: Value,
    pub(super) parsed_query: Value,
    pub(super) path: Value,
    pub(super) port_value: Value,
    pub(super) principal: Value,
    pub(super) protocol: Value,
    pub(super) raw_body: Value,
    pub(super) request: Value,
    pub(super) scheme: Value,
    pub(super) size: Value,
    pub(super) socket_address: Value,
    pub(super) source: Value,
    pub(super) source_principal: Value,
    pub(super) truncated_body: Value,
    pub(super) version: Value,
    // Pseudo-header keys.
    pub(super) p_authority: Value,
    pub(super) p_method: Value,
    pub(super) p_path: Value,
    pub(super) p_scheme: Value,
    /// The constant `version` object.
    pub(super) version_value: Value,
    /// `{}` (`parsed_query` without a query).
    pub(super) empty_object: Value,
    /// Values of [`WORDS`].
    pub(super) words: Vec<Value>,
    // Templates (frozen objects with placeholder values) for the fixed-shape
    // objects: filling one in costs two allocations and no sorting.
    pub(super) t_socket_address: Object,
    pub(super) t_address: Object,
    pub(super) t_peer: Object,
    pub(super) t_peer_principal: Object,
    pub(super) t_request: Object,
    pub(super) t_metadata_context: Object,
    pub(super) t_filter_metadata: Object,
}

/// Strings common enough in requests to be worth sharing: header names,
/// methods, schemes, protocols. `match` compiles to a length switch plus one
/// comparison, cheaper than the allocation it saves.
pub(super) fn word_index(v: &str) -> Option<usize> {
    Some(match v {
        "GET" => 0,
        "HEAD" => 1,
        "POST" => 2,
        "PUT" => 3,
        "PATCH" => 4,
        "DELETE" => 5,
        "OPTIONS" => 6,
        "CONNECT" => 7,
        "TRACE" => 8,
        "http" => 9,
        "https" => 10,
        "HTTP/1.0" => 11,
        "HTTP/1.1" => 12,
        "HTTP/2" => 13,
        "accept" => 14,
        "accept-encoding" => 15,
        "accept-language" => 16,
        "authorization" => 17,
        "cache-control" => 18,
        "connection" => 19,
        "content-length" => 20,
        "content-type" => 21,
        "cookie" => 22,
        "origin" => 23,
        "referer" => 24,
        "te" => 25,
        "traceparent" => 26,
        "tracestate" => 27,
        "user-agent" => 28,
        "x-b3-sampled" => 29,
        "x-b3-spanid" => 30,
        "x-b3-traceid" => 31,
        "x-forwarded-for" => 32,
        "x-forwarded-proto" => 33,
        "x-request-id" => 34,
        _ => return None,
    })
}

/// The strings of [`word_index`], in index order.
pub(super) const WORDS: [&str; 35] = [
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "PATCH",
    "DELETE",
    "OPTIONS",
    "CONNECT",
    "TRACE",
    "http",
    "https",
    "HTTP/1.0",
    "HTTP/1.1",
    "HTTP/2",
    "accept",
    "accept-encoding",
    "accept-language",
    "authorization",
    "cache-control",
    "connection",
    "content-length",
    "content-type",
    "cookie",
    "origin",
    "referer",
    "te",
    "traceparent",
    "tracestate",
    "user-agent",
    "x-b3-sampled",
    "x-b3-spanid",
    "x-b3-traceid",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-request-id",
];

impl Interned {
    fn new() -> Self {
        let mut version = BTreeMap::new();
        version.insert(s("ext_authz"), s("v3"));
        version.insert(s("encoding"), s("protojson"));
        Interned {
            address: s("address"),
            attributes: s("attributes"),
            body: s("body"),
            destination: s("destination"),
            filter_metadata: s("filterMetadata"),
            headers: s("headers"),
            host: s("host"),
            http: s("http"),
            id: s("id"),
            jwt_authn: s("envoy.filters.http.jwt_authn"),
            metadata_context: s("metadataContext"),
            method: s("method"),
            parsed_body: s("parsed_body"),
            parsed_path: s("parsed_path"),
            parsed_query: s("parsed_query"),
            path: s("path"),
            port_value: s("portValue"),
            principal: s("principal"),
            protocol: s("protocol"),
            raw_body: s("rawBody"),
            request: s("request"),
            scheme: s("scheme"),
            size: s("size"),
            socket_address: s("socketAddress"),
            source: s("source"),
            source_principal: s("source_principal"),
            truncated_body: s("truncated_body"),
            version: s("version"),
            p_authority: s(":authority"),
            p_method: s(":method"),
            p_path: s(":path"),
            p_scheme: s(":scheme"),
            version_value: Value::from(version),
            empty_object: Value::from(BTreeMap::new()),
            words: WORDS.iter().map(|w| s(w)).collect(),
            t_socket_address: template(&["address", "portValue"]),
            t_address: template(&["socketAddress"]),
            t_peer: template(&["address"]),
            t_peer_principal: template(&["address", "principal"]),
            t_request: template(&["http"]),
            t_metadata_context: template(&["filterMetadata"]),
            t_filter_metadata: template(&["envoy.filters.http.jwt_authn"]),
        }
    }

    /// `v` as a value, shared when it is a common word.
    pub(super) fn word(&self, v: &str) -> Value {
        match word_index(v).and_then(|i| self.words.get(i)) {
            Some(w) => w.clone(),
            None => s(v),
        }
    }
}

/// An object with `keys` and `null` values, in regorus' compact (frozen)
/// storage, which a `Value` built from a map has and a clone keeps.
pub(super) fn template(keys: &[&str]) -> Object {
    let v = Value::from(
        keys.iter()
            .map(|k| (s(k), Value::Null))
            .collect::<BTreeMap<_, _>>(),
    );
    match v {
        Value::Object(o) => Object::clone(&o),
        _ => Object::new(),
    }
}

/// A copy of `template` with the values of `entries` (keys of the template).
pub(super) fn fill<const N: usize>(template: &Object, entries: [(&Value, Value); N]) -> Value {
    let mut o = template.clone();
    for (k, v) in entries {
        // Replacing the value of an existing key keeps the compact storage.
        match o.get_mut(k) {
            Some(slot) => *slot = v,
            None => {
                o.insert(k.clone(), v);
            }
        }
    }
    Value::from(o)
}

pub(super) static INTERNED: LazyLock<Interned> = LazyLock::new(Interned::new);

/// An object from entries; `BTreeMap::from` sorts them in one pass.
pub(super) fn obj<const N: usize>(entries: [(Value, Value); N]) -> Value {
    Value::from(BTreeMap::from(entries))
}
