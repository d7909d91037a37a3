//! Downloading a bundle from a bundle server with the shared client
//! ([`crate::fetch`]): `If-None-Match` with the last ETag, the download size
//! bounded; a configured `policy.bundle.ca` replaces the system roots.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;

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

/// Downloads a bundle with the shared client ([`crate::fetch`]).
#[derive(Clone, Debug)]
pub struct BundleClient {
    url: String,
    client: crate::fetch::FetchClient,
}

impl BundleClient {
    /// A client for `url` (`https://`, or `http://` to a loopback host). HTTPS
    /// trusts the PEM certificates in `ca` instead of the system roots when given.
    pub fn new(
        url: &str,
        ca: Option<&Path>,
        limits: BundleLimits,
        timeout: Duration,
    ) -> Result<BundleClient, BundleError> {
        let client = crate::fetch::FetchClient::new(url, ca, limits.max_download, timeout)
            .map_err(|e| BundleError::Client(e.to_string()))?;
        Ok(BundleClient {
            url: url.to_string(),
            client,
        })
    }

    /// The bundle URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Fetches the bundle, sending `If-None-Match: etag` when given.
    pub async fn fetch(&self, etag: Option<&str>) -> Result<Fetched, BundleError> {
        use crate::fetch::{FetchError, Fetched as Got};
        match self.client.get("application/gzip, */*", etag).await {
            Ok(Got::NotModified) => Ok(Fetched::NotModified),
            Ok(Got::Body { headers, body }) => Ok(Fetched::Bundle {
                body,
                etag: headers
                    .get(http::header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            }),
            Err(FetchError::Status(status)) => Err(BundleError::Status {
                url: self.url.clone(),
                status: status.as_u16(),
            }),
            Err(e @ FetchError::TooLarge { .. }) => Err(BundleError::TooLarge(e.to_string())),
            Err(e) => Err(BundleError::Fetch {
                url: self.url.clone(),
                message: e.to_string(),
            }),
        }
    }
}
