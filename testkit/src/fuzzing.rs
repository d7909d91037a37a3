//! Entry points for the fuzz targets in `fuzz/` and their regression test
//! (`tests/fuzz_regressions.rs`): each takes raw bytes, feeds them to the real
//! parsers and checks invariants, panicking only when an invariant breaks.
//!
//! Not an API: subject to change with the fuzz targets.

use std::net::SocketAddr;
use std::sync::LazyLock;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::leaf::{IssueCustom, LeafOptions};
use portcullis::authn::jwks::KeySet;
use portcullis::authn::{token, Authenticator, Outcome};
use portcullis::config::{Config, JwksSource, JwtConfig, JwtProvider, TokenLocation};
use portcullis::identity::{
    certs_from_pem, leaf_info, verify_svid, DevCa, SpiffeId, SvidRejection, TrustBundles,
    TrustDomain,
};
use portcullis::policy::{build_input, HttpFacts, InputFacts};
use portcullis::proxy::{headers, path, prelude};

/// The trust domain of the fuzzing CA and of the SVID seeds.
pub const TRUST_DOMAIN: &str = "fuzz.test";

/// SPIFFE ID and trust domain parsing.
///
/// Invariants: a parsed ID keeps its input byte for byte, re-parses to the same
/// value, splits into a trust domain and path that rebuild it, and survives a
/// serde round trip; a trust domain re-parses from its name and its ID form.
pub fn spiffe_id(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::parse(text) {
        assert_eq!(id.as_str(), text, "a parsed ID is its input");
        assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(&id), "re-parse");
        let td = id.trust_domain();
        assert_eq!(TrustDomain::parse(td.as_str()).as_ref(), Ok(&td));
        assert_eq!(
            SpiffeId::from_parts(&td, id.path()).as_ref(),
            Ok(&id),
            "trust domain + path rebuild the ID"
        );
        assert_eq!(id.is_root(), id.path().is_empty());
        let json = serde_json::to_string(&id).unwrap_or_default();
        let back: Result<SpiffeId, _> = serde_json::from_str(&json);
        assert_eq!(back.ok().as_ref(), Some(&id), "serde round trip");
    }
    if let Ok(td) = TrustDomain::parse(text) {
        assert_eq!(TrustDomain::parse(td.as_str()).as_ref(), Ok(&td));
        assert_eq!(TrustDomain::parse(&td.id_string()).as_ref(), Ok(&td));
        let root = SpiffeId::parse(&td.id_string());
        assert!(root.is_ok_and(|r| r.is_root() && r.trust_domain() == td));
    }
}

/// A development CA for [`TRUST_DOMAIN`], generated once per process: nothing
/// the fuzzer produces can carry its signature except what [`svid_san`] asks it
/// to issue.
static FUZZ_CA: LazyLock<Option<(DevCa, TrustBundles)>> = LazyLock::new(|| {
    let td = TrustDomain::parse(TRUST_DOMAIN).ok()?;
    let ca = DevCa::generate(&td).ok()?;
    let bundles = ca.trust_bundles();
    Some((ca, bundles))
});

/// Certificate handling for SVIDs. Input starting with a DER SEQUENCE (`0x30`)
/// is a certificate: its leaf information is extracted and it is verified
/// against the fuzzing CA, which it can never pass. Other input is a leaf
/// description, one item a line (`uri:<SAN>`, `dns:<SAN>`, `cn:<name>`, `ca`,
/// `no-key-usage`, `no-digital-signature`, `key-cert-sign`, `crl-sign`,
/// `server-auth-only`): the CA issues that leaf and the verdict must match the
/// X.509-SVID rules. Any input is also read as a PEM bundle.
pub fn svid_san(data: &[u8]) {
    let _ = certs_from_pem(data);
    let Some((ca, bundles)) = FUZZ_CA.as_ref() else {
        panic!("the fuzzing CA could not be generated");
    };
    if data.first() == Some(&0x30) {
        let der = CertificateDer::from(data);
        let info = leaf_info(&der);
        let verdict = verify_svid(std::slice::from_ref(&der), bundles, UnixTime::now());
        assert!(
            verdict.is_err(),
            "a certificate the fuzzing CA never issued"
        );
        if let Ok(info) = info {
            assert!(!info.id.is_root());
            assert_eq!(
                leaf_info(&der).map(|again| again.id),
                Ok(info.id),
                "leaf info is deterministic"
            );
        }
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let opts = leaf_options(text);
    // rcgen refuses some names (non-ASCII, bad DNS names): nothing to verify.
    let Ok(leaf) = ca.issue_custom(&opts) else {
        return;
    };
    let verdict = verify_svid(
        std::slice::from_ref(&leaf.cert_der),
        bundles,
        UnixTime::now(),
    );
    let info = leaf_info(&leaf.cert_der);
    let valid_id = match opts.uris.as_slice() {
        [uri] => SpiffeId::parse(uri).ok().filter(|id| !id.is_root()),
        _ => None,
    };
    let follows_rules = valid_id.as_ref().is_some_and(|id| {
        id.trust_domain_name() == TRUST_DOMAIN
            && !opts.is_ca
            && opts.key_usage
            && opts.digital_signature
            && !opts.key_cert_sign
            && !opts.crl_sign
            // X.509-SVID §4.4: an EKU has both serverAuth and clientAuth.
            && !opts.server_auth_only
    });
    match &verdict {
        Ok(id) => {
            assert!(
                follows_rules,
                "accepted a leaf that breaks the rules: {opts:?}"
            );
            assert_eq!(Some(id), valid_id.as_ref());
            assert_eq!(info.map(|i| i.id).as_ref(), Ok(id));
        }
        Err(e) => assert!(!follows_rules, "refused a valid leaf ({e:?}): {opts:?}"),
    }
    if opts.uris.len() > 1 {
        assert_eq!(verdict, Err(SvidRejection::MultipleUriSans));
    }
}

fn leaf_options(text: &str) -> LeafOptions {
    // A valid template (valid now, for an hour) without its URI SAN.
    let mut opts = LeafOptions::for_uri("");
    opts.uris.clear();
    for line in text.lines() {
        if let Some(uri) = line.strip_prefix("uri:") {
            opts.uris.push(uri.to_owned());
        } else if let Some(dns) = line.strip_prefix("dns:") {
            opts.dns_names.push(dns.to_owned());
        } else if let Some(cn) = line.strip_prefix("cn:") {
            opts.subject_cn = Some(cn.to_owned());
        } else {
            match line {
                "ca" => opts.is_ca = true,
                "no-key-usage" => opts.key_usage = false,
                "no-digital-signature" => opts.digital_signature = false,
                "key-cert-sign" => opts.key_cert_sign = true,
                "crl-sign" => opts.crl_sign = true,
                "server-auth-only" => opts.server_auth_only = true,
                _ => {}
            }
        }
    }
    opts
}

/// Splits a request written like HTTP/1.1 (`METHOD TARGET [VERSION]`, header
/// lines `name: value`, an empty line, the body) into its parts. Lines end in
/// `\n` or `\r\n`; nothing is validated here.
struct RawRequest<'a> {
    method: &'a [u8],
    target: &'a [u8],
    version: &'a [u8],
    headers: Vec<(&'a [u8], &'a [u8])>,
    body: &'a [u8],
}

fn split_request(data: &[u8]) -> RawRequest<'_> {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => match data.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(i) => (&data[..i], &data[i + 4..]),
            None => (data, &[][..]),
        },
    };
    let mut lines = head
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let mut request_line = lines.next().unwrap_or_default().splitn(3, |b| *b == b' ');
    let method = request_line.next().unwrap_or_default();
    let target = request_line.next().unwrap_or_default();
    let version = request_line.next().unwrap_or_default();
    let headers = lines
        .filter_map(|l| {
            let colon = l.iter().position(|b| *b == b':')?;
            let value = &l[colon + 1..];
            let start = value.iter().position(|b| *b != b' ').unwrap_or(value.len());
            Some((&l[..colon], &value[start..]))
        })
        .collect();
    RawRequest {
        method,
        target,
        version,
        headers,
        body,
    }
}

/// Checks the path normaliser on one request target: a normalised target is in
/// origin form, has no empty, `.` or `..` segments, and normalises to itself.
fn check_normalized(target: &str) {
    let Ok(out) = path::normalize_path_and_query(target) else {
        return;
    };
    assert_eq!(
        path::normalize_path_and_query(&out).as_deref(),
        Ok(out.as_str()),
        "normalising a normalised target changes it (from {target:?})"
    );
    let p = out.split_once('?').map_or(out.as_str(), |(p, _)| p);
    assert!(p.starts_with('/'), "{out:?}");
    let inner = p.strip_suffix('/').unwrap_or(p);
    for seg in inner.split('/').skip(1) {
        assert!(
            !seg.is_empty() && seg != "." && seg != "..",
            "segment {seg:?} left in {out:?}"
        );
    }
}

/// The request path up to the decision: header hygiene, framing checks, path
/// normalisation (see [`path`]), the request ID, hop-by-hop removal and the
/// policy input document. Input is a request as described at [`split_request`].
///
/// Invariants: normalisation is stable; no spoofable identity header survives;
/// no hop-by-hop header is forwarded; the input document is valid JSON and shows
/// the method and normalised path that are forwarded.
pub fn input_document(data: &[u8]) {
    let raw = split_request(data);
    if let Ok(target) = std::str::from_utf8(raw.target) {
        check_normalized(target);
    }
    let Ok(method) = Method::from_bytes(raw.method) else {
        return;
    };
    let Ok(uri) = Uri::try_from(raw.target) else {
        return;
    };
    let mut builder = http::Request::builder()
        .method(method.clone())
        .uri(uri)
        .version(match raw.version {
            b"HTTP/2" | b"HTTP/2.0" => http::Version::HTTP_2,
            b"HTTP/1.0" => http::Version::HTTP_10,
            _ => http::Version::HTTP_11,
        });
    for (name, value) in &raw.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            builder = builder.header(n, v);
        }
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (mut parts, ()) = request.into_parts();
    let claim_header = HeaderName::from_static("x-user");
    let Ok(pre) = prelude(&mut parts, std::slice::from_ref(&claim_header)) else {
        return;
    };
    check_normalized(&pre.path);
    for name in parts.headers.keys() {
        let n = name.as_str();
        assert!(
            n != headers::XFCC.as_str() && !n.starts_with(headers::OWN_PREFIX) && n != "x-user",
            "spoofable header {n} survived"
        );
    }
    let id = parts
        .headers
        .get(&headers::REQUEST_ID)
        .map(HeaderValue::as_bytes);
    assert_eq!(id, Some(pre.request_id.as_bytes()), "request ID header");
    assert!(headers::check_framing(&parts.headers).is_ok());

    let mut forwarded = parts.headers.clone();
    let upgrade = headers::is_upgrade(&forwarded);
    headers::remove_hop_by_hop(&mut forwarded, upgrade);
    for name in [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "trailer",
        "transfer-encoding",
    ] {
        assert!(!forwarded.contains_key(name), "hop-by-hop {name} forwarded");
    }
    if let Some(te) = forwarded.get(http::header::TE) {
        assert_eq!(te.as_bytes(), b"trailers");
    }
    if !upgrade {
        assert!(!forwarded.contains_key(http::header::UPGRADE));
        assert!(!forwarded.contains_key(http::header::CONNECTION));
    }

    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let claims = serde_json::from_slice::<serde_json::Value>(raw.body).ok();
    let source: SocketAddr = ([10, 0, 0, 1], 40000).into();
    let destination: SocketAddr = (std::net::Ipv6Addr::LOCALHOST, 8080).into();
    let facts = InputFacts {
        source_address: source,
        source_principal: Some("spiffe://fuzz.test/ns/default/sa/client"),
        destination_address: destination,
        destination_principal: None,
        http: Some(HttpFacts {
            id: &pre.request_id,
            method: method.as_str(),
            path: &pre.path,
            host: &pre.host,
            scheme: "http",
            protocol: pre.protocol,
            headers: &parts.headers,
            size: u64::try_from(raw.body.len()).ok(),
            body: Some(raw.body),
            truncated_body: false,
            content_type,
        }),
        jwt: claims.as_ref().map(|c| ("jwt_payload", c)),
    };
    let text = build_input(&facts)
        .to_json_str()
        .unwrap_or_else(|e| panic!("the input document is not serialisable: {e}"));
    let doc: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the input document is not JSON: {e}"));
    let http = &doc["attributes"]["request"]["http"];
    assert_eq!(http["path"].as_str(), Some(pre.path.as_str()));
    assert_eq!(http["method"].as_str(), Some(method.as_str()));
    assert!(doc["parsed_path"].is_array() && doc["parsed_query"].is_object());
}

/// Configuration parsing and validation: any text gives a configuration or an
/// error that renders; never a panic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_yaml_str(text, "fuzz.yaml") {
        Ok(config) => {
            let _ = config.dev_ca_spiffe_id();
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
        }
    }
}

/// The issuer of the fixed key set below.
pub const JWT_ISSUER: &str = "https://idp.fuzz.test";

/// An ES256 and an RS256 public key whose private halves were thrown away after
/// signing the seed tokens (which are expired): no input can be accepted.
const JWKS: &str = r#"{"keys":[{"alg":"ES256","crv":"P-256","kid":"fuzz-es256","kty":"EC","use":"sig","x":"hFZeNaX0duv3cuIFacd1lm_Jv6-mhy-JReEqGxyg57o","y":"8_LoGclW3cX-eDTn6bxqn_0V2eUkA-y5KMQUJbV1V10"},{"alg":"RS256","e":"AQAB","kid":"fuzz-rs256","kty":"RSA","n":"wAmj1aqfSPif5a274xweTQnqVDqYgywme5UmoZK6EI79uxYU7wLk0KU0DgxopbQDJPk-R1l8Hsv0STeO3mkoHMgWmFbsO26noa24rOJw3fPAZUU3TgFHGNkad5k83j7BcLDE8rnYRfrpO5_Bgv2FcgqIx6daYu_5r0wuTkryPSYXP76tRDQ97YY132EOAb7I_Qwm93OmQUAnM0TTKCQyGzMGd9UWLPn7VycAZAg2LM-Btgp5LoQdUP8_CgGMv1df1zEeu841wECaMCXN2eb6fHUXcToLRFaH8bmv5nVN7aEKYPS4wTQHHpV5N-EpdUdQMb25gd_TEQtcNiQDtEGAgw","use":"sig"}]}"#;

static JWT: LazyLock<Option<(tokio::runtime::Runtime, std::sync::Arc<Authenticator>)>> =
    LazyLock::new(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        let cfg = JwtConfig {
            providers: vec![JwtProvider {
                name: "fuzz".into(),
                issuer: JWT_ISSUER.into(),
                audiences: vec!["fuzz".into()],
                jwks: JwksSource::Inline(JWKS.into()),
                from: vec![
                    TokenLocation::Header {
                        name: "authorization".into(),
                        prefix: "Bearer ".into(),
                    },
                    TokenLocation::Query("access_token".into()),
                ],
                forward: false,
                clock_skew: std::time::Duration::from_secs(60),
                claims_to_headers: vec![],
                payload_in_metadata: "jwt_payload".into(),
            }],
        };
        let (authn, _) = runtime.block_on(Authenticator::start(&cfg)).ok()?;
        Some((runtime, authn))
    });

/// JWT authentication: the input is a token, presented as a bearer token and as
/// a query parameter to an authenticator holding a fixed key set. It must never
/// be accepted. The same bytes are also read as a JWKS and through the token
/// helpers the `io.jwt.*` builtins use (lenient base64).
pub fn jwt(data: &[u8]) {
    let _ = KeySet::parse(data, false);
    let _ = KeySet::parse(data, true);
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(seg) = token::split(token) {
        assert_eq!(
            seg.signing_input,
            format!("{}.{}", seg.header, seg.payload),
            "signing input"
        );
        if let Ok(h) = token::json_object(seg.header, true) {
            let _ = token::checked_header(&h);
        }
        if let Ok(p) = token::json_object(seg.payload, true) {
            let _ = token::check_claim_types(&p);
        }
    }
    let Some((runtime, authn)) = JWT.as_ref() else {
        panic!("the fuzzing authenticator could not be built");
    };
    let mut presented = Vec::new();
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, v);
        presented.push((h, "/".to_owned()));
    }
    if token
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'&' && b != b'#')
    {
        presented.push((HeaderMap::new(), format!("/?access_token={token}")));
    }
    for (headers, pq) in presented {
        let outcome = runtime.block_on(authn.authenticate(&headers, &pq));
        assert!(
            !matches!(outcome, Outcome::Verified(_)),
            "accepted a token no key here could have signed: {token:?}"
        );
    }
}
