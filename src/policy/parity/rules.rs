//! Rule-level checks: refusals ([`Refusal`]), the index of rules by package,
//! recursion between rules, conflicting rule kinds, and whether a query names a
//! partial document.

use std::collections::{BTreeMap, BTreeSet};

use regorus::unstable::{Expr, Module, Ref, Rule, RuleHead, Span};

use crate::policy::access::{fixed_prefix, static_path};

/// One refused construct: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `file:line:col`.
    pub location: String,
    /// The construct and why it is refused.
    pub message: String,
}

impl Refusal {
    pub(super) fn at(span: &Span, message: String) -> Self {
        Refusal {
            location: format!("{}:{}:{}", span.source.file(), span.line, span.col),
            message,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// A rule's head reference and the rule's span.
pub(super) fn rule_head(rule: &Rule) -> (&Expr, &Span) {
    match rule {
        Rule::Spec { head, span, .. } => match head {
            RuleHead::Compr { refr, .. }
            | RuleHead::Set { refr, .. }
            | RuleHead::Func { refr, .. } => (refr, span),
        },
        Rule::Default { refr, span, .. } => (refr, span),
    }
}

/// Rules that depend on themselves (OPA: rego_recursion_error), found on the graph
/// of rule paths and the paths they read: a read of `p` reaches every rule at,
/// above or below `p`.
pub(super) fn recursion(
    graph: &BTreeMap<Vec<String>, (Span, BTreeSet<Vec<String>>)>,
) -> Vec<Refusal> {
    let paths: Vec<&Vec<String>> = graph.keys().collect();
    let index: BTreeMap<&Vec<String>, usize> =
        paths.iter().enumerate().map(|(i, p)| (*p, i)).collect();
    // A read of `d` reaches the rules at or below `d` (a range of the sorted
    // paths) and those at a prefix of `d` (one lookup per prefix).
    let edges: Vec<Vec<usize>> = paths
        .iter()
        .map(|p| {
            let mut to = BTreeSet::new();
            for d in &graph[*p].1 {
                to.extend(
                    index
                        .range::<&Vec<String>, _>(d..)
                        .take_while(|(q, _)| q.starts_with(d))
                        .map(|(_, i)| *i),
                );
                for len in 0..d.len() {
                    if let Some(i) = index.get(&d[..len].to_vec()) {
                        to.insert(*i);
                    }
                }
            }
            to.into_iter().collect()
        })
        .collect();
    // Iterative depth-first search; 0 unvisited, 1 on the stack, 2 done.
    let mut state = vec![0u8; paths.len()];
    let mut out = Vec::new();
    for start in 0..paths.len() {
        if state[start] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        state[start] = 1;
        while let Some((node, next)) = stack.last().copied() {
            if let Some(&to) = edges[node].get(next) {
                if let Some(top) = stack.last_mut() {
                    top.1 += 1;
                }
                match state[to] {
                    0 => {
                        state[to] = 1;
                        stack.push((to, 0));
                    }
                    1 => {
                        let from = stack.iter().position(|(n, _)| *n == to).unwrap_or(0);
                        let cycle: Vec<String> = stack[from..]
                            .iter()
                            .map(|(n, _)| format!("data.{}", paths[*n].join(".")))
                            .chain(std::iter::once(format!("data.{}", paths[to].join("."))))
                            .collect();
                        out.push(Refusal::at(
                            &graph[paths[to]].0,
                            format!(
                                "rule data.{} is recursive: {} (OPA refuses the module: rego_recursion_error)",
                                paths[to].join("."),
                                cycle.join(" -> ")
                            ),
                        ));
                    }
                    _ => {}
                }
            } else {
                state[node] = 2;
                stack.pop();
            }
        }
    }
    out
}

/// What a rule defines at its path.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum RuleKind {
    /// `p := v`, `p if …`, `p.q.r := v` (a value at a fixed path).
    Complete,
    /// `p contains x`.
    Set,
    /// `p[k] := v` (keys computed).
    Object,
    /// `f(x) := v`.
    Function,
}

/// Rules OPA's compiler refuses as conflicting: one path defined as two kinds of
/// rule (`allow if …` and `allow contains …`), a complete rule with rules below
/// it (`p := 1` and `p.q := 2`), and more than one `default` for a rule.
pub(super) fn conflicting_rules(modules: &[Ref<Module>], index: &Index) -> Vec<Refusal> {
    let mut kinds: BTreeMap<Vec<String>, (RuleKind, Span)> = BTreeMap::new();
    let mut defaults: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    let mut out = Vec::new();
    let data_path = |p: &[String]| format!("data.{}", p.join("."));
    for (m, package) in modules.iter().zip(&index.module_packages) {
        for rule in &m.policy {
            let (refr, kind) = match rule.as_ref() {
                Rule::Spec { head, .. } => match head {
                    RuleHead::Compr { refr, .. } => (
                        refr,
                        if static_path(refr).is_some() {
                            RuleKind::Complete
                        } else {
                            RuleKind::Object
                        },
                    ),
                    RuleHead::Set { refr, .. } => (refr, RuleKind::Set),
                    RuleHead::Func { refr, .. } => (refr, RuleKind::Function),
                },
                Rule::Default { refr, .. } => {
                    let mut path = package.clone();
                    path.extend(fixed_prefix(refr));
                    let n = defaults.entry(path.clone()).or_default();
                    *n += 1;
                    if *n == 2 {
                        out.push(Refusal::at(
                            root_span(refr),
                            format!("multiple default rules {} found (OPA refuses the module: rego_type_error)", data_path(&path)),
                        ));
                    }
                    continue;
                }
            };
            let mut path = package.clone();
            path.extend(fixed_prefix(refr));
            let span = root_span(refr).clone();
            match kinds.get(&path) {
                Some((k, _)) if *k != kind => out.push(Refusal::at(
                    &span,
                    format!(
                        "conflicting rules {} found: defined as {:?} and as {:?} (OPA refuses the module: rego_type_error)",
                        data_path(&path),
                        k,
                        kind
                    ),
                )),
                Some(_) => {}
                None => {
                    kinds.insert(path, (kind, span));
                }
            }
        }
    }
    // A complete rule, set or function with other rules below its path.
    for (path, (kind, span)) in &kinds {
        if *kind == RuleKind::Object {
            continue;
        }
        if let Some((below, _)) = kinds
            .range(path.clone()..)
            .find(|(p, _)| p.len() > path.len() && p.starts_with(path))
        {
            out.push(Refusal::at(
                span,
                format!(
                    "rule {} conflicts with rule {} (OPA refuses the module: rego_type_error)",
                    data_path(path),
                    data_path(below)
                ),
            ));
        }
    }
    out
}

/// The rules of the whole set: which names each package defines, and functions'
/// arities.
pub(super) struct Index {
    /// Each module's package path (without `data`).
    pub(super) module_packages: Vec<Vec<String>>,
    /// Package → first segments of its rule heads.
    pub(super) roots: BTreeMap<Vec<String>, BTreeSet<String>>,
    /// Full rule path (package + head, without `data`) → function arity (None
    /// for rules that are not functions).
    pub(super) rules: BTreeMap<Vec<String>, Option<usize>>,
}

impl Index {
    pub(super) fn new(modules: &[Ref<Module>]) -> Self {
        let mut index = Index {
            module_packages: Vec::new(),
            roots: BTreeMap::new(),
            rules: BTreeMap::new(),
        };
        for m in modules {
            let package = static_path(&m.package.refr).unwrap_or_default();
            let package = match package.first().map(String::as_str) {
                Some("data") => package[1..].to_vec(),
                _ => package,
            };
            for rule in &m.policy {
                let (refr, arity) = match rule.as_ref() {
                    Rule::Spec { head, .. } => match head {
                        RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. } => (refr, None),
                        RuleHead::Func { refr, args, .. } => (refr, Some(args.len())),
                    },
                    Rule::Default { refr, args, .. } => {
                        (refr, (!args.is_empty()).then_some(args.len()))
                    }
                };
                let head = fixed_prefix(refr);
                if let Some(root) = head.first() {
                    index
                        .roots
                        .entry(package.clone())
                        .or_default()
                        .insert(root.clone());
                }
                let mut full = package.clone();
                full.extend(head);
                let slot = index.rules.entry(full).or_insert(arity);
                if slot.is_none() {
                    *slot = arity;
                }
            }
            index.module_packages.push(package);
        }
        index
    }

    /// Names a rule of module `m` may use without binding them.
    pub(super) fn globals(&self, m: &Module, package: &[String]) -> BTreeSet<String> {
        let mut g: BTreeSet<String> = self.roots.get(package).cloned().unwrap_or_default();
        g.insert("input".to_string());
        g.insert("data".to_string());
        g.extend(import_aliases(m).into_keys());
        g
    }
}

/// Whether `query` (`data.a.b`) names a document built from partial rules: a
/// `contains` rule, or rules defining keys below it (`b["k"] := …`, `b.k := …`,
/// `b[x] := …`). regorus' bytecode VM does not always assemble these as OPA does,
/// so such queries are evaluated with the interpreter.
pub fn is_partial_document(modules: &[Ref<Module>], query: &str) -> bool {
    let target: Vec<&str> = query.trim_start_matches("data.").split('.').collect();
    for m in modules {
        let package = static_path(&m.package.refr).unwrap_or_default();
        for rule in &m.policy {
            let (refr, set) = match rule.as_ref() {
                Rule::Spec { head, .. } => match head {
                    RuleHead::Compr { refr, .. } => (refr, false),
                    RuleHead::Set { refr, .. } => (refr, true),
                    RuleHead::Func { .. } => continue,
                },
                // `default result.allowed := false` is a key of `result` too.
                Rule::Default { refr, args, .. } if args.is_empty() => (refr, false),
                Rule::Default { .. } => continue,
            };
            let fixed = static_path(refr);
            let mut path = package.clone();
            path.extend(fixed.clone().unwrap_or_else(|| fixed_prefix(refr)));
            let names_target =
                path.len() >= target.len() && path.iter().zip(&target).all(|(a, b)| a == b);
            let below = path.len() > target.len() || fixed.is_none();
            if names_target && (set || below) {
                return true;
            }
        }
    }
    false
}

/// `import data.a.b as c` → `c` ↦ `data.a.b`; without `as`, the last segment.
pub(super) fn import_aliases(m: &Module) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for import in &m.imports {
        let Some(path) = static_path(&import.refr) else {
            continue;
        };
        let name = match &import.r#as {
            Some(span) => span.text().to_string(),
            None => match path.last() {
                Some(last) => last.clone(),
                None => continue,
            },
        };
        out.insert(name, path);
    }
    out
}

/// Where a reference starts (`a` of `a.b.c`): regorus places a step's span at
/// the step.
pub(super) fn root_span(e: &Expr) -> &Span {
    match e {
        Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => root_span(refr),
        _ => e.span(),
    }
}
