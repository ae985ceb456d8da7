//! Where we listen, per address family, and what that implies for one connection: the
//! local IP to dial from, the port to advertise in the BEP 10 `p` key, our IPv6 address for
//! the BEP 7 / BEP 10 `ipv6` key, and which peer addresses we can reach at all. A dual-stack
//! session (BEP 32) listens on one IPv4 and one IPv6 TCP socket; a single-family one leaves
//! the other side `None`, and addresses of that family are never dialed.
//!
//! An IPv6 listener bound to the wildcard `[::]` accepts on every local address, but the
//! `ipv6` key needs one: [`local_ipv6`] picks it without sending a packet — the source
//! address the kernel would use for a global destination (a UDP `connect()`, which only
//! looks up the route), else the best address in `/proc/net/if_inet6` — never loopback,
//! link-local, tentative or deprecated.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};

/// Our TCP listen addresses, at most one per family (the bound addresses, with real ports).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Endpoints {
    /// The IPv4 listener, if any.
    pub v4: Option<SocketAddr>,
    /// The IPv6 listener, if any.
    pub v6: Option<SocketAddr>,
    /// The address advertised as `ipv6` when the IPv6 listener is a wildcard (`[::]`).
    pub wildcard6: Option<Ipv6Addr>,
}

impl Endpoints {
    /// Files each bound address under its family (a later one of the same family wins).
    pub fn new(addrs: &[SocketAddr]) -> Endpoints {
        let mut e = Endpoints::default();
        for a in addrs {
            if a.is_ipv4() {
                e.v4 = Some(*a);
            } else {
                e.v6 = Some(*a);
            }
        }
        e
    }

    /// The same endpoints, advertising `ip` as our IPv6 address when the IPv6 listener is
    /// bound to the wildcard (see [`local_ipv6`]); ignored for a specific bind.
    pub fn with_wildcard6(mut self, ip: Option<Ipv6Addr>) -> Endpoints {
        self.wildcard6 = ip.filter(|ip| advertisable(*ip));
        self
    }

    /// The listener of `peer`'s family (IPv4-mapped IPv6 peers count as IPv4).
    fn of(&self, peer: &SocketAddr) -> Option<SocketAddr> {
        if peer.ip().to_canonical().is_ipv4() {
            self.v4
        } else {
            self.v6
        }
    }

    /// Whether we listen on `peer`'s family, and so may dial it (and tell it where to dial
    /// back): a session bound to IPv4 only never opens IPv6 connections.
    pub fn reaches(&self, peer: &SocketAddr) -> bool {
        self.of(peer).is_some()
    }

    /// The local IP to dial `peer` from (the listener's, so the peer sees the address we
    /// accept on); `None` lets the kernel choose (a wildcard bind).
    pub fn bind_ip(&self, peer: &SocketAddr) -> Option<IpAddr> {
        self.of(peer)
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified())
    }

    /// The port to send `peer` as BEP 10 `p`: our listener's in the family of that
    /// connection.
    pub fn port_for(&self, peer: &SocketAddr) -> Option<u16> {
        self.of(peer).map(|a| a.port())
    }

    /// Our IPv6 address for the BEP 10 `ipv6` key: the IPv6 listener's address when it is
    /// bound to one, the address picked by [`local_ipv6`] for a wildcard `[::]` bind (none
    /// when the host has no usable one), and none without an IPv6 listener.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        match self.v6.map(|a| a.ip()) {
            Some(IpAddr::V6(ip)) if ip.is_unspecified() => self.wildcard6,
            Some(IpAddr::V6(ip)) if ip.to_ipv4_mapped().is_none() => Some(ip),
            _ => None,
        }
    }
}

/// Whether `ip` may be advertised to peers as ours: not unspecified, loopback, multicast,
/// link-local (meaningless off the link) or IPv4-mapped.
fn advertisable(ip: Ipv6Addr) -> bool {
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_unicast_link_local()
        || ip.to_ipv4_mapped().is_some())
}

/// Whether `ip` is a unique local address (`fc00::/7`): reachable inside a site only.
fn unique_local(ip: Ipv6Addr) -> bool {
    ip.segments().first().is_some_and(|s| s & 0xfe00 == 0xfc00)
}

/// A local IPv6 address to advertise for a wildcard listener, found without contacting
/// anything: the source address of a route to a global destination when it is global,
/// else the best address the host has ([`best_if_inet6`]: global before unique local).
pub(crate) fn local_ipv6() -> Option<Ipv6Addr> {
    let routed = route_source();
    if let Some(ip) = routed.filter(|ip| advertisable(*ip) && !unique_local(*ip)) {
        return Some(ip);
    }
    let listed = std::fs::read_to_string("/proc/net/if_inet6")
        .ok()
        .and_then(|t| best_if_inet6(&t));
    listed.or(routed.filter(|ip| advertisable(*ip)))
}

/// The local address the kernel would send from to a global IPv6 destination: `connect()`
/// on a UDP socket picks the route and the source, and sends nothing. The destination is
/// in the documentation prefix (2001:db8::/32), so it names no real host either way.
fn route_source() -> Option<Ipv6Addr> {
    let s = UdpSocket::bind("[::]:0").ok()?;
    s.connect("[2001:db8::1]:6881").ok()?;
    match s.local_addr().ok()?.ip() {
        IpAddr::V6(ip) => Some(ip),
        IpAddr::V4(_) => None,
    }
}

/// The best advertisable address in the text of `/proc/net/if_inet6` (one address a line:
/// 32 hex digits, interface index, prefix length, scope, flags, name): global scope before
/// unique local, permanent before temporary; tentative, deprecated and DAD-failed addresses
/// and host or link scope are skipped. Ties go to the first listed.
pub(crate) fn best_if_inet6(text: &str) -> Option<Ipv6Addr> {
    const TEMPORARY: u32 = 0x01;
    const UNUSABLE: u32 = 0x08 | 0x20 | 0x40; // dadfailed, deprecated, tentative
    const SCOPE_GLOBAL: u32 = 0x00;
    let mut best: Option<(u8, Ipv6Addr)> = None;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(hex), Some(_ifindex), Some(_plen), Some(scope), Some(flags)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let (Ok(bits), Ok(scope), Ok(flags)) = (
            u128::from_str_radix(hex, 16),
            u32::from_str_radix(scope, 16),
            u32::from_str_radix(flags, 16),
        ) else {
            continue;
        };
        if hex.len() != 32 || scope != SCOPE_GLOBAL || flags & UNUSABLE != 0 {
            continue;
        }
        let ip = Ipv6Addr::from(bits);
        if !advertisable(ip) {
            continue;
        }
        // Lower is better: global permanent, global temporary, ULA permanent, ULA temporary.
        let rank = u8::from(unique_local(ip)) * 2 + u8::from(flags & TEMPORARY != 0);
        if best.is_none_or(|(r, _)| rank < r) {
            best = Some((rank, ip));
        }
    }
    best.map(|(_, ip)| ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_family_uses_its_own_listener() {
        let e = Endpoints::new(&[sa("127.0.0.5:7000"), sa("[fd00::5]:7001")]);
        let p4 = sa("127.0.0.9:1");
        let p6 = sa("[fd00::9]:1");
        assert_eq!(e.bind_ip(&p4), Some(sa("127.0.0.5:0").ip()));
        assert_eq!(e.bind_ip(&p6), Some(sa("[fd00::5]:0").ip()));
        assert_eq!(e.port_for(&p4), Some(7000));
        assert_eq!(e.port_for(&p6), Some(7001));
        assert_eq!(e.ipv6(), Some("fd00::5".parse().unwrap()));
        let mapped = sa("[::ffff:10.0.0.1]:5");
        assert_eq!(e.port_for(&mapped), Some(7000), "a mapped address is IPv4");
    }

    #[test]
    fn a_missing_family_is_unreachable_and_a_wildcard_is_not_advertised() {
        let v4only = Endpoints::new(&[sa("0.0.0.0:7000")]);
        assert!(!v4only.reaches(&sa("[2001:db8::1]:1")));
        assert!(v4only.reaches(&sa("10.0.0.1:1")));
        assert_eq!(
            v4only.bind_ip(&sa("10.0.0.1:1")),
            None,
            "wildcard: kernel picks"
        );
        assert_eq!(v4only.ipv6(), None);
        let wildcard6 = Endpoints::new(&[sa("0.0.0.0:7000"), sa("[::]:7000")]);
        assert!(wildcard6.reaches(&sa("[2001:db8::1]:1")));
        assert_eq!(wildcard6.ipv6(), None, "no address picked: none advertised");
        let picked = wildcard6.with_wildcard6(Some("2001:db8::7".parse().unwrap()));
        assert_eq!(picked.ipv6(), Some("2001:db8::7".parse().unwrap()));
        let lo = wildcard6.with_wildcard6(Some(Ipv6Addr::LOCALHOST));
        assert_eq!(lo.ipv6(), None, "loopback is never advertised");
        let specific = Endpoints::new(&[sa("[fd00::5]:7001")])
            .with_wildcard6(Some("2001:db8::7".parse().unwrap()));
        assert_eq!(specific.ipv6(), Some("fd00::5".parse().unwrap()));
    }

    #[test]
    fn the_best_listed_address_is_global_permanent_and_usable() {
        let text = "\
00000000000000000000000000000001 01 80 10 80       lo
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
fd000000000000000000000000000002 04 40 00 82     eth0
20010db8000000000000000000000009 04 40 00 c0     eth0
20010db8000000000000000000000008 04 40 00 20     eth0
20010db8000000000000000000000007 04 40 00 01     eth0
20010db8000000000000000000000006 04 40 00 80     eth0
garbage line
ff020000000000000000000000000001 04 40 00 80     eth0
";
        assert_eq!(best_if_inet6(text), Some("2001:db8::6".parse().unwrap()));
        let ula_only = "\
00000000000000000000000000000001 01 80 10 80       lo
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
fd000000000000000000000000000002 04 40 00 82     eth0
";
        assert_eq!(best_if_inet6(ula_only), Some("fd00::2".parse().unwrap()));
        let temp_only = "20010db8000000000000000000000007 04 40 00 01     eth0\n";
        assert_eq!(
            best_if_inet6(temp_only),
            Some("2001:db8::7".parse().unwrap())
        );
        let loopback_only = "00000000000000000000000000000001 01 80 10 80       lo\n";
        assert_eq!(best_if_inet6(loopback_only), None);
        assert_eq!(best_if_inet6(""), None);
    }

    #[test]
    fn the_picked_local_address_is_advertisable() {
        // Whatever this host has: never loopback or link-local, and found without I/O
        // beyond a UDP connect (no packet) and reading /proc.
        if let Some(ip) = local_ipv6() {
            assert!(advertisable(ip), "{ip}");
        }
    }
}
