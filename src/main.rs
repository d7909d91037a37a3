//! The `portcullis` command line: parse arguments, then call the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use portcullis::commands;
use portcullis::policy::cli::PolicyCommand;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Sidecar authorization proxy: SPIFFE mTLS, JWT and Rego"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar.
    Run {
        /// YAML configuration file; without it, built-in defaults (development CA identity).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Validate the configuration and exit.
        #[arg(long)]
        check_config: bool,
    },
    /// Run a whole mesh on localhost: echo app, sidecar, dev CA, example policies.
    Demo(commands::DemoArgs),
    /// Print, apply (--apply) or remove (--cleanup) the pod's nat interception rules.
    Iptables {
        #[command(flatten)]
        rules: portcullis::k8s::iptables::Rules,
        /// Install the rules (as the init container does) instead of printing them.
        #[arg(long, conflicts_with = "cleanup")]
        apply: bool,
        /// Remove the rules and chains.
        #[arg(long)]
        cleanup: bool,
        /// Print the IPv6 refusal rules (`ip6tables-restore` form) instead of the
        /// IPv4 interception rules; `--apply` always installs both.
        #[arg(long, conflicts_with_all = ["apply", "cleanup"])]
        ipv6: bool,
    },
    /// A tiny HTTP echo app (answers with a JSON description of each request).
    Echo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// Policy tools: test, eval, check, explain, replay.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    // Kubernetes
    /// Add the sidecar to Kubernetes manifests (YAML/JSON, multi-document, List).
    Inject(portcullis::k8s::cli::InjectCmd),
    /// Run the mutating admission webhook that injects the sidecar.
    Webhook(portcullis::k8s::cli::WebhookCmd),
    /// Import another system's access rules into a policy directory.
    Import {
        #[command(subcommand)]
        command: ImportCommand,
    },
    /// Stream live decisions from a running sidecar's admin port (localhost).
    Tap(commands::TapArgs),
    /// The development certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Subcommand)]
enum ImportCommand {
    /// Istio AuthorizationPolicy, RequestAuthentication and PeerAuthentication
    /// (YAML, multi-document or List) → Rego modules, tests and a config fragment.
    Istio(commands::ImportIstioArgs),
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a root CA (ECDSA P-256) for a trust domain.
    Init {
        #[arg(long)]
        trust_domain: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue an X.509-SVID (tls.crt, tls.key, ca.crt) from a CA made by `ca init`.
    Issue {
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        spiffe_id: String,
        /// Lifetime, e.g. 24h, 90m.
        #[arg(long, default_value = "24h")]
        ttl: String,
        #[arg(long)]
        out: PathBuf,
        /// Extra DNS SANs (for clients such as curl that check host names).
        #[arg(long)]
        dns: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            config,
            check_config,
        } => commands::run(config.as_deref(), check_config),
        Command::Demo(args) => commands::demo(args),
        Command::Iptables {
            rules,
            apply,
            cleanup,
            ipv6,
        } => commands::iptables(&rules, apply, cleanup, ipv6),
        Command::Echo { listen } => commands::echo(listen),
        Command::Tap(args) => commands::tap(&args),
        Command::Import {
            command: ImportCommand::Istio(args),
        } => commands::import_istio(&args),
        // Kubernetes
        Command::Inject(cmd) => portcullis::k8s::cli::run_inject(&cmd),
        Command::Webhook(cmd) => portcullis::k8s::cli::run_webhook(&cmd),
        Command::Policy { command } => {
            return match portcullis::policy::cli::run_with(
                command,
                Some(portcullis::policy::builtins::jwt_extensions()),
            ) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Ca { command } => match command {
            CaCommand::Init { trust_domain, out } => commands::ca_init(&trust_domain, &out),
            CaCommand::Issue {
                ca,
                spiffe_id,
                ttl,
                out,
                dns,
            } => commands::ca_issue(&ca, &spiffe_id, &ttl, &out, &dns),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
