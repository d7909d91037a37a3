use super::document::*;
use super::facts::*;
use super::interned::*;
use super::lookup::*;
use super::parse::*;
use http::{HeaderMap, HeaderValue};
use regorus::Value;
use serde_json::json;
use std::net::SocketAddr;

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
