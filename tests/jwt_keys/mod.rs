//! Test signing keys and token minting for the JWT tests: real ES256/RS256 keys
//! (rcgen, aws-lc-rs), their JWKs and PEMs, and hand-built tokens for attacks.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// A signing key with its public forms.
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    /// Public JWK with `kid`, `alg` and `use: sig`.
    pub jwk: Value,
    /// SubjectPublicKeyInfo PEM.
    pub public_pem: String,
    /// A self-signed certificate for the key, PEM.
    pub cert_pem: String,
}

impl TestKey {
    pub fn es256(kid: &str) -> TestKey {
        Self::generate(kid, Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256)
    }

    pub fn es384(kid: &str) -> TestKey {
        Self::generate(kid, Algorithm::ES384, &rcgen::PKCS_ECDSA_P384_SHA384)
    }

    pub fn rs256(kid: &str) -> TestKey {
        Self::generate(kid, Algorithm::RS256, &rcgen::PKCS_RSA_SHA256)
    }

    /// The same RSA key used for another RSA algorithm (RS384, PS256, ...).
    pub fn with_alg(&self, alg: Algorithm) -> TestKey {
        let mut jwk = self.jwk.clone();
        jwk["alg"] = json!(format!("{alg:?}"));
        TestKey {
            kid: self.kid.clone(),
            alg,
            encoding: self.encoding.clone(),
            jwk,
            public_pem: self.public_pem.clone(),
            cert_pem: self.cert_pem.clone(),
        }
    }

    fn generate(kid: &str, alg: Algorithm, sig: &'static rcgen::SignatureAlgorithm) -> TestKey {
        let kp = rcgen::KeyPair::generate_for(sig).unwrap();
        let pem = kp.serialize_pem();
        let encoding = match alg {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem.as_bytes()),
            _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
        }
        .unwrap();
        let mut jwk =
            serde_json::to_value(Jwk::from_encoding_key(&encoding, alg).unwrap()).unwrap();
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        let cert_pem = rcgen::CertificateParams::new(vec!["idp.test".to_owned()])
            .unwrap()
            .self_signed(&kp)
            .unwrap()
            .pem();
        TestKey {
            kid: kid.to_owned(),
            alg,
            encoding,
            jwk,
            public_pem: kp.public_key_pem(),
            cert_pem,
        }
    }

    /// Signs `claims` with a header `{alg, kid, typ: JWT}`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.encoding).unwrap()
    }

    /// Signs `claims` with exactly `header` (for crafted headers).
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header), b64(claims));
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &self.encoding, self.alg).unwrap();
        format!("{input}.{sig}")
    }
}

pub fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// `{"keys": [...]}` for `keys`.
pub fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// A token HMAC-signed with `secret` (e.g. an RSA public key: the confusion attack).
pub fn hmac_token(alg: Algorithm, header: &Value, claims: &Value, secret: &[u8]) -> String {
    let input = format!("{}.{}", b64(header), b64(claims));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &EncodingKey::from_secret(secret), alg)
        .unwrap();
    format!("{input}.{sig}")
}

/// An unsecured token (`alg: none`, empty signature).
pub fn none_token(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(claims)
    )
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
