//! Adversarial HTTP through the inbound sidecar, as raw bytes over real mTLS:
//! request smuggling attempts and path-normalisation tricks. Ambiguous requests are
//! refused, never forwarded, and the path the policy decides on is byte for byte the
//! path the app receives.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Allows everything except `/admin...`; echoes the path it decided on in a header so
/// the test can compare it with what the app received.
const POLICY: &str = r#"
package envoy.authz
import rego.v1
default allow := false
allow := {"allowed": true, "headers": {"x-decided-path": input.attributes.request.http.path}} if {
    not startswith(lower(input.attributes.request.http.path), "/admin")
}
"#;

/// An app that records the path and decided path of every request it receives.
async fn recording_app() -> (SocketAddr, Arc<Mutex<Vec<(String, String)>>>) {
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let path = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            let decided = req
                                .headers()
                                .get("x-decided-path")
                                .map(|v| v.to_str().unwrap_or("").to_owned())
                                .unwrap_or_default();
                            // Only a request whose body arrived whole was received.
                            if req.into_body().collect().await.is_ok() {
                                log.lock().unwrap().push((path, decided));
                            }
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(executor())
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

struct Setup {
    _pki: Pki,
    sidecar: portcullis::run::Running,
    client: Arc<rustls::ClientConfig>,
    h2_client: Arc<rustls::ClientConfig>,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

async fn setup() -> Setup {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let policies = policy_dir(&pki, &[("authz.rego", POLICY)]);
    let (app, seen) = recording_app().await;
    let sidecar = start(config(&pki, &policies, app)).await;
    let client = pki.client("frontend", &[b"http/1.1"]);
    let h2_client = pki.client("frontend", &[b"h2"]);
    Setup {
        _pki: pki,
        sidecar,
        client,
        h2_client,
        seen,
    }
}

/// Writes raw bytes over mTLS and returns everything the sidecar answers until it
/// closes or goes quiet.
async fn raw(s: &Setup, bytes: &[u8]) -> String {
    let tcp = tokio::net::TcpStream::connect(s.sidecar.inbound_addr)
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(s.client.clone())
        .connect(
            rustls_pki_types::ServerName::try_from("backend").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    tls.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_millis(700), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn statuses(resp: &str) -> Vec<u16> {
    resp.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| resp.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_are_refused_and_never_forwarded() {
    let s = setup().await;
    // The smuggled request is one the policy allows: if any parser on the way split
    // the stream differently, the app would record it.
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: b\r\n\r\n";
    let cases: Vec<(&str, String)> = vec![
        ("Content-Length and Transfer-Encoding", format!("POST /a HTTP/1.1\r\nHost: b\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}")),
        ("Transfer-Encoding and Content-Length", format!("POST /a HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\ncontent-length: 6\r\n\r\n0\r\n\r\n{smuggled}")),
        ("duplicate Content-Length", format!("POST /a HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\nContent-Length: 41\r\n\r\n{smuggled}")),
        ("Content-Length list", format!("POST /a HTTP/1.1\r\nHost: b\r\nContent-Length: 0, 41\r\n\r\n{smuggled}")),
        ("TE obfuscated (xchunked)", format!("POST /a HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}")),
        ("TE chunked, identity", format!("POST /a HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}")),
        ("TE with space before colon", format!("POST /a HTTP/1.1\r\nHost: b\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}")),
        ("invalid chunk size", format!("POST /a HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n{smuggled}")),
        ("chunk size overflow", format!("POST /a HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n\r\n{smuggled}")),
        ("obs-fold", format!("GET /a HTTP/1.1\r\nHost: b\r\nX-A: 1\r\n folded\r\n\r\n{smuggled}")),
        ("NUL in header", format!("GET /a HTTP/1.1\r\nHost: b\r\nX-A: a\0b\r\n\r\n{smuggled}")),
        ("bare CR in header", format!("GET /a HTTP/1.1\r\nHost: b\r\nX-A: a\rb\r\n\r\n{smuggled}")),
        ("bare LF line ends", format!("GET /a HTTP/1.1\nHost: b\nX-A: 1\n\n{smuggled}")),
        ("bare LF in one line", format!("GET /a HTTP/1.1\r\nHost: b\nX-A: 1\r\n\r\n{smuggled}")),
    ];
    for (name, bytes) in &cases {
        s.seen.lock().unwrap().clear();
        let resp = raw(&s, bytes.as_bytes()).await;
        let codes = statuses(&resp);
        // Refused with 400 (or 501 for an unknown coding), or the connection closed
        // without an answer; never a 2xx, and nothing reaches the app.
        assert!(
            codes.iter().all(|c| *c == 400 || *c == 501) && codes.len() <= 1,
            "{name}: {resp}"
        );
        let seen = s.seen.lock().unwrap().clone();
        assert!(seen.is_empty(), "{name}: forwarded to the app: {seen:?}");
    }
    // The refusals by the sidecar's own framing checks are counted.
    let text = admin_get(s.sidecar.admin_addr, "/metrics").await.1;
    let ambiguous = metric(
        &text,
        "portcullis_rejected_requests_total",
        &[("direction", "inbound"), ("reason", "ambiguous_framing")],
    );
    assert!(ambiguous >= 4.0, "{ambiguous}");

    // A well-formed request on the same path still works (the checks are not blanket).
    let resp = raw(
        &s,
        b"POST /a HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&resp), [200], "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_decided_as_forwarded() {
    let s = setup().await;
    // (request target, expected status, path the app must receive if forwarded)
    let cases: &[(&str, u16, Option<&str>)] = &[
        ("/public/../admin", 403, None),
        ("/%2e%2e/admin", 403, None),
        ("/public/%2E%2E/admin", 403, None),
        ("//admin", 403, None),
        ("/./admin", 403, None),
        ("/ADMIN", 403, None),
        ("/admin;jsessionid=1", 403, None),
        ("/public/..%2Fadmin", 400, None),
        ("/public%2Fadmin", 400, None),
        ("/public%5cadmin", 400, None),
        ("/public\\..\\admin", 400, None),
        ("/public/%61dmin", 200, Some("/public/admin")),
        (
            "/public//x/./y/../z?q=a/../b",
            200,
            Some("/public/x/z?q=a/../b"),
        ),
        ("/public/caf%c3%a9", 200, Some("/public/caf%C3%A9")),
    ];
    for (target, status, forwarded) in cases {
        s.seen.lock().unwrap().clear();
        let resp = raw(
            &s,
            format!("GET {target} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        let codes = statuses(&resp);
        assert_eq!(codes.first().copied(), Some(*status), "{target}: {resp}");
        let seen = s.seen.lock().unwrap().clone();
        match forwarded {
            Some(p) => {
                assert_eq!(seen.len(), 1, "{target}");
                assert_eq!(seen[0].0, *p, "{target}: app path");
                assert_eq!(
                    seen[0].1, *p,
                    "{target}: the policy decided on another path"
                );
            }
            None => assert!(seen.is_empty(), "{target} reached the app: {seen:?}"),
        }
    }
    // A fragment is refused before the policy: the URI parser would drop it silently,
    // so the path decided on would not be the one the client sent.
    s.seen.lock().unwrap().clear();
    let resp = raw(
        &s,
        b"GET /public#/../admin HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&resp).first().copied(), Some(400), "{resp}");
    assert!(s.seen.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_431() {
    let s = setup().await;
    let too_large = || async {
        metric(
            &admin_get(s.sidecar.admin_addr, "/metrics").await.1,
            "portcullis_rejected_requests_total",
            &[("direction", "inbound"), ("reason", "header_too_large")],
        )
    };
    let before = too_large().await;
    let big = "x".repeat(70 * 1024);
    let resp = raw(
        &s,
        format!("GET /public HTTP/1.1\r\nHost: b\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(
        statuses(&resp).first().copied(),
        Some(431),
        "{}",
        &resp[..resp.len().min(200)]
    );
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let resp = raw(
        &s,
        format!("GET /public HTTP/1.1\r\nHost: b\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(statuses(&resp).first().copied(), Some(431), "{resp}");
    assert!(s.seen.lock().unwrap().is_empty());
    // hyper writes its 431 before the connection's error reaches the code that
    // counts it, so the count may trail the response by a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut counted = too_large().await;
    while counted < before + 2.0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        counted = too_large().await;
    }
    assert_eq!(counted, before + 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_gets_408() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let policies = policy_dir(&pki, &[("authz.rego", POLICY)]);
    let (app, seen) = recording_app().await;
    let mut cfg = config(&pki, &policies, app);
    cfg.limits.header_timeout = Duration::from_millis(500);
    let sidecar = start(cfg).await;
    let client = pki.client("frontend", &[b"http/1.1"]);
    let tcp = tokio::net::TcpStream::connect(sidecar.inbound_addr)
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client)
        .connect(
            rustls_pki_types::ServerName::try_from("backend").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // A head that never ends: one header line every 200 ms.
    tls.write_all(b"GET /public HTTP/1.1\r\nHost: b\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    for i in 0..20 {
        let _ = tls.write_all(format!("X-Slow-{i}: 1\r\n").as_bytes()).await;
        match tokio::time::timeout(Duration::from_millis(200), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(seen.lock().unwrap().is_empty());
    let metrics = admin_get(sidecar.admin_addr, "/metrics").await.1;
    let timeouts = metric(
        &metrics,
        "portcullis_rejected_requests_total",
        &[("direction", "inbound"), ("reason", "header_timeout")],
    );
    assert!(timeouts >= 1.0, "{timeouts}");
}

/// One HTTP/2 request written as raw frames (HPACK literals, no Huffman), so the
/// test can send what a well-behaved client library refuses to: returns the frame
/// types the sidecar answered with on stream 1 or the connection, and the status
/// if it answered with headers.
async fn h2_raw(
    s: &Setup,
    headers: &[(&str, &str)],
    data: Option<&[u8]>,
) -> (Vec<u8>, Option<u16>) {
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }
    let mut block = Vec::new();
    for (name, value) in headers {
        assert!(name.len() < 127 && value.len() < 127);
        block.push(0x00); // literal without indexing, new name
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    let end_stream = if data.is_none() { 0x1 } else { 0 };
    out.extend(frame(0x1, 0x4 | end_stream, 1, &block)); // HEADERS, END_HEADERS
    if let Some(d) = data {
        out.extend(frame(0x0, 0x1, 1, d)); // DATA, END_STREAM
    }
    let tls = tls_connect(&s.h2_client, s.sidecar.inbound_addr).await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    wr.write_all(&out).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut kinds = Vec::new();
    let mut status = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    'read: loop {
        // Parse whole frames from what arrived so far.
        while buf.len() >= 9 {
            let len =
                (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            match (kind, stream) {
                (0x4, 0) if flags & 0x1 == 0 => {
                    let _ = wr.write_all(&frame(0x4, 0x1, 0, &[])).await; // SETTINGS ACK
                }
                (0x1, 1) => {
                    kinds.push(kind);
                    // :status as an indexed static-table entry (8..=14) or a literal.
                    status = match payload.first() {
                        Some(&b) if (0x88..=0x8e).contains(&b) => {
                            [200, 204, 206, 304, 400, 404, 500]
                                .get(usize::from(b - 0x88))
                                .copied()
                        }
                        _ => payload
                            .windows(3)
                            .find_map(|w| std::str::from_utf8(w).ok()?.parse::<u16>().ok()),
                    };
                    if flags & 0x1 != 0 {
                        break 'read;
                    }
                }
                (0x0, 1) if flags & 0x1 != 0 => break 'read,
                (0x3, 1) | (0x7, 0) => {
                    kinds.push(kind);
                    break 'read;
                }
                _ => {}
            }
        }
        match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    (kinds, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http2_is_refused_and_never_forwarded() {
    let s = setup().await;
    const RST_STREAM: u8 = 0x3;
    const GOAWAY: u8 = 0x7;
    let base = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "b"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut h: Vec<(&str, &str)> = base.to_vec();
        h.extend_from_slice(extra);
        h
    };

    // The raw encoder is right: a well-formed request is answered and forwarded.
    let (kinds, status) = h2_raw(&s, &with(&[(":path", "/ok")]), None).await;
    assert_eq!((kinds.first().copied(), status), (Some(0x1), Some(200)));
    assert_eq!(s.seen.lock().unwrap().len(), 1);
    s.seen.lock().unwrap().clear();

    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Option<&'a [u8]>);
    let cases: Vec<Case> = vec![
        // HTTP/2 → HTTP/1.1 header injection.
        (
            "CR LF in a value",
            with(&[(":path", "/a"), ("x-a", "1\r\nx-injected: yes")]),
            None,
        ),
        (
            "LF in a value",
            with(&[(":path", "/a"), ("x-a", "1\nx-injected: yes")]),
            None,
        ),
        (
            "NUL in a value",
            with(&[(":path", "/a"), ("x-a", "a\0b")]),
            None,
        ),
        (
            "CR LF in :path",
            with(&[(":path", "/a HTTP/1.1\r\nx-injected: yes")]),
            None,
        ),
        ("space in :path", with(&[(":path", "/a /b")]), None),
        (
            "upper-case name",
            with(&[(":path", "/a"), ("X-A", "1")]),
            None,
        ),
        (
            "colon in a name",
            with(&[(":path", "/a"), ("x:a", "1")]),
            None,
        ),
        (
            "unknown pseudo-header",
            with(&[(":path", "/a"), (":foo", "bar")]),
            None,
        ),
        (
            "pseudo-header after a regular one",
            vec![
                (":method", "GET"),
                (":scheme", "https"),
                ("x-a", "1"),
                (":path", "/a"),
                (":authority", "b"),
            ],
            None,
        ),
        (
            "duplicate :path",
            with(&[(":path", "/a"), (":path", "/b")]),
            None,
        ),
        ("no :path", with(&[]), None),
        (
            "connection-specific header",
            with(&[(":path", "/a"), ("connection", "keep-alive")]),
            None,
        ),
        (
            "transfer-encoding",
            with(&[(":path", "/a"), ("transfer-encoding", "chunked")]),
            None,
        ),
        (
            "te other than trailers",
            with(&[(":path", "/a"), ("te", "gzip")]),
            None,
        ),
        // Content-Length that disagrees with the DATA frames.
        (
            "content-length above the body",
            vec![
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", "b"),
                (":path", "/a"),
                ("content-length", "10"),
            ],
            Some(&b"hello"[..]),
        ),
        (
            "content-length below the body",
            vec![
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", "b"),
                (":path", "/a"),
                ("content-length", "2"),
            ],
            Some(&b"hello"[..]),
        ),
    ];
    for (name, headers, data) in cases {
        let (kinds, status) = h2_raw(&s, &headers, data).await;
        let refused = kinds.contains(&RST_STREAM) || kinds.contains(&GOAWAY) || status == Some(400);
        assert!(refused, "{name}: answered {kinds:?} status {status:?}");
        let seen = s.seen.lock().unwrap().clone();
        assert!(seen.is_empty(), "{name}: the app received {seen:?}");
    }
}
