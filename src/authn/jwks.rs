//! JSON Web Key Sets: parsing keys once per fetch into ready-to-verify keys
//! (aws-lc-rs [`ParsedPublicKey`]s, one per allowed algorithm, and HMAC keys),
//! and the per-provider cache that fetches them from a file, inline JSON or an
//! HTTPS URL.
//!
//! Pre-parsed keys keep the request path to the signature check itself:
//! `jsonwebtoken::decode` would copy the key and let aws-lc parse and validate
//! the public key again on every token (about 100 µs for P-256).
//!
//! The cache keeps the last good key set whenever a fetch fails or returns
//! something unusable. URL sources are refreshed on an interval (shortened by
//! `Cache-Control: max-age`, within bounds) and, rate-limited, when a token
//! names a key the set does not hold (key rotation).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use aws_lc_rs::signature::{self as sig, ParsedPublicKey, RsaPublicKeyComponents};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::KeyAlgorithm;
use jsonwebtoken::Algorithm;
use rustls_pki_types::ServerName;
use serde_json::{Map, Value};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::metrics;

/// Largest JWKS document accepted.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Time allowed for one fetch (connect, TLS, request, body).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one refetch per this interval is triggered by unknown key ids.
pub const MISS_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// `Cache-Control: max-age` never makes refreshes more frequent than this
/// (or than the configured interval, when that is shorter).
pub const MIN_REFRESH: Duration = Duration::from_secs(30);
/// A failed fetch is retried after at most this long.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);
/// How often a `file:` key set is re-read.
pub const FILE_POLL: Duration = Duration::from_secs(30);

/// Why a key set could not be loaded. The cache keeps the previous one.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// Not JSON.
    #[error("the key set is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but neither `{"keys": [...]}` nor a single JWK.
    #[error("the document is not a JWK set")]
    NotASet,
    /// No key in the set can verify JWS signatures.
    #[error("the key set holds no usable signing key ({skipped} skipped)")]
    NoUsableKeys {
        /// Keys ignored (unsupported type, `use: enc`, bad parameters).
        skipped: usize,
    },
    /// The `file:` could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The URL is unusable (scheme, host, plain HTTP to a remote host).
    #[error("bad JWKS URL: {0}")]
    Url(String),
    /// The CA bundle for the URL could not be loaded.
    #[error("JWKS TLS trust: {0}")]
    Trust(String),
    /// Connecting, TLS or HTTP failed.
    #[error("fetching the key set failed: {0}")]
    Network(String),
    /// A status other than 200.
    #[error("the JWKS endpoint answered {0}")]
    Status(StatusCode),
    /// Larger than [`MAX_JWKS_BYTES`].
    #[error("the key set is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    /// The fetch took longer than [`FETCH_TIMEOUT`].
    #[error("fetching the key set timed out")]
    Timeout,
}

impl JwksError {
    /// The `result` label of `portcullis_jwks_fetches_total`.
    pub fn label(&self) -> &'static str {
        match self {
            JwksError::Json(_) | JwksError::NotASet | JwksError::NoUsableKeys { .. } => "invalid",
            JwksError::Io { .. } => "io_error",
            JwksError::Url(_) | JwksError::Trust(_) | JwksError::Network(_) => "network_error",
            JwksError::Status(_) => "http_error",
            JwksError::TooLarge => "too_large",
            JwksError::Timeout => "timeout",
        }
    }
}

/// The JWS algorithms the providers verify: RFC 7518 §3.1 (HMAC, RSA PKCS#1 v1.5,
/// RSA-PSS, ECDSA on P-256/P-384/P-521) and EdDSA with Ed25519 (RFC 8037). `none`
/// never. jsonwebtoken's `Algorithm` has no ES512, hence this enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwsAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    ES512,
    EdDSA,
}

impl JwsAlgorithm {
    /// Every algorithm, for iteration.
    pub const ALL: [JwsAlgorithm; 13] = [
        Self::HS256,
        Self::HS384,
        Self::HS512,
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::PS256,
        Self::PS384,
        Self::PS512,
        Self::ES256,
        Self::ES384,
        Self::ES512,
        Self::EdDSA,
    ];

    /// The registered name (`alg` header value, case-sensitive).
    pub fn name(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::HS384 => "HS384",
            Self::HS512 => "HS512",
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::ES512 => "ES512",
            Self::EdDSA => "EdDSA",
        }
    }

    /// The algorithm an `alg` value names exactly (names are case-sensitive,
    /// RFC 7515 §4.1.1).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// For HMAC: the smallest key, the hash output size (RFC 7518 §3.2).
    pub fn min_hmac_key_bytes(self) -> Option<usize> {
        match self {
            Self::HS256 => Some(32),
            Self::HS384 => Some(48),
            Self::HS512 => Some(64),
            _ => None,
        }
    }
}

/// A key ready to verify signatures with one algorithm.
pub enum Verifier {
    /// RSA, ECDSA or Ed25519 public key, parsed once.
    Public(ParsedPublicKey),
    /// HMAC secret.
    Hmac(Box<aws_lc_rs::hmac::Key>),
}

impl Verifier {
    /// True when `signature` is valid over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            Verifier::Public(k) => k.verify_sig(message, signature).is_ok(),
            Verifier::Hmac(k) => aws_lc_rs::hmac::verify(k, message, signature).is_ok(),
        }
    }
}

/// One verification key, decoded once when its set was loaded.
pub struct Key {
    /// `kid`, if the JWK had one.
    pub kid: Option<String>,
    /// Algorithms this key may verify (its `alg`, or the ones its type allows),
    /// each with the key prepared for it.
    pub verifiers: Vec<(JwsAlgorithm, Verifier)>,
}

impl Key {
    /// Whether this key may verify `alg` at all.
    pub fn allows(&self, alg: JwsAlgorithm) -> bool {
        self.verifiers.iter().any(|(a, _)| *a == alg)
    }

    /// Verifies `signature` over `message` with `alg` (false if not allowed).
    pub fn verify(&self, alg: JwsAlgorithm, message: &[u8], signature: &[u8]) -> bool {
        self.verifiers
            .iter()
            .any(|(a, v)| *a == alg && v.verify(message, signature))
    }

    /// The algorithms allowed.
    pub fn algorithms(&self) -> Vec<JwsAlgorithm> {
        self.verifiers.iter().map(|(a, _)| *a).collect()
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algs", &self.algorithms())
            .finish_non_exhaustive()
    }
}

/// A loaded key set; immutable, replaced whole on every successful load.
#[derive(Debug, Default)]
pub struct KeySet {
    /// The usable keys.
    pub keys: Vec<Key>,
    /// False only for the placeholder installed before the first successful load.
    pub loaded: bool,
}

impl KeySet {
    /// Parses a JWKS (`{"keys": [...]}`) or a single JWK. Keys that cannot verify
    /// signatures are skipped (each logged at debug with its [`JwkError`]);
    /// symmetric (`oct`) keys only when `allow_symmetric`.
    pub fn parse(json: &[u8], allow_symmetric: bool) -> Result<KeySet, JwksError> {
        let doc: Value = serde_json::from_slice(json)?;
        let entries: Vec<&Value> = match &doc {
            Value::Object(o) if o.contains_key("keys") => match o.get("keys") {
                Some(Value::Array(a)) => a.iter().collect(),
                _ => return Err(JwksError::NotASet),
            },
            Value::Object(o) if o.contains_key("kty") => vec![&doc],
            _ => return Err(JwksError::NotASet),
        };
        let mut keys = Vec::with_capacity(entries.len());
        let mut skipped = 0;
        for entry in entries {
            match parse_jwk(entry, allow_symmetric) {
                Ok(k) => keys.push(k),
                Err(e) => {
                    tracing::debug!(reason = e.reason(), "JWK skipped: {e}");
                    skipped += 1;
                }
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKeys { skipped });
        }
        Ok(KeySet { keys, loaded: true })
    }
}

/// Why one JWK cannot verify signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    /// Not a JSON object, or a member of the wrong JSON type.
    #[error("the JWK is malformed")]
    Malformed,
    /// A required member is absent.
    #[error("the JWK lacks a required member")]
    MissingMember,
    /// A member is not canonical unpadded base64url (RFC 7515 §2), or an integer
    /// has leading zero octets (RFC 7518 §2, Base64urlUInt).
    #[error("a JWK member is not canonical base64url")]
    Base64,
    /// `use` other than `sig`, or `key_ops` without `verify` (RFC 7517 §4.2, §4.3).
    #[error("the JWK is not for signature verification")]
    NotForSignatures,
    /// `key_ops` with a repeated value (RFC 7517 §4.3).
    #[error("the JWK key_ops repeats a value")]
    DuplicateKeyOps,
    /// An unknown `kty`, or `oct` where symmetric keys are not allowed.
    #[error("the JWK key type is not supported here")]
    UnsupportedKeyType,
    /// A `crv` that is unknown or does not fit the key type.
    #[error("the JWK curve is not supported")]
    UnsupportedCurve,
    /// An `alg` that is unknown or does not fit the key type and curve.
    #[error("the JWK alg does not fit the key")]
    AlgorithmMismatch,
    /// Coordinates or key of the wrong length for the curve.
    #[error("the JWK key size does not fit its curve")]
    KeySize,
    /// RSA under 2048 bits (RFC 7518 §3.3) or an HMAC secret shorter than the hash
    /// output (RFC 7518 §3.2).
    #[error("the JWK key is too small")]
    WeakKey,
    /// Private key material (`d`, `p`, ...) in a verification key set.
    #[error("the JWK carries private key material")]
    PrivateKey,
    /// The key material does not form a valid public key (e.g. a point off the curve).
    #[error("the JWK key material is invalid")]
    InvalidKey,
}

impl JwkError {
    /// A snake_case label for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::MissingMember => "missing_member",
            Self::Base64 => "base64",
            Self::NotForSignatures => "not_for_signatures",
            Self::DuplicateKeyOps => "duplicate_key_ops",
            Self::UnsupportedKeyType => "unsupported_key_type",
            Self::UnsupportedCurve => "unsupported_curve",
            Self::AlgorithmMismatch => "algorithm_mismatch",
            Self::KeySize => "key_size",
            Self::WeakKey => "weak_key",
            Self::PrivateKey => "private_key",
            Self::InvalidKey => "invalid_key",
        }
    }
}

/// The JWS algorithm a JWK `alg` names (encryption algorithms name none).
pub fn algorithm_of(ka: KeyAlgorithm) -> Option<Algorithm> {
    Some(match ka {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// An optional string member.
fn opt_str<'a>(o: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, JwkError> {
    match o.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(JwkError::Malformed),
    }
}

/// A required base64url member, decoded strictly (no padding, URL alphabet, canonical
/// trailing bits, not empty).
fn b64_member(o: &Map<String, Value>, name: &str) -> Result<Vec<u8>, JwkError> {
    let s = opt_str(o, name)?.ok_or(JwkError::MissingMember)?;
    let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| JwkError::Base64)?;
    if bytes.is_empty() {
        return Err(JwkError::Base64);
    }
    Ok(bytes)
}

/// A Base64urlUInt member (RFC 7518 §2): minimal octets, so no leading zero octet
/// unless the value is zero itself.
fn uint_member(o: &Map<String, Value>, name: &str) -> Result<Vec<u8>, JwkError> {
    let bytes = b64_member(o, name)?;
    if bytes.len() > 1 && bytes[0] == 0 {
        return Err(JwkError::Base64);
    }
    Ok(bytes)
}

/// Private members of RSA, EC, OKP keys (RFC 7518 §6.2.2, §6.3.2; RFC 8037 §2).
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth"];

/// `use` and `key_ops` (RFC 7517 §4.2, §4.3): absent, `sig`, or a list of distinct
/// strings containing `verify`.
fn check_key_use(o: &Map<String, Value>) -> Result<(), JwkError> {
    if let Some(u) = opt_str(o, "use")? {
        if u != "sig" {
            return Err(JwkError::NotForSignatures);
        }
    }
    match o.get("key_ops") {
        None => Ok(()),
        Some(Value::Array(ops)) => {
            let mut seen = Vec::with_capacity(ops.len());
            for op in ops {
                let op = op.as_str().ok_or(JwkError::Malformed)?;
                if seen.contains(&op) {
                    return Err(JwkError::DuplicateKeyOps);
                }
                seen.push(op);
            }
            if seen.contains(&"verify") {
                Ok(())
            } else {
                Err(JwkError::NotForSignatures)
            }
        }
        Some(_) => Err(JwkError::Malformed),
    }
}

/// Parses one JWK into a verification key, strictly: `use`/`key_ops` allow
/// verification; `kty`, `crv`, `alg` and the key size agree (RFC 7518 §3, §6;
/// RFC 8037 §2); RSA keys of at least 2048 bits; HMAC secrets at least as long as
/// the hash output; no private key material; every binary member canonical
/// base64url. `oct` keys only when `allow_symmetric`.
pub fn parse_jwk(raw: &Value, allow_symmetric: bool) -> Result<Key, JwkError> {
    let o = raw.as_object().ok_or(JwkError::Malformed)?;
    let kty = opt_str(o, "kty")?.ok_or(JwkError::MissingMember)?;
    check_key_use(o)?;
    let kid = opt_str(o, "kid")?.map(str::to_owned);
    let alg = match opt_str(o, "alg")? {
        None => None,
        Some(name) => Some(JwsAlgorithm::from_name(name).ok_or(JwkError::AlgorithmMismatch)?),
    };
    if kty != "oct" && PRIVATE_MEMBERS.iter().any(|m| o.contains_key(*m)) {
        return Err(JwkError::PrivateKey);
    }
    let crv = opt_str(o, "crv")?;
    if kty != "EC" && kty != "OKP" && crv.is_some() {
        return Err(JwkError::UnsupportedCurve);
    }
    use JwsAlgorithm as A;
    let pick = |family: &[JwsAlgorithm]| -> Result<Vec<JwsAlgorithm>, JwkError> {
        match alg {
            None => Ok(family.to_vec()),
            Some(a) if family.contains(&a) => Ok(vec![a]),
            Some(_) => Err(JwkError::AlgorithmMismatch),
        }
    };
    let verifiers = match kty {
        "RSA" => {
            let n = uint_member(o, "n")?;
            let e = uint_member(o, "e")?;
            if crate::identity::profile::rsa_bits(&n) < crate::identity::profile::MIN_RSA_BITS {
                return Err(JwkError::WeakKey);
            }
            let algs = pick(&[A::RS256, A::RS384, A::RS512, A::PS256, A::PS384, A::PS512])?;
            let mut out = Vec::with_capacity(algs.len());
            for a in algs {
                let params: &'static sig::RsaParameters = match a {
                    A::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
                    A::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
                    A::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
                    A::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
                    A::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
                    _ => &sig::RSA_PSS_2048_8192_SHA512,
                };
                let key = RsaPublicKeyComponents {
                    n: n.as_slice(),
                    e: e.as_slice(),
                }
                .to_parsed_public_key(params)
                .map_err(|_| JwkError::InvalidKey)?;
                out.push((a, Verifier::Public(key)));
            }
            out
        }
        "EC" => {
            let (a, len, verify): (_, usize, &'static dyn sig::VerificationAlgorithm) =
                match crv.ok_or(JwkError::MissingMember)? {
                    "P-256" => (A::ES256, 32, &sig::ECDSA_P256_SHA256_FIXED),
                    "P-384" => (A::ES384, 48, &sig::ECDSA_P384_SHA384_FIXED),
                    "P-521" => (A::ES512, 66, &sig::ECDSA_P521_SHA512_FIXED),
                    _ => return Err(JwkError::UnsupportedCurve),
                };
            let algs = pick(&[a])?;
            let (x, y) = (b64_member(o, "x")?, b64_member(o, "y")?);
            if x.len() != len || y.len() != len {
                return Err(JwkError::KeySize);
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let key = ParsedPublicKey::new(verify, &point).map_err(|_| JwkError::InvalidKey)?;
            vec![(algs[0], Verifier::Public(key))]
        }
        "OKP" => {
            if crv.ok_or(JwkError::MissingMember)? != "Ed25519" {
                return Err(JwkError::UnsupportedCurve);
            }
            let algs = pick(&[A::EdDSA])?;
            let x = b64_member(o, "x")?;
            if x.len() != 32 {
                return Err(JwkError::KeySize);
            }
            let key = ParsedPublicKey::new(&sig::ED25519, &x).map_err(|_| JwkError::InvalidKey)?;
            vec![(algs[0], Verifier::Public(key))]
        }
        "oct" if allow_symmetric => {
            let k = b64_member(o, "k").map_err(|e| match e {
                // An empty secret is a weak key, not an encoding problem.
                JwkError::Base64 if opt_str(o, "k") == Ok(Some("")) => JwkError::WeakKey,
                other => other,
            })?;
            let family: Vec<JwsAlgorithm> = [A::HS256, A::HS384, A::HS512]
                .into_iter()
                .filter(|a| a.min_hmac_key_bytes().is_some_and(|min| k.len() >= min))
                .collect();
            let algs = match alg {
                Some(a) if a.min_hmac_key_bytes().is_none() => {
                    return Err(JwkError::AlgorithmMismatch)
                }
                Some(a) if !family.contains(&a) => return Err(JwkError::WeakKey),
                _ if family.is_empty() => return Err(JwkError::WeakKey),
                _ => pick(&family)?,
            };
            algs.into_iter()
                .map(|a| {
                    let h = match a {
                        A::HS256 => aws_lc_rs::hmac::HMAC_SHA256,
                        A::HS384 => aws_lc_rs::hmac::HMAC_SHA384,
                        _ => aws_lc_rs::hmac::HMAC_SHA512,
                    };
                    (
                        a,
                        Verifier::Hmac(Box::new(aws_lc_rs::hmac::Key::new(h, &k))),
                    )
                })
                .collect()
        }
        _ => return Err(JwkError::UnsupportedKeyType),
    };
    Ok(Key { kid, verifiers })
}

/// Where a provider's keys come from, ready to load.
pub enum Source {
    /// Re-read on [`FILE_POLL`].
    File(PathBuf),
    /// Loaded once.
    Inline(String),
    /// Fetched and refreshed.
    Url {
        /// The client for this URL.
        fetcher: HttpFetcher,
        /// Configured refresh interval.
        refresh: Duration,
    },
}

/// A provider's current key set and how to renew it.
pub struct JwksCache {
    provider: String,
    source: Source,
    keys: ArcSwap<KeySet>,
    /// Serialises fetches so that concurrent misses share one.
    fetching: tokio::sync::Mutex<()>,
    last_miss_fetch: std::sync::Mutex<Option<Instant>>,
    /// The document the current set was parsed from: an unchanged document keeps
    /// the same set (and with it the provider's cache of verified signatures).
    source_bytes: std::sync::Mutex<Vec<u8>>,
}

impl JwksCache {
    /// A cache with no keys yet; call [`JwksCache::load_initial`].
    pub fn new(provider: String, source: Source) -> JwksCache {
        JwksCache {
            provider,
            source,
            keys: ArcSwap::from_pointee(KeySet::default()),
            fetching: tokio::sync::Mutex::new(()),
            last_miss_fetch: std::sync::Mutex::new(None),
            source_bytes: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The current key set.
    pub fn current(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// First load. A file or inline set that does not load is an error (start-up
    /// stops); a URL that fails is logged and retried by the refresh task.
    /// Returns how long to wait before the next refresh.
    pub async fn load_initial(&self) -> Result<Duration, JwksError> {
        let _guard = self.fetching.lock().await;
        match &self.source {
            Source::Url { .. } => Ok(self.fetch_and_store().await),
            _ => {
                let (set, next, bytes) = self.load_once().await?;
                self.install(set, bytes, "success");
                Ok(next)
            }
        }
    }

    /// Refreshes forever: on the interval for URLs, [`FILE_POLL`] for files.
    pub async fn refresh_loop(self: Arc<Self>, first_wait: Duration) {
        if matches!(self.source, Source::Inline(_)) {
            return;
        }
        let mut wait = first_wait;
        loop {
            tokio::time::sleep(wait).await;
            let _guard = self.fetching.lock().await;
            wait = self.fetch_and_store().await;
        }
    }

    /// Called when a token names a key the set `seen` does not hold. Refetches
    /// (URL sources only; at most once per [`MISS_REFETCH_INTERVAL`]) and says
    /// whether the caller should look again.
    pub async fn refetch_after_miss(&self, seen: &Arc<KeySet>) -> bool {
        if !matches!(self.source, Source::Url { .. }) {
            return false;
        }
        let _guard = self.fetching.lock().await;
        if !Arc::ptr_eq(&self.keys.load(), seen) {
            return true; // renewed while we waited
        }
        {
            let mut last = match self.last_miss_fetch.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if matches!(*last, Some(t) if t.elapsed() < MISS_REFETCH_INTERVAL) {
                return false;
            }
            *last = Some(Instant::now());
        }
        tracing::debug!(provider = %self.provider, "unknown key id: refetching the key set");
        self.fetch_and_store().await;
        !Arc::ptr_eq(&self.keys.load(), seen)
    }

    /// One load attempt; keeps the last good set on failure. Returns the wait
    /// before the next one. Callers hold `fetching`.
    async fn fetch_and_store(&self) -> Duration {
        match self.load_once().await {
            Ok((set, next, bytes)) => {
                self.install(set, bytes, "success");
                next
            }
            Err(e) => {
                metrics::global()
                    .jwks_fetches
                    .with_label_values(&[&self.provider, e.label()])
                    .inc();
                tracing::warn!(provider = %self.provider, error = %e, "JWKS load failed; keeping the last good key set");
                match &self.source {
                    Source::Url { refresh, .. } => (*refresh).min(RETRY_AFTER_FAILURE),
                    _ => FILE_POLL,
                }
            }
        }
    }

    async fn load_once(&self) -> Result<(KeySet, Duration, Vec<u8>), JwksError> {
        match &self.source {
            Source::Inline(json) => Ok((
                KeySet::parse(json.as_bytes(), true)?,
                FILE_POLL,
                json.as_bytes().to_vec(),
            )),
            Source::File(path) => {
                let bytes = read_file(path).await?;
                Ok((KeySet::parse(&bytes, true)?, FILE_POLL, bytes))
            }
            Source::Url { fetcher, refresh } => {
                let (body, max_age) = tokio::time::timeout(FETCH_TIMEOUT, fetcher.fetch())
                    .await
                    .map_err(|_| JwksError::Timeout)??;
                // Shared secrets are never taken from a remote endpoint.
                let set = KeySet::parse(&body, false)?;
                Ok((set, next_refresh(*refresh, max_age), body.to_vec()))
            }
        }
    }

    fn install(&self, set: KeySet, bytes: Vec<u8>, result: &str) {
        let m = metrics::global();
        m.jwks_fetches
            .with_label_values(&[&self.provider, result])
            .inc();
        {
            let mut last = self.source_bytes.lock().unwrap_or_else(|p| p.into_inner());
            if *last == bytes && self.keys.load().loaded {
                return;
            }
            *last = bytes;
        }
        m.jwks_keys
            .with_label_values(&[&self.provider])
            .set(set.keys.len() as f64);
        tracing::info!(provider = %self.provider, keys = set.keys.len(), "JWKS loaded");
        self.keys.store(Arc::new(set));
    }
}

async fn read_file(path: &Path) -> Result<Vec<u8>, JwksError> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|source| JwksError::Io {
            path: path.to_owned(),
            source,
        })?;
    if meta.len() > MAX_JWKS_BYTES as u64 {
        return Err(JwksError::TooLarge);
    }
    tokio::fs::read(path).await.map_err(|source| JwksError::Io {
        path: path.to_owned(),
        source,
    })
}

/// The wait before the next refresh: the configured interval, shortened by a
/// `max-age` but never below `min(refresh, MIN_REFRESH)`. The configured interval
/// is the ceiling: it bounds how long a key removed from the set stays trusted.
pub fn next_refresh(refresh: Duration, max_age: Option<Duration>) -> Duration {
    match max_age {
        None => refresh,
        Some(age) => age.clamp(refresh.min(MIN_REFRESH), refresh),
    }
}

/// `max-age` from `Cache-Control` values (`no-cache`/`no-store` count as 0).
pub fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    let mut found = None;
    for v in headers.get_all(header::CACHE_CONTROL) {
        let Ok(v) = v.to_str() else { continue };
        for directive in v.split(',') {
            let d = directive.trim();
            if let Some(n) = d
                .strip_prefix("max-age=")
                .or_else(|| d.strip_prefix("MAX-AGE="))
            {
                if let Ok(secs) = n.trim_matches('"').parse::<u64>() {
                    found = Some(Duration::from_secs(secs));
                }
            } else if d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("no-store") {
                return Some(Duration::ZERO);
            }
        }
    }
    found
}

/// A minimal HTTP(S) GET client for one JWKS URL: one connection per fetch
/// (fetches are minutes apart), rustls with the process's aws-lc-rs provider,
/// bounded body. Plain `http://` is accepted only to a loopback host.
pub struct HttpFetcher {
    host: String,
    port: u16,
    authority: String,
    path: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl HttpFetcher {
    /// Prepares a client for `url`, trusting the PEM bundle `ca` if given, else
    /// the system's roots (`rustls-native-certs`; honours `SSL_CERT_FILE`).
    pub fn new(url: &str, ca: Option<&Path>) -> Result<HttpFetcher, JwksError> {
        let uri: Uri = url.parse().map_err(|e| JwksError::Url(format!("{e}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(JwksError::Url("the scheme must be https".into())),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| JwksError::Url("no host".into()))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(JwksError::Url("no host".into()));
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        if !https && !is_loopback(&host) {
            return Err(JwksError::Url(
                "plain http:// is only allowed to a loopback host; use https://".into(),
            ));
        }
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        let tls = if https {
            let name = ServerName::try_from(host.clone())
                .map_err(|e| JwksError::Url(format!("bad host name: {e}")))?;
            Some((TlsConnector::from(Arc::new(client_config(ca)?)), name))
        } else {
            if ca.is_some() {
                return Err(JwksError::Url("`ca` needs an https:// URL".into()));
            }
            None
        };
        Ok(HttpFetcher {
            host,
            port,
            authority: authority.as_str().to_owned(),
            path,
            tls,
        })
    }

    /// GETs the document; returns its body and `max-age`.
    pub async fn fetch(&self) -> Result<(Bytes, Option<Duration>), JwksError> {
        let net = |e: &dyn std::fmt::Display| JwksError::Network(e.to_string());
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| net(&e))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| net(&e))?;
                self.get(tls).await
            }
            None => self.get(tcp).await,
        }
    }

    async fn get<S>(&self, stream: S) -> Result<(Bytes, Option<Duration>), JwksError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let net = |e: &dyn std::fmt::Display| JwksError::Network(e.to_string());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| net(&e))?;
        let conn_task = tokio::spawn(conn);
        let req = Request::get(self.path.as_str())
            .header(header::HOST, self.authority.as_str())
            .header(header::ACCEPT, "application/jwk-set+json, application/json")
            .header(
                header::USER_AGENT,
                concat!("portcullis/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| net(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| net(&e))?;
        if resp.status() != StatusCode::OK {
            conn_task.abort();
            return Err(JwksError::Status(resp.status()));
        }
        if resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            conn_task.abort();
            return Err(JwksError::TooLarge);
        }
        let age = max_age(resp.headers());
        let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    JwksError::TooLarge
                } else {
                    JwksError::Network(e.to_string())
                }
            })?
            .to_bytes();
        conn_task.abort();
        Ok((body, age))
    }
}

/// `localhost` or a loopback address: where plain `http://` may go (the traffic
/// never leaves the pod).
pub(crate) fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn client_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, JwksError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| JwksError::Trust(format!("cannot read {}: {e}", path.display())))?;
            let certs = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| JwksError::Trust(format!("{}: {e}", path.display())))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(JwksError::Trust(format!(
                    "{}: no CA certificate found",
                    path.display()
                )));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::debug!(error = %e, "system CA certificates: partly unreadable");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!("no system CA certificates found: JWKS fetches over https will fail unless `ca` is set");
            }
        }
    }
    let provider = crate::identity::source::crypto_provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| JwksError::Trust(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EC: &str = r#"{"kty":"EC","crv":"P-256","kid":"e1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

    #[tokio::test]
    async fn an_unchanged_document_keeps_the_same_key_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, format!(r#"{{"keys":[{EC}]}}"#)).unwrap();
        let cache = JwksCache::new("p".into(), Source::File(path.clone()));
        cache.load_initial().await.unwrap();
        let first = cache.current();
        cache.fetch_and_store().await;
        assert!(
            Arc::ptr_eq(&first, &cache.current()),
            "reloaded unchanged keys"
        );
        std::fs::write(&path, EC).unwrap();
        cache.fetch_and_store().await;
        assert!(
            !Arc::ptr_eq(&first, &cache.current()),
            "missed a changed document"
        );
    }

    #[test]
    fn parse_sets_and_skips_unusable_keys() {
        let set = KeySet::parse(
            format!(
                r#"{{"keys":[{EC},{{"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"}},{{"kty":"weird"}},{{"kty":"oct","k":"c2VjcmV0"}}]}}"#
            )
            .as_bytes(),
                        false,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(set.keys.len(), 1);
        assert_eq!(set.keys[0].kid.as_deref(), Some("e1"));
        assert_eq!(set.keys[0].algorithms(), vec![JwsAlgorithm::ES256]);
        // A single JWK is a set of one; symmetric keys only where allowed.
        assert_eq!(
            KeySet::parse(EC.as_bytes(), false)
                .map(|s| s.keys.len())
                .ok(),
            Some(1)
        );
        let secret = URL_SAFE_NO_PAD.encode([7u8; 64]);
        let oct = KeySet::parse(
            format!(r#"{{"kty":"oct","k":"{secret}"}}"#).as_bytes(),
            true,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(oct.keys[0].algorithms().len(), 3);
        assert!(matches!(
            KeySet::parse(br#"{"keys":[]}"#, true),
            Err(JwksError::NoUsableKeys { skipped: 0 })
        ));
        assert!(matches!(
            KeySet::parse(b"[1]", true),
            Err(JwksError::NotASet)
        ));
        assert!(matches!(
            KeySet::parse(b"<html>", true),
            Err(JwksError::Json(_))
        ));
    }

    #[test]
    fn key_alg_must_fit_key_type() {
        let with_alg = |alg: &str| {
            KeySet::parse(
                EC.replace("\"kid\"", &format!("\"alg\":\"{alg}\",\"kid\""))
                    .as_bytes(),
                true,
            )
            .map(|s| s.keys[0].algorithms())
            .ok()
        };
        assert_eq!(with_alg("ES256"), Some(vec![JwsAlgorithm::ES256]));
        assert_eq!(with_alg("HS256"), None);
        assert_eq!(with_alg("RS256"), None);
        assert_eq!(with_alg("ES384"), None);
    }

    #[test]
    fn refresh_bounds() {
        let five_min = Duration::from_secs(300);
        assert_eq!(next_refresh(five_min, None), five_min);
        assert_eq!(
            next_refresh(five_min, Some(Duration::from_secs(120))),
            Duration::from_secs(120)
        );
        assert_eq!(next_refresh(five_min, Some(Duration::ZERO)), MIN_REFRESH);
        assert_eq!(
            next_refresh(five_min, Some(Duration::from_secs(86400))),
            five_min
        );
        let one = Duration::from_secs(1);
        assert_eq!(next_refresh(one, Some(Duration::ZERO)), one);
    }

    #[test]
    fn cache_control() {
        let mut h = http::HeaderMap::new();
        assert_eq!(max_age(&h), None);
        h.insert(
            header::CACHE_CONTROL,
            http::HeaderValue::from_static("public, max-age=600, must-revalidate"),
        );
        assert_eq!(max_age(&h), Some(Duration::from_secs(600)));
        h.insert(
            header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        assert_eq!(max_age(&h), Some(Duration::ZERO));
    }

    #[test]
    fn urls() {
        assert!(HttpFetcher::new("http://127.0.0.1:1/jwks", None).is_ok());
        assert!(HttpFetcher::new("http://localhost/jwks", None).is_ok());
        assert!(matches!(
            HttpFetcher::new("http://idp.example/jwks", None),
            Err(JwksError::Url(_))
        ));
        assert!(matches!(
            HttpFetcher::new("ftp://idp.example/jwks", None),
            Err(JwksError::Url(_))
        ));
        assert!(HttpFetcher::new("https://idp.example/jwks", None).is_ok());
    }
}
