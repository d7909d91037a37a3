//! The current policy revision, swapped atomically; loading and reloading.
//!
//! A new revision is compiled off the request path and installed only if it
//! compiles; a broken one keeps the last good revision, with a log line and
//! `portcullis_policy_reloads_total{result="error"}`.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::engine::{EvalLimits, PolicyError, PolicySet};
use crate::metrics;

/// Index of the inbound query in every [`PolicySet`] the store builds.
pub const INBOUND: usize = 0;
/// Index of the outbound query.
pub const OUTBOUND: usize = 1;

/// Holds the active [`PolicySet`].
pub struct PolicyStore {
    current: ArcSwapOption<PolicySet>,
    dir: PathBuf,
    queries: Vec<String>,
    limits: EvalLimits,
}

impl PolicyStore {
    /// Loads `dir` once; the error names the file and line of the first problem.
    pub fn load(
        dir: PathBuf,
        inbound_query: String,
        outbound_query: String,
        limits: EvalLimits,
    ) -> Result<Arc<PolicyStore>, PolicyError> {
        let store = PolicyStore {
            current: ArcSwapOption::empty(),
            dir,
            queries: vec![inbound_query, outbound_query],
            limits,
        };
        store.reload()?;
        Ok(Arc::new(store))
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

    /// Builds a revision from the directory and installs it if it compiles.
    pub fn reload(&self) -> Result<(), PolicyError> {
        match PolicySet::load_dir(&self.dir, &self.queries, self.limits) {
            Ok(set) => {
                self.install(set);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "policy reload failed; keeping the last good revision");
                metrics::global()
                    .policy_reloads
                    .with_label_values(&["error"])
                    .inc();
                Err(e)
            }
        }
    }

    /// Installs an already compiled set (directory reload or bundle).
    pub fn install(&self, set: PolicySet) {
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
