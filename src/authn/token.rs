//! Compact JWS parsing shared by the authenticator and the `io.jwt.*` builtins:
//! splitting into segments, base64url decoding, the JOSE header checks of
//! RFC 8725 and the type checks of registered claims.
//!
//! Nothing here verifies a signature; it only rejects what must never reach
//! signature verification (oversized, malformed, `alg: none`, keys or key URLs
//! carried in the token itself).

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, PAD, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde_json::{Map, Value};

/// Largest token accepted on the request path, in bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// JOSE header parameters that would make the token choose its own key or key
/// location (RFC 8725 §3.10): never followed, the token is refused.
const FORBIDDEN_HEADERS: &[&str] = &["jku", "x5u", "jwk"];

/// Why a token was refused before any key was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("the token is too large")]
    TooLarge,
    /// Not exactly three dot-separated segments (JWE and JSON serialisation included).
    #[error("the token does not have three segments")]
    Segments,
    /// A segment that is not base64url.
    #[error("a token segment is not valid base64url")]
    Base64,
    /// The header or payload is not a JSON object.
    #[error("the token header or payload is not a JSON object")]
    Json,
    /// `alg` missing, empty or not a string.
    #[error("the token header has no algorithm")]
    NoAlgorithm,
    /// `alg: none` (unsecured JWS).
    #[error("unsecured tokens (alg none) are not accepted")]
    AlgNone,
    /// `jku`, `x5u`, `jwk` or `crit` present.
    #[error("the token header carries a forbidden parameter")]
    ForbiddenHeader,
    /// `kid` (or another string header) with the wrong type.
    #[error("a token header parameter has the wrong type")]
    HeaderType,
    /// A registered claim with the wrong type (e.g. a string `exp`).
    #[error("a registered claim has the wrong type")]
    ClaimType,
}

/// The three segments of a compact JWS, still encoded.
#[derive(Debug, Clone, Copy)]
pub struct Segments<'a> {
    /// Encoded JOSE header.
    pub header: &'a str,
    /// Encoded payload.
    pub payload: &'a str,
    /// Encoded signature.
    pub signature: &'a str,
    /// `header.payload`: the bytes the signature covers.
    pub signing_input: &'a str,
}

/// Splits `token` into exactly three segments.
pub fn split(token: &str) -> Result<Segments<'_>, TokenError> {
    let mut it = token.splitn(4, '.');
    let (Some(header), Some(payload), Some(signature), None) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return Err(TokenError::Segments);
    };
    let signing_input = &token[..header.len() + 1 + payload.len()];
    Ok(Segments {
        header,
        payload,
        signature,
        signing_input,
    })
}

/// base64url with exactly the canonical `=` padding.
const URL_SAFE_CANONICAL_PAD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    PAD.with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

/// Decodes one base64url segment.
///
/// Strict (`lenient == false`, what RFC 7515 §2 requires of every JWS segment and
/// what the providers use): the URL-safe alphabet only, no padding, no whitespace
/// or other characters, no length of 1 modulo 4, and the unused low bits of the
/// last character zero, so each byte string has exactly one accepted encoding and
/// the bytes a signature covers are the bytes that are decoded.
///
/// `lenient` additionally accepts the canonical `=` padding (and only that: a
/// wrong amount of padding is refused); everything else stays strict.
pub fn b64url(segment: &str, lenient: bool) -> Result<Vec<u8>, TokenError> {
    let decoded = if lenient && segment.ends_with('=') {
        URL_SAFE_CANONICAL_PAD.decode(segment)
    } else {
        URL_SAFE_NO_PAD.decode(segment)
    };
    decoded.map_err(|_| TokenError::Base64)
}

/// Decodes a segment holding a JSON object.
pub fn json_object(segment: &str, lenient: bool) -> Result<Map<String, Value>, TokenError> {
    let bytes = b64url(segment, lenient)?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(TokenError::Json),
    }
}

/// The JOSE header fields the authenticator uses.
#[derive(Debug, Clone)]
pub struct JoseHeader {
    /// `alg`, never `none`.
    pub alg: String,
    /// `kid`, a lookup key only.
    pub kid: Option<String>,
}

/// Checks a decoded header the way the request path requires (RFC 8725):
/// `alg` present and not `none`; no `jku`, `x5u`, `jwk` (keys are never taken
/// from the token); no `crit` (no extension is understood, RFC 7515 §4.1.11);
/// `kid`, `typ`, `cty` strings; nested tokens (`cty: JWT`) are not accepted.
pub fn checked_header(h: &Map<String, Value>) -> Result<JoseHeader, TokenError> {
    let alg = match h.get("alg") {
        Some(Value::String(a)) if !a.is_empty() => a.clone(),
        _ => return Err(TokenError::NoAlgorithm),
    };
    if alg.eq_ignore_ascii_case("none") {
        return Err(TokenError::AlgNone);
    }
    if FORBIDDEN_HEADERS.iter().any(|k| h.contains_key(*k)) || h.contains_key("crit") {
        return Err(TokenError::ForbiddenHeader);
    }
    for k in ["typ", "cty"] {
        if matches!(h.get(k), Some(v) if !v.is_string()) {
            return Err(TokenError::HeaderType);
        }
    }
    if matches!(h.get("cty"), Some(Value::String(c)) if c.eq_ignore_ascii_case("JWT")) {
        return Err(TokenError::HeaderType);
    }
    let kid = match h.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(TokenError::HeaderType),
    };
    Ok(JoseHeader { alg, kid })
}

/// Type-checks the registered claims (RFC 7519 §4.1): `exp`, `nbf`, `iat`
/// numbers; `iss`, `sub`, `jti` strings; `aud` a string or an array of strings.
pub fn check_claim_types(p: &Map<String, Value>) -> Result<(), TokenError> {
    for k in ["exp", "nbf", "iat"] {
        if matches!(p.get(k), Some(v) if !v.is_number()) {
            return Err(TokenError::ClaimType);
        }
    }
    for k in ["iss", "sub", "jti"] {
        if matches!(p.get(k), Some(v) if !v.is_string()) {
            return Err(TokenError::ClaimType);
        }
    }
    match p.get("aud") {
        None | Some(Value::String(_)) => Ok(()),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => Ok(()),
        Some(_) => Err(TokenError::ClaimType),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn enc(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap_or_default())
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn split_requires_three_segments() {
        assert_eq!(split("a.b").err(), Some(TokenError::Segments));
        assert_eq!(split("a.b.c.d").err(), Some(TokenError::Segments));
        assert_eq!(split("a.b.c.d.e").err(), Some(TokenError::Segments));
        let s = split("aa.bb.cc").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (s.header, s.payload, s.signature, s.signing_input),
            ("aa", "bb", "cc", "aa.bb")
        );
    }

    #[test]
    fn base64_and_json_are_checked() {
        assert_eq!(b64url("a+b/", false), Err(TokenError::Base64));
        assert_eq!(b64url("e30=", false), Err(TokenError::Base64));
        assert_eq!(b64url("e30=", true), Ok(b"{}".to_vec()));
        assert_eq!(
            json_object(&URL_SAFE_NO_PAD.encode("[1]"), false),
            Err(TokenError::Json)
        );
        assert_eq!(
            json_object(&URL_SAFE_NO_PAD.encode("{bad"), false),
            Err(TokenError::Json)
        );
        assert!(json_object(&enc(&json!({"a": 1})), false).is_ok());
    }

    #[test]
    fn base64url_is_canonical() {
        // `{}` is "e30"; every other spelling of it is refused in strict mode.
        assert_eq!(b64url("e30", false), Ok(b"{}".to_vec()));
        for bad in [
            "e30=", "e30==", " e30", "e30 ", "e3 0", "e30\n", "e30#", "e30?", "e30.", "e31", "e32",
            "e3+", "e3/", "e", "e30%3D",
        ] {
            assert_eq!(b64url(bad, false), Err(TokenError::Base64), "{bad:?}");
        }
        // Lenient: the canonical padding and nothing more.
        assert_eq!(b64url("e30=", true), Ok(b"{}".to_vec()));
        assert_eq!(b64url("e30", true), Ok(b"{}".to_vec()));
        for bad in ["e30==", "e30===", "e3==", "e31=", "e30 =", "e3+="] {
            assert_eq!(b64url(bad, true), Err(TokenError::Base64), "{bad:?}");
        }
        // Two bytes: the last character's two low bits must be zero.
        assert_eq!(b64url("AAE", false), Ok(vec![0, 1]));
        assert_eq!(b64url("AAF", false), Err(TokenError::Base64));
        // One byte: four low bits.
        assert_eq!(b64url("AQ", false), Ok(vec![1]));
        assert_eq!(b64url("AR", false), Err(TokenError::Base64));
    }

    #[test]
    fn header_rules() {
        let h = |v| checked_header(&obj(v));
        assert_eq!(h(json!({})).err(), Some(TokenError::NoAlgorithm));
        assert_eq!(h(json!({"alg": 5})).err(), Some(TokenError::NoAlgorithm));
        assert_eq!(h(json!({"alg": "none"})).err(), Some(TokenError::AlgNone));
        assert_eq!(h(json!({"alg": "nOnE"})).err(), Some(TokenError::AlgNone));
        for k in ["jku", "x5u", "jwk", "crit"] {
            assert_eq!(
                h(json!({"alg": "RS256", k: "x"})).err(),
                Some(TokenError::ForbiddenHeader),
                "{k}"
            );
        }
        assert_eq!(
            h(json!({"alg": "RS256", "kid": 1})).err(),
            Some(TokenError::HeaderType)
        );
        assert_eq!(
            h(json!({"alg": "RS256", "cty": "JWT"})).err(),
            Some(TokenError::HeaderType)
        );
        let ok =
            h(json!({"alg": "ES256", "kid": "k1", "typ": "JWT"})).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((ok.alg.as_str(), ok.kid.as_deref()), ("ES256", Some("k1")));
    }

    #[test]
    fn claim_types() {
        let c = |v| check_claim_types(&obj(v));
        assert_eq!(c(json!({"exp": "1"})), Err(TokenError::ClaimType));
        assert_eq!(c(json!({"nbf": true})), Err(TokenError::ClaimType));
        assert_eq!(c(json!({"iat": null})), Err(TokenError::ClaimType));
        assert_eq!(c(json!({"iss": 1})), Err(TokenError::ClaimType));
        assert_eq!(c(json!({"aud": [1]})), Err(TokenError::ClaimType));
        assert_eq!(c(json!({"aud": {}})), Err(TokenError::ClaimType));
        assert_eq!(
            c(json!({"exp": 1, "nbf": 1.5, "iss": "i", "aud": ["a", "b"], "sub": "s"})),
            Ok(())
        );
    }
}
