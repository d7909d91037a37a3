//! Watching the policy directory for changes.
//!
//! Every `policy.watch_interval` the watcher fingerprints the directory: a
//! SHA-256 over the relative path and *content* of every file
//! [`PolicySet::load_dir`](super::PolicySet::load_dir) would read (`*.rego`
//! except `*_test.rego`, `data.json`, `data.yaml`, `data.yml`; hidden entries
//! skipped, symbolic links followed). Content rather than modification times makes it
//! robust for Kubernetes ConfigMap volumes, where `authz.rego` is a link to
//! `..data/authz.rego` and an update swaps the hidden `..data` link atomically:
//! the visible names never change, their content does.
//!
//! When the fingerprint differs from the one of the last build the store
//! attempted ([`PolicyStore::attempted_fingerprint`], recorded *before* each
//! build so a change racing a build is never missed), [`PolicyStore::reload`]
//! runs on a blocking thread (compilation never happens on the request path).
//! A broken revision keeps the last good one; the same broken content is not
//! retried until it changes again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::store::PolicyStore;

/// Symbolic-link loops and absurd nesting stop here.
pub(crate) const MAX_DEPTH: usize = 32;

/// Why a directory could not be fingerprinted.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct WatchError {
    /// The file or directory.
    pub path: PathBuf,
    /// The underlying error.
    pub source: std::io::Error,
}

/// A content fingerprint of what the policy loader would read from `dir`.
pub fn fingerprint(dir: &Path) -> Result<String, WatchError> {
    let mut files = Vec::new();
    collect(dir, dir, 0, &mut files)?;
    files.sort();
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for (name, path) in files {
        let text = std::fs::read(&path).map_err(|source| WatchError {
            path: path.clone(),
            source,
        })?;
        ctx.update(&(name.len() as u64).to_be_bytes());
        ctx.update(name.as_bytes());
        ctx.update(&(text.len() as u64).to_be_bytes());
        ctx.update(&text);
    }
    Ok(hex::encode(ctx.finish().as_ref()))
}

fn collect(
    root: &Path,
    dir: &Path,
    depth: usize,
    out: &mut Vec<(String, PathBuf)>,
) -> Result<(), WatchError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WatchError { path, source }
    };
    if depth > MAX_DEPTH {
        return Err(WatchError {
            path: dir.to_path_buf(),
            source: std::io::Error::other("directories nested too deeply (a link loop?)"),
        });
    }
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // `metadata` follows links: a ConfigMap's visible names are links.
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            // A dangling link in the middle of a swap; the next tick sees the result.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&path)(e)),
        };
        if meta.is_dir() {
            collect(root, &path, depth + 1, out)?;
            continue;
        }
        let wanted = (name.ends_with(".rego") && !name.ends_with("_test.rego"))
            || matches!(name, "data.json" | "data.yaml" | "data.yml");
        if wanted {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push((rel.to_string_lossy().into_owned(), path));
        }
    }
    Ok(())
}

/// Polls `dir` every `interval` and reloads `store` when its content differs
/// from what the store last tried to build. Runs until the runtime stops.
pub async fn watch_dir(store: Arc<PolicyStore>, dir: PathBuf, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = false;
    loop {
        ticker.tick().await;
        let d = dir.clone();
        let current = match tokio::task::spawn_blocking(move || fingerprint(&d)).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                if !reported {
                    tracing::warn!(error = %e, "policy directory cannot be read; keeping the last good revision");
                    reported = true;
                }
                continue;
            }
            Err(_) => continue,
        };
        reported = false;
        if store.attempted_fingerprint().as_deref() == Some(current.as_str()) {
            continue;
        }
        tracing::info!(dir = %dir.display(), fingerprint = current.get(..12).unwrap_or(&current), "policy directory changed; reloading");
        let s = store.clone();
        // Errors are logged and counted by `reload`, which also records the
        // fingerprint: the same broken content is not retried.
        let _ = tokio::task::spawn_blocking(move || s.reload()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_follows_configmap_links_and_ignores_tests() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir(p.join("..2024_01")).unwrap();
        std::fs::write(p.join("..2024_01/authz.rego"), "package a\n").unwrap();
        std::os::unix::fs::symlink("..2024_01", p.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/authz.rego", p.join("authz.rego")).unwrap();
        let a = fingerprint(p).unwrap();

        // A test file or an editor's hidden file does not change it.
        std::fs::write(p.join("authz_test.rego"), "package a_test\n").unwrap();
        std::fs::write(p.join(".authz.rego.swp"), "x").unwrap();
        assert_eq!(fingerprint(p).unwrap(), a);

        // Swapping `..data` does.
        std::fs::create_dir(p.join("..2024_02")).unwrap();
        std::fs::write(p.join("..2024_02/authz.rego"), "package b\n").unwrap();
        std::os::unix::fs::symlink("..2024_02", p.join("..data_tmp")).unwrap();
        std::fs::rename(p.join("..data_tmp"), p.join("..data")).unwrap();
        let b = fingerprint(p).unwrap();
        assert_ne!(a, b);
    }
}
