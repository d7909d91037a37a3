//! `crypto.x509.parse_rsa_private_key` as OPA computes it: the key (PEM, or
//! base64 of a PEM) as a JWK object, `{"kty": "RSA", "n", "e", "d", "p", "q",
//! "dp", "dq", "qi"}`, each number base64url without padding. The key must be
//! one aws-lc accepts (2048 to 8192 bits, consistent CRT values); any other input
//! is an error (OPA also accepts smaller keys, which portcullis does not).

use anyhow::{anyhow, bail};
use aws_lc_rs::rsa::KeyPair;
use base64::Engine as _;
use regorus::Value;

const F: &str = "crypto.x509.parse_rsa_private_key";

/// `crypto.x509.parse_rsa_private_key(pem)`.
pub fn parse_rsa_private_key(args: &[Value]) -> anyhow::Result<Value> {
    let Some(Value::String(input)) = args.first() else {
        bail!("{F}: operand 1 must be string");
    };
    let Some(der) = key_der(input, 0)? else {
        // OPA's answer for a PEM text without a key block.
        return Ok(Value::Null);
    };
    let pkcs1 = if KeyPair::from_der(&der).is_ok() {
        der
    } else if KeyPair::from_pkcs8(&der).is_ok() {
        pkcs8_inner(&der)?
    } else {
        bail!("{F}: not an RSA private key portcullis accepts (2048 to 8192 bits)");
    };
    let fields = sequence(&pkcs1)?;
    let [version, n, e, d, p, q, dp, dq, qi] = fields.as_slice() else {
        bail!("{F}: not a two-prime RSA private key");
    };
    if *version != [0u8] {
        bail!("{F}: unsupported private key version");
    }
    let b64 = |bytes: &[u8]| {
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        Value::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[start..]))
    };
    let mut o = std::collections::BTreeMap::new();
    o.insert(Value::from("kty"), Value::from("RSA"));
    for (name, x) in [
        ("n", n),
        ("e", e),
        ("d", d),
        ("p", p),
        ("q", q),
        ("dp", dp),
        ("dq", dq),
        ("qi", qi),
    ] {
        o.insert(Value::from(name), b64(x));
    }
    Ok(Value::from(o))
}

/// The DER of the first PEM block (when `input` starts with `-----BEGIN`), else
/// of `input` read as standard base64 (as OPA does, which then reads it again).
/// `None` where OPA answers `null`: no well-formed PEM block, or a certificate.
fn key_der(input: &str, depth: u8) -> anyhow::Result<Option<Vec<u8>>> {
    use rustls_pemfile::Item;
    if input.starts_with("-----BEGIN") {
        if !go_pem_body_decodes(input) {
            return Ok(None);
        }
        return match rustls_pemfile::read_one_from_slice(input.as_bytes()) {
            Ok(Some((Item::Pkcs1Key(k), _))) => Ok(Some(k.secret_pkcs1_der().to_vec())),
            Ok(Some((Item::Pkcs8Key(k), _))) => Ok(Some(k.secret_pkcs8_der().to_vec())),
            Ok(None) | Err(_) | Ok(Some((Item::X509Certificate(_), _))) => Ok(None),
            Ok(Some(_)) => Err(anyhow!("{F}: not an RSA private key")),
        };
    }
    if depth > 2 {
        bail!("{F}: not a PEM key");
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(input)
        .map_err(|e| anyhow!("{F}: {e}"))?;
    let text = String::from_utf8(decoded).map_err(|_| anyhow!("{F}: not a PEM key"))?;
    key_der(&text, depth + 1)
}

/// One DER element at the start of `der`: (tag, content, rest).
pub(super) fn element(der: &[u8]) -> anyhow::Result<(u8, &[u8], &[u8])> {
    let short = || anyhow!("truncated DER");
    let (&tag, rest) = der.split_first().ok_or_else(short)?;
    let (&first, rest) = rest.split_first().ok_or_else(short)?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        // DER: a long form only when needed, without leading zero bytes.
        if count == 0 || count > 4 || rest.len() < count || rest[0] == 0 {
            return Err(short());
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        if len < 0x80 {
            return Err(short());
        }
        (len, &rest[count..])
    };
    if rest.len() < len {
        return Err(short());
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// The contents of the INTEGERs of the SEQUENCE `der`.
fn sequence(der: &[u8]) -> anyhow::Result<Vec<&[u8]>> {
    let (tag, mut body, _) = element(der)?;
    if tag != 0x30 {
        bail!("{F}: not a DER sequence");
    }
    let mut out = Vec::new();
    while !body.is_empty() {
        let (tag, content, rest) = element(body)?;
        if tag != 0x02 {
            bail!("{F}: not a DER integer");
        }
        out.push(content);
        body = rest;
    }
    Ok(out)
}

/// The PKCS#1 key inside a PKCS#8 `PrivateKeyInfo`.
fn pkcs8_inner(der: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (_, body, _) = element(der)?;
    let (_, _, rest) = element(body)?; // version
    let (_, _, rest) = element(rest)?; // algorithm
    let (tag, key, _) = element(rest)?;
    if tag != 0x04 {
        bail!("{F}: not a PKCS#8 key");
    }
    Ok(key.to_vec())
}

/// Whether the body of the first PEM block is base64 as Go's `pem.Decode` reads
/// it (padded, whitespace ignored); Go skips a block that is not, and OPA then
/// answers `null`.
fn go_pem_body_decodes(input: &str) -> bool {
    let body: String = input
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .filter(|l| !l.contains(':'))
        .flat_map(|l| l.chars().filter(|c| !c.is_ascii_whitespace()))
        .collect();
    go_base64().decode(body).is_ok()
}

/// Go's `base64.StdEncoding` as a decoder: padded, trailing bits allowed.
pub(super) fn go_base64() -> base64::engine::GeneralPurpose {
    use base64::engine::{general_purpose::GeneralPurposeConfig, DecodePaddingMode};
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
    )
}
