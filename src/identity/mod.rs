//! Workload identity: SPIFFE IDs, X.509-SVID verification, certificate sources.

pub mod spiffe_id;

pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
