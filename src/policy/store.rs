//! The current policy revision, swapped atomically; loading and reloading.
//!
//! A new revision is compiled off the request path and installed only if it
//! compiles; a broken one keeps the last good revision, with a log line and
//! `portcullis_policy_reloads_total{result="error"}`.
//!
//! The policy comes from one source: the policy directory (watched, see
//! [`super::watch`]) or, when `policy.bundle` is configured, a remote OPA bundle
//! (polled, see [`super::bundle`]). The bundle *replaces* the directory, as with
//! OPA's bundle plugin; a store in bundle mode starts empty (decisions deny with
//! 503 and `/ready` fails) until the first bundle activates.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use super::engine::{PolicyError, PolicyOptions, PolicySet};
use crate::metrics;

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
    /// A shadow policy (`policy.shadow`): counted in its own metrics, never enforced.
    shadow: bool,
}

impl PolicyStore {
    /// Loads `dir` once; the error names the file and line of the first problem.
    pub fn load(
        dir: PathBuf,
        inbound_query: String,
        outbound_query: String,
        options: impl Into<PolicyOptions>,
    ) -> Result<Arc<PolicyStore>, PolicyError> {
        let store = PolicyStore::new(
            PolicySource::Dir(dir),
            inbound_query,
            outbound_query,
            options.into(),
        );
        store.reload()?;
        Ok(Arc::new(store))
    }

    /// An empty store whose revisions come from a bundle (see [`super::bundle`]).
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

    fn new(
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
            shadow: false,
        }
    }

    /// A store for the shadow policy (see [`super::shadow`]), empty until its
    /// first revision loads: from `dir`, or from a bundle when `dir` is `None`.
    pub fn for_shadow(
        dir: Option<PathBuf>,
        inbound_query: String,
        outbound_query: String,
        options: impl Into<PolicyOptions>,
    ) -> Arc<PolicyStore> {
        let source = dir.map_or(PolicySource::Bundle, PolicySource::Dir);
        let mut store = PolicyStore::new(source, inbound_query, outbound_query, options.into());
        store.shadow = true;
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

    /// Builds a revision from the directory and installs it if it compiles.
    /// Blocking (compiles): call it from `spawn_blocking` on a runtime. In
    /// bundle mode it asks the bundle poller to poll now and returns at once.
    pub fn reload(&self) -> Result<(), PolicyError> {
        let dir = match &self.source {
            PolicySource::Dir(dir) => dir,
            PolicySource::Bundle => {
                self.refresh.notify_one();
                return Ok(());
            }
        };
        let mut attempted = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Fingerprint first: a change racing the build is seen by the next check.
        *attempted = super::watch::fingerprint(dir).ok();
        match PolicySet::load_dir(dir, &self.queries, self.options.clone()) {
            Ok(set) => {
                self.install(set);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "policy reload failed; keeping the last good revision");
                self.count_failure();
                Err(e)
            }
        }
    }

    /// The content fingerprint (see [`super::watch::fingerprint`]) of the
    /// directory as of the last build attempted, good or broken.
    pub fn attempted_fingerprint(&self) -> Option<String> {
        self.reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Counts a failed reload (`portcullis_policy_reloads_total{result="error"}`).
    pub fn count_failure(&self) {
        if self.shadow {
            super::shadow::count_reload("error");
            return;
        }
        metrics::global()
            .policy_reloads
            .with_label_values(&["error"])
            .inc();
    }

    /// Resolves when a forced reload asks the bundle poller to poll now.
    pub async fn refresh_requested(&self) {
        self.refresh.notified().await
    }

    /// Starts the policy directory watcher (see [`super::watch`]) on the
    /// current runtime; a no-op in bundle mode.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> Option<tokio::task::JoinHandle<()>> {
        match &self.source {
            PolicySource::Dir(dir) => Some(tokio::spawn(super::watch::watch_dir(
                self.clone(),
                dir.clone(),
                interval,
            ))),
            PolicySource::Bundle => None,
        }
    }

    /// Installs an already compiled set (directory reload or bundle).
    pub fn install(&self, set: PolicySet) {
        if self.shadow {
            super::shadow::installed(&self.revision(), set.revision());
            self.current.store(Some(Arc::new(set)));
            return;
        }
        let m = metrics::global();
        let old = self.revision();
        if old != set.revision() {
            let _ = m.policy_revision.remove_label_values(&[&old]);
        }
        m.policy_revision
            .with_label_values(&[set.revision()])
            .set(1);
        m.policy_reloads.with_label_values(&["success"]).inc();
        tracing::info!(revision = set.revision(), "policy revision active");
        self.current.store(Some(Arc::new(set)));
    }
}
