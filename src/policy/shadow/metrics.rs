//! The shadow policy's comparison metrics: comparisons and drops, counted by the
//! shadow worker. Its reloads and revision are counted by its store
//! ([`crate::policy::store`]) like the enforced policy's.

use std::sync::LazyLock;

use prometheus::IntCounterVec;

use crate::metrics;

/// The shadow metrics, registered in the process registry on first use.
pub(super) struct ShadowMetrics {
    /// `portcullis_policy_shadow_total{direction,agreement}`.
    pub(super) compared: IntCounterVec,
    /// `portcullis_policy_shadow_dropped_total{direction}`.
    pub(super) dropped: IntCounterVec,
}

pub(super) static METRICS: LazyLock<ShadowMetrics> = LazyLock::new(|| {
    let registry = &metrics::global().registry;
    ShadowMetrics {
        compared: metrics::counter(
            registry,
            "portcullis_policy_shadow_total",
            "Decisions compared with the shadow policy, by direction and agreement (agree, allow_to_deny, deny_to_allow, changed).",
            &["direction", "agreement"],
        ),
        dropped: metrics::counter(
            registry,
            "portcullis_policy_shadow_dropped_total",
            "Shadow comparisons dropped because the shadow queue was full, by direction.",
            &["direction"],
        ),
    }
});
