//! Unit tests of the authenticator: token locations, stripping, claim headers.

use super::*;
use http::header::COOKIE;
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

/// An authenticator with one provider whose keys are `jwks` (inline).
async fn with_keys(jwks: Value) -> Arc<Authenticator> {
    let mut provider = crate::config::JwtProvider::new(
        "warm",
        "https://issuer.test",
        JwksSource::Inline(jwks.to_string()),
    );
    provider.audiences = vec!["api".to_owned()];
    let cfg = JwtConfig {
        providers: vec![provider],
    };
    Authenticator::start(&cfg)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .0
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The warm-up token gets through parsing, issuer, claim types and key selection to
/// the signature check, for each kind of key, and fails there.
#[tokio::test]
async fn the_warm_up_token_fails_at_the_signature_check() {
    use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
    let ec = |alg: &'static sig::EcdsaSigningAlgorithm, crv: &str, len: usize| {
        let kp = EcdsaKeyPair::generate(alg).unwrap_or_else(|e| panic!("{e}"));
        let point = kp.public_key().as_ref().to_vec();
        let (x, y) = point[1..].split_at(len);
        json!({"kty": "EC", "crv": crv, "kid": crv, "x": b64(x), "y": b64(y)})
    };
    let ed = Ed25519KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let keys = [
        ec(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", 32),
        ec(&sig::ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", 48),
        json!({"kty": "OKP", "crv": "Ed25519", "x": b64(ed.public_key().as_ref())}),
    ];
    for key in keys {
        let a = with_keys(json!({ "keys": [key] })).await;
        let p = &a.providers[0];
        let token = p
            .warm_up_token()
            .unwrap_or_else(|| panic!("no warm-up token for {key}"));
        let reason = a
            .validate(&token, p.locations[0])
            .await
            .err()
            .map(|r| r.reason);
        assert_eq!(reason, Some("bad_signature"), "{key}");
        a.warm().await;
    }
}
