//! The data path: listeners, TLS sniffing, HTTP serving, decisions and forwarding.
//!
//! `inbound` is the request path top to bottom; the other modules are the building
//! blocks it (and the outbound side) share.

/// Implements `AsyncWrite` for a read-side wrapper by passing every write through
/// to its `inner` field unchanged.
macro_rules! write_through {
    ($ty:ident) => {
        impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $ty<I> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }
        }
    };
}

pub mod app_protocol;
pub mod body;
pub mod coalesce;
pub mod decide;

pub mod drain;
pub mod forward;
pub mod grpc;
pub mod handshake;
pub mod head_deadline;
pub mod headers;
pub mod idle;
pub mod inbound;
pub mod listener;
pub mod orig_dst;
pub mod outbound;
pub mod path;
pub mod peer;
pub mod reply;
pub mod sniff;
pub mod tap;
pub mod tcp;
pub mod tunnel;
pub mod warm;

use std::net::SocketAddr;

use http::header::{HeaderName, HOST};
use http::{StatusCode, Version};

pub use self::reply::Refusal;
pub use crate::direction::Direction;
use crate::identity::SpiffeId;

/// What is known about a downstream connection once it is accepted.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The address the client connected to (the original destination when intercepted).
    pub dest: SocketAddr,
    /// Where allowed traffic goes.
    pub app: SocketAddr,
    /// `app` as a URI authority, for the requests forwarded there: formatted once
    /// per connection.
    pub app_authority: Option<http::uri::Authority>,
    /// The client's verified SPIFFE ID (mTLS only).
    pub peer_id: Option<SpiffeId>,
    /// The client is a portcullis sidecar (mTLS with ALPN `portcullis-h2` or
    /// `portcullis-h2t`): the only
    /// client whose peer markers are honoured.
    pub portcullis_peer: bool,
    /// The client is a portcullis sidecar that may open TCP tunnels on this
    /// connection (ALPN `portcullis-h2t`, see [`tunnel`]).
    pub tunnels: Option<Tunnels>,
    /// The `x-forwarded-client-cert` value for this connection's peer (mTLS only):
    /// `By=` own ID, `Hash=` SHA-256 of the peer's leaf, `URI=` peer ID. Built once
    /// per connection.
    pub xfcc: Option<http::HeaderValue>,
    /// This sidecar's own SPIFFE ID.
    pub local_id: Option<String>,
    pub tls: bool,
}

impl ConnInfo {
    /// The same connection with none of the peer's markers honoured and no tunnels.
    pub fn without_markers(&self) -> ConnInfo {
        ConnInfo {
            peer: self.peer,
            dest: self.dest,
            app: self.app,
            app_authority: self.app_authority.clone(),
            peer_id: self.peer_id.clone(),
            portcullis_peer: false,
            tunnels: None,
            xfcc: self.xfcc.clone(),
            local_id: self.local_id.clone(),
            tls: self.tls,
        }
    }
}

/// What the tunnels of one peer connection share.
#[derive(Debug)]
pub struct Tunnels {
    /// Those open now.
    pub open: tunnel::Count,
    /// The connection as each tunnel is served: the same peer, but none of its
    /// markers honoured (a tunnel carries the calling app's bytes). Built once.
    pub conn: std::sync::Arc<ConnInfo>,
}

/// What the first steps of every HTTP request produce, in both directions.
#[derive(Debug)]
pub struct Prelude {
    /// The normalised path-and-query: decided on and forwarded.
    pub path: String,
    pub request_id: String,
    /// `Host`, or the HTTP/2 authority; empty when the request has neither.
    pub host: String,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2`, as the input document names it.
    pub protocol: &'static str,
}

/// Hygiene (spoofable identity headers and `strip_extra` removed), unambiguous
/// framing, one normalised path, and a request ID — in that order, for every
/// request either direction handles.
pub fn prelude(
    parts: &mut http::request::Parts,
    strip_extra: &[HeaderName],
) -> Result<Prelude, Refusal> {
    headers::strip_spoofable(&mut parts.headers, strip_extra);
    headers::check_framing(&parts.headers).map_err(Refusal::ambiguous_framing)?;
    let raw = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let path = path::normalize_path_and_query(raw).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_path",
            format!("bad request path: {e}\n"),
        )
    })?;
    let request_id = headers::ensure_request_id(&mut parts.headers);
    let host = parts
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let protocol = match parts.version {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    Ok(Prelude {
        path,
        request_id,
        host,
        protocol,
    })
}
