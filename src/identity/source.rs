//! Where the sidecar's own SVID comes from, and the atomically swapped current identity.
//!
//! Every source — files on disk ([`FileSource`]), the development CA
//! ([`DevCaSource`]), the SPIFFE Workload API
//! ([`super::workload_api::WorkloadApiSource`]) — implements [`SvidSource`]: it
//! installs a first [`Svid`] and then keeps it current. [`Identity`] holds the
//! current one behind an `ArcSwap` together with the TLS configurations built from
//! it, so the request path only loads a pointer. A candidate that does not verify
//! (mismatched key, half-written file, certificate outside the bundle) is refused
//! and the current one kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio::sync::watch;

use super::dev_ca::DevCa;
use super::svid::{leaf_info, verify_svid, SvidError, SvidRejection, TrustBundles};
use super::tls::TlsConfigs;
use super::{SpiffeId, TrustDomain};
use crate::metrics;

/// Why a candidate identity was refused.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no PEM certificate found")]
    NoCertificate(String),
    #[error("{0}: no PEM private key (PKCS#8, SEC1 or PKCS#1) found")]
    NoKey(String),
    #[error("{what}: malformed PEM: {source}")]
    Pem {
        what: String,
        source: std::io::Error,
    },
    #[error("private key is not usable: {0}")]
    Key(rustls::Error),
    #[error("private key does not match the certificate")]
    KeyMismatch,
    #[error("bundle: {0}")]
    Bundle(#[from] SvidError),
    #[error("own certificate is not a valid SVID: {0}")]
    NotAnSvid(SvidRejection),
    #[error("own SPIFFE ID {id} is outside the trust domain {td}")]
    WrongTrustDomain { id: SpiffeId, td: TrustDomain },
    #[error("development CA: {0}")]
    DevCa(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
}

impl IdentityError {
    /// A snake_case label for the `reason` of `portcullis_identity_reloads_total`:
    /// the [`SvidRejection`] reason when the own SVID or a bundle root was refused.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Read { .. } => "read_error",
            Self::NoCertificate(_) => "no_certificate",
            Self::NoKey(_) => "no_private_key",
            Self::Pem { .. } => "malformed_pem",
            Self::Key(_) => "bad_private_key",
            Self::KeyMismatch => "key_mismatch",
            Self::Bundle(SvidError::NoUsableRoot { .. }) => "no_usable_root",
            Self::Bundle(SvidError::Rejected(r)) => r.reason(),
            Self::Bundle(_) => "bad_bundle",
            Self::NotAnSvid(r) => r.reason(),
            Self::WrongTrustDomain { .. } => "wrong_trust_domain",
            Self::DevCa(_) => "dev_ca",
            Self::Tls(_) => "tls_config",
        }
    }
}

/// The process-wide crypto provider; passed explicitly everywhere (STACK.md).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A verified identity: certificate chain, key, bundles and facts about the leaf.
pub struct Svid {
    pub id: SpiffeId,
    pub certified_key: Arc<CertifiedKey>,
    pub bundles: Arc<TrustBundles>,
    pub not_after: SystemTime,
    pub serial: Vec<u8>,
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("id", &self.id)
            .field("serial", &hex::encode(&self.serial))
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// PEM inputs for one identity: chain, key, own bundle and federated bundles.
pub struct SvidPem<'a> {
    pub cert: &'a [u8],
    pub key: &'a [u8],
    pub bundle: &'a [u8],
    pub federated: &'a [(TrustDomain, Vec<u8>)],
}

impl Svid {
    /// Builds and verifies an identity: the key must match the leaf, the leaf must be a
    /// valid X.509-SVID of `td` that chains to the bundle. Nothing is installed on error.
    pub fn from_pem(
        pem: &SvidPem<'_>,
        td: &TrustDomain,
        provider: &CryptoProvider,
    ) -> Result<Svid, IdentityError> {
        Self::from_pem_from(pem, td, provider, "pem")
    }

    /// [`Svid::from_pem`], naming the source (`files`, `workload_api`, `dev_ca`) in the
    /// log lines and metrics of refused bundle roots. Every bundle (own and federated)
    /// must keep at least one usable root.
    pub fn from_pem_from(
        pem: &SvidPem<'_>,
        td: &TrustDomain,
        provider: &CryptoProvider,
        source: &str,
    ) -> Result<Svid, IdentityError> {
        let chain = parse_certs(pem.cert, "certificate")?;
        let key = parse_key(pem.key)?;
        let mut bundles = TrustBundles::from_pem_from(td.clone(), pem.bundle, source)?;
        for (fed_td, fed_pem) in pem.federated {
            bundles.add_pem_from(fed_td.clone(), fed_pem, source)?;
        }
        // The path first, so that a refused certificate is reported by its own reason.
        let id =
            verify_svid(&chain, &bundles, UnixTime::now()).map_err(IdentityError::NotAnSvid)?;
        if id.trust_domain_name() != td.as_str() {
            return Err(IdentityError::WrongTrustDomain { id, td: td.clone() });
        }
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(IdentityError::Key)?;
        let certified = CertifiedKey::new(chain.clone(), signing_key);
        // The provider must be able to tell that the key belongs to the certificate:
        // "unknown" is refused like a mismatch (fail closed).
        if certified.keys_match().is_err() {
            return Err(IdentityError::KeyMismatch);
        }
        let info = leaf_info(&chain[0]).map_err(IdentityError::NotAnSvid)?;
        Ok(Svid {
            id,
            certified_key: Arc::new(certified),
            bundles: Arc::new(bundles),
            not_after: info.not_after,
            serial: info.serial,
        })
    }
}

fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| IdentityError::Pem {
            what: what.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(IdentityError::NoCertificate(what.to_owned()));
    }
    Ok(certs)
}

fn parse_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, IdentityError> {
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|source| IdentityError::Pem {
            what: "private key".to_owned(),
            source,
        })?
        .ok_or_else(|| IdentityError::NoKey("private key".to_owned()))
}

/// The loaded identity plus the TLS configurations built from it.
pub struct Loaded {
    pub svid: Svid,
    pub tls: TlsConfigs,
}

/// The current identity, swapped atomically on rotation.
pub struct Identity {
    current: ArcSwapOption<Loaded>,
    provider: Arc<CryptoProvider>,
    /// Ticks on every successful install; the value is the number of installs.
    installs: watch::Sender<u64>,
    /// Trust domains whose peers are accepted in addition to the bundle's own.
    pub require_client_cert: bool,
}

impl Identity {
    pub fn new(provider: Arc<CryptoProvider>) -> Arc<Identity> {
        Arc::new(Identity {
            current: ArcSwapOption::empty(),
            provider,
            installs: watch::channel(0).0,
            require_client_cert: true,
        })
    }

    /// The current identity, or `None` before the first successful load.
    pub fn current(&self) -> Option<Arc<Loaded>> {
        self.current.load_full()
    }

    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    /// Subscribes to installs (for readiness and tests).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.installs.subscribe()
    }

    /// Builds TLS configs for `svid` and makes it current. Connections already
    /// established keep the config they were accepted with.
    pub fn install(&self, svid: Svid) -> Result<(), IdentityError> {
        let tls = TlsConfigs::build(&svid, &self.provider)?;
        // Before readiness: the first handshake of a process otherwise pays for the
        // crypto library's lazy start-up (its random generator's seeding, ≈ 30 ms of
        // CPU) while a client waits.
        super::tls::warm_up(&svid, &self.provider, &tls.server);
        let not_after = svid
            .not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        tracing::info!(
            spiffe_id = %svid.id,
            serial = %hex::encode(&svid.serial),
            not_after,
            "identity installed"
        );
        metrics::global().identity_cert_expiry.set(not_after);
        self.current.store(Some(Arc::new(Loaded { svid, tls })));
        self.installs.send_modify(|n| *n += 1);
        Ok(())
    }
}

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
