//! JSON Web Keys: one JWK decoded once into ready-to-verify keys (aws-lc-rs
//! [`ParsedPublicKey`]s, one per allowed algorithm, and HMAC keys), read strictly
//! (RFC 7517, RFC 7518): a key that is not for signatures, whose curve, size or
//! `alg` does not fit its type, or that carries private material is refused with
//! its [`JwkError`].
//!
//! Pre-parsed keys keep the request path to the signature check itself:
//! `jsonwebtoken::decode` would copy the key and let aws-lc parse and validate
//! the public key again on every token (about 100 µs for P-256).

use aws_lc_rs::signature::{self as sig, ParsedPublicKey, RsaPublicKeyComponents};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};

/// The JWS algorithms the providers verify: RFC 7518 §3.1 (HMAC, RSA PKCS#1 v1.5,
/// RSA-PSS, ECDSA on P-256/P-384/P-521) and EdDSA with Ed25519 (RFC 8037). `none`
/// never. jsonwebtoken's `Algorithm` has no ES512, hence this enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwsAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    ES512,
    EdDSA,
}

impl JwsAlgorithm {
    /// Every algorithm, for iteration.
    pub const ALL: [JwsAlgorithm; 13] = [
        Self::HS256,
        Self::HS384,
        Self::HS512,
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::PS256,
        Self::PS384,
        Self::PS512,
        Self::ES256,
        Self::ES384,
        Self::ES512,
        Self::EdDSA,
    ];

    /// The registered name (`alg` header value, case-sensitive).
    pub fn name(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::HS384 => "HS384",
            Self::HS512 => "HS512",
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::ES512 => "ES512",
            Self::EdDSA => "EdDSA",
        }
    }

    /// The algorithm an `alg` value names exactly (names are case-sensitive,
    /// RFC 7515 §4.1.1).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The length of a signature, where the algorithm fixes it (RSA's is the key's
    /// modulus: 2048 bits is assumed).
    pub fn usual_signature_len(self) -> usize {
        match self {
            Self::HS256 => 32,
            Self::HS384 => 48,
            Self::HS512 | Self::ES256 | Self::EdDSA => 64,
            Self::ES384 => 96,
            Self::ES512 => 132,
            _ => 256,
        }
    }

    /// For HMAC: the smallest key, the hash output size (RFC 7518 §3.2).
    pub fn min_hmac_key_bytes(self) -> Option<usize> {
        match self {
            Self::HS256 => Some(32),
            Self::HS384 => Some(48),
            Self::HS512 => Some(64),
            _ => None,
        }
    }
}

/// A key ready to verify signatures with one algorithm.
pub enum Verifier {
    /// RSA, ECDSA or Ed25519 public key, parsed once.
    Public(ParsedPublicKey),
    /// HMAC secret.
    Hmac(Box<aws_lc_rs::hmac::Key>),
}

impl Verifier {
    /// True when `signature` is valid over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            Verifier::Public(k) => k.verify_sig(message, signature).is_ok(),
            Verifier::Hmac(k) => aws_lc_rs::hmac::verify(k, message, signature).is_ok(),
        }
    }
}

/// One verification key, decoded once when its set was loaded.
pub struct Key {
    /// `kid`, if the JWK had one.
    pub kid: Option<String>,
    /// Algorithms this key may verify (its `alg`, or the ones its type allows),
    /// each with the key prepared for it.
    pub verifiers: Vec<(JwsAlgorithm, Verifier)>,
}

impl Key {
    /// Whether this key may verify `alg` at all.
    pub fn allows(&self, alg: JwsAlgorithm) -> bool {
        self.verifiers.iter().any(|(a, _)| *a == alg)
    }

    /// Verifies `signature` over `message` with `alg` (false if not allowed).
    pub fn verify(&self, alg: JwsAlgorithm, message: &[u8], signature: &[u8]) -> bool {
        self.verifiers
            .iter()
            .any(|(a, v)| *a == alg && v.verify(message, signature))
    }

    /// The algorithms allowed.
    pub fn algorithms(&self) -> Vec<JwsAlgorithm> {
        self.verifiers.iter().map(|(a, _)| *a).collect()
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algs", &self.algorithms())
            .finish_non_exhaustive()
    }
}

/// Why one JWK cannot verify signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    /// Not a JSON object, or a member of the wrong JSON type.
    #[error("the JWK is malformed")]
    Malformed,
    /// A required member is absent.
    #[error("the JWK lacks a required member")]
    MissingMember,
    /// A member is not canonical unpadded base64url (RFC 7515 §2), or an integer
    /// has leading zero octets (RFC 7518 §2, Base64urlUInt).
    #[error("a JWK member is not canonical base64url")]
    Base64,
    /// `use` other than `sig`, or `key_ops` without `verify` (RFC 7517 §4.2, §4.3).
    #[error("the JWK is not for signature verification")]
    NotForSignatures,
    /// `key_ops` with a repeated value (RFC 7517 §4.3).
    #[error("the JWK key_ops repeats a value")]
    DuplicateKeyOps,
    /// An unknown `kty`, or `oct` where symmetric keys are not allowed.
    #[error("the JWK key type is not supported here")]
    UnsupportedKeyType,
    /// A `crv` that is unknown or does not fit the key type.
    #[error("the JWK curve is not supported")]
    UnsupportedCurve,
    /// An `alg` that is unknown or does not fit the key type and curve.
    #[error("the JWK alg does not fit the key")]
    AlgorithmMismatch,
    /// Coordinates or key of the wrong length for the curve.
    #[error("the JWK key size does not fit its curve")]
    KeySize,
    /// RSA under 2048 bits (RFC 7518 §3.3) or an HMAC secret shorter than the hash
    /// output (RFC 7518 §3.2).
    #[error("the JWK key is too small")]
    WeakKey,
    /// Private key material (`d`, `p`, ...) in a verification key set.
    #[error("the JWK carries private key material")]
    PrivateKey,
    /// The key material does not form a valid public key (e.g. a point off the curve).
    #[error("the JWK key material is invalid")]
    InvalidKey,
}

impl JwkError {
    /// A snake_case label for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::MissingMember => "missing_member",
            Self::Base64 => "base64",
            Self::NotForSignatures => "not_for_signatures",
            Self::DuplicateKeyOps => "duplicate_key_ops",
            Self::UnsupportedKeyType => "unsupported_key_type",
            Self::UnsupportedCurve => "unsupported_curve",
            Self::AlgorithmMismatch => "algorithm_mismatch",
            Self::KeySize => "key_size",
            Self::WeakKey => "weak_key",
            Self::PrivateKey => "private_key",
            Self::InvalidKey => "invalid_key",
        }
    }
}

/// An optional string member.
fn opt_str<'a>(o: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, JwkError> {
    match o.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(JwkError::Malformed),
    }
}

/// A required base64url member, decoded strictly (no padding, URL alphabet, canonical
/// trailing bits, not empty).
fn b64_member(o: &Map<String, Value>, name: &str) -> Result<Vec<u8>, JwkError> {
    let s = opt_str(o, name)?.ok_or(JwkError::MissingMember)?;
    let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| JwkError::Base64)?;
    if bytes.is_empty() {
        return Err(JwkError::Base64);
    }
    Ok(bytes)
}

/// A Base64urlUInt member (RFC 7518 §2): minimal octets, so no leading zero octet
/// unless the value is zero itself.
fn uint_member(o: &Map<String, Value>, name: &str) -> Result<Vec<u8>, JwkError> {
    let bytes = b64_member(o, name)?;
    if bytes.len() > 1 && bytes[0] == 0 {
        return Err(JwkError::Base64);
    }
    Ok(bytes)
}

/// Private members of RSA, EC, OKP keys (RFC 7518 §6.2.2, §6.3.2; RFC 8037 §2).
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth"];

/// `use` and `key_ops` (RFC 7517 §4.2, §4.3): absent, `sig`, or a list of distinct
/// strings containing `verify`.
fn check_key_use(o: &Map<String, Value>) -> Result<(), JwkError> {
    if let Some(u) = opt_str(o, "use")? {
        if u != "sig" {
            return Err(JwkError::NotForSignatures);
        }
    }
    match o.get("key_ops") {
        None => Ok(()),
        Some(Value::Array(ops)) => {
            let mut seen = Vec::with_capacity(ops.len());
            for op in ops {
                let op = op.as_str().ok_or(JwkError::Malformed)?;
                if seen.contains(&op) {
                    return Err(JwkError::DuplicateKeyOps);
                }
                seen.push(op);
            }
            if seen.contains(&"verify") {
                Ok(())
            } else {
                Err(JwkError::NotForSignatures)
            }
        }
        Some(_) => Err(JwkError::Malformed),
    }
}

/// Parses one JWK into a verification key, strictly: `use`/`key_ops` allow
/// verification; `kty`, `crv`, `alg` and the key size agree (RFC 7518 §3, §6;
/// RFC 8037 §2); RSA keys of at least 2048 bits; HMAC secrets at least as long as
/// the hash output; no private key material; every binary member canonical
/// base64url. `oct` keys only when `allow_symmetric`.
pub fn parse_jwk(raw: &Value, allow_symmetric: bool) -> Result<Key, JwkError> {
    let o = raw.as_object().ok_or(JwkError::Malformed)?;
    let kty = opt_str(o, "kty")?.ok_or(JwkError::MissingMember)?;
    check_key_use(o)?;
    let kid = opt_str(o, "kid")?.map(str::to_owned);
    let alg = match opt_str(o, "alg")? {
        None => None,
        Some(name) => Some(JwsAlgorithm::from_name(name).ok_or(JwkError::AlgorithmMismatch)?),
    };
    if kty != "oct" && PRIVATE_MEMBERS.iter().any(|m| o.contains_key(*m)) {
        return Err(JwkError::PrivateKey);
    }
    let crv = opt_str(o, "crv")?;
    if kty != "EC" && kty != "OKP" && crv.is_some() {
        return Err(JwkError::UnsupportedCurve);
    }
    use JwsAlgorithm as A;
    let pick = |family: &[JwsAlgorithm]| -> Result<Vec<JwsAlgorithm>, JwkError> {
        match alg {
            None => Ok(family.to_vec()),
            Some(a) if family.contains(&a) => Ok(vec![a]),
            Some(_) => Err(JwkError::AlgorithmMismatch),
        }
    };
    let verifiers = match kty {
        "RSA" => {
            let n = uint_member(o, "n")?;
            let e = uint_member(o, "e")?;
            if crate::identity::profile::rsa_bits(&n) < crate::identity::profile::MIN_RSA_BITS {
                return Err(JwkError::WeakKey);
            }
            let algs = pick(&[A::RS256, A::RS384, A::RS512, A::PS256, A::PS384, A::PS512])?;
            let mut out = Vec::with_capacity(algs.len());
            for a in algs {
                let params: &'static sig::RsaParameters = match a {
                    A::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
                    A::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
                    A::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
                    A::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
                    A::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
                    _ => &sig::RSA_PSS_2048_8192_SHA512,
                };
                let key = RsaPublicKeyComponents {
                    n: n.as_slice(),
                    e: e.as_slice(),
                }
                .to_parsed_public_key(params)
                .map_err(|_| JwkError::InvalidKey)?;
                out.push((a, Verifier::Public(key)));
            }
            out
        }
        "EC" => {
            let (a, len, verify): (_, usize, &'static dyn sig::VerificationAlgorithm) =
                match crv.ok_or(JwkError::MissingMember)? {
                    "P-256" => (A::ES256, 32, &sig::ECDSA_P256_SHA256_FIXED),
                    "P-384" => (A::ES384, 48, &sig::ECDSA_P384_SHA384_FIXED),
                    "P-521" => (A::ES512, 66, &sig::ECDSA_P521_SHA512_FIXED),
                    _ => return Err(JwkError::UnsupportedCurve),
                };
            let algs = pick(&[a])?;
            let (x, y) = (b64_member(o, "x")?, b64_member(o, "y")?);
            if x.len() != len || y.len() != len {
                return Err(JwkError::KeySize);
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let key = ParsedPublicKey::new(verify, &point).map_err(|_| JwkError::InvalidKey)?;
            vec![(algs[0], Verifier::Public(key))]
        }
        "OKP" => {
            if crv.ok_or(JwkError::MissingMember)? != "Ed25519" {
                return Err(JwkError::UnsupportedCurve);
            }
            let algs = pick(&[A::EdDSA])?;
            let x = b64_member(o, "x")?;
            if x.len() != 32 {
                return Err(JwkError::KeySize);
            }
            let key = ParsedPublicKey::new(&sig::ED25519, &x).map_err(|_| JwkError::InvalidKey)?;
            vec![(algs[0], Verifier::Public(key))]
        }
        "oct" if allow_symmetric => {
            let k = b64_member(o, "k").map_err(|e| match e {
                // An empty secret is a weak key, not an encoding problem.
                JwkError::Base64 if opt_str(o, "k") == Ok(Some("")) => JwkError::WeakKey,
                other => other,
            })?;
            let family: Vec<JwsAlgorithm> = [A::HS256, A::HS384, A::HS512]
                .into_iter()
                .filter(|a| a.min_hmac_key_bytes().is_some_and(|min| k.len() >= min))
                .collect();
            let algs = match alg {
                Some(a) if a.min_hmac_key_bytes().is_none() => {
                    return Err(JwkError::AlgorithmMismatch)
                }
                Some(a) if !family.contains(&a) => return Err(JwkError::WeakKey),
                _ if family.is_empty() => return Err(JwkError::WeakKey),
                _ => pick(&family)?,
            };
            algs.into_iter()
                .map(|a| {
                    let h = match a {
                        A::HS256 => aws_lc_rs::hmac::HMAC_SHA256,
                        A::HS384 => aws_lc_rs::hmac::HMAC_SHA384,
                        _ => aws_lc_rs::hmac::HMAC_SHA512,
                    };
                    (
                        a,
                        Verifier::Hmac(Box::new(aws_lc_rs::hmac::Key::new(h, &k))),
                    )
                })
                .collect()
        }
        _ => return Err(JwkError::UnsupportedKeyType),
    };
    Ok(Key { kid, verifiers })
}
