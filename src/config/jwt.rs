//! The `jwt` section: token issuers, where their keys come from, where tokens are
//! found and which claims are copied to headers.

use std::path::PathBuf;
use std::time::Duration;

use serde::de::Deserializer;
use serde::Deserialize;

use super::de::{de_duration, de_duration_opt, or_default, MapThen};

/// JWT authentication.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// Token issuers accepted (default none: no JWT authentication).
    #[serde(deserialize_with = "or_default")]
    pub providers: Vec<JwtProvider>,
}

/// One token issuer. `name`, `issuer` and `jwks` are required.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtProvider {
    /// Unique name, used in the policy input and logs.
    pub name: String,
    /// Expected `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values (default none: `aud` not checked).
    #[serde(default, deserialize_with = "or_default")]
    pub audiences: Vec<String>,
    /// Where the signing keys come from.
    pub jwks: JwksSource,
    /// Where tokens are looked for (default: `authorization` header with prefix
    /// `Bearer `, then the `access_token` query parameter).
    #[serde(default = "default_token_locations")]
    pub from: Vec<TokenLocation>,
    /// Forward the token to the app (default false: removed).
    #[serde(default)]
    pub forward: bool,
    /// Leeway for `exp`/`nbf` (default 60s).
    #[serde(default = "default_clock_skew", deserialize_with = "de_duration")]
    pub clock_skew: Duration,
    /// Claims copied into request headers for the app.
    #[serde(default, deserialize_with = "or_default")]
    pub claims_to_headers: Vec<ClaimToHeader>,
    /// Key of the verified payload in the policy input's metadata
    /// (default `jwt_payload`).
    #[serde(default = "default_payload_key")]
    pub payload_in_metadata: String,
}

impl JwtProvider {
    /// A provider with the defaults a configuration file gets for everything but its
    /// name, issuer and keys.
    pub fn new(name: &str, issuer: &str, jwks: JwksSource) -> JwtProvider {
        JwtProvider {
            name: name.to_owned(),
            issuer: issuer.to_owned(),
            audiences: Vec::new(),
            jwks,
            from: default_token_locations(),
            forward: false,
            clock_skew: default_clock_skew(),
            claims_to_headers: Vec::new(),
            payload_in_metadata: default_payload_key(),
        }
    }
}

pub(super) fn default_token_locations() -> Vec<TokenLocation> {
    vec![
        TokenLocation::Header {
            name: "authorization".to_owned(),
            prefix: "Bearer ".to_owned(),
        },
        TokenLocation::Query("access_token".to_owned()),
    ]
}

fn default_clock_skew() -> Duration {
    Duration::from_secs(60)
}

fn default_payload_key() -> String {
    "jwt_payload".to_owned()
}

/// A claim copied into a request header.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeader {
    /// Claim name.
    pub claim: String,
    /// Header name.
    pub header: String,
}

/// Where a provider's JSON Web Key Set comes from. YAML: `{url: ..., refresh: 5m}`,
/// `{file: path}` or `{inline: "<json>"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// Fetched over HTTP(S) and refreshed.
    Url {
        /// `http://` or `https://` URL.
        url: String,
        /// Refresh interval (default 5m).
        refresh: Duration,
        /// PEM CA bundle trusted for the URL's TLS instead of the system roots
        /// (default: the system roots; the rule of [`crate::fetch`]).
        ca: Option<PathBuf>,
    },
    /// Read from a file.
    File {
        /// Path of the JWKS JSON file.
        path: PathBuf,
    },
    /// The JWKS JSON itself.
    Inline(String),
}

/// Where a token is looked for. YAML: `{header: authorization, prefix: "Bearer "}`,
/// `{query: access_token}` or `{cookie: session}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLocation {
    /// A request header, with an optional prefix that is stripped (default `""`).
    Header {
        /// Header name.
        name: String,
        /// Required prefix, e.g. `Bearer `.
        prefix: String,
    },
    /// A query parameter.
    Query(String),
    /// A cookie.
    Cookie(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwks {
    url: Option<String>,
    #[serde(default, deserialize_with = "de_duration_opt")]
    refresh: Option<Duration>,
    file: Option<PathBuf>,
    inline: Option<String>,
    ca: Option<PathBuf>,
}

impl<'de> Deserialize<'de> for JwksSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(MapThen::new(
            "a mapping {url: ..., refresh: ...}, {file: ...} or {inline: ...}",
            |raw: RawJwks| match (raw.url, raw.file, raw.inline) {
                (Some(url), None, None) => Ok(JwksSource::Url {
                    url,
                    refresh: raw.refresh.unwrap_or(Duration::from_secs(300)),
                    ca: raw.ca,
                }),
                (None, _, _) if raw.ca.is_some() => Err("`ca` is only allowed with `url`".into()),
                (None, Some(path), None) if raw.refresh.is_none() => Ok(JwksSource::File { path }),
                (None, None, Some(json)) if raw.refresh.is_none() => Ok(JwksSource::Inline(json)),
                (None, None, None) => Err("one of `url`, `file` or `inline` is required".into()),
                (None, _, _) if raw.refresh.is_some() => {
                    Err("`refresh` is only allowed with `url`".into())
                }
                _ => Err("only one of `url`, `file` or `inline` may be set".into()),
            },
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokenLocation {
    header: Option<String>,
    prefix: Option<String>,
    query: Option<String>,
    cookie: Option<String>,
}

impl<'de> Deserialize<'de> for TokenLocation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(MapThen::new(
            "a mapping {header: ..., prefix: ...}, {query: ...} or {cookie: ...}",
            |raw: RawTokenLocation| match (raw.header, raw.query, raw.cookie) {
                (Some(name), None, None) => Ok(TokenLocation::Header {
                    name,
                    prefix: raw.prefix.unwrap_or_default(),
                }),
                (None, Some(q), None) if raw.prefix.is_none() => Ok(TokenLocation::Query(q)),
                (None, None, Some(c)) if raw.prefix.is_none() => Ok(TokenLocation::Cookie(c)),
                (None, None, None) => {
                    Err("one of `header`, `query` or `cookie` is required".into())
                }
                (None, _, _) if raw.prefix.is_some() => {
                    Err("`prefix` is only allowed with `header`".into())
                }
                _ => Err("only one of `header`, `query` or `cookie` may be set".into()),
            },
        ))
    }
}
