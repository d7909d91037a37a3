//! Accepting connections and serving HTTP on them: connection limits, TCP_NODELAY,
//! protocol limits, and stopping when draining starts (see [`super::drain`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use super::drain::{ConnLimit, Drain, DrainTrigger};
use super::head_deadline::{Activity, HeadDeadline, InFlight, Tracked};
use super::idle;
use super::reply::{ProxyBody, Refusal};
use crate::config::LimitsConfig;
use crate::direction::Direction;
use crate::metrics;

/// Held for the life of a connection: a connection-limit permit and the open gauge.
pub struct ConnGuard {
    _permit: OwnedSemaphorePermit,
    direction: Direction,
}

impl ConnGuard {
    fn new(permit: OwnedSemaphorePermit, direction: Direction) -> Self {
        metrics::global()
            .open_connections
            .with_label_values(&[direction.as_str()])
            .inc();
        ConnGuard {
            _permit: permit,
            direction,
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        metrics::global()
            .open_connections
            .with_label_values(&[self.direction.as_str()])
            .dec();
    }
}

/// Accepts connections until draining starts; each gets TCP_NODELAY and a permit.
/// Connections over the limit are closed at once and counted.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    direction: Direction,
    limit: ConnLimit,
    mut drain: Drain,
    on_conn: F,
) where
    F: Fn(TcpStream, SocketAddr, ConnGuard) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = drain.signaled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors or similar: back off instead of spinning.
                tracing::warn!(direction = direction.as_str(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match limit.try_acquire() {
            Some(permit) => {
                tokio::spawn(on_conn(stream, peer, ConnGuard::new(permit, direction)));
            }
            None => {
                Refusal::count(direction, "max_connections");
                refuse_over_limit(stream);
            }
        }
    }
}

/// At most this many connections over the limit are answered at once; the rest
/// are closed without a word.
static OVER_LIMIT_ANSWERS: Semaphore = Semaphore::const_new(64);

/// A connection over the limit: a plaintext HTTP client gets `503` with
/// `Retry-After` (instead of a bare reset) if its first bytes arrive within 500 ms;
/// a TLS client, or anything else, is closed.
fn refuse_over_limit(stream: TcpStream) {
    let Ok(permit) = OVER_LIMIT_ANSWERS.try_acquire() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let mut first = [0u8; 1];
        let peeked = tokio::time::timeout(Duration::from_millis(500), stream.peek(&mut first));
        // 0x16 opens a TLS handshake; HTTP/1 methods and the HTTP/2 preface are letters.
        if matches!(peeked.await, Ok(Ok(1))) && first[0].is_ascii_uppercase() {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = stream;
            // Answer, half-close, and read what the client sent until it closes, so
            // that closing with unread bytes does not reset the answer away.
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                stream.write_all(OVER_LIMIT_RESPONSE).await?;
                stream.shutdown().await?;
                let mut sink = [0u8; 4096];
                while stream.read(&mut sink).await? > 0 {}
                Ok::<_, std::io::Error>(())
            })
            .await;
        }
    });
}

const OVER_LIMIT_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n\
connection: close\r\ncontent-type: text/plain\r\ncontent-length: 29\r\n\r\n\
too many connections; retry\r\n";

/// HTTP/1.1 + HTTP/2 server settings shared by every connection of a listener.
#[derive(Clone)]
pub struct HttpServer {
    builder: Arc<auto::Builder<TokioExecutor>>,
    /// For peer sidecars' connections that carry tunnels (ALPN `portcullis-h2t`).
    peer_builder: Arc<auto::Builder<TokioExecutor>>,
    /// Tunnels one such connection may carry at a time.
    pub max_tunnels: usize,
    pub header_timeout: Duration,
    idle_timeout: Duration,
    drain: Drain,
    direction: Direction,
}

impl HttpServer {
    pub fn new(limits: &LimitsConfig, drain: Drain, direction: Direction) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // Every head is bounded by `HeadDeadline` (which answers 408) and idle
            // keep-alive connections by the idle timeout, not by the library.
            .header_read_timeout(None)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .max_headers(limits.max_headers)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(Duration::from_secs(30)));
        // A peer sidecar's connection that carries tunnels: windows sized for them.
        let mut peer_builder = builder.clone();
        peer_builder
            .http2()
            .initial_stream_window_size(super::tunnel::STREAM_WINDOW)
            .initial_connection_window_size(super::tunnel::CONNECTION_WINDOW);
        HttpServer {
            builder: Arc::new(builder),
            peer_builder: Arc::new(peer_builder),
            // Half the streams at most, so HTTP between the sidecars always has room.
            max_tunnels: (limits.max_concurrent_streams as usize / 2)
                .min(super::tunnel::MAX_PER_CONNECTION),
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
            drain,
            direction,
        }
    }

    /// The same server for a peer sidecar's connection that carries tunnels (its
    /// HTTP/2 windows sized for them).
    pub fn for_peer(&self) -> HttpServer {
        HttpServer {
            builder: self.peer_builder.clone(),
            ..self.clone()
        }
    }

    /// Serves HTTP/1.1 (with upgrades) or HTTP/2 on `io` until it closes or drains.
    pub async fn serve<I, F, Fut>(&self, io: I, handler: F)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut:
            Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>> + Send + 'static,
    {
        let activity = Activity::new();
        let mut io = HeadDeadline::new(io, self.header_timeout, activity.clone(), self.direction);
        let tracker = activity.clone();
        let direction = self.direction;
        let restable = idle::Restable::new();
        let saw = restable.clone();
        let handler = Arc::new(move |mut req: Request<Incoming>| {
            saw.saw(req.version());
            let in_flight = tracker.begin();
            let connect = req.method() == http::Method::CONNECT;
            if connect {
                // A tunnel outlives its response: it keeps the connection busy.
                req.extensions_mut().insert(Busy(tracker.clone()));
            }
            // gRPC callers get the sidecar's own refusals as gRPC statuses.
            let grpc = super::grpc::is_grpc(req.headers());
            let tracker = tracker.clone();
            // Framing the parser resolved on its own but another parser could read
            // differently (request smuggling): refused before anything else.
            let ambiguous = tracker.take_ambiguous();
            // Boxed: hyper moves each stream's future into its task (HTTP/2) or
            // along its dispatcher; a request handler's state is kilobytes, a box
            // is a pointer.
            let response = ambiguous.is_none().then(|| Box::pin(handler(req)));
            async move {
                let Some(response) = response else {
                    let why = ambiguous.unwrap_or_default();
                    let mut resp = Refusal::ambiguous_framing(why).answer(direction);
                    resp.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                    if grpc {
                        resp = super::grpc::answer_as_grpc(resp);
                    }
                    return Ok(resp.map(|b| Tracked::new(b, in_flight)));
                };
                let mut resp = response.await?;
                if grpc {
                    resp = super::grpc::answer_as_grpc(resp);
                }
                let status = resp.status();
                if status == http::StatusCode::SWITCHING_PROTOCOLS
                    || (connect && status.is_success())
                {
                    tracker.mark_upgraded();
                }
                Ok::<_, std::convert::Infallible>(resp.map(|b| Tracked::new(b, in_flight)))
            }
        });
        // One hyper connection per round; an idle HTTP/1 connection rests between
        // rounds with no parser or buffers (see `idle`).
        let mut prefix = None;
        let mut drain = self.drain.clone();
        loop {
            let (lease, slot) = idle::Lease::new(io, prefix, activity.clone(), restable.clone());
            // Boxed: the hyper connection's state is freed while the connection rests
            // (inline, it would size the connection's task for its whole life).
            Box::pin(self.serve_round(lease, handler.clone(), &activity, &mut drain)).await;
            io = match idle::take(&slot) {
                Some(io) => io,
                None => return,
            };
            prefix = tokio::select! {
                b = idle::next_byte(&mut io) => b,
                _ = drain.signaled() => None,
                _ = activity.idle(self.idle_timeout) => {
                    self.count_idle_close();
                    None
                }
            };
            if prefix.is_none() {
                let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
                return;
            }
        }
    }

    fn count_idle_close(&self) {
        metrics::global()
            .connections_closed
            .with_label_values(&[self.direction.as_str(), "idle_timeout"])
            .inc();
    }

    /// Serves one hyper connection on `io` until it ends, drains or idles out.
    async fn serve_round<I, H, Fut>(
        &self,
        io: I,
        handler: Arc<H>,
        activity: &Activity,
        drain: &mut Drain,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<Tracked<ProxyBody>>, std::convert::Infallible>>
            + Send
            + 'static,
    {
        let service = service_fn(move |req| handler(req));
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = drain.signaled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            _ = activity.idle(self.idle_timeout) => {
                self.count_idle_close();
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
            // Heads the HTTP/1 parser refused itself (it answered 431 or 400).
            if let Some(reason) = e.downcast_ref::<hyper::Error>().and_then(parse_refusal) {
                Refusal::count(self.direction, reason);
            }
        }
    }
}

/// Lets a tunnel opened by a `CONNECT` keep its connection counted as busy (not
/// idle) for as long as it is open.
#[derive(Clone)]
pub struct Busy(Arc<Activity>);

impl Busy {
    pub fn hold(&self) -> InFlight {
        self.0.hold()
    }
}

/// The `rejected_requests_total` reason for a request head the parser refused.
fn parse_refusal(e: &hyper::Error) -> Option<&'static str> {
    if e.is_parse_too_large() {
        Some("header_too_large")
    } else if e.is_parse() {
        Some("malformed")
    } else {
        None
    }
}
