//! Compiling one policy revision: the interpreter engine prepared with modules,
//! data and extensions, the parity refusals, and for each query the evaluator
//! that serves it with what it reads of the input.
//!
//! The RVM in regorus 0.14 treats a conflicting complete rule or function
//! (`x := 1` and `x := 2` both true) as *undefined* instead of an evaluation
//! error. Under `not x` that turns an error (deny) into an allow, so a set that
//! contains a rule able to produce conflicting values (more than one definition
//! with non-identical constant values) is evaluated with the interpreter
//! ([`conflict_risk`]).

use std::collections::BTreeMap;
use std::sync::Mutex;

use regorus::languages::rego::compiler::Compiler;
use regorus::unstable::{Expr, Module, Ref, Rule, RuleHead};
use regorus::{Engine, Value};

use super::memo::Memo;
use super::pool::{eval_document, new_vm, timer, Evaluators, Plan, QueryPlan, RvmPlan};
use crate::policy::access::{InputAccess, InputNeeds};
use crate::policy::exact_json::json_to_value;
use crate::policy::options::{PolicyError, PolicyOptions};

/// A compiled revision, before it gets its id and revision string.
pub(super) struct Compiled {
    pub(super) queries: Vec<QueryPlan>,
    pub(super) evaluators: Evaluators,
    /// The serving module names (paths).
    pub(super) files: Vec<String>,
}

/// Compiles `modules` with `data` for `queries`. `revision` only labels log lines.
pub(super) fn compile(
    modules: Vec<(String, String)>,
    data: serde_json::Value,
    queries: &[String],
    options: &PolicyOptions,
    revision: &str,
) -> Result<Compiled, PolicyError> {
    let data = with_workload_labels(data, options)?;
    let data_value = json_to_value(&data);
    let files: Vec<String> = modules.iter().map(|(n, _)| n.clone()).collect();
    let mut engine = prepare(modules, &data_value, options)?;

    let conflict_risk = if options.force_interpreter {
        Some("forced by configuration".to_string())
    } else {
        conflict_risk(&mut engine)
    };
    if let Some(why) = &conflict_risk {
        tracing::info!(revision = %short(revision), reason = %why, "policy set evaluated with the regorus interpreter");
    }
    let planner = Planner {
        modules: engine.get_modules().clone(),
        options,
        revision,
        data: &data_value,
        interpreter_only: conflict_risk.is_some(),
    };
    let plans = queries
        .iter()
        .map(|query| planner.plan(&mut engine, query))
        .collect::<Result<Vec<_>, _>>()?;

    // Warm the prototype so clones skip preparation.
    engine.set_input(Value::new_object());
    for p in &plans {
        if matches!(p.plan, Plan::Interpreter) {
            let _ = eval_document(&mut engine, &p.query, p.partial);
        }
    }
    Ok(Compiled {
        queries: plans,
        evaluators: Evaluators::new(options.limits, data_value, engine),
        files,
    })
}

/// The first 12 hex characters of a revision, for display.
pub(super) fn short(revision: &str) -> &str {
    revision.get(..12).unwrap_or(revision)
}

/// Merges the pod's labels file (`policy.workload_labels`) into `data`.
fn with_workload_labels(
    mut data: serde_json::Value,
    options: &PolicyOptions,
) -> Result<serde_json::Value, PolicyError> {
    if let Some(path) = &options.workload_labels {
        if let Some(labels) = crate::policy::workload_labels::read(path)? {
            let at = crate::policy::workload_labels::DATA_PATH.map(String::from);
            crate::policy::sources::merge_at(&mut data, &at, labels).map_err(|message| {
                PolicyError::Data {
                    path: path.display().to_string(),
                    message,
                }
            })?;
        }
    }
    Ok(data)
}

/// The interpreter engine with extensions, modules and data added, parity checked.
fn prepare(
    modules: Vec<(String, String)>,
    data: &Value,
    options: &PolicyOptions,
) -> Result<Engine, PolicyError> {
    let mut engine = crate::policy::parity::new_engine();
    engine.set_execution_timer_config(timer(&options.limits));
    // OPA-Envoy evaluates with non-strict builtin errors: a failing builtin call
    // is undefined (the RVM's default too).
    engine.set_strict_builtin_errors(false);
    if let Some(hook) = &options.extensions {
        hook(&mut engine).map_err(|e| PolicyError::Extension(format!("{e:#}")))?;
    }
    let modules =
        crate::policy::parity::rewrite_output_args(modules, &crate::policy::builtins::arity);
    for (name, text) in modules {
        engine
            .add_policy(name.clone(), text)
            .map_err(|e| PolicyError::from_regorus(&name, &e))?;
    }
    engine
        .add_data(data.clone())
        .map_err(|e| PolicyError::Data {
            path: "<data>".to_string(),
            message: format!("{e}"),
        })?;
    crate::policy::parity::refuse(&mut engine)?;
    Ok(engine)
}

/// Chooses the evaluator of each query.
struct Planner<'a> {
    modules: Vec<Ref<Module>>,
    options: &'a PolicyOptions,
    revision: &'a str,
    data: &'a Value,
    /// A rule could produce conflicting values: no query runs on the RVM.
    interpreter_only: bool,
}

impl Planner<'_> {
    fn plan(&self, engine: &mut Engine, query: &str) -> Result<QueryPlan, PolicyError> {
        if !query.starts_with("data.") || query.len() <= 5 {
            return Err(PolicyError::Query {
                query: query.to_string(),
                message: "queries look like data.<package>.<rule>".to_string(),
            });
        }
        if crate::policy::parity::is_partial_document(&self.modules, query) {
            // regorus compiles entry points only for whole rules; the interpreter
            // assembles the document from its partial rules.
            tracing::info!(%query, "the query names a partial object or set; using the regorus interpreter");
            return Ok(self.query_plan(query, Plan::Interpreter, true));
        }
        let rule: regorus::Rc<str> = query.into();
        let compiled = match engine.compile_with_entrypoint(&rule) {
            Ok(c) => c,
            Err(e) if format!("{e}").contains("not a valid rule path") => {
                tracing::info!(%query, "no policy module defines the query; it evaluates to undefined (deny)");
                return Ok(QueryPlan {
                    query: query.to_string(),
                    plan: Plan::Undefined,
                    access: InputAccess::everything(),
                    needs: InputNeeds::all(),
                    memo: None,
                    partial: false,
                });
            }
            Err(e) => return Err(PolicyError::from_regorus(query, &e)),
        };
        let plan = if self.interpreter_only {
            Plan::Interpreter
        } else {
            match Compiler::compile_from_policy(&compiled, &[query]) {
                Ok(program) => {
                    let vm = new_vm(&program, self.data, &self.options.limits).map_err(|e| {
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
        Ok(self.query_plan(query, plan, false))
    }

    /// `plan` with what the rules `query` reaches read of the input, and its memo.
    fn query_plan(&self, query: &str, plan: Plan, partial: bool) -> QueryPlan {
        let access = InputAccess::of_query(&self.modules, query);
        tracing::debug!(revision = %short(self.revision), %query, reads = ?access.describe(), memoisable = access.memoisable(), "input access");
        let memo = (self.options.decision_cache > 0 && access.memoisable())
            .then(|| Memo::new(self.options.decision_cache));
        QueryPlan {
            query: query.to_string(),
            plan,
            needs: access.needs(),
            access,
            memo,
            partial,
        }
    }
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
