//! `portcullis demo`: a whole mesh on localhost with zero configuration.
//!
//! It creates a development CA, issues SVIDs for the sidecar (`sa/demo`) and two
//! clients (`sa/frontend`, allowed to read and write; `sa/reporting`, read only),
//! starts a built-in echo app and a strict-mTLS sidecar in front of it with the
//! example policies, and the client app's own sidecar (sa/frontend, one outbound
//! route to the service), and prints `curl` commands that show an allowed call, a
//! denied call with its reason, a refused plaintext call and the client app's call
//! through its outbound sidecar, then the operating tools: the
//! `policy explain` and `tap` commands, and a shadow candidate (`policies-next`,
//! frontend without its reader role) whose disagreement counter the first call moves.
//! `--check` makes those calls itself, checks the shadow counter, the explanation in
//! the decision log and `policy explain`, and exits non-zero on any surprise.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::config::{Config, FilesIdentity, IdentityConfig, LogFormat, MtlsMode};
use crate::identity::dev_ca::DevCa;
use crate::identity::{SpiffeId, TrustDomain};

/// Arguments of `portcullis demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Working directory for the CA, certificates, policies and decision log.
    #[arg(long, default_value = ".portcullis/demo")]
    pub dir: PathBuf,
    /// Inbound (mTLS) listener of the sidecar.
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], crate::config::defaults::INBOUND_PORT)))]
    pub listen: SocketAddr,
    /// Admin listener (metrics, readiness).
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], crate::config::defaults::ADMIN_PORT)))]
    pub admin: SocketAddr,
    /// Where the built-in echo app listens.
    #[arg(long, default_value = "127.0.0.1:18080")]
    pub app: SocketAddr,
    /// The client app's outbound route: its own sidecar (as sa/frontend, routes mode)
    /// listens here and carries plain HTTP over mTLS to the service's sidecar.
    #[arg(long, default_value = "127.0.0.1:15101")]
    pub client_route: SocketAddr,
    /// Policy directory; defaults to the bundled example policies.
    #[arg(long)]
    pub policies: Option<PathBuf>,
    /// Make the three demo calls, print the results and exit (non-zero on a surprise).
    #[arg(long)]
    pub check: bool,
}

const TRUST_DOMAIN: &str = "cluster.local";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/demo";
const CLIENTS: &[(&str, &str)] = &[
    ("frontend", "spiffe://cluster.local/ns/default/sa/frontend"),
    (
        "reporting",
        "spiffe://cluster.local/ns/default/sa/reporting",
    ),
];

/// The example policies, bundled so the demo works from any directory.
const BUNDLED_POLICIES: &[(&str, &str)] = &[
    ("authz.rego", include_str!("../policies/authz.rego")),
    ("outbound.rego", include_str!("../policies/outbound.rego")),
    ("data.yaml", include_str!("../policies/data.yaml")),
];

/// Runs the demo until Ctrl-C (or, with `--check`, until the checks are done).
pub async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let set_level = crate::logging::init_logging(LogFormat::Text, "warn");
    let td = TrustDomain::parse(TRUST_DOMAIN)?;
    let dir = &args.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = DevCa::load_or_init(&td, &dir.join("ca"))
        .with_context(|| format!("development CA in {}", dir.join("ca").display()))?;
    issue_certificates(&ca, dir)?;
    let (policy_dir, shadow_dir) = write_policies(&args, dir)?;

    let app_listener = TcpListener::bind(args.app)
        .await
        .with_context(|| format!("echo app: cannot listen on {}", args.app))?;
    tokio::spawn(serve_echo(app_listener));

    let mut cfg = sidecar_config(td, &dir.join("server"));
    cfg.inbound.listen = args.listen;
    cfg.inbound.app = args.app;
    cfg.inbound.mtls = MtlsMode::Strict;
    cfg.admin.listen = args.admin;
    // The demo shows the inbound side; its outbound listener takes any free port.
    cfg.outbound.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.policy.dir = policy_dir.clone();
    cfg.log.decision_file = Some(dir.join("decisions.log"));
    cfg.log.explain = crate::config::ExplainLogging::Denies;
    cfg.log.input = crate::config::InputLogging::All;
    cfg.policy.shadow = Some(crate::config::ShadowConfig {
        dir: Some(shadow_dir),
        bundle: None,
        fraction: 1.0,
        queue: 1024,
    });
    let running = crate::run::start(cfg, set_level).await?;
    let client_sidecar =
        start_client_sidecar(&args, dir, &policy_dir, running.inbound_addr).await?;
    print_instructions(&args, &running, &policy_dir);

    let result = if args.check {
        let result = check(dir, running.inbound_addr).await;
        let result = match result {
            Ok(()) => check_client_route(args.client_route).await,
            e => e,
        };
        match result {
            Ok(()) => check_operations(dir, &policy_dir).await,
            e => e,
        }
    } else {
        println!("Ctrl-C stops the demo.");
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
    };
    client_sidecar.shutdown();
    client_sidecar.wait().await;
    running.shutdown();
    running.wait().await;
    result
}

/// The server's SVID (with `localhost` for curl) and one SVID per demo client.
fn issue_certificates(ca: &DevCa, dir: &Path) -> anyhow::Result<()> {
    let server_id = SpiffeId::parse(SERVER_ID)?;
    ca.issue_with_dns(
        &server_id,
        Duration::from_secs(24 * 3600),
        &["localhost".to_owned()],
    )?
    .write(&dir.join("server"))?;
    for (name, id) in CLIENTS {
        ca.issue(&SpiffeId::parse(id)?, Duration::from_secs(24 * 3600))?
            .write(&dir.join(name))?;
    }

    Ok(())
}

/// The policies the sidecar enforces (the bundled ones unless `--policies`), the
/// shadow candidate beside them, and an input the policies deny. Returns the
/// policy and shadow directories.
fn write_policies(args: &DemoArgs, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let policy_dir = match &args.policies {
        Some(p) => p.clone(),
        None => {
            let p = dir.join("policies");
            std::fs::create_dir_all(&p)?;
            for (name, text) in BUNDLED_POLICIES {
                std::fs::write(p.join(name), text)?;
            }
            p
        }
    };
    // The shadow candidate: the bundled policies with frontend's reader role dropped.
    let shadow_dir = dir.join("policies-next");
    std::fs::create_dir_all(&shadow_dir)?;
    for (name, text) in BUNDLED_POLICIES {
        let text = if *name == "data.yaml" {
            text.replace(SHADOW_FROM, SHADOW_TO)
        } else {
            text.to_string()
        };
        std::fs::write(shadow_dir.join(name), text)?;
    }
    std::fs::write(dir.join("denied-input.json"), DENIED_INPUT)?;
    Ok((policy_dir, shadow_dir))
}

/// What to try against the running demo.
fn print_instructions(args: &DemoArgs, running: &crate::run::Running, policy_dir: &Path) {
    let dir = &args.dir;
    let d = dir.display();
    let port = running.inbound_addr.port();
    let admin = running.admin_addr;
    println!("portcullis demo is running");
    println!("  sidecar (strict mTLS)  https://localhost:{port}  as {SERVER_ID}");
    println!("  echo app               http://{}", args.app);
    println!("  admin                  http://{admin}/metrics");
    println!("  policies               {}", policy_dir.display());
    println!("  decision log           {d}/decisions.log");
    println!();
    println!("# allowed: frontend reads orders");
    println!("curl --cacert {d}/frontend/ca.crt --cert {d}/frontend/tls.crt --key {d}/frontend/tls.key https://localhost:{port}/api/orders");
    println!();
    println!("# denied (403 with the reason): reporting may only read");
    println!("curl -i --cacert {d}/reporting/ca.crt --cert {d}/reporting/tls.crt --key {d}/reporting/tls.key -X POST https://localhost:{port}/api/orders");
    println!();
    println!("# refused: plaintext under strict mTLS (the connection is closed)");
    println!("curl http://localhost:{port}/api/orders");
    println!();
    println!(
        "# the client app's call through its own outbound sidecar (routes mode, as sa/frontend):"
    );
    println!(
        "# plain HTTP to localhost, mTLS to the service's sidecar, decided in both directions"
    );
    println!("curl http://{}/api/orders", args.client_route);
    println!();
    println!(
        "# why the denied call is denied (its decision-log entry carries the same explanation)"
    );
    println!(
        "portcullis policy explain --input {d}/denied-input.json --data {}",
        policy_dir.display()
    );
    println!();
    println!("# live decisions, as they happen");
    println!("portcullis tap --admin {admin}");
    println!();
    println!(
        "# shadow policy {d}/policies-next drops frontend's reader role: after the first curl,"
    );
    println!("# portcullis_policy_shadow_total{{agreement=\"allow_to_deny\"}} on http://{admin}/metrics counts it;");
    println!("# the same change replayed over the decision log (exit 1: something would change)");
    println!("portcullis policy replay --log {d}/decisions.log --policies {d}/policies-next");
    println!();
}

/// A sidecar configuration with the SVID files written under `svid`.
fn sidecar_config(td: TrustDomain, svid: &Path) -> Config {
    Config {
        trust_domain: td,
        identity: IdentityConfig::Files(FilesIdentity {
            cert: svid.join("tls.crt"),
            key: svid.join("tls.key"),
            bundle: svid.join("ca.crt"),
            ..FilesIdentity::default()
        }),
        ..Config::default()
    }
}

/// The client app's own sidecar: identity sa/frontend, one outbound route to the
/// service's sidecar (which must present the demo's SPIFFE ID), the same policies.
async fn start_client_sidecar(
    args: &DemoArgs,
    dir: &Path,
    policy_dir: &Path,
    service: SocketAddr,
) -> anyhow::Result<crate::run::Running> {
    let mut cfg = sidecar_config(TrustDomain::parse(TRUST_DOMAIN)?, &dir.join("frontend"));
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.inbound.listen = any_port;
    cfg.inbound.app = args.app;
    cfg.admin.listen = any_port;
    cfg.outbound.listen = any_port;
    cfg.outbound.mode = crate::config::OutboundMode::Routes;
    cfg.outbound.routes = vec![crate::config::Route {
        listen: args.client_route,
        upstream: service,
        spiffe_id: SpiffeId::parse(SERVER_ID)?,
        protocol: Default::default(),
    }];
    cfg.policy.dir = policy_dir.to_path_buf();
    cfg.log.decision_file = Some(dir.join("client-decisions.log"));
    // Logging is set up once, by the service's sidecar.
    crate::run::start(cfg, Box::new(|_| Ok(())))
        .await
        .context("the client app's sidecar")
}

/// The client app's call through its outbound sidecar reaches the service as frontend.
async fn check_client_route(route: SocketAddr) -> anyhow::Result<()> {
    let status = plaintext_request(route, "/api/orders").await?;
    println!("client app call: {status} through its outbound sidecar");
    if status != StatusCode::OK {
        bail!("the client app's call got {status}");
    }
    Ok(())
}

/// The frontend binding the shadow candidate changes, and what it becomes.
const SHADOW_FROM: &str = "spiffe://cluster.local/ns/default/sa/frontend: [reader, writer]";
const SHADOW_TO: &str = "spiffe://cluster.local/ns/default/sa/frontend: [writer]";

/// The input document of the denied demo call, for `policy explain`.
const DENIED_INPUT: &str = r#"{
  "attributes": {
    "source": {"principal": "spiffe://cluster.local/ns/default/sa/reporting"},
    "request": {"http": {"method": "POST", "path": "/api/orders", "headers": {}}}
  },
  "parsed_path": ["api", "orders"]
}
"#;

/// Checks the operating claims: the shadow counted frontend's read as
/// `allow_to_deny`, the deny's log entry is explained, and `policy explain` on the
/// printed input names the method check.
async fn check_operations(dir: &Path, policy_dir: &Path) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let moved = |text: &str| {
        text.lines().any(|l| {
            l.starts_with("portcullis_policy_shadow_total{")
                && l.contains("agreement=\"allow_to_deny\"")
                && !l.ends_with(" 0")
        })
    };
    while !moved(&crate::metrics::global().render()) {
        if std::time::Instant::now() > deadline {
            bail!("the shadow policy did not count frontend's read as allow_to_deny");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("shadow policy:  frontend's read counted as allow_to_deny");
    let log = dir.join("decisions.log");
    let explained = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["decision"] == "deny" && e["explanation"]["steps"].is_array());
        if let Some(e) = found {
            break e;
        }
        if std::time::Instant::now() > deadline {
            bail!("the denied call's log entry has no explanation");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let failed = explained["explanation"]["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["failed"]["values"].as_str())
        .collect::<Vec<_>>();
    if !failed.iter().any(|v| v.contains("\"POST\" not in")) {
        bail!("the explanation does not show the method check: {failed:?}");
    }
    println!("explanation:    {}", failed.join("; "));
    let queries = [crate::config::PolicyConfig::default().inbound_query];
    let set = crate::policy::PolicySet::load_dir(
        policy_dir,
        &queries,
        crate::policy::EvalLimits::default(),
    )?;
    let input = regorus::Value::from_json_str(DENIED_INPUT)?;
    let explanation = set.explain(0, input)?;
    if !explanation.denied || !explanation.to_text().contains("m in grant.methods") {
        bail!(
            "policy explain did not explain the denied call:\n{}",
            explanation.to_text()
        );
    }
    println!("policy explain: denied at m in grant.methods");

    let d = crate::config::PolicyConfig::default();
    let both = [d.inbound_query, d.outbound_query];
    let next = crate::policy::PolicySet::load_dir(
        &dir.join("policies-next"),
        &both,
        crate::policy::EvalLimits::default(),
    )?;
    let file = std::fs::File::open(&log)?;
    let report = crate::policy::replay::replay(std::io::BufReader::new(file), &next)?;
    if report.allow_to_deny == 0 {
        bail!(
            "replaying the log with policies-next changed nothing:\n{}",
            report.to_text()
        );
    }
    println!(
        "policy replay:  {} allow→deny with policies-next",
        report.allow_to_deny
    );
    Ok(())
}

/// Makes the three demo calls and checks each answer.
async fn check(dir: &Path, addr: SocketAddr) -> anyhow::Result<()> {
    let frontend = client_tls(dir, "frontend")?;
    let (status, body) = https_request(&frontend, addr, "GET", "/api/orders").await?;
    println!("allowed call:   {status} {}", first_line(&body));
    if status != StatusCode::OK {
        bail!("the allowed call got {status}");
    }
    let reporting = client_tls(dir, "reporting")?;
    let (status, body) = https_request(&reporting, addr, "POST", "/api/orders").await?;
    println!("denied call:    {status} {}", first_line(&body));
    if status != StatusCode::FORBIDDEN {
        bail!("the denied call got {status}");
    }
    let refused = plaintext_request(addr, "/api/orders").await;
    match refused {
        Ok(status) => bail!("the plaintext call was answered with {status}"),
        Err(e) => println!("plaintext call: refused ({e})"),
    }
    Ok(())
}

fn first_line(body: &str) -> &str {
    body.lines().next().unwrap_or("")
}

/// A rustls client config with the demo client's certificate, trusting the demo CA
/// the way curl does (standard web PKI verification of `localhost`).
pub fn client_tls(dir: &Path, who: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let read = |f: &str| {
        std::fs::read(dir.join(who).join(f)).with_context(|| format!("{}/{who}/{f}", dir.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &read("ca.crt")?[..]) {
        roots.add(cert?)?;
    }
    let chain = rustls_pemfile::certs(&mut &read("tls.crt")?[..]).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut &read("tls.key")?[..])?.context("no private key")?;
    let provider = crate::identity::tls::crypto_provider();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// One HTTPS request to `localhost` at `addr`; returns status and body text.
pub async fn https_request(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> anyhow::Result<(StatusCode, String)> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost")?;
    let tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("localhost:{}", addr.port()))
        .body(Full::new(Bytes::new()))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn plaintext_request(addr: SocketAddr, path: &str) -> anyhow::Result<StatusCode> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))?;
    Ok(sender.send_request(req).await?.status())
}

/// The echo app: answers every request with a JSON description of it, including the
/// `x-forwarded-client-cert` header the sidecar set.
pub async fn serve_echo(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let _ = builder
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(echo))
                .await;
        });
    }
}

async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let doc = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_bytes": body.len(),
    });
    let mut resp = Response::new(Full::new(Bytes::from(format!("{doc}\n"))));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}
