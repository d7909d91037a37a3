//! `crypto.x509.parse_certificates` as OPA computes it: each certificate as Go's
//! `x509.Certificate` marshalled by `encoding/json` (raw DER fields as base64, Go's
//! enumeration numbers, `pkix.Name`, the public key's fields, `null` where Go holds a
//! nil slice). The input is PEM text (CERTIFICATE blocks), base64 of such a text, or
//! base64 of concatenated DER certificates, as OPA reads it.
//!
//! Only what portcullis reproduces exactly is answered; anything else is an evaluation
//! error rather than a different answer: policy mappings, policy constraints,
//! inhibit-anyPolicy, name constraints on email mailboxes or other name forms (see
//! [`super::x509_extensions`] for the extensions decoded), SAN entries other than DNS,
//! email, IP and simple `scheme://host/path` URIs, public keys other than RSA, ECDSA
//! P-256/P-384/P-521 and Ed25519, RSA-PSS signatures, name values other than
//! UTF8/Printable/IA5/Numeric strings, and PEM text with anything but CERTIFICATE
//! blocks and blank lines.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail};
use base64::Engine as _;
use regorus::Value;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};
use x509_parser::x509::{AlgorithmIdentifier, SubjectPublicKeyInfo};

use super::go_json::{big, bytes, go_oid_arcs, obj, oid, slice};
use super::x509_builtins::{element, go_base64};

const F: &str = "crypto.x509.parse_certificates";

/// `crypto.x509.parse_certificates(certs)`.
pub fn parse_certificates(args: &[Value]) -> anyhow::Result<Value> {
    let Some(Value::String(input)) = args.first() else {
        bail!("{F}: operand 1 must be string");
    };
    let der = input_der(input)?;
    let mut rest = der.as_slice();
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (next, cert) = X509Certificate::from_der(rest)
            .map_err(|_| anyhow!("{F}: x509: malformed certificate"))?;
        out.push(certificate(&cert)?);
        rest = next;
    }
    Ok(Value::from(out))
}

/// The concatenated DER of the certificates in `input`.
fn input_der(input: &str) -> anyhow::Result<Vec<u8>> {
    if input.starts_with("-----BEGIN") {
        return pem_der(input);
    }
    let compact: String = input.chars().filter(|c| *c != '\r' && *c != '\n').collect();
    let decoded = go_base64()
        .decode(compact)
        .map_err(|e| anyhow!("{F}: {e}"))?;
    if decoded.starts_with(b"-----BEGIN") {
        let text = String::from_utf8(decoded).map_err(|_| anyhow!("{F}: not PEM text"))?;
        return pem_der(&text);
    }
    Ok(decoded)
}

/// The DER of the CERTIFICATE blocks of `text`, which must hold nothing else
/// but blank lines (Go's reader skips other text, which is not reproduced).
fn pem_der(text: &str) -> anyhow::Result<Vec<u8>> {
    let mut der = Vec::new();
    let mut lines = text.lines().map(|l| l.strip_suffix('\r').unwrap_or(l));
    while let Some(line) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        if line != "-----BEGIN CERTIFICATE-----" {
            bail!("{F}: only CERTIFICATE blocks are supported, found {line:.40}");
        }
        let mut body = String::new();
        loop {
            match lines.next() {
                Some("-----END CERTIFICATE-----") => break,
                Some(l)
                    if l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)) =>
                {
                    body.push_str(l);
                }
                _ => bail!("{F}: malformed CERTIFICATE block"),
            }
        }
        let block = go_base64().decode(body).map_err(|e| anyhow!("{F}: {e}"))?;
        der.extend_from_slice(&block);
    }
    Ok(der)
}

fn certificate(cert: &X509Certificate<'_>) -> anyhow::Result<Value> {
    let tbs = &cert.tbs_certificate;
    if !same_algorithm(&tbs.signature, &cert.signature_algorithm) {
        bail!("{F}: x509: inner and outer signature algorithm identifiers don't match");
    }
    if tbs.raw_serial().first().is_some_and(|b| b & 0x80 != 0) {
        bail!("{F}: x509: negative serial number");
    }
    if cert.signature_value.unused_bits != 0 {
        bail!("{F}: signature is not a whole number of bytes");
    }
    let version = tbs.version.0 + 1;
    if !(1..=3).contains(&version) || (version != 3 && !tbs.extensions().is_empty()) {
        bail!("{F}: x509: invalid version");
    }
    if cert.signature_algorithm.algorithm.to_id_string() == "1.2.840.113549.1.1.10" {
        // Go's number depends on the PSS parameters, which are not reproduced.
        bail!("{F}: RSA-PSS signatures are not supported");
    }
    go_structure(cert.as_raw())?;
    for id in [
        &tbs.signature.algorithm,
        &cert.signature_algorithm.algorithm,
        &tbs.subject_pki.algorithm.algorithm,
    ] {
        oid(id).map_err(|e| anyhow!("{F}: {e}"))?;
    }
    let (key_algorithm, key) = public_key(&tbs.subject_pki)?;
    let mut fields = vec![
        ("Raw", bytes(Some(cert.as_raw()))),
        ("RawTBSCertificate", bytes(Some(tbs.as_ref()))),
        ("RawSubjectPublicKeyInfo", bytes(Some(tbs.subject_pki.raw))),
        ("RawSubject", bytes(Some(tbs.subject.as_raw()))),
        ("RawIssuer", bytes(Some(tbs.issuer.as_raw()))),
        ("Signature", bytes(Some(&cert.signature_value.data))),
        (
            "SignatureAlgorithm",
            Value::from(signature_algorithm(&cert.signature_algorithm)),
        ),
        ("PublicKeyAlgorithm", Value::from(key_algorithm)),
        ("PublicKey", key),
        ("Version", Value::from(version)),
        ("SerialNumber", big(&tbs.serial)?),
        ("Issuer", name(&tbs.issuer)?),
        ("Subject", name(&tbs.subject)?),
        (
            "NotBefore",
            Value::from(rfc3339(tbs.validity.not_before.timestamp())?),
        ),
        (
            "NotAfter",
            Value::from(rfc3339(tbs.validity.not_after.timestamp())?),
        ),
        ("ExtraExtensions", Value::Null),
    ];
    fields.extend(super::x509_extensions::fields(tbs.extensions())?);
    Ok(obj(fields))
}

/// What Go's reader checks and x509-parser lets through: the algorithm
/// identifiers hold an OBJECT IDENTIFIER, and each extension reads as
/// `{OID, [BOOLEAN 00|FF], OCTET STRING}`.
fn go_structure(der: &[u8]) -> anyhow::Result<()> {
    let (cert, _) = seq(der, "certificate")?;
    let (tbs, rest) = seq(cert, "tbs certificate")?;
    algorithm(rest)?;
    let (_, signature) = seq(rest, "algorithm identifier")?;
    if !matches!(element(signature), Ok((0x03, [0, ..], _))) {
        return Err(malformed("signature"));
    }
    let mut fields = Vec::new();
    let mut body = tbs;
    while !body.is_empty() {
        let (tag, content, rest) = element(body).map_err(|_| malformed("tbs certificate"))?;
        fields.push((tag, &body[..body.len() - rest.len()], content));
        body = rest;
    }
    let skip = usize::from(fields.first().is_some_and(|f| f.0 == 0xa0));
    let field = |i: usize| {
        fields
            .get(skip + i)
            .ok_or_else(|| malformed("tbs certificate"))
    };
    algorithm(field(1)?.1)?; // signature
    let (mut validity, _) = seq(field(3)?.1, "validity")?;
    for _ in 0..2 {
        let (tag, time, rest) = element(validity).map_err(|_| malformed("validity"))?;
        let digits = time.len().saturating_sub(1);
        let shape_ok = time.last() == Some(&b'Z') && time[..digits].iter().all(u8::is_ascii_digit);
        if !matches!((tag, time.len()), (0x17, 13) | (0x18, 15)) || !shape_ok {
            bail!("{F}: x509: unsupported time format");
        }
        validity = rest;
    }
    let (spki, _) = seq(field(5)?.1, "public key")?;
    algorithm(spki)?;
    // After the key only the unique identifiers and the extensions, in order
    // (Go ignores anything else there; x509-parser reads it differently).
    let trailing: Vec<u8> = fields.iter().skip(skip + 6).map(|f| f.0).collect();
    if !trailing.windows(2).all(|w| w[0] < w[1])
        || trailing
            .iter()
            .any(|t| ![0x81, 0x82, 0xa1, 0xa2, 0xa3].contains(t))
    {
        return Err(malformed("tbs certificate"));
    }
    let Some((_, _, extensions)) = fields.iter().find(|f| f.0 == 0xa3) else {
        return Ok(());
    };
    let (mut list, _) = seq(extensions, "extensions")?;
    while !list.is_empty() {
        let (ext, rest) = seq(list, "extension")?;
        list = rest;
        let (tag, _, mut ext) = element(ext).map_err(|_| malformed("extension OID field"))?;
        if tag != 0x06 {
            return Err(malformed("extension OID field"));
        }
        if let Ok((0x01, critical, rest)) = element(ext) {
            if critical != [0x00] && critical != [0xff] {
                return Err(malformed("extension critical field"));
            }
            ext = rest;
        }
        if !matches!(element(ext), Ok((0x04, _, _))) {
            return Err(malformed("extension value field"));
        }
    }
    Ok(())
}

fn malformed(what: &str) -> anyhow::Error {
    anyhow!("{F}: x509: malformed {what}")
}

/// The content and the rest after a SEQUENCE at the start of `d`.
fn seq<'a>(d: &'a [u8], what: &str) -> anyhow::Result<(&'a [u8], &'a [u8])> {
    match element(d) {
        Ok((0x30, body, rest)) => Ok((body, rest)),
        _ => Err(malformed(what)),
    }
}

/// Whether the AlgorithmIdentifier at the start of `d` starts with an OID.
fn algorithm(d: &[u8]) -> anyhow::Result<()> {
    let (body, _) = seq(d, "algorithm identifier")?;
    match element(body) {
        Ok((0x06, _, _)) => Ok(()),
        _ => Err(malformed("OID")),
    }
}

fn same_algorithm(a: &AlgorithmIdentifier<'_>, b: &AlgorithmIdentifier<'_>) -> bool {
    a.algorithm == b.algorithm
        && a.parameters.as_ref().map(|p| (p.tag(), p.data))
            == b.parameters.as_ref().map(|p| (p.tag(), p.data))
}

/// Go's `x509.SignatureAlgorithm` number for `alg` (0 when unknown, as Go).
fn signature_algorithm(alg: &AlgorithmIdentifier<'_>) -> u64 {
    let id = alg.algorithm.to_id_string();
    match id.as_str() {
        "1.2.840.113549.1.1.2" => 1,
        "1.2.840.113549.1.1.4" => 2,
        "1.2.840.113549.1.1.5" | "1.3.14.3.2.29" => 3,
        "1.2.840.113549.1.1.11" => 4,
        "1.2.840.113549.1.1.12" => 5,
        "1.2.840.113549.1.1.13" => 6,
        "1.2.840.10040.4.3" => 7,
        "2.16.840.1.101.3.4.3.2" => 8,
        "1.2.840.10045.4.1" => 9,
        "1.2.840.10045.4.3.2" => 10,
        "1.2.840.10045.4.3.3" => 11,
        "1.2.840.10045.4.3.4" => 12,
        "1.3.101.112" if alg.parameters.is_none() => 16,
        _ => 0,
    }
}

/// Go's `x509.PublicKeyAlgorithm` number and the key as Go marshals it.
fn public_key(spki: &SubjectPublicKeyInfo<'_>) -> anyhow::Result<(u64, Value)> {
    use x509_parser::public_key::PublicKey;
    let alg = &spki.algorithm;
    let key = &spki.subject_public_key.data;
    match alg.algorithm.to_id_string().as_str() {
        "1.2.840.113549.1.1.1" => {
            let null = alg
                .parameters
                .as_ref()
                .is_some_and(|p| p.tag().0 == 5 && p.data.is_empty());
            if !null {
                bail!("{F}: x509: RSA key missing NULL parameters");
            }
            let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
                bail!("{F}: x509: invalid RSA public key");
            };
            let positive =
                |b: &[u8]| b.first().is_some_and(|f| f & 0x80 == 0) && b.iter().any(|x| *x != 0);
            if !positive(rsa.modulus) || !positive(rsa.exponent) {
                bail!("{F}: x509: RSA modulus or exponent is not a positive number");
            }
            let e = rsa
                .try_exponent()
                .ok()
                .filter(|e| i64::try_from(*e).is_ok()) // Go reads it into an int
                .ok_or_else(|| anyhow!("{F}: x509: RSA exponent too large"))?;
            let n = x509_parser::num_bigint::BigUint::from_bytes_be(rsa.modulus);
            Ok((1, obj(vec![("N", big(&n)?), ("E", Value::from(e))])))
        }
        "1.2.840.10045.2.1" => {
            let curve = alg
                .parameters
                .as_ref()
                .filter(|p| p.tag().0 == 6 && go_oid_arcs(p.data).is_some())
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            let (size, agreement) = match curve.as_str() {
                "1.2.840.10045.3.1.7" => (32, &aws_lc_rs::agreement::ECDH_P256),
                "1.3.132.0.34" => (48, &aws_lc_rs::agreement::ECDH_P384),
                "1.3.132.0.35" => (66, &aws_lc_rs::agreement::ECDH_P521),
                _ => bail!("{F}: x509: unsupported elliptic curve"),
            };
            let on_curve = key.len() == 1 + 2 * size
                && key[0] == 4
                && aws_lc_rs::agreement::ParsedPublicKey::try_from(
                    &aws_lc_rs::agreement::UnparsedPublicKey::new(agreement, key.as_ref()),
                )
                .is_ok();
            if !on_curve {
                bail!("{F}: x509: failed to unmarshal elliptic curve point");
            }
            let coordinate = |b: &[u8]| big(&x509_parser::num_bigint::BigUint::from_bytes_be(b));
            Ok((
                3,
                obj(vec![
                    ("Curve", obj(vec![])),
                    ("X", coordinate(&key[1..=size])?),
                    ("Y", coordinate(&key[1 + size..])?),
                ]),
            ))
        }
        "1.3.101.112" => {
            if alg.parameters.is_some()
                || key.len() != 32
                || spki.subject_public_key.unused_bits != 0
            {
                bail!("{F}: x509: invalid Ed25519 public key");
            }
            Ok((4, bytes(Some(key))))
        }
        other => bail!("{F}: public key algorithm {other} is not supported"),
    }
}

/// Go's `pkix.Name` filled from the RDN sequence `n`, read from its DER as Go's
/// parser reads it (x509-parser is more lenient).
fn name(n: &X509Name<'_>) -> anyhow::Result<Value> {
    let bad = |what: &str| anyhow!("{F}: x509: invalid RDNSequence{what}");
    let mut names = Vec::new();
    let (mut common, mut serial) = (String::new(), String::new());
    let mut lists: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    let (tag, mut rdns, _) = element(n.as_raw()).map_err(|_| bad(""))?;
    if tag != 0x30 {
        return Err(bad(""));
    }
    while !rdns.is_empty() {
        let (tag, mut set, rest) = element(rdns).map_err(|_| bad(""))?;
        rdns = rest;
        if tag != 0x31 {
            return Err(bad(""));
        }
        while !set.is_empty() {
            let (tag, atv, rest) = element(set).map_err(|_| bad(": invalid attribute"))?;
            set = rest;
            let (oid_tag, id, atv) = element(atv).map_err(|_| bad(": invalid attribute type"))?;
            let arcs = go_oid_arcs(id)
                .filter(|_| tag == 0x30 && oid_tag == 0x06)
                .ok_or_else(|| bad(": invalid attribute type"))?;
            let (value_tag, raw, _) = element(atv).map_err(|_| bad(": invalid attribute value"))?;
            let value = name_value(value_tag, raw)?;
            names.push(obj(vec![
                (
                    "Type",
                    Value::from(arcs.iter().copied().map(Value::from).collect::<Vec<_>>()),
                ),
                ("Value", Value::from(value.as_str())),
            ]));
            if let [2, 5, 4, last] = arcs[..] {
                match last {
                    3 => common = value,
                    5 => serial = value,
                    6..=11 | 17 => lists.entry(last).or_default().push(Value::from(value)),
                    _ => {}
                }
            }
        }
    }
    let mut list = |arc| slice(lists.remove(&arc).unwrap_or_default());
    Ok(obj(vec![
        ("Country", list(6)),
        ("Locality", list(7)),
        ("Province", list(8)),
        ("StreetAddress", list(9)),
        ("Organization", list(10)),
        ("OrganizationalUnit", list(11)),
        ("PostalCode", list(17)),
        ("CommonName", Value::from(common)),
        ("SerialNumber", Value::from(serial)),
        ("Names", slice(names)),
        ("ExtraNames", Value::Null),
    ]))
}

/// A name attribute's string (tag `tag`, content `data`) as Go reads it.
fn name_value(tag: u8, data: &[u8]) -> anyhow::Result<String> {
    let ok = match tag {
        12 => true,                                                  // UTF8String
        19 => data.iter().all(|b| go_printable(*b)),                 // PrintableString
        22 => data.is_ascii(),                                       // IA5String
        18 => data.iter().all(|b| b.is_ascii_digit() || *b == b' '), // NumericString
        _ => bail!("{F}: name attribute of ASN.1 tag {tag} is not supported"),
    };
    match (ok, std::str::from_utf8(data)) {
        (true, Ok(s)) => Ok(s.to_string()),
        _ => bail!("{F}: x509: invalid RDN value"),
    }
}

/// Go's PrintableString alphabet (with `*` and `&`, which Go accepts).
fn go_printable(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b" '()+,-./:=?*&".contains(&b)
}

/// `time.Time` as Go marshals it in UTC: RFC 3339 with `Z`.
fn rfc3339(secs: i64) -> anyhow::Result<String> {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        bail!("{F}: year outside of range [0,9999]");
    }
    Ok(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_go_rfc3339() {
        assert_eq!(rfc3339(0).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_893_501_005).unwrap(), "2030-01-01T12:30:05Z");
        assert_eq!(rfc3339(951_782_400).unwrap(), "2000-02-29T00:00:00Z");
    }
}
