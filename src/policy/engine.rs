//! Policy loading and evaluation with regorus.
//!
//! A [`PolicySet`] is one compiled revision of the policy directory (or bundle):
//! every serving `.rego` module plus the merged data document, compiled once
//! for each configured query. Evaluation has two paths:
//!
//! * **RVM (fast path)**: each query is compiled to a regorus bytecode
//!   [`Program`]. `RegoVM` is `Send`, so the set keeps a small pool of warmed
//!   VMs per query (program loaded, data set, limits configured); a decision
//!   pops one, sets the input, executes and puts it back. The pool lock is held
//!   only for the pop/push, never during evaluation.
//! * **Interpreter (fallback)**: a prepared [`Engine`] (modules, data and
//!   extensions added, warmed) whose clones are pooled the same way. Used for
//!   queries the RVM compiler rejects (`with`, extension functions such as
//!   `io.jwt.*`, `print`, partial objects with constant keys, …) and for whole
//!   policy sets where the RVM would be unsafe (see below).
//!
//! The RVM in regorus 0.14 treats a conflicting complete rule or function
//! (`x := 1` and `x := 2` both true) as *undefined* instead of an evaluation
//! error. Under `not x` that turns an error (deny) into an allow, so a set that
//! contains a rule able to produce conflicting values (more than one definition
//! with non-identical constant values) is evaluated with the interpreter.
//! Undefined RVM results are re-checked on the interpreter so that errors are
//! reported as errors (and counted with the right reason).

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::access::{InputAccess, InputNeeds};
use super::input::{build_input_with, value_at, InputFacts};
use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::program::Program;
use regorus::rvm::vm::{RegoVM, VmError};
use regorus::unstable::{Expr, Rule, RuleHead};
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};

use super::decision::{decision_from_value, Decision, DecisionError};
use super::input::json_to_value;

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
    /// read (see [`super::access`]); 0 (the default) remembers none.
    pub decision_cache: usize,
    /// The pod's downward API labels file, read at every build into
    /// `data.portcullis.workload.labels` (see [`super::workload_labels`]).
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
    /// Builds a `Rego` error from regorus' message, which looks like
    /// `"\n--> file:line:col\n  |\n3 | text\n  | ^\nerror: message"`.
    fn from_regorus(fallback_location: &str, err: &anyhow::Error) -> Self {
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
}

static NEXT_SET_ID: AtomicU64 = AtomicU64::new(1);
/// Idle VMs/engines kept per pool; more concurrent evaluations simply build extra ones.
const POOL_CAP: usize = 64;
/// Work units between wall-clock checks.
const TIMER_CHECK_INTERVAL: NonZeroU32 = NonZeroU32::MIN.saturating_add(63);

/// Which evaluator serves a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvaluatorKind {
    /// regorus bytecode VM.
    Rvm,
    /// regorus tree-walking interpreter.
    Interpreter,
    /// No module defines the query: always undefined (deny).
    Undefined,
}

struct RvmPlan {
    program: Arc<Program>,
    pool: Mutex<Vec<RegoVM>>,
}

enum Plan {
    Rvm(RvmPlan),
    Interpreter,
    Undefined,
}

struct QueryPlan {
    query: String,
    plan: Plan,
    /// What the rules this query can reach read of the input.
    access: InputAccess,
    needs: InputNeeds,
    /// Results by the values at the input paths the policy reads.
    memo: Option<Memo>,
    /// The query names a partial object or set (see [`super::parity::is_partial_document`]).
    partial: bool,
}

/// A bounded map from input keys to results: when full it starts over, so a burst
/// of distinct requests costs one clear, not a growing table. Entries are found by
/// a hash of the key and confirmed by comparing the whole key, so a collision can
/// only cost an evaluation, never return another input's decision.
struct Memo {
    max: usize,
    map: Mutex<std::collections::HashMap<u64, (Vec<Value>, Decision)>>,
}

impl Memo {
    fn new(max: usize) -> Self {
        Memo {
            max,
            map: Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn get(&self, hash: u64, key: &[Value]) -> Option<Decision> {
        match lock(&self.map).get(&hash) {
            Some((k, v)) if k.as_slice() == key => Some(v.clone()),
            _ => None,
        }
    }

    fn put(&self, hash: u64, key: Vec<Value>, value: Decision) {
        let mut map = lock(&self.map);
        if map.len() >= self.max {
            map.clear();
        }
        map.insert(hash, (key, value));
    }
}

/// A hash of a memo key (FNV-1a over a walk of the values): stable within the
/// process, cheap for the short strings keys are made of.
fn key_hash(key: &[Value]) -> u64 {
    fn bytes(h: &mut u64, b: &[u8]) {
        for &x in b {
            *h ^= u64::from(x);
            *h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    fn walk(h: &mut u64, v: &Value) {
        match v {
            Value::Null => bytes(h, b"n"),
            Value::Undefined => bytes(h, b"u"),
            Value::Bool(b) => bytes(h, if *b { b"t" } else { b"f" }),
            Value::Number(n) => {
                bytes(h, b"#");
                // Equal numbers need not hash equal (a miss, not a wrong answer).
                bytes(h, &n.as_f64().unwrap_or(f64::NAN).to_bits().to_le_bytes());
            }
            Value::String(s) => {
                bytes(h, b"s");
                bytes(h, s.as_bytes());
                bytes(h, &[0xff]);
            }
            Value::Array(a) => {
                bytes(h, b"[");
                for x in a.iter() {
                    walk(h, x);
                }
                bytes(h, b"]");
            }
            Value::Set(set) => {
                bytes(h, b"{");
                for x in set.iter() {
                    walk(h, x);
                }
                bytes(h, b"}");
            }
            Value::Object(o) => {
                bytes(h, b"(");
                for (k, x) in o.iter_sorted() {
                    walk(h, k);
                    walk(h, x);
                }
                bytes(h, b")");
            }
        }
    }
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for v in key {
        walk(&mut h, v);
    }
    h
}

/// Whether a decision came from the memo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoUse {
    /// Not memoised: the policy may read what the key cannot capture (the whole
    /// input, the clock, …), the cache is off, or the query has no VM/interpreter.
    Off,
    Hit,
    Miss,
}

impl MemoUse {
    /// The `result` label of `portcullis_policy_decision_cache_total`.
    pub fn label(self) -> Option<&'static str> {
        match self {
            MemoUse::Off => None,
            MemoUse::Hit => Some("hit"),
            MemoUse::Miss => Some("miss"),
        }
    }
}

/// One compiled policy revision. `Send + Sync`; share it as `Arc<PolicySet>`.
pub struct PolicySet {
    id: u64,
    revision: String,
    queries: Vec<QueryPlan>,
    limits: EvalLimits,
    data: Value,
    files: Vec<String>,
    /// Prepared interpreter engine; pooled clones evaluate fallback queries.
    prototype: Engine,
    engines: Mutex<Vec<Engine>>,
    /// Built on the first explanation asked of this revision.
    explainer: std::sync::OnceLock<Mutex<super::explain::Explainer>>,
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
                    .map(|q| (&q.query, kind_of(&q.plan)))
                    .collect::<Vec<_>>(),
            )
            .field("files", &self.files)
            .finish()
    }
}

fn kind_of(p: &Plan) -> EvaluatorKind {
    match p {
        Plan::Rvm(_) => EvaluatorKind::Rvm,
        Plan::Interpreter => EvaluatorKind::Interpreter,
        Plan::Undefined => EvaluatorKind::Undefined,
    }
}

/// A loaded source file: path used in messages and hashing, and its text.
struct SourceFile {
    name: String,
    text: String,
}

impl PolicySet {
    /// Loads every `*.rego` under `dir` (recursively; `*_test.rego` and
    /// hidden entries such as a ConfigMap's `..data` are skipped) and every
    /// `data.json` / `data.yaml` / `data.yml`, merged at the path of its
    /// directory relative to `dir` (as in OPA bundles), then compiles `queries`.
    ///
    /// A query that no module defines is not an error: it evaluates to undefined.
    pub fn load_dir(
        dir: &Path,
        queries: &[String],
        options: impl Into<PolicyOptions>,
    ) -> Result<PolicySet, PolicyError> {
        let mut rego = Vec::new();
        let mut data_files = Vec::new();
        walk(dir, dir, 0, &mut rego, &mut data_files)?;
        rego.sort_by(|a, b| a.name.cmp(&b.name));
        data_files.sort_by(|a, b| a.0.name.cmp(&b.0.name));

        let mut data = serde_json::Value::Object(serde_json::Map::new());
        for (file, at) in &data_files {
            let parsed = parse_data(&file.name, &file.text)?;
            super::bundle::merge_at(&mut data, at, parsed).map_err(|message| {
                PolicyError::Data {
                    path: file.name.clone(),
                    message,
                }
            })?;
        }
        let mut hashed: Vec<(&str, &str)> = rego
            .iter()
            .chain(data_files.iter().map(|(f, _)| f))
            .map(|f| (f.name.as_str(), f.text.as_str()))
            .collect();
        hashed.sort();
        let revision = revision_of(&hashed);
        let modules = rego.into_iter().map(|f| (f.name, f.text)).collect();
        Self::build(modules, data, queries, options.into(), revision)
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
        let mut hashed: Vec<(&str, &str)> = modules
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        hashed.sort();
        hashed.push(("<data>", data_text.as_str()));
        let revision = revision_of(&hashed);
        Self::build(modules, data, queries, options.into(), revision)
    }

    fn build(
        modules: Vec<(String, String)>,
        data: serde_json::Value,
        queries: &[String],
        options: PolicyOptions,
        revision: String,
    ) -> Result<PolicySet, PolicyError> {
        let limits = options.limits;
        let mut data = data;
        if let Some(path) = &options.workload_labels {
            if let Some(labels) = super::workload_labels::read(path)? {
                let at = super::workload_labels::DATA_PATH.map(String::from);
                super::bundle::merge_at(&mut data, &at, labels).map_err(|message| {
                    PolicyError::Data {
                        path: path.display().to_string(),
                        message,
                    }
                })?;
            }
        }
        let data_value = json_to_value(&data);
        let files: Vec<String> = modules.iter().map(|(n, _)| n.clone()).collect();

        let mut engine = super::parity::new_engine();
        engine.set_execution_timer_config(timer(&limits));
        // OPA-Envoy evaluates with non-strict builtin errors: a failing builtin call
        // is undefined (the RVM's default too).
        engine.set_strict_builtin_errors(false);
        if let Some(hook) = &options.extensions {
            hook(&mut engine).map_err(|e| PolicyError::Extension(format!("{e:#}")))?;
        }
        let modules = super::parity::rewrite_output_args(modules, &super::builtins::arity);
        for (name, text) in modules {
            engine
                .add_policy(name.clone(), text)
                .map_err(|e| PolicyError::from_regorus(&name, &e))?;
        }
        engine
            .add_data(data_value.clone())
            .map_err(|e| PolicyError::Data {
                path: "<data>".to_string(),
                message: format!("{e}"),
            })?;
        super::parity::refuse(&mut engine)?;

        let modules = engine.get_modules().clone();
        let analyse = |query: &str| {
            let access = InputAccess::of_query(&modules, query);
            tracing::debug!(revision = %short(&revision), %query, reads = ?access.describe(), memoisable = access.memoisable(), "input access");
            let memo = (options.decision_cache > 0 && access.memoisable())
                .then(|| Memo::new(options.decision_cache));
            (access.needs(), access, memo)
        };

        let conflict_risk = if options.force_interpreter {
            Some("forced by configuration".to_string())
        } else {
            conflict_risk(&mut engine)
        };
        if let Some(why) = &conflict_risk {
            tracing::info!(revision = %short(&revision), reason = %why, "policy set evaluated with the regorus interpreter");
        }

        let mut plans = Vec::with_capacity(queries.len());
        for query in queries {
            if !query.starts_with("data.") || query.len() <= 5 {
                return Err(PolicyError::Query {
                    query: query.clone(),
                    message: "queries look like data.<package>.<rule>".to_string(),
                });
            }
            let partial = super::parity::is_partial_document(&modules, query);
            if partial {
                // regorus compiles entry points only for whole rules; the interpreter
                // assembles the document from its partial rules.
                tracing::info!(%query, "the query names a partial object or set; using the regorus interpreter");
                let (needs, access, memo) = analyse(query);
                plans.push(QueryPlan {
                    query: query.clone(),
                    plan: Plan::Interpreter,
                    access,
                    needs,
                    memo,
                    partial,
                });
                continue;
            }
            let rule: regorus::Rc<str> = query.as_str().into();
            let compiled = match engine.compile_with_entrypoint(&rule) {
                Ok(c) => c,
                Err(e) if format!("{e}").contains("not a valid rule path") => {
                    tracing::info!(%query, "no policy module defines the query; it evaluates to undefined (deny)");
                    plans.push(QueryPlan {
                        query: query.clone(),
                        plan: Plan::Undefined,
                        access: InputAccess::everything(),
                        needs: InputNeeds::all(),
                        memo: None,
                        partial: false,
                    });
                    continue;
                }
                Err(e) => return Err(PolicyError::from_regorus(query, &e)),
            };
            let plan = if conflict_risk.is_some() {
                Plan::Interpreter
            } else {
                match Compiler::compile_from_policy(&compiled, &[query.as_str()]) {
                    Ok(program) => {
                        let vm = new_vm(&program, &data_value, &limits).map_err(|e| {
                            PolicyError::Data {
                                path: "<data>".to_string(),
                                message: format!("data conflicts with rules: {e}"),
                            }
                        })?;
                        Plan::Rvm(RvmPlan {
                            program,
                            pool: Mutex::new(vec![vm]),
                        })
                    }
                    Err(e) => {
                        let msg = format!("{e}");
                        let msg = msg.trim();
                        tracing::info!(%query, reason = %msg, "the RVM compiler rejected the query; using the regorus interpreter");
                        Plan::Interpreter
                    }
                }
            };
            let (needs, access, memo) = analyse(query);
            plans.push(QueryPlan {
                query: query.clone(),
                plan,
                access,
                needs,
                memo,
                partial,
            });
        }

        // Warm the prototype so clones skip preparation.
        engine.set_input(Value::new_object());
        for p in &plans {
            if matches!(p.plan, Plan::Interpreter) {
                let _ = eval_document(&mut engine, &p.query, p.partial);
            }
        }

        Ok(PolicySet {
            id: NEXT_SET_ID.fetch_add(1, Ordering::Relaxed),
            revision,
            queries: plans,
            limits,
            data: data_value,
            files,
            prototype: engine,
            engines: Mutex::new(Vec::new()),
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
        self.queries.get(query).map(|q| kind_of(&q.plan))
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

    /// Evaluates query number `query` and returns the raw result
    /// (`Value::Undefined` when undefined).
    pub fn evaluate_value(&self, query: usize, input: Value) -> Result<Value, DecisionError> {
        let q = self.queries.get(query).ok_or(DecisionError::NoPolicy)?;
        match &q.plan {
            Plan::Undefined => Ok(Value::Undefined),
            Plan::Interpreter => self.interpret(q, input),
            Plan::Rvm(rvm) => {
                // Keep a cheap handle on the input only for the rare undefined re-check.
                let input_again = input.clone();
                let v = self.run_vm(rvm, input)?;
                if v == Value::Undefined {
                    // The RVM reports some errors as undefined; let the interpreter
                    // tell an error from a genuinely undefined result.
                    return match self.interpret(q, input_again) {
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
    /// [`super::explain`]). Slow (one interpreter evaluation per expression tried):
    /// never call it on the request path.
    pub fn explain(
        &self,
        query: usize,
        input: Value,
    ) -> Result<super::explain::Explanation, super::explain::ExplainError> {
        let q = self
            .queries
            .get(query)
            .ok_or_else(|| super::explain::ExplainError::Query(format!("#{query}")))?;
        let explainer = self
            .explainer
            .get_or_init(|| Mutex::new(super::explain::Explainer::new(self.prototype.clone())));
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
        decision_from_value(&self.interpret(q, input)?)
    }

    fn run_vm(&self, rvm: &RvmPlan, input: Value) -> Result<Value, DecisionError> {
        let pooled = lock(&rvm.pool).pop();
        let mut vm = match pooled {
            Some(vm) => vm,
            None => new_vm(&rvm.program, &self.data, &self.limits)
                .map_err(|e| DecisionError::Eval(format!("{e}")))?,
        };
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            vm.set_input(input);
            let r = vm.execute();
            // Drop the reference to the input now rather than at the next request.
            vm.set_input(Value::Null);
            r
        }));
        match outcome {
            Ok(Ok(v)) => {
                let mut pool = lock(&rvm.pool);
                if pool.len() < POOL_CAP {
                    pool.push(vm);
                }
                Ok(v)
            }
            // A failed VM is dropped, not reused.
            Ok(Err(e)) => Err(vm_error(&e)),
            Err(_) => Err(DecisionError::Eval("the policy VM panicked".to_string())),
        }
    }

    fn interpret(&self, q: &QueryPlan, input: Value) -> Result<Value, DecisionError> {
        let pooled = lock(&self.engines).pop();
        let mut engine = pooled.unwrap_or_else(|| self.prototype.clone());
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            engine.set_input(input);
            let r = eval_document(&mut engine, &q.query, q.partial);
            engine.set_input(Value::Null);
            r
        }));
        match outcome {
            Ok(Ok(v)) => {
                let mut pool = lock(&self.engines);
                if pool.len() < POOL_CAP {
                    pool.push(engine);
                }
                Ok(v)
            }
            Ok(Err(e)) => Err(interpreter_error(&e)),
            Err(_) => Err(DecisionError::Eval(
                "the policy interpreter panicked".to_string(),
            )),
        }
    }
}

/// Evaluates the document `query` names. `eval_rule` is the fast path but
/// regorus 0.14 answers undefined for a document assembled from partial rules;
/// a query evaluates those as OPA does.
fn eval_document(engine: &mut Engine, query: &str, partial: bool) -> anyhow::Result<Value> {
    if !partial {
        return engine.eval_rule(query.to_string());
    }
    let results = engine.eval_query(query.to_string(), false)?;
    Ok(results
        .result
        .into_iter()
        .next()
        .and_then(|r| r.expressions.into_iter().next())
        .map_or(Value::Undefined, |e| e.value))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while a pool lock is held; recover the data if it ever did.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn short(revision: &str) -> &str {
    revision.get(..12).unwrap_or(revision)
}

fn timer(limits: &EvalLimits) -> ExecutionTimerConfig {
    ExecutionTimerConfig {
        limit: limits.timeout,
        check_interval: TIMER_CHECK_INTERVAL,
    }
}

fn new_vm(program: &Arc<Program>, data: &Value, limits: &EvalLimits) -> Result<RegoVM, VmError> {
    let mut vm = RegoVM::new();
    vm.load_program(program.clone());
    vm.set_data(data.clone())?;
    vm.set_max_instructions(limits.max_instructions);
    vm.set_execution_timer_config(Some(timer(limits)));
    Ok(vm)
}

fn vm_error(e: &VmError) -> DecisionError {
    match e {
        VmError::InstructionLimitExceeded { .. } | VmError::TimeLimitExceeded { .. } => {
            DecisionError::Timeout
        }
        other => DecisionError::Eval(one_line(&format!("{other}"))),
    }
}

fn interpreter_error(e: &anyhow::Error) -> DecisionError {
    if let Some(regorus::LimitError::TimeLimitExceeded { .. }) =
        e.downcast_ref::<regorus::LimitError>()
    {
        return DecisionError::Timeout;
    }
    let text = format!("{e}");
    if text.contains("exceeded time limit") {
        return DecisionError::Timeout;
    }
    DecisionError::Eval(one_line(&text))
}

/// Flattens regorus' multi-line error (with source excerpt) to
/// `file:line:col: message` for logs.
pub(crate) fn one_line(text: &str) -> String {
    let location = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("--> "));
    let message = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .unwrap_or_else(|| text.trim());
    match location {
        Some(loc) => format!("{loc}: {message}"),
        None => message.to_string(),
    }
}

fn revision_of(files: &[(&str, &str)]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for (name, text) in files {
        // Length-prefix both parts so different splits cannot collide.
        ctx.update(&(name.len() as u64).to_be_bytes());
        ctx.update(name.as_bytes());
        ctx.update(&(text.len() as u64).to_be_bytes());
        ctx.update(text.as_bytes());
    }
    hex::encode(ctx.finish().as_ref())
}

/// Finds a rule or function that can produce conflicting values: more than
/// one definition (or legacy non-`else` body) whose values are not all the same
/// constant. `allow if …` repeated is fine (always `true`); `x := 1 if …` and
/// `x := 2 if …` is not. Partial-object rules with computed values are treated
/// as risky too. Returns a description of the first such rule.
fn conflict_risk(engine: &mut Engine) -> Option<String> {
    // (package, rule path) -> (definitions, distinct constant values, any non-constant)
    let mut groups: BTreeMap<String, (usize, Vec<Value>, bool)> = BTreeMap::new();
    for module in engine.get_modules().iter() {
        let package = module.package.refr.span().text().to_string();
        for rule in module.policy.iter() {
            let Rule::Spec { head, bodies, .. } = rule.as_ref() else {
                continue;
            };
            let (refr, head_assign, is_func) = match head {
                RuleHead::Compr { refr, assign, .. } => (refr, assign, false),
                RuleHead::Func { refr, assign, .. } => (refr, assign, true),
                RuleHead::Set { .. } => continue,
            };
            let path = refr.span().text().to_string();
            let partial_object = !is_func && path.contains('[');
            let entry = groups
                .entry(format!("{package}.{path}"))
                .or_insert((0, Vec::new(), false));
            let mut definitions = bodies.iter().filter(|b| !b.is_else).count().max(1);
            if partial_object {
                // Each key is its own "definition"; different keys never conflict,
                // the same key with a computed value might.
                definitions = 2;
            }
            entry.0 += definitions;
            let values = std::iter::once(head_assign.as_ref())
                .chain(bodies.iter().map(|b| b.assign.as_ref()));
            for assign in values {
                match assign.map(|a| a.value.as_ref()) {
                    None => push_distinct(&mut entry.1, Value::Bool(true)),
                    Some(
                        Expr::Bool { value, .. }
                        | Expr::Number { value, .. }
                        | Expr::String { value, .. }
                        | Expr::RawString { value, .. }
                        | Expr::Null { value, .. },
                    ) => push_distinct(&mut entry.1, value.clone()),
                    Some(_) => entry.2 = true,
                }
            }
        }
    }
    groups
        .into_iter()
        .find(|(_, (defs, consts, computed))| *defs > 1 && (*computed || consts.len() > 1))
        .map(|(name, _)| format!("rule `{name}` has several definitions that could conflict"))
}

fn push_distinct(v: &mut Vec<Value>, x: Value) {
    if !v.contains(&x) {
        v.push(x);
    }
}

fn walk(
    root: &Path,
    dir: &Path,
    depth: usize,
    rego: &mut Vec<SourceFile>,
    data: &mut Vec<(SourceFile, Vec<String>)>,
) -> Result<(), PolicyError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PolicyError::Io { path, source }
    };
    if depth > super::watch::MAX_DEPTH {
        return Err(io(dir)(std::io::Error::other(
            "directories nested too deeply (a link loop?)",
        )));
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // Hidden entries: editor files, and a ConfigMap mount's `..data` links.
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::metadata(&path).map_err(io(&path))?;
        if meta.is_dir() {
            walk(root, &path, depth + 1, rego, data)?;
            continue;
        }
        let is_rego = name.ends_with(".rego") && !name.ends_with("_test.rego");
        let is_data = matches!(name, "data.json" | "data.yaml" | "data.yml");
        if !is_rego && !is_data {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let file = SourceFile {
            name: path.display().to_string(),
            text,
        };
        if is_rego {
            rego.push(file);
        } else {
            let rel = dir.strip_prefix(root).unwrap_or(Path::new(""));
            let at = rel
                .components()
                .filter_map(|c| c.as_os_str().to_str().map(str::to_string))
                .collect();
            data.push((file, at));
        }
    }
    Ok(())
}

fn parse_data(name: &str, text: &str) -> Result<serde_json::Value, PolicyError> {
    super::bundle::parse_data_document(name, text).map_err(|message| PolicyError::Data {
        path: name.to_string(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::input::{build_input, HttpFacts, InputFacts};
    use std::time::Instant;

    const AUTHZ: &str = "data.envoy.authz.allow";
    const OUTBOUND: &str = "data.portcullis.outbound.allow";
    const FRONTEND: &str = "spiffe://cluster.local/ns/default/sa/frontend";
    const REPORTING: &str = "spiffe://cluster.local/ns/default/sa/reporting";

    fn policies_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
    }

    /// Default options with a time budget that a debug build on a loaded machine
    /// cannot exceed by accident: these tests are about results, not limits (the
    /// limit tests set their own).
    fn test_options() -> PolicyOptions {
        PolicyOptions {
            limits: EvalLimits {
                timeout: Duration::from_secs(10),
                ..EvalLimits::default()
            },
            ..PolicyOptions::default()
        }
    }

    fn example(options: PolicyOptions) -> PolicySet {
        let queries = vec![AUTHZ.to_string(), OUTBOUND.to_string()];
        PolicySet::load_dir(&policies_dir(), &queries, options)
            .unwrap_or_else(|e| panic!("loading policies/: {e}"))
    }

    fn set(modules: &[(&str, &str)], query: &str) -> Result<PolicySet, PolicyError> {
        PolicySet::from_sources(
            modules
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect(),
            serde_json::Value::Null,
            &[query.to_string()],
            EvalLimits {
                timeout: Duration::from_millis(200),
                max_instructions: 200_000,
            },
        )
    }

    struct Req {
        principal: Option<&'static str>,
        method: &'static str,
        path: &'static str,
        jwt: Option<serde_json::Value>,
    }

    fn input_for(r: &Req) -> Value {
        let mut headers = http::HeaderMap::new();
        headers.insert("user-agent", http::HeaderValue::from_static("test"));
        let facts = InputFacts {
            source_address: "10.1.0.7:35568".parse().unwrap_or_else(|e| panic!("{e}")),
            source_principal: r.principal,
            destination_address: "10.1.0.9:8080".parse().unwrap_or_else(|e| panic!("{e}")),
            destination_principal: Some("spiffe://cluster.local/ns/default/sa/demo"),
            http: Some(HttpFacts {
                id: "1",
                method: r.method,
                path: r.path,
                host: "demo:8080",
                scheme: "http",
                protocol: "HTTP/1.1",
                headers: &headers,
                size: None,
                body: None,
                truncated_body: false,
                content_type: None,
            }),
            jwt: r.jwt.as_ref().map(|c| ("jwt_payload", c)),
        };
        build_input(&facts)
    }

    fn req(principal: Option<&'static str>, method: &'static str, path: &'static str) -> Req {
        Req {
            principal,
            method,
            path,
            jwt: None,
        }
    }

    fn cases() -> Vec<(Req, bool)> {
        vec![
            (req(Some(FRONTEND), "GET", "/api/orders"), true),
            (req(Some(FRONTEND), "POST", "/api/orders"), true),
            (req(Some(FRONTEND), "DELETE", "/api/orders/1"), false),
            (req(Some(REPORTING), "GET", "/api/orders?x=1"), true),
            (req(Some(REPORTING), "POST", "/api/orders"), false),
            (req(Some(REPORTING), "GET", "/admin"), false),
            (req(None, "GET", "/api/orders"), false),
            (req(None, "GET", "/healthz"), true),
            (
                req(
                    Some("spiffe://evil.example/ns/default/sa/frontend"),
                    "GET",
                    "/api/x",
                ),
                false,
            ),
            (
                Req {
                    principal: Some(FRONTEND),
                    method: "DELETE",
                    path: "/api/orders/1",
                    jwt: Some(serde_json::json!({"sub": "alice", "role": "admin"})),
                },
                true,
            ),
            (
                Req {
                    principal: Some(FRONTEND),
                    method: "DELETE",
                    path: "/api/orders/1",
                    jwt: Some(serde_json::json!({"sub": "bob", "role": "viewer"})),
                },
                false,
            ),
        ]
    }

    #[test]
    fn policy_set_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<PolicySet>();
        fn send<T: Send>() {}
        send::<RegoVM>();
    }

    #[test]
    fn example_policy_uses_rvm_and_decides() {
        let ps = example(test_options());
        assert_eq!(ps.evaluator(0), Some(EvaluatorKind::Rvm), "{ps:?}");
        assert_eq!(ps.evaluator(1), Some(EvaluatorKind::Rvm), "{ps:?}");
        assert_eq!(ps.revision().len(), 64);
        assert_eq!(ps.short_revision().len(), 12);
        for (r, want) in cases() {
            let d = ps
                .evaluate(0, input_for(&r))
                .unwrap_or_else(|e| panic!("{} {}: {e}", r.method, r.path));
            assert_eq!(
                d.allowed, want,
                "{:?} {} {}: {d:?}",
                r.principal, r.method, r.path
            );
            if want {
                assert!(d.http_status.is_none());
            } else {
                assert_eq!(d.http_status, Some(403));
                assert!(d.reason.is_some(), "deny without a reason: {d:?}");
            }
        }
        // The object result carries the role header.
        let d = ps
            .evaluate(0, input_for(&req(Some(REPORTING), "GET", "/api/x")))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(d
            .headers
            .contains(&("x-portcullis-role".to_string(), "reader".to_string())));
    }

    #[test]
    fn rvm_and_interpreter_agree_on_example() {
        let rvm = example(test_options());
        let interp = example(PolicyOptions {
            force_interpreter: true,
            ..test_options()
        });
        assert_eq!(interp.evaluator(0), Some(EvaluatorKind::Interpreter));
        assert_eq!(rvm.revision(), interp.revision());
        for (r, _) in cases() {
            let a = rvm.evaluate(0, input_for(&r));
            let b = interp.evaluate(0, input_for(&r));
            let c = rvm.evaluate_interpreted(0, input_for(&r));
            assert_eq!(a, b, "{:?} {} {}", r.principal, r.method, r.path);
            assert_eq!(a, c);
        }
    }

    /// The example RBAC policy as first written (plain rules, one helper per
    /// fact). `policies/authz.rego` is restructured for the VM's speed; it
    /// must decide exactly like this on every input.
    const REFERENCE_AUTHZ: &str = r#"# Inbound authorization for the demo services, OPA-Envoy style.
#
# Query: data.envoy.authz.allow (the configured default). It always yields an
# OPA-Envoy result OBJECT, so denials carry a status and a reason:
#
#   permitted: {"allowed": true, "headers": {"x-portcullis-role": "<roles>"}}
#   denied:    {"allowed": false, "http_status": 403, "body": "...", "reason": "..."}
#
# Who may do what lives in data.rbac (data.yaml): workload SPIFFE IDs are bound
# to roles, roles grant methods on path prefixes ("/api/**": /api and below).
# Prefixes rather than glob.match keep a decision fast: regorus compiles the
# glob on every call (≈2x the evaluation time). End users add roles through the
# `role` claim of their verified JWT (jwt_authn metadata), e.g. `admin` may DELETE.
package envoy.authz

import rego.v1

allow := {"allowed": true, "headers": {"x-portcullis-role": concat(",", sort(granted))}} if {
	count(granted) > 0
} else := {
	"allowed": false,
	"http_status": 403,
	"body": sprintf("forbidden: %s\n", [reason]),
	"reason": reason,
}

# --- request facts -----------------------------------------------------------

principal := input.attributes.source.principal

method := input.attributes.request.http.method

# The decoded request path without the query, rebuilt from parsed_path.
request_path := concat("/", array.concat([""], input.parsed_path))

# With a trailing slash, so "/api/**" matches "/api" and "/api/x" but not "/apix".
request_path_slash := concat("", [request_path, "/"])

jwt := input.attributes.metadataContext.filterMetadata["envoy.filters.http.jwt_authn"].jwt_payload

# The caller is a workload of our own trust domain.
in_mesh if startswith(principal, sprintf("spiffe://%s/", [data.mesh.trust_domain]))

# --- roles ---------------------------------------------------------------------

caller_roles contains role if {
	in_mesh
	some role in data.rbac.bindings[principal]
}

caller_roles contains role if {
	in_mesh
	some role in data.rbac.jwt_roles[jwt.role]
}

# Roles whose grants permit this method on this path, plus "public".
granted contains role if {
	some role in caller_roles
	some grant in data.rbac.roles[role]
	method in grant.methods
	some prefix in grant.paths
	startswith(request_path_slash, trim_suffix(prefix, "**"))
}

granted contains "public" if {
	method in {"GET", "HEAD"}
	request_path in data.rbac.public_paths
}

# --- why not -------------------------------------------------------------------

reason := "no HTTP request" if {
	not method
} else := "no peer identity (mTLS required)" if {
	not principal
} else := sprintf("%s is outside trust domain %s", [principal, data.mesh.trust_domain]) if {
	not in_mesh
} else := sprintf("%s has no role", [principal]) if {
	count(caller_roles) == 0
} else := sprintf("roles %v of %s do not permit %s %s", [sort(caller_roles), principal, method, request_path])
"#;

    #[test]
    fn example_authz_matches_reference_policy() {
        let dir = policies_dir();
        let data = std::fs::read_to_string(dir.join("data.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let data: serde_json::Value = serde_yaml::from_str(&data).unwrap_or_else(|e| panic!("{e}"));
        let reference_with = |force_interpreter: bool| {
            PolicySet::from_sources(
                vec![("reference.rego".to_string(), REFERENCE_AUTHZ.to_string())],
                data.clone(),
                &[AUTHZ.to_string()],
                PolicyOptions {
                    force_interpreter,
                    ..test_options()
                },
            )
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let reference = reference_with(true);
        let reference_rvm = reference_with(false);
        assert_eq!(reference_rvm.evaluator(0), Some(EvaluatorKind::Rvm));
        let rvm = example(test_options());
        assert_eq!(rvm.evaluator(0), Some(EvaluatorKind::Rvm));

        let principals = [
            None,
            Some(FRONTEND),
            Some(REPORTING),
            Some("spiffe://cluster.local/ns/default/sa/other"),
            Some("spiffe://evil.example/ns/default/sa/frontend"),
            Some("spiffe://cluster.local"),
            Some("spiffe://cluster.localx/ns/a/sa/b"),
        ];
        let methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
        let paths = [
            "/",
            "/api",
            "/api/",
            "/apix",
            "/api/orders/1?x=1",
            "/admin",
            "/admin/x",
            "/healthz",
            "/healthz/",
            "/healthz?probe=1",
            "/%61pi/x",
            "/api%2Fx",
            "//api/x",
            "/x/api",
        ];
        let claims = [
            None,
            Some(serde_json::json!({"sub": "alice", "role": "admin"})),
            Some(serde_json::json!({"sub": "bob", "role": "viewer"})),
            Some(serde_json::json!({"sub": "carol"})),
            Some(serde_json::json!({"role": 7})),
            Some(serde_json::json!({"role": ["admin"]})),
        ];
        let headers = http::HeaderMap::new();
        let mut checked = 0;
        for principal in principals {
            for jwt in &claims {
                for http in [false, true] {
                    for method in methods {
                        for path in paths {
                            let facts = InputFacts {
                                source_address: "10.1.0.7:35568"
                                    .parse()
                                    .unwrap_or_else(|e| panic!("{e}")),
                                source_principal: principal,
                                destination_address: "10.1.0.9:8080"
                                    .parse()
                                    .unwrap_or_else(|e| panic!("{e}")),
                                destination_principal: Some(
                                    "spiffe://cluster.local/ns/default/sa/demo",
                                ),
                                http: http.then_some(HttpFacts {
                                    id: "1",
                                    method,
                                    path,
                                    host: "demo:8080",
                                    scheme: "http",
                                    protocol: "HTTP/1.1",
                                    headers: &headers,
                                    size: None,
                                    body: None,
                                    truncated_body: false,
                                    content_type: None,
                                }),
                                jwt: jwt.as_ref().map(|c| ("jwt_payload", c)),
                            };
                            let input = build_input(&facts);
                            let want = reference.evaluate_value(0, input.clone());
                            let got = rvm.evaluate_value(0, input.clone());
                            let got_interpreted = rvm.evaluate_interpreted(0, input);
                            assert_eq!(got, want, "{principal:?} {jwt:?} {http} {method} {path}");
                            assert_eq!(
                                got_interpreted,
                                want.clone().and_then(|v| decision_from_value(&v)),
                                "{principal:?} {jwt:?} {http} {method} {path}"
                            );
                            checked += 1;
                            if !http {
                                break;
                            }
                        }
                        if !http {
                            break;
                        }
                    }
                }
            }
        }
        assert!(checked > 1000, "{checked}");

        // Hand-made documents the proxy never builds (a non-string principal is
        // an error on the interpreter, undefined on the VM: compare like with like).
        for doc in [
            r#"{}"#,
            r#"{"attributes": {"request": {"http": {"method": "GET"}}}}"#,
            r#"{"attributes": {"request": {"http": {"method": "GET"}}}, "parsed_path": ["healthz"]}"#,
            r#"{"attributes": {"source": {"principal": "spiffe://cluster.local/ns/default/sa/frontend"}, "request": {"http": {"method": "GET"}}}, "parsed_path": ["api"]}"#,
            r#"{"attributes": {"source": {"principal": "spiffe://cluster.local/ns/default/sa/frontend"}, "request": {"http": {"method": "GET"}}}}"#,
            r#"{"attributes": {"source": {"principal": "spiffe://cluster.local/ns/default/sa/frontend"}, "request": {"http": {"method": "DELETE"}}, "metadataContext": {"filterMetadata": {"envoy.filters.http.jwt_authn": {"jwt_payload": "admin"}}}}, "parsed_path": ["api"]}"#,
            r#"{"attributes": {"source": {"principal": 42}, "request": {"http": {"method": "GET"}}}, "parsed_path": ["api"]}"#,
        ] {
            let input = Value::from_json_str(doc).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                rvm.evaluate_value(0, input.clone()),
                reference_rvm.evaluate_value(0, input.clone()),
                "{doc}"
            );
            // Errors name different files and lines; compare their kind.
            assert_eq!(
                rvm.evaluate_interpreted(0, input.clone())
                    .map_err(|e| e.reason()),
                reference.evaluate(0, input).map_err(|e| e.reason()),
                "{doc}"
            );
        }
    }

    /// The decision cache and the pruned input are invisible: for every input, a
    /// set that memoises and builds only the headers its rules read decides exactly
    /// as one that evaluates the full document every time.
    #[test]
    fn memo_and_pruned_input_decide_as_the_full_input() {
        let header_policy = r#"package envoy.authz
import rego.v1
default allow := false
allow if input.attributes.request.http.headers["x-magic"] == "please"
allow if { input.parsed_path[0] == "h"; input.attributes.request.http.headers[":method"] == "GET" }
allow := {"allowed": false, "http_status": 418, "body": input.attributes.request.http.headers["x-why"]} if input.parsed_path[0] == "teapot"
"#;
        let enumerating = r#"package envoy.authz
import rego.v1
default allow := false
allow if count(input.attributes.request.http.headers) > 6
allow if { some k, _ in input.attributes.request.http.headers; startswith(k, "x-admin") }
"#;
        let id_reading = r#"package envoy.authz
import rego.v1
allow if endswith(input.attributes.request.http.id, "7")
"#;
        let whole = r#"package envoy.authz
import rego.v1
allow if { s := json.marshal(input); contains(s, "please") }
"#;
        // (name, module source or the example policies, memoisable)
        let sets: [(&str, Option<&str>, bool); 5] = [
            ("example", None, true),
            ("headers", Some(header_policy), true),
            ("enumerating", Some(enumerating), true),
            ("id", Some(id_reading), true),
            ("whole", Some(whole), false),
        ];
        let make = |src: Option<&str>, n: usize| {
            let options = PolicyOptions {
                decision_cache: n,
                ..test_options()
            };
            match src {
                None => example(options),
                Some(src) => PolicySet::from_sources(
                    vec![("p.rego".into(), src.into())],
                    serde_json::Value::Null,
                    &[AUTHZ.to_string()],
                    options,
                )
                .unwrap_or_else(|e| panic!("{e}")),
            }
        };
        let header_sets: Vec<http::HeaderMap> = [
            &[][..],
            &[("x-magic", "please")][..],
            &[("x-magic", "no"), ("x-why", "because")][..],
            &[("x-admin-token", "1"), ("accept", "*/*")][..],
            &[
                ("a", "1"),
                ("b", "2"),
                ("c", "3"),
                ("d", "4"),
                ("x-magic", "please"),
                ("x-magic", "again"),
            ][..],
        ]
        .iter()
        .map(|hs| {
            let mut m = http::HeaderMap::new();
            for (k, v) in *hs {
                m.append(*k, http::HeaderValue::from_static(v));
            }
            m
        })
        .collect();
        let claims = [
            None,
            Some(serde_json::json!({"sub": "alice", "role": "admin", "exp": 1})),
            Some(serde_json::json!({"sub": "alice", "role": "admin", "exp": 2})),
        ];
        for (name, src, memoisable) in sets {
            let plain = make(src, 0);
            let memo = make(src, 16); // small: the table starts over many times
            assert_eq!(
                memo.input_access(0).map(InputAccess::memoisable),
                Some(memoisable),
                "{name}"
            );
            let mut hits = 0;
            let mut checked = 0;
            // Two rounds: the second mostly answered from the memo.
            for round in 0..2 {
                for (i, principal) in [Some(FRONTEND), Some(REPORTING), None].iter().enumerate() {
                    for method in ["GET", "POST", "DELETE"] {
                        for path in ["/api/x", "/admin", "/h", "/teapot", "/healthz"] {
                            for headers in &header_sets {
                                for jwt in &claims {
                                    let id = format!("req-{round}-{i}-{checked}");
                                    let facts = InputFacts {
                                        source_address: "10.1.0.7:35568"
                                            .parse()
                                            .unwrap_or_else(|e| panic!("{e}")),
                                        source_principal: *principal,
                                        destination_address: "10.1.0.9:8080"
                                            .parse()
                                            .unwrap_or_else(|e| panic!("{e}")),
                                        destination_principal: Some(
                                            "spiffe://cluster.local/ns/default/sa/demo",
                                        ),
                                        http: Some(HttpFacts {
                                            id: &id,
                                            method,
                                            path,
                                            host: "demo:8080",
                                            scheme: "https",
                                            protocol: "HTTP/1.1",
                                            headers,
                                            size: None,
                                            body: None,
                                            truncated_body: false,
                                            content_type: None,
                                        }),
                                        jwt: jwt.as_ref().map(|c| ("jwt_payload", c)),
                                    };
                                    let want = plain.evaluate(0, build_input(&facts));
                                    let (got, used) = memo.decide(0, &facts);
                                    assert_eq!(
                                        got, want,
                                        "{name}: {principal:?} {method} {path} {headers:?} {jwt:?}"
                                    );
                                    if !memoisable {
                                        assert_eq!(used, MemoUse::Off, "{name}");
                                    }
                                    hits += usize::from(used == MemoUse::Hit);
                                    checked += 1;
                                }
                            }
                        }
                    }
                }
            }
            assert!(checked > 1000, "{checked}");
            if memoisable && name != "id" {
                assert!(hits > checked / 4, "{name}: {hits} hits of {checked}");
            }
        }
    }

    #[test]
    fn memo_confirms_the_whole_key_and_starts_over_when_full() {
        let memo = Memo::new(2);
        let a = vec![Value::from("spiffe://a"), Value::from("GET")];
        let b = vec![Value::from("spiffe://b"), Value::from("GET")];
        memo.put(7, a.clone(), Decision::allow());
        // The same hash with another key (a collision) is a miss, not a's result.
        assert_eq!(memo.get(7, &b), None);
        assert_eq!(memo.get(7, &a), Some(Decision::allow()));
        assert_eq!(key_hash(&a), key_hash(&a.clone()));
        assert_ne!(key_hash(&a), key_hash(&b));
        memo.put(8, b.clone(), Decision::deny());
        memo.put(9, vec![Value::Undefined], Decision::deny());
        assert_eq!(lock(&memo.map).len(), 1, "full: started over");
    }

    #[test]
    fn outbound_policy() {
        let ps = example(test_options());
        let mk = |dst: &str, principal: Option<&'static str>, host: Option<&'static str>| {
            let headers = http::HeaderMap::new();
            let facts = InputFacts {
                source_address: "127.0.0.1:40000".parse().unwrap_or_else(|e| panic!("{e}")),
                source_principal: Some("spiffe://cluster.local/ns/default/sa/demo"),
                destination_address: dst.parse().unwrap_or_else(|e| panic!("{e}")),
                destination_principal: principal,
                http: host.map(|h| HttpFacts {
                    id: "1",
                    method: "GET",
                    path: "/",
                    host: h,
                    scheme: "https",
                    protocol: "HTTP/1.1",
                    headers: &headers,
                    size: None,
                    body: None,
                    truncated_body: false,
                    content_type: None,
                }),
                jwt: None,
            };
            ps.evaluate(1, build_input(&facts))
                .unwrap_or_else(|e| panic!("{e}"))
                .allowed
        };
        assert!(mk("10.1.0.9:8080", Some(FRONTEND), None));
        assert!(!mk(
            "10.1.0.9:8080",
            Some("spiffe://other.domain/ns/x/sa/y"),
            None
        ));
        assert!(!mk("93.184.216.34:443", None, None));
        assert!(mk("93.184.216.34:443", None, Some("api.github.com")));
        assert!(!mk("93.184.216.34:443", None, Some("evil.example")));
        assert!(mk("10.96.0.10:53", None, None));
    }

    /// The OPA-Envoy primer's decision: a partial object queried whole, with a
    /// partial set feeding it, decided through the serving path (`decide`, pruned
    /// input, decision cache) inbound and outbound, on the VM and the interpreter.
    #[test]
    fn partial_object_and_set_decisions_in_the_serving_path() {
        let inbound = r#"package envoy.authz
import rego.v1
default allow := false
allow if input.attributes.request.http.method == "GET"
allow if "admin" in roles
roles contains "admin" if input.attributes.request.http.headers["x-role"] == "admin"
roles contains "viewer" if input.attributes.source.principal
denials contains "method" if not allow
result["allowed"] := allow
result["headers"] := {"x-ext-auth-allow": "yes"} if allow
result["http_status"] := 403 if not allow
result["body"] := concat(",", denials) if not allow
"#;
        let outbound = r#"package portcullis.outbound
import rego.v1
default decision.allowed := false
decision["allowed"] := true if input.attributes.destination.principal
decision.reason := "mesh peer"
"#;
        let queries = [
            "data.envoy.authz.result".to_string(),
            "data.portcullis.outbound.decision".to_string(),
        ];
        for force_interpreter in [false, true] {
            for decision_cache in [0, 16] {
                let ps = PolicySet::from_sources(
                    vec![
                        ("in.rego".to_string(), inbound.to_string()),
                        ("out.rego".to_string(), outbound.to_string()),
                    ],
                    serde_json::Value::Null,
                    &queries,
                    PolicyOptions {
                        force_interpreter,
                        decision_cache,
                        ..test_options()
                    },
                )
                .unwrap_or_else(|e| panic!("{e}"));
                for (method, role, want) in [
                    ("GET", "", true),
                    ("POST", "", false),
                    ("POST", "admin", true),
                    ("POST", "viewer", false),
                    ("GET", "admin", true),
                ] {
                    let mut headers = http::HeaderMap::new();
                    if !role.is_empty() {
                        headers.insert(
                            "x-role",
                            http::HeaderValue::from_str(role).unwrap_or_else(|e| panic!("{e}")),
                        );
                    }
                    let facts = InputFacts {
                        source_address: "10.1.0.7:35568".parse().unwrap_or_else(|e| panic!("{e}")),
                        source_principal: Some(FRONTEND),
                        destination_address: "10.1.0.9:8080"
                            .parse()
                            .unwrap_or_else(|e| panic!("{e}")),
                        destination_principal: Some(REPORTING),
                        http: Some(HttpFacts {
                            id: "1",
                            method,
                            path: "/x",
                            host: "demo:8080",
                            scheme: "http",
                            protocol: "HTTP/1.1",
                            headers: &headers,
                            size: None,
                            body: None,
                            truncated_body: false,
                            content_type: None,
                        }),
                        jwt: None,
                    };
                    for _ in 0..2 {
                        let (d, _) = ps.decide(0, &facts);
                        let d = d.unwrap_or_else(|e| {
                            panic!("{method} {role} interp={force_interpreter}: {e}")
                        });
                        assert_eq!(d.allowed, want, "{method} {role}: {d:?}");
                        if want {
                            assert_eq!(
                                d.headers,
                                vec![("x-ext-auth-allow".to_string(), "yes".to_string())]
                            );
                        } else {
                            assert_eq!(d.http_status, Some(403));
                            assert_eq!(d.body.as_deref(), Some("method"));
                        }
                        let (d, _) = ps.decide(1, &facts);
                        let d = d.unwrap_or_else(|e| panic!("outbound: {e}"));
                        assert!(d.allowed);
                        assert_eq!(d.reason.as_deref(), Some("mesh peer"));
                    }
                }
            }
        }
    }

    #[test]
    fn undefined_query_is_not_a_load_error() {
        let ps = set(
            &[("a.rego", "package a\nimport rego.v1\nx := 1\n")],
            "data.nothing.here",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ps.evaluator(0), Some(EvaluatorKind::Undefined));
        assert_eq!(
            ps.evaluate(0, Value::new_object()),
            Err(DecisionError::Undefined)
        );
        assert_eq!(
            ps.evaluate(5, Value::new_object()),
            Err(DecisionError::NoPolicy)
        );

        // Defined rule without a default that does not match → undefined.
        let ps = set(
            &[(
                "a.rego",
                "package a\nimport rego.v1\nallow if input.x == 1\n",
            )],
            "data.a.allow",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ps.evaluator(0), Some(EvaluatorKind::Rvm));
        assert_eq!(
            ps.evaluate(0, Value::new_object()),
            Err(DecisionError::Undefined)
        );
    }

    #[test]
    fn wrong_shape() {
        let ps = set(
            &[("a.rego", "package a\nimport rego.v1\nallow := \"yes\"\n")],
            "data.a.allow",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            ps.evaluate(0, Value::new_object()),
            Err(DecisionError::WrongShape(_))
        ));
    }

    #[test]
    fn runtime_errors_are_eval_errors() {
        // Division by zero is a builtin error: non-strict, as OPA-Envoy evaluates,
        // the expression is undefined (so is the rule), on the VM and the interpreter.
        for force_interpreter in [false, true] {
            let ps = PolicySet::from_sources(
                vec![(
                    "a.rego".to_string(),
                    "package a\nimport rego.v1\nallow := 1 / input.z\n".to_string(),
                )],
                serde_json::Value::Null,
                &["data.a.allow".to_string()],
                PolicyOptions {
                    force_interpreter,
                    ..test_options()
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let input = Value::from_json_str(r#"{"z": 0}"#).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(ps.evaluate(0, input), Err(DecisionError::Undefined));
        }

        // Conflicting complete rule: evaluated with the interpreter, an error.
        let ps = set(
            &[(
                "a.rego",
                "package a\nimport rego.v1\ndefault allow := false\nallow if not denied\ndenied := true if input.a\ndenied := false if input.b\n",
            )],
            "data.a.allow",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ps.evaluator(0), Some(EvaluatorKind::Interpreter));
        let input =
            Value::from_json_str(r#"{"a": true, "b": true}"#).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(ps.evaluate(0, input), Err(DecisionError::Eval(_))));
        let input = Value::from_json_str(r#"{"a": true}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ps.evaluate(0, input).map(|d| d.allowed), Ok(false));
    }

    #[test]
    fn repeated_boolean_rules_stay_on_rvm() {
        let ps = set(
            &[(
                "a.rego",
                "package a\nimport rego.v1\ndefault allow := false\nallow if input.a\nallow if input.b\nmsg := \"x\" if input.a else := \"y\"\n",
            )],
            "data.a.allow",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ps.evaluator(0), Some(EvaluatorKind::Rvm));
    }

    #[test]
    fn instruction_budget_alone_stops_the_vm() {
        // A loop of ~10k iterations: fine under a large budget, denied under a small
        // one, with a timer so generous that only the instruction count can stop it.
        let src = "package a\nimport rego.v1\nallow if sum([x | some x in numbers.range(1, 10000)]) > 0\n";
        let with_budget = |max_instructions| {
            PolicySet::from_sources(
                vec![("a.rego".to_string(), src.to_string())],
                serde_json::Value::Null,
                &["data.a.allow".to_string()],
                PolicyOptions {
                    limits: EvalLimits {
                        timeout: Duration::from_secs(60),
                        max_instructions,
                    },
                    force_interpreter: false,
                    extensions: None,
                    decision_cache: 0,
                    workload_labels: None,
                },
            )
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let generous = with_budget(10_000_000);
        assert_eq!(generous.evaluator(0), Some(EvaluatorKind::Rvm));
        assert!(generous.evaluate(0, Value::new_object()).unwrap().allowed);
        let tight = with_budget(1_000);
        assert_eq!(
            tight.evaluate(0, Value::new_object()),
            Err(DecisionError::Timeout)
        );
        // The pooled VM that hit the limit is not left stuck: the next decision
        // runs (and is stopped) the same way.
        assert_eq!(
            tight.evaluate(0, Value::new_object()),
            Err(DecisionError::Timeout)
        );
        // An ordinary decision fits in the same small budget.
        let cheap = PolicySet::from_sources(
            vec![(
                "a.rego".to_string(),
                "package a\nimport rego.v1\nallow if input.x == 1\n".to_string(),
            )],
            serde_json::Value::Null,
            &["data.a.allow".to_string()],
            PolicyOptions {
                limits: EvalLimits {
                    timeout: Duration::from_secs(60),
                    max_instructions: 1_000,
                },
                force_interpreter: false,
                extensions: None,
                decision_cache: 0,
                workload_labels: None,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut input = Value::new_object();
        input
            .as_object_mut()
            .unwrap()
            .insert(Value::from("x"), Value::from(1u64));
        for _ in 0..3 {
            assert!(cheap.evaluate(0, input.clone()).unwrap().allowed);
        }
    }

    #[test]
    fn runaway_policy_is_stopped() {
        let ps = set(
            &[(
                "a.rego",
                "package a\nimport rego.v1\nallow := count([x | some i in numbers.range(1, 100000); some j in numbers.range(1, 100000); x := i * j]) > 0\n",
            )],
            "data.a.allow",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let start = Instant::now();
        assert_eq!(
            ps.evaluate(0, Value::new_object()),
            Err(DecisionError::Timeout)
        );
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );

        // The interpreter path is bounded by the timer.
        let ps = PolicySet::from_sources(
            vec![(
                "a.rego".to_string(),
                "package a\nimport rego.v1\nallow := count([x | some i in numbers.range(1, 100000); some j in numbers.range(1, 100000); x := i * j]) > 0\n".to_string(),
            )],
            serde_json::Value::Null,
            &["data.a.allow".to_string()],
            PolicyOptions {
                limits: EvalLimits {
                    timeout: Duration::from_millis(100),
                    max_instructions: 200_000,
                },
                force_interpreter: true,
                extensions: None,
                decision_cache: 0,
                workload_labels: None,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let start = Instant::now();
        assert_eq!(
            ps.evaluate(0, Value::new_object()),
            Err(DecisionError::Timeout)
        );
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn a_link_loop_in_the_policy_directory_is_an_error_not_a_crash() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            dir.path().join("a.rego"),
            "package a\nimport rego.v1\nallow := true\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir(dir.path().join("sub")).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(dir.path(), dir.path().join("sub/loop"))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = PolicySet::load_dir(dir.path(), &["data.a.allow".to_string()], test_options())
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("nested too deeply"), "{err}");
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let err = set(
            &[(
                "policies/bad.rego",
                "package a\nimport rego.v1\n\nallow if {\n  input.x ==\n",
            )],
            "data.a.allow",
        )
        .err()
        .unwrap_or_else(|| panic!("expected an error"));
        let text = err.to_string();
        assert!(text.starts_with("policies/bad.rego:"), "{text}");
        assert!(matches!(err, PolicyError::Rego { .. }));

        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            dir.path().join("ok.rego"),
            "package ok\nimport rego.v1\nx := 1\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            dir.path().join("bad.rego"),
            "package bad\nimport rego.v1\n\nallow if input.x = = 1\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let err = PolicySet::load_dir(dir.path(), &[AUTHZ.to_string()], EvalLimits::default())
            .err()
            .unwrap_or_else(|| panic!("expected an error"));
        let text = err.to_string();
        assert!(text.contains("bad.rego:4:"), "{text}");
    }

    #[test]
    fn data_files_merge_at_their_directory() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path();
        std::fs::create_dir_all(p.join("roles/extra")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(p.join("..data")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(p.join("data.json"), r#"{"top": 1}"#).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(p.join("roles/data.yaml"), "admin: [alice]\n")
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(p.join("roles/extra/data.yml"), "x: true\n")
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(p.join("..data/data.json"), r#"{"hidden": 1}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            p.join("p.rego"),
            "package p\nimport rego.v1\nallow if { data.top == 1; \"alice\" in data.roles.admin; data.roles.extra.x; not data.hidden }\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            p.join("p_test.rego"),
            "package p_test\nthis is not parsed\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let ps = PolicySet::load_dir(p, &["data.p.allow".to_string()], EvalLimits::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ps.evaluate(0, Value::new_object()), Ok(Decision::allow()));
        let rev = ps.revision().to_string();

        // Changing data changes the revision; a conflict is an error naming the file.
        std::fs::write(
            p.join("roles/data.yaml"),
            "admin: [alice, bob]\nextra: {x: false}\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let err = PolicySet::load_dir(p, &["data.p.allow".to_string()], EvalLimits::default())
            .err()
            .unwrap_or_else(|| panic!("expected a conflict"));
        assert!(err.to_string().contains("data.yml"), "{err}");
        std::fs::write(p.join("roles/data.yaml"), "admin: [alice, bob]\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let ps = PolicySet::load_dir(p, &["data.p.allow".to_string()], EvalLimits::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(ps.revision(), rev);
    }

    #[test]
    fn extension_functions_fall_back_to_interpreter() {
        let hook: ExtensionHook = Arc::new(|engine: &mut Engine| {
            engine.add_extension(
                "demo.double".to_string(),
                1,
                Box::new(|args: Vec<Value>| {
                    let n = args
                        .first()
                        .and_then(|v| v.as_i64().ok())
                        .ok_or_else(|| anyhow::anyhow!("need a number"))?;
                    Ok(Value::from(n * 2))
                }),
            )
        });
        let ps = PolicySet::from_sources(
            vec![(
                "a.rego".to_string(),
                "package a\nimport rego.v1\ndefault allow := false\nallow if demo.double(input.n) == 4\n".to_string(),
            )],
            serde_json::Value::Null,
            &["data.a.allow".to_string()],
            PolicyOptions {
                extensions: Some(hook),
                ..test_options()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ps.evaluator(0), Some(EvaluatorKind::Interpreter));
        let input = Value::from_json_str(r#"{"n": 2}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ps.evaluate(0, input), Ok(Decision::allow()));
        let input = Value::from_json_str(r#"{"n": 3}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ps.evaluate(0, input), Ok(Decision::deny()));
    }

    /// Runs the example `*_test.rego` files with the interpreter (what
    /// `opa test policies/` would do) so the examples and their tests stay in sync.
    #[test]
    fn example_rego_tests_pass() {
        let dir = policies_dir();
        let mut engine = Engine::new();
        let mut tests = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.display().to_string();
            if !name.ends_with(".rego") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
            let package = engine
                .add_policy(name.clone(), text.clone())
                .unwrap_or_else(|e| panic!("{e}"));
            if name.ends_with("_test.rego") {
                for line in text.lines() {
                    if let Some(rest) = line.strip_prefix("test_") {
                        let rule: String = rest
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        tests.push(format!("{package}.test_{rule}"));
                    }
                }
            }
        }
        let data = std::fs::read_to_string(dir.join("data.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let data: serde_json::Value = serde_yaml::from_str(&data).unwrap_or_else(|e| panic!("{e}"));
        engine
            .add_data(json_to_value(&data))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(tests.len() >= 15, "{tests:?}");
        let failed: Vec<_> = tests
            .iter()
            .filter(|t| {
                let r = engine.clone().eval_rule((*t).clone());
                !matches!(r, Ok(Value::Bool(true)))
            })
            .collect();
        assert!(failed.is_empty(), "failed rego tests: {failed:?}");
    }

    #[test]
    fn concurrent_evaluation() {
        // A generous wall-clock budget: this checks thread safety, and a loaded
        // CI machine must not turn a slow debug-build evaluation into a deny.
        let ps = Arc::new(example(PolicyOptions::from(EvalLimits {
            timeout: Duration::from_secs(30),
            ..EvalLimits::default()
        })));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let ps = ps.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        for (r, want) in cases() {
                            let d = ps.evaluate(0, input_for(&r));
                            assert_eq!(d.map(|d| d.allowed), Ok(want));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().is_ok());
        }
    }
}
