//! `portcullis webhook`: the mutating admission webhook.
//!
//! Serves `POST /mutate` over TLS (rustls with the aws-lc-rs provider, passed
//! explicitly) and `GET /healthz`. Each request is an `admission.k8s.io/v1`
//! `AdmissionReview`; for a Pod `CREATE` the answer carries a base64 JSON patch
//! (`patchType: JSONPatch`) computed as the difference between the pod and the pod
//! after [`inject_pod_template`], the very function `portcullis inject` uses.
//!
//! Which pods are sent here is the MutatingWebhookConfiguration's business
//! (namespaces labelled `portcullis.io/inject=enabled`, or pods labelled so); the
//! webhook itself skips pods that opted out (`portcullis.io/inject: "false"`) or
//! already carry the sidecar. A body that is not an AdmissionReview is answered
//! 400 with the reason; a Pod that cannot be injected (malformed annotation) is
//! denied with the reason. The serving certificate is re-read when it changes
//! (cert-manager rotation).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::inject::{inject_pod_template, InjectOptions, Outcome};
use crate::identity::tls::crypto_provider;

/// Largest AdmissionReview accepted (the API server sends at most ~3 MiB).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";

/// Why the webhook could not start or a request could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A TLS file could not be read or used.
    #[error("{path}: {message}")]
    Tls {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The request is not a usable AdmissionReview (answered 400).
    #[error("{0}")]
    BadReview(String),
}

/// Answers one AdmissionReview body with the response AdmissionReview.
/// `Err` means the body is not an AdmissionReview at all (HTTP 400).
pub fn review(body: &[u8], opts: &InjectOptions) -> Result<Value, WebhookError> {
    let bad = |m: String| WebhookError::BadReview(m);
    let review: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("body is not JSON: {e}")))?;
    let api_version = review.get("apiVersion").and_then(Value::as_str);
    let kind = review.get("kind").and_then(Value::as_str);
    if api_version != Some(REVIEW_API_VERSION) || kind != Some("AdmissionReview") {
        return Err(bad(format!(
            "expected apiVersion {REVIEW_API_VERSION} kind AdmissionReview, got {} {}",
            api_version.unwrap_or("(none)"),
            kind.unwrap_or("(none)")
        )));
    }
    let request = review
        .get("request")
        .filter(|r| r.is_object())
        .ok_or_else(|| bad("AdmissionReview has no request".into()))?;
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| bad("request.uid is missing".into()))?;

    let answer = |response: Value| {
        let mut response = response;
        response["uid"] = json!(uid);
        json!({"apiVersion": REVIEW_API_VERSION, "kind": "AdmissionReview", "response": response})
    };
    let allow = || answer(json!({"allowed": true}));
    let deny = |code: u16, message: String| {
        tracing::warn!(uid, %message, "pod denied");
        answer(json!({"allowed": false, "status": {"code": code, "message": message}}))
    };

    let is_pod = request
        .get("kind")
        .and_then(|k| k.get("kind"))
        .and_then(Value::as_str)
        == Some("Pod");
    let operation = request.get("operation").and_then(Value::as_str);
    let sub_resource = request
        .get("subResource")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !is_pod || operation != Some("CREATE") || !sub_resource.is_empty() {
        return Ok(allow());
    }
    let Some(before) = request.get("object").filter(|o| o.is_object()) else {
        return Ok(deny(400, "request.object is missing".into()));
    };
    if let Err(e) = serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(before.clone()) {
        return Ok(deny(400, format!("request.object is not a valid Pod: {e}")));
    }
    let namespace = request
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    let name = before
        .pointer("/metadata/name")
        .or_else(|| before.pointer("/metadata/generateName"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let object = format!("Pod/{namespace}/{name}");
    let mut after = before.clone();
    match inject_pod_template(&mut after, opts, &object) {
        Ok(Outcome::Skipped(why)) => {
            tracing::info!(uid, %object, reason = %why, "not injected");
            Ok(allow())
        }
        Ok(Outcome::Injected) => {
            let patch = json_patch::diff(before, &after);
            let patch = serde_json::to_vec(&patch)
                .map_err(|e| bad(format!("cannot encode the patch: {e}")))?;
            tracing::info!(uid, %object, "injected");
            Ok(answer(json!({
                "allowed": true,
                "patchType": "JSONPatch",
                "patch": base64::engine::general_purpose::STANDARD.encode(patch),
            })))
        }
        Err(e) => Ok(deny(400, format!("portcullis injection failed: {e}"))),
    }
}

/// Loads a certificate chain and key as a rustls [`CertifiedKey`].
fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, WebhookError> {
    let tls = |path: &Path, message: String| WebhookError::Tls {
        path: path.to_owned(),
        message,
    };
    let cert_pem = std::fs::read(cert).map_err(|e| tls(cert, e.to_string()))?;
    let key_pem = std::fs::read(key).map_err(|e| tls(key, e.to_string()))?;
    let chain = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(cert, format!("malformed PEM: {e}")))?;
    if chain.is_empty() {
        return Err(tls(cert, "no PEM certificate found".into()));
    }
    let private = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| tls(key, format!("malformed PEM: {e}")))?
        .ok_or_else(|| tls(key, "no PEM private key found".into()))?;
    let signer = crypto_provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| tls(key, e.to_string()))?;
    let ck = CertifiedKey::new(chain, signer);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(ck),
        Err(_) => Err(tls(
            key,
            "private key does not match the certificate".into(),
        )),
    }
}

/// The serving certificate, swapped when the files change.
#[derive(Debug)]
struct ReloadingCert {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The webhook server's settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Serving certificate chain (PEM).
    pub tls_cert: PathBuf,
    /// Serving key (PEM).
    pub tls_key: PathBuf,
    /// What the injection adds.
    pub inject: InjectOptions,
    /// How often the certificate files are checked for changes.
    pub cert_poll: Duration,
}

/// Binds `listen` and serves until the future is dropped.
pub async fn bind_and_serve(listen: SocketAddr, cfg: WebhookConfig) -> Result<(), WebhookError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| WebhookError::Bind {
            addr: listen,
            source,
        })?;
    serve(listener, cfg).await
}

/// Serves the webhook on an already bound listener until the future is dropped.
/// The certificate is loaded first: a bad one is a start-up error.
pub async fn serve(listener: TcpListener, cfg: WebhookConfig) -> Result<(), WebhookError> {
    let first = load_certified_key(&cfg.tls_cert, &cfg.tls_key)?;
    let resolver = Arc::new(ReloadingCert {
        current: ArcSwap::from_pointee(first),
    });
    tokio::spawn(watch_cert(resolver.clone(), cfg.clone()));
    let mut tls = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| WebhookError::Tls {
            path: cfg.tls_cert.clone(),
            message: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let opts = Arc::new(cfg.inject);
    tracing::info!(addr = ?listener.local_addr().ok(), "webhook listening");
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let opts = opts.clone();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let svc = hyper::service::service_fn(move |req| {
                let opts = opts.clone();
                async move { Ok::<_, Infallible>(handle(req, &opts).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn watch_cert(resolver: Arc<ReloadingCert>, cfg: WebhookConfig) {
    let read = |cfg: &WebhookConfig| {
        (
            std::fs::read(&cfg.tls_cert).ok(),
            std::fs::read(&cfg.tls_key).ok(),
        )
    };
    let mut last = read(&cfg);
    loop {
        tokio::time::sleep(cfg.cert_poll).await;
        let now = read(&cfg);
        if now == last {
            continue;
        }
        match load_certified_key(&cfg.tls_cert, &cfg.tls_key) {
            Ok(ck) => {
                resolver.current.store(Arc::new(ck));
                tracing::info!("webhook serving certificate reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "webhook certificate not reloaded; keeping the current one")
            }
        }
        last = now;
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

/// How much of an oversized body is read and dropped, and for how long, before the
/// 413 goes out: a client still sending when the connection closes with its bytes
/// unread gets a reset instead of the answer.
const DRAIN_BYTES: usize = 4 * MAX_BODY_BYTES;
const DRAIN_FOR: Duration = Duration::from_secs(5);

/// The request body, at most [`MAX_BODY_BYTES`]. Past that, the rest is drained
/// (within [`DRAIN_BYTES`] and [`DRAIN_FOR`]) and the error says why.
async fn read_body(mut body: Incoming) -> Result<Bytes, String> {
    let mut kept = bytes::BytesMut::new();
    loop {
        match body.frame().await {
            None => return Ok(kept.freeze()),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if kept.len() + data.len() > MAX_BODY_BYTES {
                    break;
                }
                kept.extend_from_slice(&data);
            }
        }
    }
    drop(kept);
    let mut drained = 0usize;
    let drain = async {
        while drained < DRAIN_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => drained += frame.data_ref().map_or(0, |d| d.len()),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_FOR, drain).await;
    Err("length limit exceeded".to_owned())
}

async fn handle(req: Request<Incoming>, opts: &InjectOptions) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::POST, "/mutate") => {
            let body = match read_body(req.into_body()).await {
                Ok(b) => b,
                Err(e) => {
                    let mut r = reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "text/plain",
                        format!("cannot read the body (at most {MAX_BODY_BYTES} bytes): {e}\n"),
                    );
                    r.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                    return r;
                }
            };
            match review(&body, opts) {
                Ok(v) => reply(StatusCode::OK, "application/json", v.to_string()),
                Err(e) => {
                    tracing::warn!(error = %e, "malformed admission review");
                    reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n"))
                }
            }
        }
        (_, "/mutate" | "/healthz") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n",
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_reviews_are_refused_with_a_reason() {
        let opts = InjectOptions::default();
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "not JSON"),
            (b"{}", "expected apiVersion"),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
                "no request",
            ),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#,
                "uid",
            ),
        ];
        for (body, needle) in cases {
            let e = review(body, &opts).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        let v = review(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"kind":"Pod"},"operation":"CREATE","object":{"spec":{"containers":"nope"}}}}"#, &opts).unwrap();
        assert_eq!(v["response"]["allowed"], false);
        assert_eq!(v["response"]["uid"], "u");
        let v = review(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"kind":"Service"},"operation":"CREATE","object":{}}}"#, &opts).unwrap();
        assert_eq!(v["response"]["allowed"], true);
        assert!(v["response"].get("patch").is_none());
    }
}
