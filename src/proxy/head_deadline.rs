//! Per-connection request activity, and the deadline on request heads.
//!
//! Every request head must arrive within `limits.header_timeout`: the first from the
//! moment the connection opens, each later HTTP/1.1 head from its first byte on an
//! idle keep-alive connection. A client that dribbles bytes (slowloris) gets
//! `408 Request Timeout` and the connection closes. The HTTP library would close such
//! connections silently, so this wrapper sits between it and the socket (or TLS
//! stream): when the deadline passes before the service has seen the head, it writes
//! the 408 itself and reports end-of-stream to the parser.
//!
//! [`Activity`] also tells the listener how long a connection has had no request in
//! flight, for the idle timeout.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::metrics;

const RESPONSE: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// The HTTP/2 connection preface starts with this; such connections get no
/// per-head deadline after the first (HTTP/2 frames flow while no request is open).
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// Requests seen and in flight on one connection.
pub struct Activity {
    base: Instant,
    heads: AtomicU64,
    in_flight: AtomicUsize,
    /// Milliseconds after `base` when the last request finished.
    idle_since: AtomicU64,
    /// The connection now carries a tunnel (101 or CONNECT), not requests.
    upgraded: AtomicBool,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            base: Instant::now(),
            heads: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
        })
    }

    /// A request head was parsed; the request is in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.heads.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// The response switched protocols: no more request heads on this connection.
    pub fn mark_upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
    }

    fn upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Acquire)
    }

    fn heads(&self) -> u64 {
        self.heads.load(Ordering::Acquire)
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// How long no request has been in flight; `None` while one is.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.busy() {
            return None;
        }
        let since = Duration::from_millis(self.idle_since.load(Ordering::Acquire));
        Some(self.base.elapsed().saturating_sub(since))
    }

    /// Resolves once the connection has been idle for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        loop {
            match self.idle_for() {
                Some(d) if d >= timeout => return,
                Some(d) => tokio::time::sleep(timeout - d).await,
                None => tokio::time::sleep(timeout).await,
            }
        }
    }
}

/// One request in flight: held by the response body until it is finished or dropped.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = u64::try_from(self.0.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.idle_since.store(now, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight until it ends.
pub struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        Tracked {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

enum State {
    /// A head is due: the deadline runs until the count of heads passes `heads`.
    Timing {
        heads: u64,
    },
    /// HTTP/1.1 between requests: the next byte starts the next head's deadline.
    Idle,
    Writing(usize),
    /// After a 408: end-of-stream from now on.
    Closed,
    /// HTTP/2 after its first request, or an upgraded (tunnelled) connection.
    Done,
}

/// An IO stream with a deadline on request heads.
pub struct HeadDeadline<I> {
    inner: I,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    activity: Arc<Activity>,
    state: State,
    /// None until the first bytes tell HTTP/1 from HTTP/2.
    h2: Option<bool>,
    direction: &'static str,
}

impl<I> HeadDeadline<I> {
    pub fn new(
        inner: I,
        timeout: Duration,
        activity: Arc<Activity>,
        direction: &'static str,
    ) -> Self {
        HeadDeadline {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            activity,
            state: State::Timing { heads: 0 },
            h2: None,
            direction,
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> HeadDeadline<I> {
    /// Reads from the socket, noting whether the peer speaks HTTP/2 from its first bytes.
    fn read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<usize>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if self.h2.is_none() && !new.is_empty() {
                    let n = new.len().min(H2_PREFACE_START.len());
                    self.h2 = Some(new[..n] == H2_PREFACE_START[..n]);
                }
                Poll::Ready(Ok(new.len()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeadDeadline<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match this.state {
                State::Timing { heads } => {
                    if this.activity.heads() > heads {
                        this.state = if this.h2 == Some(true) {
                            State::Done
                        } else {
                            State::Idle
                        };
                        continue;
                    }
                    if this.sleep.as_mut().poll(cx).is_ready() {
                        metrics::global()
                            .rejected_requests
                            .with_label_values(&[this.direction, "header_timeout"])
                            .inc();
                        this.state = State::Writing(0);
                        continue;
                    }
                    return this.read(cx, buf).map_ok(|_| ());
                }
                State::Idle if this.activity.upgraded() => this.state = State::Done,
                State::Idle => {
                    let read = this.read(cx, buf);
                    if let Poll::Ready(Ok(n)) = read {
                        // Bytes while no request is in flight start the next head.
                        if n > 0 && !this.activity.busy() {
                            let heads = this.activity.heads();
                            this.sleep.as_mut().reset(Instant::now() + this.timeout);
                            this.state = State::Timing { heads };
                        }
                    }
                    return read.map_ok(|_| ());
                }
                State::Writing(n) if n < RESPONSE.len() => {
                    match Pin::new(&mut this.inner).poll_write(cx, &RESPONSE[n..]) {
                        Poll::Ready(Ok(w)) if w > 0 => this.state = State::Writing(n + w),
                        Poll::Ready(_) => return Poll::Ready(Ok(())),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                State::Writing(_) => {
                    // Flush (TLS buffers), then report end-of-stream to the parser.
                    return match Pin::new(&mut this.inner).poll_flush(cx) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(_) => {
                            this.state = State::Closed;
                            Poll::Ready(Ok(()))
                        }
                    };
                }
                State::Closed => return Poll::Ready(Ok(())),
                State::Done => return Pin::new(&mut this.inner).poll_read(cx, buf),
            }
        }
    }
}

write_through!(HeadDeadline);
