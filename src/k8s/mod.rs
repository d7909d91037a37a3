//! Kubernetes integration: the init container's iptables rules, the sidecar
//! injector (`portcullis inject`), the mutating admission webhook
//! (`portcullis webhook`) and the admin-side runner of the app's rewritten
//! kubelet probes.
//!
//! - [`iptables`]: the pod's nat interception rules.
//! - [`inject`]: the one mutation both entry points apply, on JSON values so that
//!   fields this build does not know survive untouched.
//! - [`webhook`]: AdmissionReview v1 over TLS, answering with a JSON patch.
//! - [`probe`]: `GET /app-health/<container>/<livez|readyz|startupz>` on the admin
//!   port runs the app's original HTTP/TCP/gRPC probe from inside the pod.
//! - [`cli`]: the command-line arguments of `inject` and `webhook`.

pub mod cli;
pub mod inject;
pub mod iptables;
pub mod probe;
pub mod webhook;
