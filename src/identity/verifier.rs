//! rustls certificate verifiers for SPIFFE mTLS, both sides, plus the peer
//! authorization hook.
//!
//! [`SvidClientVerifier`] (server side) and [`SvidServerVerifier`] (client side) accept a
//! peer only if its chain is a valid X.509-SVID for a configured trust domain
//! ([`verify_svid_with`]) and its SPIFFE ID passes the [`PeerAuthorization`]. The DNS
//! name a client connects with is ignored: SVIDs carry no DNS names.
//!
//! Every rejection is logged ([`super::refusal_log`]: `debug`, and `warn` within a
//! budget a peer cannot raise) and counted in
//! `portcullis_tls_handshake_failures_total{direction, reason}`, and travels inside the
//! rustls error as `CertificateError::Other`, from which [`rejection_of`] recovers it.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::rejection::{SvidRejection, SvidUsage};
use super::spiffe_id::SpiffeId;
use super::x509::{verify_svid_with, TrustBundles};

/// Which verified peers are accepted at the TLS layer (before any HTTP policy).
#[derive(Clone)]
pub enum PeerAuthorization {
    /// Any SVID that verifies against the configured bundles.
    AnyTrusted,
    /// Only these SPIFFE IDs.
    Exact(HashSet<SpiffeId>),
    /// A custom rule.
    Predicate(Arc<dyn Fn(&SpiffeId) -> bool + Send + Sync>),
}

impl PeerAuthorization {
    /// Whether a verified peer with this ID is accepted.
    pub fn allows(&self, id: &SpiffeId) -> bool {
        match self {
            Self::AnyTrusted => true,
            Self::Exact(ids) => ids.contains(id),
            Self::Predicate(f) => f(id),
        }
    }
}

impl fmt::Debug for PeerAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AnyTrusted => f.write_str("AnyTrusted"),
            Self::Exact(ids) => f.debug_tuple("Exact").field(ids).finish(),
            Self::Predicate(_) => f.write_str("Predicate(..)"),
        }
    }
}

/// Logs and counts a rejection, and wraps it into the rustls error.
fn reject(
    direction: &'static str,
    rejection: SvidRejection,
    peer: Option<&SpiffeId>,
) -> rustls::Error {
    let reason = rejection.reason();
    match peer {
        Some(id) => super::refusal_log::refused(
            direction,
            reason,
            &format_args!("peer certificate of {id} rejected: {rejection}"),
        ),
        None => super::refusal_log::refused(
            direction,
            reason,
            &format_args!("peer certificate rejected: {rejection}"),
        ),
    }
    crate::metrics::global()
        .tls_handshake_failures
        .with_label_values(&[direction, reason])
        .inc();
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(rejection))))
}

/// The shared part of both verifiers.
struct Core {
    bundles: Arc<TrustBundles>,
    authz: PeerAuthorization,
    provider: Arc<CryptoProvider>,
    direction: &'static str,
}

impl Core {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: SvidUsage,
    ) -> Result<SpiffeId, rustls::Error> {
        let id = verify_svid_with(
            end_entity,
            intermediates,
            &self.bundles,
            now,
            usage,
            self.provider.signature_verification_algorithms.all,
        )
        .map_err(|r| reject(self.direction, r, None))?;
        if !self.authz.allows(&id) {
            return Err(reject(
                self.direction,
                SvidRejection::NotAuthorized,
                Some(&id),
            ));
        }
        Ok(id)
    }

    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SvidVerifier")
            .field("direction", &self.direction)
            .field(
                "trust_domains",
                &self.bundles.trust_domains().collect::<Vec<_>>(),
            )
            .field("authz", &self.authz)
            .finish()
    }
}

/// Server side: verifies client certificates as X.509-SVIDs (EKU clientAuth if present).
/// With `required = true` (strict mode) a client without a certificate is refused by
/// rustls itself (`Error::NoCertificatesPresented`, which never reaches this verifier:
/// count it with [`record_handshake_failure`]).
#[derive(Debug)]
pub struct SvidClientVerifier {
    core: Core,
    required: bool,
}

impl SvidClientVerifier {
    /// `direction` is the metric/log label (e.g. "inbound").
    pub fn new(
        bundles: Arc<TrustBundles>,
        authz: PeerAuthorization,
        required: bool,
        provider: Arc<CryptoProvider>,
        direction: &'static str,
    ) -> Self {
        SvidClientVerifier {
            core: Core {
                bundles,
                authz,
                provider,
                direction,
            },
            required,
        }
    }
}

impl ClientCertVerifier for SvidClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.core
            .verify(end_entity, intermediates, now, SvidUsage::ClientAuth)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.core.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.core.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.core.schemes()
    }
}

/// Client side: verifies server certificates as X.509-SVIDs (EKU serverAuth if present)
/// and ignores the `ServerName` entirely; who the server must be is expressed by the
/// [`PeerAuthorization`].
#[derive(Debug)]
pub struct SvidServerVerifier {
    core: Core,
}

impl SvidServerVerifier {
    /// `direction` is the metric/log label (e.g. "outbound").
    pub fn new(
        bundles: Arc<TrustBundles>,
        authz: PeerAuthorization,
        provider: Arc<CryptoProvider>,
        direction: &'static str,
    ) -> Self {
        SvidServerVerifier {
            core: Core {
                bundles,
                authz,
                provider,
                direction,
            },
        }
    }
}

impl ServerCertVerifier for SvidServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.core
            .verify(end_entity, intermediates, now, SvidUsage::ServerAuth)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.core.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.core.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.core.schemes()
    }
}

/// Recovers the [`SvidRejection`] from a rustls error produced by these verifiers.
/// rustls' own refusal of a missing client certificate in strict mode
/// (`NoCertificatesPresented`) maps to [`SvidRejection::NoCertificate`].
pub fn rejection_of(err: &rustls::Error) -> Option<SvidRejection> {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<SvidRejection>().cloned()
        }
        rustls::Error::NoCertificatesPresented => Some(SvidRejection::NoCertificate),
        _ => None,
    }
}

/// [`rejection_of`] for the `io::Error` that tokio-rustls returns from a handshake.
pub fn rejection_of_io(err: &std::io::Error) -> Option<SvidRejection> {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .and_then(rejection_of)
}

/// A snake_case metric label for any handshake error.
pub fn handshake_failure_reason(err: &rustls::Error) -> &'static str {
    if let Some(r) = rejection_of(err) {
        return r.reason();
    }
    match err {
        rustls::Error::AlertReceived(_) => "alert_received",
        rustls::Error::InvalidCertificate(_) => "invalid_certificate",
        rustls::Error::NoApplicationProtocol => "no_application_protocol",
        rustls::Error::PeerIncompatible(_) => "peer_incompatible",
        rustls::Error::InvalidMessage(_)
        | rustls::Error::PeerMisbehaved(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. } => "protocol_error",
        rustls::Error::DecryptError => "decrypt_error",
        _ => "other",
    }
}

/// Counts (and logs) a failed handshake in `tls_handshake_failures{direction, reason}`
/// unless one of the verifiers above already did (an [`SvidRejection`] in
/// `CertificateError::Other`). Call it from the accept/connect path for every handshake
/// error; it is what counts `no_certificate` in strict mode.
pub fn record_handshake_failure(direction: &'static str, err: &rustls::Error) {
    if matches!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner)))
            if inner.downcast_ref::<SvidRejection>().is_some()
    ) {
        return;
    }
    let reason = handshake_failure_reason(err);
    super::refusal_log::refused(
        direction,
        reason,
        &format_args!("TLS handshake failed: {err}"),
    );
    crate::metrics::global()
        .tls_handshake_failures
        .with_label_values(&[direction, reason])
        .inc();
}

/// [`record_handshake_failure`] for tokio-rustls' `io::Error`; I/O errors that carry no
/// rustls error are counted as `io`.
pub fn record_handshake_io_failure(direction: &'static str, err: &std::io::Error) {
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(tls) => record_handshake_failure(direction, tls),
        None => {
            super::refusal_log::refused(
                direction,
                "io",
                &format_args!("TLS handshake failed: {err}"),
            );
            crate::metrics::global()
                .tls_handshake_failures
                .with_label_values(&[direction, "io"])
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_variants() {
        let a = SpiffeId::parse("spiffe://td/a").unwrap();
        let b = SpiffeId::parse("spiffe://td/b").unwrap();
        assert!(PeerAuthorization::AnyTrusted.allows(&a));
        let exact = PeerAuthorization::Exact(HashSet::from([a.clone()]));
        assert!(exact.allows(&a) && !exact.allows(&b));
        let pred = PeerAuthorization::Predicate(Arc::new(|id: &SpiffeId| id.path() == "/b"));
        assert!(!pred.allows(&a) && pred.allows(&b));
        assert_eq!(format!("{pred:?}"), "Predicate(..)");
    }

    #[test]
    fn rejection_round_trips_through_rustls_error() {
        let err = reject("unit_test", SvidRejection::Expired, None);
        assert_eq!(rejection_of(&err), Some(SvidRejection::Expired));
        assert_eq!(
            rejection_of(&rustls::Error::NoCertificatesPresented),
            Some(SvidRejection::NoCertificate)
        );
        assert_eq!(rejection_of(&rustls::Error::DecryptError), None);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, err);
        assert_eq!(rejection_of_io(&io), Some(SvidRejection::Expired));
        let before = crate::metrics::global()
            .tls_handshake_failures
            .with_label_values(&["unit_test", "expired"])
            .get();
        assert_eq!(before, 1);
        // Already counted by the verifier: not counted twice.
        let err = reject("unit_test2", SvidRejection::Expired, None);
        record_handshake_failure("unit_test2", &err);
        assert_eq!(
            crate::metrics::global()
                .tls_handshake_failures
                .with_label_values(&["unit_test2", "expired"])
                .get(),
            1
        );
    }
}
