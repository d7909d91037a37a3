//! The admin listener (`:15000`): `/metrics`, `/live`, `/ready` for the pod network;
//! state-changing endpoints (`/shutdown`, `/logging`) and the live decision stream
//! (`/tap`, see [`crate::tap`]) answer only on loopback.
//! `GET /app-health/<container>/<livez|readyz|startupz>` runs the app's original
//! kubelet probe (rewritten by `portcullis inject`, see [`crate::k8s::probe`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::identity::source::Identity;
use crate::k8s::inject::APP_HEALTH_PREFIX;
use crate::k8s::probe::AppProbes;
use crate::metrics;
use crate::policy::store::PolicyStore;
use crate::proxy::forward::{text_response, ProxyBody};
use crate::proxy::listener::{accept_loop, ConnLimit, Drain, HttpServer};

/// Changes the log filter at run time; errors say why the level is invalid.
pub type LevelSetter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What the admin endpoints look at and act on.
pub struct Admin {
    pub identity: Arc<Identity>,
    pub policy: Arc<PolicyStore>,
    /// Notified by `POST /shutdown`.
    pub shutdown: Arc<Notify>,
    /// Changes the log filter (`POST /logging?level=debug`).
    pub set_log_level: LevelSetter,
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
        req: &Request<Incoming>,
        drain: &Drain,
    ) -> Response<ProxyBody> {
        let local_only = peer.ip().is_loopback();
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
            (_, "/shutdown") | (_, "/logging") | (_, "/tap") if !local_only => {
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
            (&Method::GET, "/tap") => crate::tap::response(req.uri().query()),
            (_, "/metrics" | "/live" | "/ready" | "/shutdown" | "/logging" | "/tap") => {
                text_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text_response(StatusCode::NOT_FOUND, "not found\n"),
        }
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
            "admin",
            limit,
            admin_drain,
            move |stream, peer, guard| {
                let this = self.clone();
                let server = server.clone();
                let drain = drain.clone();
                async move {
                    let _guard = guard;
                    server
                        .serve(stream, move |req| {
                            // Rewritten kubelet probes of the app.
                            let probe = (req.method() == Method::GET
                                && req.uri().path().starts_with(APP_HEALTH_PREFIX))
                            .then(|| req.uri().path().to_owned());
                            let resp = probe.is_none().then(|| this.handle(peer, &req, &drain));
                            async move {
                                let resp = match (resp, probe) {
                                    (Some(r), _) => r,
                                    (None, Some(path)) => {
                                        let (status, body) =
                                            AppProbes::global().handle(&path).await;
                                        text_response(status, body)
                                    }
                                    (None, None) => {
                                        text_response(StatusCode::NOT_FOUND, "not found\n")
                                    }
                                };
                                Ok::<_, Infallible>(resp)
                            }
                        })
                        .await;
                }
            },
        )
        .await;
    }
}
