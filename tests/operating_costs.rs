//! Cost figures for the README's "Operating policies" section (run by hand:
//! `cargo test --test operating_costs -- --ignored --nocapture`). Counted loops on
//! the example policies and through a sidecar; they print, they assert nothing
//! about time (speed belongs in benches, this machine's numbers are only ratios).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use portcullis::policy::PolicySet;

fn deny_input() -> regorus::Value {
    let doc = serde_json::json!({
        "attributes": {
            "source": {"principal": "spiffe://cluster.local/ns/default/sa/reporting"},
            "request": {"http": {"method": "POST", "path": "/api/x", "headers": {}}}
        },
        "parsed_path": ["api", "x"],
    });
    regorus::Value::from_json_str(&doc.to_string()).unwrap()
}

#[test]
#[ignore]
fn explain_per_deny() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies");
    let queries = ["data.envoy.authz.allow".to_string()];
    let set =
        PolicySet::load_dir(&dir, &queries, portcullis::policy::EvalLimits::default()).unwrap();
    let _ = set.explain(0, deny_input()).unwrap(); // builds the probes once
    let n = 200;
    let t = Instant::now();
    for _ in 0..n {
        let _ = set.evaluate(0, deny_input());
    }
    let eval = t.elapsed() / n;
    let t = Instant::now();
    for _ in 0..n {
        let _ = set.explain(0, deny_input()).unwrap();
    }
    let explain = t.elapsed() / n;
    let t = Instant::now();
    let fresh =
        PolicySet::load_dir(&dir, &queries, portcullis::policy::EvalLimits::default()).unwrap();
    let loaded = t.elapsed();
    let t = Instant::now();
    let _ = fresh.explain(0, deny_input()).unwrap();
    let first = t.elapsed();
    println!(
        "evaluate {eval:?}/deny, explain {explain:?}/deny ({:.0}x), first explain of a revision {first:?} (load {loaded:?})",
        explain.as_secs_f64() / eval.as_secs_f64()
    );
}

/// Mean time of `n` sequential GETs over one keep-alive connection.
async fn per_request(s: &portcullis::run::Running, pki: &Pki, n: u32) -> Duration {
    let c = pki.client("frontend", &[b"http/1.1"]);
    let mut sender = h1(&c, s.inbound_addr).await;
    let t = Instant::now();
    for _ in 0..n {
        if sender.ready().await.is_err() {
            sender = h1(&c, s.inbound_addr).await;
        }
        let resp = sender
            .send_request(req("GET", "/api/x", &[], ""))
            .await
            .unwrap();
        let _ = split(resp).await;
    }
    t.elapsed() / n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn shadow_and_tap_per_request() {
    let policy = "package envoy.authz\n\nimport rego.v1\n\nallow if input.attributes.request.http.method == \"GET\"\n";
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let policies = policy_dir(&pki, &[("authz.rego", policy)]);
    let app = echo_app().await;
    let mut cfg = config(&pki, &policies, app);
    cfg.log.decisions = false;
    let plain = start(cfg.clone()).await;
    cfg.policy.shadow = Some(portcullis::config::ShadowConfig {
        dir: Some(policies.clone()),
        bundle: None,
        fraction: 1.0,
        queue: 1024,
    });
    let shadowed = start(cfg).await;
    let n = 2000;
    let _ = per_request(&plain, &pki, 200).await;
    let _ = per_request(&shadowed, &pki, 200).await;
    let mut rows = Vec::new();
    for round in 0..3 {
        let a = per_request(&plain, &pki, n).await;
        let b = per_request(&shadowed, &pki, n).await;
        rows.push(format!("round {round}: plain {a:?}, shadow {b:?}"));
    }
    // Tap: a reader attached that reads everything, on the plain sidecar.
    let admin = plain.admin_addr;
    let reader = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
        s.write_all(b"GET /tap HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    for round in 0..3 {
        let a = per_request(&plain, &pki, n).await;
        rows.push(format!("round {round}: tap reader attached {a:?}"));
    }
    reader.abort();
    for r in rows {
        println!("{r}");
    }
}
