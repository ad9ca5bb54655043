//! Where a listener forwards to: the configured upstream, resolved through DNS
//! at most every few seconds (containers move), never on the request thread.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pingora::prelude::*;

use crate::config::{ListenerConfig, Upstream};

const DNS_TTL: Duration = Duration::from_secs(10);

pub struct UpstreamTarget {
    upstream: Upstream,
    connect_timeout: Duration,
    read_timeout: Duration,
    resolved: Mutex<Option<(Instant, SocketAddr)>>,
    /// The peer last built, for the address it was built for.
    peer: Mutex<Option<(SocketAddr, Arc<HttpPeer>)>>,
}

impl UpstreamTarget {
    pub fn new(
        key: &str,
        cfg: &ListenerConfig,
    ) -> std::result::Result<Self, crate::config::ConfigError> {
        let upstream = Upstream::parse(key, &cfg.upstream)?;
        let fixed = upstream
            .host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| (Instant::now(), SocketAddr::new(ip, upstream.port)));
        Ok(UpstreamTarget {
            upstream,
            connect_timeout: Duration::from_secs(cfg.connect_timeout_secs),
            read_timeout: Duration::from_secs(cfg.read_timeout_secs),
            resolved: Mutex::new(fixed),
            peer: Mutex::new(None),
        })
    }

    fn is_literal(&self) -> bool {
        self.upstream.host.parse::<IpAddr>().is_ok()
    }

    async fn address(&self) -> Result<SocketAddr> {
        let cached = self.resolved.lock().ok().and_then(|guard| *guard);
        if let Some((at, addr)) = cached
            && (self.is_literal() || at.elapsed() < DNS_TTL)
        {
            return Ok(addr);
        }
        let host = (self.upstream.host.as_str(), self.upstream.port);
        let addr = tokio::net::lookup_host(host)
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| {
                Error::explain(
                    ErrorType::ConnectNoRoute,
                    format!("cannot resolve upstream host {}", self.upstream.host),
                )
            })?;
        if let Ok(mut guard) = self.resolved.lock() {
            *guard = Some((Instant::now(), addr));
        }
        Ok(addr)
    }

    /// The peer for one request, with the listener's timeouts.
    /// The peer for pingora's proxy path (which wants its own box).
    pub async fn peer(&self) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::clone(&*self.shared_peer().await?)))
    }

    /// The peer, built once per resolved address and shared by every request.
    pub async fn shared_peer(&self) -> Result<Arc<HttpPeer>> {
        let addr = self.address().await?;
        if let Ok(guard) = self.peer.lock()
            && let Some((_, peer)) = guard.as_ref().filter(|(at, _)| *at == addr)
        {
            return Ok(peer.clone());
        }
        let mut peer = HttpPeer::new(addr, self.upstream.tls, self.upstream.host.clone());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.total_connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.write_timeout = Some(self.read_timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        let peer = Arc::new(peer);
        if let Ok(mut guard) = self.peer.lock() {
            *guard = Some((addr, peer.clone()));
        }
        Ok(peer)
    }

    pub fn authority(&self) -> String {
        let host = &self.upstream.host;
        let default_port = if self.upstream.tls { 443 } else { 80 };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        if self.upstream.port == default_port {
            host
        } else {
            format!("{host}:{}", self.upstream.port)
        }
    }
}
