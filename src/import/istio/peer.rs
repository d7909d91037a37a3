//! PeerAuthentication → the `istio.peer` module (the effective mTLS mode for
//! this workload and port: port level, then workload, then namespace, then
//! mesh, `UNSET` inheriting) and the `inbound.mtls` value of the fragment.
//!
//! portcullis has one inbound mTLS mode; when the imported modes differ the
//! fragment says `permissive` and the module refuses plain text wherever the
//! effective mode is `STRICT`, naming the PeerAuthentication that says so.

use std::fmt::Write as _;

use super::model::{Mtls, PeerAuthenticationSpec};
use super::rego_gen::{body, quote, selection_lines, GENERATED};
use super::{ImportError, Resource};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Strict,
    Permissive,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Strict => "STRICT",
            Mode::Permissive => "PERMISSIVE",
        }
    }
}

/// One validated PeerAuthentication.
pub struct PeerAuthn {
    pub resource: String,
    pub namespace: String,
    pub root: bool,
    pub labels: Vec<(String, String)>,
    /// None: UNSET (inherit).
    pub mode: Option<Mode>,
    pub ports: Vec<(u16, Mode)>,
}

fn mode(res: &Resource, field: &str, m: &Mtls) -> Result<Option<Mode>, ImportError> {
    match m.mode.as_deref().unwrap_or("UNSET") {
        "UNSET" => Ok(None),
        "STRICT" => Ok(Some(Mode::Strict)),
        "PERMISSIVE" => Ok(Some(Mode::Permissive)),
        "DISABLE" => Err(res.unsupported(
            field,
            "DISABLE: a portcullis sidecar always accepts mTLS; PERMISSIVE also accepts plain text",
        )),
        other => Err(res.invalid(
            field,
            &format!("{other:?} is not UNSET, DISABLE, PERMISSIVE or STRICT"),
        )),
    }
}

/// Validates `res`.
pub fn parse(res: &Resource, root_namespace: &str) -> Result<PeerAuthn, ImportError> {
    let spec: PeerAuthenticationSpec = res.spec()?;
    let labels: Vec<(String, String)> = spec
        .selector
        .map(|s| s.match_labels.into_iter().collect())
        .unwrap_or_default();
    let top = match &spec.mtls {
        Some(m) => mode(res, "spec.mtls.mode", m)?,
        None => None,
    };
    if !spec.port_level_mtls.is_empty() && labels.is_empty() {
        return Err(res.invalid(
            "spec.portLevelMtls",
            "needs a workload selector (as Istio requires)",
        ));
    }
    let mut ports = Vec::new();
    for (port, m) in &spec.port_level_mtls {
        let field = format!("spec.portLevelMtls[{port}].mode");
        let p: u16 = port
            .parse()
            .map_err(|_| res.invalid(&field, &format!("{port:?} is not a port number")))?;
        if let Some(md) = mode(res, &field, m)? {
            ports.push((p, md));
        }
    }
    Ok(PeerAuthn {
        resource: res.label(),
        namespace: res.namespace.clone(),
        root: res.namespace == root_namespace,
        labels,
        mode: top,
        ports,
    })
}

/// Refuses two resources at the same level of the same scope (Istio would pick
/// the oldest, which an import cannot know).
pub fn check_unique(all: &[PeerAuthn]) -> Result<(), ImportError> {
    for (i, a) in all.iter().enumerate() {
        if !a.labels.is_empty() {
            continue;
        }
        if let Some(b) = all[..i]
            .iter()
            .find(|b| b.labels.is_empty() && b.namespace == a.namespace)
        {
            return Err(ImportError::Resource {
                resource: a.resource.clone(),
                field: "metadata.namespace".into(),
                reason: format!(
                    "{} already sets the {} mode; Istio keeps the oldest, which the import cannot tell",
                    b.resource,
                    if a.root { "mesh-wide" } else { "namespace-wide" }
                ),
            });
        }
    }
    Ok(())
}

/// The `inbound.mtls` lines of the configuration fragment.
pub fn fragment(all: &[PeerAuthn]) -> String {
    if all.is_empty() {
        return "# No PeerAuthentication was imported. Istio's default is PERMISSIVE; portcullis\n\
                # keeps its own default (strict) unless you set inbound.mtls: permissive.\n"
            .to_owned();
    }
    let mesh_strict = all
        .iter()
        .any(|p| p.root && p.labels.is_empty() && p.mode == Some(Mode::Strict));
    let all_strict = all.iter().all(|p| {
        p.mode.is_none_or(|m| m == Mode::Strict) && p.ports.iter().all(|(_, m)| *m == Mode::Strict)
    });
    if mesh_strict && all_strict {
        "inbound:\n  # Every imported PeerAuthentication is STRICT.\n  mtls: strict\n".to_owned()
    } else {
        "inbound:\n  # Some workloads or ports accept plain text (PERMISSIVE, or Istio's default);\n\
         \x20 # istio/peer.rego refuses plain text where the effective mode is STRICT.\n  mtls: permissive\n"
            .to_owned()
    }
}

/// The `istio.peer` module.
pub fn module(all: &[PeerAuthn]) -> String {
    let mut out = format!(
        "{GENERATED}\n#\n# The effective mTLS mode for this workload and destination port, as Istio\n\
         # resolves it: port level, then workload, then namespace, then mesh (UNSET inherits;\n\
         # nothing set: PERMISSIVE). Plain text (no verified peer) is refused under STRICT.\n\
         package istio.peer\n\nimport rego.v1\n\nimport data.istio.lib\nimport data.istio.workload\n"
    );
    let level = |p: &PeerAuthn| {
        if !p.labels.is_empty() {
            "workload_level"
        } else if p.root {
            "mesh_level"
        } else {
            "namespace_level"
        }
    };
    for p in all {
        let sel = selection_lines(&p.namespace, p.root, &p.labels);
        let emit = |out: &mut String, name: &str, m: Mode, extra: Option<String>| {
            let _ = write!(
                out,
                "\n# {}\n{name} := {{\"mode\": {}, \"resource\": {}}}",
                p.resource,
                quote(m.as_str()),
                quote(&p.resource)
            );
            let mut lines = sel.clone();
            lines.extend(extra);
            if lines.is_empty() {
                out.push('\n');
            } else {
                out.push_str(&body(&lines));
            }
        };
        if let Some(m) = p.mode {
            emit(&mut out, level(p), m, None);
        }
        for (port, m) in &p.ports {
            emit(
                &mut out,
                "port_level",
                *m,
                Some(format!("lib.destination_port == {port}")),
            );
        }
    }
    // The most specific level that is set wins; levels no resource sets are left out.
    let mut chain = String::from("\neffective := ");
    for l in [
        "port_level",
        "workload_level",
        "namespace_level",
        "mesh_level",
    ] {
        if out.contains(&format!("\n{l} := ")) {
            let _ = write!(chain, "{l} if {{\n\t{l}\n}} else := ");
        }
    }
    chain.push_str("{\"mode\": \"PERMISSIVE\", \"resource\": \"Istio's default\"}\n");
    out.push_str(&chain);
    out.push_str(
        r#"
refusal := concat("", ["plain text refused: ", effective.resource, " requires mutual TLS (STRICT)"]) if {
	effective.mode == "STRICT"
	not input.attributes.source.principal
}
"#,
    );
    out
}
