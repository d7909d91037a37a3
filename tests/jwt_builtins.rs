//! The `io.jwt.*` regorus extensions, evaluated through a real `PolicySet` the
//! way the sidecar evaluates policies, against OPA's documented semantics:
//! `decode`, `decode_verify` (every constraint, failure → `[false, {}, {}]`),
//! and the `verify_*` family, including algorithm-confusion attempts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod jwt_keys;

use jsonwebtoken::Algorithm;
use jwt_keys::*;
use portcullis::policy::builtins::{jwt_extensions, strict_extensions};
use portcullis::policy::{PolicyOptions, PolicySet};
use serde_json::{json, Value};

/// Evaluates `r := <expr>` with `input` as the sidecar does (builtin errors
/// non-strict); `None` when undefined, `Err` on an error.
fn eval(expr: &str, input: Value) -> Result<Option<Value>, String> {
    eval_with(expr, input, false)
}

/// [`eval`] with strict builtin errors (`policy eval --strict-builtin-errors`).
fn eval_strict(expr: &str, input: Value) -> Result<Option<Value>, String> {
    eval_with(expr, input, true)
}

fn eval_with(expr: &str, input: Value, strict: bool) -> Result<Option<Value>, String> {
    let module = format!("package t\nimport rego.v1\nr := {expr}\n");
    let set = PolicySet::from_sources(
        vec![("t.rego".to_owned(), module)],
        Value::Null,
        &["data.t.r".to_owned()],
        PolicyOptions {
            extensions: Some(if strict {
                strict_extensions()
            } else {
                jwt_extensions()
            }),
            ..PolicyOptions::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let input = regorus::Value::from(input);
    match set.evaluate_value(0, input) {
        Ok(regorus::Value::Undefined) => Ok(None),
        Ok(v) => Ok(Some(serde_json::to_value(&v).unwrap())),
        Err(e) => Err(e.to_string()),
    }
}

fn decode_verify(token: &str, constraints: Value) -> Result<Option<Value>, String> {
    eval(
        "io.jwt.decode_verify(input.token, input.constraints)",
        json!({"token": token, "constraints": constraints}),
    )
}

fn verified(r: Result<Option<Value>, String>) -> bool {
    match r {
        Ok(Some(v)) => {
            if v[0] == json!(false) {
                assert_eq!(v, json!([false, {}, {}]));
                false
            } else {
                assert_eq!(v[0], json!(true));
                true
            }
        }
        other => panic!("expected an array, got {other:?}"),
    }
}

const UNVERIFIED: fn() -> Value = || json!([false, {}, {}]);

/// jwt.io's well-known HS256 example token and secret.
const JWT_IO: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

#[test]
fn decode_returns_header_payload_and_hex_signature() {
    let v = eval("io.jwt.decode(input.t)", json!({"t": JWT_IO}))
        .unwrap()
        .unwrap();
    assert_eq!(v[0], json!({"alg": "HS256", "typ": "JWT"}));
    assert_eq!(
        v[1],
        json!({"sub": "1234567890", "name": "John Doe", "iat": 1516239022})
    );
    assert_eq!(
        v[2],
        json!("49f94ac7044948c78a285d904f87f0a4c7897f7e8f3a4eb2255fda750b2cc397")
    );
    // Undecodable tokens make the call undefined (OPA's non-strict builtin errors).
    for bad in ["nodots", "a.b", "a.b.c.d", "!!!.e30.", "e30.bm90IGpzb24.AA"] {
        assert_eq!(
            eval("io.jwt.decode(input.t)", json!({"t": bad})),
            Ok(None),
            "{bad}"
        );
    }
    // A non-string operand is a builtin error: undefined as OPA-Envoy evaluates,
    // an error when strict.
    assert_eq!(eval("io.jwt.decode(input.t)", json!({"t": 1})), Ok(None));
    assert!(eval_strict("io.jwt.decode(input.t)", json!({"t": 1})).is_err());
}

#[test]
fn verify_hs_family() {
    let ok = |f: &str, t: &str, s: &str| {
        eval(
            &format!("io.jwt.{f}(input.t, input.s)"),
            json!({"t": t, "s": s}),
        )
    };
    assert_eq!(
        ok("verify_hs256", JWT_IO, "your-256-bit-secret"),
        Ok(Some(json!(true)))
    );
    assert_eq!(ok("verify_hs256", JWT_IO, "wrong"), Ok(Some(json!(false))));
    // The function fixes the algorithm: an HS256 signature is no HS384 one.
    assert_eq!(
        ok("verify_hs384", JWT_IO, "your-256-bit-secret"),
        Ok(Some(json!(false)))
    );
    let claims = json!({"sub": "x"});
    for (f, alg) in [
        ("verify_hs384", Algorithm::HS384),
        ("verify_hs512", Algorithm::HS512),
    ] {
        let t = hmac_token(alg, &json!({"alg": format!("{alg:?}")}), &claims, b"k");
        assert_eq!(ok(f, &t, "k"), Ok(Some(json!(true))), "{f}");
        assert_eq!(ok(f, &t, "K"), Ok(Some(json!(false))), "{f}");
    }
}

#[test]
fn verify_asymmetric_family_with_pem_cert_and_jwks() {
    let rsa = TestKey::rs256("r1");
    let ec = TestKey::es256("e1");
    let ec384 = TestKey::es384("e2");
    let other = TestKey::es256("e3");
    let claims = json!({"sub": "alice"});
    let check = |f: &str, token: &str, cert: &str| {
        eval(
            &format!("io.jwt.{f}(input.t, input.c)"),
            json!({"t": token, "c": cert}),
        )
        .unwrap()
        .unwrap()
    };
    for alg in [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ] {
        let key = rsa.with_alg(alg);
        let t = key.sign(&claims);
        let f = format!("verify_{}", format!("{alg:?}").to_lowercase());
        assert_eq!(check(&f, &t, &rsa.public_pem), json!(true), "{f} pem");
        assert_eq!(check(&f, &t, &rsa.cert_pem), json!(true), "{f} cert");
        assert_eq!(check(&f, &t, &jwks(&[&key])), json!(true), "{f} jwks");
        assert_eq!(check(&f, &t, &ec.public_pem), json!(false), "{f} wrong key");
    }
    let t = ec.sign(&claims);
    assert_eq!(check("verify_es256", &t, &ec.public_pem), json!(true));
    assert_eq!(check("verify_es256", &t, &ec.cert_pem), json!(true));
    assert_eq!(
        check("verify_es256", &t, &jwks(&[&other, &ec])),
        json!(true)
    );
    assert_eq!(check("verify_es256", &t, &other.public_pem), json!(false));
    assert_eq!(check("verify_es384", &t, &ec.public_pem), json!(false));
    assert_eq!(check("verify_rs256", &t, &ec.public_pem), json!(false));
    let t = ec384.sign(&claims);
    assert_eq!(check("verify_es384", &t, &ec384.public_pem), json!(true));
    // A tampered payload never verifies.
    let good = ec.sign(&claims);
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged = b64(&json!({"sub": "mallory"}));
    parts[1] = &forged;
    assert_eq!(
        check("verify_es256", &parts.join("."), &ec.public_pem),
        json!(false)
    );
    // A bad certificate is a builtin error: undefined, or an error when strict.
    let bad_cert =
        json!({"t": good, "c": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"});
    assert_eq!(
        eval("io.jwt.verify_rs256(input.t, input.c)", bad_cert.clone()),
        Ok(None)
    );
    assert!(eval_strict("io.jwt.verify_rs256(input.t, input.c)", bad_cert).is_err());
}

#[test]
fn decode_verify_constraints() {
    let key = TestKey::es256("k1");
    let now = now();
    let claims = json!({"iss": "https://idp.test", "aud": "orders", "sub": "alice", "nbf": now - 10, "exp": now + 600});
    let t = key.sign(&claims);
    let cert = key.public_pem.clone();

    // Valid: [true, header, payload].
    let v = decode_verify(
        &t,
        json!({"cert": cert, "iss": "https://idp.test", "aud": "orders"}),
    )
    .unwrap()
    .unwrap();
    assert_eq!(v[0], json!(true));
    assert_eq!(v[1]["alg"], "ES256");
    assert_eq!(v[1]["kid"], "k1");
    assert_eq!(v[2], claims);
    // JWKS as `cert`, with and without a matching kid.
    assert!(verified(decode_verify(
        &t,
        json!({"cert": jwks(&[&TestKey::es256("x"), &key]), "aud": "orders"})
    )));
    assert!(!verified(decode_verify(
        &t,
        json!({"cert": jwks(&[&TestKey::es256("k1")]), "aud": "orders"})
    )));

    // `alg` restricts the header's algorithm.
    assert!(verified(decode_verify(
        &t,
        json!({"cert": cert, "aud": "orders", "alg": "ES256"})
    )));
    assert_eq!(
        decode_verify(&t, json!({"cert": cert, "aud": "orders", "alg": "RS256"})),
        Ok(Some(UNVERIFIED()))
    );
    // `iss` must match (and be present) when given.
    assert!(!verified(decode_verify(
        &t,
        json!({"cert": cert, "aud": "orders", "iss": "https://other"})
    )));
    let no_iss = key.sign(&json!({"aud": "orders"}));
    assert!(!verified(decode_verify(
        &no_iss,
        json!({"cert": cert, "aud": "orders", "iss": "https://idp.test"})
    )));
    // `aud`: a token with an audience needs the constraint; arrays match any element.
    assert!(!verified(decode_verify(&t, json!({"cert": cert}))));
    assert!(!verified(decode_verify(
        &t,
        json!({"cert": cert, "aud": "billing"})
    )));
    let many = key.sign(&json!({"aud": ["billing", "orders"]}));
    assert!(verified(decode_verify(
        &many,
        json!({"cert": cert, "aud": "orders"})
    )));
    let none = key.sign(&json!({"sub": "x"}));
    assert!(verified(decode_verify(&none, json!({"cert": cert}))));
    assert!(!verified(decode_verify(
        &none,
        json!({"cert": cert, "aud": "orders"})
    )));

    // `time` (ns): valid iff nbf <= time < exp.
    let ns = |s: i64| s as f64 * 1e9;
    let c = |time: f64| json!({"cert": cert, "aud": "orders", "time": time});
    assert!(verified(decode_verify(&t, c(ns(now)))));
    assert!(verified(decode_verify(&t, c(ns(now - 10)))));
    assert!(!verified(decode_verify(&t, c(ns(now - 11)))));
    assert!(!verified(decode_verify(&t, c(ns(now + 600)))));
    assert!(verified(decode_verify(&t, c(ns(now + 599)))));
    // Expired and not-yet-valid at the current time.
    let expired = key.sign(&json!({"exp": now - 1}));
    assert!(!verified(decode_verify(&expired, json!({"cert": cert}))));
    let later = key.sign(&json!({"nbf": now + 3600}));
    assert!(!verified(decode_verify(&later, json!({"cert": cert}))));
    // A wrongly typed exp is undefined (OPA: an error, non-strict).
    let string_exp = key.sign(&json!({"exp": "tomorrow"}));
    assert_eq!(decode_verify(&string_exp, json!({"cert": cert})), Ok(None));
}

#[test]
fn decode_verify_with_secret_and_failures() {
    let now = now();
    let claims = json!({"iss": "xxx", "exp": now + 60});
    let t = hmac_token(
        Algorithm::HS256,
        &json!({"alg": "HS256", "typ": "JWT"}),
        &claims,
        b"secret",
    );
    assert_eq!(
        decode_verify(&t, json!({"secret": "secret", "iss": "xxx"})),
        Ok(Some(json!([true, {"alg": "HS256", "typ": "JWT"}, claims])))
    );
    assert_eq!(
        decode_verify(&t, json!({"secret": "wrong", "iss": "xxx"})),
        Ok(Some(UNVERIFIED()))
    );
    assert!(verified(decode_verify(
        JWT_IO,
        json!({"secret": "your-256-bit-secret"})
    )));

    // HMAC/RSA confusion: an HS256 token keyed with the RSA public key never
    // verifies against that key given as `cert`.
    let rsa = TestKey::rs256("r1");
    let forged = hmac_token(
        Algorithm::HS256,
        &json!({"alg": "HS256", "kid": "r1"}),
        &json!({"sub": "admin"}),
        rsa.public_pem.as_bytes(),
    );
    for cert in [rsa.public_pem.clone(), rsa.cert_pem.clone(), jwks(&[&rsa])] {
        assert_eq!(
            decode_verify(&forged, json!({"cert": cert})),
            Ok(Some(UNVERIFIED()))
        );
    }
    // ... and an RS256 token never verifies with a secret.
    let rs = rsa.sign(&json!({"sub": "x"}));
    assert_eq!(
        decode_verify(&rs, json!({"secret": rsa.public_pem})),
        Ok(Some(UNVERIFIED()))
    );
    // alg none never verifies.
    assert_eq!(
        decode_verify(&none_token(&json!({"sub": "x"})), json!({"secret": "s"})),
        Ok(Some(UNVERIFIED()))
    );
    // Unknown critical header parameter.
    let crit = hmac_token(
        Algorithm::HS256,
        &json!({"alg": "HS256", "crit": ["exotic"], "exotic": 1}),
        &json!({}),
        b"s",
    );
    assert_eq!(
        decode_verify(&crit, json!({"secret": "s"})),
        Ok(Some(UNVERIFIED()))
    );
    // Truncated signature: whole base64 groups decode to a short signature...
    let truncated = &t[..t.len() - 3];
    assert_eq!(
        decode_verify(truncated, json!({"secret": "secret"})),
        Ok(Some(UNVERIFIED()))
    );
    // ... a cut mid-group is not base64url at all: undefined, as in OPA.
    assert_eq!(
        decode_verify(&t[..t.len() - 2], json!({"secret": "secret"})),
        Ok(None)
    );
    // Undecodable token: undefined.
    assert_eq!(decode_verify("garbage", json!({"secret": "s"})), Ok(None));
    // Constraint errors are evaluation errors, as in OPA.
    for bad in [
        json!({}),
        json!({"secret": "s", "cert": rsa.public_pem}),
        json!({"secret": "s", "bogus": 1}),
        json!({"secret": "s", "time": "now"}),
    ] {
        let args = json!({"token": t, "constraints": bad});
        let expr = "io.jwt.decode_verify(input.token, input.constraints)";
        assert_eq!(eval(expr, args.clone()), Ok(None), "{bad}");
        assert!(eval_strict(expr, args).is_err(), "{bad}");
    }
}

#[test]
fn opa_envoy_style_policy_runs_unchanged() {
    let key = TestKey::rs256("r1");
    let now = now();
    let policy = r#"
package envoy.authz

import rego.v1

default allow := false

token := t if {
    v := input.attributes.request.http.headers.authorization
    startswith(v, "Bearer ")
    t := substring(v, count("Bearer "), -1)
}

allow if {
    [valid, _, payload] := io.jwt.decode_verify(token, {"cert": data.jwks, "aud": "orders"})
    valid
    payload.role == "admin"
}
"#;
    let set = PolicySet::from_sources(
        vec![("authz.rego".to_owned(), policy.to_owned())],
        json!({"jwks": jwks(&[&key])}),
        &["data.envoy.authz.allow".to_owned()],
        PolicyOptions {
            extensions: Some(jwt_extensions()),
            ..PolicyOptions::default()
        },
    )
    .unwrap();
    let input = |auth: &str| {
        regorus::Value::from(
            json!({"attributes": {"request": {"http": {"headers": {"authorization": auth}}}}}),
        )
    };
    let admin = key.sign(&json!({"aud": "orders", "role": "admin", "exp": now + 60}));
    let user = key.sign(&json!({"aud": "orders", "role": "user", "exp": now + 60}));
    let d = |auth: &str| set.evaluate(0, input(auth)).map(|d| d.allowed);
    assert_eq!(d(&format!("Bearer {admin}")), Ok(true));
    assert_eq!(d(&format!("Bearer {user}")), Ok(false));
    assert_eq!(d("Bearer garbage"), Ok(false));
    assert_eq!(d("Basic abc"), Ok(false));
}

/// Where OPA's `io.jwt.*` accepts or refuses differently from a permissive
/// decoder (each case checked against OPA 1.x): nanosecond `time` constraints,
/// header fields of any type in `decode`, invalid UTF-8 in the payload, a JWK's
/// `alg` ignored; refused: JWE headers, padded segments, PKCS#1 `RSA PUBLIC KEY`
/// PEM blocks and PEM text with leading whitespace.
#[test]
fn io_jwt_follows_opa_both_ways() {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine as _;
    let secret = b"secret";
    let raw_token = |header: &[u8], payload: &[u8], pad: bool| {
        let mut p = URL_SAFE_NO_PAD.encode(payload);
        if pad {
            while p.len() % 4 != 0 {
                p.push('=');
            }
        }
        let input = format!("{}.{p}", URL_SAFE_NO_PAD.encode(header));
        let sig = jsonwebtoken::crypto::sign(
            input.as_bytes(),
            &jsonwebtoken::EncodingKey::from_secret(secret),
            Algorithm::HS256,
        )
        .unwrap();
        format!("{input}.{sig}")
    };
    let verify = |t: &str, constraints: Value| decode_verify(t, constraints);

    // `time` in nanoseconds, as time.now_ns() gives it.
    let exp = now() + 3600;
    let t = hmac_token(
        Algorithm::HS256,
        &json!({"alg": "HS256"}),
        &json!({"exp": exp}),
        secret,
    );
    let now_ns = (now() as u64) * 1_000_000_000;
    assert!(verified(verify(
        &t,
        json!({"secret": "secret", "time": now_ns})
    )));
    let later_ns = (exp as u64 + 1) * 1_000_000_000;
    assert!(!verified(verify(
        &t,
        json!({"secret": "secret", "time": later_ns})
    )));

    // `kid: 1`: decode returns the header; decode_verify is an error (undefined).
    let kid_int = raw_token(br#"{"alg":"HS256","kid":1}"#, br#"{"sub":"a"}"#, false);
    let decoded = eval("io.jwt.decode(input.t)", json!({"t": kid_int}))
        .unwrap()
        .unwrap();
    assert_eq!(decoded[0], json!({"alg": "HS256", "kid": 1}));
    assert_eq!(verify(&kid_int, json!({"secret": "secret"})), Ok(None));

    // Invalid UTF-8 in the payload: replaced, as OPA's JSON decoder does.
    let bad_utf8 = raw_token(br#"{"alg":"HS256"}"#, b"{\"sub\":\"a\xff\"}", false);
    let decoded = eval("io.jwt.decode(input.t)", json!({"t": bad_utf8}))
        .unwrap()
        .unwrap();
    assert_eq!(decoded[1], json!({"sub": "a\u{fffd}"}));
    assert!(verified(verify(&bad_utf8, json!({"secret": "secret"}))));

    // A JWE header and padded segments are refused (undefined; errors when strict).
    let jwe = raw_token(
        br#"{"alg":"HS256","enc":"A128GCM"}"#,
        br#"{"sub":"a"}"#,
        false,
    );
    let padded = raw_token(br#"{"alg":"HS256"}"#, br#"{"sub":"abc"}"#, true);
    assert!(padded.contains('='));
    for t in [&jwe, &padded] {
        assert_eq!(
            eval("io.jwt.decode(input.t)", json!({"t": t})),
            Ok(None),
            "{t}"
        );
        assert!(eval_strict("io.jwt.decode(input.t)", json!({"t": t})).is_err());
        assert_eq!(verify(t, json!({"secret": "secret"})), Ok(None), "{t}");
    }

    // PEM: no PKCS#1 `RSA PUBLIC KEY`, no leading whitespace.
    let rsa = TestKey::rs256("r1");
    let token = rsa.sign(&json!({"sub": "a"}));
    assert!(verified(verify(&token, json!({"cert": rsa.public_pem}))));
    let spki_der = STANDARD
        .decode(
            rsa.public_pem
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
    let (_, spki) =
        <x509_parser::x509::SubjectPublicKeyInfo as x509_parser::prelude::FromDer<_>>::from_der(
            &spki_der,
        )
        .unwrap();
    let pkcs1 = format!(
        "-----BEGIN RSA PUBLIC KEY-----\n{}\n-----END RSA PUBLIC KEY-----\n",
        STANDARD.encode(&spki.subject_public_key.data)
    );
    assert_eq!(verify(&token, json!({"cert": pkcs1})), Ok(None));
    let indented = format!("\n  {}", rsa.public_pem);
    assert_eq!(verify(&token, json!({"cert": indented})), Ok(None));

    // A JWK whose own `alg` differs from the token's: OPA verifies with the token's.
    let rs384 = rsa.with_alg(Algorithm::RS384);
    let token384 = rs384.sign(&json!({"sub": "a"}));
    assert!(verified(verify(&token384, json!({"cert": jwks(&[&rsa])}))));
}

/// ES512 (P-521, which jsonwebtoken lacks): `verify_es512` and `decode_verify`
/// with a PEM public key, a certificate and a JWK set; a tampered token, another
/// key and another algorithm's function do not verify.
#[test]
fn es512_verifies_with_pem_certificate_and_jwk() {
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P521_SHA512_FIXED_SIGNING};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512).unwrap();
    let signer =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P521_SHA512_FIXED_SIGNING, &kp.serialize_der()).unwrap();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let sign = |header: &Value, claims: &Value| {
        let input = format!("{}.{}", b64(header), b64(claims));
        let sig = signer.sign(&rng, input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    };
    let token = sign(
        &json!({"alg": "ES512", "kid": "p521"}),
        &json!({"sub": "a", "exp": now() + 600}),
    );
    let point = signer.public_key().as_ref().to_vec();
    assert_eq!(point.len(), 133);
    let jwk = json!({"keys": [{
        "kty": "EC", "crv": "P-521", "kid": "p521",
        "x": URL_SAFE_NO_PAD.encode(&point[1..67]),
        "y": URL_SAFE_NO_PAD.encode(&point[67..]),
    }]})
    .to_string();
    let cert = rcgen::CertificateParams::new(vec!["idp.test".to_owned()])
        .unwrap()
        .self_signed(&kp)
        .unwrap()
        .pem();
    for key in [kp.public_key_pem(), cert, jwk] {
        let check = |t: &str| {
            eval(
                "io.jwt.verify_es512(input.t, input.k)",
                json!({"t": t, "k": key}),
            )
            .unwrap()
            .unwrap()
        };
        assert_eq!(check(&token), json!(true), "{key}");
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = b64(&json!({"sub": "mallory"}));
        parts[1] = &forged;
        assert_eq!(check(&parts.join(".")), json!(false));
        assert!(
            verified(decode_verify(&token, json!({"cert": key}))),
            "{key}"
        );
        assert_eq!(
            eval(
                "io.jwt.verify_es384(input.t, input.k)",
                json!({"t": token, "k": key})
            ),
            Ok(Some(json!(false)))
        );
    }
    let other = TestKey::es256("e");
    assert_eq!(
        eval(
            "io.jwt.verify_es512(input.t, input.k)",
            json!({"t": token, "k": other.public_pem})
        ),
        Ok(Some(json!(false)))
    );
}
