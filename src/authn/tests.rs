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
