//! The BEP 6 *allowed fast set*: the pieces a choked peer may still request from us.
//!
//! The set is derived from the peer's address and the info-hash by a canonical algorithm, so
//! that every client offering `k` pieces to a given peer offers the *same* `k` (and offering
//! `k + 1` adds one more), and a peer cannot collect extra sets by reconnecting from another
//! address in the same network:
//!
//! ```text
//! x = (0xFFFFFF00 & ip) ++ infohash
//! while |a| < k:
//!     x = SHA1(x)
//!     for each of the five big-endian u32 words y of x, while |a| < k:
//!         index = y % num_pieces
//!         if index not in a: add index to a
//! ```
//!
//! BEP 6 has "no provisions for IPv6". For an IPv6 peer we do what libtorrent does: hash the
//! full 16 address bytes, unmasked, followed by the info-hash. (libtorrent does not mask IPv4
//! either; for IPv4 we follow the BEP, whose published vectors use the /24 mask.) An
//! IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack socket reports for an IPv4
//! peer) is treated as the IPv4 address it carries, so the set does not depend on which
//! socket the peer reached.

use std::collections::HashSet;
use std::net::IpAddr;

use sha1::{Digest, Sha1};

use crate::id::Id;

/// Upper bound on SHA-1 rounds per requested piece before giving up on the hash chain.
///
/// Collecting all `n` pieces takes about `n·ln(n) / 5` rounds (coupon collector), so `64·k`
/// is never reached in practice; it exists only so that termination does not depend on the
/// hash chain never cycling.
const ROUNDS_PER_PIECE: usize = 64;

/// The first `k` pieces of the canonical BEP 6 allowed fast set for a peer at `ip`, in the
/// order the algorithm produces them (so a prefix of a larger set is the smaller set).
///
/// `k` is capped at `num_pieces` (the set then holds every piece), and a torrent without
/// pieces has an empty set. All indices are `< num_pieces` and distinct. Use the address on
/// the other end of the connection, as the BEP allows.
pub fn allowed_fast_set(ip: IpAddr, info_hash: &Id, num_pieces: u32, k: usize) -> Vec<u32> {
    let k = k.min(usize::try_from(num_pieces).unwrap_or(usize::MAX));
    if k == 0 {
        return Vec::new();
    }
    let mut x = Vec::with_capacity(16 + info_hash.0.len());
    match canonical_ip(ip) {
        IpAddr::V4(v4) => x.extend_from_slice(&(u32::from(v4) & 0xFFFF_FF00).to_be_bytes()),
        IpAddr::V6(v6) => x.extend_from_slice(&v6.octets()),
    }
    x.extend_from_slice(&info_hash.0);

    // Preallocate for the usual small sets only; a huge `k` grows as indices are found.
    let mut set = Vec::with_capacity(k.min(1024));
    let mut seen = HashSet::with_capacity(k.min(1024));
    let mut hash: [u8; 20] = Sha1::digest(&x).into();
    let max_rounds = k.saturating_mul(ROUNDS_PER_PIECE).saturating_add(1024);
    for _ in 0..max_rounds {
        let (words, _) = hash.as_chunks::<4>();
        for word in words {
            if set.len() >= k {
                return set;
            }
            let index = u32::from_be_bytes(*word) % num_pieces;
            if seen.insert(index) {
                set.push(index);
            }
        }
        if set.len() >= k {
            return set;
        }
        hash = Sha1::digest(hash).into();
    }
    // Only reachable if the SHA-1 chain cycled: complete the set in ascending order so the
    // caller still gets `k` distinct pieces.
    for index in 0..num_pieces {
        if set.len() >= k {
            break;
        }
        if seen.insert(index) {
            set.push(index);
        }
    }
    set
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries; any other address unchanged.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const AA: Id = Id([0xAA; 20]);

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn bep6_published_vectors() {
        let ip = v4(80, 4, 4, 200);
        assert_eq!(
            allowed_fast_set(ip, &AA, 1313, 7),
            [1059, 431, 808, 1217, 287, 376, 1188]
        );
        assert_eq!(
            allowed_fast_set(ip, &AA, 1313, 9),
            [1059, 431, 808, 1217, 287, 376, 1188, 353, 508]
        );
    }

    #[test]
    fn only_the_first_three_octets_matter_for_ipv4() {
        let a = allowed_fast_set(v4(80, 4, 4, 200), &AA, 1313, 10);
        assert_eq!(a, allowed_fast_set(v4(80, 4, 4, 1), &AA, 1313, 10));
        assert_ne!(a, allowed_fast_set(v4(80, 4, 5, 200), &AA, 1313, 10));
        assert_ne!(
            a,
            allowed_fast_set(v4(80, 4, 4, 200), &Id([0xBB; 20]), 1313, 10)
        );
        // The same peer seen through a dual-stack socket gets the same set.
        let mapped = IpAddr::V6(Ipv4Addr::new(80, 4, 4, 200).to_ipv6_mapped());
        assert_eq!(a, allowed_fast_set(mapped, &AA, 1313, 10));
    }

    #[test]
    fn ipv6_uses_the_whole_address() {
        let ip = |last: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last));
        let a = allowed_fast_set(ip(1), &AA, 1313, 10);
        assert_eq!(a.len(), 10);
        assert_eq!(a, allowed_fast_set(ip(1), &AA, 1313, 10), "deterministic");
        assert_ne!(a, allowed_fast_set(ip(2), &AA, 1313, 10));
        // Same construction as IPv4 with 16 address bytes: check the first index by hand.
        let mut x = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)
            .octets()
            .to_vec();
        x.extend_from_slice(&AA.0);
        let h = Sha1::digest(&x);
        assert_eq!(a[0], u32::from_be_bytes([h[0], h[1], h[2], h[3]]) % 1313);
    }

    #[test]
    fn larger_sets_extend_smaller_ones() {
        let big = allowed_fast_set(v4(10, 1, 2, 3), &AA, 500, 40);
        for k in 0..40 {
            assert_eq!(allowed_fast_set(v4(10, 1, 2, 3), &AA, 500, k), big[..k]);
        }
    }

    #[test]
    fn k_is_capped_and_zero_pieces_is_empty() {
        assert!(allowed_fast_set(v4(1, 2, 3, 4), &AA, 0, 10).is_empty());
        assert!(allowed_fast_set(v4(1, 2, 3, 4), &AA, 0, usize::MAX).is_empty());
        assert!(allowed_fast_set(v4(1, 2, 3, 4), &AA, 100, 0).is_empty());
        for pieces in [1u32, 2, 3, 7, 64, 300] {
            for k in [pieces as usize, pieces as usize + 1, usize::MAX] {
                let mut set = allowed_fast_set(v4(1, 2, 3, 4), &AA, pieces, k);
                assert_eq!(set.len(), pieces as usize, "{pieces} pieces, k {k}");
                set.sort_unstable();
                assert_eq!(set, (0..pieces).collect::<Vec<_>>(), "every piece once");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn distinct_and_in_range(
            ip in proptest::prelude::any::<[u8; 4]>(),
            pieces in 1u32..5000,
            k in 0usize..64,
        ) {
            let set = allowed_fast_set(IpAddr::V4(Ipv4Addr::from(ip)), &AA, pieces, k);
            proptest::prop_assert_eq!(set.len(), k.min(pieces as usize));
            proptest::prop_assert!(set.iter().all(|&p| p < pieces));
            let unique: HashSet<_> = set.iter().collect();
            proptest::prop_assert_eq!(unique.len(), set.len());
        }
    }
}
