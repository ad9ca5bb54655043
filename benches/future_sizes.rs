//! Prints the size of the futures on memgate's request path (bench/RESULTS.md,
//! "Analysis"). A future's whole size is allocated and copied when it is boxed
//! (`async_trait` boxes pingora's `process_new_http` for every request, so the
//! gate's request future, which contains every future it awaits, is allocated
//! and copied once per request).
//!
//! `cargo bench --bench future_sizes` (a bench target rather than an example so
//! that `cargo test` does not build it). Nothing is polled: the futures are
//! only built, measured and dropped.

use std::mem::size_of_val;
use std::sync::Arc;

use pingora::prelude::HttpPeer;

use memgate::auth::{Authenticator, PresentedHeaders, StoreAccess};
use memgate::config::{AuthConfig, Config};
use memgate::http1::request::RequestHead;
use memgate::store::{SqliteStore, Store};
use memgate::upstream::exchange::UpstreamClient;
use memgate::upstream::target::UpstreamTarget;

fn show(what: &str, bytes: usize) {
    println!("{bytes:>8} B  {what}");
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let peer = HttpPeer::new("127.0.0.1:9", false, String::new());

    let connector = pingora::connectors::http::Connector::new(None);
    show(
        "pingora http::Connector::get_http_session (new or pooled connection)",
        size_of_val(&connector.get_http_session(&peer)),
    );
    let h1 = pingora::connectors::http::v1::Connector::new(None);
    show(
        "pingora http::v1::Connector::get_http_session",
        size_of_val(&h1.get_http_session(&peer)),
    );
    show(
        "pingora http::v1::Connector::reused_http_session (pooled only)",
        size_of_val(&h1.reused_http_session(&peer)),
    );

    let _guard = rt.enter();
    let cfg = Config::default();
    let target =
        Arc::new(UpstreamTarget::new("mem0.upstream", &cfg.mem0.listener()).expect("target"));
    let client = UpstreamClient::new(target.clone());
    let req = || RequestHead::new(&http::Method::GET, "/memories").expect("request");
    show(
        "memgate UpstreamClient::open (one upstream exchange, header)",
        size_of_val(&client.open(req(), None)),
    );
    show(
        "memgate UpstreamClient::exchange (whole response)",
        size_of_val(&client.exchange(req(), None, 1 << 20)),
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
    let store: Arc<dyn Store> = Arc::new(
        rt.block_on(SqliteStore::connect(
            &url,
            1,
            std::time::Duration::from_secs(3),
        ))
        .expect("store"),
    );
    let auth = Authenticator::new(store, &AuthConfig::default());
    let headers = PresentedHeaders::default();
    show(
        "memgate Authenticator::authenticate",
        size_of_val(&auth.authenticate(&headers, StoreAccess::Open)),
    );
}
