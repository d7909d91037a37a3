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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::reply::Refusal;
use crate::direction::Direction;

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
    /// Why the head being parsed is ambiguous (`AMBIGUOUS_*`), 0 when it is not.
    ambiguous: AtomicU8,
}

/// `Content-Length` and `Transfer-Encoding` in one head (RFC 9112 §6.3: the parser
/// reads the body as chunked, but another parser on the way could use the length).
const AMBIGUOUS_CL_TE: u8 = 1;
/// A line of the head ends in a bare LF instead of CRLF.
const AMBIGUOUS_BARE_LF: u8 = 2;
/// The request target has a fragment (`#`), which the URI parser drops silently: the
/// path decided on would not be the one the client sent.
const AMBIGUOUS_FRAGMENT: u8 = 3;

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            base: Instant::now(),
            heads: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
            ambiguous: AtomicU8::new(0),
        })
    }

    /// A request head was parsed; the request is in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.heads.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Something other than a request (a tunnel) keeps the connection busy until
    /// the guard drops.
    pub fn hold(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Why the request whose head was just parsed must be refused as ambiguous, if
    /// it must (read once per head).
    pub fn take_ambiguous(&self) -> Option<&'static str> {
        match self.ambiguous.swap(0, Ordering::AcqRel) {
            AMBIGUOUS_CL_TE => Some("both Content-Length and Transfer-Encoding"),
            AMBIGUOUS_BARE_LF => Some("a header line ends in a bare LF"),
            AMBIGUOUS_FRAGMENT => Some("a fragment (#) in the request target"),
            _ => None,
        }
    }

    /// The response switched protocols: no more request heads on this connection.
    pub fn mark_upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
    }

    pub fn upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Acquire)
    }

    /// Request heads parsed on this connection so far.
    pub fn heads(&self) -> u64 {
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

/// Watches the lines of an HTTP/1 request head as its bytes are read, for framing
/// the parser accepts but another parser could read differently. The HTTP library
/// resolves `Content-Length` with `Transfer-Encoding` itself and accepts bare LF line
/// ends, so the service would never know; this tells it, and the request is refused.
#[derive(Default)]
struct HeadScan {
    /// The head ended (or this is not HTTP/1): nothing more to look at.
    done: bool,
    /// Header lines seen so far (the request line is line 0).
    lines: u32,
    /// The current line's first bytes, lower-cased, and its length.
    start: [u8; 18],
    len: usize,
    after_cr: bool,
    content_length: bool,
    transfer_encoding: bool,
    bare_lf: bool,
    /// A `#` in the request line.
    fragment: bool,
}

impl HeadScan {
    /// Consumes head bytes; returns the `AMBIGUOUS_*` verdict once the head ends.
    /// Looks at line ends (found with `memchr`) and the first bytes of each line only.
    fn feed(&mut self, bytes: &[u8]) -> Option<u8> {
        let mut rest = bytes;
        while !self.done && !rest.is_empty() {
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    self.take(&rest[..i]);
                    rest = &rest[i + 1..];
                    if let Some(verdict) = self.end_line() {
                        return Some(verdict);
                    }
                }
                None => {
                    self.take(rest);
                    break;
                }
            }
        }
        None
    }

    /// Bytes of the current line (before its LF, possibly in several reads).
    fn take(&mut self, part: &[u8]) {
        let Some(&last) = part.last() else { return };
        if self.lines == 0 && !self.fragment {
            self.fragment = memchr::memchr(b'#', part).is_some();
        }
        if let Some(room) = self.start.get_mut(self.len..) {
            for (slot, b) in room.iter_mut().zip(part) {
                *slot = b.to_ascii_lowercase();
            }
        }
        self.len += part.len();
        self.after_cr = last == b'\r';
    }

    /// The line ended with an LF.
    fn end_line(&mut self) -> Option<u8> {
        if !self.after_cr {
            self.bare_lf = true;
        }
        // The line without its CR.
        let len = self.len - usize::from(self.after_cr);
        self.after_cr = false;
        self.len = 0;
        if len == 0 {
            // Empty lines before the request line are allowed; after it, the empty
            // line ends the head.
            if self.lines == 0 {
                return None;
            }
            self.done = true;
            return if self.content_length && self.transfer_encoding {
                Some(AMBIGUOUS_CL_TE)
            } else if self.bare_lf {
                Some(AMBIGUOUS_BARE_LF)
            } else if self.fragment {
                Some(AMBIGUOUS_FRAGMENT)
            } else {
                None
            };
        }
        if self.lines > 0 {
            let line = &self.start[..len.min(self.start.len())];
            self.content_length |= line.starts_with(b"content-length:");
            self.transfer_encoding |= line.starts_with(b"transfer-encoding:");
        }
        self.lines += 1;
        None
    }
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
    direction: Direction,
    scan: HeadScan,
}

impl<I> HeadDeadline<I> {
    pub fn new(inner: I, timeout: Duration, activity: Arc<Activity>, direction: Direction) -> Self {
        HeadDeadline {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            activity,
            state: State::Timing { heads: 0 },
            h2: None,
            direction,
            scan: HeadScan::default(),
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> HeadDeadline<I> {
    /// Reads from the socket, noting whether the peer speaks HTTP/2 from its first bytes.
    /// With `head`, the bytes belong to a request head that is due: they are scanned.
    fn read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        head: bool,
    ) -> Poll<io::Result<usize>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if self.h2.is_none() && !new.is_empty() {
                    let n = new.len().min(H2_PREFACE_START.len());
                    let h2 = new[..n] == H2_PREFACE_START[..n];
                    self.h2 = Some(h2);
                    self.scan.done = h2;
                }
                if head {
                    if let Some(why) = self.scan.feed(new) {
                        self.activity.ambiguous.store(why, Ordering::Release);
                    }
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
                        Refusal::count(this.direction, "header_timeout");
                        this.state = State::Writing(0);
                        continue;
                    }
                    return this.read(cx, buf, true).map_ok(|_| ());
                }
                State::Idle if this.activity.upgraded() => this.state = State::Done,
                State::Idle => {
                    let before = buf.filled().len();
                    let read = this.read(cx, buf, false);
                    if let Poll::Ready(Ok(n)) = read {
                        // Bytes while no request is in flight start the next head.
                        if n > 0 && !this.activity.busy() {
                            let heads = this.activity.heads();
                            this.sleep.as_mut().reset(Instant::now() + this.timeout);
                            this.state = State::Timing { heads };
                            this.scan = HeadScan::default();
                            if let Some(why) = this.scan.feed(&buf.filled()[before..]) {
                                this.activity.ambiguous.store(why, Ordering::Release);
                            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(head: &[u8], split: usize) -> Option<u8> {
        let mut scan = HeadScan::default();
        let (a, b) = head.split_at(split.min(head.len()));
        scan.feed(a).or_else(|| scan.feed(b))
    }

    #[test]
    fn head_scan_finds_ambiguous_framing_across_reads() {
        let cl_te = b"POST / HTTP/1.1\r\nHost: b\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let bare_lf = b"GET / HTTP/1.1\r\nHost: b\nX: 1\r\n\r\n";
        let fine = b"\r\nPOST / HTTP/1.1\r\nHost: b\r\nContent-Length: 5\r\nX-Transfer-Encoding: y\r\n\r\nhello";
        for split in 0..cl_te.len() {
            assert_eq!(verdict(cl_te, split), Some(AMBIGUOUS_CL_TE), "{split}");
        }
        for split in 0..bare_lf.len() {
            assert_eq!(verdict(bare_lf, split), Some(AMBIGUOUS_BARE_LF), "{split}");
        }
        for split in 0..fine.len() {
            assert_eq!(verdict(fine, split), None, "{split}");
        }
        let fragment = b"GET /a?b=1#frag HTTP/1.1\r\nHost: b\r\nX-Ref: a#b\r\n\r\n";
        for split in 0..fragment.len() {
            assert_eq!(
                verdict(fragment, split),
                Some(AMBIGUOUS_FRAGMENT),
                "{split}"
            );
        }
        // A `#` in a header value is not a fragment.
        assert_eq!(verdict(b"GET /a HTTP/1.1\r\nX-Ref: a#b\r\n\r\n", 5), None);
        // Body bytes after the head are not read as header lines.
        let mut scan = HeadScan::default();
        assert_eq!(
            scan.feed(b"POST / HTTP/1.1\r\nContent-Length: 30\r\n\r\n"),
            None
        );
        assert_eq!(scan.feed(b"Transfer-Encoding: chunked\r\n\r\n"), None);
    }
}
