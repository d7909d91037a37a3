//! TCP tunnels between sidecars: an opaque connection rides as one HTTP/2 `CONNECT`
//! stream (RFC 9113 §8.5) on the pooled mTLS connection to the peer, instead of a
//! TCP connection and an mTLS handshake of its own.
//!
//! Only a peer that negotiated ALPN `portcullis-h2t` is sent tunnels, and only on
//! such a connection does the inbound side accept them, and only when the request
//! carries [`MARKER`], which the prelude strips from every request an app or a
//! client sends (so an app's own `CONNECT` is forwarded as HTTP, never taken as a
//! tunnel). The peer's identity is the pooled connection's; the inbound side decides
//! and relays each tunnel as it does an opaque connection of its own.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HeaderName;
use http::{Method, Request, StatusCode, Uri};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::head_deadline::InFlight;
use super::reply::ProxyBody;

/// Marks a `CONNECT` as a tunnel opened by a peer sidecar.
pub const MARKER: HeaderName = HeaderName::from_static("x-portcullis-tunnel");

/// Most tunnels one pooled connection carries at a time; a connection beyond that
/// gets an mTLS connection of its own (ALPN `portcullis-tcp`), as before tunnels.
pub const MAX_PER_CONNECTION: usize = 64;

/// Receive window of each HTTP/2 stream, on the listeners and between sidecars.
pub const STREAM_WINDOW: u32 = 256 * 1024;

/// Receive window of each HTTP/2 connection: every tunnel's stream window and 1 MiB
/// more, so tunnels whose reader stalls (an app that stops reading) cannot use up
/// the window the connection's other streams need.
pub const CONNECTION_WINDOW: u32 = MAX_PER_CONNECTION as u32 * STREAM_WINDOW + 1024 * 1024;

/// Tunnels open on one pooled connection.
#[derive(Clone, Debug, Default)]
pub struct Count(Arc<AtomicUsize>);

impl Count {
    /// Counts one more tunnel, unless `limit` are open already.
    pub fn enter(&self, limit: usize) -> Option<Entered> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(Entered(self.0.clone()))
    }
}

/// One tunnel counted until it is dropped.
pub struct Entered(Arc<AtomicUsize>);

impl Drop for Entered {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("peer answered {0}")]
    Refused(StatusCode),
    #[error("bad authority: {0}")]
    Authority(#[from] http::Error),
    #[error("the connection carries as many tunnels as it may")]
    Full,
    #[error("timed out")]
    Timeout,
    #[error("the peer's new connection has another identity")]
    IdentityChanged,
}

/// An open tunnel, read and written like the connection it stands for.
///
/// Dropped, it is closed the way a TCP connection is, not reset: its sending half
/// is ended (if it was not) and what the peer still sends is read and discarded
/// until the peer ends its half too, for at most [`LINGER`]. A stream dropped
/// with a half open is reset instead, and the peer's frames that were already on
/// the way then count against its HTTP/2 library's limit on streams it has to
/// reset for protocol errors (1,024 by default), after which it closes the whole
/// connection.
pub struct Tunnel {
    /// The stream, and what it holds until it is closed, lingering included: its
    /// place in its connection's count of tunnels and, inbound, the connection's
    /// busy mark. `None` once dropped.
    open: Option<(TokioIo<Upgraded>, Held)>,
}

/// What a tunnel holds until it is closed.
type Held = (Option<Entered>, Option<InFlight>);

/// How long a dropped tunnel waits for the peer to end its half.
pub const LINGER: std::time::Duration = std::time::Duration::from_secs(5);

impl Tunnel {
    fn new(io: Upgraded, held: Held) -> Tunnel {
        Tunnel {
            open: Some((TokioIo::new(io), held)),
        }
    }

    fn io(&mut self) -> io::Result<&mut TokioIo<Upgraded>> {
        self.open
            .as_mut()
            .map(|(io, _)| io)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let (Some((mut io, held)), Ok(rt)) =
            (self.open.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        rt.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _held = held;
            let close = async {
                // An error here: the half was ended already.
                let _ = io.shutdown().await;
                let mut sink = [0u8; 4096];
                while io.read(&mut sink).await? > 0 {}
                Ok::<_, io::Error>(())
            };
            let _ = tokio::time::timeout(LINGER, close).await;
        });
    }
}

/// Opens a tunnel to `authority` on a pooled connection whose peer takes them, in
/// the place `entered` holds on it.
pub async fn open(
    sender: &mut hyper::client::conn::http2::SendRequest<ProxyBody>,
    entered: Entered,
    authority: SocketAddr,
) -> Result<Tunnel, OpenError> {
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri(Uri::builder().authority(authority.to_string()).build()?)
        .header(MARKER, "tcp")
        .body(super::reply::full(bytes::Bytes::new()))?;
    let resp = sender.send_request(req).await?;
    if !resp.status().is_success() {
        return Err(OpenError::Refused(resp.status()));
    }
    let io = hyper::upgrade::on(resp).await?;
    Ok(Tunnel::new(io, (Some(entered), None)))
}

/// Whether an inbound request opens a tunnel: a `CONNECT` with [`MARKER`] on a
/// connection whose peer negotiated tunnels (checked by the caller).
pub fn requested<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT && req.headers().contains_key(MARKER)
}

/// The inbound side's answer to a tunnel request, and the tunnel once the answer
/// is sent; `None` if the stream ended first. `held` stays with the tunnel.
pub fn accept<B>(
    req: Request<B>,
    held: Held,
) -> (
    http::Response<ProxyBody>,
    impl std::future::Future<Output = Option<Tunnel>>,
) {
    let upgrade = hyper::upgrade::on(req);
    let mut resp = http::Response::new(super::reply::full(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::OK;
    let io = async move {
        match upgrade.await {
            Ok(io) => Some(Tunnel::new(io, held)),
            Err(e) => {
                tracing::debug!(error = %e, "tunnel ended before it opened");
                None
            }
        }
    };
    (resp, io)
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.io()?).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.io()?).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.io()?).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.io()?).poll_shutdown(cx)
    }
}
