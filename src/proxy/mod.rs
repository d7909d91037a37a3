//! The data path: listeners, TLS sniffing, HTTP serving, decisions and forwarding.
//!
//! `inbound` is the request path top to bottom; the other modules are the building
//! blocks it (and the outbound side) share.

pub mod body;
pub mod decide;
pub mod forward;
pub mod head_deadline;
pub mod headers;
pub mod inbound;
pub mod listener;
pub mod orig_dst;
pub mod outbound;
pub mod path;
pub mod peer;
pub mod tcp;

use std::net::SocketAddr;

use crate::identity::SpiffeId;

/// What is known about a downstream connection once it is accepted.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The address the client connected to (the original destination when intercepted).
    pub dest: SocketAddr,
    /// Where allowed traffic goes.
    pub app: SocketAddr,
    /// The client's verified SPIFFE ID (mTLS only).
    pub peer_id: Option<SpiffeId>,
    /// Hex SHA-256 of the client's leaf certificate (mTLS only).
    pub peer_cert_hash: Option<String>,
    /// This sidecar's own SPIFFE ID.
    pub local_id: Option<String>,
    pub tls: bool,
}
