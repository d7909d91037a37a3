//! Policy sources: the one walker of a policy directory (or an unpacked bundle
//! directory), and the data document rules shared with bundles.
//!
//! [`DirFiles::read`] walks the directory once and reads every file the policy
//! is made of (`*.rego`, with `*_test.rego` only when asked; `data.json`,
//! `data.yaml`, `data.yml`), skipping hidden entries (editor files, a ConfigMap
//! mount's `..data` links) and following symbolic links, at most [`MAX_DEPTH`]
//! directories deep. From that one read come the content fingerprint the
//! directory watcher compares ([`DirFiles::fingerprint`]) and the modules, merged
//! data and revision a policy set is compiled from ([`DirFiles::into_sources`]):
//! every file is read once per reload.

use std::path::{Path, PathBuf};

use crate::policy::options::PolicyError;

/// Symbolic-link loops and absurd nesting stop here.
pub const MAX_DEPTH: usize = 32;

/// What a file of a policy directory or bundle is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A `.rego` module (a `*_test.rego` one only when tests are included).
    Rego,
    /// `data.json`, `data.yaml` or `data.yml`, merged at its directory's path.
    Data,
    /// Anything else: not part of the policy.
    Other,
}

impl FileKind {
    /// The kind of the file called `name`.
    pub fn of(name: &str, include_tests: bool) -> FileKind {
        if name.ends_with(".rego") && (include_tests || !name.ends_with("_test.rego")) {
            FileKind::Rego
        } else if matches!(name, "data.json" | "data.yaml" | "data.yml") {
            FileKind::Data
        } else {
            FileKind::Other
        }
    }
}

/// One policy file as read from the directory.
struct DirFile {
    /// Path components below the directory walked.
    segments: Vec<String>,
    /// The path as found (module names and messages use it).
    path: PathBuf,
    kind: FileKind,
    bytes: Vec<u8>,
}

impl DirFile {
    fn name(&self) -> String {
        self.path.display().to_string()
    }
}

/// Every policy file under a directory, each read once.
pub struct DirFiles {
    files: Vec<DirFile>,
    /// The first entry that disappeared between listing and reading (a link
    /// swapped mid-update): left out of the fingerprint, an error to build.
    vanished: Option<(PathBuf, std::io::Error)>,
}

/// The modules and merged data document of a policy directory.
#[derive(Debug, Clone)]
pub struct Sources {
    /// `(path, text)` of every module, by path.
    pub modules: Vec<(String, String)>,
    /// The merged data document (an object).
    pub data: serde_json::Value,
    /// SHA-256 over the sorted `(path, content)` of every file read.
    pub revision: String,
}

impl DirFiles {
    /// Walks `dir` and reads its policy files (`*_test.rego` too when
    /// `include_tests`).
    pub fn read(dir: &Path, include_tests: bool) -> Result<DirFiles, PolicyError> {
        let mut found = DirFiles {
            files: Vec::new(),
            vanished: None,
        };
        found.walk(dir, &[], 0, include_tests)?;
        found.files.sort_by_key(DirFile::name);
        Ok(found)
    }

    fn walk(
        &mut self,
        dir: &Path,
        at: &[String],
        depth: usize,
        include_tests: bool,
    ) -> Result<(), PolicyError> {
        if depth > MAX_DEPTH {
            return Err(io_error(dir)(std::io::Error::other(
                "directories nested too deeply (a link loop?)",
            )));
        }
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(io_error(dir))?
            .collect::<Result<_, _>>()
            .map_err(io_error(dir))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            // Hidden entries: editor files, and a ConfigMap mount's `..data` links.
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            // `metadata` follows links: a ConfigMap's visible names are links.
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // A dangling link in the middle of a swap; the next look sees the result.
                    self.vanished.get_or_insert((path, e));
                    continue;
                }
                Err(e) => return Err(io_error(&path)(e)),
            };
            let mut segments = at.to_vec();
            segments.push(name.to_string());
            if meta.is_dir() {
                self.walk(&path, &segments, depth + 1, include_tests)?;
                continue;
            }
            let kind = FileKind::of(name, include_tests);
            if kind == FileKind::Other {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(io_error(&path))?;
            self.files.push(DirFile {
                segments,
                path,
                kind,
                bytes,
            });
        }
        Ok(())
    }

    /// A SHA-256 over the relative path and content of every file read.
    /// Content rather than modification times: a ConfigMap update swaps the
    /// hidden `..data` link, the visible names never change.
    pub fn fingerprint(&self) -> String {
        let mut named: Vec<(String, &[u8])> = self
            .files
            .iter()
            .map(|f| (f.segments.join("/"), f.bytes.as_slice()))
            .collect();
        named.sort();
        content_hash(named.iter().map(|(n, b)| (n.as_str(), *b)))
    }

    /// The modules, the data documents merged at their directory's path, and the
    /// content revision. A file that vanished, is not UTF-8 or holds invalid data
    /// is an error naming the file.
    pub fn into_sources(self) -> Result<Sources, PolicyError> {
        if let Some((path, e)) = self.vanished {
            return Err(PolicyError::Io { path, source: e });
        }
        let mut texts = Vec::with_capacity(self.files.len());
        for f in self.files {
            let name = f.name();
            let text = String::from_utf8(f.bytes).map_err(|_| PolicyError::Io {
                path: f.path,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "stream did not contain valid UTF-8",
                ),
            })?;
            texts.push((name, text, f.kind, f.segments));
        }
        let mut hashed: Vec<(&str, &[u8])> = texts
            .iter()
            .map(|(n, t, _, _)| (n.as_str(), t.as_bytes()))
            .collect();
        hashed.sort();
        let revision = content_hash(hashed.into_iter());
        let mut sources = Sources {
            modules: Vec::new(),
            data: serde_json::Value::Object(serde_json::Map::new()),
            revision,
        };
        for (name, text, kind, mut segments) in texts {
            if kind == FileKind::Rego {
                sources.modules.push((name, text));
                continue;
            }
            segments.pop();
            let value = parse_data_document(&name, &text).map_err(|message| PolicyError::Data {
                path: name.clone(),
                message,
            })?;
            merge_at(&mut sources.data, &segments, value).map_err(|message| PolicyError::Data {
                path: name,
                message,
            })?;
        }
        Ok(sources)
    }
}

/// The content fingerprint of what the policy loader would read from `dir`
/// (test modules excluded).
pub fn fingerprint(dir: &Path) -> Result<String, PolicyError> {
    Ok(DirFiles::read(dir, false)?.fingerprint())
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> PolicyError {
    let path = path.to_path_buf();
    move |source| PolicyError::Io { path, source }
}

/// A hex SHA-256 over `(name, content)` pairs, each part length-prefixed so
/// different splits cannot collide.
pub fn content_hash<'a>(files: impl Iterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for (name, content) in files {
        ctx.update(&(name.len() as u64).to_be_bytes());
        ctx.update(name.as_bytes());
        ctx.update(&(content.len() as u64).to_be_bytes());
        ctx.update(content);
    }
    hex::encode(ctx.finish().as_ref())
}

/// Parses a `data.json` / `data.yaml` document; an empty document is `{}`, anything
/// but an object is an error. Shared by directory and bundle loading.
pub fn parse_data_document(name: &str, text: &str) -> Result<serde_json::Value, String> {
    let v: serde_json::Value = if name.ends_with(".json") {
        let v = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if let Some(n) = crate::policy::exact_json::wide_integer(text.as_bytes(), &v) {
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
pub fn merge_at(
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
