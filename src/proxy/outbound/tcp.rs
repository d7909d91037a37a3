//! Opaque (non-HTTP) outbound connections: decided once, then relayed — to a peer
//! sidecar in a tunnel on the pooled connection or over an mTLS connection of its
//! own, elsewhere as plain TCP if the policy allows.

use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::{count_upstream_error, unprocessed_by_peer, OutConn, Outbound, Target};
use crate::config::NonMeshAction;
use crate::identity::SpiffeId;
use crate::policy::InputFacts;
use crate::proxy::decide::{Ticket, Verdict};
use crate::proxy::peer::{PeerConn, PeerError, TcpLink};
use crate::proxy::tunnel;

impl Outbound {
    /// Non-HTTP: decide once per connection, then relay (inside the mesh, in a tunnel
    /// on the pooled connection or over an mTLS connection of its own).
    pub(super) async fn relay_tcp(&self, conn: &OutConn, mut app: TcpStream) {
        let started = Instant::now();
        match &conn.target {
            Target::Mesh { addr, pin } => {
                let link = match self.peers.tcp_link(*addr, pin.as_ref()).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(peer = %addr, error = %e, "outbound TCP: peer unreachable");
                        self.decider.finish(Ticket::refused(), 502, started);
                        return;
                    }
                };
                let (verdict, ticket) = self.decider.decide(&tcp_facts(conn, Some(link.peer_id())));
                if !matches!(verdict, Verdict::Allow(_)) {
                    self.decider.finish(ticket, 403, started);
                    return;
                }
                let opened = match link {
                    TcpLink::Tunnel(peer, place) => {
                        self.open_tunnel(*addr, pin.as_ref(), peer, place).await
                    }
                    TcpLink::Own(tls, _) => Ok(Opened::Own(tls)),
                };
                match opened {
                    Ok(Opened::Tunnel(mut t)) => {
                        self.decider.finish(ticket, 200, started);
                        copy(&mut app, &mut t).await;
                    }
                    Ok(Opened::Own(mut tls)) => {
                        self.decider.finish(ticket, 200, started);
                        copy(&mut app, &mut tls).await;
                    }
                    Err(e) => {
                        tracing::warn!(peer = %addr, error = %e, "outbound TCP: peer unreachable");
                        count_upstream_error("connect");
                        self.decider.finish(ticket, 502, started);
                    }
                }
            }
            Target::External { addr } => {
                if self.non_mesh == NonMeshAction::Deny {
                    self.decider.finish(Ticket::refused(), 403, started);
                    return;
                }
                if !self.decide_tcp(conn, None, started) {
                    return;
                }
                match tokio::time::timeout(self.upstream_timeout, TcpStream::connect(addr)).await {
                    Ok(Ok(mut up)) => {
                        let _ = up.set_nodelay(true);
                        copy(&mut app, &mut up).await;
                    }
                    _ => tracing::warn!(%addr, "outbound TCP: destination unreachable"),
                }
            }
        }
    }

    /// A decided opaque connection's tunnel on `peer`'s pooled connection. A stream
    /// the connection refused unsent (the peer is closing it) is opened once more on
    /// a new connection; a tunnel the peer does not open (its limit, an earlier
    /// version behind the same address) becomes an mTLS connection of its own. Both
    /// only to the SPIFFE ID the policy decided on.
    async fn open_tunnel(
        &self,
        addr: SocketAddr,
        pin: Option<&SpiffeId>,
        peer: PeerConn,
        place: tunnel::Entered,
    ) -> Result<Opened, PeerError> {
        let open = |peer: &PeerConn, place| {
            let mut sender = peer.sender.clone();
            async move {
                tokio::time::timeout(
                    self.upstream_timeout,
                    tunnel::open(&mut sender, place, addr),
                )
                .await
                .unwrap_or(Err(tunnel::OpenError::Timeout))
            }
        };
        match open(&peer, place).await {
            Ok(t) => return Ok(Opened::Tunnel(t)),
            Err(tunnel::OpenError::Http(e)) if unprocessed_by_peer(&e) => {
                if let Ok(fresh) = self.peers.http2_after_failure(addr, pin, &peer).await {
                    if let Some(place) = fresh
                        .enter_tunnel()
                        .filter(|_| fresh.peer_id == peer.peer_id)
                    {
                        if let Ok(t) = open(&fresh, place).await {
                            return Ok(Opened::Tunnel(t));
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(peer = %addr, error = %e, "tunnel not opened"),
        }
        let (tls, peer_id) = self.peers.own_tcp(addr, pin).await?;
        if peer_id != peer.peer_id {
            return Err(PeerError::NoPeerId(addr));
        }
        Ok(Opened::Own(tls))
    }

    fn decide_tcp(&self, conn: &OutConn, peer_id: Option<&SpiffeId>, started: Instant) -> bool {
        let (verdict, ticket) = self.decider.decide(&tcp_facts(conn, peer_id));
        let allowed = matches!(verdict, Verdict::Allow(_));
        self.decider
            .finish(ticket, if allowed { 200 } else { 403 }, started);
        allowed
    }
}

/// A decided opaque connection's way to the peer.
enum Opened {
    Tunnel(tunnel::Tunnel),
    Own(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The policy input of an opaque outbound connection.
fn tcp_facts<'a>(conn: &'a OutConn, peer_id: Option<&'a SpiffeId>) -> InputFacts<'a> {
    InputFacts {
        source_address: conn.app,
        source_principal: conn.own_id.as_deref(),
        destination_address: conn.target.addr(),
        destination_principal: peer_id.map(|p| p.as_str()),
        http: None,
        jwt: None,
    }
}

async fn copy<A, B>(a: &mut A, b: &mut B)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    if let Err(e) = tokio::io::copy_bidirectional(a, b).await {
        tracing::debug!(error = %e, "relay ended");
    }
}
