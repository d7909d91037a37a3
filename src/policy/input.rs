//! The policy input document: the OPA-Envoy (ext_authz v3, protojson) shape,
//! built directly as a [`regorus::Value`] so the hot path never goes through
//! JSON text.
//!
//! Fields that do not apply are absent, not empty: no `principal` without a
//! verified peer identity, no `attributes.request` for opaque TCP connections,
//! no `body`/`parsed_body`/`truncated_body` unless the body was buffered, no
//! `metadataContext` without verified JWT claims.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::LazyLock;

use super::access::{ClaimNeeds, HeaderNeeds, InputNeeds};
use base64::Engine as _;
use regorus::value::Object;
use regorus::Value;

/// Everything the proxy knows about a request or connection when it asks the policy.
#[derive(Debug, Clone)]
pub struct InputFacts<'a> {
    /// The peer that opened the connection.
    pub source_address: SocketAddr,
    /// The peer's verified SPIFFE ID, if it presented an SVID.
    pub source_principal: Option<&'a str>,
    /// Where the connection was going.
    pub destination_address: SocketAddr,
    /// The destination's SPIFFE ID (our own inbound, the verified peer outbound).
    pub destination_principal: Option<&'a str>,
    /// HTTP request attributes; `None` for opaque TCP (no `attributes.request` at all).
    pub http: Option<HttpFacts<'a>>,
    /// `(payload_in_metadata name, verified claims)` from JWT authentication.
    pub jwt: Option<(&'a str, &'a serde_json::Value)>,
}

/// HTTP request attributes, as forwarded upstream.
#[derive(Debug, Clone)]
pub struct HttpFacts<'a> {
    /// Request id (`x-request-id` or generated).
    pub id: &'a str,
    /// Method, e.g. `GET`.
    pub method: &'a str,
    /// Path and query exactly as forwarded.
    pub path: &'a str,
    /// Host / `:authority`.
    pub host: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'a str,
    /// Request headers (names are already lower-case in `http::HeaderMap`).
    pub headers: &'a http::HeaderMap,
    /// Content length when known.
    pub size: Option<u64>,
    /// Buffered body, when the policy asked for bodies.
    pub body: Option<&'a [u8]>,
    /// Whether `body` was cut at the buffer limit.
    pub truncated_body: bool,
    /// The request's content type, used to produce `parsed_body`.
    pub content_type: Option<&'a str>,
}

fn s(v: &str) -> Value {
    Value::from(v)
}

/// Pre-built values for the document's fixed key names and common strings.
/// Cloning one is a reference-count increment, not an allocation: a decision
/// builds this document for every request.
struct Interned {
    // Document keys.
    address: Value,
    attributes: Value,
    body: Value,
    destination: Value,
    filter_metadata: Value,
    headers: Value,
    host: Value,
    http: Value,
    id: Value,
    jwt_authn: Value,
    metadata_context: Value,
    method: Value,
    parsed_body: Value,
    parsed_path: Value,
    parsed_query: Value,
    path: Value,
    port_value: Value,
    principal: Value,
    protocol: Value,
    raw_body: Value,
    request: Value,
    scheme: Value,
    size: Value,
    socket_address: Value,
    source: Value,
    source_principal: Value,
    truncated_body: Value,
    version: Value,
    // Pseudo-header keys.
    p_authority: Value,
    p_method: Value,
    p_path: Value,
    p_scheme: Value,
    /// The constant `version` object.
    version_value: Value,
    /// `{}` (`parsed_query` without a query).
    empty_object: Value,
    /// Values of [`WORDS`].
    words: Vec<Value>,
    // Templates (frozen objects with placeholder values) for the fixed-shape
    // objects: filling one in costs two allocations and no sorting.
    t_socket_address: Object,
    t_address: Object,
    t_peer: Object,
    t_peer_principal: Object,
    t_request: Object,
    t_metadata_context: Object,
    t_filter_metadata: Object,
}

/// Strings common enough in requests to be worth sharing: header names,
/// methods, schemes, protocols. `match` compiles to a length switch plus one
/// comparison, cheaper than the allocation it saves.
fn word_index(v: &str) -> Option<usize> {
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
const WORDS: [&str; 35] = [
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
    fn word(&self, v: &str) -> Value {
        match word_index(v).and_then(|i| self.words.get(i)) {
            Some(w) => w.clone(),
            None => s(v),
        }
    }
}

/// An object with `keys` and `null` values, in regorus' compact (frozen)
/// storage, which a `Value` built from a map has and a clone keeps.
fn template(keys: &[&str]) -> Object {
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
fn fill<const N: usize>(template: &Object, entries: [(&Value, Value); N]) -> Value {
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

static INTERNED: LazyLock<Interned> = LazyLock::new(Interned::new);

/// An object from entries; `BTreeMap::from` sorts them in one pass.
fn obj<const N: usize>(entries: [(Value, Value); N]) -> Value {
    Value::from(BTreeMap::from(entries))
}

/// The textual IP address, formatted without a heap allocation.
fn ip_value(addr: &SocketAddr) -> Value {
    let mut buf = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    if write!(cursor, "{}", addr.ip()).is_ok() {
        let len = usize::try_from(cursor.position()).unwrap_or(0);
        if let Some(Ok(text)) = buf.get(..len).map(std::str::from_utf8) {
            return s(text);
        }
    }
    Value::from(addr.ip().to_string())
}

/// `{"socketAddress": {"address": …, "portValue": …}}`.
fn address(k: &Interned, addr: &SocketAddr) -> Value {
    let socket_address = fill(
        &k.t_socket_address,
        [
            (&k.address, ip_value(addr)),
            (&k.port_value, Value::from(u64::from(addr.port()))),
        ],
    );
    fill(&k.t_address, [(&k.socket_address, socket_address)])
}

fn peer(k: &Interned, addr: &SocketAddr, principal: Option<&Value>) -> Value {
    let address = address(k, addr);
    match principal {
        Some(p) => fill(
            &k.t_peer_principal,
            [(&k.address, address), (&k.principal, p.clone())],
        ),
        None => fill(&k.t_peer, [(&k.address, address)]),
    }
}

/// Builds the OPA-Envoy input document for one decision.
pub fn build_input(f: &InputFacts<'_>) -> Value {
    build_input_with(f, &InputNeeds::all())
}

/// [`build_input`] with only the fields a policy can read (see [`super::access`]):
/// the document is the same as far as that policy can tell, and much cheaper to
/// build (and drop) when the policy reads a few fields. The objects on the way to a
/// field are built with what they hold, so a field is present exactly when it is
/// present in the full document.
pub fn build_input_with(f: &InputFacts<'_>, n: &InputNeeds) -> Value {
    let k: &Interned = &INTERNED;
    let source_principal = f.source_principal.map(s);
    let mut attributes = BTreeMap::new();
    for (key, needs_address, addr, needs_principal, principal) in [
        (
            &k.source,
            n.source_address,
            &f.source_address,
            n.source_principal,
            source_principal.clone(),
        ),
        (
            &k.destination,
            n.destination_address,
            &f.destination_address,
            n.destination_principal,
            f.destination_principal.map(s),
        ),
    ] {
        if !needs_address && !needs_principal {
            continue;
        }
        let v = match (needs_address, needs_principal) {
            (true, true) => peer(k, addr, principal.as_ref()),
            (true, false) => fill(&k.t_peer, [(&k.address, address(k, addr))]),
            _ => Value::from(
                principal
                    .map(|p| BTreeMap::from([(k.principal.clone(), p)]))
                    .unwrap_or_default(),
            ),
        };
        attributes.insert(key.clone(), v);
    }
    let mut root = BTreeMap::new();
    if let Some(h) = &f.http {
        let mut http = BTreeMap::new();
        let method = k.word(h.method);
        let scheme = k.word(h.scheme);
        // Allocated only when a field or a pseudo-header carries them.
        let with_headers = n.headers != HeaderNeeds::None;
        let path = (n.http_path || with_headers).then(|| s(h.path));
        let host = (n.http_host || with_headers).then(|| s(h.host));
        if n.http_id {
            http.insert(k.id.clone(), s(h.id));
        }
        if n.http_method {
            http.insert(k.method.clone(), method.clone());
        }
        if let (true, Some(p)) = (n.http_path, &path) {
            http.insert(k.path.clone(), p.clone());
        }
        if let (true, Some(v)) = (n.http_host, &host) {
            http.insert(k.host.clone(), v.clone());
        }
        if n.http_scheme {
            http.insert(k.scheme.clone(), scheme.clone());
        }
        if n.http_protocol {
            http.insert(k.protocol.clone(), k.word(h.protocol));
        }
        if let (true, Some(host), Some(path)) = (with_headers, &host, &path) {
            let wanted = |name: &str| match &n.headers {
                HeaderNeeds::All => true,
                HeaderNeeds::Only(names) => names.iter().any(|n| n == name),
                HeaderNeeds::None => false,
            };
            http.insert(
                k.headers.clone(),
                headers(k, h, wanted, [host, &method, path, &scheme]),
            );
        }
        if let (true, Some(size)) = (n.http_size, h.size) {
            http.insert(k.size.clone(), Value::from(size));
        }
        if n.http_body {
            insert_body(k, &mut http, h);
        }
        // `attributes.request.http` exists whenever there is HTTP, with the fields
        // that are read.
        attributes.insert(
            k.request.clone(),
            fill(&k.t_request, [(&k.http, Value::from(http))]),
        );

        let (p, q) = h.path.split_once('?').unwrap_or((h.path, ""));
        if n.parsed_path {
            root.insert(k.parsed_path.clone(), parsed_path(p));
        }
        if n.parsed_query {
            let parsed = if q.is_empty() {
                k.empty_object.clone()
            } else {
                parse_query(q)
            };
            root.insert(k.parsed_query.clone(), parsed);
        }
        if let Some(body) = h.body {
            if n.parsed_body {
                if let Some(parsed) = parsed_body(body, h.content_type) {
                    root.insert(k.parsed_body.clone(), parsed);
                }
            }
            if n.truncated_body {
                root.insert(k.truncated_body.clone(), Value::Bool(h.truncated_body));
            }
        }
    }
    if let Some((name, claims)) = f.jwt {
        let payload = match &n.metadata {
            ClaimNeeds::All => Some(json_to_value(claims)),
            ClaimNeeds::None => None,
            ClaimNeeds::Only(wanted) => some_claims(name, claims, wanted),
        };
        if let Some(payload) = payload {
            attributes.insert(
                k.metadata_context.clone(),
                metadata_context(k, name, payload),
            );
        }
    }
    root.insert(k.attributes.clone(), Value::from(attributes));
    if let (true, Some(p)) = (n.root_source_principal, source_principal) {
        root.insert(k.source_principal.clone(), p);
    }
    if n.version {
        root.insert(k.version.clone(), k.version_value.clone());
    }
    Value::from(root)
}

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
fn fallback(f: &InputFacts<'_>, path: &[&str]) -> Value {
    lookup(&build_input(f), path).clone()
}

/// The value at `path` inside `v` (string keys only; anything else is undefined).
fn lookup<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut v = v;
    for seg in path {
        v = match v {
            Value::Object(o) => o.get(&Value::from(*seg)).unwrap_or(&Value::Undefined),
            _ => &Value::Undefined,
        };
    }
    v
}

/// The claims of payload `name` a policy reads (`wanted`), `None` when it reads none
/// of this payload.
fn some_claims(
    name: &str,
    claims: &serde_json::Value,
    wanted: &[(String, Option<String>)],
) -> Option<Value> {
    let mut picked = BTreeMap::new();
    let mut any = false;
    for (n, claim) in wanted {
        if n != name {
            continue;
        }
        any = true;
        match (claim, claims.as_object()) {
            (Some(c), Some(obj)) => {
                if let Some(v) = obj.get(c) {
                    picked.insert(s(c), json_to_value(v));
                }
            }
            // The whole payload (or a payload that is not an object).
            _ => return Some(json_to_value(claims)),
        }
    }
    any.then(|| Value::from(picked))
}

/// `attributes.metadataContext`: the claims under `filterMetadata`, as Envoy's
/// `jwt_authn` filter puts them.
fn metadata_context(k: &Interned, name: &str, payload: Value) -> Value {
    let by_name = obj([(s(name), payload)]);
    fill(
        &k.t_metadata_context,
        [(
            &k.filter_metadata,
            fill(&k.t_filter_metadata, [(&k.jwt_authn, by_name)]),
        )],
    )
}

/// The `headers` object: lower-case names, repeated headers joined with `,`
/// (`cookie` with `; `, as Envoy does), and
/// the request line as pseudo-headers (`:authority`, `:method`, `:path`,
/// `:scheme`: `pseudo` holds their values in that order), as Envoy exposes them
/// for HTTP/1.1 too (`host` is folded into `:authority`). Only the names `wanted`
/// accepts.
fn headers(
    k: &Interned,
    h: &HttpFacts<'_>,
    wanted: impl Fn(&str) -> bool,
    pseudo: [&Value; 4],
) -> Value {
    let mut headers: BTreeMap<Value, Value> = BTreeMap::new();
    let keys = [&k.p_authority, &k.p_method, &k.p_path, &k.p_scheme];
    for ((name, key), value) in [":authority", ":method", ":path", ":scheme"]
        .into_iter()
        .zip(keys)
        .zip(pseudo)
    {
        if wanted(name) {
            headers.insert(key.clone(), value.clone());
        }
    }
    for name in h.headers.keys() {
        let n = name.as_str();
        if n == "host" || !wanted(n) {
            continue;
        }
        let mut values = h.headers.get_all(name).iter();
        let Some(first) = values.next() else { continue };
        // Envoy joins repeated `cookie` headers with "; " (RFC 9113 §8.2.3), others with ",".
        let separator = if n == "cookie" { "; " } else { "," };
        let mut joined = lossy(first.as_bytes());
        for v in values {
            let j = joined.to_mut();
            j.push_str(separator);
            j.push_str(&lossy(v.as_bytes()));
        }
        headers.insert(k.word(n), s(&joined));
    }
    Value::from(headers)
}

/// `body` (UTF-8) or `rawBody` (base64), when the body was buffered.
fn insert_body(k: &Interned, m: &mut BTreeMap<Value, Value>, h: &HttpFacts<'_>) {
    if let Some(body) = h.body {
        match std::str::from_utf8(body) {
            Ok(text) => {
                m.insert(k.body.clone(), s(text));
            }
            Err(_) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(body);
                m.insert(k.raw_body.clone(), Value::from(b64));
            }
        }
    }
}

/// `b` as text, invalid UTF-8 replaced. `from_utf8` checks ASCII a word at a
/// time; `from_utf8_lossy` walks byte by byte even when all is valid (a JWT in
/// `authorization` is hundreds of bytes).
fn lossy(b: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(b),
    }
}

/// Percent-decodes `raw` (lossy UTF-8), borrowing when there is nothing to decode.
fn percent_decode(raw: &str, plus_as_space: bool) -> Cow<'_, str> {
    if plus_as_space && raw.contains('+') {
        let replaced = raw.replace('+', " ");
        return Cow::Owned(
            percent_encoding::percent_decode_str(&replaced)
                .decode_utf8_lossy()
                .into_owned(),
        );
    }
    percent_encoding::percent_decode_str(raw).decode_utf8_lossy()
}

/// `parsed_path`: leading slashes trimmed, split on `/`, then each segment
/// percent-decoded (so an encoded `%2F` stays inside its segment). `/` gives `[""]`.
fn parsed_path(path: &str) -> Value {
    let trimmed = path.trim_start_matches('/');
    let segments: Vec<Value> = trimmed
        .split('/')
        .map(|seg| s(&percent_decode(seg, false)))
        .collect();
    Value::from(segments)
}

/// Go `url.ParseQuery` semantics: `&`-separated, `+` is a space, a key
/// without `=` has the value `""`, repeated keys collect their values in order.
fn parse_query(query: &str) -> Value {
    let mut m: BTreeMap<Value, Vec<Value>> = BTreeMap::new();
    for pair in query.split('&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        m.entry(s(&percent_decode(k, true)))
            .or_default()
            .push(s(&percent_decode(v, true)));
    }
    Value::from(
        m.into_iter()
            .map(|(k, v)| (k, Value::from(v)))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn parsed_body(body: &[u8], content_type: Option<&str>) -> Option<Value> {
    let ct = content_type?;
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        Some(super::exact_json::to_value(body, &v))
    } else if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        let text = std::str::from_utf8(body).ok()?;
        Some(parse_query(text))
    } else {
        None
    }
}

/// Converts JSON into a regorus value without a text round-trip.
pub(crate) fn json_to_value(v: &serde_json::Value) -> Value {
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
        serde_json::Value::String(t) => s(t),
        serde_json::Value::Array(a) => Value::from(a.iter().map(json_to_value).collect::<Vec<_>>()),
        serde_json::Value::Object(o) => Value::from(
            o.iter()
                .map(|(k, v)| (s(k), json_to_value(v)))
                .collect::<BTreeMap<_, _>>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};
    use serde_json::json;

    #[test]
    fn parsed_body_keeps_wide_integers_exact() {
        let body = br#"{"ids": [100000000000000000001, 100000000000000000000], "n": 1}"#;
        let v = parsed_body(body, Some("application/json; charset=utf-8")).unwrap();
        let want = Value::from_numeric_string("100000000000000000001").unwrap();
        assert_eq!(v["ids"][0], want);
        assert_ne!(v["ids"][0], v["ids"][1]);
        assert_eq!(v["n"], Value::from(1u64));
    }

    fn to_json(v: &Value) -> serde_json::Value {
        match v.to_json_str() {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}")),
            Err(e) => panic!("{e}"),
        }
    }

    fn header_map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            let v = HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            h.append(*k, v);
        }
        h
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn design_example_field_for_field() {
        let headers = header_map(&[
            ("host", "backend:8080"),
            ("content-type", "application/json"),
            ("authorization", "Bearer …"),
        ]);
        let claims =
            json!({"iss": "https://idp.example", "sub": "alice", "aud": "orders", "role": "admin"});
        let body = br#"{"firstname":"Charlie"}"#;
        let facts = InputFacts {
            source_address: addr("10.1.0.7:35568"),
            source_principal: Some("spiffe://cluster.local/ns/default/sa/frontend"),
            destination_address: addr("10.1.0.9:8080"),
            destination_principal: Some("spiffe://cluster.local/ns/default/sa/backend"),
            http: Some(HttpFacts {
                id: "a7c3…",
                method: "POST",
                path: "/people?lang=en",
                host: "backend:8080",
                scheme: "http",
                protocol: "HTTP/1.1",
                headers: &headers,
                size: Some(41),
                body: Some(body),
                truncated_body: false,
                content_type: Some("application/json"),
            }),
            jwt: Some(("jwt_payload", &claims)),
        };
        let expected = json!({
          "attributes": {
            "source": {
              "address": {"socketAddress": {"address": "10.1.0.7", "portValue": 35568}},
              "principal": "spiffe://cluster.local/ns/default/sa/frontend"
            },
            "destination": {
              "address": {"socketAddress": {"address": "10.1.0.9", "portValue": 8080}},
              "principal": "spiffe://cluster.local/ns/default/sa/backend"
            },
            "request": {
              "http": {
                "id": "a7c3…", "method": "POST", "path": "/people?lang=en",
                "host": "backend:8080", "scheme": "http", "protocol": "HTTP/1.1",
                "headers": {":authority": "backend:8080", ":method": "POST", ":path": "/people?lang=en",
                            ":scheme": "http",
                            "content-type": "application/json", "authorization": "Bearer …"},
                "size": 41, "body": "{\"firstname\":\"Charlie\"}"
              }
            },
            "metadataContext": {"filterMetadata": {"envoy.filters.http.jwt_authn": {
              "jwt_payload": {"iss": "https://idp.example", "sub": "alice", "aud": "orders", "role": "admin"}}}}
          },
          "parsed_path": ["people"],
          "parsed_query": {"lang": ["en"]},
          "parsed_body": {"firstname": "Charlie"},
          "truncated_body": false,
          "source_principal": "spiffe://cluster.local/ns/default/sa/frontend",
          "version": {"ext_authz": "v3", "encoding": "protojson"}
        });
        assert_eq!(to_json(&build_input(&facts)), expected);
        // Numbers are numbers, not strings.
        let v = build_input(&facts);
        assert!(matches!(
            v["attributes"]["source"]["address"]["socketAddress"]["portValue"],
            Value::Number(_)
        ));
        assert!(matches!(
            v["attributes"]["request"]["http"]["size"],
            Value::Number(_)
        ));
    }

    /// Repeated `cookie` headers reach the policy joined with "; " as Envoy joins
    /// them (RFC 9113 §8.2.3); other repeated headers with ",".
    #[test]
    fn repeated_cookies_join_as_envoy_does() {
        let headers = header_map(&[
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        let facts = InputFacts {
            source_address: addr("10.1.0.7:35568"),
            source_principal: None,
            destination_address: addr("10.1.0.9:8080"),
            destination_principal: None,
            http: Some(HttpFacts {
                id: "1",
                method: "GET",
                path: "/",
                host: "backend",
                scheme: "http",
                protocol: "HTTP/1.1",
                headers: &headers,
                size: None,
                body: None,
                truncated_body: false,
                content_type: None,
            }),
            jwt: None,
        };
        let doc = to_json(&build_input(&facts));
        let h = &doc["attributes"]["request"]["http"]["headers"];
        assert_eq!(h["cookie"], json!("a=1; b=2"));
        assert_eq!(h["x-forwarded-for"], json!("10.0.0.1,10.0.0.2"));
        // The decision cache's key sees the same value.
        let path: Vec<String> = ["attributes", "request", "http", "headers", "cookie"]
            .iter()
            .map(|x| x.to_string())
            .collect();
        assert_eq!(to_json(&value_at(&facts, &path)), json!("a=1; b=2"));
    }

    #[test]
    fn absent_not_empty() {
        let facts = InputFacts {
            source_address: addr("[::1]:1234"),
            source_principal: None,
            destination_address: addr("127.0.0.1:5432"),
            destination_principal: None,
            http: None,
            jwt: None,
        };
        let doc = to_json(&build_input(&facts));
        assert_eq!(
            doc,
            json!({
                "attributes": {
                    "source": {"address": {"socketAddress": {"address": "::1", "portValue": 1234}}},
                    "destination": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": 5432}}}
                },
                "version": {"ext_authz": "v3", "encoding": "protojson"}
            })
        );

        let headers = header_map(&[("x-a", "1"), ("x-a", "2"), ("accept", "*/*")]);
        let facts = InputFacts {
            http: Some(HttpFacts {
                id: "1",
                method: "GET",
                path: "/",
                host: "h",
                scheme: "https",
                protocol: "HTTP/2",
                headers: &headers,
                size: None,
                body: None,
                truncated_body: false,
                content_type: None,
            }),
            ..facts
        };
        let doc = to_json(&build_input(&facts));
        let http = &doc["attributes"]["request"]["http"];
        assert!(http.get("size").is_none());
        assert!(http.get("body").is_none());
        assert!(doc.get("parsed_body").is_none());
        assert!(doc.get("truncated_body").is_none());
        assert!(doc.get("source_principal").is_none());
        assert!(doc["attributes"].get("metadataContext").is_none());
        assert!(doc["attributes"]["source"].get("principal").is_none());
        assert_eq!(http["headers"]["x-a"], json!("1,2"));
        assert_eq!(http["headers"][":scheme"], json!("https"));
        assert_eq!(doc["parsed_path"], json!([""]));
        assert_eq!(doc["parsed_query"], json!({}));
    }

    #[test]
    fn binary_and_form_bodies() {
        let headers = HeaderMap::new();
        let mk = |body: &'static [u8], ct: Option<&'static str>, truncated: bool| {
            let facts = InputFacts {
                source_address: addr("10.0.0.1:1"),
                source_principal: None,
                destination_address: addr("10.0.0.2:2"),
                destination_principal: None,
                http: Some(HttpFacts {
                    id: "1",
                    method: "POST",
                    path: "/",
                    host: "h",
                    scheme: "http",
                    protocol: "HTTP/1.1",
                    headers: &headers,
                    size: Some(body.len() as u64),
                    body: Some(body),
                    truncated_body: truncated,
                    content_type: ct,
                }),
                jwt: None,
            };
            to_json(&build_input(&facts))
        };
        let doc = mk(&[0xff, 0x00, 0x01], Some("application/octet-stream"), true);
        assert_eq!(
            doc["attributes"]["request"]["http"]["rawBody"],
            json!("/wAB")
        );
        assert!(doc["attributes"]["request"]["http"].get("body").is_none());
        assert_eq!(doc["truncated_body"], json!(true));
        assert!(doc.get("parsed_body").is_none());

        let doc = mk(
            b"a=1&b=x+y&a=2",
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            false,
        );
        assert_eq!(doc["parsed_body"], json!({"a": ["1", "2"], "b": ["x y"]}));

        let doc = mk(b"{not json", Some("application/json"), false);
        assert!(doc.get("parsed_body").is_none());
        assert_eq!(
            doc["attributes"]["request"]["http"]["body"],
            json!("{not json")
        );
    }

    #[test]
    fn parsed_path_edge_cases() {
        let p = |path: &str| to_json(&parsed_path(path));
        assert_eq!(p("/"), json!([""]));
        assert_eq!(p(""), json!([""]));
        assert_eq!(p("/people"), json!(["people"]));
        assert_eq!(p("/api/v1/"), json!(["api", "v1", ""]));
        assert_eq!(p("/a%2Fb/c"), json!(["a/b", "c"]));
        assert_eq!(p("/caf%C3%A9/%20x"), json!(["café", " x"]));
        assert_eq!(p("/a+b"), json!(["a+b"]));
    }

    #[test]
    fn interned_words_match_their_index() {
        for (i, w) in WORDS.iter().enumerate() {
            assert_eq!(word_index(w), Some(i), "{w}");
        }
        assert_eq!(word_index("x-unknown"), None);
        let k: &Interned = &INTERNED;
        assert_eq!(k.word("GET"), Value::from("GET"));
        assert_eq!(k.word("user-agent"), Value::from("user-agent"));
        assert_eq!(k.word("x-custom"), Value::from("x-custom"));
        assert_eq!(
            ip_value(&addr("[2001:db8::1]:1")),
            Value::from("2001:db8::1")
        );
    }

    #[test]
    fn parsed_query_edge_cases() {
        let q = |query: &str| to_json(&parse_query(query));
        assert_eq!(q(""), json!({}));
        assert_eq!(q("a=1&a=2"), json!({"a": ["1", "2"]}));
        assert_eq!(q("flag"), json!({"flag": [""]}));
        assert_eq!(q("a=&b"), json!({"a": [""], "b": [""]}));
        assert_eq!(
            q("q=x+y%2Bz&&k%20=v=w"),
            json!({"q": ["x y+z"], "k ": ["v=w"]})
        );
        assert_eq!(q("lang=en"), json!({"lang": ["en"]}));
    }
}

#[cfg(test)]
mod pruning_tests {
    use super::*;
    use crate::policy::access::InputAccess;
    use http::{HeaderMap, HeaderValue};
    use serde_json::json;

    fn access(src: &str) -> InputAccess {
        let mut engine = regorus::Engine::new();
        engine
            .add_policy("p.rego".to_string(), src.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        InputAccess::of_query(engine.get_modules(), "data.p")
    }

    /// Every path of the document a policy can name, and some it cannot find.
    const PATHS: &[&[&str]] = &[
        &["attributes"],
        &["attributes", "source"],
        &["attributes", "source", "address"],
        &[
            "attributes",
            "source",
            "address",
            "socketAddress",
            "portValue",
        ],
        &["attributes", "source", "principal"],
        &[
            "attributes",
            "destination",
            "address",
            "socketAddress",
            "address",
        ],
        &["attributes", "destination", "principal"],
        &["attributes", "request"],
        &["attributes", "request", "http"],
        &["attributes", "request", "http", "id"],
        &["attributes", "request", "http", "method"],
        &["attributes", "request", "http", "path"],
        &["attributes", "request", "http", "host"],
        &["attributes", "request", "http", "scheme"],
        &["attributes", "request", "http", "protocol"],
        &["attributes", "request", "http", "size"],
        &["attributes", "request", "http", "body"],
        &["attributes", "request", "http", "rawBody"],
        &["attributes", "request", "http", "headers"],
        &["attributes", "request", "http", "headers", "x-magic"],
        &["attributes", "request", "http", "headers", ":path"],
        &["attributes", "request", "http", "headers", ":authority"],
        &["attributes", "request", "http", "headers", ":method"],
        &["attributes", "request", "http", "headers", "X-Magic"],
        &["attributes", "request", "http", "headers", "host"],
        &[
            "attributes",
            "request",
            "http",
            "headers",
            "x-magic",
            "deeper",
        ],
        &["attributes", "request", "http", "method", "deeper"],
        &["attributes", "request", "http", "unknown"],
        &[
            "attributes",
            "source",
            "address",
            "socketAddress",
            "address",
        ],
        &["attributes", "destination", "address"],
        &["attributes", "destination"],
        &["attributes", "request", "http", "protocol"],
        &[
            "attributes",
            "metadataContext",
            "filterMetadata",
            "envoy.filters.http.jwt_authn",
            "jwt_payload",
            "groups",
        ],
        &[
            "attributes",
            "metadataContext",
            "filterMetadata",
            "envoy.filters.http.jwt_authn",
            "jwt_payload",
            "groups",
            "x",
        ],
        &[
            "attributes",
            "metadataContext",
            "filterMetadata",
            "envoy.filters.http.jwt_authn",
            "jwt_payload",
            "nested",
            "a",
        ],
        &[
            "attributes",
            "metadataContext",
            "filterMetadata",
            "envoy.filters.http.jwt_authn",
            "jwt_payload",
            "nested",
            "a",
            "b",
        ],
        &[
            "attributes",
            "metadataContext",
            "filterMetadata",
            "envoy.filters.http.jwt_authn",
            "jwt_payload",
            "role",
            "x",
        ],
        &["parsed_path", "x"],
        &["source_principal", "x"],
        &["version", "ext_authz"],
        &[
            "attributes",
            "metadataContext",
            "filterMetadata",
            "envoy.filters.http.jwt_authn",
            "jwt_payload",
            "role",
        ],
        &["attributes", "metadataContext"],
        &[
            "attributes",
            "metadataContext",
            "filterMetadata",
            "envoy.filters.http.jwt_authn",
            "jwt_payload",
        ],
        &[
            "attributes",
            "metadataContext",
            "filterMetadata",
            "envoy.filters.http.jwt_authn",
            "jwt_payload",
            "missing",
        ],
        &[
            "attributes",
            "metadataContext",
            "filterMetadata",
            "envoy.filters.http.jwt_authn",
            "other",
            "role",
        ],
        &[
            "attributes",
            "metadataContext",
            "filterMetadata",
            "envoy.filters.http.jwt_authn",
        ],
        &["parsed_path"],
        &["parsed_query"],
        &["parsed_query", "lang"],
        &["parsed_body"],
        &["truncated_body"],
        &["source_principal"],
        &["version"],
        &["nowhere"],
    ];

    fn rego_ref(path: &[&str]) -> String {
        let mut s = String::from("input");
        for seg in path {
            s.push_str(&format!("[{seg:?}]"));
        }
        s
    }

    /// For a policy reading any one path (or a few), the pruned document holds the
    /// same value as the full one at every path the policy reads, for requests with
    /// and without HTTP, bodies, claims and principals.
    #[test]
    fn pruned_document_agrees_at_every_path_read() {
        let mut policies: Vec<String> = PATHS
            .iter()
            .map(|p| format!("package p\nimport rego.v1\nx := {}\n", rego_ref(p)))
            .collect();
        policies.push(format!(
            "package p\nimport rego.v1\nx := [{}, {}, {}]\n",
            rego_ref(PATHS[4]),
            rego_ref(PATHS[19]),
            rego_ref(PATHS[24])
        ));
        let headers = {
            let mut h = HeaderMap::new();
            for (k, v) in [
                ("x-magic", "please"),
                ("x-magic", "again"),
                ("accept", "*/*"),
                ("host", "b"),
            ] {
                h.append(k, HeaderValue::from_static(v));
            }
            h
        };
        let claims = json!({"sub": "alice", "role": "admin", "groups": ["a", "b"], "nested": {"a": {"b": 7}}});
        let mut facts_list = Vec::new();
        for principal in [Some("spiffe://cluster.local/ns/default/sa/frontend"), None] {
            for with_http in [true, false] {
                for body in [None, Some(&br#"{"a": 1}"#[..]), Some(&b"\xff\xfe"[..])] {
                    for jwt in [None, Some(("jwt_payload", &claims))] {
                        for path in ["/api/x?lang=en&x=1", "/"] {
                            facts_list.push(InputFacts {
                                source_address: "10.1.0.7:35568"
                                    .parse()
                                    .unwrap_or_else(|e| panic!("{e}")),
                                source_principal: principal,
                                destination_address: "[::1]:8080"
                                    .parse()
                                    .unwrap_or_else(|e| panic!("{e}")),
                                destination_principal: principal
                                    .map(|_| "spiffe://cluster.local/ns/default/sa/demo"),
                                http: with_http.then(|| HttpFacts {
                                    id: "req-1",
                                    method: "POST",
                                    path,
                                    host: "backend:8080",
                                    scheme: "https",
                                    protocol: "HTTP/2",
                                    headers: &headers,
                                    size: body.map(|b| b.len() as u64),
                                    body,
                                    truncated_body: body.is_some(),
                                    content_type: Some("application/json"),
                                }),
                                jwt,
                            });
                        }
                    }
                }
            }
        }
        let mut compared = 0;
        for src in &policies {
            let access = access(src);
            assert_ne!(access.describe(), ["input"], "{src}");
            for facts in &facts_list {
                let full = build_input(facts);
                let pruned = build_input_with(facts, &access.needs());
                for owned in access.paths() {
                    let path: Vec<&str> = owned.iter().map(String::as_str).collect();
                    assert_eq!(
                        lookup(&pruned, &path),
                        lookup(&full, &path),
                        "{src}: {path:?} for {facts:?}"
                    );
                    // The decision key's value, computed without the document.
                    assert_eq!(
                        &value_at(facts, owned),
                        lookup(&full, &path),
                        "value_at {path:?} for {facts:?}"
                    );
                    compared += 1;
                }
            }
        }
        assert!(compared > 1000, "{compared}");
    }

    /// The decision key is the input's values at the paths read: requests that differ
    /// only elsewhere (id, ports, other headers) share it; any read difference splits it.
    #[test]
    fn decision_keys_tell_apart_only_what_the_policy_reads() {
        let access = access(
            "package p\nimport rego.v1\nallow if {\n input.attributes.source.principal == \"a\"\n input.attributes.request.http.method == \"GET\"\n}\n",
        );
        let key = |f: &InputFacts<'_>| -> Vec<Value> {
            access.paths().iter().map(|p| value_at(f, p)).collect()
        };
        let mut h1 = HeaderMap::new();
        h1.insert("x-one", HeaderValue::from_static("1"));
        let h2 = HeaderMap::new();
        let facts = |id, port, method, headers| InputFacts {
            source_address: SocketAddr::from(([10, 0, 0, 1], port)),
            source_principal: Some("spiffe://cluster.local/ns/a/sa/b"),
            destination_address: "10.0.0.2:8080".parse().unwrap_or_else(|e| panic!("{e}")),
            destination_principal: None,
            http: Some(HttpFacts {
                id,
                method,
                path: "/x",
                host: "b",
                scheme: "https",
                protocol: "HTTP/1.1",
                headers,
                size: None,
                body: None,
                truncated_body: false,
                content_type: None,
            }),
            jwt: None,
        };
        let k1 = key(&facts("r1", 1000, "GET", &h1));
        let k2 = key(&facts("r2", 2000, "GET", &h2));
        let k3 = key(&facts("r3", 1000, "POST", &h1));
        let mut no_http = facts("r4", 1000, "GET", &h1);
        no_http.http = None;
        let k4 = key(&no_http);
        assert_eq!(k1, k2);
        assert_ne!(k1, k3);
        assert_ne!(k1, k4);
        // The document for this policy is pruned: no headers, no id, no addresses.
        let base = facts("r1", 1000, "GET", &h1);
        let (full, pruned) = (build_input(&base), build_input_with(&base, &access.needs()));
        for path in [
            &["attributes", "request", "http", "headers"][..],
            &["attributes", "request", "http", "id"],
            &["attributes", "source", "address"],
            &["version"],
        ] {
            assert_ne!(lookup(&full, path), &Value::Undefined, "{path:?}");
            assert_eq!(lookup(&pruned, path), &Value::Undefined, "{path:?}");
        }
        // Paths in order: `…request.http.method`, then `…source.principal`.
        assert_eq!(
            k4,
            vec![
                Value::Undefined,
                Value::from("spiffe://cluster.local/ns/a/sa/b")
            ]
        );
    }
}
