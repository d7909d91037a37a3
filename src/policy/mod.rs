//! Policy: loading and evaluating Rego with regorus, the OPA-Envoy input
//! document, the decision result, and the store holding the active revision.
//!
//! Data flows one way: [`sources`] reads a policy directory (or [`bundle`]
//! unpacks a bundle) into modules and data; [`engine`] compiles them into a
//! [`PolicySet`]; [`reload`] builds revisions (start-up, directory watch, bundle
//! polling, `SIGHUP`) and installs them into the [`store`]; the proxy builds the
//! [`input`] document and asks the active set for a [`decision`].

pub mod access;
pub mod builtins;
pub mod bundle;
pub mod cli;
pub mod decision;
pub mod engine;
pub mod exact_json;
pub mod explain;
pub mod input;
pub mod metadata;
pub mod options;
pub mod parity;
pub mod rego_error;
pub mod reload;
pub mod replay;
pub mod shadow;
pub mod sources;
pub mod store;
pub mod test_runner;
pub mod workload_labels;

pub use access::{HeaderNeeds, InputAccess, InputNeeds};
pub use decision::{decision_from_value, Decision, DecisionError};
pub use engine::{EvaluatorKind, PolicySet};
pub use input::{build_input, build_input_with, HttpFacts, InputFacts};
pub use options::{EvalLimits, ExtensionHook, PolicyError, PolicyOptions};
