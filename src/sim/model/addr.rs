//! Where nodes live: the address of each node slot and the slot behind an address, by
//! arithmetic, so a million nodes need no address table.
//!
//! Node `i` lives at `10.x.y.z:6881` with `x.y.z = i + 1`. 10/8 is private space, which
//! BEP 42 exempts: ids stay the random ones the simulator drew. With `[network] public_ips`
//! nodes live on public, routable addresses spread over the whole IPv4 space by a keyed
//! bijection ([`super::spread`]), and BEP 42 applies (ids are drawn valid for their
//! address, for the configured share of nodes).

use std::net::{Ipv4Addr, SocketAddrV4};

use super::spread::Spread;

const BASE_IP: u32 = 0x0A00_0000;
/// UDP port every simulated node listens on.
pub const PORT: u16 = 6881;

/// The address of node `i`.
pub fn addr_of(i: u32) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(BASE_IP + i + 1), PORT)
}

/// The node at `a`, if `a` is a simulated address (of any port) below `n` nodes.
pub fn node_of_ip(ip: &Ipv4Addr, n: u32) -> Option<u32> {
    let v = u32::from(*ip);
    let i = v.checked_sub(BASE_IP + 1)?;
    (i < n).then_some(i)
}

/// The node at `a`, if any.
pub fn node_of(a: &SocketAddrV4, n: u32) -> Option<u32> {
    if a.port() != PORT {
        return None;
    }
    node_of_ip(a.ip(), n)
}

/// Where the nodes live: private 10/8 (BEP 42-exempt, the default) or public addresses
/// spread over the IPv4 space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addrs {
    /// `None`: private addresses.
    public: Option<Spread>,
}

impl Addrs {
    /// 10.x.y.z, `x.y.z = i + 1` (what [`addr_of`] gives).
    pub const PRIVATE: Addrs = Addrs { public: None };

    /// The addressing of a scenario: public ones are spread by a bijection keyed by `seed`.
    pub fn new(public: bool, seed: u64) -> Addrs {
        Addrs {
            public: public.then(|| Spread::new(seed)),
        }
    }

    /// Whether BEP 42 applies to these addresses.
    pub fn is_public(&self) -> bool {
        self.public.is_some()
    }

    /// The address of node `i`.
    pub fn addr_of(&self, i: u32) -> SocketAddrV4 {
        match self.public {
            None => addr_of(i),
            Some(s) => SocketAddrV4::new(Ipv4Addr::from(s.addr_of(i)), PORT),
        }
    }

    /// The node at `ip`, if it is a node's address below `n` nodes.
    pub fn node_of_ip(&self, ip: &Ipv4Addr, n: u32) -> Option<u32> {
        match self.public {
            None => node_of_ip(ip, n),
            Some(s) => s.slot_of(u32::from(*ip)).filter(|&i| i < n),
        }
    }

    /// The node at `a`, if any.
    pub fn node_of(&self, a: &SocketAddrV4, n: u32) -> Option<u32> {
        if a.port() != PORT {
            return None;
        }
        self.node_of_ip(a.ip(), n)
    }
}

/// Whether honest node `i` runs a client with a BEP 42-valid id (a share `share` of them),
/// by a hash of (seed, node) rather than a draw, so the other draws stay where they were.
pub fn bep42_valid(seed: u64, i: u32, share: f64) -> bool {
    if share >= 1.0 {
        return true;
    }
    let h = super::mix64(seed ^ 0x6265_7034_3200_0000 ^ (u64::from(i) << 8));
    ((h >> 11) as f64) < share * (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_addresses_round_trip_are_public_and_spread() {
        let n = 100_000u32;
        let p = Addrs::new(true, 7);
        let mut slash24 = std::collections::HashSet::new();
        let mut slash8 = std::collections::HashSet::new();
        for i in 0..n {
            let a = p.addr_of(i);
            assert_eq!(p.node_of(&a, n), Some(i), "{i} at {a}");
            assert!(crate::dht::martian::is_public(a.ip()), "{a}");
            assert!(!crate::dht::bep42::is_exempt(a.ip()), "{a}");
            slash24.insert(u32::from(*a.ip()) >> 8);
            slash8.insert(a.ip().octets()[0]);
        }
        // 100k addresses in ~14M public /24s: a few hundred share one.
        assert!(slash24.len() > 99_000, "{} /24s", slash24.len());
        assert!(slash8.len() > 200, "{} /8s", slash8.len());
        // Addresses of no node, or of a node beyond `n`, map to none.
        assert_eq!(p.node_of(&p.addr_of(n), n), None);
        assert_eq!(p.node_of_ip(&Ipv4Addr::new(10, 0, 0, 1), n), None);
        assert_ne!(Addrs::new(true, 8).addr_of(5), p.addr_of(5));
    }

    #[test]
    fn bep42_valid_share_is_the_configured_one() {
        let n = 100_000u32;
        let valid = (0..n).filter(|&i| bep42_valid(3, i, 0.3)).count();
        assert!((29_000..31_000).contains(&valid), "{valid}");
        assert!((0..n).all(|i| bep42_valid(3, i, 1.0)));
        assert!(!(0..n).any(|i| bep42_valid(3, i, 0.0)));
        assert_eq!(bep42_valid(3, 17, 0.5), bep42_valid(3, 17, 0.5));
    }

    #[test]
    fn addresses_round_trip() {
        for i in [0u32, 1, 255, 999_999, 15_999_999] {
            assert_eq!(node_of(&addr_of(i), 16_000_000), Some(i));
        }
        assert_eq!(node_of(&addr_of(10), 10), None);
        assert_eq!(
            node_of(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, PORT), 10),
            None
        );
        let other_port = SocketAddrV4::new(*addr_of(3).ip(), 1);
        assert_eq!(node_of(&other_port, 10), None);
        assert_eq!(node_of_ip(other_port.ip(), 10), Some(3));
        let p = Addrs::new(true, 1);
        for i in [0u32, 1, 255, 256, 65_534, 999_999, 15_999_999] {
            assert_eq!(p.node_of(&p.addr_of(i), 16_000_000), Some(i), "{i}");
        }
        assert_eq!(p.node_of(&addr_of(3), 10), None);
        assert_eq!(Addrs::PRIVATE.addr_of(3), addr_of(3));
    }
}
