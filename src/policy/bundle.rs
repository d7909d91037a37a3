//! OPA bundles: unpacking `.tar.gz` bundles (and bundle directories) and
//! polling a bundle server.
//!
//! A bundle holds `.rego` modules, `data.json` / `data.yaml` documents merged
//! at the path of their directory, and an optional `.manifest` with a
//! `revision` and `roots` (the `data` paths the bundle owns; every package and
//! data path must lie under one of them). Unpacking never touches the disk and
//! is bounded: the download size, the unpacked size and the number of entries
//! are limited, and entries with `..` components, links or duplicate paths are
//! rejected. `.signatures.json` is not verified (signed bundles are not supported).
//!
//! When `policy.bundle` is configured the bundle **replaces** the policy
//! directory, like OPA's bundle plugin: the store starts empty (requests are
//! denied with 503 and `/ready` fails) until the first bundle activates.
//! [`BundlePoller`] fetches the bundle every `poll` with `If-None-Match` (a
//! `304 Not Modified` costs nothing), builds the new revision on a blocking
//! thread and swaps it in atomically; a download, unpack or compile failure keeps
//! the last good bundle (log line and `portcullis_policy_reloads_total{result="error"}`).
//! The revision shown is the manifest's `revision` when present, otherwise the
//! content hash. Downloads go through the shared client ([`crate::fetch`]): a
//! configured `policy.bundle.ca` replaces the system roots.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::engine::{PolicyError, PolicyOptions, PolicySet};
use super::store::PolicyStore;

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

/// The `.manifest` of a bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Manifest {
    /// The bundle's revision (empty when not set).
    #[serde(default)]
    pub revision: String,
    /// The `data` paths (slash-separated) the bundle owns; `None` means all of `data`.
    #[serde(default)]
    pub roots: Option<Vec<String>>,
}

/// An unpacked bundle: modules, the merged data document and the manifest.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The manifest (default when the bundle has none).
    pub manifest: Manifest,
    /// `(path, text)` of every `.rego` module.
    pub modules: Vec<(String, String)>,
    /// The merged data document (an object).
    pub data: serde_json::Value,
}

impl Default for Bundle {
    fn default() -> Self {
        Bundle {
            manifest: Manifest::default(),
            modules: Vec::new(),
            data: serde_json::Value::Object(serde_json::Map::new()),
        }
    }
}

/// What a file inside a bundle is.
enum Kind {
    Manifest,
    Rego,
    Data,
    Other,
}

fn classify(segments: &[&str], include_tests: bool) -> Kind {
    let Some(name) = segments.last() else {
        return Kind::Other;
    };
    if segments.len() == 1 && *name == ".manifest" {
        return Kind::Manifest;
    }
    if name.ends_with(".rego") && (include_tests || !name.ends_with("_test.rego")) {
        return Kind::Rego;
    }
    if matches!(*name, "data.json" | "data.yaml" | "data.yml") {
        return Kind::Data;
    }
    Kind::Other
}

impl Bundle {
    /// Unpacks a `.tar.gz` bundle in memory, within `limits`. Test modules
    /// (`*_test.rego`) are left out, as when loading a policy directory.
    pub fn from_tar_gz(bytes: &[u8], limits: &BundleLimits) -> Result<Bundle, BundleError> {
        if bytes.len() as u64 > limits.max_download {
            return Err(BundleError::TooLarge(format!(
                "{} bytes compressed, the limit is {}",
                bytes.len(),
                limits.max_download
            )));
        }
        let counted = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let reader = Bounded {
            inner: flate2::read::GzDecoder::new(bytes),
            read: counted.clone(),
            limit: limits.max_unpacked,
        };
        let too_large =
            || BundleError::TooLarge(format!("more than {} bytes unpacked", limits.max_unpacked));
        let archive_err = |e: std::io::Error| {
            if counted.get() > limits.max_unpacked {
                too_large()
            } else {
                BundleError::Archive(e.to_string())
            }
        };
        let mut archive = tar::Archive::new(reader);
        let mut bundle = Bundle::default();
        let mut seen = std::collections::BTreeSet::new();
        let mut data_files = Vec::new();
        let mut count = 0usize;
        for entry in archive.entries().map_err(archive_err)? {
            let mut entry = entry.map_err(archive_err)?;
            count += 1;
            if count > limits.max_entries {
                return Err(BundleError::TooLarge(format!(
                    "more than {} entries",
                    limits.max_entries
                )));
            }
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let kind = entry.header().entry_type();
            match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => {}
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    return Err(BundleError::UnsafeEntry {
                        path: raw,
                        why: "links are not allowed",
                    })
                }
                // Directories, PAX global headers and the like carry no content.
                _ => continue,
            }
            let segments = safe_segments(&raw)?;
            let path = segments.join("/");
            if !seen.insert(path.clone()) {
                return Err(BundleError::UnsafeEntry {
                    path: raw,
                    why: "duplicate entry",
                });
            }
            let classified = classify(&segments, false);
            if matches!(classified, Kind::Other) {
                // Still read through the bounded reader by the archive; nothing kept.
                continue;
            }
            let size = entry.header().size().map_err(archive_err)?;
            if size > limits.max_unpacked {
                return Err(too_large());
            }
            let mut buf = Vec::with_capacity(usize::try_from(size.min(1 << 20)).unwrap_or(0));
            entry.read_to_end(&mut buf).map_err(archive_err)?;
            let text = String::from_utf8(buf).map_err(|_| BundleError::Data {
                path: path.clone(),
                message: "not UTF-8 text".to_string(),
            })?;
            match classified {
                Kind::Manifest => bundle.manifest = parse_manifest(&text)?,
                Kind::Rego => bundle.modules.push((path, text)),
                Kind::Data => {
                    let at: Vec<String> = segments[..segments.len() - 1]
                        .iter()
                        .map(|s| s.to_string())
                        .collect();
                    data_files.push((path, text, at));
                }
                Kind::Other => {}
            }
        }
        bundle.finish(data_files)?;
        Ok(bundle)
    }

    /// Reads a bundle directory (the unpacked layout, or a policy directory):
    /// `.rego` modules (with `*_test.rego` when `include_tests`), data files
    /// at their directory's path, and `.manifest` at the top. Hidden entries
    /// are skipped; links are followed. Module names are the paths as found
    /// under `dir`, so messages point at real files.
    pub fn from_dir(dir: &Path, include_tests: bool) -> Result<Bundle, BundleError> {
        let mut files = Vec::new();
        walk_dir(dir, &[], 0, &mut files)?;
        files.sort();
        let mut bundle = Bundle::default();
        let mut data_files = Vec::new();
        let manifest = dir.join(".manifest");
        if manifest.is_file() {
            let text = read_text(&manifest)?;
            bundle.manifest = parse_manifest(&text)?;
        }
        for (segments, path) in files {
            let refs: Vec<&str> = segments.iter().map(String::as_str).collect();
            match classify(&refs, include_tests) {
                Kind::Rego => bundle
                    .modules
                    .push((path.display().to_string(), read_text(&path)?)),
                Kind::Data => {
                    let at = segments[..segments.len() - 1].to_vec();
                    data_files.push((path.display().to_string(), read_text(&path)?, at));
                }
                Kind::Manifest | Kind::Other => {}
            }
        }
        bundle.finish(data_files)?;
        Ok(bundle)
    }

    /// Adds another bundle's modules and data (data deep-merged at the top;
    /// conflicting leaves are an error).
    pub fn merge(&mut self, other: Bundle) -> Result<(), BundleError> {
        self.modules.extend(other.modules);
        merge_at(&mut self.data, &[], other.data).map_err(|message| BundleError::Data {
            path: "<data>".to_string(),
            message,
        })
    }

    fn finish(
        &mut self,
        mut data_files: Vec<(String, String, Vec<String>)>,
    ) -> Result<(), BundleError> {
        data_files.sort();
        for (path, text, at) in data_files {
            let value = parse_data(&path, &text)?;
            merge_at(&mut self.data, &at, value)
                .map_err(|message| BundleError::Data { path, message })?;
        }
        self.modules.sort();
        self.check_roots()
    }

    /// The revision to show: the manifest's, if it has one.
    pub fn revision(&self) -> Option<&str> {
        Some(self.manifest.revision.as_str()).filter(|r| !r.is_empty())
    }

    /// Checks that every package and data path lies under the manifest's roots.
    fn check_roots(&self) -> Result<(), BundleError> {
        let Some(roots) = &self.manifest.roots else {
            return Ok(());
        };
        let roots: Vec<Vec<&str>> = roots
            .iter()
            .map(|r| r.split('/').filter(|s| !s.is_empty()).collect())
            .collect();
        for (name, text) in &self.modules {
            let package = package_of(name, text)?;
            let path: Vec<&str> = package.split('.').skip(1).collect();
            if !roots.iter().any(|r| path.starts_with(r)) {
                return Err(BundleError::Roots(format!(
                    "{name}: package {package} is outside the manifest roots {:?}",
                    self.manifest.roots.as_deref().unwrap_or_default()
                )));
            }
        }
        check_data_roots(&self.data, &mut Vec::new(), &roots).map_err(|path| {
            BundleError::Roots(format!(
                "data.{} is outside the manifest roots {:?}",
                path.join("."),
                self.manifest.roots.as_deref().unwrap_or_default()
            ))
        })
    }

    /// Compiles the bundle for `queries`. The revision is the manifest's
    /// revision if present, otherwise the content hash.
    pub fn build(
        self,
        queries: &[String],
        options: impl Into<PolicyOptions>,
    ) -> Result<PolicySet, BundleError> {
        let revision = self.revision().map(str::to_string);
        let set = PolicySet::from_sources(self.modules, self.data, queries, options)?;
        Ok(match revision {
            Some(r) => set.with_revision(r),
            None => set,
        })
    }
}

/// Reader that fails once more than `limit` bytes have come through.
struct Bounded<R> {
    inner: R,
    read: std::rc::Rc<std::cell::Cell<u64>>,
    limit: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let total = self.read.get().saturating_add(n as u64);
        self.read.set(total);
        if total > self.limit {
            return Err(std::io::Error::other("unpacked size limit exceeded"));
        }
        Ok(n)
    }
}

/// Splits an archive path into safe segments: a leading `/` or `./` is fine
/// (OPA writes `/data.json`), `..`, backslashes and NUL are not.
fn safe_segments(raw: &str) -> Result<Vec<&str>, BundleError> {
    let unsafe_entry = |why| BundleError::UnsafeEntry {
        path: raw.to_string(),
        why,
    };
    if raw.contains('\0') || raw.contains('\\') {
        return Err(unsafe_entry("invalid characters"));
    }
    let mut out = Vec::new();
    for seg in raw.split('/') {
        match seg {
            "" | "." => {}
            ".." => return Err(unsafe_entry("path traversal")),
            s => out.push(s),
        }
    }
    if out.is_empty() {
        return Err(unsafe_entry("empty path"));
    }
    Ok(out)
}

fn check_data_roots<'a>(
    value: &'a serde_json::Value,
    at: &mut Vec<&'a str>,
    roots: &[Vec<&str>],
) -> Result<(), Vec<String>> {
    if roots.iter().any(|r| at.starts_with(r)) {
        return Ok(());
    }
    // Not under a root: allowed only as an object on the way to one.
    let on_the_way = roots.iter().any(|r| r.starts_with(at));
    match value {
        serde_json::Value::Object(map) if on_the_way => {
            for (k, v) in map {
                at.push(k.as_str());
                check_data_roots(v, at, roots)?;
                at.pop();
            }
            Ok(())
        }
        _ => Err(at.iter().map(|s| s.to_string()).collect()),
    }
}

fn package_of(name: &str, text: &str) -> Result<String, BundleError> {
    let mut engine = super::parity::new_engine();
    engine
        .add_policy(name.to_string(), text.to_string())
        .map_err(|e| BundleError::Policy(rego_error(name, &e)))
}

/// Turns regorus' multi-line error into a [`PolicyError::Rego`] with `file:line:col`.
pub(crate) fn rego_error(fallback_location: &str, err: &anyhow::Error) -> PolicyError {
    let text = format!("{err}");
    let location = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("--> "))
        .map(str::to_string)
        .unwrap_or_else(|| fallback_location.to_string());
    let message = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .map(str::to_string)
        .unwrap_or_else(|| text.trim().to_string());
    PolicyError::Rego { location, message }
}

fn parse_manifest(text: &str) -> Result<Manifest, BundleError> {
    if text.trim().is_empty() {
        return Ok(Manifest::default());
    }
    serde_json::from_str(text).map_err(|e| BundleError::Manifest(e.to_string()))
}

fn read_text(path: &Path) -> Result<String, BundleError> {
    std::fs::read_to_string(path).map_err(|source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    })
}

const MAX_DEPTH: usize = 32;

fn walk_dir(
    dir: &Path,
    at: &[String],
    depth: usize,
    out: &mut Vec<(Vec<String>, PathBuf)>,
) -> Result<(), BundleError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BundleError::Io { path, source }
    };
    if depth > MAX_DEPTH {
        return Err(BundleError::TooLarge(format!(
            "{}: directories nested too deeply",
            dir.display()
        )));
    }
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::metadata(&path).map_err(io(&path))?;
        let mut segments = at.to_vec();
        segments.push(name.to_string());
        if meta.is_dir() {
            walk_dir(&path, &segments, depth + 1, out)?;
        } else {
            out.push((segments, path));
        }
    }
    Ok(())
}

fn parse_data(name: &str, text: &str) -> Result<serde_json::Value, BundleError> {
    parse_data_document(name, text).map_err(|message| BundleError::Data {
        path: name.to_string(),
        message,
    })
}

/// Parses a `data.json` / `data.yaml` document; an empty document is `{}`, anything
/// but an object is an error. Shared by directory and bundle loading.
pub(crate) fn parse_data_document(name: &str, text: &str) -> Result<serde_json::Value, String> {
    let v: serde_json::Value = if name.ends_with(".json") {
        let v = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if let Some(n) = super::exact_json::wide_integer(text.as_bytes(), &v) {
            return Err(format!(
                "the integer {} does not fit in 64 bits: portcullis would round it where OPA keeps it exact",
                n.chars().take(40).collect::<String>()
            ));
        }
        v
    } else {
        serde_yaml::from_str(text).map_err(|e| e.to_string())?
    };
    match v {
        serde_json::Value::Null => Ok(serde_json::Value::Object(serde_json::Map::new())),
        v @ serde_json::Value::Object(_) => Ok(v),
        _ => Err("a data file must contain an object".to_string()),
    }
}

/// Deep-merges `value` into `root` at `path`; two documents may not set the same leaf.
pub(crate) fn merge_at(
    root: &mut serde_json::Value,
    path: &[String],
    value: serde_json::Value,
) -> Result<(), String> {
    let mut node = root;
    for key in path {
        let serde_json::Value::Object(map) = node else {
            return Err(format!("data path {} is not an object", path.join(".")));
        };
        node = map
            .entry(key.clone())
            .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    }
    let mut at = path.to_vec();
    merge(node, value, &mut at)
}

fn merge(
    into: &mut serde_json::Value,
    value: serde_json::Value,
    at: &mut Vec<String>,
) -> Result<(), String> {
    match (into, value) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                at.push(k.clone());
                match a.get_mut(&k) {
                    Some(existing) => merge(existing, v, at)?,
                    None => {
                        a.insert(k, v);
                    }
                }
                at.pop();
            }
            Ok(())
        }
        _ => Err(format!(
            "data conflict: data.{} is defined more than once",
            at.join(".")
        )),
    }
}

// --- fetching -----------------------------------------------------------------

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

// --- polling --------------------------------------------------------------------

/// The result of one successful poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollOutcome {
    /// The server said `304 Not Modified`.
    NotModified,
    /// A new revision was activated.
    Activated(String),
}

/// Polls a bundle server and installs new revisions into a [`PolicyStore`].
pub struct BundlePoller {
    client: BundleClient,
    store: Arc<PolicyStore>,
    interval: Duration,
    limits: BundleLimits,
    etag: Option<String>,
}

impl BundlePoller {
    /// A poller fetching with `client` every `interval` into `store`.
    pub fn new(
        client: BundleClient,
        store: Arc<PolicyStore>,
        interval: Duration,
        limits: BundleLimits,
    ) -> BundlePoller {
        BundlePoller {
            client,
            store,
            interval,
            limits,
            etag: None,
        }
    }

    /// Fetches once and activates the bundle if it changed. On failure the
    /// active revision is untouched and the failure is counted and logged.
    pub async fn poll_once(&mut self) -> Result<PollOutcome, BundleError> {
        let result = self.try_poll().await;
        if let Err(e) = &result {
            tracing::warn!(url = %self.client.url(), error = %e, "policy bundle not activated; keeping the last good revision");
            self.store.count_failure();
        }
        result
    }

    async fn try_poll(&mut self) -> Result<PollOutcome, BundleError> {
        let (body, etag) = match self.client.fetch(self.etag.as_deref()).await? {
            Fetched::NotModified => {
                tracing::debug!(url = %self.client.url(), "policy bundle not modified");
                return Ok(PollOutcome::NotModified);
            }
            Fetched::Bundle { body, etag } => (body, etag),
        };
        let store = self.store.clone();
        let limits = self.limits;
        let set = tokio::task::spawn_blocking(move || {
            let bundle = Bundle::from_tar_gz(&body, &limits)?;
            bundle.build(store.queries(), store.options().clone())
        })
        .await
        .map_err(|e| BundleError::Archive(format!("bundle build task failed: {e}")))??;
        let revision = set.revision().to_string();
        tracing::info!(url = %self.client.url(), %revision, "policy bundle activated");
        self.store.install(set);
        // Remember the ETag only once the bundle is active: a rejected bundle
        // is fetched (and rejected) again rather than silently skipped.
        self.etag = etag;
        Ok(PollOutcome::Activated(revision))
    }

    /// Polls until the runtime stops: every interval, and at once when a
    /// reload is forced (`SIGHUP`, which also drops the ETag to re-download).
    pub async fn run(mut self) {
        loop {
            let _ = self.poll_once().await;
            let store = self.store.clone();
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = store.refresh_requested() => {
                    tracing::info!(url = %self.client.url(), "forced policy bundle reload");
                    self.etag = None;
                }
            }
        }
    }
}

/// Starts polling `cfg`'s bundle into `store` on the current runtime.
pub fn start(
    cfg: &crate::config::BundleConfig,
    store: Arc<PolicyStore>,
) -> Result<tokio::task::JoinHandle<()>, BundleError> {
    let limits = BundleLimits::default();
    let timeout = cfg
        .poll
        .clamp(Duration::from_secs(5), Duration::from_secs(60));
    let client = BundleClient::new(&cfg.url, cfg.ca.as_deref(), limits, timeout)?;
    Ok(tokio::spawn(
        BundlePoller::new(client, store, cfg.poll, limits).run(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut b = tar::Builder::new(gz);
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // Write the name raw so unsafe names can be tested.
            let name = path.as_bytes();
            if let Some(old) = h.as_old_mut().name.get_mut(..name.len()) {
                old.copy_from_slice(name);
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    const POLICY: &[u8] = b"package authz\nimport rego.v1\ndefault allow := false\nallow if input.user in data.authz.users\n";

    #[test]
    fn a_data_integer_beyond_64_bits_is_refused_not_rounded() {
        let bytes = tar_gz(&[
            ("authz/policy.rego", POLICY),
            ("authz/data.json", br#"{"ids": [1, 100000000000000000001]}"#),
        ]);
        let err = Bundle::from_tar_gz(&bytes, &BundleLimits::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("authz/data.json"), "{err}");
        assert!(
            err.contains("100000000000000000001 does not fit in 64 bits"),
            "{err}"
        );
        let ok = tar_gz(&[(
            "authz/data.json",
            br#"{"n": 18446744073709551615, "f": 1e30}"#,
        )]);
        assert!(Bundle::from_tar_gz(&ok, &BundleLimits::default()).is_ok());
    }

    #[test]
    fn unpacks_modules_data_and_manifest() {
        let bytes = tar_gz(&[
            ("/.manifest", br#"{"revision": "v7", "roots": ["authz"]}"#),
            ("/authz/policy.rego", POLICY),
            ("/authz/policy_test.rego", b"package authz_test\n"),
            ("./authz/data.json", br#"{"users": ["alice"]}"#),
            ("README.md", b"ignored"),
        ]);
        let b = Bundle::from_tar_gz(&bytes, &BundleLimits::default()).unwrap();
        assert_eq!(b.revision(), Some("v7"));
        assert_eq!(b.modules.len(), 1);
        assert_eq!(b.modules[0].0, "authz/policy.rego");
        assert_eq!(b.data, serde_json::json!({"authz": {"users": ["alice"]}}));
        let set = b
            .build(&["data.authz.allow".to_string()], PolicyOptions::default())
            .unwrap();
        assert_eq!(set.revision(), "v7");
        let input = regorus::Value::from_json_str(r#"{"user": "alice"}"#).unwrap();
        assert!(set.evaluate(0, input).unwrap().allowed);
    }

    #[test]
    fn rejects_traversal_links_duplicates_and_roots() {
        let bytes = tar_gz(&[("../../etc/passwd.rego", POLICY)]);
        let e = Bundle::from_tar_gz(&bytes, &BundleLimits::default()).unwrap_err();
        assert!(
            matches!(
                e,
                BundleError::UnsafeEntry {
                    why: "path traversal",
                    ..
                }
            ),
            "{e}"
        );

        let bytes = tar_gz(&[("a/../../x/data.json", b"{}")]);
        assert!(Bundle::from_tar_gz(&bytes, &BundleLimits::default()).is_err());

        let bytes = tar_gz(&[("/p.rego", POLICY), ("p.rego", POLICY)]);
        let e = Bundle::from_tar_gz(&bytes, &BundleLimits::default()).unwrap_err();
        assert!(
            matches!(
                e,
                BundleError::UnsafeEntry {
                    why: "duplicate entry",
                    ..
                }
            ),
            "{e}"
        );

        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut b = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "evil.rego", "/etc/passwd").unwrap();
        let bytes = b.into_inner().unwrap().finish().unwrap();
        let e = Bundle::from_tar_gz(&bytes, &BundleLimits::default()).unwrap_err();
        assert!(
            matches!(
                e,
                BundleError::UnsafeEntry {
                    why: "links are not allowed",
                    ..
                }
            ),
            "{e}"
        );

        let bytes = tar_gz(&[
            (".manifest", br#"{"roots": ["other"]}"#),
            ("p.rego", POLICY),
        ]);
        let e = Bundle::from_tar_gz(&bytes, &BundleLimits::default()).unwrap_err();
        assert!(matches!(e, BundleError::Roots(_)), "{e}");
        let bytes = tar_gz(&[
            (".manifest", br#"{"roots": ["authz"]}"#),
            ("data.json", br#"{"authz": {"x": 1}, "other": 2}"#),
        ]);
        let e = Bundle::from_tar_gz(&bytes, &BundleLimits::default()).unwrap_err();
        assert!(e.to_string().contains("data.other"), "{e}");
    }

    #[test]
    fn size_limits() {
        let big = vec![b' '; 200_000];
        let bytes = tar_gz(&[("data.json", &big)]);
        let limits = BundleLimits {
            max_unpacked: 100_000,
            ..BundleLimits::default()
        };
        let e = Bundle::from_tar_gz(&bytes, &limits).unwrap_err();
        assert!(matches!(e, BundleError::TooLarge(_)), "{e}");
        let limits = BundleLimits {
            max_download: 10,
            ..BundleLimits::default()
        };
        let e = Bundle::from_tar_gz(&bytes, &limits).unwrap_err();
        assert!(matches!(e, BundleError::TooLarge(_)), "{e}");
        let e = Bundle::from_tar_gz(b"not gzip at all", &BundleLimits::default()).unwrap_err();
        assert!(matches!(e, BundleError::Archive(_)), "{e}");
    }
}
