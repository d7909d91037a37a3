//! The shadow policy's metrics: comparisons and drops (counted by the shadow
//! worker) and its own reloads and revision (counted by its store when a
//! revision is installed or fails).

use std::sync::LazyLock;

use prometheus::{IntCounterVec, IntGaugeVec};

use crate::metrics;

/// The shadow metrics, registered in the process registry on first use.
pub(super) struct ShadowMetrics {
    /// `portcullis_policy_shadow_total{direction,agreement}`.
    pub(super) compared: IntCounterVec,
    /// `portcullis_policy_shadow_dropped_total{direction}`.
    pub(super) dropped: IntCounterVec,
    reloads: IntCounterVec,
    revision: IntGaugeVec,
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
        reloads: metrics::counter(
            registry,
            "portcullis_policy_shadow_reloads_total",
            "Shadow policy loads and reloads, by result.",
            &["result"],
        ),
        revision: metrics::gauge_vec(
            registry,
            "portcullis_policy_shadow_revision_info",
            "The loaded shadow policy revision; value is always 1.",
            &["revision"],
        ),
    }
});

/// Counts a shadow reload (`success` or `error`).
pub fn count_reload(result: &str) {
    METRICS.reloads.with_label_values(&[result]).inc();
}

/// Records a newly installed shadow revision.
pub fn installed(old: &str, new: &str) {
    let m = &*METRICS;
    if old != new {
        let _ = m.revision.remove_label_values(&[old]);
    }
    m.revision.with_label_values(&[new]).set(1);
    count_reload("success");
    tracing::info!(revision = new, "shadow policy revision active");
}
