//! The admin listener (`:15000`): `/metrics`, `/live`, `/ready` for the pod network;
//! state-changing endpoints (`/shutdown`, `/logging`) and the live decision stream
//! (`/tap`, see [`crate::proxy::tap`]) answer only on loopback.
//! `GET /app-health/<container>/<livez|readyz|startupz>` runs the app's original
//! kubelet probe (rewritten by `portcullis inject`, see [`crate::k8s::probe`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::identity::tls::Identity;
use crate::k8s::inject::APP_HEALTH_PREFIX;
use crate::k8s::probe::AppProbes;
use crate::logging::LevelSetter;
use crate::metrics;
use crate::policy::store::PolicyStore;
use crate::proxy::forward::{text_response, ProxyBody};
use crate::proxy::listener::{accept_loop, ConnLimit, Drain, HttpServer};

/// What the admin endpoints look at and act on.
pub struct Admin {
    pub identity: Arc<Identity>,
    pub policy: Arc<PolicyStore>,
    /// Notified by `POST /shutdown`.
    pub shutdown: Arc<Notify>,
    /// Changes the log filter (`POST /logging?level=debug`).
    pub set_log_level: LevelSetter,
    /// SPIFFE IDs that may call `/tap` over mTLS (`admin.tap.allowed_principals`);
    /// when empty the admin port speaks plaintext only.
    pub tap_allowed: Vec<String>,
}

impl Admin {
    /// Ready once a valid SVID and a policy revision are loaded and not draining.
    pub fn ready(&self, drain: &Drain) -> Result<(), &'static str> {
        if drain.is_draining() {
            return Err("draining");
        }
        if self.identity.current().is_none() {
            return Err("no valid identity (SVID) loaded");
        }
        if self.policy.current().is_none() {
            return Err("no policy loaded");
        }
        Ok(())
    }

    fn handle(
        &self,
        peer: SocketAddr,
        tls_peer: Option<&str>,
        req: &Request<Incoming>,
        drain: &Drain,
    ) -> Response<ProxyBody> {
        let local_only = peer.ip().is_loopback();
        let tap_allowed =
            local_only || tls_peer.is_some_and(|id| self.tap_allowed.iter().any(|a| a == id));
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => {
                let mut r = text_response(StatusCode::OK, metrics::global().render());
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            (&Method::GET, "/live") => text_response(StatusCode::OK, "live\n"),
            (&Method::GET, "/ready") => match self.ready(drain) {
                Ok(()) => text_response(StatusCode::OK, "ready\n"),
                Err(why) => text_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                ),
            },
            (_, "/shutdown") | (_, "/logging") if !local_only => {
                text_response(StatusCode::FORBIDDEN, "only from localhost\n")
            }
            (_, "/tap") if !tap_allowed => {
                text_response(StatusCode::FORBIDDEN, "only from localhost\n")
            }
            (&Method::POST, "/shutdown") => {
                tracing::info!("shutdown requested through the admin endpoint");
                self.shutdown.notify_one();
                text_response(StatusCode::OK, "shutting down\n")
            }
            (&Method::POST, "/logging") => {
                let level = req
                    .uri()
                    .query()
                    .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("level=")));
                match level.map(|l| (self.set_log_level)(l)) {
                    Some(Ok(())) => text_response(StatusCode::OK, "log level changed\n"),
                    Some(Err(e)) => text_response(StatusCode::BAD_REQUEST, format!("{e}\n")),
                    None => text_response(StatusCode::BAD_REQUEST, "missing ?level=\n"),
                }
            }
            (&Method::GET, "/tap") => crate::proxy::tap::response(req.uri().query()),
            (_, "/metrics" | "/live" | "/ready" | "/shutdown" | "/logging" | "/tap") => {
                text_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text_response(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// Serves one connection's requests (`tls_peer`: the client's SPIFFE ID over mTLS).
    async fn serve_http<I>(
        self: Arc<Self>,
        io: I,
        peer: SocketAddr,
        tls_peer: Option<Arc<str>>,
        server: HttpServer,
        drain: Drain,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        server
            .serve(io, move |req| {
                // Rewritten kubelet probes of the app.
                let probe = (req.method() == Method::GET
                    && req.uri().path().starts_with(APP_HEALTH_PREFIX))
                .then(|| req.uri().path().to_owned());
                let resp = probe
                    .is_none()
                    .then(|| self.handle(peer, tls_peer.as_deref(), &req, &drain));
                async move {
                    let resp = match (resp, probe) {
                        (Some(r), _) => r,
                        (None, Some(path)) => {
                            let (status, body) = AppProbes::global().handle(&path).await;
                            text_response(status, body)
                        }
                        (None, None) => text_response(StatusCode::NOT_FOUND, "not found\n"),
                    };
                    Ok::<_, Infallible>(resp)
                }
            })
            .await;
    }

    /// The mTLS handshake with the current SVID; the client's SPIFFE ID on success.
    async fn accept_mtls(
        &self,
        stream: tokio::net::TcpStream,
        server: &HttpServer,
    ) -> Option<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        String,
    )> {
        let loaded = self.identity.current()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(loaded.tls.server.clone());
        drop(loaded);
        let tls = tokio::time::timeout(server.header_timeout, acceptor.accept(stream))
            .await
            .ok()?
            .ok()?;
        let leaf = tls.get_ref().1.peer_certificates()?.first()?.clone();
        let id = crate::identity::x509::leaf_info(&leaf).ok()?.id.to_string();
        Some((tls, id))
    }

    /// Serves the admin endpoints until `admin_drain` fires; `/ready` reports the
    /// data path's drain (`data_drain`), which starts earlier.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        server: HttpServer,
        admin_drain: Drain,
        data_drain: Drain,
    ) {
        let limit = ConnLimit::new(256);
        let drain = data_drain;
        accept_loop(
            listener,
            crate::direction::Direction::Admin,
            limit,
            admin_drain,
            move |stream, peer, guard| {
                let this = self.clone();
                let server = server.clone();
                let drain = drain.clone();
                async move {
                    let _guard = guard;
                    // With tap principals configured, a TLS client is served over mTLS.
                    if !this.tap_allowed.is_empty()
                        && first_byte(&stream, &server).await == Some(0x16)
                    {
                        let Some((tls, id)) = this.accept_mtls(stream, &server).await else {
                            return;
                        };
                        let id: Arc<str> = id.into();
                        this.serve_http(tls, peer, Some(id), server, drain).await;
                    } else {
                        this.serve_http(stream, peer, None, server, drain).await;
                    }
                }
            },
        )
        .await;
    }
}

/// The first byte the client sent, without consuming it (`None`: closed or silent).
async fn first_byte(stream: &tokio::net::TcpStream, server: &HttpServer) -> Option<u8> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(server.header_timeout, stream.peek(&mut first)).await {
        Ok(Ok(1)) => Some(first[0]),
        _ => None,
    }
}
