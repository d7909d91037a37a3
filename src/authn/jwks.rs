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
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::Algorithm;
use rustls_pki_types::ServerName;
use serde_json::Value;
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
    pub verifiers: Vec<(Algorithm, Verifier)>,
}

impl Key {
    /// Whether this key may verify `alg` at all.
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.verifiers.iter().any(|(a, _)| *a == alg)
    }

    /// Verifies `signature` over `message` with `alg` (false if not allowed).
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        self.verifiers
            .iter()
            .any(|(a, v)| *a == alg && v.verify(message, signature))
    }

    /// The algorithms allowed.
    pub fn algorithms(&self) -> Vec<Algorithm> {
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
    /// signatures are skipped; symmetric (`oct`) keys only when `allow_symmetric`.
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
            match key_from_jwk(entry, allow_symmetric) {
                Some(k) => keys.push(k),
                None => skipped += 1,
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKeys { skipped });
        }
        Ok(KeySet { keys, loaded: true })
    }
}

/// The algorithms a JWK may verify, derived from the key itself (RFC 8725 §3.1):
/// its `alg` if it has one (and it fits the key type), else its type's family.
pub fn allowed_algorithms(jwk: &Jwk, allow_symmetric: bool) -> Option<Vec<Algorithm>> {
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        AlgorithmParameters::OctetKey(_) if allow_symmetric => {
            vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]
        }
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(family),
        Some(ka) => {
            let alg = algorithm_of(ka)?;
            family.contains(&alg).then(|| vec![alg])
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

/// A JWK usable for signature verification: `use` absent or `sig`, `key_ops`
/// absent or containing `verify`.
pub fn is_signing_key(jwk: &Jwk, raw: &Value) -> bool {
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return false;
    }
    match raw.get("key_ops") {
        None => true,
        Some(Value::Array(ops)) => ops.iter().any(|o| o == "verify"),
        Some(_) => false,
    }
}

fn key_from_jwk(raw: &Value, allow_symmetric: bool) -> Option<Key> {
    let jwk: Jwk = match serde_json::from_value(raw.clone()) {
        Ok(j) => j,
        Err(e) => {
            tracing::debug!(error = %e, "JWK skipped: unparsable");
            return None;
        }
    };
    if !is_signing_key(&jwk, raw) {
        return None;
    }
    let algs = allowed_algorithms(&jwk, allow_symmetric)?;
    let mut verifiers = Vec::with_capacity(algs.len());
    for alg in algs {
        match verifier(&jwk.algorithm, alg) {
            Some(v) => verifiers.push((alg, v)),
            None => {
                tracing::debug!(kid = ?jwk.common.key_id, "JWK skipped: bad key parameters");
                return None;
            }
        }
    }
    Some(Key {
        kid: jwk.common.key_id.clone(),
        verifiers,
    })
}

fn b64(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

/// The key material of a JWK prepared for one algorithm (key type already checked).
fn verifier(params: &AlgorithmParameters, alg: Algorithm) -> Option<Verifier> {
    let public = |a: &'static dyn sig::VerificationAlgorithm, bytes: &[u8]| {
        ParsedPublicKey::new(a, bytes).ok().map(Verifier::Public)
    };
    match params {
        AlgorithmParameters::RSA(p) => {
            let n = b64(&p.n)?;
            let e = b64(&p.e)?;
            let strip = |b: &[u8]| -> Vec<u8> {
                let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
                b[first..].to_vec()
            };
            let params: &'static sig::RsaParameters = match alg {
                Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
                Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
                Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
                Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
                Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
                Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
                _ => return None,
            };
            RsaPublicKeyComponents {
                n: strip(&n),
                e: strip(&e),
            }
            .to_parsed_public_key(params)
            .ok()
            .map(Verifier::Public)
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let (x, y) = (b64(&p.x)?, b64(&p.y)?);
            let (a, len): (&'static dyn sig::VerificationAlgorithm, usize) = match alg {
                Algorithm::ES256 => (&sig::ECDSA_P256_SHA256_FIXED, 32),
                Algorithm::ES384 => (&sig::ECDSA_P384_SHA384_FIXED, 48),
                _ => return None,
            };
            if x.len() != len || y.len() != len {
                return None;
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            public(a, &point)
        }
        AlgorithmParameters::OctetKeyPair(p) if alg == Algorithm::EdDSA => {
            public(&sig::ED25519, &b64(&p.x)?)
        }
        AlgorithmParameters::OctetKey(p) => {
            let h = match alg {
                Algorithm::HS256 => aws_lc_rs::hmac::HMAC_SHA256,
                Algorithm::HS384 => aws_lc_rs::hmac::HMAC_SHA384,
                Algorithm::HS512 => aws_lc_rs::hmac::HMAC_SHA512,
                _ => return None,
            };
            let k = b64(&p.value)?;
            if k.is_empty() {
                return None;
            }
            Some(Verifier::Hmac(Box::new(aws_lc_rs::hmac::Key::new(h, &k))))
        }
        _ => None,
    }
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
        assert_eq!(set.keys[0].algorithms(), vec![Algorithm::ES256]);
        // A single JWK is a set of one; symmetric keys only where allowed.
        assert_eq!(
            KeySet::parse(EC.as_bytes(), false)
                .map(|s| s.keys.len())
                .ok(),
            Some(1)
        );
        let oct = KeySet::parse(br#"{"kty":"oct","k":"c2VjcmV0"}"#, true)
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
        assert_eq!(with_alg("ES256"), Some(vec![Algorithm::ES256]));
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
