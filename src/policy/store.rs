//! The current policy revision, swapped atomically: [`PolicyStore`] holds the
//! active [`PolicySet`] and installs new ones (with the revision metrics); the
//! request path only loads it.
//!
//! The policy comes from one source: the policy directory or, when
//! `policy.bundle` is configured, a remote OPA bundle. The bundle *replaces* the
//! directory, as with OPA's bundle plugin; a store in bundle mode starts empty
//! (decisions deny with 503 and `/ready` fails) until the first bundle activates.
//! Building revisions and keeping the store current (directory watch, bundle
//! polling, forced reloads: `PolicyStore::load`, `reload`, `watch`) is
//! [`crate::policy::reload`]'s job; a broken revision is never installed.

use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwapOption;
use prometheus::{IntCounterVec, IntGaugeVec};

use crate::metrics;
use crate::policy::engine::PolicySet;
use crate::policy::options::PolicyOptions;

/// Index of the inbound query in every [`PolicySet`] the store builds.
pub const INBOUND: usize = 0;
/// Index of the outbound query.
pub const OUTBOUND: usize = 1;

/// Where the store's revisions come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// The policy directory (`policy.dir`).
    Dir(PathBuf),
    /// A remote bundle (`policy.bundle`), installed by the bundle poller.
    Bundle,
}

/// The metrics a store counts its installs in: the enforced policy's
/// (`portcullis_policy_reloads_total`, `portcullis_policy_revision_info`) or the
/// shadow policy's (`portcullis_policy_shadow_reloads_total`,
/// `portcullis_policy_shadow_revision_info`).
struct RevisionMetrics {
    reloads: &'static IntCounterVec,
    revision: &'static IntGaugeVec,
    /// The log message of an install.
    installed: &'static str,
}

impl RevisionMetrics {
    fn enforced() -> RevisionMetrics {
        let m = metrics::global();
        RevisionMetrics {
            reloads: &m.policy_reloads,
            revision: &m.policy_revision,
            installed: "policy revision active",
        }
    }

    fn shadow() -> RevisionMetrics {
        static SHADOW: LazyLock<(IntCounterVec, IntGaugeVec)> = LazyLock::new(|| {
            let registry = &metrics::global().registry;
            (
                metrics::counter(
                    registry,
                    "portcullis_policy_shadow_reloads_total",
                    "Shadow policy loads and reloads, by result.",
                    &["result"],
                ),
                metrics::gauge_vec(
                    registry,
                    "portcullis_policy_shadow_revision_info",
                    "The loaded shadow policy revision; value is always 1.",
                    &["revision"],
                ),
            )
        });
        RevisionMetrics {
            reloads: &SHADOW.0,
            revision: &SHADOW.1,
            installed: "shadow policy revision active",
        }
    }
}

/// Holds the active [`PolicySet`].
pub struct PolicyStore {
    current: ArcSwapOption<PolicySet>,
    source: PolicySource,
    queries: Vec<String>,
    options: PolicyOptions,
    /// Serialises directory builds so an older build never replaces a newer
    /// one; holds the content fingerprint of the last directory build attempted.
    reloading: Mutex<Option<String>>,
    /// Wakes the bundle poller (a forced reload in bundle mode).
    refresh: tokio::sync::Notify,
    /// Where installs are counted: a shadow policy (`policy.shadow`) has its own
    /// metrics, and is never enforced.
    metrics: RevisionMetrics,
}

impl PolicyStore {
    /// An empty store whose revisions come from a bundle (see [`crate::policy::bundle`]).
    pub fn for_bundle(
        inbound_query: String,
        outbound_query: String,
        options: impl Into<PolicyOptions>,
    ) -> Arc<PolicyStore> {
        Arc::new(PolicyStore::new(
            PolicySource::Bundle,
            inbound_query,
            outbound_query,
            options.into(),
        ))
    }

    pub(super) fn new(
        source: PolicySource,
        inbound_query: String,
        outbound_query: String,
        options: PolicyOptions,
    ) -> PolicyStore {
        PolicyStore {
            current: ArcSwapOption::empty(),
            source,
            queries: vec![inbound_query, outbound_query],
            options,
            reloading: Mutex::new(None),
            refresh: tokio::sync::Notify::new(),
            metrics: RevisionMetrics::enforced(),
        }
    }

    /// A store for the shadow policy (see [`crate::policy::shadow`]), empty until its
    /// first revision loads: from `dir`, or from a bundle when `dir` is `None`.
    pub fn for_shadow(
        dir: Option<PathBuf>,
        inbound_query: String,
        outbound_query: String,
        options: impl Into<PolicyOptions>,
    ) -> Arc<PolicyStore> {
        let source = dir.map_or(PolicySource::Bundle, PolicySource::Dir);
        let mut store = PolicyStore::new(source, inbound_query, outbound_query, options.into());
        store.metrics = RevisionMetrics::shadow();
        Arc::new(store)
    }

    /// The active revision, if any was ever loaded.
    pub fn current(&self) -> Option<Arc<PolicySet>> {
        self.current.load_full()
    }

    /// The revision string of the active set, or `none`.
    pub fn revision(&self) -> String {
        self.current
            .load()
            .as_ref()
            .map(|p| p.revision().to_owned())
            .unwrap_or_else(|| "none".to_owned())
    }

    /// Where revisions come from.
    pub fn source(&self) -> &PolicySource {
        &self.source
    }

    /// The queries every set is compiled for (inbound, outbound).
    pub fn queries(&self) -> &[String] {
        &self.queries
    }

    /// The options every set is built with.
    pub fn options(&self) -> &PolicyOptions {
        &self.options
    }

    /// Serialises directory builds (an older build never replaces a newer one);
    /// the guarded value is the content fingerprint of the last build attempted.
    pub(super) fn begin_build(&self) -> MutexGuard<'_, Option<String>> {
        self.reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The content fingerprint (see [`crate::policy::sources::DirFiles::fingerprint`])
    /// of the directory as of the last build attempted, good or broken.
    pub fn attempted_fingerprint(&self) -> Option<String> {
        self.begin_build().clone()
    }

    /// Counts a failed reload (`portcullis_policy_reloads_total{result="error"}`).
    pub fn count_failure(&self) {
        self.metrics.reloads.with_label_values(&["error"]).inc();
    }

    /// Asks the bundle poller to poll now (a forced reload in bundle mode).
    pub(super) fn request_refresh(&self) {
        self.refresh.notify_one();
    }

    /// Resolves when a forced reload asks the bundle poller to poll now.
    pub async fn refresh_requested(&self) {
        self.refresh.notified().await
    }

    /// Installs an already compiled set (directory reload or bundle), warmed first
    /// ([`PolicySet::warm`]).
    pub fn install(&self, set: PolicySet) {
        set.warm();
        let m = &self.metrics;
        let old = self.revision();
        if old != set.revision() {
            let _ = m.revision.remove_label_values(&[&old]);
        }
        m.revision.with_label_values(&[set.revision()]).set(1);
        m.reloads.with_label_values(&["success"]).inc();
        tracing::info!(revision = set.revision(), "{}", m.installed);
        self.current.store(Some(Arc::new(set)));
    }
}
