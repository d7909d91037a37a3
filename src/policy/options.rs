//! How a policy set is built ([`PolicyOptions`], [`EvalLimits`], the extension
//! hook) and why building it can fail ([`PolicyError`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use regorus::Engine;

/// Per-evaluation resource limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalLimits {
    /// Wall-clock budget for one evaluation (checked cooperatively between
    /// instructions; a single long-running builtin call is not interrupted).
    pub timeout: Duration,
    /// Maximum number of RVM instructions for one evaluation (RVM path only).
    pub max_instructions: usize,
}

impl Default for EvalLimits {
    fn default() -> Self {
        EvalLimits {
            timeout: Duration::from_millis(100),
            max_instructions: 1_000_000,
        }
    }
}

/// Registers extension builtins (e.g. `io.jwt.*`) on the interpreter engine
/// before compilation. Queries whose policies call extensions run on the interpreter.
pub type ExtensionHook = Arc<dyn Fn(&mut Engine) -> anyhow::Result<()> + Send + Sync>;

/// How a [`PolicySet`] is built. `EvalLimits` converts into the default options.
#[derive(Clone, Default)]
pub struct PolicyOptions {
    /// Per-evaluation limits.
    pub limits: EvalLimits,
    /// Optional hook registering extension builtins on the interpreter.
    pub extensions: Option<ExtensionHook>,
    /// Never use the RVM (for comparisons and as an operator escape hatch).
    pub force_interpreter: bool,
    /// Decisions remembered per query, keyed on the input values the policy can
    /// read (see [`crate::policy::access`]); 0 (the default) remembers none.
    pub decision_cache: usize,
    /// The pod's downward API labels file, read at every build into
    /// `data.portcullis.workload.labels` (see [`crate::policy::workload_labels`]).
    pub workload_labels: Option<PathBuf>,
}

impl std::fmt::Debug for PolicyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyOptions")
            .field("limits", &self.limits)
            .field("extensions", &self.extensions.is_some())
            .field("force_interpreter", &self.force_interpreter)
            .field("decision_cache", &self.decision_cache)
            .field("workload_labels", &self.workload_labels)
            .finish()
    }
}

impl From<EvalLimits> for PolicyOptions {
    fn from(limits: EvalLimits) -> Self {
        PolicyOptions {
            limits,
            ..PolicyOptions::default()
        }
    }
}

/// Why a policy set could not be loaded. Display names the file (and
/// `line:col` where regorus reports it).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Reading the directory or a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A data file is not valid JSON/YAML, is not an object, or conflicts with another.
    #[error("{path}: {message}")]
    Data {
        /// The data file (or `<data>` for in-memory data).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A module failed to parse, or the policy set failed to compile.
    #[error("{location}: {message}")]
    Rego {
        /// `file:line:col` as far as regorus reports it.
        location: String,
        /// The error message.
        message: String,
    },
    /// A configured query is not of the form `data.<package>.<rule>`.
    #[error("invalid query {query:?}: {message}")]
    Query {
        /// The query.
        query: String,
        /// What is wrong.
        message: String,
    },
    /// The extension hook failed.
    #[error("registering policy extensions failed: {0}")]
    Extension(String),
}

impl PolicyError {
    /// Builds a `Rego` error from regorus' message (see [`crate::policy::rego_error`]),
    /// located at `fallback_location` when the message names no `file:line:col`.
    pub fn from_regorus(fallback_location: &str, err: &anyhow::Error) -> Self {
        let text = format!("{err}");
        PolicyError::Rego {
            location: crate::policy::rego_error::location(&text)
                .unwrap_or(fallback_location)
                .to_string(),
            message: crate::policy::rego_error::message(&text).to_string(),
        }
    }
}
