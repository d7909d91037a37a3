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
use crate::config::{Config, IdentityConfig, OutboundMode, RouteProtocol};
use crate::decision_log::DecisionLog;
use crate::direction::Direction;
use crate::identity::dev_ca::DevCa;
use crate::identity::source::{DevCaSource, FileSource, SvidSource};
use crate::identity::tls::{crypto_provider, Identity};
use crate::identity::workload_api::WorkloadApiSource;
use crate::policy::store::{PolicyStore, INBOUND, OUTBOUND};
use crate::policy::{builtins, EvalLimits, PolicyOptions};
use crate::proxy::decide::Decider;
use crate::proxy::drain::{drain, ConnLimit, Drain, DrainTrigger};
use crate::proxy::forward::AppClients;
use crate::proxy::inbound::Inbound;
use crate::proxy::listener::{accept_loop, HttpServer};
use crate::proxy::outbound::{Outbound, Protocol, Target};
use crate::proxy::peer::PeerPool;
use crate::tasks::Tasks;

use crate::logging::{init_logging, LevelSetter};

/// Starts the identity source named by the configuration and loads the first SVID.
pub async fn start_identity(cfg: &Config, tasks: &Tasks) -> anyhow::Result<Arc<Identity>> {
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
                .start(identity.clone(), tasks)
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
                .start(identity.clone(), tasks)
                .await
                .context("identity.dev_ca: issuing the SVID")?;
        }
        IdentityConfig::WorkloadApi(w) => {
            WorkloadApiSource::new(w.socket.clone(), cfg.trust_domain.clone())
                .start(identity.clone(), tasks)
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
pub fn start_policy_source(cfg: &Config, tasks: &Tasks) -> anyhow::Result<Arc<PolicyStore>> {
    match &cfg.policy.bundle {
        Some(bundle) => {
            let store = PolicyStore::for_bundle(
                cfg.policy.inbound_query.clone(),
                cfg.policy.outbound_query.clone(),
                policy_options(cfg),
            );
            crate::policy::reload::start_bundle(bundle, store.clone(), tasks)
                .with_context(|| format!("policy.bundle.url {}", bundle.url))?;
            Ok(store)
        }
        None => {
            let store = start_policy(cfg)?;
            store.watch(cfg.policy.watch_interval, tasks);
            Ok(store)
        }
    }
}

/// Starts the shadow policy (`policy.shadow`): its own store, loaded and watched
/// (or polled) like the enforced one. A shadow that does not load is logged and
/// counted, never fatal: the enforced policy is what serves.
pub fn start_shadow(
    cfg: &Config,
    tasks: &Tasks,
) -> anyhow::Result<Option<Arc<crate::policy::shadow::Shadow>>> {
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
            crate::policy::reload::start_bundle(bundle, store.clone(), tasks)
                .with_context(|| format!("policy.shadow.bundle.url {}", bundle.url))?;
        }
        None => {
            // Errors are logged and counted by `reload`; the watcher retries.
            let _ = store.reload();
            store.watch(cfg.policy.watch_interval, tasks);
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
pub async fn start_authn(
    cfg: &Config,
    tasks: &Tasks,
) -> anyhow::Result<Option<Arc<Authenticator>>> {
    if cfg.jwt.providers.is_empty() {
        return Ok(None);
    }
    let (authn, waits) = Authenticator::start(&cfg.jwt).await?;
    authn.spawn_refresh(waits, tasks);
    Ok(Some(authn))
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{what}: cannot listen on {addr}"))
}

/// How long owned background tasks get to stop once draining is over, before they
/// are aborted.
const TASK_STOP_BOUND: std::time::Duration = std::time::Duration::from_secs(2);

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
    /// The background tasks stopped after draining.
    pub tasks: Tasks,
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

/// The drain signals of the data path and of the admin listener (which drains last,
/// so `/ready` can report the data path's draining).
struct Drains {
    data_trigger: DrainTrigger,
    data: Drain,
    admin_trigger: DrainTrigger,
    admin: Drain,
}

impl Drains {
    fn new() -> Drains {
        let (data_trigger, data) = DrainTrigger::new();
        let (admin_trigger, admin) = DrainTrigger::new();
        Drains {
            data_trigger,
            data,
            admin_trigger,
            admin,
        }
    }
}

/// Starts every listener; returns once they are bound.
pub async fn start(cfg: Config, set_log_level: LevelSetter) -> anyhow::Result<Running> {
    let tasks = Tasks::new();
    let identity = start_identity(&cfg, &tasks).await?;
    let policy = start_policy_source(&cfg, &tasks)?;
    let shadow = start_shadow(&cfg, &tasks)?;
    let authn = start_authn(&cfg, &tasks).await?;
    let log = start_decision_log(&cfg)?;
    crate::footprint::release_startup_pages();
    let drains = Drains::new();
    let shutdown = Arc::new(Notify::new());

    let admin_listener = bind(cfg.admin.listen, "admin.listen").await?;
    let inbound_listener = bind(cfg.inbound.listen, "inbound.listen").await?;
    let admin_addr = admin_listener.local_addr()?;
    let inbound_addr = inbound_listener.local_addr()?;

    let decider = |direction, query, dry_run| Decider {
        direction,
        query,
        policy: policy.clone(),
        dry_run,
        log: log.clone(),
        shadow: shadow.clone(),
    };
    let inbound = Arc::new(inbound_side(
        &cfg,
        identity.clone(),
        decider(Direction::Inbound, INBOUND, cfg.policy.dry_run.inbound),
        authn,
        &drains.data,
    ));
    let inbound_limit = ConnLimit::new(cfg.limits.max_connections);
    let warm_inbound = inbound.clone();
    tasks.spawn(
        "inbound-accept",
        accept_loop(
            inbound_listener,
            Direction::Inbound,
            inbound_limit.clone(),
            drains.data.clone(),
            move |stream, peer, guard| inbound.clone().serve_connection(stream, peer, guard),
        ),
    );

    let outbound = Arc::new(outbound_side(
        &cfg,
        identity.clone(),
        decider(Direction::Outbound, OUTBOUND, cfg.policy.dry_run.outbound),
        &drains.data,
    ));
    let outbound_limit = ConnLimit::new(cfg.limits.max_connections);
    let (outbound_addr, route_addrs) = start_outbound_listeners(
        &cfg,
        outbound.clone(),
        &outbound_limit,
        &drains.data,
        &tasks,
    )
    .await?;
    crate::footprint::release_startup_pages();
    let warm = Warm {
        identity: &identity,
        policy: &policy,
        outbound: &outbound,
        inbound: &warm_inbound,
    };
    warm.up(&cfg, &tasks).await;

    // The admin port answers (and `/ready` turns 200) once the warm-ups are done.
    let admin = Arc::new(Admin {
        identity: identity.clone(),
        policy: policy.clone(),
        shutdown: shutdown.clone(),
        set_log_level,
        tap_allowed: cfg.admin.tap.allowed_principals.clone(),
    });
    let admin_http = HttpServer::new(&cfg.limits, drains.admin.clone(), Direction::Admin);
    tasks.spawn(
        "admin",
        admin.serve(
            admin_listener,
            admin_http,
            drains.admin.clone(),
            drains.data.clone(),
        ),
    );

    tracing::info!(%inbound_addr, ?outbound_addr, %admin_addr, "portcullis started");
    // Once traffic has mapped the request path, start-up code leaves the resident set.
    // Its only wait is the timer: a sidecar stopped before then does not wait for it.
    tasks.spawn_loop("release-startup-pages", async {
        crate::footprint::release_due().await;
        let released = crate::footprint::release_startup_pages();
        tracing::debug!(released, "start-up pages released");
    });
    let task = tokio::spawn(stop_when_asked(
        shutdown.clone(),
        drains,
        vec![inbound_limit, outbound_limit],
        cfg.shutdown.grace_period,
        tasks.clone(),
    ));
    Ok(Running {
        inbound_addr,
        outbound_addr,
        route_addrs,
        admin_addr,
        identity,
        policy,
        tasks,
        shutdown,
        task,
    })
}

/// The decision log (`log.decisions`), or one that writes nothing.
fn start_decision_log(cfg: &Config) -> anyhow::Result<DecisionLog> {
    if !cfg.log.decisions {
        return Ok(DecisionLog::disabled());
    }
    Ok(DecisionLog::start(
        cfg.log.decision_file.clone(),
        &cfg.log.masked_names(&cfg.jwt),
        cfg.log.sample_allows,
    )
    .context("log.decision_file")?
    .with_explain(cfg.log.explain)
    .with_input(cfg.log.input))
}

/// The inbound side's settings and shared state.
fn inbound_side(
    cfg: &Config,
    identity: Arc<Identity>,
    decider: Decider,
    authn: Option<Arc<Authenticator>>,
    drain: &Drain,
) -> Inbound {
    Inbound {
        identity,
        decider,
        clients: AppClients::new(
            cfg.limits.connect_timeout,
            cfg.limits.upstream_timeout,
            cfg.limits.idle_timeout,
        ),
        app: cfg.inbound.app,
        listen: cfg.inbound.listen,
        original_destination: cfg.inbound.original_destination,
        loopback_ports: cfg.inbound.loopback_ports.clone(),
        protocols: crate::proxy::app_protocol::AppProtocols::new(
            cfg.inbound.app_protocol,
            cfg.inbound.port_protocols.clone(),
        ),
        mtls: cfg.inbound.mtls,
        opaque_ports: cfg.inbound.opaque_ports.clone(),
        body: cfg.policy.body.clone(),
        http: HttpServer::new(&cfg.limits, drain.clone(), Direction::Inbound),
        // JWT: claim headers are never accepted from clients.
        strip_extra: authn
            .as_ref()
            .map(|a| a.claim_header_names())
            .unwrap_or_default(),
        authn,
    }
}

/// The outbound side's settings and shared state.
fn outbound_side(
    cfg: &Config,
    identity: Arc<Identity>,
    decider: Decider,
    drain: &Drain,
) -> Outbound {
    Outbound {
        identity: identity.clone(),
        decider,
        peers: PeerPool::new(identity, cfg.limits.connect_timeout),
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
        http: HttpServer::new(&cfg.limits, drain.clone(), Direction::Outbound),
        upstream_timeout: cfg.limits.upstream_timeout,
        detect_timeout: std::time::Duration::from_millis(200),
    }
}

/// How long start-up waits for its network warm-ups ([`Warm::up`]).
const WARM_BOUND: std::time::Duration = std::time::Duration::from_millis(500);

/// What the warm-ups before readiness work on ([`Warm::up`]).
struct Warm<'a> {
    identity: &'a Arc<Identity>,
    policy: &'a Arc<PolicyStore>,
    outbound: &'a Arc<Outbound>,
    inbound: &'a Arc<Inbound>,
}

impl Warm<'_> {
    /// Before the sidecar reports ready, after start-up's code was unmapped
    /// ([`crate::footprint::release_startup_pages`]), so that what the first requests
    /// run is mapped and was run once:
    ///
    /// - in memory: an mTLS handshake with the current identity
    ///   ([`Identity::warm`]), one evaluation of every policy query
    ///   ([`crate::policy::PolicySet::warm`]), one made-up token per JWT provider
    ///   checked up to its signature ([`Authenticator::warm`]), and one HTTP/2 and one
    ///   HTTP/1.1 request through the inbound HTTP server ([`crate::proxy::warm`]).
    ///   Nothing is logged or counted, nothing leaves the process. The identity and
    ///   policy warm-ups also run when those are installed; here they map their code
    ///   again.
    /// - on the network: the mTLS connection to every HTTP route's upstream, so the
    ///   first request through a route does not pay for the handshake, and the probe
    ///   of whether the app speaks HTTP/2 (`app_protocol: auto`). Start-up waits at
    ///   most [`WARM_BOUND`] for these; a slower upstream keeps connecting in the
    ///   background (a request that arrives meanwhile waits for that handshake instead
    ///   of starting another). An upstream that is down, or an app not up yet, is
    ///   connected or probed on first use, as before.
    async fn up(&self, cfg: &Config, tasks: &Tasks) {
        self.identity.warm();
        if let Some(set) = self.policy.current() {
            set.warm();
        }
        if let Some(authn) = &self.inbound.authn {
            authn.warm().await;
        }
        crate::proxy::warm::exchange(&self.inbound.http).await;
        self.connect(cfg, tasks).await;
    }

    /// The network half of [`Warm::up`]: route upstreams and the app's probe.
    async fn connect(&self, cfg: &Config, tasks: &Tasks) {
        let upstreams: Vec<_> = cfg
            .outbound
            .routes
            .iter()
            .map(|r| (r.upstream, r.spiffe_id.clone(), r.protocol))
            .collect();
        // With original destinations the app's ports are known only per connection.
        let app = (!cfg.inbound.original_destination).then_some(cfg.inbound.app);
        let (done, warmed) = tokio::sync::oneshot::channel::<()>();
        let outbound = self.outbound.clone();
        let inbound = self.inbound.clone();
        tasks.spawn("warm-up", async move {
            let routes =
                futures_util::future::join_all(upstreams.iter().map(|(addr, id, protocol)| {
                    let outbound = &outbound;
                    async move {
                        match protocol {
                            RouteProtocol::Http => outbound.peers.warm(*addr, id).await,
                            // Its connections ride the pooled one as tunnels.
                            RouteProtocol::Tcp => outbound.peers.warm_tcp(*addr, id).await,
                        }
                    }
                }));
            let app = async {
                if let Some(app) = app {
                    inbound.protocols.warm(app).await;
                }
            };
            futures_util::future::join(routes, app).await;
            let _ = done.send(());
        });
        if tokio::time::timeout(WARM_BOUND, warmed).await.is_err() {
            tracing::debug!("warm-up still running; first requests will wait for its connections");
        }
    }
}

/// Outbound listeners: the transparent one, or one per explicit route. Returns the
/// transparent listener's address and the route listeners' addresses.
async fn start_outbound_listeners(
    cfg: &Config,
    outbound: Arc<Outbound>,
    limit: &ConnLimit,
    drain: &Drain,
    tasks: &Tasks,
) -> anyhow::Result<(Option<SocketAddr>, Vec<SocketAddr>)> {
    if cfg.outbound.mode == OutboundMode::Transparent {
        let l = bind(cfg.outbound.listen, "outbound.listen").await?;
        let addr = l.local_addr()?;
        tasks.spawn(
            "outbound-accept",
            accept_loop(
                l,
                Direction::Outbound,
                limit.clone(),
                drain.clone(),
                move |stream, peer, guard| outbound.clone().serve_transparent(stream, peer, guard),
            ),
        );
        return Ok((Some(addr), Vec::new()));
    }
    let mut route_addrs = Vec::new();
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
        tasks.spawn(
            "outbound-route-accept",
            accept_loop(
                l,
                Direction::Outbound,
                limit.clone(),
                drain.clone(),
                move |stream, peer, guard| {
                    ob.clone()
                        .serve(stream, peer, target.clone(), protocol, guard)
                },
            ),
        );
    }
    Ok((None, route_addrs))
}

/// Waits for the shutdown request, drains the data path (at most `grace`), then the
/// admin listener, then stops the owned background tasks.
async fn stop_when_asked(
    shutdown: Arc<Notify>,
    drains: Drains,
    limits: Vec<ConnLimit>,
    grace: std::time::Duration,
    tasks: Tasks,
) {
    shutdown.notified().await;
    drain(&drains.data_trigger, &limits, grace).await;
    drains.admin_trigger.trigger();
    tasks.shutdown(TASK_STOP_BOUND).await;
}

/// Runs the sidecar until a signal or `/shutdown`, then drains. `SIGHUP` reloads policy.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let setter = init_logging(cfg.log.format, &cfg.log.level);
    // Installed before anything listens: a signal sent as soon as the admin port
    // answers is held for the handler task, never met by the default action
    // (SIGHUP's is to terminate the process).
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    );
    let running = start(cfg, setter).await?;
    match signals {
        (Ok(term), Ok(int), Ok(hup)) => running.tasks.spawn(
            "signals",
            handle_signals(
                [term, int, hup],
                running.policy.clone(),
                running.shutdown.clone(),
                running.tasks.stopping(),
            ),
        ),
        _ => tracing::error!("cannot install signal handlers"),
    }
    running.wait().await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT start draining; SIGHUP reloads the policy directory.
async fn handle_signals(
    [mut term, mut int, mut hup]: [tokio::signal::unix::Signal; 3],
    policy: Arc<PolicyStore>,
    shutdown: Arc<Notify>,
    stop: crate::tasks::Stopping,
) {
    let stop = stop.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = term.recv() => { tracing::info!("SIGTERM"); shutdown.notify_one(); }
            _ = int.recv() => { tracing::info!("SIGINT"); shutdown.notify_one(); }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading policy");
                let policy = policy.clone();
                let _ = tokio::task::spawn_blocking(move || policy.reload()).await;
            }
        }
    }
}
