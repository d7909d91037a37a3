//! `policy.shadow` through the proxy: real mTLS clients; the shadow policy is
//! compared with every decision and never enforced, counted by agreement, and the
//! enforced and shadow policies reload independently.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use portcullis::config::ShadowConfig;

const ALLOW_ALL: &str = "package envoy.authz\n\nimport rego.v1\n\nallow := true\n";

const NO_POST: &str = r#"package envoy.authz

import rego.v1

default allow := false

allow if input.attributes.request.http.method == "GET"
"#;

const ALLOW_ALL_V2: &str = "package envoy.authz\n\nimport rego.v1\n\n# version 2\nallow := true\n";

async fn metrics(admin: SocketAddr) -> String {
    admin_get(admin, "/metrics").await.1
}

fn shadow_total(text: &str, agreement: &str) -> f64 {
    metric(
        text,
        "portcullis_policy_shadow_total",
        &[("direction", "inbound"), ("agreement", agreement)],
    )
}

/// Polls the metrics until `check` holds (the shadow worker runs after the answer).
async fn until(admin: SocketAddr, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics(admin).await;
        if check(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what}:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn shadow_revision(text: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with("portcullis_policy_shadow_revision_info{"))
        .and_then(|l| l.split('"').nth(1))
        .map(str::to_owned)
}

#[tokio::test]
async fn shadow_disagreements_are_counted_and_never_enforced_and_reloads_are_independent() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let enforced = policy_dir(&pki, &[("authz.rego", ALLOW_ALL)]);
    let shadow_dir = pki.path("shadow");
    std::fs::create_dir_all(&shadow_dir).unwrap();
    std::fs::write(shadow_dir.join("authz.rego"), NO_POST).unwrap();
    let app = echo_app().await;
    let mut cfg = config(&pki, &enforced, app);
    cfg.policy.watch_interval = Duration::from_millis(50);
    cfg.policy.shadow = Some(ShadowConfig {
        dir: Some(shadow_dir.clone()),
        bundle: None,
        fraction: 1.0,
        queue: 64,
    });
    let sidecar = start(cfg).await;
    let admin = sidecar.admin_addr;
    let before = metrics(admin).await;
    let (agree0, a2d0) = (
        shadow_total(&before, "agree"),
        shadow_total(&before, "allow_to_deny"),
    );
    let first_shadow = shadow_revision(&before).expect("shadow revision metric");

    let c = pki.client("frontend", &[b"http/1.1"]);
    for _ in 0..3 {
        let (r, _) = call(&c, sidecar.inbound_addr, req("GET", "/a", &[], "")).await;
        assert_eq!(r.status(), 200);
    }
    for _ in 0..2 {
        // The shadow would deny; the enforced policy allows, and that is what happens.
        let (r, _) = call(&c, sidecar.inbound_addr, req("POST", "/a", &[], "{}")).await;
        assert_eq!(r.status(), 200);
    }
    until(admin, "3 agree and 2 allow_to_deny", |t| {
        shadow_total(t, "agree") == agree0 + 3.0 && shadow_total(t, "allow_to_deny") == a2d0 + 2.0
    })
    .await;

    // The shadow reloads on its own: the enforced revision stays.
    let enforced_revision = sidecar.policy.revision();
    std::fs::write(shadow_dir.join("authz.rego"), ALLOW_ALL).unwrap();
    until(admin, "shadow reloaded", |t| {
        shadow_revision(t).is_some_and(|r| r != first_shadow)
    })
    .await;
    assert_eq!(sidecar.policy.revision(), enforced_revision);
    let (r, _) = call(&c, sidecar.inbound_addr, req("POST", "/a", &[], "{}")).await;
    assert_eq!(r.status(), 200);
    until(admin, "the POST now agrees", |t| {
        shadow_total(t, "agree") == agree0 + 4.0
    })
    .await;

    // The enforced policy reloads on its own: the shadow revision stays.
    let shadow_now = shadow_revision(&metrics(admin).await).unwrap();
    std::fs::write(enforced.join("authz.rego"), ALLOW_ALL_V2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while sidecar.policy.revision() == enforced_revision {
        assert!(Instant::now() < deadline, "enforced policy did not reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(shadow_revision(&metrics(admin).await).unwrap(), shadow_now);

    // A broken shadow is counted and keeps its last good revision.
    std::fs::write(
        shadow_dir.join("authz.rego"),
        "package envoy.authz\nallow := \n",
    )
    .unwrap();
    let text = until(admin, "shadow reload error counted", |t| {
        metric(
            t,
            "portcullis_policy_shadow_reloads_total",
            &[("result", "error")],
        ) >= 1.0
    })
    .await;
    assert_eq!(shadow_revision(&text).unwrap(), shadow_now);
    let (r, _) = call(&c, sidecar.inbound_addr, req("GET", "/a", &[], "")).await;
    assert_eq!(r.status(), 200);
}

/// Kills the child when dropped.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

use portcullis_testkit::ports::free_port;

#[tokio::test]
async fn the_real_binary_logs_each_disagreement_with_the_decision_id_and_both_results() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let enforced = policy_dir(&pki, &[("authz.rego", ALLOW_ALL)]);
    let shadow_dir = pki.path("shadow");
    std::fs::create_dir_all(&shadow_dir).unwrap();
    std::fs::write(shadow_dir.join("authz.rego"), NO_POST).unwrap();
    let app = echo_app().await;
    let (inbound, admin) = (free_port(), free_port());
    let server = pki.path("server");
    let yaml = format!(
        "identity:\n  files:\n    cert: {s}/tls.crt\n    key: {s}/tls.key\n    bundle: {s}/ca.crt\n\
         inbound:\n  listen: 127.0.0.1:{inbound}\n  app: {app}\n\
         outbound:\n  listen: 127.0.0.1:0\n\
         admin:\n  listen: 127.0.0.1:{admin}\n\
         policy:\n  dir: {p}\n  shadow:\n    dir: {sh}\n\
         log:\n  decisions: false\n  format: json\n",
        s = server.display(),
        p = enforced.display(),
        sh = shadow_dir.display(),
    );
    let cfg = pki.path("sidecar.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let stderr = pki.path("stderr.log");
    let _child = Proc(
        std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["run", "--config"])
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap(),
    );
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(admin).await.is_err() {
        let log = std::fs::read_to_string(&stderr).unwrap_or_default();
        assert!(Instant::now() < deadline, "sidecar never listened:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while !metrics(admin)
        .await
        .contains("portcullis_policy_shadow_revision_info{")
    {
        assert!(Instant::now() < deadline, "sidecar never loaded its shadow");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = pki.client("frontend", &[b"http/1.1"]);
    let inbound: SocketAddr = format!("127.0.0.1:{inbound}").parse().unwrap();
    let (r, _) = call(
        &c,
        inbound,
        req("POST", "/a", &[("x-request-id", "shadow-test-0001")], "{}"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    let line = loop {
        let text = std::fs::read_to_string(&stderr).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("shadow policy disagrees")) {
            break l.to_owned();
        }
        assert!(Instant::now() < deadline, "no disagreement logged:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let f = &v["fields"];
    assert_eq!(f["decision_id"], "shadow-test-0001", "{line}");
    assert_eq!(f["agreement"], "allow_to_deny", "{line}");
    assert!(
        f["enforced"].as_str().unwrap().contains("\"allowed\":true"),
        "{line}"
    );
    assert!(
        f["shadow"].as_str().unwrap().contains("\"allowed\":false"),
        "{line}"
    );
}
