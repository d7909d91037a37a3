//! Two sidecars in one process joined by explicit outbound routes (no iptables,
//! no privileges): app → route listener → mTLS (HTTP/2, pooled) → peer inbound → app.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::mesh::*;
use common::*;
use portcullis::config::RouteProtocol;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_over_pooled_mtls_with_policy_at_both_ends() {
    // These tests count handshakes: one at a time.
    let _serial = METRICS_SERIAL.lock().await;
    let handshakes = |text: &str| {
        metric(
            text,
            "portcullis_tls_handshakes_total",
            &[("direction", "outbound")],
        )
    };
    // The registry is the process's: read it before A exists.
    let before = handshakes(&portcullis::metrics::global().render());
    let app = echo_app().await;
    let (_pki, a, b) = mesh(app, vec![(RouteProtocol::Http, SERVER_ID)]).await;
    let route = a.route_addrs[0];
    // A opens its connection to the route's upstream while starting, so the first
    // request does not wait for a handshake. Start-up waits for it only so long; on
    // a loaded machine it may finish just after.
    let mut started = 0.0;
    for _ in 0..100 {
        started = handshakes(&admin_get(a.admin_addr, "/metrics").await.1) - before;
        if started >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(started, 1.0, "route upstream connected at start-up");

    let (status, body) = plain_get(route, "/hello").await;
    assert_eq!(status, 200, "{body}");
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    // The app sees the caller's SPIFFE ID, and HTTP/1.1 as its client sent.
    let xfcc = echoed["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap();
    assert!(xfcc.ends_with(&format!("URI={FRONTEND}")), "{xfcc}");
    assert!(xfcc.starts_with(&format!("By={SERVER_ID}")), "{xfcc}");
    assert_eq!(echoed["version"], "HTTP/1.1");
    assert!(echoed["headers"].get("x-portcullis-orig-proto").is_none());

    // Denied by B's inbound policy, seen at A as 403.
    let (status, _) = plain_get(route, "/forbidden").await;
    assert_eq!(status, 403);
    // Denied by A's outbound policy, before leaving the pod.
    let (status, body) = plain_get(route, "/egress-denied").await;
    assert_eq!(status, 403, "{body}");

    // Many requests on many app connections share one pooled mTLS connection.
    for i in 0..30 {
        let (status, _) = plain_get(route, &format!("/n/{i}")).await;
        assert_eq!(status, 200);
    }
    let after = handshakes(&admin_get(a.admin_addr, "/metrics").await.1);
    assert_eq!(
        after - before,
        1.0,
        "outbound mTLS handshakes for 33 requests: the one made at start-up"
    );
    let inbound_text = admin_get(b.admin_addr, "/metrics").await.1;
    assert!(
        metric(
            &inbound_text,
            "portcullis_requests_total",
            &[("direction", "inbound"), ("decision", "allow")]
        ) >= 31.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_dry_run_lets_egress_denies_through_and_counts_them() {
    // Makes outbound handshakes, which another test counts.
    let _serial = METRICS_SERIAL.lock().await;
    let app = echo_app().await;
    let (_pki, a, _b) = mesh_tweaked(
        app,
        vec![(RouteProtocol::Http, SERVER_ID)],
        |a| a.policy.dry_run.outbound = true,
        |_| {},
    )
    .await;
    let route = a.route_addrs[0];
    let dry = || async {
        metric(
            &admin_get(a.admin_addr, "/metrics").await.1,
            "portcullis_requests_total",
            &[("direction", "outbound"), ("decision", "dry_run_deny")],
        )
    };
    let before = dry().await;
    // A's outbound policy denies this path; in dry-run it goes on to B, which allows it.
    let (status, body) = plain_get(route, "/egress-denied").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(dry().await, before + 1.0);
    // B's inbound policy is not in dry-run: its deny still holds.
    let (status, _) = plain_get(route, "/forbidden").await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_closing_idle_connections_loses_no_request() {
    let _serial = METRICS_SERIAL.lock().await;
    // B closes the pooled connection after 300 ms without a request; A's requests,
    // spaced around that, race its GOAWAY. None may fail: a request the old
    // connection refused is sent again on a new one (to the same SPIFFE ID).
    let app = echo_app().await;
    let (_pki, a, _b) = mesh_with(app, vec![(RouteProtocol::Http, SERVER_ID)], |cfg| {
        cfg.limits.idle_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let route = a.route_addrs[0];
    let mut failed = Vec::new();
    for i in 0..40u64 {
        let (status, body) = plain_get(route, &format!("/n/{i}")).await;
        if status != 200 {
            failed.push(format!("request {i}: {status} {body}"));
        }
        tokio::time::sleep(std::time::Duration::from_micros(290_000 + i * 500)).await;
    }
    assert!(failed.is_empty(), "{failed:?}");
}
