//! What other nodes announced to us, and the write tokens that gate announcing.
//!
//! The store is bounded three ways (peers per info-hash, info-hashes, peers in total) with the
//! least recently announced info-hash evicted first, so a flood of announces cannot grow memory
//! without bound. Nothing is allocated until the first announce arrives (a million simulated
//! nodes mostly store nothing).

use std::net::{IpAddr, SocketAddrV4};
use std::time::Duration;

use lru::LruCache;
use rand::seq::SliceRandom;
use rand::Rng;
use sha1::{Digest, Sha1};

use crate::id::Id;
use crate::krpc::DhtAddr;

use super::time::Time;

/// Limits of the peer store.
#[derive(Clone, Debug)]
pub struct StoreLimits {
    /// Peers kept per info-hash (libtorrent: 500).
    pub per_infohash: usize,
    /// Info-hashes kept.
    pub infohashes: usize,
    /// Peers kept in total.
    pub total_peers: usize,
    /// How long an announce lasts unless renewed (BEP 5 practice: 30 minutes).
    pub ttl: Duration,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            per_infohash: 500,
            infohashes: 20_000,
            total_peers: 200_000,
            ttl: Duration::from_secs(30 * 60),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct StoredPeer<A> {
    addr: A,
    expires: Time,
}

/// Announced peers per info-hash.
pub struct PeerStore<A = SocketAddrV4> {
    limits: StoreLimits,
    map: Option<LruCache<Id, Vec<StoredPeer<A>>>>,
    total: usize,
}

impl<A: DhtAddr> PeerStore<A> {
    /// An empty store; allocates nothing until used.
    pub fn new(limits: StoreLimits) -> PeerStore<A> {
        PeerStore {
            limits,
            map: None,
            total: 0,
        }
    }

    /// Records `peer` for `info_hash` at `now`, evicting as the limits require.
    pub fn announce(&mut self, info_hash: Id, peer: A, now: Time) {
        let expires = now + self.limits.ttl;
        let map = self.map.get_or_insert_with(LruCache::unbounded);
        let list = map.get_or_insert_mut(info_hash, Vec::new);
        if let Some(p) = list.iter_mut().find(|p| p.addr == peer) {
            p.expires = expires;
            return;
        }
        if list.len() >= self.limits.per_infohash {
            // Replace the peer closest to expiry: newer announces are likelier alive.
            if let Some(oldest) = list.iter_mut().min_by_key(|p| p.expires) {
                *oldest = StoredPeer {
                    addr: peer,
                    expires,
                };
            }
            return;
        }
        list.push(StoredPeer {
            addr: peer,
            expires,
        });
        self.total += 1;
        while map.len() > self.limits.infohashes || self.total > self.limits.total_peers {
            match map.pop_lru() {
                Some((_, evicted)) => self.total -= evicted.len(),
                None => break,
            }
        }
    }

    /// Up to `max` live peers for `info_hash`, a random sample when there are more.
    pub fn peers<R: Rng + ?Sized>(
        &mut self,
        info_hash: &Id,
        max: usize,
        now: Time,
        rng: &mut R,
    ) -> Vec<A> {
        let Some(list) = self.map.as_mut().and_then(|m| m.peek(info_hash)) else {
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
        let Some(map) = self.map.as_mut() else {
            return;
        };
        let mut empty = Vec::new();
        for (k, list) in map.iter_mut() {
            let before = list.len();
            list.retain(|p| p.expires > now);
            self.total -= before - list.len();
            if list.is_empty() {
                empty.push(*k);
            }
        }
        for k in empty {
            map.pop(&k);
        }
    }

    /// Number of info-hashes stored.
    pub fn infohash_count(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len())
    }

    /// Number of peers stored.
    pub fn peer_count(&self) -> usize {
        self.total
    }
}

/// Write-token secrets: tokens are `SHA-1(secret ‖ requester IP)` truncated, the secret
/// rotates every interval and the previous one is still accepted, so a token stays valid for
/// between one and two intervals (BEP 5: 5 minutes, up to 10).
pub struct Tokens {
    current: [u8; 8],
    previous: [u8; 8],
    rotates_at: Time,
    interval: Duration,
}

/// Length of the tokens we hand out.
pub const TOKEN_LEN: usize = 8;

impl Tokens {
    /// Fresh secrets from the injected RNG.
    pub fn new<R: Rng + ?Sized>(rng: &mut R, now: Time, interval: Duration) -> Tokens {
        Tokens {
            current: rng.gen(),
            previous: rng.gen(),
            rotates_at: now + interval,
            interval,
        }
    }

    fn make<I: Copy + Into<IpAddr>>(secret: &[u8; 8], ip: &I) -> [u8; TOKEN_LEN] {
        let mut h = Sha1::new();
        h.update(secret);
        match (*ip).into() {
            IpAddr::V4(a) => h.update(a.octets()),
            IpAddr::V6(a) => h.update(a.octets()),
        }
        let d = h.finalize();
        let mut out = [0u8; TOKEN_LEN];
        out.copy_from_slice(&d[..TOKEN_LEN]);
        out
    }

    /// The token to hand to `ip` now.
    pub fn token_for<I: Copy + Into<IpAddr>>(&self, ip: &I) -> [u8; TOKEN_LEN] {
        Tokens::make(&self.current, ip)
    }

    /// Whether `token` is valid for `ip` (current or previous secret).
    pub fn check<I: Copy + Into<IpAddr>>(&self, token: &[u8], ip: &I) -> bool {
        token == Tokens::make(&self.current, ip) || token == Tokens::make(&self.previous, ip)
    }

    /// Rotates the secret if its interval has passed.
    pub fn maybe_rotate<R: Rng + ?Sized>(&mut self, now: Time, rng: &mut R) {
        while now >= self.rotates_at {
            self.previous = self.current;
            self.current = rng.gen();
            self.rotates_at = self.rotates_at + self.interval;
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
        let mut t = Tokens::new(&mut rng, Time(0), five);
        let ip = Ipv4Addr::new(1, 2, 3, 4);
        let tok = t.token_for(&ip);
        assert!(t.check(&tok, &ip));
        assert!(!t.check(&tok, &Ipv4Addr::new(1, 2, 3, 5)));
        t.maybe_rotate(Time(0) + five, &mut rng);
        assert!(t.check(&tok, &ip), "previous secret still accepted");
        t.maybe_rotate(Time(0) + five * 2, &mut rng);
        assert!(!t.check(&tok, &ip), "two rotations later it is gone");
        assert!(!t.check(b"short", &ip));
    }

    #[test]
    fn peers_expire() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut s = PeerStore::new(StoreLimits::default());
        let ih = Id([1; 20]);
        s.announce(ih, peer(1), Time(0));
        s.announce(ih, peer(2), Time(0) + Duration::from_secs(600));
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
        };
        let mut s = PeerStore::new(limits);
        for i in 0..10_000u32 {
            let mut ih = [0u8; 20];
            ih[..4].copy_from_slice(&(i % 300).to_be_bytes());
            s.announce(Id(ih), peer(i), Time(u64::from(i)));
        }
        assert!(s.infohash_count() <= 100);
        assert!(s.peer_count() <= 500);
        // Sampling caps the answer size.
        let ih = Id([7; 20]);
        for i in 0..10 {
            s.announce(ih, peer(i), Time(20_000));
        }
        assert_eq!(s.peers(&ih, 5, Time(20_001), &mut rng).len(), 5);
    }
}
