//! Faults around the sidecar: the app down, slow, or dying mid-response; identity
//! files deleted or half-written. The sidecar answers quickly with the right status,
//! never hangs, and keeps its last good identity.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use http_body_util::BodyExt;
use portcullis::config::IdentityConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALLOW_ALL: &str = "package envoy.authz\nimport rego.v1\ndefault allow := true\n";

/// An app that reads the request head, then behaves as `mode` says.
async fn misbehaving_app(mode: &'static str) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                match mode {
                    "slow" => tokio::time::sleep(Duration::from_secs(5)).await,
                    "dies" => {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\npartial")
                            .await;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    _ => {}
                }
            });
        }
    });
    addr
}

async fn sidecar_for(app: SocketAddr, timeout: Duration) -> (Pki, portcullis::run::Running) {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let policies = policy_dir(&pki, &[("authz.rego", ALLOW_ALL)]);
    let mut cfg = config(&pki, &policies, app);
    cfg.limits.upstream_timeout = timeout;
    cfg.limits.connect_timeout = Duration::from_secs(1);
    if let IdentityConfig::Files(f) = &mut cfg.identity {
        f.poll_interval = Duration::from_millis(100);
    }
    let s = start(cfg).await;
    (pki, s)
}

/// `portcullis_upstream_errors_total{direction="inbound",kind}` on the sidecar.
async fn upstream_errors(sidecar: &portcullis::run::Running, kind: &str) -> f64 {
    metric(
        &admin_get(sidecar.admin_addr, "/metrics").await.1,
        "portcullis_upstream_errors_total",
        &[("direction", "inbound"), ("kind", kind)],
    )
}

#[tokio::test]
async fn app_down_is_a_fast_502() {
    // A port nobody listens on.
    let app = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (pki, sidecar) = sidecar_for(app, Duration::from_secs(5)).await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let before = upstream_errors(&sidecar, "connect").await;
    let t = Instant::now();
    let (r, _) = call(&c, sidecar.inbound_addr, req("GET", "/", &[], "")).await;
    assert_eq!(r.status(), 502);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    // Metrics are process-wide and other tests run alongside: at least this one.
    assert!(upstream_errors(&sidecar, "connect").await >= before + 1.0);
}

#[tokio::test]
async fn app_that_never_accepts_is_a_502_at_the_connect_timeout() {
    // A listener whose accept queue is full: further SYNs are dropped, so a connect
    // neither succeeds nor fails until the sidecar's connect timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let app = socket.local_addr().unwrap();
    let _listener = socket.listen(0).unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(app),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let (pki, sidecar) = sidecar_for(app, Duration::from_secs(10)).await; // connect timeout 1 s
    let c = pki.client("frontend", &[b"http/1.1"]);
    let before = upstream_errors(&sidecar, "connect").await;
    let t = Instant::now();
    let (r, _) = call(&c, sidecar.inbound_addr, req("GET", "/", &[], "")).await;
    let took = t.elapsed();
    assert_eq!(r.status(), 502);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "took {took:?}"
    );
    // Metrics are process-wide and other tests run alongside: at least this one.
    assert!(upstream_errors(&sidecar, "connect").await >= before + 1.0);
}

#[tokio::test]
async fn slow_app_is_a_504_at_the_timeout() {
    let app = misbehaving_app("slow").await;
    let (pki, sidecar) = sidecar_for(app, Duration::from_millis(300)).await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let before = upstream_errors(&sidecar, "timeout").await;
    let t = Instant::now();
    let (r, _) = call(&c, sidecar.inbound_addr, req("GET", "/", &[], "")).await;
    assert_eq!(r.status(), 504);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "took {took:?}"
    );
    assert!(upstream_errors(&sidecar, "timeout").await >= before + 1.0);
}

#[tokio::test]
async fn app_dying_mid_response_ends_the_response_without_a_hang() {
    let app = misbehaving_app("dies").await;
    let (pki, sidecar) = sidecar_for(app, Duration::from_secs(5)).await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let mut s = h1(&c, sidecar.inbound_addr).await;
    let resp = s.send_request(req("GET", "/", &[], "")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(3), resp.into_body().collect())
        .await
        .expect("the body must end, not hang");
    assert!(body.is_err(), "a truncated body must not look complete");
}

#[tokio::test]
async fn deleted_or_half_written_identity_files_keep_the_last_good_identity() {
    let app = echo_app().await;
    let (pki, sidecar) = sidecar_for(app, Duration::from_secs(5)).await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let metrics = |t: &str| {
        metric(
            t,
            "portcullis_identity_reloads_total",
            &[("result", "error")],
        )
    };
    let before = metrics(&admin_get(sidecar.admin_addr, "/metrics").await.1);

    std::fs::remove_file(pki.path("server/tls.crt")).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (r, _) = call(&c, sidecar.inbound_addr, req("GET", "/", &[], "")).await;
    assert_eq!(r.status(), 200);

    // Half of a certificate PEM.
    let fresh = pki
        .ca
        .issue(
            &portcullis::identity::SpiffeId::parse(SERVER_ID).unwrap(),
            Duration::from_secs(60),
        )
        .unwrap();
    std::fs::write(
        pki.path("server/tls.crt"),
        &fresh.cert_pem[..fresh.cert_pem.len() / 2],
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (r, _) = call(&c, sidecar.inbound_addr, req("GET", "/", &[], "")).await;
    assert_eq!(r.status(), 200);
    let after = metrics(&admin_get(sidecar.admin_addr, "/metrics").await.1);
    assert!(
        after >= before + 2.0,
        "refusals not counted: {before} → {after}"
    );
    assert_eq!(admin_get(sidecar.admin_addr, "/ready").await.0, 200);
}
