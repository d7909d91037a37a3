//! Where inbound TLS handshakes run: on one thread of their own, at a lower CPU
//! priority than the workers that serve requests.
//!
//! A full mTLS handshake costs the server a key exchange, a signature and the
//! verification of the client's chain: a few hundred microseconds of CPU that,
//! on a worker, delay every request queued behind it. A burst of new connections
//! (a peer restarting, a scale-up) would then add its whole crypto bill to the
//! latency of the established connections. Here the handshake future runs on a
//! single-threaded runtime on the `portcullis-tls` thread, niced by
//! [`NICE_INCREMENT`]: the kernel gives the request workers the CPU first and the
//! handshakes what is left. The thread is one, so a storm of handshakes queues
//! there (each bounded by the caller's timeout and the connection limit) instead
//! of occupying every worker.
//!
//! The socket stays registered with the main runtime's I/O driver; only the task
//! that polls it moves. If the thread cannot be started, or the environment sets
//! `PORTCULLIS_HANDSHAKE_THREAD=off` (for side-by-side measurements), the handshake
//! runs on the worker that accepted the connection.

use std::future::Future;
use std::io;
use std::sync::OnceLock;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Name of the handshake thread (visible in `top -H`, `/proc/<pid>/task/*/comm`).
pub const THREAD_NAME: &str = "portcullis-tls";

/// How much lower than the workers the handshake thread is scheduled (a nice value
/// of 10 weighs about a tenth of nice 0 under the Linux scheduler).
pub const NICE_INCREMENT: libc::c_int = 10;

static POOL: OnceLock<Option<Handle>> = OnceLock::new();

/// The handshake runtime, started on first use; `None` if it could not start.
fn pool() -> Option<&'static Handle> {
    POOL.get_or_init(start).as_ref()
}

/// The environment variable that keeps handshakes on the workers when set to `off`.
pub const ENV_SWITCH: &str = "PORTCULLIS_HANDSHAKE_THREAD";

fn start() -> Option<Handle> {
    if std::env::var_os(ENV_SWITCH).is_some_and(|v| v == "off") {
        tracing::info!("{ENV_SWITCH}=off: TLS handshakes run on the workers");
        return None;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(error = %e, "no handshake thread; TLS handshakes run on the workers");
            return None;
        }
    };
    let handle = rt.handle().clone();
    let spawned = std::thread::Builder::new()
        .name(THREAD_NAME.to_owned())
        // Handshake state lives in the task, not on this stack.
        .stack_size(256 * 1024)
        .spawn(move || {
            lower_priority();
            rt.block_on(std::future::pending::<()>());
        });
    match spawned {
        Ok(_) => Some(handle),
        Err(e) => {
            tracing::warn!(error = %e, "no handshake thread; TLS handshakes run on the workers");
            None
        }
    }
}

/// Lowers the calling thread's priority. On Linux `setpriority(PRIO_PROCESS, tid)`
/// applies to that one thread; raising the nice value needs no privilege.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid takes no arguments and cannot fail.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) };
        let Ok(tid) = libc::id_t::try_from(tid) else {
            return;
        };
        // SAFETY: getpriority/setpriority read and write one thread's nice value.
        let rc = unsafe {
            let current = libc::getpriority(libc::PRIO_PROCESS, tid);
            libc::setpriority(
                libc::PRIO_PROCESS,
                tid,
                current.saturating_add(NICE_INCREMENT).min(19),
            )
        };
        if rc != 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "handshake thread keeps the workers' priority");
        }
    }
}

/// Aborts the task when the caller stops waiting (its timeout fired, or the
/// listener is shutting down), so an abandoned handshake does not run on.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `fut` on the handshake thread (or here, without one) and returns its output.
async fn off_worker<F, T>(fut: F) -> io::Result<T>
where
    F: Future<Output = io::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let Some(pool) = pool() else {
        return fut.await;
    };
    let mut task = AbortOnDrop(pool.spawn(fut));
    match (&mut task.0).await {
        Ok(r) => r,
        Err(e) => Err(io::Error::other(format!("TLS handshake task ended: {e}"))),
    }
}

/// The server side of a TLS handshake on `stream`, run on the handshake thread.
pub async fn accept(acceptor: TlsAcceptor, stream: TcpStream) -> io::Result<TlsStream<TcpStream>> {
    off_worker(async move { acceptor.accept(stream).await }).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::server::{ClientHello, ResolvesServerCert};
    use rustls::sign::CertifiedKey;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Presents one certificate and notes the thread each handshake ran on.
    #[derive(Debug)]
    struct RecordingCert {
        key: Arc<CertifiedKey>,
        threads: Mutex<Vec<Option<String>>>,
    }

    impl ResolvesServerCert for RecordingCert {
        fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            let name = std::thread::current().name().map(str::to_owned);
            self.threads.lock().unwrap().push(name);
            Some(self.key.clone())
        }
    }

    fn tls_pair() -> (Arc<RecordingCert>, TlsAcceptor, tokio_rustls::TlsConnector) {
        let provider = crate::identity::crypto_provider();
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let der = CertificateDer::from(cert.der().to_vec());
        let key = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(signing_key.serialize_der().into()))
            .unwrap();
        let resolver = Arc::new(RecordingCert {
            key: Arc::new(CertifiedKey::new(vec![der.clone()], key)),
            threads: Mutex::new(Vec::new()),
        });
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (
            resolver,
            TlsAcceptor::from(Arc::new(server)),
            tokio_rustls::TlsConnector::from(Arc::new(client)),
        )
    }

    #[tokio::test]
    async fn handshakes_run_on_the_handshake_thread_and_the_stream_carries_data() {
        let (resolver, acceptor, connector) = tls_pair();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut tls = connector.connect(name, tcp).await.unwrap();
            tls.write_all(b"ping").await.unwrap();
            let mut answer = [0u8; 4];
            tls.read_exact(&mut answer).await.unwrap();
            answer
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = accept(acceptor, tcp).await.unwrap();
        // The stream works from this (the caller's) runtime after the handshake.
        let mut got = [0u8; 4];
        tls.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        tls.write_all(b"pong").await.unwrap();
        assert_eq!(&client.await.unwrap(), b"pong");
        let threads = resolver.threads.lock().unwrap().clone();
        assert_eq!(threads, vec![Some(THREAD_NAME.to_owned())]);
    }

    #[tokio::test]
    async fn a_client_that_is_not_tls_fails_the_handshake() {
        let (resolver, acceptor, _) = tls_pair();
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
        // The rustls error survives the trip back from the handshake thread, so
        // failures are still counted by reason.
        let tls = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>());
        assert!(tls.is_some(), "{err}");
        assert!(resolver.threads.lock().unwrap().is_empty());
        client.await.unwrap();
    }

    #[test]
    fn the_handshake_thread_runs_below_the_callers_priority() {
        let pool = pool().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        pool.spawn(async move {
            // SAFETY: as in lower_priority.
            let nice = unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::getpriority(libc::PRIO_PROCESS, tid)
            };
            tx.send(nice).unwrap();
        });
        let handshake_nice = rx.recv().unwrap();
        // SAFETY: reads this thread's nice value.
        let mine = unsafe {
            libc::getpriority(
                libc::PRIO_PROCESS,
                libc::syscall(libc::SYS_gettid) as libc::id_t,
            )
        };
        assert!(
            handshake_nice > mine || mine == 19,
            "{handshake_nice} vs {mine}"
        );
    }
}
