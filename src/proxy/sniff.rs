//! Protocol sniffing: is a connection's first data HTTP? Used where the protocol is
//! not declared — outbound connections from the app, and inbound connections a peer
//! sidecar opened as opaque TCP on a port this sidecar does not treat as opaque.
//!
//! [`Prefixed`] replays the bytes read while sniffing, so the HTTP server or the
//! relay that takes the stream over sees it from its first byte.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    Http,
    Other,
    /// Too few bytes to tell.
    NeedMore,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Outbound detection, from the app's first bytes: the HTTP/2 preface, or an
/// upper-case method (up to 12 letters) and a space. Anything else is carried as TCP.
pub fn classify_outbound(b: &[u8]) -> Sniffed {
    if H2_PREFACE.starts_with(b) && b.len() < H2_PREFACE.len() {
        return Sniffed::NeedMore;
    }
    if b.starts_with(H2_PREFACE) {
        return Sniffed::Http;
    }
    for (i, c) in b.iter().enumerate() {
        match c {
            b'A'..=b'Z' if i < 12 => continue,
            b' ' if i >= 3 => return Sniffed::Http,
            _ => return Sniffed::Other,
        }
    }
    if b.len() >= 12 {
        Sniffed::Other
    } else {
        Sniffed::NeedMore
    }
}

/// Inbound check, from a peer's first bytes: anything an HTTP/1 server could read as
/// a request line — optional empty lines (RFC 9112 §2.2), then any method token
/// (`tchar`, any case, up to 32) and a space — or the HTTP/2 preface. Deliberately
/// broader than [`classify_outbound`]: whatever an app might parse as HTTP must be
/// served as HTTP (decided per request, identity headers set by the sidecar), never
/// relayed as raw bytes.
pub fn classify_inbound(b: &[u8]) -> Sniffed {
    let start = b.iter().take_while(|c| matches!(c, b'\r' | b'\n')).count();
    let b = &b[start..];
    if b.is_empty() {
        return Sniffed::NeedMore;
    }
    if H2_PREFACE.starts_with(b) || b.starts_with(H2_PREFACE) {
        return if b.len() < H2_PREFACE.len() {
            Sniffed::NeedMore
        } else {
            Sniffed::Http
        };
    }
    for (i, &c) in b.iter().enumerate() {
        if c == b' ' && i > 0 {
            return Sniffed::Http;
        }
        if !is_tchar(c) || i >= 32 {
            return Sniffed::Other;
        }
    }
    Sniffed::NeedMore
}

/// RFC 9110 §5.6.2 token characters.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Reads from `io` until `classify` decides or `limit` bytes arrived (then `Other`).
/// `None` when the stream ends, fails or stays silent for `wait` before deciding.
pub async fn sniff<S>(
    io: &mut S,
    wait: Duration,
    limit: usize,
    classify: fn(&[u8]) -> Sniffed,
) -> Option<(Sniffed, Bytes)>
where
    S: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(limit);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let mut chunk = [0u8; 64];
        let room = (limit - buf.len()).min(chunk.len());
        let n = match tokio::time::timeout_at(deadline, io.read(&mut chunk[..room])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        match classify(&buf) {
            Sniffed::NeedMore if buf.len() < limit => continue,
            Sniffed::NeedMore => return Some((Sniffed::Other, buf.into())),
            s => return Some((s, buf.into())),
        }
    }
}

/// A stream that first yields bytes already read from it.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

write_through!(Prefixed);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_detection() {
        use Sniffed::*;
        assert_eq!(classify_outbound(b"GET / HTTP/1.1\r\n"), Http);
        assert_eq!(classify_outbound(b"DELETE /x"), Http);
        assert_eq!(classify_outbound(b"PRI * HTTP/2.0\r\n"), Http);
        assert_eq!(classify_outbound(b"PRI"), NeedMore);
        assert_eq!(classify_outbound(b"GE"), NeedMore);
        assert_eq!(classify_outbound(b"\x16\x03\x01\x02"), Other);
        assert_eq!(classify_outbound(b"\0\0\0\x08\x04\xd2\x16\x2f"), Other);
        assert_eq!(classify_outbound(b"ABCDEFGHIJKLMNOP"), Other);
        assert_eq!(classify_outbound(b"get / HTTP/1.1"), Other);
    }

    #[test]
    fn inbound_check_is_broader() {
        use Sniffed::*;
        for http in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"get / HTTP/1.1",
            b"\r\n\r\nPOST /x",
            b"M-SEARCH * HTTP/1.1",
            b"PRI * HTTP/2.0\r\n\r\nSM",
            b"X ",
        ] {
            assert_eq!(classify_inbound(http), Http, "{http:?}");
        }
        for other in [
            &b"\x16\x03\x01\x02"[..],
            b"\0\0\0\x08\x04\xd2",
            b" GET /",
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFGHIJ",
            b"{\"json\": 1}",
        ] {
            assert_eq!(classify_inbound(other), Other, "{other:?}");
        }
        for more in [&b""[..], b"\r\n", b"GET", b"PRI * HT"] {
            assert_eq!(classify_inbound(more), NeedMore, "{more:?}");
        }
    }

    #[tokio::test]
    async fn prefixed_replays_then_reads_on() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"GET / HTTP/1.1\r\n")
            .await
            .unwrap();
        let mut b = b;
        let (kind, seen) = sniff(&mut b, Duration::from_secs(1), 64, classify_inbound)
            .await
            .unwrap();
        assert_eq!(kind, Sniffed::Http);
        drop(a);
        let mut all = Vec::new();
        Prefixed::new(seen, b).read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn silence_and_eof_decide_nothing() {
        let (_a, mut b) = tokio::io::duplex(64);
        assert!(
            sniff(&mut b, Duration::from_millis(20), 64, classify_inbound)
                .await
                .is_none()
        );
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        assert!(sniff(&mut b, Duration::from_secs(1), 64, classify_inbound)
            .await
            .is_none());
    }
}
