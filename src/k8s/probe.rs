//! The admin-side runner of the app's rewritten kubelet probes (Istio's pattern).
//!
//! `portcullis inject` rewrites the app's HTTP, TCP and gRPC probes to
//! `GET /app-health/<container>/<livez|readyz|startupz>` on the admin port, which
//! the iptables rules leave uncaptured, and passes the originals to the sidecar in
//! `PORTCULLIS_APP_PROBES` (JSON, keyed `<container>/<kind>`). Under strict mTLS
//! the kubelet's plain-text probes could not reach the app any more; the sidecar,
//! whose own traffic is not captured, runs them against the app on localhost:
//!
//! - HTTP(S): `GET` with the original path, port, host header and headers; a
//!   status in 200..400 passes (the kubelet's rule). HTTPS certificates are not
//!   verified, as the kubelet does not verify them.
//! - TCP: a connect.
//! - gRPC: `grpc.health.v1.Health/Check` over h2c with the original `service`;
//!   `SERVING` passes.
//!
//! A passing probe answers 200, a failing one 503 with the reason.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use tokio::net::TcpStream;

use super::inject::{APP_HEALTH_PREFIX, PROBES_ENV};

/// An HTTP header of an `httpGet` probe.
#[derive(Debug, Clone, Deserialize)]
pub struct ProbeHeader {
    /// Header name.
    pub name: String,
    /// Header value.
    pub value: String,
}

/// The original `httpGet` action (named ports already resolved by inject).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpGet {
    /// Request path (default `/`).
    #[serde(default)]
    pub path: Option<String>,
    /// Port number.
    pub port: u16,
    /// Host to connect to (default the pod, i.e. localhost here).
    #[serde(default)]
    pub host: Option<String>,
    /// `HTTP` (default) or `HTTPS`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// Extra headers.
    #[serde(default)]
    pub http_headers: Vec<ProbeHeader>,
}

/// The original `tcpSocket` action.
#[derive(Debug, Clone, Deserialize)]
pub struct TcpSocket {
    /// Port number.
    pub port: u16,
    /// Host to connect to (default localhost).
    #[serde(default)]
    pub host: Option<String>,
}

/// The original `grpc` action.
#[derive(Debug, Clone, Deserialize)]
pub struct Grpc {
    /// Port number.
    pub port: u16,
    /// The service name sent in the health check request (default empty).
    #[serde(default)]
    pub service: Option<String>,
}

/// One original probe, as `inject` writes it into `PORTCULLIS_APP_PROBES`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppProbe {
    /// HTTP action.
    #[serde(default)]
    pub http_get: Option<HttpGet>,
    /// TCP action.
    #[serde(default)]
    pub tcp_socket: Option<TcpSocket>,
    /// gRPC action.
    #[serde(default)]
    pub grpc: Option<Grpc>,
    /// Probe timeout in seconds (default 1).
    #[serde(default = "one")]
    pub timeout_seconds: u64,
}

fn one() -> u64 {
    1
}

/// Why `PORTCULLIS_APP_PROBES` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProbeConfigError {
    /// The JSON does not have the expected shape.
    #[error("{PROBES_ENV}: {0}")]
    Json(#[from] serde_json::Error),
}

/// The app's probes by `<container>/<kind>`.
#[derive(Debug, Clone, Default)]
pub struct AppProbes {
    probes: BTreeMap<String, AppProbe>,
}

impl AppProbes {
    /// Parses the JSON `inject` writes.
    pub fn from_json(text: &str) -> Result<AppProbes, ProbeConfigError> {
        Ok(AppProbes {
            probes: serde_json::from_str(text)?,
        })
    }

    /// The probes of this process: `PORTCULLIS_APP_PROBES`, read once. A malformed
    /// value is logged and treated as empty (every `/app-health` answers 404).
    pub fn global() -> &'static AppProbes {
        static PROBES: OnceLock<AppProbes> = OnceLock::new();
        PROBES.get_or_init(|| match std::env::var(PROBES_ENV) {
            Ok(text) if !text.trim().is_empty() => match AppProbes::from_json(&text) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "app probes ignored");
                    AppProbes::default()
                }
            },
            _ => AppProbes::default(),
        })
    }

    /// Runs the probe named by an admin path `/app-health/<container>/<kind>`;
    /// returns the status and body to answer with.
    pub async fn handle(&self, path: &str) -> (StatusCode, String) {
        let Some(key) = path.strip_prefix(APP_HEALTH_PREFIX) else {
            return (StatusCode::NOT_FOUND, "not found\n".into());
        };
        let Some(probe) = self.probes.get(key) else {
            return (StatusCode::NOT_FOUND, format!("no probe {key}\n"));
        };
        let timeout = Duration::from_secs(probe.timeout_seconds.max(1));
        match tokio::time::timeout(timeout, run(probe)).await {
            Ok(Ok(())) => (StatusCode::OK, "ok\n".into()),
            Ok(Err(why)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{key}: {why}\n")),
            Err(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{key}: timed out after {}s\n", timeout.as_secs()),
            ),
        }
    }
}

fn target(host: &Option<String>, port: u16) -> String {
    let host = host
        .as_deref()
        .filter(|h| !h.is_empty())
        .unwrap_or("127.0.0.1");
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

async fn connect(addr: &str) -> Result<TcpStream, String> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

async fn run(probe: &AppProbe) -> Result<(), String> {
    if let Some(h) = &probe.http_get {
        return http_probe(h).await;
    }
    if let Some(t) = &probe.tcp_socket {
        return connect(&target(&t.host, t.port)).await.map(drop);
    }
    if let Some(g) = &probe.grpc {
        return grpc_probe(g).await;
    }
    Err("probe has no httpGet, tcpSocket or grpc action".into())
}

async fn http_probe(h: &HttpGet) -> Result<(), String> {
    let addr = target(&h.host, h.port);
    let path = h.path.as_deref().filter(|p| !p.is_empty()).unwrap_or("/");
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let mut req = Request::get(path.as_str())
        .header(http::header::USER_AGENT, "kube-probe/portcullis")
        .header(http::header::ACCEPT, "*/*");
    let mut host_set = false;
    for hd in &h.http_headers {
        host_set |= hd.name.eq_ignore_ascii_case("host");
        req = req.header(hd.name.as_str(), hd.value.as_str());
    }
    if !host_set {
        req = req.header(http::header::HOST, addr.as_str());
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad probe request: {e}"))?;
    let tcp = connect(&addr).await?;
    let https = h
        .scheme
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("https"));
    let status = if https {
        let cfg = insecure::client_config()?;
        let name = rustls_pki_types::ServerName::try_from(
            h.host.clone().unwrap_or_else(|| "localhost".into()),
        )
        .map_err(|e| format!("host: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        send_h1(tls, req).await?
    } else {
        send_h1(tcp, req).await?
    };
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP status {status}"))
    }
}

async fn send_h1<I>(io: I, req: Request<Empty<Bytes>>) -> Result<u16, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let conn = tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let status = resp.status().as_u16();
    // The body is not needed; drop the connection.
    conn.abort();
    Ok(status)
}

/// `grpc.health.v1.HealthCheckRequest{service}` in a gRPC frame.
fn health_request(service: &str) -> Bytes {
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a); // field 1, length-delimited
        let mut n = service.len();
        while n >= 0x80 {
            msg.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        msg.push(n as u8);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    Bytes::from(frame)
}

/// The `status` of a `HealthCheckResponse` message (1 = SERVING).
fn health_status(mut msg: &[u8]) -> Option<u64> {
    let mut status = 0; // absent field = UNKNOWN
    while msg.has_remaining() {
        let tag = read_varint(&mut msg)?;
        match (tag >> 3, tag & 7) {
            (1, 0) => status = read_varint(&mut msg)?,
            (_, 0) => {
                read_varint(&mut msg)?;
            }
            (_, 2) => {
                let len = usize::try_from(read_varint(&mut msg)?).ok()?;
                if msg.len() < len {
                    return None;
                }
                msg.advance(len);
            }
            (_, 5) if msg.len() >= 4 => msg.advance(4),
            (_, 1) if msg.len() >= 8 => msg.advance(8),
            _ => return None,
        }
    }
    Some(status)
}

fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.first()?;
        buf.advance(1);
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

async fn grpc_probe(g: &Grpc) -> Result<(), String> {
    let addr = target(&None, g.port);
    let tcp = connect(&addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(|e| format!("HTTP/2: {e}"))?;
    let conn = tokio::spawn(conn);
    let req = Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .header(http::header::USER_AGENT, "kube-probe/portcullis")
        .body(Full::new(health_request(
            g.service.as_deref().unwrap_or(""),
        )))
        .map_err(|e| format!("bad probe request: {e}"))?;
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("gRPC: {e}"))?;
        let header_status = resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let collected = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("gRPC: {e}"))?;
        let grpc_status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or(header_status);
        match grpc_status.as_deref() {
            Some("0") => {}
            Some(code) => return Err(format!("grpc-status {code}")),
            None => return Err("no grpc-status".to_owned()),
        }
        let body = collected.to_bytes();
        if body.len() < 5 || body[0] != 0 {
            return Err("malformed gRPC response".to_owned());
        }
        match health_status(&body[5..]) {
            Some(1) => Ok(()),
            Some(s) => Err(format!("health status {s} (not SERVING)")),
            None => Err("malformed HealthCheckResponse".to_owned()),
        }
    }
    .await;
    conn.abort();
    result
}

/// TLS for HTTPS probes: like the kubelet, the app's certificate is not verified.
mod insecure {
    use super::Arc;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

    #[derive(Debug)]
    struct NoVerify(Arc<CryptoProvider>);

    impl ServerCertVerifier for NoVerify {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    pub(super) fn client_config() -> Result<Arc<rustls::ClientConfig>, String> {
        let provider = crate::identity::tls::crypto_provider();
        let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth();
        Ok(Arc::new(cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_messages() {
        assert_eq!(&health_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(&health_request("a")[..], &[0, 0, 0, 0, 3, 0x0a, 1, b'a']);
        assert_eq!(health_status(&[0x08, 0x01]), Some(1));
        assert_eq!(health_status(&[]), Some(0));
        assert_eq!(health_status(&[0x08, 0x02]), Some(2));
        assert_eq!(health_status(&[0x08]), None);
    }

    #[tokio::test]
    async fn runs_probes_against_local_servers() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        |r: Request<hyper::body::Incoming>| async move {
                            let code = if r.uri().path() == "/ok"
                                && r.headers().get("x-probe").is_some()
                            {
                                200
                            } else {
                                500
                            };
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(code)
                                    .body(Empty::<Bytes>::new())
                                    .unwrap(),
                            )
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        let json = format!(
            r#"{{"app/livez": {{"httpGet": {{"path": "/ok", "port": {port}, "httpHeaders": [{{"name": "x-probe", "value": "1"}}]}}, "timeoutSeconds": 1}},
                "app/readyz": {{"httpGet": {{"path": "/bad", "port": {port}}}}},
                "app/startupz": {{"tcpSocket": {{"port": {port}}}}},
                "db/livez": {{"tcpSocket": {{"port": 1}}}}}}"#
        );
        let probes = AppProbes::from_json(&json).unwrap();
        assert_eq!(
            probes.handle("/app-health/app/livez").await.0,
            StatusCode::OK
        );
        let (s, body) = probes.handle("/app-health/app/readyz").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("500"), "{body}");
        assert_eq!(
            probes.handle("/app-health/app/startupz").await.0,
            StatusCode::OK
        );
        assert_eq!(
            probes.handle("/app-health/db/livez").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            probes.handle("/app-health/none/livez").await.0,
            StatusCode::NOT_FOUND
        );
    }

    /// A gRPC health server (HTTP/2 without TLS, as kubelet's gRPC probe speaks it):
    /// `SERVING` for the service "up", `NOT_SERVING` for "down", `NOT_FOUND` status
    /// (grpc-status 5) for anything else.
    async fn grpc_health_server() -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        |req: Request<hyper::body::Incoming>| async move {
                            let path = req.uri().path().to_owned();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            // HealthCheckRequest { service = 1 } after the 5-byte prefix.
                            let service = body
                                .get(7..)
                                .map(|b| String::from_utf8_lossy(b).into_owned())
                                .unwrap_or_default();
                            let (grpc_status, serving) = match (path.as_str(), service.as_str()) {
                                ("/grpc.health.v1.Health/Check", "up") => ("0", 1u8),
                                ("/grpc.health.v1.Health/Check", "down") => ("0", 2u8),
                                _ => ("5", 0u8),
                            };
                            let mut frame = vec![0u8, 0, 0, 0, 2, 0x08, serving];
                            if grpc_status != "0" {
                                frame.clear();
                            }
                            let mut trailers = http::HeaderMap::new();
                            trailers
                                .insert("grpc-status", http::HeaderValue::from_static(grpc_status));
                            let body =
                                http_body_util::StreamBody::new(futures_util::stream::iter(vec![
                                    Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
                                        Bytes::from(frame),
                                    )),
                                    Ok(hyper::body::Frame::trailers(trailers)),
                                ]));
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(body)
                                    .unwrap(),
                            )
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn grpc_probes_ask_a_real_health_service() {
        let port = grpc_health_server().await;
        let json = format!(
            r#"{{"app/livez": {{"grpc": {{"port": {port}, "service": "up"}}}},
                "app/readyz": {{"grpc": {{"port": {port}, "service": "down"}}}},
                "app/startupz": {{"grpc": {{"port": {port}, "service": "unknown"}}}},
                "db/livez": {{"grpc": {{"port": 1}}}}}}"#
        );
        let probes = AppProbes::from_json(&json).unwrap();
        assert_eq!(
            probes.handle("/app-health/app/livez").await.0,
            StatusCode::OK
        );
        let (s, body) = probes.handle("/app-health/app/readyz").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("not SERVING"), "{body}");
        let (s, body) = probes.handle("/app-health/app/startupz").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("grpc-status 5"), "{body}");
        assert_eq!(
            probes.handle("/app-health/db/livez").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
