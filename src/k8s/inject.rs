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

use k8s_openapi::api::core::v1::{
    CSIVolumeSource, Capabilities, ConfigMapVolumeSource, Container, ContainerPort,
    DownwardAPIVolumeFile, DownwardAPIVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, Probe, ResourceRequirements, SecretVolumeSource, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Map, Value};

/// Annotation (or label) `portcullis.io/inject`: `"false"` (or `disabled`) opts a pod out.
pub const ANNOTATION_INJECT: &str = "portcullis.io/inject";
/// Annotation set on injected pods (`injected`).
pub const ANNOTATION_STATUS: &str = "portcullis.io/status";
/// Annotation holding the sidecar's YAML configuration (projected as a file).
pub const ANNOTATION_CONFIG: &str = "portcullis.io/config";
/// Comma-separated inbound ports that bypass the sidecar.
pub const ANNOTATION_EXCLUDE_INBOUND_PORTS: &str = "portcullis.io/exclude-inbound-ports";
/// Comma-separated outbound ports that bypass the sidecar.
pub const ANNOTATION_EXCLUDE_OUTBOUND_PORTS: &str = "portcullis.io/exclude-outbound-ports";
/// Comma-separated outbound CIDRs that bypass the sidecar.
pub const ANNOTATION_EXCLUDE_OUTBOUND_CIDRS: &str = "portcullis.io/exclude-outbound-cidrs";
/// Comma-separated outbound CIDRs that are the only ones captured.
pub const ANNOTATION_INCLUDE_OUTBOUND_CIDRS: &str = "portcullis.io/include-outbound-cidrs";
/// `native` or `container`: overrides the sidecar mode for one pod.
pub const ANNOTATION_SIDECAR_MODE: &str = "portcullis.io/sidecar-mode";
/// `PORT=http1|http2|auto,...`: the HTTP version each app port speaks (overrides
/// what the container port names say).
pub const ANNOTATION_APP_PROTOCOLS: &str = "portcullis.io/app-protocols";
/// Comma-separated app ports reached on loopback (apps that listen on localhost only).
pub const ANNOTATION_LOOPBACK_PORTS: &str = "portcullis.io/loopback-ports";

/// What one pod tells its sidecar about its app's ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppPorts {
    /// `inbound.port_protocols`: from container port names (`grpc*`, `http2*`,
    /// `h2c*` → `http2`) and the app-protocols annotation.
    pub protocols: BTreeMap<u16, &'static str>,
    /// `inbound.loopback_ports`.
    pub loopback: Vec<u16>,
}

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

/// Name of the sidecar container.
pub const SIDECAR_NAME: &str = "portcullis";
/// Name of the iptables init container.
pub const INIT_NAME: &str = "portcullis-init";
/// Environment variable with the app's original probes (JSON).
pub const PROBES_ENV: &str = "PORTCULLIS_APP_PROBES";
/// Path prefix of the rewritten probes on the admin port.
pub const APP_HEALTH_PREFIX: &str = "/app-health/";

pub use crate::config::defaults::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT};
/// The sidecar's UID (as Kubernetes types spell it); its own traffic is not captured.
pub const PROXY_UID: i64 = crate::config::defaults::PROXY_UID as i64;

const CONFIG_DIR: &str = "/etc/portcullis/config";
const CONFIG_FILE: &str = "portcullis.yaml";
/// The pod's labels (downward API), beside the configuration.
const LABELS_FILE: &str = "labels";
const POLICIES_DIR: &str = "/etc/portcullis/policies";
const SVID_DIR: &str = "/var/run/secrets/spiffe.io";
const SPIRE_DIR: &str = "/run/spire/sockets";
const VOL_SVID: &str = "portcullis-svid";
const VOL_POLICIES: &str = "portcullis-policies";
const VOL_CONFIG: &str = "portcullis-config";

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

/// How the sidecar is added to the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SidecarMode {
    /// An init container with `restartPolicy: Always` (Kubernetes 1.29+): starts
    /// before the app, stops after it, ends with a Job (default).
    #[default]
    Native,
    /// A classic container listed first.
    Container,
}

/// Where the sidecar's SVID comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SvidSource {
    /// cert-manager csi-driver-spiffe (`spiffe.csi.cert-manager.io`) files.
    CsiDriverSpiffe,
    /// A Secret with `tls.crt`, `tls.key`, `ca.crt` (cert-manager Certificate layout).
    Secret(String),
    /// The SPIRE agent's Workload API socket, mounted by the SPIFFE CSI driver
    /// (`csi.spiffe.io`).
    Spire,
}

/// CPU and memory of the sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarResources {
    /// CPU request, e.g. `100m`.
    pub cpu_request: String,
    /// Memory request, e.g. `64Mi`.
    pub memory_request: String,
    /// CPU limit; `None` for none (the usual advice for proxies).
    pub cpu_limit: Option<String>,
    /// Memory limit.
    pub memory_limit: Option<String>,
}

impl Default for SidecarResources {
    fn default() -> Self {
        SidecarResources {
            cpu_request: "100m".into(),
            memory_request: "64Mi".into(),
            cpu_limit: None,
            memory_limit: Some("256Mi".into()),
        }
    }
}

/// Everything the injection can be told.
#[derive(Debug, Clone)]
pub struct InjectOptions {
    /// The sidecar (and init) image.
    pub image: String,
    /// `IfNotPresent`, `Always` or `Never`.
    pub image_pull_policy: String,
    /// Native sidecar (default) or classic container.
    pub mode: SidecarMode,
    /// The SVID volume.
    pub svid: SvidSource,
    /// Name of the ConfigMap with the `.rego` policies (in the pod's namespace).
    pub policies_configmap: String,
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// `strict` or `permissive`.
    pub mtls: String,
    /// Sidecar resources.
    pub resources: SidecarResources,
    /// Sidecar log level.
    pub log_level: String,
    /// `outbound.mesh_networks` of the sidecar.
    pub mesh_networks: Vec<ipnet::IpNet>,
}

/// The default image: `ghcr.io/portcullis/portcullis:<this version>`.
pub fn default_image() -> String {
    format!(
        "ghcr.io/portcullis/portcullis:{}",
        env!("CARGO_PKG_VERSION")
    )
}

impl Default for InjectOptions {
    fn default() -> Self {
        InjectOptions {
            image: default_image(),
            image_pull_policy: "IfNotPresent".into(),
            mode: SidecarMode::Native,
            svid: SvidSource::CsiDriverSpiffe,
            policies_configmap: "portcullis-policies".into(),
            trust_domain: "cluster.local".into(),
            mtls: "strict".into(),
            resources: SidecarResources::default(),
            log_level: "info".into(),
            mesh_networks: vec![ipnet::IpNet::V4(ipnet::Ipv4Net::new_assert(
                std::net::Ipv4Addr::new(10, 0, 0, 0),
                8,
            ))],
        }
    }
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
    let opted_out = |v: Option<&str>| {
        v.is_some_and(|v| v.eq_ignore_ascii_case("false") || v.eq_ignore_ascii_case("disabled"))
    };
    if opted_out(annotation(template, ANNOTATION_INJECT))
        || opted_out(label(template, ANNOTATION_INJECT))
    {
        return Ok(Outcome::Skipped(format!(
            "{ANNOTATION_INJECT} is \"false\""
        )));
    }
    if is_injected(template) {
        return Ok(Outcome::Skipped("already injected".into()));
    }
    let spec = template.get("spec").ok_or_else(|| InjectError::Shape {
        object: name.to_owned(),
        message: "pod template has no spec".into(),
    })?;
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Outcome::Skipped(
            "hostNetwork pods are not injected (iptables rules would apply to the node)".into(),
        ));
    }
    if !spec.get("containers").is_some_and(Value::is_array) {
        return Err(InjectError::Shape {
            object: name.to_owned(),
            message: "pod spec has no containers list".into(),
        });
    }

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
        let pairs = parse_list(v, |item| {
            let (port, proto) = item.split_once('=')?;
            let port = port.trim().parse::<u16>().ok().filter(|p| *p != 0)?;
            let proto = match proto.trim() {
                "http1" => "http1",
                "http2" => "http2",
                "auto" => "auto",
                _ => return None,
            };
            Some((port, proto))
        })
        .map_err(|item| {
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

    // Probes first: they read the app containers as they were.
    let probes = rewrite_probes(template);

    let iptables = iptables_args(
        &excluded_in,
        &excluded_out,
        &excluded_cidrs,
        &included_cidrs,
    );
    let init = to_value(init_container(opts, iptables));
    let mut sidecar = sidecar_container(opts, &probes);
    if mode == SidecarMode::Native {
        sidecar.restart_policy = Some("Always".into());
    }
    let sidecar = to_value(sidecar);

    let config = sidecar_config_for(opts, &app_ports);
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
    match mode {
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

/// The arguments of the init container: `iptables --apply` with the capture
/// settings. The admin port is always excluded from inbound capture so that the
/// kubelet and Prometheus reach it directly.
pub fn iptables_args(
    excluded_in: &[u16],
    excluded_out: &[u16],
    excluded_cidrs: &[ipnet::IpNet],
    included_cidrs: &[ipnet::IpNet],
) -> Vec<String> {
    let join = |items: Vec<String>| items.join(",");
    let mut inbound = vec![ADMIN_PORT];
    inbound.extend(excluded_in.iter().copied().filter(|p| *p != ADMIN_PORT));
    let mut args: Vec<String> = vec![
        "iptables".into(),
        "--apply".into(),
        "--proxy-uid".into(),
        PROXY_UID.to_string(),
        "--inbound-port".into(),
        INBOUND_PORT.to_string(),
        "--outbound-port".into(),
        OUTBOUND_PORT.to_string(),
        "--exclude-inbound-ports".into(),
        join(inbound.iter().map(u16::to_string).collect()),
    ];
    if !excluded_out.is_empty() {
        args.push("--exclude-outbound-ports".into());
        args.push(join(excluded_out.iter().map(u16::to_string).collect()));
    }
    if !excluded_cidrs.is_empty() {
        args.push("--exclude-outbound-cidrs".into());
        args.push(join(
            excluded_cidrs.iter().map(ToString::to_string).collect(),
        ));
    }
    if !included_cidrs.is_empty() {
        args.push("--include-outbound-cidrs".into());
        args.push(join(
            included_cidrs.iter().map(ToString::to_string).collect(),
        ));
    }
    args
}

/// The sidecar's configuration file (stored in the `portcullis.io/config`
/// annotation and projected into the sidecar by the downward API).
pub fn sidecar_config(opts: &InjectOptions) -> String {
    sidecar_config_for(opts, &AppPorts::default())
}

/// [`sidecar_config`] for a pod whose app ports say what they speak.
pub fn sidecar_config_for(opts: &InjectOptions, app: &AppPorts) -> String {
    let mut app_lines = String::new();
    if !app.protocols.is_empty() {
        app_lines.push_str("  port_protocols:\n");
        for (port, proto) in &app.protocols {
            app_lines.push_str(&format!("    {port}: {proto}\n"));
        }
    }
    if !app.loopback.is_empty() {
        let ports: Vec<String> = app.loopback.iter().map(u16::to_string).collect();
        app_lines.push_str(&format!("  loopback_ports: [{}]\n", ports.join(", ")));
    }
    let identity = match opts.svid {
        SvidSource::CsiDriverSpiffe | SvidSource::Secret(_) => format!(
            "  files:\n    cert: {SVID_DIR}/tls.crt\n    key: {SVID_DIR}/tls.key\n    bundle: {SVID_DIR}/ca.crt\n"
        ),
        SvidSource::Spire => {
            format!("  workload_api:\n    socket: unix://{SPIRE_DIR}/agent.sock\n")
        }
    };
    format!(
        "# Generated by portcullis inject.\n\
         trust_domain: {td}\n\
         identity:\n{identity}\
         inbound:\n  listen: 0.0.0.0:{INBOUND_PORT}\n  mtls: {mtls}\n  original_destination: true\n{app_lines}\
         outbound:\n  listen: 127.0.0.1:{OUTBOUND_PORT}\n  mode: transparent\n  mesh_networks: [{mesh}]\n\
         admin:\n  listen: 0.0.0.0:{ADMIN_PORT}\n\
         policy:\n  dir: {POLICIES_DIR}\n  workload_labels: {CONFIG_DIR}/{LABELS_FILE}\n\
         log:\n  level: {level}\n",
        td = opts.trust_domain,
        mesh = opts
            .mesh_networks
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        mtls = opts.mtls,
        level = opts.log_level,
    )
}

fn quantity(s: &str) -> Quantity {
    Quantity(s.to_owned())
}

fn init_container(opts: &InjectOptions, args: Vec<String>) -> Container {
    Container {
        name: INIT_NAME.into(),
        image: Some(opts.image.clone()),
        image_pull_policy: Some(opts.image_pull_policy.clone()),
        args: Some(args),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            // iptables takes /run/xtables.lock.
            read_only_root_filesystem: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..SecurityContext::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), quantity("10m")),
                ("memory".into(), quantity("16Mi")),
            ])),
            limits: Some(BTreeMap::from([("memory".into(), quantity("64Mi"))])),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    }
}

fn admin_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(ADMIN_PORT.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn sidecar_container(opts: &InjectOptions, probes: &BTreeMap<String, Value>) -> Container {
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("POD_IP", "status.podIP"),
    ];
    if !probes.is_empty() {
        env.push(EnvVar {
            name: PROBES_ENV.into(),
            value: Some(Value::Object(probes.clone().into_iter().collect()).to_string()),
            ..EnvVar::default()
        });
    }
    let mut mounts = vec![
        VolumeMount {
            name: VOL_CONFIG.into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: VOL_POLICIES.into(),
            mount_path: POLICIES_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ];
    match opts.svid {
        SvidSource::Spire => {
            env.push(EnvVar {
                name: "SPIFFE_ENDPOINT_SOCKET".into(),
                value: Some(format!("unix://{SPIRE_DIR}/agent.sock")),
                ..EnvVar::default()
            });
            mounts.push(VolumeMount {
                name: VOL_SVID.into(),
                mount_path: SPIRE_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
        SvidSource::CsiDriverSpiffe | SvidSource::Secret(_) => mounts.push(VolumeMount {
            name: VOL_SVID.into(),
            mount_path: SVID_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }),
    }
    let mut limits = BTreeMap::new();
    if let Some(c) = &opts.resources.cpu_limit {
        limits.insert("cpu".to_owned(), quantity(c));
    }
    if let Some(m) = &opts.resources.memory_limit {
        limits.insert("memory".to_owned(), quantity(m));
    }
    let port = |name: &str, p: u16| ContainerPort {
        name: Some(name.into()),
        container_port: p.into(),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    Container {
        name: SIDECAR_NAME.into(),
        image: Some(opts.image.clone()),
        image_pull_policy: Some(opts.image_pull_policy.clone()),
        args: Some(vec![
            "run".into(),
            "--config".into(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        ]),
        env: Some(env),
        ports: Some(vec![
            port("pc-inbound", INBOUND_PORT),
            port("pc-admin", ADMIN_PORT),
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), quantity(&opts.resources.cpu_request)),
                ("memory".into(), quantity(&opts.resources.memory_request)),
            ])),
            limits: (!limits.is_empty()).then_some(limits),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            run_as_user: Some(PROXY_UID),
            run_as_group: Some(PROXY_UID),
            run_as_non_root: Some(true),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        // Holds the app (native sidecar ordering) until an SVID and a policy are loaded.
        startup_probe: Some(admin_probe("/ready", 1, 120)),
        readiness_probe: Some(admin_probe("/ready", 2, 3)),
        liveness_probe: Some(admin_probe("/live", 10, 3)),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

fn pod_volumes(opts: &InjectOptions) -> Vec<Volume> {
    let svid = match &opts.svid {
        SvidSource::CsiDriverSpiffe => Volume {
            name: VOL_SVID.into(),
            csi: Some(CSIVolumeSource {
                driver: "spiffe.csi.cert-manager.io".into(),
                read_only: Some(true),
                volume_attributes: Some(BTreeMap::from([(
                    "spiffe.csi.cert-manager.io/fs-group".into(),
                    PROXY_UID.to_string(),
                )])),
                ..CSIVolumeSource::default()
            }),
            ..Volume::default()
        },
        SvidSource::Secret(name) => Volume {
            name: VOL_SVID.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(name.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        SvidSource::Spire => Volume {
            name: VOL_SVID.into(),
            csi: Some(CSIVolumeSource {
                driver: "csi.spiffe.io".into(),
                read_only: Some(true),
                ..CSIVolumeSource::default()
            }),
            ..Volume::default()
        },
    };
    vec![
        svid,
        Volume {
            name: VOL_POLICIES.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: opts.policies_configmap.clone(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: VOL_CONFIG.into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![
                    DownwardAPIVolumeFile {
                        path: CONFIG_FILE.into(),
                        field_ref: Some(ObjectFieldSelector {
                            field_path: format!("metadata.annotations['{ANNOTATION_CONFIG}']"),
                            ..ObjectFieldSelector::default()
                        }),
                        ..DownwardAPIVolumeFile::default()
                    },
                    // For policies that select workloads by label (`import istio`).
                    DownwardAPIVolumeFile {
                        path: LABELS_FILE.into(),
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.labels".into(),
                            ..ObjectFieldSelector::default()
                        }),
                        ..DownwardAPIVolumeFile::default()
                    },
                ]),
                ..DownwardAPIVolumeSource::default()
            }),
            ..Volume::default()
        },
    ]
}

/// Rewrites the HTTP, TCP and gRPC probes of the app containers to
/// `GET /app-health/<container>/<livez|readyz|startupz>` on the admin port and
/// returns the originals, keyed `<container>/<kind>`, with named ports resolved.
/// Exec probes run inside the app container and are left alone.
fn rewrite_probes(template: &mut Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let Some(containers) = template
        .get_mut("spec")
        .and_then(|s| s.get_mut("containers"))
        .and_then(Value::as_array_mut)
    else {
        return out;
    };
    for c in containers {
        let Some(cname) = c.get("name").and_then(Value::as_str).map(str::to_owned) else {
            continue;
        };
        let named_ports: BTreeMap<String, i64> = c
            .get("ports")
            .and_then(Value::as_array)
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| {
                        Some((
                            p.get("name")?.as_str()?.to_owned(),
                            p.get("containerPort")?.as_i64()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (field, kind) in [
            ("livenessProbe", "livez"),
            ("readinessProbe", "readyz"),
            ("startupProbe", "startupz"),
        ] {
            let Some(probe) = c.get_mut(field).and_then(Value::as_object_mut) else {
                continue;
            };
            let Some(original) = original_probe(probe, &named_ports) else {
                continue;
            };
            for k in ["httpGet", "tcpSocket", "grpc"] {
                probe.remove(k);
            }
            probe.insert(
                "httpGet".into(),
                json!({
                    "path": format!("{APP_HEALTH_PREFIX}{cname}/{kind}"),
                    "port": ADMIN_PORT,
                    "scheme": "HTTP",
                }),
            );
            out.insert(format!("{cname}/{kind}"), original);
        }
    }
    out
}

/// The probe action as the admin runner needs it, or `None` if it is not
/// rewritten (exec probes, unresolvable named ports).
fn original_probe(probe: &Map<String, Value>, named: &BTreeMap<String, i64>) -> Option<Value> {
    let resolve = |port: &Value| -> Option<i64> {
        match port {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.parse().ok().or_else(|| named.get(s).copied()),
            _ => None,
        }
    };
    let timeout = probe
        .get("timeoutSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    if let Some(h) = probe.get("httpGet").and_then(Value::as_object) {
        let port = resolve(h.get("port")?)?;
        let mut action = h.clone();
        action.insert("port".into(), json!(port));
        return Some(json!({"httpGet": action, "timeoutSeconds": timeout}));
    }
    if let Some(t) = probe.get("tcpSocket").and_then(Value::as_object) {
        let port = resolve(t.get("port")?)?;
        let mut action = t.clone();
        action.insert("port".into(), json!(port));
        return Some(json!({"tcpSocket": action, "timeoutSeconds": timeout}));
    }
    if let Some(g) = probe.get("grpc").and_then(Value::as_object) {
        g.get("port")?.as_i64()?;
        return Some(json!({"grpc": g, "timeoutSeconds": timeout}));
    }
    None
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
