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

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;

use regorus::unstable::{
    ArithOp, AssignOp, BinOp, BoolOp, Expr, Literal, Module, Query, Ref, Rule, RuleHead, Span,
};
use regorus::{Engine, PolicyLengthConfig, Value};

use super::access::static_path;
use super::engine::PolicyError;

/// One refused construct: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `file:line:col`.
    pub location: String,
    /// The construct and why it is refused.
    pub message: String,
}

impl Refusal {
    fn at(span: &Span, message: String) -> Self {
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

/// Builtins OPA has and portcullis does not: a call is refused at load with this
/// explanation rather than failing (and denying) at evaluation time.
pub const OPA_BUILTINS_REFUSED: &[(&str, &str)] = &[
    (
        "crypto.x509.parse_and_verify_certificates_with_options",
        "not implemented",
    ),
    ("crypto.x509.parse_certificate_request", "not implemented"),
    ("crypto.x509.parse_keypair", "not implemented"),
    ("crypto.parse_private_keys", "not implemented"),
    ("graphql.is_valid", "no GraphQL parser"),
    ("graphql.parse", "no GraphQL parser"),
    ("graphql.parse_and_verify", "no GraphQL parser"),
    ("graphql.parse_query", "no GraphQL parser"),
    ("graphql.parse_schema", "no GraphQL parser"),
    ("graphql.schema_is_valid", "no GraphQL parser"),
    (
        "net.lookup_ip_addr",
        "the sidecar does not resolve names while deciding",
    ),
    (
        "providers.aws.sign_req",
        "the sidecar does not sign outgoing requests while deciding",
    ),
    (
        "rego.parse_module",
        "regorus' syntax tree differs from OPA's",
    ),
    ("any", "deprecated in OPA; Rego v1 refuses it"),
    ("all", "deprecated in OPA; Rego v1 refuses it"),
    ("re_match", "deprecated in OPA: use regex.match"),
    ("set_diff", "deprecated in OPA: use the `-` operator"),
    (
        "net.cidr_overlap",
        "deprecated in OPA: use net.cidr_contains",
    ),
    ("cast_array", "deprecated in OPA"),
    ("cast_boolean", "deprecated in OPA"),
    ("cast_null", "deprecated in OPA"),
    ("cast_object", "deprecated in OPA"),
    ("cast_set", "deprecated in OPA"),
    ("cast_string", "deprecated in OPA"),
    (
        "crypto.x509.parse_certificates",
        "its result is Go's x509.Certificate as JSON: raw DER fields, Go's enum numbers, pkix.Name and key internals, which portcullis does not reproduce",
    ),
    (
        "crypto.x509.parse_and_verify_certificates",
        "its result is Go's x509.Certificate as JSON: raw DER fields, Go's enum numbers, pkix.Name and key internals, which portcullis does not reproduce",
    ),
    (
        "rego.metadata.chain",
        "supported only with annotations of title, description, custom and scope (rule, document, package)",
    ),
    (
        "rego.metadata.rule",
        "supported only with annotations of title, description, custom and scope (rule, document, package)",
    ),
];

/// Every OPA (1.x) builtin function called by name (operators such as `==` and
/// `+` and OPA's `internal.*` helpers left out), for the README table.
pub const OPA_BUILTINS: &[&str] = &[
    "abs",
    "all",
    "any",
    "array.concat",
    "array.flatten",
    "array.reverse",
    "array.slice",
    "base64.decode",
    "base64.encode",
    "base64.is_valid",
    "base64url.decode",
    "base64url.encode",
    "base64url.encode_no_pad",
    "bits.and",
    "bits.lsh",
    "bits.negate",
    "bits.or",
    "bits.rsh",
    "bits.xor",
    "cast_array",
    "cast_boolean",
    "cast_null",
    "cast_object",
    "cast_set",
    "cast_string",
    "ceil",
    "concat",
    "contains",
    "count",
    "crypto.hmac.equal",
    "crypto.hmac.md5",
    "crypto.hmac.sha1",
    "crypto.hmac.sha256",
    "crypto.hmac.sha512",
    "crypto.md5",
    "crypto.parse_private_keys",
    "crypto.sha1",
    "crypto.sha256",
    "crypto.x509.parse_and_verify_certificates",
    "crypto.x509.parse_and_verify_certificates_with_options",
    "crypto.x509.parse_certificate_request",
    "crypto.x509.parse_certificates",
    "crypto.x509.parse_keypair",
    "crypto.x509.parse_rsa_private_key",
    "endswith",
    "floor",
    "format_int",
    "glob.match",
    "glob.quote_meta",
    "graph.reachable",
    "graph.reachable_paths",
    "graphql.is_valid",
    "graphql.parse",
    "graphql.parse_and_verify",
    "graphql.parse_query",
    "graphql.parse_schema",
    "graphql.schema_is_valid",
    "hex.decode",
    "hex.encode",
    "http.send",
    "indexof",
    "indexof_n",
    "intersection",
    "io.jwt.decode",
    "io.jwt.decode_verify",
    "io.jwt.encode_sign",
    "io.jwt.encode_sign_raw",
    "io.jwt.verify_eddsa",
    "io.jwt.verify_es256",
    "io.jwt.verify_es384",
    "io.jwt.verify_es512",
    "io.jwt.verify_hs256",
    "io.jwt.verify_hs384",
    "io.jwt.verify_hs512",
    "io.jwt.verify_ps256",
    "io.jwt.verify_ps384",
    "io.jwt.verify_ps512",
    "io.jwt.verify_rs256",
    "io.jwt.verify_rs384",
    "io.jwt.verify_rs512",
    "is_array",
    "is_boolean",
    "is_null",
    "is_number",
    "is_object",
    "is_set",
    "is_string",
    "json.filter",
    "json.is_valid",
    "json.marshal",
    "json.marshal_with_options",
    "json.match_schema",
    "json.patch",
    "json.remove",
    "json.unmarshal",
    "json.verify_schema",
    "lower",
    "max",
    "min",
    "net.cidr_contains",
    "net.cidr_contains_matches",
    "net.cidr_expand",
    "net.cidr_intersects",
    "net.cidr_is_valid",
    "net.cidr_merge",
    "net.cidr_overlap",
    "net.lookup_ip_addr",
    "numbers.range",
    "numbers.range_step",
    "object.filter",
    "object.get",
    "object.keys",
    "object.remove",
    "object.subset",
    "object.union",
    "object.union_n",
    "opa.runtime",
    "print",
    "product",
    "providers.aws.sign_req",
    "rand.intn",
    "re_match",
    "regex.find_all_string_submatch_n",
    "regex.find_n",
    "regex.globs_match",
    "regex.is_valid",
    "regex.match",
    "regex.replace",
    "regex.split",
    "regex.template_match",
    "rego.metadata.chain",
    "rego.metadata.rule",
    "rego.parse_module",
    "replace",
    "round",
    "semver.compare",
    "semver.is_valid",
    "set_diff",
    "sort",
    "split",
    "sprintf",
    "startswith",
    "strings.any_prefix_match",
    "strings.any_suffix_match",
    "strings.count",
    "strings.render_template",
    "strings.replace_n",
    "strings.reverse",
    "strings.split_n",
    "substring",
    "sum",
    "time.add_date",
    "time.clock",
    "time.date",
    "time.diff",
    "time.format",
    "time.now_ns",
    "time.parse_duration_ns",
    "time.parse_ns",
    "time.parse_rfc3339_ns",
    "time.weekday",
    "to_number",
    "trace",
    "trim",
    "trim_left",
    "trim_prefix",
    "trim_right",
    "trim_space",
    "trim_suffix",
    "type_name",
    "union",
    "units.parse",
    "units.parse_bytes",
    "upper",
    "urlquery.decode",
    "urlquery.decode_object",
    "urlquery.encode",
    "urlquery.encode_object",
    "uuid.parse",
    "uuid.rfc4122",
    "walk",
    "yaml.is_valid",
    "yaml.marshal",
    "yaml.unmarshal",
];

/// How portcullis provides the OPA builtin `name`: `Ok` with who implements it,
/// or `Err` with why a call to it is refused at load.
pub fn builtin_support(name: &str) -> Result<&'static str, String> {
    if name == "print" || regorus::unstable::BUILTINS.contains_key(name) {
        return Ok("regorus");
    }
    if super::builtins::arity(name).is_some()
        || matches!(name, "rego.metadata.rule" | "rego.metadata.chain")
    {
        return Ok("portcullis");
    }
    Err(OPA_BUILTINS_REFUSED
        .iter()
        .find(|(n, _)| *n == name)
        .map_or_else(|| "not provided".to_string(), |(_, why)| (*why).to_string()))
}

/// The README's table of OPA builtins, one row per namespace.
pub fn builtin_table() -> String {
    let mut rows: BTreeMap<&str, (Vec<&str>, Vec<String>)> = BTreeMap::new();
    for name in OPA_BUILTINS {
        let namespace = match name.rsplit_once('.') {
            Some((ns, _)) if !ns.is_empty() => ns,
            _ => "(top level)",
        };
        let row = rows.entry(namespace).or_default();
        match builtin_support(name) {
            Ok(_) => row.0.push(name),
            Err(why) => row.1.push(format!("`{name}` ({why})")),
        }
    }
    let mut out =
        String::from("| namespace | supported | refused at load (why) |\n|---|---|---|\n");
    for (ns, (ok, refused)) in rows {
        let ok: Vec<String> = ok.iter().map(|n| format!("`{n}`")).collect();
        out.push_str(&format!(
            "| {ns} | {} | {} |\n",
            ok.join(", "),
            refused.join(", ")
        ));
    }
    out
}

/// What the checks need to know about the functions a call can name.
pub struct Functions<'a> {
    /// Whether an extension (e.g. `io.jwt.decode`) with this name is registered.
    pub is_extension: &'a dyn Fn(&str) -> bool,
}

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

/// A rule's head reference and the rule's span.
fn rule_head(rule: &Rule) -> (&Expr, &Span) {
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
fn recursion(graph: &BTreeMap<Vec<String>, (Span, BTreeSet<Vec<String>>)>) -> Vec<Refusal> {
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
enum RuleKind {
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
fn conflicting_rules(modules: &[Ref<Module>], index: &Index) -> Vec<Refusal> {
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
struct Index {
    /// Each module's package path (without `data`).
    module_packages: Vec<Vec<String>>,
    /// Package → first segments of its rule heads.
    roots: BTreeMap<Vec<String>, BTreeSet<String>>,
    /// Full rule path (package + head, without `data`) → function arity (None
    /// for rules that are not functions).
    rules: BTreeMap<Vec<String>, Option<usize>>,
}

impl Index {
    fn new(modules: &[Ref<Module>]) -> Self {
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
    fn globals(&self, m: &Module, package: &[String]) -> BTreeSet<String> {
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
fn import_aliases(m: &Module) -> BTreeMap<String, Vec<String>> {
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
fn root_span(e: &Expr) -> &Span {
    match e {
        Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => root_span(refr),
        _ => e.span(),
    }
}

/// The fixed leading steps of a rule head (`p[x].y` → `[p]`).
pub(crate) fn fixed_prefix(e: &Expr) -> Vec<String> {
    if let Some(p) = static_path(e) {
        return p;
    }
    match e {
        Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => fixed_prefix(refr),
        _ => Vec::new(),
    }
}

/// What a called name resolves to.
enum Callee {
    /// A rule of the set (a user-defined function), with its arity when known,
    /// and its path.
    Rule(Option<usize>, Vec<String>),
    /// A regorus builtin with its arity.
    Builtin(usize),
    /// `print` or an extension: arity not checked.
    Other,
    /// Nothing of that name.
    Unknown,
}

/// The OPA builtin an operator expression calls (`a > b` is `gt(a, b)`).
fn operator_builtin(e: &Expr) -> Option<&'static str> {
    Some(match e {
        Expr::BoolExpr { op, .. } => match op {
            BoolOp::Lt => "lt",
            BoolOp::Le => "lte",
            BoolOp::Eq => "equal",
            BoolOp::Ge => "gte",
            BoolOp::Gt => "gt",
            BoolOp::Ne => "neq",
        },
        Expr::ArithExpr { op, .. } => match op {
            ArithOp::Add => "plus",
            ArithOp::Sub => "minus",
            ArithOp::Mul => "mul",
            ArithOp::Div => "div",
            ArithOp::Mod => "rem",
        },
        Expr::BinExpr { op, .. } => match op {
            BinOp::Intersection => "and",
            BinOp::Union => "or",
        },
        _ => return None,
    })
}

struct Resolver<'a> {
    index: &'a Index,
    package: &'a [String],
    aliases: &'a BTreeMap<String, Vec<String>>,
    functions: &'a Functions<'a>,
}

impl Resolver<'_> {
    /// Whether `dotted` names a builtin regorus or portcullis provides.
    fn is_builtin(&self, dotted: &str) -> bool {
        regorus::unstable::BUILTINS.contains_key(dotted)
            || dotted == "print"
            || (self.functions.is_extension)(dotted)
    }

    fn resolve(&self, name: &[String]) -> Callee {
        let Some(first) = name.first() else {
            return Callee::Unknown;
        };
        let data_path: Option<Vec<String>> = if first == "data" {
            Some(name[1..].to_vec())
        } else if let Some(target) = self.aliases.get(first) {
            match target.first().map(String::as_str) {
                Some("data") => {
                    let mut p = target[1..].to_vec();
                    p.extend(name[1..].iter().cloned());
                    Some(p)
                }
                _ => None,
            }
        } else {
            None
        };
        if let Some(path) = data_path {
            return match self.index.rules.get(&path) {
                Some(arity) => Callee::Rule(*arity, path),
                None => Callee::Unknown,
            };
        }
        let mut local = self.package.to_vec();
        local.extend(name.iter().cloned());
        if let Some(arity) = self.index.rules.get(&local) {
            return Callee::Rule(*arity, local);
        }
        let dotted = name.join(".");
        if let Some((_, nargs)) = regorus::unstable::BUILTINS.get(dotted.as_str()) {
            return Callee::Builtin(usize::from(*nargs));
        }
        if dotted == "print" || (self.functions.is_extension)(&dotted) {
            return Callee::Other;
        }
        Callee::Unknown
    }
}

/// Walks one rule: what it binds, what it uses, what it declares, and its calls.
struct RuleScan<'a> {
    resolver: Resolver<'a>,
    bound: BTreeSet<String>,
    uses: Vec<(String, Span)>,
    /// `some`/`every` declarations: name, where, and whether anything reads it.
    declared: Vec<(String, Span, bool)>,
    refusals: Vec<Refusal>,
    /// The fixed parts of the references the rule makes (`data.a.b`, `p.q`, `x`).
    refs: Vec<Vec<String>>,
    /// Inside a reference chain (its root is not a reference of its own).
    in_ref: bool,
    /// Paths of the rules the rule calls.
    calls: Vec<Vec<String>>,
    /// Inside a `not` expression (outside any comprehension in it).
    in_not: bool,
}

impl RuleScan<'_> {
    fn rule(&mut self, rule: &Rule) {
        match rule {
            Rule::Spec { head, bodies, .. } => {
                match head {
                    RuleHead::Compr { refr, assign, .. } => {
                        self.head_ref(refr);
                        if let Some(a) = assign {
                            self.expr(&a.value, false);
                        }
                    }
                    RuleHead::Set { refr, key, .. } => {
                        self.head_ref(refr);
                        if let Some(k) = key {
                            self.expr(k, false);
                        }
                    }
                    RuleHead::Func {
                        refr, args, assign, ..
                    } => {
                        self.head_ref(refr);
                        for a in args {
                            // Arguments bind their variables for the body.
                            self.bind_all(a);
                            self.expr(a, true);
                        }
                        if let Some(a) = assign {
                            self.expr(&a.value, false);
                        }
                    }
                }
                for b in bodies {
                    if let Some(a) = &b.assign {
                        self.expr(&a.value, false);
                    }
                    self.query(&b.query, true);
                }
            }
            Rule::Default { args, value, .. } => {
                for a in args {
                    self.bind_all(a);
                }
                self.expr(value, false);
            }
        }
        // A declared variable counts as used when it is read outside its declaration.
        let uses: BTreeSet<&str> = self.uses.iter().map(|(n, _)| n.as_str()).collect();
        for d in &mut self.declared {
            d.2 = d.2 || uses.contains(d.0.as_str());
        }
    }

    /// A rule head `p[x].y`: the fixed name is the rule; variables in keys are uses.
    fn head_ref(&mut self, refr: &Expr) {
        match refr {
            Expr::RefDot { refr, .. } => self.head_ref(refr),
            Expr::RefBrack { refr, index, .. } => {
                self.head_ref(refr);
                self.expr(index, false);
            }
            _ => {}
        }
    }

    fn query(&mut self, q: &Query, positive: bool) {
        for stmt in &q.stmts {
            for w in &stmt.with_mods {
                self.expr(&w.r#as, false);
                self.with_target(&w.refr);
            }
            match &stmt.literal {
                Literal::SomeVars { vars, .. } => {
                    for v in vars {
                        let name = v.text().to_string();
                        if name != "_" {
                            self.declared.push((name, v.clone(), false));
                        }
                    }
                }
                Literal::SomeIn {
                    key,
                    value,
                    collection,
                    ..
                } => {
                    if let Some(k) = key {
                        self.bind_all(k);
                        self.expr(k, positive);
                    }
                    self.bind_all(value);
                    self.expr(value, positive);
                    self.expr(collection, positive);
                }
                Literal::Expr { expr, .. } => self.expr(expr, positive),
                Literal::NotExpr { expr, .. } => {
                    // A wildcard under `not` can never be bound (a comprehension
                    // inside starts a scope of its own).
                    let outer = std::mem::replace(&mut self.in_not, true);
                    self.expr(expr, false);
                    self.in_not = outer;
                }
                Literal::Every {
                    key,
                    value,
                    domain,
                    query,
                    ..
                } => {
                    self.expr(domain, positive);
                    let before = self.uses.len();
                    self.query(query, true);
                    let inner: BTreeSet<String> =
                        self.uses[before..].iter().map(|(n, _)| n.clone()).collect();
                    for v in key.iter().chain(std::iter::once(value)) {
                        let name = v.text().to_string();
                        if name == "_" {
                            continue;
                        }
                        self.bound.insert(name.clone());
                        if !inner.contains(&name) {
                            self.refusals.push(Refusal::at(
                                v,
                                format!("declared var `{name}` unused: the `every` body never reads it (OPA refuses the module: rego_compile_error)"),
                            ));
                        }
                    }
                }
            }
        }
    }

    /// `strings.render_template` is rendered as OPA does only for templates that
    /// insert values; the template must be written in the policy so that this is
    /// known at load.
    fn template_check(&mut self, fcn: &Expr, params: &[Ref<Expr>]) {
        let ok = match params.first().map(|p| p.as_ref()) {
            Some(Expr::String { value, .. } | Expr::RawString { value, .. }) => value
                .as_string()
                .is_ok_and(|t| super::extra_builtins::template_supported(t)),
            _ => false,
        };
        if !ok {
            self.refusals.push(Refusal::at(
                root_span(fcn),
                "`strings.render_template` is supported for a template written in the policy that only inserts values ({{.a.b}}, {{- .a -}}); conditions, loops, pipelines and computed templates are refused at load".to_string(),
            ));
        }
    }

    /// Records the fixed part of the outermost reference of a chain (`p.q[x]` →
    /// `p.q`); returns whether a chain was already being walked.
    fn enter_ref(&mut self, e: &Expr) -> bool {
        let outer = self.in_ref;
        if !outer {
            self.refs.push(fixed_prefix(e));
        }
        self.in_ref = true;
        outer
    }

    /// `with` replaces `input…`, `data…` or a function, nothing else.
    fn with_target(&mut self, refr: &Expr) {
        let Some(path) = static_path(refr) else {
            return;
        };
        let first = path.first().map(String::as_str);
        if matches!(first, Some("input" | "data")) {
            return;
        }
        if matches!(self.resolver.resolve(&path), Callee::Unknown) {
            self.refusals.push(Refusal::at(
                root_span(refr),
                format!(
                    "`with {}`: the target must be input, data or a function (OPA refuses the module: rego_type_error)",
                    path.join(".")
                ),
            ));
        }
    }

    /// Every variable in `e` is bound (an assignment's target, `some … in`).
    fn bind_all(&mut self, e: &Expr) {
        match e {
            Expr::Var { value, .. } => {
                if let Ok(s) = value.as_string() {
                    self.bound.insert(s.to_string());
                }
            }
            Expr::Array { items, .. } | Expr::Set { items, .. } => {
                for i in items {
                    self.bind_all(i);
                }
            }
            Expr::Object { fields, .. } => {
                for (_, _, v) in fields {
                    self.bind_all(v);
                }
            }
            Expr::RefBrack { refr, index, .. } => {
                self.bind_all(index);
                self.bind_all_refs(refr);
            }
            Expr::RefDot { refr, .. } => self.bind_all_refs(refr),
            _ => {}
        }
    }

    /// Index variables of a reference (`a[x][y]`) are bound by it.
    fn bind_all_refs(&mut self, e: &Expr) {
        match e {
            Expr::RefBrack { refr, index, .. } => {
                if let Expr::Var { .. } = index.as_ref() {
                    self.bind_all(index);
                }
                self.bind_all_refs(refr);
            }
            Expr::RefDot { refr, .. } => self.bind_all_refs(refr),
            _ => {}
        }
    }

    /// Records uses and calls in `e`; in a positive literal, also its bindings.
    fn expr(&mut self, e: &Expr, positive: bool) {
        match e {
            Expr::String { .. }
            | Expr::RawString { .. }
            | Expr::Number { .. }
            | Expr::Bool { .. }
            | Expr::Null { .. } => {}
            Expr::Var { span, value, .. } => {
                if let Ok(s) = value.as_string() {
                    if self.in_not && s.as_ref() == "_" {
                        self.refusals.push(Refusal::at(
                            span,
                            "var `_` is unsafe: a wildcard under `not` is never bound (OPA refuses the module: rego_unsafe_var_error)".to_string(),
                        ));
                    }
                    self.uses.push((s.to_string(), span.clone()));
                    if !self.in_ref {
                        self.refs.push(vec![s.to_string()]);
                    }
                }
            }
            Expr::Array { items, .. } | Expr::Set { items, .. } => {
                for i in items {
                    self.expr(i, positive);
                }
            }
            Expr::Object { fields, .. } => {
                for (_, k, v) in fields {
                    self.expr(k, positive);
                    self.expr(v, positive);
                }
            }
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                let outer = std::mem::replace(&mut self.in_not, false);
                self.query(query, true);
                self.expr(term, false);
                self.in_not = outer;
            }
            Expr::ObjectCompr {
                key, value, query, ..
            } => {
                let outer = std::mem::replace(&mut self.in_not, false);
                self.query(query, true);
                self.expr(key, false);
                self.expr(value, false);
                self.in_not = outer;
            }
            Expr::Call { fcn, params, .. } => self.call(fcn, params, positive),
            Expr::UnaryExpr { expr, .. } => self.expr(expr, positive),
            Expr::RefDot { refr, .. } => {
                let outer = self.enter_ref(e);
                self.expr(refr, positive);
                self.in_ref = outer;
            }
            Expr::RefBrack { refr, index, .. } => {
                if positive {
                    if let Expr::Var { .. } = index.as_ref() {
                        self.bind_all(index);
                    }
                }
                let outer = self.enter_ref(e);
                self.expr(refr, positive);
                self.in_ref = false;
                self.expr(index, positive);
                self.in_ref = outer;
            }
            Expr::AssignExpr { op, lhs, rhs, .. } => {
                if positive {
                    self.bind_all(lhs);
                    if matches!(op, AssignOp::Eq) {
                        // Unification binds either side.
                        self.bind_all(rhs);
                    }
                }
                self.expr(lhs, positive);
                self.expr(rhs, positive);
            }
            Expr::BinExpr { lhs, rhs, .. }
            | Expr::BoolExpr { lhs, rhs, .. }
            | Expr::ArithExpr { lhs, rhs, .. } => {
                if let Some(name) = operator_builtin(e) {
                    self.shadowed_builtin(e.span(), name, &[name.to_string()]);
                }
                self.expr(lhs, positive);
                self.expr(rhs, positive);
            }
            Expr::Membership {
                key,
                value,
                collection,
                ..
            } => {
                if let Some(k) = key {
                    self.expr(k, positive);
                }
                self.expr(value, positive);
                self.expr(collection, positive);
            }
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }

    /// A call of builtin `builtin` (by name or by its operator) in a package that
    /// has a rule of that name: OPA calls the rule (and refuses the module when the
    /// arities differ), regorus the builtin.
    fn shadowed_builtin(&mut self, span: &Span, builtin: &str, name: &[String]) {
        let mut local = self.resolver.package.to_vec();
        local.extend(name.iter().cloned());
        if self.resolver.index.rules.contains_key(&local) {
            self.refusals.push(Refusal::at(
                span,
                format!(
                    "`{builtin}` is both a rule of this package and a builtin: OPA calls the rule here (or refuses the module when the arities differ), regorus the builtin; refused at load so that no request is decided differently from OPA (rename the rule)"
                ),
            ));
        }
    }

    fn call(&mut self, fcn: &Expr, params: &[Ref<Expr>], positive: bool) {
        let Some(name) = static_path(fcn) else {
            self.expr(fcn, positive);
            for p in params {
                self.expr(p, positive);
            }
            return;
        };
        let dotted = name.join(".");
        let arity = match self.resolver.resolve(&name) {
            Callee::Rule(arity, path) => {
                if self.resolver.is_builtin(&dotted) {
                    self.shadowed_builtin(root_span(fcn), &dotted, &name);
                }
                self.calls.push(path);
                arity
            }
            Callee::Builtin(nargs) => {
                if params.len() != nargs && params.len() != nargs + 1 {
                    self.refusals.push(Refusal::at(
                        root_span(fcn),
                        format!(
                            "`{dotted}` takes {nargs} argument(s), called with {} (OPA refuses the module: rego_type_error)",
                            params.len()
                        ),
                    ));
                }
                Some(nargs)
            }
            Callee::Other => {
                if dotted == "strings.render_template" {
                    self.template_check(fcn, params);
                }
                if let Some(why) = super::json_schema::literal_schema_refusal(&dotted, params) {
                    self.refusals.push(Refusal::at(root_span(fcn), why));
                }
                None
            }
            Callee::Unknown => {
                let why = match OPA_BUILTINS_REFUSED.iter().find(|(n, _)| *n == dotted) {
                    Some((_, why)) => format!(
                        "call to OPA builtin `{dotted}`, which portcullis does not provide ({why}); refused at load so that no request is decided differently from OPA"
                    ),
                    None => format!(
                        "call to undefined function `{dotted}`: neither a rule of the policy set nor a builtin (OPA refuses the module: rego_type_error)"
                    ),
                };
                self.refusals.push(Refusal::at(root_span(fcn), why));
                None
            }
        };
        for (i, p) in params.iter().enumerate() {
            // The output-argument form `f(x, out)`: the extra last argument is bound
            // (lenient when the arity is not known).
            let output = i + 1 == params.len() && arity.is_none_or(|n| params.len() == n + 1);
            if output && positive {
                self.bind_all(p);
            }
            self.expr(p, positive);
        }
    }
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
        for edit in super::metadata::edits(&text, m, package).unwrap_or_default() {
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

/// A regorus engine for user policies: lines of any length load (a PEM or a JWKS
/// written on one line is common; OPA has no column limit), within the file size
/// and line count limits regorus keeps.
pub fn new_engine() -> Engine {
    let mut engine = Engine::new();
    engine.set_policy_length_config(PolicyLengthConfig {
        max_col: MAX_COLUMNS,
        ..PolicyLengthConfig::default()
    });
    engine
}

/// Columns per line accepted: the whole of a maximum-size file.
const MAX_COLUMNS: NonZeroU32 = match NonZeroU32::new(1 << 20) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};

#[cfg(test)]
mod tests {
    use super::*;

    fn refusals(src: &str) -> Vec<Refusal> {
        let mut engine = new_engine();
        engine
            .add_policy("p.rego".to_string(), src.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        let modules = engine.get_modules().clone();
        let is_extension = |name: &str| name == "io.jwt.decode";
        check(
            &modules,
            &Functions {
                is_extension: &is_extension,
            },
        )
    }

    /// Modules OPA refuses (each checked against OPA 1.x): refused here with the
    /// line and column of the construct.
    #[test]
    fn modules_opa_refuses_are_refused() {
        let cases = [
            (
                "allow if { every k, v in [1] { v > 0 } }",
                "3:18",
                "declared var `k` unused",
            ),
            (
                "allow if { every x in [1] { true } }",
                "3:18",
                "declared var `x` unused",
            ),
            (
                "allow if { some x; input.a == 1 }",
                "3:17",
                "declared var `x` unused",
            ),
            (
                "allow := y if { input.a == 1 }",
                "3:10",
                "var `y` is unsafe",
            ),
            ("allow if { not x }", "3:16", "var `x` is unsafe"),
            ("allow if { x > 1 }", "3:12", "var `x` is unsafe"),
            (
                "allow if { startswith(y, \"a\") }",
                "3:23",
                "var `y` is unsafe",
            ),
            ("allow := 1 if false else := z", "3:29", "var `z` is unsafe"),
            (
                "allow if { xs := [q | q > 1]; count(xs) == 0 }",
                "3:23",
                "var `q` is unsafe",
            ),
            ("r[k] := 1 if input.a == 1", "3:3", "var `k` is unsafe"),
            ("p contains x if input.a == 1", "3:12", "var `x` is unsafe"),
            (
                "allow if { input.a == 1 with input.a as zz }",
                "3:41",
                "var `zz` is unsafe",
            ),
            (
                "allow if { every x in qq { x > 0 } }",
                "3:23",
                "var `qq` is unsafe",
            ),
            ("allow if { not input.b[x] }", "3:24", "var `x` is unsafe"),
            (
                "allow if { not input.o[_] == 1 }",
                "3:24",
                "var `_` is unsafe",
            ),
            (
                "allow if { some k; not input.o[k] }",
                "3:32",
                "var `k` is unsafe",
            ),
            (
                "allow if { foo.bar(1) }",
                "3:12",
                "undefined function `foo.bar`",
            ),
            (
                "allow if { count(1, 2, 3) }",
                "3:12",
                "`count` takes 1 argument(s), called with 3",
            ),
            (
                "allow if { data.lib.nope(1) }",
                "3:12",
                "undefined function `data.lib.nope`",
            ),
            (
                "allow if b\nb if allow",
                "3:1",
                "rule data.a.allow is recursive",
            ),
            ("allow if { data.a.allow }", "3:1", "is recursive"),
            (
                "allow if true\nallow contains 1 if true",
                "4:1",
                "conflicting rules data.a.allow",
            ),
            (
                "p.q := 1\np := 2",
                "4:1",
                "rule data.a.p conflicts with rule data.a.p.q",
            ),
            (
                "default allow := false\ndefault allow := true",
                "4:9",
                "multiple default rules",
            ),
            ("allow if { input.a with foo as 1 }", "3:25", "`with foo`"),
            (
                "allow if { crypto.x509.parse_keypair(input.k, input.c) }",
                "3:12",
                "OPA builtin `crypto.x509.parse_keypair`, which portcullis does not provide",
            ),
        ];
        for (rule, at, want) in cases {
            let src = format!("package a\nimport rego.v1\n{rule}\n");
            let got = refusals(&src);
            let first = got.first().unwrap_or_else(|| panic!("{rule}: not refused"));
            assert_eq!(first.location, format!("p.rego:{at}"), "{rule}: {got:?}");
            assert!(first.message.contains(want), "{rule}: {got:?}");
        }
    }

    /// Modules OPA accepts (each checked against OPA 1.x) load.
    #[test]
    fn modules_opa_accepts_load() {
        let cases = [
            "allow if { some x in [1]; input.a == 1 }",
            "allow if { every k, v in [1] { k >= 0; v > 0 } }",
            "allow if { every _, v in [1] { v > 0 } }",
            "allow if { x := 1; input.a == 1 }",
            "allow if { count([1, 2], n); n == 2 }",
            "allow if { walk({\"a\": 1}, [p, v]); v == 1; count(p) == 1 }",
            "f(x) := x + 1\nallow if { f(1, y); y == 2 }",
            "f(x) := 1\nallow if f(1)",
            "allow if { io.jwt.decode(input.t, [h, p, s]); h.alg == \"x\"; p; s }",
            "allow if { [_, p, _] := io.jwt.decode(input.t); p.sub == \"a\" }",
            "allow if { input.b[x] == 1; x > 0 }",
            "allow if { some x; input.b[x] == 1 }",
            "p contains x if { some x in input.xs }\nallow if count(p) > 0",
            "r[k] := v if { some k, v in input.o }\nallow if r.a",
            "result[\"allowed\"] := allow\nresult[\"headers\"] := {\"x\": \"y\"}\ndefault allow := false",
            "allow if { xs := [q | some q in input.xs; q > 1]; count(xs) > 0 }",
            "allow if { o := {k: v | some k, v in input.o}; o.a }",
            "allow if { not startswith(input.p, \"/a\") }",
            "allow if { input.a = x; x == 1 }",
            "allow if { [a, b] = [1, 2]; a < b }",
            "allow := v if { v := input.a } else := false",
            "default f(_) := false\nf(x) if x > 1\nallow if f(input.a)",
            "allow if { input.a == 1 with input.b as 2 }",
            "allow if { x := input.a; y := x + 1; y > 1 }",
            "allow if { some i; input.xs[i] == 1 }",
            "allow if { print(input.a) }",
            "a.b.c := 1\nallow if a.b.c == 1",
            "r[k] := 1 if some k in input.xs\nr.z := 2\nallow if r.z",
            "allow if { input.a with time.now_ns as 1 }",
            "f(x) := 1\nallow if { input.a with f as 2 }",
            "x := 1\nallow if { data.a.x == 1 }",
            "allow if { glob.match(\"a.*\", [\".\"], input.h) }",
            "allow if { not count([x | x := input.xs[_]]) == 0 }",
            "allow := input.xs[_]",
            "p contains input.xs[_]\nallow if count(p) > 0",
            "allow if { every x in input.xs { x != input.ys[_] } }",
        ];
        for rule in cases {
            let src = format!("package a\nimport rego.v1\n{rule}\n");
            let got = refusals(&src);
            assert!(got.is_empty(), "{rule}: {got:?}");
        }
    }

    #[test]
    fn imports_and_other_packages_resolve() {
        let mut engine = new_engine();
        for (name, src) in [
            ("lib.rego", "package lib.util\nimport rego.v1\nis_admin(u) if u == \"root\"\n"),
            (
                "p.rego",
                "package a\nimport rego.v1\nimport data.lib.util\nimport data.lib.util as u2\nimport input.attributes.request.http as req\nallow if { util.is_admin(req.method); u2.is_admin(\"x\"); data.lib.util.is_admin(\"y\") }\n",
            ),
        ] {
            engine
                .add_policy(name.to_string(), src.to_string())
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(refuse(&mut engine).map_err(|e| e.to_string()), Ok(()));
    }

    /// Every OPA builtin is either provided or refused at load with a reason, and
    /// the README's table says which.
    #[test]
    fn readme_lists_every_opa_builtin() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .unwrap_or_else(|e| panic!("{e}"));
        let table = builtin_table();
        assert!(
            readme.contains(&table),
            "README.md's builtin table is out of date; it should read:\n{table}"
        );
        for name in [
            "crypto.sha256",
            "net.cidr_merge",
            "io.jwt.verify_eddsa",
            "io.jwt.verify_es512",
            "strings.render_template",
            "walk",
            "json.patch",
            "regex.globs_match",
        ] {
            assert!(builtin_support(name).is_ok(), "{name}");
        }
        for name in [
            "rego.parse_module",
            "graphql.parse",
            "crypto.x509.parse_keypair",
        ] {
            assert!(builtin_support(name).is_err(), "{name}");
        }
    }

    #[test]
    fn long_lines_load() {
        let pem = "A".repeat(5000);
        let src =
            format!("package a\nimport rego.v1\ncert := \"{pem}\"\nallow if count(cert) > 0\n");
        let mut engine = new_engine();
        engine
            .add_policy("p.rego".to_string(), src)
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
