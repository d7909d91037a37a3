//! The generated `*_test.rego` of one AuthorizationPolicy: for every rule a
//! request that matches it and, where one exists, a request that does not.
//!
//! The requests are built from the rule's own values and checked here, by an
//! independent implementation of Istio's matching in Rust, before they are
//! written; the Rego then has to agree when `portcullis policy test` runs them.
//! A rule for which no such request can be built gets a comment saying so.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use serde_json::{json, Map, Value};

use super::authz::{Check, PackageName, Policy, RuleIr, Test};
use super::rego_gen::{quote, GENERATED};

/// The request attributes a witness sets.
#[derive(Debug, Clone)]
struct Witness {
    /// Istio form (no `spiffe://`); None: plain text.
    principal: Option<String>,
    source_ip: String,
    destination_ip: String,
    port: u16,
    method: String,
    path: String,
    host: String,
    headers: BTreeMap<String, String>,
    /// Verified claims; empty: no token.
    claims: Map<String, Value>,
}

impl Witness {
    fn base() -> Witness {
        Witness {
            principal: Some("cluster.local/ns/witness/sa/witness".into()),
            source_ip: "192.0.2.10".into(),
            destination_ip: "198.51.100.20".into(),
            port: 8080,
            method: "GET".into(),
            path: "/witness".into(),
            host: "witness.example".into(),
            headers: BTreeMap::new(),
            claims: Map::new(),
        }
    }

    fn request_principal(&self) -> Option<String> {
        match (self.claims.get("iss"), self.claims.get("sub")) {
            (Some(Value::String(i)), Some(Value::String(s))) => Some(format!("{i}/{s}")),
            _ => None,
        }
    }

    fn input(&self, namespace: &str) -> Value {
        let mut headers: Map<String, Value> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        headers.insert(":authority".into(), Value::String(self.host.clone()));
        let mut source =
            json!({"address": {"socketAddress": {"address": self.source_ip, "portValue": 40000}}});
        if let Some(p) = &self.principal {
            source["principal"] = Value::String(format!("spiffe://{p}"));
        }
        let mut attrs = json!({
            "source": source,
            "destination": {
                "address": {"socketAddress": {"address": self.destination_ip, "portValue": self.port}},
                "principal": format!("spiffe://cluster.local/ns/{namespace}/sa/workload"),
            },
            "request": {"http": {
                "method": self.method, "path": self.path, "host": self.host, "headers": headers,
            }},
        });
        if !self.claims.is_empty() {
            attrs["metadataContext"] = json!({"filterMetadata": {"envoy.filters.http.jwt_authn": {
                "jwt_payload": self.claims.clone()}}});
        }
        json!({"attributes": attrs})
    }
}

/// Istio's string match, independently of the Rego library.
fn string_match(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        !value.is_empty()
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        value.ends_with(suffix)
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        value.starts_with(prefix)
    } else {
        pattern == value
    }
}

/// A value that `pattern` matches.
fn example(pattern: &str) -> String {
    if pattern == "*" {
        "witness".into()
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        format!("witness{suffix}")
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        format!("{prefix}witness")
    } else {
        pattern.into()
    }
}

fn in_cidrs(cidrs: &[String], ip: &str) -> bool {
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return false;
    };
    cidrs
        .iter()
        .filter_map(|c| c.parse::<ipnet::IpNet>().ok())
        .any(|n| n.contains(&ip))
}

fn claim<'a>(claims: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter().try_fold(claims.get(first)?, |v, k| v.get(k))
}

fn claim_strings(v: Option<&Value>) -> Vec<&str> {
    match v {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Whether `test` holds for `w` (any value matches).
fn holds(test: &Test, w: &Witness) -> bool {
    let any =
        |v: &[String], s: Option<&str>| s.is_some_and(|s| v.iter().any(|p| string_match(p, s)));
    match test {
        Test::Principal(v) => any(v, w.principal.as_deref()),
        Test::Namespace(v) => w.principal.as_deref().is_some_and(|p| {
            v.iter().any(|ns| {
                regex::Regex::new(&format!("^.*/ns/{}/.*$", ns.replace('*', ".*")))
                    .is_ok_and(|r| r.is_match(&format!("spiffe://{p}")))
            })
        }),
        Test::ServiceAccount(v) => w.principal.as_deref().is_some_and(|p| {
            v.iter().any(|a| {
                let (ns, sa) = a.split_once('/').unwrap_or((a, ""));
                p.ends_with(&format!("/ns/{ns}/sa/{sa}"))
            })
        }),
        Test::RequestPrincipal(v) => any(v, w.request_principal().as_deref()),
        Test::SourceIp(c) => in_cidrs(c, &w.source_ip),
        Test::DestinationIp(c) => in_cidrs(c, &w.destination_ip),
        Test::Port(p) => p.contains(&w.port),
        Test::Host(v) => any(v, Some(&w.host.to_ascii_lowercase())),
        Test::Method(v) => any(v, Some(&w.method)),
        Test::Path(plain, templates) => {
            let path = w.path.split('?').next().unwrap_or_default();
            any(plain, Some(path))
                || templates
                    .iter()
                    .any(|(_, r)| regex::Regex::new(r).is_ok_and(|r| r.is_match(path)))
        }
        Test::Header(name, v) => match w.headers.get(name) {
            Some(_) if v.iter().any(|p| p == "*") => true,
            h => any(v, h.map(String::as_str)),
        },
        Test::Claim(path, v) => claim_strings(claim(&w.claims, path))
            .iter()
            .any(|s| any(v, Some(s))),
        Test::Audience(v) => claim_strings(w.claims.get("aud"))
            .iter()
            .any(|s| any(v, Some(s))),
        Test::Presenter(v) => any(v, w.claims.get("azp").and_then(Value::as_str)),
    }
}

fn check_holds(c: &Check, w: &Witness) -> bool {
    holds(&c.test, w) != c.negated
}

fn rule_holds(rule: &RuleIr, w: &Witness) -> bool {
    let part = |entries: &Vec<Vec<Check>>| {
        entries.is_empty() || entries.iter().any(|e| e.iter().all(|c| check_holds(c, w)))
    };
    part(&rule.from) && part(&rule.to) && rule.when.iter().all(|c| check_holds(c, w))
}

fn set_claim(claims: &mut Map<String, Value>, path: &[String], v: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = claims;
    for k in parents {
        let entry = cur
            .entry(k.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(next) = entry else { return };
        cur = next;
    }
    cur.insert(last.clone(), v);
}

/// Sets the attribute `test` reads to a value `pattern` (its `i`-th value) matches.
fn satisfy(test: &Test, w: &mut Witness) {
    let first = |v: &[String]| v.first().map(|p| example(p)).unwrap_or_default();
    match test {
        Test::Principal(v) => w.principal = Some(first(v)),
        Test::Namespace(v) => {
            w.principal = Some(format!(
                "cluster.local/ns/{}/sa/witness",
                first(v).replace('*', "w")
            ))
        }
        Test::ServiceAccount(v) => {
            let (ns, sa) = v
                .first()
                .and_then(|a| a.split_once('/'))
                .unwrap_or(("", ""));
            w.principal = Some(format!("cluster.local/ns/{ns}/sa/{sa}"));
        }
        Test::RequestPrincipal(v) => {
            let rp = first(v);
            let (iss, sub) = rp.rsplit_once('/').unwrap_or(("witness", rp.as_str()));
            w.claims.insert("iss".into(), Value::String(iss.into()));
            w.claims.insert("sub".into(), Value::String(sub.into()));
        }
        Test::SourceIp(c) => w.source_ip = cidr_example(c),
        Test::DestinationIp(c) => w.destination_ip = cidr_example(c),
        Test::Port(p) => w.port = p.first().copied().unwrap_or_default(),
        Test::Host(v) => w.host = first(v),
        Test::Method(v) => w.method = first(v),
        Test::Path(plain, templates) => {
            w.path = match (plain.first(), templates.first()) {
                (Some(p), _) => example(p),
                (None, Some((t, _))) => t.replace("{**}", "w/w").replace("{*}", "w"),
                (None, None) => w.path.clone(),
            }
        }
        Test::Header(name, v) => {
            w.headers.insert(name.clone(), first(v));
        }
        Test::Claim(path, v) => set_claim(&mut w.claims, path, Value::String(first(v))),
        Test::Audience(v) => {
            w.claims.insert("aud".into(), Value::String(first(v)));
        }
        Test::Presenter(v) => {
            w.claims.insert("azp".into(), Value::String(first(v)));
        }
    }
    token_complete(w);
}

/// A token always has `iss` and `sub` (portcullis's JWT checks require `iss`).
fn token_complete(w: &mut Witness) {
    if !w.claims.is_empty() {
        w.claims
            .entry("iss")
            .or_insert_with(|| Value::String("https://witness.example".into()));
        w.claims
            .entry("sub")
            .or_insert_with(|| Value::String("witness".into()));
    }
}

fn cidr_example(c: &[String]) -> String {
    c.first()
        .and_then(|c| c.parse::<ipnet::IpNet>().ok())
        .map(|n| n.network().to_string())
        .unwrap_or_default()
}

/// Sets the attribute `test` reads to a value none of its patterns match.
fn spoil(test: &Test, w: &mut Witness) {
    const MISS: &str = "zz-portcullis-miss";
    match test {
        Test::Principal(_) | Test::Namespace(_) | Test::ServiceAccount(_) => w.principal = None,
        Test::RequestPrincipal(_) => w.claims.clear(),
        Test::SourceIp(_) => w.source_ip = "203.0.113.99".into(),
        Test::DestinationIp(_) => w.destination_ip = "203.0.113.98".into(),
        Test::Port(p) => w.port = (1..=u16::MAX).find(|x| !p.contains(x)).unwrap_or(0),
        Test::Host(_) => w.host = format!("{MISS}.invalid"),
        Test::Method(_) => w.method = "ZZMISS".into(),
        Test::Path(..) => w.path = format!("/{MISS}"),
        Test::Header(name, _) => {
            w.headers.remove(name);
        }
        Test::Claim(path, _) => set_claim(&mut w.claims, path, Value::String(MISS.into())),
        Test::Audience(_) => {
            w.claims.insert("aud".into(), Value::String(MISS.into()));
        }
        Test::Presenter(_) => {
            w.claims.insert("azp".into(), Value::String(MISS.into()));
        }
    }
    token_complete(w);
}

/// Makes `c` hold in `w` (positive: a matching value; negated: a missing one).
fn make_hold(c: &Check, w: &mut Witness) {
    if c.negated {
        spoil(&c.test, w)
    } else {
        satisfy(&c.test, w)
    }
}

/// Makes `c` fail in `w`.
fn make_fail(c: &Check, w: &mut Witness) {
    if c.negated {
        satisfy(&c.test, w)
    } else {
        spoil(&c.test, w)
    }
}

/// A request the rule matches: the first `from` and `to` entries and every `when`.
fn matching(rule: &RuleIr) -> Option<Witness> {
    let mut w = Witness::base();
    let checks: Vec<&Check> = rule
        .from
        .first()
        .into_iter()
        .chain(rule.to.first())
        .flatten()
        .chain(&rule.when)
        .collect();
    // Positive checks first, so a negated one can still move a value they left free;
    // a check that already holds (a namespace of the principal set before) is kept.
    for c in checks.iter().filter(|c| !c.negated) {
        if !check_holds(c, &w) {
            make_hold(c, &mut w);
        }
    }
    for c in checks.iter().filter(|c| c.negated) {
        if !check_holds(c, &w) {
            make_hold(c, &mut w);
        }
    }
    rule_holds(rule, &w).then_some(w)
}

/// A request close to `w` that the rule does not match, breaking one check.
fn missing(rule: &RuleIr, w: &Witness) -> Option<(Witness, String)> {
    let single = |e: &Vec<Vec<Check>>| {
        if e.len() == 1 {
            e[0].clone()
        } else {
            Vec::new()
        }
    };
    let candidates = rule
        .when
        .iter()
        .cloned()
        .chain(single(&rule.to))
        .chain(single(&rule.from));
    for c in candidates {
        let mut miss = w.clone();
        make_fail(&c, &mut miss);
        if !rule_holds(rule, &miss) {
            return Some((miss, c.origin.clone()));
        }
    }
    None
}

/// The `_test.rego` module of one policy (same package as the policy).
pub fn module(p: &Policy, name: &PackageName) -> String {
    let mut out = format!(
        "{GENERATED}\n#\n# Tests of {}: per rule, a request it matches and one it does not.\npackage {}\n\nimport rego.v1\n",
        p.resource,
        name.package()
    );
    let labels: Map<String, Value> = p
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let ns = if p.root {
        "any-namespace"
    } else {
        p.namespace.as_str()
    };
    let base_input = Witness::base().input(ns);
    let _ = write!(
        out,
        "\ntest_applies_to_selected_workload if {{\n\tapplies with input as {} with data.portcullis.workload.labels as {}\n}}\n",
        base_input,
        Value::Object(labels.clone())
    );
    if !p.root {
        let _ = write!(
            out,
            "\ntest_not_applies_in_other_namespace if {{\n\tnot applies with input as {} with data.portcullis.workload.labels as {}\n}}\n",
            Witness::base().input(&format!("not-{}", p.namespace)),
            Value::Object(labels.clone())
        );
    }
    if p.rules.is_empty() {
        let _ = write!(
            out,
            "\ntest_no_rules_match_nothing if {{\n\tnot matches with input as {base_input}\n}}\n"
        );
    }
    for (i, rule) in p.rules.iter().enumerate() {
        let Some(w) = matching(rule) else {
            let _ = write!(
                out,
                "\n# rules[{i}]: no matching request could be built from its values.\n"
            );
            continue;
        };
        let issuers = |w: &Witness| {
            let iss: Vec<String> = w
                .claims
                .get("iss")
                .and_then(Value::as_str)
                .map(quote)
                .into_iter()
                .collect();
            format!("{{{}}}", iss.join(", "))
        };
        let _ = write!(
            out,
            "\ntest_rule_{i}_matches if {{\n\trule_{i} with input as {} with data.istio.authn.issuers as {}\n}}\n",
            w.input(ns),
            issuers(&w)
        );
        match missing(rule, &w) {
            Some((miss, origin)) => {
                let _ = write!(
                    out,
                    "\n# Breaks {origin}.\ntest_rule_{i}_misses if {{\n\tnot rule_{i} with input as {} with data.istio.authn.issuers as {}\n}}\n",
                    miss.input(ns),
                    issuers(&miss)
                );
            }
            None => {
                let _ = write!(
                    out,
                    "\n# rules[{i}] matches every request: there is no request it misses.\n"
                );
            }
        }
    }
    out
}
