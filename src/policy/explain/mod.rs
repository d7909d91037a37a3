//! Why a policy decided as it did: for the rule a query names, each definition
//! that was tried and the first expression of its body that did not hold, with
//! `file:line` and the values that expression compared.
//!
//! regorus has no evaluation trace to read this from, so the explainer asks the
//! interpreter directly. Once per policy revision it adds, next to every module, a
//! generated module in the same package (same imports) with two probe rules per
//! body literal, both made from the literals' source text:
//!
//! - `holds`: the body's literals up to and including this one; defined exactly
//!   when that prefix can be satisfied, so the first undefined one is the literal
//!   that failed;
//! - `operands`: the literals before this one, then the values of this literal's
//!   operands (each wrapped in an array comprehension, so an undefined operand
//!   shows as `undefined` rather than hiding the others).
//!
//! A probe that does not compile on its own (a prefix whose variables Rego would
//! only bind by reordering past it) is left out and its body reported as
//! unexplained; the policy itself is never changed. Explaining costs one probe
//! evaluation per literal tried: it is off the request path unless `log.explain`
//! asks for it.

mod plan;
mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use regorus::{Engine, Value};

use self::plan::{
    forget_probes, negate, probe_file_in, Definition, Plan, Probe, RuleInfo, Shape, PROBE_FILE,
};
use self::report::{compact, json_of};

pub use self::report::{denies, ExplainError, Explanation, Outcome, Step};

/// How deep the explanation follows rules that a failed expression reads.
const MAX_DEPTH: usize = 3;
/// At most this many rule definitions are reported per explanation.
const MAX_DEFINITIONS: usize = 32;

/// The probes of one policy revision, ready to explain decisions.
#[derive(Debug)]
pub struct Explainer {
    engine: Engine,
    rules: BTreeMap<String, RuleInfo>,
}

impl Explainer {
    /// Builds the probes for every module of `engine` (which holds the policies,
    /// data and extension builtins as evaluated).
    pub fn new(engine: Engine) -> Explainer {
        let mut base = engine;
        let modules: Vec<_> = base
            .get_modules()
            .iter()
            .filter(|m| !m.package.span.source.get_path().starts_with(PROBE_FILE))
            .cloned()
            .collect();
        let mut plan = Plan::default();
        for m in &modules {
            plan.module(m);
        }
        // Add the generated modules; drop any that does not compile and retry.
        let mut dropped: BTreeSet<usize> = BTreeSet::new();
        loop {
            let mut engine = base.clone();
            let mut failed = None;
            for (i, text) in plan.files.iter().enumerate() {
                if dropped.contains(&i) {
                    continue;
                }
                if let Err(e) = engine.add_policy(format!("{PROBE_FILE}{i}.rego"), text.clone()) {
                    tracing::debug!(error = %e, "explain probe left out");
                    failed = Some(i);
                    break;
                }
            }
            if failed.is_none() {
                engine.set_input(Value::new_object());
                if let Err(e) = engine.eval_query("true".to_string(), false) {
                    tracing::debug!(error = %e, "explain probe left out");
                    failed = Some(probe_file_in(&e.to_string()).unwrap_or(usize::MAX));
                }
            }
            match failed {
                None => {
                    let mut rules = plan.rules;
                    forget_probes(&mut rules, &plan.file_probes, &dropped);
                    return Explainer { engine, rules };
                }
                Some(i) if i < plan.files.len() && dropped.len() < plan.files.len() => {
                    dropped.insert(i);
                }
                Some(_) => {
                    // Cannot tell which probe is at fault: explain nothing.
                    let all: BTreeSet<usize> = (0..plan.files.len()).collect();
                    let mut rules = plan.rules;
                    forget_probes(&mut rules, &plan.file_probes, &all);
                    return Explainer {
                        engine: base,
                        rules,
                    };
                }
            }
        }
    }

    /// Explains `query` (e.g. `data.envoy.authz.allow`) for `input`.
    pub fn explain(&mut self, query: &str, input: Value) -> Result<Explanation, ExplainError> {
        if !query.starts_with("data.") || query.len() <= 5 {
            return Err(ExplainError::Query(query.to_string()));
        }
        self.engine.set_input(input);
        let result = self
            .engine
            .eval_rule(query.to_string())
            .map_err(|e| ExplainError::Eval {
                query: query.to_string(),
                message: e.to_string(),
            })?;
        let result_json = json_of(&result);
        let denied = denies(&result_json);
        let mut steps = Vec::new();
        let mut seen = BTreeSet::new();
        self.trace(query, 0, &mut steps, &mut seen);
        Ok(Explanation {
            query: query.to_string(),
            result: result_json,
            denied,
            steps,
        })
    }

    fn trace(
        &mut self,
        rule: &str,
        depth: usize,
        steps: &mut Vec<Step>,
        seen: &mut BTreeSet<String>,
    ) {
        if depth > MAX_DEPTH || !seen.insert(rule.to_string()) {
            return;
        }
        let Some(info) = self.rules.get(rule).cloned() else {
            return;
        };
        let mut chain_held = false;
        let mut any_held = false;
        for def in &info.definitions {
            if def.is_else && chain_held {
                continue;
            }
            if !def.is_else {
                chain_held = false;
            }
            if steps.len() >= MAX_DEFINITIONS {
                return;
            }
            let location = format!("{}:{}", def.file, def.line);
            let (outcome, reads) = self.run_definition(def);
            let held = outcome == Outcome::Held;
            chain_held |= held;
            any_held |= held;
            steps.push(Step {
                rule: rule.to_string(),
                location,
                is_else: def.is_else,
                depth,
                outcome,
            });
            for read in reads {
                self.trace(&read, depth + 1, steps, seen);
            }
        }
        if let (false, Some((file, line, text))) = (any_held, &info.default) {
            steps.push(Step {
                rule: rule.to_string(),
                location: format!("{file}:{line}"),
                is_else: false,
                depth,
                outcome: Outcome::Default { text: text.clone() },
            });
        }
    }

    /// The outcome of one body, and the rules to explain further when it failed.
    fn run_definition(&mut self, def: &Definition) -> (Outcome, Vec<String>) {
        for probe in &def.probes {
            let Some(holds) = &probe.holds else {
                return (Outcome::Unexplained, Vec::new());
            };
            let held =
                matches!(self.engine.eval_rule(holds.clone()), Ok(v) if v != Value::Undefined);
            if held {
                continue;
            }
            let values = self.values(probe);
            return (
                Outcome::Failed {
                    location: format!("{}:{}", def.file, probe.line),
                    expression: probe.text.clone(),
                    values,
                },
                probe.reads.clone(),
            );
        }
        (Outcome::Held, Vec::new())
    }

    /// What the failed literal compared, rendered as what holds instead.
    fn values(&mut self, probe: &Probe) -> String {
        let Some(rule) = &probe.operands else {
            return "(values not available)".to_string();
        };
        let tuples = match self.engine.eval_rule(rule.clone()) {
            Ok(v) => v,
            Err(e) => return format!("(values not available: {e})"),
        };
        let Ok(set) = tuples.as_set() else {
            // The literals before this one never held together.
            return "(the expressions before it never held together)".to_string();
        };
        let count = set.len();
        let Some(first) = set.iter().next() else {
            return "(the expressions before it never held together)".to_string();
        };
        let operands: Vec<Option<String>> = first
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|wrapped| wrapped.as_array().ok().and_then(|a| a.first()).map(compact))
                    .collect()
            })
            .unwrap_or_default();
        let shown = |i: usize| -> String {
            operands
                .get(i)
                .cloned()
                .flatten()
                .unwrap_or_else(|| "undefined".to_string())
        };
        let text = |i: usize| probe.operand_texts.get(i).cloned().unwrap_or_default();
        let mut out = match &probe.shape {
            Shape::Compare(op) => {
                let (l, r) = (shown(0), shown(1));
                if l == "undefined" {
                    format!("{} is undefined", text(0))
                } else if r == "undefined" {
                    format!("{} is undefined", text(1))
                } else {
                    format!("{l} {} {r}", negate(op))
                }
            }
            Shape::Member => format!("{} not in {}", shown(0), shown(1)),
            Shape::Call(_) if (0..probe.operand_texts.len()).any(|i| shown(i) == "undefined") => {
                let i = (0..probe.operand_texts.len())
                    .find(|i| shown(*i) == "undefined")
                    .unwrap_or_default();
                format!("{} is undefined", text(i))
            }
            Shape::Call(name) => {
                let args: Vec<String> = (0..probe.operand_texts.len()).map(shown).collect();
                let result = shown(args.len());
                let result = if result == "undefined" {
                    "undefined".to_string()
                } else {
                    result
                };
                format!("{name}({}) is {result}", args.join(", "))
            }
            Shape::Assign => format!("{} is {}", text(0), shown(0)),
            Shape::Not => format!("{} is {}", text(0), shown(0)),
            Shape::SomeIn => format!("{} is {}", text(0), shown(0)),
            Shape::Value => format!("{} is {}", text(0), shown(0)),
        };
        if count > 1 {
            let _ = write!(out, " (first of {count} cases)");
        }
        out
    }
}
