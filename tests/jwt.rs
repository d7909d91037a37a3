//! JWT authentication end to end: the sidecar in-process with real mTLS clients,
//! a JWKS server over HTTPS on loopback (certificate from the dev CA with a DNS
//! SAN) that rotates its keys, and the echo app showing what the app receives.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod jwt_keys;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use jsonwebtoken::Algorithm;
use jwt_keys::*;
use portcullis::config::{ClaimToHeader, Config, JwksSource, JwtProvider, TokenLocation};
use portcullis::identity::tls::crypto_provider;
use portcullis::identity::SpiffeId;
use serde_json::json;
use tokio::net::TcpListener;

const ISS: &str = "https://idp.test";

/// Allows requests whose verified claims say `role: admin`, and `/open/*` for anyone.
const POLICY: &str = r#"
package envoy.authz

import rego.v1

default allow := false

claims := input.attributes.metadataContext.filterMetadata["envoy.filters.http.jwt_authn"].jwt_payload

allow if input.parsed_path[0] == "open"

allow if claims.role == "admin"

# A provider configured with `payload_in_metadata: verified_claims`.
allow if input.attributes.metadataContext.filterMetadata["envoy.filters.http.jwt_authn"].verified_claims.role == "auditor"
"#;

fn provider(name: &str, jwks: JwksSource) -> JwtProvider {
    let mut p = JwtProvider::new(name, ISS, jwks);
    p.audiences = vec!["orders".to_owned()];
    p.from.push(TokenLocation::Cookie("session".to_owned()));
    p.claims_to_headers = vec![ClaimToHeader {
        claim: "sub".to_owned(),
        header: "x-user".to_owned(),
    }];
    p
}

async fn sidecar(pki: &Pki, providers: Vec<JwtProvider>) -> portcullis::run::Running {
    let policies = policy_dir(pki, &[("authz.rego", POLICY)]);
    let app = echo_app().await;
    let mut cfg: Config = config(pki, &policies, app);
    cfg.jwt.providers = providers;
    start(cfg).await
}

fn claims(role: &str) -> serde_json::Value {
    json!({"iss": ISS, "aud": "orders", "sub": "alice", "role": role, "iat": now(), "exp": now() + 600})
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// A JWKS endpoint whose document, status and `Cache-Control` the test changes.
struct JwksServer {
    url: String,
    ca: std::path::PathBuf,
    body: Arc<Mutex<(u16, String)>>,
    fetches: Arc<AtomicUsize>,
    /// How long each answer waits (a slow endpoint).
    delay: Arc<Mutex<Duration>>,
    /// The accept loop: aborting it closes the listener (connections refused).
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(pki: &Pki, initial: String) -> JwksServer {
        let issued = pki
            .ca
            .issue_with_dns(
                &SpiffeId::parse("spiffe://cluster.local/ns/idp/sa/idp").unwrap(),
                Duration::from_secs(3600),
                &["localhost".to_owned()],
            )
            .unwrap();
        let ca = pki.path("idp-ca.pem");
        std::fs::write(&ca, &issued.bundle_pem).unwrap();
        let certs = rustls_pemfile::certs(&mut issued.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut issued.key_pem.as_bytes())
            .unwrap()
            .unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let body = Arc::new(Mutex::new((200u16, initial)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let (b, f, d) = (body.clone(), fetches.clone(), delay.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, b, f, d) = (acceptor.clone(), b.clone(), f.clone(), d.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |_req: http::Request<Incoming>| {
                        f.fetch_add(1, Ordering::SeqCst);
                        let (status, text) = b.lock().unwrap().clone();
                        let wait = *d.lock().unwrap();
                        async move {
                            tokio::time::sleep(wait).await;
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .header("cache-control", "public, max-age=3600")
                                    .body(Full::new(Bytes::from(text)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        JwksServer {
            url: format!("https://localhost:{port}/.well-known/jwks.json"),
            ca,
            body,
            fetches,
            delay,
            task,
        }
    }

    fn slow(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    /// Stops listening: fetches are refused from now on.
    fn stop(&self) {
        self.task.abort();
    }

    fn set(&self, status: u16, text: String) {
        *self.body.lock().unwrap() = (status, text);
    }

    fn source(&self, refresh: Duration) -> JwksSource {
        JwksSource::Url {
            url: self.url.clone(),
            refresh,
            ca: Some(self.ca.clone()),
        }
    }
}

async fn status(
    client: &Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let (r, body) = call(client, addr, req("GET", path, headers, "")).await;
    (r.status().as_u16(), body)
}

#[tokio::test]
async fn unknown_kid_refetches_and_rotation_is_picked_up() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let old = TestKey::es256("old");
    let new = TestKey::rs256("new");
    let idp = JwksServer::start(&pki, jwks(&[&old])).await;
    // A long refresh: only the unknown-kid refetch can pick the new key up.
    let sidecar = sidecar(
        &pki,
        vec![provider(
            "rotate-kid",
            idp.source(Duration::from_secs(3600)),
        )],
    )
    .await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let addr = sidecar.inbound_addr;
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1);

    let t_old = old.sign(&claims("admin"));
    assert_eq!(
        status(&c, addr, "/x", &[("authorization", &bearer(&t_old))])
            .await
            .0,
        200
    );

    // The IdP starts signing with a new key and publishes it.
    idp.set(200, jwks(&[&old, &new]));
    let t_new = new.sign(&claims("admin"));
    assert_eq!(
        status(&c, addr, "/x", &[("authorization", &bearer(&t_new))])
            .await
            .0,
        200
    );
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 2);
    // Further unknown kids are rate limited: no fetch storm.
    let stranger = TestKey::es256("stranger").sign(&claims("admin"));
    for _ in 0..3 {
        let (s, _) = status(&c, addr, "/x", &[("authorization", &bearer(&stranger))]).await;
        assert_eq!(s, 401);
    }
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 2);

    let m = admin_get(sidecar.admin_addr, "/metrics").await.1;
    assert_eq!(
        metric(
            &m,
            "portcullis_jwks_fetches_total",
            &[("provider", "rotate-kid"), ("result", "success")]
        ),
        2.0
    );
    assert_eq!(
        metric(&m, "portcullis_jwks_keys", &[("provider", "rotate-kid")]),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_jwt_validations_total",
            &[("provider", "rotate-kid"), ("result", "unknown_kid")]
        ),
        3.0
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_jwt_validations_total",
            &[("provider", "rotate-kid"), ("result", "success")]
        ),
        2.0
    );
}

#[tokio::test]
async fn removed_keys_stop_working_and_bad_fetches_keep_the_last_good_set() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let old = TestKey::es256("old");
    let new = TestKey::es256("new");
    let idp = JwksServer::start(&pki, jwks(&[&old, &new])).await;
    let sidecar = sidecar(
        &pki,
        vec![provider(
            "rotate-refresh",
            idp.source(Duration::from_secs(1)),
        )],
    )
    .await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let addr = sidecar.inbound_addr;
    let t_old = old.sign(&claims("admin"));
    let t_new = new.sign(&claims("admin"));
    assert_eq!(
        status(&c, addr, "/x", &[("authorization", &bearer(&t_old))])
            .await
            .0,
        200
    );
    assert_eq!(
        status(&c, addr, "/x", &[("authorization", &bearer(&t_new))])
            .await
            .0,
        200
    );

    // The old key is retired: after the next refresh it no longer verifies.
    idp.set(200, jwks(&[&new]));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (s, _) = status(&c, addr, "/x", &[("authorization", &bearer(&t_old))]).await;
        if s == 401 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "old key still accepted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        status(&c, addr, "/x", &[("authorization", &bearer(&t_new))])
            .await
            .0,
        200
    );

    // Garbage and errors from the endpoint: the last good set stays.
    idp.set(200, "<html>oops</html>".to_owned());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        status(&c, addr, "/x", &[("authorization", &bearer(&t_new))])
            .await
            .0,
        200
    );
    idp.set(500, "{}".to_owned());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        status(&c, addr, "/x", &[("authorization", &bearer(&t_new))])
            .await
            .0,
        200
    );
    let m = admin_get(sidecar.admin_addr, "/metrics").await.1;
    let p = ("provider", "rotate-refresh");
    assert!(
        metric(
            &m,
            "portcullis_jwks_fetches_total",
            &[p, ("result", "invalid")]
        ) >= 1.0
    );
    assert!(
        metric(
            &m,
            "portcullis_jwks_fetches_total",
            &[p, ("result", "http_error")]
        ) >= 1.0
    );
    assert_eq!(metric(&m, "portcullis_jwks_keys", &[p]), 1.0);
}

/// Waits until `portcullis_jwks_fetches_total{provider,result}` reaches `at_least`.
async fn wait_for_fetches(
    admin: std::net::SocketAddr,
    provider: &str,
    result: &str,
    at_least: f64,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let m = admin_get(admin, "/metrics").await.1;
        let n = metric(
            &m,
            "portcullis_jwks_fetches_total",
            &[("provider", provider), ("result", result)],
        );
        if n >= at_least {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {result} fetch counted: {n}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn slow_or_unreachable_jwks_endpoint_keeps_the_last_good_set() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let key = TestKey::es256("k1");
    let idp = JwksServer::start(&pki, jwks(&[&key])).await;
    let name = "flaky-idp";
    let sidecar = sidecar(
        &pki,
        vec![provider(name, idp.source(Duration::from_secs(1)))],
    )
    .await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let token = bearer(&key.sign(&claims("admin")));
    let timed = |what: &'static str| {
        let (c, token) = (c.clone(), token.clone());
        async move {
            let t = tokio::time::Instant::now();
            let (s, body) =
                status(&c, sidecar.inbound_addr, "/x", &[("authorization", &token)]).await;
            assert_eq!(s, 200, "{what}: {body}");
            // Verification uses the keys held: it never waits for the endpoint.
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "{what}: took {:?}",
                t.elapsed()
            );
        }
    };
    timed("endpoint healthy").await;

    // Slow: answers take longer than the fetch timeout (5 s).
    idp.slow(Duration::from_secs(8));
    wait_for_fetches(sidecar.admin_addr, name, "timeout", 1.0).await;
    timed("endpoint slow").await;

    // Down: the listener is gone, connections are refused.
    idp.stop();
    wait_for_fetches(sidecar.admin_addr, name, "network_error", 1.0).await;
    timed("endpoint down").await;
    let m = admin_get(sidecar.admin_addr, "/metrics").await.1;
    assert_eq!(
        metric(&m, "portcullis_jwks_keys", &[("provider", name)]),
        1.0
    );
    // A token signed with a key the set never had is still refused meanwhile.
    let stranger = TestKey::es256("k2");
    let (s, _) = status(
        &c,
        sidecar.inbound_addr,
        "/x",
        &[("authorization", &bearer(&stranger.sign(&claims("admin"))))],
    )
    .await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn clock_skew_bounds_exp_and_nbf_and_the_metadata_name_is_configurable() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let key = TestKey::es256("skew");
    let mut p = provider("skew", JwksSource::Inline(jwks(&[&key])));
    p.clock_skew = Duration::from_secs(60);
    p.payload_in_metadata = "verified_claims".to_owned();
    let sidecar = sidecar(&pki, vec![p]).await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let with = |exp: i64, nbf: Option<i64>| {
        let mut c = json!({"iss": ISS, "aud": "orders", "sub": "eve", "role": "auditor", "exp": now() + exp});
        if let Some(nbf) = nbf {
            c["nbf"] = json!(now() + nbf);
        }
        bearer(&key.sign(&c))
    };
    // Within the 60 s skew: accepted. Beyond it: 401. The claims reach the policy
    // under the configured name (the policy allows role "auditor" only there).
    for (what, token, want) in [
        ("expired 20 s ago", with(-20, None), 200),
        ("expired 120 s ago", with(-120, None), 401),
        ("valid from 20 s on", with(600, Some(20)), 200),
        ("valid from 120 s on", with(600, Some(120)), 401),
    ] {
        let (s, body) = status(&c, sidecar.inbound_addr, "/x", &[("authorization", &token)]).await;
        assert_eq!(s, want, "{what}: {body}");
    }
}

#[tokio::test]
async fn a_token_validated_before_still_expires() {
    // The second and later uses of a token skip its decoding and signature check;
    // its `exp` is still compared with the clock every time.
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let key = TestKey::es256("short");
    let mut p = provider("short-lived", JwksSource::Inline(jwks(&[&key])));
    p.clock_skew = Duration::ZERO;
    let sidecar = sidecar(&pki, vec![p]).await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let token =
        bearer(&key.sign(&json!({"iss": ISS, "aud": "orders", "role": "admin", "exp": now() + 2})));
    for _ in 0..3 {
        let (s, body) = status(&c, sidecar.inbound_addr, "/x", &[("authorization", &token)]).await;
        assert_eq!(s, 200, "{body}");
    }
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let (s, body) = status(&c, sidecar.inbound_addr, "/x", &[("authorization", &token)]).await;
    assert_eq!(s, 401, "{body}");
}

#[tokio::test]
async fn invalid_tokens_are_401_and_never_reach_policy_or_app() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let rsa = TestKey::rs256("r1");
    let ec = TestKey::es256("e1");
    let sidecar = sidecar(
        &pki,
        vec![provider("corp", JwksSource::Inline(jwks(&[&rsa, &ec])))],
    )
    .await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let addr = sidecar.inbound_addr;
    let now = now();

    let good = rsa.sign(&claims("admin"));
    let mut cases: Vec<(&str, String)> = vec![
        (
            "expired",
            ec.sign(&json!({"iss": ISS, "aud": "orders", "exp": now - 3600})),
        ),
        (
            "not_yet_valid",
            ec.sign(&json!({"iss": ISS, "aud": "orders", "exp": now + 7200, "nbf": now + 3600})),
        ),
        (
            "not_yet_valid",
            ec.sign(&json!({"iss": ISS, "aud": "orders", "exp": now + 7200, "iat": now + 3600})),
        ),
        (
            "bad_issuer",
            ec.sign(&json!({"iss": "https://evil.test", "aud": "orders", "exp": now + 60})),
        ),
        (
            "bad_audience",
            ec.sign(&json!({"iss": ISS, "aud": "billing", "exp": now + 60})),
        ),
        (
            "missing_claim",
            ec.sign(&json!({"iss": ISS, "exp": now + 60})),
        ),
        (
            "missing_claim",
            ec.sign(&json!({"iss": ISS, "aud": "orders"})),
        ),
        ("bad_algorithm", none_token(&claims("admin"))),
        (
            "bad_algorithm",
            hmac_token(
                Algorithm::HS256,
                &json!({"alg": "HS256", "typ": "JWT", "kid": "r1"}),
                &claims("admin"),
                rsa.public_pem.as_bytes(),
            ),
        ),
        (
            "unknown_kid",
            hmac_token(
                Algorithm::HS256,
                &json!({"alg": "HS256", "typ": "JWT"}),
                &claims("admin"),
                rsa.public_pem.as_bytes(),
            ),
        ),
        ("unknown_kid", TestKey::es256("zz").sign(&claims("admin"))),
        (
            "malformed",
            ec.sign(&json!({"iss": ISS, "aud": "orders", "exp": (now + 60).to_string()})),
        ),
        ("malformed", "not-a-token".to_owned()),
        ("malformed", "a.b.c".to_owned()),
        ("malformed", format!("{good}.extra.segments")),
        ("malformed", format!("{}x", "a".repeat(17 * 1024))),
        (
            "forbidden_header",
            ec.sign_with_header(
                &json!({"alg": "ES256", "kid": "e1", "jku": "https://evil.test/jwks"}),
                &claims("admin"),
            ),
        ),
        (
            "forbidden_header",
            ec.sign_with_header(
                &json!({"alg": "ES256", "kid": "e1", "jwk": ec.jwk}),
                &claims("admin"),
            ),
        ),
        (
            "forbidden_header",
            ec.sign_with_header(
                &json!({"alg": "ES256", "kid": "e1", "x5u": "https://evil.test/c"}),
                &claims("admin"),
            ),
        ),
    ];
    // Tampered payload: "user" promoted to "admin", signature kept.
    let user = ec.sign(&claims("user"));
    let mut parts: Vec<String> = user.split('.').map(str::to_owned).collect();
    parts[1] = b64(&claims("admin"));
    cases.push(("bad_signature", parts.join(".")));
    // Truncated signature (whole base64 groups: a shorter signature, not bad base64).
    cases.push(("bad_signature", good[..good.len() - 2].to_owned()));
    // Truncated mid-group: not even base64url.
    cases.push(("malformed", good[..good.len() - 5].to_owned()));
    // Key confusion by kid: an ES256 token naming the RSA key.
    cases.push((
        "bad_algorithm",
        ec.sign_with_header(&json!({"alg": "ES256", "kid": "r1"}), &claims("admin")),
    ));

    for (reason, token) in &cases {
        let before = metric(
            &admin_get(sidecar.admin_addr, "/metrics").await.1,
            "portcullis_jwt_validations_total",
            &[("provider", "corp"), ("result", reason)],
        );
        // /open is allowed by the policy for anyone: a 401 proves the policy never ran.
        let (r, body) = call(
            &c,
            addr,
            req("GET", "/open/x", &[("authorization", &bearer(token))], ""),
        )
        .await;
        assert_eq!(r.status(), 401, "{reason}: {body}");
        let www = r.headers()["www-authenticate"].to_str().unwrap();
        assert!(www.starts_with("Bearer error=\"invalid_token\""), "{www}");
        assert!(
            !body.contains("\"headers\""),
            "the app must not be reached: {body}"
        );
        let after = metric(
            &admin_get(sidecar.admin_addr, "/metrics").await.1,
            "portcullis_jwt_validations_total",
            &[("provider", "corp"), ("result", reason)],
        );
        assert_eq!(after, before + 1.0, "{reason}");
    }
    // A bad token in the query or a cookie is just as invalid.
    let (s, _) = status(&c, addr, "/open/x?access_token=a.b.c", &[]).await;
    assert_eq!(s, 401);
    let (s, _) = status(&c, addr, "/open/x", &[("cookie", "session=a.b.c")]).await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn valid_tokens_reach_policy_as_claims_and_are_stripped() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let ec = TestKey::es256("e1");
    let mut forwarding = provider("fwd", JwksSource::Inline(jwks(&[&ec])));
    forwarding.issuer = "https://forwarding.test".to_owned();
    forwarding.forward = true;
    forwarding.payload_in_metadata = "jwt_payload".to_owned();
    let sidecar = sidecar(
        &pki,
        vec![
            provider("strip", JwksSource::Inline(jwks(&[&ec]))),
            forwarding,
        ],
    )
    .await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let addr = sidecar.inbound_addr;

    // Valid admin token: allowed; the app sees no token but the claim header.
    let admin = ec.sign(&claims("admin"));
    let (s, body) = status(
        &c,
        addr,
        "/x",
        &[("authorization", &bearer(&admin)), ("x-user", "spoofed")],
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(echoed["headers"].get("authorization").is_none(), "{body}");
    assert_eq!(echoed["headers"]["x-user"], "alice");

    // Valid token, but the policy says no: 403, not 401.
    let user = ec.sign(&claims("user"));
    let (r, _) = call(
        &c,
        addr,
        req("GET", "/x", &[("authorization", &bearer(&user))], ""),
    )
    .await;
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("www-authenticate").is_none());
    // No token: the policy decides (403 here, 200 on /open), and a client's x-user is stripped.
    let (s, _) = status(&c, addr, "/x", &[]).await;
    assert_eq!(s, 403);
    let (s, body) = status(&c, addr, "/open/y", &[("x-user", "spoofed")]).await;
    assert_eq!(s, 200);
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(echoed["headers"].get("x-user").is_none(), "{body}");

    // Query and cookie tokens are removed before the app (and the policy) see the request.
    let (s, body) = status(&c, addr, &format!("/x?a=1&access_token={admin}&b=2"), &[]).await;
    assert_eq!(s, 200);
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["path"], "/x?a=1&b=2");
    let (s, body) = status(
        &c,
        addr,
        "/x",
        &[("cookie", &format!("theme=dark; session={admin}"))],
    )
    .await;
    assert_eq!(s, 200);
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["headers"]["cookie"], "theme=dark");

    // The provider is chosen by issuer; `forward: true` keeps the token.
    let fwd = ec.sign(&json!({"iss": "https://forwarding.test", "aud": "orders", "sub": "bob", "role": "admin", "exp": now() + 60}));
    let (s, body) = status(&c, addr, "/x", &[("authorization", &bearer(&fwd))]).await;
    assert_eq!(s, 200);
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["headers"]["authorization"], bearer(&fwd));
    assert_eq!(echoed["headers"]["x-user"], "bob");
    let m = admin_get(sidecar.admin_addr, "/metrics").await.1;
    assert!(
        metric(
            &m,
            "portcullis_jwt_validations_total",
            &[("provider", "fwd"), ("result", "success")]
        ) >= 1.0
    );
}

#[tokio::test]
async fn opa_envoy_policy_verifying_tokens_itself() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let key = TestKey::rs256("r1");
    let policy = format!(
        r#"
package envoy.authz

import rego.v1

default allow := false

jwks := `{}`

bearer := t if {{
    v := input.attributes.request.http.headers.authorization
    startswith(v, "Bearer ")
    t := substring(v, count("Bearer "), -1)
}}

allow if {{
    [valid, _, payload] := io.jwt.decode_verify(bearer, {{"cert": jwks, "aud": "orders", "iss": "{ISS}"}})
    valid
    payload.role == "admin"
}}
"#,
        jwks(&[&key])
    );
    let policies = policy_dir(&pki, &[("authz.rego", &policy)]);
    let app = echo_app().await;
    let sidecar = start(config(&pki, &policies, app)).await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let addr = sidecar.inbound_addr;
    let admin = key.sign(&claims("admin"));
    let user = key.sign(&claims("user"));
    let (s, body) = status(&c, addr, "/x", &[("authorization", &bearer(&admin))]).await;
    assert_eq!(s, 200, "{body}");
    // Without providers the token is the app's business: it is forwarded.
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["headers"]["authorization"], bearer(&admin));
    assert_eq!(
        status(&c, addr, "/x", &[("authorization", &bearer(&user))])
            .await
            .0,
        403
    );
    assert_eq!(
        status(&c, addr, "/x", &[("authorization", "Bearer junk")])
            .await
            .0,
        403
    );
    let expired =
        key.sign(&json!({"iss": ISS, "aud": "orders", "role": "admin", "exp": now() - 1}));
    assert_eq!(
        status(&c, addr, "/x", &[("authorization", &bearer(&expired))])
            .await
            .0,
        403
    );
}
