//! Planning an explanation: for each rule definition and each statement of its
//! body, the generated probe rules that tell whether it holds and what it compared.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use regorus::unstable::{BoolOp, Expr, Literal, LiteralStmt, Module, Query, Rule, RuleHead, Span};

use super::report::compact;
use crate::policy::access::static_path;

/// Generated modules are named with this prefix (and errors naming one are
/// traced back to it).
pub(super) const PROBE_FILE: &str = "__portcullis_explain/";
/// Probe rule names start with this (users' rules cannot clash in practice).
const PROBE_RULE: &str = "__portcullis_probe_";

/// What a failed literal is, for rendering the values it compared.
#[derive(Debug, Clone)]
pub(super) enum Shape {
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
pub(super) struct Probe {
    pub(super) line: u32,
    pub(super) text: String,
    pub(super) shape: Shape,
    /// Data path of the `holds` probe rule; `None` when it did not compile.
    pub(super) holds: Option<String>,
    /// Data path of the `operands` probe rule and the operands' source text.
    pub(super) operands: Option<String>,
    pub(super) operand_texts: Vec<String>,
    /// Rules of the same package that this literal or an earlier one reads.
    pub(super) reads: Vec<String>,
}

/// One definition (body) of a rule.
#[derive(Debug, Clone)]
pub(super) struct Definition {
    pub(super) file: String,
    pub(super) line: u32,
    pub(super) is_else: bool,
    pub(super) probes: Vec<Probe>,
}

/// A rule: its definitions in source order and its default, if any.
#[derive(Debug, Clone, Default)]
pub(super) struct RuleInfo {
    pub(super) definitions: Vec<Definition>,
    pub(super) default: Option<(String, u32, String)>,
}

pub(super) fn negate(op: &str) -> &'static str {
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
pub(super) fn probe_file_in(message: &str) -> Option<usize> {
    let at = message.find(PROBE_FILE)? + PROBE_FILE.len();
    let digits: String = message[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

pub(super) fn forget_probes(
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
pub(super) struct Plan {
    /// One generated module per rule body.
    pub(super) files: Vec<String>,
    /// The probe rule paths in each generated module.
    pub(super) file_probes: Vec<Vec<String>>,
    pub(super) rules: BTreeMap<String, RuleInfo>,
    next: usize,
}

impl Plan {
    pub(super) fn module(&mut self, m: &Module) {
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
