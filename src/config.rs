//! The sidecar's configuration: one YAML file, every key optional with a safe
//! default, unknown keys rejected.
//!
//! [`Config::load`] and [`Config::from_yaml_str`] parse the file into the public
//! types below and then validate what the types alone cannot express (routes
//! required in `routes` mode, unique listen addresses, unique JWT provider names,
//! bounded sizes, ...). Every failure is a [`ConfigError::Invalid`] that names the
//! file, the line and column where they can be found, and the field path, e.g.
//! `conf.yaml:3:9: inbound.mtls: unknown variant "strickt", expected one of
//! "strict", "permissive"`.
//!
//! Durations are humantime strings (`10s`, `5m`, `250ms`). A section written with
//! no value (`inbound:` followed only by comments) means "all defaults".

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::identity::spiffe_id::{SpiffeId, TrustDomain};

/// Largest request body the policy may be given (`policy.body.max_bytes`).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Smallest accepted `limits.max_header_bytes`.
pub const MIN_HEADER_BYTES: usize = 1024;
/// Largest accepted `limits.max_connections`: far above any pod's need, and below
/// what the connection semaphore can hold.
const MAX_CONNECTIONS: usize = 1 << 24;
/// Default Workload API socket when `SPIFFE_ENDPOINT_SOCKET` is not set.
pub const DEFAULT_WORKLOAD_API_SOCKET: &str = "unix:///run/spire/sockets/agent.sock";
/// Directory where csi-driver-spiffe mounts the SVID files.
const CSI_DIR: &str = "/var/run/secrets/spiffe.io";
const LOG_LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

// ---------------------------------------------------------------------------
// Errors

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read configuration: {source}")]
    Io {
        /// The file name as given.
        file: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but its content is not a valid configuration.
    /// Displayed as `FILE:LINE:COLUMN: FIELD.PATH: message`; line and column are
    /// left out when unknown, the path when the error concerns the whole document.
    #[error("{}", render_invalid(.file, *.line, *.column, .path, .message))]
    Invalid {
        /// The file name as given.
        file: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// 1-based column, when known.
        column: Option<usize>,
        /// Field path such as `outbound.routes[0].spiffe_id`; empty for the root.
        path: String,
        /// What is wrong.
        message: String,
    },
}

fn render_invalid(
    file: &str,
    line: Option<usize>,
    column: Option<usize>,
    path: &str,
    message: &str,
) -> String {
    let mut s = file.to_owned();
    if let Some(l) = line {
        s.push_str(&format!(":{l}"));
        if let Some(c) = column {
            s.push_str(&format!(":{c}"));
        }
    }
    s.push_str(": ");
    if !path.is_empty() {
        s.push_str(path);
        s.push_str(": ");
    }
    s.push_str(message);
    s
}

// ---------------------------------------------------------------------------
// Public model

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

/// Rego policies and how they are evaluated.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Directory of `.rego` and data files (default `policies`).
    pub dir: PathBuf,
    /// Rule deciding inbound requests (default `data.envoy.authz.allow`).
    pub inbound_query: String,
    /// Rule deciding outbound requests (default `data.portcullis.outbound.allow`).
    pub outbound_query: String,
    /// Log decisions but allow everything; `true`/`false` or per direction.
    #[serde(deserialize_with = "or_default")]
    pub dry_run: DryRun,
    /// Giving the request body to the policy.
    #[serde(deserialize_with = "or_default")]
    pub body: BodyConfig,
    /// Optional remote policy bundle, polled.
    pub bundle: Option<BundleConfig>,
    /// Maximum time per decision (default 50ms).
    #[serde(deserialize_with = "de_duration")]
    pub eval_timeout: Duration,
    /// Maximum instructions per decision (default 1 000 000).
    pub max_instructions: usize,
    /// Decisions remembered per query, keyed on the input values the policy can
    /// read; only for policies whose decisions depend on nothing else (default 1024;
    /// 0 turns it off).
    pub decision_cache: usize,
    /// How often `dir` is checked for changes (default 1s).
    #[serde(deserialize_with = "de_duration")]
    pub watch_interval: Duration,
    /// The pod's labels file written by the downward API (`inject` sets it), given
    /// to policies as `data.portcullis.workload.labels` (default none).
    pub workload_labels: Option<PathBuf>,
    /// A candidate policy evaluated beside the enforced one and never enforced
    /// (default none).
    pub shadow: Option<ShadowConfig>,
}

/// `policy.shadow`: a directory or a bundle, compared with the enforced policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// Directory of the candidate's `.rego` and data files (watched like `policy.dir`).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Or a remote bundle, polled like `policy.bundle`.
    #[serde(default)]
    pub bundle: Option<BundleConfig>,
    /// Fraction of requests compared, in [0, 1] (default 1.0).
    #[serde(default = "default_shadow_fraction")]
    pub fraction: f64,
    /// Comparisons queued at most (default 1024); more are dropped and counted in
    /// `portcullis_policy_shadow_dropped_total`.
    #[serde(default = "default_shadow_queue")]
    pub queue: usize,
}

fn default_shadow_fraction() -> f64 {
    1.0
}

fn default_shadow_queue() -> usize {
    1024
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            dir: PathBuf::from("policies"),
            inbound_query: "data.envoy.authz.allow".to_owned(),
            outbound_query: "data.portcullis.outbound.allow".to_owned(),
            dry_run: DryRun::default(),
            body: BodyConfig::default(),
            bundle: None,
            eval_timeout: Duration::from_millis(50),
            max_instructions: 1_000_000,
            decision_cache: 1024,
            watch_interval: Duration::from_secs(1),
            workload_labels: None,
            shadow: None,
        }
    }
}

/// Dry-run per direction. YAML: a bool (both directions) or
/// `{inbound: bool, outbound: bool}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DryRun {
    /// Inbound decisions are logged but not enforced.
    pub inbound: bool,
    /// Outbound decisions are logged but not enforced.
    pub outbound: bool,
}

/// Request bodies in the policy input.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BodyConfig {
    /// Buffer the body and give it to the policy (default false).
    pub enabled: bool,
    /// Largest body buffered (default 8192, at most 16 MiB).
    pub max_bytes: usize,
    /// A longer body reaches the policy cut to `max_bytes` with `truncated_body`
    /// set (default true); false answers it 413 instead, before the policy.
    pub allow_partial: bool,
}

impl Default for BodyConfig {
    fn default() -> Self {
        BodyConfig {
            enabled: false,
            max_bytes: 8192,
            allow_partial: true,
        }
    }
}

/// A remote policy bundle. `url` is required.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleConfig {
    /// `http://` or `https://` URL of the bundle.
    pub url: String,
    /// Poll interval (default 30s).
    #[serde(default = "default_bundle_poll", deserialize_with = "de_duration")]
    pub poll: Duration,
    /// PEM file of the CA certificates trusted for an `https://` bundle server,
    /// instead of the system roots (optional; the rule of [`crate::fetch`]).
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

fn default_bundle_poll() -> Duration {
    Duration::from_secs(30)
}

/// JWT authentication.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// Token issuers accepted (default none: no JWT authentication).
    #[serde(deserialize_with = "or_default")]
    pub providers: Vec<JwtProvider>,
}

/// One token issuer. `name`, `issuer` and `jwks` are required.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtProvider {
    /// Unique name, used in the policy input and logs.
    pub name: String,
    /// Expected `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values (default none: `aud` not checked).
    #[serde(default, deserialize_with = "or_default")]
    pub audiences: Vec<String>,
    /// Where the signing keys come from.
    pub jwks: JwksSource,
    /// Where tokens are looked for (default: `authorization` header with prefix
    /// `Bearer `, then the `access_token` query parameter).
    #[serde(default = "default_token_locations")]
    pub from: Vec<TokenLocation>,
    /// Forward the token to the app (default false: removed).
    #[serde(default)]
    pub forward: bool,
    /// Leeway for `exp`/`nbf` (default 60s).
    #[serde(default = "default_clock_skew", deserialize_with = "de_duration")]
    pub clock_skew: Duration,
    /// Claims copied into request headers for the app.
    #[serde(default, deserialize_with = "or_default")]
    pub claims_to_headers: Vec<ClaimToHeader>,
    /// Key of the verified payload in the policy input's metadata
    /// (default `jwt_payload`).
    #[serde(default = "default_payload_key")]
    pub payload_in_metadata: String,
}

fn default_token_locations() -> Vec<TokenLocation> {
    vec![
        TokenLocation::Header {
            name: "authorization".to_owned(),
            prefix: "Bearer ".to_owned(),
        },
        TokenLocation::Query("access_token".to_owned()),
    ]
}

fn default_clock_skew() -> Duration {
    Duration::from_secs(60)
}

fn default_payload_key() -> String {
    "jwt_payload".to_owned()
}

/// A claim copied into a request header.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeader {
    /// Claim name.
    pub claim: String,
    /// Header name.
    pub header: String,
}

/// Where a provider's JSON Web Key Set comes from. YAML: `{url: ..., refresh: 5m}`,
/// `{file: path}` or `{inline: "<json>"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// Fetched over HTTP(S) and refreshed.
    Url {
        /// `http://` or `https://` URL.
        url: String,
        /// Refresh interval (default 5m).
        refresh: Duration,
        /// PEM CA bundle trusted for the URL's TLS instead of the system roots
        /// (default: the system roots; the rule of [`crate::fetch`]).
        ca: Option<PathBuf>,
    },
    /// Read from a file.
    File {
        /// Path of the JWKS JSON file.
        path: PathBuf,
    },
    /// The JWKS JSON itself.
    Inline(String),
}

/// Where a token is looked for. YAML: `{header: authorization, prefix: "Bearer "}`,
/// `{query: access_token}` or `{cookie: session}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLocation {
    /// A request header, with an optional prefix that is stripped (default `""`).
    Header {
        /// Header name.
        name: String,
        /// Required prefix, e.g. `Bearer `.
        prefix: String,
    },
    /// A query parameter.
    Query(String),
    /// A cookie.
    Cookie(String),
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

// ---------------------------------------------------------------------------
// Custom deserialization

/// A present key with a null value (`inbound:` with nothing under it) means the default.
fn or_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Used with `#[serde(default)]`: absent → `None`, present (even null) → `Some`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    or_default(d).map(Some)
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(s.trim()).map_err(|e| {
        de::Error::custom(format!(
            "invalid duration \"{s}\": {e} (expected e.g. \"10s\", \"5m\", \"250ms\")"
        ))
    })
}

fn de_duration_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

/// Deserializes a mapping into the raw type `R`, then converts it; the conversion's
/// error is raised inside the mapping so that it carries the mapping's location.
struct MapThen<R, T> {
    expecting: &'static str,
    convert: fn(R) -> Result<T, String>,
    _types: PhantomData<fn() -> (R, T)>,
}

impl<R, T> MapThen<R, T> {
    fn new(expecting: &'static str, convert: fn(R) -> Result<T, String>) -> Self {
        MapThen {
            expecting,
            convert,
            _types: PhantomData,
        }
    }
}

impl<'de, R: Deserialize<'de>, T> Visitor<'de> for MapThen<R, T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        let raw = R::deserialize(de::value::MapAccessDeserializer::new(map))?;
        (self.convert)(raw).map_err(de::Error::custom)
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDryRun {
    #[serde(default)]
    inbound: bool,
    #[serde(default)]
    outbound: bool,
}

impl<'de> Deserialize<'de> for DryRun {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DryRun;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a boolean or a mapping {inbound: bool, outbound: bool}")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<DryRun, E> {
                Ok(DryRun {
                    inbound: v,
                    outbound: v,
                })
            }
            fn visit_unit<E: de::Error>(self) -> Result<DryRun, E> {
                Ok(DryRun::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<DryRun, A::Error> {
                let raw = RawDryRun::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(DryRun {
                    inbound: raw.inbound,
                    outbound: raw.outbound,
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwks {
    url: Option<String>,
    #[serde(default, deserialize_with = "de_duration_opt")]
    refresh: Option<Duration>,
    file: Option<PathBuf>,
    inline: Option<String>,
    ca: Option<PathBuf>,
}

impl<'de> Deserialize<'de> for JwksSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(MapThen::new(
            "a mapping {url: ..., refresh: ...}, {file: ...} or {inline: ...}",
            |raw: RawJwks| match (raw.url, raw.file, raw.inline) {
                (Some(url), None, None) => Ok(JwksSource::Url {
                    url,
                    refresh: raw.refresh.unwrap_or(Duration::from_secs(300)),
                    ca: raw.ca,
                }),
                (None, _, _) if raw.ca.is_some() => Err("`ca` is only allowed with `url`".into()),
                (None, Some(path), None) if raw.refresh.is_none() => Ok(JwksSource::File { path }),
                (None, None, Some(json)) if raw.refresh.is_none() => Ok(JwksSource::Inline(json)),
                (None, None, None) => Err("one of `url`, `file` or `inline` is required".into()),
                (None, _, _) if raw.refresh.is_some() => {
                    Err("`refresh` is only allowed with `url`".into())
                }
                _ => Err("only one of `url`, `file` or `inline` may be set".into()),
            },
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokenLocation {
    header: Option<String>,
    prefix: Option<String>,
    query: Option<String>,
    cookie: Option<String>,
}

impl<'de> Deserialize<'de> for TokenLocation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(MapThen::new(
            "a mapping {header: ..., prefix: ...}, {query: ...} or {cookie: ...}",
            |raw: RawTokenLocation| match (raw.header, raw.query, raw.cookie) {
                (Some(name), None, None) => Ok(TokenLocation::Header {
                    name,
                    prefix: raw.prefix.unwrap_or_default(),
                }),
                (None, Some(q), None) if raw.prefix.is_none() => Ok(TokenLocation::Query(q)),
                (None, None, Some(c)) if raw.prefix.is_none() => Ok(TokenLocation::Cookie(c)),
                (None, None, None) => {
                    Err("one of `header`, `query` or `cookie` is required".into())
                }
                (None, _, _) if raw.prefix.is_some() => {
                    Err("`prefix` is only allowed with `header`".into())
                }
                _ => Err("only one of `header`, `query` or `cookie` may be set".into()),
            },
        ))
    }
}

// ---------------------------------------------------------------------------
// Loading

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            file: file.clone(),
            source,
        })?;
        Self::from_yaml_str(&text, &file)
    }

    /// Parses and validates a configuration; `file_name` is used in error messages.
    /// An empty document (or only comments) gives all defaults.
    pub fn from_yaml_str(text: &str, file_name: &str) -> Result<Config, ConfigError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let config: Option<Config> =
            serde_path_to_error::deserialize(de).map_err(|e| parse_error(e, text, file_name))?;
        let config = config.unwrap_or_default();
        config.validate().map_err(|(path, message)| {
            let (line, column) = match locate(text, &path) {
                Some((l, c)) => (Some(l), Some(c)),
                None => (None, None),
            };
            ConfigError::Invalid {
                file: file_name.to_owned(),
                line,
                column,
                path,
                message,
            }
        })?;
        Ok(config)
    }

    /// The dev CA's SPIFFE ID when identity is `dev_ca`: the configured one, or
    /// `spiffe://<trust_domain>/ns/default/sa/default`. `None` for other sources.
    pub fn dev_ca_spiffe_id(&self) -> Option<SpiffeId> {
        match &self.identity {
            IdentityConfig::DevCa(ca) => match &ca.spiffe_id {
                Some(id) => Some(id.clone()),
                None => SpiffeId::kubernetes(&self.trust_domain, "default", "default").ok(),
            },
            _ => None,
        }
    }

    /// Trust domains whose peers are accepted and which routes may name: own,
    /// federated (files identity) and `inbound.trusted_domains`.
    fn known_trust_domains(&self) -> BTreeSet<&TrustDomain> {
        let mut set: BTreeSet<&TrustDomain> = self.inbound.trusted_domains.iter().collect();
        set.insert(&self.trust_domain);
        if let IdentityConfig::Files(f) = &self.identity {
            set.extend(f.federated_bundles.keys());
        }
        set
    }

    /// Checks what the types cannot express; returns the field path and message.
    fn validate(&self) -> Result<(), (String, String)> {
        fn fail<T>(path: impl Into<String>, msg: impl Into<String>) -> Result<T, (String, String)> {
            Err((path.into(), msg.into()))
        }
        fn nonzero(path: &str, d: Duration) -> Result<(), (String, String)> {
            if d.is_zero() {
                return fail(path, "must be greater than zero");
            }
            Ok(())
        }
        fn http_url(path: &str, url: &str) -> Result<(), (String, String)> {
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"));
            match rest {
                Some(r) if !r.is_empty() && !r.starts_with('/') => {}
                _ => {
                    return fail(
                        path,
                        format!("\"{url}\" must be an http:// or https:// URL"),
                    )
                }
            }
            // Neither bundles nor key sets are signed in transit: plain HTTP only
            // where the traffic cannot leave the pod.
            let plain_host = url
                .parse::<http::Uri>()
                .ok()
                .filter(|u| u.scheme_str() == Some("http"))
                .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_owned()));
            match plain_host {
                Some(h) if !crate::fetch::is_loopback(&h) => fail(
                    path,
                    format!(
                        "\"{url}\": plain http:// is only allowed to a loopback host; use https://"
                    ),
                ),
                _ => Ok(()),
            }
        }
        fn header_name(path: &str, name: &str) -> Result<(), (String, String)> {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return fail(path, format!("\"{name}\" is not a valid header name"));
            }
            Ok(())
        }

        // identity
        match &self.identity {
            IdentityConfig::Files(f) => {
                nonzero("identity.files.poll_interval", f.poll_interval)?;
                for p in ["cert", "key", "bundle"] {
                    let v = match p {
                        "cert" => &f.cert,
                        "key" => &f.key,
                        _ => &f.bundle,
                    };
                    if v.as_os_str().is_empty() {
                        return fail(format!("identity.files.{p}"), "must not be empty");
                    }
                }
            }
            IdentityConfig::WorkloadApi(w) => {
                if !(w.socket.starts_with("unix://") || w.socket.starts_with("tcp://")) {
                    return fail(
                        "identity.workload_api.socket",
                        format!("\"{}\" must start with unix:// or tcp://", w.socket),
                    );
                }
            }
            IdentityConfig::DevCa(ca) => {
                nonzero("identity.dev_ca.ttl", ca.ttl)?;
                if let Some(id) = &ca.spiffe_id {
                    if id.trust_domain_name() != self.trust_domain.as_str() {
                        return fail(
                            "identity.dev_ca.spiffe_id",
                            format!("\"{id}\" is not in trust_domain \"{}\"", self.trust_domain),
                        );
                    }
                    if id.is_root() {
                        return fail(
                            "identity.dev_ca.spiffe_id",
                            format!("\"{id}\" has no path; a workload ID needs one"),
                        );
                    }
                }
            }
        }

        // inbound
        for (i, p) in self.inbound.opaque_ports.iter().enumerate() {
            if *p == 0 {
                return fail(format!("inbound.opaque_ports[{i}]"), "port 0 is not a port");
            }
        }
        for (i, p) in self.inbound.loopback_ports.iter().enumerate() {
            if *p == 0 {
                return fail(
                    format!("inbound.loopback_ports[{i}]"),
                    "port 0 is not a port",
                );
            }
        }
        if self.inbound.port_protocols.contains_key(&0) {
            return fail("inbound.port_protocols", "port 0 is not a port");
        }

        // outbound
        let out = &self.outbound;
        match out.mode {
            OutboundMode::Routes if out.routes.is_empty() => {
                return fail(
                    "outbound.routes",
                    "at least one route is required when outbound.mode is \"routes\"",
                );
            }
            OutboundMode::Transparent if !out.routes.is_empty() => {
                return fail(
                    "outbound.routes",
                    "routes are only used when outbound.mode is \"routes\"; set mode: routes",
                );
            }
            _ => {}
        }
        let check_routes_td = !matches!(self.identity, IdentityConfig::WorkloadApi(_));
        let known = self.known_trust_domains();
        for (i, r) in out.routes.iter().enumerate() {
            let path = format!("outbound.routes[{i}].spiffe_id");
            if r.spiffe_id.is_root() {
                return fail(
                    path,
                    format!("\"{}\" has no path; a workload ID needs one", r.spiffe_id),
                );
            }
            if check_routes_td && !known.contains(&r.spiffe_id.trust_domain()) {
                return fail(
                    path,
                    format!(
                        "\"{}\" is outside trust_domain \"{}\" and the federated trust domains",
                        r.spiffe_id, self.trust_domain
                    ),
                );
            }
        }

        // listen addresses
        let mut listens: Vec<(String, SocketAddr)> = vec![
            ("inbound.listen".into(), self.inbound.listen),
            ("admin.listen".into(), self.admin.listen),
        ];
        if out.mode == OutboundMode::Transparent {
            listens.insert(1, ("outbound.listen".into(), out.listen));
        }
        for (i, r) in out.routes.iter().enumerate() {
            listens.push((format!("outbound.routes[{i}].listen"), r.listen));
        }
        for (i, (path, addr)) in listens.iter().enumerate() {
            for (other_path, other) in &listens[..i] {
                let clash = addr.port() == other.port()
                    && (addr.ip() == other.ip()
                        || addr.ip().is_unspecified()
                        || other.ip().is_unspecified());
                if clash {
                    return fail(
                        path.clone(),
                        format!("{addr} conflicts with {other_path} ({other})"),
                    );
                }
            }
        }

        // policy
        let pol = &self.policy;
        for (path, q) in [
            ("policy.inbound_query", &pol.inbound_query),
            ("policy.outbound_query", &pol.outbound_query),
        ] {
            if !q.starts_with("data.") || q.len() == "data.".len() {
                return fail(
                    path,
                    format!("\"{q}\" must be a rule path starting with \"data.\""),
                );
            }
        }
        if pol.body.max_bytes > MAX_BODY_BYTES {
            return fail(
                "policy.body.max_bytes",
                format!(
                    "{} is more than the maximum {MAX_BODY_BYTES} (16 MiB)",
                    pol.body.max_bytes
                ),
            );
        }
        if pol.body.enabled && pol.body.max_bytes == 0 {
            return fail(
                "policy.body.max_bytes",
                "must be greater than zero when body.enabled",
            );
        }
        if let Some(b) = &pol.bundle {
            http_url("policy.bundle.url", &b.url)?;
            nonzero("policy.bundle.poll", b.poll)?;
        }
        nonzero("policy.eval_timeout", pol.eval_timeout)?;
        nonzero("policy.watch_interval", pol.watch_interval)?;
        if pol.decision_cache > 1 << 20 {
            return fail(
                "policy.decision_cache",
                format!(
                    "{} is more than the maximum {}",
                    pol.decision_cache,
                    1 << 20
                ),
            );
        }
        if pol.max_instructions == 0 {
            return fail("policy.max_instructions", "must be greater than zero");
        }

        // jwt
        let mut names = BTreeSet::new();
        for (i, p) in self.jwt.providers.iter().enumerate() {
            let base = format!("jwt.providers[{i}]");
            if p.name.trim().is_empty() {
                return fail(format!("{base}.name"), "must not be empty");
            }
            if !names.insert(p.name.as_str()) {
                return fail(
                    format!("{base}.name"),
                    format!("duplicate provider name \"{}\"", p.name),
                );
            }
            if p.issuer.trim().is_empty() {
                return fail(format!("{base}.issuer"), "must not be empty");
            }
            match &p.jwks {
                JwksSource::Url { url, refresh, ca } => {
                    http_url(&format!("{base}.jwks.url"), url)?;
                    nonzero(&format!("{base}.jwks.refresh"), *refresh)?;
                    if ca.as_ref().is_some_and(|c| c.as_os_str().is_empty()) {
                        return fail(format!("{base}.jwks.ca"), "must not be empty");
                    }
                }
                JwksSource::File { path } if path.as_os_str().is_empty() => {
                    return fail(format!("{base}.jwks.file"), "must not be empty");
                }
                JwksSource::Inline(json) if json.trim().is_empty() => {
                    return fail(format!("{base}.jwks.inline"), "must not be empty");
                }
                _ => {}
            }
            if p.from.is_empty() {
                return fail(
                    format!("{base}.from"),
                    "at least one token location is required",
                );
            }
            for (j, loc) in p.from.iter().enumerate() {
                match loc {
                    TokenLocation::Header { name, .. } => {
                        header_name(&format!("{base}.from[{j}].header"), name)?
                    }
                    TokenLocation::Query(q) if q.is_empty() => {
                        return fail(format!("{base}.from[{j}].query"), "must not be empty")
                    }
                    TokenLocation::Cookie(c) if c.is_empty() => {
                        return fail(format!("{base}.from[{j}].cookie"), "must not be empty")
                    }
                    _ => {}
                }
            }
            for (j, c) in p.claims_to_headers.iter().enumerate() {
                if c.claim.is_empty() {
                    return fail(
                        format!("{base}.claims_to_headers[{j}].claim"),
                        "must not be empty",
                    );
                }
                header_name(&format!("{base}.claims_to_headers[{j}].header"), &c.header)?;
            }
            if p.payload_in_metadata.is_empty() {
                return fail(format!("{base}.payload_in_metadata"), "must not be empty");
            }
        }

        // limits
        let l = &self.limits;
        nonzero("limits.header_timeout", l.header_timeout)?;
        nonzero("limits.idle_timeout", l.idle_timeout)?;
        nonzero("limits.connect_timeout", l.connect_timeout)?;
        nonzero("limits.upstream_timeout", l.upstream_timeout)?;
        if l.max_header_bytes < MIN_HEADER_BYTES {
            return fail(
                "limits.max_header_bytes",
                format!(
                    "{} is less than the minimum {MIN_HEADER_BYTES}",
                    l.max_header_bytes
                ),
            );
        }
        for (path, v) in [
            ("limits.max_headers", l.max_headers),
            ("limits.max_connections", l.max_connections),
            (
                "limits.max_concurrent_streams",
                l.max_concurrent_streams as usize,
            ),
        ] {
            if v == 0 {
                return fail(path, "must be greater than zero");
            }
        }
        if l.max_connections > MAX_CONNECTIONS {
            return fail(
                "limits.max_connections",
                format!(
                    "{} is more than the maximum {MAX_CONNECTIONS}",
                    l.max_connections
                ),
            );
        }

        // log
        if !LOG_LEVELS.contains(&self.log.level.as_str()) {
            return fail(
                "log.level",
                format!(
                    "\"{}\" is not one of \"trace\", \"debug\", \"info\", \"warn\", \"error\"",
                    self.log.level
                ),
            );
        }
        for (i, id) in self.admin.tap.allowed_principals.iter().enumerate() {
            if let Err(e) = crate::identity::SpiffeId::parse(id) {
                return fail(format!("admin.tap.allowed_principals[{i}]"), e.to_string());
            }
        }
        if let Some(shadow) = &self.policy.shadow {
            if shadow.dir.is_some() == shadow.bundle.is_some() {
                return fail("policy.shadow", "give exactly one of dir and bundle");
            }
            if !(0.0..=1.0).contains(&shadow.fraction) {
                return fail(
                    "policy.shadow.fraction",
                    format!("{} is not in [0, 1]", shadow.fraction),
                );
            }
            if shadow.queue == 0 {
                return fail("policy.shadow.queue", "must be at least 1");
            }
        }
        let s = self.log.sample_allows;
        if !(0.0..=1.0).contains(&s) {
            return fail("log.sample_allows", format!("{s} is not in [0, 1]"));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Error rendering

fn parse_error(
    e: serde_path_to_error::Error<serde_yaml::Error>,
    text: &str,
    file: &str,
) -> ConfigError {
    let path = e.path().to_string();
    let path = if path == "." || path == "?" {
        String::new()
    } else {
        path
    };
    let inner = e.into_inner();
    let (line, column) = match inner.location() {
        Some(loc) => (Some(loc.line()), Some(loc.column())),
        None => (None, None),
    };
    let mut message = inner.to_string();
    // Errors raised after a scalar was read (durations, SPIFFE IDs) carry the
    // mark of an enclosing node; a field found further on is more precise.
    let at_key = message.contains("unknown field") || message.contains("duplicate field");
    let (line, column) = match (line, locate(text, &path)) {
        (Some(l), Some((fl, fc))) if fl > l => (Some(fl), Some(fc)),
        (Some(l), Some((fl, fc))) if fl == l && !at_key && Some(fc) > column => {
            (Some(fl), Some(fc))
        }
        (None, Some((fl, fc))) => (Some(fl), Some(fc)),
        _ => (line, column),
    };
    // serde_yaml appends " at line L column C" and prefixes its own path.
    if let Some(loc) = inner.location() {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(m) = message.strip_suffix(&suffix) {
            message = m.to_owned();
        }
    }
    if let Some((prefix, rest)) = message.split_once(": ") {
        let prefix_is_path = !prefix.is_empty()
            && !prefix.contains(' ')
            && (path == prefix
                || path.starts_with(&format!("{prefix}."))
                || path.starts_with(&format!("{prefix}[")));
        if prefix_is_path {
            message = rest.to_owned();
        }
    }
    ConfigError::Invalid {
        file: file.to_owned(),
        line,
        column,
        path,
        message: rewrite_serde_message(&message),
    }
}

/// serde quotes names with backticks and says "expected `a` or `b`" for two
/// choices; rewrite to `expected one of "a", "b"` with double quotes.
fn rewrite_serde_message(msg: &str) -> String {
    let mut msg = msg.to_owned();
    if let Some(i) = msg.find(", expected `") {
        let tail = &msg[i + ", expected ".len()..];
        if let Some((a, b)) = tail.split_once("` or `") {
            if !a.contains(',') && b.ends_with('`') && !b.contains(',') {
                msg = format!("{}, expected one of {a}`, `{b}", &msg[..i]);
            }
        }
    }
    msg.replace('`', "\"")
}

/// Best-effort location of a field path such as `outbound.routes[1].listen` in
/// the YAML text, for errors found after parsing. Works for block style and for
/// simple flow style; returns the 1-based line and column of the last key's
/// value, or of the key itself when its value is not on the same line.
fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    #[derive(Debug)]
    enum Seg<'a> {
        Key(&'a str),
        Index(usize),
    }
    let mut segs = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            segs.push(Seg::Key(key));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            segs.push(Seg::Index(r[..end].parse().ok()?));
            rest = &r[end + 1..];
        }
    }

    // Lines with comments removed.
    let lines: Vec<&str> = text
        .lines()
        .map(|l| {
            let mut cut = l.len();
            let b = l.as_bytes();
            for (i, &c) in b.iter().enumerate() {
                if c == b'#' && (i == 0 || b[i - 1] == b' ' || b[i - 1] == b'\t') {
                    cut = i;
                    break;
                }
            }
            &l[..cut]
        })
        .collect();
    let indent = |l: &str| l.len() - l.trim_start().len();

    // Find `key:` at a key boundary in `line` starting at byte `from`.
    let find_key = |line: &str, key: &str, from: usize| -> Option<usize> {
        let mut start = from;
        while let Some(off) = line.get(start..)?.find(key) {
            let i = start + off;
            let before_ok = i == 0
                || matches!(
                    line.as_bytes()[i - 1],
                    b' ' | b'\t' | b'{' | b',' | b'-' | b'"' | b'\''
                );
            let after = line[i + key.len()..].trim_start_matches(['"', '\'']);
            if before_ok && after.trim_start().starts_with(':') {
                return Some(i);
            }
            start = i + key.len();
        }
        None
    };

    // Current position: line index, column (byte) and indentation of its line.
    let mut pos: Option<(usize, usize)> = None;
    let mut skip = 0usize;
    for seg in &segs {
        match seg {
            Seg::Index(i) => skip = *i,
            Seg::Key(key) => {
                let (start_line, start_col, parent_indent) = match pos {
                    None => (0, 0, None),
                    Some((l, c)) => (l, c + 1, Some(indent(lines[l]))),
                };
                let mut found = None;
                let mut remaining = skip;
                'scan: for (li, line) in lines.iter().enumerate().skip(start_line) {
                    if li > start_line && !line.trim().is_empty() {
                        if let Some(pi) = parent_indent {
                            if indent(line) <= pi && !line.trim_start().starts_with('-') {
                                break 'scan;
                            }
                        }
                    }
                    let mut from = if li == start_line { start_col } else { 0 };
                    while let Some(col) = find_key(line, key, from) {
                        if pos.is_none() && indent(line) != 0 {
                            break;
                        }
                        if remaining == 0 {
                            found = Some((li, col));
                            break 'scan;
                        }
                        remaining -= 1;
                        from = col + key.len();
                    }
                }
                skip = 0;
                pos = Some(found?);
            }
        }
    }
    let (l, c) = pos?;
    // Point at the value when it is on the same line as the key.
    let line = lines[l];
    let after_key = line[c..].find(':').map(|i| c + i + 1)?;
    let value = line[after_key..].trim_start();
    let col = if value.is_empty() {
        c
    } else {
        line.len() - line[after_key..].trim_start().len()
    };
    Some((l + 1, col + 1))
}

// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::from_yaml_str(text, "conf.yaml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(text: &str) -> String {
        match Config::from_yaml_str(text, "conf.yaml") {
            Ok(c) => panic!("parsed: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn invalid(text: &str) -> (Option<usize>, Option<usize>, String, String) {
        match Config::from_yaml_str(text, "conf.yaml") {
            Ok(c) => panic!("parsed: {c:?}"),
            Err(ConfigError::Invalid {
                line,
                column,
                path,
                message,
                ..
            }) => (line, column, path, message),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn empty_document_gives_defaults() {
        for text in ["", "\n", "# only a comment\n# and another\n", "---\n"] {
            let c = parse(text);
            assert_eq!(c.trust_domain.as_str(), "cluster.local");
            assert!(matches!(c.identity, IdentityConfig::DevCa(_)));
            assert_eq!(c.inbound.listen, "0.0.0.0:15006".parse().unwrap());
            assert_eq!(c.inbound.mtls, MtlsMode::Strict);
            assert_eq!(c.inbound.app, "127.0.0.1:8080".parse().unwrap());
            assert_eq!(c.outbound.listen, "127.0.0.1:15001".parse().unwrap());
            assert_eq!(c.outbound.mode, OutboundMode::Transparent);
            assert_eq!(
                c.outbound.mesh_networks,
                vec!["10.0.0.0/8".parse().unwrap()]
            );
            assert_eq!(c.outbound.non_mesh, NonMeshAction::Passthrough);
            assert_eq!(c.policy.dir, PathBuf::from("policies"));
            assert_eq!(c.policy.inbound_query, "data.envoy.authz.allow");
            assert_eq!(c.policy.outbound_query, "data.portcullis.outbound.allow");
            assert_eq!(c.policy.dry_run, DryRun::default());
            assert_eq!(c.policy.eval_timeout, Duration::from_millis(50));
            assert_eq!(c.policy.max_instructions, 1_000_000);
            assert!(c.policy.bundle.is_none());
            assert!(c.jwt.providers.is_empty());
            assert_eq!(c.admin.listen, "0.0.0.0:15000".parse().unwrap());
            assert_eq!(c.limits.header_timeout, Duration::from_secs(10));
            assert_eq!(c.limits.max_header_bytes, 65536);
            assert_eq!(c.limits.upstream_timeout, Duration::from_secs(30));
            assert_eq!(c.log.format, LogFormat::Json);
            assert_eq!(c.log.level, "info");
            assert!(c.log.decisions);
            assert_eq!(c.log.sample_allows, 1.0);
            assert_eq!(c.shutdown.grace_period, Duration::from_secs(15));
            assert_eq!(
                c.dev_ca_spiffe_id().unwrap().as_str(),
                "spiffe://cluster.local/ns/default/sa/default"
            );
        }
    }

    #[test]
    fn null_sections_are_defaults() {
        let c = parse("inbound:\n  # nothing yet\noutbound:\nidentity:\n  files:\n");
        assert_eq!(c.inbound.listen.port(), 15006);
        match c.identity {
            IdentityConfig::Files(f) => {
                assert_eq!(f.cert, PathBuf::from("/var/run/secrets/spiffe.io/tls.crt"));
                assert_eq!(f.poll_interval, Duration::from_secs(1));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_enum_values_name_file_line_column_and_path() {
        assert_eq!(
            err("trust_domain: cluster.local\ninbound:\n  mtls: strickt\n"),
            "conf.yaml:3:9: inbound.mtls: unknown variant \"strickt\", expected one of \"strict\", \"permissive\""
        );
        let (l, c, p, m) = invalid("outbound:\n  mode: magic\n");
        assert_eq!((l, c, p.as_str()), (Some(2), Some(9), "outbound.mode"));
        assert!(m.contains("\"transparent\", \"routes\""), "{m}");
        let (l, _, p, _) = invalid("outbound:\n  non_mesh: drop\n");
        assert_eq!((l, p.as_str()), (Some(2), "outbound.non_mesh"));
        let (l, _, p, _) = invalid("log: {format: xml}\n");
        assert_eq!((l, p.as_str()), (Some(1), "log.format"));
        let (l, _, p, _) = invalid(
            "outbound:\n  mode: routes\n  routes:\n    - listen: 127.0.0.1:9001\n      upstream: 10.0.0.9:15006\n      spiffe_id: spiffe://cluster.local/x\n      protocol: udp\n",
        );
        assert_eq!((l, p.as_str()), (Some(7), "outbound.routes[0].protocol"));
    }

    #[test]
    fn unknown_key_at_depth() {
        let e = err("inbound:\n  mtlss: strict\n");
        assert!(
            e.starts_with("conf.yaml:2:3: inbound.mtlss: unknown field \"mtlss\""),
            "{e}"
        );
        let (l, _, p, m) = invalid("policy:\n  body:\n    enabled: true\n    max_byte: 10\n");
        assert_eq!((l, p.as_str()), (Some(4), "policy.body.max_byte"));
        assert!(m.starts_with("unknown field \"max_byte\""), "{m}");
        let (_, _, p, _) = invalid("identity:\n  files:\n    certs: /x\n");
        assert_eq!(p, "identity.files.certs");
        let (_, _, p, _) = invalid("colour: blue\n");
        assert_eq!(p, "colour");
    }

    #[test]
    fn two_identity_sources() {
        let (l, _, p, m) = invalid("identity:\n  files: {cert: /a}\n  dev_ca: {dir: /tmp/ca}\n");
        assert_eq!(p, "identity");
        assert!(l.is_some());
        assert_eq!(
            m,
            "exactly one identity source may be set, found files and dev_ca"
        );
        let c = parse("identity:\n  workload_api: {socket: \"unix:///tmp/agent.sock\"}\n");
        assert!(c.dev_ca_spiffe_id().is_none());
        match c.identity {
            IdentityConfig::WorkloadApi(w) => assert_eq!(w.socket, "unix:///tmp/agent.sock"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_spiffe_id_in_routes() {
        let (l, c, p, m) = invalid(
            "outbound:\n  mode: routes\n  routes:\n    - listen: 127.0.0.1:9001\n      upstream: 10.0.0.9:15006\n      spiffe_id: spiffe://Cluster.local/x\n",
        );
        assert_eq!(p, "outbound.routes[0].spiffe_id");
        assert_eq!((l, c), (Some(6), Some(18)));
        assert!(m.contains("spiffe://Cluster.local/x"), "{m}");
    }

    #[test]
    fn bad_duration_and_socket_address() {
        let (l, c, p, m) = invalid("limits:\n  header_timeout: 10 parsecs\n");
        assert_eq!(
            (l, c, p.as_str()),
            (Some(2), Some(19), "limits.header_timeout")
        );
        assert!(m.starts_with("invalid duration \"10 parsecs\""), "{m}");
        let (l, _, p, _) = invalid("shutdown: {grace_period: soon}\n");
        assert_eq!((l, p.as_str()), (Some(1), "shutdown.grace_period"));
        let (l, c, p, m) = invalid("admin:\n  listen: localhost:15000\n");
        assert_eq!((l, c, p.as_str()), (Some(2), Some(11), "admin.listen"));
        assert!(m.contains("socket address"), "{m}");
        let c = parse(
            "limits: {header_timeout: 250ms, idle_timeout: 5m}\nshutdown: {grace_period: 0s}\n",
        );
        assert_eq!(c.limits.header_timeout, Duration::from_millis(250));
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.shutdown.grace_period, Duration::ZERO);
    }

    #[test]
    fn dry_run_forms() {
        let c = parse("policy: {dry_run: true}\n");
        assert_eq!(
            c.policy.dry_run,
            DryRun {
                inbound: true,
                outbound: true
            }
        );
        let c = parse("policy:\n  dry_run:\n    outbound: true\n");
        assert_eq!(
            c.policy.dry_run,
            DryRun {
                inbound: false,
                outbound: true
            }
        );
        let c = parse("policy: {dry_run: {inbound: true, outbound: false}}\n");
        assert_eq!(
            c.policy.dry_run,
            DryRun {
                inbound: true,
                outbound: false
            }
        );
        let (_, _, p, _) = invalid("policy: {dry_run: {sideways: true}}\n");
        assert_eq!(p, "policy.dry_run.sideways");
        let (_, _, p, _) = invalid("policy: {dry_run: maybe}\n");
        assert_eq!(p, "policy.dry_run");
    }

    const PROVIDER: &str =
        "jwt:\n  providers:\n    - name: corp\n      issuer: https://idp.example\n";

    #[test]
    fn jwks_forms() {
        let c = parse(&format!(
            "{PROVIDER}      jwks: {{url: https://idp.example/jwks.json}}\n"
        ));
        let p = &c.jwt.providers[0];
        assert_eq!(
            p.jwks,
            JwksSource::Url {
                url: "https://idp.example/jwks.json".into(),
                refresh: Duration::from_secs(300),
                ca: None,
            }
        );
        let c = parse(&format!(
            "{PROVIDER}      jwks: {{url: https://idp.example/jwks.json, ca: /etc/idp-ca.pem}}\n"
        ));
        assert!(
            matches!(&c.jwt.providers[0].jwks, JwksSource::Url { ca: Some(ca), .. } if ca.as_os_str() == "/etc/idp-ca.pem")
        );
        let (_, _, at, m) = invalid(&format!("{PROVIDER}      jwks: {{file: /a, ca: /b}}\n"));
        assert_eq!(at, "jwt.providers[0].jwks");
        assert!(m.contains("only allowed with"), "{m}");
        let p = &parse(&format!(
            "{PROVIDER}      jwks: {{url: https://idp.example/jwks.json}}\n"
        ))
        .jwt
        .providers[0];
        assert_eq!(p.from, default_token_locations());
        assert_eq!(p.clock_skew, Duration::from_secs(60));
        assert_eq!(p.payload_in_metadata, "jwt_payload");
        let c = parse(&format!(
            "{PROVIDER}      jwks: {{url: http://127.0.0.1:8081/jwks, refresh: 1m}}\n"
        ));
        assert!(
            matches!(c.jwt.providers[0].jwks, JwksSource::Url { refresh, .. } if refresh == Duration::from_secs(60))
        );
        let c = parse(&format!("{PROVIDER}      jwks: {{file: /etc/jwks.json}}\n"));
        assert_eq!(
            c.jwt.providers[0].jwks,
            JwksSource::File {
                path: "/etc/jwks.json".into()
            }
        );
        let c = parse(&format!(
            "{PROVIDER}      jwks:\n        inline: '{{\"keys\": []}}'\n"
        ));
        assert_eq!(
            c.jwt.providers[0].jwks,
            JwksSource::Inline("{\"keys\": []}".into())
        );

        let (_, _, p, m) = invalid(&format!("{PROVIDER}      jwks: {{file: /a, inline: x}}\n"));
        assert_eq!(p, "jwt.providers[0].jwks");
        assert!(m.contains("only one of"), "{m}");
        let (_, _, p, _) = invalid(&format!("{PROVIDER}      jwks: {{}}\n"));
        assert_eq!(p, "jwt.providers[0].jwks");
        let (l, _, p, m) = invalid(&format!("{PROVIDER}      jwks: {{url: ftp://idp/jwks}}\n"));
        assert_eq!((l, p.as_str()), (Some(5), "jwt.providers[0].jwks.url"));
        assert!(m.contains("http:// or https://"), "{m}");
        let (_, _, p, m) = invalid("jwt:\n  providers:\n    - name: corp\n      issuer: x\n");
        assert_eq!(p, "jwt.providers[0]");
        assert!(m.contains("missing field \"jwks\""), "{m}");
    }

    #[test]
    fn token_location_forms() {
        let c = parse(&format!(
            "{PROVIDER}      jwks: {{file: /j}}\n      from:\n        - {{header: authorization, prefix: \"Bearer \"}}\n        - header: x-token\n        - query: access_token\n        - cookie: session\n"
        ));
        assert_eq!(
            c.jwt.providers[0].from,
            vec![
                TokenLocation::Header {
                    name: "authorization".into(),
                    prefix: "Bearer ".into()
                },
                TokenLocation::Header {
                    name: "x-token".into(),
                    prefix: String::new()
                },
                TokenLocation::Query("access_token".into()),
                TokenLocation::Cookie("session".into()),
            ]
        );
        let (_, _, p, m) = invalid(&format!(
            "{PROVIDER}      jwks: {{file: /j}}\n      from: [{{query: a, prefix: b}}]\n"
        ));
        assert_eq!(p, "jwt.providers[0].from[0]");
        assert!(m.contains("`prefix`") || m.contains("\"prefix\""), "{m}");
        let (_, _, p, _) = invalid(&format!(
            "{PROVIDER}      jwks: {{file: /j}}\n      from: [{{header: \"bad header\"}}]\n"
        ));
        assert_eq!(p, "jwt.providers[0].from[0].header");
    }

    #[test]
    fn semantic_errors() {
        let cases: &[(&str, &str, &str)] = &[
            ("outbound: {mode: routes}\n", "outbound.routes", "at least one route"),
            (
                "outbound:\n  mode: routes\n  routes: [{listen: 127.0.0.1:9001, upstream: 10.0.0.9:15006, spiffe_id: spiffe://other.org/x}]\n",
                "outbound.routes[0].spiffe_id",
                "outside trust_domain",
            ),
            (
                "outbound:\n  routes: [{listen: 127.0.0.1:9001, upstream: 10.0.0.9:15006, spiffe_id: spiffe://cluster.local/x}]\n",
                "outbound.routes",
                "only used when",
            ),
            ("admin: {listen: 127.0.0.1:15006}\n", "admin.listen", "conflicts with inbound.listen"),
            (
                "outbound:\n  mode: routes\n  routes:\n    - {listen: 127.0.0.1:9001, upstream: 10.0.0.9:15006, spiffe_id: spiffe://cluster.local/a}\n    - {listen: 127.0.0.1:9001, upstream: 10.0.0.8:15006, spiffe_id: spiffe://cluster.local/b}\n",
                "outbound.routes[1].listen",
                "conflicts with outbound.routes[0].listen",
            ),
            (
                "jwt:\n  providers:\n    - {name: a, issuer: x, jwks: {file: /j}}\n    - {name: a, issuer: y, jwks: {file: /k}}\n",
                "jwt.providers[1].name",
                "duplicate provider name",
            ),
            ("jwt:\n  providers:\n    - {name: a, issuer: \"\", jwks: {file: /j}}\n", "jwt.providers[0].issuer", "must not be empty"),
            ("log: {sample_allows: 1.5}\n", "log.sample_allows", "not in [0, 1]"),
            ("log: {level: verbose}\n", "log.level", "not one of"),
            ("policy: {body: {max_bytes: 16777217}}\n", "policy.body.max_bytes", "maximum"),
            ("limits: {max_header_bytes: 512}\n", "limits.max_header_bytes", "minimum"),
            ("limits: {max_connections: 99999999999}\n", "limits.max_connections", "maximum"),
            ("limits: {header_timeout: 0s}\n", "limits.header_timeout", "greater than zero"),
            ("policy: {inbound_query: envoy.authz.allow}\n", "policy.inbound_query", "data."),
            ("policy: {bundle: {url: file:///x.tar.gz}}\n", "policy.bundle.url", "http://"),
            ("policy: {bundle: {url: http://bundles.example/b.tar.gz}}\n", "policy.bundle.url", "loopback"),
            (
                "identity: {dev_ca: {spiffe_id: spiffe://other.org/ns/a/sa/b}}\n",
                "identity.dev_ca.spiffe_id",
                "not in trust_domain",
            ),
            ("identity: {workload_api: {socket: /tmp/agent.sock}}\n", "identity.workload_api.socket", "unix://"),
        ];
        for (text, path, needle) in cases {
            let (_, _, p, m) = invalid(text);
            assert_eq!(&p, path, "{text}");
            assert!(m.contains(needle), "{text}: {m}");
        }
        // Locations found after parsing.
        let (l, c, _, _) = invalid("log:\n  format: text\n  sample_allows: 2\n");
        assert_eq!((l, c), (Some(3), Some(18)));
        let (l, c, _, _) = invalid(
            "outbound:\n  mode: routes\n  routes:\n    - listen: 127.0.0.1:9001\n      upstream: 10.0.0.9:15006\n      spiffe_id: spiffe://cluster.local/a\n    - listen: 127.0.0.1:9001\n      upstream: 10.0.0.9:15006\n      spiffe_id: spiffe://cluster.local/b\n",
        );
        assert_eq!((l, c), (Some(7), Some(15)));
        // Federated and trusted trust domains are allowed in routes.
        parse("identity:\n  files:\n    federated_bundles: {partner.org: /b.pem}\noutbound:\n  mode: routes\n  routes: [{listen: 127.0.0.1:9001, upstream: 10.0.0.9:15006, spiffe_id: spiffe://partner.org/x}]\n");
        parse("inbound: {trusted_domains: [partner.org]}\noutbound:\n  mode: routes\n  routes: [{listen: 127.0.0.1:9001, upstream: 10.0.0.9:15006, spiffe_id: spiffe://partner.org/x}]\n");
        // Error display without a location.
        let e = ConfigError::Invalid {
            file: "f.yaml".into(),
            line: None,
            column: None,
            path: "a.b".into(),
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "f.yaml: a.b: bad");
    }

    #[test]
    fn syntax_error_has_location() {
        let e = err("inbound:\n  listen: [\n");
        assert!(e.starts_with("conf.yaml:"), "{e}");
        let e = Config::load(Path::new("/nonexistent/portcullis.yaml")).unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }));
        assert!(e
            .to_string()
            .starts_with("/nonexistent/portcullis.yaml: cannot read"));
    }

    #[test]
    fn every_example_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 6, "found {n} examples in {}", dir.display());
    }
}
