//! End-user authentication with JWTs (`jwt.providers[]`), done on the request
//! path before the policy.
//!
//! - No token → the request goes on without claims; the policy decides.
//! - A token that is present but invalid → 401 `WWW-Authenticate: Bearer
//!   error="invalid_token"` (RFC 6750); it reaches neither the policy nor the app.
//! - A valid token → its claims go into the policy input where Envoy's
//!   `jwt_authn` filter puts them, configured claims are copied into headers,
//!   and unless `forward: true` the token is removed from the request (before
//!   the policy sees it, as Envoy does, so the policy decides on exactly what
//!   the app receives).
//!
//! Validation follows RFC 8725: the algorithm allow-list comes from the keys;
//! `none`, `jku`, `x5u`, `jwk` and `crit` are refused before any key is looked
//! at; `kid` only selects a key; `exp` is required; `nbf`, `iat`, `iss` and
//! `aud` are checked; registered claims are type-checked. Keys are decoded once
//! per JWKS load, so the request path only verifies.

pub mod jwks;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, COOKIE};
use http::{HeaderMap, StatusCode};
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value};

use crate::config::{JwksSource, JwtConfig, TokenLocation};
use crate::metrics;
use jwks::{HttpFetcher, JwksCache, JwksError, JwsAlgorithm, KeySet, Source};
use token::TokenError;

/// Why the authenticator could not be built (start-up stops).
#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    /// A provider's key set did not load, or its URL is unusable.
    #[error("jwt.providers[{index}] ({name}): {source}")]
    Jwks {
        /// Position in `jwt.providers`.
        index: usize,
        /// Provider name.
        name: String,
        /// What failed.
        source: JwksError,
    },
    /// A configured header name is invalid.
    #[error("jwt.providers[{index}]: invalid header name {header:?}")]
    Header {
        /// Position in `jwt.providers`.
        index: usize,
        /// The name.
        header: String,
    },
}

/// A token location, with header names parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    Header { name: HeaderName, prefix: String },
    Query(String),
    Cookie(String),
}

/// One configured issuer.
pub struct Provider {
    name: String,
    issuer: String,
    audiences: Vec<String>,
    /// Indexes into [`Authenticator::locations`].
    locations: Vec<usize>,
    forward: bool,
    claims_to_headers: Vec<(Vec<String>, HeaderName)>,
    payload_in_metadata: String,
    leeway: u64,
    jwks: Arc<JwksCache>,
    /// Signatures already verified with the current key set.
    verified: std::sync::Mutex<SignatureCache>,
}

impl Provider {
    /// The provider's name (metrics label, logs).
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Validates tokens for every configured provider.
pub struct Authenticator {
    providers: Vec<Arc<Provider>>,
    /// Every provider's locations, de-duplicated, in configuration order.
    locations: Vec<Location>,
    /// Tokens that validated, decoded.
    parsed: std::sync::Mutex<ParsedTokens>,
}

/// A verified token.
#[derive(Debug)]
pub struct Verified {
    provider: Arc<Provider>,
    claims: Arc<Value>,
    location: usize,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Verified {
    /// Name of the provider that verified the token.
    pub fn provider(&self) -> &str {
        &self.provider.name
    }
    /// The verified payload.
    pub fn claims(&self) -> &Value {
        &self.claims
    }
    /// Key of the payload under `envoy.filters.http.jwt_authn` in the input.
    pub fn payload_in_metadata(&self) -> &str {
        &self.provider.payload_in_metadata
    }
}

/// A token that was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Provider label (`unknown` when no provider's issuer matched and several exist).
    pub provider: String,
    /// The `result` label of `portcullis_jwt_validations_total`.
    pub reason: &'static str,
}

impl Rejection {
    /// 401, or 503 when the provider never had keys (JWKS unreachable).
    pub fn status(&self) -> StatusCode {
        if self.reason == "jwks_unavailable" {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::UNAUTHORIZED
        }
    }

    /// A short description for `error_description` and logs (never token content).
    pub fn description(&self) -> &'static str {
        match self.reason {
            "expired" => "the token has expired",
            "not_yet_valid" => "the token is not valid yet",
            "bad_signature" => "the token signature is invalid",
            "unknown_kid" => "the token signing key is unknown",
            "bad_issuer" => "the token issuer is not accepted",
            "bad_audience" => "the token audience is not accepted",
            "bad_algorithm" => "the token algorithm is not accepted",
            "forbidden_header" => "the token header is not accepted",
            "missing_claim" => "the token lacks a required claim",
            "jwks_unavailable" => "the signing keys are not available",
            _ => "the token is malformed",
        }
    }

    /// The `WWW-Authenticate` value (RFC 6750 §3).
    pub fn www_authenticate(&self) -> HeaderValue {
        HeaderValue::from_str(&format!(
            "Bearer error=\"invalid_token\", error_description=\"{}\"",
            self.description()
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\""))
    }
}

/// What authentication concluded for one request.
#[derive(Debug)]
pub enum Outcome {
    /// No token in any configured location.
    NoToken,
    /// A valid token.
    Verified(Verified),
    /// An invalid token: answer 401 (or 503).
    Rejected(Rejection),
}

impl Authenticator {
    /// Builds the providers and loads every key set once. File and inline sets
    /// that do not load stop start-up; a URL that cannot be fetched yet is
    /// logged and retried. Call [`Authenticator::spawn_refresh`] afterwards.
    pub async fn start(cfg: &JwtConfig) -> Result<(Arc<Authenticator>, Vec<Duration>), AuthnError> {
        let mut locations: Vec<Location> = Vec::new();
        let mut providers = Vec::with_capacity(cfg.providers.len());
        let mut waits = Vec::with_capacity(cfg.providers.len());
        for (index, p) in cfg.providers.iter().enumerate() {
            let jwks_err = |source| AuthnError::Jwks {
                index,
                name: p.name.clone(),
                source,
            };
            let mut locs = Vec::new();
            for l in &p.from {
                let loc = match l {
                    TokenLocation::Header { name, prefix } => Location::Header {
                        name: header_name(index, name)?,
                        prefix: prefix.clone(),
                    },
                    TokenLocation::Query(q) => Location::Query(q.clone()),
                    TokenLocation::Cookie(c) => Location::Cookie(c.clone()),
                };
                let i = match locations.iter().position(|x| *x == loc) {
                    Some(i) => i,
                    None => {
                        locations.push(loc);
                        locations.len() - 1
                    }
                };
                locs.push(i);
            }
            let mut claims_to_headers = Vec::new();
            for c in &p.claims_to_headers {
                let path = c.claim.split('.').map(str::to_owned).collect();
                claims_to_headers.push((path, header_name(index, &c.header)?));
            }
            let leeway = p.clock_skew.as_secs();
            let source = match &p.jwks {
                JwksSource::Url { url, refresh, ca } => Source::Url {
                    fetcher: HttpFetcher::new(url, ca.as_deref()).map_err(jwks_err)?,
                    refresh: *refresh,
                },
                JwksSource::File { path } => Source::File(path.clone()),
                JwksSource::Inline(json) => Source::Inline(json.clone()),
            };
            let cache = Arc::new(JwksCache::new(p.name.clone(), source));
            waits.push(cache.load_initial().await.map_err(jwks_err)?);
            providers.push(Arc::new(Provider {
                name: p.name.clone(),
                issuer: p.issuer.clone(),
                audiences: p.audiences.clone(),
                locations: locs,
                forward: p.forward,
                claims_to_headers,
                payload_in_metadata: p.payload_in_metadata.clone(),
                leeway,
                jwks: cache,
                verified: std::sync::Mutex::new(SignatureCache::default()),
            }));
        }
        Ok((
            Arc::new(Authenticator {
                providers,
                locations,
                parsed: std::sync::Mutex::new(ParsedTokens::default()),
            }),
            waits,
        ))
    }

    /// Starts the refresh tasks (URL and file sources), given the waits
    /// returned by [`Authenticator::start`].
    pub fn spawn_refresh(&self, waits: Vec<Duration>) {
        for (p, wait) in self.providers.iter().zip(waits) {
            tokio::spawn(p.jwks.clone().refresh_loop(wait));
        }
    }

    /// Header names claims are copied into: stripped from every incoming request.
    pub fn claim_header_names(&self) -> Vec<HeaderName> {
        let mut out: Vec<HeaderName> = Vec::new();
        for p in &self.providers {
            for (_, h) in &p.claims_to_headers {
                if !out.contains(h) {
                    out.push(h.clone());
                }
            }
        }
        out
    }

    /// The providers, in configuration order.
    pub fn providers(&self) -> impl Iterator<Item = &Provider> {
        self.providers.iter().map(|p| p.as_ref())
    }

    /// Finds and validates the request's token. `path_and_query` is the
    /// normalised request target (for query-parameter locations). Counts
    /// `portcullis_jwt_validations_total`.
    pub async fn authenticate(&self, headers: &HeaderMap, path_and_query: &str) -> Outcome {
        let Some((location, token)) = self.find_token(headers, path_and_query) else {
            return Outcome::NoToken;
        };
        let result = self.validate(&token, location).await;
        let m = metrics::global();
        match result {
            Ok((provider, claims)) => {
                m.jwt_validations
                    .with_label_values(&[provider.name.as_str(), "success"])
                    .inc();
                Outcome::Verified(Verified {
                    provider,
                    claims,
                    location,
                })
            }
            Err(r) => {
                m.jwt_validations
                    .with_label_values(&[r.provider.as_str(), r.reason])
                    .inc();
                tracing::debug!(provider = %r.provider, reason = r.reason, "JWT rejected");
                Outcome::Rejected(r)
            }
        }
    }

    /// After a successful validation: copies the configured claims into headers
    /// and, unless the provider forwards tokens, removes the token from where it
    /// was found. Returns true when `path_and_query` changed (query token removed).
    pub fn apply(
        &self,
        v: &Verified,
        headers: &mut HeaderMap,
        path_and_query: &mut String,
    ) -> bool {
        for (path, name) in &v.provider.claims_to_headers {
            if let Some(value) = claim_header_value(&v.claims, path) {
                headers.insert(name.clone(), value);
            }
        }
        if v.provider.forward {
            return false;
        }
        match self.locations.get(v.location) {
            Some(Location::Header { name, .. }) => {
                headers.remove(name);
                false
            }
            Some(Location::Cookie(c)) => {
                remove_cookie(headers, c);
                false
            }
            Some(Location::Query(q)) => match remove_query_param(path_and_query, q) {
                Some(p) => {
                    *path_and_query = p;
                    true
                }
                None => false,
            },
            None => false,
        }
    }

    fn find_token(&self, headers: &HeaderMap, pq: &str) -> Option<(usize, String)> {
        self.locations
            .iter()
            .enumerate()
            .find_map(|(i, loc)| token_at(loc, headers, pq).map(|t| (i, t)))
    }

    fn fallback_label(&self) -> String {
        match self.providers.as_slice() {
            [one] => one.name.clone(),
            _ => "unknown".to_owned(),
        }
    }

    async fn validate(
        &self,
        token: &str,
        location: usize,
    ) -> Result<(Arc<Provider>, Arc<Value>), Rejection> {
        let reject = |provider: String, reason| Rejection { provider, reason };
        let early = |e: TokenError| reject(self.fallback_label(), token_reason(e));
        if token.len() > token::MAX_TOKEN_BYTES {
            return Err(early(TokenError::TooLarge));
        }
        let seg = token::split(token).map_err(early)?;
        // A token that validated before is not decoded again (decoding is a pure
        // function of its bytes); everything that depends on the time or the keys
        // is checked below all the same.
        let cached = lock(&self.parsed).get(token);
        let was_cached = cached.is_some();
        let parsed = match cached {
            Some(p) => p,
            None => {
                let header = token::json_object(seg.header, false).map_err(early)?;
                let header = token::checked_header(&header).map_err(early)?;
                let payload = token::json_object(seg.payload, false).map_err(early)?;
                Arc::new(ParsedToken {
                    header,
                    payload: Arc::new(Value::Object(payload)),
                })
            }
        };
        let (header, payload_value) = (&parsed.header, &parsed.payload);
        let Value::Object(payload) = payload_value.as_ref() else {
            return Err(early(TokenError::Json));
        };
        // The issuer picks the provider (its keys, audiences, locations).
        let provider = match payload.get("iss") {
            Some(Value::String(iss)) => self
                .providers
                .iter()
                .find(|p| p.issuer == *iss && p.locations.contains(&location)),
            _ => None,
        };
        let Some(provider) = provider else {
            return Err(reject(self.fallback_label(), "bad_issuer"));
        };
        let fail = |reason| reject(provider.name.clone(), reason);
        token::check_claim_types(payload).map_err(|e| fail(token_reason(e)))?;
        provider.verify(&seg, header, payload).await.map_err(fail)?;
        if !was_cached {
            lock(&self.parsed).insert(token, parsed.clone());
        }
        Ok((provider.clone(), payload_value.clone()))
    }
}

impl Provider {
    /// Signature (with this provider's keys), then claims.
    async fn verify(
        &self,
        seg: &token::Segments<'_>,
        header: &token::JoseHeader,
        payload: &Map<String, Value>,
    ) -> Result<(), &'static str> {
        let Some(alg) = JwsAlgorithm::from_name(&header.alg) else {
            return Err("bad_algorithm");
        };
        let mut set = self.jwks.current();
        let mut chosen = select(&set, header.kid.as_deref(), alg);
        if matches!(chosen, Selection::Miss) && self.jwks.refetch_after_miss(&set).await {
            set = self.jwks.current();
            chosen = select(&set, header.kid.as_deref(), alg);
        }
        let keys = match chosen {
            Selection::Keys(k) => k,
            Selection::AlgorithmMismatch => return Err("bad_algorithm"),
            Selection::Miss if !set.loaded => return Err("jwks_unavailable"),
            Selection::Miss => return Err("unknown_kid"),
        };
        let signature = token::b64url(seg.signature, false).map_err(|_| "malformed")?;
        let message = seg.signing_input.as_bytes();
        // The same token from the same client arrives on every request; its
        // signature is verified once per key set (claims below are checked every time).
        let known = lock(&self.verified).contains(&set, message, &signature);
        if !known {
            if !keys
                .iter()
                .any(|i| set.keys[*i].verify(alg, message, &signature))
            {
                return Err("bad_signature");
            }
            lock(&self.verified).insert(&set, message, &signature);
        }
        self.check_claims(payload, jsonwebtoken::get_current_timestamp() as f64)
    }

    /// Registered claims (types were checked already): `exp` required and not
    /// past; `nbf` and `iat` not in the future; `iss` the provider's; `aud`
    /// required and accepted when audiences are configured. All times with
    /// the clock-skew leeway.
    fn check_claims(&self, p: &Map<String, Value>, now: f64) -> Result<(), &'static str> {
        let leeway = self.leeway as f64;
        let Some(exp) = p.get("exp").and_then(Value::as_f64) else {
            return Err("missing_claim");
        };
        if exp < now - leeway {
            return Err("expired");
        }
        for k in ["nbf", "iat"] {
            if p.get(k)
                .and_then(Value::as_f64)
                .is_some_and(|t| t > now + leeway)
            {
                return Err("not_yet_valid");
            }
        }
        if p.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err("bad_issuer");
        }
        if self.audiences.is_empty() {
            return Ok(());
        }
        let accepted = |a: &Value| {
            a.as_str()
                .is_some_and(|a| self.audiences.iter().any(|x| x == a))
        };
        match p.get("aud") {
            None => Err("missing_claim"),
            Some(Value::Array(list)) if list.iter().any(accepted) => Ok(()),
            Some(a) if accepted(a) => Ok(()),
            Some(_) => Err("bad_audience"),
        }
    }
}

/// A token's decoded header and payload.
struct ParsedToken {
    header: token::JoseHeader,
    payload: Arc<Value>,
}

/// Tokens that validated, decoded: the same token arrives on every request of a
/// client. Only tokens that passed every check are added, so a flood of forged
/// tokens cannot fill it; bounded by the bytes of the tokens held.
#[derive(Default)]
struct ParsedTokens {
    entries: std::collections::HashMap<Box<str>, Arc<ParsedToken>>,
    bytes: usize,
}

impl ParsedTokens {
    /// At most this many bytes of tokens are held; when full it starts over.
    const MAX_BYTES: usize = 256 * 1024;

    fn get(&self, token: &str) -> Option<Arc<ParsedToken>> {
        self.entries.get(token).cloned()
    }

    fn insert(&mut self, token: &str, parsed: Arc<ParsedToken>) {
        if self.bytes + token.len() > Self::MAX_BYTES {
            self.entries.clear();
            self.bytes = 0;
        }
        if self.entries.insert(token.into(), parsed).is_none() {
            self.bytes += token.len();
        }
    }
}

/// (signing input, signature) pairs whose signature verified with one key set,
/// matched byte for byte. Verification is deterministic in those bytes and the
/// keys, so a hit is exactly as good as verifying again; the cache is emptied
/// whenever the key set changes (rotation, refetch), and only successes are
/// recorded. Everything else about a token (header checks, claim types,
/// `exp`/`nbf`/`iat` against the current time, issuer, audience) is still
/// checked on every request.
#[derive(Default)]
struct SignatureCache {
    /// The key set the entries were verified with (held, so its address is not reused).
    set: Option<Arc<KeySet>>,
    /// Signature → signing input.
    entries: std::collections::HashMap<Box<[u8]>, Box<[u8]>>,
    /// Bytes held by `entries`.
    bytes: usize,
}

impl SignatureCache {
    /// At most this many bytes of tokens are held; when full it starts over.
    const MAX_BYTES: usize = 256 * 1024;

    fn contains(&self, set: &Arc<KeySet>, message: &[u8], signature: &[u8]) -> bool {
        self.set.as_ref().is_some_and(|s| Arc::ptr_eq(s, set))
            && self
                .entries
                .get(signature)
                .is_some_and(|m| m.as_ref() == message)
    }

    fn insert(&mut self, set: &Arc<KeySet>, message: &[u8], signature: &[u8]) {
        let size = message.len() + signature.len();
        if size > Self::MAX_BYTES {
            return;
        }
        let same_set = self.set.as_ref().is_some_and(|s| Arc::ptr_eq(s, set));
        if !same_set || self.bytes + size > Self::MAX_BYTES {
            self.set = Some(set.clone());
            self.entries.clear();
            self.bytes = 0;
        }
        let old = self.entries.insert(signature.into(), message.into());
        self.bytes += size;
        if let Some(m) = old {
            self.bytes -= m.len() + signature.len();
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while the lock is held; recover the data if it ever did.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Keys to try for a token (indexes into the set).
enum Selection {
    Keys(Vec<usize>),
    /// The `kid` names a key that does not allow the token's `alg`.
    AlgorithmMismatch,
    /// No key with that `kid`, or (without `kid`) none allowing the `alg`.
    Miss,
}

fn select(set: &KeySet, kid: Option<&str>, alg: JwsAlgorithm) -> Selection {
    match kid {
        Some(kid) => {
            let mut found = false;
            let mut keys = Vec::new();
            for (i, k) in set.keys.iter().enumerate() {
                if k.kid.as_deref() == Some(kid) {
                    found = true;
                    if k.allows(alg) {
                        keys.push(i);
                    }
                }
            }
            match (found, keys.is_empty()) {
                (false, _) => Selection::Miss,
                (true, true) => Selection::AlgorithmMismatch,
                (true, false) => Selection::Keys(keys),
            }
        }
        None => {
            let keys: Vec<usize> = set
                .keys
                .iter()
                .enumerate()
                .filter(|(_, k)| k.allows(alg))
                .map(|(i, _)| i)
                .collect();
            if keys.is_empty() {
                Selection::Miss
            } else {
                Selection::Keys(keys)
            }
        }
    }
}

fn token_reason(e: TokenError) -> &'static str {
    match e {
        TokenError::AlgNone => "bad_algorithm",
        TokenError::ForbiddenHeader => "forbidden_header",
        _ => "malformed",
    }
}

fn header_name(index: usize, name: &str) -> Result<HeaderName, AuthnError> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| AuthnError::Header {
        index,
        header: name.to_owned(),
    })
}

fn token_at(loc: &Location, headers: &HeaderMap, pq: &str) -> Option<String> {
    match loc {
        Location::Header { name, prefix } => headers.get_all(name).iter().find_map(|v| {
            let v = v.to_str().ok()?;
            let rest = if prefix.is_empty() {
                v
            } else {
                let head = v.get(..prefix.len())?;
                if !head.eq_ignore_ascii_case(prefix) {
                    return None;
                }
                v.get(prefix.len()..)?
            };
            let t = rest.trim();
            (!t.is_empty()).then(|| t.to_owned())
        }),
        Location::Query(name) => {
            let (_, query) = pq.split_once('?')?;
            query.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                if percent_decode_str(k).decode_utf8().ok()? != name.as_str() {
                    return None;
                }
                let v = percent_decode_str(v).decode_utf8().ok()?;
                (!v.is_empty()).then(|| v.into_owned())
            })
        }
        Location::Cookie(name) => headers.get_all(COOKIE).iter().find_map(|v| {
            v.to_str().ok()?.split(';').find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                if k.trim() != name {
                    return None;
                }
                let v = v.trim().trim_matches('"');
                (!v.is_empty()).then(|| v.to_owned())
            })
        }),
    }
}

/// The path-and-query without every `name=` parameter; `None` if there was none.
fn remove_query_param(pq: &str, name: &str) -> Option<String> {
    let (path, query) = pq.split_once('?')?;
    let mut removed = false;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let k = pair.split_once('=').map(|(k, _)| k).unwrap_or(pair);
            let hit = percent_decode_str(k).decode_utf8().is_ok_and(|k| k == name);
            removed |= hit;
            !hit
        })
        .collect();
    if !removed {
        return None;
    }
    Some(if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    })
}

fn remove_cookie(headers: &mut HeaderMap, name: &str) {
    let mut kept = Vec::new();
    for v in headers.get_all(COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for c in v.split(';') {
            let c = c.trim();
            let k = c.split_once('=').map(|(k, _)| k.trim()).unwrap_or(c);
            if !c.is_empty() && k != name {
                kept.push(c.to_owned());
            }
        }
    }
    headers.remove(COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(COOKIE, v);
        }
    }
}

/// A claim as a header value: strings as they are, numbers and booleans
/// printed, arrays of those joined with `,`; objects and nulls are skipped.
fn claim_header_value(claims: &Value, path: &[String]) -> Option<HeaderValue> {
    let mut v = claims;
    for seg in path {
        v = v.get(seg.as_str())?;
    }
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let text = match v {
        Value::Array(a) => a.iter().map(scalar).collect::<Option<Vec<_>>>()?.join(","),
        other => scalar(other)?,
    };
    HeaderValue::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
                HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        h
    }

    #[test]
    fn signature_cache_is_per_key_set_and_exact() {
        let set = || {
            Arc::new(KeySet {
                keys: Vec::new(),
                loaded: true,
            })
        };
        let (a, b) = (set(), set());
        let mut c = SignatureCache::default();
        assert!(!c.contains(&a, b"h.p", b"sig"));
        c.insert(&a, b"h.p", b"sig");
        assert!(c.contains(&a, b"h.p", b"sig"));
        // Byte for byte: another message or signature is not a hit.
        assert!(!c.contains(&a, b"h.q", b"sig"));
        assert!(!c.contains(&a, b"h.p", b"sih"));
        // Another key set (a rotation or refetch) knows nothing.
        assert!(!c.contains(&b, b"h.p", b"sig"));
        c.insert(&b, b"x", b"y");
        assert!(!c.contains(&b, b"h.p", b"sig"));
        assert!(!c.contains(&a, b"h.p", b"sig"));
        // Bounded: filling past the limit starts over.
        let big = vec![7u8; SignatureCache::MAX_BYTES / 2];
        c.insert(&b, &big, b"1");
        c.insert(&b, &big, b"2");
        assert!(c.bytes <= SignatureCache::MAX_BYTES);
        assert!(c.contains(&b, &big, b"2"));
        assert!(!c.contains(&b, b"x", b"y"));
    }

    #[test]
    fn token_locations() {
        let bearer = Location::Header {
            name: http::header::AUTHORIZATION,
            prefix: "Bearer ".into(),
        };
        let h = headers(&[("authorization", "bearer  abc ")]);
        assert_eq!(token_at(&bearer, &h, "/"), Some("abc".into()));
        let h = headers(&[("authorization", "Basic abc")]);
        assert_eq!(token_at(&bearer, &h, "/"), None);
        let q = Location::Query("access_token".into());
        assert_eq!(
            token_at(&q, &HeaderMap::new(), "/a?x=1&access%5Ftoken=t%2Eu&y"),
            Some("t.u".into())
        );
        assert_eq!(token_at(&q, &HeaderMap::new(), "/a?x=1"), None);
        let c = Location::Cookie("session".into());
        let h = headers(&[("cookie", "a=1; session=\"tok\"; b=2")]);
        assert_eq!(token_at(&c, &h, "/"), Some("tok".into()));
    }

    #[test]
    fn stripping() {
        assert_eq!(
            remove_query_param("/p?a=1&access_token=x&b=2", "access_token"),
            Some("/p?a=1&b=2".into())
        );
        assert_eq!(
            remove_query_param("/p?access_token=x", "access_token"),
            Some("/p".into())
        );
        assert_eq!(remove_query_param("/p?a=1", "access_token"), None);
        let mut h = headers(&[("cookie", "a=1; session=tok"), ("cookie", "b=2")]);
        remove_cookie(&mut h, "session");
        assert_eq!(h.get_all(COOKIE).iter().count(), 1);
        assert_eq!(h[COOKIE], "a=1; b=2");
        let mut h = headers(&[("cookie", "session=tok")]);
        remove_cookie(&mut h, "session");
        assert!(h.get(COOKIE).is_none());
    }

    #[test]
    fn claim_headers() {
        let claims = json!({"sub": "alice", "n": 3, "ok": true, "groups": ["a", "b"], "org": {"id": "o1"}, "x": {}});
        let v = |p: &str| {
            let path: Vec<String> = p.split('.').map(str::to_owned).collect();
            claim_header_value(&claims, &path).map(|h| h.to_str().unwrap_or("").to_owned())
        };
        assert_eq!(v("sub").as_deref(), Some("alice"));
        assert_eq!(v("n").as_deref(), Some("3"));
        assert_eq!(v("ok").as_deref(), Some("true"));
        assert_eq!(v("groups").as_deref(), Some("a,b"));
        assert_eq!(v("org.id").as_deref(), Some("o1"));
        assert_eq!(v("x"), None);
        assert_eq!(v("missing"), None);
    }

    #[test]
    fn rejection_header() {
        let r = Rejection {
            provider: "corp".into(),
            reason: "expired",
        };
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.www_authenticate(),
            "Bearer error=\"invalid_token\", error_description=\"the token has expired\""
        );
    }
}
