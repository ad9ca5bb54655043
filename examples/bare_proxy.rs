//! The floor of memgate's stack, for `bench/run.sh`: a pingora reverse proxy
//! with no authentication, no policy and no response buffering, configured
//! like memgate (threads per listener, keep-alive to the upstream). What it
//! costs per request, memgate cannot go below while it is built on pingora.
//!
//!   cargo run --release --example bare_proxy -- <listen addr> <upstream addr> [threads]

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

struct Bare {
    upstream: std::net::SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_proxy <listen addr> <upstream addr> [threads]");
        std::process::exit(2);
    };
    let threads = args.next().map_or(2, |t| t.parse().expect("threads"));
    let upstream = upstream.parse().expect("upstream address");
    let conf = ServerConf {
        threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Bare { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
