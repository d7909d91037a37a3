use super::document::*;
use super::facts::*;
use super::lookup::*;
use crate::policy::access::InputAccess;
use http::{HeaderMap, HeaderValue};
use regorus::Value;
use serde_json::json;
use std::net::SocketAddr;

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
    let claims =
        json!({"sub": "alice", "role": "admin", "groups": ["a", "b"], "nested": {"a": {"b": 7}}});
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
