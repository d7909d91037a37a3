//! Shared test fixtures: a development CA with SVIDs, a sidecar started in-process,
//! an echo app, and mTLS HTTP clients. Everything is real: rcgen certificates,
//! rustls handshakes, sockets on 127.0.0.1.
#![allow(dead_code)]
// Test fixtures may unwrap: a failure here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod mesh;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

use portcullis::config::{Config, FilesIdentity, IdentityConfig, MtlsMode};
use portcullis::identity::dev_ca::DevCa;
use portcullis::identity::tls::crypto_provider;
use portcullis::identity::{SpiffeId, TrustDomain};

/// Metrics are process-wide: tests that assert exact values of a shared series
/// (such as the one-hot `portcullis_policy_revision_info`) hold this lock.
pub static METRICS_SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub const TD: &str = "cluster.local";
pub const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/backend";
pub const FRONTEND: &str = "spiffe://cluster.local/ns/default/sa/frontend";
pub const REPORTING: &str = "spiffe://cluster.local/ns/default/sa/reporting";

/// A temporary directory with a CA and SVIDs written in csi-driver-spiffe layout.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: DevCa,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::parse(TD).unwrap();
        let ca = DevCa::init(&td, &dir.path().join("ca")).unwrap();
        let pki = Pki { dir, ca };
        pki.issue("server", SERVER_ID);
        pki
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Issues `id` into `<dir>/<name>/{tls.crt,tls.key,ca.crt}`, valid for an hour.
    pub fn issue(&self, name: &str, id: &str) -> PathBuf {
        self.issue_for(name, id, Duration::from_secs(3600)).0
    }

    /// [`Pki::issue`] valid for `ttl`; also returns when it expires.
    pub fn issue_for(&self, name: &str, id: &str, ttl: Duration) -> (PathBuf, SystemTime) {
        let out = self.path(name);
        let svid = self.ca.issue(&SpiffeId::parse(id).unwrap(), ttl).unwrap();
        svid.write(&out).unwrap();
        (out, svid.not_after)
    }

    /// `<name>`'s SVID, loaded.
    pub fn svid(&self, name: &str) -> portcullis::identity::svid::Svid {
        let dir = self.path(name);
        let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
        portcullis::identity::svid::Svid::from_pem(
            &portcullis::identity::svid::SvidPem {
                cert: &read("tls.crt"),
                key: &read("tls.key"),
                bundle: &read("ca.crt"),
                federated: &[],
            },
            &TrustDomain::parse(TD).unwrap(),
            &crypto_provider(),
        )
        .unwrap()
    }

    /// `<name>`'s files as a sidecar's identity source.
    pub fn files_identity(&self, name: &str) -> IdentityConfig {
        IdentityConfig::Files(FilesIdentity {
            cert: self.path(&format!("{name}/tls.crt")),
            key: self.path(&format!("{name}/tls.key")),
            bundle: self.path(&format!("{name}/ca.crt")),
            ..FilesIdentity::default()
        })
    }

    /// A rustls client config presenting `<name>`'s SVID and verifying the server as an SVID.
    pub fn client(&self, name: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let provider = crypto_provider();
        let svid = self.svid(name);
        let cfg = portcullis::identity::tls::client_config(
            &svid,
            &provider,
            portcullis::identity::verifier::PeerAuthorization::AnyTrusted,
            alpn,
        )
        .unwrap();
        Arc::new(cfg)
    }
}

/// Writes `files` (name, text) into a fresh policy directory under the PKI dir.
pub fn policy_dir(pki: &Pki, files: &[(&str, &str)]) -> PathBuf {
    let dir = pki.path("policies");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    dir
}

/// A configuration serving `app` with the PKI's server identity, on ephemeral ports.
pub fn config(pki: &Pki, policies: &Path, app: SocketAddr) -> Config {
    let mut cfg = Config {
        identity: pki.files_identity("server"),
        ..Config::default()
    };
    cfg.inbound.listen = "127.0.0.1:0".parse().unwrap();
    cfg.inbound.app = app;
    cfg.inbound.mtls = MtlsMode::Strict;
    cfg.admin.listen = "127.0.0.1:0".parse().unwrap();
    cfg.outbound.listen = "127.0.0.1:0".parse().unwrap();
    cfg.policy.dir = policies.to_owned();
    cfg.log.decisions = false;
    cfg
}

pub async fn start(cfg: Config) -> portcullis::run::Running {
    portcullis::run::start(cfg, Box::new(|_| Ok(())))
        .await
        .unwrap()
}

/// Starts the demo's echo app on an ephemeral port.
pub async fn echo_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(portcullis::demo::serve_echo(l));
    addr
}

/// A TCP app that answers every chunk it reads with `prefix` and the chunk.
pub async fn tcp_echo(prefix: &'static [u8]) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut out = prefix.to_vec();
                    out.extend_from_slice(&buf[..n]);
                    if s.write_all(&out).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Opens a plaintext HTTP/1.1 connection and returns its sender.
pub async fn plain_h1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// Opens an mTLS connection to the sidecar.
pub async fn tls_connect(
    cfg: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(
            rustls_pki_types::ServerName::try_from("backend").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

/// Opens an mTLS connection and returns an HTTP/1.1 sender.
pub async fn h1(
    cfg: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let tls = tls_connect(cfg, addr).await;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    sender
}

/// A simple request builder.
pub fn req(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "backend:8080");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

/// Sends one request over a fresh mTLS connection; returns the response and its body.
pub async fn call(
    cfg: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    r: Request<Full<Bytes>>,
) -> (Response<()>, String) {
    let mut s = h1(cfg, addr).await;
    let resp = s.send_request(r).await.unwrap();
    split(resp).await
}

pub async fn split(resp: Response<Incoming>) -> (Response<()>, String) {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        Response::from_parts(parts, ()),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// GETs a path on the admin listener.
pub async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let r = Request::builder()
        .uri(path)
        .header("host", "admin")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = s.send_request(r).await.unwrap();
    let (p, b) = split(resp).await;
    (p.status().as_u16(), b)
}

/// Sum of the samples of metric `name` whose labels include every `(key, value)`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let series = l.split(' ').next().unwrap_or("");
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn executor() -> TokioExecutor {
    TokioExecutor::new()
}
