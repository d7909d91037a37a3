//! `log.explain` through the proxy: real mTLS clients, the decision log written to a
//! file; denies carry the explanation (rule tried, failed line, values), allows do
//! not with `denies`, and nothing is explained with the default `off`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use portcullis::config::ExplainLogging;

const POLICY: &str = r#"package envoy.authz

import rego.v1

default allow := false

allow if {
	input.attributes.request.http.method == "GET"
	input.parsed_path[0] == "ok"
}
"#;

async fn entries(dir: &Path, n: usize) -> Vec<serde_json::Value> {
    let path = dir.join("decisions.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() >= n && text.ends_with('\n') {
            let mut v: Vec<serde_json::Value> = lines
                .iter()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            // Explained entries are written when their explanation is ready.
            v.sort_by_key(|e| e["path"].as_str().unwrap_or_default().to_owned());
            return v;
        }
        assert!(Instant::now() < deadline, "want {n} entries:\n{text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn run(explain: ExplainLogging) -> Vec<serde_json::Value> {
    run_with(explain, POLICY, &[]).await.0
}

/// Sends GET /ok and POST /ok with `headers`; returns the entries and the raw log.
async fn run_with(
    explain: ExplainLogging,
    policy: &str,
    headers: &[(&str, &str)],
) -> (Vec<serde_json::Value>, String) {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let policies = policy_dir(&pki, &[("authz.rego", policy)]);
    let app = echo_app().await;
    let logs = tempfile::tempdir().unwrap();
    let mut cfg = config(&pki, &policies, app);
    cfg.log.decisions = true;
    cfg.log.decision_file = Some(logs.path().join("decisions.log"));
    cfg.log.explain = explain;
    let sidecar = start(cfg).await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let (r, _) = call(&c, sidecar.inbound_addr, req("GET", "/ok", headers, "")).await;
    assert_eq!(r.status(), 200);
    let (r, _) = call(&c, sidecar.inbound_addr, req("POST", "/ok", headers, "{}")).await;
    assert_eq!(r.status(), 403);
    let e = entries(logs.path(), 2).await;
    (
        e,
        std::fs::read_to_string(logs.path().join("decisions.log")).unwrap(),
    )
}

#[tokio::test]
async fn masked_values_never_reach_the_explanation() {
    let policy = r#"package envoy.authz

import rego.v1

default allow := false

allow if {
	input.attributes.request.http.method == "GET"
}

allow if {
	input.attributes.request.http.headers.authorization == "Bearer the-right-one"
}
"#;
    let (e, raw) = run_with(
        ExplainLogging::Denies,
        policy,
        &[("authorization", "Bearer s3cr3t-wr0ng")],
    )
    .await;
    assert!(!raw.contains("s3cr3t"), "{raw}");
    let deny = e.iter().find(|e| e["decision"] == "deny").unwrap();
    let values: Vec<&str> = deny["explanation"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["failed"]["values"].as_str())
        .collect();
    assert!(
        values.contains(&"\"***\" != \"Bearer the-right-one\""),
        "{values:?}"
    );
}

#[tokio::test]
async fn denies_carry_the_failed_expression_with_its_line_and_values() {
    let e = run(ExplainLogging::Denies).await;
    let (deny, allow) = if e[0]["decision"] == "deny" {
        (&e[0], &e[1])
    } else {
        (&e[1], &e[0])
    };
    assert_eq!(allow["decision"], "allow");
    assert!(allow.get("explanation").is_none(), "{allow}");
    let x = &deny["explanation"];
    assert_eq!(x["denied"], true, "{deny}");
    assert_eq!(x["query"], "data.envoy.authz.allow");
    let failed = &x["steps"][0]["failed"];
    assert!(
        failed["location"]
            .as_str()
            .unwrap()
            .ends_with("authz.rego:8"),
        "{x}"
    );
    assert_eq!(
        failed["expression"],
        "input.attributes.request.http.method == \"GET\""
    );
    assert_eq!(failed["values"], "\"POST\" != \"GET\"");
    assert!(
        x["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["outcome"] == "default"),
        "{x}"
    );
}

#[tokio::test]
async fn all_explains_allows_too_and_off_explains_nothing() {
    let e = run(ExplainLogging::All).await;
    assert!(e.iter().all(|e| e["explanation"].is_object()), "{e:?}");
    let allow = e.iter().find(|e| e["decision"] == "allow").unwrap();
    assert_eq!(allow["explanation"]["steps"][0]["outcome"], "held");

    let e = run(ExplainLogging::Off).await;
    assert!(e.iter().all(|e| e.get("explanation").is_none()), "{e:?}");
}
