//! The inbound listener's TLS surface as a real scanner (sslyze) sees it: only TLS 1.2
//! and 1.3, AEAD suites with forward secrecy only, no client-initiated renegotiation,
//! no compression, none of the classic vulnerabilities, a client certificate required
//! in strict mode, and the server's TLS 1.3 suite order (AES-128 first) applied to an
//! OpenSSL client that prefers AES-256. The findings are printed (README "Compatibility").
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod interop;
mod sidecar_proc;

use common::*;
use interop::*;
use serde_json::Value;
use tokio::process::Command;

async fn scan(py: &std::path::Path, port: u16, client: Option<&Pki>) -> Value {
    let mut cmd = Command::new(py);
    cmd.arg(script("tls_scan.py"))
        .args(["--port", &port.to_string()]);
    if let Some(pki) = client {
        cmd.arg("--cert")
            .arg(pki.path("frontend/tls.crt"))
            .arg("--key")
            .arg(pki.path("frontend/tls.key"));
    }
    let out = run(cmd, std::time::Duration::from_secs(120)).await.unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("sslyze failed: {}", String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslyze_finds_only_modern_tls_and_a_required_client_certificate() {
    let test = "sslyze_finds_only_modern_tls_and_a_required_client_certificate";
    let Some(py) = or_skip(test, python_with(&["sslyze"])) else {
        return;
    };
    let pki = pki();
    let app = echo_app().await;
    let s = sidecar(&pki, app).await;
    let port = s.inbound_addr.port();

    // Without a client certificate: the handshake needs one.
    let anonymous = scan(&py, port, None).await;
    println!("sslyze without a client certificate: {anonymous}");
    assert_eq!(anonymous["client_auth"], "REQUIRED", "{anonymous}");

    // With the frontend's SVID: everything sslyze can probe.
    let r = scan(&py, port, Some(&pki)).await;
    println!("sslyze with the frontend's SVID: {r}");
    for old in ["SSL 2.0", "SSL 3.0", "TLS 1.0", "TLS 1.1"] {
        assert_eq!(
            r["suites"][old],
            Value::Array(vec![]),
            "{old} accepted: {r}"
        );
    }
    let names = |v: &str| -> Vec<String> {
        r["suites"][v]
            .as_array()
            .unwrap_or_else(|| panic!("{v}: {r}"))
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    let tls12 = names("TLS 1.2");
    assert!(!tls12.is_empty(), "TLS 1.2 refused: {r}");
    for suite in &tls12 {
        let aead = suite.contains("_GCM_") || suite.contains("CHACHA20_POLY1305");
        assert!(
            aead && suite.starts_with("TLS_ECDHE_"),
            "not an AEAD suite with forward secrecy: {suite}"
        );
    }
    assert!(!names("TLS 1.3").is_empty(), "TLS 1.3 refused: {r}");
    // The server's suite order decides: OpenSSL offers AES-256 first and gets AES-128.
    let choice = &r["openssl_choice"];
    assert_eq!(choice["client_first"], "TLS_AES_256_GCM_SHA384", "{r}");
    assert_eq!(choice["negotiated"], "TLS_AES_128_GCM_SHA256", "{r}");
    assert_eq!(r["client_renegotiation_dos"], false, "{r}");
    assert_eq!(r["compression"], false, "{r}");
    assert_eq!(r["heartbleed"], false, "{r}");
    assert_eq!(r["ccs_injection"], false, "{r}");
    assert_eq!(r["early_data"], false, "{r}");
    let robot = r["robot"].as_str().unwrap_or("");
    assert!(robot.starts_with("NOT_VULNERABLE"), "{r}");
    s.shutdown();
}
