//! `rego.metadata.rule()` and `rego.metadata.chain()`: the `# METADATA`
//! annotations of the calling rule, its document and its package, as OPA returns
//! them. regorus keeps no comments, so the calls are replaced at load by the
//! literal value they have (it depends only on where the call is written).
//!
//! Supported annotation keys: `title`, `description`, `custom` and `scope` (`rule`,
//! `document`, `package`). A module with any other key (or invalid YAML) keeps its
//! calls, which are then refused at load like any builtin portcullis lacks.

use std::collections::BTreeMap;

use regorus::unstable::{Expr, Literal, Module, Query, Rule, RuleHead};
use serde_json::{json, Map, Value as Json};

use super::access::{fixed_prefix, static_path};

/// One `# METADATA` block: the line (1-based) of what it annotates, its scope and
/// its annotations (with `scope` filled in).
struct Block {
    target_line: usize,
    scope: String,
    annotations: Map<String, Json>,
}

const KEYS: &[&str] = &["title", "description", "custom", "scope"];

/// The blocks of `text`, or None when one is not supported.
fn blocks(text: &str) -> Option<Vec<Block>> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "# METADATA" {
            i += 1;
            continue;
        }
        let mut yaml = String::new();
        let mut j = i + 1;
        while j < lines.len() && lines[j].trim_start().starts_with('#') {
            let l = lines[j].trim_start().trim_start_matches('#');
            yaml.push_str(l.strip_prefix(' ').unwrap_or(l));
            yaml.push('\n');
            j += 1;
        }
        let parsed: Json = serde_yaml::from_str(&yaml).ok()?;
        let Json::Object(mut annotations) = parsed else {
            return None;
        };
        if annotations.keys().any(|k| !KEYS.contains(&k.as_str())) {
            return None;
        }
        let target_line = j + 1;
        let is_package = lines
            .get(j)
            .is_some_and(|l| l.trim_start().starts_with("package "));
        let scope = match annotations.get("scope") {
            Some(Json::String(s)) => s.clone(),
            Some(_) => return None,
            None if is_package => "package".to_string(),
            None => "rule".to_string(),
        };
        if is_package != (scope == "package")
            || !["rule", "document", "package"].contains(&scope.as_str())
        {
            return None;
        }
        annotations.insert("scope".to_string(), Json::String(scope.clone()));
        out.push(Block {
            target_line,
            scope,
            annotations,
        });
        i = j;
    }
    Some(out)
}

/// Edits `(start, end, replacement)` replacing every `rego.metadata.rule()` and
/// `rego.metadata.chain()` call of `module` (whose text is `text`, package path
/// `package`) by its value; None when the module's annotations are not supported.
pub fn edits(
    text: &str,
    module: &Module,
    package: &[String],
) -> Option<Vec<(usize, usize, String)>> {
    if !text.contains("rego.metadata.") {
        return Some(Vec::new());
    }
    let blocks = blocks(text)?;
    let package_annotations = blocks.iter().find(|b| b.scope == "package");
    // Rule path → document-scope annotations.
    let mut documents: BTreeMap<Vec<String>, &Block> = BTreeMap::new();
    let mut rules: Vec<(Vec<String>, Option<&Block>, &Rule)> = Vec::new();
    for rule in &module.policy {
        let (refr, span) = match rule.as_ref() {
            Rule::Spec { head, span, .. } => match head {
                RuleHead::Compr { refr, .. }
                | RuleHead::Set { refr, .. }
                | RuleHead::Func { refr, .. } => (refr, span),
            },
            Rule::Default { refr, span, .. } => (refr, span),
        };
        let mut path = package.to_vec();
        path.extend(fixed_prefix(refr));
        let line = usize::try_from(span.line).ok()?;
        let block = blocks
            .iter()
            .find(|b| b.target_line == line && b.scope != "package");
        if let Some(b) = block.filter(|b| b.scope == "document") {
            documents.insert(path.clone(), b);
        }
        rules.push((path, block.filter(|b| b.scope == "rule"), rule.as_ref()));
    }
    let mut out = Vec::new();
    for (path, own, rule) in &rules {
        let rule_value = own.map_or(json!({}), |b| Json::Object(b.annotations.clone()));
        let mut chain = Vec::new();
        let mut first = Map::new();
        if let Some(b) = own {
            first.insert("annotations".into(), Json::Object(b.annotations.clone()));
        }
        first.insert("path".into(), json!(path));
        chain.push(Json::Object(first));
        if let Some(b) = documents.get(path) {
            chain.push(json!({"annotations": b.annotations, "path": path}));
        }
        if let Some(b) = package_annotations {
            chain.push(json!({"annotations": b.annotations, "path": package}));
        }
        let chain = Json::Array(chain);
        let mut calls = Vec::new();
        if let Rule::Spec { head, bodies, .. } = rule {
            match head {
                RuleHead::Compr { assign, .. } | RuleHead::Func { assign, .. } => {
                    if let Some(a) = assign {
                        calls_in_expr(&a.value, &mut calls);
                    }
                }
                RuleHead::Set { key, .. } => {
                    if let Some(k) = key {
                        calls_in_expr(k, &mut calls);
                    }
                }
            }
            for b in bodies {
                if let Some(a) = &b.assign {
                    calls_in_expr(&a.value, &mut calls);
                }
                calls_in_query(&b.query, &mut calls);
            }
        }
        for (start, end, which) in calls {
            let value = if which == "rule" { &rule_value } else { &chain };
            out.push((start, end, serde_json::to_string(value).ok()?));
        }
    }
    Some(out)
}

fn calls_in_all<'a>(
    exprs: impl Iterator<Item = &'a regorus::unstable::Ref<Expr>>,
    out: &mut Vec<(usize, usize, &'static str)>,
) {
    for e in exprs {
        calls_in_expr(e, out);
    }
}

fn calls_in_query(q: &Query, out: &mut Vec<(usize, usize, &'static str)>) {
    for stmt in &q.stmts {
        for w in &stmt.with_mods {
            calls_in_expr(&w.r#as, out);
        }
        match &stmt.literal {
            Literal::SomeVars { .. } => {}
            Literal::SomeIn {
                key,
                value,
                collection,
                ..
            } => calls_in_all(key.iter().chain([value, collection]), out),
            Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => calls_in_expr(expr, out),
            Literal::Every { domain, query, .. } => {
                calls_in_expr(domain, out);
                calls_in_query(query, out);
            }
        }
    }
}

fn calls_in_expr(e: &Expr, out: &mut Vec<(usize, usize, &'static str)>) {
    match e {
        Expr::Call {
            span, fcn, params, ..
        } => {
            let which = match static_path(fcn).map(|p| p.join(".")).as_deref() {
                Some("rego.metadata.rule") => Some("rule"),
                Some("rego.metadata.chain") => Some("chain"),
                _ => None,
            };
            match which {
                Some(w) if params.is_empty() => {
                    if let (Ok(start), Ok(end)) =
                        (usize::try_from(span.start), usize::try_from(span.end))
                    {
                        out.push((start, end, w));
                    }
                }
                _ => {
                    for p in params {
                        calls_in_expr(p, out);
                    }
                }
            }
        }
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            for i in items {
                calls_in_expr(i, out);
            }
        }
        Expr::Object { fields, .. } => {
            for (_, k, v) in fields {
                calls_in_expr(k, out);
                calls_in_expr(v, out);
            }
        }
        Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
            calls_in_expr(term, out);
            calls_in_query(query, out);
        }
        Expr::ObjectCompr {
            key, value, query, ..
        } => {
            calls_in_expr(key, out);
            calls_in_expr(value, out);
            calls_in_query(query, out);
        }
        Expr::UnaryExpr { expr, .. } => calls_in_expr(expr, out),
        Expr::RefDot { refr, .. } => calls_in_expr(refr, out),
        Expr::RefBrack { refr, index, .. } => {
            calls_in_expr(refr, out);
            calls_in_expr(index, out);
        }
        Expr::BinExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::AssignExpr { lhs, rhs, .. } => {
            calls_in_expr(lhs, out);
            calls_in_expr(rhs, out);
        }
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } => calls_in_all(key.iter().chain([value, collection]), out),
        _ => {}
    }
}
