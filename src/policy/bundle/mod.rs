//! OPA bundles: unpacking `.tar.gz` bundles (and bundle directories) and
//! fetching them from a bundle server ([`fetch`]; polled by
//! [`crate::policy::reload`]).
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
//! The bundle poller ([`crate::policy::reload`]) fetches the bundle every `poll` with `If-None-Match` (a
//! `304 Not Modified` costs nothing), builds the new revision on a blocking
//! thread and swaps it in atomically; a download, unpack or compile failure keeps
//! the last good bundle (log line and `portcullis_policy_reloads_total{result="error"}`).
//! The revision shown is the manifest's `revision` when present, otherwise the
//! content hash. Downloads go through the shared client ([`crate::fetch`]): a
//! configured `policy.bundle.ca` replaces the system roots.

use std::io::Read;
use std::path::Path;

mod error;
pub mod fetch;

use crate::policy::engine::PolicySet;
use crate::policy::options::{PolicyError, PolicyOptions};
use crate::policy::sources::{merge_at, parse_data_document, DirFiles, FileKind, Sources};

pub use self::error::{BundleError, BundleLimits};
pub use self::fetch::{BundleClient, Fetched};

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

/// What a file inside a bundle archive is.
enum Kind {
    Manifest,
    Rego,
    Data,
    Other,
}

/// Test modules are left out of an archive, as when loading a policy directory.
fn classify(segments: &[&str]) -> Kind {
    let Some(name) = segments.last() else {
        return Kind::Other;
    };
    if segments.len() == 1 && *name == ".manifest" {
        return Kind::Manifest;
    }
    match FileKind::of(name, false) {
        FileKind::Rego => Kind::Rego,
        FileKind::Data => Kind::Data,
        FileKind::Other => Kind::Other,
    }
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
            let classified = classify(&segments);
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

    /// Reads a bundle directory (the unpacked layout, or a policy directory)
    /// with the policy directory's walker (see [`crate::policy::sources`]):
    /// `.rego` modules (with `*_test.rego` when `include_tests`), data files
    /// at their directory's path, and `.manifest` at the top. Hidden entries
    /// are skipped; links are followed. Module names are the paths as found
    /// under `dir`, so messages point at real files.
    pub fn from_dir(dir: &Path, include_tests: bool) -> Result<Bundle, BundleError> {
        let manifest = dir.join(".manifest");
        let manifest = if manifest.is_file() {
            parse_manifest(&read_text(&manifest)?)?
        } else {
            Manifest::default()
        };
        let Sources { modules, data, .. } = DirFiles::read(dir, include_tests)?.into_sources()?;
        let bundle = Bundle {
            manifest,
            modules,
            data,
        };
        bundle.check_roots()?;
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
    let mut engine = crate::policy::parity::new_engine();
    engine
        .add_policy(name.to_string(), text.to_string())
        .map_err(|e| BundleError::Policy(PolicyError::from_regorus(name, &e)))
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

fn parse_data(name: &str, text: &str) -> Result<serde_json::Value, BundleError> {
    parse_data_document(name, text).map_err(|message| BundleError::Data {
        path: name.to_string(),
        message,
    })
}

#[cfg(test)]
mod tests;
