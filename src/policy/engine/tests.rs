use super::memo::{key_hash, Memo};
use super::*;
use crate::policy::input::{build_input, HttpFacts, InputFacts};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(super) const AUTHZ: &str = "data.envoy.authz.allow";
const OUTBOUND: &str = "data.portcullis.outbound.allow";
pub(super) const FRONTEND: &str = "spiffe://cluster.local/ns/default/sa/frontend";
pub(super) const REPORTING: &str = "spiffe://cluster.local/ns/default/sa/reporting";

pub(super) fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

/// Default options with a time budget that a debug build on a loaded machine
/// cannot exceed by accident: these tests are about results, not limits (the
/// limit tests set their own).
pub(super) fn test_options() -> PolicyOptions {
    PolicyOptions {
        limits: EvalLimits {
            timeout: Duration::from_secs(10),
            ..EvalLimits::default()
        },
        ..PolicyOptions::default()
    }
}

pub(super) fn example(options: PolicyOptions) -> PolicySet {
    let queries = vec![AUTHZ.to_string(), OUTBOUND.to_string()];
    PolicySet::load_dir(&policies_dir(), &queries, options)
        .unwrap_or_else(|e| panic!("loading policies/: {e}"))
}

pub(super) fn set(modules: &[(&str, &str)], query: &str) -> Result<PolicySet, PolicyError> {
    PolicySet::from_sources(
        modules
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect(),
        serde_json::Value::Null,
        &[query.to_string()],
        EvalLimits {
            timeout: Duration::from_millis(200),
            max_instructions: 200_000,
        },
    )
}

pub(super) struct Req {
    principal: Option<&'static str>,
    method: &'static str,
    path: &'static str,
    jwt: Option<serde_json::Value>,
}

pub(super) fn input_for(r: &Req) -> Value {
    let mut headers = http::HeaderMap::new();
    headers.insert("user-agent", http::HeaderValue::from_static("test"));
    let facts = InputFacts {
        source_address: "10.1.0.7:35568".parse().unwrap_or_else(|e| panic!("{e}")),
        source_principal: r.principal,
        destination_address: "10.1.0.9:8080".parse().unwrap_or_else(|e| panic!("{e}")),
        destination_principal: Some("spiffe://cluster.local/ns/default/sa/demo"),
        http: Some(HttpFacts {
            id: "1",
            method: r.method,
            path: r.path,
            host: "demo:8080",
            scheme: "http",
            protocol: "HTTP/1.1",
            headers: &headers,
            size: None,
            body: None,
            truncated_body: false,
            content_type: None,
        }),
        jwt: r.jwt.as_ref().map(|c| ("jwt_payload", c)),
    };
    build_input(&facts)
}

fn req(principal: Option<&'static str>, method: &'static str, path: &'static str) -> Req {
    Req {
        principal,
        method,
        path,
        jwt: None,
    }
}

pub(super) fn cases() -> Vec<(Req, bool)> {
    vec![
        (req(Some(FRONTEND), "GET", "/api/orders"), true),
        (req(Some(FRONTEND), "POST", "/api/orders"), true),
        (req(Some(FRONTEND), "DELETE", "/api/orders/1"), false),
        (req(Some(REPORTING), "GET", "/api/orders?x=1"), true),
        (req(Some(REPORTING), "POST", "/api/orders"), false),
        (req(Some(REPORTING), "GET", "/admin"), false),
        (req(None, "GET", "/api/orders"), false),
        (req(None, "GET", "/healthz"), true),
        (
            req(
                Some("spiffe://evil.example/ns/default/sa/frontend"),
                "GET",
                "/api/x",
            ),
            false,
        ),
        (
            Req {
                principal: Some(FRONTEND),
                method: "DELETE",
                path: "/api/orders/1",
                jwt: Some(serde_json::json!({"sub": "alice", "role": "admin"})),
            },
            true,
        ),
        (
            Req {
                principal: Some(FRONTEND),
                method: "DELETE",
                path: "/api/orders/1",
                jwt: Some(serde_json::json!({"sub": "bob", "role": "viewer"})),
            },
            false,
        ),
    ]
}

#[test]
fn policy_set_is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<PolicySet>();
    fn send<T: Send>() {}
    send::<regorus::rvm::vm::RegoVM>();
}

#[test]
fn example_policy_uses_rvm_and_decides() {
    let ps = example(test_options());
    assert_eq!(ps.evaluator(0), Some(EvaluatorKind::Rvm), "{ps:?}");
    assert_eq!(ps.evaluator(1), Some(EvaluatorKind::Rvm), "{ps:?}");
    assert_eq!(ps.revision().len(), 64);
    assert_eq!(ps.short_revision().len(), 12);
    for (r, want) in cases() {
        let d = ps
            .evaluate(0, input_for(&r))
            .unwrap_or_else(|e| panic!("{} {}: {e}", r.method, r.path));
        assert_eq!(
            d.allowed, want,
            "{:?} {} {}: {d:?}",
            r.principal, r.method, r.path
        );
        if want {
            assert!(d.http_status.is_none());
        } else {
            assert_eq!(d.http_status, Some(403));
            assert!(d.reason.is_some(), "deny without a reason: {d:?}");
        }
    }
    // The object result carries the role header.
    let d = ps
        .evaluate(0, input_for(&req(Some(REPORTING), "GET", "/api/x")))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(d
        .headers
        .contains(&("x-portcullis-role".to_string(), "reader".to_string())));
}

#[test]
fn rvm_and_interpreter_agree_on_example() {
    let rvm = example(test_options());
    let interp = example(PolicyOptions {
        force_interpreter: true,
        ..test_options()
    });
    assert_eq!(interp.evaluator(0), Some(EvaluatorKind::Interpreter));
    assert_eq!(rvm.revision(), interp.revision());
    for (r, _) in cases() {
        let a = rvm.evaluate(0, input_for(&r));
        let b = interp.evaluate(0, input_for(&r));
        let c = rvm.evaluate_interpreted(0, input_for(&r));
        assert_eq!(a, b, "{:?} {} {}", r.principal, r.method, r.path);
        assert_eq!(a, c);
    }
}

/// The example RBAC policy as first written (plain rules, one helper per
/// fact). `policies/authz.rego` is restructured for the VM's speed; it
/// must decide exactly like this on every input.
const REFERENCE_AUTHZ: &str = r#"# Inbound authorization for the demo services, OPA-Envoy style.
#
# Query: data.envoy.authz.allow (the configured default). It always yields an
# OPA-Envoy result OBJECT, so denials carry a status and a reason:
#
#   permitted: {"allowed": true, "headers": {"x-portcullis-role": "<roles>"}}
#   denied:    {"allowed": false, "http_status": 403, "body": "...", "reason": "..."}
#
# Who may do what lives in data.rbac (data.yaml): workload SPIFFE IDs are bound
# to roles, roles grant methods on path prefixes ("/api/**": /api and below).
# Prefixes rather than glob.match keep a decision fast: regorus compiles the
# glob on every call (≈2x the evaluation time). End users add roles through the
# `role` claim of their verified JWT (jwt_authn metadata), e.g. `admin` may DELETE.
package envoy.authz

import rego.v1

allow := {"allowed": true, "headers": {"x-portcullis-role": concat(",", sort(granted))}} if {
	count(granted) > 0
} else := {
	"allowed": false,
	"http_status": 403,
	"body": sprintf("forbidden: %s\n", [reason]),
	"reason": reason,
}

# --- request facts -----------------------------------------------------------

principal := input.attributes.source.principal

method := input.attributes.request.http.method

# The decoded request path without the query, rebuilt from parsed_path.
request_path := concat("/", array.concat([""], input.parsed_path))

# With a trailing slash, so "/api/**" matches "/api" and "/api/x" but not "/apix".
request_path_slash := concat("", [request_path, "/"])

jwt := input.attributes.metadataContext.filterMetadata["envoy.filters.http.jwt_authn"].jwt_payload

# The caller is a workload of our own trust domain.
in_mesh if startswith(principal, sprintf("spiffe://%s/", [data.mesh.trust_domain]))

# --- roles ---------------------------------------------------------------------

caller_roles contains role if {
	in_mesh
	some role in data.rbac.bindings[principal]
}

caller_roles contains role if {
	in_mesh
	some role in data.rbac.jwt_roles[jwt.role]
}

# Roles whose grants permit this method on this path, plus "public".
granted contains role if {
	some role in caller_roles
	some grant in data.rbac.roles[role]
	method in grant.methods
	some prefix in grant.paths
	startswith(request_path_slash, trim_suffix(prefix, "**"))
}

granted contains "public" if {
	method in {"GET", "HEAD"}
	request_path in data.rbac.public_paths
}

# --- why not -------------------------------------------------------------------

reason := "no HTTP request" if {
	not method
} else := "no peer identity (mTLS required)" if {
	not principal
} else := sprintf("%s is outside trust domain %s", [principal, data.mesh.trust_domain]) if {
	not in_mesh
} else := sprintf("%s has no role", [principal]) if {
	count(caller_roles) == 0
} else := sprintf("roles %v of %s do not permit %s %s", [sort(caller_roles), principal, method, request_path])
"#;

/// The reference policy on the interpreter and on the RVM, and the example
/// policy (which must run on the RVM).
fn reference_and_example() -> (PolicySet, PolicySet, PolicySet) {
    let dir = policies_dir();
    let data = std::fs::read_to_string(dir.join("data.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let data: serde_json::Value = serde_yaml::from_str(&data).unwrap_or_else(|e| panic!("{e}"));
    let reference_with = |force_interpreter: bool| {
        PolicySet::from_sources(
            vec![("reference.rego".to_string(), REFERENCE_AUTHZ.to_string())],
            data.clone(),
            &[AUTHZ.to_string()],
            PolicyOptions {
                force_interpreter,
                ..test_options()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let reference = reference_with(true);
    let reference_rvm = reference_with(false);
    assert_eq!(reference_rvm.evaluator(0), Some(EvaluatorKind::Rvm));
    let rvm = example(test_options());
    assert_eq!(rvm.evaluator(0), Some(EvaluatorKind::Rvm));

    (reference, reference_rvm, rvm)
}

#[test]
fn example_authz_matches_reference_policy() {
    let (reference, _, rvm) = reference_and_example();
    let principals = [
        None,
        Some(FRONTEND),
        Some(REPORTING),
        Some("spiffe://cluster.local/ns/default/sa/other"),
        Some("spiffe://evil.example/ns/default/sa/frontend"),
        Some("spiffe://cluster.local"),
        Some("spiffe://cluster.localx/ns/a/sa/b"),
    ];
    let methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    let paths = [
        "/",
        "/api",
        "/api/",
        "/apix",
        "/api/orders/1?x=1",
        "/admin",
        "/admin/x",
        "/healthz",
        "/healthz/",
        "/healthz?probe=1",
        "/%61pi/x",
        "/api%2Fx",
        "//api/x",
        "/x/api",
    ];
    let claims = [
        None,
        Some(serde_json::json!({"sub": "alice", "role": "admin"})),
        Some(serde_json::json!({"sub": "bob", "role": "viewer"})),
        Some(serde_json::json!({"sub": "carol"})),
        Some(serde_json::json!({"role": 7})),
        Some(serde_json::json!({"role": ["admin"]})),
    ];
    let headers = http::HeaderMap::new();
    let mut checked = 0;
    for principal in principals {
        for jwt in &claims {
            for http in [false, true] {
                for method in methods {
                    for path in paths {
                        let facts = InputFacts {
                            source_address: "10.1.0.7:35568"
                                .parse()
                                .unwrap_or_else(|e| panic!("{e}")),
                            source_principal: principal,
                            destination_address: "10.1.0.9:8080"
                                .parse()
                                .unwrap_or_else(|e| panic!("{e}")),
                            destination_principal: Some(
                                "spiffe://cluster.local/ns/default/sa/demo",
                            ),
                            http: http.then_some(HttpFacts {
                                id: "1",
                                method,
                                path,
                                host: "demo:8080",
                                scheme: "http",
                                protocol: "HTTP/1.1",
                                headers: &headers,
                                size: None,
                                body: None,
                                truncated_body: false,
                                content_type: None,
                            }),
                            jwt: jwt.as_ref().map(|c| ("jwt_payload", c)),
                        };
                        let input = build_input(&facts);
                        let want = reference.evaluate_value(0, input.clone());
                        let got = rvm.evaluate_value(0, input.clone());
                        let got_interpreted = rvm.evaluate_interpreted(0, input);
                        assert_eq!(got, want, "{principal:?} {jwt:?} {http} {method} {path}");
                        assert_eq!(
                            got_interpreted,
                            want.clone().and_then(|v| decision_from_value(&v)),
                            "{principal:?} {jwt:?} {http} {method} {path}"
                        );
                        checked += 1;
                        if !http {
                            break;
                        }
                    }
                    if !http {
                        break;
                    }
                }
            }
        }
    }
    assert!(checked > 1000, "{checked}");
}

#[test]
fn example_authz_matches_reference_policy_on_hand_made_documents() {
    let (reference, reference_rvm, rvm) = reference_and_example();
    // Hand-made documents the proxy never builds (a non-string principal is
    // an error on the interpreter, undefined on the VM: compare like with like).
    for doc in [
        r#"{}"#,
        r#"{"attributes": {"request": {"http": {"method": "GET"}}}}"#,
        r#"{"attributes": {"request": {"http": {"method": "GET"}}}, "parsed_path": ["healthz"]}"#,
        r#"{"attributes": {"source": {"principal": "spiffe://cluster.local/ns/default/sa/frontend"}, "request": {"http": {"method": "GET"}}}, "parsed_path": ["api"]}"#,
        r#"{"attributes": {"source": {"principal": "spiffe://cluster.local/ns/default/sa/frontend"}, "request": {"http": {"method": "GET"}}}}"#,
        r#"{"attributes": {"source": {"principal": "spiffe://cluster.local/ns/default/sa/frontend"}, "request": {"http": {"method": "DELETE"}}, "metadataContext": {"filterMetadata": {"envoy.filters.http.jwt_authn": {"jwt_payload": "admin"}}}}, "parsed_path": ["api"]}"#,
        r#"{"attributes": {"source": {"principal": 42}, "request": {"http": {"method": "GET"}}}, "parsed_path": ["api"]}"#,
    ] {
        let input = Value::from_json_str(doc).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            rvm.evaluate_value(0, input.clone()),
            reference_rvm.evaluate_value(0, input.clone()),
            "{doc}"
        );
        // Errors name different files and lines; compare their kind.
        assert_eq!(
            rvm.evaluate_interpreted(0, input.clone())
                .map_err(|e| e.reason()),
            reference.evaluate(0, input).map_err(|e| e.reason()),
            "{doc}"
        );
    }
}

/// The decision cache and the pruned input are invisible: for every input, a
/// set that memoises and builds only the headers its rules read decides exactly
/// as one that evaluates the full document every time.
/// The policy sets the memo test decides with: (name, module source or the
/// example policies, memoisable).
fn memo_policy_sets() -> [(&'static str, Option<&'static str>, bool); 5] {
    let header_policy = r#"package envoy.authz
import rego.v1
default allow := false
allow if input.attributes.request.http.headers["x-magic"] == "please"
allow if { input.parsed_path[0] == "h"; input.attributes.request.http.headers[":method"] == "GET" }
allow := {"allowed": false, "http_status": 418, "body": input.attributes.request.http.headers["x-why"]} if input.parsed_path[0] == "teapot"
"#;
    let enumerating = r#"package envoy.authz
import rego.v1
default allow := false
allow if count(input.attributes.request.http.headers) > 6
allow if { some k, _ in input.attributes.request.http.headers; startswith(k, "x-admin") }
"#;
    let id_reading = r#"package envoy.authz
import rego.v1
allow if endswith(input.attributes.request.http.id, "7")
"#;
    let whole = r#"package envoy.authz
import rego.v1
allow if { s := json.marshal(input); contains(s, "please") }
"#;
    // (name, module source or the example policies, memoisable)
    [
        ("example", None, true),
        ("headers", Some(header_policy), true),
        ("enumerating", Some(enumerating), true),
        ("id", Some(id_reading), true),
        ("whole", Some(whole), false),
    ]
}

/// The header maps the memo test sends.
fn memo_header_sets() -> Vec<http::HeaderMap> {
    [
        &[][..],
        &[("x-magic", "please")][..],
        &[("x-magic", "no"), ("x-why", "because")][..],
        &[("x-admin-token", "1"), ("accept", "*/*")][..],
        &[
            ("a", "1"),
            ("b", "2"),
            ("c", "3"),
            ("d", "4"),
            ("x-magic", "please"),
            ("x-magic", "again"),
        ][..],
    ]
    .iter()
    .map(|hs| {
        let mut m = http::HeaderMap::new();
        for (k, v) in *hs {
            m.append(*k, http::HeaderValue::from_static(v));
        }
        m
    })
    .collect()
}

#[test]
fn memo_and_pruned_input_decide_as_the_full_input() {
    let sets = memo_policy_sets();
    let make = |src: Option<&str>, n: usize| {
        let options = PolicyOptions {
            decision_cache: n,
            ..test_options()
        };
        match src {
            None => example(options),
            Some(src) => PolicySet::from_sources(
                vec![("p.rego".into(), src.into())],
                serde_json::Value::Null,
                &[AUTHZ.to_string()],
                options,
            )
            .unwrap_or_else(|e| panic!("{e}")),
        }
    };
    let header_sets = memo_header_sets();
    let claims = [
        None,
        Some(serde_json::json!({"sub": "alice", "role": "admin", "exp": 1})),
        Some(serde_json::json!({"sub": "alice", "role": "admin", "exp": 2})),
    ];
    for (name, src, memoisable) in sets {
        let plain = make(src, 0);
        let memo = make(src, 16); // small: the table starts over many times
        assert_eq!(
            memo.input_access(0).map(InputAccess::memoisable),
            Some(memoisable),
            "{name}"
        );
        let mut hits = 0;
        let mut checked = 0;
        // Two rounds: the second mostly answered from the memo.
        for round in 0..2 {
            for (i, principal) in [Some(FRONTEND), Some(REPORTING), None].iter().enumerate() {
                for method in ["GET", "POST", "DELETE"] {
                    for path in ["/api/x", "/admin", "/h", "/teapot", "/healthz"] {
                        for headers in &header_sets {
                            for jwt in &claims {
                                let id = format!("req-{round}-{i}-{checked}");
                                let facts = InputFacts {
                                    source_address: "10.1.0.7:35568"
                                        .parse()
                                        .unwrap_or_else(|e| panic!("{e}")),
                                    source_principal: *principal,
                                    destination_address: "10.1.0.9:8080"
                                        .parse()
                                        .unwrap_or_else(|e| panic!("{e}")),
                                    destination_principal: Some(
                                        "spiffe://cluster.local/ns/default/sa/demo",
                                    ),
                                    http: Some(HttpFacts {
                                        id: &id,
                                        method,
                                        path,
                                        host: "demo:8080",
                                        scheme: "https",
                                        protocol: "HTTP/1.1",
                                        headers,
                                        size: None,
                                        body: None,
                                        truncated_body: false,
                                        content_type: None,
                                    }),
                                    jwt: jwt.as_ref().map(|c| ("jwt_payload", c)),
                                };
                                let want = plain.evaluate(0, build_input(&facts));
                                let (got, used) = memo.decide(0, &facts);
                                assert_eq!(
                                    got, want,
                                    "{name}: {principal:?} {method} {path} {headers:?} {jwt:?}"
                                );
                                if !memoisable {
                                    assert_eq!(used, MemoUse::Off, "{name}");
                                }
                                hits += usize::from(used == MemoUse::Hit);
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 1000, "{checked}");
        if memoisable && name != "id" {
            assert!(hits > checked / 4, "{name}: {hits} hits of {checked}");
        }
    }
}

#[test]
fn memo_confirms_the_whole_key_and_starts_over_when_full() {
    let memo = Memo::new(2);
    let a = vec![Value::from("spiffe://a"), Value::from("GET")];
    let b = vec![Value::from("spiffe://b"), Value::from("GET")];
    memo.put(7, a.clone(), Decision::allow());
    // The same hash with another key (a collision) is a miss, not a's result.
    assert_eq!(memo.get(7, &b), None);
    assert_eq!(memo.get(7, &a), Some(Decision::allow()));
    assert_eq!(key_hash(&a), key_hash(&a.clone()));
    assert_ne!(key_hash(&a), key_hash(&b));
    memo.put(8, b.clone(), Decision::deny());
    memo.put(9, vec![Value::Undefined], Decision::deny());
    assert_eq!(memo.map().len(), 1, "full: started over");
}

#[test]
fn warming_evaluates_nothing_into_the_memo() {
    let set = PolicySet::from_sources(
        vec![(
            "p.rego".into(),
            "package envoy.authz\nimport rego.v1\ndefault allow := false\nallow if input.attributes.request.http.path == \"/\"\n"
                .into(),
        )],
        serde_json::Value::Null,
        &[AUTHZ.to_string()],
        PolicyOptions {
            decision_cache: 16,
            ..test_options()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    set.warm();
    // The warm-up's own request, decided afterwards, is evaluated, not answered from
    // the memo.
    let headers = http::HeaderMap::new();
    let facts = warm_up_facts(&headers);
    let (decision, memo) = set.decide(0, &facts);
    assert!(decision.unwrap_or_else(|e| panic!("{e}")).allowed);
    assert_eq!(memo, MemoUse::Miss);
    let (_, memo) = set.decide(0, &facts);
    assert_eq!(memo, MemoUse::Hit);
}
