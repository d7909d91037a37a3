//! OPA builtins that regorus 0.14 lacks, as regorus extensions: the `crypto`
//! digests and HMACs, the `net.cidr_*` set operations that HTTP-authorization
//! policies use, and `strings.render_template` for templates that only insert
//! values (`{{.a.b}}`, with `{{-`/`-}}` trimming), and `regex.globs_match`
//! (see [`super::globs_match`]), and `json.match_schema`/`json.verify_schema`
//! (see [`super::json_schema`]), and `crypto.x509.parse_rsa_private_key` (see
//! [`super::x509_builtins`]) and `crypto.x509.parse_certificates` (see
//! [`super::x509_certificates`]). Each follows OPA's documented signature and result format; an
//! argument of the wrong type or an invalid address is an error, which the engine
//! turns into an undefined call unless builtin errors are strict (as OPA does).

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::{anyhow, bail};
use aws_lc_rs::{digest, hmac};
use ipnet::IpNet;
use regorus::Value;

use super::registrar::Registrar;
use crate::policy::decision::type_name;

/// The functions registered by [`register`], with their arities.
pub const FUNCTIONS: &[(&str, usize)] = &[
    ("crypto.md5", 1),
    ("crypto.sha1", 1),
    ("crypto.sha256", 1),
    ("crypto.hmac.md5", 2),
    ("crypto.hmac.sha1", 2),
    ("crypto.hmac.sha256", 2),
    ("crypto.hmac.sha512", 2),
    ("crypto.hmac.equal", 2),
    ("net.cidr_intersects", 2),
    ("net.cidr_merge", 1),
    ("net.cidr_contains_matches", 2),
    ("strings.render_template", 2),
    ("array.flatten", 1),
    ("strings.split_n", 3),
    ("regex.globs_match", 2),
    ("json.match_schema", 2),
    ("json.verify_schema", 1),
    ("crypto.x509.parse_rsa_private_key", 1),
    ("crypto.x509.parse_certificates", 1),
];

type Builtin = fn(&[Value]) -> anyhow::Result<Value>;

/// Registers every function of [`FUNCTIONS`].
pub fn register(r: &mut Registrar<'_>) -> anyhow::Result<()> {
    let table: [(&str, Builtin); 19] = [
        ("crypto.md5", |a| digest_hex(a, "crypto.md5", Hash::Md5)),
        ("crypto.sha1", |a| digest_hex(a, "crypto.sha1", Hash::Sha1)),
        ("crypto.sha256", |a| {
            digest_hex(a, "crypto.sha256", Hash::Sha256)
        }),
        ("crypto.hmac.md5", |a| {
            hmac_hex(a, "crypto.hmac.md5", Hash::Md5)
        }),
        ("crypto.hmac.sha1", |a| {
            hmac_hex(a, "crypto.hmac.sha1", Hash::Sha1)
        }),
        ("crypto.hmac.sha256", |a| {
            hmac_hex(a, "crypto.hmac.sha256", Hash::Sha256)
        }),
        ("crypto.hmac.sha512", |a| {
            hmac_hex(a, "crypto.hmac.sha512", Hash::Sha512)
        }),
        ("crypto.hmac.equal", hmac_equal),
        ("net.cidr_intersects", cidr_intersects),
        ("net.cidr_merge", cidr_merge),
        ("net.cidr_contains_matches", cidr_contains_matches),
        ("strings.render_template", render_template),
        ("array.flatten", array_flatten),
        ("strings.split_n", split_n),
        ("regex.globs_match", globs_match),
        ("json.match_schema", super::json_schema::match_schema),
        ("json.verify_schema", super::json_schema::verify_schema),
        (
            "crypto.x509.parse_rsa_private_key",
            super::x509_builtins::parse_rsa_private_key,
        ),
        (
            "crypto.x509.parse_certificates",
            super::x509_certificates::parse_certificates,
        ),
    ];
    for ((name, f), (listed, nargs)) in table.into_iter().zip(FUNCTIONS) {
        debug_assert_eq!(name, *listed);
        let nargs = u8::try_from(*nargs).map_err(|_| anyhow!("{name}: arity"))?;
        r.add(name, nargs, f)?;
    }
    Ok(())
}

fn string_arg<'a>(args: &'a [Value], i: usize, f: &str) -> anyhow::Result<&'a str> {
    match args.get(i) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => bail!(
            "{f}: operand {} must be string but got {}",
            i + 1,
            type_name(other)
        ),
        None => bail!("{f}: operand {} missing", i + 1),
    }
}

#[derive(Clone, Copy)]
enum Hash {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl Hash {
    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Md5 => md5(data).to_vec(),
            Hash::Sha1 => digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, data)
                .as_ref()
                .to_vec(),
            Hash::Sha256 => digest::digest(&digest::SHA256, data).as_ref().to_vec(),
            Hash::Sha512 => digest::digest(&digest::SHA512, data).as_ref().to_vec(),
        }
    }
}

fn digest_hex(args: &[Value], f: &str, hash: Hash) -> anyhow::Result<Value> {
    let x = string_arg(args, 0, f)?;
    Ok(Value::from(hex::encode(hash.digest(x.as_bytes()))))
}

fn hmac_hex(args: &[Value], f: &str, hash: Hash) -> anyhow::Result<Value> {
    let x = string_arg(args, 0, f)?;
    let key = string_arg(args, 1, f)?;
    let tag = match hash {
        Hash::Md5 => hmac_md5(key.as_bytes(), x.as_bytes()).to_vec(),
        Hash::Sha1 => hmac_tag(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key, x),
        Hash::Sha256 => hmac_tag(hmac::HMAC_SHA256, key, x),
        Hash::Sha512 => hmac_tag(hmac::HMAC_SHA512, key, x),
    };
    Ok(Value::from(hex::encode(tag)))
}

fn hmac_tag(alg: hmac::Algorithm, key: &str, x: &str) -> Vec<u8> {
    let key = hmac::Key::new(alg, key.as_bytes());
    hmac::sign(&key, x.as_bytes()).as_ref().to_vec()
}

/// HMAC (RFC 2104) over MD5, whose block is 64 bytes.
fn hmac_md5(key: &[u8], message: &[u8]) -> [u8; 16] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..16].copy_from_slice(&md5(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    inner.extend_from_slice(message);
    let mut outer: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    outer.extend_from_slice(&md5(&inner));
    md5(&outer)
}

/// MD5 (RFC 1321). Only for `crypto.md5` / `crypto.hmac.md5`, which OPA offers
/// for compatibility with existing systems, never for anything portcullis trusts.
fn md5(data: &[u8]) -> [u8; 16] {
    // Per-round shift amounts and the integer parts of |sin(i + 1)| * 2^32.
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    let k: [u32; 64] = std::array::from_fn(|i| {
        // The constants are defined by the sine table; f64 is exact enough here.
        let v = ((i as f64) + 1.0).sin().abs() * 4_294_967_296.0;
        v as u32
    });
    let mut state: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_le_bytes());
    for chunk in msg.chunks_exact(64) {
        let m: [u32; 16] = std::array::from_fn(|i| {
            u32::from_le_bytes([
                chunk[4 * i],
                chunk[4 * i + 1],
                chunk[4 * i + 2],
                chunk[4 * i + 3],
            ])
        });
        let [mut a, mut b, mut c, mut d] = state;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let rotated = a
                .wrapping_add(f)
                .wrapping_add(k[i])
                .wrapping_add(m[g])
                .rotate_left(S[i]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(rotated);
        }
        state[0] = state[0].wrapping_add(a);
        state[1] = state[1].wrapping_add(b);
        state[2] = state[2].wrapping_add(c);
        state[3] = state[3].wrapping_add(d);
    }
    let mut out = [0u8; 16];
    for (i, word) in state.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&word.to_le_bytes());
    }
    out
}

fn hmac_equal(args: &[Value]) -> anyhow::Result<Value> {
    let a = string_arg(args, 0, "crypto.hmac.equal")?;
    let b = string_arg(args, 1, "crypto.hmac.equal")?;
    // Constant time in the contents (the lengths are not secret).
    let equal = a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0;
    Ok(Value::from(equal))
}

fn parse_cidr(s: &str, f: &str) -> anyhow::Result<IpNet> {
    s.parse::<IpNet>()
        .map_err(|_| anyhow!("{f}: invalid CIDR address: {s}"))
}

/// A CIDR, or an address as the network holding only it (as OPA does for
/// `net.cidr_merge` and the second operand of `net.cidr_contains_matches`).
fn parse_cidr_or_ip(s: &str, f: &str) -> anyhow::Result<IpNet> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    match s.parse::<IpAddr>() {
        Ok(ip) => Ok(IpNet::from(ip)),
        Err(_) => bail!("{f}: invalid CIDR or IP address: {s}"),
    }
}

fn cidr_intersects(args: &[Value]) -> anyhow::Result<Value> {
    const F: &str = "net.cidr_intersects";
    let a = parse_cidr(string_arg(args, 0, F)?, F)?;
    let b = parse_cidr(string_arg(args, 1, F)?, F)?;
    let meet = match (a, b) {
        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_)) => {
            a.contains(&b.network()) || b.contains(&a.network())
        }
        _ => false,
    };
    Ok(Value::from(meet))
}

fn cidr_merge(args: &[Value]) -> anyhow::Result<Value> {
    const F: &str = "net.cidr_merge";
    let items: Vec<&Value> = match args.first() {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(Value::Set(s)) => s.iter().collect(),
        Some(other) => bail!(
            "{F}: operand 1 must be one of {{array, set}} but got {}",
            type_name(other)
        ),
        None => bail!("{F}: operand 1 missing"),
    };
    // (the network, how OPA prints it when nothing merges into it)
    let mut nets: Vec<(IpNet, String)> = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(s) = item else {
            bail!("{F}: element must be string but got {}", type_name(item));
        };
        nets.push(merge_operand(s)?);
    }
    let networks: Vec<IpNet> = nets.iter().map(|(n, _)| *n).collect();
    let merged: BTreeSet<Value> = IpNet::aggregate(&networks)
        .into_iter()
        .map(|out| {
            // A network nothing else merged into keeps its input's form (an
            // address keeps its host bits, as OPA prints it).
            let mut inside = nets.iter().filter(|(n, _)| out.contains(n));
            match (inside.next(), inside.next()) {
                (Some((n, text)), None) if n.trunc() == out => Value::from(text.clone()),
                _ => Value::from(out.to_string()),
            }
        })
        .collect();
    Ok(Value::from(merged))
}

/// An operand of `net.cidr_merge` as OPA reads it: a CIDR (its network), or an
/// IPv4 address with its classful default mask (Go's `IP.DefaultMask`: /8 below
/// 128.0.0.0, /16 below 192.0.0.0, else /24), printed with its host bits. An
/// IPv6 address needs a prefix length.
fn merge_operand(s: &str) -> anyhow::Result<(IpNet, String)> {
    const F: &str = "net.cidr_merge";
    if let Ok(net) = s.parse::<IpNet>() {
        let net = net.trunc();
        return Ok((net, net.to_string()));
    }
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            let len = match ip.octets()[0] {
                0..=127 => 8,
                128..=191 => 16,
                _ => 24,
            };
            let net = ipnet::Ipv4Net::new(ip, len).map_err(|e| anyhow!("{F}: {e}"))?;
            Ok((IpNet::V4(net.trunc()), format!("{ip}/{len}")))
        }
        Ok(IpAddr::V6(_)) => bail!("{F}: IPv6 invalid: needs prefix length"),
        Err(_) => bail!("{F}: invalid CIDR or IP address: {s}"),
    }
}

/// The `(key, cidr)` pairs of an operand of `net.cidr_contains_matches`: a string
/// (its own key), an array (indices), a set (elements) or an object (keys), whose
/// elements are strings or arrays starting with one.
fn cidr_terms(v: &Value, f: &str, operand: usize) -> anyhow::Result<Vec<(Value, IpNet)>> {
    let element = |key: Value, item: &Value| -> anyhow::Result<(Value, IpNet)> {
        let text = match item {
            Value::String(s) => s.clone(),
            Value::Array(a) => match a.first() {
                Some(Value::String(s)) => s.clone(),
                _ => bail!("{f}: operand {operand}: array elements must start with a string"),
            },
            other => bail!(
                "{f}: operand {operand}: element must be string or array but got {}",
                type_name(other)
            ),
        };
        Ok((key, parse_cidr_or_ip(&text, f)?))
    };
    match v {
        Value::String(s) => Ok(vec![(v.clone(), parse_cidr_or_ip(s, f)?)]),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, item)| element(Value::from(i), item))
            .collect(),
        Value::Set(s) => s.iter().map(|item| element(item.clone(), item)).collect(),
        Value::Object(o) => o.iter().map(|(k, item)| element(k.clone(), item)).collect(),
        other => bail!(
            "{f}: operand {operand} must be one of {{string, array, set, object}} but got {}",
            type_name(other)
        ),
    }
}

fn cidr_contains_matches(args: &[Value]) -> anyhow::Result<Value> {
    const F: &str = "net.cidr_contains_matches";
    let (Some(a), Some(b)) = (args.first(), args.get(1)) else {
        bail!("{F}: two operands expected");
    };
    let cidrs = cidr_terms(a, F, 1)?;
    let targets = cidr_terms(b, F, 2)?;
    let mut out = BTreeSet::new();
    for (ka, na) in &cidrs {
        for (kb, nb) in &targets {
            if na.contains(nb) {
                out.insert(Value::from(vec![ka.clone(), kb.clone()]));
            }
        }
    }
    Ok(Value::from(out))
}

/// `array.flatten(arr)`: arrays among the elements are spliced in, one level
/// deep (OPA 1.x).
fn globs_match(args: &[Value]) -> anyhow::Result<Value> {
    let f = "regex.globs_match";
    let matched = super::globs_match::globs_match(string_arg(args, 0, f)?, string_arg(args, 1, f)?)
        .map_err(|e| anyhow!("{f}: {e}"))?;
    Ok(Value::from(matched))
}

fn array_flatten(args: &[Value]) -> anyhow::Result<Value> {
    let Some(Value::Array(items)) = args.first() else {
        bail!("array.flatten: operand 1 must be an array");
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items.iter() {
        match item {
            Value::Array(inner) => out.extend(inner.iter().cloned()),
            other => out.push(other.clone()),
        }
    }
    Ok(Value::from(out))
}

/// `strings.split_n(x, delimiter, n)` as OPA 1.x computes it: the parts of Go's
/// `strings.Split`, the first `n` of them (the last `-n` when `n` is negative).
fn split_n(args: &[Value]) -> anyhow::Result<Value> {
    const F: &str = "strings.split_n";
    let x = string_arg(args, 0, F)?;
    let delimiter = string_arg(args, 1, F)?;
    let n = match args.get(2) {
        Some(Value::Number(n)) if n.is_integer() => n
            .as_i64()
            .ok_or_else(|| anyhow!("{F}: operand 3 out of range"))?,
        _ => bail!("{F}: operand 3 must be integer number"),
    };
    let parts: Vec<&str> = if delimiter.is_empty() {
        // Go splits into UTF-8 sequences; an empty string gives no parts.
        x.char_indices()
            .map(|(i, c)| &x[i..i + c.len_utf8()])
            .collect()
    } else {
        x.split(delimiter).collect()
    };
    let take = usize::try_from(n.unsigned_abs())
        .unwrap_or(usize::MAX)
        .min(parts.len());
    let chosen = if n >= 0 {
        &parts[..take]
    } else {
        &parts[parts.len() - take..]
    };
    Ok(Value::from(
        chosen.iter().map(|p| Value::from(*p)).collect::<Vec<_>>(),
    ))
}

/// A piece of a template: literal text, or the value at a path of the variables.
enum Piece {
    Text(String),
    Value(Vec<String>),
}

/// The pieces of a Go text/template that only inserts values (`{{.a.b}}`, `{{.}}`,
/// `{{- .a -}}`); an error for any other action (conditions, loops, pipelines,
/// functions, comments), which portcullis does not evaluate.
fn template_pieces(t: &str) -> anyhow::Result<Vec<Piece>> {
    let mut pieces = Vec::new();
    let mut rest = t;
    let mut trim_next = false;
    while let Some(open) = rest.find("{{") {
        let mut text = rest[..open].to_string();
        if trim_next {
            text = text.trim_start().to_string();
        }
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| anyhow!("strings.render_template: unclosed action"))?;
        let mut action = &after[..close];
        if let Some(a) = action.strip_prefix("- ") {
            text = text.trim_end().to_string();
            action = a;
        }
        trim_next = false;
        if let Some(a) = action.strip_suffix(" -") {
            trim_next = true;
            action = a;
        }
        pieces.push(Piece::Text(text));
        let action = action.trim();
        let path: Vec<String> = if action == "." {
            Vec::new()
        } else {
            let fields = action.strip_prefix('.').ok_or_else(|| {
                anyhow!("strings.render_template: unsupported action {{{{{action}}}}}")
            })?;
            fields.split('.').map(str::to_owned).collect()
        };
        let ident = |f: &String| {
            f.chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_')
                && f.chars().all(|c| c.is_alphanumeric() || c == '_')
        };
        if !path.iter().all(ident) {
            bail!("strings.render_template: unsupported action {{{{{action}}}}}");
        }
        pieces.push(Piece::Value(path));
        rest = &after[close + 2..];
    }
    pieces.push(Piece::Text(if trim_next {
        rest.trim_start().to_string()
    } else {
        rest.to_string()
    }));
    Ok(pieces)
}

/// Whether portcullis renders `template` as OPA does (checked at load for
/// templates written in the policy).
pub fn template_supported(template: &str) -> bool {
    template_pieces(template).is_ok()
}

/// A value as Go's `fmt` prints it inside a template (OPA: `<undefined>` for a
/// missing key or null).
fn go_print(v: &Value, out: &mut String) {
    match v {
        Value::Null | Value::Undefined => out.push_str("<undefined>"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(_) => out.push_str(&v.to_string()),
        Value::String(s) => out.push_str(s),
        Value::Array(_) | Value::Set(_) => {
            let items = super::go_json::elements(v);
            out.push('[');
            for (i, x) in items.into_iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                go_print(x, out);
            }
            out.push(']');
        }
        Value::Object(o) => {
            out.push_str("map[");
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                go_print(k, out);
                out.push(':');
                go_print(x, out);
            }
            out.push(']');
        }
    }
}

fn render_template(args: &[Value]) -> anyhow::Result<Value> {
    const F: &str = "strings.render_template";
    let template = string_arg(args, 0, F)?;
    let Some(vars @ Value::Object(_)) = args.get(1) else {
        bail!("{F}: operand 2 must be an object");
    };
    let mut out = String::new();
    for piece in template_pieces(template)? {
        match piece {
            Piece::Text(t) => out.push_str(&t),
            Piece::Value(path) => {
                let mut v = vars;
                for field in &path {
                    v = match v {
                        Value::Object(o) => o
                            .get(&Value::from(field.as_str()))
                            .unwrap_or(&Value::Undefined),
                        _ => &Value::Undefined,
                    };
                }
                go_print(v, &mut out);
            }
        }
    }
    Ok(Value::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Value {
        Value::from(x)
    }

    #[test]
    fn md5_matches_rfc_1321_test_suite() {
        for (input, want) in [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ] {
            assert_eq!(hex::encode(md5(input.as_bytes())), want, "{input:?}");
        }
    }

    #[test]
    fn hmac_md5_matches_rfc_2202() {
        // RFC 2202 test case 2.
        assert_eq!(
            hex::encode(hmac_md5(b"Jefe", b"what do ya want for nothing?")),
            "750c783e6ab0b503eaa86e310a5db738"
        );
        // Test case 6: a key longer than the block.
        assert_eq!(
            hex::encode(hmac_md5(
                &[0xaa; 80],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "6b1ab7fe4bd7bf8f0b62e6ce61b9d0cd"
        );
    }

    #[test]
    fn cidr_functions() {
        let t = |f: Builtin, args: Vec<Value>| f(&args).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            t(cidr_intersects, vec![s("10.0.0.0/8"), s("10.1.0.0/16")]),
            Value::from(true)
        );
        assert_eq!(
            t(cidr_intersects, vec![s("10.0.0.0/16"), s("10.1.0.0/16")]),
            Value::from(false)
        );
        assert!(cidr_intersects(&[s("10.0.0.1"), s("10.0.0.0/8")]).is_err());
        // Expected values as OPA 1.x computes them.
        let merge = |xs: &[&str]| {
            t(
                cidr_merge,
                vec![Value::from(xs.iter().map(|x| s(x)).collect::<Vec<_>>())],
            )
        };
        let set = |xs: &[&str]| Value::from(xs.iter().map(|x| s(x)).collect::<BTreeSet<_>>());
        assert_eq!(
            merge(&["192.168.0.0/24", "192.168.1.0/24", "10.0.0.0/30"]),
            set(&["10.0.0.0/30", "192.168.0.0/23"])
        );
        assert_eq!(merge(&["10.1.2.3"]), set(&["10.1.2.3/8"]));
        assert_eq!(merge(&["172.16.5.4"]), set(&["172.16.5.4/16"]));
        assert_eq!(merge(&["200.1.1.1"]), set(&["200.1.1.1/24"]));
        assert_eq!(merge(&["10.0.0.1/24"]), set(&["10.0.0.0/24"]));
        assert_eq!(merge(&["10.0.0.0/24", "10.0.0.1"]), set(&["10.0.0.0/8"]));
        assert_eq!(
            merge(&["192.168.1.5", "192.168.1.0/24"]),
            set(&["192.168.1.0/24"])
        );
        assert_eq!(
            merge(&["2001:db8::/33", "2001:db8:8000::/33"]),
            set(&["2001:db8::/32"])
        );
        assert_eq!(
            merge(&["10.0.0.1/32", "10.0.0.0/32"]),
            set(&["10.0.0.0/31"])
        );
        assert!(cidr_merge(&[Value::from(vec![s("::1")])]).is_err());
        let matches = t(
            cidr_contains_matches,
            vec![
                Value::from(vec![s("10.0.0.0/8"), s("192.168.0.0/16")]),
                s("10.1.2.3"),
            ],
        );
        assert_eq!(
            matches,
            Value::from(BTreeSet::from([Value::from(vec![
                Value::from(0u64),
                s("10.1.2.3")
            ])]))
        );
    }
}
