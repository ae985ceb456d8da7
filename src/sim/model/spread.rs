//! Public addresses spread over the whole IPv4 space: a keyed bijection from node slots to
//! routable public addresses, computed (and inverted) by arithmetic, so a million nodes
//! need no address table and the core's per-/24 and per-/8 behaviour sees a realistic mix
//! of prefixes instead of one /8.
//!
//! A 4-round Feistel network on the two 16-bit halves of a `u32` is a bijection of the
//! whole space; restricted to the acceptable addresses by cycle-walking (apply it until the
//! value is acceptable) it is a bijection of those. Slot `i` starts the walk at `32.0.0.0 +
//! i` (an acceptable address, so distinct slots get distinct addresses); the inverse walks
//! back. About 86% of the space is acceptable: a walk takes 1.2 steps on average.

use super::mix64;

/// Where the walk of slot `i` starts: `32/8` is public unicast, and holds every slot the
/// scenario allows (16,000,000 < 2^24).
const START: u32 = 0x2000_0000;
const ROUNDS: u64 = 4;

/// Whether `v` is a public, routable unicast address: what the core counts as public
/// ([`crate::dht::martian::is_public`]: not this network, private, loopback, carrier-grade
/// NAT, link-local, documentation, multicast, reserved, broadcast), and not either of the
/// ranges no host is given: IETF protocol assignments (192.0.0/24), 6to4 relays
/// (192.88.99/24), benchmarking (198.18/15).
pub fn acceptable(v: u32) -> bool {
    let [a, b, c, _] = v.to_be_bytes();
    let unassigned = matches!((a, b, c), (192, 0, 0) | (192, 88, 99) | (198, 18..=19, _));
    !unassigned && crate::dht::martian::is_public(&std::net::Ipv4Addr::from(v))
}

/// A keyed bijection of `u32` values with its inverse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spread {
    key: u64,
}

impl Spread {
    /// The bijection of key `key` (the scenario's seed: each seed spreads nodes its way).
    pub fn new(key: u64) -> Spread {
        Spread {
            key: mix64(key ^ 0x7370_7265_6164_0000),
        }
    }

    fn round(&self, r: u64, x: u32) -> u32 {
        (mix64(self.key ^ (r << 32) ^ u64::from(x)) & 0xffff) as u32
    }

    fn permute(&self, v: u32) -> u32 {
        let (mut l, mut r) = (v >> 16, v & 0xffff);
        for k in 0..ROUNDS {
            let t = l ^ self.round(k, r);
            l = r;
            r = t;
        }
        (l << 16) | r
    }

    fn unpermute(&self, v: u32) -> u32 {
        let (mut l, mut r) = (v >> 16, v & 0xffff);
        for k in (0..ROUNDS).rev() {
            let t = r ^ self.round(k, l);
            r = l;
            l = t;
        }
        (l << 16) | r
    }

    /// The address (as a `u32`) of slot `i` (`i < 2^24`).
    pub fn addr_of(&self, i: u32) -> u32 {
        let mut v = START | (i & 0x00ff_ffff);
        loop {
            v = self.permute(v);
            if acceptable(v) {
                return v;
            }
        }
    }

    /// The slot at address `v`, if `v` is one slot's address (any slot below 2^24).
    pub fn slot_of(&self, v: u32) -> Option<u32> {
        if !acceptable(v) {
            return None;
        }
        let mut x = v;
        loop {
            x = self.unpermute(x);
            if acceptable(x) {
                break;
            }
        }
        (x & 0xff00_0000 == START).then_some(x & 0x00ff_ffff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_permutation_inverts() {
        let s = Spread::new(9);
        for v in [0u32, 1, 0xffff_ffff, 0x2000_0000, 0x1234_5678] {
            assert_eq!(s.unpermute(s.permute(v)), v);
        }
        assert!(acceptable(START));
        assert!(!acceptable(u32::from(std::net::Ipv4Addr::new(
            100, 100, 1, 1
        ))));
        assert!(acceptable(u32::from(std::net::Ipv4Addr::new(
            100, 128, 1, 1
        ))));
        assert!(!acceptable(u32::from(std::net::Ipv4Addr::new(
            172, 20, 1, 1
        ))));
    }
}
