//! Opaque TCP: one decision per connection (an input without `http`), then bytes
//! copied both ways to the app.

use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::decide::{Decider, Verdict};
use super::ConnInfo;
use crate::policy::InputFacts;

/// Decides once, then relays until either side closes. A deny closes the connection.
pub async fn relay<S>(decider: &Decider, conn: &ConnInfo, mut downstream: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let facts = InputFacts {
        source_address: conn.peer,
        source_principal: conn.peer_id.as_ref().map(|p| p.as_str()),
        destination_address: conn.dest,
        destination_principal: conn.local_id.as_deref(),
        http: None,
        jwt: None,
    };
    let (verdict, ticket) = decider.decide(&facts);
    if let Verdict::Deny(d) = verdict {
        tracing::info!(peer = %conn.peer, reason = %d.reason, "opaque connection denied");
        decider.finish(ticket, d.status.as_u16(), started);
        return;
    }
    let mut upstream = match TcpStream::connect(conn.app).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(app = %conn.app, error = %e, "opaque upstream unreachable");
            decider.finish(ticket, 502, started);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    decider.finish(ticket, 200, started);
    if let Err(e) = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
        tracing::debug!(error = %e, "opaque connection ended");
    }
}
