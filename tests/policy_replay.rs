//! `log.input` and `portcullis policy replay`: a sidecar (real mTLS clients) writes
//! a decision log with input documents; the real binary replays it with candidate
//! policies and reports what would change, with its exit status.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use portcullis::config::InputLogging;

const ENFORCED: &str = r#"package envoy.authz

import rego.v1

default allow := false

allow if input.attributes.request.http.method == "GET"

allow if {
	input.attributes.request.http.method == "POST"
	input.parsed_path[0] == "orders"
}
"#;

/// Closes POST /orders, opens DELETE.
const CANDIDATE: &str = r#"package envoy.authz

import rego.v1

default allow := false

allow if input.attributes.request.http.method in {"GET", "DELETE"}
"#;

const SECRET: &str = "Bearer s3cr3t-r3play";

async fn log_lines(path: &Path, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= n && text.ends_with('\n') {
            return text;
        }
        assert!(Instant::now() < deadline, "want {n} lines:\n{text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs the traffic through a sidecar logging inputs as `input` says.
async fn traffic(input: InputLogging, log: &Path) {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let policies = policy_dir(&pki, &[("authz.rego", ENFORCED)]);
    let app = echo_app().await;
    let mut cfg = config(&pki, &policies, app);
    cfg.log.decisions = true;
    cfg.log.decision_file = Some(log.to_path_buf());
    cfg.log.input = input;
    let sidecar = start(cfg).await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let auth = [("authorization", SECRET)];
    for (method, path, status) in [
        ("GET", "/a", 200),
        ("POST", "/orders?access_token=s3cr3t-qu3ry", 200),
        ("POST", "/orders", 200),
        ("POST", "/x", 403),
        ("DELETE", "/a", 403),
    ] {
        let (r, _) = call(&c, sidecar.inbound_addr, req(method, path, &auth, "{}")).await;
        assert_eq!(r.status(), status, "{method} {path}");
    }
    log_lines(log, 5).await;
}

fn replay(log: &Path, policy: &str, json: bool) -> Output {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("authz.rego"), policy).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.args(["policy", "replay", "--log"])
        .arg(log)
        .arg("--policies")
        .arg(dir.path());
    if json {
        cmd.args(["--format", "json"]);
    }
    cmd.output().unwrap()
}

#[tokio::test]
async fn replay_reports_changes_grouped_with_an_example_and_gates_on_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.log");
    traffic(InputLogging::All, &log).await;
    let text = std::fs::read_to_string(&log).unwrap();
    // The input is there, with the secrets masked as log.mask says.
    assert!(!text.contains("s3cr3t"), "{text}");
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(
        first["input"]["attributes"]["request"]["http"]["headers"]["authorization"],
        "***"
    );
    // A line that is not an entry is counted, not fatal.
    std::fs::write(&log, format!("{text}not json\n")).unwrap();

    // The enforced policy itself: nothing changes, exit 0.
    let same = replay(&log, ENFORCED, false);
    let out = String::from_utf8_lossy(&same.stdout);
    assert_eq!(same.status.code(), Some(0), "{out}");
    assert!(
        out.starts_with("6 entries: 5 replayed, 5 unchanged, 0 changed"),
        "{out}"
    );
    assert!(out.contains("1 unreadable"), "{out}");

    // The candidate: two POST /orders would be denied, DELETE /a allowed; exit 1.
    let changed = replay(&log, CANDIDATE, true);
    assert_eq!(
        changed.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&changed.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&changed.stdout).unwrap();
    assert_eq!(r["replayed"], 5);
    assert_eq!(r["allow_to_deny"], 2);
    assert_eq!(r["deny_to_allow"], 1);
    assert_eq!(r["unchanged"], 2);
    let groups = r["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{r}");
    assert_eq!(groups[0]["change"], "allow_to_deny");
    assert_eq!(groups[0]["path"], "/orders");
    assert_eq!(groups[0]["method"], "POST");
    assert_eq!(groups[0]["count"], 2);
    assert_eq!(groups[0]["source_principal"], FRONTEND);
    // The example is a real decision of the log.
    let example = groups[0]["example_decision_id"].as_str().unwrap();
    assert!(
        text.contains(&format!("\"decision_id\":\"{example}\"")),
        "{example}"
    );
    assert_eq!(groups[1]["change"], "deny_to_allow");
    assert_eq!(groups[1]["method"], "DELETE");
}

#[tokio::test]
async fn entries_without_input_are_skipped_not_guessed() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.log");
    traffic(InputLogging::Denies, &log).await;
    let out = replay(&log, CANDIDATE, true);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Only the two denies carry an input; DELETE /a would now be allowed.
    assert_eq!(r["skipped"], 3, "{r}");
    assert_eq!(r["replayed"], 2, "{r}");
    assert_eq!(r["deny_to_allow"], 1, "{r}");
    assert_eq!(out.status.code(), Some(1));

    let missing = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "policy",
            "replay",
            "--log",
            "/nonexistent/decisions.log",
            "--policies",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--log"));
}
