//! The first request head must arrive within `limits.header_timeout`; a client that
//! dribbles bytes (slowloris) gets `408 Request Timeout` and the connection closes.
//!
//! The HTTP library closes such connections silently, so this wrapper sits between it
//! and the socket (or TLS stream): when the deadline passes before the service has
//! seen a request, it writes the 408 itself and reports end-of-stream to the parser.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::metrics;

const RESPONSE: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// Set by the service when the first request head has been parsed.
#[derive(Clone, Default)]
pub struct HeadSeen(Arc<AtomicBool>);

impl HeadSeen {
    pub fn mark(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn seen(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

enum State {
    Waiting,
    Writing(usize),
    Done,
}

/// An IO stream with a deadline for the first request head.
pub struct HeadDeadline<I> {
    inner: I,
    sleep: Pin<Box<Sleep>>,
    seen: HeadSeen,
    state: State,
    direction: &'static str,
}

impl<I> HeadDeadline<I> {
    pub fn new(inner: I, timeout: Duration, seen: HeadSeen, direction: &'static str) -> Self {
        HeadDeadline {
            inner,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            seen,
            state: State::Waiting,
            direction,
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
                State::Waiting => {
                    if this.seen.seen() {
                        this.state = State::Done;
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
                    return Pin::new(&mut this.inner).poll_read(cx, buf);
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
                        Poll::Ready(_) => Poll::Ready(Ok(())),
                    };
                }
                State::Done => return Pin::new(&mut this.inner).poll_read(cx, buf),
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for HeadDeadline<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
