//! The one HTTP(S) client for what the sidecar downloads: JWKS documents
//! (`jwt.providers[].jwks.url`) and policy bundles (`policy.bundle.url`,
//! `policy.shadow.bundle.url`).
//!
//! One GET per fetch over a fresh HTTP/1.1 connection (fetches are seconds to
//! minutes apart), rustls with the process's crypto provider. The rules are the
//! same for every download:
//!
//! - Trust: a configured `ca` PEM file **replaces** the system roots (only servers
//!   chaining to it are trusted); without one, the system roots
//!   (`rustls-native-certs`, which honours `SSL_CERT_FILE`).
//! - Plain `http://` only to a loopback host (nothing downloaded is signed in
//!   transit); `ca` needs `https://`.
//! - Any status but `200` (and `304` when revalidating) is an error: redirects are
//!   not followed.
//! - The body is bounded (a larger `Content-Length` is refused before reading), and
//!   the whole fetch (connect, TLS, request, body) has one deadline.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::identity::tls::crypto_provider;

/// Why a download failed or its client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is unusable: scheme, host, plain HTTP to a remote host, `ca` without TLS.
    #[error("{0}")]
    Url(String),
    /// The `ca` file could not be read or holds no certificate.
    #[error("{0}")]
    Trust(String),
    /// The TCP connection failed.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The TLS handshake failed (an untrusted server among others).
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    /// The HTTP exchange or reading the body failed.
    #[error("HTTP: {0}")]
    Http(String),
    /// A status other than `200` (or `304` to a revalidation).
    #[error("HTTP status {0}")]
    Status(StatusCode),
    /// The body is, or is announced to be, larger than the limit.
    #[error("{}", too_large(*.announced, *.limit))]
    TooLarge {
        /// The `Content-Length`, when the server announced a larger body.
        announced: Option<u64>,
        /// The limit in bytes.
        limit: u64,
    },
    /// The fetch did not finish in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

fn too_large(announced: Option<u64>, limit: u64) -> String {
    match announced {
        Some(n) => format!("the server announces {n} bytes, the limit is {limit}"),
        None => format!("download exceeds {limit} bytes"),
    }
}

/// What a successful GET returned.
#[derive(Debug)]
pub enum Fetched {
    /// `304 Not Modified`: the `If-None-Match` tag still matches.
    NotModified,
    /// `200 OK`: the response headers and the whole body.
    Body {
        /// The response headers (`ETag`, `Cache-Control`, ...).
        headers: HeaderMap,
        /// The body, at most the client's limit.
        body: Bytes,
    },
}

/// A GET client for one URL.
#[derive(Clone)]
pub struct FetchClient {
    host: String,
    port: u16,
    authority: String,
    path: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    max_bytes: u64,
    timeout: Duration,
}

impl std::fmt::Debug for FetchClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchClient")
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl FetchClient {
    /// A client for `url` (`https://`, or `http://` to a loopback host) trusting the
    /// PEM file `ca` instead of the system roots when given; bodies up to
    /// `max_bytes`, each fetch done within `timeout`.
    pub fn new(
        url: &str,
        ca: Option<&Path>,
        max_bytes: u64,
        timeout: Duration,
    ) -> Result<FetchClient, FetchError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| FetchError::Url(format!("invalid URL {url:?}: {e}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(FetchError::Url(format!(
                    "{url:?}: the scheme must be https:// (or http:// to a loopback host)"
                )))
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| FetchError::Url(format!("{url:?} has no host")))?;
        let host = authority.host().trim_matches(['[', ']']).to_owned();
        if host.is_empty() {
            return Err(FetchError::Url(format!("{url:?} has no host")));
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let name = ServerName::try_from(host.clone())
                .map_err(|e| FetchError::Url(format!("server name {host:?}: {e}")))?;
            Some((TlsConnector::from(Arc::new(client_config(ca)?)), name))
        } else if !is_loopback(&host) {
            return Err(FetchError::Url(format!(
                "{url:?}: plain http:// is only allowed to a loopback host; use https://"
            )));
        } else if ca.is_some() {
            return Err(FetchError::Url(format!(
                "{url:?}: `ca` needs an https:// URL"
            )));
        } else {
            None
        };
        Ok(FetchClient {
            host,
            port,
            authority: authority.as_str().to_owned(),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            tls,
            max_bytes,
            timeout,
        })
    }

    /// GETs the URL with `Accept: accept`, revalidating with `If-None-Match` when
    /// `etag` is given.
    pub async fn get(&self, accept: &str, etag: Option<&str>) -> Result<Fetched, FetchError> {
        let mut req = Request::get(self.path.as_str())
            .header(header::HOST, self.authority.as_str())
            .header(header::ACCEPT, accept)
            .header(
                header::USER_AGENT,
                concat!("portcullis/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(tag) = etag {
            req = req.header(header::IF_NONE_MATCH, tag);
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Http(e.to_string()))?;
        tokio::time::timeout(self.timeout, self.exchange(req))
            .await
            .map_err(|_| FetchError::Timeout(self.timeout))?
    }

    async fn exchange(&self, req: Request<Empty<Bytes>>) -> Result<Fetched, FetchError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(FetchError::Connect)?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(FetchError::Tls)?;
                self.send(TokioIo::new(tls), req).await
            }
            None => self.send(TokioIo::new(tcp), req).await,
        }
    }

    async fn send<T>(&self, io: T, req: Request<Empty<Bytes>>) -> Result<Fetched, FetchError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let http = |e: hyper::Error| FetchError::Http(e.to_string());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(http)?;
        let conn = tokio::spawn(conn);
        let result = match sender.send_request(req).await {
            Ok(resp) => self.read(resp).await,
            Err(e) => Err(http(e)),
        };
        conn.abort();
        result
    }

    async fn read(
        &self,
        resp: http::Response<hyper::body::Incoming>,
    ) -> Result<Fetched, FetchError> {
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_MODIFIED => return Ok(Fetched::NotModified),
            status => return Err(FetchError::Status(status)),
        }
        let announced = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > self.max_bytes) {
            return Err(FetchError::TooLarge {
                announced,
                limit: self.max_bytes,
            });
        }
        let (parts, body) = resp.into_parts();
        let limit = usize::try_from(self.max_bytes).unwrap_or(usize::MAX);
        let body = Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    FetchError::TooLarge {
                        announced: None,
                        limit: self.max_bytes,
                    }
                } else {
                    FetchError::Http(format!("reading the body: {e}"))
                }
            })?
            .to_bytes();
        Ok(Fetched::Body {
            headers: parts.headers,
            body,
        })
    }
}

/// `localhost` or a loopback address: where plain `http://` may go (the traffic
/// never leaves the pod).
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The TLS client configuration: the roots of `ca` alone when given, else the
/// system's; HTTP/1.1 over ALPN.
fn client_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, FetchError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| FetchError::Trust(format!("cannot read {}: {e}", path.display())))?;
            let certs = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| FetchError::Trust(format!("{}: {e}", path.display())))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(FetchError::Trust(format!(
                    "{}: no CA certificate found",
                    path.display()
                )));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::debug!(error = %e, "system CA certificates: partly unreadable");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "no system CA certificates found: https:// downloads fail unless `ca` is set"
                );
            }
        }
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Trust(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const T: Duration = Duration::from_secs(5);

    #[test]
    fn urls() {
        assert!(FetchClient::new("http://127.0.0.1:1/jwks", None, MIB, T).is_ok());
        assert!(FetchClient::new("http://localhost/jwks", None, MIB, T).is_ok());
        assert!(FetchClient::new("http://[::1]:8080/b.tar.gz", None, MIB, T).is_ok());
        assert!(FetchClient::new("https://idp.example/jwks", None, MIB, T).is_ok());
        for bad in [
            "http://idp.example/jwks",
            "http://10.0.0.1/jwks",
            "ftp://idp.example/jwks",
            "/relative",
            "https:///no-host",
        ] {
            assert!(
                matches!(FetchClient::new(bad, None, MIB, T), Err(FetchError::Url(_))),
                "{bad}"
            );
        }
        let ca = Path::new("/nonexistent/ca.pem");
        assert!(matches!(
            FetchClient::new("http://127.0.0.1/jwks", Some(ca), MIB, T),
            Err(FetchError::Url(_))
        ));
        assert!(matches!(
            FetchClient::new("https://127.0.0.1/jwks", Some(ca), MIB, T),
            Err(FetchError::Trust(_))
        ));
    }

    #[test]
    fn loopback_hosts() {
        for h in ["localhost", "LOCALHOST", "127.0.0.1", "127.8.9.10", "::1"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["localhost.example", "10.0.0.1", "::2", "0.0.0.0", ""] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
