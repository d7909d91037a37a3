//! Connections from this sidecar to peer sidecars: mTLS with the pod's SVID, the
//! peer's SVID verified (and pinned where configured), HTTP/2 multiplexed and
//! pooled per destination so a burst of requests costs one handshake.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::forward::ProxyBody;
use super::tunnel::{Count, Entered};
use crate::direction::Direction;
use crate::identity::tls::client_config;
use crate::identity::tls::{Identity, Loaded};
use crate::identity::verifier::PeerAuthorization;
use crate::identity::SpiffeId;
use crate::metrics;
use rustls::ClientConfig;

pub use crate::identity::tls::{ALPN_PEER_H2, ALPN_PEER_TUNNEL, ALPN_TCP};

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
    #[error("HTTP with {addr}: {source}")]
    Http2 {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error("{0} negotiated an unknown protocol")]
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
    /// The peer takes TCP tunnels on this connection (it negotiated
    /// `portcullis-h2t`); `None` otherwise.
    pub tunnels: Option<Count>,
    /// Which connection of the pool this is (to replace exactly a failed one).
    generation: u64,
}

impl PeerConn {
    /// A place for one more tunnel on this connection, if its peer takes them and
    /// it has room.
    pub fn enter_tunnel(&self) -> Option<Entered> {
        self.tunnels
            .as_ref()?
            .enter(super::tunnel::MAX_PER_CONNECTION)
    }
}

/// An HTTP/1.1 connection to a peer that negotiated no HTTP/2 (ALPN `http/1.1` or
/// none, e.g. Envoy with its TLS defaults). Kept for reuse once its response is done.
pub struct Http1Peer {
    pub sender: http1::SendRequest<ProxyBody>,
    pub peer_id: SpiffeId,
}

/// A connection to a peer, as the peer agreed to speak.
pub enum PeerLink {
    /// Multiplexed HTTP/2, shared by every request to the destination.
    H2(PeerConn),
    /// HTTP/1.1, one request at a time.
    H1(Http1Peer),
}

impl PeerLink {
    /// The peer's verified SPIFFE ID.
    pub fn peer_id(&self) -> &SpiffeId {
        match self {
            PeerLink::H2(c) => &c.peer_id,
            PeerLink::H1(c) => &c.peer_id,
        }
    }
}

/// How one opaque connection reaches a peer sidecar.
pub enum TcpLink {
    /// A place for a tunnel on the pooled connection (ALPN `portcullis-h2t`).
    Tunnel(PeerConn, Entered),
    /// An mTLS connection of its own (ALPN `portcullis-tcp`), and the peer's ID.
    Own(Box<TlsStream<TcpStream>>, SpiffeId),
}

impl TcpLink {
    /// The peer's verified SPIFFE ID.
    pub fn peer_id(&self) -> &SpiffeId {
        match self {
            TcpLink::Tunnel(c, _) => &c.peer_id,
            TcpLink::Own(_, id) => id,
        }
    }
}

/// How long a peer found without tunnels gets connections of their own before
/// it is asked again.
const WITHOUT_TUNNELS_FOR: Duration = Duration::from_secs(60);

/// Idle HTTP/1.1 peer connections kept per destination.
const HTTP1_IDLE_PER_PEER: usize = 32;

type Key = (SocketAddr, Option<SpiffeId>);

/// Numbers every pooled connection.
static NEXT_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

type Slot = Arc<tokio::sync::Mutex<Option<PeerConn>>>;

/// Pooled HTTP/2 mTLS connections keyed by destination and pinned identity.
pub struct PeerPool {
    identity: Arc<Identity>,
    connect_timeout: Duration,
    slots: Mutex<HashMap<Key, Slot>>,
    /// HTTP/1.1 connections to peers without HTTP/2, returned after use.
    http1: Mutex<HashMap<Key, Vec<Http1Peer>>>,
    /// Peers that negotiate no ALPN: whether they answer the HTTP/2 preface.
    no_alpn_h2: Mutex<HashMap<Key, bool>>,
    /// Peers found not to take tunnels, and since when.
    without_tunnels: Mutex<HashMap<Key, std::time::Instant>>,
    /// Client configurations per pinned ID and ALPN list, built once per identity
    /// rotation (the identity they were built from is remembered). Reusing them
    /// also lets TLS sessions be resumed between sidecars.
    configs: Mutex<HashMap<ConfigKey, CachedConfig>>,
}

/// A pinned ID (or none) and the ALPN protocols offered.
type ConfigKey = (Option<SpiffeId>, Vec<Vec<u8>>);

/// A client configuration and the loaded identity it presents.
struct CachedConfig {
    /// Compared by address only; the `Weak` keeps the address from being reused.
    built_from: std::sync::Weak<Loaded>,
    config: Arc<ClientConfig>,
}

impl PeerPool {
    pub fn new(identity: Arc<Identity>, connect_timeout: Duration) -> Self {
        PeerPool {
            identity,
            connect_timeout,
            slots: Mutex::new(HashMap::new()),
            http1: Mutex::new(HashMap::new()),
            no_alpn_h2: Mutex::new(HashMap::new()),
            without_tunnels: Mutex::new(HashMap::new()),
            configs: Mutex::new(HashMap::new()),
        }
    }

    /// A connection to `addr`: the live HTTP/2 one, shared; else an idle HTTP/1.1 one
    /// to a peer that does not speak HTTP/2; else a new one, HTTP/2 if the peer
    /// negotiates it (`portcullis-h2` or `h2`), HTTP/1.1 if it negotiates `http/1.1`
    /// or no ALPN at all (RFC 9113 §3.2: HTTP/2 over TLS needs ALPN). Concurrent
    /// callers for the same destination wait for one handshake instead of racing.
    pub async fn link(
        &self,
        addr: SocketAddr,
        pin: Option<&SpiffeId>,
    ) -> Result<PeerLink, PeerError> {
        if let Some(idle) = self.idle_http1(addr, pin) {
            return Ok(PeerLink::H1(idle));
        }
        self.http2_replacing(addr, pin, None).await
    }

    /// Opens the connection a first request to `addr` would open (HTTP/2 kept in
    /// its slot, HTTP/1.1 kept idle), so that request does not pay for the
    /// handshake. Best effort: a failure is logged at debug and the connection is
    /// opened on first use as before.
    pub async fn warm(&self, addr: SocketAddr, pin: &SpiffeId) {
        match self.link(addr, Some(pin)).await {
            Ok(PeerLink::H1(conn)) => self.give_back(addr, Some(pin), conn),
            Ok(PeerLink::H2(_)) => {}
            Err(e) => tracing::debug!(%addr, error = %e, "route upstream not warmed"),
        }
    }

    /// [`PeerPool::warm`] for a `tcp` route: the pooled connection if the peer takes
    /// tunnels; a peer that does not gets one mTLS connection closed at once.
    pub async fn warm_tcp(&self, addr: SocketAddr, pin: &SpiffeId) {
        if let Err(e) = self.tcp_link(addr, Some(pin)).await {
            tracing::debug!(%addr, error = %e, "route upstream not warmed");
        }
    }

    /// Returns an HTTP/1.1 connection after its request was sent; it is reused once
    /// its response has been read.
    pub fn give_back(&self, addr: SocketAddr, pin: Option<&SpiffeId>, conn: Http1Peer) {
        if conn.sender.is_closed() {
            return;
        }
        let mut idle = self.http1.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry((addr, pin.cloned())).or_default();
        if list.len() < HTTP1_IDLE_PER_PEER {
            list.push(conn);
        }
    }

    /// The client configuration for `pin` and `alpn` under the current identity,
    /// built at most once per rotation.
    fn client_config(
        &self,
        pin: Option<&SpiffeId>,
        alpn: &[&[u8]],
    ) -> Result<Arc<ClientConfig>, PeerError> {
        let loaded = self.identity.current().ok_or(PeerError::NoIdentity)?;
        let key = (pin.cloned(), alpn.iter().map(|p| p.to_vec()).collect());
        let mut configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = configs.get(&key) {
            if std::ptr::eq(c.built_from.as_ptr(), Arc::as_ptr(&loaded)) {
                return Ok(c.config.clone());
            }
        }
        let authz = match pin {
            Some(id) => PeerAuthorization::Exact([id.clone()].into_iter().collect()),
            None => PeerAuthorization::AnyTrusted,
        };
        let config = Arc::new(
            client_config(&loaded.svid, self.identity.provider(), authz, alpn)
                .map_err(|e| PeerError::Config(e.to_string()))?,
        );
        if configs.len() >= 1024 {
            configs.clear();
        }
        configs.insert(
            key,
            CachedConfig {
                built_from: Arc::downgrade(&loaded),
                config: config.clone(),
            },
        );
        Ok(config)
    }

    async fn answers_http2_without_alpn(&self, addr: SocketAddr, pin: Option<&SpiffeId>) -> bool {
        let key = (addr, pin.cloned());
        let known = self
            .no_alpn_h2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied();
        if let Some(h2) = known {
            return h2;
        }
        let h2 = match self.connect_tls(addr, pin, &[]).await {
            Ok((mut probe, _)) => super::app_protocol::answers_preface(&mut probe).await,
            Err(_) => return false,
        };
        tracing::debug!(%addr, http2 = h2, "peer without ALPN probed for HTTP/2");
        let mut known = self.no_alpn_h2.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= 4096 {
            known.clear();
        }
        known.insert(key, h2);
        h2
    }

    fn idle_http1(&self, addr: SocketAddr, pin: Option<&SpiffeId>) -> Option<Http1Peer> {
        let mut idle = self.http1.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&(addr, pin.cloned()))?;
        list.retain(|c| !c.sender.is_closed());
        let i = list.iter().position(|c| c.sender.is_ready())?;
        Some(list.swap_remove(i))
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
        match self.http2_replacing(addr, pin, Some(failed)).await? {
            PeerLink::H2(c) => Ok(c),
            PeerLink::H1(_) => Err(PeerError::NoH2(addr)),
        }
    }

    async fn http2_replacing(
        &self,
        addr: SocketAddr,
        pin: Option<&SpiffeId>,
        replacing: Option<&PeerConn>,
    ) -> Result<PeerLink, PeerError> {
        let slot = self.slot(addr, pin);
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref() {
            let failed = replacing.is_some_and(|f| f.generation == conn.generation);
            if !conn.sender.is_closed() && !failed {
                return Ok(PeerLink::H2(conn.clone()));
            }
        }
        let (tls, peer_id) = self
            .connect_tls(
                addr,
                pin,
                &[ALPN_PEER_TUNNEL, ALPN_PEER_H2, b"h2", b"http/1.1"],
            )
            .await?;
        let alpn = tls.get_ref().1.alpn_protocol();
        let tunnels = (alpn == Some(ALPN_PEER_TUNNEL)).then(Count::default);
        let portcullis = match alpn {
            Some(ALPN_PEER_TUNNEL | ALPN_PEER_H2) => true,
            Some(b"h2") => false,
            // No ALPN: a server that reads the HTTP/2 preface anyway (Envoy's
            // automatic codec) is asked once on a connection of its own, so gRPC,
            // which needs HTTP/2, still works; the answer is remembered.
            None if self.answers_http2_without_alpn(addr, pin).await => false,
            Some(b"http/1.1") | None => {
                drop(guard);
                let (sender, conn) = http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(|source| PeerError::Http2 { addr, source })?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%addr, error = %e, "peer HTTP/1.1 connection ended");
                    }
                });
                return Ok(PeerLink::H1(Http1Peer { sender, peer_id }));
            }
            Some(_) => return Err(PeerError::NoH2(addr)),
        };
        let conn = start_h2(addr, tls, peer_id, portcullis, tunnels).await?;
        *guard = Some(conn.clone());
        Ok(PeerLink::H2(conn))
    }

    fn slot(&self, addr: SocketAddr, pin: Option<&SpiffeId>) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry((addr, pin.cloned()))
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(None)))
            .clone()
    }

    /// How an opaque connection to `addr` reaches the peer: a place on the pooled
    /// connection if the peer takes tunnels and it has room, else an mTLS connection
    /// of its own. Without a live pooled connection, one handshake offers both
    /// (`portcullis-h2t`, `portcullis-tcp`): the peer's answer either starts the pooled
    /// connection or is the connection, so a peer that cannot tunnel (an earlier
    /// version, or a port it relays raw) never receives HTTP/2 on a TCP route's
    /// behalf. A peer found without tunnels is remembered for a minute.
    pub async fn tcp_link(
        &self,
        addr: SocketAddr,
        pin: Option<&SpiffeId>,
    ) -> Result<TcpLink, PeerError> {
        if !self.known_without_tunnels(addr, pin) {
            let slot = self.slot(addr, pin);
            let mut guard = slot.lock().await;
            match guard.as_ref().filter(|c| !c.sender.is_closed()) {
                Some(conn) => {
                    if let Some(place) = conn.enter_tunnel() {
                        return Ok(TcpLink::Tunnel(conn.clone(), place));
                    }
                    if conn.tunnels.is_none() {
                        self.remember_without_tunnels(addr, pin);
                    }
                }
                None => {
                    let (tls, peer_id) = self
                        .connect_tls(addr, pin, &[ALPN_PEER_TUNNEL, ALPN_TCP])
                        .await?;
                    if tls.get_ref().1.alpn_protocol() != Some(ALPN_PEER_TUNNEL) {
                        self.remember_without_tunnels(addr, pin);
                        return Ok(TcpLink::Own(Box::new(tls), peer_id));
                    }
                    let conn = start_h2(addr, tls, peer_id, true, Some(Count::default())).await?;
                    *guard = Some(conn.clone());
                    let place = conn.enter_tunnel().ok_or(PeerError::NoH2(addr))?;
                    return Ok(TcpLink::Tunnel(conn, place));
                }
            }
        }
        let (tls, peer_id) = self.own_tcp(addr, pin).await?;
        Ok(TcpLink::Own(tls, peer_id))
    }

    /// An mTLS connection of its own for one opaque connection (ALPN `portcullis-tcp`).
    pub async fn own_tcp(
        &self,
        addr: SocketAddr,
        pin: Option<&SpiffeId>,
    ) -> Result<(Box<TlsStream<TcpStream>>, SpiffeId), PeerError> {
        let (tls, peer_id) = self.connect_tls(addr, pin, &[ALPN_TCP]).await?;
        Ok((Box::new(tls), peer_id))
    }

    fn known_without_tunnels(&self, addr: SocketAddr, pin: Option<&SpiffeId>) -> bool {
        let known = self
            .without_tunnels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        known
            .get(&(addr, pin.cloned()))
            .is_some_and(|at| at.elapsed() < WITHOUT_TUNNELS_FOR)
    }

    fn remember_without_tunnels(&self, addr: SocketAddr, pin: Option<&SpiffeId>) {
        let mut known = self
            .without_tunnels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if known.len() >= 4096 {
            known.clear();
        }
        known.insert((addr, pin.cloned()), std::time::Instant::now());
    }

    /// A new mTLS connection offering `alpn`; returns the peer's verified ID.
    pub async fn connect_tls(
        &self,
        addr: SocketAddr,
        pin: Option<&SpiffeId>,
        alpn: &[&[u8]],
    ) -> Result<(TlsStream<TcpStream>, SpiffeId), PeerError> {
        let config = self.client_config(pin, alpn)?;
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
            super::handshake::in_turns(TlsConnector::from(config).connect(name, tcp)),
        )
        .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(source)) => {
                crate::identity::record_handshake_io_failure(Direction::Outbound.as_str(), &source);
                return Err(PeerError::Tls { addr, source });
            }
            Err(_) => return Err(PeerError::Timeout(addr)),
        };
        let m = metrics::global();
        m.tls_handshakes
            .with_label_values(&[Direction::Outbound.as_str()])
            .inc();
        if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            m.tls_resumed_handshakes
                .with_label_values(&[Direction::Outbound.as_str()])
                .inc();
        }
        let peer_id = match crate::identity::peer_leaf::verified_peer(tls.get_ref().1) {
            Ok(leaf) => leaf.id.clone(),
            Err(crate::identity::peer_leaf::PeerLeafError::Expired) => {
                m.tls_handshake_failures
                    .with_label_values(&[Direction::Outbound.as_str(), "expired_session"])
                    .inc();
                return Err(PeerError::NoPeerId(addr));
            }
            Err(_) => return Err(PeerError::NoPeerId(addr)),
        };
        Ok((tls, peer_id))
    }
}

/// HTTP/2 on a new peer connection, its connection task spawned. A connection that
/// carries tunnels gets receive windows sized for them (see [`super::tunnel`]).
async fn start_h2(
    addr: SocketAddr,
    tls: TlsStream<TcpStream>,
    peer_id: SpiffeId,
    portcullis: bool,
    tunnels: Option<Count>,
) -> Result<PeerConn, PeerError> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
    if tunnels.is_some() {
        builder
            .initial_stream_window_size(super::tunnel::STREAM_WINDOW)
            .initial_connection_window_size(super::tunnel::CONNECTION_WINDOW);
    }
    let (sender, conn) = builder
        .handshake(TokioIo::new(tls))
        .await
        .map_err(|source| PeerError::Http2 { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%addr, error = %e, "peer connection ended");
        }
    });
    Ok(PeerConn {
        sender,
        peer_id,
        portcullis,
        tunnels,
        generation: NEXT_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    })
}
