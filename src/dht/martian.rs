//! Which addresses a node list may hand us (a "martian" filter, after jech/dht's).
//!
//! A lookup queries whatever addresses answers list, so a hostile or broken node could make
//! us send datagrams to addresses that can never be a DHT node (0.0.0.0, port 0, multicast,
//! broadcast, reserved space) or into our own machine and LAN (loopback, private ranges)
//! from the public Internet. Unroutable addresses are always refused; loopback and private
//! ones are accepted according to [`PrivateNodes`], by default only from a responder that
//! is itself in such a scope, so test networks on 127.x or 10.x keep working while a public
//! node cannot steer us into our LAN.

use std::net::{Ipv4Addr, SocketAddrV4};

/// How far a lookup trusts loopback and private addresses listed by other nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PrivateNodes {
    /// Never query a listed loopback or private address: for a public node that must not
    /// probe its own host or LAN whoever asks.
    Deny,
    /// Accept a listed loopback address only from a loopback responder, and a private one
    /// only from a private or loopback responder: a node whose responders are all local
    /// (a LAN, a test network, `--bootstrap 127.0.0.1:…`) works, a public responder cannot
    /// point us inward.
    #[default]
    SameScope,
    /// Accept loopback and private addresses from anyone: for private test networks that
    /// mix address kinds (unroutable addresses are still refused).
    Allow,
}

/// Where an IPv4 address lives, as far as the filter cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Can never be a DHT node: 0/8, multicast 224/4, reserved 240/4 with the broadcast
    /// address, and the documentation ranges (RFC 5737).
    Unroutable,
    /// 127/8: this host.
    Loopback,
    /// RFC 1918 (10/8, 172.16/12, 192.168/16), link-local 169.254/16 and carrier-grade NAT
    /// 100.64/10: reachable only from inside some local network.
    Private,
    /// Everything else.
    Public,
}

/// The scope of `ip`.
pub fn scope(ip: &Ipv4Addr) -> Scope {
    let o = ip.octets();
    let documentation = matches!(
        (o[0], o[1], o[2]),
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113)
    );
    if o[0] == 0 || o[0] >= 224 || documentation {
        Scope::Unroutable
    } else if ip.is_loopback() {
        Scope::Loopback
    } else if ip.is_private() || ip.is_link_local() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
        Scope::Private
    } else {
        Scope::Public
    }
}

/// Whether `ip` is a public address (the only kind BEP 42 can vouch for, and the only kind
/// per-IP limits apply to: local test networks put many nodes on one host).
pub fn is_public(ip: &Ipv4Addr) -> bool {
    scope(ip) == Scope::Public
}

/// Whether a lookup may query `addr`, listed in an answer from `responder` (the IPv4 case of
/// [`acceptable_for`]).
pub fn acceptable(addr: &SocketAddrV4, responder: &Ipv4Addr, policy: PrivateNodes) -> bool {
    acceptable_for(addr, responder, policy)
}

/// [`scope`] for an address of either family: IPv6 multicast, unspecified and
/// documentation (2001:db8::/32) addresses are unroutable, unique-local (fc00::/7) and
/// link-local (fe80::/10) ones private; an IPv4-mapped address has its IPv4 scope.
pub fn scope_ip(ip: &std::net::IpAddr) -> Scope {
    match ip {
        std::net::IpAddr::V4(a) => scope(a),
        std::net::IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return scope(&v4);
            }
            let seg = a.segments();
            if a.is_unspecified() || a.is_multicast() || (seg[0] == 0x2001 && seg[1] == 0x0db8) {
                Scope::Unroutable
            } else if a.is_loopback() {
                Scope::Loopback
            } else if (seg[0] & 0xfe00) == 0xfc00 || (seg[0] & 0xffc0) == 0xfe80 {
                Scope::Private
            } else {
                Scope::Public
            }
        }
    }
}

/// Whether a lookup may query `addr` of the address family `A`, listed in an answer from
/// `responder`: never an unroutable address or port 0; a private or loopback one only as
/// `policy` allows.
pub fn acceptable_for<A: crate::krpc::DhtAddr>(
    addr: &A,
    responder: &A::Ip,
    policy: PrivateNodes,
) -> bool {
    if addr.port_of() == 0 {
        return false;
    }
    let from = scope_ip(&A::ip_addr(responder));
    match (scope_ip(&A::ip_addr(&addr.ip_of())), policy) {
        (Scope::Unroutable, _) => false,
        (Scope::Public, _) => true,
        (_, PrivateNodes::Allow) => true,
        (_, PrivateNodes::Deny) => false,
        (Scope::Loopback, PrivateNodes::SameScope) => from == Scope::Loopback,
        (Scope::Private, PrivateNodes::SameScope) => {
            matches!(from, Scope::Private | Scope::Loopback)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().unwrap_or_else(|_| panic!("bad test address {s}"))
    }

    #[test]
    fn unroutable_addresses_are_refused_from_anyone_under_any_policy() {
        let bad = [
            "0.0.0.0:6881",
            "0.1.2.3:6881",
            "8.8.8.8:0",
            "224.0.0.1:6881",
            "239.255.255.250:1900",
            "240.0.0.1:6881",
            "255.255.255.255:6881",
            "192.0.2.1:6881",
            "203.0.113.9:6881",
        ];
        for policy in [
            PrivateNodes::Deny,
            PrivateNodes::SameScope,
            PrivateNodes::Allow,
        ] {
            for from in [[8, 8, 4, 4], [10, 0, 0, 1], [127, 0, 0, 1]] {
                let from = Ipv4Addr::from(from);
                for b in bad {
                    assert!(
                        !acceptable(&a(b), &from, policy),
                        "{b} from {from} {policy:?}"
                    );
                }
                assert!(acceptable(&a("1.2.3.4:6881"), &from, policy));
            }
        }
    }

    #[test]
    fn local_addresses_only_from_local_responders_by_default() {
        let public = Ipv4Addr::new(93, 184, 216, 34);
        let lan = Ipv4Addr::new(192, 168, 1, 20);
        let lo = Ipv4Addr::new(127, 0, 0, 1);
        let p = PrivateNodes::SameScope;
        for inward in [
            "127.0.0.2:6881",
            "10.1.1.1:6881",
            "172.16.0.1:6881",
            "169.254.1.1:1",
            "100.64.0.1:1",
        ] {
            assert!(
                !acceptable(&a(inward), &public, p),
                "{inward} from a public node"
            );
            assert!(acceptable(&a(inward), &public, PrivateNodes::Allow));
            assert!(!acceptable(&a(inward), &lo, PrivateNodes::Deny));
        }
        assert!(acceptable(&a("127.0.0.2:6881"), &lo, p));
        assert!(
            !acceptable(&a("127.0.0.2:6881"), &lan, p),
            "a LAN node cannot point at our host"
        );
        assert!(acceptable(&a("10.0.0.2:6881"), &lan, p));
        assert!(acceptable(&a("10.0.0.2:6881"), &lo, p));
        assert!(!is_public(&lan) && !is_public(&lo) && is_public(&public));
    }
}
