//! The sidecar injection itself, shared by `portcullis inject` and the webhook.
//!
//! The mutation works on `serde_json::Value`s rather than typed objects so that
//! fields unknown to this build's Kubernetes schema pass through unchanged. The
//! containers and volumes it adds are built from k8s-openapi types, so their field
//! names are the schema's.
//!
//! What a pod gets:
//! - `portcullis-init`: `portcullis iptables --apply ...` as root with `NET_ADMIN`
//!   and `NET_RAW`, first of the init containers;
//! - `portcullis`: the sidecar, as a native sidecar (init container with
//!   `restartPolicy: Always`, started before the app and held until its
//!   `startupProbe` passes) or as a classic first container; UID 1337;
//! - volumes: the SVID (csi-driver-spiffe CSI volume, a Secret, or the SPIRE
//!   agent socket through the SPIFFE CSI driver), the policies ConfigMap and the
//!   sidecar configuration, projected from the pod annotation
//!   `portcullis.io/config` through the downward API with the pod's labels
//!   beside it (`policy.workload_labels`);
//! - the app's HTTP/TCP/gRPC probes rewritten to `/app-health/...` on the admin
//!   port, the originals passed in `PORTCULLIS_APP_PROBES`;
//! - Prometheus scrape annotations (unless the pod already has its own).
//!
//! A pod that already has the sidecar is left as it is, so injecting twice
//! changes nothing.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

mod pod_spec;
mod settings;

use self::pod_spec::{init_container, pod_volumes, rewrite_probes, sidecar_container};
pub use self::pod_spec::{iptables_args, sidecar_config, sidecar_config_for};
pub use self::settings::*;

/// The protocol a container port's name implies, as Istio reads port names: gRPC and
/// HTTP/2 ports speak HTTP/2 with prior knowledge (gRPC-Web does not).
fn protocol_of_port_name(name: &str) -> Option<&'static str> {
    let name = name.to_ascii_lowercase();
    if name.starts_with("grpc-web") {
        None
    } else if name.starts_with("grpc") || name.starts_with("http2") || name.starts_with("h2c") {
        Some("http2")
    } else {
        None
    }
}

/// Container ports whose names imply a protocol.
fn named_port_protocols(template: &Value) -> BTreeMap<u16, &'static str> {
    let mut out = BTreeMap::new();
    let containers = template
        .get("spec")
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array);
    for c in containers.into_iter().flatten() {
        for p in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = p.get("name").and_then(Value::as_str).unwrap_or("");
            let port = p
                .get("containerPort")
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n != 0);
            if let (Some(port), Some(proto)) = (port, protocol_of_port_name(name)) {
                out.insert(port, proto);
            }
        }
    }
    out
}

/// Why a manifest could not be injected.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// The input is not YAML/JSON.
    #[error("document {doc}: not valid YAML: {message}")]
    Yaml {
        /// 1-based document number in the input.
        doc: usize,
        /// The parser's message.
        message: String,
    },
    /// An annotation value is malformed.
    #[error("{object}: annotation {annotation}: {message}")]
    Annotation {
        /// `Kind/name` of the object.
        object: String,
        /// The annotation key.
        annotation: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The object's shape is not what its kind requires.
    #[error("{object}: {message}")]
    Shape {
        /// `Kind/name` of the object.
        object: String,
        /// What is wrong.
        message: String,
    },
    /// Output could not be rendered.
    #[error("rendering YAML: {0}")]
    Render(String),
}

/// What happened to one pod template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The sidecar was added.
    Injected,
    /// Left unchanged, with the reason.
    Skipped(String),
}

/// What happened to one object of a manifest (`Kind/name: outcome`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `Kind/name`.
    pub object: String,
    /// Injected or skipped, and why.
    pub outcome: Outcome,
}

fn object_name(obj: &Value) -> String {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("?");
    let meta = obj.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .or_else(|| {
            meta.and_then(|m| m.get("generateName"))
                .and_then(Value::as_str)
        })
        .unwrap_or("");
    format!("{kind}/{name}")
}

/// Injects every workload of a multi-document YAML (or JSON) text and renders the
/// result as YAML documents separated by `---`. Objects of other kinds pass
/// through unchanged.
pub fn inject_yaml(
    input: &str,
    opts: &InjectOptions,
) -> Result<(String, Vec<Report>), InjectError> {
    use serde::Deserialize;
    let mut out = String::new();
    let mut reports = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(input).enumerate() {
        let value = Value::deserialize(doc).map_err(|e| InjectError::Yaml {
            doc: i + 1,
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        let mut value = value;
        inject_object(&mut value, opts, &mut reports)?;
        let text = serde_yaml::to_string(&value).map_err(|e| InjectError::Render(e.to_string()))?;
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(&text);
    }
    Ok((out, reports))
}

/// Injects one object in place: a workload kind, a `List` (each item), or nothing.
pub fn inject_object(
    obj: &mut Value,
    opts: &InjectOptions,
    reports: &mut Vec<Report>,
) -> Result<(), InjectError> {
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let name = object_name(obj);
    let template_path: &[&str] = match kind.as_str() {
        "Pod" => &[],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        k if k == "List" || k.ends_with("List") => {
            if let Some(items) = obj.get_mut("items").and_then(Value::as_array_mut) {
                for item in items {
                    inject_object(item, opts, reports)?;
                }
            }
            return Ok(());
        }
        _ => return Ok(()),
    };
    let mut target = &mut *obj;
    for key in template_path {
        target = match target.get_mut(*key) {
            Some(t) => t,
            None => {
                return Err(InjectError::Shape {
                    object: name,
                    message: format!("missing {}", template_path.join(".")),
                })
            }
        };
    }
    let outcome = inject_pod_template(target, opts, &name)?;
    reports.push(Report {
        object: name,
        outcome,
    });
    Ok(())
}

fn annotations(template: &Value) -> Option<&Map<String, Value>> {
    template.get("metadata")?.get("annotations")?.as_object()
}

fn annotation<'a>(template: &'a Value, key: &str) -> Option<&'a str> {
    annotations(template)?.get(key)?.as_str()
}

fn label<'a>(template: &'a Value, key: &str) -> Option<&'a str> {
    template.get("metadata")?.get("labels")?.get(key)?.as_str()
}

fn has_container(spec: &Value, list: &str, name: &str) -> bool {
    spec.get(list).and_then(Value::as_array).is_some_and(|cs| {
        cs.iter()
            .any(|c| c.get("name").and_then(Value::as_str) == Some(name))
    })
}

/// Whether the pod template already carries the sidecar.
pub fn is_injected(template: &Value) -> bool {
    if annotation(template, ANNOTATION_STATUS).is_some() {
        return true;
    }
    template.get("spec").is_some_and(|s| {
        has_container(s, "containers", SIDECAR_NAME)
            || has_container(s, "initContainers", SIDECAR_NAME)
            || has_container(s, "initContainers", INIT_NAME)
    })
}

/// Injects a pod or pod template (an object with `metadata` and `spec`) in place.
/// `name` is used in messages.
pub fn inject_pod_template(
    template: &mut Value,
    opts: &InjectOptions,
    name: &str,
) -> Result<Outcome, InjectError> {
    if let Some(why) = skip_reason(template, name)? {
        return Ok(Outcome::Skipped(why));
    }
    let pod = PodAnnotations::read(template, opts, name)?;

    // Probes first: they read the app containers as they were.
    let probes = rewrite_probes(template);

    let iptables = iptables_args(
        &pod.excluded_in,
        &pod.excluded_out,
        &pod.excluded_cidrs,
        &pod.included_cidrs,
    );
    let init = to_value(init_container(opts, iptables));
    let mut sidecar = sidecar_container(opts, &probes);
    if pod.mode == SidecarMode::Native {
        sidecar.restart_policy = Some("Always".into());
    }
    let sidecar = to_value(sidecar);

    let config = sidecar_config_for(opts, &pod.app_ports);
    let meta = ensure_object(template, "metadata");
    let Some(ann) = ensure_object(meta, "annotations").as_object_mut() else {
        unreachable!("ensure_object returns an object")
    };
    ann.insert(ANNOTATION_STATUS.into(), Value::String("injected".into()));
    ann.insert(ANNOTATION_CONFIG.into(), Value::String(config));
    if !ann.contains_key("prometheus.io/scrape") {
        ann.insert("prometheus.io/scrape".into(), json!("true"));
        ann.insert("prometheus.io/port".into(), json!(ADMIN_PORT.to_string()));
        ann.insert("prometheus.io/path".into(), json!("/metrics"));
    }

    let spec = ensure_object(template, "spec");
    let inits = ensure_array(spec, "initContainers");
    match pod.mode {
        SidecarMode::Native => {
            inits.insert(0, sidecar);
            inits.insert(0, init);
        }
        SidecarMode::Container => {
            inits.insert(0, init);
            if let Some(cs) = spec.get_mut("containers").and_then(Value::as_array_mut) {
                cs.insert(0, sidecar);
            }
        }
    }
    let volumes = ensure_array(ensure_object(template, "spec"), "volumes");
    for v in pod_volumes(opts) {
        volumes.push(to_value(v));
    }
    Ok(Outcome::Injected)
}

/// Why a pod template is left as it is (opted out, already injected, host network),
/// or an error when it is not a pod template at all.
fn skip_reason(template: &Value, name: &str) -> Result<Option<String>, InjectError> {
    let opted_out = |v: Option<&str>| {
        v.is_some_and(|v| v.eq_ignore_ascii_case("false") || v.eq_ignore_ascii_case("disabled"))
    };
    if opted_out(annotation(template, ANNOTATION_INJECT))
        || opted_out(label(template, ANNOTATION_INJECT))
    {
        return Ok(Some(format!("{ANNOTATION_INJECT} is \"false\"")));
    }
    if is_injected(template) {
        return Ok(Some("already injected".into()));
    }
    let spec = template.get("spec").ok_or_else(|| InjectError::Shape {
        object: name.to_owned(),
        message: "pod template has no spec".into(),
    })?;
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Some(
            "hostNetwork pods are not injected (iptables rules would apply to the node)".into(),
        ));
    }
    if !spec.get("containers").is_some_and(Value::is_array) {
        return Err(InjectError::Shape {
            object: name.to_owned(),
            message: "pod spec has no containers list".into(),
        });
    }
    Ok(None)
}

/// What one pod's annotations ask of the injection.
struct PodAnnotations {
    app_ports: AppPorts,
    excluded_in: Vec<u16>,
    excluded_out: Vec<u16>,
    excluded_cidrs: Vec<ipnet::IpNet>,
    included_cidrs: Vec<ipnet::IpNet>,
    mode: SidecarMode,
}

impl PodAnnotations {
    /// Reads and checks the annotations; a malformed one is an error naming it.
    fn read(template: &Value, opts: &InjectOptions, name: &str) -> Result<Self, InjectError> {
        let bad = |annotation: &'static str, message: String| InjectError::Annotation {
            object: name.to_owned(),
            annotation,
            message,
        };
        let ports = |key: &'static str| -> Result<Vec<u16>, InjectError> {
            annotation(template, key)
                .map(|v| parse_list(v, |p| p.parse::<u16>().ok().filter(|p| *p != 0)))
                .transpose()
                .map_err(|item| bad(key, format!("{item:?} is not a port number")))
                .map(Option::unwrap_or_default)
        };
        let cidrs = |key: &'static str| -> Result<Vec<ipnet::IpNet>, InjectError> {
            annotation(template, key)
                .map(|v| {
                    parse_list(v, |c| {
                        c.parse::<ipnet::IpNet>()
                            .ok()
                            .or_else(|| c.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
                    })
                })
                .transpose()
                .map_err(|item| bad(key, format!("{item:?} is not a CIDR")))
                .map(Option::unwrap_or_default)
        };
        let mut app_ports = AppPorts {
            protocols: named_port_protocols(template),
            loopback: ports(ANNOTATION_LOOPBACK_PORTS)?,
        };
        if let Some(v) = annotation(template, ANNOTATION_APP_PROTOCOLS) {
            let pairs = parse_list(v, parse_app_protocol).map_err(|item| {
                bad(
                    ANNOTATION_APP_PROTOCOLS,
                    format!("{item:?} is not PORT=http1|http2|auto"),
                )
            })?;
            app_ports.protocols.extend(pairs);
        }
        let excluded_in = ports(ANNOTATION_EXCLUDE_INBOUND_PORTS)?;
        let excluded_out = ports(ANNOTATION_EXCLUDE_OUTBOUND_PORTS)?;
        let excluded_cidrs = cidrs(ANNOTATION_EXCLUDE_OUTBOUND_CIDRS)?;
        let included_cidrs = cidrs(ANNOTATION_INCLUDE_OUTBOUND_CIDRS)?;
        let mode = match annotation(template, ANNOTATION_SIDECAR_MODE) {
            None => opts.mode,
            Some("native") => SidecarMode::Native,
            Some("container") => SidecarMode::Container,
            Some(other) => {
                return Err(bad(
                    ANNOTATION_SIDECAR_MODE,
                    format!("{other:?} is not \"native\" or \"container\""),
                ))
            }
        };
        Ok(PodAnnotations {
            app_ports,
            excluded_in,
            excluded_out,
            excluded_cidrs,
            included_cidrs,
            mode,
        })
    }
}

/// One `PORT=http1|http2|auto` item of the app-protocols annotation.
fn parse_app_protocol(item: &str) -> Option<(u16, &'static str)> {
    let (port, proto) = item.split_once('=')?;
    let port = port.trim().parse::<u16>().ok().filter(|p| *p != 0)?;
    let proto = match proto.trim() {
        "http1" => "http1",
        "http2" => "http2",
        "auto" => "auto",
        _ => return None,
    };
    Some((port, proto))
}

/// Splits a comma-separated list; `Err(item)` names the first item `parse` refuses.
fn parse_list<T>(v: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| parse(s).ok_or_else(|| s.to_owned()))
        .collect()
}

fn to_value<T: serde::Serialize>(t: T) -> Value {
    // k8s-openapi types always serialize to a JSON object.
    serde_json::to_value(t).unwrap_or(Value::Null)
}

fn ensure_object<'a>(v: &'a mut Value, key: &str) -> &'a mut Value {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    let Value::Object(map) = v else {
        unreachable!("made an object above")
    };
    let entry = map
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    entry
}

fn ensure_array<'a>(v: &'a mut Value, key: &str) -> &'a mut Vec<Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    let Value::Object(map) = v else {
        unreachable!("made an object above")
    };
    let entry = map.entry(key.to_owned()).or_insert_with(|| json!([]));
    if !entry.is_array() {
        *entry = json!([]);
    }
    match entry {
        Value::Array(a) => a,
        _ => unreachable!("made an array above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "annotations": {
                ANNOTATION_EXCLUDE_OUTBOUND_CIDRS: "169.254.169.254/32, 10.96.0.1"}},
            "spec": {"containers": [{
                "name": "app", "image": "app:1",
                "ports": [{"name": "http", "containerPort": 8080}],
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5},
                "readinessProbe": {"tcpSocket": {"port": 8080}},
                "startupProbe": {"exec": {"command": ["true"]}}
            }]}
        })
    }

    #[test]
    fn app_port_protocols_from_names_and_annotation() {
        let mut p = pod();
        p["spec"]["containers"][0]["ports"] = json!([
            {"name": "http", "containerPort": 8080},
            {"name": "grpc-api", "containerPort": 9090},
            {"name": "h2c", "containerPort": 9091},
            {"name": "http2-x", "containerPort": 9092},
            {"name": "grpc-web", "containerPort": 9093},
            {"containerPort": 9094}
        ]);
        p["metadata"]["annotations"][ANNOTATION_APP_PROTOCOLS] = json!("9092=http1, 7000=http2");
        p["metadata"]["annotations"][ANNOTATION_LOOPBACK_PORTS] = json!("9100");
        inject_pod_template(&mut p, &InjectOptions::default(), "Pod/web").unwrap();
        let yaml = p["metadata"]["annotations"][ANNOTATION_CONFIG]
            .as_str()
            .unwrap();
        let cfg = crate::config::Config::from_yaml_str(yaml, "generated")
            .unwrap_or_else(|e| panic!("{e}"));
        use crate::config::AppProtocol::{Http1, Http2};
        let expected: BTreeMap<u16, crate::config::AppProtocol> =
            [(7000, Http2), (9090, Http2), (9091, Http2), (9092, Http1)]
                .into_iter()
                .collect();
        assert_eq!(cfg.inbound.port_protocols, expected);
        assert_eq!(cfg.inbound.loopback_ports, [9100]);
        // A malformed annotation is an error naming it.
        let mut bad = pod();
        bad["metadata"]["annotations"][ANNOTATION_APP_PROTOCOLS] = json!("9090=h3");
        let e = inject_pod_template(&mut bad, &InjectOptions::default(), "Pod/web")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(ANNOTATION_APP_PROTOCOLS) && e.contains("9090=h3"),
            "{e}"
        );
    }

    #[test]
    fn pod_is_injected_once() {
        let mut p = pod();
        let opts = InjectOptions::default();
        assert_eq!(
            inject_pod_template(&mut p, &opts, "Pod/web").unwrap(),
            Outcome::Injected
        );
        let once = p.clone();
        assert_eq!(
            inject_pod_template(&mut p, &opts, "Pod/web").unwrap(),
            Outcome::Skipped("already injected".into())
        );
        assert_eq!(p, once);
        let inits = p["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(inits[0]["name"], INIT_NAME);
        assert_eq!(inits[1]["name"], SIDECAR_NAME);
        assert_eq!(inits[1]["restartPolicy"], "Always");
        let args: Vec<&str> = inits[0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(
            args.windows(2).any(|w| w
                == [
                    "--exclude-outbound-cidrs",
                    "169.254.169.254/32,10.96.0.1/32"
                ]),
            "{args:?}"
        );
        let app = &p["spec"]["containers"][0];
        assert_eq!(
            app["livenessProbe"]["httpGet"]["path"],
            "/app-health/app/livez"
        );
        assert_eq!(app["livenessProbe"]["periodSeconds"], 5);
        assert_eq!(app["readinessProbe"]["httpGet"]["port"], 15000);
        assert!(app["startupProbe"]["exec"].is_object());
        let env = inits[1]["env"].as_array().unwrap();
        let probes = env.iter().find(|e| e["name"] == PROBES_ENV).unwrap();
        let probes: Value = serde_json::from_str(probes["value"].as_str().unwrap()).unwrap();
        assert_eq!(probes["app/livez"]["httpGet"]["port"], 8080);
        assert_eq!(probes["app/readyz"]["tcpSocket"]["port"], 8080);
        assert!(probes.get("app/startupz").is_none());
    }

    #[test]
    fn generated_config_loads() {
        for svid in [SvidSource::CsiDriverSpiffe, SvidSource::Spire] {
            let opts = InjectOptions {
                svid,
                ..InjectOptions::default()
            };
            crate::config::Config::from_yaml_str(&sidecar_config(&opts), "generated")
                .unwrap_or_else(|e| panic!("{e}"));
        }
        // `--mesh-networks` reaches the sidecar's configuration.
        let nets: Vec<ipnet::IpNet> = vec![
            "10.244.0.0/16".parse().unwrap_or_else(|e| panic!("{e}")),
            "fd00:10::/64".parse().unwrap_or_else(|e| panic!("{e}")),
        ];
        let opts = InjectOptions {
            mesh_networks: nets.clone(),
            ..InjectOptions::default()
        };
        let cfg = crate::config::Config::from_yaml_str(&sidecar_config(&opts), "generated")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.outbound.mesh_networks, nets);
        let default = crate::config::Config::from_yaml_str(
            &sidecar_config(&InjectOptions::default()),
            "generated",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            default.outbound.mesh_networks,
            ["10.0.0.0/8"
                .parse::<ipnet::IpNet>()
                .unwrap_or_else(|e| panic!("{e}"))]
        );
    }

    #[test]
    fn opt_out_and_bad_annotations() {
        let mut p = pod();
        p["metadata"]["annotations"][ANNOTATION_INJECT] = json!("false");
        let before = p.clone();
        let opts = InjectOptions::default();
        assert!(matches!(
            inject_pod_template(&mut p, &opts, "x").unwrap(),
            Outcome::Skipped(_)
        ));
        assert_eq!(p, before);
        let mut p = pod();
        p["metadata"]["annotations"][ANNOTATION_EXCLUDE_INBOUND_PORTS] = json!("80,http");
        let e = inject_pod_template(&mut p, &opts, "Pod/web").unwrap_err();
        assert!(e.to_string().contains("\"http\" is not a port"), "{e}");
    }
}
