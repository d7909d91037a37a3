//! Two sidecars in one process joined by explicit outbound routes (no iptables,
//! no privileges): app → route listener → mTLS (HTTP/2, pooled) → peer inbound → app.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use common::*;
use portcullis::config::{FilesIdentity, IdentityConfig, OutboundMode, Route, RouteProtocol};
use portcullis::identity::SpiffeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POLICIES: &str = r#"
package envoy.authz
import rego.v1
default allow := false
allow if {
    input.attributes.source.principal == "spiffe://cluster.local/ns/default/sa/frontend"
    input.parsed_path[0] != "forbidden"
}
# Opaque TCP connections from the frontend.
allow if {
    not input.attributes.request
    input.attributes.source.principal == "spiffe://cluster.local/ns/default/sa/frontend"
}
"#;

const OUTBOUND: &str = r#"
package portcullis.outbound
import rego.v1
default allow := false
allow if {
    input.attributes.destination.principal == "spiffe://cluster.local/ns/default/sa/backend"
    input.attributes.request.http.path != "/egress-denied"
}
allow if {
    not input.attributes.request
    input.attributes.destination.principal == "spiffe://cluster.local/ns/default/sa/backend"
}
"#;

/// Sidecar B (backend) in front of `app`, and sidecar A (frontend) with routes to B.
async fn mesh(
    app: SocketAddr,
    routes: Vec<(RouteProtocol, &str)>,
) -> (Pki, portcullis::run::Running, portcullis::run::Running) {
    mesh_with(app, routes, |_| {}).await
}

/// [`mesh`], with B's configuration adjusted by `tweak_b`.
async fn mesh_with(
    app: SocketAddr,
    routes: Vec<(RouteProtocol, &str)>,
    tweak_b: impl FnOnce(&mut portcullis::config::Config),
) -> (Pki, portcullis::run::Running, portcullis::run::Running) {
    mesh_tweaked(app, routes, |_| {}, tweak_b).await
}

/// [`mesh`], with A's and B's configurations adjusted.
async fn mesh_tweaked(
    app: SocketAddr,
    routes: Vec<(RouteProtocol, &str)>,
    tweak_a: impl FnOnce(&mut portcullis::config::Config),
    tweak_b: impl FnOnce(&mut portcullis::config::Config),
) -> (Pki, portcullis::run::Running, portcullis::run::Running) {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let policies = policy_dir(
        &pki,
        &[("authz.rego", POLICIES), ("outbound.rego", OUTBOUND)],
    );
    let mut b_cfg = config(&pki, &policies, app);
    tweak_b(&mut b_cfg);
    let b = start(b_cfg).await;

    let mut cfg = config(&pki, &policies, "127.0.0.1:9".parse().unwrap());
    cfg.identity = IdentityConfig::Files(FilesIdentity {
        cert: pki.path("frontend/tls.crt"),
        key: pki.path("frontend/tls.key"),
        bundle: pki.path("frontend/ca.crt"),
        ..FilesIdentity::default()
    });
    cfg.outbound.mode = OutboundMode::Routes;
    cfg.outbound.routes = routes
        .into_iter()
        .map(|(protocol, id)| Route {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream: b.inbound_addr,
            spiffe_id: SpiffeId::parse(id).unwrap(),
            protocol,
        })
        .collect();
    tweak_a(&mut cfg);
    let a = start(cfg).await;
    (pki, a, b)
}

async fn plain_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = plain_h1(addr).await;
    let resp = s.send_request(req("GET", path, &[], "")).await.unwrap();
    let (p, b) = split(resp).await;
    (p.status().as_u16(), b)
}

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
async fn tcp_route_relays_over_mtls_and_pinning_is_enforced() {
    // These tests count handshakes: one at a time.
    let _serial = METRICS_SERIAL.lock().await;
    let app = tcp_echo(b"").await;
    let wrong = "spiffe://cluster.local/ns/default/sa/someone-else";
    let (_pki, a, _b) = mesh(
        app,
        vec![(RouteProtocol::Tcp, SERVER_ID), (RouteProtocol::Tcp, wrong)],
    )
    .await;

    let resumed = |text: &str, direction: &str| {
        metric(
            text,
            "portcullis_tls_resumed_handshakes_total",
            &[("direction", direction)],
        )
    };
    let before = admin_get(a.admin_addr, "/metrics").await.1;
    // Each app connection is its own mTLS connection; after the first, the client
    // configuration (built once per rotation) resumes the TLS session.
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(a.route_addrs[0])
            .await
            .unwrap();
        s.write_all(b"\x00\x01binary protocol").await.unwrap();
        let mut buf = [0u8; 17];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"\x00\x01binary protocol");
    }
    let after = admin_get(a.admin_addr, "/metrics").await.1;
    for direction in ["outbound", "inbound"] {
        assert_eq!(
            resumed(&after, direction) - resumed(&before, direction),
            2.0,
            "{direction}: {after}"
        );
    }

    // A route pinned to an ID the peer does not have: the handshake fails, nothing flows.
    let mut s = tokio::net::TcpStream::connect(a.route_addrs[1])
        .await
        .unwrap();
    let _ = s.write_all(b"hello").await;
    let mut buf = [0u8; 5];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "a mis-pinned route must not carry bytes");
    let text = admin_get(a.admin_addr, "/metrics").await.1;
    assert!(
        metric(
            &text,
            "portcullis_tls_handshake_failures_total",
            &[("direction", "outbound"), ("reason", "not_authorized")]
        ) >= 1.0
    );
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
