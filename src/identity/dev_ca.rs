//! The development CA (`portcullis ca init|issue`, and the zero-configuration default):
//! an ECDSA P-256 root per trust domain, generated and used with rcgen, that issues
//! X.509-SVIDs.
//!
//! Files: the CA lives in `<dir>/ca.crt` + `<dir>/ca.key` (mode 0600); an issued SVID is
//! written as `tls.crt`, `tls.key` (0600) and `ca.crt`, each atomically (temp file +
//! rename) so that a file watcher never reads a half-written file.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::spiffe_id::{SpiffeId, TrustDomain};
use super::x509::{certs_from_pem, SvidError, TrustBundles};

/// File names used by [`DevCa`] and [`IssuedSvid`].
pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
pub const SVID_CERT_FILE: &str = "tls.crt";
pub const SVID_KEY_FILE: &str = "tls.key";

/// Validity of a generated CA: ten years.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Leaves and the CA are back-dated by this much to tolerate clock skew.
const BACKDATE: Duration = Duration::from_secs(60);

/// Errors of the development CA.
#[derive(Debug, thiserror::Error)]
pub enum DevCaError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} already exists; refusing to overwrite a CA key (remove it or use `load`)")]
    CaKeyExists(PathBuf),
    #[error("no development CA in {0} (ca.crt and ca.key are missing)")]
    NotInitialized(PathBuf),
    #[error("{path}: {source}")]
    Pem {
        path: PathBuf,
        #[source]
        source: SvidError,
    },
    #[error("{path}: not a valid CA private key: {source}")]
    BadCaKey {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("{0}: CA certificate does not parse")]
    MalformedCaCert(PathBuf),
    #[error("{0}: certificate is not a CA (basicConstraints CA:TRUE missing)")]
    NotACa(PathBuf),
    #[error("{0}: CA certificate has no spiffe://<trust-domain> URI SAN")]
    NoTrustDomain(PathBuf),
    #[error("ca.key does not match the public key of ca.crt in {0}")]
    KeyMismatch(PathBuf),
    #[error("the CA in {dir} is for trust domain {found}, not {expected}")]
    TrustDomainMismatch {
        dir: PathBuf,
        expected: TrustDomain,
        found: TrustDomain,
    },
    #[error("{id} is outside the CA's trust domain {trust_domain}")]
    OutsideTrustDomain {
        id: SpiffeId,
        trust_domain: TrustDomain,
    },
    #[error("{0} names a trust domain, not a workload; an SVID needs a path")]
    RootId(SpiffeId),
    #[error("the SVID lifetime must be greater than zero")]
    ZeroTtl,
    #[error("the SVID lifetime is too long")]
    TtlTooLong,
    #[error("URI SAN {0:?} is not an IA5 string")]
    BadSan(String),
    #[error("the system random generator failed")]
    Random,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DevCaError + '_ {
    move |source| DevCaError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A development CA for one trust domain: its certificate and signing key.
pub struct DevCa {
    trust_domain: TrustDomain,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for DevCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCa")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl DevCa {
    /// Generates a new CA in memory: ECDSA P-256, CA:TRUE, keyCertSign + cRLSign, URI SAN
    /// `spiffe://<td>`, ten years. Each CA gets a distinct subject name, so a certificate
    /// from another CA of the same trust domain fails with `UnknownIssuer`.
    pub fn generate(td: &TrustDomain) -> Result<Self, DevCaError> {
        let key = KeyPair::generate()?;
        let serial = random_serial()?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "portcullis");
        dn.push(
            DnType::CommonName,
            format!(
                "portcullis development CA {td} {}",
                hex::encode(&serial.as_ref()[..4])
            ),
        );
        params.distinguished_name = dn;
        params.serial_number = Some(serial);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names = vec![uri_san(&td.id_string())?];
        params.not_before = to_offset(now.checked_sub(BACKDATE).unwrap_or(now));
        params.not_after = to_offset(now.checked_add(CA_VALIDITY).ok_or(DevCaError::TtlTooLong)?);
        let cert = params.self_signed(&key)?;
        Ok(DevCa {
            trust_domain: td.clone(),
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Generates a CA and writes `dir/ca.crt` and `dir/ca.key` (mode 0600). Refuses to
    /// overwrite an existing `ca.key`.
    pub fn init(td: &TrustDomain, dir: &Path) -> Result<Self, DevCaError> {
        let key_path = dir.join(CA_KEY_FILE);
        if key_path.exists() {
            return Err(DevCaError::CaKeyExists(key_path));
        }
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let ca = Self::generate(td)?;
        write_new(&key_path, ca.key_pem.as_bytes(), 0o600)?;
        write_atomic(&dir.join(CA_CERT_FILE), ca.cert_pem.as_bytes(), 0o644)?;
        Ok(ca)
    }

    /// Loads `dir/ca.crt` and `dir/ca.key`; the trust domain comes from the CA's URI SAN.
    pub fn load(dir: &Path) -> Result<Self, DevCaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if !cert_path.exists() && !key_path.exists() {
            return Err(DevCaError::NotInitialized(dir.to_owned()));
        }
        let cert_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let cert_der = certs_from_pem(cert_pem.as_bytes())
            .map_err(|source| DevCaError::Pem {
                path: cert_path.clone(),
                source,
            })?
            .swap_remove(0);
        let key = KeyPair::from_pem(&key_pem).map_err(|source| DevCaError::BadCaKey {
            path: key_path.clone(),
            source,
        })?;

        let (_, x509) = X509Certificate::from_der(cert_der.as_ref())
            .map_err(|_| DevCaError::MalformedCaCert(cert_path.clone()))?;
        if !x509.is_ca() {
            return Err(DevCaError::NotACa(cert_path));
        }
        let trust_domain = ca_trust_domain(&x509).ok_or(DevCaError::NoTrustDomain(cert_path))?;
        if x509.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(DevCaError::KeyMismatch(dir.to_owned()));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(DevCa {
            trust_domain,
            cert_pem,
            cert_der,
            key_pem,
            issuer,
        })
    }

    /// Loads the CA in `dir` if `ca.key` exists (it must be for `td`), else initializes it.
    pub fn load_or_init(td: &TrustDomain, dir: &Path) -> Result<Self, DevCaError> {
        if !dir.join(CA_KEY_FILE).exists() {
            return Self::init(td, dir);
        }
        let ca = Self::load(dir)?;
        if &ca.trust_domain != td {
            return Err(DevCaError::TrustDomainMismatch {
                dir: dir.to_owned(),
                expected: td.clone(),
                found: ca.trust_domain,
            });
        }
        Ok(ca)
    }

    /// The CA's trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA certificate, PEM (the trust bundle, `ca.crt`).
    pub fn ca_cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA certificate, DER.
    pub fn ca_cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Trust bundles holding only this CA, for its trust domain.
    pub fn trust_bundles(&self) -> TrustBundles {
        let mut b = TrustBundles::new();
        b.add(self.trust_domain.clone(), vec![self.cert_der.clone()]);
        b
    }

    /// Issues an X.509-SVID for `id`, valid from one minute ago for `ttl`.
    pub fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<IssuedSvid, DevCaError> {
        self.issue_with_dns(id, ttl, &[])
    }

    /// Like [`DevCa::issue`], with DNS SANs besides the SPIFFE ID (the X.509-SVID
    /// spec allows them): for clients such as curl that check a host name.
    pub fn issue_with_dns(
        &self,
        id: &SpiffeId,
        ttl: Duration,
        dns: &[String],
    ) -> Result<IssuedSvid, DevCaError> {
        if id.trust_domain_name() != self.trust_domain.as_str() {
            return Err(DevCaError::OutsideTrustDomain {
                id: id.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        if id.is_root() {
            return Err(DevCaError::RootId(id.clone()));
        }
        if ttl.is_zero() {
            return Err(DevCaError::ZeroTtl);
        }
        let now = SystemTime::now();
        let not_after = now.checked_add(ttl).ok_or(DevCaError::TtlTooLong)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![uri_san(id.as_str())?];
        for name in dns {
            let dns_name = name
                .as_str()
                .try_into()
                .map_err(|_| DevCaError::BadSan(name.clone()))?;
            params.subject_alt_names.push(SanType::DnsName(dns_name));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = to_offset(now.checked_sub(BACKDATE).unwrap_or(now));
        params.not_after = to_offset(not_after);
        let leaf = self.sign(params, &key)?;
        Ok(IssuedSvid {
            cert_pem: leaf.pem(),
            key_pem: key.serialize_pem(),
            bundle_pem: self.cert_pem.clone(),
            id: id.clone(),
            not_after: SystemTime::from(to_offset(not_after)),
        })
    }

    /// Signs `params` for `key` as this CA, with a fresh random serial number and
    /// the authority key identifier; nothing else is added or checked. For tools and
    /// tests that need certificates other than SVIDs ([`DevCa::issue`] makes those).
    pub fn sign(
        &self,
        mut params: CertificateParams,
        key: &KeyPair,
    ) -> Result<rcgen::Certificate, DevCaError> {
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        Ok(params.signed_by(key, &self.issuer)?)
    }
}

/// An issued SVID: certificate, private key and the bundle to trust.
#[derive(Clone)]
pub struct IssuedSvid {
    /// The chain, PEM: the leaf only (the CA is a root).
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The CA certificate, PEM.
    pub bundle_pem: String,
    pub id: SpiffeId,
    pub not_after: SystemTime,
}

impl fmt::Debug for IssuedSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedSvid")
            .field("id", &self.id)
            .field("not_after", &self.not_after)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl IssuedSvid {
    /// Writes `tls.crt`, `tls.key` (0600) and `ca.crt` into `dir`, each atomically.
    /// The certificate is written last, so a watcher keyed on `tls.crt` sees a key that
    /// is already in place.
    pub fn write(&self, dir: &Path) -> Result<(), DevCaError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        write_atomic(&dir.join(CA_CERT_FILE), self.bundle_pem.as_bytes(), 0o644)?;
        write_atomic(&dir.join(SVID_KEY_FILE), self.key_pem.as_bytes(), 0o600)?;
        write_atomic(&dir.join(SVID_CERT_FILE), self.cert_pem.as_bytes(), 0o644)?;
        Ok(())
    }
}

/// The trust domain named by a CA certificate's `spiffe://<td>` URI SAN.
fn ca_trust_domain(cert: &X509Certificate<'_>) -> Option<TrustDomain> {
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(uri) => SpiffeId::parse(uri)
            .ok()
            .filter(SpiffeId::is_root)
            .map(|id| id.trust_domain()),
        _ => None,
    })
}

fn uri_san(uri: &str) -> Result<SanType, DevCaError> {
    uri.try_into()
        .map(SanType::URI)
        .map_err(|_| DevCaError::BadSan(uri.to_owned()))
}

/// A random positive 16-byte serial number.
fn random_serial() -> Result<SerialNumber, DevCaError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| DevCaError::Random)?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // keep the encoding at full length
    Ok(SerialNumber::from_slice(&bytes))
}

/// Whole seconds: X.509 times have no fractions, so `not_after` matches the certificate.
fn to_offset(t: SystemTime) -> OffsetDateTime {
    let t = OffsetDateTime::from(t);
    t.replace_nanosecond(0).unwrap_or(t)
}

fn temp_path(path: &Path) -> Result<PathBuf, DevCaError> {
    let mut suffix = [0u8; 6];
    SystemRandom::new()
        .fill(&mut suffix)
        .map_err(|_| DevCaError::Random)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(path.with_file_name(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        hex::encode(suffix)
    )))
}

fn write_temp(tmp: &Path, data: &[u8], mode: u32) -> Result<(), DevCaError> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = opts.open(tmp).map_err(io_err(tmp))?;
    file.write_all(data).map_err(io_err(tmp))?;
    file.sync_all().map_err(io_err(tmp))?;
    Ok(())
}

fn sync_parent(path: &Path) {
    // Best effort: makes the rename durable; not all platforms allow opening a directory.
    if let Some(parent) = path.parent() {
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
    }
}

/// Writes `path` atomically: a temp file in the same directory, then rename over it.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), DevCaError> {
    let tmp = temp_path(path)?;
    let result =
        write_temp(&tmp, data, mode).and_then(|()| fs::rename(&tmp, path).map_err(io_err(path)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    sync_parent(path);
    result
}

/// Writes `path` completely or not at all, failing if it already exists: a temp file,
/// then a hard link to the final name (which fails on an existing file).
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), DevCaError> {
    let tmp = temp_path(path)?;
    let result = write_temp(&tmp, data, mode).and_then(|()| {
        fs::hard_link(&tmp, path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                DevCaError::CaKeyExists(path.to_owned())
            } else {
                DevCaError::Io {
                    path: path.to_owned(),
                    source: e,
                }
            }
        })
    });
    let _ = fs::remove_file(&tmp);
    sync_parent(path);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::x509::{leaf_info, private_key_from_pem, verify_svid};
    use rustls_pki_types::UnixTime;

    fn td(s: &str) -> TrustDomain {
        TrustDomain::parse(s).unwrap()
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn issue_errors() {
        let ca = DevCa::generate(&td("example.org")).unwrap();
        let hour = Duration::from_secs(3600);
        assert!(matches!(
            ca.issue(&id("spiffe://other.org/w"), hour),
            Err(DevCaError::OutsideTrustDomain { .. })
        ));
        assert!(matches!(
            ca.issue(&id("spiffe://example.org"), hour),
            Err(DevCaError::RootId(_))
        ));
        assert!(matches!(
            ca.issue(&id("spiffe://example.org/w"), Duration::ZERO),
            Err(DevCaError::ZeroTtl)
        ));
        assert!(matches!(
            ca.issue(&id("spiffe://example.org/w"), Duration::MAX),
            Err(DevCaError::TtlTooLong)
        ));
    }

    #[test]
    fn issued_leaf_follows_the_svid_profile() {
        let ca = DevCa::generate(&td("example.org")).unwrap();
        let svid = ca
            .issue(
                &id("spiffe://example.org/ns/a/sa/b"),
                Duration::from_secs(600),
            )
            .unwrap();
        let der = certs_from_pem(svid.cert_pem.as_bytes()).unwrap().remove(0);
        let (_, x) = X509Certificate::from_der(der.as_ref()).unwrap();
        assert!(x.subject().iter().next().is_none(), "subject must be empty");
        let san = x.subject_alternative_name().unwrap().unwrap();
        assert!(san.critical, "SAN must be critical with an empty subject");
        let ku = x.key_usage().unwrap().unwrap();
        assert!(ku.critical);
        assert!(ku.value.digital_signature() && !ku.value.key_encipherment());
        let bc = x.basic_constraints().unwrap().unwrap();
        assert!(!bc.value.ca);
        let eku = x.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.server_auth && eku.value.client_auth);
        assert_eq!(x.raw_serial().len(), 16);
        let lifetime = x.validity().not_after.timestamp() - x.validity().not_before.timestamp();
        assert_eq!(lifetime, 660);
        // Serials are random, not derived from the key.
        let other = ca
            .issue(
                &id("spiffe://example.org/ns/a/sa/b"),
                Duration::from_secs(600),
            )
            .unwrap();
        let other_der = certs_from_pem(other.cert_pem.as_bytes()).unwrap().remove(0);
        assert_ne!(
            leaf_info(&der).unwrap().serial,
            leaf_info(&other_der).unwrap().serial
        );
        assert!(private_key_from_pem(svid.key_pem.as_bytes()).is_ok());
        assert!(svid.key_pem.contains("BEGIN PRIVATE KEY"));
        assert!(!format!("{svid:?}").contains("PRIVATE"));
    }

    #[test]
    fn init_load_round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let ca = DevCa::init(&td("example.org"), &ca_dir).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(ca_dir.join(CA_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            DevCa::init(&td("example.org"), &ca_dir),
            Err(DevCaError::CaKeyExists(_))
        ));
        let loaded = DevCa::load(&ca_dir).unwrap();
        assert_eq!(loaded.trust_domain(), &td("example.org"));
        assert_eq!(loaded.ca_cert_pem(), ca.ca_cert_pem());
        // A leaf from the loaded CA verifies against the original bundle.
        let svid = loaded
            .issue(&id("spiffe://example.org/w"), Duration::from_secs(60))
            .unwrap();
        let chain = certs_from_pem(svid.cert_pem.as_bytes()).unwrap();
        assert_eq!(
            verify_svid(&chain, &ca.trust_bundles(), UnixTime::now()).unwrap(),
            svid.id
        );
        assert!(DevCa::load_or_init(&td("example.org"), &ca_dir).is_ok());
        assert!(matches!(
            DevCa::load_or_init(&td("other.org"), &ca_dir),
            Err(DevCaError::TrustDomainMismatch { .. })
        ));
        assert!(matches!(
            DevCa::load(&dir.path().join("nothing")),
            Err(DevCaError::NotInitialized(_))
        ));
        // A key that does not belong to the certificate is refused.
        let other = DevCa::init(&td("example.org"), &dir.path().join("other")).unwrap();
        fs::write(ca_dir.join(CA_KEY_FILE), other.key_pem.as_bytes()).unwrap();
        assert!(matches!(
            DevCa::load(&ca_dir),
            Err(DevCaError::KeyMismatch(_))
        ));
        // load_or_init creates a missing CA.
        let fresh = DevCa::load_or_init(&td("fresh.org"), &dir.path().join("fresh")).unwrap();
        assert_eq!(fresh.trust_domain(), &td("fresh.org"));
    }

    #[test]
    fn issued_svid_write() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::generate(&td("example.org")).unwrap();
        let svid = ca
            .issue(&id("spiffe://example.org/w"), Duration::from_secs(60))
            .unwrap();
        svid.write(dir.path()).unwrap();
        svid.write(dir.path()).unwrap(); // overwrites in place
        assert_eq!(
            fs::read_to_string(dir.path().join(SVID_CERT_FILE)).unwrap(),
            svid.cert_pem
        );
        assert_eq!(
            fs::read_to_string(dir.path().join(CA_CERT_FILE)).unwrap(),
            ca.ca_cert_pem()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(SVID_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty());
    }
}
