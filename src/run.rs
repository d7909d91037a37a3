//! `portcullis run`: start every part of the sidecar from a [`Config`], serve until
//! SIGTERM/SIGINT or `POST /shutdown`, then drain.
//!
//! Start-up is strict: an identity or policy that does not load stops start-up with
//! an error naming the file. After start-up, bad updates keep the last good state.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::admin::Admin;
use crate::authn::Authenticator;
use crate::config::{Config, IdentityConfig, LogFormat, OutboundMode, RouteProtocol};
use crate::decision_log::DecisionLog;
use crate::identity::dev_ca::DevCa;
use crate::identity::source::{DevCaSource, FileSource, SvidSource};
use crate::identity::tls::{crypto_provider, Identity};
use crate::identity::workload_api::WorkloadApiSource;
use crate::policy::store::{PolicyStore, INBOUND, OUTBOUND};
use crate::policy::{builtins, EvalLimits, PolicyOptions};
use crate::proxy::decide::Decider;
use crate::proxy::forward::AppClients;
use crate::proxy::inbound::Inbound;
use crate::proxy::listener::{accept_loop, ConnLimit, DrainTrigger, HttpServer};
use crate::proxy::outbound::{Outbound, Protocol, Target};
use crate::proxy::peer::PeerPool;

pub use crate::admin::LevelSetter;

/// Installs the global tracing subscriber; returns a function that changes the level.
pub fn init_logging(format: LogFormat, level: &str) -> LevelSetter {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{reload, EnvFilter};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    // Logs go to stderr; stdout carries decision logs.
    let result = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    };
    if result.is_err() {
        // Already installed (tests, demo): keep the existing subscriber.
    }
    Box::new(move |l: &str| {
        let f = EnvFilter::try_new(l).map_err(|e| format!("bad level {l:?}: {e}"))?;
        handle.reload(f).map_err(|e| e.to_string())
    })
}

/// Starts the identity source named by the configuration and loads the first SVID.
pub async fn start_identity(cfg: &Config) -> anyhow::Result<Arc<Identity>> {
    let identity = Identity::new(crypto_provider());
    match &cfg.identity {
        IdentityConfig::Files(f) => {
            let source = FileSource {
                cert: f.cert.clone(),
                key: f.key.clone(),
                bundle: f.bundle.clone(),
                federated: f
                    .federated_bundles
                    .iter()
                    .map(|(td, p)| (td.clone(), p.clone()))
                    .collect(),
                trust_domain: cfg.trust_domain.clone(),
                poll_interval: f.poll_interval,
            };
            source
                .start(identity.clone())
                .await
                .with_context(|| format!("identity files ({})", f.cert.display()))?;
        }
        IdentityConfig::DevCa(d) => {
            let id = cfg
                .dev_ca_spiffe_id()
                .context("identity.dev_ca.spiffe_id could not be derived")?;
            let ca = DevCa::load_or_init(&cfg.trust_domain, &d.dir)
                .with_context(|| format!("identity.dev_ca: CA directory {}", d.dir.display()))?;
            DevCaSource { ca, id, ttl: d.ttl }
                .start(identity.clone())
                .await
                .context("identity.dev_ca: issuing the SVID")?;
        }
        IdentityConfig::WorkloadApi(w) => {
            WorkloadApiSource::new(w.socket.clone(), cfg.trust_domain.clone())
                .start(identity.clone())
                .await
                .context("identity.workload_api")?;
        }
    }
    Ok(identity)
}

/// How policies are built: the configured limits and the `io.jwt.*` builtins.
pub fn policy_options(cfg: &Config) -> PolicyOptions {
    PolicyOptions {
        limits: EvalLimits {
            timeout: cfg.policy.eval_timeout,
            max_instructions: cfg.policy.max_instructions,
        },
        extensions: Some(builtins::jwt_extensions()),
        decision_cache: cfg.policy.decision_cache,
        workload_labels: cfg.policy.workload_labels.clone(),
        ..PolicyOptions::default()
    }
}

/// Loads the policy directory (start-up: an error stops start-up).
pub fn start_policy(cfg: &Config) -> anyhow::Result<Arc<PolicyStore>> {
    let store = PolicyStore::load(
        cfg.policy.dir.clone(),
        cfg.policy.inbound_query.clone(),
        cfg.policy.outbound_query.clone(),
        policy_options(cfg),
    )
    .with_context(|| format!("policy.dir {}", cfg.policy.dir.display()))?;
    Ok(store)
}

// --- Policy source, watcher and bundle poller --------------------------------------
/// Creates the policy store from the configured source and starts keeping it
/// current: with `policy.bundle`, an empty store fed by the bundle poller (the
/// bundle replaces `policy.dir`); otherwise the directory, loaded now (an
/// error stops start-up) and watched every `policy.watch_interval`.
pub fn start_policy_source(cfg: &Config) -> anyhow::Result<Arc<PolicyStore>> {
    match &cfg.policy.bundle {
        Some(bundle) => {
            let store = PolicyStore::for_bundle(
                cfg.policy.inbound_query.clone(),
                cfg.policy.outbound_query.clone(),
                policy_options(cfg),
            );
            crate::policy::reload::start_bundle(bundle, store.clone())
                .with_context(|| format!("policy.bundle.url {}", bundle.url))?;
            Ok(store)
        }
        None => {
            let store = start_policy(cfg)?;
            store.watch(cfg.policy.watch_interval);
            Ok(store)
        }
    }
}

/// Starts the shadow policy (`policy.shadow`): its own store, loaded and watched
/// (or polled) like the enforced one. A shadow that does not load is logged and
/// counted, never fatal: the enforced policy is what serves.
pub fn start_shadow(cfg: &Config) -> anyhow::Result<Option<Arc<crate::policy::shadow::Shadow>>> {
    let Some(shadow) = &cfg.policy.shadow else {
        return Ok(None);
    };
    let store = PolicyStore::for_shadow(
        shadow.dir.clone(),
        cfg.policy.inbound_query.clone(),
        cfg.policy.outbound_query.clone(),
        policy_options(cfg),
    );
    match &shadow.bundle {
        Some(bundle) => {
            crate::policy::reload::start_bundle(bundle, store.clone())
                .with_context(|| format!("policy.shadow.bundle.url {}", bundle.url))?;
        }
        None => {
            // Errors are logged and counted by `reload`; the watcher retries.
            let _ = store.reload();
            store.watch(cfg.policy.watch_interval);
        }
    }
    let shadow = crate::policy::shadow::Shadow::start(store, shadow.fraction, shadow.queue)
        .context("policy.shadow: starting the worker")?;
    Ok(Some(shadow))
}

// --- JWT authentication ---------------------------------------------------------
/// Builds the JWT authenticator (none without providers), loads every key set
/// once and starts the refresh tasks. A file or inline key set that does not
/// load stops start-up; an unreachable JWKS URL is retried in the background.
pub async fn start_authn(cfg: &Config) -> anyhow::Result<Option<Arc<Authenticator>>> {
    if cfg.jwt.providers.is_empty() {
        return Ok(None);
    }
    let (authn, waits) = Authenticator::start(&cfg.jwt).await?;
    authn.spawn_refresh(waits);
    Ok(Some(authn))
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{what}: cannot listen on {addr}"))
}

/// The running sidecar's handles, for callers that embed it (demo, tests).
pub struct Running {
    pub inbound_addr: SocketAddr,
    /// The transparent outbound listener (transparent mode only).
    pub outbound_addr: Option<SocketAddr>,
    /// Route listeners, in configuration order (routes mode only).
    pub route_addrs: Vec<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub identity: Arc<Identity>,
    pub policy: Arc<PolicyStore>,
    shutdown: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Asks the sidecar to drain and stop (like SIGTERM).
    pub fn shutdown(&self) {
        self.shutdown.notify_one();
    }

    /// Waits until the sidecar has drained and stopped.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Starts every listener; returns once they are bound.
pub async fn start(cfg: Config, set_log_level: LevelSetter) -> anyhow::Result<Running> {
    let identity = start_identity(&cfg).await?;
    let policy = start_policy_source(&cfg)?;
    let shadow = start_shadow(&cfg)?;
    let authn = start_authn(&cfg).await?;
    let log = if cfg.log.decisions {
        DecisionLog::start(
            cfg.log.decision_file.clone(),
            &cfg.log.masked_names(&cfg.jwt),
            cfg.log.sample_allows,
        )
        .context("log.decision_file")?
        .with_explain(cfg.log.explain)
        .with_input(cfg.log.input)
    } else {
        DecisionLog::disabled()
    };

    let (data_trigger, data_drain) = DrainTrigger::new();
    let (admin_trigger, admin_drain) = DrainTrigger::new();
    let shutdown = Arc::new(Notify::new());

    let admin_listener = bind(cfg.admin.listen, "admin.listen").await?;
    let inbound_listener = bind(cfg.inbound.listen, "inbound.listen").await?;
    let admin_addr = admin_listener.local_addr()?;
    let inbound_addr = inbound_listener.local_addr()?;

    let admin = Arc::new(Admin {
        identity: identity.clone(),
        policy: policy.clone(),
        shutdown: shutdown.clone(),
        set_log_level,
        tap_allowed: cfg.admin.tap.allowed_principals.clone(),
    });
    tokio::spawn(admin.serve(
        admin_listener,
        HttpServer::new(&cfg.limits, admin_drain.clone(), "admin"),
        admin_drain,
        data_drain.clone(),
    ));

    let inbound = Arc::new(Inbound {
        identity: identity.clone(),
        decider: Decider {
            direction: "inbound",
            query: INBOUND,
            policy: policy.clone(),
            dry_run: cfg.policy.dry_run.inbound,
            log: log.clone(),
            shadow: shadow.clone(),
        },
        clients: AppClients::new(
            cfg.limits.connect_timeout,
            cfg.limits.upstream_timeout,
            cfg.limits.idle_timeout,
        ),
        app: cfg.inbound.app,
        original_destination: cfg.inbound.original_destination,
        loopback_ports: cfg.inbound.loopback_ports.clone(),
        protocols: crate::proxy::app_protocol::AppProtocols::new(
            cfg.inbound.app_protocol,
            cfg.inbound.port_protocols.clone(),
        ),
        mtls: cfg.inbound.mtls,
        opaque_ports: cfg.inbound.opaque_ports.clone(),
        body: cfg.policy.body.clone(),
        http: HttpServer::new(&cfg.limits, data_drain.clone(), "inbound"),
        // JWT: claim headers are never accepted from clients.
        strip_extra: authn
            .as_ref()
            .map(|a| a.claim_header_names())
            .unwrap_or_default(),
        authn,
    });
    let inbound_limit = ConnLimit::new(cfg.limits.max_connections);
    tokio::spawn(accept_loop(
        inbound_listener,
        "inbound",
        inbound_limit.clone(),
        data_drain.clone(),
        move |stream, peer, guard| inbound.clone().serve_connection(stream, peer, guard),
    ));

    // Outbound: the transparent listener, or one listener per explicit route.
    let outbound = Arc::new(Outbound {
        identity: identity.clone(),
        decider: Decider {
            direction: "outbound",
            query: OUTBOUND,
            policy: policy.clone(),
            dry_run: cfg.policy.dry_run.outbound,
            log: log.clone(),
            shadow: shadow.clone(),
        },
        peers: PeerPool::new(identity.clone(), cfg.limits.connect_timeout),
        external: AppClients::new(
            cfg.limits.connect_timeout,
            cfg.limits.upstream_timeout,
            cfg.limits.idle_timeout,
        ),
        protocols: crate::proxy::app_protocol::AppProtocols::new(
            crate::config::AppProtocol::Auto,
            Default::default(),
        ),
        mesh_networks: cfg.outbound.mesh_networks.clone(),
        non_mesh: cfg.outbound.non_mesh,
        http: HttpServer::new(&cfg.limits, data_drain.clone(), "outbound"),
        upstream_timeout: cfg.limits.upstream_timeout,
        detect_timeout: std::time::Duration::from_millis(200),
    });
    let outbound_limit = ConnLimit::new(cfg.limits.max_connections);
    let mut outbound_addr = None;
    let mut route_addrs = Vec::new();
    match cfg.outbound.mode {
        OutboundMode::Transparent => {
            let l = bind(cfg.outbound.listen, "outbound.listen").await?;
            outbound_addr = Some(l.local_addr()?);
            let ob = outbound.clone();
            tokio::spawn(accept_loop(
                l,
                "outbound",
                outbound_limit.clone(),
                data_drain.clone(),
                move |stream, peer, guard| ob.clone().serve_transparent(stream, peer, guard),
            ));
        }
        OutboundMode::Routes => {
            for (i, route) in cfg.outbound.routes.iter().enumerate() {
                let l = bind(route.listen, &format!("outbound.routes[{i}].listen")).await?;
                route_addrs.push(l.local_addr()?);
                let ob = outbound.clone();
                let target = Target::Mesh {
                    addr: route.upstream,
                    pin: Some(route.spiffe_id.clone()),
                };
                let protocol = match route.protocol {
                    RouteProtocol::Http => Protocol::Http,
                    RouteProtocol::Tcp => Protocol::Tcp,
                };
                tokio::spawn(accept_loop(
                    l,
                    "outbound",
                    outbound_limit.clone(),
                    data_drain.clone(),
                    move |stream, peer, guard| {
                        ob.clone()
                            .serve(stream, peer, target.clone(), protocol, guard)
                    },
                ));
            }
        }
    }

    tracing::info!(%inbound_addr, ?outbound_addr, %admin_addr, "portcullis started");
    let grace = cfg.shutdown.grace_period;
    let notify = shutdown.clone();
    let task = tokio::spawn(async move {
        notify.notified().await;
        tracing::info!(grace_ms = grace.as_millis() as u64, "draining");
        data_trigger.trigger();
        let (a, b) = tokio::join!(
            inbound_limit.wait_idle(grace),
            outbound_limit.wait_idle(grace)
        );
        if !(a && b) {
            tracing::warn!("grace period over with connections still open");
        }
        admin_trigger.trigger();
    });
    Ok(Running {
        inbound_addr,
        outbound_addr,
        route_addrs,
        admin_addr,
        identity,
        policy,
        shutdown,
        task,
    })
}

/// Runs the sidecar until a signal or `/shutdown`, then drains. `SIGHUP` reloads policy.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let setter = init_logging(cfg.log.format, &cfg.log.level);
    let running = start(cfg, setter).await?;
    let policy = running.policy.clone();
    let shutdown = running.shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM"); shutdown.notify_one(); }
                _ = int.recv() => { tracing::info!("SIGINT"); shutdown.notify_one(); }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading policy");
                    let policy = policy.clone();
                    let _ = tokio::task::spawn_blocking(move || policy.reload()).await;
                }
            }
        }
    });
    running.wait().await;
    tracing::info!("stopped");
    Ok(())
}
