//! Forwarding an allowed request to an upstream over pooled connections, and
//! carrying protocol upgrades (WebSocket and others) through.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::headers;
use crate::direction::Direction;
// The body type and local replies live in `reply`; re-exported for the modules
// outside the data path that answer locally (admin, tap).
pub use super::reply::{full, text_response, BoxError, ProxyBody};
use crate::metrics;

/// Boxes a downstream body and reports whether reading it failed (a malformed chunked
/// encoding, a reset stream): such a failure is the client's fault, answered 400.
pub fn downstream_body(
    body: hyper::body::Incoming,
) -> (ProxyBody, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = failed.clone();
    let body = body
        .map_err(move |e| {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
            BoxError::from(e)
        })
        .boxed_unsync();
    (body, failed)
}

/// `addr` as a URI authority (`host:port`), for [`AppClients::send`].
pub fn authority(addr: SocketAddr) -> Option<Authority> {
    Authority::try_from(addr.to_string()).ok()
}

/// Pooled plaintext clients to a local app: HTTP/1.1 and HTTP/2 prior knowledge.
#[derive(Clone)]
pub struct AppClients {
    http1: Client<HttpConnector, ProxyBody>,
    http2: Client<HttpConnector, ProxyBody>,
    response_timeout: Duration,
}

impl AppClients {
    pub fn new(connect_timeout: Duration, response_timeout: Duration, idle: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.enforce_http(true);
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(true)
            .build(connector);
        AppClients {
            http1,
            http2,
            response_timeout,
        }
    }

    /// Sends `req` to `upstream` (its [`authority`]) and returns the response head with a
    /// streaming body. Failures become 502 (cannot connect / broken) or 504 (timeout).
    pub async fn send(
        &self,
        direction: Direction,
        upstream: Option<&Authority>,
        http2: bool,
        mut req: Request<ProxyBody>,
    ) -> Response<ProxyBody> {
        let upgrade = headers::is_upgrade(req.headers());
        // The target is rebuilt from parts: the path and query are shared, not copied
        // and parsed again.
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        // Keep the client's authority for the app: HTTP/2 carries it in :authority only.
        if !req.headers().contains_key(http::header::HOST) {
            if let Some(a) = req.uri().authority() {
                if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                    req.headers_mut().insert(http::header::HOST, v);
                }
            }
        }
        let built = upstream.map(|authority| {
            Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(authority.clone())
                .path_and_query(pq)
                .build()
        });
        let uri = match built {
            Some(Ok(u)) => u,
            _ => return text_response(StatusCode::BAD_REQUEST, "bad request target\n"),
        };
        *req.uri_mut() = uri;
        headers::remove_hop_by_hop(req.headers_mut(), upgrade);
        *req.version_mut() = if http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let client = if http2 { &self.http2 } else { &self.http1 };
        let downstream_upgrade = if upgrade {
            Some(hyper::upgrade::on(&mut req))
        } else {
            None
        };
        let mut resp = match tokio::time::timeout(self.response_timeout, client.request(req)).await
        {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                let kind = if e.is_connect() {
                    "connect"
                } else {
                    "protocol"
                };
                metrics::global()
                    .upstream_errors
                    .with_label_values(&[direction.as_str(), kind])
                    .inc();
                tracing::warn!(direction = direction.as_str(), upstream = upstream.map(Authority::as_str), error = %e, "upstream request failed");
                return text_response(StatusCode::BAD_GATEWAY, "upstream unavailable\n");
            }
            Err(_) => {
                metrics::global()
                    .upstream_errors
                    .with_label_values(&[direction.as_str(), "timeout"])
                    .inc();
                return text_response(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n");
            }
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(down) = downstream_upgrade {
                let up = hyper::upgrade::on(&mut resp);
                tokio::spawn(splice_upgrade(down, up));
                let (mut parts, _) = resp.into_parts();
                headers::remove_hop_by_hop(&mut parts.headers, true);
                return Response::from_parts(parts, full(Bytes::new()));
            }
        }
        let (mut parts, body) = resp.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers, false);
        Response::from_parts(parts, body.map_err(BoxError::from).boxed_unsync())
    }
}

/// Copies bytes both ways between an upgraded client connection and the upgraded
/// upstream connection until either side closes.
async fn splice_upgrade(down: hyper::upgrade::OnUpgrade, up: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(down, up) {
        Ok((down, up)) => {
            let mut down = TokioIo::new(down);
            let mut up = TokioIo::new(up);
            if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                tracing::debug!(error = %e, "upgraded connection ended");
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
}
