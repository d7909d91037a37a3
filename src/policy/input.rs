//! The policy input document: the OPA-Envoy (ext_authz v3, protojson) shape,
//! built directly as a [`regorus::Value`] so the hot path never goes through
//! JSON text.
//!
//! Fields that do not apply are absent, not empty: no `principal` without a
//! verified peer identity, no `attributes.request` for opaque TCP connections,
//! no `body`/`parsed_body`/`truncated_body` unless the body was buffered, no
//! `metadataContext` without verified JWT claims.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use base64::Engine as _;
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

fn obj<const N: usize>(entries: [(&str, Value); N]) -> Value {
    let mut m = BTreeMap::new();
    for (k, v) in entries {
        m.insert(s(k), v);
    }
    Value::from(m)
}

fn socket_address(addr: &SocketAddr) -> Value {
    obj([(
        "socketAddress",
        obj([
            ("address", Value::from(addr.ip().to_string())),
            ("portValue", Value::from(u64::from(addr.port()))),
        ]),
    )])
}

fn peer(addr: &SocketAddr, principal: Option<&str>) -> Value {
    let mut m = BTreeMap::new();
    m.insert(s("address"), socket_address(addr));
    if let Some(p) = principal {
        m.insert(s("principal"), s(p));
    }
    Value::from(m)
}

/// Builds the OPA-Envoy input document for one decision.
pub fn build_input(f: &InputFacts<'_>) -> Value {
    let mut attributes = BTreeMap::new();
    attributes.insert(s("source"), peer(&f.source_address, f.source_principal));
    attributes.insert(
        s("destination"),
        peer(&f.destination_address, f.destination_principal),
    );

    let mut root = BTreeMap::new();
    if let Some(h) = &f.http {
        attributes.insert(s("request"), obj([("http", http_attributes(h))]));
        let (path, query) = match h.path.split_once('?') {
            Some((p, q)) => (p, q),
            None => (h.path, ""),
        };
        root.insert(s("parsed_path"), parsed_path(path));
        root.insert(s("parsed_query"), parse_query(query));
        if let Some(body) = h.body {
            if let Some(parsed) = parsed_body(body, h.content_type) {
                root.insert(s("parsed_body"), parsed);
            }
            root.insert(s("truncated_body"), Value::Bool(h.truncated_body));
        }
    }
    if let Some((name, claims)) = f.jwt {
        let mut by_name = BTreeMap::new();
        by_name.insert(s(name), json_to_value(claims));
        attributes.insert(
            s("metadataContext"),
            obj([(
                "filterMetadata",
                obj([("envoy.filters.http.jwt_authn", Value::from(by_name))]),
            )]),
        );
    }
    root.insert(s("attributes"), Value::from(attributes));
    if let Some(p) = f.source_principal {
        root.insert(s("source_principal"), s(p));
    }
    root.insert(
        s("version"),
        obj([("ext_authz", s("v3")), ("encoding", s("protojson"))]),
    );
    Value::from(root)
}

fn http_attributes(h: &HttpFacts<'_>) -> Value {
    let mut headers: BTreeMap<Value, Value> = BTreeMap::new();
    // Envoy exposes the request line as pseudo-headers for HTTP/1.1 too, and
    // folds `host` into `:authority`.
    headers.insert(s(":authority"), s(h.host));
    headers.insert(s(":method"), s(h.method));
    headers.insert(s(":path"), s(h.path));
    headers.insert(s(":scheme"), s(h.scheme));
    for name in h.headers.keys() {
        let n = name.as_str();
        if n == "host" {
            continue;
        }
        let mut joined = String::new();
        for (i, v) in h.headers.get_all(name).iter().enumerate() {
            if i > 0 {
                joined.push(',');
            }
            joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
        }
        headers.insert(s(n), Value::from(joined));
    }

    let mut m = BTreeMap::new();
    m.insert(s("id"), s(h.id));
    m.insert(s("method"), s(h.method));
    m.insert(s("path"), s(h.path));
    m.insert(s("host"), s(h.host));
    m.insert(s("scheme"), s(h.scheme));
    m.insert(s("protocol"), s(h.protocol));
    m.insert(s("headers"), Value::from(headers));
    if let Some(size) = h.size {
        m.insert(s("size"), Value::from(size));
    }
    if let Some(body) = h.body {
        match std::str::from_utf8(body) {
            Ok(text) => {
                m.insert(s("body"), s(text));
            }
            Err(_) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(body);
                m.insert(s("rawBody"), Value::from(b64));
            }
        }
    }
    Value::from(m)
}

fn percent_decode(raw: &str, plus_as_space: bool) -> String {
    if plus_as_space && raw.contains('+') {
        let replaced = raw.replace('+', " ");
        return percent_encoding::percent_decode_str(&replaced)
            .decode_utf8_lossy()
            .into_owned();
    }
    percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned()
}

/// `parsed_path`: leading slashes trimmed, split on `/`, then each segment
/// percent-decoded (so an encoded `%2F` stays inside its segment). `/` gives `[""]`.
fn parsed_path(path: &str) -> Value {
    let trimmed = path.trim_start_matches('/');
    let segments: Vec<Value> = trimmed
        .split('/')
        .map(|seg| Value::from(percent_decode(seg, false)))
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
        m.entry(Value::from(percent_decode(k, true)))
            .or_default()
            .push(Value::from(percent_decode(v, true)));
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
        Some(json_to_value(&v))
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
