//! Policy evaluation with regorus: a [`PolicySet`] is one compiled revision of
//! the policy directory (or bundle), every serving `.rego` module plus the merged
//! data document, compiled once for each configured query.
//!
//! * [`options`]: how a set is built and why building fails.
//! * [`compile`]: modules and data to one plan per query (with the RVM
//!   conflict analysis deciding between the two evaluators).
//! * [`pool`]: the evaluators and their pools.
//! * [`memo`]: decisions remembered by the input values a policy reads.
//!
//! Evaluation has two paths:
//!
//! * **RVM (fast path)**: each query is compiled to a regorus bytecode
//!   program. `RegoVM` is `Send`, so the set keeps a small pool of warmed
//!   VMs per query (program loaded, data set, limits configured); a decision
//!   pops one, sets the input, executes and puts it back. The pool lock is held
//!   only for the pop/push, never during evaluation.
//! * **Interpreter (fallback)**: a prepared [`Engine`](regorus::Engine) (modules,
//!   data and extensions added, warmed) whose clones are pooled the same way. Used
//!   for queries the RVM compiler rejects (`with`, extension functions such as
//!   `io.jwt.*`, `print`, partial objects with constant keys, …) and for whole
//!   policy sets where the RVM would be unsafe (see [`compile`]).
//!
//! Undefined RVM results are re-checked on the interpreter so that errors are
//! reported as errors (and counted with the right reason).

mod compile;
mod memo;
mod pool;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use regorus::Value;

use self::compile::short;
use self::memo::key_hash;
use self::pool::{lock, Evaluators, Plan, QueryPlan};
use crate::policy::access::{InputAccess, InputNeeds};
use crate::policy::decision::{decision_from_value, Decision, DecisionError};
use crate::policy::input::{build_input_with, value_at, InputFacts};
use crate::policy::sources::{content_hash, DirFiles, Sources};

pub use self::memo::MemoUse;
pub use self::pool::EvaluatorKind;
pub use crate::policy::options::{EvalLimits, ExtensionHook, PolicyError, PolicyOptions};

static NEXT_SET_ID: AtomicU64 = AtomicU64::new(1);

/// One compiled policy revision. `Send + Sync`; share it as `Arc<PolicySet>`.
pub struct PolicySet {
    id: u64,
    revision: String,
    queries: Vec<QueryPlan>,
    files: Vec<String>,
    evaluators: Evaluators,
    /// Built on the first explanation asked of this revision.
    explainer: std::sync::OnceLock<Mutex<crate::policy::explain::Explainer>>,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("id", &self.id)
            .field("revision", &self.revision)
            .field(
                "queries",
                &self
                    .queries
                    .iter()
                    .map(|q| (&q.query, q.plan.kind()))
                    .collect::<Vec<_>>(),
            )
            .field("files", &self.files)
            .finish()
    }
}

impl PolicySet {
    /// Loads every `*.rego` under `dir` (recursively; `*_test.rego` and
    /// hidden entries such as a ConfigMap's `..data` are skipped) and every
    /// `data.json` / `data.yaml` / `data.yml`, merged at the path of its
    /// directory relative to `dir` (as in OPA bundles), then compiles `queries`
    /// (see [`crate::policy::sources`]).
    ///
    /// A query that no module defines is not an error: it evaluates to undefined.
    pub fn load_dir(
        dir: &Path,
        queries: &[String],
        options: impl Into<PolicyOptions>,
    ) -> Result<PolicySet, PolicyError> {
        Self::load(DirFiles::read(dir, false)?, queries, options)
    }

    /// [`PolicySet::load_dir`] from files already read.
    pub fn load(
        files: DirFiles,
        queries: &[String],
        options: impl Into<PolicyOptions>,
    ) -> Result<PolicySet, PolicyError> {
        let Sources {
            modules,
            data,
            revision,
        } = files.into_sources()?;
        Self::build(modules, data, queries, &options.into(), revision)
    }

    /// Same as [`PolicySet::load_dir`] from in-memory `(name, text)` modules and
    /// a data document (an object; `null` means none).
    pub fn from_sources(
        modules: Vec<(String, String)>,
        data: serde_json::Value,
        queries: &[String],
        options: impl Into<PolicyOptions>,
    ) -> Result<PolicySet, PolicyError> {
        let data = match data {
            serde_json::Value::Null => serde_json::Value::Object(serde_json::Map::new()),
            d @ serde_json::Value::Object(_) => d,
            _ => {
                return Err(PolicyError::Data {
                    path: "<data>".to_string(),
                    message: "the data document must be an object".to_string(),
                })
            }
        };
        let data_text = serde_json::to_string(&data).map_err(|e| PolicyError::Data {
            path: "<data>".to_string(),
            message: e.to_string(),
        })?;
        let mut hashed: Vec<(&str, &[u8])> = modules
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_bytes()))
            .collect();
        hashed.sort();
        hashed.push(("<data>", data_text.as_bytes()));
        let revision = content_hash(hashed.into_iter());
        Self::build(modules, data, queries, &options.into(), revision)
    }

    fn build(
        modules: Vec<(String, String)>,
        data: serde_json::Value,
        queries: &[String],
        options: &PolicyOptions,
        revision: String,
    ) -> Result<PolicySet, PolicyError> {
        let compiled = compile::compile(modules, data, queries, options, &revision)?;
        Ok(PolicySet {
            id: NEXT_SET_ID.fetch_add(1, Ordering::Relaxed),
            revision,
            queries: compiled.queries,
            files: compiled.files,
            evaluators: compiled.evaluators,
            explainer: std::sync::OnceLock::new(),
        })
    }

    /// What the rules query number `query` can reach read of the input.
    pub fn input_access(&self, query: usize) -> Option<&InputAccess> {
        self.queries.get(query).map(|q| &q.access)
    }

    /// The fields the input document must carry for query number `query`.
    pub fn input_needs(&self, query: usize) -> Option<&InputNeeds> {
        self.queries.get(query).map(|q| &q.needs)
    }

    // Bundle revisions.
    /// Replaces the content-hash revision with `revision` (an OPA bundle's
    /// `.manifest` revision), as shown in metrics and decision logs.
    pub fn with_revision(mut self, revision: impl Into<String>) -> PolicySet {
        self.revision = revision.into();
        self
    }

    /// Full hex SHA-256 revision over the sorted `(path, content)` of everything loaded.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// The first 12 hex characters of [`PolicySet::revision`], for display.
    pub fn short_revision(&self) -> &str {
        short(&self.revision)
    }

    /// Process-unique id of this set (changes on every load).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The configured queries, in index order.
    pub fn queries(&self) -> impl Iterator<Item = &str> {
        self.queries.iter().map(|q| q.query.as_str())
    }

    /// Index of `query` among the configured queries.
    pub fn query_index(&self, query: &str) -> Option<usize> {
        self.queries.iter().position(|q| q.query == query)
    }

    /// The serving module names (paths) that were loaded.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// The evaluator serving query number `query`.
    pub fn evaluator(&self, query: usize) -> Option<EvaluatorKind> {
        self.queries.get(query).map(|q| q.plan.kind())
    }

    /// Evaluates query number `query` against `input` and interprets the
    /// result as a [`Decision`]. Never panics; bounded by the [`EvalLimits`].
    pub fn evaluate(&self, query: usize, input: Value) -> Result<Decision, DecisionError> {
        self.evaluate_value(query, input)
            .and_then(|v| decision_from_value(&v))
    }

    /// Decides query number `query` for `facts`, as the proxy does: the input
    /// document carries only the fields the modules can read, and a decision is
    /// answered from the memo when an earlier input had the same values at every
    /// path the policy can read (the key is computed from the facts, without the
    /// document). Only decisions are remembered; errors and timeouts are evaluated
    /// again.
    pub fn decide(
        &self,
        query: usize,
        facts: &InputFacts<'_>,
    ) -> (Result<Decision, DecisionError>, MemoUse) {
        let Some(q) = self.queries.get(query) else {
            return (Err(DecisionError::NoPolicy), MemoUse::Off);
        };
        // A memo exists only for queries whose access is memoisable.
        let Some(memo) = &q.memo else {
            let input = build_input_with(facts, &q.needs);
            return (self.evaluate(query, input), MemoUse::Off);
        };
        let key: Vec<Value> = q
            .access
            .paths()
            .iter()
            .map(|p| value_at(facts, p))
            .collect();
        let hash = key_hash(&key);
        if let Some(decision) = memo.get(hash, &key) {
            return (Ok(decision), MemoUse::Hit);
        }
        let decision = self.evaluate(query, build_input_with(facts, &q.needs));
        if let Ok(d) = &decision {
            memo.put(hash, key, d.clone());
        }
        (decision, MemoUse::Miss)
    }

    /// Evaluates every query once on a made-up request (a GET of `/` from a
    /// loopback peer with no identity), so that what the evaluators and the input
    /// builder set up on first use is done before the set serves traffic, not on
    /// its first request. The results are dropped; the decision memo is not
    /// touched, and nothing is logged or counted.
    pub fn warm(&self) {
        let headers = http::HeaderMap::new();
        let facts = warm_up_facts(&headers);
        for (i, q) in self.queries.iter().enumerate() {
            let _ = self.evaluate(i, build_input_with(&facts, &q.needs));
        }
    }

    /// Evaluates query number `query` and returns the raw result
    /// (`Value::Undefined` when undefined).
    pub fn evaluate_value(&self, query: usize, input: Value) -> Result<Value, DecisionError> {
        let q = self.queries.get(query).ok_or(DecisionError::NoPolicy)?;
        match &q.plan {
            Plan::Undefined => Ok(Value::Undefined),
            Plan::Interpreter => self.evaluators.interpret(q, input),
            Plan::Rvm(rvm) => {
                // Keep a cheap handle on the input only for the rare undefined re-check.
                let input_again = input.clone();
                let v = self.evaluators.run_vm(rvm, input)?;
                if v == Value::Undefined {
                    // The RVM reports some errors as undefined; let the interpreter
                    // tell an error from a genuinely undefined result.
                    return match self.evaluators.interpret(q, input_again) {
                        Ok(Value::Undefined) => Ok(Value::Undefined),
                        // The interpreter is the reference (it is what `policy eval`
                        // and `policy test` run): its value is the decision.
                        Ok(other) => {
                            tracing::debug!(query = %q.query, "RVM result undefined but the interpreter produced a value; using the interpreter's");
                            Ok(other)
                        }
                        Err(e) => Err(e),
                    };
                }
                Ok(v)
            }
        }
    }

    /// Explains the decision of query number `query` for `input` (see
    /// [`crate::policy::explain`]). Slow (one interpreter evaluation per expression tried):
    /// never call it on the request path.
    pub fn explain(
        &self,
        query: usize,
        input: Value,
    ) -> Result<crate::policy::explain::Explanation, crate::policy::explain::ExplainError> {
        let q = self
            .queries
            .get(query)
            .ok_or_else(|| crate::policy::explain::ExplainError::Query(format!("#{query}")))?;
        let explainer = self.explainer.get_or_init(|| {
            Mutex::new(crate::policy::explain::Explainer::new(
                self.evaluators.prototype.clone(),
            ))
        });
        lock(explainer).explain(&q.query, input)
    }

    /// Evaluates query number `query` on the interpreter regardless of the
    /// chosen evaluator (for `policy eval`, diagnostics and comparisons).
    pub fn evaluate_interpreted(
        &self,
        query: usize,
        input: Value,
    ) -> Result<Decision, DecisionError> {
        let q = self.queries.get(query).ok_or(DecisionError::NoPolicy)?;
        if matches!(q.plan, Plan::Undefined) {
            return Err(DecisionError::Undefined);
        }
        decision_from_value(&self.evaluators.interpret(q, input)?)
    }
}

/// The made-up request [`PolicySet::warm`] evaluates: a GET of `/` from a
/// loopback peer with no identity and no token.
fn warm_up_facts(headers: &http::HeaderMap) -> InputFacts<'_> {
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    InputFacts {
        source_address: loopback,
        source_principal: None,
        destination_address: loopback,
        destination_principal: None,
        http: Some(crate::policy::input::HttpFacts::bodiless(
            "warm-up",
            "GET",
            "/",
            "localhost",
            headers,
        )),
        jwt: None,
    }
}

#[cfg(test)]
mod load_tests;
#[cfg(test)]
mod tests;
