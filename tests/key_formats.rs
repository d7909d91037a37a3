//! `tls.key` in each encoding a certificate issuer may write — PKCS#8, SEC1
//! (`EC PRIVATE KEY`) and PKCS#1 (`RSA PRIVATE KEY`) — loads as the sidecar's
//! identity, and real mTLS clients then reach the app through it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine as _;
use common::*;
use portcullis::identity::SpiffeId;
use portcullis_testkit::{IssueCustom, LeafOptions};

const ALLOW_ALL: &str = "package envoy.authz\nimport rego.v1\ndefault allow := true\n";

/// The inner private key of a PKCS#8 `PrivateKeyInfo`: the SEC1 `ECPrivateKey` or
/// PKCS#1 `RSAPrivateKey` DER (RFC 5208: SEQUENCE { version, algorithm, OCTET STRING }).
fn unwrap_pkcs8(der: &[u8]) -> Vec<u8> {
    fn tlv(b: &[u8]) -> (u8, usize, usize) {
        let (tag, first) = (b[0], b[1]);
        if first < 0x80 {
            (tag, 2, usize::from(first))
        } else {
            let n = usize::from(first & 0x7f);
            let len = b[2..2 + n]
                .iter()
                .fold(0usize, |a, &x| (a << 8) | usize::from(x));
            (tag, 2 + n, len)
        }
    }
    let (tag, hdr, _) = tlv(der);
    assert_eq!(tag, 0x30);
    let mut rest = &der[hdr..];
    for expected in [0x02, 0x30] {
        let (tag, hdr, len) = tlv(rest);
        assert_eq!(tag, expected);
        rest = &rest[hdr + len..];
    }
    let (tag, hdr, len) = tlv(rest);
    assert_eq!(tag, 0x04);
    rest[hdr..hdr + len].to_vec()
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let body: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        body.join("\n")
    )
}

#[tokio::test]
async fn pkcs8_sec1_and_pkcs1_keys_all_serve() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let policies = policy_dir(&pki, &[("authz.rego", ALLOW_ALL)]);
    let app = echo_app().await;
    let server = SpiffeId::parse(SERVER_ID).unwrap();
    for (format, rsa) in [
        ("PKCS#8", false),
        ("SEC1", false),
        ("PKCS#8 RSA", true),
        ("PKCS#1", true),
    ] {
        let mut opts = LeafOptions::for_id(&server);
        if rsa {
            opts = opts.rsa();
        }
        let leaf = pki.ca.issue_custom(&opts).unwrap();
        let key = match format {
            "SEC1" => pem("EC PRIVATE KEY", &unwrap_pkcs8(&leaf.key_der)),
            "PKCS#1" => pem("RSA PRIVATE KEY", &unwrap_pkcs8(&leaf.key_der)),
            _ => leaf.key_pem.clone(),
        };
        assert!(key.contains(match format {
            "SEC1" => "BEGIN EC PRIVATE KEY",
            "PKCS#1" => "BEGIN RSA PRIVATE KEY",
            _ => "BEGIN PRIVATE KEY",
        }));
        std::fs::write(pki.path("server/tls.crt"), &leaf.cert_pem).unwrap();
        std::fs::write(pki.path("server/tls.key"), key).unwrap();
        let sidecar = start(config(&pki, &policies, app)).await;
        let c = pki.client("frontend", &[b"http/1.1"]);
        let (r, body) = call(&c, sidecar.inbound_addr, req("GET", "/", &[], "")).await;
        assert_eq!(r.status(), 200, "{format}: {body}");
    }
}
