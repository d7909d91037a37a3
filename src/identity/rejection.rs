//! The vocabulary of certificate checks: why a certificate is refused
//! ([`SvidRejection`], one variant and one metric label per reason) and the TLS
//! role it is checked for ([`SvidUsage`]). Shared by the RFC 5280 profile
//! ([`super::profile`]), path validation ([`super::x509`]) and the rustls verifiers.

use webpki::{ExtendedKeyUsageValidator, KeyPurposeId, KeyPurposeIdIter, KeyUsage};

/// Why a presented certificate chain is not an acceptable X.509-SVID.
/// Each variant is a distinct reason with its own metric label ([`SvidRejection::reason`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidRejection {
    #[error("no certificate presented")]
    NoCertificate,
    #[error("certificate is not valid DER X.509")]
    Malformed,
    #[error("leaf has no URI SAN")]
    NoUriSan,
    #[error("leaf has more than one URI SAN")]
    MultipleUriSans,
    #[error("leaf URI SAN is not a valid SPIFFE ID")]
    InvalidSpiffeId,
    #[error("leaf SPIFFE ID has no path (names a trust domain, not a workload)")]
    RootPathId,
    #[error("leaf is a CA certificate (basicConstraints CA:TRUE)")]
    LeafIsCa,
    #[error("leaf has no keyUsage extension")]
    NoKeyUsage,
    #[error("leaf keyUsage lacks digitalSignature")]
    NoDigitalSignature,
    #[error("leaf keyUsage has keyCertSign")]
    KeyCertSign,
    #[error("leaf keyUsage has cRLSign")]
    CrlSign,
    #[error("leaf extendedKeyUsage does not allow this TLS role")]
    WrongExtendedKeyUsage,
    #[error("the leaf's trust domain has no configured bundle")]
    UntrustedTrustDomain,
    #[error("chain does not lead to an anchor of the leaf's trust domain")]
    UnknownIssuer,
    #[error("certificate expired")]
    Expired,
    #[error("certificate not yet valid")]
    NotYetValid,
    #[error("certificate signature is invalid")]
    BadSignature,
    #[error("certificate uses an unsupported signature algorithm")]
    UnsupportedSignatureAlgorithm,
    #[error("certificate chain is invalid")]
    InvalidChain,
    #[error("peer SPIFFE ID is not authorized")]
    NotAuthorized,
    #[error("an intermediate certificate of the path is expired")]
    IntermediateExpired,
    #[error("an intermediate certificate of the path is not yet valid")]
    IntermediateNotYetValid,
    #[error("the trust-bundle root of the path is expired")]
    RootExpired,
    #[error("the trust-bundle root of the path is not yet valid")]
    RootNotYetValid,
    #[error("a certificate is not X.509 version 3")]
    NotVersion3,
    #[error("a serial number is zero or negative")]
    SerialNotPositive,
    #[error("a serial number is longer than 20 octets")]
    SerialTooLong,
    #[error("signatureAlgorithm differs from the TBSCertificate signature field")]
    SignatureAlgorithmMismatch,
    #[error("a certificate has an extension that does not parse")]
    MalformedExtension,
    #[error("a certificate has an unknown critical extension")]
    UnknownCriticalExtension,
    #[error("a public key is too small (RSA under 2048 bits)")]
    WeakKey,
    #[error("a public key has an unsupported type or curve")]
    UnsupportedKey,
    #[error("the leaf carries name constraints")]
    LeafNameConstraints,
    #[error("a non-root certificate has no authority key identifier")]
    MissingAuthorityKeyId,
    #[error("the leaf has an empty subject and a non-critical subjectAltName")]
    SanNotCritical,
    #[error("a CA certificate lacks basicConstraints cA:TRUE")]
    CaNotCa,
    #[error("a CA certificate's basicConstraints is not critical")]
    CaBasicConstraintsNotCritical,
    #[error("a certificate has a path length constraint without cA:TRUE")]
    ContradictoryBasicConstraints,
    #[error("a CA certificate has no keyUsage extension")]
    CaNoKeyUsage,
    #[error("a CA certificate's keyUsage lacks keyCertSign")]
    CaNoKeyCertSign,
    #[error("a keyUsage extension is not critical")]
    KeyUsageNotCritical,
    #[error("a CA certificate has no subject key identifier")]
    CaMissingSubjectKeyId,
    #[error("a CA certificate has an empty subject")]
    CaEmptySubject,
    #[error("a CA certificate's extendedKeyUsage does not allow this TLS role")]
    CaExtendedKeyUsage,
    #[error("a path length constraint is exceeded")]
    PathLengthExceeded,
    #[error("a name constraint of a CA is violated")]
    NameConstraintViolation,
    #[error("a CA certificate has malformed name constraints")]
    MalformedNameConstraints,
}

impl SvidRejection {
    /// A snake_case label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoCertificate => "no_certificate",
            Self::Malformed => "malformed",
            Self::NoUriSan => "no_uri_san",
            Self::MultipleUriSans => "multiple_uri_sans",
            Self::InvalidSpiffeId => "invalid_spiffe_id",
            Self::RootPathId => "root_path_id",
            Self::LeafIsCa => "leaf_is_ca",
            Self::NoKeyUsage => "no_key_usage",
            Self::NoDigitalSignature => "no_digital_signature",
            Self::KeyCertSign => "key_cert_sign",
            Self::CrlSign => "crl_sign",
            Self::WrongExtendedKeyUsage => "wrong_extended_key_usage",
            Self::UntrustedTrustDomain => "untrusted_trust_domain",
            Self::UnknownIssuer => "unknown_issuer",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadSignature => "bad_signature",
            Self::UnsupportedSignatureAlgorithm => "unsupported_signature_algorithm",
            Self::InvalidChain => "invalid_chain",
            Self::NotAuthorized => "not_authorized",
            Self::IntermediateExpired => "intermediate_expired",
            Self::IntermediateNotYetValid => "intermediate_not_yet_valid",
            Self::RootExpired => "root_expired",
            Self::RootNotYetValid => "root_not_yet_valid",
            Self::NotVersion3 => "not_version_3",
            Self::SerialNotPositive => "serial_not_positive",
            Self::SerialTooLong => "serial_too_long",
            Self::SignatureAlgorithmMismatch => "signature_algorithm_mismatch",
            Self::MalformedExtension => "malformed_extension",
            Self::UnknownCriticalExtension => "unknown_critical_extension",
            Self::WeakKey => "weak_key",
            Self::UnsupportedKey => "unsupported_key",
            Self::LeafNameConstraints => "leaf_name_constraints",
            Self::MissingAuthorityKeyId => "missing_authority_key_id",
            Self::SanNotCritical => "san_not_critical",
            Self::CaNotCa => "ca_not_ca",
            Self::CaBasicConstraintsNotCritical => "ca_basic_constraints_not_critical",
            Self::ContradictoryBasicConstraints => "contradictory_basic_constraints",
            Self::CaNoKeyUsage => "ca_no_key_usage",
            Self::CaNoKeyCertSign => "ca_no_key_cert_sign",
            Self::KeyUsageNotCritical => "key_usage_not_critical",
            Self::CaMissingSubjectKeyId => "ca_missing_subject_key_id",
            Self::CaEmptySubject => "ca_empty_subject",
            Self::CaExtendedKeyUsage => "ca_extended_key_usage",
            Self::PathLengthExceeded => "path_length_exceeded",
            Self::NameConstraintViolation => "name_constraint_violation",
            Self::MalformedNameConstraints => "malformed_name_constraints",
        }
    }
}

/// The TLS role the SVID is verified for (extended key usage, when the leaf has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvidUsage {
    /// A client certificate, checked by a server: id-kp-clientAuth if EKU is present.
    ClientAuth,
    /// A server certificate, checked by a client: id-kp-serverAuth if EKU is present.
    ServerAuth,
    /// Either role: EKU absent, or containing serverAuth or clientAuth.
    AnyTls,
}

const EKU_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
const EKU_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

impl ExtendedKeyUsageValidator for SvidUsage {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        match self {
            Self::ClientAuth => KeyUsage::client_auth().validate(iter),
            Self::ServerAuth => KeyUsage::server_auth().validate(iter),
            Self::AnyTls => {
                let server = KeyPurposeId::new(EKU_SERVER_AUTH);
                let client = KeyPurposeId::new(EKU_CLIENT_AUTH);
                let mut empty = true;
                for id in iter {
                    empty = false;
                    let id = id?;
                    if id == server || id == client {
                        return Ok(());
                    }
                }
                if empty {
                    Ok(())
                } else {
                    #[allow(deprecated)]
                    Err(webpki::Error::RequiredEkuNotFound)
                }
            }
        }
    }
}
