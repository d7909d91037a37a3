//! Where the sidecar's own SVID comes from: every source — files on disk
//! ([`FileSource`]), the development CA ([`DevCaSource`]), the SPIFFE Workload API
//! ([`super::workload_api::WorkloadApiSource`]) — implements [`SvidSource`]: it
//! installs a first [`Svid`] into the [`Identity`] and then keeps it current. A
//! candidate that does not verify (mismatched key, half-written file, certificate
//! outside the bundle) is refused and the current one kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;

use super::dev_ca::DevCa;
use super::svid::{IdentityError, Svid, SvidPem};
use super::tls::Identity;
use super::{SpiffeId, TrustDomain};
use crate::metrics;

/// Records a refused candidate: log line and metric (with the reason), the current
/// identity stays.
pub(crate) fn refuse(source: &str, err: &IdentityError) {
    let reason = err.reason();
    tracing::warn!(source, reason, error = %err, "identity update refused; keeping the current one");
    metrics::global()
        .identity_reloads
        .with_label_values(&["error", reason])
        .inc();
}

pub(crate) fn accepted() {
    metrics::global()
        .identity_reloads
        .with_label_values(&["success", "none"])
        .inc();
}

/// Where the pod's X.509-SVID comes from. A source only decides when a new SVID is
/// available and installs it into the [`Identity`]; verification, the atomic swap
/// and the TLS configurations are the same for every source.
pub trait SvidSource: Send + Sized + 'static {
    /// Installs the first SVID and spawns what keeps it current (file watch,
    /// renewal, the agent's stream). `Ok(true)`: an SVID is installed; `Ok(false)`:
    /// none yet, the source keeps trying (`/ready` stays 503 meanwhile); an error
    /// stops start-up.
    fn start(
        self,
        identity: Arc<Identity>,
    ) -> impl std::future::Future<Output = Result<bool, IdentityError>> + Send;
}

/// Identity files as cert-manager's csi-driver-spiffe writes them.
#[derive(Debug, Clone)]
pub struct FileSource {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
    pub federated: Vec<(TrustDomain, PathBuf)>,
    pub trust_domain: TrustDomain,
    pub poll_interval: Duration,
}

fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|source| IdentityError::Read {
        path: path.to_owned(),
        source,
    })
}

impl FileSource {
    /// Reads every file once; returns the raw bytes for change detection.
    fn read_all(&self) -> Result<Vec<Vec<u8>>, IdentityError> {
        let mut out = vec![read(&self.cert)?, read(&self.key)?, read(&self.bundle)?];
        for (_, p) in &self.federated {
            out.push(read(p)?);
        }
        Ok(out)
    }

    fn build(&self, files: &[Vec<u8>], provider: &CryptoProvider) -> Result<Svid, IdentityError> {
        let federated: Vec<(TrustDomain, Vec<u8>)> = self
            .federated
            .iter()
            .zip(files.iter().skip(3))
            .map(|((td, _), pem)| (td.clone(), pem.clone()))
            .collect();
        Svid::from_pem_from(
            &SvidPem {
                cert: &files[0],
                key: &files[1],
                bundle: &files[2],
                federated: &federated,
            },
            &self.trust_domain,
            provider,
            "files",
        )
    }

    /// Loads the files once; the error names the file or the rule that failed.
    pub fn load(&self, identity: &Identity) -> Result<(), IdentityError> {
        let files = self.read_all()?;
        let svid = self.build(&files, identity.provider())?;
        identity.install(svid)?;
        accepted();
        Ok(())
    }

    /// Polls the files and installs every new valid version. Polling (not inotify)
    /// also follows the `..data` symlink swaps Kubernetes volumes use.
    pub async fn watch(self, identity: Arc<Identity>) {
        let mut last: Option<Vec<Vec<u8>>> = self.read_all().ok();
        let mut ticker = tokio::time::interval(self.poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let files = match self.read_all() {
                Ok(f) => f,
                Err(e) => {
                    // A file missing mid-rotation: keep what we have, report once per change.
                    if last.is_some() {
                        refuse("files", &e);
                        last = None;
                    }
                    continue;
                }
            };
            if last.as_ref() == Some(&files) {
                continue;
            }
            let result = self
                .build(&files, identity.provider())
                .and_then(|svid| identity.install(svid));
            match result {
                Ok(()) => accepted(),
                Err(e) => refuse("files", &e),
            }
            last = Some(files);
        }
    }
}

impl SvidSource for FileSource {
    /// Loads the files (an error names the file or the rule that failed), then polls.
    async fn start(self, identity: Arc<Identity>) -> Result<bool, IdentityError> {
        self.load(&identity)?;
        tokio::spawn(self.watch(identity));
        Ok(true)
    }
}

impl SvidSource for DevCaSource {
    /// Issues the first SVID, then renews it at half-life.
    async fn start(self, identity: Arc<Identity>) -> Result<bool, IdentityError> {
        self.issue(&identity)?;
        tokio::spawn(self.renew(identity));
        Ok(true)
    }
}

/// The built-in development CA: issues the sidecar's own short-lived SVID and
/// renews it at half-life.
pub struct DevCaSource {
    pub ca: DevCa,
    pub id: SpiffeId,
    pub ttl: Duration,
}

impl DevCaSource {
    /// Issues and installs a fresh SVID.
    pub fn issue(&self, identity: &Identity) -> Result<(), IdentityError> {
        let issued = self
            .ca
            .issue(&self.id, self.ttl)
            .map_err(|e| IdentityError::DevCa(e.to_string()))?;
        let svid = Svid::from_pem_from(
            &SvidPem {
                cert: issued.cert_pem.as_bytes(),
                key: issued.key_pem.as_bytes(),
                bundle: issued.bundle_pem.as_bytes(),
                federated: &[],
            },
            self.ca.trust_domain(),
            identity.provider(),
            "dev_ca",
        )?;
        identity.install(svid)?;
        accepted();
        Ok(())
    }

    /// Renews at half of the TTL, forever; a failed renewal is retried every few
    /// seconds (never later than a tenth of the TTL) until one succeeds.
    pub async fn renew(self, identity: Arc<Identity>) {
        let retry = (self.ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let mut wait = self.ttl / 2;
        loop {
            tokio::time::sleep(wait).await;
            wait = match self.issue(&identity) {
                Ok(()) => self.ttl / 2,
                Err(e) => {
                    refuse("dev_ca", &e);
                    retry
                }
            };
        }
    }
}
