//! The outbound data path (`:15001`, and explicit route listeners): the app's plain
//! connection → original destination → protocol detection → decide (outbound query)
//! → mTLS to the peer sidecar (HTTP/2, pooled) or pass-through for non-mesh hosts.
//!
//! HTTP from the app is carried over multiplexed HTTP/2 between sidecars and marked
//! with the app's HTTP version, so the peer hands it to its app as it was sent.
//! Anything that does not look like HTTP is decided once and relayed as TCP, over
//! mTLS (ALPN `portcullis-tcp`) inside the mesh.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HeaderValue, HOST};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use ipnet::IpNet;
use tokio::net::TcpStream;

use super::app_protocol::{AppProtocols, Caller};
use super::decide::{Decider, Ticket};
use super::forward::AppClients;
use super::headers::add_headers;
use super::inbound::ORIG_PROTO;
use super::listener::{ConnGuard, HttpServer};
use super::peer::{Http1Peer, PeerConn, PeerError, PeerLink, PeerPool};
use super::reply::{text_response, BoxError, Early, ProxyBody, Refusal};
use super::sniff::{self, Sniffed};
use super::{headers, Prelude};
use crate::config::NonMeshAction;
use crate::direction::Direction;
use crate::identity::tls::Identity;
use crate::identity::SpiffeId;
use crate::metrics;
use crate::policy::{HttpFacts, InputFacts};

/// The side this module serves, for metrics and logs.
const DIRECTION: Direction = Direction::Outbound;

mod tcp;

/// Where one outbound connection goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// A peer sidecar: mTLS, optionally pinned to one SPIFFE ID.
    Mesh {
        addr: SocketAddr,
        pin: Option<SpiffeId>,
    },
    /// Outside the mesh: plain pass-through if the policy allows.
    External { addr: SocketAddr },
}

impl Target {
    fn addr(&self) -> SocketAddr {
        match self {
            Target::Mesh { addr, .. } | Target::External { addr } => *addr,
        }
    }
}

/// How the bytes on an outbound connection are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Sniff: HTTP if the first bytes look like HTTP/1 or the HTTP/2 preface.
    Detect,
    Http,
    Tcp,
}

/// Settings and shared state of the outbound side.
pub struct Outbound {
    pub identity: Arc<Identity>,
    pub decider: Decider,
    pub peers: PeerPool,
    /// Plain clients for allowed non-mesh HTTP.
    pub external: AppClients,
    /// The HTTP version non-mesh destinations get (the `auto` rule).
    pub protocols: AppProtocols,
    pub mesh_networks: Vec<IpNet>,
    pub non_mesh: NonMeshAction,
    pub http: HttpServer,
    pub upstream_timeout: Duration,
    /// How long to wait for the app's first bytes before treating it as TCP.
    pub detect_timeout: Duration,
}

/// One accepted app connection.
struct OutConn {
    app: SocketAddr,
    target: Target,
    own_id: Option<String>,
}

impl Outbound {
    /// Classifies a destination by the mesh networks.
    pub fn target_for(&self, dst: SocketAddr) -> Target {
        if self.mesh_networks.iter().any(|n| n.contains(&dst.ip())) {
            Target::Mesh {
                addr: dst,
                pin: None,
            }
        } else {
            Target::External { addr: dst }
        }
    }

    /// A connection redirected by iptables to the transparent listener.
    pub async fn serve_transparent(
        self: Arc<Self>,
        stream: TcpStream,
        app: SocketAddr,
        guard: ConnGuard,
    ) {
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(_) => return,
        };
        let dst = match super::orig_dst::original_destination(&stream, local) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(%app, error = %e, "outbound connection without an original destination; closing");
                return;
            }
        };
        if dst == local {
            // Connected to the listener itself, not redirected: refuse rather than loop.
            tracing::warn!(%app, "outbound listener reached directly; closing");
            return;
        }
        let target = self.target_for(dst);
        self.serve(stream, app, target, Protocol::Detect, guard)
            .await;
    }

    /// A connection on a route listener or the transparent listener.
    pub async fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        app: SocketAddr,
        target: Target,
        protocol: Protocol,
        guard: ConnGuard,
    ) {
        let _guard = guard;
        let protocol = match protocol {
            Protocol::Detect => detect(&stream, self.detect_timeout).await,
            p => p,
        };
        let conn = Arc::new(OutConn {
            app,
            target,
            own_id: self.identity.current().map(|l| l.svid.id.to_string()),
        });
        match protocol {
            Protocol::Tcp | Protocol::Detect => self.relay_tcp(&conn, stream).await,
            Protocol::Http => {
                let this = self.clone();
                self.http
                    .serve(stream, move |req| this.clone().handle(conn.clone(), req))
                    .await;
            }
        }
    }

    /// One HTTP request from the app: a refusal before the policy is counted and
    /// answered here.
    async fn handle(
        self: Arc<Self>,
        conn: Arc<OutConn>,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let started = Instant::now();
        let outcome = self.request(&conn, req, started).await;
        Ok(self.decider.answer(outcome, started))
    }

    /// One HTTP request from the app, top to bottom.
    async fn request(
        &self,
        conn: &OutConn,
        req: Request<Incoming>,
        started: Instant,
    ) -> Result<Response<ProxyBody>, Early> {
        let (mut parts, body) = req.into_parts();

        // 1-2. The app may not claim identities either; framing, one normalised
        //      path and a request ID, as inbound.
        let Prelude {
            path,
            request_id,
            host,
            protocol,
        } = super::prelude(&mut parts, &[])?;
        let host = if host.is_empty() {
            conn.target.addr().to_string()
        } else {
            host
        };

        // 3. For the mesh, the peer's verified identity is part of the decision.
        let peer = self.peer_for(&conn.target, started).await?;

        // 4. Decide.
        let (verdict, ticket) = self.decider.decide(&InputFacts {
            source_address: conn.app,
            source_principal: conn.own_id.as_deref(),
            destination_address: conn.target.addr(),
            destination_principal: peer.as_ref().map(|(p, ..)| p.peer_id().as_str()),
            http: Some(HttpFacts {
                id: &request_id,
                method: parts.method.as_str(),
                path: &path,
                host: &host,
                scheme: "http",
                protocol,
                headers: &parts.headers,
                size: None,
                body: None,
                truncated_body: false,
                content_type: None,
            }),
            jwt: None,
        });
        let (decision, ticket) = self
            .decider
            .enforce(verdict, ticket, &mut parts.headers, started)
            .map_err(Early::Answered)?;

        // 5. Forward.
        let upgrade = headers::is_upgrade(&parts.headers);
        let mut resp = match peer {
            Some((PeerLink::H1(link), addr, pin)) if !upgrade => {
                let req = Request::from_parts(parts, body.map_err_boxed());
                Box::pin(self.send_http1_to_peer(addr, pin, link, &host, req)).await
            }
            Some((PeerLink::H2(peer), addr, pin)) if !upgrade => {
                let req = to_peer_h2(parts, body, peer.portcullis, &host, &path)?;
                Box::pin(self.forward_h2(addr, pin, peer, req)).await
            }
            // Upgrades need an HTTP/1.1 connection of their own.
            Some((_, addr, pin)) => {
                let req = Request::from_parts(parts, body.map_err_boxed());
                Box::pin(self.upgrade_over_mtls(addr, pin, req)).await
            }
            None => {
                let req = Request::from_parts(parts, body.map_err_boxed());
                Box::pin(self.forward_external(conn.target.addr(), req)).await
            }
        };
        add_headers(resp.headers_mut(), &decision.response_headers_to_add);
        self.decider.finish(ticket, resp.status().as_u16(), started);
        Ok(resp)
    }

    /// The peer sidecar's connection for a mesh target (`None` outside the mesh);
    /// an unreachable peer, or egress outside the mesh when it is denied, stops the
    /// request.
    async fn peer_for<'t>(
        &self,
        target: &'t Target,
        started: Instant,
    ) -> Result<Option<(PeerLink, SocketAddr, Option<&'t SpiffeId>)>, Early> {
        match target {
            // Futures that are large (TLS handshakes, client state) are boxed so the
            // request's own future stays small: it is moved, they are not.
            Target::Mesh { addr, pin } => {
                match Box::pin(self.peers.link(*addr, pin.as_ref())).await {
                    Ok(p) => Ok(Some((p, *addr, pin.as_ref()))),
                    Err(e) => Err(Early::Answered(Box::new(self.peer_failure(e, started)))),
                }
            }
            Target::External { .. } if self.non_mesh == NonMeshAction::Deny => Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "non_mesh",
                "egress outside the mesh is not allowed\n",
            )
            .into()),
            Target::External { .. } => Ok(None),
        }
    }

    /// Sends a request on a pooled HTTP/2 connection to a peer sidecar, bounded by
    /// the upstream timeout.
    async fn forward_h2(
        &self,
        addr: SocketAddr,
        pin: Option<&SpiffeId>,
        peer: PeerConn,
        req: Request<ProxyBody>,
    ) -> Response<ProxyBody> {
        let send = Box::pin(self.send_to_peer(addr, pin, peer, req));
        match tokio::time::timeout(self.upstream_timeout, send).await {
            Ok(Ok(r)) => {
                let (mut p, b) = r.into_parts();
                headers::remove_hop_by_hop(&mut p.headers, false);
                Response::from_parts(p, b.map_err_boxed())
            }
            Ok(Err(e)) => {
                tracing::warn!(peer = %addr, error = %e, "peer request failed");
                upstream_failed("protocol")
            }
            Err(_) => upstream_failed("timeout"),
        }
    }

    /// Outside the mesh: the version the destination speaks, by the same rule as the
    /// inbound side's app.
    async fn forward_external(
        &self,
        upstream: SocketAddr,
        req: Request<ProxyBody>,
    ) -> Response<ProxyBody> {
        let caller = Caller::of(req.headers(), req.version());
        let http2 = self.protocols.http2(upstream, caller).await;
        let authority = super::forward::authority(upstream);
        let send = self
            .external
            .send(DIRECTION, authority.as_ref(), http2, req);
        let resp = Box::pin(send).await;
        if http2 && resp.status() == StatusCode::BAD_GATEWAY {
            self.protocols.forget(upstream);
        }
        resp
    }

    /// Sends a request to a peer that speaks HTTP/1.1 only, over a pooled mTLS
    /// connection of its own; the connection is returned to the pool for reuse.
    async fn send_http1_to_peer(
        &self,
        addr: SocketAddr,
        pin: Option<&SpiffeId>,
        mut link: Http1Peer,
        host: &str,
        mut req: Request<ProxyBody>,
    ) -> Response<ProxyBody> {
        headers::remove_hop_by_hop(req.headers_mut(), false);
        if let Ok(v) = HeaderValue::from_str(host) {
            req.headers_mut().insert(HOST, v);
        }
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        if let Ok(u) = Uri::builder().path_and_query(pq).build() {
            *req.uri_mut() = u;
        }
        *req.version_mut() = Version::HTTP_11;
        let sent = tokio::time::timeout(self.upstream_timeout, link.sender.send_request(req)).await;
        let resp = match sent {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(peer = %addr, error = %e, "peer HTTP/1.1 request failed");
                return upstream_failed("protocol");
            }
            Err(_) => return upstream_failed("timeout"),
        };
        self.peers.give_back(addr, pin, link);
        let (mut p, b) = resp.into_parts();
        headers::remove_hop_by_hop(&mut p.headers, false);
        Response::from_parts(p, b.map_err_boxed())
    }

    /// Carries an HTTP/1.1 upgrade (WebSocket) over a dedicated mTLS connection.
    async fn upgrade_over_mtls(
        &self,
        addr: SocketAddr,
        pin: Option<&SpiffeId>,
        mut req: Request<ProxyBody>,
    ) -> Response<ProxyBody> {
        let (tls, _) = match self.peers.connect_tls(addr, pin, &[b"http/1.1"]).await {
            Ok(t) => t,
            Err(e) => return self.peer_error_response(e),
        };
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "peer HTTP/1.1 handshake failed");
                    return text_response(StatusCode::BAD_GATEWAY, "upstream unavailable\n");
                }
            };
        tokio::spawn(conn.with_upgrades());
        let downstream = hyper::upgrade::on(&mut req);
        headers::remove_hop_by_hop(req.headers_mut(), true);
        if let Some(pq) = req.uri().path_and_query().cloned() {
            if let Ok(u) = Uri::builder().path_and_query(pq).build() {
                *req.uri_mut() = u;
            }
        }
        let mut resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "peer upgrade request failed");
                return text_response(StatusCode::BAD_GATEWAY, "upstream unavailable\n");
            }
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let upstream = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                if let (Ok(d), Ok(u)) = tokio::join!(downstream, upstream) {
                    let mut d = hyper_util::rt::TokioIo::new(d);
                    let mut u = hyper_util::rt::TokioIo::new(u);
                    let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
                }
            });
        }
        let (mut p, b) = resp.into_parts();
        headers::remove_hop_by_hop(&mut p.headers, p.status == StatusCode::SWITCHING_PROTOCOLS);
        Response::from_parts(p, b.map_err_boxed())
    }

    fn peer_error_response(&self, e: PeerError) -> Response<ProxyBody> {
        tracing::warn!(error = %e, "peer connection failed");
        let (status, kind) = match e {
            PeerError::NoIdentity => (StatusCode::SERVICE_UNAVAILABLE, "no_identity"),
            PeerError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            PeerError::Tls { .. } | PeerError::NoPeerId(_) => (StatusCode::BAD_GATEWAY, "tls"),
            _ => (StatusCode::BAD_GATEWAY, "connect"),
        };
        count_upstream_error(kind);
        text_response(status, format!("upstream unavailable: {kind}\n"))
    }

    /// Sends a request on a pooled peer connection. A request the connection refused
    /// before sending it (the peer closed or is closing it, e.g. after an idle
    /// timeout) is sent once more on a new connection — only to the same verified
    /// SPIFFE ID the policy decided on.
    async fn send_to_peer(
        &self,
        addr: SocketAddr,
        pin: Option<&SpiffeId>,
        peer: PeerConn,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, PeerSendError> {
        // A request without a body can be rebuilt if the peer did not process it.
        let replay = http_body::Body::is_end_stream(req.body()).then(|| {
            let mut head = Request::new(());
            *head.method_mut() = req.method().clone();
            *head.uri_mut() = req.uri().clone();
            *head.version_mut() = req.version();
            *head.headers_mut() = req.headers().clone();
            head
        });
        let mut sender = peer.sender.clone();
        let req = match sender.try_send_request(req).await {
            Ok(r) => return Ok(r),
            Err(mut e) => match (e.take_message(), replay) {
                (Some(req), _) => req,
                (None, Some(head)) if unprocessed_by_peer(e.error()) => {
                    head.map(|()| super::reply::full(bytes::Bytes::new()))
                }
                (None, _) => return Err(PeerSendError::Http(e.into_error())),
            },
        };
        let fresh = self
            .peers
            .http2_after_failure(addr, pin, &peer)
            .await
            .map_err(PeerSendError::Reconnect)?;
        if fresh.peer_id != peer.peer_id {
            return Err(PeerSendError::IdentityChanged);
        }
        let mut sender = fresh.sender;
        sender.send_request(req).await.map_err(PeerSendError::Http)
    }

    fn peer_failure(&self, e: PeerError, started: Instant) -> Response<ProxyBody> {
        let resp = self.peer_error_response(e);
        self.decider
            .finish(Ticket::refused(), resp.status().as_u16(), started);
        resp
    }
}

/// A request the peer failed (`protocol`) or did not answer in time (`timeout`):
/// counted, answered 502 or 504.
fn upstream_failed(kind: &'static str) -> Response<ProxyBody> {
    count_upstream_error(kind);
    if kind == "timeout" {
        text_response(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n")
    } else {
        text_response(StatusCode::BAD_GATEWAY, "upstream unavailable\n")
    }
}

fn count_upstream_error(kind: &'static str) {
    metrics::global()
        .upstream_errors
        .with_label_values(&[DIRECTION.as_str(), kind])
        .inc();
}

/// The request as a peer sidecar gets it over HTTP/2: the calling app's version in
/// [`ORIG_PROTO`] (portcullis peers only), no hop-by-hop headers, the authority in
/// the URI.
fn to_peer_h2(
    mut parts: http::request::Parts,
    body: Incoming,
    portcullis: bool,
    host: &str,
    path: &str,
) -> Result<Request<ProxyBody>, Refusal> {
    if portcullis {
        // The peer sidecar hands the request to its app with the version the
        // calling app used (when that app speaks it).
        let orig = if parts.version == Version::HTTP_2 {
            "HTTP/2"
        } else {
            "HTTP/1.1"
        };
        parts
            .headers
            .insert(ORIG_PROTO, HeaderValue::from_static(orig));
    }
    headers::remove_hop_by_hop(&mut parts.headers, false);
    parts.headers.remove(HOST);
    parts.version = Version::HTTP_2;
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(host)
        .path_and_query(path)
        .build()
        .map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "bad_host", "bad host\n"))?;
    Ok(Request::from_parts(parts, body.map_err_boxed()))
}

/// HTTP if the first bytes are the HTTP/2 preface or an HTTP/1 method and a space;
/// TCP if they are anything else or nothing arrives in time (server-first protocols).
async fn detect(stream: &TcpStream, wait: Duration) -> Protocol {
    let mut buf = [0u8; 16];
    let deadline = Instant::now() + wait;
    loop {
        let n = match tokio::time::timeout_at(deadline.into(), stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return Protocol::Tcp,
        };
        if n == 0 {
            return Protocol::Tcp;
        }
        match sniff::classify_outbound(&buf[..n]) {
            Sniffed::Http => return Protocol::Http,
            Sniffed::Other => return Protocol::Tcp,
            Sniffed::NeedMore => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// Boxes an incoming body's error type.
trait MapErrBoxed {
    fn map_err_boxed(self) -> ProxyBody;
}

impl MapErrBoxed for Incoming {
    fn map_err_boxed(self) -> ProxyBody {
        http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_err(
            self,
            BoxError::from,
        ))
    }
}

/// Why a request could not be sent to a peer sidecar.
#[derive(Debug, thiserror::Error)]
enum PeerSendError {
    #[error("{0}")]
    Http(hyper::Error),
    #[error("reconnecting: {0}")]
    Reconnect(PeerError),
    #[error("the peer presented a different SPIFFE ID on reconnection")]
    IdentityChanged,
}

/// True when the peer refused the stream without processing it (RFC 9113 §8.7): it
/// was above the last stream ID of a graceful `GOAWAY`, or reset with
/// `REFUSED_STREAM`. Such a request may be sent again.
fn unprocessed_by_peer(e: &hyper::Error) -> bool {
    let Some(h2) = std::error::Error::source(e).and_then(|s| s.downcast_ref::<h2::Error>()) else {
        return false;
    };
    h2.is_remote()
        && ((h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR))
            || h2.reason() == Some(h2::Reason::REFUSED_STREAM))
}
