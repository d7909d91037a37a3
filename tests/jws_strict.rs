//! JWS and JWK strictness of the JWT providers, class by class: every base64url
//! anomaly in every segment (signed over the anomalous bytes, so only the decoding
//! rule can refuse them), JWK `use`/`key_ops`, key sizes (RSA under 2048 bits, HMAC
//! secrets shorter than the hash), curves and their consistency with `kty`/`alg`,
//! ES512 and EdDSA, and algorithm confusion. Tokens go through a real
//! `Authenticator` built from an inline JWKS; JWK refusals are also checked one by one
//! with their exact reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod jwt_keys;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::HeaderMap;
use portcullis::authn::jwk::{parse_jwk, JwkError, JwsAlgorithm};
use portcullis::authn::jwks::KeySet;
use portcullis::authn::{Authenticator, Outcome};
use portcullis::config::{JwksSource, JwtConfig, JwtProvider, TokenLocation};
use serde_json::{json, Value};

const ISS: &str = "https://idp.jws-strict.test";

/// RSA public key with a 1024-bit modulus (generated for this test with openssl).
const RSA_1024_N: &str = "wsDzHluNMl20LyW0k62vAk5K8MmORhtPeSwTQPgWr77AFJBVupSr3UFWC6t_GA_VVAMIDXhD9L2bzAEO4j21wLkCdkER_vvc4ClAdAFGfai-PlgnRo_-8pPkAJ8yxZqU_EfcvjTP0eC3x--0xVimsuznJ_QNxV9z7RwxWlCj35U";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn claims() -> Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({"iss": ISS, "sub": "alice", "exp": now + 600})
}

/// Signs a message (a JWS signing input) into raw signature bytes.
type SignFn = Box<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

/// A key that signs tokens, with its public JWK.
struct Signer {
    jwk: Value,
    alg: &'static str,
    sign: SignFn,
}

impl Signer {
    fn ec(kid: &str, curve: &'static str) -> Signer {
        let (alg, signing, len): (_, &'static sig::EcdsaSigningAlgorithm, usize) = match curve {
            "P-256" => ("ES256", &sig::ECDSA_P256_SHA256_FIXED_SIGNING, 32),
            "P-384" => ("ES384", &sig::ECDSA_P384_SHA384_FIXED_SIGNING, 48),
            _ => ("ES512", &sig::ECDSA_P521_SHA512_FIXED_SIGNING, 66),
        };
        let kp = EcdsaKeyPair::generate(signing).unwrap();
        let point = kp.public_key().as_ref().to_vec();
        let (x, y) = point[1..].split_at(len);
        let jwk = json!({"kty": "EC", "crv": curve, "kid": kid, "x": b64(x), "y": b64(y)});
        Signer {
            jwk,
            alg,
            sign: Box::new(move |m| kp.sign(&SystemRandom::new(), m).unwrap().as_ref().to_vec()),
        }
    }

    fn ed25519(kid: &str) -> Signer {
        let kp = Ed25519KeyPair::generate().unwrap();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
                         "x": b64(kp.public_key().as_ref())});
        Signer {
            jwk,
            alg: "EdDSA",
            sign: Box::new(move |m| kp.sign(m).as_ref().to_vec()),
        }
    }

    fn hmac(kid: &str, alg: &'static str, secret: &[u8]) -> Signer {
        let h = match alg {
            "HS256" => aws_lc_rs::hmac::HMAC_SHA256,
            "HS384" => aws_lc_rs::hmac::HMAC_SHA384,
            _ => aws_lc_rs::hmac::HMAC_SHA512,
        };
        let key = aws_lc_rs::hmac::Key::new(h, secret);
        Signer {
            jwk: json!({"kty": "oct", "kid": kid, "k": b64(secret)}),
            alg,
            sign: Box::new(move |m| aws_lc_rs::hmac::sign(&key, m).as_ref().to_vec()),
        }
    }

    fn rsa(kid: &str) -> Signer {
        let k = jwt_keys::TestKey::rs256(kid);
        let jwk = json!({"kty": "RSA", "kid": kid, "n": k.jwk["n"], "e": k.jwk["e"]});
        Signer {
            jwk,
            alg: "RS256",
            sign: Box::new(move |m| {
                let s = jsonwebtoken::crypto::sign(m, &k.encoding, jsonwebtoken::Algorithm::RS256)
                    .unwrap();
                URL_SAFE_NO_PAD.decode(s).unwrap()
            }),
        }
    }

    fn kid(&self) -> &str {
        self.jwk["kid"].as_str().unwrap()
    }

    /// A token from already-encoded header and payload segments, signed over exactly
    /// those bytes.
    fn sign_segments(&self, header: &str, payload: &str) -> String {
        let input = format!("{header}.{payload}");
        format!("{input}.{}", b64(&(self.sign)(input.as_bytes())))
    }

    fn header(&self) -> Value {
        json!({"alg": self.alg, "kid": self.kid(), "typ": "JWT"})
    }

    fn token(&self) -> String {
        self.token_with(&self.header())
    }

    fn token_with(&self, header: &Value) -> String {
        self.sign_segments(
            &b64(&serde_json::to_vec(header).unwrap()),
            &b64(&serde_json::to_vec(&claims()).unwrap()),
        )
    }
}

async fn authenticator(keys: &[Value]) -> Arc<Authenticator> {
    try_authenticator(keys)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn try_authenticator(
    keys: &[Value],
) -> Result<Arc<Authenticator>, portcullis::authn::AuthnError> {
    let mut provider = JwtProvider::new(
        "strict",
        ISS,
        JwksSource::Inline(json!({ "keys": keys }).to_string()),
    );
    // The header only: a query parameter would be another way in.
    provider.from = vec![TokenLocation::Header {
        name: "authorization".to_owned(),
        prefix: "Bearer ".to_owned(),
    }];
    let cfg = JwtConfig {
        providers: vec![provider],
    };
    Authenticator::start(&cfg).await.map(|(a, _)| a)
}

async fn check(a: &Authenticator, token: &str) -> Result<(), &'static str> {
    let mut h = HeaderMap::new();
    // A line break cannot travel in an HTTP header at all.
    let Ok(value) = format!("Bearer {token}").parse() else {
        return Err("not_a_header_value");
    };
    h.insert("authorization", value);
    match a.authenticate(&h, "/").await {
        Outcome::Verified(_) => Ok(()),
        Outcome::Rejected(r) => Err(r.reason),
        Outcome::NoToken => Err("no_token"),
    }
}

/// Every way to spell a segment other than canonical unpadded base64url.
fn anomalies(canonical: &str) -> Vec<(String, &'static str)> {
    let mut out = vec![
        (format!("{canonical}="), "padding"),
        (format!("{canonical}=="), "double padding"),
        (format!(" {canonical}"), "leading space"),
        (format!("{canonical} "), "trailing space"),
        (format!("{canonical}\n"), "line break"),
        (format!("{canonical}#"), "hash"),
        (format!("{canonical}?"), "question mark"),
        (format!("{canonical}%3D"), "percent-encoded padding"),
        (format!("{canonical}A"), "an extra character"),
    ];
    let swapped = canonical.replace('-', "+").replace('_', "/");
    if swapped != canonical {
        out.push((swapped, "standard alphabet"));
    }
    // Non-canonical trailing bits: the last character's unused low bits set.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let unused = match canonical.len() % 4 {
        2 => 4,
        3 => 2,
        _ => 0,
    };
    if unused > 0 {
        let last = *canonical.as_bytes().last().unwrap();
        let v = alphabet.iter().position(|c| *c == last).unwrap();
        let tweaked = alphabet[v | 1] as char;
        out.push((
            format!("{}{tweaked}", &canonical[..canonical.len() - 1]),
            "non-canonical trailing bits",
        ));
    }
    out
}

/// Refused as malformed; whitespace and line breaks may already be changed or refused
/// by HTTP header handling (leading whitespace is trimmed), which still refuses.
fn refused(result: Result<(), &'static str>, what: &str, segment: &str) {
    if matches!(what, "leading space" | "trailing space" | "line break") {
        assert!(result.is_err(), "{segment} {what}");
    } else {
        assert_eq!(result, Err("malformed"), "{segment} {what}");
    }
}

#[tokio::test]
async fn every_base64url_anomaly_in_every_segment_is_refused() {
    let hs = Signer::hmac("h", "HS256", &[0x42; 32]);
    let es = Signer::ec("e", "P-256");
    let a = authenticator(&[hs.jwk.clone(), es.jwk.clone()]).await;
    for signer in [&hs, &es] {
        assert_eq!(
            check(&a, &signer.token()).await,
            Ok(()),
            "control {}",
            signer.alg
        );
        // Header and payload whose encodings need trailing bits, so every anomaly applies.
        let mut header = signer.header();
        let mut payload = claims();
        let mut pad = String::new();
        while b64(&serde_json::to_vec(&header).unwrap()).len() % 4 == 0 {
            pad.push('x');
            header["pad"] = json!(pad);
        }
        pad.clear();
        while b64(&serde_json::to_vec(&payload).unwrap()).len() % 4 == 0 {
            pad.push('x');
            payload["pad"] = json!(pad);
        }
        let h = b64(&serde_json::to_vec(&header).unwrap());
        let p = b64(&serde_json::to_vec(&payload).unwrap());
        assert_eq!(check(&a, &signer.sign_segments(&h, &p)).await, Ok(()));
        for (bad, what) in anomalies(&h) {
            let t = signer.sign_segments(&bad, &p);
            refused(check(&a, &t).await, what, "header");
        }
        for (bad, what) in anomalies(&p) {
            let t = signer.sign_segments(&h, &bad);
            refused(check(&a, &t).await, what, "payload");
        }
        let good = signer.sign_segments(&h, &p);
        let (input, s) = good.rsplit_once('.').unwrap();
        for (bad, what) in anomalies(s) {
            // Whitespace after the token is not part of an HTTP field value (RFC 9110
            // §5.5): the token that arrives is the canonical one.
            if what == "trailing space" {
                continue;
            }
            let t = format!("{input}.{bad}");
            assert!(check(&a, &t).await.is_err(), "signature {what}");
        }
    }
}

#[tokio::test]
async fn jwk_use_and_key_ops_are_honoured() {
    let signer = |kid: &str| Signer::ec(kid, "P-256");
    let cases: Vec<(&str, Value, Result<(), JwkError>)> = vec![
        ("use-sig", json!({"use": "sig"}), Ok(())),
        (
            "use-enc",
            json!({"use": "enc"}),
            Err(JwkError::NotForSignatures),
        ),
        (
            "use-other",
            json!({"use": "x"}),
            Err(JwkError::NotForSignatures),
        ),
        ("use-number", json!({"use": 1}), Err(JwkError::Malformed)),
        ("ops-verify", json!({"key_ops": ["verify"]}), Ok(())),
        (
            "ops-sign",
            json!({"key_ops": ["sign"]}),
            Err(JwkError::NotForSignatures),
        ),
        (
            "ops-encrypt",
            json!({"key_ops": ["encrypt", "wrapKey"]}),
            Err(JwkError::NotForSignatures),
        ),
        (
            "ops-empty",
            json!({"key_ops": []}),
            Err(JwkError::NotForSignatures),
        ),
        (
            "ops-dup",
            json!({"key_ops": ["verify", "verify"]}),
            Err(JwkError::DuplicateKeyOps),
        ),
        (
            "ops-string",
            json!({"key_ops": "verify"}),
            Err(JwkError::Malformed),
        ),
        ("both", json!({"use": "sig", "key_ops": ["verify"]}), Ok(())),
        (
            "both-enc",
            json!({"use": "enc", "key_ops": ["verify"]}),
            Err(JwkError::NotForSignatures),
        ),
    ];
    let anchor = signer("anchor");
    for (kid, extra, want) in cases {
        let s = signer(kid);
        let mut jwk = s.jwk.clone();
        for (k, v) in extra.as_object().unwrap() {
            jwk[k] = v.clone();
        }
        assert_eq!(parse_jwk(&jwk, false).map(|_| ()), want, "{kid}");
        let a = authenticator(&[anchor.jwk.clone(), jwk]).await;
        let expected = want.map_err(|_| "unknown_kid");
        assert_eq!(check(&a, &s.token()).await, expected, "{kid}");
    }
}

#[tokio::test]
async fn hmac_secrets_shorter_than_the_hash_are_refused() {
    for (alg, min) in [("HS256", 32), ("HS384", 48), ("HS512", 64)] {
        let long_enough = Signer::hmac("k", alg, &vec![7; min]);
        let mut jwk = long_enough.jwk.clone();
        jwk["alg"] = json!(alg);
        let a = authenticator(&[jwk.clone()]).await;
        assert_eq!(check(&a, &long_enough.token()).await, Ok(()), "{alg}");
        let short = Signer::hmac("k", alg, &vec![7; min - 1]);
        let mut jwk = short.jwk.clone();
        jwk["alg"] = json!(alg);
        assert_eq!(
            parse_jwk(&jwk, true).err(),
            Some(JwkError::WeakKey),
            "{alg}"
        );
        assert!(try_authenticator(&[jwk]).await.is_err(), "{alg} loaded");
    }
    // Without `alg`, a key allows only the HMACs it is long enough for.
    let k48 = Signer::hmac("k", "HS384", &[9; 48]);
    let key = parse_jwk(&k48.jwk, true).unwrap();
    assert_eq!(
        key.algorithms(),
        vec![JwsAlgorithm::HS256, JwsAlgorithm::HS384]
    );
    let a = authenticator(std::slice::from_ref(&k48.jwk)).await;
    let as_hs512 = Signer::hmac("k", "HS512", &[9; 48]);
    assert_eq!(check(&a, &as_hs512.token()).await, Err("bad_algorithm"));
    // Empty and missing secrets.
    for jwk in [json!({"kty": "oct", "k": ""}), json!({"kty": "oct"})] {
        assert!(parse_jwk(&jwk, true).is_err(), "{jwk}");
    }
    assert_eq!(
        parse_jwk(&json!({"kty": "oct", "k": ""}), true).err(),
        Some(JwkError::WeakKey)
    );
    // Symmetric keys only where allowed (not from URLs).
    assert_eq!(
        parse_jwk(&k48.jwk, false).err(),
        Some(JwkError::UnsupportedKeyType)
    );
}

#[tokio::test]
async fn rsa_keys_under_2048_bits_are_refused() {
    let weak = json!({"kty": "RSA", "kid": "weak", "n": RSA_1024_N, "e": "AQAB"});
    assert_eq!(parse_jwk(&weak, false).err(), Some(JwkError::WeakKey));
    let rsa = Signer::rsa("r");
    let a = authenticator(&[rsa.jwk.clone(), weak]).await;
    assert_eq!(check(&a, &rsa.token()).await, Ok(()));
    // Integers must be minimal (RFC 7518 §2): a leading zero octet is refused.
    let mut padded = rsa.jwk.clone();
    let n = URL_SAFE_NO_PAD
        .decode(rsa.jwk["n"].as_str().unwrap())
        .unwrap();
    padded["n"] = json!(b64(&[&[0u8][..], &n].concat()));
    assert_eq!(parse_jwk(&padded, false).err(), Some(JwkError::Base64));
    // Private material in a verification set.
    let mut private = rsa.jwk.clone();
    private["d"] = json!("AQAB");
    assert_eq!(parse_jwk(&private, false).err(), Some(JwkError::PrivateKey));
    // RSA with an EC algorithm, or a curve.
    let mut wrong_alg = rsa.jwk.clone();
    wrong_alg["alg"] = json!("ES256");
    assert_eq!(
        parse_jwk(&wrong_alg, false).err(),
        Some(JwkError::AlgorithmMismatch)
    );
    let mut with_crv = rsa.jwk.clone();
    with_crv["crv"] = json!("P-256");
    assert_eq!(
        parse_jwk(&with_crv, false).err(),
        Some(JwkError::UnsupportedCurve)
    );
}

#[tokio::test]
async fn curves_must_match_key_material_and_algorithm() {
    let p256 = Signer::ec("e", "P-256");
    let p384 = Signer::ec("e", "P-384");
    let with = |base: &Value, k: &str, v: Value| {
        let mut j = base.clone();
        j[k] = v;
        j
    };
    let cases = [
        // P-384 coordinates labelled P-256, and the reverse.
        (with(&p384.jwk, "crv", json!("P-256")), JwkError::KeySize),
        (with(&p256.jwk, "crv", json!("P-384")), JwkError::KeySize),
        (
            with(&p256.jwk, "crv", json!("secp256k1")),
            JwkError::UnsupportedCurve,
        ),
        (
            with(&p256.jwk, "crv", json!("Ed25519")),
            JwkError::UnsupportedCurve,
        ),
        (
            with(&p256.jwk, "alg", json!("ES384")),
            JwkError::AlgorithmMismatch,
        ),
        (
            with(&p256.jwk, "alg", json!("ES512")),
            JwkError::AlgorithmMismatch,
        ),
        (
            with(&p256.jwk, "alg", json!("es256")),
            JwkError::AlgorithmMismatch,
        ),
        (
            with(&p256.jwk, "alg", json!("EdDSA")),
            JwkError::AlgorithmMismatch,
        ),
        // A point that is not on the curve.
        (
            with(&p256.jwk, "y", p256.jwk["x"].clone()),
            JwkError::InvalidKey,
        ),
        // Coordinates with padding.
        (
            with(
                &p256.jwk,
                "x",
                json!(format!("{}=", p256.jwk["x"].as_str().unwrap())),
            ),
            JwkError::Base64,
        ),
        (with(&p256.jwk, "crv", Value::Null), JwkError::Malformed),
        (
            json!({"kty": "OKP", "crv": "Ed448", "x": b64(&[1; 57])}),
            JwkError::UnsupportedCurve,
        ),
        (
            json!({"kty": "OKP", "crv": "X25519", "x": b64(&[1; 32])}),
            JwkError::UnsupportedCurve,
        ),
        (
            json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&[1; 31])}),
            JwkError::KeySize,
        ),
        (
            json!({"kty": "OKP", "crv": "Ed25519", "alg": "ES256", "x": b64(&[1; 32])}),
            JwkError::AlgorithmMismatch,
        ),
        (
            json!({"kty": "EC", "x": "AA", "y": "AA"}),
            JwkError::MissingMember,
        ),
        (json!({"kty": "weird"}), JwkError::UnsupportedKeyType),
        (json!({"kty": 1}), JwkError::Malformed),
        (json!("not an object"), JwkError::Malformed),
    ];
    for (jwk, want) in cases {
        assert_eq!(parse_jwk(&jwk, true).err(), Some(want), "{jwk}");
    }
    // A set of only such keys does not load.
    assert!(KeySet::parse(
        json!({"keys": [with(&p384.jwk, "crv", json!("P-256"))]})
            .to_string()
            .as_bytes(),
        false
    )
    .is_err());
}

#[tokio::test]
async fn es512_and_eddsa_are_supported() {
    let p521 = Signer::ec("p521", "P-521");
    let ed = Signer::ed25519("ed");
    let p384 = Signer::ec("p384", "P-384");
    let a = authenticator(&[p521.jwk.clone(), ed.jwk.clone(), p384.jwk.clone()]).await;
    for s in [&p521, &ed, &p384] {
        assert_eq!(check(&a, &s.token()).await, Ok(()), "{}", s.alg);
    }
    // Signatures of the wrong size or of another key fail.
    let other = Signer::ec("p521", "P-521");
    assert_eq!(check(&a, &other.token()).await, Err("bad_signature"));
    let t = p521.token();
    let (input, s) = t.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(s).unwrap();
    sig.pop();
    assert_eq!(
        check(&a, &format!("{input}.{}", b64(&sig))).await,
        Err("bad_signature")
    );
    let mut jwk = p521.jwk.clone();
    jwk["alg"] = json!("ES512");
    assert_eq!(
        parse_jwk(&jwk, false).map(|k| k.algorithms()),
        Ok(vec![JwsAlgorithm::ES512])
    );
}

#[tokio::test]
async fn algorithm_confusion_is_refused() {
    let rsa = Signer::rsa("r");
    let es = Signer::ec("e", "P-256");
    let a = authenticator(&[rsa.jwk.clone(), es.jwk.clone()]).await;
    // HS256 keyed with the RSA public key's bytes, naming the RSA key.
    let secret = serde_json::to_vec(&rsa.jwk).unwrap();
    let forged = Signer::hmac("r", "HS256", &secret);
    assert_eq!(check(&a, &forged.token()).await, Err("bad_algorithm"));
    // Another algorithm of a different family, or a case variant, for the EC key.
    for alg in [
        "ES384", "RS256", "PS256", "EdDSA", "es256", "ES512", "HS256",
    ] {
        let t = es.token_with(&json!({"alg": alg, "kid": "e"}));
        assert_eq!(check(&a, &t).await, Err("bad_algorithm"), "{alg}");
    }
    for alg in ["none", "None", "NONE"] {
        let t = es.token_with(&json!({"alg": alg, "kid": "e"}));
        assert_eq!(check(&a, &t).await, Err("bad_algorithm"), "{alg}");
    }
    // An ECDSA signature in DER form where JWS requires R || S.
    let t = es.token();
    let (input, _) = t.rsplit_once('.').unwrap();
    let kp_der = EcdsaKeyPair::generate(&sig::ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
    let der_sig = kp_der.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    assert_eq!(
        check(&a, &format!("{input}.{}", b64(der_sig.as_ref()))).await,
        Err("bad_signature")
    );
    // Keys named by the token itself are never used.
    let t = es.token_with(&json!({"alg": "ES256", "kid": "e", "jwk": es.jwk}));
    assert_eq!(check(&a, &t).await, Err("forbidden_header"));
}
