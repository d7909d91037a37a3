//! The shared download client (`portcullis::fetch`, used for JWKS documents and
//! policy bundles) against real TLS servers on loopback: which roots it trusts
//! (a configured `ca` replaces the system roots, here `SSL_CERT_FILE`), that it
//! follows no redirect, bounds bodies, revalidates with `If-None-Match` and gives
//! up on a silent server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use portcullis::fetch::{FetchClient, FetchError, Fetched};
use portcullis::identity::{crypto_provider, DevCa, SpiffeId, TrustDomain};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

const MIB: u64 = 1 << 20;
const T: Duration = Duration::from_secs(10);

/// Two CAs: one installed as the "system" roots (`SSL_CERT_FILE`, read by
/// rustls-native-certs), one only ever given as `ca`.
struct Pki {
    _dir: tempfile::TempDir,
    system: DevCa,
    own: DevCa,
    own_pem: PathBuf,
}

static PKI: LazyLock<Pki> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::parse("fetch.test").unwrap();
    let system = DevCa::generate(&td).unwrap();
    let own = DevCa::generate(&td).unwrap();
    let system_pem = dir.path().join("system-roots.pem");
    std::fs::write(&system_pem, system.ca_cert_pem()).unwrap();
    let own_pem = dir.path().join("own-ca.pem");
    std::fs::write(&own_pem, own.ca_cert_pem()).unwrap();
    // Set once, before any client without `ca` is built; nothing else in this
    // binary reads it.
    std::env::set_var("SSL_CERT_FILE", &system_pem);
    Pki {
        _dir: dir,
        system,
        own,
        own_pem,
    }
});

/// A server configuration for `localhost` with a certificate from `ca`.
fn server_tls(ca: &DevCa) -> Arc<rustls::ServerConfig> {
    let id = SpiffeId::parse("spiffe://fetch.test/ns/web/sa/server").unwrap();
    let issued = ca
        .issue_with_dns(&id, Duration::from_secs(3600), &["localhost".to_owned()])
        .unwrap();
    let certs = portcullis::identity::certs_from_pem(issued.cert_pem.as_bytes()).unwrap();
    let key = portcullis::identity::private_key_from_pem(issued.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    Arc::new(config)
}

/// Request heads the server received.
type Seen = Arc<Mutex<Vec<String>>>;

/// Answers every connection with `reply` (raw HTTP/1.1 bytes; `None`: never
/// answers), over TLS when `tls` is given.
async fn server(
    tls: Option<Arc<rustls::ServerConfig>>,
    reply: Option<Vec<u8>>,
) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (tls, reply, log) = (tls.clone(), reply.clone(), log.clone());
            tokio::spawn(async move {
                match tls {
                    Some(cfg) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                        if let Ok(stream) = acceptor.accept(tcp).await {
                            answer(stream, reply, log).await;
                        }
                    }
                    None => answer(tcp, reply, log).await,
                }
            });
        }
    });
    (addr, seen)
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, reply: Option<Vec<u8>>, seen: Seen) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    seen.lock()
        .unwrap()
        .push(String::from_utf8_lossy(&head).into_owned());
    match reply {
        Some(r) => {
            let _ = s.write_all(&r).await;
            let _ = s.shutdown().await;
        }
        None => std::future::pending::<()>().await,
    }
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\netag: \"v1\"\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn get(url: &str, ca: Option<&std::path::Path>) -> Result<Fetched, FetchError> {
    FetchClient::new(url, ca, MIB, T)?.get("*/*", None).await
}

fn body_of(r: Result<Fetched, FetchError>) -> String {
    match r {
        Ok(Fetched::Body { body, .. }) => String::from_utf8(body.to_vec()).unwrap(),
        other => panic!("expected a body, got {other:?}"),
    }
}

#[tokio::test]
async fn a_configured_ca_replaces_the_system_roots() {
    let pki = &*PKI;
    let (sys_addr, _) = server(Some(server_tls(&pki.system)), Some(ok("system"))).await;
    let (own_addr, _) = server(Some(server_tls(&pki.own)), Some(ok("own"))).await;
    let sys_url = format!("https://localhost:{}/doc", sys_addr.port());
    let own_url = format!("https://localhost:{}/doc", own_addr.port());

    // No `ca`: the system roots, and only them.
    assert_eq!(body_of(get(&sys_url, None).await), "system");
    let err = get(&own_url, None).await.unwrap_err();
    assert!(matches!(err, FetchError::Tls(_)), "{err}");

    // A `ca`: only servers chaining to it, even one the system roots would trust.
    let ca = Some(pki.own_pem.as_path());
    assert_eq!(body_of(get(&own_url, ca).await), "own");
    let err = get(&sys_url, ca).await.unwrap_err();
    assert!(matches!(err, FetchError::Tls(_)), "{err}");
    assert!(err.to_string().starts_with("TLS: "), "{err}");
}

#[tokio::test]
async fn redirects_and_other_statuses_are_errors() {
    let redirect = b"HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:1/elsewhere\r\ncontent-length: 0\r\n\r\n";
    let (addr, seen) = server(None, Some(redirect.to_vec())).await;
    let err = get(&format!("http://127.0.0.1:{}/doc", addr.port()), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::Status(s) if s.as_u16() == 302),
        "{err}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1, "the redirect was followed");

    let missing = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
    let (addr, _) = server(None, Some(missing.to_vec())).await;
    let err = get(&format!("http://127.0.0.1:{}/doc", addr.port()), None)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "HTTP status 404 Not Found");
}

#[tokio::test]
async fn bodies_are_bounded() {
    let limit = 64u64;
    let fetch = |addr: SocketAddr| async move {
        FetchClient::new(
            &format!("http://localhost:{}/b", addr.port()),
            None,
            limit,
            T,
        )
        .unwrap()
        .get("*/*", None)
        .await
    };
    // Exactly the limit passes.
    let (addr, _) = server(None, Some(ok(&"x".repeat(64)))).await;
    assert_eq!(body_of(fetch(addr).await).len(), 64);
    // A larger Content-Length is refused before the body is read.
    let (addr, _) = server(None, Some(ok(&"x".repeat(65)))).await;
    let err = fetch(addr).await.unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::TooLarge {
                announced: Some(65),
                limit: 64
            }
        ),
        "{err}"
    );
    // A chunked body (no length announced) is cut at the limit.
    let chunked = format!(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n40\r\n{}\r\n40\r\n{}\r\n0\r\n\r\n",
        "y".repeat(64),
        "y".repeat(64)
    );
    let (addr, _) = server(None, Some(chunked.into_bytes())).await;
    let err = fetch(addr).await.unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::TooLarge {
                announced: None,
                limit: 64
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn revalidation_sends_the_tag_and_reads_not_modified() {
    let (addr, seen) = server(
        None,
        Some(b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\n\r\n".to_vec()),
    )
    .await;
    let client = FetchClient::new(
        &format!("http://127.0.0.1:{}/b.tar.gz", addr.port()),
        None,
        MIB,
        T,
    )
    .unwrap();
    let got = client
        .get("application/gzip", Some("\"v1\""))
        .await
        .unwrap();
    assert!(matches!(got, Fetched::NotModified), "{got:?}");
    let head = seen.lock().unwrap()[0].to_ascii_lowercase();
    assert!(head.starts_with("get /b.tar.gz http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nif-none-match: \"v1\"\r\n"), "{head}");
    assert!(head.contains("\r\naccept: application/gzip\r\n"), "{head}");
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let (addr, _) = server(None, None).await;
    let client = FetchClient::new(
        &format!("http://127.0.0.1:{}/doc", addr.port()),
        None,
        MIB,
        Duration::from_millis(200),
    )
    .unwrap();
    let err = client.get("*/*", None).await.unwrap_err();
    assert!(matches!(err, FetchError::Timeout(_)), "{err}");
}
