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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use regorus::unstable::{BoolOp, Expr, Literal, LiteralStmt, Module, Query, Rule, RuleHead, Span};
use regorus::{Engine, Value};

use super::access::static_path;

/// How deep the explanation follows rules that a failed expression reads.
const MAX_DEPTH: usize = 3;
/// At most this many rule definitions are reported per explanation.
const MAX_DEFINITIONS: usize = 32;
/// Generated modules are named with this prefix (and errors naming one are
/// traced back to it).
const PROBE_FILE: &str = "__portcullis_explain/";
/// Probe rule names start with this (users' rules cannot clash in practice).
const PROBE_RULE: &str = "__portcullis_probe_";

/// What a failed literal is, for rendering the values it compared.
#[derive(Debug, Clone)]
enum Shape {
    /// `a OP b`; `op` as written.
    Compare(&'static str),
    /// `x in xs` (operands: x, xs).
    Member,
    /// `f(a, b)` (operands: the arguments).
    Call(String),
    /// `x := e` or `x = e` where only `e` can be evaluated before the literal.
    Assign,
    /// `not e` (operand: e).
    Not,
    /// `some x in xs` (operand: xs).
    SomeIn,
    /// Anything else (operand: the literal itself, when it is an expression).
    Value,
}

/// One body literal with its probes.
#[derive(Debug, Clone)]
struct Probe {
    line: u32,
    text: String,
    shape: Shape,
    /// Data path of the `holds` probe rule; `None` when it did not compile.
    holds: Option<String>,
    /// Data path of the `operands` probe rule and the operands' source text.
    operands: Option<String>,
    operand_texts: Vec<String>,
    /// Rules of the same package that this literal or an earlier one reads.
    reads: Vec<String>,
}

/// One definition (body) of a rule.
#[derive(Debug, Clone)]
struct Definition {
    file: String,
    line: u32,
    is_else: bool,
    probes: Vec<Probe>,
}

/// A rule: its definitions in source order and its default, if any.
#[derive(Debug, Clone, Default)]
struct RuleInfo {
    definitions: Vec<Definition>,
    default: Option<(String, u32, String)>,
}

/// What happened to one tried definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every expression held.
    Held,
    /// This expression did not hold; `values` says what it compared.
    Failed {
        location: String,
        expression: String,
        values: String,
    },
    /// The default value applied (no definition held).
    Default { text: String },
    /// The probes for this body did not compile; nothing more is known.
    Unexplained,
}

/// One tried definition of a rule, with its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Full rule name, e.g. `data.envoy.authz.allow`.
    pub rule: String,
    /// `file:line` of the definition.
    pub location: String,
    /// An `else` branch.
    pub is_else: bool,
    /// Nesting level: 0 for the queried rule, 1 for rules its failed expressions read…
    pub depth: usize,
    pub outcome: Outcome,
}

/// The explanation of one decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub query: String,
    /// The result as JSON (`None` when undefined).
    pub result: Option<serde_json::Value>,
    /// The result denies: undefined, `false`, or an object with `allowed: false`.
    pub denied: bool,
    pub steps: Vec<Step>,
}

/// Errors building or running the explainer.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("query {0:?} does not look like data.<package>.<rule>")]
    Query(String),
    #[error("evaluating {query}: {message}")]
    Eval { query: String, message: String },
}

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

impl Explanation {
    /// The explanation for people: one line per tried definition, the failed
    /// expression under it.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let result = match &self.result {
            Some(v) => v.to_string(),
            None => "undefined".to_string(),
        };
        let verdict = if self.denied { "denied" } else { "allowed" };
        let _ = writeln!(out, "{} = {result} ({verdict})", self.query);
        for step in &self.steps {
            let indent = "  ".repeat(step.depth + 1);
            let name = step.rule.rsplit('.').next().unwrap_or(&step.rule);
            let branch = if step.is_else { " (else)" } else { "" };
            match &step.outcome {
                Outcome::Held => {
                    let _ = writeln!(out, "{indent}{}: {name}{branch}: held", step.location);
                }
                Outcome::Failed {
                    location,
                    expression,
                    values,
                } => {
                    let _ = writeln!(out, "{indent}{}: {name}{branch}: failed", step.location);
                    let _ = writeln!(
                        out,
                        "{indent}  {location}: {} → {values}",
                        one_line(expression)
                    );
                }
                Outcome::Default { text } => {
                    let _ = writeln!(
                        out,
                        "{indent}{}: {}: applied",
                        step.location,
                        one_line(text)
                    );
                }
                Outcome::Unexplained => {
                    let _ = writeln!(
                        out,
                        "{indent}{}: {name}{branch}: failed (not explainable)",
                        step.location
                    );
                }
            }
        }
        out
    }

    /// The explanation for tools (also what decision-log entries carry).
    pub fn to_json(&self) -> serde_json::Value {
        let steps: Vec<serde_json::Value> = self
            .steps
            .iter()
            .map(|s| {
                let mut o = serde_json::json!({
                    "rule": s.rule,
                    "location": s.location,
                    "depth": s.depth,
                });
                if s.is_else {
                    o["else"] = true.into();
                }
                match &s.outcome {
                    Outcome::Held => o["outcome"] = "held".into(),
                    Outcome::Failed {
                        location,
                        expression,
                        values,
                    } => {
                        o["outcome"] = "failed".into();
                        o["failed"] = serde_json::json!({
                            "location": location,
                            "expression": one_line(expression),
                            "values": values,
                        });
                    }
                    Outcome::Default { text } => {
                        o["outcome"] = "default".into();
                        o["default"] = one_line(text).into();
                    }
                    Outcome::Unexplained => o["outcome"] = "unexplained".into(),
                }
                o
            })
            .collect();
        serde_json::json!({
            "query": self.query,
            "result": self.result,
            "denied": self.denied,
            "steps": steps,
        })
    }
}

/// True when `result` denies as the proxy reads it: undefined, `false`, or an
/// object whose `allowed` is not `true`.
pub fn denies(result: &Option<serde_json::Value>) -> bool {
    match result {
        None => true,
        Some(serde_json::Value::Bool(b)) => !b,
        Some(serde_json::Value::Object(o)) => {
            o.get("allowed") != Some(&serde_json::Value::Bool(true))
        }
        Some(_) => true,
    }
}

fn json_of(v: &Value) -> Option<serde_json::Value> {
    if *v == Value::Undefined {
        return None;
    }
    serde_json::to_value(v).ok()
}

/// A value as compact JSON (sets as arrays).
fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| v.to_string())
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn negate(op: &str) -> &'static str {
    match op {
        "==" | "=" => "!=",
        "!=" => "==",
        "<" => ">=",
        "<=" => ">",
        ">" => "<=",
        ">=" => "<",
        _ => "is not",
    }
}

/// The index of the generated module an error message names.
fn probe_file_in(message: &str) -> Option<usize> {
    let at = message.find(PROBE_FILE)? + PROBE_FILE.len();
    let digits: String = message[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

fn forget_probes(
    rules: &mut BTreeMap<String, RuleInfo>,
    file_probes: &[Vec<String>],
    dropped: &BTreeSet<usize>,
) {
    let gone: BTreeSet<&String> = dropped
        .iter()
        .filter_map(|i| file_probes.get(*i))
        .flatten()
        .collect();
    for info in rules.values_mut() {
        for def in &mut info.definitions {
            for p in &mut def.probes {
                if p.holds.as_ref().is_some_and(|h| gone.contains(h)) {
                    p.holds = None;
                }
                if p.operands.as_ref().is_some_and(|o| gone.contains(o)) {
                    p.operands = None;
                }
            }
        }
    }
}

/// The generated modules and where each probe lives, built from the AST.
#[derive(Default)]
struct Plan {
    /// One generated module per rule body.
    files: Vec<String>,
    /// The probe rule paths in each generated module.
    file_probes: Vec<Vec<String>>,
    rules: BTreeMap<String, RuleInfo>,
    next: usize,
}

impl Plan {
    fn module(&mut self, m: &Module) {
        let Some(package) = static_path(&m.package.refr) else {
            return;
        };
        let package = format!("data.{}", package.join("."));
        let file = m.package.span.source.get_path().clone();
        let header = {
            let mut h = format!("{}\n", m.package.span.text());
            for import in &m.imports {
                let _ = writeln!(h, "{}", import.span.text());
            }
            h
        };
        let v1 = m.rego_v1;
        // Names of the package's rules (functions included, to tell them from vars).
        let names: BTreeSet<String> = m.policy.iter().filter_map(|r| rule_name(r)).collect();
        for rule in &m.policy {
            match rule.as_ref() {
                Rule::Default {
                    span, refr, args, ..
                } if args.is_empty() => {
                    if let Some(name) = static_path(refr) {
                        let full = format!("{package}.{}", name.join("."));
                        self.rules.entry(full).or_default().default =
                            Some((file.clone(), span.line, span_text(span)));
                    }
                }
                Rule::Spec { head, bodies, .. } => {
                    let refr = match head {
                        RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. } => refr,
                        RuleHead::Func { .. } => continue,
                    };
                    let Some(name) = static_path(refr) else {
                        continue;
                    };
                    let full = format!("{package}.{}", name.join("."));
                    for body in bodies {
                        let mut text = header.clone();
                        let mut probes_here = Vec::new();
                        let stmts = &body.query.stmts;
                        let mut probes = Vec::new();
                        let mut reads = BTreeSet::new();
                        for (k, stmt) in stmts.iter().enumerate() {
                            let literal_reads = rules_read(stmt, &names);
                            reads.extend(
                                literal_reads.into_iter().map(|n| format!("{package}.{n}")),
                            );
                            let prefix: Vec<String> =
                                stmts[..k].iter().map(|s| span_text(&s.span)).collect();
                            let (shape, operand_texts) = shape_of(stmt);
                            let holds_name = self.name();
                            let mut holds_body = prefix.clone();
                            holds_body.push(span_text(&stmt.span));
                            let _ = writeln!(
                                text,
                                "{}",
                                probe_rule(&holds_name, None, &holds_body, v1)
                            );
                            let operands_name = self.name();
                            let tuple: Vec<String> = operand_texts
                                .iter()
                                .chain(
                                    matches!(shape, Shape::Call(_))
                                        .then(|| stmt_expr_text(stmt))
                                        .flatten()
                                        .iter(),
                                )
                                .enumerate()
                                .map(|(i, t)| format!("[__pcx_a{i} | __pcx_a{i} := ({t})]"))
                                .collect();
                            let mut op_body = prefix.clone();
                            let assign = format!("__pcx_t := [{}]", tuple.join(", "));
                            op_body.push(assign);
                            let _ = writeln!(
                                text,
                                "{}",
                                probe_rule(&operands_name, Some("__pcx_t"), &op_body, v1)
                            );
                            let holds = format!("{package}.{holds_name}");
                            let operands = format!("{package}.{operands_name}");
                            probes_here.push(holds.clone());
                            probes_here.push(operands.clone());
                            probes.push(Probe {
                                line: stmt.span.line,
                                text: span_text(&stmt.span),
                                shape,
                                holds: Some(holds),
                                operands: Some(operands),
                                operand_texts,
                                reads: reads.iter().cloned().collect(),
                            });
                        }
                        if !probes.is_empty() {
                            self.files.push(text);
                            self.file_probes.push(probes_here);
                        }
                        self.rules
                            .entry(full.clone())
                            .or_default()
                            .definitions
                            .push(Definition {
                                file: file.clone(),
                                line: body.span.line,
                                is_else: body.is_else,
                                probes,
                            });
                    }
                }
                _ => {}
            }
        }
    }

    fn name(&mut self) -> String {
        self.next += 1;
        format!("{PROBE_RULE}{}", self.next)
    }
}

/// A probe rule: a boolean when `value` is `None`, else a set of `value`.
fn probe_rule(name: &str, value: Option<&str>, body: &[String], v1: bool) -> String {
    let body = if body.is_empty() {
        "true".to_string()
    } else {
        body.join("\n")
    };
    match (value, v1) {
        (None, true) => format!("{name} if {{\n{body}\n}}"),
        (None, false) => format!("{name} {{\n{body}\n}}"),
        (Some(v), true) => format!("{name} contains {v} if {{\n{body}\n}}"),
        (Some(v), false) => format!("{name}[{v}] {{\n{body}\n}}"),
    }
}

fn rule_name(r: &Rule) -> Option<String> {
    let refr = match r {
        Rule::Spec { head, .. } => match head {
            RuleHead::Compr { refr, .. }
            | RuleHead::Set { refr, .. }
            | RuleHead::Func { refr, .. } => refr,
        },
        Rule::Default { refr, .. } => refr,
    };
    static_path(refr).and_then(|p| p.first().cloned())
}

/// The source text of an expression (a string's span leaves out its quotes).
fn source_of(e: &Expr) -> String {
    match e {
        Expr::String { value, .. } | Expr::RawString { value, .. } => compact(value),
        other => span_text(other.span()),
    }
}

/// The text of a span. A span that ends in a string stops before its closing
/// quote; the quote is put back.
fn span_text(span: &Span) -> String {
    let text = span.text();
    let contents = span.source.get_contents();
    let next = usize::try_from(span.end)
        .ok()
        .and_then(|end| contents.get(end..))
        .and_then(|rest| rest.chars().next());
    let open = |q: char| {
        let mut n = 0;
        let mut escaped = false;
        for c in text.chars() {
            match c {
                '\\' if q == '"' => escaped = !escaped,
                c if c == q && !escaped => n += 1,
                _ => escaped = false,
            }
            if c != '\\' {
                escaped = false;
            }
        }
        n % 2 == 1
    };
    match next {
        Some(q @ ('"' | '`')) if open(q) => format!("{text}{q}"),
        _ => text.to_string(),
    }
}

fn stmt_expr_text(stmt: &LiteralStmt) -> Option<String> {
    match &stmt.literal {
        Literal::Expr { expr, .. } => Some(source_of(expr)),
        _ => None,
    }
}

/// The literal's shape and the source text of the operands to evaluate.
fn shape_of(stmt: &LiteralStmt) -> (Shape, Vec<String>) {
    let text = source_of;
    match &stmt.literal {
        Literal::Expr { expr, .. } => match expr.as_ref() {
            Expr::BoolExpr { op, lhs, rhs, .. } => {
                let op = match op {
                    BoolOp::Lt => "<",
                    BoolOp::Le => "<=",
                    BoolOp::Eq => "==",
                    BoolOp::Ge => ">=",
                    BoolOp::Gt => ">",
                    BoolOp::Ne => "!=",
                };
                (Shape::Compare(op), vec![text(lhs), text(rhs)])
            }
            Expr::Membership {
                key: None,
                value,
                collection,
                ..
            } => (Shape::Member, vec![text(value), text(collection)]),
            Expr::AssignExpr { rhs, .. } => (Shape::Assign, vec![text(rhs)]),
            Expr::Call { fcn, params, .. } => (
                Shape::Call(text(fcn)),
                params.iter().map(|p| text(p)).collect(),
            ),
            other => (Shape::Value, vec![text(other)]),
        },
        Literal::NotExpr { expr, .. } => (Shape::Not, vec![text(expr)]),
        Literal::SomeIn { collection, .. } => (Shape::SomeIn, vec![text(collection)]),
        Literal::Every { domain, .. } => (Shape::SomeIn, vec![text(domain)]),
        Literal::SomeVars { .. } => (Shape::Value, Vec::new()),
    }
}

/// Names of the package's rules that a literal reads by bare name.
fn rules_read(stmt: &LiteralStmt, names: &BTreeSet<String>) -> BTreeSet<String> {
    let mut vars = BTreeSet::new();
    match &stmt.literal {
        Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => vars_of(expr, &mut vars),
        Literal::SomeIn {
            key,
            value,
            collection,
            ..
        } => {
            for e in key.iter().chain([value, collection]) {
                vars_of(e, &mut vars);
            }
        }
        Literal::Every { domain, query, .. } => {
            vars_of(domain, &mut vars);
            query_vars(query, &mut vars);
        }
        Literal::SomeVars { .. } => {}
    }
    vars.into_iter().filter(|v| names.contains(v)).collect()
}

fn query_vars(q: &Query, out: &mut BTreeSet<String>) {
    for s in &q.stmts {
        match &s.literal {
            Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => vars_of(expr, out),
            Literal::SomeIn { collection, .. } => vars_of(collection, out),
            Literal::Every { domain, .. } => vars_of(domain, out),
            Literal::SomeVars { .. } => {}
        }
    }
}

fn vars_of(e: &Expr, out: &mut BTreeSet<String>) {
    match e {
        Expr::Var { value, .. } => {
            if let Ok(s) = value.as_string() {
                out.insert(s.to_string());
            }
        }
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            items.iter().for_each(|i| vars_of(i, out))
        }
        Expr::Object { fields, .. } => fields.iter().for_each(|(_, k, v)| {
            vars_of(k, out);
            vars_of(v, out);
        }),
        Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
            vars_of(term, out);
            query_vars(query, out);
        }
        Expr::ObjectCompr {
            key, value, query, ..
        } => {
            vars_of(key, out);
            vars_of(value, out);
            query_vars(query, out);
        }
        Expr::Call { params, .. } => params.iter().for_each(|p| vars_of(p, out)),
        Expr::UnaryExpr { expr, .. } => vars_of(expr, out),
        Expr::RefDot { refr, .. } => vars_of(refr, out),
        Expr::RefBrack { refr, index, .. } => {
            vars_of(refr, out);
            vars_of(index, out);
        }
        Expr::BinExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::AssignExpr { lhs, rhs, .. } => {
            vars_of(lhs, out);
            vars_of(rhs, out);
        }
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } => {
            for x in key.iter().chain([value, collection]) {
                vars_of(x, out);
            }
        }
        _ => {}
    }
}
