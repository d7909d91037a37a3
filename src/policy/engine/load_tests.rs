//! Policy set tests beyond the example's decisions: the outbound query, partial
//! documents, loading errors, evaluation errors and limits (helpers shared with
//! `tests.rs`).

use super::tests::{
    cases, example, input_for, policies_dir, set, test_options, AUTHZ, FRONTEND, REPORTING,
};
use super::*;
use crate::policy::exact_json::json_to_value;
use crate::policy::input::{build_input, HttpFacts, InputFacts};
use regorus::Engine;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn outbound_policy() {
    let ps = example(test_options());
    let mk = |dst: &str, principal: Option<&'static str>, host: Option<&'static str>| {
        let headers = http::HeaderMap::new();
        let facts = InputFacts {
            source_address: "127.0.0.1:40000".parse().unwrap_or_else(|e| panic!("{e}")),
            source_principal: Some("spiffe://cluster.local/ns/default/sa/demo"),
            destination_address: dst.parse().unwrap_or_else(|e| panic!("{e}")),
            destination_principal: principal,
            http: host.map(|h| HttpFacts {
                id: "1",
                method: "GET",
                path: "/",
                host: h,
                scheme: "https",
                protocol: "HTTP/1.1",
                headers: &headers,
                size: None,
                body: None,
                truncated_body: false,
                content_type: None,
            }),
            jwt: None,
        };
        ps.evaluate(1, build_input(&facts))
            .unwrap_or_else(|e| panic!("{e}"))
            .allowed
    };
    assert!(mk("10.1.0.9:8080", Some(FRONTEND), None));
    assert!(!mk(
        "10.1.0.9:8080",
        Some("spiffe://other.domain/ns/x/sa/y"),
        None
    ));
    assert!(!mk("93.184.216.34:443", None, None));
    assert!(mk("93.184.216.34:443", None, Some("api.github.com")));
    assert!(!mk("93.184.216.34:443", None, Some("evil.example")));
    assert!(mk("10.96.0.10:53", None, None));
}

/// The OPA-Envoy primer's decision: a partial object queried whole, with a
/// partial set feeding it, decided through the serving path (`decide`, pruned
/// input, decision cache) inbound and outbound, on the VM and the interpreter.
#[test]
fn partial_object_and_set_decisions_in_the_serving_path() {
    let inbound = r#"package envoy.authz
import rego.v1
default allow := false
allow if input.attributes.request.http.method == "GET"
allow if "admin" in roles
roles contains "admin" if input.attributes.request.http.headers["x-role"] == "admin"
roles contains "viewer" if input.attributes.source.principal
denials contains "method" if not allow
result["allowed"] := allow
result["headers"] := {"x-ext-auth-allow": "yes"} if allow
result["http_status"] := 403 if not allow
result["body"] := concat(",", denials) if not allow
"#;
    let outbound = r#"package portcullis.outbound
import rego.v1
default decision.allowed := false
decision["allowed"] := true if input.attributes.destination.principal
decision.reason := "mesh peer"
"#;
    let queries = [
        "data.envoy.authz.result".to_string(),
        "data.portcullis.outbound.decision".to_string(),
    ];
    for force_interpreter in [false, true] {
        for decision_cache in [0, 16] {
            let ps = PolicySet::from_sources(
                vec![
                    ("in.rego".to_string(), inbound.to_string()),
                    ("out.rego".to_string(), outbound.to_string()),
                ],
                serde_json::Value::Null,
                &queries,
                PolicyOptions {
                    force_interpreter,
                    decision_cache,
                    ..test_options()
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
            for (method, role, want) in [
                ("GET", "", true),
                ("POST", "", false),
                ("POST", "admin", true),
                ("POST", "viewer", false),
                ("GET", "admin", true),
            ] {
                let mut headers = http::HeaderMap::new();
                if !role.is_empty() {
                    headers.insert(
                        "x-role",
                        http::HeaderValue::from_str(role).unwrap_or_else(|e| panic!("{e}")),
                    );
                }
                let facts = InputFacts {
                    source_address: "10.1.0.7:35568".parse().unwrap_or_else(|e| panic!("{e}")),
                    source_principal: Some(FRONTEND),
                    destination_address: "10.1.0.9:8080".parse().unwrap_or_else(|e| panic!("{e}")),
                    destination_principal: Some(REPORTING),
                    http: Some(HttpFacts {
                        id: "1",
                        method,
                        path: "/x",
                        host: "demo:8080",
                        scheme: "http",
                        protocol: "HTTP/1.1",
                        headers: &headers,
                        size: None,
                        body: None,
                        truncated_body: false,
                        content_type: None,
                    }),
                    jwt: None,
                };
                for _ in 0..2 {
                    let (d, _) = ps.decide(0, &facts);
                    let d = d.unwrap_or_else(|e| {
                        panic!("{method} {role} interp={force_interpreter}: {e}")
                    });
                    assert_eq!(d.allowed, want, "{method} {role}: {d:?}");
                    if want {
                        assert_eq!(
                            d.headers,
                            vec![("x-ext-auth-allow".to_string(), "yes".to_string())]
                        );
                    } else {
                        assert_eq!(d.http_status, Some(403));
                        assert_eq!(d.body.as_deref(), Some("method"));
                    }
                    let (d, _) = ps.decide(1, &facts);
                    let d = d.unwrap_or_else(|e| panic!("outbound: {e}"));
                    assert!(d.allowed);
                    assert_eq!(d.reason.as_deref(), Some("mesh peer"));
                }
            }
        }
    }
}

#[test]
fn undefined_query_is_not_a_load_error() {
    let ps = set(
        &[("a.rego", "package a\nimport rego.v1\nx := 1\n")],
        "data.nothing.here",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ps.evaluator(0), Some(EvaluatorKind::Undefined));
    assert_eq!(
        ps.evaluate(0, Value::new_object()),
        Err(DecisionError::Undefined)
    );
    assert_eq!(
        ps.evaluate(5, Value::new_object()),
        Err(DecisionError::NoPolicy)
    );

    // Defined rule without a default that does not match → undefined.
    let ps = set(
        &[(
            "a.rego",
            "package a\nimport rego.v1\nallow if input.x == 1\n",
        )],
        "data.a.allow",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ps.evaluator(0), Some(EvaluatorKind::Rvm));
    assert_eq!(
        ps.evaluate(0, Value::new_object()),
        Err(DecisionError::Undefined)
    );
}

#[test]
fn wrong_shape() {
    let ps = set(
        &[("a.rego", "package a\nimport rego.v1\nallow := \"yes\"\n")],
        "data.a.allow",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        ps.evaluate(0, Value::new_object()),
        Err(DecisionError::WrongShape(_))
    ));
}

#[test]
fn runtime_errors_are_eval_errors() {
    // Division by zero is a builtin error: non-strict, as OPA-Envoy evaluates,
    // the expression is undefined (so is the rule), on the VM and the interpreter.
    for force_interpreter in [false, true] {
        let ps = PolicySet::from_sources(
            vec![(
                "a.rego".to_string(),
                "package a\nimport rego.v1\nallow := 1 / input.z\n".to_string(),
            )],
            serde_json::Value::Null,
            &["data.a.allow".to_string()],
            PolicyOptions {
                force_interpreter,
                ..test_options()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let input = Value::from_json_str(r#"{"z": 0}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ps.evaluate(0, input), Err(DecisionError::Undefined));
    }

    // Conflicting complete rule: evaluated with the interpreter, an error.
    let ps = set(
            &[(
                "a.rego",
                "package a\nimport rego.v1\ndefault allow := false\nallow if not denied\ndenied := true if input.a\ndenied := false if input.b\n",
            )],
            "data.a.allow",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ps.evaluator(0), Some(EvaluatorKind::Interpreter));
    let input = Value::from_json_str(r#"{"a": true, "b": true}"#).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(ps.evaluate(0, input), Err(DecisionError::Eval(_))));
    let input = Value::from_json_str(r#"{"a": true}"#).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ps.evaluate(0, input).map(|d| d.allowed), Ok(false));
}

#[test]
fn repeated_boolean_rules_stay_on_rvm() {
    let ps = set(
            &[(
                "a.rego",
                "package a\nimport rego.v1\ndefault allow := false\nallow if input.a\nallow if input.b\nmsg := \"x\" if input.a else := \"y\"\n",
            )],
            "data.a.allow",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ps.evaluator(0), Some(EvaluatorKind::Rvm));
}

#[test]
fn instruction_budget_alone_stops_the_vm() {
    // A loop of ~10k iterations: fine under a large budget, denied under a small
    // one, with a timer so generous that only the instruction count can stop it.
    let src =
        "package a\nimport rego.v1\nallow if sum([x | some x in numbers.range(1, 10000)]) > 0\n";
    let with_budget = |max_instructions| {
        PolicySet::from_sources(
            vec![("a.rego".to_string(), src.to_string())],
            serde_json::Value::Null,
            &["data.a.allow".to_string()],
            PolicyOptions {
                limits: EvalLimits {
                    timeout: Duration::from_secs(60),
                    max_instructions,
                },
                force_interpreter: false,
                extensions: None,
                decision_cache: 0,
                workload_labels: None,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let generous = with_budget(10_000_000);
    assert_eq!(generous.evaluator(0), Some(EvaluatorKind::Rvm));
    assert!(generous.evaluate(0, Value::new_object()).unwrap().allowed);
    let tight = with_budget(1_000);
    assert_eq!(
        tight.evaluate(0, Value::new_object()),
        Err(DecisionError::Timeout)
    );
    // The pooled VM that hit the limit is not left stuck: the next decision
    // runs (and is stopped) the same way.
    assert_eq!(
        tight.evaluate(0, Value::new_object()),
        Err(DecisionError::Timeout)
    );
    // An ordinary decision fits in the same small budget.
    let cheap = PolicySet::from_sources(
        vec![(
            "a.rego".to_string(),
            "package a\nimport rego.v1\nallow if input.x == 1\n".to_string(),
        )],
        serde_json::Value::Null,
        &["data.a.allow".to_string()],
        PolicyOptions {
            limits: EvalLimits {
                timeout: Duration::from_secs(60),
                max_instructions: 1_000,
            },
            force_interpreter: false,
            extensions: None,
            decision_cache: 0,
            workload_labels: None,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut input = Value::new_object();
    input
        .as_object_mut()
        .unwrap()
        .insert(Value::from("x"), Value::from(1u64));
    for _ in 0..3 {
        assert!(cheap.evaluate(0, input.clone()).unwrap().allowed);
    }
}

#[test]
fn runaway_policy_is_stopped() {
    let ps = set(
            &[(
                "a.rego",
                "package a\nimport rego.v1\nallow := count([x | some i in numbers.range(1, 100000); some j in numbers.range(1, 100000); x := i * j]) > 0\n",
            )],
            "data.a.allow",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    assert_eq!(
        ps.evaluate(0, Value::new_object()),
        Err(DecisionError::Timeout)
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );

    // The interpreter path is bounded by the timer.
    let ps = PolicySet::from_sources(
            vec![(
                "a.rego".to_string(),
                "package a\nimport rego.v1\nallow := count([x | some i in numbers.range(1, 100000); some j in numbers.range(1, 100000); x := i * j]) > 0\n".to_string(),
            )],
            serde_json::Value::Null,
            &["data.a.allow".to_string()],
            PolicyOptions {
                limits: EvalLimits {
                    timeout: Duration::from_millis(100),
                    max_instructions: 200_000,
                },
                force_interpreter: true,
                extensions: None,
                decision_cache: 0,
                workload_labels: None,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    assert_eq!(
        ps.evaluate(0, Value::new_object()),
        Err(DecisionError::Timeout)
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_link_loop_in_the_policy_directory_is_an_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.path().join("a.rego"),
        "package a\nimport rego.v1\nallow := true\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir(dir.path().join("sub")).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink(dir.path(), dir.path().join("sub/loop"))
        .unwrap_or_else(|e| panic!("{e}"));
    let err = PolicySet::load_dir(dir.path(), &["data.a.allow".to_string()], test_options())
        .map(|_| ())
        .unwrap_err();
    assert!(err.to_string().contains("nested too deeply"), "{err}");
}

#[test]
fn syntax_error_names_file_and_line() {
    let err = set(
        &[(
            "policies/bad.rego",
            "package a\nimport rego.v1\n\nallow if {\n  input.x ==\n",
        )],
        "data.a.allow",
    )
    .err()
    .unwrap_or_else(|| panic!("expected an error"));
    let text = err.to_string();
    assert!(text.starts_with("policies/bad.rego:"), "{text}");
    assert!(matches!(err, PolicyError::Rego { .. }));

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.path().join("ok.rego"),
        "package ok\nimport rego.v1\nx := 1\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.path().join("bad.rego"),
        "package bad\nimport rego.v1\n\nallow if input.x = = 1\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let err = PolicySet::load_dir(dir.path(), &[AUTHZ.to_string()], EvalLimits::default())
        .err()
        .unwrap_or_else(|| panic!("expected an error"));
    let text = err.to_string();
    assert!(text.contains("bad.rego:4:"), "{text}");
}

#[test]
fn data_files_merge_at_their_directory() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let p = dir.path();
    std::fs::create_dir_all(p.join("roles/extra")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(p.join("..data")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(p.join("data.json"), r#"{"top": 1}"#).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(p.join("roles/data.yaml"), "admin: [alice]\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(p.join("roles/extra/data.yml"), "x: true\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(p.join("..data/data.json"), r#"{"hidden": 1}"#)
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
            p.join("p.rego"),
            "package p\nimport rego.v1\nallow if { data.top == 1; \"alice\" in data.roles.admin; data.roles.extra.x; not data.hidden }\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        p.join("p_test.rego"),
        "package p_test\nthis is not parsed\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let ps = PolicySet::load_dir(p, &["data.p.allow".to_string()], EvalLimits::default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ps.evaluate(0, Value::new_object()), Ok(Decision::allow()));
    let rev = ps.revision().to_string();

    // Changing data changes the revision; a conflict is an error naming the file.
    std::fs::write(
        p.join("roles/data.yaml"),
        "admin: [alice, bob]\nextra: {x: false}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let err = PolicySet::load_dir(p, &["data.p.allow".to_string()], EvalLimits::default())
        .err()
        .unwrap_or_else(|| panic!("expected a conflict"));
    assert!(err.to_string().contains("data.yml"), "{err}");
    std::fs::write(p.join("roles/data.yaml"), "admin: [alice, bob]\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let ps = PolicySet::load_dir(p, &["data.p.allow".to_string()], EvalLimits::default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(ps.revision(), rev);
}

#[test]
fn extension_functions_fall_back_to_interpreter() {
    let hook: ExtensionHook = Arc::new(|engine: &mut Engine| {
        engine.add_extension(
            "demo.double".to_string(),
            1,
            Box::new(|args: Vec<Value>| {
                let n = args
                    .first()
                    .and_then(|v| v.as_i64().ok())
                    .ok_or_else(|| anyhow::anyhow!("need a number"))?;
                Ok(Value::from(n * 2))
            }),
        )
    });
    let ps = PolicySet::from_sources(
            vec![(
                "a.rego".to_string(),
                "package a\nimport rego.v1\ndefault allow := false\nallow if demo.double(input.n) == 4\n".to_string(),
            )],
            serde_json::Value::Null,
            &["data.a.allow".to_string()],
            PolicyOptions {
                extensions: Some(hook),
                ..test_options()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ps.evaluator(0), Some(EvaluatorKind::Interpreter));
    let input = Value::from_json_str(r#"{"n": 2}"#).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ps.evaluate(0, input), Ok(Decision::allow()));
    let input = Value::from_json_str(r#"{"n": 3}"#).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ps.evaluate(0, input), Ok(Decision::deny()));
}

/// Runs the example `*_test.rego` files with the interpreter (what
/// `opa test policies/` would do) so the examples and their tests stay in sync.
#[test]
fn example_rego_tests_pass() {
    let dir = policies_dir();
    let mut engine = Engine::new();
    let mut tests = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.display().to_string();
        if !name.ends_with(".rego") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        let package = engine
            .add_policy(name.clone(), text.clone())
            .unwrap_or_else(|e| panic!("{e}"));
        if name.ends_with("_test.rego") {
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix("test_") {
                    let rule: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    tests.push(format!("{package}.test_{rule}"));
                }
            }
        }
    }
    let data = std::fs::read_to_string(dir.join("data.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let data: serde_json::Value = serde_yaml::from_str(&data).unwrap_or_else(|e| panic!("{e}"));
    engine
        .add_data(json_to_value(&data))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(tests.len() >= 15, "{tests:?}");
    let failed: Vec<_> = tests
        .iter()
        .filter(|t| {
            let r = engine.clone().eval_rule((*t).clone());
            !matches!(r, Ok(Value::Bool(true)))
        })
        .collect();
    assert!(failed.is_empty(), "failed rego tests: {failed:?}");
}

#[test]
fn concurrent_evaluation() {
    // A generous wall-clock budget: this checks thread safety, and a loaded
    // CI machine must not turn a slow debug-build evaluation into a deny.
    let ps = Arc::new(example(PolicyOptions::from(EvalLimits {
        timeout: Duration::from_secs(30),
        ..EvalLimits::default()
    })));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let ps = ps.clone();
            std::thread::spawn(move || {
                for _ in 0..200 {
                    for (r, want) in cases() {
                        let d = ps.evaluate(0, input_for(&r));
                        assert_eq!(d.map(|d| d.allowed), Ok(want));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        assert!(t.join().is_ok());
    }
}
