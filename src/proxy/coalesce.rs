//! The session tickets of an accepted TLS 1.3 connection go out with the first reply.
//!
//! A TLS 1.3 server sends its session tickets as soon as it has read the client's
//! `Finished`: one more write, one more TCP segment and one more wake-up of the
//! client, for every new connection. The client never waits for them (RFC 8446
//! §4.6.1: they may come at any time after the handshake), so [`Coalesce`] holds
//! them and puts them in front of the next bytes the connection writes (the reply,
//! HTTP/2's `SETTINGS`), in the same `writev`.
//!
//! During the handshake ([`Stage::Handshake`]) every write is held until the
//! handshake would wait for the peer (a read that is not ready), and a flush does not
//! send: nothing held is ever waited on, and a flight still goes out as one write.
//! Once the handshake is done, [`Coalesce::handshake_done`] either keeps what is
//! held for the next write or the shutdown (TLS 1.3: only tickets can be left; a
//! flush does not send them, as HTTP servers flush after reading a request, long
//! before the reply), or sends it at once (TLS 1.2 ends with the server's
//! `Finished`, which the client does wait for). A connection that never writes again
//! never sends its tickets: its client cannot resume, which is all a ticket is for.
//! After the first write the wrapper passes everything through.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Inside the handshake: writes wait for the next read that would block.
    Handshake,
    /// After a TLS 1.3 handshake: what is held waits for the next write.
    Deferred,
    /// Everything passes straight through.
    Through,
}

/// An I/O stream whose writes may wait to go out with the next ones.
#[derive(Debug)]
pub struct Coalesce<IO> {
    inner: IO,
    held: Vec<u8>,
    /// How much of `held` is already written.
    sent: usize,
    stage: Stage,
}

/// At most this many of the caller's slices go into one `writev` behind the held bytes.
const MAX_SLICES: usize = 15;

impl<IO> Coalesce<IO> {
    /// Wraps a stream whose TLS handshake is about to start.
    pub fn new(inner: IO) -> Self {
        Coalesce {
            inner,
            held: Vec::new(),
            sent: 0,
            stage: Stage::Handshake,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &IO {
        &self.inner
    }

    /// Where the stream is.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// How many bytes wait to be written.
    pub fn held(&self) -> usize {
        self.held.len() - self.sent
    }

    fn clear(&mut self) {
        self.held = Vec::new();
        self.sent = 0;
        if self.stage == Stage::Deferred {
            self.stage = Stage::Through;
        }
    }
}

impl<IO: AsyncWrite + Unpin> Coalesce<IO> {
    /// The handshake completed: with `defer`, what is held waits for the next write;
    /// otherwise it is sent now.
    pub async fn handshake_done(&mut self, defer: bool) -> io::Result<()> {
        if defer && self.held() > 0 {
            self.stage = Stage::Deferred;
            return Ok(());
        }
        std::future::poll_fn(|cx| self.poll_send_held(cx)).await?;
        self.stage = Stage::Through;
        Ok(())
    }

    /// One attempt to send what is held without waiting (an alert before the
    /// stream is dropped on a failed handshake).
    pub fn send_held_now(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        let _ = self.poll_send_held(&mut cx);
    }

    /// Writes what is held; ready when nothing is left.
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.held() > 0 {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.clear();
        Poll::Ready(Ok(()))
    }

    /// Writes the held bytes and then `bufs`, in as few calls as the socket allows;
    /// returns how much of `bufs` was written.
    fn poll_write_behind(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let wanted: usize = bufs.iter().map(|b| b.len()).sum();
        while self.held() > 0 {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES + 1];
            slices[0] = IoSlice::new(&self.held[self.sent..]);
            let mut count = 1;
            for b in bufs.iter().filter(|b| !b.is_empty()).take(MAX_SLICES) {
                slices[count] = *b;
                count += 1;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let left = self.held();
            if n < left {
                self.sent += n;
                continue;
            }
            self.clear();
            if n > left || wanted == 0 {
                return Poll::Ready(Ok(n - left));
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesce<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if read.is_pending() && this.stage == Stage::Handshake && this.held() > 0 {
            // About to wait for the peer, who may be waiting for this.
            ready!(this.poll_send_held(cx))?;
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Coalesce<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.stage == Stage::Through {
            return Pin::new(&mut self.get_mut().inner).poll_write(cx, buf);
        }
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.stage {
            Stage::Handshake => {
                let mut n = 0;
                for b in bufs {
                    this.held.extend_from_slice(b);
                    n += b.len();
                }
                Poll::Ready(Ok(n))
            }
            Stage::Deferred => this.poll_write_behind(cx, bufs),
            Stage::Through => Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stage != Stage::Through || self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.stage {
            // Sent before the next wait for the peer (see `poll_read`).
            Stage::Handshake => Poll::Ready(Ok(())),
            // Only tickets are held, which no one waits for; HTTP servers flush
            // after every read, long before the reply.
            Stage::Deferred | Stage::Through => Pin::new(&mut this.inner).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "coalesce_tests.rs"]
mod tests;
