//! Which HTTP version an allowed request reaches its upstream with: the version the
//! upstream speaks, never inferred from how the client reached the sidecar alone.
//!
//! Most apps speak only HTTP/1.1 (nginx's default, Python, Node's `http`), while gRPC
//! servers speak only HTTP/2 with prior knowledge (h2c). With `auto` (the default):
//!
//! 1. an HTTP/1.1 upgrade (WebSocket) goes as HTTP/1.1;
//! 2. gRPC (`content-type: application/grpc*`) goes as HTTP/2;
//! 3. a caller that used HTTP/1.x gets HTTP/1.1 — the caller being the app on the other
//!    side of the mesh when a verified portcullis peer says which version it used;
//! 4. a caller that used HTTP/2 gets HTTP/2 only if the upstream's address answers the
//!    HTTP/2 connection preface with a `SETTINGS` frame. The answer is probed on a
//!    connection of its own, cached per address for [`PROBE_TTL`], and probed again
//!    after a request over HTTP/2 fails.
//!
//! `http1` and `http2` fix the version (upgrades still go as HTTP/1.1), for all ports or
//! per port.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{HeaderMap, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use crate::config::AppProtocol;

/// How long a probe's answer is trusted.
pub const PROBE_TTL: Duration = Duration::from_secs(60);

/// How long a probe waits for the upstream to connect and answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

/// The client connection preface (RFC 9113 §3.4) followed by an empty `SETTINGS` frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// What is known about a request when its upstream version is chosen.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// The version the calling application used (a verified peer's word, or the
    /// downstream connection's version).
    pub version: Version,
    /// `content-type: application/grpc*`.
    pub grpc: bool,
    /// An HTTP/1.1 upgrade request.
    pub upgrade: bool,
}

impl Caller {
    /// The facts of a request whose caller used `version`.
    pub fn of(headers: &HeaderMap, version: Version) -> Caller {
        Caller {
            version,
            grpc: super::grpc::is_grpc(headers),
            upgrade: super::headers::is_upgrade(headers),
        }
    }
}

/// The protocol rule for one direction's upstreams, with its probe cache.
pub struct AppProtocols {
    default: AppProtocol,
    ports: BTreeMap<u16, AppProtocol>,
    /// Upstream address → (speaks HTTP/2, when probed).
    probed: Mutex<HashMap<SocketAddr, (bool, Instant)>>,
}

impl AppProtocols {
    pub fn new(default: AppProtocol, ports: BTreeMap<u16, AppProtocol>) -> Self {
        AppProtocols {
            default,
            ports,
            probed: Mutex::new(HashMap::new()),
        }
    }

    /// The rule configured for `port`.
    pub fn configured(&self, port: u16) -> AppProtocol {
        self.ports.get(&port).copied().unwrap_or(self.default)
    }

    /// True when the request goes to `upstream` as HTTP/2.
    pub async fn http2(&self, upstream: SocketAddr, caller: Caller) -> bool {
        if caller.upgrade {
            return false;
        }
        match self.configured(upstream.port()) {
            AppProtocol::Http1 => false,
            AppProtocol::Http2 => true,
            AppProtocol::Auto if caller.grpc => true,
            AppProtocol::Auto if caller.version != Version::HTTP_2 => false,
            AppProtocol::Auto => self.speaks_http2(upstream).await,
        }
    }

    /// Probes `upstream` ahead of the first request that would need it (start-up):
    /// only under `auto`, and only when nothing is cached for it.
    pub async fn warm(&self, upstream: SocketAddr) {
        if self.configured(upstream.port()) == AppProtocol::Auto {
            self.speaks_http2(upstream).await;
        }
    }

    /// Forgets what was probed for `upstream` (a request over HTTP/2 failed there).
    pub fn forget(&self, upstream: SocketAddr) {
        self.lock().remove(&upstream);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, (bool, Instant)>> {
        self.probed.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn speaks_http2(&self, upstream: SocketAddr) -> bool {
        if let Some((h2, at)) = self.lock().get(&upstream) {
            if at.elapsed() < PROBE_TTL {
                return *h2;
            }
        }
        match probe(upstream).await {
            Some(h2) => {
                tracing::debug!(%upstream, http2 = h2, "upstream protocol probed");
                let mut cache = self.lock();
                // Bounded: a transparent sidecar sees few distinct app addresses, but
                // the outbound side could see many.
                if cache.len() >= 4096 {
                    cache.clear();
                }
                cache.insert(upstream, (h2, Instant::now()));
                h2
            }
            // Unreachable: not cached; HTTP/1.1 is the common case, and the request
            // itself reports the failure.
            None => false,
        }
    }
}

/// Sends the HTTP/2 preface and reads the first frame header: `Some(true)` when it is
/// a `SETTINGS` frame, `Some(false)` for anything else (an HTTP/1 error response, a
/// close, silence), `None` when the upstream cannot be reached.
pub async fn probe(upstream: SocketAddr) -> Option<bool> {
    let mut stream = match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(upstream)).await {
        Ok(Ok(s)) => s,
        _ => return None,
    };
    let _ = stream.set_nodelay(true);
    Some(answers_preface(&mut stream).await)
}

/// Sends the HTTP/2 preface on `stream` and tells whether the other side answers with
/// a `SETTINGS` frame; the stream is shut down afterwards (it is a probe only).
pub async fn answers_preface<S>(stream: &mut S) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let answer = tokio::time::timeout(PROBE_TIMEOUT, async {
        stream.write_all(PREFACE).await?;
        stream.flush().await?;
        let mut head = [0u8; 9];
        stream.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(head)
    })
    .await;
    let _ = stream.shutdown().await;
    // A frame header: 24-bit length, type (4 = SETTINGS), flags (no ACK), stream 0.
    matches!(answer, Ok(Ok(h)) if h[3] == 0x04 && h[4] & 0x01 == 0 && h[5..9] == [0, 0, 0, 0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn server(answer: &'static [u8]) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 64];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn probe_tells_settings_from_http1() {
        let h2 = server(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64").await;
        let h1 = server(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await;
        let closes = server(b"").await;
        assert_eq!(probe(h2).await, Some(true));
        assert_eq!(probe(h1).await, Some(false));
        assert_eq!(probe(closes).await, Some(false));
        let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = gone.local_addr().unwrap();
        drop(gone);
        assert_eq!(probe(addr).await, None);
    }

    #[tokio::test]
    async fn warming_probes_once_and_only_under_auto() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = l.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0u8; 64];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00").await;
            }
        });
        let accepted = || accepted.load(std::sync::atomic::Ordering::SeqCst);
        let fixed = AppProtocols::new(AppProtocol::Http1, BTreeMap::new());
        fixed.warm(app).await;
        assert_eq!(accepted(), 0);
        let auto = AppProtocols::new(AppProtocol::Auto, BTreeMap::new());
        auto.warm(app).await;
        assert_eq!(accepted(), 1);
        let h2_caller = Caller {
            version: Version::HTTP_2,
            grpc: false,
            upgrade: false,
        };
        assert!(auto.http2(app, h2_caller).await);
        auto.warm(app).await;
        assert_eq!(accepted(), 1, "the answer is cached");
    }

    #[tokio::test]
    async fn rule_per_request() {
        let h1 = server(b"HTTP/1.1 505 HTTP Version Not Supported\r\n\r\n").await;
        let h2 = server(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00").await;
        let p = AppProtocols::new(AppProtocol::Auto, BTreeMap::new());
        let call = |version, grpc, upgrade| Caller {
            version,
            grpc,
            upgrade,
        };
        assert!(!p.http2(h1, call(Version::HTTP_2, false, false)).await);
        assert!(p.http2(h2, call(Version::HTTP_2, false, false)).await);
        assert!(!p.http2(h2, call(Version::HTTP_11, false, false)).await);
        assert!(p.http2(h1, call(Version::HTTP_11, true, false)).await);
        assert!(!p.http2(h2, call(Version::HTTP_11, false, true)).await);
        let fixed = AppProtocols::new(
            AppProtocol::Http2,
            [(h1.port(), AppProtocol::Http1)].into_iter().collect(),
        );
        assert!(!fixed.http2(h1, call(Version::HTTP_2, true, false)).await);
        assert!(fixed.http2(h2, call(Version::HTTP_11, false, false)).await);
    }
}
