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
    let src = format!("package a\nimport rego.v1\ncert := \"{pem}\"\nallow if count(cert) > 0\n");
    let mut engine = new_engine();
    engine
        .add_policy("p.rego".to_string(), src)
        .unwrap_or_else(|e| panic!("{e}"));
}
