//! Who is the client: the socket's peer address, or, only when that peer is a trusted proxy, the
//! address the proxy forwarded (`Forwarded: for=…`, else `X-Forwarded-For`). And the key that
//! per-IP limits count under: the exact address for IPv4, the /64 for IPv6 (one subscriber's
//! prefix: a host picks any address in it at will).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::http::HeaderMap;
pub use ipnet::IpNet;

/// Parses a network (`10.0.0.0/8`, `2001:db8::/32`) or a single address (`192.0.2.7`, `::1`).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack socket reports for IPv4
/// clients) as the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The key per-IP limits count under: the IPv4 address, or the IPv6 /64 (its first address).
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// Proxies whose forwarding headers are believed (`--trusted-proxy`). Empty: none, the socket
/// address is always the client's.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        TrustedProxies(nets.into_iter().collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client of a request that arrived from socket peer `peer`.
    ///
    /// Headers are read only if `peer` is trusted. The hops they list are walked from the
    /// nearest (rightmost) back, skipping trusted proxies: the first untrusted address is the
    /// client. A hop that is not an address (`unknown`, an obfuscated name, garbage) stops the
    /// walk at the last trusted hop, so nothing a client writes itself is believed. Without
    /// forwarding headers, the trusted peer itself is the client.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        let hops = forwarded_hops(headers);
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop {
                Some(ip) => {
                    client = canonical(*ip);
                    if !self.contains(client) {
                        return client;
                    }
                }
                None => return client,
            }
        }
        client
    }
}

/// Whether a request carries any forwarding header (from whomever).
pub fn has_forwarding_headers(headers: &HeaderMap) -> bool {
    ["forwarded", "x-forwarded-for", "x-real-ip"]
        .iter()
        .any(|h| headers.contains_key(*h))
}

/// The hops of `Forwarded` (RFC 7239 `for=`), or if there is none, of `X-Forwarded-For`, in
/// order (client first). `None` for a hop that is not an address.
fn forwarded_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    };
    let forwarded = values("forwarded");
    if !forwarded.is_empty() {
        let mut hops = Vec::new();
        for element in forwarded.iter().flat_map(|v| v.split(',')) {
            let for_ = element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then(|| v.trim())
            });
            // An element without `for` says nothing about that hop's client: skip it.
            if let Some(v) = for_ {
                hops.push(parse_hop(v.trim_matches('"')));
            }
        }
        return hops;
    }
    values("x-forwarded-for")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|h| parse_hop(h.trim()))
        .collect()
}

/// `192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:80`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn keys() {
        assert_eq!(ip_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(ip_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(ip_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            ip_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            ip_key(ip("2001:db8:1:2::9"))
        );
        assert_ne!(ip_key(ip("2001:db8:1:3::1")), ip_key(ip("2001:db8:1:2::1")));
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("10.1.2.3/8").map(|n| n.to_string()),
            Ok("10.0.0.0/8".into())
        );
        assert_eq!(
            parse_cidr(" ::1 ").map(|n| n.to_string()),
            Ok("::1/128".into())
        );
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("proxy.example").is_err());
    }

    #[test]
    fn forwarded_only_from_trusted_peers() {
        let t = TrustedProxies::new([parse_cidr("10.0.0.0/8").expect("cidr")]);
        let xff = headers(&[("x-forwarded-for", "203.0.113.9")]);
        // Untrusted peer: its headers are ignored.
        assert_eq!(t.client_ip(ip("198.51.100.1"), &xff), ip("198.51.100.1"));
        assert_eq!(t.client_ip(ip("10.0.0.2"), &xff), ip("203.0.113.9"));
        // The client's own (spoofed) entries come first; the proxy appended the real one.
        let chain = headers(&[("x-forwarded-for", "127.0.0.1, 203.0.113.9, 10.0.0.3")]);
        assert_eq!(t.client_ip(ip("10.0.0.2"), &chain), ip("203.0.113.9"));
        // Split over two header lines.
        let two = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(t.client_ip(ip("10.0.0.2"), &two), ip("203.0.113.9"));
        // Garbage stops the walk at the last trusted hop.
        let bad = headers(&[("x-forwarded-for", "203.0.113.9, nonsense")]);
        assert_eq!(t.client_ip(ip("10.0.0.2"), &bad), ip("10.0.0.2"));
        // No header: the proxy itself.
        assert_eq!(
            t.client_ip(ip("10.0.0.2"), &HeaderMap::new()),
            ip("10.0.0.2")
        );
        // Forwarded wins over X-Forwarded-For; quoted IPv6 with a port.
        let fwd = headers(&[
            (
                "forwarded",
                "for=192.0.2.1;proto=https, For=\"[2001:db8::17]:4711\"",
            ),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(t.client_ip(ip("10.0.0.2"), &fwd), ip("2001:db8::17"));
        let unknown = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(t.client_ip(ip("10.0.0.2"), &unknown), ip("10.0.0.2"));
        // A dual-stack socket's IPv4-mapped peer is matched as IPv4.
        assert_eq!(t.client_ip(ip("::ffff:10.0.0.2"), &xff), ip("203.0.113.9"));
        assert!(has_forwarding_headers(&xff) && !has_forwarding_headers(&HeaderMap::new()));
    }
}
