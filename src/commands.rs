//! The command implementations behind `main.rs`: each parses what it needs from
//! plain arguments and reports errors as `anyhow` chains for the terminal.

use std::path::Path;

use anyhow::{bail, Context};

use crate::config::Config;
use crate::identity::dev_ca::DevCa;
use crate::identity::{SpiffeId, TrustDomain};

pub use crate::demo::DemoArgs;

/// The async runtime: one thread for everything when one worker is asked for
/// (`TOKIO_WORKER_THREADS=1`, or one CPU available to the process), as a sidecar
/// limited to one core usually is; otherwise one worker per CPU.
///
/// With one worker, the multi-threaded scheduler still runs the main task on a thread
/// of its own and pays for work stealing it cannot use: every wake-up crosses atomics
/// and queues meant for several workers.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if worker_threads() == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The worker count the multi-threaded runtime would use: `TOKIO_WORKER_THREADS`
/// when it is a positive number, else the CPUs available to the process (which
/// counts a cgroup's CPU quota).
fn worker_threads() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// `portcullis run [--config FILE] [--check-config]`.
pub fn run(config: Option<&Path>, check_only: bool) -> anyhow::Result<()> {
    crate::footprint::map_by_page();
    let cfg = match config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    // Start-up's phases each leave the resident set when done (see `footprint`).
    crate::footprint::release_startup_pages();
    if check_only {
        println!(
            "configuration OK{}",
            config
                .map(|p| format!(": {}", p.display()))
                .unwrap_or_else(|| " (built-in defaults)".to_owned())
        );
        return Ok(());
    }
    runtime()?.block_on(crate::run::run(cfg))
}

/// `portcullis demo`.
pub fn demo(args: DemoArgs) -> anyhow::Result<()> {
    runtime()?.block_on(crate::demo::demo(args))
}

/// `portcullis ca init --trust-domain TD --out DIR`.
pub fn ca_init(trust_domain: &str, out: &Path) -> anyhow::Result<()> {
    let td = TrustDomain::parse(trust_domain)
        .with_context(|| format!("--trust-domain {trust_domain:?}"))?;
    DevCa::init(&td, out).with_context(|| format!("--out {}", out.display()))?;
    println!(
        "created CA for trust domain {td}: {}/ca.crt, {}/ca.key",
        out.display(),
        out.display()
    );
    Ok(())
}

/// `portcullis ca issue --ca DIR --spiffe-id ID [--ttl 24h] --out DIR`.
pub fn ca_issue(
    ca: &Path,
    spiffe_id: &str,
    ttl: &str,
    out: &Path,
    dns: &[String],
) -> anyhow::Result<()> {
    let id = SpiffeId::parse(spiffe_id).with_context(|| format!("--spiffe-id {spiffe_id:?}"))?;
    let ttl = humantime::parse_duration(ttl).with_context(|| format!("--ttl {ttl:?}"))?;
    if ttl.is_zero() {
        bail!("--ttl must be greater than zero");
    }
    let ca_dir = DevCa::load(ca).with_context(|| format!("--ca {}", ca.display()))?;
    if id.trust_domain_name() != ca_dir.trust_domain().as_str() {
        bail!(
            "--spiffe-id {id} is outside the CA's trust domain {}",
            ca_dir.trust_domain()
        );
    }
    let issued = ca_dir
        .issue_with_dns(&id, ttl, dns)
        .with_context(|| format!("issuing {id}"))?;
    issued
        .write(out)
        .with_context(|| format!("--out {}", out.display()))?;
    println!(
        "issued {id} (valid {}): {}/tls.crt, {}/tls.key, {}/ca.crt",
        humantime::format_duration(ttl),
        out.display(),
        out.display(),
        out.display()
    );
    Ok(())
}

/// `portcullis iptables [--apply|--cleanup|--ipv6]`: prints the IPv4 rules by default.
pub fn iptables(
    rules: &crate::k8s::iptables::Rules,
    apply: bool,
    cleanup: bool,
    ipv6: bool,
) -> anyhow::Result<()> {
    use crate::k8s::iptables;
    if cleanup {
        iptables::cleanup()?;
        println!("interception rules removed");
    } else if apply {
        iptables::apply(rules)?;
        println!("interception rules applied");
    } else if ipv6 {
        print!("{}", rules.restore_script_v6());
    } else {
        print!("{}", rules.restore_script());
    }
    Ok(())
}

/// `portcullis echo --listen ADDR`: the demo's echo app on its own.
pub fn echo(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let l = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("--listen {listen}"))?;
        println!("echo app listening on {listen}");
        crate::demo::serve_echo(l).await;
        Ok(())
    })
}

/// Arguments of `portcullis tap`.
#[derive(Debug, clap::Args)]
pub struct TapArgs {
    /// The sidecar's admin address.
    #[arg(long, default_value_t = std::net::SocketAddr::from(([127, 0, 0, 1], crate::config::defaults::ADMIN_PORT)))]
    pub admin: std::net::SocketAddr,
    /// Only this direction: `in` or `out`.
    #[arg(long, value_parser = ["in", "out"])]
    pub direction: Option<String>,
    /// Only `allow` or `deny` decisions (a dry-run deny is a deny).
    #[arg(long, value_parser = ["allow", "deny"])]
    pub decision: Option<String>,
    /// Only decisions about this peer SPIFFE ID (the source inbound, the destination outbound).
    #[arg(long)]
    pub principal: Option<String>,
    /// Only paths starting with this.
    #[arg(long)]
    pub path_prefix: Option<String>,
    /// Print the JSON lines as received.
    #[arg(long)]
    pub json: bool,
    /// Connect over mTLS with this SVID certificate chain (PEM), for a sidecar whose
    /// `admin.tap.allowed_principals` lists its SPIFFE ID. Needs --key and --bundle.
    #[arg(long, requires_all = ["key", "bundle"])]
    pub cert: Option<std::path::PathBuf>,
    /// The SVID's private key (PEM).
    #[arg(long, requires = "cert")]
    pub key: Option<std::path::PathBuf>,
    /// The trust bundle (PEM) the sidecar's SVID must chain to.
    #[arg(long, requires = "cert")]
    pub bundle: Option<std::path::PathBuf>,
}

/// `portcullis tap`: prints each decision the sidecar streams until interrupted.
pub fn tap(args: &TapArgs) -> anyhow::Result<()> {
    let filter = crate::proxy::tap::TapFilter {
        direction: match args.direction.as_deref() {
            Some("in") => Some(crate::direction::Direction::Inbound),
            Some("out") => Some(crate::direction::Direction::Outbound),
            _ => None,
        },
        allowed: args.decision.as_deref().map(|d| d == "allow"),
        principal: args.principal.clone(),
        path_prefix: args.path_prefix.clone(),
    };
    let mtls = match (&args.cert, &args.key, &args.bundle) {
        (Some(cert), Some(key), Some(bundle)) => Some(
            crate::proxy::tap::client_tls(cert, key, bundle).context("--cert/--key/--bundle")?,
        ),
        _ => None,
    };
    runtime()?.block_on(crate::proxy::tap::follow(
        args.admin, &filter, args.json, mtls,
    ))
}

/// Arguments of `portcullis import istio`.
#[derive(Debug, clap::Args)]
pub struct ImportIstioArgs {
    /// Input YAML (repeatable); `-` reads standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<std::path::PathBuf>,
    /// The policy directory to write.
    #[arg(short = 'o', long = "out")]
    pub out: std::path::PathBuf,
    /// Istio's root namespace: its policies without a selector apply to the whole mesh.
    #[arg(long, default_value = "istio-system")]
    pub root_namespace: String,
    /// Namespace of resources without `metadata.namespace`.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Import without CUSTOM AuthorizationPolicies instead of refusing them.
    #[arg(long)]
    pub skip_custom: bool,
}

/// `portcullis import istio -f FILE... -o DIR`.
pub fn import_istio(args: &ImportIstioArgs) -> anyhow::Result<()> {
    let out = crate::import::istio::run(&crate::import::istio::ImportOptions {
        files: args.files.clone(),
        out: args.out.clone(),
        root_namespace: args.root_namespace.clone(),
        default_namespace: args.namespace.clone(),
        skip_custom: args.skip_custom,
    })?;
    for note in &out.notes {
        eprintln!("note: {note}");
    }
    let counts: Vec<String> = out.counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    println!(
        "imported {} into {} ({} files); review it, then `portcullis policy test {}`",
        if counts.is_empty() {
            "nothing".to_owned()
        } else {
            counts.join(", ")
        },
        args.out.display(),
        out.files.len(),
        args.out.display()
    );
    Ok(())
}
