//! Bundle polling against a local bundle server (hyper on 127.0.0.1, plain
//! HTTP and HTTPS) serving `.tar.gz` bundles built here, with ETags: a new
//! revision is activated, a corrupt or broken bundle keeps the last good one
//! and is counted, `304 Not Modified` is handled, a forced reload re-fetches.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use common::*;
use portcullis::config::BundleConfig;

/// What the bundle server serves and what it saw.
#[derive(Default)]
struct Server {
    /// (etag, body); `None` answers 404.
    bundle: Option<(String, Vec<u8>)>,
    /// If-None-Match of every request, in order.
    seen: Vec<Option<String>>,
    /// Number of 304 answers.
    not_modified: usize,
}

type Shared = Arc<Mutex<Server>>;

async fn handle(
    state: Shared,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let inm = req
        .headers()
        .get(http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut s = state.lock().unwrap();
    s.seen.push(inm.clone());
    let current = s.bundle.clone();
    let resp = match (&current, req.uri().path()) {
        (Some((etag, _)), "/bundles/authz.tar.gz") if inm.as_deref() == Some(etag.as_str()) => {
            s.not_modified += 1;
            Response::builder()
                .status(StatusCode::NOT_MODIFIED)
                .header("etag", etag.as_str())
                .body(Full::new(Bytes::new()))
        }
        (Some((etag, body)), "/bundles/authz.tar.gz") => Response::builder()
            .header("etag", etag.as_str())
            .header("content-type", "application/gzip")
            .body(Full::new(Bytes::from(body.clone()))),
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::new())),
    };
    Ok(resp.unwrap())
}

/// Serves `state` on 127.0.0.1, over TLS when `tls` is given.
async fn bundle_server(state: Shared, tls: Option<Arc<rustls::ServerConfig>>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = l.accept().await else {
                continue;
            };
            let state = state.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |r| handle(state.clone(), r));
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(cfg) => {
                        if let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(stream).await {
                            let _ = http.serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            });
        }
    });
    addr
}

fn tar_gz(files: &[(&str, &str)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    for (path, text) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // Raw names: OPA writes absolute ones (`/data.json`), which tar::Builder refuses.
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, text.as_bytes()).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// Revision `n` allows `/v<n>` for callers listed in the bundle's data.
fn bundle(n: u32, manifest_revision: bool) -> Vec<u8> {
    let policy = format!(
        "package envoy.authz\nimport rego.v1\ndefault allow := false\nallow if {{\n  input.parsed_path[0] == \"v{n}\"\n  input.attributes.source.principal in data.envoy.callers\n}}\n"
    );
    let data = format!("{{\"callers\": [\"{FRONTEND}\"], \"n\": {n}}}");
    let manifest = if manifest_revision {
        format!("{{\"revision\": \"v{n}\", \"roots\": [\"envoy\"]}}")
    } else {
        "{\"roots\": [\"envoy\"]}".to_string()
    };
    tar_gz(&[
        ("/.manifest", &manifest),
        ("/envoy/authz.rego", &policy),
        ("/envoy/data.json", &data),
    ])
}

async fn wait_for<F: FnMut() -> bool>(what: &str, mut f: F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn reload_errors(admin: SocketAddr) -> f64 {
    metric(
        &admin_get(admin, "/metrics").await.1,
        "portcullis_policy_reloads_total",
        &[("result", "error")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_polling_activates_rejects_and_handles_304() {
    let _serial = common::METRICS_SERIAL.lock().await;
    let state: Shared = Arc::default();
    let server = bundle_server(state.clone(), None).await;

    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    // The directory would allow everything: the bundle replaces it.
    let dir = policy_dir(
        &pki,
        &[(
            "authz.rego",
            "package envoy.authz\nimport rego.v1\nallow := true\n",
        )],
    );
    let app = echo_app().await;
    let mut cfg = config(&pki, &dir, app);
    cfg.policy.bundle = Some(BundleConfig {
        url: format!("http://{server}/bundles/authz.tar.gz"),
        poll: Duration::from_millis(50),
        ca: None,
    });
    let sidecar = start(cfg).await;
    let store = sidecar.policy.clone();
    let c = pki.client("frontend", &[b"http/1.1"]);
    let addr = sidecar.inbound_addr;

    // No bundle yet (404): not ready, requests refused with 503, failures counted.
    let errors = reload_errors(sidecar.admin_addr).await;
    wait_for("a failed poll", || state.lock().unwrap().seen.len() >= 2).await;
    assert_eq!(admin_get(sidecar.admin_addr, "/ready").await.0, 503);
    assert_eq!(
        call(&c, addr, req("GET", "/v1", &[], "")).await.0.status(),
        503
    );
    assert!(reload_errors(sidecar.admin_addr).await > errors);

    // Revision v1 published: activated, the manifest revision shown.
    state.lock().unwrap().bundle = Some(("\"e1\"".into(), bundle(1, true)));
    wait_for("v1", || store.revision() == "v1").await;
    assert_eq!(admin_get(sidecar.admin_addr, "/ready").await.0, 200);
    assert_eq!(
        call(&c, addr, req("GET", "/v1", &[], "")).await.0.status(),
        200
    );
    assert_eq!(
        call(&c, addr, req("GET", "/v2", &[], "")).await.0.status(),
        403
    );
    let text = admin_get(sidecar.admin_addr, "/metrics").await.1;
    assert_eq!(
        metric(
            &text,
            "portcullis_policy_revision_info",
            &[("revision", "v1")]
        ),
        1.0
    );

    // Unchanged: the poller sends If-None-Match and gets 304s; nothing reloads.
    let from = state.lock().unwrap().seen.len();
    let not_modified = state.lock().unwrap().not_modified;
    wait_for("two 304s", || {
        state.lock().unwrap().not_modified >= not_modified + 2
    })
    .await;
    let seen = state.lock().unwrap().seen[from..].to_vec();
    assert!(
        seen.iter().all(|s| s.as_deref() == Some("\"e1\"")),
        "{seen:?}"
    );
    assert_eq!(store.revision(), "v1");

    // v2: activated atomically, the old revision label gone.
    state.lock().unwrap().bundle = Some(("\"e2\"".into(), bundle(2, true)));
    wait_for("v2", || store.revision() == "v2").await;
    assert_eq!(
        call(&c, addr, req("GET", "/v2", &[], "")).await.0.status(),
        200
    );
    assert_eq!(
        call(&c, addr, req("GET", "/v1", &[], "")).await.0.status(),
        403
    );
    let text = admin_get(sidecar.admin_addr, "/metrics").await.1;
    assert_eq!(
        metric(
            &text,
            "portcullis_policy_revision_info",
            &[("revision", "v1")]
        ),
        0.0
    );

    // Corrupt bundles: not gzip, a Rego syntax error, path traversal, outside
    // the roots. Each is rejected and counted; v2 keeps serving.
    let broken_policy = tar_gz(&[
        ("/.manifest", "{\"revision\": \"v3\"}"),
        ("/envoy/authz.rego", "package envoy.authz\nallow if {\n"),
    ]);
    let traversal = {
        // Rewrite an entry name to `../` after building (tar::Builder refuses it).
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut b = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        let text = b"package envoy.authz\nallow := true\n";
        h.set_size(text.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        h.as_old_mut().name[..18].copy_from_slice(b"../envoy/evil.rego");
        h.set_cksum();
        b.append(&h, &text[..]).unwrap();
        b.into_inner().unwrap().finish().unwrap()
    };
    let outside_roots = tar_gz(&[
        (
            "/.manifest",
            "{\"revision\": \"v5\", \"roots\": [\"other\"]}",
        ),
        ("/envoy/authz.rego", "package envoy.authz\nallow := true\n"),
    ]);
    for (i, body) in [
        b"this is not a gzip file".to_vec(),
        broken_policy,
        traversal,
        outside_roots,
    ]
    .into_iter()
    .enumerate()
    {
        let before = reload_errors(sidecar.admin_addr).await;
        let seen = state.lock().unwrap().seen.len();
        state.lock().unwrap().bundle = Some((format!("\"bad{i}\""), body));
        wait_for("the bad bundle fetched", || {
            state.lock().unwrap().seen.len() >= seen + 2
        })
        .await;
        let admin = sidecar.admin_addr;
        let deadline = Instant::now() + Duration::from_secs(10);
        while reload_errors(admin).await <= before {
            assert!(Instant::now() < deadline, "bad bundle {i} not counted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(store.revision(), "v2", "bad bundle {i} activated");
        assert_eq!(
            call(&c, addr, req("GET", "/v2", &[], "")).await.0.status(),
            200
        );
        // A rejected bundle's ETag is not remembered: it is fetched again, not 304.
        assert!(!state
            .lock()
            .unwrap()
            .seen
            .iter()
            .any(|s| s.as_deref() == Some(format!("\"bad{i}\"").as_str())));
    }

    // Without a manifest revision, the revision is the content hash.
    state.lock().unwrap().bundle = Some(("\"e6\"".into(), bundle(6, false)));
    wait_for("v6", || store.revision().len() == 64).await;
    assert!(store.revision().chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(
        call(&c, addr, req("GET", "/v6", &[], "")).await.0.status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_bundle_server_and_forced_reload() {
    let _serial = common::METRICS_SERIAL.lock().await;
    // A CA and a server certificate for `localhost`, trusted via `policy.bundle.ca`.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let server_tls =
        rustls::ServerConfig::builder_with_provider(portcullis::identity::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();

    let state: Shared = Arc::default();
    state.lock().unwrap().bundle = Some(("\"e1\"".into(), bundle(1, true)));
    let server = bundle_server(state.clone(), Some(Arc::new(server_tls))).await;

    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    std::fs::write(pki.path("bundle-ca.pem"), ca_cert.pem()).unwrap();
    let dir = policy_dir(&pki, &[]);
    let app = echo_app().await;
    let mut cfg = config(&pki, &dir, app);
    cfg.policy.bundle = Some(BundleConfig {
        url: format!("https://localhost:{}/bundles/authz.tar.gz", server.port()),
        // Only a forced reload (SIGHUP) polls again within the test.
        poll: Duration::from_secs(3600),
        ca: Some(pki.path("bundle-ca.pem")),
    });
    let sidecar = start(cfg).await;
    let store = sidecar.policy.clone();
    wait_for("v1 over HTTPS", || store.revision() == "v1").await;

    state.lock().unwrap().bundle = Some(("\"e2\"".into(), bundle(2, true)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(store.revision(), "v1");
    store.reload().unwrap();
    wait_for("v2 after a forced reload", || store.revision() == "v2").await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    assert_eq!(
        call(&c, sidecar.inbound_addr, req("GET", "/v2", &[], ""))
            .await
            .0
            .status(),
        200
    );
}

#[tokio::test]
async fn untrusted_https_server_is_rejected() {
    let _serial = common::METRICS_SERIAL.lock().await;
    // A self-signed server certificate the client does not trust.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let server_tls =
        rustls::ServerConfig::builder_with_provider(portcullis::identity::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
    let state: Shared = Arc::default();
    state.lock().unwrap().bundle = Some(("\"e1\"".into(), bundle(1, true)));
    let server = bundle_server(state.clone(), Some(Arc::new(server_tls))).await;
    let pki = Pki::new();
    // Trust some other CA only.
    std::fs::write(pki.path("other-ca.pem"), pki.ca.ca_cert_pem()).unwrap();
    let client = portcullis::policy::bundle::BundleClient::new(
        &format!("https://localhost:{}/bundles/authz.tar.gz", server.port()),
        Some(&pki.path("other-ca.pem")),
        Default::default(),
        Duration::from_secs(5),
    )
    .unwrap();
    let err = client.fetch(None).await.unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
    assert!(state.lock().unwrap().seen.is_empty());
}
