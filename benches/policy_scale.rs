//! How decision time grows with policy size: one inbound decision (build the
//! OPA-Envoy input, evaluate `data.envoy.authz.allow`) against generated policies.
//!
//! - `rules/N`: N rules (10, 100, 1000), each matching a principal, a method and
//!   a path prefix; the request matches the last one, so no rule is skipped early.
//! - `data_keyed/10000`: the example RBAC policy (`policies/authz.rego`) with
//!   10 000 SPIFFE IDs bound to roles in `data.rbac.bindings` (a keyed lookup).
//! - `data_scan/10000`: a policy that scans a 10 000-entry list in `data` for the
//!   caller (what a naive policy does), for contrast with the keyed lookup.
//!
//! Run: `cargo bench --bench policy_scale -- --warm-up-time 1 --measurement-time 3`
//! (`bench/run.sh` runs it and copies the figures into the results).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue};
use portcullis::policy::{build_input, HttpFacts, InputFacts, PolicySet};
use serde_json::{json, Value};

const QUERY: &str = "data.envoy.authz.allow";
const DATA_ENTRIES: usize = 10_000;

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "backend:8080"),
        ("user-agent", "portcullis-bench/1.0"),
        ("accept", "application/json"),
        ("x-request-id", "3f1c6a0e-8a55-4a4e-9d3e-4c2b7f1f0c11"),
        ("content-length", "0"),
    ] {
        h.append(k, HeaderValue::from_static(v));
    }
    h
}

fn principal(i: usize) -> String {
    format!("spiffe://cluster.local/ns/default/sa/client{i}")
}

/// `n` rules; rule `i` allows `client{i}` to GET under `/svc{i}/`.
fn rules_policy(n: usize) -> String {
    let mut p = String::from("package envoy.authz\n\nimport rego.v1\n\ndefault allow := false\n\n");
    for i in 0..n {
        p.push_str(&format!(
            "allow if {{\n\tinput.attributes.source.principal == \"{}\"\n\tinput.attributes.request.http.method == \"GET\"\n\tstartswith(input.attributes.request.http.path, \"/svc{i}/\")\n}}\n\n",
            principal(i)
        ));
    }
    p
}

/// The example policy's data with `n` extra workload bindings.
fn keyed_data(example: &Value, n: usize) -> Value {
    let mut data = example.clone();
    if let Some(bindings) = data
        .pointer_mut("/rbac/bindings")
        .and_then(Value::as_object_mut)
    {
        for i in 0..n {
            bindings.insert(principal(i), json!(["reader"]));
        }
    }
    data
}

const SCAN_POLICY: &str = r#"package envoy.authz

import rego.v1

default allow := false

allow if {
	some entry in data.acl
	entry.principal == input.attributes.source.principal
	input.attributes.request.http.method in entry.methods
	startswith(input.attributes.request.http.path, entry.prefix)
}
"#;

fn scan_data(n: usize) -> Value {
    let acl: Vec<Value> = (0..n)
        .map(|i| json!({"principal": principal(i), "methods": ["GET", "HEAD"], "prefix": format!("/svc{i}/")}))
        .collect();
    json!({ "acl": acl })
}

fn load(modules: Vec<(String, String)>, data: Value) -> PolicySet {
    match PolicySet::from_sources(
        modules,
        data,
        &[QUERY.to_string()],
        portcullis::policy::EvalLimits::default(),
    ) {
        Ok(p) => p,
        Err(e) => panic!("policy does not load: {e}"),
    }
}

fn example_sources() -> (Vec<(String, String)>, Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let rego = std::fs::read_to_string(dir.join("authz.rego"))
        .unwrap_or_else(|e| panic!("policies/authz.rego: {e}"));
    let data_text = std::fs::read_to_string(dir.join("data.yaml"))
        .unwrap_or_else(|e| panic!("policies/data.yaml: {e}"));
    let data: Value =
        serde_yaml::from_str(&data_text).unwrap_or_else(|e| panic!("policies/data.yaml: {e}"));
    (vec![("authz.rego".to_string(), rego)], data)
}

fn bench(c: &mut Criterion) {
    let headers = headers();
    let mut group = c.benchmark_group("policy_scale");
    group.sample_size(30);

    let decide = |ps: &PolicySet, who: &str, path: &str| {
        let facts = InputFacts {
            source_address: "10.1.0.7:35568".parse().unwrap_or_else(|e| panic!("{e}")),
            source_principal: Some(who),
            destination_address: "10.1.0.9:8080".parse().unwrap_or_else(|e| panic!("{e}")),
            destination_principal: Some("spiffe://cluster.local/ns/default/sa/backend"),
            http: Some(HttpFacts::bodiless(
                "3f1c6a0e-8a55-4a4e-9d3e-4c2b7f1f0c11",
                "GET",
                path,
                "backend:8080",
                &headers,
            )),
            jwt: None,
        };
        ps.evaluate(0, build_input(&facts))
    };

    for n in [10usize, 100, 1000] {
        let ps = load(vec![("rules.rego".into(), rules_policy(n))], Value::Null);
        let who = principal(n - 1);
        let path = format!("/svc{}/items/1", n - 1);
        match decide(&ps, &who, &path) {
            Ok(d) if d.allowed => {}
            other => panic!("rules/{n}: expected allow, got {other:?}"),
        }
        group.bench_with_input(BenchmarkId::new("rules", n), &n, |b, _| {
            b.iter(|| black_box(decide(&ps, black_box(&who), black_box(&path))))
        });
    }

    let (modules, example) = example_sources();
    let ps = load(modules, keyed_data(&example, DATA_ENTRIES));
    let who = principal(DATA_ENTRIES - 1);
    match decide(&ps, &who, "/api/orders/1") {
        Ok(d) if d.allowed => {}
        other => panic!("data_keyed: expected allow, got {other:?}"),
    }
    group.bench_with_input(
        BenchmarkId::new("data_keyed", DATA_ENTRIES),
        &DATA_ENTRIES,
        |b, _| b.iter(|| black_box(decide(&ps, black_box(&who), "/api/orders/1"))),
    );

    let ps = load(
        vec![("scan.rego".into(), SCAN_POLICY.to_string())],
        scan_data(DATA_ENTRIES),
    );
    let path = format!("/svc{}/items/1", DATA_ENTRIES - 1);
    match decide(&ps, &who, &path) {
        Ok(d) if d.allowed => {}
        other => panic!("data_scan: expected allow, got {other:?}"),
    }
    group.bench_with_input(
        BenchmarkId::new("data_scan", DATA_ENTRIES),
        &DATA_ENTRIES,
        |b, _| b.iter(|| black_box(decide(&ps, black_box(&who), black_box(&path)))),
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
