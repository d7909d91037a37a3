//! Real mTLS handshakes over loopback TCP (tokio-rustls) with the SVID verifiers:
//! successful same-domain and federated handshakes, and one failing handshake per
//! rejection reason, each checked by its exact `SvidRejection` and its metric label.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use portcullis::identity::{
    leaf_info, record_handshake_io_failure, rejection_of_io, verify_svid, verify_svid_with, DevCa,
    PeerAuthorization, SpiffeId, SvidClientVerifier, SvidRejection, SvidServerVerifier, SvidUsage,
    TrustBundles, TrustDomain,
};
use portcullis_testkit::{IssueCustom, LeafOptions, TestLeaf};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn td(s: &str) -> TrustDomain {
    TrustDomain::parse(s).unwrap()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// A certificate chain and its key.
struct Identity {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl From<TestLeaf> for Identity {
    fn from(leaf: TestLeaf) -> Self {
        Identity {
            key: leaf.private_key(),
            certs: vec![leaf.cert_der],
        }
    }
}

fn svid(ca: &DevCa, spiffe_id: &str) -> Identity {
    ca.issue_custom(&LeafOptions::for_id(&id(spiffe_id)))
        .unwrap()
        .into()
}

fn bad(ca: &DevCa, opts: LeafOptions) -> Identity {
    ca.issue_custom(&opts).unwrap().into()
}

fn bundles(cas: &[&DevCa]) -> Arc<TrustBundles> {
    let mut b = TrustBundles::new();
    for ca in cas {
        b.add_pem(ca.trust_domain().clone(), ca.ca_cert_pem().as_bytes())
            .unwrap();
    }
    Arc::new(b)
}

struct Server {
    identity: Identity,
    bundles: Arc<TrustBundles>,
    authz: PeerAuthorization,
    required: bool,
    direction: &'static str,
}

struct Client {
    identity: Option<Identity>,
    bundles: Arc<TrustBundles>,
    authz: PeerAuthorization,
    direction: &'static str,
}

const ALL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn server_config(s: Server, versions: &[&'static SupportedProtocolVersion]) -> Arc<ServerConfig> {
    let verifier = SvidClientVerifier::new(s.bundles, s.authz, s.required, provider(), s.direction);
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(s.identity.certs, s.identity.key)
        .unwrap();
    Arc::new(cfg)
}

fn client_config(c: Client, versions: &[&'static SupportedProtocolVersion]) -> Arc<ClientConfig> {
    let verifier = SvidServerVerifier::new(c.bundles, c.authz, provider(), c.direction);
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let cfg = match c.identity {
        Some(i) => builder.with_client_auth_cert(i.certs, i.key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(cfg)
}

/// What each side observed.
struct Outcome {
    /// The client's SPIFFE ID as seen by the server, or the server's handshake error.
    server: Result<SpiffeId, std::io::Error>,
    /// The server's SPIFFE ID as seen by the client, or the first error of the client
    /// (handshake, or reading the server's reply).
    client: Result<SpiffeId, std::io::Error>,
}

async fn run(server: Server, client: Client) -> Outcome {
    run_with(server, client, ALL_VERSIONS).await
}

async fn run_with(
    server: Server,
    client: Client,
    versions: &[&'static SupportedProtocolVersion],
) -> Outcome {
    let server_direction = server.direction;
    let acceptor = TlsAcceptor::from(server_config(server, versions));
    let connector = TlsConnector::from(client_config(client, versions));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();

    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match acceptor.accept(tcp).await {
            Ok(mut tls) => {
                let peer = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
                let mut buf = [0u8; 4];
                tls.read_exact(&mut buf).await?;
                tls.write_all(b"pong").await?;
                tls.shutdown().await?;
                Ok(leaf_info(&peer).unwrap().id)
            }
            Err(e) => {
                // What the integrator's accept loop does for every handshake error.
                record_handshake_io_failure(server_direction, &e);
                Err(e)
            }
        }
    });

    let client_result = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("ignored.invalid").unwrap();
        let mut tls = connector.connect(name, tcp).await?;
        let peer = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        // With TLS 1.3 the client finishes before the server has checked its
        // certificate: the server's rejection shows up on the first read.
        tls.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"pong");
        Ok(leaf_info(&peer).unwrap().id)
    }
    .await;

    let server_result = tokio::time::timeout(Duration::from_secs(10), server_task)
        .await
        .expect("server timed out")
        .unwrap();
    Outcome {
        server: server_result,
        client: client_result,
    }
}

fn failures(direction: &str, reason: &str) -> u64 {
    portcullis::metrics::global()
        .tls_handshake_failures
        .with_label_values(&[direction, reason])
        .get()
}

/// Runs a handshake in which the server must reject the client's certificate with
/// `want`; checks the variant, the metric and that the client failed too.
async fn expect_server_rejects(
    direction: &'static str,
    ca: &DevCa,
    server_bundles: Arc<TrustBundles>,
    client: Option<Identity>,
    want: SvidRejection,
) {
    let before = failures(direction, want.reason());
    let out = run(
        Server {
            identity: svid(ca, "spiffe://example.org/server"),
            bundles: server_bundles,
            authz: PeerAuthorization::AnyTrusted,
            required: true,
            direction,
        },
        Client {
            identity: client,
            bundles: bundles(&[ca]),
            authz: PeerAuthorization::AnyTrusted,
            direction: "client_of_rejecting_server",
        },
    )
    .await;
    let err = out.server.expect_err("server must reject");
    assert_eq!(
        rejection_of_io(&err),
        Some(want.clone()),
        "server error: {err}"
    );
    assert!(out.client.is_err(), "client must observe the failure");
    assert_eq!(
        failures(direction, want.reason()),
        before + 1,
        "metric for {want:?}"
    );
}

fn example_ca() -> DevCa {
    DevCa::generate(&td("example.org")).unwrap()
}

#[tokio::test]
async fn same_trust_domain_succeeds_both_ways() {
    let ca = example_ca();
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let out = run_with(
            Server {
                identity: svid(&ca, "spiffe://example.org/ns/default/sa/server"),
                bundles: bundles(&[&ca]),
                authz: PeerAuthorization::AnyTrusted,
                required: true,
                direction: "ok_same_in",
            },
            Client {
                identity: Some(svid(&ca, "spiffe://example.org/ns/default/sa/client")),
                bundles: bundles(&[&ca]),
                authz: PeerAuthorization::Exact(HashSet::from([id(
                    "spiffe://example.org/ns/default/sa/server",
                )])),
                direction: "ok_same_out",
            },
            versions,
        )
        .await;
        assert_eq!(
            out.server.unwrap(),
            id("spiffe://example.org/ns/default/sa/client")
        );
        assert_eq!(
            out.client.unwrap(),
            id("spiffe://example.org/ns/default/sa/server")
        );
    }
}

#[tokio::test]
async fn issued_svid_pem_files_work_end_to_end() {
    let ca = example_ca();
    let load = |spiffe_id: &str| {
        let s = ca.issue(&id(spiffe_id), Duration::from_secs(600)).unwrap();
        Identity {
            certs: portcullis::identity::certs_from_pem(s.cert_pem.as_bytes()).unwrap(),
            key: portcullis::identity::private_key_from_pem(s.key_pem.as_bytes()).unwrap(),
        }
    };
    let out = run(
        Server {
            identity: load("spiffe://example.org/s"),
            bundles: bundles(&[&ca]),
            authz: PeerAuthorization::Predicate(Arc::new(|p: &SpiffeId| p.path() == "/c")),
            required: true,
            direction: "ok_pem_in",
        },
        Client {
            identity: Some(load("spiffe://example.org/c")),
            bundles: bundles(&[&ca]),
            authz: PeerAuthorization::AnyTrusted,
            direction: "ok_pem_out",
        },
    )
    .await;
    assert_eq!(out.server.unwrap(), id("spiffe://example.org/c"));
    assert_eq!(out.client.unwrap(), id("spiffe://example.org/s"));
}

#[tokio::test]
async fn federated_trust_domains_succeed() {
    let a = example_ca();
    let b = DevCa::generate(&td("partner.net")).unwrap();
    let out = run(
        Server {
            identity: svid(&a, "spiffe://example.org/api"),
            bundles: bundles(&[&a, &b]),
            authz: PeerAuthorization::AnyTrusted,
            required: true,
            direction: "ok_fed_in",
        },
        Client {
            identity: Some(svid(&b, "spiffe://partner.net/caller")),
            bundles: bundles(&[&a, &b]),
            authz: PeerAuthorization::AnyTrusted,
            direction: "ok_fed_out",
        },
    )
    .await;
    assert_eq!(out.server.unwrap(), id("spiffe://partner.net/caller"));
    assert_eq!(out.client.unwrap(), id("spiffe://example.org/api"));
}

#[tokio::test]
async fn permissive_mode_accepts_a_client_without_certificate() {
    let ca = example_ca();
    let acceptor = TlsAcceptor::from(server_config(
        Server {
            identity: svid(&ca, "spiffe://example.org/server"),
            bundles: bundles(&[&ca]),
            authz: PeerAuthorization::AnyTrusted,
            required: false,
            direction: "ok_permissive_in",
        },
        ALL_VERSIONS,
    ));
    let connector = TlsConnector::from(client_config(
        Client {
            identity: None,
            bundles: bundles(&[&ca]),
            authz: PeerAuthorization::AnyTrusted,
            direction: "ok_permissive_out",
        },
        ALL_VERSIONS,
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        assert!(tls.get_ref().1.peer_certificates().is_none());
        tls.write_all(b"hi").await.unwrap();
        tls.shutdown().await.unwrap();
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("x.invalid").unwrap(), tcp)
        .await
        .unwrap();
    let mut buf = [0u8; 2];
    tls.read_exact(&mut buf).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn strict_mode_rejects_missing_client_certificate() {
    let ca = example_ca();
    expect_server_rejects(
        "t_no_cert",
        &ca,
        bundles(&[&ca]),
        None,
        SvidRejection::NoCertificate,
    )
    .await;
}

#[tokio::test]
async fn other_ca_of_same_trust_domain_is_unknown_issuer() {
    let ca = example_ca();
    let impostor = example_ca();
    let client = svid(&impostor, "spiffe://example.org/client");
    expect_server_rejects(
        "t_unknown_issuer",
        &ca,
        bundles(&[&ca]),
        Some(client),
        SvidRejection::UnknownIssuer,
    )
    .await;
}

#[tokio::test]
async fn expired_client_certificate() {
    let ca = example_ca();
    let now = SystemTime::now();
    let client = bad(
        &ca,
        LeafOptions::for_id(&id("spiffe://example.org/client")).validity(
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        ),
    );
    expect_server_rejects(
        "t_expired",
        &ca,
        bundles(&[&ca]),
        Some(client),
        SvidRejection::Expired,
    )
    .await;
}

#[tokio::test]
async fn not_yet_valid_client_certificate() {
    let ca = example_ca();
    let now = SystemTime::now();
    let client = bad(
        &ca,
        LeafOptions::for_id(&id("spiffe://example.org/client")).validity(
            now + Duration::from_secs(3600),
            now + Duration::from_secs(7200),
        ),
    );
    expect_server_rejects(
        "t_not_yet_valid",
        &ca,
        bundles(&[&ca]),
        Some(client),
        SvidRejection::NotYetValid,
    )
    .await;
}

#[tokio::test]
async fn two_uri_sans() {
    let ca = example_ca();
    let client = bad(
        &ca,
        LeafOptions::for_id(&id("spiffe://example.org/a")).extra_uri("spiffe://example.org/b"),
    );
    expect_server_rejects(
        "t_two_uris",
        &ca,
        bundles(&[&ca]),
        Some(client),
        SvidRejection::MultipleUriSans,
    )
    .await;
}

#[tokio::test]
async fn no_uri_san() {
    let ca = example_ca();
    let client = bad(
        &ca,
        LeafOptions::for_id(&id("spiffe://example.org/a")).no_uri_san(),
    );
    expect_server_rejects(
        "t_no_uri",
        &ca,
        bundles(&[&ca]),
        Some(client),
        SvidRejection::NoUriSan,
    )
    .await;
}

#[tokio::test]
async fn dns_san_only() {
    let ca = example_ca();
    let client = bad(
        &ca,
        LeafOptions::for_id(&id("spiffe://example.org/a"))
            .no_uri_san()
            .dns("client.example.org"),
    );
    expect_server_rejects(
        "t_dns_only",
        &ca,
        bundles(&[&ca]),
        Some(client),
        SvidRejection::NoUriSan,
    )
    .await;
}

#[tokio::test]
async fn ca_certificate_as_leaf() {
    let ca = example_ca();
    let client = bad(&ca, LeafOptions::for_id(&id("spiffe://example.org/a")).ca());
    expect_server_rejects(
        "t_leaf_ca",
        &ca,
        bundles(&[&ca]),
        Some(client),
        SvidRejection::LeafIsCa,
    )
    .await;
}

#[tokio::test]
async fn key_cert_sign_on_leaf() {
    let ca = example_ca();
    let client = bad(
        &ca,
        LeafOptions::for_id(&id("spiffe://example.org/a")).key_cert_sign(),
    );
    expect_server_rejects(
        "t_key_cert_sign",
        &ca,
        bundles(&[&ca]),
        Some(client),
        SvidRejection::KeyCertSign,
    )
    .await;
}

#[tokio::test]
async fn trust_domain_not_configured() {
    let ca = example_ca();
    let stranger = DevCa::generate(&td("stranger.io")).unwrap();
    let client = svid(&stranger, "spiffe://stranger.io/a");
    expect_server_rejects(
        "t_untrusted_td",
        &ca,
        bundles(&[&ca]),
        Some(client),
        SvidRejection::UntrustedTrustDomain,
    )
    .await;
}

#[tokio::test]
async fn root_path_id() {
    let ca = example_ca();
    let client = bad(&ca, LeafOptions::for_uri("spiffe://example.org"));
    expect_server_rejects(
        "t_root_id",
        &ca,
        bundles(&[&ca]),
        Some(client),
        SvidRejection::RootPathId,
    )
    .await;
}

#[tokio::test]
async fn uri_san_not_a_spiffe_id() {
    let ca = example_ca();
    let client = bad(&ca, LeafOptions::for_uri("https://example.org/client"));
    expect_server_rejects(
        "t_invalid_id",
        &ca,
        bundles(&[&ca]),
        Some(client),
        SvidRejection::InvalidSpiffeId,
    )
    .await;
}

#[tokio::test]
async fn server_rejects_client_failing_authorization() {
    let ca = example_ca();
    let before = failures("t_server_authz", "not_authorized");
    let out = run(
        Server {
            identity: svid(&ca, "spiffe://example.org/server"),
            bundles: bundles(&[&ca]),
            authz: PeerAuthorization::Exact(HashSet::from([id("spiffe://example.org/friend")])),
            required: true,
            direction: "t_server_authz",
        },
        Client {
            identity: Some(svid(&ca, "spiffe://example.org/stranger")),
            bundles: bundles(&[&ca]),
            authz: PeerAuthorization::AnyTrusted,
            direction: "t_server_authz_out",
        },
    )
    .await;
    let err = out.server.unwrap_err();
    assert_eq!(rejection_of_io(&err), Some(SvidRejection::NotAuthorized));
    assert_eq!(failures("t_server_authz", "not_authorized"), before + 1);
}

#[tokio::test]
async fn client_rejects_server_failing_exact_authorization() {
    let ca = example_ca();
    let before = failures("t_client_authz", "not_authorized");
    let out = run(
        Server {
            identity: svid(&ca, "spiffe://example.org/imposter"),
            bundles: bundles(&[&ca]),
            authz: PeerAuthorization::AnyTrusted,
            required: true,
            direction: "t_client_authz_in",
        },
        Client {
            identity: Some(svid(&ca, "spiffe://example.org/client")),
            bundles: bundles(&[&ca]),
            authz: PeerAuthorization::Exact(HashSet::from([id("spiffe://example.org/backend")])),
            direction: "t_client_authz",
        },
    )
    .await;
    let err = out.client.unwrap_err();
    assert_eq!(rejection_of_io(&err), Some(SvidRejection::NotAuthorized));
    assert_eq!(failures("t_client_authz", "not_authorized"), before + 1);
    // The server sees the client's alert, not an SVID rejection of its own.
    let server_err = out.server.unwrap_err();
    assert_eq!(rejection_of_io(&server_err), None);
}

#[tokio::test]
async fn client_rejects_server_with_invalid_svid() {
    let ca = example_ca();
    let before = failures("t_client_expired", "expired");
    let now = SystemTime::now();
    let server_identity = bad(
        &ca,
        LeafOptions::for_id(&id("spiffe://example.org/server")).validity(
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        ),
    );
    let out = run(
        Server {
            identity: server_identity,
            bundles: bundles(&[&ca]),
            authz: PeerAuthorization::AnyTrusted,
            required: true,
            direction: "t_client_expired_in",
        },
        Client {
            identity: Some(svid(&ca, "spiffe://example.org/client")),
            bundles: bundles(&[&ca]),
            authz: PeerAuthorization::AnyTrusted,
            direction: "t_client_expired",
        },
    )
    .await;
    assert_eq!(
        rejection_of_io(&out.client.unwrap_err()),
        Some(SvidRejection::Expired)
    );
    assert_eq!(failures("t_client_expired", "expired"), before + 1);
    assert!(out.server.is_err());
}

/// Verifies a leaf issued as `opts` says (X.509-SVID rules, no handshake).
fn verify_opts(
    ca: &DevCa,
    bundles: &TrustBundles,
    opts: LeafOptions,
) -> Result<SpiffeId, SvidRejection> {
    let leaf = ca.issue_custom(&opts).unwrap();
    verify_svid(&[leaf.cert_der], bundles, UnixTime::now())
}

fn example_org() -> (DevCa, TrustBundles) {
    let ca = DevCa::generate(&td("example.org")).unwrap();
    let bundles = TrustBundles::from_pem(td("example.org"), ca.ca_cert_pem().as_bytes()).unwrap();
    (ca, bundles)
}

#[test]
fn leaf_rules_without_a_handshake() {
    let (ca, b) = example_org();
    let good = id("spiffe://example.org/w");
    let cases: Vec<(LeafOptions, SvidRejection)> = vec![
        (
            LeafOptions::for_id(&good).extra_uri("spiffe://example.org/x"),
            SvidRejection::MultipleUriSans,
        ),
        (
            LeafOptions::for_id(&good).no_uri_san(),
            SvidRejection::NoUriSan,
        ),
        (
            LeafOptions::for_id(&good).no_uri_san().dns("w.example.org"),
            SvidRejection::NoUriSan,
        ),
        (
            LeafOptions::for_uri("https://example.org/w"),
            SvidRejection::InvalidSpiffeId,
        ),
        (
            LeafOptions::for_uri("spiffe://example.org"),
            SvidRejection::RootPathId,
        ),
        (LeafOptions::for_id(&good).ca(), SvidRejection::LeafIsCa),
        (
            LeafOptions::for_id(&good).no_key_usage(),
            SvidRejection::NoKeyUsage,
        ),
        (
            LeafOptions::for_id(&good).no_digital_signature(),
            SvidRejection::NoDigitalSignature,
        ),
        (
            LeafOptions::for_id(&good).key_cert_sign(),
            SvidRejection::KeyCertSign,
        ),
        (
            LeafOptions::for_id(&good).crl_sign(),
            SvidRejection::CrlSign,
        ),
        (
            LeafOptions::for_id(&id("spiffe://other.org/w")),
            SvidRejection::UntrustedTrustDomain,
        ),
        (
            LeafOptions::for_id(&good).validity(
                SystemTime::now() - Duration::from_secs(7200),
                SystemTime::now() - Duration::from_secs(3600),
            ),
            SvidRejection::Expired,
        ),
        (
            LeafOptions::for_id(&good).validity(
                SystemTime::now() + Duration::from_secs(3600),
                SystemTime::now() + Duration::from_secs(7200),
            ),
            SvidRejection::NotYetValid,
        ),
    ];
    for (opts, want) in cases {
        let desc = format!("{opts:?}");
        assert_eq!(verify_opts(&ca, &b, opts), Err(want), "{desc}");
    }
    // Distinct reasons have distinct labels.
    let mut labels: Vec<_> = [
        SvidRejection::NoCertificate,
        SvidRejection::MultipleUriSans,
        SvidRejection::Expired,
    ]
    .iter()
    .map(|r| r.reason())
    .collect();
    labels.dedup();
    assert_eq!(labels.len(), 3);
}

#[test]
fn leaf_eku_needs_both_tls_purposes() {
    // X.509-SVID §4.4: when present, serverAuth and clientAuth are both set.
    let (ca, bundles) = example_org();
    let leaf = ca
        .issue_custom(&LeafOptions::for_id(&id("spiffe://example.org/w")).server_auth_only())
        .unwrap();
    for usage in [
        SvidUsage::ServerAuth,
        SvidUsage::ClientAuth,
        SvidUsage::AnyTls,
    ] {
        assert_eq!(
            verify_svid_with(
                &leaf.cert_der,
                &[],
                &bundles,
                UnixTime::now(),
                usage,
                provider().signature_verification_algorithms.all
            ),
            Err(SvidRejection::WrongExtendedKeyUsage),
            "{usage:?}"
        );
    }
}
