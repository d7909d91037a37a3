//! portcullis: a per-pod sidecar authorization proxy.

pub mod identity;
pub mod metrics;
