//! `portcullis policy explain` through the real binary on the example policies in
//! `policies/`: every deny names the rule definitions tried and the line of the
//! first expression that did not hold, with the values it compared.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn explain(input: &serde_json::Value, extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input.json");
    std::fs::write(&path, input.to_string()).unwrap();
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["policy", "explain", "--input"])
        .arg(&path)
        .args(extra)
        .current_dir(repo())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The line number of the first line of `file` containing `needle`.
fn line_of(file: &str, needle: &str) -> usize {
    let text = std::fs::read_to_string(repo().join("policies").join(file)).unwrap();
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

fn inbound(principal: Option<&str>, method: &str, path: &[&str]) -> serde_json::Value {
    let mut input = serde_json::json!({
        "attributes": {"request": {"http": {"method": method, "headers": {}}}},
        "parsed_path": path,
    });
    if let Some(p) = principal {
        input["attributes"]["source"] = serde_json::json!({ "principal": p });
    }
    input
}

const READER: &str = "spiffe://cluster.local/ns/default/sa/reporting";

#[test]
fn a_reader_posting_is_denied_at_the_method_check() {
    let out = stdout(&explain(&inbound(Some(READER), "POST", &["api", "x"]), &[]));
    assert!(out.starts_with("data.envoy.authz.allow = {"), "{out}");
    assert!(out.contains("(denied)"), "{out}");
    let count = line_of("authz.rego", "count(roles) > 0");
    assert!(
        out.contains(&format!(
            "policies/authz.rego:{count}: count(roles) > 0 → 0 <= 0"
        )),
        "{out}"
    );
    let methods = line_of("authz.rego", "m in grant.methods");
    assert!(
        out.contains(&format!(
            "policies/authz.rego:{methods}: m in grant.methods → \"POST\" not in [\"GET\",\"HEAD\"]"
        )),
        "{out}"
    );
    let public = line_of("authz.rego", "input.attributes.request.http.method in {");
    assert!(
        out.contains(&format!(
            "policies/authz.rego:{public}: input.attributes.request.http.method in"
        )),
        "{out}"
    );
    // The else branch that produced the deny object is reported as held.
    assert!(out.contains("allow (else): held"), "{out}");
}

#[test]
fn a_caller_outside_the_trust_domain_fails_at_its_startswith() {
    let out = stdout(&explain(
        &inbound(Some("spiffe://evil.example/ns/x/sa/y"), "GET", &["api"]),
        &[],
    ));
    let line = line_of("authz.rego", "startswith(p, sprintf(\"spiffe://%s/\"");
    assert!(
        out.contains(&format!(
            "policies/authz.rego:{line}: startswith(p, sprintf(\"spiffe://%s/\", [data.mesh.trust_domain])) → startswith(\"spiffe://evil.example/ns/x/sa/y\", \"spiffe://cluster.local/\") is false"
        )),
        "{out}"
    );
}

#[test]
fn a_missing_identity_shows_the_undefined_operand() {
    let out = stdout(&explain(&inbound(None, "DELETE", &["api"]), &[]));
    let line = line_of("authz.rego", "p := input.attributes.source.principal");
    assert!(
        out.contains(&format!(
            "policies/authz.rego:{line}: p := input.attributes.source.principal → input.attributes.source.principal is undefined"
        )),
        "{out}"
    );
}

#[test]
fn an_allowed_request_reports_the_body_that_held() {
    let out = stdout(&explain(&inbound(Some(READER), "GET", &["api", "x"]), &[]));
    assert!(out.contains("(allowed)"), "{out}");
    assert!(out.contains("policies/authz.rego:25: allow: held"), "{out}");
    assert!(
        !out.contains("(else)"),
        "the else branch is not tried: {out}"
    );
}

#[test]
fn outbound_deny_names_each_allow_definition_and_the_default_as_json() {
    let input = serde_json::json!({
        "attributes": {
            "destination": {"address": {"socketAddress": {"address": "203.0.113.9", "portValue": 443}}},
            "request": {"http": {"method": "GET", "host": "evil.example:443", "headers": {}}}
        }
    });
    let out = stdout(&explain(
        &input,
        &["--format", "json", "data.portcullis.outbound.allow"],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["denied"], true);
    assert_eq!(v["result"], false);
    let steps = v["steps"].as_array().unwrap();
    let failed: Vec<&str> = steps
        .iter()
        .filter(|s| s["outcome"] == "failed")
        .map(|s| s["failed"]["location"].as_str().unwrap())
        .collect();
    let glob = line_of("outbound.rego", "glob.match(pattern");
    let cidr = line_of("outbound.rego", "net.cidr_contains(entry.cidr");
    assert!(
        failed.contains(&format!("policies/outbound.rego:{glob}").as_str()),
        "{out}"
    );
    assert!(
        failed.contains(&format!("policies/outbound.rego:{cidr}").as_str()),
        "{out}"
    );
    assert!(steps.iter().any(|s| s["outcome"] == "default"), "{out}");
    let undefined_principal = steps.iter().any(|s| {
        s["failed"]["values"]
            .as_str()
            .is_some_and(|v| v.contains("input.attributes.destination.principal is undefined"))
    });
    assert!(undefined_principal, "{out}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.json");
    std::fs::write(&path, "{not json").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["policy", "explain", "--input"])
        .arg(&path)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--input"));
}
