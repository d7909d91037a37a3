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

mod cache;
pub mod jwk;
pub mod jwks;
mod location;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

use crate::config::{JwksSource, JwtConfig, TokenLocation};
use crate::metrics;
use cache::{lock, ParsedToken, ParsedTokens, SignatureCache};
use jwk::JwsAlgorithm;
use jwks::{JwksCache, JwksError, KeySet, Source};
use location::{remove_cookie, remove_query_param, token_at, Location};
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

    /// A token for [`Authenticator::warm`]: this provider's issuer and first
    /// audience, its first key's `kid` and algorithm, a signature of the usual
    /// length that no key produced. `None` before the keys are loaded.
    fn warm_up_token(&self) -> Option<String> {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let set = self.jwks.current();
        let key = set.keys.first()?;
        let (alg, _) = key.verifiers.first()?;
        let mut header = Map::new();
        header.insert("alg".into(), alg.name().into());
        header.insert("typ".into(), "JWT".into());
        if let Some(kid) = &key.kid {
            header.insert("kid".into(), kid.clone().into());
        }
        let now = jsonwebtoken::get_current_timestamp();
        let mut payload = Map::new();
        payload.insert("iss".into(), self.issuer.clone().into());
        payload.insert("sub".into(), "portcullis-warm-up".into());
        payload.insert("iat".into(), now.into());
        payload.insert("exp".into(), (now + 60).into());
        if let Some(aud) = self.audiences.first() {
            payload.insert("aud".into(), aud.clone().into());
        }
        let json = |m: Map<String, Value>| serde_json::to_vec(&Value::Object(m)).ok();
        Some(format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(json(header)?),
            URL_SAFE_NO_PAD.encode(json(payload)?),
            URL_SAFE_NO_PAD.encode(vec![1u8; alg.usual_signature_len()]),
        ))
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
                JwksSource::Url { url, refresh, ca } => {
                    Source::url(url, ca.as_deref(), *refresh).map_err(jwks_err)?
                }
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
    pub fn spawn_refresh(&self, waits: Vec<Duration>, tasks: &crate::tasks::Tasks) {
        for (p, wait) in self.providers.iter().zip(waits) {
            tasks.spawn_loop("jwks-refresh", p.jwks.clone().refresh_loop(wait));
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

    /// Validates, once per provider, a made-up token that names the provider's first
    /// key and cannot verify (its signature is a constant). Start-up runs it before
    /// readiness so that the first client's token does not pay for mapping and first
    /// running the token parsing, key selection and signature check. Nothing is
    /// counted, logged or cached: only a valid token is cached, and only
    /// [`Authenticator::authenticate`] counts and logs.
    pub async fn warm(&self) {
        for provider in &self.providers {
            let (Some(token), Some(&location)) =
                (provider.warm_up_token(), provider.locations.first())
            else {
                continue;
            };
            let _ = self.validate(&token, location).await;
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
mod tests;
