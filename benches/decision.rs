//! Policy decision micro-benchmarks: one inbound decision for the example RBAC
//! policy (`policies/`), as the proxy makes it: build the OPA-Envoy input from a
//! realistic request, then evaluate `data.envoy.authz.allow`.
//!
//! Run: `cargo bench --bench decision -- --warm-up-time 1 --measurement-time 3`
//! (`PORTCULLIS_BENCH_POLICIES=DIR` measures another policy directory instead.)
//!
//! On a shared or busy machine wall-clock medians drift between runs; compare
//! ratios within one run, or count instructions with
//! `valgrind --tool=callgrind` (deterministic).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use portcullis::policy::{
    build_input, build_input_with, EvalLimits, HttpFacts, InputFacts, PolicyOptions, PolicySet,
};

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "demo:8080"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) portcullis-bench/1.0",
        ),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate, br"),
        (
            "authorization",
            "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln",
        ),
        ("x-request-id", "3f1c6a0e-8a55-4a4e-9d3e-4c2b7f1f0c11"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("content-length", "0"),
    ] {
        h.append(k, HeaderValue::from_static(v));
    }
    h
}

/// The example policies, or the directory in `PORTCULLIS_BENCH_POLICIES` (to compare
/// variants of a policy without rebuilding the bench).
fn load(force_interpreter: bool) -> PolicySet {
    load_with(force_interpreter, 0)
}

fn load_with(force_interpreter: bool, decision_cache: usize) -> PolicySet {
    let dir = std::env::var_os("PORTCULLIS_BENCH_POLICIES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"));
    let queries = ["data.envoy.authz.allow".to_string()];
    let options = PolicyOptions {
        limits: EvalLimits::default(),
        force_interpreter,
        extensions: None,
        decision_cache,
        workload_labels: None,
    };
    match PolicySet::load_dir(&dir, &queries, options) {
        Ok(ps) => ps,
        Err(e) => panic!("loading policies/: {e}"),
    }
}

fn bench(c: &mut Criterion) {
    let headers = headers();
    let claims = serde_json::json!({"iss": "https://idp.example", "sub": "alice", "aud": "orders", "role": "viewer"});
    let facts = InputFacts {
        source_address: "10.1.0.7:35568".parse().unwrap_or_else(|e| panic!("{e}")),
        source_principal: Some("spiffe://cluster.local/ns/default/sa/frontend"),
        destination_address: "10.1.0.9:8080".parse().unwrap_or_else(|e| panic!("{e}")),
        destination_principal: Some("spiffe://cluster.local/ns/default/sa/demo"),
        http: Some(HttpFacts::bodiless(
            "3f1c6a0e-8a55-4a4e-9d3e-4c2b7f1f0c11",
            "GET",
            "/api/orders/42?fields=id,total&lang=en",
            "demo:8080",
            &headers,
        )),
        jwt: Some(("jwt_payload", &claims)),
    };

    let rvm = load(false);
    let interp = load(true);
    let input = build_input(&facts);
    match rvm.evaluate(0, input.clone()) {
        Ok(d) if d.allowed => {}
        other => panic!("bench request should be allowed: {other:?}"),
    }

    c.bench_function("build_input", |b| {
        b.iter(|| black_box(build_input(black_box(&facts))))
    });
    c.bench_function("decision/rvm (build_input + evaluate)", |b| {
        b.iter(|| black_box(rvm.evaluate(0, build_input(black_box(&facts)))))
    });
    // The deny path evaluates the `else` branch and the reason.
    let deny_facts = InputFacts {
        http: facts.http.clone().map(|h| HttpFacts {
            method: "DELETE",
            ..h
        }),
        ..facts.clone()
    };
    match rvm.evaluate(0, build_input(&deny_facts)) {
        Ok(d) if !d.allowed => {}
        other => panic!("the DELETE request should be denied: {other:?}"),
    }
    c.bench_function("decision/rvm deny (build_input + evaluate)", |b| {
        b.iter(|| black_box(rvm.evaluate(0, build_input(black_box(&deny_facts)))))
    });
    // As the proxy decides: the input carries only the headers the policy reads,
    // and a repeated request is answered from the decision cache.
    let pruned = load_with(false, 0);
    c.bench_function(
        "decision/rvm, input pruned (build_input_with + evaluate)",
        |b| {
            b.iter(|| {
                black_box(pruned.evaluate(
                    0,
                    build_input_with(
                        black_box(&facts),
                        pruned.input_needs(0).unwrap_or_else(|| panic!("query 0")),
                    ),
                ))
            })
        },
    );
    let cached = load_with(false, 4096);
    assert!(cached.input_access(0).is_some_and(|a| a.memoisable()));
    c.bench_function("decision/rvm, pruned + cached (repeat request)", |b| {
        b.iter(|| black_box(cached.decide(0, black_box(&facts))))
    });
    c.bench_function("evaluate/rvm", |b| {
        b.iter(|| black_box(rvm.evaluate(0, black_box(input.clone()))))
    });
    c.bench_function("evaluate/interpreter", |b| {
        b.iter(|| black_box(interp.evaluate(0, black_box(input.clone()))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
