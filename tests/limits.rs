//! Limits end to end: the policy body buffer (truncated or 413), the idle timeout
//! for HTTP/1.1 and HTTP/2 connections, the head deadline on later keep-alive
//! requests, HTTP/2 concurrent streams and the connection limit. Real mTLS clients,
//! the sidecar in-process, a real app on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BODY_POLICY: &str = r#"
package envoy.authz

import rego.v1

default allow := false

# Small JSON bodies with ok=true, seen whole.
allow if {
    not input.truncated_body
    input.parsed_body.ok == true
}

# A long body arrives cut to max_bytes, and says so.
allow if {
    input.truncated_body
    input.attributes.request.http.body == "0123456789abcdef"
}

allow if input.attributes.request.http.method == "GET"
"#;

async fn tls(
    pki: &Pki,
    addr: SocketAddr,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(pki.client("frontend", alpn))
        .connect(
            rustls_pki_types::ServerName::try_from("backend").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

async fn rejected(admin: SocketAddr, reason: &str) -> f64 {
    metric(
        &admin_get(admin, "/metrics").await.1,
        "portcullis_rejected_requests_total",
        &[("direction", "inbound"), ("reason", reason)],
    )
}

/// A request whose body is streamed in chunks without a Content-Length.
fn chunked(
    path: &str,
    chunks: Vec<&'static str>,
) -> Request<http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>> {
    let frames =
        futures_util::stream::iter(chunks.into_iter().map(|c| {
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(c.as_bytes())))
        }));
    Request::builder()
        .method("POST")
        .uri(path)
        .header("host", "backend:8080")
        .body(StreamBody::new(frames).boxed_unsync())
        .unwrap()
}

#[tokio::test]
async fn policy_body_is_cut_or_refused_with_413() {
    let _serial = METRICS_SERIAL.lock().await;
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let dir = policy_dir(&pki, &[("authz.rego", BODY_POLICY)]);
    let app = echo_app().await;

    // allow_partial (the default): the policy sees the first 16 bytes and
    // `truncated_body`; the app still receives the whole body.
    let mut cfg = config(&pki, &dir, app);
    cfg.policy.body.enabled = true;
    cfg.policy.body.max_bytes = 16;
    let partial = start(cfg.clone()).await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let (r, body) = call(
        &c,
        partial.inbound_addr,
        req("POST", "/small", JSON, r#"{"ok":true}"#),
    )
    .await;
    assert_eq!(r.status(), 200, "{body}");
    let long = "0123456789abcdef and then much more than sixteen bytes";
    let (r, body) = call(&c, partial.inbound_addr, req("POST", "/long", &[], long)).await;
    assert_eq!(r.status(), 200, "{body}");
    assert!(
        body.contains(&format!("\"body_bytes\":{}", long.len())),
        "{body}"
    );

    // allow_partial: false — a longer body is 413 before the policy, whether it
    // declares its length or is streamed; the app never sees it.
    cfg.policy.body.allow_partial = false;
    let strict = start(cfg).await;
    let before = rejected(strict.admin_addr, "body_too_large").await;
    let (r, body) = call(&c, strict.inbound_addr, req("POST", "/long", &[], long)).await;
    assert_eq!(r.status(), 413, "{body}");
    assert!(body.contains("policy.body.max_bytes"), "{body}");

    let tls = tls(&pki, strict.inbound_addr, &[b"http/1.1"]).await;
    let (mut s2, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = s2
        .send_request(chunked(
            "/stream",
            vec!["0123456789", "abcdefghij", "klmnop"],
        ))
        .await
        .unwrap();
    let (r, body) = split(resp).await;
    assert_eq!(r.status(), 413, "{body}");
    assert_eq!(
        rejected(strict.admin_addr, "body_too_large").await,
        before + 2.0
    );

    // Within the limit: decided on the whole body and forwarded.
    let mut s = h1(&c, strict.inbound_addr).await;
    let resp = s
        .send_request(req("POST", "/small", JSON, r#"{"ok":true}"#))
        .await
        .unwrap();
    assert_eq!(split(resp).await.0.status(), 200);
}

/// An app that answers `/slow` with a body streamed over `ms` milliseconds, and
/// counts how many requests it holds at once.
async fn slow_app(ms: u64) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let peak2 = peak.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let (now, peak) = (now.clone(), peak.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let (now, peak) = (now.clone(), peak.clone());
                    async move {
                        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(n, Ordering::SeqCst);
                        // Headers at once, then the body slowly.
                        let (tx, rx) = tokio::sync::mpsc::channel::<
                            Result<Frame<Bytes>, std::convert::Infallible>,
                        >(1);
                        tokio::spawn(async move {
                            for _ in 0..5 {
                                tokio::time::sleep(Duration::from_millis(ms / 5)).await;
                                let _ = tx
                                    .send(Ok(Frame::data(Bytes::from_static(b"tick\n"))))
                                    .await;
                            }
                            now.fetch_sub(1, Ordering::SeqCst);
                        });
                        let body = StreamBody::new(tokio_stream_from(rx));
                        Ok::<_, std::convert::Infallible>(Response::new(body))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(executor())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, peak2)
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

const ALLOW_ALL: &str = "package envoy.authz\nimport rego.v1\nallow := true\n";

#[tokio::test]
async fn idle_connections_close_busy_ones_stay() {
    let _serial = METRICS_SERIAL.lock().await;
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let dir = policy_dir(&pki, &[("authz.rego", ALLOW_ALL)]);
    let (app, _) = slow_app(2000).await;
    let mut cfg = config(&pki, &dir, app);
    cfg.limits.idle_timeout = Duration::from_millis(800);
    let sidecar = start(cfg).await;
    let closed = || async {
        metric(
            &admin_get(sidecar.admin_addr, "/metrics").await.1,
            "portcullis_connections_closed_total",
            &[("direction", "inbound"), ("reason", "idle_timeout")],
        )
    };
    let before = closed().await;

    // HTTP/1.1: a response streamed for 2 s (longer than the idle timeout) completes.
    let tls1 = tls(&pki, sidecar.inbound_addr, &[b"http/1.1"]).await;
    let (mut h1s, conn1) = hyper::client::conn::http1::handshake(TokioIo::new(tls1))
        .await
        .unwrap();
    let conn1 = tokio::spawn(conn1);
    let started = Instant::now();
    let (r, body) = split(
        h1s.send_request(req("GET", "/slow", &[], ""))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(body.matches("tick").count(), 5, "{body}");
    assert!(started.elapsed() >= Duration::from_millis(1900));

    // HTTP/2 likewise.
    let tls2 = tls(&pki, sidecar.inbound_addr, &[b"h2"]).await;
    let (mut h2s, conn2) = hyper::client::conn::http2::handshake(executor(), TokioIo::new(tls2))
        .await
        .unwrap();
    let conn2 = tokio::spawn(conn2);
    let r = Request::builder()
        .uri("https://backend/slow")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (r, body) = split(h2s.send_request(r).await.unwrap()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(body.matches("tick").count(), 5, "{body}");

    // Then both sit idle: the sidecar closes them (HTTP/2 with a GOAWAY), and counts it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(conn1.is_finished() && conn2.is_finished()) {
        assert!(
            Instant::now() < deadline,
            "idle connections were not closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed().await >= before + 2.0);
}

#[tokio::test]
async fn later_keepalive_heads_have_a_deadline_too() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let dir = policy_dir(&pki, &[("authz.rego", ALLOW_ALL)]);
    let app = echo_app().await;
    let mut cfg = config(&pki, &dir, app);
    cfg.limits.header_timeout = Duration::from_millis(700);
    let sidecar = start(cfg).await;

    let mut s = tls(&pki, sidecar.inbound_addr, &[b"http/1.1"]).await;
    let get = b"GET /a HTTP/1.1\r\nhost: backend\r\n\r\n";
    let mut buf = vec![0u8; 4096];
    s.write_all(get).await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    // Idle for longer than the head deadline: still open (idle is not slow).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    s.write_all(get).await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    // A second head dribbled: 408 once the deadline passes, then the connection closes.
    s.write_all(b"GET /b HTTP/1.1\r\nhost: ba").await.unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(600));
}

/// One whole HTTP/1.1 response with a `content-length` body, as text.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return text;
            }
        }
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before a whole response: {text}");
        got.extend_from_slice(&buf[..n]);
    }
}

/// An HTTP/1.1 connection idle past the rest delay (`proxy::idle`) has no parser
/// until its next byte: requests after the rest are served on the same connection,
/// and a head that then dribbles still meets the head deadline.
#[tokio::test]
async fn rested_keepalive_connections_serve_and_keep_the_head_deadline() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let dir = policy_dir(&pki, &[("authz.rego", ALLOW_ALL)]);
    let app = echo_app().await;
    let mut cfg = config(&pki, &dir, app);
    cfg.limits.header_timeout = Duration::from_millis(700);
    let sidecar = start(cfg).await;
    let rest = portcullis::proxy::idle::REST_AFTER * 2;

    let mut s = tls(&pki, sidecar.inbound_addr, &[b"http/1.1"]).await;
    for path in ["/zero", "/one", "/two", "/three"] {
        // Each request after the first one after the connection has rested (the first
        // head is due from the connection's start); one arrives in two pieces.
        if path != "/zero" {
            tokio::time::sleep(rest).await;
        }
        let head = format!("POST {path} HTTP/1.1\r\nhost: backend\r\ncontent-length: 2\r\n\r\nok");
        let (first, second) = head.as_bytes().split_at(if path == "/two" { 1 } else { 0 });
        s.write_all(first).await.unwrap();
        s.write_all(second).await.unwrap();
        let text = read_response(&mut s).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{path}: {text}");
    }

    // A head that starts after a rest and stops: 408 at the deadline, then closed.
    tokio::time::sleep(rest).await;
    s.write_all(b"GET /b HTTP/1.1\r\nhost: ba").await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}

#[tokio::test]
async fn http2_concurrent_streams_are_bounded() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let dir = policy_dir(&pki, &[("authz.rego", ALLOW_ALL)]);
    let (app, peak) = slow_app(400).await;
    let mut cfg = config(&pki, &dir, app);
    cfg.limits.max_concurrent_streams = 2;
    let sidecar = start(cfg).await;

    let t = tls(&pki, sidecar.inbound_addr, &[b"h2"]).await;
    let (s, conn) = hyper::client::conn::http2::handshake(executor(), TokioIo::new(t))
        .await
        .unwrap();
    tokio::spawn(conn);
    // One request first, so that the client has the sidecar's SETTINGS (a stream
    // opened before them over the limit is refused with REFUSED_STREAM).
    let mut first = s.clone();
    let r = Request::builder()
        .uri("https://backend/slow")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        split(first.send_request(r).await.unwrap()).await.0.status(),
        200
    );
    let started = Instant::now();
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let mut s = s.clone();
            tokio::spawn(async move {
                let r = Request::builder()
                    .uri("https://backend/slow")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                split(s.send_request(r).await.unwrap()).await.0.status()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    // Six 400 ms streams, two at a time on one connection: three waves.
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    assert!(
        started.elapsed() >= Duration::from_millis(1100),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_and_counted() {
    let _serial = METRICS_SERIAL.lock().await;
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let dir = policy_dir(&pki, &[("authz.rego", ALLOW_ALL)]);
    let app = echo_app().await;
    let mut cfg = config(&pki, &dir, app);
    cfg.limits.max_connections = 2;
    let sidecar = start(cfg).await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let before = rejected(sidecar.admin_addr, "max_connections").await;

    let mut a = h1(&c, sidecar.inbound_addr).await;
    let mut b = h1(&c, sidecar.inbound_addr).await;
    for s in [&mut a, &mut b] {
        let r = s.send_request(req("GET", "/", &[], "")).await.unwrap();
        assert_eq!(split(r).await.0.status(), 200);
    }
    // The third is accepted by the kernel and closed at once: no TLS handshake.
    let tcp = TcpStream::connect(sidecar.inbound_addr).await.unwrap();
    let third = tokio_rustls::TlsConnector::from(c.clone())
        .connect(
            rustls_pki_types::ServerName::try_from("backend").unwrap(),
            tcp,
        )
        .await;
    assert!(third.is_err(), "a third connection got through");
    assert_eq!(
        rejected(sidecar.admin_addr, "max_connections").await,
        before + 1.0
    );

    // A closed connection frees its slot.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let tcp = TcpStream::connect(sidecar.inbound_addr).await.unwrap();
        let conn = tokio_rustls::TlsConnector::from(c.clone())
            .connect(
                rustls_pki_types::ServerName::try_from("backend").unwrap(),
                tcp,
            )
            .await;
        if conn.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn plaintext_connections_over_the_limit_get_503() {
    let _serial = METRICS_SERIAL.lock().await;
    let pki = Pki::new();
    let dir = policy_dir(&pki, &[("authz.rego", ALLOW_ALL)]);
    let app = echo_app().await;
    let mut cfg = config(&pki, &dir, app);
    cfg.inbound.mtls = portcullis::config::MtlsMode::Permissive;
    cfg.limits.max_connections = 1;
    let sidecar = start(cfg).await;
    let before = rejected(sidecar.admin_addr, "max_connections").await;

    let get = b"GET /x HTTP/1.1\r\nhost: backend\r\n\r\n";
    let mut first = TcpStream::connect(sidecar.inbound_addr).await.unwrap();
    first.write_all(get).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = first.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    // The second: a clear 503 with Retry-After, not a reset.
    let mut second = TcpStream::connect(sidecar.inbound_addr).await.unwrap();
    second.write_all(get).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), second.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("retry-after: 1"), "{text}");
    assert_eq!(
        rejected(sidecar.admin_addr, "max_connections").await,
        before + 1.0
    );
}
