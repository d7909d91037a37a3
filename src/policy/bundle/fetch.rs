//! Downloading a bundle from a bundle server: one HTTP/1.1 request per poll
//! (plain HTTP only to a loopback host, otherwise rustls trusting the system
//! roots plus `policy.bundle.ca`), `If-None-Match` with the last ETag, and the
//! download size bounded.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

use super::error::{BundleError, BundleLimits};

/// What one poll of the bundle server found.
#[derive(Debug)]
pub enum Fetched {
    /// `304 Not Modified`: the ETag still matches.
    NotModified,
    /// A bundle body and its ETag.
    Bundle {
        /// The compressed bundle.
        body: Bytes,
        /// The response's `ETag`, if any.
        etag: Option<String>,
    },
}

/// Downloads a bundle over HTTP/1.1 (plain or rustls TLS), one connection per fetch.
#[derive(Clone)]
pub struct BundleClient {
    url: String,
    uri: http::Uri,
    host: String,
    port: u16,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    limits: BundleLimits,
    timeout: Duration,
}

impl std::fmt::Debug for BundleClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleClient")
            .field("url", &self.url)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl BundleClient {
    /// A client for `url` (`http://` or `https://`). HTTPS trusts the system
    /// roots plus the PEM certificates in `ca`.
    pub fn new(
        url: &str,
        ca: Option<&Path>,
        limits: BundleLimits,
        timeout: Duration,
    ) -> Result<BundleClient, BundleError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| BundleError::Client(format!("invalid URL {url:?}: {e}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(BundleError::Client(format!(
                    "{url:?}: only http:// and https:// are supported"
                )))
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| BundleError::Client(format!("{url:?} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        // Bundles are not signed: whoever can change one in transit writes the policy.
        if !https && !crate::authn::jwks::is_loopback(&host) {
            return Err(BundleError::Client(format!(
                "{url:?}: plain http:// is only allowed to a loopback host; use https://"
            )));
        }
        let tls = if https {
            let config = tls_config(ca)?;
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|e| BundleError::Client(format!("server name {host:?}: {e}")))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(BundleClient {
            url: url.to_string(),
            uri,
            host,
            port,
            tls,
            limits,
            timeout,
        })
    }

    /// The bundle URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Fetches the bundle, sending `If-None-Match: etag` when given.
    pub async fn fetch(&self, etag: Option<&str>) -> Result<Fetched, BundleError> {
        match tokio::time::timeout(self.timeout, self.fetch_inner(etag)).await {
            Ok(r) => r,
            Err(_) => Err(self.fail(format!("timed out after {:?}", self.timeout))),
        }
    }

    fn fail(&self, message: impl Into<String>) -> BundleError {
        BundleError::Fetch {
            url: self.url.clone(),
            message: message.into(),
        }
    }

    async fn fetch_inner(&self, etag: Option<&str>) -> Result<Fetched, BundleError> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| self.fail(format!("connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let path = self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let authority = self
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_else(|| self.host.clone());
        let mut req = http::Request::builder()
            .method(http::Method::GET)
            .uri(path)
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/gzip, */*")
            .header(
                http::header::USER_AGENT,
                concat!("portcullis/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(tag) = etag {
            req = req.header(http::header::IF_NONE_MATCH, tag);
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| self.fail(e.to_string()))?;
        let resp = match &self.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| self.fail(format!("TLS: {e}")))?;
                self.send(TokioIo::new(tls), req).await?
            }
            None => self.send(TokioIo::new(tcp), req).await?,
        };
        Ok(resp)
    }

    async fn send<T>(&self, io: T, req: http::Request<Empty<Bytes>>) -> Result<Fetched, BundleError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| self.fail(format!("HTTP: {e}")))?;
        let conn = tokio::spawn(conn);
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.fail(format!("HTTP: {e}")))?;
        let status = resp.status();
        let result = if status == http::StatusCode::NOT_MODIFIED {
            Ok(Fetched::NotModified)
        } else if status != http::StatusCode::OK {
            Err(BundleError::Status {
                url: self.url.clone(),
                status: status.as_u16(),
            })
        } else {
            let etag = resp
                .headers()
                .get(http::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let declared = resp
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > self.limits.max_download) {
                return Err(BundleError::TooLarge(format!(
                    "the server announces {} bytes, the limit is {}",
                    declared.unwrap_or_default(),
                    self.limits.max_download
                )));
            }
            let limit = usize::try_from(self.limits.max_download).unwrap_or(usize::MAX);
            let body = Limited::new(resp.into_body(), limit)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        BundleError::TooLarge(format!(
                            "download exceeds {} bytes",
                            self.limits.max_download
                        ))
                    } else {
                        self.fail(format!("reading the body: {e}"))
                    }
                })?
                .to_bytes();
            Ok(Fetched::Bundle { body, etag })
        };
        conn.abort();
        result
    }
}

fn tls_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, BundleError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "loading a system root certificate failed");
    }
    let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca {
        let pem = std::fs::read(path).map_err(|source| BundleError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let certs = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| BundleError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        if certs.is_empty() {
            return Err(BundleError::Client(format!(
                "{}: no PEM certificates",
                path.display()
            )));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| BundleError::Client(format!("{}: {e}", path.display())))?;
        }
    }
    if roots.is_empty() {
        return Err(BundleError::Client(
            "no trusted root certificates (system store empty and no policy.bundle.ca)".to_string(),
        ));
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(crate::identity::source::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| BundleError::Client(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
