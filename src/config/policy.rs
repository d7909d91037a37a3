//! The `policy` section: where policies come from, how they are evaluated, dry
//! run, request bodies and the shadow policy.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::de::{de_duration, or_default};

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
