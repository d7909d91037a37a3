//! Opaque TCP on the inbound side: ports declared in `inbound.opaque_ports` are
//! decided once per connection (an input without `http`) and relayed; a peer that
//! asks for raw relaying with the `portcullis-tcp` ALPN on any other port still gets
//! HTTP served as HTTP, so the ALPN cannot skip per-request decisions or the
//! identity headers the sidecar sets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POLICY: &str = r#"
package envoy.authz

import rego.v1

default allow := false

# Connections without HTTP: only the reporting workload.
allow if {
    not input.attributes.request.http
    input.attributes.source.principal == "spiffe://cluster.local/ns/default/sa/reporting"
}

# HTTP: GET /open, and only when the XFCC the policy sees is the sidecar's own (the
# client's was stripped).
allow if {
    input.attributes.request.http.method == "GET"
    input.parsed_path[0] == "open"
    xfcc := input.attributes.request.http.headers["x-forwarded-client-cert"]
    endswith(xfcc, ";URI=spiffe://cluster.local/ns/default/sa/reporting")
    not contains(xfcc, "sa/admin")
}
"#;

const ALPN_TCP: &[u8] = b"portcullis-tcp";

/// Reads until `want` bytes arrived, the peer closed, or a second passed.
async fn read_some<S: AsyncReadExt + Unpin>(s: &mut S, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < want {
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    got
}

#[tokio::test]
async fn opaque_ports_are_decided_once_without_http_and_relayed() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    pki.issue("reporting", REPORTING);
    let policies = policy_dir(&pki, &[("authz.rego", POLICY)]);
    let app = tcp_echo(b"echo:").await;
    let mut cfg = config(&pki, &policies, app);
    cfg.inbound.opaque_ports = vec![app.port()];
    let sidecar = start(cfg).await;

    // Allowed: the policy's connection rule matched, so the input had no `http`.
    // Even bytes that look like HTTP are relayed untouched on an opaque port.
    let mut s = tls_connect(
        &pki.client("reporting", &[b"http/1.1"]),
        sidecar.inbound_addr,
    )
    .await;
    s.write_all(b"GET /not-parsed HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let got = read_some(&mut s, 33).await;
    assert_eq!(got, b"echo:GET /not-parsed HTTP/1.1\r\n\r\n");

    // Denied: frontend has no connection rule; the connection closes unanswered.
    let mut s = tls_connect(
        &pki.client("frontend", &[b"http/1.1"]),
        sidecar.inbound_addr,
    )
    .await;
    let _ = s.write_all(b"hello").await;
    assert!(read_some(&mut s, 1).await.is_empty());

    let text = admin_get(sidecar.admin_addr, "/metrics").await.1;
    let deny = metric(
        &text,
        "portcullis_requests_total",
        &[("direction", "inbound"), ("decision", "deny")],
    );
    let allow = metric(
        &text,
        "portcullis_requests_total",
        &[("direction", "inbound"), ("decision", "allow")],
    );
    assert!(deny >= 1.0 && allow >= 1.0, "deny {deny} allow {allow}");
}

#[tokio::test]
async fn tcp_alpn_on_an_http_port_is_still_served_as_http() {
    let pki = Pki::new();
    pki.issue("reporting", REPORTING);
    let policies = policy_dir(&pki, &[("authz.rego", POLICY)]);
    let sidecar = start(config(&pki, &policies, echo_app().await)).await;
    let client = pki.client("reporting", &[ALPN_TCP]);

    // A forged XFCC is stripped, and the request is decided as HTTP: allowed.
    let mut s = tls_connect(&client, sidecar.inbound_addr).await;
    s.write_all(
        b"GET /open HTTP/1.1\r\nhost: backend\r\nx-forwarded-client-cert: URI=spiffe://cluster.local/ns/default/sa/admin\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let got = String::from_utf8(read_some(&mut s, usize::MAX).await).unwrap();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.contains(&format!(";URI={REPORTING}")), "{got}");
    assert!(!got.contains("sa/admin"), "{got}");

    // Decided per request: a path the policy denies is a 403, not a relayed request,
    // also when the request line follows empty lines or uses a lower-case method.
    for head in [
        &b"GET /closed HTTP/1.1\r\nhost: backend\r\nconnection: close\r\n\r\n"[..],
        b"\r\nget /open HTTP/1.1\r\nhost: backend\r\nconnection: close\r\n\r\n",
    ] {
        let mut s = tls_connect(&client, sidecar.inbound_addr).await;
        s.write_all(head).await.unwrap();
        let got = String::from_utf8(read_some(&mut s, usize::MAX).await).unwrap();
        assert!(got.starts_with("HTTP/1.1 403"), "{got}");
    }
}

#[tokio::test]
async fn tcp_alpn_with_non_http_bytes_is_relayed_after_one_decision() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    pki.issue("reporting", REPORTING);
    let policies = policy_dir(&pki, &[("authz.rego", POLICY)]);
    let sidecar = start(config(&pki, &policies, tcp_echo(b"echo:").await)).await;

    let mut s = tls_connect(&pki.client("reporting", &[ALPN_TCP]), sidecar.inbound_addr).await;
    s.write_all(b"\x00\x01binary").await.unwrap();
    assert_eq!(read_some(&mut s, 13).await, b"echo:\x00\x01binary");
    s.write_all(b"more").await.unwrap();
    assert_eq!(read_some(&mut s, 9).await, b"echo:more");

    let mut s = tls_connect(&pki.client("frontend", &[ALPN_TCP]), sidecar.inbound_addr).await;
    let _ = s.write_all(b"\x00\x01binary").await;
    assert!(read_some(&mut s, 1).await.is_empty());
}
