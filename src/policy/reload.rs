//! Keeping the policy store current: building revisions from the policy
//! directory (at start-up, on `SIGHUP` and when the directory changes) and
//! polling a bundle server. Compilation never happens on the request path; a
//! broken revision keeps the last good one, with a log line and
//! `portcullis_policy_reloads_total{result="error"}`.
//!
//! **Directory watch.** Every `policy.watch_interval` the watcher reads the
//! directory once ([`DirFiles::read`]) and compares its content fingerprint with
//! the one of the last build the store attempted
//! ([`PolicyStore::attempted_fingerprint`], recorded *before* each build so a
//! change racing a build is never missed). When it differs, the files already
//! read are compiled on a blocking thread. Content rather than modification times
//! makes it robust for Kubernetes ConfigMap volumes, where `authz.rego` is a link
//! to `..data/authz.rego` and an update swaps the hidden `..data` link
//! atomically. The same broken content is not retried until it changes again.
//!
//! **Bundle polling.** [`BundlePoller`] fetches the bundle every `poll` with
//! `If-None-Match` (a `304 Not Modified` costs nothing), builds the new revision
//! on a blocking thread and installs it; a download, unpack or compile failure
//! keeps the last good bundle.
//!
//! **Forced reload** (`SIGHUP`): [`PolicyStore::reload`] rebuilds the directory,
//! or in bundle mode wakes the poller, which polls at once without the ETag.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::policy::bundle::{Bundle, BundleClient, BundleError, BundleLimits, Fetched};
use crate::policy::engine::PolicySet;
use crate::policy::options::{PolicyError, PolicyOptions};
use crate::policy::sources::DirFiles;
use crate::policy::store::{PolicySource, PolicyStore};

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

    /// Builds a revision from the directory and installs it if it compiles.
    /// Blocking (compiles): call it from `spawn_blocking` on a runtime. In
    /// bundle mode it asks the bundle poller to poll now and returns at once.
    pub fn reload(&self) -> Result<(), PolicyError> {
        let dir = match self.source() {
            PolicySource::Dir(dir) => dir,
            PolicySource::Bundle => {
                self.request_refresh();
                return Ok(());
            }
        };
        let mut attempted = self.begin_build();
        let read = DirFiles::read(dir, false);
        // Fingerprint first: a change racing the build is seen by the next check.
        *attempted = read.as_ref().ok().map(DirFiles::fingerprint);
        let built =
            read.and_then(|files| PolicySet::load(files, self.queries(), self.options().clone()));
        self.install_or_count(dir, built)
    }

    /// Reads the directory once and, when its content differs from the last build
    /// attempted, builds from what was read. An unreadable directory is returned
    /// (nothing is built or counted); a build failure is logged and counted.
    fn reload_if_changed(&self, dir: &Path) -> Result<(), PolicyError> {
        let mut attempted = self.begin_build();
        let files = DirFiles::read(dir, false)?;
        let current = files.fingerprint();
        if attempted.as_deref() == Some(current.as_str()) {
            return Ok(());
        }
        tracing::info!(dir = %dir.display(), fingerprint = current.get(..12).unwrap_or(&current), "policy directory changed; reloading");
        // Recorded before the build: the same broken content is not retried.
        *attempted = Some(current);
        let built = PolicySet::load(files, self.queries(), self.options().clone());
        let _ = self.install_or_count(dir, built);
        Ok(())
    }

    /// Installs a built set, or logs and counts the failure.
    fn install_or_count(
        &self,
        dir: &Path,
        built: Result<PolicySet, PolicyError>,
    ) -> Result<(), PolicyError> {
        match built {
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

    /// Starts the policy directory watcher as a task owned by `tasks`; a no-op
    /// in bundle mode.
    pub fn watch(self: &Arc<Self>, interval: Duration, tasks: &crate::tasks::Tasks) {
        if let PolicySource::Dir(dir) = self.source() {
            tasks.spawn_loop(
                "policy-watch",
                watch_dir(self.clone(), dir.clone(), interval),
            );
        }
    }
}

/// Looks at `dir` every `interval` and rebuilds `store` when its content differs
/// from what the store last tried to build. Runs until the runtime stops.
async fn watch_dir(store: Arc<PolicyStore>, dir: PathBuf, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = false;
    loop {
        ticker.tick().await;
        let (s, d) = (store.clone(), dir.clone());
        match tokio::task::spawn_blocking(move || s.reload_if_changed(&d)).await {
            Ok(Ok(())) => reported = false,
            Ok(Err(e)) => {
                if !reported {
                    tracing::warn!(error = %e, "policy directory cannot be read; keeping the last good revision");
                    reported = true;
                }
            }
            Err(_) => {}
        }
    }
}

/// The result of one successful poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollOutcome {
    /// The server said `304 Not Modified`.
    NotModified,
    /// A new revision was activated.
    Activated(String),
}

/// Polls a bundle server and installs new revisions into a [`PolicyStore`].
pub struct BundlePoller {
    client: BundleClient,
    store: Arc<PolicyStore>,
    interval: Duration,
    limits: BundleLimits,
    etag: Option<String>,
}

impl BundlePoller {
    /// A poller fetching with `client` every `interval` into `store`.
    pub fn new(
        client: BundleClient,
        store: Arc<PolicyStore>,
        interval: Duration,
        limits: BundleLimits,
    ) -> BundlePoller {
        BundlePoller {
            client,
            store,
            interval,
            limits,
            etag: None,
        }
    }

    /// Fetches once and activates the bundle if it changed. On failure the
    /// active revision is untouched and the failure is counted and logged.
    pub async fn poll_once(&mut self) -> Result<PollOutcome, BundleError> {
        let result = self.try_poll().await;
        if let Err(e) = &result {
            tracing::warn!(url = %self.client.url(), error = %e, "policy bundle not activated; keeping the last good revision");
            self.store.count_failure();
        }
        result
    }

    async fn try_poll(&mut self) -> Result<PollOutcome, BundleError> {
        let (body, etag) = match self.client.fetch(self.etag.as_deref()).await? {
            Fetched::NotModified => {
                tracing::debug!(url = %self.client.url(), "policy bundle not modified");
                return Ok(PollOutcome::NotModified);
            }
            Fetched::Bundle { body, etag } => (body, etag),
        };
        let store = self.store.clone();
        let limits = self.limits;
        let set = tokio::task::spawn_blocking(move || {
            let bundle = Bundle::from_tar_gz(&body, &limits)?;
            bundle.build(store.queries(), store.options().clone())
        })
        .await
        .map_err(|e| BundleError::Archive(format!("bundle build task failed: {e}")))??;
        let revision = set.revision().to_string();
        tracing::info!(url = %self.client.url(), %revision, "policy bundle activated");
        self.store.install(set);
        // Remember the ETag only once the bundle is active: a rejected bundle
        // is fetched (and rejected) again rather than silently skipped.
        self.etag = etag;
        Ok(PollOutcome::Activated(revision))
    }

    /// Polls until the runtime stops: every interval, and at once when a
    /// reload is forced (`SIGHUP`, which also drops the ETag to re-download).
    pub async fn run(mut self) {
        loop {
            let _ = self.poll_once().await;
            let store = self.store.clone();
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = store.refresh_requested() => {
                    tracing::info!(url = %self.client.url(), "forced policy bundle reload");
                    self.etag = None;
                }
            }
        }
    }
}

/// Starts polling `cfg`'s bundle into `store`, as a task owned by `tasks`.
pub fn start_bundle(
    cfg: &crate::config::BundleConfig,
    store: Arc<PolicyStore>,
    tasks: &crate::tasks::Tasks,
) -> Result<(), BundleError> {
    let limits = BundleLimits::default();
    let timeout = cfg
        .poll
        .clamp(Duration::from_secs(5), Duration::from_secs(60));
    let client = BundleClient::new(&cfg.url, cfg.ca.as_deref(), limits, timeout)?;
    tasks.spawn_loop(
        "policy-bundle",
        BundlePoller::new(client, store, cfg.poll, limits).run(),
    );
    Ok(())
}
