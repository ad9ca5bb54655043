//! `memgate serve`: connect and migrate the store, start the change feed, then
//! hand the three listeners to pingora.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::proxy::http_proxy_service_with_name;
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use pingora::services::listening::Service;

use std::path::Path;

use pingora::server::RunArgs;
use tokio::sync::watch;

use crate::admin::AdminApi;
use crate::audit::{self, Spool};
use crate::auth::Authenticator;
use crate::auth::oauth::{self, OAuth, OAuthSettings};
use crate::config::Config;
use crate::lifecycle::InFlight;
use crate::listener::connections::{ConnectionRules, Guarded};
use crate::listener::per_thread::{self, PerThread};
use crate::listener::tls::ReloadingCert;
use crate::listener::{Listener, Listening};
use crate::ownership::OwnerResolver;
use crate::policy::admission::HeadLimits;
use crate::policy::mcp::{McpPolicy, default_tool_rules};
use crate::policy::mem0::Mem0Policy;
use crate::policy::secrets::{GuardMode, SecretGuard};
use crate::proxy::Shared;
use crate::proxy::mcp::{McpFlow, McpSettings};
use crate::proxy::mem0::Mem0Flow;
use crate::proxy::{Flow, Gate};
use crate::ratelimit::RateLimits;
use crate::scopes::ScopeLog;
use crate::sessions::SessionBindings;
use crate::store;
use crate::store::Store;
use crate::upstream::exchange::UpstreamClient;
use crate::upstream::spawn::Supervisor;
use crate::upstream::target::UpstreamTarget;
use crate::upstream::targets::Upstreams;

/// Fails with a clear message if a listen address is taken, before pingora
/// tries (and aborts less helpfully).
fn check_bindable(key: &str, addr: SocketAddr) -> anyhow::Result<()> {
    TcpListener::bind(addr)
        .map(drop)
        .with_context(|| cannot_listen(key, addr))
}

fn cannot_listen(key: &str, addr: SocketAddr) -> String {
    format!("{key}: cannot listen on {addr}")
}

pub fn run(config: Config) -> anyhow::Result<()> {
    let mcp_listener = config.mcp.listener();
    // Spawned servers need the background runtime and the session bindings:
    // they are set up below.
    let fixed_upstreams = match &config.mcp.spawn {
        None => Some(Arc::new(Upstreams::new("mcp.upstream", &mcp_listener)?)),
        Some(_) => None,
    };
    let mem0_listener = config.mem0.listener();
    let mem0_upstream = Arc::new(UpstreamTarget::new("mem0.upstream", &mem0_listener)?);
    let mem0_policy = mem0_policy(&config)?;
    for (key, addr) in [
        ("mcp.listen", config.mcp.listen),
        ("mem0.listen", config.mem0.listen),
        ("admin.listen", config.admin.listen),
    ] {
        check_bindable(key, addr)?;
    }

    // Store I/O and the change feed live on their own runtime: pingora gives
    // each service its own, and this one outlives them all.
    let background = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("memgate-bg")
        .enable_all()
        .build()
        .context("cannot start the background runtime")?;
    let store = background.block_on(open_store(&config))?;
    let auth = Arc::new(authenticator(&config, &store, &background)?);
    background.spawn(
        auth.clone()
            .watch_changes(Duration::from_millis(config.auth.change_poll_ms)),
    );
    let (auditor, writer) = audit_channel(&config, &store)?;
    let (stop_writer, writer_stop) = watch::channel(false);
    let writer = background.spawn(writer.run(writer_stop));
    let shared = shared_state(&config, auth, auditor);
    background.spawn(housekeeping(
        shared.clone(),
        store.clone(),
        config.audit.retention_days,
    ));

    // pingora sleeps the whole grace period after SIGTERM; `graceful_stop`
    // below ends the process as soon as the last request is done.
    crate::proxy::headers::set_tls(config.tls.enabled());
    crate::proxy::headers::set_trusted_proxies(config.server.trusted_proxies.clone());
    let certificate = config
        .tls
        .enabled()
        .then(|| ReloadingCert::new(&config.tls.cert, &config.tls.key))
        .transpose()?;
    let mut server = pingora_server(&config);

    let mem0_client = Arc::new(UpstreamClient::new(mem0_upstream));
    let owners = Arc::new(OwnerResolver::new(
        mem0_client.clone(),
        config.mem0.owner_cache_capacity,
        config.limits.max_response_bytes,
    ));
    let guard = secret_guard(&config)?;
    let mem0_flow = Mem0Flow::new(
        mem0_policy,
        owners.clone(),
        config.limits.max_response_bytes,
        mem0_listener.forward_credentials,
    )
    .guarding_secrets(guard.clone());
    let sessions = session_bindings(&config, &store, &background);
    let mcp_upstreams = mcp_upstreams(
        &config,
        fixed_upstreams,
        background.handle().clone(),
        sessions.clone(),
    )?;
    let supervisor = mcp_upstreams.supervisor().cloned();
    let mcp_flow = mcp_flow(&config, mcp_upstreams.clone(), owners, sessions, guard);
    let listeners = [
        (
            Listener::Mcp,
            &mcp_listener,
            mcp_upstreams,
            Flow::Mcp(Box::new(mcp_flow)),
        ),
        (
            Listener::Mem0,
            &mem0_listener,
            Arc::new(Upstreams::One(mem0_client)),
            Flow::Mem0(mem0_flow),
        ),
    ];
    for (listener, cfg, upstreams, flow) in listeners {
        let gate = Gate::new(
            listener,
            shared.clone(),
            upstreams,
            cfg.forward_credentials,
            config.isolation.mode(),
            flow,
            config.server.threads,
        );
        let listen = (listener, cfg.listen);
        add_proxied_listener(&mut server, &config, listen, gate, certificate.as_ref())?;
    }
    add_admin_listener(&mut server, &config, store.clone());

    tracing::info!(
        mcp = %config.mcp.listen, mem0 = %config.mem0.listen, admin = %config.admin.listen,
        "memgate listening"
    );
    let stopping = Arc::new(tokio::sync::Mutex::new(Some((stop_writer, writer))));
    let running = Running {
        background: &background,
        shared: &shared,
        store: &store,
        supervisor,
        certificate,
        stopping,
    };
    running.until_stopped(server, &config)
}

fn mem0_policy(config: &Config) -> anyhow::Result<Mem0Policy> {
    Ok(Mem0Policy {
        mode: config.isolation.mode(),
        allow_delete_all: config.mem0.allow_delete_all,
        allowed_routes: config.mem0.allowed_route_pairs()?,
        max_body_bytes: config.limits.max_body_bytes,
        max_json_depth: config.limits.max_json_depth,
    })
}

/// What both proxied listeners share: authentication, limits, the audit
/// queue, the in-flight count and the scopes users act in.
fn shared_state(config: &Config, auth: Arc<Authenticator>, auditor: audit::Auditor) -> Arc<Shared> {
    Arc::new(Shared {
        auth,
        limits: RateLimits::new(&config.rate_limit, &config.redis),
        audit: auditor,
        trusted_proxies: config.server.trusted_proxies.clone(),
        in_flight: InFlight::default(),
        scopes: ScopeLog::new(Duration::from_secs(config.auth.last_used_interval_secs)),
        head_limits: HeadLimits {
            max_uri_bytes: config.limits.max_uri_bytes,
            max_header_bytes: config.limits.max_header_bytes,
        },
    })
}

fn pingora_server(config: &Config) -> Server {
    let conf = ServerConf {
        threads: config.server.threads,
        work_stealing: config.server.work_stealing,
        grace_period_seconds: Some(config.server.grace_period_secs),
        graceful_shutdown_timeout_seconds: Some(2),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server
}

/// Where the MCP listener forwards: the configured upstream(s) made at
/// start (`fixed`), or a server spawned per scope.
fn mcp_upstreams(
    config: &Config,
    fixed: Option<Arc<Upstreams>>,
    background: tokio::runtime::Handle,
    sessions: Arc<SessionBindings>,
) -> anyhow::Result<Arc<Upstreams>> {
    let mcp_listener = config.mcp.listener();
    Ok(match (&config.mcp.spawn, fixed) {
        (Some(spawn), _) => Arc::new(Upstreams::Spawned(Supervisor::start(
            "mcp.upstream",
            &mcp_listener,
            spawn,
            background,
            sessions,
            crate::upstream::spawn::BridgePaths {
                sse: config.mcp.sse_path.clone(),
                messages: config.mcp.messages_path.clone(),
            },
        )?)),
        (None, Some(upstreams)) => upstreams,
        (None, None) => Arc::new(Upstreams::new("mcp.upstream", &mcp_listener)?),
    })
}

/// What a running server needs to stop well.
struct Running<'a> {
    background: &'a tokio::runtime::Runtime,
    shared: &'a Arc<Shared>,
    store: &'a Arc<dyn Store>,
    supervisor: Option<Arc<Supervisor>>,
    certificate: Option<Arc<ReloadingCert>>,
    stopping: Stopping,
}

impl Running<'_> {
    /// Serves until SIGTERM (graceful: drains, then exits) or SIGINT (fast),
    /// then stops the spawned servers and flushes what is queued.
    fn until_stopped(self, server: Server, config: &Config) -> anyhow::Result<()> {
        let Running {
            background,
            shared,
            store,
            supervisor,
            certificate,
            stopping,
        } = self;
        // Signal streams register with the runtime they are created in.
        let entered = background.enter();
        if let Some(cert) = &certificate {
            background.spawn(cert.clone().watch(Duration::from_secs(2)));
        }
        background.spawn(graceful_stop(
            shared.in_flight.clone(),
            Duration::from_secs(config.server.grace_period_secs),
            stopping.clone(),
            shared.clone(),
            store.clone(),
            supervisor.clone(),
        )?);
        drop(entered);
        server.run(RunArgs::default());
        // SIGINT (fast shutdown) ends up here.
        background.block_on(async {
            if let Some(supervisor) = &supervisor {
                supervisor.stop_all().await;
            }
            flush(&stopping, shared, store.as_ref()).await;
        });
        Ok(())
    }
}

/// `/health`, `/ready` and `/metrics` on `admin.listen`.
fn add_admin_listener(server: &mut Server, config: &Config, store: Arc<dyn Store>) {
    let mut admin =
        http_proxy_service_with_name(&server.configuration, AdminApi::new(store), "admin");
    admin.add_tcp(&config.admin.listen.to_string());
    server.add_service(admin);
}

/// Which user each MCP session belongs to, with idle ones swept in the background.
fn session_bindings(
    config: &Config,
    store: &Arc<dyn Store>,
    background: &tokio::runtime::Runtime,
) -> Arc<SessionBindings> {
    let idle = Duration::from_secs(config.mcp.session_idle_secs);
    let sessions = Arc::new(SessionBindings::new(
        store.clone(),
        config.mcp.max_sessions,
        idle,
    ));
    background.spawn(session_housekeeping(sessions.clone(), idle));
    sessions
}

/// memgate's tokens through the store and, with `[oauth]`, access tokens
/// through the verifier (its keys fetched in the background).
fn authenticator(
    config: &Config,
    store: &Arc<dyn Store>,
    background: &tokio::runtime::Runtime,
) -> anyhow::Result<Authenticator> {
    let auth = Authenticator::new(store.clone(), &config.auth);
    let Some(settings) = OAuthSettings::from_config(config, |v| std::env::var(v).ok())? else {
        return Ok(auth);
    };
    let oauth = Arc::new(OAuth::new(settings)?);
    // The first requests need not wait for discovery; a failure here
    // is retried when a token needs the keys.
    background.spawn({
        let oauth = oauth.clone();
        async move { oauth.prefetch_keys().await }
    });
    tracing::info!(
        mcp = oauth.resource(oauth::Resource::Mcp),
        mem0 = oauth.resource(oauth::Resource::Mem0),
        "OAuth access tokens are accepted"
    );
    Ok(auth.with_oauth(oauth))
}

/// Connects to the store and brings its schema up to date.
async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let db = &config.database;
    let masked = crate::config::mask_url_password(&db.url);
    let store = store::connect(
        &db.url,
        db.max_connections,
        Duration::from_secs(db.connect_timeout_secs),
    )
    .await
    .with_context(|| format!("database.url: cannot open {masked}"))?;
    store.migrate().await?;
    tracing::info!(store = %masked, "store ready");
    Ok(store)
}

/// The audit queue and its writer, spooling to disk when the store is away.
fn audit_channel(
    config: &Config,
    store: &Arc<dyn Store>,
) -> anyhow::Result<(audit::Auditor, audit::AuditWriter)> {
    let spool = Arc::new(
        Spool::open(
            Path::new(&config.audit.spool_dir),
            config.audit.spool_max_bytes,
        )
        .context("audit.spool_dir")?,
    );
    Ok(audit::channel(
        store.clone(),
        spool,
        config.audit.queue_capacity,
        config.audit.batch_size,
        Duration::from_secs(config.audit.success_sample_secs),
    ))
}

/// The MCP listener's flow: the tool rules (shipped, then configured) over
/// the upstreams it forwards to.
fn mcp_flow(
    config: &Config,
    upstreams: Arc<Upstreams>,
    owners: Arc<OwnerResolver>,
    sessions: Arc<SessionBindings>,
    secret_guard: Option<Arc<SecretGuard>>,
) -> McpFlow {
    let mcp_policy = McpPolicy {
        tools: {
            let mut tools = default_tool_rules();
            tools.extend(config.mcp.tools.clone());
            tools
        },
        unknown_tools: config.mcp.unknown_tools,
        max_json_depth: config.limits.max_json_depth,
        // One scope for everyone: a single upstream is that scope's own.
        upstream_per_scope: upstreams.per_scope()
            || matches!(
                config.isolation.mode,
                crate::config::IsolationModeName::Global
            ),
        ..McpPolicy::default()
    };
    let refused_tools = mcp_policy.tools_refused_on_shared_upstream();
    if !refused_tools.is_empty() {
        tracing::warn!(
            tools = %refused_tools.join(", "),
            "these MCP tools keep users apart only with an MCP server per user, and mcp.upstream \
             is one server shared by every user: their calls are refused and they are hidden \
             from tools/list (set scoped_by in [mcp.tools.NAME] if a tool holds no per-user data)"
        );
    }
    McpFlow::new(McpSettings {
        policy: mcp_policy,
        upstreams,
        owners,
        mcp_path: config.mcp.path.clone(),
        sse_path: config.mcp.sse_path.clone(),
        messages_path: config.mcp.messages_path.clone(),
        allowed_paths: config.mcp.allowed_paths.clone(),
        allowed_origins: config.mcp.allowed_origins.clone(),
        sessions,
        session_idle: Duration::from_secs(config.mcp.session_idle_secs),
        max_sessions: config.mcp.max_sessions,
        max_body_bytes: config.limits.max_body_bytes,
        max_response_bytes: config.limits.max_response_bytes,
        forward_credentials: config.mcp.forward_credentials,
        secret_guard,
    })
}

/// The secret guard both listeners share, or `None` with `mode = "off"`.
fn secret_guard(config: &Config) -> anyhow::Result<Option<Arc<SecretGuard>>> {
    if config.secret_guard.mode == GuardMode::Off {
        return Ok(None);
    }
    let guard = SecretGuard::from_config(&config.secret_guard)
        .map_err(|e| anyhow::anyhow!("{}: {}", e.key, e.message))?;
    Ok(Some(Arc::new(guard)))
}

/// A proxied listener on `listen`: the gate behind the connection guard, on
/// a runtime per thread (or pingora's shared one with `work_stealing`).
fn add_proxied_listener(
    server: &mut Server,
    config: &Config,
    (listener, listen): (Listener, SocketAddr),
    gate: Gate,
    certificate: Option<&Arc<ReloadingCert>>,
) -> anyhow::Result<()> {
    let tls = certificate.map(|c| c.settings()).transpose()?;
    let connection_rules = ConnectionRules {
        max_connections: config.server.max_connections,
        header_timeout: Duration::from_secs(config.server.header_timeout_secs),
        max_head_bytes: config.limits.max_uri_bytes + config.limits.max_header_bytes + 1024,
    };
    // The longest request head a keep-alive connection reads after its first.
    let max_head = config.limits.max_uri_bytes + config.limits.max_header_bytes + 4096;
    let guarded = Guarded::new(
        Listening::new(
            gate,
            Duration::from_secs(config.server.keepalive_idle_secs),
            max_head,
        ),
        connection_rules,
        listener.as_str(),
    );
    if config.server.work_stealing {
        let mut service = Service::new(listener.as_str().to_string(), guarded);
        // pingora gives every connection a 64 KiB read buffer at accept;
        // heads and bodies are read into buffers of their own, so it only
        // costs memory on each idle connection.
        let mut endpoint =
            ListenerConfig::tcp(listen.to_string()).l4_buffer(L4BufferSettings::default().read(0));
        if let Some(tls) = tls {
            endpoint = endpoint.tls(tls);
        }
        service.add_listener(endpoint);
        server.add_service(service);
    } else {
        let sockets = per_thread::bind(listen, config.server.threads)
            .with_context(|| cannot_listen(&format!("{}.listen", listener.as_str()), listen))?;
        server.add_service(PerThread::new(listener.as_str(), sockets, tls, guarded));
    }
    Ok(())
}

type Stopping = Arc<tokio::sync::Mutex<Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>>>;

/// Waits for SIGTERM, then for in-flight requests (at most `grace`), stops
/// the spawned MCP servers, flushes and exits 0.
fn graceful_stop(
    in_flight: InFlight,
    grace: Duration,
    stopping: Stopping,
    shared: Arc<Shared>,
    store: Arc<dyn Store>,
    supervisor: Option<Arc<Supervisor>>,
) -> anyhow::Result<impl Future<Output = ()>> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    Ok(async move {
        if terminate.recv().await.is_none() {
            return;
        }
        tracing::info!(in_flight = in_flight.count(), "SIGTERM: draining");
        if !in_flight.drained(grace).await {
            tracing::warn!(
                in_flight = in_flight.count(),
                "grace period over; cutting the rest"
            );
        }
        if let Some(supervisor) = &supervisor {
            supervisor.stop_all().await;
        }
        flush(&stopping, &shared, store.as_ref()).await;
        tracing::info!("stopped");
        std::process::exit(0);
    })
}

/// Writes what the audit queue still holds, then the last uses. Runs once.
async fn flush(stopping: &Stopping, shared: &Shared, store: &dyn Store) {
    let Some((stop_writer, writer)) = stopping.lock().await.take() else {
        return;
    };
    tracing::info!("flushing the audit trail");
    let _ = stop_writer.send(true);
    if tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .is_err()
    {
        tracing::error!(
            "the audit writer did not finish within 10 s; queued events are in the spool"
        );
    }
    shared.auth.flush_last_used().await;
    if let Err(e) = shared.scopes.flush(store).await {
        tracing::warn!(error = %e, "project scopes seen since the last flush were not recorded");
    }
}

/// Session uses are written every few seconds, idle sessions forgotten every few minutes.
async fn session_housekeeping(sessions: Arc<SessionBindings>, idle: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        ticks += 1;
        sessions.housekeeping(idle, ticks % 60 == 1).await;
    }
}

/// Periodic chores: batched `last_used_at`, audit retention, limiter memory.
async fn housekeeping(shared: Arc<Shared>, store: Arc<dyn Store>, retention_days: u32) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        ticks += 1;
        shared.auth.flush_last_used().await;
        if let Err(e) = shared.scopes.flush(store.as_ref()).await {
            tracing::debug!(error = %e, "project scopes not recorded yet; will retry");
        }
        if ticks % 60 == 1 {
            shared.limits.housekeeping();
            refresh_tokens_expiring(store.as_ref()).await;
            if retention_days > 0 {
                let before = chrono::Duration::try_days(i64::from(retention_days))
                    .and_then(|d| chrono::Utc::now().checked_sub_signed(d))
                    .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
                match store.prune_audit(before).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "pruned old audit events"),
                    Err(e) => tracing::warn!(error = %e, "pruning audit events failed"),
                }
            }
        }
    }
}

/// Sets `memgate_tokens_expiring` from the store. Called every few minutes
/// by `serve`: expiry moves by the clock, not by events memgate sees. A
/// failed query keeps the last values (the store error is counted).
pub async fn refresh_tokens_expiring(store: &dyn crate::store::Store) {
    let now = chrono::Utc::now();
    for (label, days) in crate::metrics::TOKEN_EXPIRY_WINDOWS {
        let until = now + chrono::Duration::days(days);
        match store.count_tokens_expiring(now, until).await {
            Ok(n) => crate::metrics::METRICS
                .tokens_expiring
                .with_label_values(&[label])
                .set(n),
            Err(e) => tracing::warn!(error = %e, "counting the tokens that expire soon failed"),
        }
    }
}
