//! Inbound data path end to end: real mTLS clients, the sidecar in-process, a real
//! app on loopback. Each test asserts what a caller or the app would see.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full, StreamBody};

const POLICY: &str = r#"
package envoy.authz

import rego.v1

default allow := false

# By principal, method and path.
allow if {
    input.attributes.source.principal == "spiffe://cluster.local/ns/default/sa/frontend"
    input.attributes.request.http.method == "GET"
    input.parsed_path[0] == "public"
}

# By header.
allow if input.attributes.request.http.headers["x-magic"] == "please"

# The app must never see a client-supplied XFCC: the policy must not either. It sees
# the one the sidecar sets, as Envoy's ext_authz does.
allow if {
    input.parsed_path[0] == "echo"
    xfcc := input.attributes.request.http.headers["x-forwarded-client-cert"]
    startswith(xfcc, "By=spiffe://cluster.local/ns/default/sa/backend;Hash=")
    not contains(xfcc, "admin")
}

# Plain text (permissive): no identity, so no XFCC at all, whatever the client sent.
allow if {
    input.parsed_path[0] == "echo"
    not input.attributes.source.principal
    not input.attributes.request.http.headers["x-forwarded-client-cert"]
}

# Object results.
allow := {"allowed": true, "headers": {"x-policy": "object"}, "response_headers_to_add": {"x-resp": "added"}, "request_headers_to_remove": ["x-drop-me"]} if {
    input.parsed_path[0] == "object"
}

allow := {"allowed": false, "http_status": 418, "body": "teapot says no", "response_headers_to_add": {"x-why": "teapot"}} if {
    input.parsed_path[0] == "teapot"
}

# OPA-Envoy: on a deny, `headers` go on the local reply; an array is several values.
allow := {"allowed": false, "http_status": 401, "body": "log in first", "headers": {"www-authenticate": "Bearer realm=\"demo\"", "x-multi": ["one", "two"]}} if {
    input.parsed_path[0] == "login"
}

# Two complete definitions disagreeing: an evaluation error, which must fail closed.
allow := {"allowed": true} if input.parsed_path[0] == "conflict"
allow := {"allowed": false} if input.parsed_path[0] == "conflict"
"#;

async fn setup() -> (Pki, portcullis::run::Running) {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    pki.issue("reporting", REPORTING);
    let policies = policy_dir(&pki, &[("authz.rego", POLICY)]);
    let app = echo_app().await;
    let running = start(config(&pki, &policies, app)).await;
    (pki, running)
}

#[tokio::test]
async fn decisions_by_principal_method_path_and_header() {
    let (pki, sidecar) = setup().await;
    let addr = sidecar.inbound_addr;
    let frontend = pki.client("frontend", &[b"http/1.1"]);
    let reporting = pki.client("reporting", &[b"http/1.1"]);

    let (r, body) = call(&frontend, addr, req("GET", "/public/x", &[], "")).await;
    assert_eq!(r.status(), 200, "{body}");
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["path"], "/public/x");

    // Wrong principal, wrong method, wrong path.
    let (r, _) = call(&reporting, addr, req("GET", "/public/x", &[], "")).await;
    assert_eq!(r.status(), 403);
    let (r, _) = call(&frontend, addr, req("POST", "/public/x", &[], "")).await;
    assert_eq!(r.status(), 403);
    let (r, _) = call(&frontend, addr, req("GET", "/private", &[], "")).await;
    assert_eq!(r.status(), 403);
    // Header-based allow.
    let (r, _) = call(
        &reporting,
        addr,
        req("DELETE", "/any", &[("x-magic", "please")], ""),
    )
    .await;
    assert_eq!(r.status(), 200);
    // The path decided on is the normalised path the app receives.
    let (r, body) = call(&frontend, addr, req("GET", "/private/../public/y", &[], "")).await;
    assert_eq!(r.status(), 200);
    assert!(body.contains(r#""path":"/public/y""#), "{body}");
    let (r, _) = call(&frontend, addr, req("GET", "/public/..%2Fprivate", &[], "")).await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn result_object_headers_status_and_body_are_honoured() {
    let (pki, sidecar) = setup().await;
    let addr = sidecar.inbound_addr;
    let c = pki.client("reporting", &[b"http/1.1"]);

    let (r, body) = call(&c, addr, req("GET", "/object", &[("x-drop-me", "1")], "")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-resp"], "added");
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["headers"]["x-policy"], "object");
    assert!(echoed["headers"].get("x-drop-me").is_none());

    let (r, body) = call(&c, addr, req("GET", "/teapot", &[], "")).await;
    assert_eq!(r.status(), 418);
    assert_eq!(body, "teapot says no");
    assert_eq!(r.headers()["x-why"], "teapot");

    let (r, body) = call(&c, addr, req("GET", "/login", &[], "")).await;
    assert_eq!(r.status(), 401);
    assert_eq!(body, "log in first");
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"demo\"");
    let multi: Vec<_> = r.headers().get_all("x-multi").iter().collect();
    assert_eq!(multi, ["one", "two"]);
}

#[tokio::test]
async fn policy_error_fails_closed_and_is_counted() {
    let (pki, sidecar) = setup().await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let before = metric(
        &admin_get(sidecar.admin_addr, "/metrics").await.1,
        "portcullis_policy_errors_total",
        &[("direction", "inbound"), ("reason", "error")],
    );
    let (r, body) = call(&c, sidecar.inbound_addr, req("GET", "/conflict", &[], "")).await;
    assert_eq!(r.status(), 403, "{body}");
    let after = metric(
        &admin_get(sidecar.admin_addr, "/metrics").await.1,
        "portcullis_policy_errors_total",
        &[("direction", "inbound"), ("reason", "error")],
    );
    assert_eq!(after, before + 1.0);
}

#[tokio::test]
async fn spoofed_xfcc_never_reaches_policy_or_app() {
    let (pki, sidecar) = setup().await;
    let c = pki.client("reporting", &[b"http/1.1"]);
    let spoof =
        "By=spiffe://cluster.local/ns/x/sa/y;URI=spiffe://cluster.local/ns/default/sa/admin";
    let (r, body) = call(
        &c,
        sidecar.inbound_addr,
        req(
            "GET",
            "/echo",
            &[
                ("x-forwarded-client-cert", spoof),
                ("x-portcullis-peer", "admin"),
            ],
            "",
        ),
    )
    .await;
    // Allowed means the policy saw the sidecar's XFCC, not the client's.
    assert_eq!(r.status(), 200, "{body}");
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let xfcc = echoed["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap();
    // Hash= is the SHA-256 of the client's leaf certificate (DER), as Envoy sets it.
    let pem = std::fs::read(pki.path("reporting/tls.crt")).unwrap();
    let leaf = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap();
    let hash = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &leaf));
    assert_eq!(
        xfcc,
        format!("By={SERVER_ID};Hash={hash};URI={REPORTING}"),
        "{xfcc}"
    );
    assert!(!xfcc.contains("admin"));
    assert!(echoed["headers"].get("x-portcullis-peer").is_none());
    assert!(echoed["headers"]["x-request-id"].as_str().unwrap().len() >= 32);
}

#[tokio::test]
async fn readiness_and_plaintext_refused_in_strict_mode() {
    let (_pki, sidecar) = setup().await;
    let (status, _) = admin_get(sidecar.admin_addr, "/ready").await;
    assert_eq!(status, 200);
    let (status, _) = admin_get(sidecar.admin_addr, "/live").await;
    assert_eq!(status, 200);
    // Plain HTTP to the inbound port gets no HTTP answer at all.
    let mut s = plain_h1(sidecar.inbound_addr).await;
    assert!(s
        .send_request(req("GET", "/public", &[], ""))
        .await
        .is_err());
    let text = admin_get(sidecar.admin_addr, "/metrics").await.1;
    assert!(
        metric(
            &text,
            "portcullis_tls_handshake_failures_total",
            &[("direction", "inbound"), ("reason", "plaintext")]
        ) >= 1.0
    );
}

#[tokio::test]
async fn untrusted_client_rejected() {
    let (_pki, sidecar) = setup().await;
    // Same trust domain name, different CA.
    let other = Pki::new();
    other.issue("frontend", FRONTEND);
    let c = other.client("frontend", &[b"http/1.1"]);
    let tcp = tokio::net::TcpStream::connect(sidecar.inbound_addr)
        .await
        .unwrap();
    let result = tokio_rustls::TlsConnector::from(c)
        .connect(
            rustls_pki_types::ServerName::try_from("backend").unwrap(),
            tcp,
        )
        .await;
    // The client does not trust the server either; both directions fail.
    assert!(result.is_err());
}

#[tokio::test]
async fn http2_streaming_upload_reaches_app_whole() {
    let (pki, sidecar) = setup().await;
    let c = pki.client("frontend", &[b"h2"]);
    let tcp = tokio::net::TcpStream::connect(sidecar.inbound_addr)
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(c)
        .connect(
            rustls_pki_types::ServerName::try_from("backend").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut s, conn) =
        hyper::client::conn::http2::handshake(executor(), hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let chunks = (0..64).map(|_| {
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(vec![
            b'x';
            16 * 1024
        ])))
    });
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let r = http::Request::builder()
        .method("PUT")
        .uri("https://backend:8080/anything")
        .header("x-magic", "please")
        .body(body)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), s.send_request(r))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echoed["body_bytes"], 64 * 16 * 1024);
    // Carried to the app as HTTP/2 (prior knowledge) since the client spoke HTTP/2.
    assert_eq!(echoed["version"], "HTTP/2.0");
    let _ = Full::new(Bytes::new());
}

#[tokio::test]
async fn permissive_mode_serves_plain_http1_and_h2c_prior_knowledge() {
    let pki = Pki::new();
    let policies = policy_dir(&pki, &[("authz.rego", POLICY)]);
    let mut cfg = config(&pki, &policies, echo_app().await);
    cfg.inbound.mtls = portcullis::config::MtlsMode::Permissive;
    let sidecar = start(cfg).await;

    // HTTP/1.1 in plain text: decided without a principal, forwarded without XFCC.
    let mut s = plain_h1(sidecar.inbound_addr).await;
    let resp = s
        .send_request(req(
            "GET",
            "/echo",
            &[(
                "x-forwarded-client-cert",
                "URI=spiffe://cluster.local/ns/x/sa/forged",
            )],
            "",
        ))
        .await
        .unwrap();
    let (r, body) = split(resp).await;
    assert_eq!(r.status(), 200, "{body}");
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        echoed["headers"].get("x-forwarded-client-cert").is_none(),
        "{body}"
    );

    // HTTP/2 with prior knowledge (h2c), no TLS, no ALPN.
    let tcp = tokio::net::TcpStream::connect(sidecar.inbound_addr)
        .await
        .unwrap();
    let (mut s, conn) =
        hyper::client::conn::http2::handshake(executor(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let r = http::Request::builder()
        .uri("http://backend:8080/echo")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let (r, body) = split(s.send_request(r).await.unwrap()).await;
    assert_eq!(r.status(), 200, "{body}");
    assert_eq!(r.version(), http::Version::HTTP_2);
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["path"], "/echo");

    // A path the policy does not allow is still denied in plain text.
    let r = http::Request::builder()
        .uri("http://backend:8080/private")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let (r, _) = split(s.send_request(r).await.unwrap()).await;
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn repeated_requests_are_answered_from_the_decision_cache() {
    let (pki, sidecar) = setup().await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let count = |text: &str, result: &str| {
        metric(
            text,
            "portcullis_policy_decision_cache_total",
            &[("direction", "inbound"), ("result", result)],
        )
    };
    let before = admin_get(sidecar.admin_addr, "/metrics").await.1;
    // Different request ids and connections, the same facts the policy reads.
    for _ in 0..3 {
        let (r, _) = call(&c, sidecar.inbound_addr, req("GET", "/public/x", &[], "")).await;
        assert_eq!(r.status(), 200);
    }
    // What the policy reads differs (the method): evaluated, and denied.
    let (r, _) = call(&c, sidecar.inbound_addr, req("POST", "/public/x", &[], "")).await;
    assert_eq!(r.status(), 403);
    let after = admin_get(sidecar.admin_addr, "/metrics").await.1;
    assert!(
        count(&after, "hit") >= count(&before, "hit") + 2.0,
        "{after}"
    );
    assert!(
        count(&after, "miss") >= count(&before, "miss") + 2.0,
        "{after}"
    );
}

#[tokio::test]
async fn a_resumed_session_whose_certificate_expired_since_is_refused() {
    let (pki, sidecar) = setup().await;
    // Two more seconds to live.
    let (_, not_after) = pki.issue_for("short", FRONTEND, Duration::from_secs(2));
    let c = pki.client("short", &[b"http/1.1"]);
    let (r, _) = call(&c, sidecar.inbound_addr, req("GET", "/public/x", &[], "")).await;
    assert_eq!(r.status(), 200);
    // The certificate's facts are remembered from here on; its expiry is still
    // checked on every connection.
    let (r, _) = call(&c, sidecar.inbound_addr, req("GET", "/public/x", &[], "")).await;
    assert_eq!(r.status(), 200);
    let wait = not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(1100)).await;

    // The client resumes its session (no certificate is verified on resumption) and
    // the sidecar closes the connection before any request is read.
    let mut s = h1(&c, sidecar.inbound_addr).await;
    assert!(s
        .send_request(req("GET", "/public/x", &[], ""))
        .await
        .is_err());
    let text = admin_get(sidecar.admin_addr, "/metrics").await.1;
    let failures = metric(
        &text,
        "portcullis_tls_handshake_failures_total",
        &[("direction", "inbound"), ("reason", "expired_session")],
    );
    assert_eq!(failures, 1.0, "{text}");
    let resumed = metric(
        &text,
        "portcullis_tls_resumed_handshakes_total",
        &[("direction", "inbound")],
    );
    assert!(resumed >= 2.0, "{text}");
}
