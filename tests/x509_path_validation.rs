//! X.509 path validation, one test per defect class. Each test generates its own chain
//! (root, intermediates, leaf) with rcgen, or with hand-edited DER re-signed by the
//! issuer where rcgen cannot express the defect, and checks the exact rejection reason
//! in the three places a chain is judged:
//!
//! - inbound: a real mTLS handshake on loopback in which the sidecar's server
//!   verifier refuses the client's chain (and counts it in
//!   `portcullis_tls_handshake_failures_total{direction="inbound"}`);
//! - outbound: a real handshake in which the sidecar's client verifier refuses the
//!   server's chain (`direction="outbound"`);
//! - own SVID: the sidecar's own identity at load/rotation (`Svid::from_pem_from`),
//!   whose error carries the reason used by `portcullis_identity_reloads_total`.
//!
//! Root defects are judged where roots are: when the bundle is loaded (refused, logged
//! and counted), after which chains to that root fail in both directions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use portcullis::identity::svid::{Svid, SvidPem};
use portcullis::identity::{
    rejection_of_io, verify_svid, PeerAuthorization, SvidClientVerifier, SvidError, SvidRejection,
    SvidServerVerifier, TrustBundles, TrustDomain,
};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    SigningKey,
};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const TD: &str = "example.org";
const LEAF_ID: &str = "spiffe://example.org/ns/default/sa/workload";

// Public keys this verifier must refuse, generated once for these tests with openssl.
/// RSA, 1024-bit modulus.
const RSA_1024_SPKI: &str = "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDCwPMeW40yXbQvJbSTra8CTkrwyY5GG095LBNA+BavvsAUkFW6lKvdQVYLq38YD9VUAwgNeEP0vZvMAQ7iPbXAuQJ2QRH++9zgKUB0AUZ9qL4+WCdGj/7yk+QAnzLFmpT8R9y+NM/R4LfH77TFWKay7Ocn9A3FX3PtHDFaUKPflQIDAQAB";
/// ECDSA on secp224r1.
const P224_SPKI: &str = "ME4wEAYHKoZIzj0CAQYFK4EEACEDOgAEgm98DsAkXBvM1y7a7rTWXuBDOPRHrpZbYfNftx152b90jLJiAIGdGUBwF2DpOVhdhcJoWP1kpCM=";
/// Ed448.
const ED448_SPKI: &str =
    "MEMwBQYDK2VxAzoA1/vmplzwf675LNiY9dwXEq9Da3ex0wpln5uXc/EmOqQTTaRlJLfOWXdRYQA7xNg2azpxgbpIdBAA";

// Extension OIDs (DER content octets) for the DER editor.
const OID_SKI: &[u8] = &[0x55, 0x1d, 0x0e];
const OID_AKI: &[u8] = &[0x55, 0x1d, 0x23];
const OID_BC: &[u8] = &[0x55, 0x1d, 0x13];
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];

/// A minimal DER toolkit: enough to take a certificate apart, change one field and
/// put it back together.
mod der {
    /// (tag, header length, content length) of the TLV at the start of `b`.
    pub fn header(b: &[u8]) -> (u8, usize, usize) {
        let tag = b[0];
        let first = b[1] as usize;
        if first < 0x80 {
            return (tag, 2, first);
        }
        let n = first & 0x7f;
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | b[2 + i] as usize;
        }
        (tag, 2 + n, len)
    }

    /// The complete TLVs inside `content`, in order.
    pub fn children(mut content: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !content.is_empty() {
            let (_, h, l) = header(content);
            out.push(content[..h + l].to_vec());
            content = &content[h + l..];
        }
        out
    }

    /// The content of one TLV.
    pub fn content(tlv: &[u8]) -> &[u8] {
        let (_, h, l) = header(tlv);
        &tlv[h..h + l]
    }

    /// DER length octets.
    pub fn len(n: usize) -> Vec<u8> {
        if n < 0x80 {
            return vec![n as u8];
        }
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        let mut out = vec![0x80 | bytes.len() as u8];
        out.extend(bytes);
        out
    }

    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend(len(content.len()));
        out.extend_from_slice(content);
        out
    }

    pub fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }
}

/// A change to a certificate that rcgen cannot make; applied to the TBSCertificate,
/// which is then signed again by the issuer.
#[derive(Clone, Debug)]
enum Edit {
    /// Replace the serial number's INTEGER content octets.
    Serial(Vec<u8>),
    /// Encode the serial number's length in a non-minimal long form (BER, not DER).
    NonMinimalSerialLength,
    /// Drop the extension with this OID.
    RemoveExtension(&'static [u8]),
    /// Set the criticality of the extension with this OID.
    Critical(&'static [u8], bool),
    /// Repeat the extension with this OID.
    DuplicateExtension(&'static [u8]),
    /// Replace the outer signatureAlgorithm only (the TBS keeps its own).
    OuterSignatureAlgorithm(Vec<u8>),
    /// Replace the version field ([0] EXPLICIT INTEGER) with this value.
    Version(u8),
    /// Replace the SubjectPublicKeyInfo (the certificate keeps being signed by its
    /// issuer; certificates below it cannot verify).
    Spki(Vec<u8>),
}

fn apply(tbs: &[u8], edit: &Edit) -> Vec<u8> {
    let mut fields = der::children(der::content(tbs));
    match edit {
        Edit::Serial(content) => fields[1] = der::tlv(0x02, content),
        Edit::NonMinimalSerialLength => {
            let c = der::content(&fields[1]).to_vec();
            let mut f = vec![0x02, 0x81, c.len() as u8];
            f.extend(c);
            fields[1] = f;
        }
        Edit::Version(v) => fields[0] = der::tlv(0xa0, &der::tlv(0x02, &[*v])),
        Edit::Spki(spki) => fields[6] = spki.clone(),
        Edit::RemoveExtension(oid) | Edit::Critical(oid, _) | Edit::DuplicateExtension(oid) => {
            let last = fields.len() - 1;
            assert_eq!(fields[last][0], 0xa3, "no extensions to edit");
            let list = der::content(der::content(&fields[last])).to_vec();
            let mut exts = Vec::new();
            for ext in der::children(&list) {
                let parts = der::children(der::content(&ext));
                if der::content(&parts[0]) != *oid {
                    exts.push(ext);
                    continue;
                }
                if let Edit::DuplicateExtension(_) = edit {
                    exts.push(ext.clone());
                    exts.push(ext);
                    continue;
                }
                if let Edit::Critical(_, critical) = edit {
                    let value = parts.last().unwrap().clone();
                    let mut p = vec![parts[0].clone()];
                    if *critical {
                        p.push(vec![0x01, 0x01, 0xff]);
                    }
                    p.push(value);
                    exts.push(der::seq(&p));
                }
            }
            fields[last] = der::tlv(0xa3, &der::seq(&exts));
        }
        Edit::OuterSignatureAlgorithm(_) => {}
    }
    der::seq(&fields)
}

/// What one certificate of a test chain looks like.
#[derive(Clone)]
struct Spec {
    name: &'static str,
    ca: IsCa,
    key_usages: Vec<KeyUsagePurpose>,
    ekus: Vec<ExtendedKeyUsagePurpose>,
    uri: Option<String>,
    dns: Vec<String>,
    /// Seconds relative to now.
    not_before: i64,
    not_after: i64,
    aki: bool,
    subject: bool,
    extensions: Vec<(Vec<u64>, bool, Vec<u8>)>,
    key: &'static rcgen::SignatureAlgorithm,
    edits: Vec<Edit>,
}

impl Spec {
    fn root() -> Spec {
        Spec {
            name: "test root",
            ca: IsCa::Ca(BasicConstraints::Unconstrained),
            key_usages: vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
            ekus: vec![],
            uri: Some(format!("spiffe://{TD}")),
            dns: vec![],
            not_before: -3600,
            not_after: 10 * 86400,
            aki: false,
            subject: true,
            extensions: vec![],
            key: &rcgen::PKCS_ECDSA_P256_SHA256,
            edits: vec![],
        }
    }

    fn intermediate(name: &'static str) -> Spec {
        Spec {
            name,
            aki: true,
            ..Spec::root()
        }
    }

    fn leaf() -> Spec {
        Spec {
            name: "",
            ca: IsCa::ExplicitNoCa,
            key_usages: vec![KeyUsagePurpose::DigitalSignature],
            ekus: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            uri: Some(LEAF_ID.to_owned()),
            subject: false,
            aki: true,
            not_after: 3600,
            ..Spec::root()
        }
    }

    fn ca(mut self, ca: IsCa) -> Self {
        self.ca = ca;
        self
    }
    fn ku(mut self, ku: &[KeyUsagePurpose]) -> Self {
        self.key_usages = ku.to_vec();
        self
    }
    fn eku(mut self, eku: &[ExtendedKeyUsagePurpose]) -> Self {
        self.ekus = eku.to_vec();
        self
    }
    fn validity(mut self, not_before: i64, not_after: i64) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }
    fn ext(mut self, oid: &[u64], critical: bool, content: Vec<u8>) -> Self {
        self.extensions.push((oid.to_vec(), critical, content));
        self
    }
    fn edit(mut self, e: Edit) -> Self {
        self.edits.push(e);
        self
    }
    fn spki_b64(self, b64: &str) -> Self {
        use base64::Engine as _;
        let spki = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        self.edit(Edit::Spki(spki))
    }
    fn key(mut self, alg: &'static rcgen::SignatureAlgorithm) -> Self {
        self.key = alg;
        self
    }
    fn no_aki(mut self) -> Self {
        self.aki = false;
        self
    }
    fn dns(mut self, name: &str) -> Self {
        self.dns.push(name.to_owned());
        self
    }
    fn no_subject(mut self) -> Self {
        self.subject = false;
        self
    }

    fn params(&self) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        if self.subject {
            p.distinguished_name.push(DnType::CommonName, self.name);
        }
        p.serial_number = Some(SerialNumber::from_slice(&[0x11, 0x22, 0x33, 0x44, 0x55]));
        p.is_ca = self.ca;
        p.key_usages = self.key_usages.clone();
        p.extended_key_usages = self.ekus.clone();
        let mut sans = Vec::new();
        if let Some(u) = &self.uri {
            sans.push(SanType::URI(u.as_str().try_into().unwrap()));
        }
        for d in &self.dns {
            sans.push(SanType::DnsName(d.as_str().try_into().unwrap()));
        }
        p.subject_alt_names = sans;
        p.use_authority_key_identifier_extension = self.aki;
        let at = |s: i64| {
            let t = if s >= 0 {
                SystemTime::now() + Duration::from_secs(s as u64)
            } else {
                SystemTime::now() - Duration::from_secs(s.unsigned_abs())
            };
            time::OffsetDateTime::from(t)
        };
        p.not_before = at(self.not_before);
        p.not_after = at(self.not_after);
        for (oid, critical, content) in &self.extensions {
            let mut e = CustomExtension::from_oid_content(oid, content.clone());
            e.set_criticality(*critical);
            p.custom_extensions.push(e);
        }
        p
    }
}

/// One generated certificate with the key that signs below it.
struct Made {
    der: Vec<u8>,
    params: CertificateParams,
    key: KeyPair,
}

/// Signs `spec` with `issuer` (or itself), then applies its DER edits and signs again.
fn make(spec: &Spec, issuer: Option<&Made>) -> Made {
    let key = KeyPair::generate_for(spec.key).unwrap();
    let params = spec.params();
    let cert = match issuer {
        None => params.self_signed(&key).unwrap(),
        Some(i) => params
            .signed_by(&key, &Issuer::from_params(&i.params, &i.key))
            .unwrap(),
    };
    let mut der_bytes = cert.der().to_vec();
    if !spec.edits.is_empty() {
        let parts = der::children(der::content(&der_bytes));
        let mut tbs = parts[0].clone();
        let mut sig_alg = parts[1].clone();
        for e in &spec.edits {
            tbs = apply(&tbs, e);
            if let Edit::OuterSignatureAlgorithm(alg) = e {
                sig_alg = alg.clone();
            }
        }
        let signer = issuer.map(|i| &i.key).unwrap_or(&key);
        let sig = signer.sign(&tbs).unwrap();
        let mut bits = vec![0u8];
        bits.extend(sig);
        der_bytes = der::seq(&[tbs, sig_alg, der::tlv(0x03, &bits)]);
    }
    Made {
        der: der_bytes,
        params,
        key,
    }
}

/// A generated chain: the root for the bundle, the presented chain (leaf first) and
/// the leaf's private key (a fresh key when the leaf's public key was replaced).
struct Chain {
    root: Vec<u8>,
    presented: Vec<Vec<u8>>,
    leaf_key: KeyPair,
}

fn chain(root: Spec, intermediates: &[Spec], leaf: Spec) -> Chain {
    let root = make(&root, None);
    let mut issued: Vec<Made> = Vec::new();
    for spec in intermediates {
        let m = make(spec, Some(issued.last().unwrap_or(&root)));
        issued.push(m);
    }
    let leaf_made = make(&leaf, Some(issued.last().unwrap_or(&root)));
    let mut presented = vec![leaf_made.der];
    presented.extend(issued.iter().rev().map(|m| m.der.clone()));
    Chain {
        root: root.der,
        presented,
        leaf_key: leaf_made.key,
    }
}

/// The usual shape: root → one intermediate → leaf.
fn three(root: Spec, intermediate: Spec, leaf: Spec) -> Chain {
    chain(root, &[intermediate], leaf)
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let body: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        body.join("\n")
    )
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn td() -> TrustDomain {
    TrustDomain::parse(TD).unwrap()
}

fn bundle_of(roots: &[&[u8]]) -> Arc<TrustBundles> {
    let text: String = roots.iter().map(|r| pem("CERTIFICATE", r)).collect();
    Arc::new(TrustBundles::from_pem_from(td(), text.as_bytes(), "test").unwrap())
}

fn certified(certs: &[Vec<u8>], key: &KeyPair) -> Arc<CertifiedKey> {
    let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = provider().key_provider.load_private_key(der).unwrap();
    let certs = certs
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    // Not `from_der`: a chain whose leaf key was replaced must still be presented.
    Arc::new(CertifiedKey::new(certs, signing))
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for Fixed {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

fn failures(direction: &str, reason: &str) -> u64 {
    portcullis::metrics::global()
        .tls_handshake_failures
        .with_label_values(&[direction, reason])
        .get()
}

/// One handshake on loopback; returns (server result, client result).
async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> (Result<(), std::io::Error>, Result<(), std::io::Error>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server);
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        tls.write_all(b"pong").await?;
        tls.shutdown().await
    });
    let client_result = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("ignored.invalid").unwrap();
        let mut tls = TlsConnector::from(client).connect(name, tcp).await?;
        tls.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        Ok(())
    }
    .await;
    let server_result = tokio::time::timeout(Duration::from_secs(10), server_task)
        .await
        .expect("server timed out")
        .unwrap();
    (server_result, client_result)
}

/// A server presenting `ck`, verifying clients with `verifier` (or not asking for them).
fn server_config(verifier: Option<SvidClientVerifier>, ck: Arc<CertifiedKey>) -> ServerConfig {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    match verifier {
        Some(v) => builder.with_client_cert_verifier(Arc::new(v)),
        None => builder.with_no_client_auth(),
    }
    .with_cert_resolver(Arc::new(Fixed(ck)))
}

/// A client verifying servers as SVIDs of `root`, presenting `ck` if given.
fn client_config(
    root: &[u8],
    direction: &'static str,
    ck: Option<Arc<CertifiedKey>>,
) -> ClientConfig {
    let verifier = SvidServerVerifier::new(
        bundle_of(&[root]),
        PeerAuthorization::AnyTrusted,
        provider(),
        direction,
    );
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    match ck {
        Some(ck) => builder.with_client_cert_resolver(Arc::new(Fixed(ck))),
        None => builder.with_no_client_auth(),
    }
}

fn rejection(e: std::io::Error) -> SvidRejection {
    rejection_of_io(&e).unwrap_or_else(|| panic!("not a rejection: {e}"))
}

/// Inbound: the sidecar's server verifier judges the client's `chain`. The server's
/// own SVID comes from a separate, valid PKI that the client trusts.
async fn inbound(c: &Chain) -> Result<(), SvidRejection> {
    let server_pki = chain(Spec::root(), &[], Spec::leaf());
    let verifier = SvidClientVerifier::new(
        bundle_of(&[&c.root]),
        PeerAuthorization::AnyTrusted,
        true,
        provider(),
        "inbound",
    );
    let server = server_config(
        Some(verifier),
        certified(&server_pki.presented, &server_pki.leaf_key),
    );
    let client = client_config(
        &server_pki.root,
        "inbound_test_client",
        Some(certified(&c.presented, &c.leaf_key)),
    );
    let (server_result, client_result) = handshake(Arc::new(server), Arc::new(client)).await;
    match server_result {
        Ok(()) => {
            assert!(client_result.is_ok(), "client failed: {client_result:?}");
            Ok(())
        }
        Err(e) => {
            assert!(client_result.is_err(), "client did not see the refusal");
            Err(rejection(e))
        }
    }
}

/// Outbound: the sidecar's client verifier judges the server's `chain`.
async fn outbound(c: &Chain) -> Result<(), SvidRejection> {
    let server = server_config(None, certified(&c.presented, &c.leaf_key));
    let client = client_config(&c.root, "outbound", None);
    let (_, client_result) = handshake(Arc::new(server), Arc::new(client)).await;
    client_result.map_err(rejection)
}

/// Own SVID: the chain, its key and the root as the sidecar's identity files.
fn own(c: &Chain) -> Result<(), String> {
    let cert: String = c.presented.iter().map(|d| pem("CERTIFICATE", d)).collect();
    let key = c.leaf_key.serialize_pem();
    let bundle = pem("CERTIFICATE", &c.root);
    Svid::from_pem_from(
        &SvidPem {
            cert: cert.as_bytes(),
            key: key.as_bytes(),
            bundle: bundle.as_bytes(),
            federated: &[],
        },
        &td(),
        &provider(),
        "files",
    )
    .map(|_| ())
    .map_err(|e| e.reason().to_owned())
}

/// The chain is refused with `want` inbound, outbound and as the own SVID, and each
/// handshake refusal is counted under its reason.
async fn refused_everywhere(c: Chain, want: SvidRejection) {
    let before = (
        failures("inbound", want.reason()),
        failures("outbound", want.reason()),
    );
    assert_eq!(inbound(&c).await, Err(want.clone()), "inbound");
    assert_eq!(outbound(&c).await, Err(want.clone()), "outbound");
    assert_eq!(own(&c), Err(want.reason().to_owned()), "own SVID");
    assert!(
        failures("inbound", want.reason()) > before.0,
        "inbound not counted"
    );
    assert!(
        failures("outbound", want.reason()) > before.1,
        "outbound not counted"
    );
}

/// The chain is accepted inbound, outbound and as the own SVID.
async fn accepted_everywhere(c: Chain) {
    assert_eq!(inbound(&c).await, Ok(()), "inbound");
    assert_eq!(outbound(&c).await, Ok(()), "outbound");
    assert_eq!(own(&c), Ok(()), "own SVID");
}

/// A root refused when its bundle is loaded (with `want`, counted), the own SVID
/// refused for lack of a usable root, and chains to it refused in both directions
/// when a good root keeps the bundle loadable.
async fn root_refused(root: Spec, want: SvidRejection) {
    let c = three(root.clone(), Spec::intermediate("int"), Spec::leaf());
    let counter = || {
        portcullis::metrics::global()
            .trust_bundle_roots_refused
            .with_label_values(&["test", want.reason()])
            .get()
    };
    let before = counter();
    match TrustBundles::from_pem_from(td(), pem("CERTIFICATE", &c.root).as_bytes(), "test") {
        Err(SvidError::NoUsableRoot { refused, .. }) => {
            assert_eq!(refused, vec![(0, want.clone())]);
        }
        other => panic!("root not refused: {:?}", other.map(|_| ())),
    }
    assert!(counter() > before, "refused root not counted");
    assert_eq!(own(&c), Err("no_usable_root".to_owned()), "own SVID");

    // With another, good root beside it the bundle loads, but the bad root anchors nothing.
    let good = make(
        &Spec {
            name: "another root",
            ..Spec::root()
        },
        None,
    );
    let both = format!(
        "{}{}",
        pem("CERTIFICATE", &c.root),
        pem("CERTIFICATE", &good.der)
    );
    let bundles = TrustBundles::from_pem_from(td(), both.as_bytes(), "test").unwrap();
    assert_eq!(bundles.get(&td()).map(|r| r.len()), Some(1));
    let chain: Vec<CertificateDer<'_>> = c
        .presented
        .iter()
        .map(|d| CertificateDer::from(d.as_slice()))
        .collect();
    assert_eq!(
        verify_svid(&chain, &bundles, UnixTime::now()),
        Err(SvidRejection::UnknownIssuer)
    );
    let with_good = Chain {
        root: good.der.clone(),
        presented: c.presented.clone(),
        leaf_key: c.leaf_key,
    };
    assert_eq!(
        outbound(&with_good).await,
        Err(SvidRejection::UnknownIssuer),
        "outbound"
    );
    assert_eq!(
        inbound(&with_good).await,
        Err(SvidRejection::UnknownIssuer),
        "inbound"
    );
}

fn nc(permitted: &[(u8, &str)], excluded: &[(u8, &str)]) -> Vec<u8> {
    let subtrees = |tag: u8, names: &[(u8, &str)]| {
        let items: Vec<Vec<u8>> = names
            .iter()
            .map(|(t, n)| der::seq(&[der::tlv(*t, n.as_bytes())]))
            .collect();
        der::tlv(tag, &items.concat())
    };
    let mut parts = Vec::new();
    if !permitted.is_empty() {
        parts.push(subtrees(0xa0, permitted));
    }
    if !excluded.is_empty() {
        parts.push(subtrees(0xa1, excluded));
    }
    der::seq(&parts)
}

const NC_OID: &[u64] = &[2, 5, 29, 30];
const DNS: u8 = 0x82;
const URI: u8 = 0x86;
const UNKNOWN_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 55555, 7, 1];

use ExtendedKeyUsagePurpose as Eku;
use KeyUsagePurpose as Ku;

fn root() -> Spec {
    Spec::root()
}
fn int() -> Spec {
    Spec::intermediate("test intermediate")
}
fn leaf() -> Spec {
    Spec::leaf()
}

// --- Controls: what must pass -------------------------------------------------------

#[tokio::test]
async fn valid_chains_of_every_supported_key_type_are_accepted() {
    accepted_everywhere(three(root(), int(), leaf())).await;
    accepted_everywhere(chain(root(), &[], leaf())).await;
    accepted_everywhere(chain(
        root(),
        &[int(), Spec::intermediate("second")],
        leaf(),
    ))
    .await;
    for alg in [
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
        &rcgen::PKCS_RSA_SHA256,
    ] {
        let r = root().key(alg);
        accepted_everywhere(three(r, int().key(alg), leaf().key(alg))).await;
    }
    // A CA whose EKU allows both roles.
    accepted_everywhere(three(
        root(),
        int().eku(&[Eku::ServerAuth, Eku::ClientAuth]),
        leaf(),
    ))
    .await;
    // anyExtendedKeyUsage alone does not stand for the TLS roles (webpki's rule, kept).
    refused_everywhere(
        three(root(), int().eku(&[Eku::Any]), leaf()),
        SvidRejection::CaExtendedKeyUsage,
    )
    .await;
    // A 20-octet serial whose high bit is set (21 content octets with the sign byte).
    let mut serial = vec![0u8];
    serial.extend([0x80; 20]);
    accepted_everywhere(three(root(), int(), leaf().edit(Edit::Serial(serial)))).await;
    // A path length that is respected, and DNS name constraints that are.
    accepted_everywhere(three(
        root(),
        int().ca(IsCa::Ca(BasicConstraints::Constrained(0))).ext(
            NC_OID,
            true,
            nc(&[(DNS, "example.org")], &[]),
        ),
        leaf().dns("w.example.org"),
    ))
    .await;
}

// --- Validity of leaf, intermediate and root ------------------------------------------

#[tokio::test]
async fn validity_of_every_certificate() {
    refused_everywhere(
        three(root(), int(), leaf().validity(-7200, -3600)),
        SvidRejection::Expired,
    )
    .await;
    refused_everywhere(
        three(root(), int(), leaf().validity(3600, 7200)),
        SvidRejection::NotYetValid,
    )
    .await;
    refused_everywhere(
        three(root(), int().validity(-7200, -3600), leaf()),
        SvidRejection::IntermediateExpired,
    )
    .await;
    refused_everywhere(
        three(root(), int().validity(3600, 7200), leaf()),
        SvidRejection::IntermediateNotYetValid,
    )
    .await;
    root_refused(root().validity(-7200, -3600), SvidRejection::RootExpired).await;
    root_refused(root().validity(3600, 7200), SvidRejection::RootNotYetValid).await;
}

#[test]
fn a_root_that_expires_while_running_stops_anchoring() {
    let r = root().validity(-60, 3600);
    let c = three(r, int(), leaf().validity(-60, 3 * 3600));
    let bundles = bundle_of(&[&c.root]);
    let chain: Vec<CertificateDer<'_>> = c
        .presented
        .iter()
        .map(|d| CertificateDer::from(d.as_slice()))
        .collect();
    assert!(verify_svid(&chain, &bundles, UnixTime::now()).is_ok());
    let later = UnixTime::since_unix_epoch(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            + Duration::from_secs(2 * 3600),
    );
    assert_eq!(
        verify_svid(&chain, &bundles, later),
        Err(SvidRejection::RootExpired)
    );
}

// --- Basic constraints ------------------------------------------------------------------

#[tokio::test]
async fn basic_constraints_of_every_ca() {
    refused_everywhere(
        three(root(), int().ca(IsCa::NoCa), leaf()),
        SvidRejection::CaNotCa,
    )
    .await;
    refused_everywhere(
        three(root(), int().ca(IsCa::ExplicitNoCa), leaf()),
        SvidRejection::CaNotCa,
    )
    .await;
    refused_everywhere(
        three(root(), int().edit(Edit::Critical(OID_BC, false)), leaf()),
        SvidRejection::CaBasicConstraintsNotCritical,
    )
    .await;
    // The leaf: CA:TRUE.
    refused_everywhere(
        three(
            root(),
            int(),
            leaf().ca(IsCa::Ca(BasicConstraints::Unconstrained)),
        ),
        SvidRejection::LeafIsCa,
    )
    .await;
    root_refused(root().ca(IsCa::NoCa), SvidRejection::CaNotCa).await;
    root_refused(
        root().edit(Edit::Critical(OID_BC, false)),
        SvidRejection::CaBasicConstraintsNotCritical,
    )
    .await;
    // cA FALSE with a path length: the CA fields contradict each other.
    let contradictory = der::seq(&[der::tlv(0x02, &[1])]);
    root_refused(
        root()
            .ca(IsCa::NoCa)
            .ext(&[2, 5, 29, 19], true, contradictory),
        SvidRejection::ContradictoryBasicConstraints,
    )
    .await;
}

// --- Key usage of every CA and of the leaf ----------------------------------------------

#[tokio::test]
async fn key_usage_of_every_ca() {
    refused_everywhere(
        three(root(), int().ku(&[Ku::DigitalSignature]), leaf()),
        SvidRejection::CaNoKeyCertSign,
    )
    .await;
    refused_everywhere(
        three(root(), int().ku(&[Ku::CrlSign]), leaf()),
        SvidRejection::CaNoKeyCertSign,
    )
    .await;
    refused_everywhere(
        three(root(), int().ku(&[]), leaf()),
        SvidRejection::CaNoKeyUsage,
    )
    .await;
    root_refused(
        root().ku(&[Ku::DigitalSignature]),
        SvidRejection::CaNoKeyCertSign,
    )
    .await;
    root_refused(root().ku(&[Ku::CrlSign]), SvidRejection::CaNoKeyCertSign).await;
    root_refused(root().ku(&[]), SvidRejection::CaNoKeyUsage).await;
    // X.509-SVID §4.3: keyUsage is critical, in CAs and leaves.
    const OID_KU: &[u8] = &[0x55, 0x1d, 0x0f];
    refused_everywhere(
        three(root(), int().edit(Edit::Critical(OID_KU, false)), leaf()),
        SvidRejection::KeyUsageNotCritical,
    )
    .await;
    refused_everywhere(
        three(root(), int(), leaf().edit(Edit::Critical(OID_KU, false))),
        SvidRejection::KeyUsageNotCritical,
    )
    .await;
    root_refused(
        root().edit(Edit::Critical(OID_KU, false)),
        SvidRejection::KeyUsageNotCritical,
    )
    .await;
    refused_everywhere(
        three(
            root(),
            int(),
            leaf().ku(&[Ku::DigitalSignature, Ku::KeyCertSign]),
        ),
        SvidRejection::KeyCertSign,
    )
    .await;
    refused_everywhere(
        three(root(), int(), leaf().ku(&[Ku::KeyEncipherment])),
        SvidRejection::NoDigitalSignature,
    )
    .await;
}

// --- Extended key usage ---------------------------------------------------------------

#[tokio::test]
async fn extended_key_usage_of_leaf_and_cas() {
    refused_everywhere(
        three(root(), int(), leaf().eku(&[Eku::CodeSigning])),
        SvidRejection::WrongExtendedKeyUsage,
    )
    .await;
    refused_everywhere(
        three(root(), int().eku(&[Eku::CodeSigning]), leaf()),
        SvidRejection::CaExtendedKeyUsage,
    )
    .await;
    // X.509-SVID §4.4: a leaf EKU has both TLS purposes, whatever the role.
    refused_everywhere(
        three(root(), int(), leaf().eku(&[Eku::ServerAuth])),
        SvidRejection::WrongExtendedKeyUsage,
    )
    .await;
    refused_everywhere(
        three(root(), int(), leaf().eku(&[Eku::ClientAuth])),
        SvidRejection::WrongExtendedKeyUsage,
    )
    .await;
    refused_everywhere(
        three(root(), int(), leaf().eku(&[Eku::Any])),
        SvidRejection::WrongExtendedKeyUsage,
    )
    .await;
    // Without EKU, a leaf is accepted in both roles.
    accepted_everywhere(three(root(), int(), leaf().eku(&[]))).await;
    // A CA limited to serverAuth cannot vouch for clients.
    let server_ca = three(root(), int().eku(&[Eku::ServerAuth]), leaf());
    assert_eq!(
        inbound(&server_ca).await,
        Err(SvidRejection::CaExtendedKeyUsage)
    );
    assert_eq!(outbound(&server_ca).await, Ok(()));
    // A root limited to codeSigning anchors no SVID.
    let r = root().eku(&[Eku::CodeSigning]);
    refused_everywhere(three(r, int(), leaf()), SvidRejection::CaExtendedKeyUsage).await;
}

// --- Name constraints --------------------------------------------------------------------

#[tokio::test]
async fn name_constraints() {
    refused_everywhere(
        three(
            root(),
            int(),
            leaf().ext(NC_OID, true, nc(&[(DNS, "example.org")], &[])),
        ),
        SvidRejection::LeafNameConstraints,
    )
    .await;
    // Violated: a DNS SAN outside the permitted subtree, inside an excluded one.
    refused_everywhere(
        three(
            root(),
            int().ext(NC_OID, true, nc(&[(DNS, "other.test")], &[])),
            leaf().dns("w.example.org"),
        ),
        SvidRejection::NameConstraintViolation,
    )
    .await;
    refused_everywhere(
        three(
            root(),
            int().ext(NC_OID, true, nc(&[], &[(DNS, "example.org")])),
            leaf().dns("w.example.org"),
        ),
        SvidRejection::NameConstraintViolation,
    )
    .await;
    // URI constraints cannot be evaluated by the path builder: refused (fail closed).
    refused_everywhere(
        three(
            root(),
            int().ext(NC_OID, true, nc(&[(URI, "example.org")], &[])),
            leaf(),
        ),
        SvidRejection::NameConstraintViolation,
    )
    .await;
    // Malformed: a leading period, a null name, empty subtrees.
    for bad in [
        nc(&[(DNS, ".example.org")], &[]),
        nc(&[(DNS, "")], &[]),
        der::seq(&[]),
        der::seq(&[der::tlv(0xa0, &[])]),
    ] {
        refused_everywhere(
            three(root(), int().ext(NC_OID, true, bad.clone()), leaf()),
            SvidRejection::MalformedNameConstraints,
        )
        .await;
        root_refused(
            root().ext(NC_OID, true, bad),
            SvidRejection::MalformedNameConstraints,
        )
        .await;
    }
}

// --- Path length ------------------------------------------------------------------------

#[tokio::test]
async fn path_length_constraints() {
    refused_everywhere(
        chain(
            root(),
            &[
                int().ca(IsCa::Ca(BasicConstraints::Constrained(0))),
                Spec::intermediate("below"),
            ],
            leaf(),
        ),
        SvidRejection::PathLengthExceeded,
    )
    .await;
    let r = root().ca(IsCa::Ca(BasicConstraints::Constrained(0)));
    refused_everywhere(three(r, int(), leaf()), SvidRejection::PathLengthExceeded).await;
}

// --- Unknown critical extensions ------------------------------------------------------

#[tokio::test]
async fn unknown_critical_extensions_everywhere() {
    let unknown = der::tlv(0x05, &[]);
    refused_everywhere(
        three(
            root(),
            int(),
            leaf().ext(UNKNOWN_OID, true, unknown.clone()),
        ),
        SvidRejection::UnknownCriticalExtension,
    )
    .await;
    refused_everywhere(
        three(
            root(),
            int().ext(UNKNOWN_OID, true, unknown.clone()),
            leaf(),
        ),
        SvidRejection::UnknownCriticalExtension,
    )
    .await;
    root_refused(
        root().ext(UNKNOWN_OID, true, unknown.clone()),
        SvidRejection::UnknownCriticalExtension,
    )
    .await;
    // Not critical: ignored.
    accepted_everywhere(three(
        root(),
        int(),
        leaf().ext(UNKNOWN_OID, false, unknown),
    ))
    .await;
}

// --- Serial numbers ----------------------------------------------------------------------

#[tokio::test]
async fn serial_numbers() {
    for (serial, want) in [
        (vec![0u8], SvidRejection::SerialNotPositive),
        (vec![0xff, 0x01], SvidRejection::SerialNotPositive),
        (vec![0x01; 21], SvidRejection::SerialTooLong),
    ] {
        refused_everywhere(
            three(root(), int(), leaf().edit(Edit::Serial(serial.clone()))),
            want.clone(),
        )
        .await;
        root_refused(root().edit(Edit::Serial(serial.clone())), want.clone()).await;
    }
    refused_everywhere(
        three(root(), int().edit(Edit::Serial(vec![0])), leaf()),
        SvidRejection::SerialNotPositive,
    )
    .await;
    refused_everywhere(
        three(root(), int().edit(Edit::Serial(vec![0x80, 1])), leaf()),
        SvidRejection::SerialNotPositive,
    )
    .await;
}

// --- Signature algorithms and key sizes ------------------------------------------------

#[tokio::test]
async fn signature_algorithms_and_key_sizes() {
    // Leaf keys: RSA-1024, P-224, Ed448.
    for (spki, want) in [
        (RSA_1024_SPKI, SvidRejection::WeakKey),
        (P224_SPKI, SvidRejection::UnsupportedKey),
        (ED448_SPKI, SvidRejection::UnsupportedKey),
    ] {
        refused_everywhere(three(root(), int(), leaf().spki_b64(spki)), want.clone()).await;
        root_refused(root().spki_b64(spki), want).await;
    }
    // An intermediate whose key is too weak cannot have signed the leaf.
    refused_everywhere(
        three(root(), int().spki_b64(RSA_1024_SPKI), leaf()),
        SvidRejection::UnsupportedSignatureAlgorithm,
    )
    .await;
    // ecdsa-with-SHA1: not an accepted signature algorithm.
    let sha1 = der::seq(&[der::tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01])]);
    refused_everywhere(
        three(
            root(),
            int(),
            leaf().edit(Edit::OuterSignatureAlgorithm(sha1.clone())),
        ),
        SvidRejection::SignatureAlgorithmMismatch,
    )
    .await;
    // Outer ecdsa-with-SHA384 over a TBS that says SHA-256.
    let sha384 = der::seq(&[der::tlv(
        0x06,
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
    )]);
    refused_everywhere(
        three(
            root(),
            int().edit(Edit::OuterSignatureAlgorithm(sha384)),
            leaf(),
        ),
        SvidRejection::SignatureAlgorithmMismatch,
    )
    .await;
    // A leaf signed by a key other than its issuer's.
    let c = three(root(), int(), leaf());
    let other = three(root(), int(), leaf());
    let forged = Chain {
        root: c.root.clone(),
        presented: vec![other.presented[0].clone(), c.presented[1].clone()],
        leaf_key: other.leaf_key,
    };
    refused_everywhere(forged, SvidRejection::BadSignature).await;
}

// --- Key identifiers, AIA, subject/SAN --------------------------------------------------

#[tokio::test]
async fn key_identifiers_and_profile_extensions() {
    refused_everywhere(
        three(root(), int(), leaf().no_aki()),
        SvidRejection::MissingAuthorityKeyId,
    )
    .await;
    refused_everywhere(
        three(root(), int().no_aki(), leaf()),
        SvidRejection::MissingAuthorityKeyId,
    )
    .await;
    refused_everywhere(
        three(root(), int().edit(Edit::RemoveExtension(OID_SKI)), leaf()),
        SvidRejection::CaMissingSubjectKeyId,
    )
    .await;
    root_refused(
        root().edit(Edit::RemoveExtension(OID_SKI)),
        SvidRejection::CaMissingSubjectKeyId,
    )
    .await;
    // A malformed Authority Information Access, in the leaf and in an intermediate.
    let aia = &[1, 3, 6, 1, 5, 5, 7, 1, 1];
    refused_everywhere(
        three(root(), int(), leaf().ext(aia, false, der::seq(&[]))),
        SvidRejection::MalformedExtension,
    )
    .await;
    refused_everywhere(
        three(
            root(),
            int().ext(aia, false, der::seq(&[der::tlv(0x02, &[1])])),
            leaf(),
        ),
        SvidRejection::MalformedExtension,
    )
    .await;
    // Policy constraints: non-critical is malformed, critical is not processed.
    let pc = der::seq(&[der::tlv(0x80, &[0])]);
    refused_everywhere(
        three(
            root(),
            int().ext(&[2, 5, 29, 36], false, pc.clone()),
            leaf(),
        ),
        SvidRejection::MalformedExtension,
    )
    .await;
    refused_everywhere(
        three(root(), int().ext(&[2, 5, 29, 36], true, pc), leaf()),
        SvidRejection::UnknownCriticalExtension,
    )
    .await;
    // An empty subject needs a critical SAN; a CA needs a subject.
    refused_everywhere(
        three(root(), int(), leaf().edit(Edit::Critical(OID_SAN, false))),
        SvidRejection::SanNotCritical,
    )
    .await;
    refused_everywhere(
        three(root(), int().no_subject(), leaf()),
        SvidRejection::CaEmptySubject,
    )
    .await;
    // The AKI is what ties a leaf to its issuer's key; removing it is refused too.
    refused_everywhere(
        three(root(), int(), leaf().edit(Edit::RemoveExtension(OID_AKI))),
        SvidRejection::MissingAuthorityKeyId,
    )
    .await;
}

// --- DER malformations --------------------------------------------------------------------

#[tokio::test]
async fn der_malformations() {
    refused_everywhere(
        three(root(), int(), leaf().edit(Edit::NonMinimalSerialLength)),
        SvidRejection::Malformed,
    )
    .await;
    refused_everywhere(
        three(root(), int(), leaf().edit(Edit::Serial(vec![0, 1]))),
        SvidRejection::Malformed,
    )
    .await;
    refused_everywhere(
        three(root(), int(), leaf().edit(Edit::Version(1))),
        SvidRejection::NotVersion3,
    )
    .await;
    // An extension twice (RFC 5280 §4.2: "MUST NOT include more than one instance").
    refused_everywhere(
        three(
            root(),
            int(),
            leaf().edit(Edit::DuplicateExtension(OID_SAN)),
        ),
        SvidRejection::Malformed,
    )
    .await;
    refused_everywhere(
        three(
            root(),
            int().edit(Edit::DuplicateExtension(OID_SKI)),
            leaf(),
        ),
        SvidRejection::Malformed,
    )
    .await;
    root_refused(
        root().edit(Edit::DuplicateExtension(OID_BC)),
        SvidRejection::Malformed,
    )
    .await;
    // Trailing bytes after the leaf.
    let mut c = three(root(), int(), leaf());
    c.presented[0].push(0);
    refused_everywhere(c, SvidRejection::Malformed).await;
    root_refused(
        root().edit(Edit::NonMinimalSerialLength),
        SvidRejection::Malformed,
    )
    .await;
}

// --- Own SVID at rotation: refused with its reason in the reload metric ----------------

#[tokio::test]
async fn a_rotation_to_a_defective_chain_is_refused_with_its_reason() {
    use portcullis::identity::{crypto_provider, source::FileSource, Identity};
    let dir = tempfile::tempdir().unwrap();
    let write = |c: &Chain| {
        let cert: String = c.presented.iter().map(|d| pem("CERTIFICATE", d)).collect();
        std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), c.leaf_key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("ca.crt"), pem("CERTIFICATE", &c.root)).unwrap();
    };
    write(&three(root(), int(), leaf()));
    let source = FileSource {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
        bundle: dir.path().join("ca.crt"),
        federated: vec![],
        trust_domain: td(),
        poll_interval: Duration::from_millis(50),
    };
    let identity = Identity::new(crypto_provider());
    source.load(&identity).unwrap();
    let serial = identity.current().unwrap().svid.serial.clone();
    let refused = || {
        portcullis::metrics::global()
            .identity_reloads
            .with_label_values(&["error", "ca_no_key_cert_sign"])
            .get()
    };
    let before = refused();
    tokio::spawn(source.watch(identity.clone()));
    // Each round writes a freshly generated defective chain (so the files always
    // change, whenever the watcher took its first look) and waits a poll interval.
    for _ in 0..100 {
        write(&three(root(), int().ku(&[Ku::DigitalSignature]), leaf()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        if refused() > before {
            break;
        }
    }
    assert!(
        refused() > before,
        "rotation refusal not counted with its reason"
    );
    assert_eq!(
        identity.current().unwrap().svid.serial,
        serial,
        "current identity replaced"
    );
}

#[test]
fn start_up_fails_when_a_trust_domain_has_no_usable_root() {
    use portcullis::identity::{crypto_provider, source::FileSource, Identity};
    let dir = tempfile::tempdir().unwrap();
    let good = three(root(), int(), leaf());
    let cert: String = good
        .presented
        .iter()
        .map(|d| pem("CERTIFICATE", d))
        .collect();
    std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), good.leaf_key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("ca.crt"), pem("CERTIFICATE", &good.root)).unwrap();
    let expired_root = make(&root().validity(-7200, -3600), None);
    std::fs::write(
        dir.path().join("federated.crt"),
        pem("CERTIFICATE", &expired_root.der),
    )
    .unwrap();
    let source = |federated: Vec<(TrustDomain, std::path::PathBuf)>, bundle: &str| FileSource {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
        bundle: dir.path().join(bundle),
        federated,
        trust_domain: td(),
        poll_interval: Duration::from_secs(60),
    };
    let identity = Identity::new(crypto_provider());
    // The own bundle with only an expired root.
    let err = source(vec![], "federated.crt").load(&identity).unwrap_err();
    assert_eq!(err.reason(), "no_usable_root", "{err}");
    assert!(err.to_string().contains("root_expired"), "{err}");
    // A federated trust domain left with no usable root.
    let fed = vec![(
        TrustDomain::parse("partner.example").unwrap(),
        dir.path().join("federated.crt"),
    )];
    let err = source(fed, "ca.crt").load(&identity).unwrap_err();
    assert_eq!(err.reason(), "no_usable_root", "{err}");
    assert!(err.to_string().contains("partner.example"), "{err}");
    assert!(identity.current().is_none());
    // Both good: loads.
    source(vec![], "ca.crt").load(&identity).unwrap();
    assert!(identity.current().is_some());
}
