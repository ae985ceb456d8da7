//! Where we listen, per address family, and what that implies for one connection: the
//! local IP to dial from, the port to advertise in the BEP 10 `p` key, our IPv6 address for
//! the BEP 7 / BEP 10 `ipv6` key, and which peer addresses we can reach at all. A dual-stack
//! session (BEP 32) listens on one IPv4 and one IPv6 TCP socket; a single-family one leaves
//! the other side `None`, and addresses of that family are never dialed.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Our TCP listen addresses, at most one per family (the bound addresses, with real ports).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Endpoints {
    /// The IPv4 listener, if any.
    pub v4: Option<SocketAddr>,
    /// The IPv6 listener, if any.
    pub v6: Option<SocketAddr>,
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
    /// bound to one (a wildcard `[::]` bind does not know which of the host's addresses
    /// peers can reach, so it sends none).
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        match self.v6.map(|a| a.ip()) {
            Some(IpAddr::V6(ip)) if !ip.is_unspecified() && ip.to_ipv4_mapped().is_none() => {
                Some(ip)
            }
            _ => None,
        }
    }
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
        assert_eq!(wildcard6.ipv6(), None);
    }
}
