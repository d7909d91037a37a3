//! What bounds a bundle ([`BundleLimits`]) and why one is refused ([`BundleError`]).

use std::path::PathBuf;

use crate::policy::options::PolicyError;

/// Size limits applied while downloading and unpacking a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleLimits {
    /// Largest compressed bundle accepted (default 32 MiB).
    pub max_download: u64,
    /// Largest total unpacked size, tar headers included (default 128 MiB).
    pub max_unpacked: u64,
    /// Most entries in the archive (default 10 000).
    pub max_entries: usize,
}

impl Default for BundleLimits {
    fn default() -> Self {
        BundleLimits {
            max_download: 32 << 20,
            max_unpacked: 128 << 20,
            max_entries: 10_000,
        }
    }
}

/// Why a bundle could not be fetched, unpacked or activated.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Reading a bundle directory or a CA file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The archive is not a valid gzip-compressed tar file.
    #[error("invalid bundle archive: {0}")]
    Archive(String),
    /// A size or count limit was exceeded.
    #[error("bundle too large: {0}")]
    TooLarge(String),
    /// An entry's path is unsafe (`..`, a link, a duplicate, not UTF-8).
    #[error("unsafe bundle entry {path:?}: {why}")]
    UnsafeEntry {
        /// The path as found in the archive.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// `.manifest` is not valid.
    #[error(".manifest: {0}")]
    Manifest(String),
    /// A data file is invalid or conflicts with another.
    #[error("{path}: {message}")]
    Data {
        /// The data file inside the bundle.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A package or data path lies outside the manifest's roots.
    #[error("{0}")]
    Roots(String),
    /// A module does not parse or the set does not compile.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The bundle URL or TLS setup is invalid.
    #[error("bundle client: {0}")]
    Client(String),
    /// Connecting, TLS or HTTP failed.
    #[error("fetching {url}: {message}")]
    Fetch {
        /// The bundle URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The server answered with an unexpected status.
    #[error("fetching {url}: HTTP status {status}")]
    Status {
        /// The bundle URL.
        url: String,
        /// The status code.
        status: u16,
    },
}
