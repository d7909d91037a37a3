//! The SPIFFE Workload API source (SPIRE agent): the sidecar's SVID and trust
//! bundles from `SpiffeWorkloadAPI/FetchX509SVID`, a server stream on which the
//! agent pushes every rotation.
//!
//! The `spiffe` crate (default features off, `workload-api-x509` only: tonic
//! without TLS, so no `ring`) speaks the protocol, including the
//! `workload.spiffe.io: true` metadata header. Each update is turned into PEM and
//! goes through [`Svid::from_pem`], the same verification every other source
//! uses (key matches the leaf, the leaf is a valid SVID of the own trust domain
//! chaining to the bundle); a candidate that fails is refused and the current
//! identity kept. When the stream ends or fails the source reconnects with
//! exponential backoff (100 ms doubling to 30 s, with jitter).
//!
//! Start-up waits a bounded time for the first SVID; after that the sidecar runs
//! without one (`/ready` stays 503, inbound connections are refused) until the
//! agent delivers.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt;
use spiffe::workload_api::{WorkloadApiClient, X509Context};

use super::source::{accepted, refuse, SvidSource};
use super::svid::{IdentityError, Svid, SvidPem};
use super::tls::Identity;
use super::TrustDomain;
use crate::metrics;

/// Why an update from the Workload API could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadApiError {
    /// Connecting or the stream failed.
    #[error("workload API {socket}: {message}")]
    Stream {
        /// The endpoint.
        socket: String,
        /// The client's message.
        message: String,
    },
    /// The update has no SVID.
    #[error("workload API update has no X.509-SVID")]
    NoSvid,
    /// The update has no bundle for the SVID's trust domain.
    #[error("workload API update has no bundle for trust domain {0}")]
    NoBundle(String),
    /// A federated trust domain name is not valid here.
    #[error("federated trust domain {0:?} is not valid: {1}")]
    TrustDomain(String, String),
    /// The SVID did not verify.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

impl WorkloadApiError {
    /// The `reason` label of `portcullis_identity_reloads_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Stream { .. } => "stream_error",
            Self::NoSvid => "no_svid",
            Self::NoBundle(_) => "no_bundle",
            Self::TrustDomain(..) => "invalid_trust_domain",
            Self::Identity(e) => e.reason(),
        }
    }
}

/// Follows the Workload API and installs every valid SVID it pushes.
#[derive(Debug, Clone)]
pub struct WorkloadApiSource {
    /// `unix:///path/to/agent.sock` (or `tcp://ip:port`).
    pub socket: String,
    /// The pod's own trust domain; the SVID must belong to it.
    pub trust_domain: TrustDomain,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// How long start-up waits for the first SVID before going on without one.
    pub first_svid_wait: Duration,
}

impl WorkloadApiSource {
    /// A source for `socket` with the default backoff (100 ms to 30 s).
    pub fn new(socket: impl Into<String>, trust_domain: TrustDomain) -> Self {
        WorkloadApiSource {
            socket: socket.into(),
            trust_domain,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            first_svid_wait: Duration::from_secs(5),
        }
    }

    /// Spawns the follower and waits up to `first` for the first SVID. Returns
    /// whether one was installed in that time; the follower keeps running either way.
    async fn start_with(self, identity: Arc<Identity>, first: Duration) -> bool {
        let mut installs = identity.subscribe();
        let start = *installs.borrow();
        tokio::spawn(self.follow(identity));
        tokio::time::timeout(first, installs.wait_for(|n| *n > start))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Connects, installs every update of the stream, reconnects with backoff; forever.
    /// (Started by [`SvidSource::start`].)
    pub async fn follow(self, identity: Arc<Identity>) {
        let mut delay = self.backoff_initial;
        loop {
            match self.stream_once(&identity).await {
                Ok(true) => delay = self.backoff_initial,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "workload API stream failed"),
            }
            let jitter = Duration::from_millis(u64::from(rand_u16()) % 100);
            tracing::info!(
                socket = %self.socket,
                retry_ms = (delay + jitter).as_millis() as u64,
                "workload API stream ended; reconnecting"
            );
            tokio::time::sleep(delay + jitter).await;
            delay = (delay * 2).min(self.backoff_max);
        }
    }

    /// One connection: returns `Ok(true)` if at least one update was installed.
    async fn stream_once(&self, identity: &Identity) -> Result<bool, WorkloadApiError> {
        let err = |e: spiffe::workload_api::WorkloadApiError| WorkloadApiError::Stream {
            socket: self.socket.clone(),
            message: e.to_string(),
        };
        let client = WorkloadApiClient::connect_to(&self.socket)
            .await
            .map_err(err)?;
        let mut stream = client.stream_x509_contexts().await.map_err(err)?;
        let mut installed = false;
        while let Some(update) = stream.next().await {
            let ctx = update.map_err(err)?;
            match self
                .to_svid(&ctx, identity)
                .and_then(|svid| identity.install(svid).map_err(Into::into))
            {
                Ok(()) => {
                    installed = true;
                    accepted();
                }
                Err(WorkloadApiError::Identity(e)) => refuse("workload_api", &e),
                Err(e) => {
                    tracing::warn!(source = "workload_api", reason = e.reason(), error = %e,
                        "workload API update refused; keeping the current identity");
                    metrics::global()
                        .identity_reloads
                        .with_label_values(&["error", e.reason()])
                        .inc();
                }
            }
        }
        Ok(installed)
    }

    /// Verifies the default SVID of an update and builds the identity from it.
    pub fn to_svid(
        &self,
        ctx: &X509Context,
        identity: &Identity,
    ) -> Result<Svid, WorkloadApiError> {
        let svid = ctx.default_svid().ok_or(WorkloadApiError::NoSvid)?;
        let own_td = svid.spiffe_id().trust_domain_name().to_owned();
        let cert = pem_all(
            "CERTIFICATE",
            svid.cert_chain().iter().map(|c| c.as_bytes()),
        );
        let key = pem("PRIVATE KEY", svid.private_key().as_bytes());
        let mut bundle = None;
        let mut federated = Vec::new();
        for (td, b) in ctx.bundle_set().iter() {
            let text = pem_all("CERTIFICATE", b.authorities().iter().map(|c| c.as_bytes()));
            if td.as_str() == own_td {
                bundle = Some(text);
            } else {
                let fed = TrustDomain::parse(td.as_str())
                    .map_err(|e| WorkloadApiError::TrustDomain(td.to_string(), e.to_string()))?;
                federated.push((fed, text.into_bytes()));
            }
        }
        let bundle = bundle.ok_or(WorkloadApiError::NoBundle(own_td))?;
        Ok(Svid::from_pem_from(
            &SvidPem {
                cert: cert.as_bytes(),
                key: key.as_bytes(),
                bundle: bundle.as_bytes(),
                federated: &federated,
            },
            &self.trust_domain,
            identity.provider(),
            "workload_api",
        )?)
    }
}

/// A few bits of jitter without a random-number dependency.
fn rand_u16() -> u16 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u16)
        .unwrap_or(0)
}

/// DER to one PEM block, 64 columns.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pem_all<'a>(label: &str, ders: impl Iterator<Item = &'a [u8]>) -> String {
    ders.map(|d| pem(label, d)).collect()
}

impl SvidSource for WorkloadApiSource {
    /// Follows the agent's stream and waits up to `first_svid_wait` for the first
    /// SVID. The agent may not know the workload yet: then start-up goes on without
    /// one (`Ok(false)`), inbound connections are refused and `/ready` is 503 until
    /// an SVID arrives.
    async fn start(self, identity: Arc<Identity>) -> Result<bool, IdentityError> {
        let first = self.first_svid_wait;
        let socket = self.socket.clone();
        let installed = self.start_with(identity, first).await;
        if !installed {
            tracing::warn!(
                socket = %socket,
                waited_s = first.as_secs(),
                "no SVID from the workload API yet; still trying"
            );
        }
        Ok(installed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips() {
        let der: Vec<u8> = (0..200u8).collect();
        let text = pem("CERTIFICATE", &der);
        let back: Vec<_> = rustls_pemfile::certs(&mut text.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].as_ref(), &der[..]);
        assert!(text
            .lines()
            .all(|l| l.len() <= 64 || l.starts_with("-----")));
    }
}
