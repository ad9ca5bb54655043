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
    let mcp_upstream = UpstreamTarget::new("mcp.upstream", &config.mcp)?;
    let mem0_upstream = UpstreamTarget::new("mem0.upstream", &config.mem0)?;
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

    let listeners = [
        (Listener::Mcp, &config.mcp, mcp_upstream),
        (Listener::Mem0, &config.mem0, mem0_upstream),
    ];
    for (listener, cfg, upstream) in listeners {
        let gate = Gate::new(listener, auth.clone(), upstream, cfg.forward_credentials);
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
