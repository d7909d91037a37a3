use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use super::*;

/// A real socket that counts the writes that sent something.
struct Counted {
    inner: TcpStream,
    writes: Arc<AtomicUsize>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl Counted {
    fn count(&self, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = &r {
            if *n > 0 {
                self.writes.fetch_add(1, Ordering::SeqCst);
            }
        }
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.count(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count(r)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

struct Pki {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

fn pki() -> Pki {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    Pki {
        cert: CertificateDer::from(cert.der().to_vec()),
        key: PrivateKeyDer::Pkcs8(signing_key.serialize_der().into()),
    }
}

fn server(pki: &Pki, client_auth: bool) -> TlsAcceptor {
    let provider = crate::identity::crypto_provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if client_auth {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.cert.clone()).unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder
        .with_single_cert(vec![pki.cert.clone()], pki.key.clone_key())
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

fn client(pki: &Pki, versions: &[&'static rustls::SupportedProtocolVersion]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.cert.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(crate::identity::crypto_provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn listen() -> (TcpListener, std::net::SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

async fn connect(
    connector: &TlsConnector,
    addr: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// One connection: the client sends `ping`, the server answers `pong`. Returns the
/// server's writes and the client's handshake kind.
async fn ping_pong(
    acceptor: TlsAcceptor,
    connector: TlsConnector,
) -> (usize, rustls::HandshakeKind) {
    let (listener, addr) = listen().await;
    let client = tokio::spawn(async move {
        let mut tls = connect(&connector, addr).await;
        tls.write_all(b"ping").await.unwrap();
        let mut answer = [0u8; 4];
        tls.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"pong");
        tls.get_ref().1.handshake_kind().unwrap()
    });
    let (tcp, _) = listener.accept().await.unwrap();
    let writes = Arc::new(AtomicUsize::new(0));
    let counted = Counted {
        inner: tcp,
        writes: writes.clone(),
    };
    let serve = async {
        let mut tls = accept(acceptor, counted).await.unwrap();
        let mut got = [0u8; 4];
        tls.read_exact(&mut got).await.unwrap();
        // As hyper does after reading a request.
        tls.flush().await.unwrap();
        tls.write_all(b"pong").await.unwrap();
        tls.flush().await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(10), serve)
        .await
        .expect("the server got its ping");
    let kind = tokio::time::timeout(Duration::from_secs(10), client)
        .await
        .unwrap()
        .unwrap();
    (writes.load(Ordering::SeqCst), kind)
}

#[tokio::test]
async fn tls13_tickets_ride_with_the_first_reply_and_still_resume() {
    let pki = pki();
    let acceptor = server(&pki, false);
    let connector = client(&pki, &[&rustls::version::TLS13]);
    // The server's flight, then the tickets and `pong` in one write (three without
    // coalescing: flight, tickets, reply).
    let (writes, kind) = ping_pong(acceptor.clone(), connector.clone()).await;
    assert_eq!(kind, rustls::HandshakeKind::Full);
    assert_eq!(writes, 2);
    // The tickets arrived: the next connection resumes, and coalesces the same way.
    let (writes, kind) = ping_pong(acceptor, connector).await;
    assert_eq!(kind, rustls::HandshakeKind::Resumed);
    assert_eq!(writes, 2);
}

#[tokio::test]
async fn tls12_sends_the_servers_finished_at_once() {
    // TLS 1.2 ends with the server's Finished, which the client waits for before
    // it sends `ping`: held back, both sides would wait for each other.
    let pki = pki();
    let connector = client(&pki, &[&rustls::version::TLS12]);
    let (writes, kind) = ping_pong(server(&pki, false), connector).await;
    assert_eq!(kind, rustls::HandshakeKind::Full);
    // The first flight, the Finished flight, then `pong`.
    assert_eq!(writes, 3);
}

#[tokio::test]
async fn a_refused_client_still_gets_the_alert() {
    let pki = pki();
    let acceptor = server(&pki, true);
    let connector = client(&pki, &[&rustls::version::TLS13]);
    let (listener, addr) = listen().await;
    let client = tokio::spawn(async move {
        // TLS 1.3: the client's side of the handshake completes before the server
        // has seen that no certificate came; the refusal arrives on the next read.
        let mut tls = connect(&connector, addr).await;
        let mut buf = [0u8; 1];
        tls.read(&mut buf).await.unwrap_err()
    });
    let (tcp, _) = listener.accept().await.unwrap();
    assert!(accept(acceptor, tcp).await.is_err());
    let err = tokio::time::timeout(Duration::from_secs(10), client)
        .await
        .unwrap()
        .unwrap();
    let tls_err = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .cloned();
    assert_eq!(
        tls_err,
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRequired
        )),
        "{err}"
    );
}

#[tokio::test]
async fn a_handshake_in_turns_completes_and_the_stream_carries_data() {
    // Turns are on unless the environment switches them off.
    if std::env::var_os(ENV_SWITCH).is_none() {
        assert!(turns().is_some());
    }
    let pki = pki();
    let connector = client(&pki, &[&rustls::version::TLS13]);
    let (_, kind) = ping_pong(server(&pki, false), connector).await;
    assert_eq!(kind, rustls::HandshakeKind::Full);
}

#[tokio::test]
async fn a_client_that_is_not_tls_fails_the_handshake() {
    let acceptor = server(&pki(), false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut sink = Vec::new();
        let _ = tcp.read_to_end(&mut sink).await;
    });
    let (tcp, _) = listener.accept().await.unwrap();
    let err = accept(acceptor, tcp).await.unwrap_err();
    // The rustls error is kept, so failures are still counted by reason.
    let tls = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    assert!(tls.is_some(), "{err}");
    client.await.unwrap();
}

/// Always ready, like a task with a request to serve: wakes itself on every poll.
async fn busy_neighbour(ticks: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    std::future::poll_fn(|cx| {
        if stop.load(Ordering::Relaxed) {
            return Poll::Ready(());
        }
        ticks.fetch_add(1, Ordering::Relaxed);
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// A stand-in for a handshake: `steps` polls, each ready to run again at once,
/// each noting how far the neighbour had got.
async fn stepper(steps: u32, ticks: Arc<AtomicU64>, seen: Arc<Mutex<Vec<u64>>>) {
    let mut left = steps;
    std::future::poll_fn(|cx| {
        seen.lock().unwrap().push(ticks.load(Ordering::Relaxed));
        if left == 0 {
            return Poll::Ready(());
        }
        left -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

async fn burst(turns: bool) -> Vec<u64> {
    let ticks = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let neighbour = tokio::spawn(busy_neighbour(ticks.clone(), stop.clone()));
    let sem = Arc::new(Semaphore::new(1));
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let step = stepper(3, ticks.clone(), seen.clone());
            if turns {
                tokio::spawn(Turns::new(sem.clone(), Box::pin(step)))
            } else {
                tokio::spawn(Box::pin(step))
            }
        })
        .collect();
    for h in burst {
        h.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    neighbour.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 20 * 4);
    seen
}

#[tokio::test(flavor = "current_thread")]
async fn a_burst_of_handshakes_takes_one_step_per_turn() {
    // With turns, the ready neighbour runs between any two handshake steps.
    let seen = burst(true).await;
    assert!(seen.windows(2).all(|w| w[1] > w[0]), "{seen:?}");
    // Without them, the burst's steps run back to back (the test's own control).
    let seen = burst(false).await;
    assert!(seen.windows(2).any(|w| w[1] == w[0]), "{seen:?}");
}
