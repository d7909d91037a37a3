//! Decision logs, dry-run and evaluation limits through the proxy: real mTLS
//! clients, the sidecar in-process, the decision log written to a file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const POLICY: &str = r#"
package envoy.authz

import rego.v1

allow := true if {
	input.parsed_path[0] == "ok"
} else := {
	"allowed": false,
	"http_status": 403,
	"body": "nope: writes are closed\n",
	"reason": "writes are closed for maintenance",
} if {
	input.attributes.request.http.method == "POST"
} else := {"allowed": false, "body": "go away\n"} if {
	input.parsed_path[0] != "undefined"
}
"#;

const SECRET: &str = "Bearer s3cr3t-t0ken";

async fn setup(
    configure: impl FnOnce(&mut portcullis::config::Config),
) -> (Pki, tempfile::TempDir, portcullis::run::Running) {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let policies = policy_dir(&pki, &[("authz.rego", POLICY)]);
    let app = echo_app().await;
    let logs = tempfile::tempdir().unwrap();
    let mut cfg = config(&pki, &policies, app);
    cfg.log.decisions = true;
    cfg.log.decision_file = Some(logs.path().join("decisions.log"));
    cfg.log.mask = vec!["X-Api-Key".to_string()];
    configure(&mut cfg);
    let running = start(cfg).await;
    (pki, logs, running)
}

/// Waits until the decision log holds `n` lines and returns them parsed.
async fn lines(dir: &Path, n: usize) -> Vec<serde_json::Value> {
    let path = dir.join("decisions.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let complete: Vec<&str> = text.lines().collect();
        if complete.len() >= n && text.ends_with('\n') {
            return complete
                .iter()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "decision log has {} lines, want {n}:\n{text}",
            complete.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn raw(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("decisions.log")).unwrap()
}

#[tokio::test]
async fn entries_carry_reason_revision_and_masked_headers() {
    let (pki, logs, sidecar) = setup(|_| {}).await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let addr = sidecar.inbound_addr;
    let secrets = [
        ("authorization", SECRET),
        ("cookie", "session=s3cr3t-c00kie"),
        ("x-api-key", "s3cr3t-k3y"),
    ];

    let (r, body) = call(&c, addr, req("GET", "/ok", &secrets, "")).await;
    assert_eq!(r.status(), 200);
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let request_id = echoed["headers"]["x-request-id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The policy's body reaches the client; its reason reaches the log.
    let (r, body) = call(&c, addr, req("POST", "/orders", &secrets, "{}")).await;
    assert_eq!(r.status(), 403);
    assert_eq!(body, "nope: writes are closed\n");

    // No `reason` field: the body is the reason. A token in the query is masked.
    let (r, body) = call(
        &c,
        addr,
        req("GET", "/other?access_token=s3cr3t-qu3ry&x=1", &[], ""),
    )
    .await;
    assert_eq!(r.status(), 403);
    assert_eq!(body, "go away\n");

    // Undefined: denied, the log says why.
    let (r, _) = call(&c, addr, req("GET", "/undefined", &[], "")).await;
    assert_eq!(r.status(), 403);

    let entries = lines(logs.path(), 4).await;
    let revision = sidecar.policy.revision();
    for e in &entries {
        assert_eq!(e["direction"], "inbound");
        assert_eq!(e["source_principal"], FRONTEND);
        assert_eq!(e["destination_principal"], SERVER_ID);
        assert!(e["source_address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"));
        assert!(e["destination_address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"));
        assert_eq!(e["policy_revision"], revision.as_str());
        assert!(e["eval_ns"].as_u64().unwrap() > 0, "{e}");
        assert!(e["decision_id"].as_str().unwrap().len() >= 16, "{e}");
        let t = e["time"].as_str().unwrap();
        assert!(t.len() == 24 && t.ends_with('Z') && t.contains('T'), "{t}");
    }
    let allow = &entries[0];
    assert_eq!(allow["decision"], "allow");
    assert_eq!(allow["status"], 200);
    assert_eq!(allow["method"], "GET");
    assert_eq!(allow["path"], "/ok");
    assert_eq!(allow["decision_id"], request_id.as_str());
    assert_eq!(allow["headers"]["authorization"], "***");
    assert_eq!(allow["headers"]["cookie"], "***");
    assert_eq!(allow["headers"]["x-api-key"], "***");
    assert_eq!(allow["headers"]["host"], "backend:8080");

    let deny = &entries[1];
    assert_eq!(deny["decision"], "deny");
    assert_eq!(deny["status"], 403);
    assert_eq!(deny["method"], "POST");
    assert_eq!(deny["path"], "/orders");
    assert_eq!(deny["reason"], "writes are closed for maintenance");
    assert_eq!(entries[2]["reason"], "go away\n");
    assert_eq!(entries[2]["path"], "/other?access_token=***&x=1");
    assert!(
        entries[3]["reason"]
            .as_str()
            .unwrap()
            .starts_with("undefined"),
        "{}",
        entries[3]
    );

    // No secret ever reaches the file.
    let text = raw(logs.path());
    assert!(!text.contains("s3cr3t"), "{text}");
}

#[tokio::test]
async fn allows_can_be_sampled_denies_always_logged() {
    let (pki, logs, sidecar) = setup(|cfg| cfg.log.sample_allows = 0.0).await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    for _ in 0..5 {
        let (r, _) = call(&c, sidecar.inbound_addr, req("GET", "/ok", &[], "")).await;
        assert_eq!(r.status(), 200);
    }
    let (r, _) = call(&c, sidecar.inbound_addr, req("GET", "/no", &[], "")).await;
    assert_eq!(r.status(), 403);
    let entries = lines(logs.path(), 1).await;
    // Allows were never queued: the only line is the deny.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(raw(logs.path()).lines().count(), 1);
    assert_eq!(entries[0]["decision"], "deny");
    assert_eq!(entries[0]["path"], "/no");
}

#[tokio::test]
async fn dry_run_lets_denies_through_and_counts_them() {
    let (pki, logs, sidecar) = setup(|cfg| cfg.policy.dry_run.inbound = true).await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let count = || async {
        metric(
            &admin_get(sidecar.admin_addr, "/metrics").await.1,
            "portcullis_requests_total",
            &[("direction", "inbound"), ("decision", "dry_run_deny")],
        )
    };
    let before = count().await;

    // Denied by the policy, let through to the app.
    let (r, body) = call(&c, sidecar.inbound_addr, req("POST", "/orders", &[], "{}")).await;
    assert_eq!(r.status(), 200, "{body}");
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["path"], "/orders");
    // Allowed requests are unaffected.
    let (r, _) = call(&c, sidecar.inbound_addr, req("GET", "/ok", &[], "")).await;
    assert_eq!(r.status(), 200);

    let entries = lines(logs.path(), 2).await;
    assert_eq!(entries[0]["decision"], "dry_run_deny");
    assert_eq!(entries[0]["status"], 200);
    assert_eq!(entries[0]["reason"], "writes are closed for maintenance");
    assert_eq!(entries[1]["decision"], "allow");
    assert_eq!(count().await, before + 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_policy_is_denied_quickly() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let policies = policy_dir(
        &pki,
        &[(
            "authz.rego",
            "package envoy.authz\nimport rego.v1\nallow := count([x | some i in numbers.range(1, 100000); some j in numbers.range(1, 100000); x := i * j]) > 0\n",
        )],
    );
    let app = echo_app().await;
    let logs = tempfile::tempdir().unwrap();
    let mut cfg = config(&pki, &policies, app);
    cfg.policy.eval_timeout = Duration::from_millis(50);
    cfg.log.decisions = true;
    cfg.log.decision_file = Some(logs.path().join("decisions.log"));
    let sidecar = start(cfg).await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let timeouts = || async {
        metric(
            &admin_get(sidecar.admin_addr, "/metrics").await.1,
            "portcullis_policy_errors_total",
            &[("direction", "inbound"), ("reason", "timeout")],
        )
    };
    let before = timeouts().await;
    for _ in 0..3 {
        let started = Instant::now();
        let (r, body) = call(&c, sidecar.inbound_addr, req("GET", "/x", &[], "")).await;
        assert_eq!(r.status(), 403, "{body}");
        assert!(body.contains("timeout"), "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(timeouts().await, before + 3.0);
    let entries = lines(logs.path(), 3).await;
    assert!(entries[0]["reason"]
        .as_str()
        .unwrap()
        .starts_with("timeout"));
}
