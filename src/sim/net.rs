//! The network model: where nodes live, how long datagrams take, which ones are lost, and
//! which nodes sit behind a NAT.
//!
//! Node `i` lives at `10.x.y.z:6881` with `x.y.z = i + 1`, so an address maps back to its
//! node by arithmetic and needs no table. 10/8 is private space, which BEP 42 exempts: ids
//! stay the random ones the simulator drew. With `[network] public_ips` nodes live in 32/8
//! instead, one node per /24 up to 65,535 nodes, and BEP 42 applies (ids are drawn valid
//! for their address). Latency is a pure function of the (unordered) pair and the seed: a
//! million nodes need no latency matrix.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::queue::SimTime;
use super::scenario::NetworkSpec;

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

/// Where the nodes live: private 10/8 (BEP 42-exempt, the default) or public 32/8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addrs {
    public: bool,
}

const PUBLIC_BASE: u32 = 0x2000_0000;

impl Addrs {
    /// 10.x.y.z, `x.y.z = i + 1` (what [`addr_of`] gives).
    pub const PRIVATE: Addrs = Addrs { public: false };
    /// 32.a.b.c with `a` the low byte of `i + 1`, `b`, `c` the next two: consecutive nodes
    /// land in different /24s, so the core's per-/24 limits see one node per /24 as long as
    /// there are fewer than 65,536 nodes.
    pub const PUBLIC: Addrs = Addrs { public: true };

    /// The addressing of a scenario.
    pub fn new(public: bool) -> Addrs {
        Addrs { public }
    }

    /// Whether BEP 42 applies to these addresses.
    pub fn is_public(&self) -> bool {
        self.public
    }

    /// The address of node `i`.
    pub fn addr_of(&self, i: u32) -> SocketAddrV4 {
        if !self.public {
            return addr_of(i);
        }
        let j = (i + 1) & 0x00ff_ffff;
        let low = ((j & 0xff) << 16) | ((j >> 8) & 0xff) << 8 | (j >> 16);
        SocketAddrV4::new(Ipv4Addr::from(PUBLIC_BASE | low), PORT)
    }

    /// The node at `ip`, if it is a node's address below `n` nodes.
    pub fn node_of_ip(&self, ip: &Ipv4Addr, n: u32) -> Option<u32> {
        if !self.public {
            return node_of_ip(ip, n);
        }
        let v = u32::from(*ip);
        if v & 0xff00_0000 != PUBLIC_BASE {
            return None;
        }
        let j = ((v >> 16) & 0xff) | (v & 0xff00) | ((v & 0xff) << 16);
        let i = j.checked_sub(1)?;
        (i < n).then_some(i)
    }

    /// The node at `a`, if any.
    pub fn node_of(&self, a: &SocketAddrV4, n: u32) -> Option<u32> {
        if a.port() != PORT {
            return None;
        }
        self.node_of_ip(a.ip(), n)
    }
}

/// SplitMix64: a fast, well-mixed hash of one word, used to derive per-pair values.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform value in (0, 1) from a hash.
fn unit(h: u64) -> f64 {
    ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// Per-pair round-trip times: log-normal with the given median and sigma, symmetric and
/// fixed for the whole run.
#[derive(Clone, Debug)]
pub struct Latency {
    ln_median: f64,
    sigma: f64,
    seed: u64,
}

impl Latency {
    /// The model of `spec`, with pair values derived from `seed`.
    pub fn new(spec: &NetworkSpec, seed: u64) -> Latency {
        Latency {
            ln_median: spec.rtt_median_ms.ln(),
            sigma: spec.rtt_sigma,
            seed: mix64(seed ^ 0x6C61_7465_6E63_7900),
        }
    }

    /// Round-trip time between `a` and `b` in milliseconds.
    pub fn rtt_ms(&self, a: u32, b: u32) -> f64 {
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let h = mix64(self.seed ^ ((u64::from(lo) << 32) | u64::from(hi)));
        let u1 = unit(h);
        let u2 = unit(mix64(h));
        // Box–Muller: one standard normal from two uniforms.
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        (self.ln_median + self.sigma * z).exp().min(10_000.0)
    }

    /// One-way delay from `a` to `b` in microseconds (half the pair's RTT, at least 1 µs).
    pub fn one_way_us(&self, a: u32, b: u32) -> SimTime {
        ((self.rtt_ms(a, b) * 500.0) as SimTime).max(1)
    }
}

/// NAT state of one node: the peers it sent to recently, and until when each mapping lasts.
#[derive(Clone, Debug, Default)]
pub struct Nat {
    /// (peer, expiry in whole seconds of virtual time).
    holes: Vec<(u32, u32)>,
}

impl Nat {
    /// Records an outgoing datagram to `peer` at `now_s`: the mapping lasts `timeout_s`.
    pub fn opened(&mut self, peer: u32, now_s: u32, timeout_s: u32) {
        let exp = now_s.saturating_add(timeout_s);
        if let Some(h) = self.holes.iter_mut().find(|h| h.0 == peer) {
            h.1 = exp;
            return;
        }
        if self.holes.len() >= 32 {
            self.holes.retain(|h| h.1 >= now_s);
        }
        self.holes.push((peer, exp));
    }

    /// Whether a datagram from `peer` gets through at `now_s`.
    pub fn admits(&self, peer: u32, now_s: u32) -> bool {
        self.holes.iter().any(|h| h.0 == peer && h.1 >= now_s)
    }

    /// Forgets every mapping (the node went away).
    pub fn clear(&mut self) {
        self.holes = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let p = Addrs::PUBLIC;
        for i in [0u32, 1, 255, 256, 65_534, 999_999, 15_999_999] {
            assert_eq!(p.node_of(&p.addr_of(i), 16_000_000), Some(i), "{i}");
            assert!(!crate::dht::bep42::is_exempt(p.addr_of(i).ip()));
        }
        assert_ne!(
            u32::from(*p.addr_of(7).ip()) >> 8,
            u32::from(*p.addr_of(8).ip()) >> 8,
            "neighbours in different /24s"
        );
        assert_eq!(p.node_of(&addr_of(3), 10), None);
        assert_eq!(Addrs::PRIVATE.addr_of(3), addr_of(3));
    }

    #[test]
    fn latency_is_symmetric_deterministic_and_lognormal() {
        let spec = NetworkSpec::default();
        let l = Latency::new(&spec, 7);
        assert_eq!(l.rtt_ms(3, 9), l.rtt_ms(9, 3));
        assert_eq!(l.rtt_ms(3, 9), Latency::new(&spec, 7).rtt_ms(3, 9));
        assert_ne!(l.rtt_ms(3, 9), Latency::new(&spec, 8).rtt_ms(3, 9));
        let mut v: Vec<f64> = (0..20_000u32).map(|i| l.rtt_ms(i, i + 1_000_000)).collect();
        v.sort_by(f64::total_cmp);
        let median = v[v.len() / 2];
        let p99 = v[v.len() * 99 / 100];
        assert!((median - 100.0).abs() < 3.0, "median {median}");
        // exp(0.6 × 2.326) ≈ 4.04.
        let want = 100.0 * (0.6f64 * 2.326).exp();
        assert!((p99 - want).abs() / want < 0.08, "p99 {p99} want {want}");
        assert_eq!(l.one_way_us(3, 9), (l.rtt_ms(3, 9) * 500.0) as u64);
    }

    #[test]
    fn nat_admits_only_recent_peers() {
        let mut n = Nat::default();
        assert!(!n.admits(5, 0));
        n.opened(5, 10, 60);
        assert!(n.admits(5, 70));
        assert!(!n.admits(5, 71));
        assert!(!n.admits(6, 10));
        for p in 100..200 {
            n.opened(p, 100, 60);
        }
        assert!(n.admits(150, 100));
        assert!(n.holes.len() <= 100);
    }
}
