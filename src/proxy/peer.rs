//! Connections from this sidecar to peer sidecars: mTLS with the pod's SVID, the
//! peer's SVID verified (and pinned where configured), HTTP/2 multiplexed and
//! pooled per destination so a burst of requests costs one handshake.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::forward::ProxyBody;
use crate::identity::source::Identity;
use crate::identity::tls::client_config;
use crate::identity::verifier::PeerAuthorization;
use crate::identity::SpiffeId;
use crate::metrics;

pub use crate::identity::tls::{ALPN_PEER_H2, ALPN_TCP};

/// Why a peer connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("no identity loaded")]
    NoIdentity,
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connect to {0}: timed out")]
    Timeout(SocketAddr),
    #[error("mTLS with {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0} presented no SPIFFE ID")]
    NoPeerId(SocketAddr),
    #[error("HTTP/2 with {addr}: {source}")]
    Http2 {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error("{0} did not negotiate HTTP/2")]
    NoH2(SocketAddr),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The peer's identity on an established connection.
#[derive(Clone)]
pub struct PeerConn {
    pub sender: http2::SendRequest<ProxyBody>,
    pub peer_id: SpiffeId,
    /// The peer is a portcullis sidecar (it negotiated `portcullis-h2`): it reads
    /// peer markers. Any other HTTP/2 server (Envoy) gets none.
    pub portcullis: bool,
    /// Which connection of the pool this is (to replace exactly a failed one).
    generation: u64,
}

/// Numbers every pooled connection.
static NEXT_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

type Slot = Arc<tokio::sync::Mutex<Option<PeerConn>>>;

/// Pooled HTTP/2 mTLS connections keyed by destination and pinned identity.
pub struct PeerPool {
    identity: Arc<Identity>,
    connect_timeout: Duration,
    slots: Mutex<HashMap<(SocketAddr, Option<SpiffeId>), Slot>>,
}

impl PeerPool {
    pub fn new(identity: Arc<Identity>, connect_timeout: Duration) -> Self {
        PeerPool {
            identity,
            connect_timeout,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// A ready HTTP/2 connection to `addr`, reusing a live one. Concurrent callers
    /// for the same destination wait for one handshake instead of racing.
    pub async fn http2(
        &self,
        addr: SocketAddr,
        pin: Option<&SpiffeId>,
    ) -> Result<PeerConn, PeerError> {
        self.http2_replacing(addr, pin, None).await
    }

    /// Like [`PeerPool::http2`], but `failed` (a connection that refused a request
    /// without sending it, e.g. after the peer's `GOAWAY`) is not reused: a new
    /// connection replaces it unless another caller already did.
    pub async fn http2_after_failure(
        &self,
        addr: SocketAddr,
        pin: Option<&SpiffeId>,
        failed: &PeerConn,
    ) -> Result<PeerConn, PeerError> {
        self.http2_replacing(addr, pin, Some(failed)).await
    }

    async fn http2_replacing(
        &self,
        addr: SocketAddr,
        pin: Option<&SpiffeId>,
        replacing: Option<&PeerConn>,
    ) -> Result<PeerConn, PeerError> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots
                .entry((addr, pin.cloned()))
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(None)))
                .clone()
        };
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref() {
            let failed = replacing.is_some_and(|f| f.generation == conn.generation);
            if !conn.sender.is_closed() && !failed {
                return Ok(conn.clone());
            }
        }
        let (tls, peer_id) = self.connect_tls(addr, pin, &[ALPN_PEER_H2, b"h2"]).await?;
        let portcullis = match tls.get_ref().1.alpn_protocol() {
            Some(ALPN_PEER_H2) => true,
            Some(b"h2") => false,
            _ => return Err(PeerError::NoH2(addr)),
        };
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|source| PeerError::Http2 { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "peer connection ended");
            }
        });
        let conn = PeerConn {
            sender,
            peer_id,
            portcullis,
            generation: NEXT_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// A new mTLS connection offering `alpn`; returns the peer's verified ID.
    pub async fn connect_tls(
        &self,
        addr: SocketAddr,
        pin: Option<&SpiffeId>,
        alpn: &[&[u8]],
    ) -> Result<(TlsStream<TcpStream>, SpiffeId), PeerError> {
        let loaded = self.identity.current().ok_or(PeerError::NoIdentity)?;
        let authz = match pin {
            Some(id) => PeerAuthorization::Exact([id.clone()].into_iter().collect()),
            None => PeerAuthorization::AnyTrusted,
        };
        let config = client_config(&loaded.svid, self.identity.provider(), authz, alpn)
            .map_err(|e| PeerError::Config(e.to_string()))?;
        drop(loaded);
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(PeerError::Connect { addr, source }),
            Err(_) => return Err(PeerError::Timeout(addr)),
        };
        let _ = tcp.set_nodelay(true);
        // SVID verification ignores the name; an IP name keeps SNI out of the hello.
        let name = ServerName::IpAddress(addr.ip().into());
        let tls = match tokio::time::timeout(
            self.connect_timeout,
            TlsConnector::from(Arc::new(config)).connect(name, tcp),
        )
        .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(source)) => {
                crate::identity::record_handshake_io_failure("outbound", &source);
                return Err(PeerError::Tls { addr, source });
            }
            Err(_) => return Err(PeerError::Timeout(addr)),
        };
        metrics::global()
            .tls_handshakes
            .with_label_values(&["outbound"])
            .inc();
        let peer_id =
            crate::identity::peer_spiffe_id(tls.get_ref().1).ok_or(PeerError::NoPeerId(addr))?;
        Ok((tls, peer_id))
    }
}
