//! The cost of the certificate-path rules per new mTLS connection: verification of a
//! 3-certificate SVID chain (root → intermediate → leaf) with webpki alone (what the
//! path validator did before the RFC 5280 profile pass) and with the full validator,
//! next to a whole in-memory TLS 1.3 mTLS handshake in which both sides verify such a
//! chain.
//!
//! Run: `cargo bench --bench svid_verify -- --warm-up-time 1 --measurement-time 3`
//!
//! Instruction counts (for a loaded machine): `SVID_BENCH_COUNT=<mode> SVID_BENCH_ITERS=N`
//! runs one mode N times without criterion, for `valgrind --tool=callgrind`; modes
//! `none`, `webpki`, `full`, `handshake`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, Criterion};
use portcullis::identity::{
    leaf_info, verify_svid_with, PeerAuthorization, SvidClientVerifier, SvidServerVerifier,
    SvidUsage, TrustBundles, TrustDomain,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime};

const TD: &str = "bench.example";

struct Pki {
    root: CertificateDer<'static>,
    /// Leaf, intermediate.
    chain: Vec<CertificateDer<'static>>,
    leaf_key: KeyPair,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

fn pki(name: &str) -> Pki {
    let root_key = KeyPair::generate().expect("key");
    let root_params = ca_params(&format!("{name} root"));
    let root = root_params.self_signed(&root_key).expect("root");
    let root_issuer = Issuer::new(root_params, root_key);
    let int_key = KeyPair::generate().expect("key");
    let mut int_params = ca_params(&format!("{name} intermediate"));
    int_params.use_authority_key_identifier_extension = true;
    let int = int_params
        .signed_by(&int_key, &root_issuer)
        .expect("intermediate");
    let int_issuer = Issuer::new(int_params, int_key);
    let leaf_key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{TD}/{name}").try_into().expect("uri"),
    )];
    p.use_authority_key_identifier_extension = true;
    let leaf = p.signed_by(&leaf_key, &int_issuer).expect("leaf");
    Pki {
        root: root.der().clone(),
        chain: vec![leaf.der().clone(), int.der().clone()],
        leaf_key,
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn bundles(roots: &[&CertificateDer<'static>]) -> Arc<TrustBundles> {
    let mut b = TrustBundles::new();
    b.add(
        TrustDomain::parse(TD).expect("td"),
        roots.iter().map(|r| (*r).clone()).collect(),
    );
    Arc::new(b)
}

/// The verification before the profile pass: the leaf's SVID rules, then webpki.
fn webpki_only(p: &Pki, anchors: &[TrustAnchor<'_>], algs: &CryptoProvider) -> bool {
    let Ok(_) = leaf_info(&p.chain[0]) else {
        return false;
    };
    let Ok(ee) = webpki::EndEntityCert::try_from(&p.chain[0]) else {
        return false;
    };
    ee.verify_for_usage(
        algs.signature_verification_algorithms.all,
        anchors,
        &p.chain[1..],
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .is_ok()
}

fn full(p: &Pki, bundles: &TrustBundles, algs: &CryptoProvider) -> bool {
    verify_svid_with(
        &p.chain[0],
        &p.chain[1..],
        bundles,
        UnixTime::now(),
        SvidUsage::ClientAuth,
        algs.signature_verification_algorithms.all,
    )
    .is_ok()
}

/// Both sides' configs: each presents its chain and verifies the other's.
fn configs(server: &Pki, client: &Pki) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let b = bundles(&[&server.root, &client.root]);
    let sv = SvidClientVerifier::new(
        b.clone(),
        PeerAuthorization::AnyTrusted,
        true,
        provider(),
        "bench",
    );
    let mut s = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(Arc::new(sv))
        .with_single_cert(
            server.chain.clone(),
            PrivateKeyDer::Pkcs8(server.leaf_key.serialize_der().into()),
        )
        .expect("server");
    let cv = SvidServerVerifier::new(b, PeerAuthorization::AnyTrusted, provider(), "bench");
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(cv))
        .with_client_auth_cert(
            client.chain.clone(),
            PrivateKeyDer::Pkcs8(client.leaf_key.serialize_der().into()),
        )
        .expect("client");
    // Every handshake is a new connection: no resumption, so both chains are verified.
    s.send_tls13_tickets = 0;
    s.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    c.resumption = rustls::client::Resumption::disabled();
    (Arc::new(s), Arc::new(c))
}

/// One complete in-memory handshake (a new mTLS connection).
fn handshake(s: &Arc<ServerConfig>, c: &Arc<ClientConfig>) -> bool {
    let name = ServerName::try_from("bench.invalid").expect("name");
    let (Ok(mut client), Ok(mut server)) = (
        ClientConnection::new(c.clone(), name),
        ServerConnection::new(s.clone()),
    ) else {
        return false;
    };
    let mut buf = Vec::with_capacity(16 * 1024);
    for _ in 0..10 {
        buf.clear();
        while client.wants_write() {
            if client.write_tls(&mut buf).is_err() {
                return false;
            }
        }
        if !buf.is_empty()
            && (server.read_tls(&mut buf.as_slice()).is_err()
                || server.process_new_packets().is_err())
        {
            return false;
        }
        buf.clear();
        while server.wants_write() {
            if server.write_tls(&mut buf).is_err() {
                return false;
            }
        }
        if !buf.is_empty()
            && (client.read_tls(&mut buf.as_slice()).is_err()
                || client.process_new_packets().is_err())
        {
            return false;
        }
        if !client.is_handshaking() && !server.is_handshaking() {
            return true;
        }
    }
    false
}

fn bench(c: &mut Criterion) {
    let client = pki("client");
    let server = pki("server");
    let b = bundles(&[&client.root]);
    let anchor = webpki::anchor_from_trusted_cert(&client.root).expect("anchor");
    let anchors = [anchor];
    let prov = provider();
    assert!(webpki_only(&client, &anchors, &prov));
    assert!(full(&client, &b, &prov));
    let mut g = c.benchmark_group("svid_verify_3_cert_chain");
    g.bench_function("webpki_only", |x| {
        x.iter(|| webpki_only(black_box(&client), &anchors, &prov))
    });
    g.bench_function("full_validator", |x| {
        x.iter(|| full(black_box(&client), &b, &prov))
    });
    g.finish();
    let (s, cl) = configs(&server, &client);
    assert!(handshake(&s, &cl));
    let mut g = c.benchmark_group("mtls_handshake");
    g.bench_function("tls13_both_sides_verify", |x| {
        x.iter(|| handshake(black_box(&s), black_box(&cl)))
    });
    g.finish();
}

/// `SVID_BENCH_COUNT=<mode>`: run one mode `SVID_BENCH_ITERS` times, for callgrind.
fn count(mode: &str) {
    let iters: usize = std::env::var("SVID_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let client = pki("client");
    let server = pki("server");
    let b = bundles(&[&client.root]);
    let anchors = [webpki::anchor_from_trusted_cert(&client.root).expect("anchor")];
    let prov = provider();
    let (s, cl) = configs(&server, &client);
    let mut ok = 0usize;
    for _ in 0..iters {
        ok += usize::from(match mode {
            "webpki" => webpki_only(&client, &anchors, &prov),
            "full" => full(&client, &b, &prov),
            "handshake" => handshake(&s, &cl),
            _ => true,
        });
    }
    println!("{mode}: {ok}/{iters} ok");
}

criterion_group!(benches, bench);

fn main() {
    if let Ok(mode) = std::env::var("SVID_BENCH_COUNT") {
        count(&mode);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
