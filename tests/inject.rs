//! `portcullis inject` as a child process on real-world manifests, and every
//! manifest under `deploy/`: all validated against the Kubernetes schemas offline
//! (k8s-openapi round trip, see `k8s_schema`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod k8s_schema;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use k8s_schema::{docs, validate, Checked};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/k8s")
        .join(name)
}

/// Runs `portcullis inject` with `args`, feeding `stdin`; returns (stdout, stderr).
fn inject(args: &[&str], stdin: &str) -> (String, String) {
    let mut child = Command::new(BIN)
        .arg("inject")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (o, e) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(out.status.success(), "inject {args:?} failed: {e}");
    (o, e)
}

fn validate_all(docs: &[Value]) {
    for d in docs {
        match validate(d) {
            Ok(Checked::Schema(_)) => {}
            other => panic!("{other:?} for {}", serde_yaml::to_string(d).unwrap()),
        }
    }
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|a| a.iter().map(|c| c["name"].as_str().unwrap()).collect())
        .unwrap_or_default()
}

fn env_probes(sidecar: &Value) -> Value {
    let env = sidecar["env"].as_array().unwrap();
    let v = env
        .iter()
        .find(|e| e["name"] == "PORTCULLIS_APP_PROBES")
        .unwrap();
    serde_json::from_str(v["value"].as_str().unwrap()).unwrap()
}

fn args_of(c: &Value) -> Vec<String> {
    c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .map(|i| args[i + 1].clone())
}

fn check_injected_template(t: &Value, native: bool) {
    let spec = &t["spec"];
    let inits = spec["initContainers"].as_array().unwrap();
    assert_eq!(inits[0]["name"], "portcullis-init");
    let init = &inits[0];
    assert_eq!(init["securityContext"]["runAsUser"], 0);
    assert_eq!(
        init["securityContext"]["capabilities"]["add"],
        serde_json::json!(["NET_ADMIN", "NET_RAW"])
    );
    let args = args_of(init);
    assert_eq!(&args[..2], ["iptables", "--apply"]);
    assert_eq!(flag(&args, "--proxy-uid").as_deref(), Some("1337"));
    assert_eq!(flag(&args, "--inbound-port").as_deref(), Some("15006"));
    assert_eq!(flag(&args, "--outbound-port").as_deref(), Some("15001"));
    assert!(flag(&args, "--exclude-inbound-ports")
        .unwrap()
        .split(',')
        .any(|p| p == "15000"));
    let sidecar = if native {
        assert_eq!(inits[1]["name"], "portcullis");
        assert_eq!(inits[1]["restartPolicy"], "Always");
        &inits[1]
    } else {
        let c = &spec["containers"][0];
        assert_eq!(c["name"], "portcullis");
        assert!(c.get("restartPolicy").is_none());
        c
    };
    assert_eq!(sidecar["securityContext"]["runAsUser"], 1337);
    assert_eq!(sidecar["securityContext"]["runAsNonRoot"], true);
    assert_eq!(sidecar["startupProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(
        sidecar["image"].as_str().unwrap(),
        format!(
            "ghcr.io/portcullis/portcullis:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
    assert!(sidecar["resources"]["requests"]["memory"].is_string());
    let vols = names(&spec["volumes"]);
    for v in [
        "portcullis-svid",
        "portcullis-policies",
        "portcullis-config",
    ] {
        assert!(vols.contains(&v), "{vols:?}");
    }
    let svid = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "portcullis-svid")
        .unwrap();
    assert_eq!(svid["csi"]["driver"], "spiffe.csi.cert-manager.io");
    let ann = &t["metadata"]["annotations"];
    assert_eq!(ann["portcullis.io/status"], "injected");
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], "15000");
    // The configuration the sidecar will read (downward API) is a valid one.
    portcullis::config::Config::from_yaml_str(
        ann["portcullis.io/config"].as_str().unwrap(),
        "annotation",
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn deployment_with_http_tcp_and_grpc_probes() {
    let input = std::fs::read_to_string(fixture("deployment-probes.yaml")).unwrap();
    validate_all(&docs(&input));
    let (out, err) = inject(
        &["-f", fixture("deployment-probes.yaml").to_str().unwrap()],
        "",
    );
    assert!(err.contains("Deployment/orders: injected"), "{err}");
    let out = docs(&out);
    assert_eq!(out.len(), 1);
    validate_all(&out);
    let t = &out[0]["spec"]["template"];
    check_injected_template(t, true);
    let spec = &t["spec"];
    assert_eq!(
        names(&spec["initContainers"]),
        ["portcullis-init", "portcullis", "migrate"]
    );
    assert_eq!(names(&spec["containers"]), ["api", "grpc"]);
    let args = args_of(&spec["initContainers"][0]);
    assert_eq!(
        flag(&args, "--exclude-inbound-ports").as_deref(),
        Some("15000,9090")
    );
    assert_eq!(
        flag(&args, "--exclude-outbound-cidrs").as_deref(),
        Some("169.254.169.254/32")
    );
    let api = &spec["containers"][0];
    for (probe, kind) in [("livenessProbe", "livez"), ("readinessProbe", "readyz")] {
        assert_eq!(
            api[probe]["httpGet"]["path"],
            format!("/app-health/api/{kind}")
        );
        assert_eq!(api[probe]["httpGet"]["port"], 15000);
        assert!(api[probe].get("tcpSocket").is_none());
    }
    assert_eq!(api["livenessProbe"]["timeoutSeconds"], 2);
    assert_eq!(api["startupProbe"]["exec"]["command"][0], "cat");
    let grpc = &spec["containers"][1];
    assert_eq!(
        grpc["readinessProbe"]["httpGet"]["path"],
        "/app-health/grpc/readyz"
    );
    assert!(grpc["readinessProbe"].get("grpc").is_none());
    let probes = env_probes(&spec["initContainers"][1]);
    assert_eq!(
        probes["api/livez"]["httpGet"]["port"], 8080,
        "named port resolved"
    );
    assert_eq!(
        probes["api/livez"]["httpGet"]["httpHeaders"][0]["value"],
        "liveness"
    );
    assert_eq!(probes["api/readyz"]["tcpSocket"]["port"], 8080);
    assert_eq!(probes["grpc/readyz"]["grpc"]["service"], "orders.v1.Orders");
    assert!(probes.get("api/startupz").is_none());
    // The runner in the sidecar accepts what inject wrote.
    portcullis::k8s::probe::AppProbes::from_json(&probes.to_string()).unwrap();
    // Untouched parts stay as they were.
    assert_eq!(
        out[0]["spec"]["strategy"]["rollingUpdate"]["maxSurge"],
        "25%"
    );
    assert_eq!(api["resources"]["limits"]["memory"], "512Mi");
}

#[test]
fn cronjob() {
    let (out, err) = inject(&["-f", fixture("cronjob.yaml").to_str().unwrap()], "");
    assert!(err.contains("CronJob/nightly-report: injected"), "{err}");
    let out = docs(&out);
    validate_all(&out);
    let t = &out[0]["spec"]["jobTemplate"]["spec"]["template"];
    check_injected_template(t, true);
    let args = args_of(&t["spec"]["initContainers"][0]);
    assert_eq!(
        flag(&args, "--exclude-outbound-ports").as_deref(),
        Some("5432,6379")
    );
    assert_eq!(t["spec"]["restartPolicy"], "OnFailure");
}

#[test]
fn multi_document_file_and_list() {
    let path = fixture("multi.yaml");
    let input = docs(&std::fs::read_to_string(&path).unwrap());
    validate_all(&input);
    let (out, err) = inject(&["-f", path.to_str().unwrap()], "");
    let out = docs(&out);
    assert_eq!(out.len(), input.len());
    validate_all(&out);
    // Other kinds pass through unchanged.
    assert_eq!(out[0], input[0]);
    assert_eq!(out[1], input[1]);
    // The StatefulSet asked for a classic sidecar container.
    check_injected_template(&out[2]["spec"]["template"], false);
    assert_eq!(
        out[2]["spec"]["volumeClaimTemplates"],
        input[2]["spec"]["volumeClaimTemplates"]
    );
    let items = out[3]["items"].as_array().unwrap();
    check_injected_template(&items[0]["spec"]["template"], true);
    assert_eq!(items[1], input[3]["items"][1], "opted-out pod unchanged");
    assert_eq!(items[2], input[3]["items"][2], "hostNetwork pod unchanged");
    check_injected_template(&out[4]["spec"]["template"], true);
    check_injected_template(&out[5]["spec"]["template"], true);
    for line in [
        "StatefulSet/cache: injected",
        "DaemonSet/node-agent: injected",
        "Pod/debug: skipped (portcullis.io/inject is \"false\")",
        "Pod/node-exporter: skipped (hostNetwork",
        "ReplicaSet/legacy: injected",
        "Job/backfill: injected",
    ] {
        assert!(err.contains(line), "{line} not in {err}");
    }
}

#[test]
fn injecting_twice_changes_nothing_and_stdin_works() {
    for f in ["deployment-probes.yaml", "cronjob.yaml", "multi.yaml"] {
        let input = std::fs::read_to_string(fixture(f)).unwrap();
        let (once, _) = inject(&[], &input);
        let (twice, err) = inject(&["-f", "-"], &once);
        assert_eq!(once, twice, "{f}");
        assert!(!err.contains(": injected"), "{err}");
    }
}

#[test]
fn json_input_options_and_errors() {
    let pod = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                  "spec": {"containers": [{"name": "app", "image": "app:1"}]}}"#;
    let (out, _) = inject(
        &[
            "--sidecar-mode",
            "container",
            "--svid",
            "spire",
            "--image",
            "example/pc:dev",
        ],
        pod,
    );
    let out = docs(&out);
    validate_all(&out);
    let spec = &out[0]["spec"];
    assert_eq!(names(&spec["containers"]), ["portcullis", "app"]);
    assert_eq!(spec["containers"][0]["image"], "example/pc:dev");
    let svid = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "portcullis-svid")
        .unwrap();
    assert_eq!(svid["csi"]["driver"], "csi.spiffe.io");
    let cfg = portcullis::config::Config::from_yaml_str(
        out[0]["metadata"]["annotations"]["portcullis.io/config"]
            .as_str()
            .unwrap(),
        "annotation",
    )
    .unwrap();
    assert!(matches!(
        cfg.identity,
        portcullis::config::IdentityConfig::WorkloadApi(_)
    ));

    let (out, _) = inject(&["--svid", "secret", "--svid-secret", "orders-svid"], pod);
    let out = docs(&out);
    validate_all(&out);
    let svid = out[0]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "portcullis-svid")
        .unwrap()
        .clone();
    assert_eq!(svid["secret"]["secretName"], "orders-svid");

    // Errors name the problem and the object; nothing is written.
    let run = |args: &[&str], stdin: &str| {
        let mut c = Command::new(BIN)
            .arg("inject")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A command that fails on its arguments exits before reading stdin: the
        // write may then meet a closed pipe, which is not what is tested here.
        let _ = c.stdin.take().unwrap().write_all(stdin.as_bytes());
        c.wait_with_output().unwrap()
    };
    let o = run(&["--svid", "secret"], pod);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--svid-secret"));
    let bad = pod.replace(
        r#""name": "p"}"#,
        r#""name": "p", "annotations": {"portcullis.io/exclude-outbound-cidrs": "10.0.0.0/33"}}"#,
    );
    let o = run(&[], &bad);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("Pod/p") && e.contains("10.0.0.0/33"), "{e}");
    assert!(o.stdout.is_empty());
    let o = run(&[], "a: [\n");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not valid YAML"));
}

// --- deploy/ ---

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn kubectl_kustomize(dir: &Path) -> Option<String> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        panic!(
            "kubectl kustomize {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Some(String::from_utf8(out.stdout).unwrap())
}

/// Renders a kustomization without kustomize: its `resources` (recursively) and
/// `configMapGenerator` ConfigMaps, with `namespace` applied. Patches are not
/// applied (they are validated when kubectl is there).
fn render_by_hand(dir: &Path) -> Vec<Value> {
    let k: Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    let mut out = Vec::new();
    for r in k["resources"].as_array().into_iter().flatten() {
        let p = dir.join(r.as_str().unwrap());
        if p.is_dir() {
            out.extend(render_by_hand(&p));
        } else {
            out.extend(docs(&std::fs::read_to_string(&p).unwrap()));
        }
    }
    for g in k["configMapGenerator"].as_array().into_iter().flatten() {
        let mut data = serde_json::Map::new();
        for f in g["files"].as_array().unwrap() {
            let p = dir.join(f.as_str().unwrap());
            let name = p.file_name().unwrap().to_str().unwrap().to_owned();
            data.insert(name, Value::String(std::fs::read_to_string(&p).unwrap()));
        }
        out.push(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": g["name"]}, "data": data}));
    }
    if let Some(ns) = k["namespace"].as_str() {
        for d in &mut out {
            if d["kind"] != "Namespace"
                && d["kind"] != "MutatingWebhookConfiguration"
                && d["kind"] != "ClusterIssuer"
            {
                d["metadata"]["namespace"] = Value::String(ns.to_owned());
            }
        }
    }
    out
}

#[test]
fn every_deploy_manifest_validates() {
    let kustomizations = [
        "base",
        "overlays/cert-manager",
        "overlays/spire",
        "monitoring",
    ];
    let have_kubectl = Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_kubectl {
        eprintln!("NOTE: kubectl not installed: kustomizations rendered by hand (resources and generators; patches not applied)");
    }
    let mut schema = 0;
    for k in kustomizations {
        let dir = deploy().join(k);
        let rendered = if have_kubectl {
            docs(&kubectl_kustomize(&dir).unwrap())
        } else {
            render_by_hand(&dir)
        };
        assert!(!rendered.is_empty(), "{k}");
        for d in &rendered {
            match validate(d) {
                Ok(Checked::Schema(_)) => schema += 1,
                Ok(Checked::CustomResource(_)) => {}
                Err(e) => panic!("{k}: {} {}: {e}", d["kind"], d["metadata"]["name"]),
            }
        }
        // The webhook's args are ones the binary accepts.
        for d in rendered.iter().filter(|d| d["kind"] == "Deployment") {
            let args = args_of(&d["spec"]["template"]["spec"]["containers"][0]);
            let out = Command::new(BIN)
                .args(&args)
                .arg("--help")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{k}: {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if k == "overlays/cert-manager" && have_kubectl {
            let mwc = rendered
                .iter()
                .find(|d| d["kind"] == "MutatingWebhookConfiguration")
                .unwrap();
            assert_eq!(
                mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
                "portcullis-system/portcullis-webhook"
            );
        }
    }
    assert!(schema >= 8, "{schema}");
    // The dashboard is JSON and uses the metric names the sidecar exports.
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("monitoring/portcullis-dashboard.json")).unwrap(),
    )
    .unwrap();
    let text = dash.to_string();
    for m in [
        "portcullis_requests_total",
        "portcullis_request_duration_seconds_bucket",
        "portcullis_policy_evaluation_duration_seconds_bucket",
        "portcullis_policy_errors_total",
        "portcullis_tls_handshake_failures_total",
        "portcullis_identity_cert_expiry_timestamp_seconds",
        "portcullis_policy_reloads_total",
        "portcullis_identity_reloads_total",
    ] {
        assert!(text.contains(m), "{m}");
        let base = m.trim_end_matches("_bucket");
        let metrics_rs =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics.rs"))
                .unwrap();
        assert!(
            metrics_rs.contains(&format!("\"{base}\"")),
            "{base} is not defined in src/metrics.rs"
        );
    }
}

#[test]
fn deploy_policies_are_a_current_copy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in ["authz.rego", "outbound.rego", "data.yaml"] {
        assert_eq!(
            std::fs::read_to_string(root.join("policies").join(f)).unwrap(),
            std::fs::read_to_string(root.join("deploy/base/policies").join(f)).unwrap(),
            "deploy/base/policies/{f} differs from policies/{f}: copy it again"
        );
    }
}
