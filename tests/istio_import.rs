//! `portcullis import istio` as a user runs it: the real binary imports a mesh's
//! exported security resources, `portcullis policy test` passes the generated
//! tests, `portcullis policy eval` decides requests in Istio's order with reasons
//! that name the deciding resource, and unsupported fields are errors that name
//! the resource, the field and why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn fixture() -> String {
    format!(
        "{}/tests/fixtures/istio/mesh.yaml",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn import(out: &Path) {
    let o = run(&[
        "import",
        "istio",
        "-f",
        &fixture(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains(
            "imported 5 AuthorizationPolicy, 2 PeerAuthentication, 1 RequestAuthentication"
        ),
        "{}",
        text(&o.stdout)
    );
    assert!(
        text(&o.stderr).contains("skipped ConfigMap unrelated"),
        "{}",
        text(&o.stderr)
    );
}

/// The sidecar's labels, as an operator provides them next to the imported policies.
fn with_labels(dir: &Path, labels: Value) {
    let d = dir.join("portcullis/workload");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("data.json"), json!({"labels": labels}).to_string()).unwrap();
}

struct Req {
    workload_ns: &'static str,
    principal: Option<&'static str>,
    method: &'static str,
    path: &'static str,
    host: &'static str,
    port: u16,
    headers: Value,
    claims: Option<Value>,
    /// An opaque TCP connection: no `attributes.request`.
    tcp: bool,
}

impl Default for Req {
    fn default() -> Req {
        Req {
            workload_ns: "shop",
            principal: Some("spiffe://cluster.local/ns/shop/sa/frontend"),
            method: "GET",
            path: "/orders/1",
            host: "orders.shop.svc.cluster.local",
            port: 8080,
            headers: json!({}),
            claims: None,
            tcp: false,
        }
    }
}

impl Req {
    fn input(&self) -> Value {
        let mut source =
            json!({"address": {"socketAddress": {"address": "10.1.0.7", "portValue": 35568}}});
        if let Some(p) = self.principal {
            source["principal"] = json!(p);
        }
        let mut headers = self.headers.clone();
        headers[":authority"] = json!(self.host);
        let mut attrs = json!({
            "source": source,
            "destination": {
                "address": {"socketAddress": {"address": "10.1.0.9", "portValue": self.port}},
                "principal": format!("spiffe://cluster.local/ns/{}/sa/orders", self.workload_ns),
            },
            "request": {"http": {"method": self.method, "path": self.path, "host": self.host, "headers": headers}},
        });
        if self.tcp {
            attrs.as_object_mut().unwrap().remove("request");
        }
        if let Some(c) = &self.claims {
            attrs["metadataContext"] =
                json!({"filterMetadata": {"envoy.filters.http.jwt_authn": {"jwt_payload": c}}});
        }
        json!({"attributes": attrs})
    }
}

/// `policy eval` of the inbound query: (allowed, reason).
fn decide(dir: &Path, r: &Req) -> (bool, String) {
    let f = dir.join("input.json.tmp");
    std::fs::write(&f, r.input().to_string()).unwrap();
    let o = run(&[
        "policy",
        "eval",
        "--input",
        f.to_str().unwrap(),
        "--data",
        dir.to_str().unwrap(),
        "data.envoy.authz.allow",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let v = &v["result"][0]["expressions"][0]["value"];
    (
        v["allowed"].as_bool().unwrap(),
        v["reason"].as_str().unwrap_or_default().to_owned(),
    )
}

#[test]
fn imported_directory_passes_its_generated_tests() {
    let tmp = tempfile::tempdir().unwrap();
    import(tmp.path());
    for f in [
        "istio/lib.rego",
        "istio/workload.rego",
        "istio/authn.rego",
        "istio/peer.rego",
        "envoy/authz/istio.rego",
        "istio/authz/shop/orders_read.rego",
        "istio/authz/shop/orders_read_test.rego",
        "istio/authz/vault/lockdown.rego",
    ] {
        assert!(tmp.path().join(f).is_file(), "{f} missing");
    }
    let module =
        std::fs::read_to_string(tmp.path().join("istio/authz/shop/orders_read.rego")).unwrap();
    assert!(
        module.contains("# AuthorizationPolicy shop/orders-read (action ALLOW)"),
        "{module}"
    );
    assert!(
        module.contains("package istio.authz.ns_shop.orders_read"),
        "{module}"
    );

    let o = run(&["policy", "check", tmp.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    let o = run(&[
        "policy",
        "test",
        "--format",
        "json",
        tmp.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    let results: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    // 5 policies: applies (+ other namespace except the root one), per rule matches and misses.
    assert_eq!(results.len(), 20, "{results:?}");
    assert!(results
        .iter()
        .all(|r| r["fail"].as_bool() != Some(true) && r.get("error").is_none()));
    let names: Vec<&str> = results.iter().filter_map(|r| r["name"].as_str()).collect();
    for n in [
        "test_rule_1_matches",
        "test_rule_1_misses",
        "test_no_rules_match_nothing",
    ] {
        assert!(names.contains(&n), "{names:?}");
    }

    let fragment = std::fs::read_to_string(tmp.path().join("config-fragment.yaml")).unwrap();
    for want in [
        "mtls: permissive",
        "issuer: \"https://idp.example\"",
        "audiences: [\"orders\"]",
        "jwks: {url: \"https://idp.example/.well-known/jwks.json\"}",
        "from: [{header: \"authorization\", prefix: \"Bearer \"}, {query: \"access_token\"}]",
        "claims_to_headers: [{claim: \"sub\", header: \"x-user\"}]",
    ] {
        assert!(fragment.contains(want), "{want} not in {fragment}");
    }
}

#[test]
fn decisions_follow_istio_order_and_name_the_deciding_resource() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    import(dir);

    // Without the workload's labels, label selectors cannot be resolved: deny.
    let (ok, why) = decide(
        dir,
        &Req {
            headers: json!({"x-tenant": "acme"}),
            ..Req::default()
        },
    );
    assert!(!ok);
    assert!(why.contains("selects workloads by label"), "{why}");

    with_labels(dir, json!({"app": "orders", "version": "v1"}));
    let writer = json!({"iss": "https://idp.example", "sub": "alice", "aud": "orders", "role": "writer", "org": {"tier": "gold"}});
    let cases: Vec<(&str, Req, bool, &str)> = vec![
        ("principal, method, path prefix and header", Req { headers: json!({"x-tenant": "acme"}), ..Req::default() }, true, "allowed by AuthorizationPolicy shop/orders-read"),
        ("header suffix pattern", Req { headers: json!({"x-tenant": "big-corp"}), ..Req::default() }, true, "allowed by AuthorizationPolicy shop/orders-read"),
        ("path template", Req { path: "/users/7/orders", headers: json!({"x-tenant": "acme"}), ..Req::default() }, true, "orders-read"),
        ("template is one segment", Req { path: "/users/7/8/orders", headers: json!({"x-tenant": "acme"}), ..Req::default() }, false, "no rule of AuthorizationPolicy istio-system/health, AuthorizationPolicy shop/orders-read matched"),
        ("missing header", Req::default(), false, "no rule of"),
        ("principal prefix", Req { principal: Some("spiffe://cluster.local/ns/batch/sa/nightly"), headers: json!({"x-tenant": "acme"}), ..Req::default() }, true, "orders-read"),
        ("namespace", Req { principal: Some("spiffe://cluster.local/ns/reporting/sa/x"), headers: json!({"x-tenant": "acme"}), ..Req::default() }, true, "orders-read"),
        ("other namespace", Req { principal: Some("spiffe://cluster.local/ns/web/sa/x"), headers: json!({"x-tenant": "acme"}), ..Req::default() }, false, "no rule of"),
        ("DENY first", Req { method: "DELETE", headers: json!({"x-tenant": "acme"}), ..Req::default() }, false, "denied by AuthorizationPolicy shop/no-delete"),
        ("DENY's notValues", Req { method: "DELETE", principal: Some("spiffe://cluster.local/ns/ops/sa/admin"), ..Req::default() }, false, "no rule of"),
        ("JWT claims, nested claim, host prefix; AUDIT logs", Req { method: "POST", path: "/orders", claims: Some(writer.clone()), ..Req::default() }, true, "allowed by AuthorizationPolicy shop/orders-read; audited by AuthorizationPolicy shop/log-writes"),
        ("nested claim notValues", Req { method: "POST", path: "/orders", claims: Some(json!({"iss": "https://idp.example", "sub": "bob", "role": "writer", "org": {"tier": "free"}})), ..Req::default() }, false, "no rule of"),
        ("notPaths", Req { method: "POST", path: "/orders/admin/x", claims: Some(writer.clone()), ..Req::default() }, false, "no rule of"),
        ("token of an issuer without RequestAuthentication", Req { method: "POST", path: "/orders", claims: Some(json!({"iss": "https://other.example", "sub": "alice", "role": "writer"})), ..Req::default() }, false, "no rule of"),
        ("mesh-wide rule with port", Req { path: "/healthz", principal: Some("spiffe://cluster.local/ns/web/sa/x"), ..Req::default() }, true, "allowed by AuthorizationPolicy istio-system/health"),
        ("port mismatch", Req { path: "/healthz", port: 8081, principal: Some("spiffe://cluster.local/ns/web/sa/x"), ..Req::default() }, false, "no rule of"),
        ("STRICT refuses plain text", Req { principal: None, headers: json!({"x-tenant": "acme"}), ..Req::default() }, false, "plain text refused: PeerAuthentication istio-system/default requires mutual TLS (STRICT)"),
        ("port-level PERMISSIVE", Req { principal: None, port: 9090, path: "/healthz", ..Req::default() }, false, "no rule of"),
        ("spec: {} allows nothing", Req { workload_ns: "vault", ..Req::default() }, false, "no rule of AuthorizationPolicy istio-system/health, AuthorizationPolicy vault/lockdown matched"),
        ("but the mesh-wide ALLOW still applies", Req { workload_ns: "vault", path: "/healthz", ..Req::default() }, true, "allowed by AuthorizationPolicy istio-system/health"),
    ];
    // Opaque TCP: HTTP-only fields make ALLOW rules miss and are ignored in DENY rules
    // (so no-delete's `methods: [DELETE]` drops out and its namespace condition decides).
    let tcp: Vec<(&str, Req, bool, &str)> = vec![
        (
            "TCP: DENY without its HTTP-only field",
            Req {
                tcp: true,
                ..Req::default()
            },
            false,
            "denied by AuthorizationPolicy shop/no-delete",
        ),
        (
            "TCP: ALLOW rules with HTTP-only fields miss",
            Req {
                tcp: true,
                principal: Some("spiffe://cluster.local/ns/ops/sa/admin"),
                ..Req::default()
            },
            false,
            "no rule of",
        ),
    ];
    for (name, req, allowed, reason) in cases.into_iter().chain(tcp) {
        let (ok, why) = decide(dir, &req);
        assert_eq!(ok, allowed, "{name}: {why}");
        assert!(
            why.contains(reason),
            "{name}: reason {why:?} lacks {reason:?}"
        );
    }
}

fn import_text(yaml: &str, extra: &[&str]) -> Output {
    let tmp = tempfile::tempdir().unwrap();
    import_into_with(tmp.path(), yaml, extra)
}

fn import_into(dir: &Path, yaml: &str) -> Output {
    import_into_with(dir, yaml, &[])
}

/// `import istio -f - -o DIR` with `yaml` on standard input.
fn import_into_with(dir: &Path, yaml: &str, extra: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(["import", "istio", "-f", "-", "-o"])
        .arg(dir)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ap(name: &str, spec: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n{spec}")
}

#[test]
fn unsupported_and_invalid_fields_name_resource_field_and_reason() {
    let cases: Vec<(String, &str)> = vec![
        (ap("ext", "  action: CUSTOM\n  provider: {name: opa}\n  rules: [{}]\n"), "AuthorizationPolicy shop/ext: spec.action: not supported: CUSTOM delegates to the extension provider \"opa\""),
        (ap("sni", "  rules:\n  - when:\n    - key: connection.sni\n      values: [a]\n"), "AuthorizationPolicy shop/sni: spec.rules[0].when[0].key: not supported: connection.sni"),
        (ap("typo", "  rules:\n  - to:\n    - operation: {pathz: [/a]}\n"), "AuthorizationPolicy shop/typo: spec.rules[0].to[0].operation.pathz: unknown field `pathz`"),
        (ap("waypoint", "  targetRefs: [{kind: Service, name: x}]\n"), "AuthorizationPolicy shop/waypoint: spec.targetRefs: not supported"),
        (ap("cidr", "  rules:\n  - from:\n    - source: {ipBlocks: [10.0.0.300/8]}\n"), "spec.rules[0].from[0].source.ipBlocks: invalid: \"10.0.0.300/8\""),
        (ap("port", "  rules:\n  - to:\n    - operation: {ports: [http]}\n"), "spec.rules[0].to[0].operation.ports: invalid: \"http\""),
        (ap("tmpl", "  rules:\n  - to:\n    - operation: {paths: [\"/a/{**}/b\"]}\n"), "{**} must be the last segment"),
        (ap("cond", "  rules:\n  - when:\n    - key: request.headers[x]\n"), "spec.rules[0].when[0]: invalid: a condition needs values or notValues"),
        (ap("key", "  rules:\n  - when:\n    - key: destination.labels[app]\n      values: [a]\n"), "spec.rules[0].when[0].key: not supported: \"destination.labels[app]\""),
        (ap("empty", "  rules:\n  - from:\n    - source: {}\n"), "spec.rules[0].from[0].source: invalid: an empty source"),
        ("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: off, namespace: shop}\nspec: {mtls: {mode: DISABLE}}\n".into(), "PeerAuthentication shop/off: spec.mtls.mode: not supported: DISABLE"),
        ("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: ra, namespace: shop}\nspec:\n  jwtRules:\n  - {issuer: a, jwksUri: 'https://a/k', outputPayloadToHeader: x-payload}\n".into(), "RequestAuthentication shop/ra: spec.jwtRules[0].outputPayloadToHeader: not supported"),
        ("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: ra, namespace: shop}\nspec:\n  jwtRules:\n  - {issuer: a}\n".into(), "spec.jwtRules[0].jwksUri: not supported: OpenID discovery"),
        ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: ../../etc}\nspec: {}\n".into(), "namespace \"../../etc\" is not a Kubernetes namespace name"),
        ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: Bad_Name}\nspec: {}\n".into(), "metadata.name \"Bad_Name\" is not a Kubernetes object name"),
        ("apiVersion: security.istio.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: old}\nspec: {}\n".into(), "apiVersion security.istio.io/v1alpha1 is not v1 or v1beta1"),
    ];
    for (yaml, want) in &cases {
        let o = import_text(yaml, &[]);
        assert!(!o.status.success(), "{yaml} was accepted");
        assert!(
            text(&o.stderr).contains(want),
            "{yaml}: {} lacks {want}",
            text(&o.stderr)
        );
    }
    // --skip-custom proceeds without the CUSTOM policy, and says so.
    let o = import_text(&cases[0].0, &["--skip-custom"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stderr)
        .contains("AuthorizationPolicy shop/ext: CUSTOM policy (provider \"opa\") skipped"));
}

/// `inject` mounts the pod's labels through the downward API and points
/// `policy.workload_labels` at them, in a configuration the sidecar accepts.
#[test]
fn inject_gives_the_sidecar_its_labels() {
    let fixture = format!(
        "{}/tests/fixtures/k8s/deployment-probes.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let o = run(&["inject", "-f", &fixture]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let doc: Value = serde_yaml::from_str(&text(&o.stdout)).unwrap();
    let pod = &doc["spec"]["template"];
    let config = pod["metadata"]["annotations"]["portcullis.io/config"]
        .as_str()
        .unwrap();
    assert!(
        config.contains("workload_labels: /etc/portcullis/config/labels"),
        "{config}"
    );
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    let items: Vec<&Value> = volumes
        .iter()
        .filter_map(|v| v["downwardAPI"]["items"].as_array())
        .flatten()
        .collect();
    assert!(
        items
            .iter()
            .any(|i| i["path"] == "labels" && i["fieldRef"]["fieldPath"] == "metadata.labels"),
        "{items:?}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("portcullis.yaml");
    std::fs::write(&file, config).unwrap();
    let o = run(&["run", "--check-config", "--config", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

/// Importing again replaces the previous import (a removed policy must not linger),
/// and a foreign `istio/` directory is never overwritten.
#[test]
fn reimport_replaces_the_previous_import_only() {
    let tmp = tempfile::tempdir().unwrap();
    import(tmp.path());
    let o = import_into(tmp.path(), &ap("only", "  rules: [{}]\n"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!tmp
        .path()
        .join("istio/authz/shop/orders_read.rego")
        .exists());
    assert!(tmp.path().join("istio/authz/shop/only.rego").exists());

    let foreign = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(foreign.path().join("istio")).unwrap();
    std::fs::write(foreign.path().join("istio/mine.rego"), "package mine\n").unwrap();
    let o = import_into(foreign.path(), &ap("only", "  rules: [{}]\n"));
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("was not written by `portcullis import istio`"));
    assert!(foreign.path().join("istio/mine.rego").exists());
}
