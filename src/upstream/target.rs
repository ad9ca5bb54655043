//! Where a listener forwards to: the configured upstream, resolved through DNS
//! at most every few seconds (containers move), never on the request thread.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue};
use pingora::prelude::*;
use pingora::upstreams::peer::Peer;

use crate::config::{ListenerConfig, Upstream};
use crate::http1::request::RequestHead;
use crate::policy::header_names::same_header;

const DNS_TTL: Duration = Duration::from_secs(10);
/// How long an idle keep-alive connection to the upstream is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct UpstreamTarget {
    upstream: Upstream,
    /// The `host` header value for the upstream.
    authority: String,
    /// Send the client's `Host` instead of `authority`.
    preserve_host: bool,
    /// `upstream_headers`, read when memgate started.
    headers: UpstreamHeaders,
    connect_timeout: Duration,
    read_timeout: Duration,
    /// The host is an IP address: never re-resolved.
    literal: bool,
    /// The peer for the last resolved address and when it was resolved; one
    /// peer is shared by every request until the address changes.
    resolved: Mutex<Option<(Instant, SharedPeer)>>,
}

/// The peer requests are sent to, and its `reuse_hash` (the idle pool's key),
/// worked out once per resolved address rather than per request.
#[derive(Clone)]
pub struct SharedPeer {
    pub peer: Arc<HttpPeer>,
    pub key: u64,
}

impl SharedPeer {
    fn new(peer: HttpPeer) -> Self {
        SharedPeer {
            key: peer.reuse_hash(),
            peer: Arc::new(peer),
        }
    }
}

impl UpstreamTarget {
    pub fn new(
        key: &str,
        cfg: &ListenerConfig,
    ) -> std::result::Result<Self, crate::config::ConfigError> {
        let upstream = Upstream::parse(key, &cfg.upstream)?;
        let section = key.strip_suffix(".upstream").unwrap_or(key);
        let headers = UpstreamHeaders(cfg.resolved_upstream_headers(section)?);
        let ip = upstream.host.parse::<IpAddr>().ok();
        let target = UpstreamTarget {
            authority: authority(&upstream),
            preserve_host: cfg.preserve_host,
            headers,
            upstream,
            connect_timeout: Duration::from_secs(cfg.connect_timeout_secs),
            read_timeout: Duration::from_secs(cfg.read_timeout_secs),
            literal: ip.is_some(),
            resolved: Mutex::new(None),
        };
        if let Some(ip) = ip {
            let peer = target.build_peer(SocketAddr::new(ip, target.upstream.port));
            *target.lock() = Some((Instant::now(), peer));
        }
        Ok(target)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, SharedPeer)>> {
        self.resolved.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn build_peer(&self, addr: SocketAddr) -> SharedPeer {
        let mut peer = HttpPeer::new(addr, self.upstream.tls, self.upstream.host.clone());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.total_connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.write_timeout = Some(self.read_timeout);
        peer.options.idle_timeout = Some(IDLE_TIMEOUT);
        SharedPeer::new(peer)
    }

    /// The peer, with the listener's timeouts, shared by every request; the
    /// host is re-resolved at most every `DNS_TTL`.
    pub async fn shared_peer(&self) -> Result<SharedPeer> {
        let cached = self.lock().clone();
        if let Some((at, peer)) = &cached
            && (self.literal || at.elapsed() < DNS_TTL)
        {
            return Ok(peer.clone());
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
        // Same address: keep the peer (and so its pooled connections).
        let peer = match cached {
            Some((_, peer))
                if peer.peer._address == pingora::protocols::l4::socket::SocketAddr::Inet(addr) =>
            {
                peer
            }
            _ => self.build_peer(addr),
        };
        *self.lock() = Some((Instant::now(), peer.clone()));
        Ok(peer)
    }

    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The upstream's origin, for recognising redirects back to it.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// The `host` to send upstream for a client's request: the client's own
    /// (`client_host`, when it sent a usable one) with `preserve_host`, else
    /// the upstream's.
    pub fn host_for<'r>(&'r self, client_host: Option<&'r str>) -> &'r str {
        match client_host {
            Some(host) if self.preserve_host => host,
            _ => &self.authority,
        }
    }

    pub fn headers(&self) -> &UpstreamHeaders {
        &self.headers
    }

    /// Sends `name: value` on every request too, over any header of that name.
    pub fn add_header(&mut self, name: HeaderName, value: HeaderValue) {
        self.headers.0.push((name, value));
    }
}

/// The configured `upstream_headers`: sent on every request to the upstream,
/// over any header of the same name (in any case or `-`/`_` spelling), be it
/// the client's or memgate's own. Values never show in Debug output.
#[derive(Default)]
pub struct UpstreamHeaders(Vec<(HeaderName, HeaderValue)>);

impl UpstreamHeaders {
    pub fn new(headers: Vec<(HeaderName, HeaderValue)>) -> Self {
        UpstreamHeaders(headers)
    }

    /// Replaces whatever `req` says under these names with the configured values.
    pub fn apply(&self, req: &mut RequestHead) {
        if self.0.is_empty() {
            return;
        }
        req.remove_where(|line_name| {
            let Ok(line_name) = std::str::from_utf8(line_name) else {
                return false;
            };
            self.0
                .iter()
                .any(|(name, _)| same_header(line_name, name.as_str()))
        });
        for (name, value) in &self.0 {
            req.copy(name, value);
        }
    }
}

impl std::fmt::Debug for UpstreamHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(name, _)| (name.as_str(), "****")))
            .finish()
    }
}

fn authority(upstream: &Upstream) -> String {
    let host = &upstream.host;
    let default_port = if upstream.tls { 443 } else { 80 };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    if upstream.port == default_port {
        host
    } else {
        format!("{host}:{}", upstream.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(upstream: &str) -> UpstreamTarget {
        let cfg = ListenerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream: upstream.into(),
            connect_timeout_secs: 2,
            read_timeout_secs: 3,
            forward_credentials: false,
            preserve_host: false,
            upstream_headers: Default::default(),
        };
        UpstreamTarget::new("test.upstream", &cfg).unwrap()
    }

    #[tokio::test]
    async fn one_peer_is_shared_and_a_re_resolved_same_address_keeps_it() {
        let literal = target("http://127.0.0.1:8081");
        let first = literal.shared_peer().await.unwrap();
        assert!(Arc::ptr_eq(
            &first.peer,
            &literal.shared_peer().await.unwrap().peer
        ));
        assert_eq!(
            first.peer.options.read_timeout,
            Some(Duration::from_secs(3))
        );
        assert_eq!(first.key, first.peer.reuse_hash());

        let named = target("http://localhost:8081");
        let first = named.shared_peer().await.unwrap();
        // Pretend the DNS answer is old: the same address keeps the same peer.
        if let Some((at, _)) = named.lock().as_mut()
            && let Some(old) = at.checked_sub(DNS_TTL)
        {
            *at = old;
        }
        assert!(Arc::ptr_eq(
            &first.peer,
            &named.shared_peer().await.unwrap().peer
        ));
    }

    #[test]
    fn configured_headers_replace_every_spelling_of_their_name() {
        let headers = UpstreamHeaders::new(vec![
            (
                HeaderName::from_static("x-mcp-userid"),
                HeaderValue::from_static("memgate-service"),
            ),
            (
                HeaderName::from_static("x-api-key"),
                HeaderValue::from_static("k"),
            ),
        ]);
        let mut head = RequestHead::new(&http::Method::POST, "/mcp").unwrap();
        for (name, value) in [
            ("host", "mcp"),
            ("x-mcp-userid", "alice"),
            ("x_mcp_userid", "alice"),
            ("x-memgate-scope", "alice"),
        ] {
            head.header(&HeaderName::from_static(name), value.as_bytes())
                .unwrap();
        }
        headers.apply(&mut head);
        let parsed = head.parsed();
        let all = |n: &str| -> Vec<&str> {
            parsed
                .headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert_eq!(all("x-mcp-userid"), ["memgate-service"]);
        assert!(all("x_mcp_userid").is_empty());
        assert_eq!(all("x-api-key"), ["k"]);
        assert_eq!(all("x-memgate-scope"), ["alice"]);
        assert_eq!(all("host"), ["mcp"]);
        let debug = format!("{headers:?}");
        assert!(
            debug.contains("x-api-key") && !debug.contains("memgate-service"),
            "{debug}"
        );
    }

    #[test]
    fn preserve_host_sends_the_client_s_host() {
        let mut cfg = ListenerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream: "http://mcp:8081".into(),
            connect_timeout_secs: 2,
            read_timeout_secs: 3,
            forward_credentials: false,
            preserve_host: false,
            upstream_headers: Default::default(),
        };
        let client = Some("gate.example:8080");
        let own = UpstreamTarget::new("mcp.upstream", &cfg).unwrap();
        assert_eq!(own.host_for(client), "mcp:8081");
        cfg.preserve_host = true;
        let kept = UpstreamTarget::new("mcp.upstream", &cfg).unwrap();
        assert_eq!(kept.host_for(client), "gate.example:8080");
        assert_eq!(kept.host_for(None), "mcp:8081", "no Host: the upstream's");
    }
}
