//! Workload identity: SPIFFE IDs, X.509-SVID verification, certificate sources.

pub mod dev_ca;
pub mod profile;
pub mod refusal_log;
pub mod source;
pub mod spiffe_id;
pub mod svid;
pub mod tls;
pub mod verifier;
// The SPIFFE Workload API source.
pub mod workload_api;

pub use dev_ca::{DevCa, DevCaError, IssuedSvid};
pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
pub use svid::{
    certs_from_pem, leaf_info, private_key_from_pem, verify_svid, verify_svid_with, LeafInfo,
    SvidError, SvidRejection, SvidUsage, TrustBundles,
};
pub use verifier::{
    peer_spiffe_id, record_handshake_failure, record_handshake_io_failure, rejection_of,
    rejection_of_io, PeerAuthorization, SvidClientVerifier, SvidServerVerifier,
};
