//! `portcullis policy test|eval|check` through the real binary: verdicts,
//! exit codes, output formats and error locations.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn portcullis(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, content) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
}

const POLICY: &str = r#"package app.authz

import rego.v1

default allow := false

allow if {
	input.user in data.app.admins
}

allow if {
	input.method == "GET"
	input.path == "/public"
}
"#;

/// Line 14 divides by zero (a builtin error: undefined, so the test fails, as in
/// `opa test`), line 20 is a todo.
const TESTS: &str = r#"package app.authz_test

import rego.v1

import data.app.authz

test_admin_allowed if {
	authz.allow with input as {"user": "alice"}
		with data.app.admins as ["alice"]
}

test_public_get if authz.allow with input as {"method": "GET", "path": "/public"}

test_divide_by_zero if {
	x := 1 / count([])
	x > 0
}

test_this_fails if authz.allow with input as {"user": "mallory"}

todo_test_write_more if false

test_data_default_used if {
	authz.allow with input as {"user": "bob"}
}
"#;

fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            ("p/authz.rego", POLICY),
            ("p/authz_test.rego", TESTS),
            // Merged at data.app (its directory's path).
            ("p/app/data.yaml", "admins: [bob]\n"),
        ],
    );
    dir
}

#[test]
fn examples_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = portcullis(&["policy", "test", "policies/"], root);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let summary = stdout.lines().last().unwrap();
    assert!(
        summary.starts_with("PASS: ") && !stdout.contains("FAIL"),
        "{stdout}"
    );
    let (n, m) = summary["PASS: ".len()..].split_once('/').unwrap();
    assert_eq!(n, m);
    assert!(n.parse::<u32>().unwrap() >= 20);
}

#[test]
fn verdicts_and_exit_codes() {
    let dir = fixture();
    // Exit codes: 2 for failures and errors (as `opa test`), 1 for load errors.
    let out = portcullis(&["policy", "test", "-v", "p"], dir.path());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}{}", text(&out.stderr));
    for (name, verdict) in [
        ("test_admin_allowed", "PASS"),
        ("test_public_get", "PASS"),
        ("test_divide_by_zero", "FAIL"),
        ("test_this_fails", "FAIL"),
        ("test_data_default_used", "PASS"),
    ] {
        assert!(
            stdout.contains(&format!("data.app.authz_test.{name}: {verdict} (")),
            "{name}: {stdout}"
        );
    }
    assert!(stdout.contains("data.app.authz_test.todo_test_write_more: SKIPPED"));
    // A builtin error does not make the test an error (`opa test` does not raise
    // builtin errors): the call is undefined and the test fails at its line.
    assert!(
        stdout.contains("p/authz_test.rego:14: test failed"),
        "{stdout}"
    );
    assert!(stdout.contains("p/authz_test.rego:"));
    assert!(
        stdout.ends_with("PASS: 3/6\nFAIL: 2/6\nSKIPPED: 1/6\n"),
        "{stdout}"
    );

    // Without -v only failures and errors are listed.
    let out = portcullis(&["policy", "test", "p"], dir.path());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2));
    assert!(!stdout.contains("test_admin_allowed"), "{stdout}");
    // A failure names its file and line.
    assert!(
        stdout.contains("p/authz_test.rego:19: test failed"),
        "{stdout}"
    );
    assert!(stdout.contains("test_this_fails: FAIL"));
    assert!(stdout.contains("test_divide_by_zero: FAIL"));

    // --run selects tests: only passing ones selected → exit 0.
    let out = portcullis(
        &["policy", "test", "--run", "admin|public", "-v", "p"],
        dir.path(),
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.ends_with("PASS: 2/2\n"), "{stdout}");

    // Only the failing one → exit 2; only the erroring one → exit 2.
    let out = portcullis(&["policy", "test", "--run", "fails$", "p"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let out = portcullis(&["policy", "test", "--run", "divide", "p"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    // A skipped test is not a failure (with or without opa's -z).
    let out = portcullis(&["policy", "test", "--run", "todo_", "p"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let out = portcullis(&["policy", "test", "-z", "--run", "todo_", "p"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

#[test]
fn every_definition_of_a_test_counts() {
    // In Rego the two definitions would be OR'ed: the failing one must still fail.
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[(
            "d/dup_test.rego",
            "package dup_test\nimport rego.v1\n\ntest_same if false\ntest_same if true\ntest_string := \"not a boolean\"\n",
        )],
    );
    let out = portcullis(&["policy", "test", "-v", "d"], dir.path());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("data.dup_test.test_same: FAIL ("),
        "{stdout}"
    );
    assert!(
        stdout.contains("data.dup_test.test_same#01: PASS ("),
        "{stdout}"
    );
    assert!(
        stdout.contains("data.dup_test.test_string: FAIL ("),
        "{stdout}"
    );
    assert!(
        stdout.contains("d/dup_test.rego:4: test failed"),
        "{stdout}"
    );
}

#[test]
fn json_format() {
    let dir = fixture();
    let out = portcullis(&["policy", "test", "--format", "json", "p"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = v.as_array().unwrap();
    assert_eq!(results.len(), 6);
    let by_name = |n: &str| {
        results
            .iter()
            .find(|r| r["name"] == n)
            .unwrap_or_else(|| panic!("{n} missing"))
    };
    let pass = by_name("test_admin_allowed");
    assert_eq!(pass["package"], "data.app.authz_test");
    assert_eq!(pass["location"]["file"], "p/authz_test.rego");
    assert_eq!(pass["location"]["row"], 7);
    assert!(pass.get("fail").is_none() && pass.get("error").is_none());
    assert!(pass["duration"].as_u64().is_some());
    assert_eq!(by_name("test_this_fails")["fail"], true);
    assert_eq!(by_name("todo_test_write_more")["skip"], true);
    let divide = by_name("test_divide_by_zero");
    assert_eq!(divide["fail"], true, "{divide}");
    assert!(divide.get("error").is_none(), "{divide}");
}

#[test]
fn coverage_report() {
    let dir = fixture();
    let out = portcullis(
        &["policy", "test", "--coverage", "--run", "admin", "p"],
        dir.path(),
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    // Only the first allow rule ran: the public GET rule's body (line 12-13) is not covered.
    let line = stdout
        .lines()
        .find(|l| l.starts_with("p/authz.rego: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.contains("not covered: "), "{line}");
    assert!(line.contains("12") || line.contains("13"), "{line}");
    assert!(stdout.contains("total: "));

    let out = portcullis(
        &["policy", "test", "--coverage", "--format", "json", "p"],
        dir.path(),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 6);
    let pct = v["coverage"]["files"]["p/authz.rego"]["coverage"]
        .as_f64()
        .unwrap();
    assert!(pct > 50.0, "{v}");
}

#[test]
fn load_errors_exit_1_with_location() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[(
            "bad/x_test.rego",
            "package x_test\nimport rego.v1\n\ntest_a if {\n  1 = = 1\n}\n",
        )],
    );
    let out = portcullis(&["policy", "test", "bad"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("bad/x_test.rego:5:"), "{stderr}");

    let out = portcullis(&["policy", "test", "missing-dir"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("missing-dir"));
}

#[test]
fn test_timeout_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[(
            "t/slow_test.rego",
            "package slow_test\nimport rego.v1\n\ntest_slow if count([x | some i in numbers.range(1, 100000); some j in numbers.range(1, 100000); x := i * j]) > 0\ntest_fast if true\n",
        )],
    );
    let start = std::time::Instant::now();
    let out = portcullis(
        &["policy", "test", "--timeout", "200ms", "-v", "t"],
        dir.path(),
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("test_slow: ERROR"), "{stdout}");
    assert!(stdout.contains("test_fast: PASS"), "{stdout}");
}

#[test]
fn eval_prints_json() {
    let dir = fixture();
    write(
        dir.path(),
        &[
            ("input.json", r#"{"user": "bob"}"#),
            ("extra.json", r#"{"app": {"admins": ["carol"]}}"#),
        ],
    );
    // --data with a directory, --input with a file.
    let out = portcullis(
        &[
            "policy",
            "eval",
            "--data",
            "p",
            "--input",
            "input.json",
            "data.app.authz.allow",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"][0]["expressions"][0]["value"], true);
    assert_eq!(
        v["result"][0]["expressions"][0]["text"],
        "data.app.authz.allow"
    );

    // Input from standard input; a query with a binding.
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "policy",
            "eval",
            "-d",
            "p/authz.rego",
            "-d",
            "extra.json",
            "-i",
            "-",
            "x := data.app.authz.allow",
        ])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"user": "carol"}"#)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"][0]["bindings"]["x"], true, "{v}");

    // Undefined: {} and exit 0, or exit 1 with --fail.
    let out = portcullis(
        &["policy", "eval", "-d", "p", "data.app.authz.nothing"],
        dir.path(),
    );
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).trim(), "{}");
    let out = portcullis(
        &[
            "policy",
            "eval",
            "-d",
            "p",
            "--fail",
            "data.app.authz.nothing",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));

    // A bundle directory with a manifest.
    write(
        dir.path(),
        &[
            ("b/.manifest", r#"{"revision": "r1", "roots": ["app"]}"#),
            ("b/authz.rego", POLICY),
            ("b/app/data.json", r#"{"admins": ["dave"]}"#),
        ],
    );
    let out = portcullis(
        &[
            "policy",
            "eval",
            "--bundle",
            "b",
            "data.app.authz.allow",
            "--input",
            "input.json",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"][0]["expressions"][0]["value"], false);

    // A bad query reports an error and a non-zero exit.
    let out = portcullis(&["policy", "eval", "-d", "p", "data.app[["], dir.path());
    assert!(!out.status.success());
}

#[test]
fn check_reports_file_line_col() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            ("c/ok.rego", POLICY),
            (
                "c/bad.rego",
                "package bad\nimport rego.v1\n\nallow if input.x = = 1\n",
            ),
            (
                "c/worse.rego",
                "package worse\nimport rego.v1\nallow if {\n  x := \n",
            ),
        ],
    );
    let out = portcullis(&["policy", "check", "c"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("c/bad.rego:4:20: "), "{stderr}");
    assert!(stderr.contains("c/worse.rego:4:"), "{stderr}");
    assert!(stderr.contains("2 error(s)"), "{stderr}");

    std::fs::remove_file(dir.path().join("c/bad.rego")).unwrap();
    std::fs::remove_file(dir.path().join("c/worse.rego")).unwrap();
    let out = portcullis(&["policy", "check", "c"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A data conflict is a check failure naming the file.
    write(
        dir.path(),
        &[
            ("c/data.json", r#"{"app": {"admins": []}}"#),
            ("c/app/data.json", r#"{"admins": ["x"]}"#),
        ],
    );
    let out = portcullis(&["policy", "check", "c"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("data.json"),
        "{}",
        text(&out.stderr)
    );

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = portcullis(&["policy", "check", "policies"], root);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// `policy eval` treats builtin errors as `opa eval` does: non-strict by default
/// (the failing call is undefined), errors with `--strict-builtin-errors`; the
/// extension builtins (`io.jwt.*`) too.
#[test]
fn eval_builtin_errors_are_non_strict_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            (
                "p/p.rego",
                "package p\n\nimport rego.v1\n\nn := to_number(input.s)\n\nt := io.jwt.decode(input.s)\n\nok if not to_number(input.s)\n",
            ),
            ("input.json", r#"{"s": "not a number"}"#),
        ],
    );
    for query in ["data.p.n", "data.p.t"] {
        let args = [
            "policy",
            "eval",
            "--data",
            "p",
            "--input",
            "input.json",
            query,
        ];
        let out = portcullis(&args, dir.path());
        assert!(out.status.success(), "{query}: {}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v, serde_json::json!({}), "{query}: undefined");

        let mut strict = args.to_vec();
        strict.insert(2, "--strict-builtin-errors");
        let out = portcullis(&strict, dir.path());
        assert!(!out.status.success(), "{query}: strict must fail");
        assert!(
            text(&out.stderr).contains("p.rego"),
            "{}",
            text(&out.stderr)
        );
    }
    // Non-strict, `not` of a failing call holds, as in OPA-Envoy.
    let out = portcullis(
        &[
            "policy",
            "eval",
            "--data",
            "p",
            "--input",
            "input.json",
            "data.p.ok",
        ],
        dir.path(),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"][0]["expressions"][0]["value"], true);
}
