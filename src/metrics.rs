//! Prometheus metrics: one process-wide registry, every name prefixed `portcullis_`.
//!
//! Metrics are registered once at first use; the admin listener renders them in
//! the text exposition format. Label values are fixed, low-cardinality strings.

use std::sync::LazyLock;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Latency buckets in seconds, from 50 µs to 10 s: sidecar overhead lives at the low end.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Policy evaluation buckets in seconds, from 1 µs to 100 ms.
const EVAL_BUCKETS: &[f64] = &[
    0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
    0.01, 0.1,
];

/// Every metric the sidecar exports.
pub struct Metrics {
    pub registry: Registry,
    /// Requests (or opaque connections) decided, by direction, decision and status class.
    pub requests: IntCounterVec,
    /// End-to-end request latency as seen by the sidecar.
    pub request_duration: HistogramVec,
    /// Time spent building the input and evaluating the policy.
    pub policy_eval_duration: HistogramVec,
    /// Decisions that failed closed: undefined, error, wrong_shape, timeout, no_policy.
    pub policy_errors: IntCounterVec,
    /// Decisions answered from the decision cache (`hit`) or evaluated (`miss`).
    pub policy_decision_cache: IntCounterVec,
    /// TLS handshakes that failed, by direction and reason (SVID rejection reasons included).
    pub tls_handshake_failures: IntCounterVec,
    /// Completed mTLS handshakes, by direction (shows connection reuse).
    pub tls_handshakes: IntCounterVec,
    /// Not-after of the loaded identity certificate, as a Unix timestamp.
    pub identity_cert_expiry: IntGauge,
    /// Certificate (SVID) reloads by result.
    pub identity_reloads: IntCounterVec,
    pub trust_bundle_roots_refused: IntCounterVec,
    /// Policy reloads by result.
    pub policy_reloads: IntCounterVec,
    /// The loaded policy revision, as an info metric (value 1).
    pub policy_revision: IntGaugeVec,
    /// Open downstream connections by direction.
    pub open_connections: IntGaugeVec,
    /// Requests refused before the policy by a limit or a protocol error, by reason.
    pub rejected_requests: IntCounterVec,
    /// Connections the proxy closed on its own (e.g. `idle_timeout`), by reason.
    pub connections_closed: IntCounterVec,
    /// Upstream (app or peer) failures by direction and kind.
    pub upstream_errors: IntCounterVec,
    /// JWT validations by provider and result.
    pub jwt_validations: IntCounterVec,
    /// JWKS fetches by provider and result.
    pub jwks_fetches: IntCounterVec,
    /// Keys held per JWT provider.
    pub jwks_keys: GaugeVec,
    /// Build information (value 1).
    pub build_info: IntGaugeVec,
}

pub(crate) fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} definition is invalid: {e}"));
    register(registry, Box::new(metric.clone()), name);
    metric
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let metric = HistogramVec::new(opts, labels)
        .unwrap_or_else(|e| panic!("metric {name} definition is invalid: {e}"));
    register(registry, Box::new(metric.clone()), name);
    metric
}

pub(crate) fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} definition is invalid: {e}"));
    register(registry, Box::new(metric.clone()), name);
    metric
}

// Registration only fails on duplicate names, a programming error caught by the tests.
fn register(registry: &Registry, metric: Box<dyn prometheus::core::Collector>, name: &str) {
    registry
        .register(metric)
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        register(
            &registry,
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
            "process",
        );
        let identity_cert_expiry = IntGauge::new(
            "portcullis_identity_cert_expiry_timestamp_seconds",
            "Expiry (not-after) of the loaded identity certificate, Unix seconds.",
        )
        .unwrap_or_else(|e| panic!("expiry metric definition is invalid: {e}"));
        register(
            &registry,
            Box::new(identity_cert_expiry.clone()),
            "identity_cert_expiry",
        );
        let jwks_keys = GaugeVec::new(
            Opts::new("portcullis_jwks_keys", "Keys held per JWT provider."),
            &["provider"],
        )
        .unwrap_or_else(|e| panic!("jwks_keys metric definition is invalid: {e}"));
        register(&registry, Box::new(jwks_keys.clone()), "jwks_keys");

        let m = Metrics {
            requests: counter(
                &registry,
                "portcullis_requests_total",
                "Requests decided, by direction, decision and status class.",
                &["direction", "decision", "status_class"],
            ),
            request_duration: histogram(
                &registry,
                "portcullis_request_duration_seconds",
                "Request latency through the sidecar, from request head to response head.",
                &["direction"],
                LATENCY_BUCKETS,
            ),
            policy_eval_duration: histogram(
                &registry,
                "portcullis_policy_evaluation_duration_seconds",
                "Policy decision time: input document build plus evaluation.",
                &["direction"],
                EVAL_BUCKETS,
            ),
            policy_errors: counter(
                &registry,
                "portcullis_policy_errors_total",
                "Decisions that failed closed, by direction and reason.",
                &["direction", "reason"],
            ),
            policy_decision_cache: counter(
                &registry,
                "portcullis_policy_decision_cache_total",
                "Decisions answered from the decision cache (hit) or evaluated (miss), by direction.",
                &["direction", "result"],
            ),
            tls_handshake_failures: counter(
                &registry,
                "portcullis_tls_handshake_failures_total",
                "Failed TLS handshakes, by direction and reason.",
                &["direction", "reason"],
            ),
            tls_handshakes: counter(
                &registry,
                "portcullis_tls_handshakes_total",
                "Completed mTLS handshakes, by direction.",
                &["direction"],
            ),
            identity_cert_expiry,
            identity_reloads: counter(
                &registry,
                "portcullis_identity_reloads_total",
                "Identity certificate loads and reloads, by result and reason (`none` on success).",
                &["result", "reason"],
            ),
            trust_bundle_roots_refused: counter(
                &registry,
                "portcullis_trust_bundle_roots_refused_total",
                "Trust-bundle roots refused when a bundle was loaded, by source and reason.",
                &["source", "reason"],
            ),
            policy_reloads: counter(
                &registry,
                "portcullis_policy_reloads_total",
                "Policy loads and reloads, by result.",
                &["result"],
            ),
            policy_revision: gauge_vec(
                &registry,
                "portcullis_policy_revision_info",
                "The loaded policy revision (content hash); value is always 1.",
                &["revision"],
            ),
            open_connections: gauge_vec(
                &registry,
                "portcullis_open_connections",
                "Open downstream connections, by direction.",
                &["direction"],
            ),
            rejected_requests: counter(
                &registry,
                "portcullis_rejected_requests_total",
                "Requests refused before the policy by a limit or protocol error, by reason.",
                &["direction", "reason"],
            ),
            connections_closed: counter(
                &registry,
                "portcullis_connections_closed_total",
                "Downstream connections the proxy closed on its own, by direction and reason.",
                &["direction", "reason"],
            ),
            upstream_errors: counter(
                &registry,
                "portcullis_upstream_errors_total",
                "Failures reaching the upstream, by direction and kind.",
                &["direction", "kind"],
            ),
            jwt_validations: counter(
                &registry,
                "portcullis_jwt_validations_total",
                "JWT validations, by provider and result.",
                &["provider", "result"],
            ),
            jwks_fetches: counter(
                &registry,
                "portcullis_jwks_fetches_total",
                "JWKS fetches, by provider and result.",
                &["provider", "result"],
            ),
            jwks_keys,
            build_info: gauge_vec(
                &registry,
                "portcullis_build_info",
                "Build information; value is always 1.",
                &["version"],
            ),
            registry,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m
    }

    /// Renders every metric in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "failed to encode metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

/// Status class label for a status code: `2xx`, `4xx`, ...
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_renders_with_prefix() {
        let m = global();
        m.requests
            .with_label_values(&["inbound", "allow", "2xx"])
            .inc();
        let text = m.render();
        assert!(text.contains("portcullis_requests_total{"));
        assert!(text.contains("portcullis_build_info{"));
    }
}
