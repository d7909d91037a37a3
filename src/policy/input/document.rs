//! Building the OPA-Envoy input document from the facts, whole or pruned to
//! what a policy can read.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;

use base64::Engine as _;
use regorus::Value;

use super::facts::{HttpFacts, InputFacts};
use super::interned::{fill, obj, s, Interned, INTERNED};
use super::parse::{lossy, parse_query, parsed_body, parsed_path};
use crate::policy::access::{ClaimNeeds, HeaderNeeds, InputNeeds};
use crate::policy::exact_json::json_to_value;

/// The textual IP address, formatted without a heap allocation.
pub(super) fn ip_value(addr: &SocketAddr) -> Value {
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
pub(super) fn address(k: &Interned, addr: &SocketAddr) -> Value {
    let socket_address = fill(
        &k.t_socket_address,
        [
            (&k.address, ip_value(addr)),
            (&k.port_value, Value::from(u64::from(addr.port()))),
        ],
    );
    fill(&k.t_address, [(&k.socket_address, socket_address)])
}

pub(super) fn peer(k: &Interned, addr: &SocketAddr, principal: Option<&Value>) -> Value {
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

/// [`build_input`] with only the fields a policy can read (see [`crate::policy::access`]):
/// the document is the same as far as that policy can tell, and much cheaper to
/// build (and drop) when the policy reads a few fields. The objects on the way to a
/// field are built with what they hold, so a field is present exactly when it is
/// present in the full document.
pub fn build_input_with(f: &InputFacts<'_>, n: &InputNeeds) -> Value {
    let k: &Interned = &INTERNED;
    let source_principal = f.source_principal.map(s);
    let mut attributes = peers(k, f, n, source_principal.clone());
    let mut root = BTreeMap::new();
    if let Some(h) = &f.http {
        // `attributes.request.http` exists whenever there is HTTP, with the fields
        // that are read.
        attributes.insert(
            k.request.clone(),
            fill(&k.t_request, [(&k.http, Value::from(http_fields(k, h, n)))]),
        );
        insert_parsed(k, h, n, &mut root);
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

/// `attributes.source` and `attributes.destination`, with the address and
/// principal fields that are read.
fn peers(
    k: &Interned,
    f: &InputFacts<'_>,
    n: &InputNeeds,
    source_principal: Option<Value>,
) -> BTreeMap<Value, Value> {
    let mut attributes = BTreeMap::new();
    for (key, needs_address, addr, needs_principal, principal) in [
        (
            &k.source,
            n.source_address,
            &f.source_address,
            n.source_principal,
            source_principal,
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
    attributes
}

/// The fields of `attributes.request.http` that are read.
fn http_fields(k: &Interned, h: &HttpFacts<'_>, n: &InputNeeds) -> BTreeMap<Value, Value> {
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
    http
}

/// `parsed_path`, `parsed_query`, `parsed_body` and `truncated_body`, when read.
fn insert_parsed(
    k: &Interned,
    h: &HttpFacts<'_>,
    n: &InputNeeds,
    root: &mut BTreeMap<Value, Value>,
) {
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

/// The claims of payload `name` a policy reads (`wanted`), `None` when it reads none
/// of this payload.
pub(super) fn some_claims(
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
pub(super) fn metadata_context(k: &Interned, name: &str, payload: Value) -> Value {
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
pub(super) fn headers(
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
pub(super) fn insert_body(k: &Interned, m: &mut BTreeMap<Value, Value>, h: &HttpFacts<'_>) {
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
