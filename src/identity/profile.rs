//! The RFC 5280 certificate profile and the X.509-SVID signing-certificate rules that
//! rustls-webpki's path building leaves out: applied to the leaf before path building,
//! to every intermediate of the path webpki found, and to every trust-bundle root when
//! the bundle is loaded.
//!
//! webpki keeps what it does well (DER, path building, signatures, validity of the
//! leaf and intermediates, `cA` and path length of intermediates, DNS/IP name
//! constraints, unknown critical extensions of the leaf and intermediates). Here come
//! the rules it does not check: `keyCertSign` and a critical `basicConstraints` on
//! every CA, root properties, serial numbers, key identifiers, name constraints in a
//! leaf or malformed in a CA, CA extended key usage, the outer/inner signature
//! algorithm match, public key types and sizes, and extensions that do not parse.
//! Each failure is its own [`SvidRejection`] variant.

use x509_parser::der_parser::oid;
use x509_parser::extensions::{GeneralName, NameConstraints, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate, X509Version};
use x509_parser::public_key::PublicKey;

use super::rejection::{SvidRejection, SvidUsage};

/// Smallest RSA modulus accepted anywhere in a path (NIST SP 800-57, RFC 7518 §3.3).
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus the signature algorithms of the crypto provider verify.
pub const MAX_RSA_BITS: usize = 8192;

/// Parses one certificate: DER X.509 with nothing after it.
pub(crate) fn parse(der: &[u8]) -> Result<X509Certificate<'_>, SvidRejection> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        _ => Err(SvidRejection::Malformed),
    }
}

/// What a CA certificate imposes on the certificates below it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CaFacts {
    /// The CA's extended key usage, when it has one: (serverAuth, clientAuth, any).
    eku: Option<(bool, bool, bool)>,
    /// `pathLenConstraint`: how many non-self-issued intermediates may follow.
    path_len: Option<u32>,
    /// Subject equals issuer (self-issued certificates do not count toward path length).
    self_issued: bool,
}

impl CaFacts {
    /// RFC 5280 §4.2.1.9: `below` non-self-issued intermediates follow this CA.
    pub(crate) fn check_path_len(&self, below: usize) -> Result<(), SvidRejection> {
        match self.path_len {
            Some(max) if below > max as usize => Err(SvidRejection::PathLengthExceeded),
            _ => Ok(()),
        }
    }

    pub(crate) fn self_issued(&self) -> bool {
        self.self_issued
    }

    /// A CA with an extended key usage extension constrains the purposes of its
    /// subordinates (the EKU nesting Go's verifier and CA/B practice apply).
    pub(crate) fn check_usage(&self, usage: SvidUsage) -> Result<(), SvidRejection> {
        let Some((server, client, any)) = self.eku else {
            return Ok(());
        };
        if any || usage_allowed(usage, server, client) {
            Ok(())
        } else {
            Err(SvidRejection::CaExtendedKeyUsage)
        }
    }
}

/// Whether an EKU with these purposes allows the TLS role.
fn usage_allowed(usage: SvidUsage, server: bool, client: bool) -> bool {
    match usage {
        SvidUsage::ServerAuth => server,
        SvidUsage::ClientAuth => client,
        SvidUsage::AnyTls => server || client,
    }
}

/// The rules every certificate of a path follows, whatever its position:
/// v3, each extension at most once, a positive serial of at most 20 octets (RFC 5280 §4.1.2.2), matching signature
/// algorithm fields (§4.1.1.2), extensions that parse, no unknown critical extension
/// (§4.2), an acceptable public key.
fn check_common(cert: &X509Certificate<'_>) -> Result<(), SvidRejection> {
    if cert.version() != X509Version::V3 {
        return Err(SvidRejection::NotVersion3);
    }
    check_serial(cert.raw_serial())?;
    if cert.signature_algorithm != cert.tbs_certificate.signature {
        return Err(SvidRejection::SignatureAlgorithmMismatch);
    }
    let exts = cert.extensions();
    for (i, ext) in exts.iter().enumerate() {
        // At most one instance of each extension (RFC 5280 §4.2).
        if exts[..i].iter().any(|e| e.oid == ext.oid) {
            return Err(SvidRejection::Malformed);
        }
        match ext.parsed_extension() {
            ParsedExtension::ParseError { .. } => return Err(SvidRejection::MalformedExtension),
            ParsedExtension::UnsupportedExtension { .. } if ext.critical => {
                return Err(SvidRejection::UnknownCriticalExtension)
            }
            // Each access location must be a usable URI (RFC 5280 §4.2.2.1).
            ParsedExtension::AuthorityInfoAccess(aia)
                if aia.accessdescs.is_empty()
                    || aia.accessdescs.iter().any(
                        |d| !matches!(d.access_location, GeneralName::URI(u) if !u.is_empty()),
                    ) =>
            {
                return Err(SvidRejection::MalformedExtension)
            }
            // Policy constraints and inhibitAnyPolicy MUST be critical (RFC 5280
            // §4.2.1.11, §4.2.1.14) — and, critical, are not processed here (below).
            ParsedExtension::PolicyConstraints(_) | ParsedExtension::InhibitAnyPolicy(_)
                if !ext.critical =>
            {
                return Err(SvidRejection::MalformedExtension)
            }
            parsed if ext.critical && !critical_understood(parsed) => {
                return Err(SvidRejection::UnknownCriticalExtension)
            }
            _ => {}
        }
    }
    check_public_key(cert)
}

/// Extensions this verifier processes, and so may be critical. Everything else
/// marked critical is refused (RFC 5280 §4.2: "MUST reject the certificate if it
/// encounters a critical extension it does not recognize").
fn critical_understood(ext: &ParsedExtension<'_>) -> bool {
    matches!(
        ext,
        ParsedExtension::BasicConstraints(_)
            | ParsedExtension::KeyUsage(_)
            | ParsedExtension::ExtendedKeyUsage(_)
            | ParsedExtension::SubjectAlternativeName(_)
            | ParsedExtension::NameConstraints(_)
    )
}

/// RFC 5280 §4.1.2.2: positive, at most 20 octets, minimally encoded (X.690 §8.3.2).
pub(crate) fn check_serial(raw: &[u8]) -> Result<(), SvidRejection> {
    let Some(&first) = raw.first() else {
        return Err(SvidRejection::Malformed);
    };
    if first & 0x80 != 0 {
        return Err(SvidRejection::SerialNotPositive);
    }
    if raw.len() > 1 && first == 0 && raw[1] & 0x80 == 0 {
        return Err(SvidRejection::Malformed);
    }
    let magnitude = if first == 0 { &raw[1..] } else { raw };
    if magnitude.iter().all(|b| *b == 0) {
        return Err(SvidRejection::SerialNotPositive);
    }
    if magnitude.len() > 20 {
        return Err(SvidRejection::SerialTooLong);
    }
    Ok(())
}

/// RSA of [`MIN_RSA_BITS`] to [`MAX_RSA_BITS`], ECDSA on P-256, P-384 or P-521, or Ed25519.
fn check_public_key(cert: &X509Certificate<'_>) -> Result<(), SvidRejection> {
    let spki = cert.public_key();
    let alg = &spki.algorithm.algorithm;
    if *alg == oid!(1.3.101 .112) {
        return if spki.subject_public_key.data.len() == 32 {
            Ok(())
        } else {
            Err(SvidRejection::UnsupportedKey)
        };
    }
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => match rsa_bits(rsa.modulus) {
            bits if bits < MIN_RSA_BITS => Err(SvidRejection::WeakKey),
            // Larger moduli than the verifier's algorithms accept (RSA_*_2048_8192).
            bits if bits > MAX_RSA_BITS => Err(SvidRejection::UnsupportedKey),
            _ => Ok(()),
        },
        Ok(PublicKey::EC(_)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            match curve {
                Some(c)
                    if c == oid!(1.2.840 .10045 .3 .1 .7)
                        || c == oid!(1.3.132 .0 .34)
                        || c == oid!(1.3.132 .0 .35) =>
                {
                    Ok(())
                }
                _ => Err(SvidRejection::UnsupportedKey),
            }
        }
        _ => Err(SvidRejection::UnsupportedKey),
    }
}

/// Bits of a big-endian unsigned integer.
pub(crate) fn rsa_bits(modulus: &[u8]) -> usize {
    let first = modulus
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(modulus.len());
    let m = &modulus[first..];
    match m.first() {
        None => 0,
        Some(top) => m.len() * 8 - top.leading_zeros() as usize,
    }
}

/// The leaf's extended key usage, when present, has both id-kp-serverAuth and
/// id-kp-clientAuth (X.509-SVID §4.4: "When included, fields id-kp-serverAuth and
/// id-kp-clientAuth MUST be set"), whatever role it is checked for. Checked before
/// path building, so that a refusal by the path builder's EKU check can only concern
/// a CA.
pub(crate) fn check_leaf_usage(cert: &X509Certificate<'_>) -> Result<(), SvidRejection> {
    let Some(eku) = cert
        .extended_key_usage()
        .map_err(|_| SvidRejection::Malformed)?
    else {
        return Ok(());
    };
    if eku.value.server_auth && eku.value.client_auth {
        Ok(())
    } else {
        Err(SvidRejection::WrongExtendedKeyUsage)
    }
}

/// The leaf rules of the profile (the X.509-SVID leaf rules are in `svid.rs`):
/// [`check_common`], no name constraints (RFC 5280 §4.2.1.10: CA certificates only),
/// an authority key identifier (§4.2.1.1), a critical SAN when the subject is empty
/// (§4.2.1.6).
pub(crate) fn check_leaf(cert: &X509Certificate<'_>) -> Result<(), SvidRejection> {
    check_common(cert)?;
    let nc = cert
        .name_constraints()
        .map_err(|_| SvidRejection::Malformed)?;
    if nc.is_some() {
        return Err(SvidRejection::LeafNameConstraints);
    }
    if !has_authority_key_id(cert) {
        return Err(SvidRejection::MissingAuthorityKeyId);
    }
    if cert.subject().iter().next().is_none() {
        let san = cert
            .subject_alternative_name()
            .map_err(|_| SvidRejection::Malformed)?;
        if !san.is_some_and(|s| s.critical) {
            return Err(SvidRejection::SanNotCritical);
        }
    }
    Ok(())
}

fn has_authority_key_id(cert: &X509Certificate<'_>) -> bool {
    cert.extensions().iter().any(|e| {
        matches!(
            e.parsed_extension(),
            ParsedExtension::AuthorityKeyIdentifier(aki) if aki.key_identifier.is_some()
        )
    })
}

/// Where a CA certificate sits: a root comes from a trust bundle, an intermediate
/// from the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CaRole {
    Root,
    Intermediate,
}

/// The CA rules (X.509-SVID §3.2, §4.1, §4.3 and RFC 5280 §4.2.1.3, §4.2.1.9, §4.2.1.2,
/// §4.1.2.6, §4.2.1.10): [`check_common`]; `basicConstraints` present, critical, `cA`
/// TRUE and no path length on a non-CA; a critical `keyUsage` with `keyCertSign`; a subject key
/// identifier; a non-empty subject; an authority key identifier unless a root;
/// well-formed name constraints.
pub(crate) fn check_ca(cert: &X509Certificate<'_>, role: CaRole) -> Result<CaFacts, SvidRejection> {
    check_common(cert)?;
    let bc = cert
        .basic_constraints()
        .map_err(|_| SvidRejection::Malformed)?
        .ok_or(SvidRejection::CaNotCa)?;
    if !bc.value.ca {
        return Err(if bc.value.path_len_constraint.is_some() {
            SvidRejection::ContradictoryBasicConstraints
        } else {
            SvidRejection::CaNotCa
        });
    }
    if !bc.critical {
        return Err(SvidRejection::CaBasicConstraintsNotCritical);
    }
    let ku = cert
        .key_usage()
        .map_err(|_| SvidRejection::Malformed)?
        .ok_or(SvidRejection::CaNoKeyUsage)?;
    if !ku.value.key_cert_sign() {
        return Err(SvidRejection::CaNoKeyCertSign);
    }
    if !ku.critical {
        return Err(SvidRejection::KeyUsageNotCritical);
    }
    let has_ski = cert.extensions().iter().any(|e| {
        matches!(
            e.parsed_extension(),
            ParsedExtension::SubjectKeyIdentifier(_)
        )
    });
    if !has_ski {
        return Err(SvidRejection::CaMissingSubjectKeyId);
    }
    if cert.subject().iter().next().is_none() {
        return Err(SvidRejection::CaEmptySubject);
    }
    if role == CaRole::Intermediate && !has_authority_key_id(cert) {
        return Err(SvidRejection::MissingAuthorityKeyId);
    }
    if let Some(nc) = cert
        .name_constraints()
        .map_err(|_| SvidRejection::MalformedNameConstraints)?
    {
        check_name_constraints(nc.value)?;
    }
    let eku = cert
        .extended_key_usage()
        .map_err(|_| SvidRejection::Malformed)?
        .map(|e| (e.value.server_auth, e.value.client_auth, e.value.any));
    Ok(CaFacts {
        eku,
        path_len: bc.value.path_len_constraint,
        self_issued: cert.subject().as_raw() == cert.issuer().as_raw(),
    })
}

/// RFC 5280 §4.2.1.10: at least one non-empty subtree list; every base a well-formed
/// name of its type (a DNS constraint is a host name, no leading period, no empty
/// label; a URI constraint a host or `.domain`; no empty names).
fn check_name_constraints(nc: &NameConstraints<'_>) -> Result<(), SvidRejection> {
    let lists = [&nc.permitted_subtrees, &nc.excluded_subtrees];
    if lists
        .iter()
        .all(|l| l.as_ref().is_none_or(|v| v.is_empty()))
        || lists
            .iter()
            .any(|l| l.as_ref().is_some_and(|v| v.is_empty()))
    {
        return Err(SvidRejection::MalformedNameConstraints);
    }
    for subtree in lists.into_iter().flatten().flatten() {
        let ok = match &subtree.base {
            GeneralName::DNSName(d) => host_name_ok(d),
            GeneralName::URI(u) => host_name_ok(u.strip_prefix('.').unwrap_or(u)),
            GeneralName::RFC822Name(m) => !m.is_empty(),
            GeneralName::IPAddress(ip) => ip.len() == 8 || ip.len() == 32,
            _ => true,
        };
        if !ok {
            return Err(SvidRejection::MalformedNameConstraints);
        }
    }
    Ok(())
}

/// A host name: dot-separated, non-empty labels of letters, digits, `-` and `_`.
fn host_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials() {
        assert_eq!(check_serial(&[1]), Ok(()));
        assert_eq!(check_serial(&[0, 0x80]), Ok(()));
        assert_eq!(check_serial(&[0]), Err(SvidRejection::SerialNotPositive));
        assert_eq!(check_serial(&[0xff]), Err(SvidRejection::SerialNotPositive));
        assert_eq!(check_serial(&[0, 1]), Err(SvidRejection::Malformed));
        assert_eq!(check_serial(&[]), Err(SvidRejection::Malformed));
        assert_eq!(check_serial(&[1; 20]), Ok(()));
        let mut twenty_high = vec![0u8];
        twenty_high.extend([0x80; 20]);
        assert_eq!(check_serial(&twenty_high), Ok(()));
        assert_eq!(check_serial(&[1; 21]), Err(SvidRejection::SerialTooLong));
    }

    #[test]
    fn modulus_bits() {
        assert_eq!(rsa_bits(&[0, 0x80, 0]), 16);
        assert_eq!(rsa_bits(&[0x01, 0]), 9);
        assert_eq!(rsa_bits(&[]), 0);
    }

    #[test]
    fn host_names() {
        assert!(host_name_ok("example.org"));
        for bad in ["", ".example.org", "a..b", "example.org.", "a b", "a/b"] {
            assert!(!host_name_ok(bad), "{bad}");
        }
    }
}
