//! BEP 42 (DHT security extension): node ids tied to the node's external IP, so an attacker
//! cannot pick ids next to a target info-hash at will.
//!
//! We derive our own id from our external IP (learnt from the `ip` field of responses, by
//! majority vote), check other nodes' ids, and prefer verified nodes where trust matters.
//! Local and private addresses are exempt: every id is valid for them.

use smallvec::SmallVec;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;
use thin_vec::ThinVec;

use rand::Rng;

use crate::id::Id;
use crate::krpc::DhtAddr;

use super::time::Time;

/// How BEP 42 node-id verification shapes the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Bep42Mode {
    /// Ignore it.
    Off,
    /// Verified nodes displace unverified ones in full buckets and are preferred as announce
    /// targets; unverified nodes are still used.
    #[default]
    Prefer,
    /// Unverified nodes never enter the table.
    Enforce,
}

/// Whether BEP 42 does not apply to `ip` (loopback, private, link-local, unspecified).
pub fn is_exempt(ip: &Ipv4Addr) -> bool {
    ip.is_loopback() || ip.is_private() || ip.is_link_local() || ip.is_unspecified()
}

fn prefix_crc(ip: &Ipv4Addr, r: u8) -> u32 {
    let o = ip.octets();
    let mask = [0x03u8, 0x0f, 0x3f, 0xff];
    let mut b = [
        o[0] & mask[0],
        o[1] & mask[1],
        o[2] & mask[2],
        o[3] & mask[3],
    ];
    b[0] |= (r & 7) << 5;
    crc32c::crc32c(&b)
}

/// A random id valid for `ip` (for exempt addresses: a fully random id).
pub fn id_for_ip<R: Rng + ?Sized>(ip: &Ipv4Addr, rng: &mut R) -> Id {
    let mut id = Id::random(rng);
    if is_exempt(ip) {
        return id;
    }
    let rand_byte: u8 = rng.gen();
    let crc = prefix_crc(ip, rand_byte).to_be_bytes();
    id.0[0] = crc[0];
    id.0[1] = crc[1];
    id.0[2] = (crc[2] & 0xf8) | (id.0[2] & 0x07);
    id.0[19] = rand_byte;
    id
}

/// Whether `id` is a valid BEP 42 id for `ip` (always true for exempt addresses).
pub fn is_valid(id: &Id, ip: &Ipv4Addr) -> bool {
    if is_exempt(ip) {
        return true;
    }
    let crc = prefix_crc(ip, id.0[19]).to_be_bytes();
    id.0[0] == crc[0] && id.0[1] == crc[1] && (id.0[2] & 0xf8) == (crc[2] & 0xf8)
}

/// Whether BEP 42 does not apply to an IPv6 `ip` (loopback, unspecified, unique-local,
/// link-local, IPv4-mapped: none of them is a public IPv6 address).
pub fn is_exempt6(ip: &Ipv6Addr) -> bool {
    let seg = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || (seg & 0xfe00) == 0xfc00
        || (seg & 0xffc0) == 0xfe80
        || ip.to_ipv4_mapped().is_some()
}

/// Whether BEP 42 does not apply to `ip`, of either family.
pub fn is_exempt_ip(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => is_exempt(a),
        IpAddr::V6(a) => is_exempt6(a),
    }
}

fn prefix_crc6(ip: &Ipv6Addr, r: u8) -> u32 {
    let o = ip.octets();
    let mask = [0x01u8, 0x03, 0x07, 0x0f, 0x1f, 0x3f, 0x7f, 0xff];
    let mut b = [0u8; 8];
    for (i, m) in mask.iter().enumerate() {
        b[i] = o[i] & m;
    }
    b[0] |= (r & 7) << 5;
    crc32c::crc32c(&b)
}

fn crc_for(ip: &IpAddr, r: u8) -> [u8; 4] {
    match ip {
        IpAddr::V4(a) => prefix_crc(a, r),
        IpAddr::V6(a) => prefix_crc6(a, r),
    }
    .to_be_bytes()
}

/// A random id valid for `ip` of either family (for exempt addresses: fully random).
pub fn id_for_ip_addr<R: Rng + ?Sized>(ip: &IpAddr, rng: &mut R) -> Id {
    let mut id = Id::random(rng);
    if is_exempt_ip(ip) {
        return id;
    }
    let rand_byte: u8 = rng.gen();
    let crc = crc_for(ip, rand_byte);
    id.0[0] = crc[0];
    id.0[1] = crc[1];
    id.0[2] = (crc[2] & 0xf8) | (id.0[2] & 0x07);
    id.0[19] = rand_byte;
    id
}

/// Whether `id` is a valid BEP 42 id for `ip` of either family.
pub fn is_valid_ip(id: &Id, ip: &IpAddr) -> bool {
    if is_exempt_ip(ip) {
        return true;
    }
    let crc = crc_for(ip, id.0[19]);
    id.0[0] == crc[0] && id.0[1] == crc[1] && (id.0[2] & 0xf8) == (crc[2] & 0xf8)
}

/// Whether `id` is a valid BEP 42 id for the address `addr` (the generic core's entry).
pub fn is_valid_for<A: DhtAddr>(id: &Id, addr: &A) -> bool {
    is_valid_ip(id, &A::ip_addr(&addr.ip_of()))
}

/// [`is_verified`] for an address of either family (the generic core's entry).
pub fn is_verified_for<A: DhtAddr>(id: &Id, addr: &A) -> bool {
    let ip = A::ip_addr(&addr.ip_of());
    !is_exempt_ip(&ip) && is_valid_ip(id, &ip)
}

/// Whether BEP 42 positively vouches for `id` at `ip`: a public address and an id valid
/// for it. Exempt addresses pass [`is_valid`] with any id, so a preference for verified
/// nodes must not favour them (a LAN node could claim any id).
pub fn is_verified(id: &Id, ip: &Ipv4Addr) -> bool {
    !is_exempt(ip) && is_valid(id, ip)
}

/// Majority vote over the external address other nodes report (`ip` in responses).
/// Bounded: at most [`MAX_VOTERS`] votes are kept, one per voter (a voter's newer vote replaces
/// its older one), and votes older than [`VOTE_TTL`] no longer count — so when our address
/// changes, the new one wins as soon as a quorum reports it, however long the old one held.
/// Generic over the address family (`I` is `Ipv4Addr` or `Ipv6Addr`). One list, tallied
/// afresh per new vote (at most 32): counts kept beside three split lists were tried and
/// cut ~1% of a simulation's time for 64 more bytes in every node; this is 40 in all. A vote
/// is 12 bytes for IPv4 (its time in whole seconds): every answer carries one, so every
/// node of a simulated million holds a full list.
#[derive(Clone, Debug)]
pub struct ExternalIpVote<I = Ipv4Addr> {
    /// (voter, the address it reported, when in whole seconds of [`Time`]), oldest first. A
    /// `ThinVec` (one pointer, its length in the allocation) where a `VecDeque` cost 24
    /// bytes more in each of a million simulated nodes; at [`MAX_VOTERS`] entries, dropping
    /// the oldest is a 384-byte move.
    votes: ThinVec<(I, I, u32)>,
    winner: Option<I>,
}

impl<I> Default for ExternalIpVote<I> {
    fn default() -> Self {
        ExternalIpVote {
            votes: ThinVec::new(),
            winner: None,
        }
    }
}

/// Votes needed before an address is believed.
const QUORUM: u32 = 5;
/// Distinct voters remembered (the oldest vote is dropped beyond this): six quorums, the
/// answers of a few lookups. libtorrent's voter keeps a few dozen addresses too.
pub const MAX_VOTERS: usize = 32;
/// How long a vote counts.
pub const VOTE_TTL: Duration = Duration::from_secs(15 * 60);

impl<I: Copy + Eq> ExternalIpVote<I> {
    /// Records that `voter` says at `now` that our address is `ours`. Returns the new winner
    /// when the majority changes.
    pub fn vote(&mut self, voter: I, ours: I, now: Time) -> Option<I> {
        let now = u32::try_from(now.0 / 1000).unwrap_or(u32::MAX);
        let ttl = u32::try_from(VOTE_TTL.as_secs()).unwrap_or(u32::MAX);
        while self
            .votes
            .first()
            .is_some_and(|(_, _, at)| now.saturating_sub(*at) >= ttl)
        {
            self.votes.remove(0);
        }
        if let Some(pos) = self.votes.iter().position(|(v, _, _)| *v == voter) {
            if self.votes.get(pos).is_some_and(|(_, o, _)| *o == ours) {
                // Same voter, same view: counts once, but stays fresh.
                let v = self.votes.remove(pos);
                self.votes.push((v.0, v.1, now));
                return None;
            }
            self.votes.remove(pos);
        }
        if self.votes.len() >= MAX_VOTERS {
            self.votes.remove(0);
        }
        self.votes.push((voter, ours, now));
        // Tally: at most MAX_VOTERS votes, so a small linear count is enough, on the stack
        // (every answer carries a vote; a buffer kept in the node cost 24 bytes a node).
        let mut tally: SmallVec<[(I, u32); MAX_VOTERS]> = SmallVec::new();
        for (_, ip, _) in &self.votes {
            match tally.iter_mut().find(|(t, _)| t == ip) {
                Some((_, n)) => *n += 1,
                None => tally.push((*ip, 1)),
            }
        }
        let best = tally
            .iter()
            .filter(|(_, n)| *n >= QUORUM)
            .max_by_key(|(ip, n)| (*n, Some(*ip) == self.winner))
            .map(|(ip, _)| *ip);
        if best.is_some() && best != self.winner {
            self.winner = best;
            return best;
        }
        None
    }

    /// The address most nodes agree on, once a quorum has voted.
    pub fn winner(&self) -> Option<I> {
        self.winner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bep42_test_vectors() {
        let vectors = [
            ("124.31.75.21", "5fbfbff10c5d6a4ec8a88e4c6ab4c28b95eee401"),
            ("21.75.31.124", "5a3ce9c14e7a08645677bbd1cfe7d8f956d53256"),
            ("65.23.51.170", "a5d43220bc8f112a3d426c84764f8c2a1150e616"),
            ("84.124.73.14", "1b0321dd1bb1fe518101ceef99462b947a01ff41"),
            ("43.213.53.83", "e56f6cbf5b7c4be0237986d5243b87aa6d51305a"),
        ];
        for (ip, id) in vectors {
            let ip: Ipv4Addr = ip.parse().unwrap();
            let id = Id::from_hex(id).unwrap();
            assert!(is_valid(&id, &ip), "{ip}");
            let mut wrong = id;
            wrong.0[0] ^= 0x80;
            assert!(!is_valid(&wrong, &ip), "{ip} flipped");
        }
    }

    #[test]
    fn derived_ids_are_valid_and_local_ips_are_exempt() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let ip = Ipv4Addr::new(84, 124, 73, 14);
        for _ in 0..100 {
            assert!(is_valid(&id_for_ip(&ip, &mut rng), &ip));
        }
        assert!(is_valid(&Id([0; 20]), &Ipv4Addr::new(127, 0, 0, 1)));
        assert!(is_valid(&Id([0; 20]), &Ipv4Addr::new(10, 1, 2, 3)));
        assert!(!is_valid(&Id([0; 20]), &ip));
    }

    #[test]
    fn vote_needs_a_quorum_of_distinct_voters() {
        let mut v = ExternalIpVote::default();
        let ours = Ipv4Addr::new(84, 124, 73, 14);
        // One voter repeating itself does not count.
        for _ in 0..10 {
            v.vote(Ipv4Addr::new(1, 1, 1, 1), ours, Time(0));
        }
        assert_eq!(v.winner(), None);
        for i in 2..=4 {
            assert_eq!(v.vote(Ipv4Addr::new(1, 1, 1, i), ours, Time(0)), None);
        }
        // A liar does not change the outcome.
        v.vote(
            Ipv4Addr::new(9, 9, 9, 9),
            Ipv4Addr::new(6, 6, 6, 6),
            Time(0),
        );
        assert_eq!(v.vote(Ipv4Addr::new(1, 1, 1, 5), ours, Time(0)), Some(ours));
        assert_eq!(v.winner(), Some(ours));
    }

    #[test]
    fn old_votes_age_out_so_a_new_address_wins() {
        let mut v = ExternalIpVote::default();
        let old = Ipv4Addr::new(84, 124, 73, 14);
        let new = Ipv4Addr::new(65, 23, 51, 170);
        // Ten nodes saw us at the old address.
        for i in 1..=10 {
            v.vote(Ipv4Addr::new(1, 1, 1, i), old, Time(0));
        }
        assert_eq!(v.winner(), Some(old));
        // After the move, a quorum of five (fewer than the ten old votes) sees the new one.
        let later = Time(0) + VOTE_TTL + Duration::from_secs(1);
        let mut changed = None;
        for i in 1..=5 {
            changed = changed.or(v.vote(Ipv4Addr::new(2, 2, 2, i), new, later));
        }
        assert_eq!(changed, Some(new));
        assert_eq!(v.winner(), Some(new));
    }

    #[test]
    fn a_voter_counts_once_and_may_change_its_mind() {
        let mut v = ExternalIpVote::default();
        let a = Ipv4Addr::new(84, 124, 73, 14);
        let b = Ipv4Addr::new(65, 23, 51, 170);
        for i in 1..=4 {
            v.vote(Ipv4Addr::new(1, 1, 1, i), a, Time(0));
        }
        // The same four voters switching to `b` do not make a quorum for either.
        for i in 1..=4 {
            assert_eq!(v.vote(Ipv4Addr::new(1, 1, 1, i), b, Time(1)), None);
        }
        assert_eq!(v.winner(), None);
        // Bounded whatever the number of voters.
        for i in 0..1000u32 {
            v.vote(Ipv4Addr::from(0x0300_0000 + i), a, Time(2));
        }
        assert!(v.votes.len() <= MAX_VOTERS);
        assert_eq!(v.winner(), Some(a));
    }

    #[test]
    fn ipv6_votes_age_out_and_count_once_per_voter() {
        let mut v: ExternalIpVote<Ipv6Addr> = ExternalIpVote::default();
        let voter = |i: u16| Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, i);
        let old: Ipv6Addr = "2a00:1450::1".parse().unwrap();
        let new: Ipv6Addr = "2a00:1450::2".parse().unwrap();
        for _ in 0..10 {
            v.vote(voter(1), old, Time(0));
        }
        assert_eq!(v.winner(), None);
        for i in 2..=10 {
            v.vote(voter(i), old, Time(0));
        }
        assert_eq!(v.winner(), Some(old));
        let later = Time(0) + VOTE_TTL + Duration::from_secs(1);
        let mut changed = None;
        for i in 100..105 {
            changed = changed.or(v.vote(voter(i), new, later));
        }
        assert_eq!(changed, Some(new));
        for i in 0..1000u16 {
            v.vote(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, i), new, later);
        }
        assert!(v.votes.len() <= MAX_VOTERS);
    }
}
