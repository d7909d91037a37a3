//! Command-line arguments of `portcullis inject` and `portcullis webhook`, and
//! the functions `main.rs` calls for them.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use super::inject::{
    default_image, inject_yaml, InjectOptions, Outcome, SidecarMode, SidecarResources, SvidSource,
};
use super::webhook::{bind_and_serve, WebhookConfig};

/// Where the sidecar's SVID comes from (`--svid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SvidKind {
    /// cert-manager csi-driver-spiffe CSI volume (default).
    Csi,
    /// A Secret with tls.crt, tls.key and ca.crt (`--svid-secret`).
    Secret,
    /// The SPIRE agent's Workload API socket (SPIFFE CSI driver).
    Spire,
}

/// What the injection adds; shared by `inject` and `webhook`.
#[derive(Debug, Clone, Args)]
pub struct InjectArgs {
    /// Sidecar image.
    #[arg(long, default_value_t = default_image())]
    pub image: String,
    /// Image pull policy of the added containers.
    #[arg(long, default_value = "IfNotPresent")]
    pub image_pull_policy: String,
    /// `native`: init container with restartPolicy Always (Kubernetes 1.29+);
    /// `container`: a classic first container.
    #[arg(long, value_enum, default_value_t = SidecarMode::Native)]
    pub sidecar_mode: SidecarMode,
    /// Where the SVID comes from.
    #[arg(long, value_enum, default_value_t = SvidKind::Csi)]
    pub svid: SvidKind,
    /// Secret name for `--svid secret`.
    #[arg(long)]
    pub svid_secret: Option<String>,
    /// ConfigMap with the .rego policies, in the pod's namespace.
    #[arg(long, default_value = "portcullis-policies")]
    pub policies_configmap: String,
    /// The mesh's trust domain.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Inbound mTLS mode: strict or permissive.
    #[arg(long, default_value = "strict", value_parser = ["strict", "permissive"])]
    pub mtls: String,
    /// Sidecar CPU request.
    #[arg(long, default_value = "100m")]
    pub cpu_request: String,
    /// Sidecar memory request.
    #[arg(long, default_value = "64Mi")]
    pub memory_request: String,
    /// Sidecar CPU limit (default none).
    #[arg(long)]
    pub cpu_limit: Option<String>,
    /// Sidecar memory limit (`none` for none).
    #[arg(long, default_value = "256Mi")]
    pub memory_limit: String,
    /// Sidecar log level.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Destinations reached over mTLS to a peer sidecar (the cluster's pod CIDRs),
    /// comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10.0.0.0/8")]
    pub mesh_networks: Vec<ipnet::IpNet>,
}

impl InjectArgs {
    /// The options these arguments describe.
    pub fn options(&self) -> anyhow::Result<InjectOptions> {
        let svid = match (self.svid, &self.svid_secret) {
            (SvidKind::Csi, None) => SvidSource::CsiDriverSpiffe,
            (SvidKind::Spire, None) => SvidSource::Spire,
            (SvidKind::Secret, Some(name)) if !name.is_empty() => SvidSource::Secret(name.clone()),
            (SvidKind::Secret, _) => bail!("--svid secret needs --svid-secret NAME"),
            (_, Some(_)) => bail!("--svid-secret is only used with --svid secret"),
        };
        crate::identity::TrustDomain::parse(&self.trust_domain)
            .with_context(|| format!("--trust-domain {:?}", self.trust_domain))?;
        Ok(InjectOptions {
            image: self.image.clone(),
            image_pull_policy: self.image_pull_policy.clone(),
            mode: self.sidecar_mode,
            svid,
            policies_configmap: self.policies_configmap.clone(),
            trust_domain: self.trust_domain.clone(),
            mtls: self.mtls.clone(),
            resources: SidecarResources {
                cpu_request: self.cpu_request.clone(),
                memory_request: self.memory_request.clone(),
                cpu_limit: self.cpu_limit.clone(),
                memory_limit: Some(self.memory_limit.clone()).filter(|m| m != "none"),
            },
            log_level: self.log_level.clone(),
            mesh_networks: self.mesh_networks.clone(),
        })
    }
}

/// `portcullis inject`.
#[derive(Debug, Clone, Args)]
pub struct InjectCmd {
    /// Manifest to read (YAML or JSON, multi-document, `List`); `-` for stdin.
    #[arg(long, short = 'f', default_value = "-")]
    pub filename: String,
    /// Where to write the result; `-` for stdout.
    #[arg(long, short = 'o', default_value = "-")]
    pub output: String,
    /// What the injection adds.
    #[command(flatten)]
    pub inject: InjectArgs,
}

/// `portcullis webhook`.
#[derive(Debug, Clone, Args)]
pub struct WebhookCmd {
    /// Listen address.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Serving certificate chain (PEM).
    #[arg(long, default_value = "/etc/portcullis/webhook/tls.crt")]
    pub tls_cert: PathBuf,
    /// Serving key (PEM).
    #[arg(long, default_value = "/etc/portcullis/webhook/tls.key")]
    pub tls_key: PathBuf,
    /// How often the certificate files are checked for changes, e.g. 10s.
    #[arg(long, default_value = "10s")]
    pub cert_poll: String,
    /// Log level.
    #[arg(long, default_value = "info")]
    pub webhook_log_level: String,
    /// What the injection adds.
    #[command(flatten)]
    pub inject: InjectArgs,
}

/// Reads the manifest, injects it and writes the result; a summary goes to stderr.
pub fn run_inject(cmd: &InjectCmd) -> anyhow::Result<()> {
    let opts = cmd.inject.options()?;
    let mut input = String::new();
    if cmd.filename == "-" {
        std::io::stdin()
            .read_to_string(&mut input)
            .context("reading standard input")?;
    } else {
        input = std::fs::read_to_string(&cmd.filename)
            .with_context(|| format!("-f {}", cmd.filename))?;
    }
    let (out, reports) = inject_yaml(&input, &opts)
        .with_context(|| format!("injecting {}", display_name(&cmd.filename)))?;
    for r in &reports {
        match &r.outcome {
            Outcome::Injected => eprintln!("{}: injected", r.object),
            Outcome::Skipped(why) => eprintln!("{}: skipped ({why})", r.object),
        }
    }
    if cmd.output == "-" {
        std::io::stdout()
            .lock()
            .write_all(out.as_bytes())
            .context("writing standard output")?;
    } else {
        std::fs::write(&cmd.output, out).with_context(|| format!("-o {}", cmd.output))?;
    }
    Ok(())
}

fn display_name(f: &str) -> &str {
    if f == "-" {
        "standard input"
    } else {
        f
    }
}

/// Runs the webhook until SIGTERM/SIGINT.
pub fn run_webhook(cmd: &WebhookCmd) -> anyhow::Result<()> {
    let opts = cmd.inject.options()?;
    let cert_poll = humantime::parse_duration(&cmd.cert_poll)
        .with_context(|| format!("--cert-poll {:?}", cmd.cert_poll))?;
    if cert_poll.is_zero() {
        bail!("--cert-poll must be greater than zero");
    }
    let _ = crate::logging::init_logging(crate::config::LogFormat::Json, &cmd.webhook_log_level);
    let cfg = WebhookConfig {
        tls_cert: cmd.tls_cert.clone(),
        tls_key: cmd.tls_key.clone(),
        inject: opts,
        cert_poll: cert_poll.max(Duration::from_millis(100)),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let listen = cmd.listen;
    rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        tokio::select! {
            r = bind_and_serve(listen, cfg) => r.map_err(anyhow::Error::from),
            _ = term.recv() => { tracing::info!("SIGTERM: webhook stopping"); Ok(()) }
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}
