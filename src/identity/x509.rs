//! X.509-SVID validation: trust bundles per trust domain, the leaf rules of the
//! X.509-SVID specification, and chain verification with rustls-webpki against the
//! anchors of the leaf ID's own trust domain only.
//!
//! The leaf rules are checked first (with x509-parser) so that every rejection has a
//! precise reason; path building and signatures are then left to webpki, and every
//! path webpki finds is checked against the profile rules of [`super::profile`]
//! before it is accepted (a path that fails them makes webpki try the next one).
//! Roots are checked once, when their bundle is loaded; a root's validity window is
//! checked on every verification, so a root that expires stops anchoring at once.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, SignatureVerificationAlgorithm, TrustAnchor, UnixTime,
};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

use super::profile::{self, CaFacts, CaRole};
use super::rejection::{SvidRejection, SvidUsage};
use super::spiffe_id::{SpiffeId, TrustDomain};

/// Trust anchors (CA certificates) per trust domain: our own bundle plus federated ones.
#[derive(Debug, Clone, Default)]
pub struct TrustBundles {
    domains: HashMap<TrustDomain, Bundle>,
}

#[derive(Debug, Clone, Default)]
struct Bundle {
    certs: Vec<CertificateDer<'static>>,
    /// Anchors parsed once from the usable roots of `certs`.
    anchors: Vec<TrustAnchor<'static>>,
    /// What each anchor (same index) imposes at verification time.
    roots: Vec<Root>,
}

/// The facts about a bundle root that are checked on every verification.
#[derive(Debug, Clone)]
struct Root {
    not_before: i64,
    not_after: i64,
    facts: CaFacts,
}

impl Root {
    fn check(&self, now: UnixTime, usage: SvidUsage) -> Result<(), SvidRejection> {
        let now = unix_secs(now);
        if now < self.not_before {
            return Err(SvidRejection::RootNotYetValid);
        }
        if now > self.not_after {
            return Err(SvidRejection::RootExpired);
        }
        self.facts.check_usage(usage)
    }
}

fn unix_secs(t: UnixTime) -> i64 {
    i64::try_from(t.as_secs()).unwrap_or(i64::MAX)
}

/// Checks one bundle certificate as a root at `now`: it parses as a trust anchor,
/// follows the CA rules and is inside its validity window.
fn validate_root(
    cert: &CertificateDer<'_>,
    now: UnixTime,
) -> Result<(TrustAnchor<'static>, Root), SvidRejection> {
    let parsed = profile::parse(cert.as_ref())?;
    let anchor = webpki::anchor_from_trusted_cert(cert)
        .map_err(|_| SvidRejection::Malformed)?
        .to_owned();
    let facts = profile::check_ca(&parsed, CaRole::Root)?;
    let root = Root {
        not_before: parsed.validity().not_before.timestamp(),
        not_after: parsed.validity().not_after.timestamp(),
        facts,
    };
    let secs = unix_secs(now);
    if secs < root.not_before {
        return Err(SvidRejection::RootNotYetValid);
    }
    if secs > root.not_after {
        return Err(SvidRejection::RootExpired);
    }
    Ok((anchor, root))
}

impl Bundle {
    /// Adds the usable roots of `certs`; each refused one is logged (naming `source`
    /// and `td`), counted, and returned with its index and reason.
    fn extend(
        &mut self,
        certs: Vec<CertificateDer<'static>>,
        td: &TrustDomain,
        source: &str,
    ) -> Vec<(usize, SvidRejection)> {
        let mut refused = Vec::new();
        let now = UnixTime::now();
        for (index, cert) in certs.into_iter().enumerate() {
            match validate_root(&cert, now) {
                Ok((anchor, root)) => {
                    self.anchors.push(anchor);
                    self.roots.push(root);
                    self.certs.push(cert);
                }
                Err(reason) => {
                    tracing::warn!(
                        source,
                        trust_domain = %td,
                        index,
                        reason = reason.reason(),
                        "trust bundle root refused: {reason}"
                    );
                    crate::metrics::global()
                        .trust_bundle_roots_refused
                        .with_label_values(&[source, reason.reason()])
                        .inc();
                    refused.push((index, reason));
                }
            }
        }
        refused
    }
}

impl TrustBundles {
    /// An empty set: every SVID is rejected with `UntrustedTrustDomain`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the roots `anchors` to the bundle of `td` (appending if the domain is
    /// already present). Roots that are not valid CAs now are logged, counted and
    /// left out (see [`TrustBundles::add_pem_from`] for the checked form).
    pub fn add(&mut self, td: TrustDomain, anchors: Vec<CertificateDer<'static>>) {
        let bundle = self.domains.entry(td.clone()).or_default();
        bundle.extend(anchors, &td, "api");
    }

    /// Builds the bundles from one trust domain's PEM bundle file (`ca.crt`).
    pub fn from_pem(td: TrustDomain, pem: &[u8]) -> Result<Self, SvidError> {
        Self::from_pem_from(td, pem, "bundle")
    }

    /// [`TrustBundles::from_pem`], naming where the bundle came from in logs and metrics.
    pub fn from_pem_from(td: TrustDomain, pem: &[u8], source: &str) -> Result<Self, SvidError> {
        let mut bundles = Self::new();
        bundles.add_pem_from(td, pem, source)?;
        Ok(bundles)
    }

    /// Adds a (federated) trust domain's PEM bundle.
    pub fn add_pem(&mut self, td: TrustDomain, pem: &[u8]) -> Result<(), SvidError> {
        self.add_pem_from(td, pem, "bundle")
    }

    /// Adds a trust domain's PEM bundle from `source` (`files`, `workload_api`, ...).
    /// Each root is checked ([`SvidRejection`] reasons); refused roots are logged with
    /// the source, the trust domain and the reason, and counted in
    /// `portcullis_trust_bundle_roots_refused_total{source,reason}`. When no root of
    /// the bundle is usable nothing is added and the error lists why.
    pub fn add_pem_from(
        &mut self,
        td: TrustDomain,
        pem: &[u8],
        source: &str,
    ) -> Result<(), SvidError> {
        let certs = certs_from_pem(pem)?;
        let mut bundle = Bundle::default();
        let refused = bundle.extend(certs, &td, source);
        if bundle.anchors.is_empty() {
            return Err(SvidError::NoUsableRoot { td, refused });
        }
        let entry = self.domains.entry(td).or_default();
        entry.certs.extend(bundle.certs);
        entry.anchors.extend(bundle.anchors);
        entry.roots.extend(bundle.roots);
        Ok(())
    }

    /// The configured trust domains, in no particular order.
    pub fn trust_domains(&self) -> impl Iterator<Item = &TrustDomain> {
        self.domains.keys()
    }

    /// The anchor certificates of one trust domain.
    pub fn get(&self, td: &TrustDomain) -> Option<&[CertificateDer<'static>]> {
        self.domains.get(td).map(|b| b.certs.as_slice())
    }

    fn bundle_for(&self, td_name: &str) -> Option<&Bundle> {
        // TrustDomain is a validated newtype; the name from a parsed SpiffeId is valid.
        let td = TrustDomain::parse(td_name).ok()?;
        self.domains.get(&td)
    }
}

/// Errors reading certificate, key or bundle files (PEM).
#[derive(Debug, thiserror::Error)]
pub enum SvidError {
    #[error("invalid PEM: {0}")]
    Pem(#[from] rustls_pki_types::pem::Error),
    #[error("no CERTIFICATE block found in PEM input")]
    NoCertificates,
    #[error("no private key (PKCS#8, PKCS#1 or SEC1) found in PEM input")]
    NoPrivateKey,
    #[error("trust domain {td} has no usable root: {}", describe_refused(.refused))]
    NoUsableRoot {
        td: TrustDomain,
        /// Each refused certificate of the bundle: its index and why.
        refused: Vec<(usize, SvidRejection)>,
    },
    #[error("certificate is not an acceptable X.509-SVID: {0}")]
    Rejected(#[from] SvidRejection),
}

fn describe_refused(refused: &[(usize, SvidRejection)]) -> String {
    let parts: Vec<String> = refused
        .iter()
        .map(|(i, r)| format!("certificate #{i}: {r} ({})", r.reason()))
        .collect();
    parts.join("; ")
}

/// What the leaf of an SVID says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    pub id: SpiffeId,
    pub not_after: SystemTime,
    /// The serial number's big-endian bytes, as encoded.
    pub serial: Vec<u8>,
}

impl LeafInfo {
    /// `not_after` as Unix seconds (for the expiry metric).
    pub fn not_after_unix(&self) -> i64 {
        match self.not_after.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        }
    }
}

/// The aws-lc-rs signature algorithms, used when no provider is given.
static DEFAULT_ALGS: LazyLock<rustls::crypto::WebPkiSupportedAlgorithms> = LazyLock::new(|| {
    rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms
});

/// Verifies `chain` (leaf first, then intermediates) as an X.509-SVID at time `now`:
/// leaf checks per the X.509-SVID spec, then path building with webpki to the anchors
/// of the leaf ID's OWN trust domain only. Either TLS role is accepted (see
/// [`SvidUsage::AnyTls`]); the rustls verifiers use [`verify_svid_with`] with their role.
pub fn verify_svid(
    chain: &[CertificateDer<'_>],
    bundles: &TrustBundles,
    now: UnixTime,
) -> Result<SpiffeId, SvidRejection> {
    let (leaf, intermediates) = chain.split_first().ok_or(SvidRejection::NoCertificate)?;
    verify_svid_with(
        leaf,
        intermediates,
        bundles,
        now,
        SvidUsage::AnyTls,
        DEFAULT_ALGS.all,
    )
}

/// [`verify_svid`] with an explicit TLS role and signature algorithms (from the
/// crypto provider's `signature_verification_algorithms.all`). This is the one path
/// validator: the rustls verifiers (both directions), the own SVID at load and at
/// every rotation, and Workload API updates all come through here.
pub fn verify_svid_with(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundles: &TrustBundles,
    now: UnixTime,
    usage: SvidUsage,
    algs: &[&'static dyn SignatureVerificationAlgorithm],
) -> Result<SpiffeId, SvidRejection> {
    let cert = profile::parse(leaf.as_ref())?;
    let id = check_leaf(&cert)?;
    profile::check_leaf(&cert)?;
    profile::check_leaf_usage(&cert)?;
    let secs = unix_secs(now);
    if secs < cert.validity().not_before.timestamp() {
        return Err(SvidRejection::NotYetValid);
    }
    if secs > cert.validity().not_after.timestamp() {
        return Err(SvidRejection::Expired);
    }
    let bundle = bundles
        .bundle_for(id.trust_domain_name())
        .ok_or(SvidRejection::UntrustedTrustDomain)?;
    if bundle.anchors.is_empty() {
        return Err(SvidRejection::UnknownIssuer);
    }
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|_| SvidRejection::Malformed)?;
    // The profile rules run on each candidate path; the last refusal is reported when
    // no path passes.
    let refusal = Cell::new(None);
    let check = |path: &webpki::VerifiedPath<'_>| {
        check_path(path, bundle, now, usage).map_err(|r| {
            refusal.set(Some(r));
            webpki::Error::UnknownIssuer
        })
    };
    match ee.verify_for_usage(
        algs,
        &bundle.anchors,
        intermediates,
        now,
        usage,
        None,
        Some(&check),
    ) {
        Ok(_) => Ok(id),
        Err(e) => Err(refusal.take().unwrap_or_else(|| map_webpki_error(&e))),
    }
}

/// The profile rules on a path webpki built: the root's validity and EKU, then each
/// intermediate as a CA.
fn check_path(
    path: &webpki::VerifiedPath<'_>,
    bundle: &Bundle,
    now: UnixTime,
    usage: SvidUsage,
) -> Result<(), SvidRejection> {
    let anchor = path.anchor();
    let root = bundle
        .anchors
        .iter()
        .position(|a| std::ptr::eq(a, anchor))
        .and_then(|i| bundle.roots.get(i))
        .ok_or(SvidRejection::UnknownIssuer)?;
    root.check(now, usage)?;
    // Intermediates from the leaf's issuer upwards; `below` counts the
    // non-self-issued ones under each CA (RFC 5280 §6.1.4 (l), (m)).
    let mut below = 0;
    for cert in path.intermediate_certificates() {
        let der = cert.der();
        let parsed = profile::parse(der.as_ref())?;
        let facts = profile::check_ca(&parsed, CaRole::Intermediate)?;
        facts.check_usage(usage)?;
        facts.check_path_len(below)?;
        if !facts.self_issued() {
            below += 1;
        }
    }
    root.facts.check_path_len(below)
}

/// Maps a webpki path-building error to the rejection reason. The leaf's own validity
/// was checked before path building, so a time error names an intermediate.
fn map_webpki_error(e: &webpki::Error) -> SvidRejection {
    use webpki::Error as E;
    #[allow(deprecated)]
    match e {
        E::CertExpired { .. } => SvidRejection::IntermediateExpired,
        E::CertNotValidYet { .. } => SvidRejection::IntermediateNotYetValid,
        E::UnknownIssuer => SvidRejection::UnknownIssuer,
        E::InvalidSignatureForPublicKey => SvidRejection::BadSignature,
        E::CaUsedAsEndEntity => SvidRejection::LeafIsCa,
        E::EndEntityUsedAsCa => SvidRejection::CaNotCa,
        E::PathLenConstraintViolated => SvidRejection::PathLengthExceeded,
        E::NameConstraintViolation => SvidRejection::NameConstraintViolation,
        E::MalformedNameConstraint | E::InvalidNetworkMaskConstraint => {
            SvidRejection::MalformedNameConstraints
        }
        E::UnsupportedCriticalExtension => SvidRejection::UnknownCriticalExtension,
        E::SignatureAlgorithmMismatch => SvidRejection::SignatureAlgorithmMismatch,
        // The leaf's EKU was checked before path building: this one is a CA's.
        E::RequiredEkuNotFound | E::RequiredEkuNotFoundContext(_) | E::EmptyEkuExtension => {
            SvidRejection::CaExtendedKeyUsage
        }
        E::UnsupportedSignatureAlgorithm
        | E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKey
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
            SvidRejection::UnsupportedSignatureAlgorithm
        }
        E::BadDer | E::BadDerTime | E::TrailingData(_) | E::MalformedExtensions => {
            SvidRejection::Malformed
        }
        _ => SvidRejection::InvalidChain,
    }
}

/// Parses the leaf of an SVID and applies the X.509-SVID leaf rules; returns its SPIFFE
/// ID, not-after and serial. Used for our own SVID on load and for a verified peer's ID.
/// It does not check the validity window or the chain.
pub fn leaf_info(leaf: &CertificateDer<'_>) -> Result<LeafInfo, SvidRejection> {
    let cert = profile::parse(leaf.as_ref())?;
    let id = check_leaf(&cert)?;
    let not_after = unix_to_system_time(cert.validity().not_after.timestamp());
    Ok(LeafInfo {
        id,
        not_after,
        serial: cert.raw_serial().to_vec(),
    })
}

fn unix_to_system_time(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
    .unwrap_or(UNIX_EPOCH)
}

/// The X.509-SVID leaf rules; returns the leaf's SPIFFE ID.
fn check_leaf(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidRejection> {
    let san = cert
        .subject_alternative_name()
        .map_err(|_| SvidRejection::Malformed)?
        .ok_or(SvidRejection::NoUriSan)?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    let uri = uris.next().ok_or(SvidRejection::NoUriSan)?;
    if uris.next().is_some() {
        return Err(SvidRejection::MultipleUriSans);
    }
    let id = SpiffeId::parse(uri).map_err(|_| SvidRejection::InvalidSpiffeId)?;
    if id.is_root() {
        return Err(SvidRejection::RootPathId);
    }

    let bc = cert
        .basic_constraints()
        .map_err(|_| SvidRejection::Malformed)?;
    if bc.is_some_and(|bc| bc.value.ca) {
        return Err(SvidRejection::LeafIsCa);
    }

    let ku = cert
        .key_usage()
        .map_err(|_| SvidRejection::Malformed)?
        .ok_or(SvidRejection::NoKeyUsage)?;
    if !ku.value.digital_signature() {
        return Err(SvidRejection::NoDigitalSignature);
    }
    if ku.value.key_cert_sign() {
        return Err(SvidRejection::KeyCertSign);
    }
    if ku.value.crl_sign() {
        return Err(SvidRejection::CrlSign);
    }
    // X.509-SVID §4.3: "MUST be marked critical".
    if !ku.critical {
        return Err(SvidRejection::KeyUsageNotCritical);
    }
    Ok(id)
}

/// Every CERTIFICATE block of a PEM file, in order (a `tls.crt` chain or a bundle).
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, SvidError> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(SvidError::NoCertificates);
    }
    Ok(certs)
}

/// The first private key of a PEM file (`tls.key`).
pub fn private_key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, SvidError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => SvidError::NoPrivateKey,
        other => SvidError::Pem(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::dev_ca::DevCa;

    fn td(s: &str) -> TrustDomain {
        TrustDomain::parse(s).unwrap()
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    fn now() -> UnixTime {
        UnixTime::now()
    }

    fn setup() -> (DevCa, TrustBundles) {
        let ca = DevCa::generate(&td("example.org")).unwrap();
        let bundles =
            TrustBundles::from_pem(td("example.org"), ca.ca_cert_pem().as_bytes()).unwrap();
        (ca, bundles)
    }

    #[test]
    fn valid_svid_verifies_and_leaf_info_matches() {
        let (ca, bundles) = setup();
        let svid = ca
            .issue(
                &id("spiffe://example.org/ns/a/sa/b"),
                Duration::from_secs(3600),
            )
            .unwrap();
        let chain = certs_from_pem(svid.cert_pem.as_bytes()).unwrap();
        assert_eq!(verify_svid(&chain, &bundles, now()).unwrap(), svid.id);
        let info = leaf_info(&chain[0]).unwrap();
        assert_eq!(info.id, svid.id);
        assert_eq!(info.not_after, svid.not_after);
        assert!(!info.serial.is_empty());
        for usage in [SvidUsage::ClientAuth, SvidUsage::ServerAuth] {
            let algs = DEFAULT_ALGS.all;
            assert!(verify_svid_with(&chain[0], &[], &bundles, now(), usage, algs).is_ok());
        }
    }

    #[test]
    fn chain_rules() {
        let (ca, bundles) = setup();
        let other_ca = DevCa::generate(&td("example.org")).unwrap();
        let issue = |ca: &DevCa| {
            let svid = ca
                .issue(&id("spiffe://example.org/w"), Duration::from_secs(3600))
                .unwrap();
            certs_from_pem(svid.cert_pem.as_bytes()).unwrap().remove(0)
        };
        assert_eq!(
            verify_svid(&[issue(&other_ca)], &bundles, now()),
            Err(SvidRejection::UnknownIssuer)
        );
        assert_eq!(
            verify_svid(&[], &bundles, now()),
            Err(SvidRejection::NoCertificate)
        );
        assert_eq!(
            verify_svid(
                &[CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])],
                &bundles,
                now()
            ),
            Err(SvidRejection::Malformed)
        );
        // A domain configured with no anchors trusts nothing.
        let mut empty = TrustBundles::new();
        empty.add(td("example.org"), vec![]);
        let good = issue(&ca);
        assert_eq!(
            verify_svid(std::slice::from_ref(&good), &empty, now()),
            Err(SvidRejection::UnknownIssuer)
        );
        // An anchor of a federated domain does not vouch for our domain's IDs.
        let mut crossed = TrustBundles::new();
        crossed.add(td("example.org"), vec![other_ca.ca_cert_der().clone()]);
        crossed.add(td("other.org"), vec![ca.ca_cert_der().clone()]);
        assert_eq!(
            verify_svid(&[good], &crossed, now()),
            Err(SvidRejection::UnknownIssuer)
        );
    }

    #[test]
    fn pem_errors() {
        assert!(matches!(
            TrustBundles::from_pem(td("a"), b"not pem"),
            Err(SvidError::NoCertificates)
        ));
        let bad = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        match TrustBundles::from_pem(td("a"), bad.as_bytes()) {
            Err(SvidError::NoUsableRoot { refused, .. }) => {
                assert_eq!(refused, vec![(0, SvidRejection::Malformed)])
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert!(matches!(
            private_key_from_pem(b"nothing"),
            Err(SvidError::NoPrivateKey)
        ));
        let (ca, _) = setup();
        let mut b = TrustBundles::new();
        b.add_pem(td("example.org"), ca.ca_cert_pem().as_bytes())
            .unwrap();
        b.add_pem(td("other.org"), ca.ca_cert_pem().as_bytes())
            .unwrap();
        let mut names: Vec<_> = b.trust_domains().map(|t| t.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(names, ["example.org", "other.org"]);
        assert_eq!(b.get(&td("example.org")).map(|c| c.len()), Some(1));
        assert!(b.get(&td("nope.org")).is_none());
    }
}
