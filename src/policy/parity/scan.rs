//! The statement-level scan of one rule: what it binds, uses and declares, the
//! functions it calls (resolved against rules, builtins and extensions), and the
//! refusals that follow (unsafe and unused variables, unknown functions, arity).

use std::collections::{BTreeMap, BTreeSet};

use regorus::unstable::{
    ArithOp, AssignOp, BinOp, BoolOp, Expr, Literal, Query, Ref, Rule, RuleHead, Span,
};

use super::opa_builtins::OPA_BUILTINS_REFUSED;
use super::rules::{root_span, Index, Refusal};
use crate::policy::access::{fixed_prefix, static_path};

/// What the checks need to know about the functions a call can name.
pub struct Functions<'a> {
    /// Whether an extension (e.g. `io.jwt.decode`) with this name is registered.
    pub is_extension: &'a dyn Fn(&str) -> bool,
}

/// What a called name resolves to.
pub(super) enum Callee {
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
pub(super) fn operator_builtin(e: &Expr) -> Option<&'static str> {
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

pub(super) struct Resolver<'a> {
    pub(super) index: &'a Index,
    pub(super) package: &'a [String],
    pub(super) aliases: &'a BTreeMap<String, Vec<String>>,
    pub(super) functions: &'a Functions<'a>,
}

impl Resolver<'_> {
    /// Whether `dotted` names a builtin regorus or portcullis provides.
    pub(super) fn is_builtin(&self, dotted: &str) -> bool {
        regorus::unstable::BUILTINS.contains_key(dotted)
            || dotted == "print"
            || (self.functions.is_extension)(dotted)
    }

    pub(super) fn resolve(&self, name: &[String]) -> Callee {
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
pub(super) struct RuleScan<'a> {
    pub(super) resolver: Resolver<'a>,
    pub(super) bound: BTreeSet<String>,
    pub(super) uses: Vec<(String, Span)>,
    /// `some`/`every` declarations: name, where, and whether anything reads it.
    pub(super) declared: Vec<(String, Span, bool)>,
    pub(super) refusals: Vec<Refusal>,
    /// The fixed parts of the references the rule makes (`data.a.b`, `p.q`, `x`).
    pub(super) refs: Vec<Vec<String>>,
    /// Inside a reference chain (its root is not a reference of its own).
    pub(super) in_ref: bool,
    /// Paths of the rules the rule calls.
    pub(super) calls: Vec<Vec<String>>,
    /// Inside a `not` expression (outside any comprehension in it).
    pub(super) in_not: bool,
}

impl RuleScan<'_> {
    pub(super) fn rule(&mut self, rule: &Rule) {
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
    pub(super) fn head_ref(&mut self, refr: &Expr) {
        match refr {
            Expr::RefDot { refr, .. } => self.head_ref(refr),
            Expr::RefBrack { refr, index, .. } => {
                self.head_ref(refr);
                self.expr(index, false);
            }
            _ => {}
        }
    }

    pub(super) fn query(&mut self, q: &Query, positive: bool) {
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
    pub(super) fn template_check(&mut self, fcn: &Expr, params: &[Ref<Expr>]) {
        let ok = match params.first().map(|p| p.as_ref()) {
            Some(Expr::String { value, .. } | Expr::RawString { value, .. }) => value
                .as_string()
                .is_ok_and(|t| crate::policy::builtins::extra::template_supported(t)),
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
    pub(super) fn enter_ref(&mut self, e: &Expr) -> bool {
        let outer = self.in_ref;
        if !outer {
            self.refs.push(fixed_prefix(e));
        }
        self.in_ref = true;
        outer
    }

    /// `with` replaces `input…`, `data…` or a function, nothing else.
    pub(super) fn with_target(&mut self, refr: &Expr) {
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
    pub(super) fn bind_all(&mut self, e: &Expr) {
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
    pub(super) fn bind_all_refs(&mut self, e: &Expr) {
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
    pub(super) fn expr(&mut self, e: &Expr, positive: bool) {
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
    pub(super) fn shadowed_builtin(&mut self, span: &Span, builtin: &str, name: &[String]) {
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

    pub(super) fn call(&mut self, fcn: &Expr, params: &[Ref<Expr>], positive: bool) {
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
                if let Some(why) =
                    crate::policy::builtins::json_schema::literal_schema_refusal(&dotted, params)
                {
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
