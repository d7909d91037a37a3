//! The configuration file's model: the top level, and the identity, inbound,
//! outbound, admin, limits, log and shutdown sections, with their defaults.
//! The `policy` and `jwt` sections have files of their own.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::Deserializer;
use serde::Deserialize;

use super::de::{de_duration, or_default, present, MapThen};
use super::jwt::{JwtConfig, TokenLocation};
use super::policy::PolicyConfig;
use crate::identity::spiffe_id::{SpiffeId, TrustDomain};

/// Default Workload API socket when `SPIFFE_ENDPOINT_SOCKET` is not set.
pub const DEFAULT_WORKLOAD_API_SOCKET: &str = "unix:///run/spire/sockets/agent.sock";
/// Directory where csi-driver-spiffe mounts the SVID files.
const CSI_DIR: &str = "/var/run/secrets/spiffe.io";

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The pod's own trust domain (default `cluster.local`).
    pub trust_domain: TrustDomain,
    /// Where the pod's SVID and trust bundle come from.
    #[serde(deserialize_with = "or_default")]
    pub identity: IdentityConfig,
    /// The inbound (server-side) listener.
    #[serde(deserialize_with = "or_default")]
    pub inbound: InboundConfig,
    /// The outbound (client-side) listener.
    #[serde(deserialize_with = "or_default")]
    pub outbound: OutboundConfig,
    /// Rego policies.
    #[serde(deserialize_with = "or_default")]
    pub policy: PolicyConfig,
    /// JWT authentication.
    #[serde(deserialize_with = "or_default")]
    pub jwt: JwtConfig,
    /// The admin listener.
    #[serde(deserialize_with = "or_default")]
    pub admin: AdminConfig,
    /// Bounds on slow or oversized input.
    #[serde(deserialize_with = "or_default")]
    pub limits: LimitsConfig,
    /// Logging.
    #[serde(deserialize_with = "or_default")]
    pub log: LogConfig,
    /// Draining on SIGTERM.
    #[serde(deserialize_with = "or_default")]
    pub shutdown: ShutdownConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            // A constant that satisfies the trust-domain grammar.
            trust_domain: TrustDomain::parse("cluster.local").unwrap_or_else(|_| unreachable!()),
            identity: IdentityConfig::default(),
            inbound: InboundConfig::default(),
            outbound: OutboundConfig::default(),
            policy: PolicyConfig::default(),
            jwt: JwtConfig::default(),
            admin: AdminConfig::default(),
            limits: LimitsConfig::default(),
            log: LogConfig::default(),
            shutdown: ShutdownConfig::default(),
        }
    }
}

/// Source of the pod's X.509-SVID and trust bundle: exactly one of `files`,
/// `workload_api`, `dev_ca` (YAML `identity: {files: {...}}`). Default: [`IdentityConfig::DevCa`].
#[derive(Debug, Clone)]
pub enum IdentityConfig {
    /// PEM files on disk, e.g. mounted by csi-driver-spiffe; re-read when they change.
    Files(FilesIdentity),
    /// The SPIFFE Workload API (SPIRE agent).
    WorkloadApi(WorkloadApiIdentity),
    /// A local development CA that issues the pod's own SVID.
    DevCa(DevCaIdentity),
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig::DevCa(DevCaIdentity::default())
    }
}

/// SVID, key and bundle from files (csi-driver-spiffe layout by default).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesIdentity {
    /// Certificate chain, leaf first (default `/var/run/secrets/spiffe.io/tls.crt`).
    pub cert: PathBuf,
    /// Private key (default `/var/run/secrets/spiffe.io/tls.key`).
    pub key: PathBuf,
    /// Own trust domain's CA bundle (default `/var/run/secrets/spiffe.io/ca.crt`).
    pub bundle: PathBuf,
    /// Bundles of federated trust domains, by trust domain (default none).
    #[serde(deserialize_with = "or_default")]
    pub federated_bundles: BTreeMap<TrustDomain, PathBuf>,
    /// How often the files are checked for changes (default 1s).
    #[serde(deserialize_with = "de_duration")]
    pub poll_interval: Duration,
}

impl Default for FilesIdentity {
    fn default() -> Self {
        FilesIdentity {
            cert: Path::new(CSI_DIR).join("tls.crt"),
            key: Path::new(CSI_DIR).join("tls.key"),
            bundle: Path::new(CSI_DIR).join("ca.crt"),
            federated_bundles: BTreeMap::new(),
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// The SPIFFE Workload API.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkloadApiIdentity {
    /// `unix:///path` or `tcp://ip:port`; default `$SPIFFE_ENDPOINT_SOCKET`, else
    /// `unix:///run/spire/sockets/agent.sock`.
    pub socket: String,
}

impl Default for WorkloadApiIdentity {
    fn default() -> Self {
        let socket = std::env::var("SPIFFE_ENDPOINT_SOCKET")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_WORKLOAD_API_SOCKET.to_owned());
        WorkloadApiIdentity { socket }
    }
}

/// A development CA kept in a local directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevCaIdentity {
    /// Where the CA key and certificate live (default `.portcullis/ca`).
    pub dir: PathBuf,
    /// The pod's ID; `None` means `spiffe://<trust_domain>/ns/default/sa/default`
    /// (see [`Config::dev_ca_spiffe_id`]).
    pub spiffe_id: Option<SpiffeId>,
    /// Lifetime of issued SVIDs (default 1h).
    #[serde(deserialize_with = "de_duration")]
    pub ttl: Duration,
}

impl Default for DevCaIdentity {
    fn default() -> Self {
        DevCaIdentity {
            dir: PathBuf::from(".portcullis/ca"),
            spiffe_id: None,
            ttl: Duration::from_secs(3600),
        }
    }
}

/// The well-known ports and the sidecar's UID, in Istio's numbering so operators
/// recognise them. Every default that names one (configuration, `iptables`, `inject`,
/// `demo`, `tap`) uses these.
pub mod defaults {
    /// Inbound listener port.
    pub const INBOUND_PORT: u16 = 15006;
    /// Outbound (transparent) listener port.
    pub const OUTBOUND_PORT: u16 = 15001;
    /// Admin port: metrics, readiness, probes.
    pub const ADMIN_PORT: u16 = 15000;
    /// The UID the sidecar runs as; its own traffic is never intercepted.
    pub const PROXY_UID: u32 = 1337;
}

/// Whether inbound plain-text connections are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Only mTLS with a valid SVID (default).
    #[default]
    Strict,
    /// mTLS or plain text.
    Permissive,
}

/// The HTTP version allowed requests are forwarded to the app with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// Per request (default): WebSocket upgrades and HTTP/1.x callers get HTTP/1.1,
    /// gRPC gets HTTP/2, other HTTP/2 callers get HTTP/2 only if the app's port
    /// answers the HTTP/2 preface (probed once, cached, refreshed).
    #[default]
    Auto,
    /// Always HTTP/1.1 (upgrades included).
    Http1,
    /// Always HTTP/2 with prior knowledge (h2c), except HTTP/1.1 upgrades.
    Http2,
}

/// The inbound listener, in front of the app.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboundConfig {
    /// Listen address (default `0.0.0.0:15006`).
    pub listen: SocketAddr,
    /// `strict` (default) or `permissive`.
    pub mtls: MtlsMode,
    /// The app's address (default `127.0.0.1:8080`).
    pub app: SocketAddr,
    /// Forward to the connection's original destination instead of `app`
    /// (transparent interception; default false).
    pub original_destination: bool,
    /// Ports whose traffic is never parsed as HTTP (decided once per connection).
    #[serde(deserialize_with = "or_default")]
    pub opaque_ports: Vec<u16>,
    /// The HTTP version the app speaks: `auto` (default), `http1` or `http2`.
    pub app_protocol: AppProtocol,
    /// Per-port overrides of `app_protocol`, keyed by the app's port.
    #[serde(deserialize_with = "or_default")]
    pub port_protocols: std::collections::BTreeMap<u16, AppProtocol>,
    /// With `original_destination`: ports forwarded to loopback (`127.0.0.1:<port>`,
    /// `[::1]:<port>`) instead of the original destination address, for apps that
    /// listen on localhost only. Anything bound to localhost is otherwise unreachable
    /// from outside the pod, as it is without a sidecar.
    #[serde(deserialize_with = "or_default")]
    pub loopback_ports: Vec<u16>,
    /// Trust domains whose bundles arrive at run time (federated bundles from the
    /// Workload API), which `outbound.routes[].spiffe_id` may therefore name. Peers
    /// are accepted when their SVID chains to a bundle of their own trust domain.
    #[serde(deserialize_with = "or_default")]
    pub trusted_domains: Vec<TrustDomain>,
}

impl Default for InboundConfig {
    fn default() -> Self {
        InboundConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], defaults::INBOUND_PORT)),
            mtls: MtlsMode::Strict,
            app: SocketAddr::from(([127, 0, 0, 1], 8080)),
            original_destination: false,
            opaque_ports: Vec::new(),
            app_protocol: AppProtocol::Auto,
            port_protocols: std::collections::BTreeMap::new(),
            loopback_ports: Vec::new(),
            trusted_domains: Vec::new(),
        }
    }
}

/// How outbound destinations are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboundMode {
    /// `SO_ORIGINAL_DST` of connections redirected by iptables (default).
    #[default]
    Transparent,
    /// Explicit `routes`, one local listener per upstream.
    Routes,
}

/// What happens to outbound traffic to destinations outside `mesh_networks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NonMeshAction {
    /// Passed through in plain text if the outbound policy allows it (default).
    #[default]
    Passthrough,
    /// Refused without asking the policy.
    Deny,
}

/// The outbound listener, used by the app to reach other services.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundConfig {
    /// Listen address for transparent mode (default `127.0.0.1:15001`).
    pub listen: SocketAddr,
    /// `transparent` (default) or `routes`.
    pub mode: OutboundMode,
    /// Destinations inside these networks are peers reached over mTLS
    /// (default `[10.0.0.0/8]`).
    #[serde(deserialize_with = "or_default")]
    pub mesh_networks: Vec<ipnet::IpNet>,
    /// Explicit routes; required when `mode: routes`, refused otherwise.
    #[serde(deserialize_with = "or_default")]
    pub routes: Vec<Route>,
    /// `passthrough` (default) or `deny` for destinations outside the mesh.
    pub non_mesh: NonMeshAction,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], defaults::OUTBOUND_PORT)),
            mode: OutboundMode::Transparent,
            mesh_networks: vec![ipnet::IpNet::V4(
                ipnet::Ipv4Net::new([10, 0, 0, 0].into(), 8).unwrap_or_else(|_| unreachable!()),
            )],
            routes: Vec::new(),
            non_mesh: NonMeshAction::Passthrough,
        }
    }
}

/// Protocol spoken on an explicit route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteProtocol {
    /// HTTP/1.1 or HTTP/2, decided per request (default).
    #[default]
    Http,
    /// Opaque TCP, decided once per connection.
    Tcp,
}

/// An explicit outbound route: a local listener mapped to one upstream.
/// `listen`, `upstream` and `spiffe_id` are required.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Local address the app connects to.
    pub listen: SocketAddr,
    /// The upstream sidecar's address.
    pub upstream: SocketAddr,
    /// The SPIFFE ID the upstream must present.
    pub spiffe_id: SpiffeId,
    /// `http` (default) or `tcp`.
    #[serde(default)]
    pub protocol: RouteProtocol,
}

/// The admin listener (`/metrics`, `/live`, `/ready`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Listen address (default `0.0.0.0:15000`).
    pub listen: SocketAddr,
    /// The live decision stream (`/tap`).
    pub tap: AdminTapConfig,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], defaults::ADMIN_PORT)),
            tap: AdminTapConfig::default(),
        }
    }
}

/// `admin.tap`: who may stream decisions besides localhost.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminTapConfig {
    /// SPIFFE IDs that may call `/tap` over mTLS on the admin port (default none:
    /// localhost only).
    pub allowed_principals: Vec<String>,
}

/// Bounds on slow or oversized input and on upstreams.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Time to read a request's headers (default 10s).
    #[serde(deserialize_with = "de_duration")]
    pub header_timeout: Duration,
    /// Largest header block (default 65536, at least 1024).
    pub max_header_bytes: usize,
    /// Most headers per request (default 100).
    pub max_headers: usize,
    /// Most concurrent connections per listener (default 10000).
    pub max_connections: usize,
    /// Idle connection timeout (default 300s).
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// Upstream connect timeout (default 5s).
    #[serde(deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// Time to the upstream's response headers (default 30s).
    #[serde(deserialize_with = "de_duration")]
    pub upstream_timeout: Duration,
    /// HTTP/2 streams per connection (default 1000).
    pub max_concurrent_streams: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 65536,
            max_headers: 100,
            max_connections: 10000,
            idle_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(30),
            max_concurrent_streams: 1000,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (default).
    #[default]
    Json,
    /// Human-readable text.
    Text,
}

/// Logging and decision logs.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `json` (default) or `text`.
    pub format: LogFormat,
    /// `trace`, `debug`, `info` (default), `warn` or `error`.
    pub level: String,
    /// Log every decision (default true).
    pub decisions: bool,
    /// Decision log file; `None` (default) means stdout.
    pub decision_file: Option<PathBuf>,
    /// Extra names masked in decision logs, as header names and as query
    /// parameters; `authorization`, `cookie`, the `access_token` parameter and every
    /// JWT provider's token header and query parameter are always masked.
    #[serde(deserialize_with = "or_default")]
    pub mask: Vec<String>,
    /// Fraction of allow decisions logged, in [0, 1] (default 1.0); denies are
    /// always logged.
    pub sample_allows: f64,
    /// Add the policy explanation (rules tried, first expression that failed) to
    /// decision-log entries: `off` (default), `denies` or `all`.
    pub explain: ExplainLogging,
    /// Put the policy input document (masked as `mask` says) into decision-log
    /// entries, for `portcullis policy replay`: `false` (default), `true` or `denies`.
    pub input: InputLogging,
}

/// Which decision-log entries carry the input document (`log.input`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputLogging {
    /// None.
    #[default]
    Off,
    /// Denies (and dry-run denies).
    Denies,
    /// Every logged decision.
    All,
}

impl<'de> Deserialize<'de> for InputLogging {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(false) => Ok(InputLogging::Off),
            Raw::Bool(true) => Ok(InputLogging::All),
            Raw::Word(w) if w == "denies" => Ok(InputLogging::Denies),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "{w:?}: expected true, false or denies"
            ))),
        }
    }
}

/// Which decision-log entries carry a policy explanation (`log.explain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExplainLogging {
    /// None: nothing is computed.
    #[default]
    Off,
    /// Denies (and dry-run denies).
    Denies,
    /// Every logged decision.
    All,
}

impl LogConfig {
    /// `mask` plus the header and query names JWT providers read tokens from.
    pub fn masked_names(&self, jwt: &JwtConfig) -> Vec<String> {
        let mut names = self.mask.clone();
        for p in &jwt.providers {
            for at in &p.from {
                match at {
                    TokenLocation::Header { name, .. } | TokenLocation::Query(name) => {
                        names.push(name.clone())
                    }
                    TokenLocation::Cookie(_) => {} // `cookie` is masked whole
                }
            }
        }
        names
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Json,
            level: "info".to_owned(),
            decisions: true,
            decision_file: None,
            mask: Vec::new(),
            sample_allows: 1.0,
            explain: ExplainLogging::Off,
            input: InputLogging::Off,
        }
    }
}

/// Draining on SIGTERM.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Time given to in-flight requests (default 15s; 0 = stop at once).
    #[serde(deserialize_with = "de_duration")]
    pub grace_period: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace_period: Duration::from_secs(15),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    #[serde(default, deserialize_with = "present")]
    files: Option<FilesIdentity>,
    #[serde(default, deserialize_with = "present")]
    workload_api: Option<WorkloadApiIdentity>,
    #[serde(default, deserialize_with = "present")]
    dev_ca: Option<DevCaIdentity>,
}

impl<'de> Deserialize<'de> for IdentityConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(MapThen::new(
            "a mapping with one of `files`, `workload_api`, `dev_ca`",
            |raw: RawIdentity| {
                let mut set = Vec::new();
                if raw.files.is_some() {
                    set.push("files");
                }
                if raw.workload_api.is_some() {
                    set.push("workload_api");
                }
                if raw.dev_ca.is_some() {
                    set.push("dev_ca");
                }
                if set.len() > 1 {
                    return Err(format!(
                        "exactly one identity source may be set, found {}",
                        set.join(" and ")
                    ));
                }
                Ok(match (raw.files, raw.workload_api, raw.dev_ca) {
                    (Some(f), _, _) => IdentityConfig::Files(f),
                    (_, Some(w), _) => IdentityConfig::WorkloadApi(w),
                    (_, _, Some(c)) => IdentityConfig::DevCa(c),
                    _ => IdentityConfig::default(),
                })
            },
        ))
    }
}
