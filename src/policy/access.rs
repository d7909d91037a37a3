//! What a policy set can read of its input, found from its syntax once per
//! revision: the input paths its references name, and whether anything besides the
//! input and `data` (the clock, randomness, the network) can change a decision.
//!
//! Two uses, both sound by construction — a reference the analysis cannot pin to a
//! fixed path counts as reading everything under the part that is fixed, and a bare
//! `input` (passed to a function, printed, assigned whole) counts as reading it all:
//!
//! - the input builder leaves out request headers no rule can read, which is most of
//!   the cost of building the input document;
//! - decisions are memoised on the values at the paths read (see
//!   [`super::engine::PolicySet::evaluate`]): two inputs equal at every path the
//!   policy can read get the same decision from a deterministic policy.

use regorus::unstable::{Expr, Literal, Module, Query, Ref, Rule, RuleHead};

/// Builtins whose results depend on something other than their arguments, or that
/// have effects: a policy calling one is never memoised.
const NOT_PURE: &[&str] = &[
    "time.now_ns",
    "rand.intn",
    "uuid.rfc4122",
    "opa.runtime",
    "http.send",
    "net.lookup_ip_addr",
    "trace",
    "print",
    // Checks `exp`/`nbf` against the current time unless a time is given.
    "io.jwt.decode_verify",
    "crypto.x509.parse_and_verify_certificates",
    "crypto.x509.parse_and_verify_certificates_with_options",
];

/// The input path of the request headers in the OPA-Envoy document.
const HEADERS: [&str; 4] = ["attributes", "request", "http", "headers"];

/// Which request headers the input document must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderNeeds {
    /// Every header (the policy may enumerate them or read the document whole).
    All,
    /// Only these (lower-case) names.
    Only(Vec<String>),
    /// None: no rule reads a header.
    None,
}

/// Which parts of the input document a policy set can read: each flag stands for
/// one field of the OPA-Envoy document (see [`super::input`]). A field is needed when
/// a path read lies under it or above it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputNeeds {
    pub source_address: bool,
    pub source_principal: bool,
    pub destination_address: bool,
    pub destination_principal: bool,
    pub http_id: bool,
    pub http_method: bool,
    pub http_path: bool,
    pub http_host: bool,
    pub http_scheme: bool,
    pub http_protocol: bool,
    pub http_size: bool,
    /// `body` and `rawBody`.
    pub http_body: bool,
    pub headers: HeaderNeeds,
    /// `attributes.metadataContext` (verified JWT claims).
    pub metadata: ClaimNeeds,
    pub parsed_path: bool,
    pub parsed_query: bool,
    pub parsed_body: bool,
    pub truncated_body: bool,
    /// The top-level `source_principal`.
    pub root_source_principal: bool,
    pub version: bool,
}

impl InputNeeds {
    /// Every field.
    pub fn all() -> Self {
        InputNeeds {
            source_address: true,
            source_principal: true,
            destination_address: true,
            destination_principal: true,
            http_id: true,
            http_method: true,
            http_path: true,
            http_host: true,
            http_scheme: true,
            http_protocol: true,
            http_size: true,
            http_body: true,
            headers: HeaderNeeds::All,
            metadata: ClaimNeeds::All,
            parsed_path: true,
            parsed_query: true,
            parsed_body: true,
            truncated_body: true,
            root_source_principal: true,
            version: true,
        }
    }
}

/// Which verified JWT claims the input must carry, under
/// `attributes.metadataContext.filterMetadata["envoy.filters.http.jwt_authn"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimNeeds {
    All,
    /// `(payload_in_metadata name, claim)`: one claim, or all of that payload when
    /// the claim is `None`.
    Only(Vec<(String, Option<String>)>),
    None,
}

/// The input path of the JWT metadata in the OPA-Envoy document.
const JWT_METADATA: [&str; 4] = [
    "attributes",
    "metadataContext",
    "filterMetadata",
    "envoy.filters.http.jwt_authn",
];

/// The input paths a policy set reads, and whether its decisions depend on nothing
/// else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputAccess {
    /// Minimal set of paths read (none is a prefix of another), sorted; meaningful
    /// only when `whole` is false.
    paths: Vec<Vec<String>>,
    /// Something reads the input document as a whole.
    whole: bool,
    /// No builtin with results beyond its arguments, and no `with input`.
    deterministic: bool,
}

impl InputAccess {
    /// Everything, nothing memoised: for policy sets that were not analysed.
    pub fn everything() -> Self {
        InputAccess {
            paths: Vec::new(),
            whole: true,
            deterministic: false,
        }
    }

    /// Analyses the modules a query can reach: those of the query's package, then
    /// of every package their `data.…` references name, to a fixed point. A
    /// reference into `data` that is not a fixed path (`data[x]`, `data` itself)
    /// reaches every module.
    pub fn of_query(modules: &[Ref<Module>], query: &str) -> Self {
        let packages: Vec<Vec<String>> = modules
            .iter()
            .map(|m| static_path(&m.package.refr).unwrap_or_default())
            .collect();
        let related = |a: &[String], b: &[String]| a.starts_with(b) || b.starts_with(a);
        let query: Vec<String> = query
            .trim_start_matches("data.")
            .split('.')
            .map(str::to_owned)
            .collect();
        let mut included = vec![false; modules.len()];
        let mut pending: Vec<Vec<String>> = vec![query];
        let mut walk = Walk::default();
        while let Some(target) = pending.pop() {
            for (i, m) in modules.iter().enumerate() {
                if included[i] || !related(&packages[i], &target) {
                    continue;
                }
                included[i] = true;
                let before = walk.data_refs.len();
                walk.module(m);
                pending.extend(walk.data_refs[before..].iter().cloned());
            }
            if walk.data_dynamic {
                // Everything is reachable: finish with the rest.
                for (i, m) in modules.iter().enumerate() {
                    if !included[i] {
                        included[i] = true;
                        walk.module(m);
                    }
                }
                break;
            }
        }
        Self::from_walk(walk)
    }

    fn from_walk(walk: Walk) -> Self {
        let mut paths = walk.paths;
        paths.sort();
        paths.dedup();
        // Keep only the shortest: reading `a` reads everything under `a.b`.
        let mut minimal: Vec<Vec<String>> = Vec::new();
        for p in paths {
            if !minimal.iter().any(|m| p.starts_with(m)) {
                minimal.push(p);
            }
        }
        InputAccess {
            whole: walk.whole || minimal.iter().any(Vec::is_empty),
            paths: minimal,
            deterministic: walk.deterministic,
        }
    }

    /// Which headers the input must carry for this policy set.
    pub fn headers(&self) -> HeaderNeeds {
        if self.whole {
            return HeaderNeeds::All;
        }
        let mut names = Vec::new();
        for p in &self.paths {
            match relation(p, &HEADERS) {
                // The headers object or one of its parents: all of them.
                Relation::Above => return HeaderNeeds::All,
                Relation::Below(name) => names.push(name.to_ascii_lowercase()),
                Relation::Unrelated => {}
            }
        }
        if names.is_empty() {
            HeaderNeeds::None
        } else {
            names.sort();
            names.dedup();
            HeaderNeeds::Only(names)
        }
    }

    /// The fields of the input document this policy set can read.
    pub fn needs(&self) -> InputNeeds {
        if self.whole {
            return InputNeeds::all();
        }
        let field = |f: &[&str]| {
            self.paths
                .iter()
                .any(|p| !matches!(relation(p, f), Relation::Unrelated))
        };
        let http = |name: &str| field(&["attributes", "request", "http", name]);
        InputNeeds {
            source_address: field(&["attributes", "source", "address"]),
            source_principal: field(&["attributes", "source", "principal"]),
            destination_address: field(&["attributes", "destination", "address"]),
            destination_principal: field(&["attributes", "destination", "principal"]),
            http_id: http("id"),
            http_method: http("method"),
            http_path: http("path"),
            http_host: http("host"),
            http_scheme: http("scheme"),
            http_protocol: http("protocol"),
            http_size: http("size"),
            http_body: http("body") || http("rawBody"),
            headers: self.headers(),
            metadata: self.claims(),
            parsed_path: field(&["parsed_path"]),
            parsed_query: field(&["parsed_query"]),
            parsed_body: field(&["parsed_body"]),
            truncated_body: field(&["truncated_body"]),
            root_source_principal: field(&["source_principal"]),
            version: field(&["version"]),
        }
    }

    /// Which JWT claims the input must carry.
    fn claims(&self) -> ClaimNeeds {
        let mut only = Vec::new();
        for p in &self.paths {
            match relation(p, &JWT_METADATA) {
                Relation::Above => return ClaimNeeds::All,
                Relation::Below(name) => {
                    only.push((name.to_owned(), p.get(JWT_METADATA.len() + 1).cloned()))
                }
                Relation::Unrelated => {}
            }
        }
        if only.is_empty() {
            ClaimNeeds::None
        } else {
            only.sort();
            only.dedup();
            ClaimNeeds::Only(only)
        }
    }

    /// Whether decisions may be memoised on the values at [`InputAccess::paths`].
    pub fn memoisable(&self) -> bool {
        self.deterministic && !self.whole
    }

    /// The paths read, as segments (none when the whole input is read): the
    /// decision cache's key is the input's values at these paths.
    pub fn paths(&self) -> &[Vec<String>] {
        if self.whole {
            &[]
        } else {
            &self.paths
        }
    }

    /// The paths read, as `input.a.b` strings (for logs and tests).
    pub fn describe(&self) -> Vec<String> {
        if self.whole {
            return vec!["input".to_string()];
        }
        self.paths
            .iter()
            .map(|p| {
                let mut s = String::from("input");
                for seg in p {
                    if seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        s.push('.');
                        s.push_str(seg);
                    } else {
                        s.push_str(&format!("[{seg:?}]"));
                    }
                }
                s
            })
            .collect()
    }
}

/// How a path read stands to a field of the document.
enum Relation<'a> {
    /// The path is the field or one of its parents: all of the field is read.
    Above,
    /// The path goes into the field; the next segment below it.
    Below(&'a str),
    Unrelated,
}

fn relation<'a>(path: &'a [String], field: &[&str]) -> Relation<'a> {
    let shared = path
        .iter()
        .zip(field)
        .take_while(|(a, b)| a.as_str() == **b)
        .count();
    if shared == path.len() {
        Relation::Above
    } else if shared == field.len() {
        Relation::Below(&path[shared])
    } else {
        Relation::Unrelated
    }
}

struct Walk {
    paths: Vec<Vec<String>>,
    whole: bool,
    deterministic: bool,
    /// Fixed `data.…` paths referenced (rules of other packages, functions).
    data_refs: Vec<Vec<String>>,
    /// `data` referenced whole or through a computed key.
    data_dynamic: bool,
}

impl Default for Walk {
    fn default() -> Self {
        Walk {
            paths: Vec::new(),
            whole: false,
            deterministic: true,
            data_refs: Vec::new(),
            data_dynamic: false,
        }
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

/// The names of a chain of `.field` / `["key"]` steps from a variable, when every
/// step is fixed: `a.b["c"]` is `[a, b, c]`.
pub(crate) fn static_path(e: &Expr) -> Option<Vec<String>> {
    match e {
        Expr::Var { value, .. } => Some(vec![value.as_string().ok()?.to_string()]),
        Expr::RefDot { refr, field, .. } => {
            let mut p = static_path(refr)?;
            p.push(field.1.as_string().ok()?.to_string());
            Some(p)
        }
        Expr::RefBrack { refr, index, .. } => {
            let mut p = static_path(refr)?;
            match index.as_ref() {
                Expr::String { value, .. } | Expr::RawString { value, .. } => {
                    p.push(value.as_string().ok()?.to_string());
                    Some(p)
                }
                _ => None,
            }
        }
        _ => None,
    }
}

impl Walk {
    fn module(&mut self, m: &Module) {
        for import in &m.imports {
            // `import input.x as y`: whatever is read through `y` is under `input.x`.
            self.expr(&import.refr);
        }
        for rule in &m.policy {
            match rule.as_ref() {
                Rule::Spec { head, bodies, .. } => {
                    match head {
                        RuleHead::Compr { refr, assign, .. } => {
                            self.expr(refr);
                            if let Some(a) = assign {
                                self.expr(&a.value);
                            }
                        }
                        RuleHead::Set { refr, key, .. } => {
                            self.expr(refr);
                            if let Some(k) = key {
                                self.expr(k);
                            }
                        }
                        RuleHead::Func {
                            refr, args, assign, ..
                        } => {
                            self.expr(refr);
                            for a in args {
                                self.expr(a);
                            }
                            if let Some(a) = assign {
                                self.expr(&a.value);
                            }
                        }
                    }
                    for b in bodies {
                        if let Some(a) = &b.assign {
                            self.expr(&a.value);
                        }
                        self.query(&b.query);
                    }
                }
                Rule::Default {
                    refr, args, value, ..
                } => {
                    self.expr(refr);
                    for a in args {
                        self.expr(a);
                    }
                    self.expr(value);
                }
            }
        }
    }

    fn query(&mut self, q: &Query) {
        for stmt in &q.stmts {
            if !stmt.with_mods.is_empty() {
                // `with input… as` / `with data… as` replace documents for a sub-query:
                // not worth following, so nothing is memoised.
                self.deterministic = false;
            }
            for w in &stmt.with_mods {
                self.expr(&w.refr);
                self.expr(&w.r#as);
            }
            match &stmt.literal {
                Literal::SomeVars { .. } => {}
                Literal::SomeIn {
                    key,
                    value,
                    collection,
                    ..
                } => self.membership(key.as_ref(), value, collection),
                Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => self.expr(expr),
                Literal::Every { domain, query, .. } => {
                    self.expr(domain);
                    self.query(query);
                }
            }
        }
    }

    fn expr(&mut self, e: &Expr) {
        match e {
            Expr::String { .. }
            | Expr::RawString { .. }
            | Expr::Number { .. }
            | Expr::Bool { .. }
            | Expr::Null { .. } => {}
            Expr::Var { value, .. } => match value.as_string() {
                // The document itself, not a path into it.
                Ok(s) if s.as_ref() == "input" => self.whole = true,
                Ok(s) if s.as_ref() == "data" => self.data_dynamic = true,
                _ => {}
            },
            Expr::Array { items, .. } | Expr::Set { items, .. } => {
                for i in items {
                    self.expr(i);
                }
            }
            Expr::Object { fields, .. } => {
                for (_, k, v) in fields {
                    self.expr(k);
                    self.expr(v);
                }
            }
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                self.expr(term);
                self.query(query);
            }
            Expr::ObjectCompr {
                key, value, query, ..
            } => {
                self.expr(key);
                self.expr(value);
                self.query(query);
            }
            Expr::Call { fcn, params, .. } => {
                if let Some(name) = dotted(fcn) {
                    if NOT_PURE.contains(&name.as_str()) {
                        self.deterministic = false;
                    }
                    if let Some(rest) = name.strip_prefix("data.") {
                        // A function of another package.
                        self.data_refs
                            .push(rest.split('.').map(str::to_owned).collect());
                    }
                } else {
                    self.expr(fcn);
                }
                for p in params {
                    self.expr(p);
                }
            }
            Expr::UnaryExpr { expr, .. } => self.expr(expr),
            Expr::RefDot { .. } | Expr::RefBrack { .. } => self.reference(e),
            Expr::BinExpr { lhs, rhs, .. }
            | Expr::BoolExpr { lhs, rhs, .. }
            | Expr::ArithExpr { lhs, rhs, .. }
            | Expr::AssignExpr { lhs, rhs, .. } => {
                self.expr(lhs);
                self.expr(rhs);
            }
            Expr::Membership {
                key,
                value,
                collection,
                ..
            } => self.membership(key.as_ref(), value, collection),
        }
    }

    /// `[key,] value in collection`, as a literal (`some … in`) or an expression.
    fn membership(&mut self, key: Option<&Ref<Expr>>, value: &Expr, collection: &Expr) {
        if let Some(k) = key {
            self.expr(k);
        }
        self.expr(value);
        self.expr(collection);
    }

    /// A chain of `.field` and `[index]` steps: rooted at `input`, the fixed prefix
    /// of the chain is a path read; every index that is an expression is walked.
    fn reference(&mut self, e: &Expr) {
        // Collect the steps from the outside in, then read them root first.
        let mut steps: Vec<Step<'_>> = Vec::new();
        let mut cur = e;
        loop {
            match cur {
                Expr::RefDot { refr, field, .. } => {
                    steps.push(match field.1.as_string() {
                        Ok(s) => Step::Key(s.to_string()),
                        Err(_) => Step::Dynamic(None),
                    });
                    cur = refr;
                }
                Expr::RefBrack { refr, index, .. } => {
                    steps.push(match index.as_ref() {
                        Expr::String { value, .. } | Expr::RawString { value, .. } => {
                            match value.as_string() {
                                Ok(s) => Step::Key(s.to_string()),
                                Err(_) => Step::Dynamic(Some(index)),
                            }
                        }
                        _ => Step::Dynamic(Some(index)),
                    });
                    cur = refr;
                }
                _ => break,
            }
        }
        steps.reverse();
        let root = match cur {
            Expr::Var { value, .. } => value.as_string().ok().map(|s| s.to_string()),
            _ => None,
        };
        if root.as_deref() == Some("data") {
            let mut path = Vec::new();
            for s in &steps {
                match s {
                    Step::Key(k) => path.push(k.clone()),
                    Step::Dynamic(_) => break,
                }
            }
            if path.is_empty() {
                self.data_dynamic = true;
            } else {
                self.data_refs.push(path);
            }
        } else if root.as_deref() == Some("input") {
            let mut path = Vec::new();
            for s in &steps {
                match s {
                    Step::Key(k) => path.push(k.clone()),
                    Step::Dynamic(_) => break,
                }
            }
            self.paths.push(path);
        } else {
            self.expr(cur);
        }
        for s in &steps {
            if let Step::Dynamic(Some(index)) = s {
                self.expr(index);
            }
        }
    }
}

enum Step<'a> {
    Key(String),
    /// A computed index (walked for its own references), or a field that is not a
    /// string.
    Dynamic(Option<&'a Ref<Expr>>),
}

/// `a.b.c` for a function reference made of names only.
fn dotted(e: &Expr) -> Option<String> {
    match e {
        Expr::Var { value, .. } => value.as_string().ok().map(|s| s.to_string()),
        Expr::RefDot { refr, field, .. } => {
            let head = dotted(refr)?;
            let f = field.1.as_string().ok()?;
            Some(format!("{head}.{f}"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analyse(src: &str) -> InputAccess {
        let mut engine = regorus::Engine::new();
        engine
            .add_policy("p.rego".to_string(), src.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        InputAccess::of_query(engine.get_modules(), "data.p")
    }

    fn policy(body: &str) -> String {
        format!("package p\nimport rego.v1\n{body}\n")
    }

    #[test]
    fn fixed_paths_are_found_and_minimised() {
        let a = analyse(&policy(
            "allow if {\n input.attributes.source.principal == \"x\"\n input.parsed_path[0] == \"api\"\n input.attributes.request.http.headers[\"X-Magic\"] == \"1\"\n}\n\
             r if input.attributes.metadataContext.filterMetadata[\"envoy.filters.http.jwt_authn\"].jwt_payload.role == \"admin\"\n\
             s if input.parsed_path == [\"a\"]",
        ));
        assert_eq!(
            a.describe(),
            [
                "input.attributes.metadataContext.filterMetadata[\"envoy.filters.http.jwt_authn\"].jwt_payload.role",
                "input.attributes.request.http.headers[\"X-Magic\"]",
                "input.attributes.source.principal",
                "input.parsed_path",
            ]
        );
        assert!(a.memoisable());
        assert_eq!(a.headers(), HeaderNeeds::Only(vec!["x-magic".to_string()]));
    }

    #[test]
    fn unpinnable_references_read_more() {
        // A computed index: everything under the fixed prefix.
        let a = analyse(&policy(
            "allow if {\n some k\n input.attributes.request.http.headers[k] == \"1\"\n}",
        ));
        assert_eq!(a.describe(), ["input.attributes.request.http.headers"]);
        assert_eq!(a.headers(), HeaderNeeds::All);
        // A parent of the headers: all of them.
        let a = analyse(&policy(
            "allow if {\n h := input.attributes.request.http\n h.method == \"GET\"\n}",
        ));
        assert_eq!(a.headers(), HeaderNeeds::All);
        assert!(a.memoisable());
        // The index expression's own references count too.
        let a = analyse(&policy(
            "allow if data.x[input.attributes.source.principal]",
        ));
        assert_eq!(a.describe(), ["input.attributes.source.principal"]);
        assert_eq!(a.headers(), HeaderNeeds::None);
    }

    #[test]
    fn the_whole_document_or_the_world() {
        // An index computed from the input: the prefix, and what the index reads.
        let a = analyse(&policy("allow if input[\"attributes\"][input.k]"));
        assert_eq!(a.describe(), ["input.attributes", "input.k"]);
        assert_eq!(a.headers(), HeaderNeeds::All);
        for whole in [
            "allow if count(input) > 0",
            "allow if { x := input; x.a == 1 }",
            "allow if walk(input, [_, _])",
        ] {
            let a = analyse(&policy(whole));
            assert_eq!(a.describe(), ["input"], "{whole}");
            assert_eq!(a.headers(), HeaderNeeds::All, "{whole}");
            assert!(!a.memoisable(), "{whole}");
        }
        // An import of the whole input, or of a part of it.
        let a = analyse("package p\nimport rego.v1\nimport input\nallow if input.a == 1\n");
        assert!(!a.memoisable());
        let a = analyse("package p\nimport rego.v1\nimport input.attributes.request.http as h\nallow if h.method == \"GET\"\n");
        assert_eq!(a.describe(), ["input.attributes.request.http"]);
        assert_eq!(a.headers(), HeaderNeeds::All);
        // Time, randomness, the network, printing, `with`: nothing memoised.
        for impure in [
            "allow if time.now_ns() > 0",
            "allow if rand.intn(\"x\", 10) > 0",
            "allow if { print(input.a) }",
            "allow if http.send({\"method\": \"GET\", \"url\": input.u}).status_code == 200",
            "allow if io.jwt.decode_verify(input.t, {\"secret\": \"s\"})[0]",
            "f(x) := x\nallow if f(1) with input.a as 2",
        ] {
            let a = analyse(&policy(impure));
            assert!(!a.memoisable(), "{impure}");
        }
    }

    fn analyse_query(modules: &[(&str, &str)], query: &str) -> InputAccess {
        let mut engine = regorus::Engine::new();
        for (name, src) in modules {
            engine
                .add_policy(name.to_string(), src.to_string())
                .unwrap_or_else(|e| panic!("{e}"));
        }
        InputAccess::of_query(engine.get_modules(), query)
    }

    #[test]
    fn a_query_reads_what_its_reachable_packages_read() {
        let a = "package a\nimport rego.v1\nallow if { input.x == 1; data.b.ok }\n";
        let b = "package b\nimport rego.v1\nok if input.y == 2\nf(v) := v if input.w\n";
        let c = "package c\nimport rego.v1\nallow if input.z == 3\n";
        let helper = "package a\nimport rego.v1\nhelper if input.h\n";
        let mods = [
            ("a.rego", a),
            ("b.rego", b),
            ("c.rego", c),
            ("a2.rego", helper),
        ];
        // Its own package (every module of it) and what it references, not c.
        assert_eq!(
            analyse_query(&mods, "data.a.allow").describe(),
            ["input.h", "input.w", "input.x", "input.y"]
        );
        assert_eq!(analyse_query(&mods, "data.c.allow").describe(), ["input.z"]);
        // A function of another package is a reference too.
        let d = "package d\nimport rego.v1\nallow if data.b.f(1)\n";
        let mods = [("b.rego", b), ("c.rego", c), ("d.rego", d)];
        assert_eq!(
            analyse_query(&mods, "data.d.allow").describe(),
            ["input.w", "input.y"]
        );
        // An import is a reference.
        let e = "package e\nimport rego.v1\nimport data.c\nallow if c.allow\n";
        let mods = [("c.rego", c), ("e.rego", e), ("b.rego", b)];
        assert_eq!(analyse_query(&mods, "data.e.allow").describe(), ["input.z"]);
        // `data` through a computed key: every module.
        let g = "package g\nimport rego.v1\nallow if { some p; data[p].allow }\n";
        let mods = [("c.rego", c), ("g.rego", g), ("b.rego", b)];
        assert_eq!(
            analyse_query(&mods, "data.g.allow").describe(),
            ["input.w", "input.y", "input.z"]
        );
    }
}
