//! Certificates that break the X.509-SVID rules on purpose, issued by a
//! development CA: [`LeafOptions`] starts from a valid SVID template and each
//! builder method breaks one rule; [`IssueCustom::issue_custom`] signs it.

use std::time::{Duration, SystemTime};

use portcullis::identity::{DevCa, DevCaError, SpiffeId};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

/// Leaves are back-dated by this much, as the development CA does.
const BACKDATE: Duration = Duration::from_secs(60);

/// What to put in a test leaf. Start from [`LeafOptions::for_id`] (a valid SVID
/// template) and break one rule with the builder methods.
#[derive(Debug, Clone)]
pub struct LeafOptions {
    /// URI SANs, in order (any string; need not be a SPIFFE ID).
    pub uris: Vec<String>,
    pub dns_names: Vec<String>,
    /// A subject common name; `None` leaves the subject empty (SAN then critical).
    pub subject_cn: Option<String>,
    pub is_ca: bool,
    /// Whether a keyUsage extension is present at all.
    pub key_usage: bool,
    pub digital_signature: bool,
    pub key_cert_sign: bool,
    pub crl_sign: bool,
    /// EKU serverAuth only (default: serverAuth + clientAuth).
    pub server_auth_only: bool,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// An RSA-2048 key instead of ECDSA P-256.
    pub rsa: bool,
}

impl LeafOptions {
    /// A valid SVID template for `id`, valid for an hour.
    pub fn for_id(id: &SpiffeId) -> Self {
        Self::for_uri(id.as_str())
    }

    /// Like `for_id` but with any URI string as the single URI SAN.
    pub fn for_uri(uri: &str) -> Self {
        let now = SystemTime::now();
        LeafOptions {
            uris: vec![uri.to_owned()],
            dns_names: Vec::new(),
            subject_cn: None,
            is_ca: false,
            key_usage: true,
            digital_signature: true,
            key_cert_sign: false,
            crl_sign: false,
            server_auth_only: false,
            not_before: now.checked_sub(BACKDATE).unwrap_or(now),
            not_after: now + Duration::from_secs(3600),
            rsa: false,
        }
    }

    /// The leaf's key is RSA-2048 (its certificate is still signed by the CA).
    pub fn rsa(mut self) -> Self {
        self.rsa = true;
        self
    }

    pub fn extra_uri(mut self, uri: &str) -> Self {
        self.uris.push(uri.to_owned());
        self
    }

    /// No URI SAN; a subject CN is set so the certificate still names something.
    pub fn no_uri_san(mut self) -> Self {
        self.uris.clear();
        self.subject_cn
            .get_or_insert_with(|| "no-uri-san".to_owned());
        self
    }

    pub fn dns(mut self, name: &str) -> Self {
        self.dns_names.push(name.to_owned());
        self
    }

    pub fn ca(mut self) -> Self {
        self.is_ca = true;
        self
    }

    pub fn no_key_usage(mut self) -> Self {
        self.key_usage = false;
        self
    }

    pub fn no_digital_signature(mut self) -> Self {
        self.digital_signature = false;
        self
    }

    pub fn key_cert_sign(mut self) -> Self {
        self.key_cert_sign = true;
        self
    }

    pub fn crl_sign(mut self) -> Self {
        self.crl_sign = true;
        self
    }

    pub fn server_auth_only(mut self) -> Self {
        self.server_auth_only = true;
        self
    }

    pub fn validity(mut self, not_before: SystemTime, not_after: SystemTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }
}

/// A leaf issued from [`LeafOptions`] and its key.
#[derive(Debug, Clone)]
pub struct TestLeaf {
    pub cert_der: CertificateDer<'static>,
    pub cert_pem: String,
    /// PKCS#8 PEM.
    pub key_pem: String,
    /// PKCS#8 DER.
    pub key_der: Vec<u8>,
}

impl TestLeaf {
    /// The private key for rustls.
    pub fn private_key(&self) -> rustls_pki_types::PrivateKeyDer<'static> {
        rustls_pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into())
    }
}

/// Issues leaves exactly as [`LeafOptions`] say, without any rule checks.
pub trait IssueCustom {
    /// A leaf for `opts`, signed by this CA.
    fn issue_custom(&self, opts: &LeafOptions) -> Result<TestLeaf, DevCaError>;
}

impl IssueCustom for DevCa {
    fn issue_custom(&self, opts: &LeafOptions) -> Result<TestLeaf, DevCaError> {
        let key = if opts.rsa {
            KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)?
        } else {
            KeyPair::generate()?
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = &opts.subject_cn {
            params
                .distinguished_name
                .push(DnType::CommonName, cn.as_str());
        }
        let mut sans = opts
            .uris
            .iter()
            .map(|u| uri_san(u))
            .collect::<Result<Vec<_>, _>>()?;
        for dns in &opts.dns_names {
            let name = dns
                .as_str()
                .try_into()
                .map_err(|_| DevCaError::BadSan(dns.clone()))?;
            sans.push(SanType::DnsName(name));
        }
        params.subject_alt_names = sans;
        params.is_ca = if opts.is_ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        if opts.key_usage {
            let mut ku = Vec::new();
            if opts.digital_signature {
                ku.push(KeyUsagePurpose::DigitalSignature);
            }
            if opts.key_cert_sign {
                ku.push(KeyUsagePurpose::KeyCertSign);
            }
            if opts.crl_sign {
                ku.push(KeyUsagePurpose::CrlSign);
            }
            if ku.is_empty() {
                // rcgen omits an empty keyUsage; keyAgreement keeps the extension present.
                ku.push(KeyUsagePurpose::KeyAgreement);
            }
            params.key_usages = ku;
        }
        params.extended_key_usages = if opts.server_auth_only {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        } else {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        };
        params.not_before = to_offset(opts.not_before);
        params.not_after = to_offset(opts.not_after);
        let cert = self.sign(params, &key)?;
        Ok(TestLeaf {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        })
    }
}

fn uri_san(uri: &str) -> Result<SanType, DevCaError> {
    uri.try_into()
        .map(SanType::URI)
        .map_err(|_| DevCaError::BadSan(uri.to_owned()))
}

/// Whole seconds: X.509 times have no fractions.
fn to_offset(t: SystemTime) -> OffsetDateTime {
    let t = OffsetDateTime::from(t);
    t.replace_nanosecond(0).unwrap_or(t)
}
