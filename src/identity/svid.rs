//! The sidecar's own identity as loaded: an X.509-SVID chain with its private key
//! and trust bundles ([`Svid`]), built from PEM and verified before anything uses
//! it, and the errors that refuse a candidate ([`IdentityError`]). Every source
//! (files, the development CA, the Workload API) builds its candidates here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use super::rejection::SvidRejection;
use super::spiffe_id::{SpiffeId, TrustDomain};
use super::x509::{leaf_info, verify_svid, SvidError, TrustBundles};

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
