//! `portcullis import istio`: Istio's AuthorizationPolicy, RequestAuthentication
//! and PeerAuthentication (`security.istio.io/v1` and `v1beta1`) translated into
//! a policy directory portcullis loads as it is.
//!
//! What the directory holds:
//! - `istio/lib.rego`, `istio/workload.rego`: Istio's matching rules and the
//!   workload this sidecar serves;
//! - `istio/authz/<namespace>/<name>.rego` (+ `_test.rego`): one package per
//!   AuthorizationPolicy, its name and namespace in a comment;
//! - `istio/authn.rego`, `istio/peer.rego`: RequestAuthentication issuers and
//!   PeerAuthentication modes;
//! - `envoy/authz/istio.rego`: the decision (`data.envoy.authz.allow`, a result
//!   object whose reason names the deciding resource);
//! - `config-fragment.yaml`: `jwt.providers` and `inbound.mtls` to merge.
//!
//! Anything the translation cannot express exactly is an error naming the
//! resource, the field and why.

pub mod authn;
pub mod authz;
pub mod model;
pub mod peer;
pub mod rego_gen;
pub mod tests_gen;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use self::rego_gen::{ident, LabelNeed, Names, PolicyRef, GENERATED};

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// An input file could not be read.
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// An input file is not YAML of Kubernetes objects.
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    /// A resource has a field the import refuses (unsupported or invalid).
    #[error("{resource}: {field}: {reason}")]
    Resource {
        resource: String,
        field: String,
        reason: String,
    },
    /// The output could not be written.
    #[error("{path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the import reads and where it writes.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Input files; `-` is standard input.
    pub files: Vec<PathBuf>,
    /// The policy directory written.
    pub out: PathBuf,
    /// Istio's root namespace (mesh-wide policies), default `istio-system`.
    pub root_namespace: String,
    /// Namespace of resources without `metadata.namespace`.
    pub default_namespace: String,
    /// Import without CUSTOM policies instead of refusing them.
    pub skip_custom: bool,
}

/// One security.istio.io resource read from the input.
#[derive(Debug, Clone)]
pub struct Resource {
    pub kind: Kind,
    pub name: String,
    pub namespace: String,
    spec: Value,
}

/// The resource kinds imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    AuthorizationPolicy,
    RequestAuthentication,
    PeerAuthentication,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::PeerAuthentication => "PeerAuthentication",
        }
    }
}

impl Resource {
    /// `Kind namespace/name`, as reasons and comments name it.
    pub fn label(&self) -> String {
        format!("{} {}/{}", self.kind.as_str(), self.namespace, self.name)
    }

    /// The typed spec; an unknown or mistyped field is an error naming its path.
    pub fn spec<T: DeserializeOwned>(&self) -> Result<T, ImportError> {
        serde_path_to_error::deserialize(&self.spec).map_err(|e| {
            let path = e.path().to_string();
            ImportError::Resource {
                resource: self.label(),
                field: if path == "." {
                    "spec".into()
                } else {
                    format!("spec.{path}")
                },
                reason: e.into_inner().to_string(),
            }
        })
    }

    /// A field portcullis has no exact equivalent for.
    pub fn unsupported(&self, field: &str, why: &str) -> ImportError {
        ImportError::Resource {
            resource: self.label(),
            field: field.to_owned(),
            reason: format!("not supported: {why}"),
        }
    }

    /// A field Istio itself would reject.
    pub fn invalid(&self, field: &str, why: &str) -> ImportError {
        ImportError::Resource {
            resource: self.label(),
            field: field.to_owned(),
            reason: format!("invalid: {why}"),
        }
    }
}

/// The files of a policy directory, by relative path.
#[derive(Debug, Default)]
pub struct Output {
    pub files: BTreeMap<String, String>,
    /// Notes for the terminal (skipped resources).
    pub notes: Vec<String>,
    /// Counts per kind, for the summary line.
    pub counts: BTreeMap<&'static str, usize>,
}

/// Reads the inputs, translates them and writes the directory.
pub fn run(opts: &ImportOptions) -> Result<Output, ImportError> {
    let mut inputs = Vec::new();
    for f in &opts.files {
        let name = f.display().to_string();
        let text = if name == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|source| ImportError::Read {
                    path: "<stdin>".into(),
                    source,
                })?;
            s
        } else {
            std::fs::read_to_string(f).map_err(|source| ImportError::Read {
                path: name.clone(),
                source,
            })?
        };
        inputs.push((
            if name == "-" {
                "<stdin>".to_owned()
            } else {
                name
            },
            text,
        ));
    }
    let out = translate(&inputs, opts)?;
    write(&opts.out, &out)?;
    Ok(out)
}

fn write(dir: &Path, out: &Output) -> Result<(), ImportError> {
    // A previous import's packages would still be loaded beside the new ones: the
    // `istio/` tree is replaced whole, but only if an import wrote it.
    let ours = dir.join("istio");
    if ours.exists() {
        let lib = std::fs::read_to_string(ours.join("lib.rego")).unwrap_or_default();
        if !lib.starts_with(GENERATED) {
            return Err(ImportError::Write {
                path: ours,
                source: std::io::Error::other(
                    "exists and was not written by `portcullis import istio`; choose another -o",
                ),
            });
        }
        std::fs::remove_dir_all(&ours)
            .map_err(|source| ImportError::Write { path: ours, source })?;
    }
    for (rel, text) in &out.files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| ImportError::Write {
                path: parent.to_owned(),
                source,
            })?;
        }
        std::fs::write(&path, text).map_err(|source| ImportError::Write { path, source })?;
    }
    Ok(())
}

/// Splits YAML documents (and `List`s) into the security.istio.io resources.
pub fn read_resources(
    inputs: &[(String, String)],
    default_namespace: &str,
) -> Result<(Vec<Resource>, Vec<String>), ImportError> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for (path, text) in inputs {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let v = Value::deserialize(doc).map_err(|e| ImportError::Parse {
                path: path.clone(),
                message: format!("document {}: {e}", i + 1),
            })?;
            collect(path, v, default_namespace, &mut out, &mut notes)?;
        }
    }
    Ok((out, notes))
}

fn collect(
    path: &str,
    v: Value,
    default_ns: &str,
    out: &mut Vec<Resource>,
    notes: &mut Vec<String>,
) -> Result<(), ImportError> {
    let parse_err = |message: String| ImportError::Parse {
        path: path.to_owned(),
        message,
    };
    if v.is_null() {
        return Ok(());
    }
    let kind = v
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let api = v
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if kind == "List" || kind.ends_with("List") {
        for item in v
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            collect(path, item, default_ns, out, notes)?;
        }
        return Ok(());
    }
    let meta: model::Metadata = v
        .get("metadata")
        .map(|m| serde_json::from_value(m.clone()))
        .transpose()
        .map_err(|e| parse_err(format!("{kind}: metadata: {e}")))?
        .unwrap_or_default();
    let Some(group) = api.strip_prefix("security.istio.io/") else {
        notes.push(format!(
            "{path}: skipped {kind} {} (not security.istio.io)",
            meta.name
        ));
        return Ok(());
    };
    if group != "v1" && group != "v1beta1" {
        return Err(parse_err(format!(
            "{kind} {}: apiVersion {api} is not v1 or v1beta1",
            meta.name
        )));
    }
    let kind = match kind.as_str() {
        "AuthorizationPolicy" => Kind::AuthorizationPolicy,
        "RequestAuthentication" => Kind::RequestAuthentication,
        "PeerAuthentication" => Kind::PeerAuthentication,
        other => {
            return Err(parse_err(format!(
                "{other} {}: kind not imported",
                meta.name
            )))
        }
    };
    let namespace = meta.namespace.unwrap_or_else(|| default_ns.to_owned());
    // Kubernetes' own rules; they also keep generated file names inside the output.
    if !dns_name(&meta.name, 253, true) {
        return Err(parse_err(format!(
            "{}: metadata.name {:?} is not a Kubernetes object name",
            kind.as_str(),
            meta.name
        )));
    }
    if !dns_name(&namespace, 63, false) {
        return Err(parse_err(format!(
            "{} {}: namespace {namespace:?} is not a Kubernetes namespace name",
            kind.as_str(),
            meta.name
        )));
    }
    out.push(Resource {
        kind,
        name: meta.name,
        namespace,
        spec: v
            .get("spec")
            .cloned()
            .unwrap_or(Value::Object(Default::default())),
    });
    Ok(())
}

/// A DNS-1123 label (or, with `dots`, subdomain) of at most `max` characters.
fn dns_name(s: &str, max: usize, dots: bool) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let label = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| alnum(b) || b == b'-')
            && l.bytes().next().is_some_and(alnum)
            && l.bytes().last().is_some_and(alnum)
    };
    s.len() <= max
        && (if dots {
            s.split('.').all(label)
        } else {
            label(s)
        })
}

/// Translates the inputs into the files of a policy directory.
pub fn translate(inputs: &[(String, String)], opts: &ImportOptions) -> Result<Output, ImportError> {
    let (resources, notes) = read_resources(inputs, &opts.default_namespace)?;
    let mut out = Output {
        notes,
        ..Output::default()
    };
    let root = opts.root_namespace.as_str();
    let mut policies = Vec::new();
    let mut authns = Vec::new();
    let mut peers = Vec::new();
    for r in &resources {
        *out.counts.entry(r.kind.as_str()).or_default() += 1;
        match r.kind {
            Kind::AuthorizationPolicy => match authz::parse(r, root, opts.skip_custom)? {
                authz::Parsed::Policy(p) => policies.push(p),
                authz::Parsed::SkippedCustom(provider) => out.notes.push(format!(
                    "{}: CUSTOM policy (provider {provider:?}) skipped (--skip-custom)",
                    r.label()
                )),
            },
            Kind::RequestAuthentication => authns.push(authn::parse(r, root)?),
            Kind::PeerAuthentication => peers.push(peer::parse(r, root)?),
        }
    }
    peer::check_unique(&peers)?;

    let mut names = Names::default();
    let mut refs = Vec::new();
    let mut needs = Vec::new();
    for p in &policies {
        let ns_ident = format!("ns_{}", ident(&p.namespace).trim_start_matches('_'));
        let name_ident = names.fresh(&format!("{ns_ident}.{}", ident(&p_name(p))));
        let name = authz::PackageName {
            name_ident: name_ident.rsplit('.').next().unwrap_or_default().to_owned(),
            namespace_ident: ns_ident.clone(),
        };
        let file = format!("istio/authz/{}/{}", p.namespace, name.name_ident);
        out.files
            .insert(format!("{file}.rego"), authz::module(p, &name));
        out.files
            .insert(format!("{file}_test.rego"), tests_gen::module(p, &name));
        refs.push(PolicyRef {
            resource: p.resource.clone(),
            data_ref: format!("data.{}", name.package()),
            action: p.action.as_str(),
        });
        if !p.labels.is_empty() {
            needs.push(label_need(&p.resource, &p.namespace, p.root));
        }
    }
    for a in authns.iter().filter(|a| !a.labels.is_empty()) {
        needs.push(label_need(&a.resource, &a.namespace, a.root));
    }
    for p in peers.iter().filter(|p| !p.labels.is_empty()) {
        needs.push(label_need(&p.resource, &p.namespace, p.root));
    }
    out.files
        .insert("istio/lib.rego".into(), rego_gen::lib_module());
    out.files
        .insert("istio/workload.rego".into(), rego_gen::workload_module());
    out.files
        .insert("istio/authn.rego".into(), authn::module(&authns));
    out.files
        .insert("istio/peer.rego".into(), peer::module(&peers));
    out.files.insert(
        "envoy/authz/istio.rego".into(),
        rego_gen::decision_module(&refs, &needs),
    );
    out.files
        .insert("config-fragment.yaml".into(), fragment(&authns, &peers));
    Ok(out)
}

/// The metadata name of a policy (the part after `/` in its resource label).
fn p_name(p: &authz::Policy) -> String {
    p.resource.rsplit('/').next().unwrap_or_default().to_owned()
}

fn label_need(resource: &str, namespace: &str, root: bool) -> LabelNeed {
    LabelNeed {
        resource: resource.to_owned(),
        namespace: (!root).then(|| namespace.to_owned()),
    }
}

fn fragment(authns: &[authn::RequestAuthn], peers: &[peer::PeerAuthn]) -> String {
    let mut y = format!(
        "{GENERATED}\n# Merge these keys into the sidecar configuration.\npolicy:\n  inbound_query: data.envoy.authz.allow\n"
    );
    y.push_str(&peer::fragment(peers));
    let providers: Vec<&String> = authns.iter().flat_map(|a| &a.providers).collect();
    if !providers.is_empty() {
        y.push_str("jwt:\n  providers:\n");
        for p in providers {
            y.push_str(p);
        }
    }
    y
}
