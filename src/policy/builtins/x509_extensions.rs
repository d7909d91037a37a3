//! The fields of Go's `x509.Certificate` that come from the certificate's extensions,
//! for [`super::x509_certificates`]: the raw `Extensions` list and what Go decodes from
//! key usage, extended key usage, basic constraints, subject alternative names, key
//! identifiers, authority information access, CRL distribution points, certificate
//! policies and name constraints. Extensions that Go decodes into other fields are an
//! error here (not reproduced); other unknown extensions stay in `Extensions` only, or
//! in `UnhandledCriticalExtensions` when critical, as Go does.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{anyhow, bail};
use regorus::Value;
use x509_parser::der_parser::oid::Oid;
use x509_parser::extensions::X509Extension;

use super::go_json::{bytes, obj, oid, slice};
use super::x509_builtins::element;

const F: &str = "crypto.x509.parse_certificates";

/// Extensions Go decodes into fields that are not reproduced.
const NOT_REPRODUCED: &[&str] = &[
    "2.5.29.33", // policy mappings
    "2.5.29.36", // policy constraints
    "2.5.29.54", // inhibit anyPolicy
];

/// Go's `x509.ExtKeyUsage` numbers by object identifier.
const EXT_KEY_USAGES: &[(&str, u64)] = &[
    ("2.5.29.37.0", 0),
    ("1.3.6.1.5.5.7.3.1", 1),
    ("1.3.6.1.5.5.7.3.2", 2),
    ("1.3.6.1.5.5.7.3.3", 3),
    ("1.3.6.1.5.5.7.3.4", 4),
    ("1.3.6.1.5.5.7.3.5", 5),
    ("1.3.6.1.5.5.7.3.6", 6),
    ("1.3.6.1.5.5.7.3.7", 7),
    ("1.3.6.1.5.5.7.3.8", 8),
    ("1.3.6.1.5.5.7.3.9", 9),
    ("1.3.6.1.4.1.311.10.3.3", 10),
    ("2.16.840.1.113730.4.1", 11),
    ("1.3.6.1.4.1.311.2.1.22", 12),
    ("1.3.6.1.4.1.311.61.1.1", 13),
];

/// One side of the name constraints, in Go's field order: DNS domains, IP
/// ranges, email addresses or domains, URI domains.
#[derive(Default)]
struct Subtrees {
    dns: Vec<Value>,
    ips: Vec<Value>,
    emails: Vec<Value>,
    uri_domains: Vec<Value>,
}

/// What the extensions set, in Go's field names (zero values where absent).
#[derive(Default)]
struct Decoded {
    raw: Vec<Value>,
    unhandled_critical: Vec<Value>,
    key_usage: u64,
    ext_key_usage: Vec<Value>,
    unknown_ext_key_usage: Vec<Value>,
    basic_constraints: Option<(bool, i64)>,
    subject_key_id: Option<Vec<u8>>,
    authority_key_id: Option<Vec<u8>>,
    dns: Vec<Value>,
    email: Vec<Value>,
    ip: Vec<Value>,
    uris: Vec<Value>,
    uri_strings: Vec<Value>,
    ocsp: Vec<Value>,
    issuers: Vec<Value>,
    crl_distribution_points: Vec<Value>,
    /// Name constraints: permitted and excluded subtrees, and whether critical.
    permitted: Subtrees,
    excluded: Subtrees,
    constraints_critical: bool,
    /// Each policy as arcs and as dotted text.
    policies: Option<Vec<(Value, Value)>>,
}

/// The extension-derived fields of the certificate with extensions `exts`.
pub(super) fn fields(exts: &[X509Extension<'_>]) -> anyhow::Result<Vec<(&'static str, Value)>> {
    let mut d = Decoded::default();
    let mut seen = BTreeSet::new();
    for e in exts {
        let id = e.oid.to_id_string();
        if !seen.insert(id.clone()) {
            bail!("{F}: x509: certificate contains duplicate extensions");
        }
        d.raw.push(obj(vec![
            ("Id", oid(&e.oid)?),
            ("Critical", Value::Bool(e.critical)),
            ("Value", bytes(Some(e.value))),
        ]));
        if NOT_REPRODUCED.contains(&id.as_str()) {
            bail!("{F}: certificates with extension {id} are not supported");
        }
        let handled = decode_one(&id, e.value, &mut d)?;
        if id == "2.5.29.30" {
            d.constraints_critical = e.critical;
        }
        if e.critical && !handled {
            d.unhandled_critical.push(oid(&e.oid)?);
        }
    }
    let (ca, max_path) = d.basic_constraints.unwrap_or((false, 0));
    let mut out = vec![
        ("Extensions", slice(d.raw)),
        ("UnhandledCriticalExtensions", slice(d.unhandled_critical)),
        ("KeyUsage", Value::from(d.key_usage)),
        ("ExtKeyUsage", slice(d.ext_key_usage)),
        ("UnknownExtKeyUsage", slice(d.unknown_ext_key_usage)),
        (
            "BasicConstraintsValid",
            Value::Bool(d.basic_constraints.is_some()),
        ),
        ("IsCA", Value::Bool(ca)),
        ("MaxPathLen", Value::from(max_path)),
        (
            "MaxPathLenZero",
            Value::Bool(d.basic_constraints.is_some() && max_path == 0),
        ),
        ("SubjectKeyId", bytes(d.subject_key_id.as_deref())),
        ("AuthorityKeyId", bytes(d.authority_key_id.as_deref())),
        ("DNSNames", slice(d.dns)),
        ("EmailAddresses", slice(d.email)),
        ("IPAddresses", slice(d.ip)),
        ("URIs", slice(d.uris)),
        ("URIStrings", slice(d.uri_strings)),
        (
            "PermittedDNSDomainsCritical",
            Value::Bool(d.constraints_critical),
        ),
        ("PermittedDNSDomains", slice(d.permitted.dns)),
        ("PermittedIPRanges", slice(d.permitted.ips)),
        ("PermittedEmailAddresses", slice(d.permitted.emails)),
        ("PermittedURIDomains", slice(d.permitted.uri_domains)),
        ("ExcludedDNSDomains", slice(d.excluded.dns)),
        ("ExcludedIPRanges", slice(d.excluded.ips)),
        ("ExcludedEmailAddresses", slice(d.excluded.emails)),
        ("ExcludedURIDomains", slice(d.excluded.uri_domains)),
        ("OCSPServer", slice(d.ocsp)),
        ("IssuingCertificateURL", slice(d.issuers)),
        ("CRLDistributionPoints", slice(d.crl_distribution_points)),
        // Go makes PolicyIdentifiers (never nil once the extension is read)
        // from Policies, which stays nil when empty.
        (
            "PolicyIdentifiers",
            d.policies.as_ref().map_or(Value::Null, |p| {
                Value::from(p.iter().map(|(arcs, _)| arcs.clone()).collect::<Vec<_>>())
            }),
        ),
        (
            "Policies",
            slice(
                d.policies
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(_, text)| text)
                    .collect(),
            ),
        ),
    ];
    out.push(("PolicyMappings", Value::Null));
    for name in [
        "InhibitAnyPolicy",
        "InhibitPolicyMapping",
        "RequireExplicitPolicy",
    ] {
        out.push((name, Value::from(0u64)));
    }
    for name in [
        "InhibitAnyPolicyZero",
        "InhibitPolicyMappingZero",
        "RequireExplicitPolicyZero",
    ] {
        out.push((name, Value::Bool(false)));
    }
    Ok(out)
}

/// Decodes the extension `id` into `d`; whether Go handles it (an unhandled
/// critical extension is listed in `UnhandledCriticalExtensions`).
fn decode_one(id: &str, der: &[u8], d: &mut Decoded) -> anyhow::Result<bool> {
    Ok(match id {
        "2.5.29.15" => {
            d.key_usage = key_usage(der)?;
            true
        }
        "2.5.29.37" => {
            ext_key_usage(der, d)?;
            true
        }
        "2.5.29.19" => {
            d.basic_constraints = Some(basic_constraints(der)?);
            true
        }
        "2.5.29.14" => {
            d.subject_key_id = Some(tagged(der, 0x04, "subject key identifier")?.to_vec());
            true
        }
        "2.5.29.35" => {
            let body = tagged(der, 0x30, "authority key identifier")?;
            // Go reads the key identifier only when the first tag is [0].
            d.authority_key_id = match body.first() {
                Some(0x80) => Some(element(body)?.1.to_vec()),
                _ => None,
            };
            true
        }
        "2.5.29.17" => subject_alt_names(der, d)?,
        "1.3.6.1.5.5.7.1.1" => {
            authority_info_access(der, d)?;
            true
        }
        "2.5.29.31" => {
            d.crl_distribution_points = crl_distribution_points(der)?;
            true
        }
        "2.5.29.30" => {
            name_constraints(der, d)?;
            true
        }
        "2.5.29.32" => {
            d.policies = Some(certificate_policies(der)?);
            true
        }
        _ => false,
    })
}

/// The content of `der`, which must be one element of tag `tag` and nothing more.
fn tagged<'a>(der: &'a [u8], tag: u8, what: &str) -> anyhow::Result<&'a [u8]> {
    match element(der) {
        Ok((t, content, [])) if t == tag => Ok(content),
        _ => bail!("{F}: x509: invalid {what}"),
    }
}

/// Go's `x509.KeyUsage` bits: bit i of the BIT STRING is `1 << i`, i < 9.
fn key_usage(der: &[u8]) -> anyhow::Result<u64> {
    let bits = tagged(der, 0x03, "key usage")?;
    let Some((&unused, data)) = bits.split_first() else {
        bail!("{F}: x509: invalid key usage");
    };
    let padding_clear = data
        .last()
        .is_none_or(|last| last & ((1u8 << unused.min(7)) - 1) == 0);
    if unused > 7 || (data.is_empty() && unused != 0) || !padding_clear {
        bail!("{F}: x509: invalid key usage");
    }
    let len = data.len() * 8 - usize::from(unused);
    Ok((0..9usize)
        .filter(|i| *i < len && data[i / 8] & (0x80 >> (i % 8)) != 0)
        .map(|i| 1u64 << i)
        .sum())
}

fn ext_key_usage(der: &[u8], d: &mut Decoded) -> anyhow::Result<()> {
    let mut body = tagged(der, 0x30, "extended key usage")?;
    while !body.is_empty() {
        let (tag, content, rest) = element(body)?;
        if tag != 0x06 {
            bail!("{F}: x509: invalid extended key usage");
        }
        let usage = Oid::new(Cow::Borrowed(content));
        let arcs = oid(&usage)?;
        let id = usage.to_id_string();
        match EXT_KEY_USAGES.iter().find(|(o, _)| *o == id) {
            Some((_, n)) => d.ext_key_usage.push(Value::from(*n)),
            None => d.unknown_ext_key_usage.push(arcs),
        }
        body = rest;
    }
    Ok(())
}

/// `(IsCA, MaxPathLen)`: -1 when no path length is given, as Go.
fn basic_constraints(der: &[u8]) -> anyhow::Result<(bool, i64)> {
    let bad = || anyhow!("{F}: x509: invalid basic constraints");
    let mut body = tagged(der, 0x30, "basic constraints")?;
    let mut ca = false;
    if let Ok((0x01, b, rest)) = element(body) {
        ca = match b {
            [0x00] => false,
            [0xff] => true,
            _ => return Err(bad()),
        };
        body = rest;
    }
    let mut max = -1;
    if let Ok((0x02, n, rest)) = element(body) {
        // Minimal and not negative (OPA's Go refuses a negative path length).
        let minimal = n.len() < 2 || !matches!((n[0], n[1] & 0x80), (0, 0) | (0xff, 0x80));
        if n.is_empty() || n.len() > 4 || !minimal || n[0] & 0x80 != 0 {
            return Err(bad());
        }
        let first = i64::from(n[0] as i8);
        max = n[1..]
            .iter()
            .fold(first, |acc, b| (acc << 8) | i64::from(*b));
        body = rest;
    }
    if !body.is_empty() {
        return Err(bad());
    }
    Ok((ca, max))
}

/// A URL string as Go's `string(bytes)`; UTF-8 only (Go would replace other bytes).
fn url_text(b: &[u8]) -> anyhow::Result<Value> {
    std::str::from_utf8(b)
        .map(Value::from)
        .map_err(|_| anyhow!("{F}: URL that is not UTF-8 is not supported"))
}

/// OCSP servers and issuer URLs (access location URIs; others skipped, as Go).
fn authority_info_access(der: &[u8], d: &mut Decoded) -> anyhow::Result<()> {
    let mut body = tagged(der, 0x30, "authority info access")?;
    while !body.is_empty() {
        let (tag, access, rest) = element(body)?;
        body = rest;
        let (oid_tag, method, location) = element(access)?;
        if tag != 0x30 || oid_tag != 0x06 || super::go_json::go_oid_arcs(method).is_none() {
            bail!("{F}: x509: invalid authority info access");
        }
        if location.first() != Some(&0x86) {
            continue;
        }
        let url = url_text(element(location)?.1)?;
        match Oid::new(Cow::Borrowed(method)).to_id_string().as_str() {
            "1.3.6.1.5.5.7.48.1" => d.ocsp.push(url),
            "1.3.6.1.5.5.7.48.2" => d.issuers.push(url),
            _ => {}
        }
    }
    Ok(())
}

/// The URIs of the full names of the distribution points, as Go collects them.
fn crl_distribution_points(der: &[u8]) -> anyhow::Result<Vec<Value>> {
    let bad = || anyhow!("{F}: x509: invalid CRL distribution points");
    let mut urls = Vec::new();
    let mut body = tagged(der, 0x30, "CRL distribution points")?;
    while !body.is_empty() {
        let (tag, point, rest) = element(body)?;
        body = rest;
        if tag != 0x30 {
            return Err(bad());
        }
        if point.first() != Some(&0xa0) {
            continue;
        }
        let (_, name, _) = element(point)?;
        let (tag, mut names, _) = element(name)?;
        if tag != 0xa0 {
            return Err(bad());
        }
        while names.first() == Some(&0x86) {
            let (_, uri, rest) = element(names)?;
            urls.push(url_text(uri)?);
            names = rest;
        }
    }
    Ok(urls)
}

/// The permitted and excluded subtrees of a name constraints extension, checked
/// as Go checks them. Other name forms (Go marks the extension unhandled) and
/// email mailboxes (`user@domain`) are not reproduced.
fn name_constraints(der: &[u8], d: &mut Decoded) -> anyhow::Result<()> {
    let bad = || anyhow!("{F}: x509: invalid NameConstraints extension");
    let mut body = tagged(der, 0x30, "NameConstraints extension")?;
    let mut present = false;
    for (tag, side) in [(0xa0, &mut d.permitted), (0xa1, &mut d.excluded)] {
        if body.first() != Some(&tag) {
            continue;
        }
        let (_, mut subtrees, rest) = element(body)?;
        body = rest;
        present |= !subtrees.is_empty();
        while !subtrees.is_empty() {
            let (seq, subtree, rest) = element(subtrees)?;
            subtrees = rest;
            let (tag, value, _) = element(subtree)?;
            if seq != 0x30 {
                return Err(bad());
            }
            constraint(tag, value, side)?;
        }
    }
    if !body.is_empty() || !present {
        return Err(bad());
    }
    Ok(())
}

/// One general subtree's base name into `side`.
fn constraint(tag: u8, value: &[u8], side: &mut Subtrees) -> anyhow::Result<()> {
    let text = || match std::str::from_utf8(value) {
        Ok(s) if s.is_ascii() => Ok(s),
        _ => Err(anyhow!("{F}: x509: invalid constraint value")),
    };
    let domain_ok = |s: &str| go_domain(s.strip_prefix('.').unwrap_or(s));
    match tag {
        0x82 => {
            let s = text()?;
            if !domain_ok(s) {
                bail!("{F}: x509: failed to parse dnsName constraint {s:.80}");
            }
            side.dns.push(Value::from(s));
        }
        0x87 => {
            let half = match value.len() {
                8 => 4,
                32 => 16,
                n => bail!("{F}: x509: IP constraint contained value of length {n}"),
            };
            let (ip, mask) = value.split_at(half);
            let ones = mask.iter().map(|b| b.leading_ones()).sum::<u32>() as usize;
            let canonical = mask.iter().enumerate().all(|(i, b)| {
                let want = ones.saturating_sub(i * 8).min(8);
                *b == (0xffu16 << (8 - want)) as u8
            });
            if !canonical {
                bail!("{F}: x509: IP constraint contained invalid mask");
            }
            side.ips.push(obj(vec![
                ("IP", Value::from(ip_text(ip)?)),
                ("Mask", bytes(Some(mask))),
            ]));
        }
        0x81 => {
            let s = text()?;
            if s.contains('@') {
                bail!("{F}: email mailbox constraints are not supported");
            }
            if !domain_ok(s) {
                bail!("{F}: x509: failed to parse rfc822Name constraint {s:.80}");
            }
            side.emails.push(Value::from(s));
        }
        0x86 => {
            let s = text()?;
            if s.parse::<IpAddr>().is_ok() || !domain_ok(s) {
                bail!("{F}: x509: failed to parse URI constraint {s:.80}");
            }
            side.uri_domains.push(Value::from(s));
        }
        _ => bail!("{F}: name constraints of tag {tag:#x} are not supported"),
    }
    Ok(())
}

/// Go's `domainToReverseLabels` check: no empty label (so no leading, trailing
/// or doubled dot) and printable ASCII only; the empty domain passes.
fn go_domain(s: &str) -> bool {
    s.is_empty()
        || s.split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| (33..=126).contains(&b)))
}

/// The policy identifiers, each as arcs and as dotted text; a repeated one is an
/// error, as in Go.
fn certificate_policies(der: &[u8]) -> anyhow::Result<Vec<(Value, Value)>> {
    let bad = || anyhow!("{F}: x509: invalid certificate policies");
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut body = tagged(der, 0x30, "certificate policies")?;
    while !body.is_empty() {
        let (tag, policy, rest) = element(body)?;
        body = rest;
        let (oid_tag, id, _) = element(policy)?;
        if tag != 0x30 || oid_tag != 0x06 || id.is_empty() || !seen.insert(id) {
            return Err(bad());
        }
        let arcs = super::go_json::go_oid_arcs(id).ok_or_else(bad)?;
        let text: Vec<String> = arcs.iter().map(u64::to_string).collect();
        out.push((
            Value::from(arcs.into_iter().map(Value::from).collect::<Vec<_>>()),
            Value::from(text.join(".")),
        ));
    }
    Ok(out)
}

/// Reads the SAN extension into `d`; whether Go counts it as handled (it holds
/// at least one name).
fn subject_alt_names(der: &[u8], d: &mut Decoded) -> anyhow::Result<bool> {
    let mut body = tagged(der, 0x30, "subject alternative names")?;
    let mut any = false;
    while !body.is_empty() {
        let (tag, content, rest) = element(body)?;
        body = rest;
        let text = || -> anyhow::Result<&str> {
            match std::str::from_utf8(content) {
                Ok(s) if s.is_ascii() => Ok(s),
                _ => bail!("{F}: x509: SAN name is malformed"),
            }
        };
        match tag {
            0x81 => d.email.push(Value::from(text()?)),
            0x82 => d.dns.push(Value::from(text()?)),
            0x86 => {
                let s = text()?;
                d.uris.push(uri(s)?);
                d.uri_strings.push(Value::from(s));
            }
            0x87 => d.ip.push(Value::from(ip_text(content)?)),
            _ => bail!("{F}: subject alternative names of tag {tag:#x} are not supported"),
        }
        any = true;
    }
    Ok(any)
}

/// Go's `url.URL` for a `scheme://host[:port][/path]` URI of plain characters
/// (any other form is not reproduced).
fn uri(s: &str) -> anyhow::Result<Value> {
    let unsupported = || anyhow!("{F}: URI {s:.80} is not of a supported form");
    let (scheme, rest) = s.split_once("://").ok_or_else(unsupported)?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (domain, port) = match host.split_once(':') {
        Some((d, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (d, Some(p)),
        Some(_) => return Err(unsupported()),
        None => (host, None),
    };
    let domain_ok = !domain.is_empty()
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    let path_ok = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~/$&+,:;=@".contains(&b));
    if !scheme_ok || !domain_ok || !path_ok || port.is_some_and(|p| p.len() > 5) {
        return Err(unsupported());
    }
    let text = |t: &str| Value::from(t);
    Ok(obj(vec![
        ("Scheme", text(scheme)),
        ("Opaque", text("")),
        ("User", Value::Null),
        ("Host", text(host)),
        ("Path", text(path)),
        ("RawPath", text("")),
        ("OmitHost", Value::Bool(false)),
        ("ForceQuery", Value::Bool(false)),
        ("RawQuery", text("")),
        ("Fragment", text("")),
        ("RawFragment", text("")),
    ]))
}

/// An IP address as Go's `net.IP` marshals it.
fn ip_text(b: &[u8]) -> anyhow::Result<String> {
    match b.len() {
        4 => Ok(Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            let v6 = Ipv6Addr::from(a);
            Ok(match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4).to_string(),
                None => v6.to_string(),
            })
        }
        n => bail!("{F}: x509: cannot parse IP address of length {n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_addresses_read_as_go_prints_them() {
        assert_eq!(ip_text(&[10, 0, 0, 1]).unwrap(), "10.0.0.1");
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12] = 1;
        assert_eq!(ip_text(&mapped).unwrap(), "1.0.0.0");
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert_eq!(ip_text(&v6).unwrap(), "::1");
        assert!(ip_text(&[1, 2, 3]).is_err());
    }

    #[test]
    fn key_usage_bits_are_go_numbers() {
        // digitalSignature and keyEncipherment: Go's 1 | 4.
        assert_eq!(key_usage(&[0x03, 0x02, 0x05, 0xa0]).unwrap(), 5);
        // decipherOnly is bit 8, in the second byte.
        assert_eq!(key_usage(&[0x03, 0x03, 0x07, 0x00, 0x80]).unwrap(), 256);
        assert!(key_usage(&[0x03, 0x02, 0x05, 0xa1]).is_err());
    }

    #[test]
    fn basic_constraints_default_to_no_path_length() {
        assert_eq!(basic_constraints(&[0x30, 0x00]).unwrap(), (false, -1));
        assert_eq!(
            basic_constraints(&[0x30, 0x06, 0x01, 0x01, 0xff, 0x02, 0x01, 0x00]).unwrap(),
            (true, 0)
        );
    }

    #[test]
    fn ip_constraints_need_a_canonical_mask() {
        let mut side = Subtrees::default();
        assert!(constraint(0x87, &[10, 0, 0, 0, 255, 0, 0, 0], &mut side).is_ok());
        assert!(constraint(0x87, &[10, 0, 0, 0, 255, 0, 255, 0], &mut side).is_err());
        assert!(constraint(0x87, &[10, 0, 0, 0, 0xfe, 0, 0], &mut side).is_err());
        assert!(constraint(0x82, b"a..b", &mut side).is_err());
        assert!(constraint(0x86, b"10.0.0.1", &mut side).is_err());
        assert_eq!(side.ips.len(), 1);
    }

    #[test]
    fn only_plain_uris_are_answered() {
        assert!(uri("spiffe://example.org/ns/a/sa/b").is_ok());
        assert!(uri("https://h:8443").is_ok());
        for bad in [
            "spiffe://ex%41/x",
            "urn:x",
            "a://u@h/",
            "a://h/p?q",
            "a://h/p#f",
            "a://a..b/",
        ] {
            assert!(uri(bad).is_err(), "{bad}");
        }
    }
}
