//! `memgate serve`: connect and migrate the store, start the change feed, then
//! hand the three listeners to pingora.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pingora::proxy::http_proxy_service_with_name;
use pingora::server::Server;
use pingora::server::configuration::ServerConf;

use crate::admin::AdminApi;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::policy::mem0::Mem0Policy;
use crate::proxy::exchange::UpstreamClient;
use crate::proxy::mem0::Mem0Flow;
use crate::proxy::upstream::UpstreamTarget;
use crate::proxy::{Gate, Listener};
use crate::store;

/// Fails with a clear message if a listen address is taken, before pingora
/// tries (and aborts less helpfully).
fn check_bindable(key: &str, addr: SocketAddr) -> anyhow::Result<()> {
    TcpListener::bind(addr)
        .map(drop)
        .with_context(|| format!("{key}: cannot listen on {addr}"))
}

pub fn run(config: Config) -> anyhow::Result<()> {
    let mcp_upstream = Arc::new(UpstreamTarget::new("mcp.upstream", &config.mcp)?);
    let mem0_listener = config.mem0.listener();
    let mem0_upstream = Arc::new(UpstreamTarget::new("mem0.upstream", &mem0_listener)?);
    let mem0_policy = Mem0Policy {
        mode: config.isolation.mode(),
        allow_delete_all: config.mem0.allow_delete_all,
        allowed_routes: config.mem0.allowed_route_pairs()?,
        max_body_bytes: config.limits.max_body_bytes,
        max_json_depth: config.limits.max_json_depth,
    };
    check_bindable("mcp.listen", config.mcp.listen)?;
    check_bindable("mem0.listen", config.mem0.listen)?;
    check_bindable("admin.listen", config.admin.listen)?;

    // Store I/O and the change feed live on their own runtime: pingora gives
    // each service its own, and this one outlives them all.
    let background = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("memgate-bg")
        .enable_all()
        .build()
        .context("cannot start the background runtime")?;
    let db = &config.database;
    let store = background
        .block_on(store::connect(
            &db.url,
            db.max_connections,
            Duration::from_secs(db.connect_timeout_secs),
        ))
        .with_context(|| {
            format!(
                "database.url: cannot open {}",
                crate::config::mask_url_password(&db.url)
            )
        })?;
    background.block_on(store.migrate())?;
    let auth = Arc::new(Authenticator::new(store.clone(), &config.auth));
    background.spawn(
        auth.clone()
            .watch_changes(Duration::from_millis(config.auth.change_poll_ms)),
    );

    let conf = ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(config.server.grace_period_secs),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mem0_flow = Mem0Flow::new(
        mem0_policy,
        UpstreamClient::new(mem0_upstream.clone()),
        config.limits.max_response_bytes,
        mem0_listener.forward_credentials,
    );
    let listeners = [
        (Listener::Mcp, &config.mcp, mcp_upstream, None),
        (
            Listener::Mem0,
            &mem0_listener,
            mem0_upstream,
            Some(mem0_flow),
        ),
    ];
    for (listener, cfg, upstream, flow) in listeners {
        let gate = Gate::new(
            listener,
            auth.clone(),
            upstream,
            cfg.forward_credentials,
            config.isolation.mode(),
            flow,
        );
        let mut service =
            http_proxy_service_with_name(&server.configuration, gate, listener.as_str());
        service.add_tcp(&cfg.listen.to_string());
        server.add_service(service);
    }
    let mut admin =
        http_proxy_service_with_name(&server.configuration, AdminApi::new(store), "admin");
    admin.add_tcp(&config.admin.listen.to_string());
    server.add_service(admin);

    tracing::info!(
        mcp = %config.mcp.listen, mem0 = %config.mem0.listen, admin = %config.admin.listen,
        "memgate listening"
    );
    server.run_forever();
}
