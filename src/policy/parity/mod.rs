//! Load-time refusals, so that a loaded policy set decides as OPA does.
//!
//! regorus parses and runs some modules that OPA's compiler refuses, and it lacks
//! some OPA builtins (a call to one would only fail when a request reaches it).
//! Both are found here, from the syntax, once per revision, and refused with
//! `file:line:col`, the construct and why — at `policy check`, at start-up and at
//! reload (where the last good revision stays):
//!
//! - **unsafe variables**: a variable used in a rule (a comparison, a function
//!   argument, a rule head, under `not`, …) that nothing in the rule binds;
//! - **declared variables never used**: `some x` and `every` key/value variables
//!   that the rule never reads (OPA: "declared var x unused");
//! - **calls to unknown functions**: neither a rule of the policy set, nor a
//!   builtin regorus provides, nor an extension registered by portcullis. An OPA
//!   builtin that portcullis lacks is named as such;
//! - **builtin arity**: a builtin called with too few or too many arguments (the
//!   output-argument form, one extra argument, is accepted).
//!
//! The analysis is deliberately lenient where it would otherwise have to mirror
//! OPA's reordering and scoping in full: a variable bound anywhere in a rule counts
//! as bound everywhere in it. It therefore never refuses a module OPA accepts for
//! these reasons, and catches the modules that use a name defined nowhere.

mod engine;
mod opa_builtins;
mod rewrite;
mod rules;
mod scan;

use std::collections::{BTreeMap, BTreeSet};

use regorus::unstable::{Module, Ref, Span};
use regorus::{Engine, Value};

use self::rules::{conflicting_rules, import_aliases, recursion, rule_head, Index};
use self::scan::{Resolver, RuleScan};
use crate::policy::access::fixed_prefix;
use crate::policy::options::PolicyError;

pub use self::engine::new_engine;
pub use self::opa_builtins::{builtin_support, builtin_table, OPA_BUILTINS, OPA_BUILTINS_REFUSED};
pub use self::rewrite::rewrite_output_args;
pub use self::rules::{is_partial_document, Refusal};
pub use self::scan::Functions;

/// Runs every check over `modules`; returns the refusals module by module, rule
/// by rule (empty when the set may load).
pub fn check(modules: &[Ref<Module>], functions: &Functions<'_>) -> Vec<Refusal> {
    let index = Index::new(modules);
    let mut out = conflicting_rules(modules, &index);
    // Rule path → (where it is first defined, the paths it reads or calls).
    let mut graph: BTreeMap<Vec<String>, (Span, BTreeSet<Vec<String>>)> = BTreeMap::new();
    for (m, package) in modules.iter().zip(&index.module_packages) {
        let globals = index.globals(m, package);
        let aliases = import_aliases(m);
        for rule in &m.policy {
            let mut scan = RuleScan {
                resolver: Resolver {
                    index: &index,
                    package,
                    aliases: &aliases,
                    functions,
                },
                bound: BTreeSet::new(),
                uses: Vec::new(),
                declared: Vec::new(),
                refusals: Vec::new(),
                refs: Vec::new(),
                in_ref: false,
                calls: Vec::new(),
                in_not: false,
            };
            scan.rule(rule);
            out.append(&mut scan.refusals);
            let (head, span) = rule_head(rule);
            let mut path = package.clone();
            path.extend(fixed_prefix(head));
            let entry = graph
                .entry(path)
                .or_insert_with(|| (span.clone(), BTreeSet::new()));
            entry.1.extend(scan.calls.iter().cloned());
            for r in &scan.refs {
                let Some(root) = r.first() else { continue };
                let dep = if root == "data" {
                    Some(r[1..].to_vec())
                } else if let Some(target) = aliases.get(root) {
                    (target.first().map(String::as_str) == Some("data")).then(|| {
                        let mut d = target[1..].to_vec();
                        d.extend(r[1..].iter().cloned());
                        d
                    })
                } else if !scan.bound.contains(root)
                    && index
                        .roots
                        .get(package)
                        .is_some_and(|roots| roots.contains(root))
                {
                    let mut d = package.clone();
                    d.extend(r.iter().cloned());
                    Some(d)
                } else {
                    None
                };
                entry.1.extend(dep);
            }
            let mut reported = BTreeSet::new();
            for (name, span) in &scan.uses {
                if name == "_"
                    || scan.bound.contains(name)
                    || globals.contains(name)
                    || !reported.insert(name.clone())
                {
                    continue;
                }
                out.push(Refusal::at(
                    span,
                    format!(
                        "var `{name}` is unsafe: nothing in the rule binds it (OPA refuses the module: rego_unsafe_var_error)"
                    ),
                ));
            }
            for (name, span, used) in &scan.declared {
                if !used {
                    out.push(Refusal::at(
                        span,
                        format!("declared var `{name}` unused (OPA refuses the module: rego_compile_error)"),
                    ));
                }
            }
        }
    }
    out.extend(recursion(&graph));
    out.dedup();
    out
}

/// Refusals listed in one load error; the rest are counted.
const MAX_REPORTED: usize = 20;

/// Runs [`check`] over the modules loaded in `engine` (extensions registered on it
/// count as functions) and turns the refusals into one [`PolicyError`] located at
/// the first.
pub fn refuse(engine: &mut Engine) -> Result<(), PolicyError> {
    let modules = engine.get_modules().clone();
    let probe = engine.clone();
    let known = std::cell::RefCell::new(BTreeMap::<String, bool>::new());
    let is_extension = move |name: &str| {
        if let Some(found) = known.borrow().get(name) {
            return *found;
        }
        // Registering a name again fails exactly when it is registered.
        let mut e = probe.clone();
        let found = e
            .add_extension(
                name.to_string(),
                0,
                Box::new(|_: Vec<Value>| Ok(Value::Undefined)),
            )
            .is_err();
        known.borrow_mut().insert(name.to_string(), found);
        found
    };
    let functions = Functions {
        is_extension: &is_extension,
    };
    let refusals = check(&modules, &functions);
    let Some(first) = refusals.first() else {
        return Ok(());
    };
    // One error naming the first construct; the others follow, one per line.
    let mut message = first.message.clone();
    for r in refusals.iter().skip(1).take(MAX_REPORTED - 1) {
        message.push('\n');
        message.push_str(&r.to_string());
    }
    if refusals.len() > MAX_REPORTED {
        message.push_str(&format!("\n… and {} more", refusals.len() - MAX_REPORTED));
    }
    Err(PolicyError::Rego {
        location: first.location.clone(),
        message,
    })
}

#[cfg(test)]
mod tests;
