//! portcullis: a per-pod sidecar authorization proxy.
//!
//! The library holds everything; `main.rs` only parses the command line.
//! Each module owns one concern:
//!
//! - [`config`]: the YAML model, defaults and validation with field paths.
//! - [`identity`]: SPIFFE IDs, X.509-SVID verification, certificate sources, the dev CA.
//! - [`authn`]: end-user JWT authentication: providers, JWKS caches, token checks.
//! - [`fetch`]: the one HTTPS client for downloads (JWKS documents, policy bundles).
//! - [`policy`]: the Rego engine, the OPA-Envoy input document and decision results.
//! - [`proxy`]: the data path (TLS sniffing, HTTP, decisions, forwarding, opaque TCP).
//! - [`admin`], [`metrics`], [`decision_log`]: operating the sidecar.
//! - [`run`]: start-up, signals and draining; [`demo`]: the zero-configuration quick start.
//! - [`commands`]: what the command line calls.
//! - [`k8s`]: iptables rules, `inject`, the admission `webhook`, the app probe runner.
//! - [`import`]: `portcullis import istio` (Istio security resources → Rego).
//!
//! Test helpers and the fuzz targets' entry points live in the workspace crate
//! `portcullis-testkit` (`testkit/`), outside the release library.

pub mod admin;
pub mod authn;
pub mod commands;
pub mod config;
pub mod decision_log;
pub mod demo;
pub mod direction;
pub mod fetch;
pub mod footprint;
pub mod identity;
pub mod import;
pub mod k8s;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod run;
pub mod tasks;
