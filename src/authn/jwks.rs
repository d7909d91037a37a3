//! JSON Web Key Sets: the set parsed once per fetch (each key by [`super::jwk`]),
//! and the per-provider cache that loads it from a file, inline JSON or an HTTPS
//! URL (through the shared [`crate::fetch`] client).
//!
//! The cache keeps the last good key set whenever a fetch fails or returns
//! something unusable. URL sources are refreshed on an interval (shortened by
//! `Cache-Control: max-age`, within bounds) and, rate-limited, when a token
//! names a key the set does not hold (key rotation).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, StatusCode};
use jsonwebtoken::jwk::KeyAlgorithm;
use jsonwebtoken::Algorithm;
use serde_json::Value;

use super::jwk::{parse_jwk, Key};
use crate::fetch::{FetchClient, FetchError, Fetched};
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

impl From<FetchError> for JwksError {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::Url(m) => JwksError::Url(m),
            FetchError::Trust(m) => JwksError::Trust(m),
            FetchError::Status(s) => JwksError::Status(s),
            FetchError::TooLarge { .. } => JwksError::TooLarge,
            FetchError::Timeout(_) => JwksError::Timeout,
            e @ (FetchError::Connect(_) | FetchError::Tls(_) | FetchError::Http(_)) => {
                JwksError::Network(e.to_string())
            }
        }
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

/// Where a provider's keys come from, ready to load.
pub enum Source {
    /// Re-read on [`FILE_POLL`].
    File(PathBuf),
    /// Loaded once.
    Inline(String),
    /// Fetched and refreshed.
    Url {
        /// The client for this URL.
        client: FetchClient,
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
            Source::Url { client, refresh } => {
                let (body, max_age) = fetch(client).await?;
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

impl Source {
    /// A URL source: `https://` (or `http://` to a loopback host), trusting the PEM
    /// file `ca` instead of the system roots when given.
    pub fn url(url: &str, ca: Option<&Path>, refresh: Duration) -> Result<Source, JwksError> {
        let client = FetchClient::new(url, ca, MAX_JWKS_BYTES as u64, FETCH_TIMEOUT)?;
        Ok(Source::Url { client, refresh })
    }
}

/// GETs a key set: its body and `max-age`.
async fn fetch(client: &FetchClient) -> Result<(Bytes, Option<Duration>), JwksError> {
    match client
        .get("application/jwk-set+json, application/json", None)
        .await?
    {
        Fetched::Body { headers, body } => Ok((body, max_age(&headers))),
        // Never asked for (no `If-None-Match`): an unexpected status like any other.
        Fetched::NotModified => Err(JwksError::Status(StatusCode::NOT_MODIFIED)),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::jwk::JwsAlgorithm;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

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
}
