//! Workload identity: SPIFFE IDs, X.509-SVID verification, certificate sources.
//!
//! Data flows one way: [`spiffe_id`] and [`rejection`] (the vocabulary) → [`profile`]
//! (RFC 5280 rules) → [`x509`] (trust bundles, path validation) → [`svid`] (the own
//! SVID from PEM, identity errors) → [`tls`] (the current [`Identity`], the crypto
//! provider, rustls configurations per rotation; [`verifier`] for the handshakes,
//! [`sessions`] for the client's resumption tickets) →
//! the sources ([`source`]: files, dev CA; [`workload_api`]).

pub mod dev_ca;
pub mod peer_leaf;
pub mod profile;
pub mod refusal_log;
pub mod rejection;
pub mod sessions;
pub mod source;
pub mod spiffe_id;
pub mod svid;
pub mod tls;
pub mod verifier;
// The SPIFFE Workload API source.
pub mod workload_api;
pub mod x509;

pub use dev_ca::{DevCa, DevCaError, IssuedSvid};
pub use rejection::{SvidRejection, SvidUsage};
pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
pub use svid::{IdentityError, Svid, SvidPem};
pub use tls::{crypto_provider, Identity};
pub use verifier::{
    record_handshake_failure, record_handshake_io_failure, rejection_of, rejection_of_io,
    PeerAuthorization, SvidClientVerifier, SvidServerVerifier,
};
pub use x509::{
    certs_from_pem, leaf_info, private_key_from_pem, verify_svid, verify_svid_with, LeafInfo,
    SvidError, TrustBundles,
};
