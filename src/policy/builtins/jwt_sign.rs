//! `io.jwt.encode_sign` and `io.jwt.encode_sign_raw`: tokens signed with a JWK,
//! as OPA builds them. The algorithm is the header's `alg`; the key a JWK of the
//! matching type (`oct` for HS*, `RSA` for RS*/PS*, `EC` for ES*, `OKP` Ed25519 for
//! EdDSA). `encode_sign` serialises header and payload as Go's `json.Marshal` does
//! (keys sorted, compact, `<`, `>`, `&`, U+2028 and U+2029 escaped);
//! `encode_sign_raw` signs the strings it is given.

use anyhow::{anyhow, bail};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use regorus::Value;

use crate::authn::token;

/// `io.jwt.encode_sign(headers, payload, key)` with objects.
pub fn encode_sign(args: &[Value]) -> anyhow::Result<Value> {
    const F: &str = "io.jwt.encode_sign";
    let [header, payload, key] = args else {
        bail!("{F}: three operands expected");
    };
    for (i, v) in [header, payload, key].into_iter().enumerate() {
        if !matches!(v, Value::Object(_)) {
            bail!("{F}: operand {} must be an object", i + 1);
        }
    }
    let header = go_json(header)?;
    let payload = go_json(payload)?;
    let key = go_json(key)?;
    sign_token(F, &header, &payload, &key)
}

/// `io.jwt.encode_sign_raw(headers, payload, key)` with JSON strings.
pub fn encode_sign_raw(args: &[Value]) -> anyhow::Result<Value> {
    const F: &str = "io.jwt.encode_sign_raw";
    let text = |i: usize| match args.get(i) {
        Some(Value::String(s)) => Ok(s.to_string()),
        _ => Err(anyhow!("{F}: operand {} must be a string", i + 1)),
    };
    sign_token(F, &text(0)?, &text(1)?, &text(2)?)
}

/// JSON as Go's `json.Marshal` writes it.
fn go_json(v: &Value) -> anyhow::Result<String> {
    let compact = serde_json::to_string(v)?;
    let mut out = String::with_capacity(compact.len());
    for c in compact.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn sign_token(f: &str, header: &str, payload: &str, key: &str) -> anyhow::Result<Value> {
    let h: serde_json::Value =
        serde_json::from_str(header).map_err(|e| anyhow!("{f}: invalid header: {e}"))?;
    if h.get("enc").is_some() {
        bail!("{f}: JWE is not supported");
    }
    let alg = h
        .get("alg")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| anyhow!("{f}: the header has no `alg`"))?
        .to_owned();
    let jwk: serde_json::Value =
        serde_json::from_str(key).map_err(|e| anyhow!("{f}: invalid key: {e}"))?;
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let sig = sign(&alg, &jwk, input.as_bytes()).map_err(|e| anyhow!("{f}: {e}"))?;
    Ok(Value::from(format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(sig)
    )))
}

/// A JWK member decoded from base64url.
fn member(jwk: &serde_json::Value, name: &str) -> anyhow::Result<Vec<u8>> {
    let text = jwk
        .get(name)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| anyhow!("the key has no `{name}`"))?;
    token::b64url(text, false).map_err(|e| anyhow!("key member `{name}`: {e}"))
}

fn kty(jwk: &serde_json::Value) -> &str {
    jwk.get("kty")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("")
}

fn sign(alg: &str, jwk: &serde_json::Value, message: &[u8]) -> anyhow::Result<Vec<u8>> {
    let rng = SystemRandom::new();
    match alg {
        "HS256" | "HS384" | "HS512" => {
            if kty(jwk) != "oct" {
                bail!("{alg} needs an `oct` key");
            }
            let h = match alg {
                "HS256" => hmac::HMAC_SHA256,
                "HS384" => hmac::HMAC_SHA384,
                _ => hmac::HMAC_SHA512,
            };
            let key = hmac::Key::new(h, &member(jwk, "k")?);
            Ok(hmac::sign(&key, message).as_ref().to_vec())
        }
        "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => {
            if kty(jwk) != "RSA" {
                bail!("{alg} needs an `RSA` key");
            }
            let der = rsa_private_key_der(jwk)?;
            let pair = RsaKeyPair::from_der(&der).map_err(|e| anyhow!("invalid RSA key: {e}"))?;
            let padding: &'static dyn signature::RsaEncoding = match alg {
                "RS256" => &signature::RSA_PKCS1_SHA256,
                "RS384" => &signature::RSA_PKCS1_SHA384,
                "RS512" => &signature::RSA_PKCS1_SHA512,
                "PS256" => &signature::RSA_PSS_SHA256,
                "PS384" => &signature::RSA_PSS_SHA384,
                _ => &signature::RSA_PSS_SHA512,
            };
            let mut sig = vec![0u8; pair.public_modulus_len()];
            pair.sign(padding, &rng, message, &mut sig)
                .map_err(|_| anyhow!("RSA signing failed"))?;
            Ok(sig)
        }
        "ES256" | "ES384" | "ES512" => {
            let (curve, alg_id) = match alg {
                "ES256" => ("P-256", &signature::ECDSA_P256_SHA256_FIXED_SIGNING),
                "ES384" => ("P-384", &signature::ECDSA_P384_SHA384_FIXED_SIGNING),
                _ => ("P-521", &signature::ECDSA_P521_SHA512_FIXED_SIGNING),
            };
            if kty(jwk) != "EC" || jwk.get("crv").and_then(serde_json::Value::as_str) != Some(curve)
            {
                bail!("{alg} needs an `EC` key on {curve}");
            }
            let mut point = vec![4u8];
            point.extend(member(jwk, "x")?);
            point.extend(member(jwk, "y")?);
            let pair =
                EcdsaKeyPair::from_private_key_and_public_key(alg_id, &member(jwk, "d")?, &point)
                    .map_err(|e| anyhow!("invalid EC key: {e}"))?;
            let sig = pair
                .sign(&rng, message)
                .map_err(|_| anyhow!("ECDSA signing failed"))?;
            Ok(sig.as_ref().to_vec())
        }
        "EdDSA" => {
            if kty(jwk) != "OKP"
                || jwk.get("crv").and_then(serde_json::Value::as_str) != Some("Ed25519")
            {
                bail!("EdDSA needs an `OKP` Ed25519 key");
            }
            let pair =
                Ed25519KeyPair::from_seed_and_public_key(&member(jwk, "d")?, &member(jwk, "x")?)
                    .map_err(|e| anyhow!("invalid Ed25519 key: {e}"))?;
            Ok(pair.sign(message).as_ref().to_vec())
        }
        other => bail!("unsupported signing algorithm {other:?}"),
    }
}

/// The PKCS#1 `RSAPrivateKey` DER (RFC 8017 A.1.2) of an RSA JWK with its CRT
/// members.
fn rsa_private_key_der(jwk: &serde_json::Value) -> anyhow::Result<Vec<u8>> {
    let mut body = der_integer(&[0]);
    for name in ["n", "e", "d", "p", "q", "dp", "dq", "qi"] {
        body.extend(der_integer(&member(jwk, name)?));
    }
    Ok(der_tlv(0x30, &body))
}

/// A DER INTEGER holding the unsigned big-endian `bytes`.
fn der_integer(bytes: &[u8]) -> Vec<u8> {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    let mut v = bytes[first..].to_vec();
    if v.first().is_none_or(|b| b & 0x80 != 0) {
        v.insert(0, 0);
    }
    der_tlv(0x02, &v)
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}
