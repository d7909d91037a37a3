//! The inbound data path (`:15006`): accept → sniff → mTLS → HTTP → hygiene →
//! authn → input → decide → forward to the local app.
//!
//! Plaintext is served only in `permissive` mode. Ports listed as opaque are
//! decided once per connection and then copied both ways (see [`super::tcp`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::HeaderName;
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::handshake::ServerTls;

use super::app_protocol::{AppProtocols, Caller};
use super::decide::Decider;
use super::forward::AppClients;
use super::listener::{Busy, ConnGuard, HttpServer};
use super::reply::{text_response, Early, ProxyBody, Refusal};
use super::sniff::{self, Prefixed, Sniffed};
use super::{body, headers, tcp, tunnel, ConnInfo, Prelude, Tunnels};
use crate::authn::{Authenticator, Outcome, Rejection, Verified};
use crate::config::{BodyConfig, MtlsMode};
use crate::direction::Direction;
use crate::identity::peer_leaf::{verified_peer, PeerLeafError};
use crate::identity::tls::{self, Identity};
use crate::identity::SpiffeId;
use crate::metrics;
use crate::policy::{HttpFacts, InputFacts};

/// A header a peer sidecar sets to say which HTTP version the calling app used, so
/// requests carried over HTTP/2 between sidecars reach the app as they were sent.
pub const ORIG_PROTO: HeaderName = HeaderName::from_static("x-portcullis-orig-proto");

/// Settings and shared state of the inbound listener.
pub struct Inbound {
    pub identity: Arc<Identity>,
    pub decider: Decider,
    pub clients: AppClients,
    pub app: SocketAddr,
    /// Where the inbound listener listens.
    pub listen: SocketAddr,
    pub original_destination: bool,
    /// With `original_destination`: ports forwarded to loopback instead.
    pub loopback_ports: Vec<u16>,
    /// The HTTP version each app port gets.
    pub protocols: AppProtocols,
    pub mtls: MtlsMode,
    pub opaque_ports: Vec<u16>,
    pub body: BodyConfig,
    pub http: HttpServer,
    /// Extra header names stripped from every request (JWT claim headers).
    pub strip_extra: Vec<HeaderName>,
    /// JWT authentication (`jwt.providers`); `None` when no provider is configured.
    pub authn: Option<Arc<Authenticator>>,
}

/// The side this module serves, for metrics and logs.
const DIRECTION: Direction = Direction::Inbound;

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

impl Inbound {
    /// Handles one accepted connection until it closes.
    pub async fn serve_connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        guard: ConnGuard,
    ) {
        let _guard = guard;
        let Some((app, dest)) = self.destination(&stream, peer) else {
            return;
        };
        let mut first = [0u8; 1];
        let sniff = tokio::time::timeout(self.http.header_timeout, stream.peek(&mut first)).await;
        if !matches!(sniff, Ok(Ok(1))) {
            return; // closed, error or silent client
        }
        if first[0] == TLS_HANDSHAKE {
            return self.serve_mtls(stream, peer, app, dest).await;
        }
        if self.mtls == MtlsMode::Strict {
            record_tls_failure("plaintext");
            tracing::debug!(%peer, "plaintext connection refused (strict mTLS)");
            return;
        }
        let conn = Arc::new(ConnInfo {
            peer,
            dest,
            app,
            app_authority: super::forward::authority(app),
            peer_id: None,
            portcullis_peer: false,
            tunnels: None,
            xfcc: None,
            local_id: self.identity.current().map(|l| l.svid.id.to_string()),
            tls: false,
        });
        if self.opaque_ports.contains(&app.port()) {
            tcp::relay(&self.decider, &conn, stream).await;
        } else {
            self.serve_http(conn, stream).await;
        }
    }

    /// Where the client meant to go and where the app listens: the original
    /// destination when intercepted, else the configured app. `None` closes.
    fn destination(
        &self,
        stream: &TcpStream,
        peer: SocketAddr,
    ) -> Option<(SocketAddr, SocketAddr)> {
        if !self.original_destination {
            // The address the client connected to: the listener's, unless it listens
            // on every address (one `getsockname` per connection saved otherwise).
            let ip = if self.listen.ip().is_unspecified() {
                stream.local_addr().ok()?.ip()
            } else {
                self.listen.ip()
            };
            return Some((self.app, SocketAddr::new(ip, self.app.port())));
        }
        match super::orig_dst::original_destination(stream, peer) {
            // Where the app listens: the address the client meant, so an app bound
            // to the pod IP is reached and a localhost-only port stays private.
            Ok(d) if self.loopback_ports.contains(&d.port()) => {
                Some((SocketAddr::new(loopback_for(d), d.port()), d))
            }
            Ok(d) => Some((d, d)),
            Err(e) => {
                tracing::warn!(%peer, error = %e, "no original destination; closing");
                None
            }
        }
    }

    /// A TLS connection: the mTLS handshake, then HTTP or an opaque relay.
    async fn serve_mtls(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        app: SocketAddr,
        dest: SocketAddr,
    ) {
        let Some((tls, accepted)) = self.handshake(stream, peer).await else {
            return;
        };
        let mut conn = ConnInfo {
            peer,
            dest,
            app,
            app_authority: super::forward::authority(app),
            peer_id: Some(accepted.peer_id),
            portcullis_peer: accepted.portcullis_peer,
            tunnels: None,
            xfcc: accepted.xfcc,
            local_id: Some(accepted.local_id),
            tls: true,
        };
        if accepted.tunnels {
            conn.tunnels = Some(Tunnels {
                open: tunnel::Count::default(),
                conn: Arc::new(conn.without_markers()),
            });
        }
        let conn = Arc::new(conn);
        if accepted.tunnels {
            // A peer sidecar's multiplexed connection, to any port: its TCP arrives
            // in tunnels, each relayed as the port says (`Inbound::tunnel`).
            let this = self.clone();
            self.http
                .for_peer()
                .serve(tls, move |req| this.clone().handle(conn.clone(), req))
                .await;
        } else if self.opaque_ports.contains(&app.port()) {
            tcp::relay(&self.decider, &conn, tls).await;
        } else if accepted.opaque {
            self.serve_opaque_alpn(conn, tls).await;
        } else {
            self.serve_http(conn, tls).await;
        }
    }

    /// The server side of the mTLS handshake, counted; `None` when it failed or the
    /// client's certificate is not an identity (any more).
    async fn handshake(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<(Box<ServerTls>, Accepted)> {
        let Some(loaded) = self.identity.current() else {
            record_tls_failure("no_identity");
            return None;
        };
        let acceptor = TlsAcceptor::from(loaded.tls.server.clone());
        let handshake = super::handshake::accept(acceptor, stream);
        let tls = match tokio::time::timeout(self.http.header_timeout, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                // Counted once: SVID rejections by the verifier, the rest here.
                crate::identity::record_handshake_io_failure(DIRECTION.as_str(), &e);
                tracing::debug!(%peer, error = %e, "inbound TLS handshake failed");
                return None;
            }
            Err(_) => {
                record_tls_failure("timeout");
                return None;
            }
        };
        let m = metrics::global();
        m.tls_handshakes
            .with_label_values(&[DIRECTION.as_str()])
            .inc();
        let session = tls.get_ref().1;
        if session.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            m.tls_resumed_handshakes
                .with_label_values(&[DIRECTION.as_str()])
                .inc();
        }
        let leaf = match verified_peer(session) {
            Ok(leaf) => leaf,
            Err(PeerLeafError::NoCertificate) => {
                record_tls_failure("no_client_certificate");
                return None;
            }
            Err(PeerLeafError::Expired) => {
                record_tls_failure("expired_session");
                return None;
            }
            Err(PeerLeafError::NotAnSvid) => return None,
        };
        let local_id = loaded.svid.id.to_string();
        let alpn = session.alpn_protocol();
        let accepted = Accepted {
            xfcc: headers::xfcc_value(&local_id, &leaf.sha256_hex, leaf.id.as_str()),
            peer_id: leaf.id.clone(),
            local_id,
            // A peer sidecar relaying non-HTTP traffic says so with its ALPN; one
            // carrying HTTP negotiates its own ALPN, the only way to be trusted with
            // peer markers.
            opaque: alpn == Some(tls::ALPN_TCP),
            portcullis_peer: alpn == Some(tls::ALPN_PEER_H2) || alpn == Some(tls::ALPN_PEER_TUNNEL),
            tunnels: alpn == Some(tls::ALPN_PEER_TUNNEL),
        };
        Some((tls, accepted))
    }

    /// The peer chose to relay raw bytes to a port that is not declared opaque here.
    /// Whatever an app could read as HTTP is served as HTTP, so the ALPN cannot skip
    /// per-request decisions and header hygiene. A server-first protocol must be
    /// declared in `inbound.opaque_ports`.
    async fn serve_opaque_alpn<I>(self: Arc<Self>, conn: Arc<ConnInfo>, mut io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let timeout = self.http.header_timeout;
        match sniff::sniff(&mut io, timeout, 64, sniff::classify_inbound).await {
            Some((Sniffed::Http, seen)) => self.serve_http(conn, Prefixed::new(seen, io)).await,
            Some((_, seen)) => tcp::relay(&self.decider, &conn, Prefixed::new(seen, io)).await,
            None => {
                tracing::debug!(peer = %conn.peer, "opaque connection sent nothing in time (server-first protocols need inbound.opaque_ports)");
            }
        }
    }

    /// Serves HTTP on `io`, one [`Inbound::handle`] per request.
    async fn serve_http<I>(self: Arc<Self>, conn: Arc<ConnInfo>, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let this = self.clone();
        self.http
            .serve(io, move |req| this.clone().handle(conn.clone(), req))
            .await;
    }

    /// One HTTP request: a refusal before the policy is counted and answered here.
    async fn handle(
        self: Arc<Self>,
        conn: Arc<ConnInfo>,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        if let Some(tunnels) = &conn.tunnels {
            if tunnel::requested(&req) {
                return Ok(self.tunnel(tunnels, req));
            }
            if self.opaque_ports.contains(&conn.app.port()) {
                // Only tunnels reach an opaque port; HTTP is not parsed for it.
                let refusal = Refusal::new(
                    StatusCode::MISDIRECTED_REQUEST,
                    "opaque_port",
                    "this port takes TCP only\n",
                );
                return Ok(self.decider.refuse(refusal, Instant::now()));
            }
        }
        let started = Instant::now();
        let outcome = self.request(&conn, req, started).await;
        Ok(self.decider.answer(outcome, started))
    }

    /// A peer sidecar's TCP tunnel: answered at once, then served like an opaque
    /// connection of its own from the same peer (decided once, or as HTTP if it
    /// carries HTTP), except that the peer's markers are not honoured inside it:
    /// its bytes are the calling app's.
    fn tunnel(self: Arc<Self>, tunnels: &Tunnels, req: Request<Incoming>) -> Response<ProxyBody> {
        let Some(place) = tunnels.open.enter(self.http.max_tunnels) else {
            // The peer opens a connection of its own instead.
            return text_response(StatusCode::SERVICE_UNAVAILABLE, "tunnel limit reached\n");
        };
        let busy = req.extensions().get::<Busy>().map(Busy::hold);
        let (resp, io) = tunnel::accept(req, (Some(place), busy));
        let inner = tunnels.conn.clone();
        tokio::spawn(async move {
            let Some(io) = io.await else { return };
            if self.opaque_ports.contains(&inner.app.port()) {
                tcp::relay(&self.decider, &inner, io).await;
            } else {
                self.serve_opaque_alpn(inner, io).await;
            }
        });
        resp
    }

    /// One HTTP request, top to bottom.
    async fn request(
        &self,
        conn: &ConnInfo,
        req: Request<Incoming>,
        started: Instant,
    ) -> Result<Response<ProxyBody>, Early> {
        let (mut parts, body) = req.into_parts();

        // 1. Hygiene: nothing a client sends may claim an identity the sidecar vouches
        //    for. A verified portcullis peer's protocol marker is read first; the
        //    prelude strips every `x-portcullis-*` header, from everyone.
        let caller_version = caller_version(conn, &parts);

        // 2. Framing, one normalised path (the policy decides on exactly what the app
        //    receives), and a request ID: the prelude both directions share.
        let Prelude {
            mut path,
            request_id,
            host,
            protocol,
        } = super::prelude(&mut parts, &self.strip_extra)?;
        if let Ok(uri) = rebuild_uri(&parts.uri, &path) {
            parts.uri = uri;
        }
        // 3a. The client's identity for the policy and the app, as Envoy's ext_authz
        //     sees it: the `x-forwarded-client-cert` this sidecar sets (the client's
        //     own was stripped by the prelude).
        if let Some(v) = &conn.xfcc {
            parts.headers.insert(headers::XFCC, v.clone());
        }

        // 3b. JWT authentication: a present but invalid token is answered 401 here and
        // reaches neither the policy nor the app. A valid one may change headers and
        // the query (token removed, claims copied) before the policy sees them.
        let verified = self.authenticate(&mut parts, &mut path).await?;

        // 4. Body for the policy, bounded, only when configured.
        let (body, body_failed) = super::forward::downstream_body(body);
        let (prefix, truncated, body) = self.policy_body(&parts.headers, body).await?;

        // 5. Decide.
        let size = declared_length(&parts.headers);
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (verdict, ticket) = self.decider.decide(&InputFacts {
            source_address: conn.peer,
            source_principal: conn.peer_id.as_ref().map(|p| p.as_str()),
            destination_address: conn.dest,
            destination_principal: conn.local_id.as_deref(),
            http: Some(HttpFacts {
                id: &request_id,
                method: parts.method.as_str(),
                path: &path,
                host: &host,
                scheme: if conn.tls { "https" } else { "http" },
                protocol,
                headers: &parts.headers,
                size,
                body: prefix.as_deref(),
                truncated_body: truncated,
                content_type: content_type.as_deref(),
            }),
            jwt: verified
                .as_ref()
                .map(|v| (v.payload_in_metadata(), v.claims())),
        });

        // 6. Deny: answer locally. 7. Allow: the policy's header changes, the identity
        //    for the app, forward.
        let (decision, ticket) = self
            .decider
            .enforce(verdict, ticket, &mut parts.headers, started)
            .map_err(Early::Answered)?;
        let caller = Caller::of(&parts.headers, caller_version);
        let to_http2 = self.protocols.http2(conn.app, caller).await;
        let req = Request::from_parts(parts, body);
        let send = self
            .clients
            .send(DIRECTION, conn.app_authority.as_ref(), to_http2, req);
        let mut resp = Box::pin(send).await;
        if to_http2 && resp.status() == StatusCode::BAD_GATEWAY {
            // Probe again next time: the app may have changed what it speaks.
            self.protocols.forget(conn.app);
        }
        if body_failed.load(std::sync::atomic::Ordering::Relaxed) {
            // The upstream failed because the client's body was malformed.
            let why = "malformed request body\n";
            return Err(Refusal::new(StatusCode::BAD_REQUEST, "bad_body", why).into());
        }
        headers::add_headers(resp.headers_mut(), &decision.response_headers_to_add);
        self.decider.finish(ticket, resp.status().as_u16(), started);
        Ok(resp)
    }

    /// JWT authentication (when configured). A request without a token goes on
    /// unauthenticated; an invalid token is refused: 401 with `WWW-Authenticate`
    /// (RFC 6750), or 503 when the provider's keys were never available.
    async fn authenticate(
        &self,
        parts: &mut http::request::Parts,
        path: &mut String,
    ) -> Result<Option<Verified>, Refusal> {
        let Some(authn) = &self.authn else {
            return Ok(None);
        };
        // Boxed: key-set refetches make this future large, and the request's own
        // future is moved by the HTTP library.
        match Box::pin(authn.authenticate(&parts.headers, path)).await {
            Outcome::NoToken => Ok(None),
            Outcome::Rejected(r) => Err(unauthenticated(&r)),
            Outcome::Verified(v) => {
                if authn.apply(&v, &mut parts.headers, path) {
                    if let Ok(uri) = rebuild_uri(&parts.uri, path) {
                        parts.uri = uri;
                    }
                }
                Ok(Some(v))
            }
        }
    }

    /// The body prefix the policy sees (`policy.body`), and the whole body to forward.
    async fn policy_body(
        &self,
        headers: &http::HeaderMap,
        body: ProxyBody,
    ) -> Result<(Option<bytes::Bytes>, bool, ProxyBody), Refusal> {
        if !self.body.enabled {
            return Ok((None, false, body));
        }
        let too_large = || {
            let msg = format!(
                "request body larger than {} bytes (policy.body.max_bytes)\n",
                self.body.max_bytes
            );
            Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", msg)
        };
        if !self.body.allow_partial && declared_length(headers) > Some(self.body.max_bytes as u64) {
            return Err(too_large());
        }
        match Box::pin(body::buffer_prefix(body, self.body.max_bytes)).await {
            Ok(b) if b.truncated && !self.body.allow_partial => Err(too_large()),
            Ok(b) => Ok((Some(b.prefix), b.truncated, b.body)),
            Err(_) => Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "body_read",
                "request body could not be read\n",
            )),
        }
    }
}

/// What a successful mTLS handshake tells about the client.
struct Accepted {
    peer_id: SpiffeId,
    local_id: String,
    xfcc: Option<http::HeaderValue>,
    /// The peer sidecar relays raw bytes (ALPN `portcullis-tcp`).
    opaque: bool,
    /// The client is a portcullis sidecar carrying HTTP (ALPN `portcullis-h2` or
    /// `portcullis-h2t`).
    portcullis_peer: bool,
    /// ... and TCP tunnels (ALPN `portcullis-h2t`).
    tunnels: bool,
}

/// The HTTP version the calling app used: a verified portcullis peer says so in
/// [`ORIG_PROTO`]; anyone else is taken as they speak.
fn caller_version(conn: &ConnInfo, parts: &http::request::Parts) -> Version {
    if !conn.portcullis_peer {
        return parts.version;
    }
    match parts.headers.get(&ORIG_PROTO).map(|v| v.as_bytes()) {
        Some(b"HTTP/1.1") => Version::HTTP_11,
        Some(b"HTTP/2") => Version::HTTP_2,
        _ => parts.version,
    }
}

/// A request whose token is invalid: 401 with `WWW-Authenticate` (RFC 6750), or 503
/// when the provider's keys were never available.
fn unauthenticated(r: &Rejection) -> Refusal {
    let status = r.status();
    let reason = if status == StatusCode::UNAUTHORIZED {
        "invalid_token"
    } else {
        "jwks_unavailable"
    };
    let mut refusal = Refusal::new(status, reason, format!("{}\n", r.description()));
    if status == StatusCode::UNAUTHORIZED {
        refusal.header = Some((http::header::WWW_AUTHENTICATE, r.www_authenticate()));
    }
    refusal
}

fn record_tls_failure(reason: &str) {
    metrics::global()
        .tls_handshake_failures
        .with_label_values(&[DIRECTION.as_str(), reason])
        .inc();
}

/// Loopback of the same family as the original destination: apps listen on localhost.
fn loopback_for(d: SocketAddr) -> std::net::IpAddr {
    match d {
        SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
        SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
    }
}

/// The request URI with its path-and-query replaced by the normalised one.
fn rebuild_uri(uri: &Uri, pq: &str) -> Result<Uri, http::Error> {
    let mut b = Uri::builder();
    if let Some(s) = uri.scheme() {
        b = b.scheme(s.clone());
    }
    if let Some(a) = uri.authority() {
        b = b.authority(a.clone());
    }
    b.path_and_query(pq).build()
}

/// The request's `Content-Length`, when present and a number.
fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, C, D, F, Fut>(_: F) -> usize
    where
        F: FnOnce(A, B, C, D) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// A connection's task is allocated at its future's size and kept for the
    /// connection's life, idle or not: with the TLS stream inline in each stage it
    /// was 7.5 kB (release and test builds alike), boxed it is 3.4 kB.
    #[test]
    fn a_connection_task_stays_small() {
        let size = future_size(Inbound::serve_connection);
        assert!(size <= 4608, "{size} bytes");
    }
}
