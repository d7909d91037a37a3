//! OPA's output-argument call form rewritten into the unification regorus
//! evaluates.

use regorus::unstable::{Expr, Literal, Query, Ref, Rule, Span};

use super::engine::new_engine;
use super::rules::{import_aliases, Index};
use super::scan::{Callee, Functions, Resolver};
use crate::policy::access::static_path;

/// Rewrites OPA's output-argument call form, which regorus does not evaluate
/// (`io.jwt.decode(t, [h, p, s])`, `walk(x, [path, value])`, `f(1, y)`), into the
/// equivalent unification (`[h, p, s] = io.jwt.decode(t)`), as OPA's compiler does.
///
/// Only a call that is a whole statement, whose function's arity is known and which
/// has exactly one argument more, is rewritten; lines keep their numbers. Modules
/// that do not parse are returned unchanged (loading reports the error).
pub fn rewrite_output_args(
    modules: Vec<(String, String)>,
    extension_arity: &dyn Fn(&str) -> Option<usize>,
) -> Vec<(String, String)> {
    let mut scratch = new_engine();
    for (name, text) in &modules {
        if scratch.add_policy(name.clone(), text.clone()).is_err() {
            return modules;
        }
    }
    let parsed = scratch.get_modules().clone();
    let index = Index::new(&parsed);
    let no_extensions = |_: &str| false;
    let functions = Functions {
        is_extension: &no_extensions,
    };
    let mut out = Vec::with_capacity(modules.len());
    for ((name, text), (m, package)) in modules
        .into_iter()
        .zip(parsed.iter().zip(&index.module_packages))
    {
        let aliases = import_aliases(m);
        let resolver = Resolver {
            index: &index,
            package,
            aliases: &aliases,
            functions: &functions,
        };
        let mut edits: Vec<(usize, usize, String)> = Vec::new();
        let mut visit = |q: &Query| {
            for stmt in &q.stmts {
                let Literal::Expr { expr, .. } = &stmt.literal else {
                    continue;
                };
                let Expr::Call {
                    span, fcn, params, ..
                } = expr.as_ref()
                else {
                    continue;
                };
                let Some(fname) = static_path(fcn) else {
                    continue;
                };
                let arity = match resolver.resolve(&fname) {
                    Callee::Rule(Some(n), _) | Callee::Builtin(n) => Some(n),
                    _ => extension_arity(&fname.join(".")),
                };
                // `walk` is a relation (one result per pair), which regorus already
                // evaluates in the output form; a unification would not iterate.
                if fname.join(".") != "walk" && arity.is_some_and(|n| params.len() == n + 1) {
                    if let Some(edit) = output_edit(&text, span, fcn, params) {
                        edits.push(edit);
                    }
                }
            }
        };
        for rule in &m.policy {
            if let Rule::Spec { bodies, .. } = rule.as_ref() {
                for b in bodies {
                    each_query(&b.query, &mut visit);
                }
            }
        }
        // `rego.metadata.*()` calls become the annotations they return.
        for edit in crate::policy::metadata::edits(&text, m, package).unwrap_or_default() {
            if !edits.iter().any(|e| edit.0 < e.1 && e.0 < edit.1) {
                edits.push(edit);
            }
        }
        if edits.is_empty() {
            out.push((name, text));
            continue;
        }
        edits.sort_by_key(|e| std::cmp::Reverse(e.0));
        let mut text = text;
        for (start, end, replacement) in edits {
            text.replace_range(start..end, &replacement);
        }
        out.push((name, text));
    }
    out
}

/// Calls `f` on `q` and on every query nested in it (`every`, comprehensions are
/// left alone: the output form is a statement of a rule body or an `every` body).
fn each_query(q: &Query, f: &mut dyn FnMut(&Query)) {
    f(q);
    for stmt in &q.stmts {
        if let Literal::Every { query, .. } = &stmt.literal {
            each_query(query, f);
        }
    }
}

/// The byte range of `fcn(a, out)` and its replacement `out = fcn(a)`, when the
/// spans index `text` and the output argument is on the line of the others.
fn output_edit(
    text: &str,
    call: &Span,
    fcn: &Expr,
    params: &[Ref<Expr>],
) -> Option<(usize, usize, String)> {
    let (out, inputs) = params.split_last()?;
    let start = usize::try_from(call.start).ok()?;
    let end = usize::try_from(call.end).ok()?;
    if text.get(start..end)? != call.text() {
        return None;
    }
    let out_start = usize::try_from(out.span().start).ok()?;
    let out_end = usize::try_from(out.span().end).ok()?;
    let out_text = text.get(out_start..out_end)?;
    // `fcn(a, b, ` up to the output argument (spans of string literals exclude
    // their quotes, so the text before the output is cut at its comma).
    let before = text.get(start..out_start)?.trim_end();
    let head = if inputs.is_empty() {
        let fcn_end = usize::try_from(fcn.span().end).ok()?;
        format!("{}(", text.get(start..fcn_end)?.trim_end())
    } else {
        before.strip_suffix(',')?.to_string()
    };
    let after = text.get(out_end..end)?;
    if head.contains('\n') || after.contains('\n') {
        return None;
    }
    Some((start, end, format!("{out_text} = {head})")))
}
