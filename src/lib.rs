//! portcullis: a per-pod sidecar authorization proxy.

pub mod config;
pub mod decision_log;
pub mod identity;
pub mod metrics;
