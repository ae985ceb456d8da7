//! What other nodes announced to us, and the write tokens that gate announcing.
//!
//! The store is bounded five ways (peers per info-hash, peers per info-hash from one IP,
//! entries from one IP across the whole store, info-hashes, peers in total). At capacity it
//! refuses new info-hashes rather than evicting live torrents: whoever floods us cannot push
//! out the torrents that are in use, and room is made only from announces that expired. One
//! IP cannot take the store's slots for itself: it holds at most [`StoreLimits::per_ip`]
//! entries in all. Inside one torrent's list the reverse holds: a full list takes a newcomer
//! in place of an entry of the IP holding the most entries there (else the oldest entry), so
//! a few IPs announcing from many ports cannot lock a torrent until their announces expire,
//! and one IP announcing from many ports only ever replaces its own entries. Nothing is
//! allocated until the first announce arrives (a million simulated nodes mostly store
//! nothing).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddrV4};
use std::time::Duration;

use lru::LruCache;
use rand::seq::SliceRandom;
use rand::Rng;
use sha1::{Digest, Sha1};

use crate::id::Id;
use crate::krpc::DhtAddr;

use super::time::Time;

/// Limits of the peer store (comparable, like the [`crate::dht::Config`] holding them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreLimits {
    /// Peers kept per info-hash (libtorrent: 500).
    pub per_infohash: usize,
    /// Peers kept per info-hash from one IP (several clients behind one NAT), so one source
    /// cannot fill a torrent's list by announcing from many ports.
    pub per_ip_per_infohash: usize,
    /// Entries kept from one IP across the whole store, so one source cannot fill the
    /// store's info-hash or peer slots by announcing many info-hashes. Honest sources stay
    /// far below it: a client announces each torrent only to the ~8 nodes closest to its
    /// info-hash, so of all the torrents behind one IP (even a seedbox's thousands, or a
    /// carrier NAT's users) only a tiny fraction is ever stored by any one node. Default: 1%
    /// of the smaller of `infohashes` and `total_peers` (200), so it takes at least 100 IPs
    /// to fill the store.
    pub per_ip: usize,
    /// Info-hashes kept.
    pub infohashes: usize,
    /// Peers kept in total.
    pub total_peers: usize,
    /// How long an announce lasts unless renewed (BEP 5 practice: 30 minutes).
    pub ttl: Duration,
}

impl Default for StoreLimits {
    fn default() -> Self {
        let infohashes = 20_000;
        let total_peers = 200_000;
        StoreLimits {
            per_infohash: 500,
            per_ip_per_infohash: 4,
            per_ip: infohashes.min(total_peers) / 100,
            infohashes,
            total_peers,
            ttl: Duration::from_secs(30 * 60),
        }
    }
}

/// What an accepted announce did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// A new entry (possibly replacing an older one of the same IP at its cap, or, in a full
    /// list, one of the IP holding the most entries there, else the oldest).
    Added,
    /// The peer was already stored; its lifetime starts over.
    Renewed,
}

/// Why an announce was refused: the store keeps what it has rather than evicting live
/// torrents, so the announcer should store itself elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreFull {
    /// The announcing IP already holds its maximum of entries across the store.
    #[error("this IP holds all the entries it may")]
    PerIp,
    /// The store holds its maximum of info-hashes.
    #[error("no room for another info-hash")]
    Infohashes,
    /// The store holds its maximum of peers.
    #[error("no room for another peer")]
    TotalPeers,
}

#[derive(Clone, Copy, Debug)]
struct StoredPeer<A> {
    addr: A,
    expires: Time,
}

/// Announced peers per info-hash.
pub struct PeerStore<A: DhtAddr = SocketAddrV4> {
    /// Boxed: a node nobody announced to pays one pointer for it (the counts too: a
    /// million simulated nodes, nearly all never announced to, paid 56 bytes each for an
    /// empty map and a zero).
    held: Option<Box<Held<A>>>,
}

/// What a store holds once something was announced to it.
struct Held<A: DhtAddr> {
    map: LruCache<Id, Vec<StoredPeer<A>>>,
    /// Entries held per source IP, kept in step with every insert, replacement and removal;
    /// an IP leaves it when its last entry goes, so it never has more keys than entries.
    per_ip: HashMap<A::Ip, usize>,
    total: usize,
}

/// Counts one more entry for `ip`.
fn count_in<I: Eq + Hash>(per_ip: &mut HashMap<I, usize>, ip: I) {
    *per_ip.entry(ip).or_insert(0) += 1;
}

/// Counts one entry less for `ip`, forgetting the IP at zero.
fn count_out<I: Eq + Hash>(per_ip: &mut HashMap<I, usize>, ip: I) {
    if let Some(n) = per_ip.get_mut(&ip) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            per_ip.remove(&ip);
        }
    }
}

/// Drops the entries of `list` that expired by `now`, keeping the counts in step.
fn drop_expired<A: DhtAddr>(
    list: &mut Vec<StoredPeer<A>>,
    total: &mut usize,
    per_ip: &mut HashMap<A::Ip, usize>,
    now: Time,
) {
    list.retain(|p| {
        let live = p.expires > now;
        if !live {
            *total = total.saturating_sub(1);
            count_out(per_ip, p.addr.ip_of());
        }
        live
    });
}

/// Which entry of a full list a newcomer replaces: the oldest entry of the IP holding the
/// most entries there if it holds more than one (the many-ports squatter pays first), else
/// the oldest entry of the list (the one closest to expiring; honest peers renew theirs).
fn victim<A: DhtAddr>(list: &[StoredPeer<A>]) -> Option<usize> {
    let mut ips: Vec<A::Ip> = list.iter().map(|p| p.addr.ip_of()).collect();
    ips.sort_unstable();
    let mut heaviest: Option<(usize, A::Ip)> = None;
    for run in ips.chunk_by(|a, b| a == b) {
        if let Some(&ip) = run.first() {
            if heaviest.is_none_or(|(n, _)| run.len() > n) {
                heaviest = Some((run.len(), ip));
            }
        }
    }
    let oldest_of = |pick: &dyn Fn(&StoredPeer<A>) -> bool| {
        list.iter()
            .enumerate()
            .filter(|(_, p)| pick(p))
            .min_by_key(|(_, p)| p.expires)
            .map(|(i, _)| i)
    };
    match heaviest {
        Some((n, ip)) if n > 1 => oldest_of(&|p| p.addr.ip_of() == ip),
        _ => oldest_of(&|_| true),
    }
}

impl<A: DhtAddr> Default for PeerStore<A> {
    fn default() -> Self {
        PeerStore::new()
    }
}

impl<A: DhtAddr> PeerStore<A> {
    /// An empty store; allocates nothing until used.
    pub fn new() -> PeerStore<A> {
        PeerStore { held: None }
    }

    /// Records `peer` for `info_hash` at `now` under `limits`, or says why there is no room
    /// for it. The limits are the caller's (the node's shared config), not a copy here: a
    /// million simulated stores paid 56 bytes each for identical copies.
    pub fn announce(
        &mut self,
        limits: &StoreLimits,
        info_hash: Id,
        peer: A,
        now: Time,
    ) -> Result<Stored, StoreFull> {
        let expires = now + limits.ttl;
        let new = StoredPeer {
            addr: peer,
            expires,
        };
        let ip = peer.ip_of();
        let per_ip_here = limits.per_ip_per_infohash.max(1);
        let per_ip_cap = limits.per_ip.max(1);
        let per_infohash = limits.per_infohash.max(1);
        let held = self.held.get_or_insert_with(|| {
            Box::new(Held {
                map: LruCache::unbounded(),
                per_ip: HashMap::new(),
                total: 0,
            })
        });
        let Held { map, per_ip, total } = &mut **held;
        // `get_mut` also marks the info-hash as recently announced.
        let exists = match map.get_mut(&info_hash) {
            Some(list) => {
                if let Some(p) = list.iter_mut().find(|p| p.addr == peer) {
                    p.expires = expires;
                    return Ok(Stored::Renewed);
                }
                drop_expired(list, total, per_ip, now);
                let same_ip = list.iter().filter(|p| p.addr.ip_of() == ip).count();
                if same_ip >= per_ip_here {
                    // This IP is at its cap here: its newest port replaces its oldest entry,
                    // never anyone else's (its count across the store stays the same).
                    if let Some(own) = list
                        .iter_mut()
                        .filter(|p| p.addr.ip_of() == ip)
                        .min_by_key(|p| p.expires)
                    {
                        *own = new;
                    }
                    return Ok(Stored::Added);
                }
                if per_ip.get(&ip).copied().unwrap_or(0) >= per_ip_cap {
                    return Err(StoreFull::PerIp);
                }
                if list.len() >= per_infohash {
                    // Full: take the newcomer in place of the heaviest IP's oldest entry (or
                    // the oldest entry), so a full list cannot lock honest announcers out.
                    if let Some(slot) = victim(list).and_then(|i| list.get_mut(i)) {
                        count_out(per_ip, slot.addr.ip_of());
                        *slot = new;
                        count_in(per_ip, ip);
                        return Ok(Stored::Added);
                    }
                }
                true
            }
            None => false,
        };
        if !exists && per_ip.get(&ip).copied().unwrap_or(0) >= per_ip_cap {
            return Err(StoreFull::PerIp);
        }
        let infohashes_full =
            |m: &LruCache<Id, Vec<StoredPeer<A>>>| !exists && m.len() >= limits.infohashes;
        if *total >= limits.total_peers || infohashes_full(map) {
            evict_expired(map, total, per_ip, now, &info_hash);
        }
        if *total >= limits.total_peers {
            return Err(StoreFull::TotalPeers);
        }
        if infohashes_full(map) {
            return Err(StoreFull::Infohashes);
        }
        map.get_or_insert_mut(info_hash, Vec::new).push(new);
        *total += 1;
        count_in(per_ip, ip);
        Ok(Stored::Added)
    }

    /// Up to `max` live peers for `info_hash`, a random sample when there are more.
    pub fn peers<R: Rng + ?Sized>(
        &mut self,
        info_hash: &Id,
        max: usize,
        now: Time,
        rng: &mut R,
    ) -> Vec<A> {
        let Some(list) = self.held.as_mut().and_then(|h| h.map.peek(info_hash)) else {
            return Vec::new();
        };
        let live: Vec<A> = list
            .iter()
            .filter(|p| p.expires > now)
            .map(|p| p.addr)
            .collect();
        if live.len() <= max {
            return live;
        }
        live.choose_multiple(rng, max).copied().collect()
    }

    /// Drops expired peers and empty info-hashes.
    pub fn expire(&mut self, now: Time) {
        let Some(held) = self.held.as_mut() else {
            return;
        };
        let Held { map, per_ip, total } = &mut **held;
        let mut empty = Vec::new();
        for (k, list) in map.iter_mut() {
            drop_expired(list, total, per_ip, now);
            if list.is_empty() {
                empty.push(*k);
            }
        }
        for k in empty {
            map.pop(&k);
        }
        // Nothing stored any more: give the memory back (a million simulated nodes).
        if map.is_empty() {
            self.held = None;
        }
    }

    /// Number of info-hashes stored.
    pub fn infohash_count(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.map.len())
    }

    /// Number of peers stored.
    pub fn peer_count(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.total)
    }

    /// Entries stored from `ip` across all info-hashes (the count [`StoreLimits::per_ip`]
    /// caps), for tests and status output.
    pub fn entries_from(&self, ip: A::Ip) -> usize {
        self.held
            .as_ref()
            .and_then(|h| h.per_ip.get(&ip).copied())
            .unwrap_or(0)
    }
}

/// Makes room from the least recently announced info-hashes whose peers all expired (an
/// info-hash announced later than a live one cannot be all expired, so the scan stops at the
/// first live one). `keep` is the info-hash being announced.
fn evict_expired<A: DhtAddr>(
    map: &mut LruCache<Id, Vec<StoredPeer<A>>>,
    total: &mut usize,
    per_ip: &mut HashMap<A::Ip, usize>,
    now: Time,
    keep: &Id,
) {
    while let Some((k, list)) = map.peek_lru() {
        if k == keep || list.iter().any(|p| p.expires > now) {
            break;
        }
        if let Some((_, gone)) = map.pop_lru() {
            *total = total.saturating_sub(gone.len());
            for p in &gone {
                count_out(per_ip, p.addr.ip_of());
            }
        }
    }
}

/// Write tokens: `SHA-1(key ‖ epoch ‖ requester IP ‖ info-hash)` truncated. The epoch
/// advances every interval and the previous one is still accepted, so a token stays valid
/// for between one and two intervals (BEP 5: 5 minutes, up to 10), only for the IP it was
/// given to and only for the info-hash it was asked for (as libtorrent binds it). The key
/// comes from a CSPRNG of its own, never from the RNG whose outputs go on the wire, so
/// what a node sends says nothing about the tokens it accepts.
pub struct Tokens {
    key: [u8; 20],
    /// `u32`: at one rotation per 5 minutes it lasts 40,000 years; hashed as 8 bytes.
    epoch: u32,
    rotates_at: Time,
}

/// Length of the tokens we hand out.
pub const TOKEN_LEN: usize = 8;

impl Tokens {
    /// Tokens under the secret `key` (fill it from a CSPRNG), first rotating `interval`
    /// after `now`. The interval is the caller's to pass again to [`Tokens::maybe_rotate`]
    /// (the node's shared config), not kept here.
    pub fn new(key: [u8; 20], now: Time, interval: Duration) -> Tokens {
        Tokens {
            key,
            epoch: 0,
            rotates_at: now + interval,
        }
    }

    fn make(&self, epoch: u32, ip: &IpAddr, info_hash: &Id) -> [u8; TOKEN_LEN] {
        let mut h = Sha1::new();
        h.update(self.key);
        h.update(u64::from(epoch).to_be_bytes());
        match ip {
            IpAddr::V4(a) => h.update(a.octets()),
            IpAddr::V6(a) => h.update(a.octets()),
        }
        h.update(info_hash.0);
        let d = h.finalize();
        let mut out = [0u8; TOKEN_LEN];
        out.copy_from_slice(&d[..TOKEN_LEN]);
        out
    }

    /// The token to hand to `ip` asking about `info_hash` now.
    pub fn token_for(&self, ip: &IpAddr, info_hash: &Id) -> [u8; TOKEN_LEN] {
        self.make(self.epoch, ip, info_hash)
    }

    /// Whether `token` lets `ip` announce `info_hash` (current or previous epoch).
    pub fn check(&self, token: &[u8], ip: &IpAddr, info_hash: &Id) -> bool {
        token == self.make(self.epoch, ip, info_hash)
            || (self.epoch > 0 && token == self.make(self.epoch - 1, ip, info_hash))
    }

    /// Advances the epoch if its `interval` has passed (at least a millisecond, so a zero
    /// interval cannot spin).
    pub fn maybe_rotate(&mut self, now: Time, interval: Duration) {
        let interval = interval.max(Duration::from_millis(1));
        while now >= self.rotates_at {
            self.epoch = self.epoch.wrapping_add(1);
            self.rotates_at = self.rotates_at + interval;
        }
    }

    /// When the next rotation is due.
    pub fn rotates_at(&self) -> Time {
        self.rotates_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::net::Ipv4Addr;

    fn peer(i: u32) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(0x0a00_0000 + i), 6881)
    }

    #[test]
    fn token_valid_for_two_intervals_and_bound_to_ip() {
        let mut rng = StdRng::seed_from_u64(1);
        let five = Duration::from_secs(300);
        let mut t = Tokens::new(rng.gen(), Time(0), five);
        let ip = IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4));
        let ih = Id([1; 20]);
        let tok = t.token_for(&ip, &ih);
        assert!(t.check(&tok, &ip, &ih));
        assert!(!t.check(&tok, &IpAddr::V4(Ipv4Addr::new(1, 2, 3, 5)), &ih));
        assert!(!t.check(&tok, &ip, &Id([2; 20])), "bound to the info-hash");
        t.maybe_rotate(Time(0) + five, five);
        assert!(t.check(&tok, &ip, &ih), "previous secret still accepted");
        t.maybe_rotate(Time(0) + five * 2, five);
        assert!(!t.check(&tok, &ip, &ih), "two rotations later it is gone");
        assert!(!t.check(b"short", &ip, &ih));
        // Another key, other tokens.
        let other = Tokens::new(rng.gen(), Time(0), five);
        assert_ne!(other.token_for(&ip, &ih), t.token_for(&ip, &ih));
    }

    #[test]
    fn peers_expire() {
        let mut rng = StdRng::seed_from_u64(1);
        let limits = StoreLimits::default();
        let mut s = PeerStore::new();
        let ih = Id([1; 20]);
        let _ = s.announce(&limits, ih, peer(1), Time(0));
        let _ = s.announce(&limits, ih, peer(2), Time(0) + Duration::from_secs(600));
        assert_eq!(s.peers(&ih, 50, Time(1000), &mut rng).len(), 2);
        let t = Time(0) + Duration::from_secs(30 * 60);
        assert_eq!(s.peers(&ih, 50, t, &mut rng), vec![peer(2)]);
        s.expire(t);
        assert_eq!(s.peer_count(), 1);
        s.expire(t + Duration::from_secs(600));
        assert_eq!(s.peer_count(), 0);
        assert_eq!(s.infohash_count(), 0);
    }

    #[test]
    fn bounded_under_flood() {
        let mut rng = StdRng::seed_from_u64(1);
        let limits = StoreLimits {
            per_infohash: 10,
            infohashes: 100,
            total_peers: 500,
            ttl: Duration::from_secs(1800),
            ..StoreLimits::default()
        };
        let mut s = PeerStore::new();
        for i in 0..10_000u32 {
            let mut ih = [0u8; 20];
            ih[..4].copy_from_slice(&(i % 300).to_be_bytes());
            let _ = s.announce(&limits, Id(ih), peer(i), Time(u64::from(i)));
        }
        assert!(s.infohash_count() <= 100);
        assert!(s.peer_count() <= 500);
        // Full: a new torrent is refused until the flood's announces expire.
        let ih = Id([7; 20]);
        assert!(s.announce(&limits, ih, peer(1), Time(20_000)).is_err());
        let later = Time(2_000_000);
        for i in 0..10 {
            assert!(s.announce(&limits, ih, peer(i), later).is_ok());
        }
        // Sampling caps the answer size.
        assert_eq!(s.peers(&ih, 5, later, &mut rng).len(), 5);
    }

    fn live(s: &mut PeerStore, ih: &Id, now: Time) -> Vec<SocketAddrV4> {
        let mut rng = StdRng::seed_from_u64(2);
        s.peers(ih, usize::MAX, now, &mut rng)
    }

    #[test]
    fn one_ip_announcing_from_many_ports_cannot_replace_a_torrents_peers() {
        let limits = StoreLimits {
            per_infohash: 20,
            ..StoreLimits::default()
        };
        let per_ip = limits.per_ip_per_infohash;
        let mut s = PeerStore::new();
        let ih = Id([5; 20]);
        let honest: Vec<SocketAddrV4> = (1..=10).map(peer).collect();
        for p in &honest {
            let _ = s.announce(&limits, ih, *p, Time(0));
        }
        // One IP, a thousand ports, later (so its entries are the freshest).
        let attacker = Ipv4Addr::new(6, 6, 6, 6);
        for port in 1000..2000u16 {
            let _ = s.announce(&limits, ih, SocketAddrV4::new(attacker, port), Time(10));
        }
        let got = live(&mut s, &ih, Time(20));
        for p in &honest {
            assert!(got.contains(p), "honest peer {p} was evicted");
        }
        let from_attacker = got.iter().filter(|p| *p.ip() == attacker).count();
        assert!(
            from_attacker <= per_ip,
            "{from_attacker} entries from one IP, cap {per_ip}"
        );
        assert!(from_attacker > 0, "the IP may still announce itself");
    }

    #[test]
    fn a_full_store_refuses_new_announces_instead_of_evicting_live_torrents() {
        let ttl = Duration::from_secs(1800);
        let limits = StoreLimits {
            per_infohash: 3,
            infohashes: 4,
            total_peers: 10,
            ttl,
            ..StoreLimits::default()
        };
        let mut s = PeerStore::new();
        let ih = |i: u8| Id([i; 20]);
        for i in 0..4u8 {
            for j in 0..2u32 {
                assert_eq!(
                    s.announce(&limits, ih(i), peer(u32::from(i) * 10 + j), Time(0)),
                    Ok(Stored::Added)
                );
            }
        }
        // A fifth torrent: no room, refused; the four live ones keep every peer.
        assert_eq!(
            s.announce(&limits, ih(9), peer(99), Time(1)),
            Err(StoreFull::Infohashes)
        );
        // A full torrent takes a newcomer in place of its oldest entry (every IP holds
        // one here), without growing.
        assert_eq!(
            s.announce(&limits, ih(0), peer(5), Time(1)),
            Ok(Stored::Added)
        );
        assert_eq!(
            s.announce(&limits, ih(0), peer(6), Time(1)),
            Ok(Stored::Added)
        );
        assert_eq!(
            live(&mut s, &ih(0), Time(1)),
            vec![peer(6), peer(1), peer(5)]
        );
        assert_eq!(s.peer_count(), 9);
        // Renewing a stored peer always works.
        assert_eq!(
            s.announce(&limits, ih(0), peer(1), Time(2)),
            Ok(Stored::Renewed)
        );
        // Total cap: 9 stored, one more fits, then no more.
        assert_eq!(
            s.announce(&limits, ih(1), peer(15), Time(2)),
            Ok(Stored::Added)
        );
        assert_eq!(
            s.announce(&limits, ih(2), peer(25), Time(2)),
            Err(StoreFull::TotalPeers)
        );
        for i in 0..4u8 {
            assert!(
                live(&mut s, &ih(i), Time(3)).len() >= 2,
                "torrent {i} lost peers"
            );
        }
        assert!(live(&mut s, &ih(9), Time(3)).is_empty());
        // Once the old announces expired, room is made for new ones.
        let later = Time(0) + ttl + Duration::from_secs(1);
        assert_eq!(
            s.announce(&limits, ih(9), peer(99), later),
            Ok(Stored::Added)
        );
        assert!(s.infohash_count() <= 4);
        assert!(s.peer_count() <= 10);
    }

    fn ih_n(i: u32) -> Id {
        let mut ih = [0u8; 20];
        ih[..4].copy_from_slice(&i.to_be_bytes());
        Id(ih)
    }

    #[test]
    fn one_ip_cannot_fill_the_stores_infohash_slots() {
        let limits = StoreLimits::default();
        let (cap, infohashes, ttl) = (limits.per_ip, limits.infohashes, limits.ttl);
        assert!(
            cap > 0 && cap * 100 <= infohashes,
            "default cap is 1% of the slots"
        );
        let mut s = PeerStore::new();
        // One IP announces as many random info-hashes as the store has slots.
        let attacker = Ipv4Addr::new(6, 6, 6, 6);
        let mut refused = 0;
        for i in 0..infohashes as u32 {
            let port = 1000 + (i % 4) as u16;
            let at = Time(u64::from(i) * 45);
            match s.announce(&limits, ih_n(i), SocketAddrV4::new(attacker, port), at) {
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e, StoreFull::PerIp);
                    refused += 1;
                }
            }
        }
        assert_eq!(s.entries_from(attacker), cap);
        assert_eq!(s.peer_count(), cap);
        assert_eq!(refused, infohashes - cap);
        // Everyone else still gets new torrents in.
        let now = Time(u64::from(infohashes as u32) * 45);
        for i in 0..100u32 {
            assert_eq!(
                s.announce(&limits, ih_n(1_000_000 + i), peer(i), now),
                Ok(Stored::Added),
                "honest torrent {i} refused"
            );
        }
        // Renewing what it holds still works; the count follows expiry.
        assert_eq!(
            s.announce(&limits, ih_n(0), SocketAddrV4::new(attacker, 1000), now),
            Ok(Stored::Renewed)
        );
        s.expire(now + ttl + Duration::from_secs(1));
        assert_eq!(s.entries_from(attacker), 0);
        assert_eq!(s.peer_count(), 0);
        let later = now + ttl * 2;
        assert_eq!(
            s.announce(&limits, ih_n(7), SocketAddrV4::new(attacker, 1000), later),
            Ok(Stored::Added)
        );
        assert_eq!(s.entries_from(attacker), 1);
    }

    #[test]
    fn a_full_torrent_takes_newcomers_in_place_of_the_ip_with_most_entries() {
        let limits = StoreLimits::default();
        let (full, per_ip) = (limits.per_infohash, limits.per_ip_per_infohash);
        let mut s = PeerStore::new();
        let ih = Id([5; 20]);
        // 125 IPs x 4 ports fill the list.
        let attackers: Vec<Ipv4Addr> = (0..(full / per_ip) as u32)
            .map(|i| Ipv4Addr::from(0x0b00_0000 + i))
            .collect();
        for ip in &attackers {
            for port in 0..per_ip as u16 {
                let _ = s.announce(&limits, ih, SocketAddrV4::new(*ip, 2000 + port), Time(0));
            }
        }
        assert_eq!(live(&mut s, &ih, Time(1)).len(), full);
        // Honest announcers still get in, each taking one attacker entry.
        let honest: Vec<SocketAddrV4> = (1..=100).map(peer).collect();
        for p in &honest {
            assert_eq!(
                s.announce(&limits, ih, *p, Time(10)),
                Ok(Stored::Added),
                "{p} refused"
            );
        }
        let got = live(&mut s, &ih, Time(11));
        assert_eq!(got.len(), full);
        for p in &honest {
            assert!(got.contains(p), "honest peer {p} missing");
        }
        // The attackers announce all their ports again: they only displace each other.
        for ip in &attackers {
            for port in 0..per_ip as u16 {
                let _ = s.announce(&limits, ih, SocketAddrV4::new(*ip, 2000 + port), Time(20));
            }
        }
        let got = live(&mut s, &ih, Time(21));
        assert_eq!(got.len(), full);
        for p in &honest {
            assert!(
                got.contains(p),
                "honest peer {p} evicted by the re-announce"
            );
        }
        // The per-IP counts stayed in step with the replacements.
        let counted: usize = attackers
            .iter()
            .map(|ip| s.entries_from(*ip))
            .sum::<usize>()
            + honest
                .iter()
                .map(|p| s.entries_from(*p.ip()))
                .sum::<usize>();
        assert_eq!(counted, s.peer_count());
        assert_eq!(s.peer_count(), full);
    }

    #[test]
    fn per_ip_cap_holds_for_ipv6() {
        use std::net::{Ipv6Addr, SocketAddrV6};
        let limits = StoreLimits::default();
        let cap = limits.per_ip;
        let mut s: PeerStore<SocketAddrV6> = PeerStore::new();
        let attacker: Ipv6Addr = "2001:db8::6".parse().unwrap();
        let mut refused = 0;
        for i in 0..(cap as u32 + 50) {
            let peer = SocketAddrV6::new(attacker, 1000 + (i % 4) as u16, 0, 0);
            if let Err(e) = s.announce(&limits, ih_n(i), peer, Time(u64::from(i))) {
                assert_eq!(e, StoreFull::PerIp);
                refused += 1;
            }
        }
        assert_eq!(s.entries_from(attacker), cap);
        assert_eq!(refused, 50);
        let honest = SocketAddrV6::new("2001:db8::7".parse().unwrap(), 1, 0, 0);
        assert_eq!(
            s.announce(&limits, ih_n(9_999_999), honest, Time(1_000)),
            Ok(Stored::Added)
        );
    }
}
