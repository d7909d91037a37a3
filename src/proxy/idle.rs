//! Idle HTTP/1.1 keep-alive connections rest without an HTTP parser.
//!
//! hyper's HTTP/1 connection keeps a read buffer (8 kB or more) and a write buffer
//! (8 kB) for its whole life, and its state machine lives in the connection's task.
//! A sidecar holding thousands of idle keep-alive connections pays that for each.
//! Here, once an HTTP/1.x connection has had no request in flight and no byte
//! arrived for [`REST_AFTER`], the [`Lease`] that carries its I/O reports
//! end-of-stream to hyper at a request boundary: hyper ends the connection
//! cleanly, frees its buffers, and gives the socket back instead of closing it (the
//! lease swallows the shutdown). [`rest`] then waits for the next byte with no
//! buffer of its own, and the caller starts a fresh hyper connection with that byte
//! in front. An idle HTTP/1.1 connection and a fresh one are the same to hyper: no
//! request, nothing buffered.
//!
//! Freed heap memory does not leave the process by itself: glibc keeps it for
//! reuse. After connections rest, [`trim_soon`] has the allocator hand whole free
//! pages back to the kernel (`malloc_trim`), at most once a second.
//!
//! Never rested: HTTP/2 (its own framing state), a connection that carries a
//! tunnel (101 or CONNECT), one with a request in flight, one whose next head has
//! started to arrive.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::head_deadline::Activity;

/// How long an HTTP/1.x connection is idle before it rests.
pub const REST_AFTER: Duration = Duration::from_millis(500);

/// Whether a connection may rest: shared by its leases and its request handler.
#[derive(Default)]
pub struct Restable {
    /// A request came as HTTP/1.0 or 1.1 (the connection is not HTTP/2).
    http1: AtomicBool,
}

impl Restable {
    pub fn new() -> Arc<Self> {
        Arc::new(Restable::default())
    }

    /// Called for every request: HTTP/1.x connections may rest between requests.
    pub fn saw(&self, version: http::Version) {
        if version == http::Version::HTTP_11 || version == http::Version::HTTP_10 {
            self.http1.store(true, Ordering::Release);
        }
    }
}

/// Where a lease leaves the I/O when it ends resting.
pub type Slot<I> = Arc<Mutex<Option<I>>>;

/// The I/O of one hyper connection, taken back when the connection rests.
pub struct Lease<I> {
    io: Option<I>,
    /// A byte read while resting, replayed first.
    prefix: Option<u8>,
    slot: Slot<I>,
    activity: Arc<Activity>,
    restable: Arc<Restable>,
    /// Requests begun when bytes last arrived: while no request has begun since,
    /// those bytes start a head that is still arriving, and it is never cut.
    heads_at_read: Option<u64>,
    /// When to look again whether the connection may rest.
    timer: Option<Pin<Box<Sleep>>>,
    resting: bool,
}

impl<I> Lease<I> {
    /// A lease over `io`; if the connection rests, `io` is left in the returned slot.
    pub fn new(
        io: I,
        prefix: Option<u8>,
        activity: Arc<Activity>,
        restable: Arc<Restable>,
    ) -> (Self, Slot<I>) {
        let slot = Arc::new(Mutex::new(None));
        let prefix_heads = prefix.map(|_| activity.heads());
        let lease = Lease {
            io: Some(io),
            prefix,
            slot: slot.clone(),
            activity,
            restable,
            heads_at_read: prefix_heads,
            timer: None,
            resting: false,
        };
        (lease, slot)
    }

    /// How long until the connection may rest (zero: now), or `None` if it never may.
    /// While a request is in flight or a head is arriving, the answer is to look again
    /// after [`REST_AFTER`]: nothing else wakes a read that is pending when the
    /// response finishes.
    fn until_rest(&self) -> Option<Duration> {
        if !self.restable.http1.load(Ordering::Acquire) || self.activity.upgraded() {
            return None;
        }
        let Some(idle) = self.activity.idle_for() else {
            return Some(REST_AFTER);
        };
        // Bytes arrived and no request has begun since: a head is on its way.
        if self
            .heads_at_read
            .is_some_and(|h| h >= self.activity.heads())
        {
            return Some(REST_AFTER);
        }
        Some(REST_AFTER.saturating_sub(idle))
    }
}

impl<I> Drop for Lease<I> {
    fn drop(&mut self) {
        if self.resting {
            if let Some(io) = self.io.take() {
                *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(io);
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Lease<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(b) = this.prefix.take() {
            if buf.remaining() > 0 {
                buf.put_slice(&[b]);
                return Poll::Ready(Ok(()));
            }
            this.prefix = Some(b);
        }
        let Some(io) = this.io.as_mut().filter(|_| !this.resting) else {
            return Poll::Ready(Ok(()));
        };
        let before = buf.filled().len();
        match Pin::new(io).poll_read(cx, buf) {
            Poll::Pending => {}
            ready => {
                if buf.filled().len() > before {
                    this.heads_at_read = Some(this.activity.heads());
                }
                return ready;
            }
        }
        let Some(left) = this.until_rest() else {
            return Poll::Pending;
        };
        if !left.is_zero() {
            let deadline = tokio::time::Instant::now() + left;
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.is_elapsed() || timer.deadline() > deadline {
                timer.as_mut().reset(deadline);
            }
            // Woken by the timer, the caller polls again and this is decided anew.
            let _ = timer.as_mut().poll(cx);
            return Poll::Pending;
        }
        // End-of-stream at a request boundary: hyper closes this connection cleanly.
        this.resting = true;
        this.timer = None;
        trim_soon();
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Lease<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_write(cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.resting {
            // The connection goes on: flush what hyper wrote, keep the socket open.
            return self.poll_flush(cx);
        }
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// Asks for the allocator's free pages to be returned to the kernel within a second.
pub fn trim_soon() {
    static TRIMMER: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    TRIM_WANTED.store(true, Ordering::Release);
    TRIMMER.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("portcullis-trim".to_owned())
            .stack_size(64 * 1024)
            .spawn(|| loop {
                std::thread::sleep(Duration::from_secs(1));
                if TRIM_WANTED.swap(false, Ordering::AcqRel) {
                    trim();
                }
            });
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "no trim thread; freed memory stays with the allocator");
        }
    });
}

static TRIM_WANTED: AtomicBool = AtomicBool::new(false);

fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Takes back the I/O of a connection that rested, if it did.
pub fn take<I>(slot: &Slot<I>) -> Option<I> {
    slot.lock().unwrap_or_else(PoisonError::into_inner).take()
}

/// Waits for the first byte of the next request on a resting connection, holding
/// no buffer. `None` if the peer closed or the read failed.
pub async fn next_byte<I: AsyncRead + Unpin>(io: &mut I) -> Option<u8> {
    let mut one = [0u8; 1];
    match io.read(&mut one).await {
        Ok(1) => Some(one[0]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncWriteExt, DuplexStream};

    fn lease(
        io: DuplexStream,
        activity: &Arc<Activity>,
        restable: &Arc<Restable>,
    ) -> (Lease<DuplexStream>, Slot<DuplexStream>) {
        Lease::new(io, None, activity.clone(), restable.clone())
    }

    /// One request that finished: the connection is idle from now on.
    fn finished_request(activity: &Arc<Activity>) {
        drop(activity.begin());
    }

    #[tokio::test]
    async fn an_idle_http1_connection_rests_and_hands_its_io_back() {
        let (server, mut client) = duplex(64);
        let activity = Activity::new();
        let restable = Restable::new();
        restable.saw(http::Version::HTTP_11);
        finished_request(&activity);
        let (mut l, slot) = lease(server, &activity, &restable);
        let mut buf = [0u8; 8];
        // End-of-stream once the rest delay has passed with nothing to read.
        assert_eq!(l.read(&mut buf).await.unwrap(), 0);
        l.shutdown().await.unwrap();
        drop(l);
        let mut io = take(&slot).expect("the I/O comes back");
        // The shutdown was swallowed: the connection still carries bytes both ways.
        client.write_all(b"GET").await.unwrap();
        assert_eq!(next_byte(&mut io).await, Some(b'G'));
        io.write_all(b"ok").await.unwrap();
        let mut two = [0u8; 2];
        client.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"ok");
        // The next lease replays the byte read while resting.
        let (mut l, _) = Lease::new(io, Some(b'G'), activity.clone(), restable.clone());
        let mut got = Vec::new();
        let mut chunk = [0u8; 8];
        while got.len() < 3 {
            let n = l.read(&mut chunk).await.unwrap();
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(&got, b"GET");
    }

    #[tokio::test]
    async fn a_connection_rests_when_its_request_finishes_after_the_read_went_pending() {
        let (server, _client) = duplex(64);
        let activity = Activity::new();
        let restable = Restable::new();
        restable.saw(http::Version::HTTP_11);
        // The response is still being sent when the parser asks for the next head.
        let in_flight = activity.begin();
        let (mut l, slot) = lease(server, &activity, &restable);
        let finish = tokio::spawn(async move {
            tokio::time::sleep(REST_AFTER / 5).await;
            drop(in_flight);
        });
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(REST_AFTER * 10, l.read(&mut buf)).await;
        assert_eq!(read.expect("the connection never rested").unwrap(), 0);
        finish.await.unwrap();
        drop(l);
        assert!(take(&slot).is_some());
    }

    #[tokio::test]
    async fn connections_that_must_not_rest_keep_waiting() {
        let activity = Activity::new();
        let restable = Restable::new();
        // HTTP/2 (no HTTP/1 request seen).
        restable.saw(http::Version::HTTP_2);
        finished_request(&activity);
        let (server, _client) = duplex(64);
        let (mut l, _) = lease(server, &activity, &restable);
        let mut buf = [0u8; 8];
        let waited = tokio::time::timeout(REST_AFTER * 4, l.read(&mut buf)).await;
        assert!(waited.is_err(), "an HTTP/2 connection rested");

        // A request in flight.
        restable.saw(http::Version::HTTP_11);
        let in_flight = activity.begin();
        let (server, _client) = duplex(64);
        let (mut l, _) = lease(server, &activity, &restable);
        let waited = tokio::time::timeout(REST_AFTER * 4, l.read(&mut buf)).await;
        assert!(
            waited.is_err(),
            "a connection with a request in flight rested"
        );
        drop(in_flight);

        // A tunnel.
        let tunnel = Activity::new();
        finished_request(&tunnel);
        tunnel.mark_upgraded();
        let (server, _client) = duplex(64);
        let (mut l, _) = lease(server, &tunnel, &restable);
        let waited = tokio::time::timeout(REST_AFTER * 4, l.read(&mut buf)).await;
        assert!(waited.is_err(), "a tunnel rested");
    }

    #[tokio::test]
    async fn a_head_that_started_to_arrive_is_not_cut() {
        let activity = Activity::new();
        let restable = Restable::new();
        restable.saw(http::Version::HTTP_11);
        finished_request(&activity);
        let (server, mut client) = duplex(64);
        let (mut l, slot) = lease(server, &activity, &restable);
        client.write_all(b"GE").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(l.read(&mut buf).await.unwrap(), 2);
        // The rest of the head is slow; the lease keeps waiting for it.
        let waited = tokio::time::timeout(REST_AFTER * 4, l.read(&mut buf)).await;
        assert!(waited.is_err(), "a started head was cut");
        drop(l);
        assert!(take(&slot).is_none());
    }
}
