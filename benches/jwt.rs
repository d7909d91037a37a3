//! JWT validation on the request path with a cached key: find the bearer token,
//! parse and check the header and claims, verify the signature with the key
//! decoded when the JWKS was loaded, count the metric. ES256 and RS256 (2048).
//! Also `io.jwt.decode_verify` through the policy engine, for comparison.
//!
//! Run: `cargo bench --bench jwt -- --warm-up-time 1 --measurement-time 3`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue};
use portcullis::authn::jwk::JwsAlgorithm;
use portcullis::authn::jwks::KeySet;
use portcullis::authn::{Authenticator, Outcome};
use portcullis::config::{JwksSource, JwtConfig, JwtProvider, TokenLocation};
use serde_json::json;

#[path = "../tests/jwt_keys/mod.rs"]
mod jwt_keys;
use jwt_keys::{jwks, now, TestKey};

const ISS: &str = "https://idp.bench";

fn authenticator(keys: &[&TestKey]) -> std::sync::Arc<Authenticator> {
    let cfg = JwtConfig {
        providers: vec![JwtProvider {
            name: "bench".into(),
            issuer: ISS.into(),
            audiences: vec!["orders".into()],
            jwks: JwksSource::Inline(jwks(keys)),
            from: vec![TokenLocation::Header {
                name: "authorization".into(),
                prefix: "Bearer ".into(),
            }],
            forward: false,
            clock_skew: Duration::from_secs(60),
            claims_to_headers: vec![],
            payload_in_metadata: "jwt_payload".into(),
        }],
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(Authenticator::start(&cfg))
        .expect("authenticator")
        .0
}

fn request(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("orders:8080"));
    h.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    h
}

fn bench_validation(c: &mut Criterion) {
    let es = TestKey::es256("es");
    let rs = TestKey::rs256("rs");
    let authn = authenticator(&[&es, &rs]);
    let claims = json!({
        "iss": ISS, "aud": "orders", "sub": "alice", "role": "admin",
        "scope": "orders:read orders:write", "iat": now(), "exp": now() + 86400
    });
    let mut g = c.benchmark_group("jwt_validate_cached_key");
    for (name, key) in [("es256", &es), ("rs256", &rs)] {
        let headers = request(&key.sign(&claims));
        // The cached path never waits: the future completes on its first poll.
        let check = authn.authenticate(&headers, "/orders").now_or_never();
        assert!(matches!(check, Some(Outcome::Verified(_))), "{check:?}");
        g.bench_function(name, |b| {
            b.iter(|| {
                let out = authn
                    .authenticate(black_box(&headers), black_box("/orders"))
                    .now_or_never();
                black_box(out)
            })
        });
    }
    g.finish();

    // The signature check alone with the same pre-parsed keys: the floor set by
    // aws-lc-rs; the difference to the group above is the authenticator's own cost.
    let set = KeySet::parse(jwks(&[&es, &rs]).as_bytes(), false).expect("keys");
    let mut g = c.benchmark_group("jwt_signature_only");
    for (name, key, alg) in [
        ("es256", &es, JwsAlgorithm::ES256),
        ("rs256", &rs, JwsAlgorithm::RS256),
    ] {
        let token = key.sign(&claims);
        let (input, sig) = token.rsplit_once('.').expect("token");
        let sig = URL_SAFE_NO_PAD.decode(sig).expect("sig");
        let k = set
            .keys
            .iter()
            .find(|k| k.kid.as_deref() == Some(key.kid.as_str()))
            .expect("key");
        assert!(k.verify(alg, input.as_bytes(), &sig));
        g.bench_function(name, |b| {
            b.iter(|| k.verify(alg, black_box(input.as_bytes()), black_box(&sig)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_validation);
criterion_main!(benches);
