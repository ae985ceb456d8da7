//! Choker: decides which interested peers we upload to.
//!
//! Pure logic with injected time and randomness, so the rotation rules are unit-testable:
//! - `regular_slots` peers are unchoked by rate, re-ranked every [`ChokerConfig::rotate`]
//!   (10 s): while downloading by the rate they give us (tit-for-tat), while seeding by the
//!   rate we upload to them, ties broken round-robin (longest-waiting first);
//! - one **optimistic** slot goes to a random other interested peer, rotated every
//!   [`ChokerConfig::optimistic_rotate`] (30 s), so newcomers get a chance to prove a rate;
//! - between rotations a newly interested peer takes a free slot at once, so a lone fast peer
//!   is unchoked immediately and can take the whole link.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::picker::PeerKey;

/// Tunables of the choker.
#[derive(Clone, Debug)]
pub struct ChokerConfig {
    /// Peers unchoked by rate.
    pub regular_slots: usize,
    /// How often the regular slots are re-ranked.
    pub rotate: Duration,
    /// How often the optimistic slot moves.
    pub optimistic_rotate: Duration,
}

impl Default for ChokerConfig {
    fn default() -> Self {
        ChokerConfig {
            regular_slots: 4,
            rotate: Duration::from_secs(10),
            optimistic_rotate: Duration::from_secs(30),
        }
    }
}

/// What the choker needs to know about one connected peer.
#[derive(Clone, Copy, Debug)]
pub struct PeerStat {
    /// The peer.
    pub key: PeerKey,
    /// Whether the peer wants data from us.
    pub interested: bool,
    /// Bytes/s the peer sends us.
    pub download_rate: u64,
    /// Bytes/s we send the peer.
    pub upload_rate: u64,
}

/// Choke state for one torrent.
#[derive(Debug)]
pub struct Choker {
    cfg: ChokerConfig,
    unchoked: HashSet<PeerKey>,
    optimistic: Option<PeerKey>,
    last_rotate: Option<Instant>,
    last_optimistic: Option<Instant>,
    /// When each peer was last unchoked (round-robin tie-break while seeding).
    last_unchoked: HashMap<PeerKey, Instant>,
    rng: SmallRng,
}

impl Choker {
    /// A choker with everybody choked.
    pub fn new(cfg: ChokerConfig, seed: u64) -> Choker {
        Choker {
            cfg,
            unchoked: HashSet::new(),
            optimistic: None,
            last_rotate: None,
            last_optimistic: None,
            last_unchoked: HashMap::new(),
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// Whether `peer` is currently unchoked.
    pub fn is_unchoked(&self, peer: PeerKey) -> bool {
        self.unchoked.contains(&peer)
    }

    /// Forgets a disconnected peer (its slot frees up at the next [`Choker::update`]).
    pub fn remove(&mut self, peer: PeerKey) {
        self.unchoked.remove(&peer);
        self.last_unchoked.remove(&peer);
        if self.optimistic == Some(peer) {
            self.optimistic = None;
        }
    }

    /// Recomputes the unchoked set at time `now` and returns the changes to send:
    /// `(peer, true)` = unchoke, `(peer, false)` = choke.
    ///
    /// Re-ranks the regular slots only when [`ChokerConfig::rotate`] has passed (or on the
    /// first call), and moves the optimistic slot only after
    /// [`ChokerConfig::optimistic_rotate`]; otherwise it only fills free slots with newly
    /// interested peers and chokes peers that lost interest. Call it on a timer and whenever
    /// a peer's interest changes.
    pub fn update(
        &mut self,
        now: Instant,
        peers: &[PeerStat],
        seeding: bool,
    ) -> Vec<(PeerKey, bool)> {
        let interested: Vec<&PeerStat> = peers.iter().filter(|p| p.interested).collect();
        let is_interested: HashSet<PeerKey> = interested.iter().map(|p| p.key).collect();
        let rotate = self
            .last_rotate
            .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.rotate);
        let rotate_opt = self
            .last_optimistic
            .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.optimistic_rotate);

        if self.optimistic.is_some_and(|o| !is_interested.contains(&o)) || rotate_opt {
            self.optimistic = None;
        }

        let mut regular: Vec<PeerKey> = if rotate {
            self.last_rotate = Some(now);
            let mut ranked = interested.clone();
            let far_past = now.checked_sub(Duration::from_secs(3600)).unwrap_or(now);
            ranked.sort_by(|a, b| {
                let (ra, rb) = if seeding {
                    (a.upload_rate, b.upload_rate)
                } else {
                    (a.download_rate, b.download_rate)
                };
                let la = self.last_unchoked.get(&a.key).copied().unwrap_or(far_past);
                let lb = self.last_unchoked.get(&b.key).copied().unwrap_or(far_past);
                // Fastest first; among equals the one unchoked longest ago (round-robin).
                rb.cmp(&ra).then(la.cmp(&lb))
            });
            ranked
                .iter()
                .filter(|p| Some(p.key) != self.optimistic)
                .take(self.cfg.regular_slots)
                .map(|p| p.key)
                .collect()
        } else {
            // Keep current regular peers that are still interested, fill free slots.
            let mut keep: Vec<PeerKey> = self
                .unchoked
                .iter()
                .copied()
                .filter(|k| is_interested.contains(k) && Some(*k) != self.optimistic)
                .collect();
            keep.sort_unstable();
            for p in &interested {
                if keep.len() >= self.cfg.regular_slots {
                    break;
                }
                if !keep.contains(&p.key) && Some(p.key) != self.optimistic {
                    keep.push(p.key);
                }
            }
            keep
        };
        regular.truncate(self.cfg.regular_slots);

        if self.optimistic.is_none() {
            let mut candidates: Vec<PeerKey> = interested
                .iter()
                .map(|p| p.key)
                .filter(|k| !regular.contains(k))
                .collect();
            candidates.sort_unstable();
            if let Some(&k) = candidates.choose(&mut self.rng) {
                self.optimistic = Some(k);
                self.last_optimistic = Some(now);
            } else if rotate_opt {
                self.last_optimistic = Some(now);
            }
        }

        let mut want: HashSet<PeerKey> = regular.into_iter().collect();
        want.extend(self.optimistic);
        let mut changes = Vec::new();
        for k in self.unchoked.difference(&want) {
            changes.push((*k, false));
        }
        for k in want.difference(&self.unchoked) {
            changes.push((*k, true));
            self.last_unchoked.insert(*k, now);
        }
        changes.sort_unstable();
        self.unchoked = want;
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(key: PeerKey, interested: bool, down: u64, up: u64) -> PeerStat {
        PeerStat {
            key,
            interested,
            download_rate: down,
            upload_rate: up,
        }
    }

    #[test]
    fn single_interested_peer_unchoked_immediately() {
        let t0 = Instant::now();
        let mut c = Choker::new(ChokerConfig::default(), 1);
        assert!(c.update(t0, &[stat(1, false, 0, 0)], true).is_empty());
        // Becomes interested one second later: unchoked without waiting for a rotation.
        let ch = c.update(t0 + Duration::from_secs(1), &[stat(1, true, 0, 0)], true);
        assert_eq!(ch, vec![(1, true)]);
        assert!(c.is_unchoked(1));
        // Loses interest: choked.
        let ch = c.update(t0 + Duration::from_secs(2), &[stat(1, false, 0, 0)], true);
        assert_eq!(ch, vec![(1, false)]);
    }

    #[test]
    fn regular_slots_by_download_rate_plus_optimistic() {
        let t0 = Instant::now();
        let cfg = ChokerConfig {
            regular_slots: 2,
            ..ChokerConfig::default()
        };
        let mut c = Choker::new(cfg, 7);
        let peers: Vec<PeerStat> = (1..=6).map(|k| stat(k, true, k * 100, 0)).collect();
        c.update(t0, &peers, false);
        assert!(c.is_unchoked(6) && c.is_unchoked(5));
        let count = (1..=6).filter(|&k| c.is_unchoked(k)).count();
        assert_eq!(count, 3, "two regular + one optimistic");
        // Rates change; nothing moves before 10 s...
        let peers2: Vec<PeerStat> = (1..=6).map(|k| stat(k, true, (7 - k) * 100, 0)).collect();
        assert!(c
            .update(t0 + Duration::from_secs(5), &peers2, false)
            .is_empty());
        // ...and at 10 s the regular slots follow the new rates.
        c.update(t0 + Duration::from_secs(10), &peers2, false);
        assert!(c.is_unchoked(1) && c.is_unchoked(2));
    }

    #[test]
    fn optimistic_rotates_every_30s() {
        let t0 = Instant::now();
        let cfg = ChokerConfig {
            regular_slots: 1,
            ..ChokerConfig::default()
        };
        let mut c = Choker::new(cfg, 3);
        let peers: Vec<PeerStat> = (1..=20).map(|k| stat(k, true, 0, 0)).collect();
        let mut optimists = HashSet::new();
        for i in 0..10 {
            c.update(t0 + Duration::from_secs(30 * i), &peers, true);
            optimists.insert(c.optimistic);
            // In between, the optimistic peer stays.
            let o = c.optimistic;
            c.update(t0 + Duration::from_secs(30 * i + 15), &peers, true);
            assert_eq!(o, c.optimistic);
        }
        assert!(optimists.len() > 3, "{optimists:?}");
    }

    #[test]
    fn seeding_round_robin_among_equal_rates() {
        let t0 = Instant::now();
        let cfg = ChokerConfig {
            regular_slots: 1,
            optimistic_rotate: Duration::from_secs(1000),
            ..ChokerConfig::default()
        };
        let mut c = Choker::new(cfg, 3);
        let peers: Vec<PeerStat> = (1..=3).map(|k| stat(k, true, 0, 0)).collect();
        let mut served = HashSet::new();
        for i in 0..6 {
            c.update(t0 + Duration::from_secs(10 * i), &peers, true);
            for k in 1..=3 {
                if c.is_unchoked(k) && Some(k) != c.optimistic {
                    served.insert(k);
                }
            }
        }
        // The two peers outside the optimistic slot take the regular slot in turn.
        assert_eq!(served.len(), 2, "{served:?}");
    }
}
