//! AuthorizationPolicy → one Rego package: validation of every field against
//! Istio's documented semantics, then the package text.
//!
//! The package exposes `resource` (the resource's name for reasons), `applies`
//! (the policy selects this workload) and `matches` (one of its rules matches
//! the request); the decision module combines them in Istio's order.

use std::fmt::Write as _;
use std::net::IpAddr;

use super::model::{AuthorizationPolicySpec, Condition, Operation, Rule, Source};
use super::rego_gen::{body as rego_body, quote, selection_lines, string_list, GENERATED};
use super::{ImportError, Resource};

/// What a policy does when one of its rules matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Audit,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
        }
    }
}

/// One attribute test, with the Istio field it came from.
#[derive(Debug, Clone)]
pub struct Check {
    /// Where it came from, e.g. `rules[0].from[1].source.principals`.
    pub origin: String,
    /// A `not…` field or `notValues`: none of the values may match.
    pub negated: bool,
    pub test: Test,
}

/// The attribute tested and the values, already validated and normalised.
#[derive(Debug, Clone)]
pub enum Test {
    Principal(Vec<String>),
    Namespace(Vec<String>),
    ServiceAccount(Vec<String>),
    RequestPrincipal(Vec<String>),
    /// `ipBlocks`, `remoteIpBlocks`, `source.ip`, `remote.ip` (CIDRs).
    SourceIp(Vec<String>),
    DestinationIp(Vec<String>),
    Port(Vec<u16>),
    /// Lower-cased patterns.
    Host(Vec<String>),
    Method(Vec<String>),
    /// Plain patterns, and templates as (original, regex).
    Path(Vec<String>, Vec<(String, String)>),
    /// Lower-cased header name, patterns.
    Header(String, Vec<String>),
    /// Claim path, patterns.
    Claim(Vec<String>, Vec<String>),
    Audience(Vec<String>),
    Presenter(Vec<String>),
}

impl Test {
    /// Istio documents these as HTTP only.
    pub fn http_only(&self) -> bool {
        !matches!(
            self,
            Test::Principal(_)
                | Test::Namespace(_)
                | Test::ServiceAccount(_)
                | Test::SourceIp(_)
                | Test::DestinationIp(_)
                | Test::Port(_)
        )
    }

    /// The library call that holds when any value matches.
    pub fn rego(&self) -> String {
        match self {
            Test::Principal(v) => format!("lib.principal_in({})", string_list(v)),
            Test::Namespace(v) => format!("lib.namespace_in({})", string_list(v)),
            Test::ServiceAccount(v) => format!("lib.service_account_in({})", string_list(v)),
            Test::RequestPrincipal(v) => {
                format!("lib.request_principal_in({})", string_list(v))
            }
            Test::SourceIp(v) => format!("lib.ip_in({}, lib.source_ip)", string_list(v)),
            Test::DestinationIp(v) => {
                format!("lib.ip_in({}, lib.destination_ip)", string_list(v))
            }
            Test::Port(v) => {
                let ports: Vec<String> = v.iter().map(u16::to_string).collect();
                format!("lib.port_in([{}])", ports.join(", "))
            }
            Test::Host(v) => format!("lib.host_in({})", string_list(v)),
            Test::Method(v) => format!("lib.method_in({})", string_list(v)),
            Test::Path(plain, templates) => {
                let regexes: Vec<&str> = templates.iter().map(|(_, r)| r.as_str()).collect();
                let originals: Vec<&str> = templates.iter().map(|(o, _)| o.as_str()).collect();
                let mut s = format!(
                    "lib.path_in({}, {})",
                    string_list(plain),
                    string_list(&regexes)
                );
                if !originals.is_empty() {
                    let _ = write!(s, " # templates: {}", originals.join(" "));
                }
                s
            }
            Test::Header(name, v) => format!("lib.header_in({}, {})", quote(name), string_list(v)),
            Test::Claim(path, v) => {
                format!("lib.claim_in({}, {})", string_list(path), string_list(v))
            }
            Test::Audience(v) => format!("lib.audience_in({})", string_list(v)),
            Test::Presenter(v) => format!("lib.presenter_in({})", string_list(v)),
        }
    }
}

/// One rule: any `from`, any `to`, all `when` (an empty part matches anything).
#[derive(Debug, Clone, Default)]
pub struct RuleIr {
    pub from: Vec<Vec<Check>>,
    pub to: Vec<Vec<Check>>,
    pub when: Vec<Check>,
}

/// A validated AuthorizationPolicy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub resource: String,
    pub namespace: String,
    pub root: bool,
    pub labels: Vec<(String, String)>,
    pub action: Action,
    pub rules: Vec<RuleIr>,
}

/// Outcome of reading one AuthorizationPolicy.
pub enum Parsed {
    Policy(Policy),
    /// A CUSTOM policy skipped on request (`--skip-custom`), with the provider.
    SkippedCustom(String),
}

/// Validates `res` and builds its intermediate form.
pub fn parse(
    res: &Resource,
    root_namespace: &str,
    skip_custom: bool,
) -> Result<Parsed, ImportError> {
    let spec: AuthorizationPolicySpec = res.spec()?;
    if spec.target_ref.is_some() || spec.target_refs.is_some() {
        let field = if spec.target_ref.is_some() {
            "spec.targetRef"
        } else {
            "spec.targetRefs"
        };
        return Err(res.unsupported(
            field,
            "targets gateways and waypoints; a portcullis sidecar is selected with spec.selector",
        ));
    }
    let action = match spec.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => Action::Allow,
        "DENY" => Action::Deny,
        "AUDIT" => Action::Audit,
        "CUSTOM" => {
            let provider = spec.provider.map(|p| p.name).unwrap_or_default();
            if skip_custom {
                return Ok(Parsed::SkippedCustom(provider));
            }
            return Err(res.unsupported(
                "spec.action",
                &format!(
                    "CUSTOM delegates to the extension provider {provider:?}, which portcullis does not call; \
                     write that check in Rego, or pass --skip-custom to import without it"
                ),
            ));
        }
        other => {
            return Err(res.invalid(
                "spec.action",
                &format!("{other:?} is not ALLOW, DENY, AUDIT or CUSTOM"),
            ))
        }
    };
    if spec.provider.is_some() {
        return Err(res.invalid("spec.provider", "is only valid with action CUSTOM"));
    }
    let labels = spec
        .selector
        .map(|s| s.match_labels.into_iter().collect())
        .unwrap_or_default();
    let mut rules = Vec::new();
    for (i, rule) in spec.rules.unwrap_or_default().iter().enumerate() {
        rules.push(parse_rule(res, i, rule)?);
    }
    Ok(Parsed::Policy(Policy {
        resource: res.label(),
        namespace: res.namespace.clone(),
        root: res.namespace == root_namespace,
        labels,
        action,
        rules,
    }))
}

fn parse_rule(res: &Resource, i: usize, rule: &Rule) -> Result<RuleIr, ImportError> {
    let mut ir = RuleIr::default();
    for (j, from) in rule.from.iter().flatten().enumerate() {
        let at = format!("rules[{i}].from[{j}].source");
        let Some(source) = &from.source else {
            return Err(res.invalid(&format!("spec.{at}"), "a from entry needs a source"));
        };
        let checks = source_checks(res, &at, source)?;
        if checks.is_empty() {
            return Err(res.invalid(&format!("spec.{at}"), "an empty source is not allowed"));
        }
        ir.from.push(checks);
    }
    for (j, to) in rule.to.iter().flatten().enumerate() {
        let at = format!("rules[{i}].to[{j}].operation");
        let Some(op) = &to.operation else {
            return Err(res.invalid(&format!("spec.{at}"), "a to entry needs an operation"));
        };
        let checks = operation_checks(res, &at, op)?;
        if checks.is_empty() {
            return Err(res.invalid(&format!("spec.{at}"), "an empty operation is not allowed"));
        }
        ir.to.push(checks);
    }
    for (j, cond) in rule.when.iter().flatten().enumerate() {
        ir.when.extend(condition_checks(
            res,
            &format!("rules[{i}].when[{j}]"),
            cond,
        )?);
    }
    Ok(ir)
}

/// A list field that is set and not empty (protobuf treats `[]` as unset).
fn set(v: &Option<Vec<String>>) -> Option<&[String]> {
    v.as_deref().filter(|v| !v.is_empty())
}

type Builder = fn(&Resource, &str, &[String]) -> Result<Test, ImportError>;

/// Builds a condition's test from (field path, values).
type ValuesBuilder<'a> = dyn Fn(&str, &[String]) -> Result<Test, ImportError> + 'a;

fn push(
    out: &mut Vec<Check>,
    res: &Resource,
    at: &str,
    field: &str,
    values: &Option<Vec<String>>,
    negated: bool,
    build: Builder,
) -> Result<(), ImportError> {
    if let Some(v) = set(values) {
        let origin = format!("{at}.{field}");
        let test = build(res, &format!("spec.{origin}"), v)?;
        out.push(Check {
            origin,
            negated,
            test,
        });
    }
    Ok(())
}

fn source_checks(res: &Resource, at: &str, s: &Source) -> Result<Vec<Check>, ImportError> {
    let mut out = Vec::new();
    let fields: [(&str, &Option<Vec<String>>, bool, Builder); 12] = [
        ("principals", &s.principals, false, principals),
        ("notPrincipals", &s.not_principals, true, principals),
        (
            "requestPrincipals",
            &s.request_principals,
            false,
            request_principals,
        ),
        (
            "notRequestPrincipals",
            &s.not_request_principals,
            true,
            request_principals,
        ),
        ("namespaces", &s.namespaces, false, namespaces),
        ("notNamespaces", &s.not_namespaces, true, namespaces),
        (
            "serviceAccounts",
            &s.service_accounts,
            false,
            service_accounts,
        ),
        (
            "notServiceAccounts",
            &s.not_service_accounts,
            true,
            service_accounts,
        ),
        ("ipBlocks", &s.ip_blocks, false, source_ips),
        ("notIpBlocks", &s.not_ip_blocks, true, source_ips),
        ("remoteIpBlocks", &s.remote_ip_blocks, false, source_ips),
        (
            "notRemoteIpBlocks",
            &s.not_remote_ip_blocks,
            true,
            source_ips,
        ),
    ];
    for (field, values, negated, build) in fields {
        push(&mut out, res, at, field, values, negated, build)?;
    }
    Ok(out)
}

fn operation_checks(res: &Resource, at: &str, o: &Operation) -> Result<Vec<Check>, ImportError> {
    let mut out = Vec::new();
    let fields: [(&str, &Option<Vec<String>>, bool, Builder); 8] = [
        ("hosts", &o.hosts, false, hosts),
        ("notHosts", &o.not_hosts, true, hosts),
        ("ports", &o.ports, false, ports),
        ("notPorts", &o.not_ports, true, ports),
        ("methods", &o.methods, false, methods),
        ("notMethods", &o.not_methods, true, methods),
        ("paths", &o.paths, false, paths),
        ("notPaths", &o.not_paths, true, paths),
    ];
    for (field, values, negated, build) in fields {
        push(&mut out, res, at, field, values, negated, build)?;
    }
    Ok(out)
}

fn condition_checks(res: &Resource, at: &str, c: &Condition) -> Result<Vec<Check>, ImportError> {
    let field = format!("spec.{at}.key");
    let key = c.key.trim();
    let build: Box<ValuesBuilder> = if let Some(name) = bracketed(key, "request.headers") {
        let name = single(res, &field, &name)?.to_ascii_lowercase();
        // Pseudo-headers (`:authority`, `:method`, `:path`) are in the input too.
        let bare = name.strip_prefix(':').unwrap_or(&name);
        if bare.is_empty() || !bare.bytes().all(is_token_byte) {
            return Err(res.invalid(&field, &format!("{name:?} is not a header name")));
        }
        Box::new(move |_, v| Ok(Test::Header(name.clone(), v.to_vec())))
    } else if let Some(path) = bracketed(key, "request.auth.claims") {
        if path.is_empty() || path.iter().any(String::is_empty) {
            return Err(res.invalid(&field, "a claim name is needed: request.auth.claims[name]"));
        }
        Box::new(move |_, v| Ok(Test::Claim(path.clone(), v.to_vec())))
    } else {
        match key {
            "source.ip" | "remote.ip" => Box::new(|f, v| source_ips(res, f, v)),
            "destination.ip" => Box::new(|f, v| Ok(Test::DestinationIp(cidrs(res, f, v)?))),
            "destination.port" => Box::new(|f, v| ports(res, f, v)),
            "source.namespace" => Box::new(|f, v| namespaces(res, f, v)),
            "source.principal" => Box::new(|f, v| principals(res, f, v)),
            "request.auth.principal" => Box::new(|f, v| request_principals(res, f, v)),
            "request.auth.audiences" => Box::new(|_, v| Ok(Test::Audience(v.to_vec()))),
            "request.auth.presenter" => Box::new(|_, v| Ok(Test::Presenter(v.to_vec()))),
            "connection.sni" => {
                return Err(res.unsupported(
                    &field,
                    "connection.sni: portcullis does not give policies the TLS server name",
                ))
            }
            k if k.starts_with("experimental.envoy.filters.") => {
                return Err(res.unsupported(
                    &field,
                    &format!("{k}: Envoy filter metadata does not exist in portcullis"),
                ))
            }
            k => {
                return Err(res.unsupported(
                    &field,
                    &format!("{k:?} is not a condition key Istio documents for HTTP"),
                ))
            }
        }
    };
    let mut out = Vec::new();
    for (name, values, negated) in [
        ("values", &c.values, false),
        ("notValues", &c.not_values, true),
    ] {
        if let Some(v) = set(values) {
            let test = build(&format!("spec.{at}.{name}"), v)?;
            out.push(Check {
                origin: format!("{at}.{name} ({key})"),
                negated,
                test,
            });
        }
    }
    if out.is_empty() {
        return Err(res.invalid(
            &format!("spec.{at}"),
            "a condition needs values or notValues",
        ));
    }
    Ok(out)
}

/// `prefix[a][b]` → `["a", "b"]`; None when `key` is not of that form.
fn bracketed(key: &str, prefix: &str) -> Option<Vec<String>> {
    let mut rest = key.strip_prefix(prefix)?;
    let mut parts = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        parts.push(inner[..end].to_owned());
        rest = &inner[end + 1..];
    }
    (!parts.is_empty()).then_some(parts)
}

fn single<'a>(res: &Resource, field: &str, parts: &'a [String]) -> Result<&'a String, ImportError> {
    match parts {
        [one] => Ok(one),
        _ => Err(res.invalid(
            field,
            "request.headers takes one header name: request.headers[name]",
        )),
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn principals(_: &Resource, _: &str, v: &[String]) -> Result<Test, ImportError> {
    Ok(Test::Principal(v.to_vec()))
}

fn request_principals(_: &Resource, _: &str, v: &[String]) -> Result<Test, ImportError> {
    Ok(Test::RequestPrincipal(v.to_vec()))
}

fn namespaces(res: &Resource, field: &str, v: &[String]) -> Result<Test, ImportError> {
    for n in v {
        if n.is_empty()
            || !n
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'*')
        {
            return Err(res.invalid(
                field,
                &format!("{n:?} is not a namespace name (with optional *)"),
            ));
        }
    }
    Ok(Test::Namespace(v.to_vec()))
}

fn service_accounts(res: &Resource, field: &str, v: &[String]) -> Result<Test, ImportError> {
    for a in v {
        let ok = matches!(a.split('/').collect::<Vec<_>>()[..], [ns, sa] if !ns.is_empty() && !sa.is_empty())
            && !a.contains('*');
        if !ok {
            return Err(res.invalid(
                field,
                &format!("{a:?} is not <namespace>/<service account> (no wildcards)"),
            ));
        }
    }
    Ok(Test::ServiceAccount(v.to_vec()))
}

fn cidrs(res: &Resource, field: &str, v: &[String]) -> Result<Vec<String>, ImportError> {
    v.iter()
        .map(|s| {
            if let Ok(net) = s.parse::<ipnet::IpNet>() {
                return Ok(net.trunc().to_string());
            }
            match s.parse::<IpAddr>() {
                Ok(ip) => Ok(ipnet::IpNet::from(ip).to_string()),
                Err(_) => {
                    Err(res.invalid(field, &format!("{s:?} is not an IP address or CIDR block")))
                }
            }
        })
        .collect()
}

fn source_ips(res: &Resource, field: &str, v: &[String]) -> Result<Test, ImportError> {
    Ok(Test::SourceIp(cidrs(res, field, v)?))
}

fn ports(res: &Resource, field: &str, v: &[String]) -> Result<Test, ImportError> {
    v.iter()
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| res.invalid(field, &format!("{p:?} is not a port number (0-65535)")))
        })
        .collect::<Result<_, _>>()
        .map(Test::Port)
}

fn hosts(_: &Resource, _: &str, v: &[String]) -> Result<Test, ImportError> {
    Ok(Test::Host(
        v.iter().map(|h| h.to_ascii_lowercase()).collect(),
    ))
}

fn methods(_: &Resource, _: &str, v: &[String]) -> Result<Test, ImportError> {
    Ok(Test::Method(v.to_vec()))
}

fn paths(res: &Resource, field: &str, v: &[String]) -> Result<Test, ImportError> {
    let mut plain = Vec::new();
    let mut templates = Vec::new();
    for p in v {
        if p.contains("{*}") || p.contains("{**}") {
            let regex =
                template_regex(p).map_err(|why| res.invalid(field, &format!("{p:?}: {why}")))?;
            templates.push((p.clone(), regex));
        } else {
            plain.push(p.clone());
        }
    }
    Ok(Test::Path(plain, templates))
}

/// Characters a `{*}` segment may hold: RFC 3986 pchar without `/`, plus `*`, as
/// Envoy's URI template matcher (which Istio configures) accepts them.
const SEGMENT_CHARS: &str = r"a-zA-Z0-9\-._~%!$&'()*+,;:@=";

/// An Istio path template (`/a/{*}/b`, `/a/{**}`) as an anchored regular expression.
pub fn template_regex(path: &str) -> Result<String, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("a path template must start with /".into());
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let mut re = String::from("^");
    for (i, seg) in segments.iter().enumerate() {
        re.push('/');
        match *seg {
            "{*}" => {
                let _ = write!(re, "[{SEGMENT_CHARS}]+");
            }
            "{**}" if i + 1 == segments.len() => {
                let _ = write!(re, "[{SEGMENT_CHARS}/]*");
            }
            "{**}" => return Err("{**} must be the last segment".into()),
            lit if lit.contains(['{', '}', '*']) => {
                return Err(format!(
                    "segment {lit:?}: {{*}} and {{**}} must be whole segments"
                ))
            }
            lit => re.push_str(&regex::escape(lit)),
        }
    }
    re.push('$');
    Ok(re)
}

/// One package's name parts, chosen by the caller to be unique.
pub struct PackageName {
    pub namespace_ident: String,
    pub name_ident: String,
}

impl PackageName {
    pub fn package(&self) -> String {
        format!("istio.authz.{}.{}", self.namespace_ident, self.name_ident)
    }
}

/// The Rego package of one policy.
pub fn module(p: &Policy, name: &PackageName) -> String {
    let mut out = format!(
        "{GENERATED}\n#\n# {} (action {})\n",
        p.resource,
        p.action.as_str()
    );
    let scope = if p.root {
        format!("every namespace (root namespace {})", p.namespace)
    } else {
        format!("namespace {}", p.namespace)
    };
    let labels: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(
        out,
        "# Selects: workloads in {scope}{}",
        if labels.is_empty() {
            String::new()
        } else {
            format!(" labelled {}", labels.join(", "))
        }
    );
    let _ = write!(
        out,
        "package {}\n\nimport rego.v1\n\nimport data.istio.lib\nimport data.istio.workload\n\nresource := {}\n\ndefault applies := false\n\n",
        name.package(),
        quote(&p.resource)
    );
    out.push_str("applies");
    out.push_str(&rego_body(&selection_lines(
        &p.namespace,
        p.root,
        &p.labels,
    )));
    out.push_str("\ndefault matches := false\n");
    if p.rules.is_empty() {
        out.push_str("\n# No rules: the policy matches no request.\n");
    }
    let tcp_ignores = p.action != Action::Allow;
    for (i, rule) in p.rules.iter().enumerate() {
        let mut body = Vec::new();
        let mut helpers = String::new();
        if !rule.from.is_empty() {
            body.push(format!("rule_{i}_from"));
        }
        if !rule.to.is_empty() {
            body.push(format!("rule_{i}_to"));
        }
        for (k, c) in rule.when.iter().enumerate() {
            body.push(check_line(
                c,
                &format!("rule_{i}_when_{k}"),
                tcp_ignores,
                &mut helpers,
            ));
        }
        let _ = writeln!(out, "\n# rules[{i}]\nmatches if rule_{i}\n");
        if body.is_empty() {
            let _ = writeln!(
                out,
                "# An empty rule matches every request.\nrule_{i} if true"
            );
        } else {
            let _ = writeln!(out, "rule_{i} if {{");
            for l in &body {
                let _ = writeln!(out, "\t{l}");
            }
            out.push_str("}\n");
        }
        for (part, entries) in [("from", &rule.from), ("to", &rule.to)] {
            for (j, checks) in entries.iter().enumerate() {
                let _ = write!(out, "\n# rules[{i}].{part}[{j}]\nrule_{i}_{part} if {{\n");
                for (k, c) in checks.iter().enumerate() {
                    let line = check_line(
                        c,
                        &format!("rule_{i}_{part}_{j}_{k}"),
                        tcp_ignores,
                        &mut helpers,
                    );
                    let _ = writeln!(out, "\t{line}");
                }
                out.push_str("}\n");
            }
        }
        out.push_str(&helpers);
    }
    out
}

/// The body line of one check. HTTP-only checks in DENY and AUDIT policies get a
/// helper rule that also holds on TCP connections: Istio ignores those fields there,
/// which widens the policy (see Istio's "authorization for TCP" documentation).
fn check_line(c: &Check, helper: &str, tcp_ignores: bool, helpers: &mut String) -> String {
    let test = c.test.rego();
    let positive = if c.negated {
        format!("not {test}")
    } else {
        test
    };
    let line = format!("{positive} # {}", c.origin);
    if !c.test.http_only() {
        return line;
    }
    if tcp_ignores {
        let _ = write!(
            helpers,
            "\n# {} is HTTP only: Istio ignores it on TCP connections in DENY and AUDIT policies\n\
             {helper} if not lib.http\n\n{helper} if {{\n\tlib.http\n\t{line}\n}}\n",
            c.origin
        );
        helper.to_owned()
    } else if c.negated {
        // An ALLOW rule with an HTTP-only field never matches TCP traffic.
        format!("lib.http; {line}")
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_templates_become_anchored_regexes() {
        let r = regex::Regex::new(&template_regex("/users/{*}/orders").unwrap()).unwrap();
        assert!(r.is_match("/users/7/orders"));
        assert!(r.is_match("/users/a*b/orders"));
        assert!(!r.is_match("/users//orders"));
        assert!(!r.is_match("/users/7/8/orders"));
        assert!(!r.is_match("/x/users/7/orders"));
        let r = regex::Regex::new(&template_regex("/api/{**}").unwrap()).unwrap();
        assert!(r.is_match("/api/"));
        assert!(r.is_match("/api/a/b"));
        assert!(!r.is_match("/api"));
        let dots = regex::Regex::new(&template_regex("/v1.0/{*}").unwrap()).unwrap();
        assert!(!dots.is_match("/v1x0/a"), "literal segments are escaped");
        for bad in ["/a/{**}/b", "/a{*}", "users/{*}", "/a/{x}/{*}"] {
            assert!(template_regex(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bracketed_keys_split_into_names() {
        assert_eq!(
            bracketed("request.auth.claims[org][tier]", "request.auth.claims"),
            Some(vec!["org".to_owned(), "tier".to_owned()])
        );
        assert_eq!(
            bracketed("request.headers[X-A]", "request.headers"),
            Some(vec!["X-A".to_owned()])
        );
        assert_eq!(bracketed("request.headers", "request.headers"), None);
        assert_eq!(bracketed("request.headers[x", "request.headers"), None);
        assert_eq!(bracketed("request.headersx[a]", "request.headers"), None);
    }
}
