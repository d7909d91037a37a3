//! The extension builtins and their registration: OPA's `io.jwt.*` token
//! builtins ([`jwt`]) as regorus extensions, so policies written for the
//! OPA-Envoy plugin that verify tokens themselves run unchanged, and the other
//! OPA builtins regorus lacks ([`crate::policy::builtins::extra`]).
//!
//! Provided: `io.jwt.decode`, `io.jwt.encode_sign`/`encode_sign_raw` (see
//! [`crate::policy::builtins::jwt_sign`]), `io.jwt.decode_verify` (constraints `cert`,
//! `secret`, `alg`, `iss`, `aud`, `time`), `io.jwt.verify_rs256/384/512`,
//! `verify_ps256/384/512`, `verify_es256/384/512`, `verify_eddsa`, `verify_hs256/384/512`.
//!
//! Semantics follow OPA's documentation and implementation:
//! - `decode(jwt)` → `[header, payload, signature_hex]` (nested `cty: JWT` tokens
//!   are decoded to the innermost one).
//! - `decode_verify(jwt, constraints)` → `[true, header, payload]` when the
//!   signature verifies and `iss`, `aud`, `exp` (`time < exp`) and `nbf`
//!   (`time >= nbf`) hold at `time` (ns, default now); `[false, {}, {}]` otherwise.
//!   The algorithm comes from the header but must fit the key: HMAC only with
//!   `secret`, RSA/ECDSA/EdDSA only with `cert` keys of the matching type (a
//!   JWK's own `alg` is ignored, as in OPA); `none` never verifies.
//! - `verify_XXX(jwt, cert_or_secret)` → boolean; the algorithm is the
//!   function's, whatever the header says.
//!
//! Strictness follows OPA's: no padded or non-canonical base64url segments, no
//! JWE (`enc`) headers, PEM only at the start of the text and never PKCS#1 `RSA
//! PUBLIC KEY`; `decode` accepts header fields of any type, `decode_verify` wants
//! `alg`, `kid`, `typ`, `cty` as strings; payload bytes that are not UTF-8 are
//! replaced.
//!
//! Errors (undecodable tokens, wrongly typed arguments, invalid constraints or
//! keys) are builtin errors: the call is undefined, as in OPA-Envoy's non-strict
//! evaluation, unless registered strict ([`strict_extensions`]).

pub mod extra;
pub mod globs_match;
mod go_json;
pub mod json_schema;
mod json_schema_parse;
mod json_schema_validate;
mod json_schema_values;
mod jwt;
pub mod jwt_sign;
pub mod registrar;
pub mod x509_builtins;
pub mod x509_certificates;
mod x509_extensions;

use std::sync::Arc;

use jsonwebtoken::Algorithm;
use regorus::{Engine, Value};

use self::jwt::{decode, decode_verify, now_ns, verify_with_cert, verify_with_secret, Alg};
// Builtin files register through it (see `crate::policy::builtins::extra`).
pub use self::registrar::Registrar;
use crate::policy::options::ExtensionHook;

/// The hook registering every extension builtin, for [`crate::policy::PolicyOptions`]:
/// builtin errors make the call undefined, as in OPA-Envoy (non-strict).
pub fn jwt_extensions() -> ExtensionHook {
    Arc::new(|engine: &mut Engine| register_with(engine, false))
}

/// The same builtins with strict errors (`policy eval --strict-builtin-errors`,
/// like `opa eval --strict-builtin-errors`): a builtin error is an evaluation error.
pub fn strict_extensions() -> ExtensionHook {
    Arc::new(|engine: &mut Engine| register_with(engine, true))
}

/// Registers every `io.jwt.*` builtin on `engine`, and the other OPA builtins
/// regorus lacks ([`crate::policy::builtins::extra`]), non-strict.
pub fn register(engine: &mut Engine) -> anyhow::Result<()> {
    register_with(engine, false)
}

/// Registers every extension builtin with the given error mode.
pub fn register_with(engine: &mut Engine, strict: bool) -> anyhow::Result<()> {
    let mut r = Registrar::new(engine, strict);
    r.add("io.jwt.decode", 1, decode)?;
    r.add(
        "io.jwt.encode_sign",
        3,
        crate::policy::builtins::jwt_sign::encode_sign,
    )?;
    r.add(
        "io.jwt.encode_sign_raw",
        3,
        crate::policy::builtins::jwt_sign::encode_sign_raw,
    )?;
    r.add("io.jwt.decode_verify", 2, |args: &[Value]| {
        decode_verify(args, now_ns())
    })?;
    let asymmetric = [
        ("rs256", Algorithm::RS256),
        ("rs384", Algorithm::RS384),
        ("rs512", Algorithm::RS512),
        ("ps256", Algorithm::PS256),
        ("ps384", Algorithm::PS384),
        ("ps512", Algorithm::PS512),
        ("es256", Algorithm::ES256),
        ("es384", Algorithm::ES384),
        ("eddsa", Algorithm::EdDSA),
    ]
    .map(|(n, a)| (n, Alg::Jose(a)))
    .into_iter()
    .chain([("es512", Alg::Es512)]);
    for (name, alg) in asymmetric {
        r.add(
            &format!("io.jwt.verify_{name}"),
            2,
            move |args: &[Value]| verify_with_cert(args, alg),
        )?;
    }
    let hmac = [
        ("hs256", Algorithm::HS256),
        ("hs384", Algorithm::HS384),
        ("hs512", Algorithm::HS512),
    ];
    for (name, alg) in hmac {
        r.add(
            &format!("io.jwt.verify_{name}"),
            2,
            move |args: &[Value]| verify_with_secret(args, alg),
        )?;
    }
    crate::policy::builtins::extra::register(&mut r)
}

/// The `io.jwt.*` functions [`register`] adds, with their arities.
pub const JWT_FUNCTIONS: &[(&str, usize)] = &[
    ("io.jwt.decode", 1),
    ("io.jwt.decode_verify", 2),
    ("io.jwt.encode_sign", 3),
    ("io.jwt.encode_sign_raw", 3),
    ("io.jwt.verify_rs256", 2),
    ("io.jwt.verify_rs384", 2),
    ("io.jwt.verify_rs512", 2),
    ("io.jwt.verify_ps256", 2),
    ("io.jwt.verify_ps384", 2),
    ("io.jwt.verify_ps512", 2),
    ("io.jwt.verify_es256", 2),
    ("io.jwt.verify_es384", 2),
    ("io.jwt.verify_es512", 2),
    ("io.jwt.verify_eddsa", 2),
    ("io.jwt.verify_hs256", 2),
    ("io.jwt.verify_hs384", 2),
    ("io.jwt.verify_hs512", 2),
];

/// The arity of an extension [`register`] adds (for the output-argument call form).
pub fn arity(name: &str) -> Option<usize> {
    JWT_FUNCTIONS
        .iter()
        .chain(crate::policy::builtins::extra::FUNCTIONS)
        .find(|(f, _)| *f == name)
        .map(|(_, a)| *a)
}
