//! Who the client is behind a reverse proxy: with `SWITCHYARD_TRUSTED_PROXIES`, a request whose
//! peer is one of the listed proxies is attributed to the address the proxies recorded in
//! `X-Forwarded-For` — the nearest one that is not itself a trusted proxy (walking the list from
//! the right, as nginx's `real_ip_recursive` does). Anyone else's `X-Forwarded-For` is ignored:
//! a client cannot choose its own address, so it cannot escape the per-address limits. Without
//! the setting every client behind a proxy shares the proxy's address and its limits.

use std::net::IpAddr;

/// Addresses and networks (`10.0.0.0/8`, `::1`) of the proxies whose `X-Forwarded-For` is
/// believed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// A comma-separated list of addresses and CIDR networks; empty: none.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (addr, bits) = match item.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (item, None),
            };
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| format!("{item:?} is not an IP address or network"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                None => max,
                Some(b) => b
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("{item:?}: the prefix length must be 0-{max}"))?,
            };
            nets.push((canonical(addr), bits));
        }
        Ok(Self(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|(net, bits)| within(ip, *net, *bits))
    }

    /// The client's address for a request from `peer` carrying these `X-Forwarded-For` header
    /// values (in order).
    pub fn client<'a>(
        &self,
        peer: Option<IpAddr>,
        forwarded_for: impl Iterator<Item = &'a str>,
    ) -> Option<IpAddr> {
        let peer = peer.map(canonical)?;
        if !self.contains(peer) {
            return Some(peer);
        }
        let hops: Vec<&str> = forwarded_for
            .flat_map(|h| h.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            // An entry that is not an address (`unknown`, garbage) ends the walk: what lies
            // to its left was written by no one we trust.
            let Ok(ip) = hop.parse::<IpAddr>().map(canonical) else {
                break;
            };
            client = ip;
            if !self.contains(ip) {
                break;
            }
        }
        Some(client)
    }
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`, what a dual-stack socket reports) as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn within(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_match_by_prefix() {
        let t = TrustedProxies::parse("10.0.0.0/8, 127.0.0.1, ::1, fd00::/8").unwrap();
        assert!(t.contains(ip("10.200.3.4")));
        assert!(!t.contains(ip("11.0.0.1")));
        assert!(t.contains(ip("127.0.0.1")));
        assert!(!t.contains(ip("127.0.0.2")));
        assert!(t.contains(ip("::1")));
        assert!(t.contains(ip("fd12::1")));
        assert!(t.contains(ip("::ffff:10.1.1.1")), "v4-mapped is v4");
        assert!(TrustedProxies::parse("0.0.0.0/0")
            .unwrap()
            .contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "nope", "1.2.3.4/x", "::1/129"] {
            assert!(TrustedProxies::parse(bad).is_err(), "{bad}");
        }
        assert!(TrustedProxies::parse("").unwrap().is_empty());
    }

    #[test]
    fn the_client_is_the_nearest_untrusted_hop_and_only_behind_a_trusted_peer() {
        let t = TrustedProxies::parse("127.0.0.1, 10.0.0.0/8").unwrap();
        let client = |peer: &str, xff: &[&str]| t.client(Some(ip(peer)), xff.iter().copied());
        // Not from a proxy: its own X-Forwarded-For is ignored.
        assert_eq!(client("203.0.113.9", &["1.2.3.4"]), Some(ip("203.0.113.9")));
        // Through nginx: the address nginx appended.
        assert_eq!(
            client("127.0.0.1", &["198.51.100.7"]),
            Some(ip("198.51.100.7"))
        );
        // A client's spoofed entry sits left of what the proxy appended: not believed.
        assert_eq!(
            client("127.0.0.1", &["6.6.6.6, 198.51.100.7"]),
            Some(ip("198.51.100.7"))
        );
        // Two trusted hops, over two headers.
        assert_eq!(
            client("127.0.0.1", &["6.6.6.6, 198.51.100.7", "10.1.2.3"]),
            Some(ip("198.51.100.7"))
        );
        // Garbage ends the walk at the last hop we trust.
        assert_eq!(
            client("127.0.0.1", &["unknown, 10.1.2.3"]),
            Some(ip("10.1.2.3"))
        );
        // No header: the proxy itself.
        assert_eq!(client("127.0.0.1", &[]), Some(ip("127.0.0.1")));
        // Nothing configured: always the peer.
        let none = TrustedProxies::default();
        assert_eq!(
            none.client(Some(ip("127.0.0.1")), ["9.9.9.9"].into_iter()),
            Some(ip("127.0.0.1"))
        );
    }
}
