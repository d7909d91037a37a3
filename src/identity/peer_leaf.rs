//! Who the verified peer of a TLS connection is, from its leaf certificate, worked
//! out once per certificate.
//!
//! Every mTLS connection, in either direction, needs its peer's SPIFFE ID and the
//! certificate's expiry (a resumed session carries the certificate of its first
//! handshake, which may have expired since); inbound also needs its SHA-256 (the XFCC
//! `Hash`). A peer presents the same certificate on every connection until it rotates,
//! so [`PeerLeaves`] keeps those facts per certificate: parsing a certificate was 2 %
//! of the CPU of a resumed handshake. Only certificates that completed a handshake get
//! here (the verifiers checked them), the facts are a pure function of the bytes, and
//! [`verified_peer`] compares the expiry with the clock on every connection. At most
//! [`PeerLeaves::CAPACITY`] certificates are kept; when full the map starts over.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;

use super::rejection::SvidRejection;
use super::spiffe_id::SpiffeId;
use super::x509::leaf_info;

/// The facts of one leaf certificate.
#[derive(Debug, PartialEq, Eq)]
pub struct PeerLeaf {
    pub id: SpiffeId,
    pub not_after: SystemTime,
    /// SHA-256 of the DER, lower-case hex.
    pub sha256_hex: String,
}

impl PeerLeaf {
    fn of(der: &CertificateDer<'_>) -> Result<PeerLeaf, SvidRejection> {
        let info = leaf_info(der)?;
        Ok(PeerLeaf {
            id: info.id,
            not_after: info.not_after,
            sha256_hex: hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der)),
        })
    }
}

/// Leaf facts by certificate.
#[derive(Debug, Default)]
pub struct PeerLeaves {
    known: Mutex<HashMap<Box<[u8]>, Arc<PeerLeaf>>>,
}

impl PeerLeaves {
    /// How many certificates are kept at most.
    pub const CAPACITY: usize = 256;

    /// The facts of `der`: remembered, or worked out and remembered. A certificate
    /// that is not an X.509-SVID leaf is refused and not remembered.
    pub fn get(&self, der: &CertificateDer<'_>) -> Result<Arc<PeerLeaf>, SvidRejection> {
        if let Some(known) = self.lock().get(der.as_ref()) {
            return Ok(known.clone());
        }
        let leaf = Arc::new(PeerLeaf::of(der)?);
        let mut known = self.lock();
        if known.len() >= Self::CAPACITY {
            known.clear();
        }
        known.insert(der.as_ref().into(), leaf.clone());
        Ok(leaf)
    }

    /// How many certificates are remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<[u8]>, Arc<PeerLeaf>>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a connection's peer is not (or no longer) an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerLeafError {
    /// The peer presented no certificate.
    NoCertificate,
    /// Its leaf is not an X.509-SVID leaf.
    NotAnSvid,
    /// Its certificate expired since the session's first handshake.
    Expired,
}

/// The facts of every peer certificate the process has met.
static LEAVES: LazyLock<PeerLeaves> = LazyLock::new(PeerLeaves::default);

/// The verified peer of `conn` (after its handshake): the facts of its leaf, refused
/// when that certificate has expired since.
pub fn verified_peer(conn: &rustls::CommonState) -> Result<Arc<PeerLeaf>, PeerLeafError> {
    let der = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(PeerLeafError::NoCertificate)?;
    let leaf = LEAVES.get(der).map_err(|_| PeerLeafError::NotAnSvid)?;
    if leaf.not_after < SystemTime::now() {
        return Err(PeerLeafError::Expired);
    }
    Ok(leaf)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::identity::dev_ca::DevCa;
    use crate::identity::spiffe_id::TrustDomain;
    use crate::identity::x509::certs_from_pem;

    fn leaf(ca: &DevCa, path: &str) -> CertificateDer<'static> {
        let id = SpiffeId::parse(&format!("spiffe://example.org/{path}")).unwrap();
        let svid = ca.issue(&id, Duration::from_secs(3600)).unwrap();
        certs_from_pem(svid.cert_pem.as_bytes()).unwrap().remove(0)
    }

    #[test]
    fn a_certificate_is_read_once_and_says_what_it_says() {
        let ca = DevCa::generate(&TrustDomain::parse("example.org").unwrap()).unwrap();
        let der = leaf(&ca, "ns/a/sa/client");
        let leaves = PeerLeaves::default();
        let first = leaves.get(&der).unwrap();
        // The same facts as reading it afresh.
        assert_eq!(*first, PeerLeaf::of(&der).unwrap());
        assert_eq!(first.id.as_str(), "spiffe://example.org/ns/a/sa/client");
        assert_eq!(first.sha256_hex.len(), 64);
        // Remembered: the same facts, not read again.
        let again = leaves.get(&der).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        // Another certificate (a rotation) is another entry.
        let other = leaves.get(&leaf(&ca, "ns/a/sa/client")).unwrap();
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(other.id, first.id);
        assert_ne!(other.sha256_hex, first.sha256_hex);
        assert_eq!(leaves.len(), 2);
    }

    #[test]
    fn a_certificate_that_is_not_an_svid_is_refused_and_not_kept() {
        let rcgen::CertifiedKey { cert, .. } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let der = CertificateDer::from(cert.der().to_vec());
        let leaves = PeerLeaves::default();
        assert!(leaves.get(&der).is_err());
        assert!(leaves.is_empty());
    }

    #[test]
    fn the_map_stays_bounded() {
        let ca = DevCa::generate(&TrustDomain::parse("example.org").unwrap()).unwrap();
        let leaves = PeerLeaves::default();
        for i in 0..=PeerLeaves::CAPACITY {
            leaves.get(&leaf(&ca, &format!("ns/a/sa/c{i}"))).unwrap();
            assert!(leaves.len() <= PeerLeaves::CAPACITY);
        }
        // The 257th started the map over.
        assert_eq!(leaves.len(), 1);
    }
}
