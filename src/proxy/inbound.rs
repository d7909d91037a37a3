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

use super::app_protocol::{AppProtocols, Caller};
use super::decide::{Decider, Ticket};
use super::forward::{text_response, AppClients, ProxyBody};
use super::listener::{ConnGuard, HttpServer};
use super::sniff::{self, Prefixed, Sniffed};
use super::{body, headers, tcp, ConnInfo, Prelude};
use crate::authn::{Authenticator, Outcome, Rejection, Verified};
use crate::config::{BodyConfig, MtlsMode};
use crate::identity::source::Identity;
use crate::identity::svid::leaf_info;
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
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(_) => return,
        };
        // Where the client meant to go: the original destination when intercepted,
        // else the configured app.
        let (app, dest) = if self.original_destination {
            match super::orig_dst::original_destination(&stream, local) {
                // Where the app listens: the address the client meant, so an app bound
                // to the pod IP is reached and a localhost-only port stays private.
                Ok(d) if self.loopback_ports.contains(&d.port()) => {
                    (SocketAddr::new(loopback_for(d), d.port()), d)
                }
                Ok(d) => (d, d),
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "no original destination; closing");
                    return;
                }
            }
        } else {
            (self.app, SocketAddr::new(local.ip(), self.app.port()))
        };

        let mut first = [0u8; 1];
        let sniff = tokio::time::timeout(self.http.header_timeout, stream.peek(&mut first)).await;
        match sniff {
            Ok(Ok(1)) => {}
            _ => return, // closed, error or silent client
        }

        if first[0] == TLS_HANDSHAKE {
            let Some(loaded) = self.identity.current() else {
                record_tls_failure("no_identity");
                return;
            };
            let acceptor = TlsAcceptor::from(loaded.tls.server.clone());
            let handshake = super::handshake::accept(acceptor, stream);
            let tls = match tokio::time::timeout(self.http.header_timeout, handshake).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    // Counted once: SVID rejections by the verifier, the rest here.
                    crate::identity::record_handshake_io_failure("inbound", &e);
                    tracing::debug!(%peer, error = %e, "inbound TLS handshake failed");
                    return;
                }
                Err(_) => {
                    record_tls_failure("timeout");
                    return;
                }
            };
            let m = metrics::global();
            m.tls_handshakes.with_label_values(&["inbound"]).inc();
            if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                m.tls_resumed_handshakes
                    .with_label_values(&["inbound"])
                    .inc();
            }
            let session = tls.get_ref().1;
            let leaf = session.peer_certificates().and_then(|c| c.first()).cloned();
            // A peer sidecar relaying non-HTTP traffic says so with its ALPN; one
            // carrying HTTP negotiates its own ALPN, the only way to be trusted with
            // peer markers.
            let opaque = session.alpn_protocol() == Some(crate::identity::tls::ALPN_TCP);
            let portcullis_peer =
                session.alpn_protocol() == Some(crate::identity::tls::ALPN_PEER_H2);
            let Some(leaf) = leaf else {
                record_tls_failure("no_client_certificate");
                return;
            };
            let peer_id = match leaf_info(&leaf) {
                // A resumed session carries the certificate of its first handshake:
                // one that expired since is not an identity any more.
                Ok(info) if info.not_after < std::time::SystemTime::now() => {
                    record_tls_failure("expired_session");
                    return;
                }
                Ok(info) => info.id,
                Err(_) => return,
            };
            let local_id = loaded.svid.id.to_string();
            let hash = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &leaf));
            let xfcc = headers::xfcc_value(&local_id, &hash, peer_id.as_str());
            let conn = Arc::new(ConnInfo {
                peer,
                dest,
                app,
                peer_id: Some(peer_id),
                portcullis_peer,
                xfcc,
                local_id: Some(local_id),
                tls: true,
            });
            drop(loaded);
            if self.opaque_ports.contains(&app.port()) {
                tcp::relay(&self.decider, &conn, tls).await;
            } else if opaque {
                // The peer chose to relay raw bytes to a port that is not declared
                // opaque here. Whatever an app could read as HTTP is served as HTTP, so
                // the ALPN cannot skip per-request decisions and header hygiene. A
                // server-first protocol must be declared in `inbound.opaque_ports`.
                let mut tls = tls;
                match sniff::sniff(
                    &mut tls,
                    self.http.header_timeout,
                    64,
                    sniff::classify_inbound,
                )
                .await
                {
                    Some((Sniffed::Http, seen)) => {
                        let this = self.clone();
                        self.http
                            .serve(Prefixed::new(seen, tls), move |req| {
                                this.clone().handle(conn.clone(), req)
                            })
                            .await;
                    }
                    Some((_, seen)) => {
                        tcp::relay(&self.decider, &conn, Prefixed::new(seen, tls)).await;
                    }
                    None => {
                        tracing::debug!(%peer, "opaque connection sent nothing in time (server-first protocols need inbound.opaque_ports)");
                    }
                }
            } else {
                let this = self.clone();
                self.http
                    .serve(tls, move |req| this.clone().handle(conn.clone(), req))
                    .await;
            }
            return;
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
            peer_id: None,
            portcullis_peer: false,
            xfcc: None,
            local_id: self.identity.current().map(|l| l.svid.id.to_string()),
            tls: false,
        });
        if self.opaque_ports.contains(&app.port()) {
            tcp::relay(&self.decider, &conn, stream).await;
        } else {
            let this = self.clone();
            self.http
                .serve(stream, move |req| this.clone().handle(conn.clone(), req))
                .await;
        }
    }

    /// One HTTP request, top to bottom.
    async fn handle(
        self: Arc<Self>,
        conn: Arc<ConnInfo>,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();

        // 1. Hygiene: nothing a client sends may claim an identity the sidecar vouches
        //    for. A verified portcullis peer's protocol marker is read first; the
        //    prelude strips every `x-portcullis-*` header, from everyone.
        let caller_version = if conn.portcullis_peer {
            match parts.headers.get(&ORIG_PROTO).map(|v| v.as_bytes()) {
                Some(b"HTTP/1.1") => Version::HTTP_11,
                Some(b"HTTP/2") => Version::HTTP_2,
                _ => parts.version,
            }
        } else {
            parts.version
        };

        // 2. Framing, one normalised path (the policy decides on exactly what the app
        //    receives), and a request ID: the prelude both directions share.
        let Prelude {
            mut path,
            request_id,
            host,
            protocol,
        } = match super::prelude(&mut parts, &self.strip_extra) {
            Ok(p) => p,
            Err(r) => return Ok(self.refuse(r.status, &r.body, r.reason, started)),
        };
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
        let mut verified: Option<Verified> = None;
        if let Some(authn) = &self.authn {
            // Boxed: key-set refetches make this future large, and the request's
            // own future is moved by the HTTP library.
            match Box::pin(authn.authenticate(&parts.headers, &path)).await {
                Outcome::NoToken => {}
                Outcome::Rejected(r) => return Ok(self.unauthenticated(&r, started)),
                Outcome::Verified(v) => {
                    if authn.apply(&v, &mut parts.headers, &mut path) {
                        if let Ok(uri) = rebuild_uri(&parts.uri, &path) {
                            parts.uri = uri;
                        }
                    }
                    verified = Some(v);
                }
            }
        }

        // 4. Body for the policy, bounded, only when configured.
        let (body, body_failed) = super::forward::downstream_body(body);
        let (prefix, truncated, body) = if self.body.enabled {
            let too_large = || {
                let msg = format!(
                    "request body larger than {} bytes (policy.body.max_bytes)\n",
                    self.body.max_bytes
                );
                self.refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &msg,
                    "body_too_large",
                    started,
                )
            };
            if !self.body.allow_partial
                && declared_length(&parts.headers) > Some(self.body.max_bytes as u64)
            {
                return Ok(too_large());
            }
            match Box::pin(body::buffer_prefix(body, self.body.max_bytes)).await {
                Ok(b) if b.truncated && !self.body.allow_partial => return Ok(too_large()),
                Ok(b) => (Some(b.prefix), b.truncated, b.body),
                Err(_) => {
                    return Ok(self.refuse(
                        StatusCode::BAD_REQUEST,
                        "request body could not be read\n",
                        "body_read",
                        started,
                    ))
                }
            }
        } else {
            (None, false, body)
        };

        // 5. Decide.
        let peer_id = conn.peer_id.as_ref().map(|p| p.as_str());
        let size = declared_length(&parts.headers);
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (verdict, ticket) = {
            let facts = InputFacts {
                source_address: conn.peer,
                source_principal: peer_id,
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
            };
            self.decider.decide(&facts)
        };

        // 6. Deny: answer locally. 7. Allow: the policy's header changes, the identity
        //    for the app, forward.
        let (decision, ticket) =
            match self
                .decider
                .enforce(verdict, ticket, &mut parts.headers, started)
            {
                Ok(d) => d,
                Err(denied) => return Ok(*denied),
            };
        let caller = Caller::of(&parts.headers, caller_version);
        let to_http2 = self.protocols.http2(conn.app, caller).await;
        let authority = conn.app.to_string();
        let req = Request::from_parts(parts, body);
        let mut resp = Box::pin(self.clients.send("inbound", &authority, to_http2, req)).await;
        if to_http2 && resp.status() == StatusCode::BAD_GATEWAY {
            // Probe again next time: the app may have changed what it speaks.
            self.protocols.forget(conn.app);
        }
        if body_failed.load(std::sync::atomic::Ordering::Relaxed) {
            // The upstream failed because the client's body was malformed.
            return Ok(self.refuse(
                StatusCode::BAD_REQUEST,
                "malformed request body\n",
                "bad_body",
                started,
            ));
        }
        headers::add_headers(resp.headers_mut(), &decision.response_headers_to_add);
        self.decider.finish(ticket, resp.status().as_u16(), started);
        Ok(resp)
    }

    /// A request refused before the policy (malformed), counted as such.
    fn refuse(
        &self,
        status: StatusCode,
        body: &str,
        reason: &'static str,
        started: Instant,
    ) -> Response<ProxyBody> {
        metrics::global()
            .rejected_requests
            .with_label_values(&["inbound", reason])
            .inc();
        self.decider
            .finish(Ticket::refused(), status.as_u16(), started);
        text_response(status, body.to_owned())
    }
}

impl Inbound {
    /// A request whose token is invalid: 401 with `WWW-Authenticate` (RFC 6750),
    /// or 503 when the provider's keys were never available; counted as refused.
    fn unauthenticated(&self, r: &Rejection, started: Instant) -> Response<ProxyBody> {
        let status = r.status();
        let reason = if status == StatusCode::UNAUTHORIZED {
            "invalid_token"
        } else {
            "jwks_unavailable"
        };
        let mut resp = self.refuse(status, &format!("{}\n", r.description()), reason, started);
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(http::header::WWW_AUTHENTICATE, r.www_authenticate());
        }
        resp
    }
}

fn record_tls_failure(reason: &str) {
    metrics::global()
        .tls_handshake_failures
        .with_label_values(&["inbound", reason])
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
