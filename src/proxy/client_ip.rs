//! Which address a request came from. `X-Forwarded-For` is believed only when
//! the connection comes from a trusted proxy, and then read right to left,
//! stopping at the first address that is not itself a trusted proxy: a client
//! can prepend anything to the header, but not append.

use std::net::IpAddr;

use ipnet::IpNet;

/// Whether `ip` is one of the `trusted` proxies, whose `X-Forwarded-For` counts.
pub fn is_trusted(ip: &IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(ip))
}

/// `peer` is the TCP peer; `forwarded_for` every `X-Forwarded-For` value in order.
pub fn client_ip(peer: IpAddr, forwarded_for: &[&str], trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| is_trusted(ip, trusted);
    if !is_trusted(&peer) {
        return peer;
    }
    let mut current = peer;
    let hops = forwarded_for
        .iter()
        .rev()
        .flat_map(|value| value.rsplit(','))
        .map(str::trim);
    for hop in hops {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                current = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            // Garbage from here on was written by someone we do not trust.
            Err(_) => break,
        }
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn ignores_the_header_from_untrusted_peers() {
        assert_eq!(
            client_ip(ip("203.0.113.9"), &["1.2.3.4"], &nets(&["10.0.0.0/8"])),
            ip("203.0.113.9")
        );
        assert_eq!(client_ip(ip("10.0.0.1"), &["1.2.3.4"], &[]), ip("10.0.0.1"));
    }

    #[test]
    fn reads_right_to_left_through_trusted_hops() {
        let trusted = nets(&["10.0.0.0/8", "192.168.0.0/16"]);
        // client-supplied junk, the real client, then our two proxies
        let xff = ["6.6.6.6, 198.51.100.4", "192.168.1.1"];
        assert_eq!(
            client_ip(ip("10.1.1.1"), &xff, &trusted),
            ip("198.51.100.4")
        );
        assert_eq!(
            client_ip(ip("10.1.1.1"), &["not-an-ip, 10.2.2.2"], &trusted),
            ip("10.2.2.2")
        );
        assert_eq!(client_ip(ip("10.1.1.1"), &[], &trusted), ip("10.1.1.1"));
        assert_eq!(
            client_ip(ip("10.1.1.1"), &["2001:db8::1"], &trusted),
            ip("2001:db8::1")
        );
    }
}
