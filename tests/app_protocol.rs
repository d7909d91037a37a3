//! The app gets the HTTP version it speaks, whatever the client used; peer markers
//! only from portcullis peers; gRPC callers refused as gRPC; fragments refused.
//!
//! Apps: Python's `http.server` (a real HTTP/1.1-only server; skipped with a message
//! when python3 is missing), and HTTP/1.1-only and h2c-only servers built on hyper's
//! one-version connection builders, which answer with the version they saw.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const POLICY: &str = r#"
package envoy.authz
import rego.v1

default allow := false

allow if input.parsed_path[0] == "ok"

allow := {"allowed": false, "reason": "reporting may only read"} if {
    input.parsed_path[0] == "svc.Orders"
}

allow := {"allowed": false, "reason": "token needed", "grpc_status": 16} if {
    input.parsed_path[0] == "svc.Login"
}

allow if input.parsed_path[0] == "svc.Open"
"#;

/// Which server library a test app is.
#[derive(Clone, Copy)]
enum Only {
    Http1,
    Http2,
}

/// An app that speaks one HTTP version only and answers with what it saw:
/// `<version> <path> <x-portcullis-orig-proto or ->`.
async fn one_version_app(only: Only) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let svc = hyper::service::service_fn(|r: Request<Incoming>| async move {
                let marker = r
                    .headers()
                    .get("x-portcullis-orig-proto")
                    .map(|v| v.to_str().unwrap_or("?").to_owned())
                    .unwrap_or_else(|| "-".into());
                let text = format!("{:?} {} {marker}", r.version(), r.uri().path());
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(text))))
            });
            let io = TokioIo::new(s);
            match only {
                Only::Http1 => {
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new().serve_connection(io, svc),
                    );
                }
                Only::Http2 => {
                    tokio::spawn(
                        hyper::server::conn::http2::Builder::new(executor())
                            .serve_connection(io, svc),
                    );
                }
            }
        }
    });
    addr
}

/// Sends requests over one mTLS connection with HTTP/2 (ALPN as given).
async fn h2_over_mtls(
    pki: &Pki,
    alpn: &[&[u8]],
    addr: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let cfg = pki.client("frontend", alpn);
    let tls = tls_connect(&cfg, addr).await;
    let (sender, conn) = hyper::client::conn::http2::handshake(executor(), TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

fn h2_req(path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method("POST")
        .uri(format!("https://backend:8080{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

async fn sidecar(
    pki: &Pki,
    app: SocketAddr,
    tweak: impl FnOnce(&mut portcullis::config::Config),
) -> portcullis::run::Running {
    let policies = policy_dir(pki, &[("authz.rego", POLICY)]);
    let mut cfg = config(pki, &policies, app);
    tweak(&mut cfg);
    start(cfg).await
}

#[tokio::test]
async fn http2_clients_reach_an_http1_only_app_as_http1() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let app = one_version_app(Only::Http1).await;
    let sc = sidecar(&pki, app, |_| {}).await;
    let mut h2 = h2_over_mtls(&pki, &[b"h2"], sc.inbound_addr).await;
    // Many requests on one HTTP/2 connection: each reaches the app as HTTP/1.1.
    for i in 0..20 {
        let (r, body) = split(
            h2.send_request(h2_req(&format!("/ok/{i}"), &[]))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(r.status(), 200, "{body}");
        assert_eq!(body, format!("HTTP/1.1 /ok/{i} -"));
    }
    // A client's protocol marker is neither honoured nor passed on.
    let (r, body) = split(
        h2.send_request(h2_req("/ok/m", &[("x-portcullis-orig-proto", "HTTP/2")]))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200, "{body}");
    assert_eq!(body, "HTTP/1.1 /ok/m -");
}

#[tokio::test]
async fn h2c_only_app_gets_http2_and_markers_come_only_from_peers() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let app = one_version_app(Only::Http2).await;
    let sc = sidecar(&pki, app, |_| {}).await;

    // HTTP/2 callers: the app answers the preface, so it gets HTTP/2.
    let mut h2 = h2_over_mtls(&pki, &[b"h2"], sc.inbound_addr).await;
    let (r, body) = split(h2.send_request(h2_req("/ok/a", &[])).await.unwrap()).await;
    assert_eq!(r.status(), 200, "{body}");
    assert_eq!(body, "HTTP/2.0 /ok/a -");
    // A marker from a client that is not a portcullis peer is ignored and stripped.
    let (r, body) = split(
        h2.send_request(h2_req("/ok/b", &[("x-portcullis-orig-proto", "HTTP/1.1")]))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200, "{body}");
    assert_eq!(body, "HTTP/2.0 /ok/b -");

    // gRPC over HTTP/1.1 still reaches the app as HTTP/2.
    let c = pki.client("frontend", &[b"http/1.1"]);
    let (r, body) = call(
        &c,
        sc.inbound_addr,
        req(
            "POST",
            "/ok/grpc",
            &[("content-type", "application/grpc")],
            "",
        ),
    )
    .await;
    assert_eq!(r.status(), 200, "{body}");
    assert_eq!(body, "HTTP/2.0 /ok/grpc -");

    // A portcullis peer (ALPN portcullis-h2) says its app used HTTP/1.1: honoured, so
    // this h2c-only app cannot be reached that way (502), and the marker never
    // reaches the app.
    let mut peer = h2_over_mtls(&pki, &[b"portcullis-h2", b"h2"], sc.inbound_addr).await;
    let (r, _) = split(
        peer.send_request(h2_req("/ok/c", &[("x-portcullis-orig-proto", "HTTP/2")]))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let (r, body) = split(
        peer.send_request(h2_req("/ok/d", &[("x-portcullis-orig-proto", "HTTP/1.1")]))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 502, "{body}");
}

#[tokio::test]
async fn per_port_protocol_overrides_auto() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let app = one_version_app(Only::Http2).await;
    let sc = sidecar(&pki, app, |cfg| {
        cfg.inbound
            .port_protocols
            .insert(app.port(), portcullis::config::AppProtocol::Http2);
    })
    .await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let (r, body) = call(&c, sc.inbound_addr, req("GET", "/ok/x", &[], "")).await;
    assert_eq!(r.status(), 200, "{body}");
    assert_eq!(body, "HTTP/2.0 /ok/x -");
}

#[tokio::test]
async fn grpc_callers_are_refused_as_grpc() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let app = one_version_app(Only::Http2).await;
    let sc = sidecar(&pki, app, |_| {}).await;
    let mut h2 = h2_over_mtls(&pki, &[b"h2"], sc.inbound_addr).await;
    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let expect = |r: &Response<()>, body: &str, status: &str, message: &str| {
        assert_eq!(r.status(), 200, "{body}");
        assert_eq!(r.headers()["grpc-status"], status);
        assert_eq!(r.headers()["grpc-message"], message);
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert_eq!(body, "", "trailers-only: no body");
    };
    // Policy deny: PERMISSION_DENIED with the policy's reason.
    let (r, body) = split(
        h2.send_request(h2_req("/svc.Orders/Create", &grpc))
            .await
            .unwrap(),
    )
    .await;
    expect(&r, &body, "7", "reporting may only read");
    // The policy chose the code.
    let (r, body) = split(
        h2.send_request(h2_req("/svc.Login/Do", &grpc))
            .await
            .unwrap(),
    )
    .await;
    expect(&r, &body, "16", "token needed");
    // Undefined → the generic policy message, PERMISSION_DENIED.
    let (r, body) = split(h2.send_request(h2_req("/svc.Nope/X", &grpc)).await.unwrap()).await;
    assert_eq!(r.headers()["grpc-status"], "7", "{body}");
    // Allowed calls reach the app untouched.
    let (r, body) = split(h2.send_request(h2_req("/svc.Open/X", &grpc)).await.unwrap()).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("grpc-status").is_none());
    assert_eq!(body, "HTTP/2.0 /svc.Open/X -");
    // Not gRPC: the plain HTTP refusal.
    let (r, _) = split(
        h2.send_request(h2_req("/svc.Orders/Create", &[]))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 403);
    // The metrics keep the HTTP-level decision.
    let text = admin_get(sc.admin_addr, "/metrics").await.1;
    assert!(
        metric(
            &text,
            "portcullis_requests_total",
            &[
                ("direction", "inbound"),
                ("decision", "deny"),
                ("status_class", "4xx")
            ]
        ) >= 4.0,
        "{text}"
    );
}

#[tokio::test]
async fn upstream_failure_reaches_grpc_callers_as_unavailable() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = gone.local_addr().unwrap();
    drop(gone);
    let sc = sidecar(&pki, app, |_| {}).await;
    let mut h2 = h2_over_mtls(&pki, &[b"h2"], sc.inbound_addr).await;
    let grpc = [("content-type", "application/grpc+proto")];
    let (r, body) = split(h2.send_request(h2_req("/svc.Open/X", &grpc)).await.unwrap()).await;
    assert_eq!(r.status(), 200, "{body}");
    assert_eq!(r.headers()["grpc-status"], "14");
    assert_eq!(r.headers()["grpc-message"], "upstream unavailable");
}

#[tokio::test]
async fn fragment_in_an_http1_request_line_is_refused() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let sc = sidecar(&pki, echo_app().await, |_| {}).await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let mut tls = tls_connect(&c, sc.inbound_addr).await;
    tls.write_all(b"GET /ok/a#frag HTTP/1.1\r\nHost: backend\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(head.contains("fragment"), "{head}");
}

/// Python's `http.server` in a directory holding `hello.txt`; killed on drop.
struct PythonApp {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for PythonApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn python_http_server() -> Option<PythonApp> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello from python\n").unwrap();
    let port = portcullis_testkit::ports::free_port();
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Some(PythonApp {
                child,
                addr,
                _dir: dir,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test]
async fn http2_client_reaches_pythons_http_server() {
    let Some(py) = python_http_server().await else {
        eprintln!("SKIP http2_client_reaches_pythons_http_server: python3 is not available");
        return;
    };
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let policies = policy_dir(
        &pki,
        &[(
            "authz.rego",
            "package envoy.authz\nimport rego.v1\ndefault allow := false\nallow if input.parsed_path[0] == \"hello.txt\"\n",
        )],
    );
    let sc = start(config(&pki, &policies, py.addr)).await;
    let mut h2 = h2_over_mtls(&pki, &[b"h2"], sc.inbound_addr).await;
    for _ in 0..3 {
        let r = Request::builder()
            .uri("https://backend/hello.txt")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (r, body) = split(h2.send_request(r).await.unwrap()).await;
        assert_eq!(r.status(), 200, "{body}");
        assert_eq!(body, "hello from python\n");
    }
}

/// An app that answers every connection with `answer` (or nothing) and keeps it open.
async fn raw_app(answer: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_app_that_does_not_speak_http_gets_the_client_an_answer() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    // Not HTTP at all: 502 with a reason, for HTTP/1.1 and HTTP/2 clients and gRPC.
    let garbage = raw_app(b"SSH-2.0-OpenSSH_9.2\r\n").await;
    let sc = sidecar(&pki, garbage, |_| {}).await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let (r, body) = call(&c, sc.inbound_addr, req("GET", "/ok/x", &[], "")).await;
    assert_eq!(r.status(), 502, "{body}");
    assert_eq!(body, "upstream unavailable\n");
    let mut h2 = h2_over_mtls(&pki, &[b"h2"], sc.inbound_addr).await;
    let (r, _) = split(h2.send_request(h2_req("/ok/y", &[])).await.unwrap()).await;
    assert_eq!(r.status(), 502);
    let grpc = [("content-type", "application/grpc")];
    let (r, _) = split(h2.send_request(h2_req("/svc.Open/Z", &grpc)).await.unwrap()).await;
    assert_eq!(r.headers()["grpc-status"], "14");

    // Silent: 504 at the upstream timeout, never a hang.
    let silent = raw_app(b"").await;
    let sc = sidecar(&pki, silent, |cfg| {
        cfg.limits.upstream_timeout = Duration::from_millis(500);
    })
    .await;
    let call_it = call(&c, sc.inbound_addr, req("GET", "/ok/z", &[], ""));
    let (r, body) = tokio::time::timeout(Duration::from_secs(10), call_it)
        .await
        .expect("the sidecar must answer");
    assert_eq!(r.status(), 504, "{body}");
}

/// An HTTP/1.1-only app that notes how each connection it accepts starts.
async fn noting_app() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let noted = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let mut head = [0u8; 4];
            let n = s.peek(&mut head).await.unwrap_or(0);
            noted
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head[..n]).into_owned());
            let svc = hyper::service::service_fn(|r: Request<Incoming>| async move {
                let text = format!("{:?} {}", r.version(), r.uri().path());
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(text))))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc),
            );
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn the_app_is_probed_before_ready_not_on_the_first_request() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let (app, seen) = noting_app().await;
    let sc = sidecar(&pki, app, |_| {}).await;
    // Ready: the probe has been made (start-up waits up to 500 ms for it; a loaded
    // machine gets more time here), and nothing else.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while seen.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen.lock().unwrap().clone(), vec!["PRI ".to_owned()]);
    let mut h2 = h2_over_mtls(&pki, &[b"h2"], sc.inbound_addr).await;
    let (r, body) = split(h2.send_request(h2_req("/ok/1", &[])).await.unwrap()).await;
    assert_eq!(r.status(), 200, "{body}");
    assert_eq!(body, "HTTP/1.1 /ok/1");
    // The HTTP/2 request went as HTTP/1.1 on a connection of its own, without a
    // second probe.
    assert_eq!(
        seen.lock().unwrap().clone(),
        vec!["PRI ".to_owned(), "POST".to_owned()]
    );
}
