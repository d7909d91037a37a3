//! The names the injector writes (annotations, containers, paths, ports) and the
//! options it takes.

use std::collections::BTreeMap;

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

pub(super) const CONFIG_DIR: &str = "/etc/portcullis/config";
pub(super) const CONFIG_FILE: &str = "portcullis.yaml";
/// The pod's labels (downward API), beside the configuration.
pub(super) const LABELS_FILE: &str = "labels";
pub(super) const POLICIES_DIR: &str = "/etc/portcullis/policies";
pub(super) const SVID_DIR: &str = "/var/run/secrets/spiffe.io";
pub(super) const SPIRE_DIR: &str = "/run/spire/sockets";
pub(super) const VOL_SVID: &str = "portcullis-svid";
pub(super) const VOL_POLICIES: &str = "portcullis-policies";
pub(super) const VOL_CONFIG: &str = "portcullis-config";

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
