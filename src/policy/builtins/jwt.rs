//! OPA's `io.jwt.*` builtins: decoding, verifying with a certificate, JWK or
//! secret, and `decode_verify` with its constraints (see the parent module for
//! the semantics followed).

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use regorus::Value;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::authn::jwks::algorithm_of;
use crate::authn::token;

/// Nested tokens deeper than this are not decoded.
const MAX_NESTING: usize = 8;

pub(super) fn now_ns() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as f64)
        .unwrap_or(0.0)
}

fn string_arg<'a>(args: &'a [Value], i: usize, f: &str) -> anyhow::Result<&'a str> {
    match args.get(i) {
        Some(Value::String(s)) => Ok(s),
        _ => bail!("{f}: operand {} must be a string", i + 1),
    }
}

fn unverified() -> Value {
    Value::from(vec![
        Value::from(false),
        Value::new_object(),
        Value::new_object(),
    ])
}

/// A decoded JOSE header with OPA's checks (`alg`, `kid`, `typ`, `cty` strings,
/// `crit` a non-empty list of strings).
struct Header {
    json: serde_json::Map<String, serde_json::Value>,
    alg: String,
    kid: String,
    cty: String,
    crit: Vec<String>,
}

impl Header {
    fn parse(segment: &str) -> Option<Header> {
        let json = token::json_object(segment, false).ok()?;
        let text = |k: &str| match json.get(k) {
            None => Some(String::new()),
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(_) => None,
        };
        let (alg, kid, cty) = (text("alg")?, text("kid")?, text("cty")?);
        text("typ")?;
        let crit = match json.get("crit") {
            None => Vec::new(),
            Some(serde_json::Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()?,
            Some(_) => return None,
        };
        Some(Header {
            json,
            alg,
            kid,
            cty,
            crit,
        })
    }

    /// RFC 7515: `alg` present; every `crit` parameter understood.
    fn valid(&self) -> bool {
        const KNOWN: &[&str] = &["alg", "kid", "typ", "cty", "crit"];
        !self.alg.is_empty()
            && self
                .crit
                .iter()
                .all(|c| !self.json.contains_key(c) || KNOWN.contains(&c.as_str()))
    }
}

/// A header as `io.jwt.decode` reads it: any JSON object (OPA checks the types
/// of `kid`, `typ`, … only when verifying), but never a JWE (`enc`).
fn decode_header(segment: &str) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let json =
        token::json_object(segment, false).map_err(|e| anyhow!("invalid JWT header: {e}"))?;
    if json.contains_key("enc") {
        bail!("JWT is a JWE object, which is not supported");
    }
    Ok(json)
}

/// A JWT payload: its claims, and its value for the policy (integers beyond 64
/// bits exact, as in OPA).
struct Payload {
    claims: serde_json::Map<String, serde_json::Value>,
    value: Value,
}

/// A payload: JSON from bytes that need not be UTF-8 (invalid sequences become
/// U+FFFD, as in OPA).
fn payload_json(bytes: &[u8]) -> anyhow::Result<Payload> {
    let text = String::from_utf8_lossy(bytes);
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| anyhow!("invalid JSON: {e}"))?;
    let value = crate::policy::exact_json::to_value(text.as_bytes(), &json);
    match json {
        serde_json::Value::Object(claims) => Ok(Payload { claims, value }),
        _ => bail!("JWT payload must be a JSON object"),
    }
}

/// `io.jwt.decode(jwt)`.
pub(super) fn decode(args: &[Value]) -> anyhow::Result<Value> {
    let mut jwt = string_arg(args, 0, "io.jwt.decode")?.to_owned();
    for _ in 0..MAX_NESTING {
        let seg = token::split(&jwt).map_err(|e| anyhow!("io.jwt.decode: {e}"))?;
        let header = decode_header(seg.header).map_err(|e| anyhow!("io.jwt.decode: {e}"))?;
        let payload = token::b64url(seg.payload, false)
            .map_err(|e| anyhow!("io.jwt.decode: JWT payload: {e}"))?;
        if header.get("cty").and_then(serde_json::Value::as_str) == Some("JWT") {
            let inner = String::from_utf8_lossy(&payload);
            jwt = inner.trim_matches(|c| c == '"' || c == '\'').to_owned();
            continue;
        }
        let payload = payload_json(&payload).map_err(|e| anyhow!("io.jwt.decode: {e}"))?;
        let sig = token::b64url(seg.signature, false)
            .map_err(|e| anyhow!("io.jwt.decode: JWT signature: {e}"))?;
        return Ok(Value::from(vec![
            Value::from(serde_json::Value::Object(header)),
            payload.value,
            Value::from(hex::encode(sig)),
        ]));
    }
    bail!("io.jwt.decode: tokens nested too deeply")
}

/// A verification key from a `cert` (PEM certificate or public key, or a JWK set).
struct VerifyKey {
    kid: String,
    /// The JWK's own `alg`, if it had one.
    alg: Option<Algorithm>,
    key: Key,
}

/// Key material: what jsonwebtoken verifies, or a P-521 public point (ES512,
/// which jsonwebtoken lacks, verified with aws-lc-rs).
enum Key {
    Jose(DecodingKey),
    P521(Vec<u8>),
}

/// A signature algorithm: jsonwebtoken's, or ES512.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Alg {
    Jose(Algorithm),
    Es512,
}

impl Alg {
    fn parse(name: &str) -> Option<Alg> {
        match name {
            "ES512" => Some(Alg::Es512),
            other => other.parse().ok().map(Alg::Jose),
        }
    }
}

/// A P-521 public key from a JWK's `x` and `y` (uncompressed point).
fn p521_from_jwk(entry: &serde_json::Value) -> anyhow::Result<Key> {
    let coordinate = |name: &str| -> anyhow::Result<Vec<u8>> {
        let text = entry
            .get(name)
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| {
                anyhow!("failed to parse a JWK key (set): P-521 key without `{name}`")
            })?;
        let bytes = token::b64url(text, false)
            .map_err(|e| anyhow!("failed to parse a JWK key (set): `{name}`: {e}"))?;
        if bytes.len() > 66 {
            bail!("failed to parse a JWK key (set): `{name}` too long for P-521");
        }
        let mut out = vec![0u8; 66 - bytes.len()];
        out.extend_from_slice(&bytes);
        Ok(out)
    };
    let mut point = vec![4u8];
    point.extend(coordinate("x")?);
    point.extend(coordinate("y")?);
    Ok(Key::P521(point))
}

/// OPA's `getKeysFromCertOrJWK`.
fn keys_from_cert_or_jwk(text: &str) -> anyhow::Result<Vec<VerifyKey>> {
    // OPA reads a PEM only when the text starts with one (no leading whitespace).
    if text.starts_with("-----BEGIN") {
        let (rest, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes())
            .map_err(|e| anyhow!("failed to parse a PEM block: {e}"))?;
        if !rest.iter().all(u8::is_ascii_whitespace) {
            bail!("extra data after a PEM certificate block");
        }
        let key = match pem.label.as_str() {
            "CERTIFICATE" => {
                let cert = pem
                    .parse_x509()
                    .map_err(|e| anyhow!("failed to parse a PEM certificate: {e}"))?;
                key_from_spki(cert.public_key())?
            }
            "PUBLIC KEY" => {
                let (_, spki) = SubjectPublicKeyInfo::from_der(&pem.contents)
                    .map_err(|e| anyhow!("failed to parse a PEM public key: {e}"))?;
                key_from_spki(&spki)?
            }
            // OPA does not read PKCS#1 `RSA PUBLIC KEY` blocks.
            _ => bail!("failed to extract a Key from the PEM certificate"),
        };
        return Ok(vec![VerifyKey {
            kid: String::new(),
            alg: None,
            key,
        }]);
    }
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| anyhow!("failed to parse a JWK key (set): {e}"))?;
    let entries: Vec<serde_json::Value> = match doc {
        serde_json::Value::Object(mut o) if o.contains_key("keys") => match o.remove("keys") {
            Some(serde_json::Value::Array(a)) => a,
            _ => bail!("failed to parse a JWK key (set): `keys` must be an array"),
        },
        serde_json::Value::Object(o) => vec![serde_json::Value::Object(o)],
        _ => bail!("failed to parse a JWK key (set): not an object"),
    };
    let mut keys = Vec::with_capacity(entries.len());
    for entry in entries {
        if entry.get("kty").and_then(serde_json::Value::as_str) == Some("EC")
            && entry.get("crv").and_then(serde_json::Value::as_str) == Some("P-521")
        {
            keys.push(VerifyKey {
                kid: entry
                    .get("kid")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                alg: None,
                key: p521_from_jwk(&entry)?,
            });
            continue;
        }
        let jwk: Jwk = serde_json::from_value(entry)
            .map_err(|e| anyhow!("failed to parse a JWK key (set): {e}"))?;
        let alg = match jwk.common.key_algorithm {
            None => None,
            // Keys for algorithms that cannot verify JWS signatures are skipped.
            Some(ka) => match algorithm_of(ka) {
                Some(a) => Some(a),
                None => continue,
            },
        };
        let key = Key::Jose(
            DecodingKey::from_jwk(&jwk)
                .map_err(|e| anyhow!("failed to parse a JWK key (set): {e}"))?,
        );
        keys.push(VerifyKey {
            kid: jwk.common.key_id.clone().unwrap_or_default(),
            alg,
            key,
        });
    }
    Ok(keys)
}

fn key_from_spki(spki: &SubjectPublicKeyInfo<'_>) -> anyhow::Result<Key> {
    let oid = &spki.algorithm.algorithm;
    let bits: &[u8] = &spki.subject_public_key.data;
    if *oid == OID_PKCS1_RSAENCRYPTION {
        let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() else {
            bail!("invalid RSA public key");
        };
        let strip = |b: &[u8]| -> Vec<u8> {
            let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
            b[first..].to_vec()
        };
        return Ok(Key::Jose(DecodingKey::from_rsa_raw_components(
            &strip(rsa.modulus),
            &strip(rsa.exponent),
        )));
    }
    if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 || c == OID_NIST_EC_P384 => {
                Ok(Key::Jose(DecodingKey::from_ec_der(bits)))
            }
            Some(c) if c == OID_NIST_EC_P521 => Ok(Key::P521(bits.to_vec())),
            _ => bail!("unsupported elliptic curve"),
        };
    }
    if *oid == OID_SIG_ED25519 {
        return Ok(Key::Jose(DecodingKey::from_ed_der(bits)));
    }
    bail!("unsupported public key type")
}

/// Verifies `signature` (base64url) over `message` with `key` for `alg`. A key
/// of another family (e.g. an RSA key for HS256) never verifies.
fn verifies(signature: &str, message: &str, key: &Key, alg: Alg) -> bool {
    match (key, alg) {
        (Key::Jose(key), Alg::Jose(alg)) => jsonwebtoken::crypto::verify(
            signature.trim_end_matches('='),
            message.as_bytes(),
            key,
            alg,
        )
        .unwrap_or(false),
        (Key::P521(point), Alg::Es512) => {
            let Ok(sig) = token::b64url(signature, false) else {
                return false;
            };
            aws_lc_rs::signature::UnparsedPublicKey::new(
                &aws_lc_rs::signature::ECDSA_P521_SHA512_FIXED,
                point,
            )
            .verify(message.as_bytes(), &sig)
            .is_ok()
        }
        _ => false,
    }
}

/// `io.jwt.verify_{rs,ps,es}*`: the function's algorithm; the `kid` key first
/// if the header names one, else every key (skipping JWKs whose `alg` differs
/// from the header's).
pub(super) fn verify_with_cert(args: &[Value], alg: Alg) -> anyhow::Result<Value> {
    let f = "io.jwt.verify";
    let jwt = string_arg(args, 0, f)?;
    let cert = string_arg(args, 1, f)?;
    let Ok(seg) = token::split(jwt) else {
        return Ok(Value::Undefined);
    };
    let keys = keys_from_cert_or_jwk(cert)?;
    if token::b64url(seg.signature, false).is_err() {
        return Ok(Value::Undefined);
    }
    let Some(header) = Header::parse(seg.header) else {
        return Ok(Value::Undefined);
    };
    if !header.kid.is_empty() {
        if let Some(k) = keys.iter().find(|k| k.kid == header.kid) {
            return Ok(Value::from(verifies(
                seg.signature,
                seg.signing_input,
                &k.key,
                alg,
            )));
        }
    }
    let header_alg: Option<Algorithm> = header.alg.parse().ok();
    let ok = keys
        .iter()
        .filter(|k| k.alg.is_none() || k.alg == header_alg)
        .any(|k| verifies(seg.signature, seg.signing_input, &k.key, alg));
    Ok(Value::from(ok))
}

/// `io.jwt.verify_hs*`: HMAC with the secret's bytes.
pub(super) fn verify_with_secret(args: &[Value], alg: Algorithm) -> anyhow::Result<Value> {
    let f = "io.jwt.verify_hs";
    let jwt = string_arg(args, 0, f)?;
    let secret = string_arg(args, 1, f)?;
    let Ok(seg) = token::split(jwt) else {
        return Ok(Value::Undefined);
    };
    if token::b64url(seg.signature, false).is_err() {
        return Ok(Value::Undefined);
    }
    let key = Key::Jose(DecodingKey::from_secret(secret.as_bytes()));
    Ok(Value::from(verifies(
        seg.signature,
        seg.signing_input,
        &key,
        Alg::Jose(alg),
    )))
}

/// Parsed `decode_verify` constraints.
#[derive(Default)]
struct Constraints {
    keys: Option<Vec<VerifyKey>>,
    secret: String,
    alg: String,
    iss: String,
    aud: String,
    time_ns: Option<f64>,
}

impl Constraints {
    fn parse(v: &Value) -> anyhow::Result<Constraints> {
        let Value::Object(o) = v else {
            bail!("io.jwt.decode_verify: operand 2 must be an object");
        };
        let mut c = Constraints::default();
        for (k, v) in o.iter() {
            let Value::String(name) = k else {
                bail!("io.jwt.decode_verify: constraint names must be strings");
            };
            let text = || match v {
                Value::String(s) => Ok(s.to_string()),
                _ => Err(anyhow!("{name} constraint: must be a string")),
            };
            match name.as_ref() {
                "cert" => c.keys = Some(keys_from_cert_or_jwk(&text()?)?),
                "secret" => c.secret = text()?,
                "alg" => c.alg = text()?,
                "iss" => c.iss = text()?,
                "aud" => c.aud = text()?,
                "time" => {
                    let t = match v {
                        // Nanoseconds exceed f64's exact integers: convert lossily.
                        Value::Number(n) => n
                            .as_f64()
                            .or_else(|| n.as_i64().map(|i| i as f64))
                            .or_else(|| n.as_u64().map(|u| u as f64))
                            .ok_or_else(|| anyhow!("token time constraint: invalid number"))?,
                        _ => bail!("token time constraint: must be a number"),
                    };
                    if t < 0.0 {
                        bail!("token time constraint: must not be negative");
                    }
                    c.time_ns = Some(t);
                }
                other => bail!("unknown token validation constraint: {other}"),
            }
        }
        match (c.keys.is_some(), !c.secret.is_empty()) {
            (true, true) => bail!("duplicate key constraints"),
            (false, false) => bail!("no key constraint"),
            _ => Ok(c),
        }
    }

    /// Signature check with the header's algorithm, restricted by the keys.
    fn verify(&self, header: &Header, signature: &str, message: &str) -> bool {
        let Some(alg) = Alg::parse(&header.alg) else {
            return false; // `none`, unknown
        };
        if let Some(keys) = &self.keys {
            // OPA verifies with the token's algorithm whatever a JWK's own `alg` says.
            let fits = |_: &VerifyKey| true;
            if !header.kid.is_empty() {
                if let Some(k) = keys.iter().find(|k| k.kid == header.kid) {
                    return fits(k) && verifies(signature, message, &k.key, alg);
                }
            }
            return keys
                .iter()
                .filter(|k| fits(k))
                .any(|k| verifies(signature, message, &k.key, alg));
        }
        let key = Key::Jose(DecodingKey::from_secret(self.secret.as_bytes()));
        verifies(signature, message, &key, alg)
    }

    fn valid_audience(&self, aud: &serde_json::Value) -> bool {
        match aud {
            serde_json::Value::String(s) => *s == self.aud,
            serde_json::Value::Array(a) => a.iter().any(|e| e.as_str() == Some(self.aud.as_str())),
            _ => false,
        }
    }
}

/// `io.jwt.decode_verify(jwt, constraints)`.
pub(super) fn decode_verify(args: &[Value], now_ns: f64) -> anyhow::Result<Value> {
    let mut jwt = string_arg(args, 0, "io.jwt.decode_verify")?.to_owned();
    let constraints = Constraints::parse(args.get(1).unwrap_or(&Value::Undefined))?;
    let time_s = constraints.time_ns.unwrap_or(now_ns) / 1e9;

    let mut depth = 0;
    let (header, payload) = loop {
        depth += 1;
        if depth > MAX_NESTING {
            return Ok(Value::Undefined);
        }
        let Ok(seg) = token::split(&jwt) else {
            return Ok(Value::Undefined);
        };
        let Some(header) = Header::parse(seg.header) else {
            bail!("io.jwt.decode_verify: invalid JOSE header (alg, kid, typ, cty must be strings)");
        };
        if header.json.contains_key("enc") {
            bail!("io.jwt.decode_verify: JWT is a JWE object, which is not supported");
        }
        if !header.valid() {
            return Ok(unverified());
        }
        if !constraints.alg.is_empty() && constraints.alg != header.alg {
            return Ok(unverified());
        }
        if token::b64url(seg.signature, false).is_err() {
            return Ok(Value::Undefined);
        }
        if !constraints.verify(&header, seg.signature, seg.signing_input) {
            return Ok(unverified());
        }
        let Ok(payload) = token::b64url(seg.payload, false) else {
            return Ok(Value::Undefined);
        };
        if header.cty.eq_ignore_ascii_case("JWT") {
            jwt = String::from_utf8_lossy(&payload).into_owned();
            continue;
        }
        break (header, payload);
    };
    let payload = payload_json(&payload).map_err(|e| anyhow!("io.jwt.decode_verify: {e}"))?;

    if !constraints.iss.is_empty() {
        match payload.claims.get("iss") {
            Some(serde_json::Value::String(iss)) if *iss == constraints.iss => {}
            _ => return Ok(unverified()),
        }
    }
    match payload.claims.get("aud") {
        Some(aud) if !constraints.valid_audience(aud) => return Ok(unverified()),
        None if !constraints.aud.is_empty() => return Ok(unverified()),
        _ => {}
    }
    match payload.claims.get("exp") {
        None => {}
        Some(serde_json::Value::Number(n)) if n.as_f64().is_none_or(|exp| time_s >= exp) => {
            return Ok(unverified());
        }
        Some(serde_json::Value::Number(_)) => {}
        Some(_) => return Ok(Value::Undefined), // OPA: "exp value must be a number"
    }
    match payload.claims.get("nbf") {
        None => {}
        Some(serde_json::Value::Number(n)) if n.as_f64().is_none_or(|nbf| time_s < nbf) => {
            return Ok(unverified());
        }
        Some(serde_json::Value::Number(_)) => {}
        Some(_) => return Ok(Value::Undefined), // OPA: "nbf value must be a number"
    }
    Ok(Value::from(vec![
        Value::from(true),
        Value::from(serde_json::Value::Object(header.json)),
        payload.value,
    ]))
}
