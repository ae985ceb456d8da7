//! Who to blame for pieces that fail their hash check, the way libtorrent does it.
//!
//! A failed piece usually has several contributors, and only one of them may have lied.
//! Banning everyone who touched it would ban honest seeders that happened to share a piece
//! with a liar; banning no one lets the liar waste our bandwidth forever. So every IP has
//! trust points: each failed piece it contributed to costs [`FAIL_COST`], each passed piece
//! it contributed to earns [`PASS_GAIN`] (up to [`MAX_TRUST`], so an old good record cannot
//! pay for a long run of bad data), and it is banned at [`BAN_AT`] or below. An honest peer
//! delivers passed pieces between the failures it shares and stays well above the line; a
//! peer that only sends bad data is banned after four failed pieces.
//!
//! Per IP rather than per connection, so reconnecting from a new port does not wash the
//! record clean. Bounded: the least recently touched IPs are forgotten first.

use std::net::IpAddr;
use std::num::NonZeroUsize;

use lru::LruCache;

/// Points lost per failed piece the IP contributed to.
pub const FAIL_COST: i32 = 2;
/// Points earned per passed piece the IP contributed to.
pub const PASS_GAIN: i32 = 1;
/// Highest trust an IP can accumulate.
pub const MAX_TRUST: i32 = 8;
/// An IP at or below this trust is banned.
pub const BAN_AT: i32 = -7;

/// What to do with an IP after a failed piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep the peer: the evidence is not strong enough yet.
    Keep,
    /// Ban every connection and port of this IP.
    Ban,
}

/// Trust points per IP for one torrent (or one session), bounded by an LRU.
#[derive(Debug)]
pub struct Trust {
    points: LruCache<IpAddr, i32>,
}

impl Trust {
    /// A table remembering at most `capacity` IPs (at least one).
    pub fn new(capacity: usize) -> Trust {
        let cap = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Trust {
            points: LruCache::new(cap),
        }
    }

    /// Records that `ip` contributed blocks to a piece that failed its hash check, and says
    /// whether it should now be banned. Call it once per failed piece per distinct IP.
    pub fn on_failed(&mut self, ip: IpAddr) -> Verdict {
        let t = self.points.get_or_insert_mut(ip.to_canonical(), || 0);
        *t = t.saturating_sub(FAIL_COST);
        if *t <= BAN_AT {
            Verdict::Ban
        } else {
            Verdict::Keep
        }
    }

    /// Records that `ip` contributed blocks to a piece that passed. Call it once per passed
    /// piece per distinct IP.
    pub fn on_passed(&mut self, ip: IpAddr) {
        let t = self.points.get_or_insert_mut(ip.to_canonical(), || 0);
        *t = t.saturating_add(PASS_GAIN).min(MAX_TRUST);
    }

    /// Current points of `ip` (0 when unknown), for logs and reports.
    pub fn trust(&self, ip: &IpAddr) -> i32 {
        self.points.peek(&ip.to_canonical()).copied().unwrap_or(0)
    }

    /// IPs currently remembered.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether no IP is remembered.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
    }

    /// Failed pieces until `ip` is banned when it fails every piece, alone.
    fn failures_to_ban(t: &mut Trust, ip: IpAddr) -> u32 {
        for n in 1..=100 {
            if t.on_failed(ip) == Verdict::Ban {
                return n;
            }
        }
        panic!("never banned");
    }

    #[test]
    fn only_bad_data_is_banned_after_four_failures() {
        let mut t = Trust::new(16);
        for _ in 0..3 {
            assert_eq!(t.on_failed(ip(1)), Verdict::Keep);
        }
        assert_eq!(t.on_failed(ip(1)), Verdict::Ban);
        assert_eq!(t.trust(&ip(1)), -8);
    }

    #[test]
    fn honest_seeder_sharing_failures_with_a_liar_is_kept() {
        let mut t = Trust::new(16);
        let (honest, liar) = (ip(1), ip(2));
        let mut liar_banned_at = None;
        // Three failed pieces both contributed to; between them the honest peer delivers
        // pieces that pass (alone, as the liar's pieces all fail).
        for round in 1..=3 {
            for _ in 0..3 {
                t.on_passed(honest);
            }
            assert_eq!(t.on_failed(honest), Verdict::Keep, "round {round}");
            if t.on_failed(liar) == Verdict::Ban {
                liar_banned_at.get_or_insert(round);
            }
            // The liar also fails a piece it sent alone.
            if t.on_failed(liar) == Verdict::Ban {
                liar_banned_at.get_or_insert(round);
            }
        }
        assert!(t.trust(&honest) > 0, "{}", t.trust(&honest));
        assert_eq!(liar_banned_at, Some(2));
    }

    #[test]
    fn even_without_passes_three_shared_failures_do_not_ban() {
        let mut t = Trust::new(16);
        for _ in 0..3 {
            assert_eq!(t.on_failed(ip(1)), Verdict::Keep);
        }
    }

    #[test]
    fn trust_is_capped_so_old_credit_cannot_hide_a_liar() {
        let mut t = Trust::new(16);
        for _ in 0..1000 {
            t.on_passed(ip(1));
        }
        assert_eq!(t.trust(&ip(1)), MAX_TRUST);
        // 8 - 2k <= -7  <=>  k >= 7.5: banned at the eighth failure, not later.
        assert_eq!(failures_to_ban(&mut t, ip(1)), 8);
    }

    #[test]
    fn per_ip_not_per_port_and_v4_mapped_is_the_same_ip() {
        let mut t = Trust::new(16);
        let v4 = ip(9);
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 9).to_ipv6_mapped());
        t.on_failed(v4);
        t.on_failed(mapped);
        t.on_failed(v4);
        assert_eq!(t.on_failed(mapped), Verdict::Ban);
        assert_eq!(t.len(), 1);
        let other = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(t.trust(&other), 0);
    }

    #[test]
    fn bounded_forgets_least_recent() {
        let mut t = Trust::new(2);
        t.on_failed(ip(1));
        t.on_failed(ip(2));
        t.on_failed(ip(3));
        assert_eq!(t.len(), 2);
        assert_eq!(t.trust(&ip(1)), 0);
        assert_eq!(t.trust(&ip(3)), -2);
        assert!(Trust::new(0).is_empty());
    }
}
