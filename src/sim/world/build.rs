//! The perfect-table build: every honest node's table filled as a long-running network's
//! would be (for each bucket range, `k` live nodes of that range), without a join phase.

use std::net::SocketAddrV4;

use rand::seq::index::sample;
use rand::Rng;

use crate::dht::{Dht, Time};
use crate::id::Id;
use crate::krpc::NodeInfo;
use crate::sim::progress::{Phase, ProgressUpdate};
use crate::sim::scenario::PerfectPick;

use super::{World, US_PER_MS};

/// A build progress report every this many nodes.
const BUILD_PROGRESS_EVERY: u32 = 4096;

impl World<'_> {
    /// Fills every node's table as a perfect one: for each bucket range, `k` live nodes of
    /// that range (or all of them when fewer exist).
    pub(super) fn build_perfect(&mut self) {
        // Tables hold the nodes online at start only; a node that starts offline gets its
        // table built too, as one that was online before and comes back through it.
        let mut sorted: Vec<(Id, u32)> = (0..self.sh.n)
            .zip(&self.nodes)
            .filter(|(i, _)| !self.starts_offline(*i))
            .map(|(i, nd)| (nd.id(), i))
            .collect();
        sorted.sort_unstable();
        // Each table is filled at a random moment of one refresh interval, and the run
        // starts at the end of it: bucket refreshes then come spread out, as in a network
        // that has been running, not all at once 15 minutes in.
        let spread_ms = self.sh.cfg.refresh_after.as_millis() as u64;
        let mut picks: Vec<u32> = Vec::with_capacity(self.sh.cfg.k * 24);
        for i in 0..self.sh.n {
            if self.is_attacker(i) {
                continue;
            }
            self.pick_table(i, &sorted, &mut picks);
            let now = Time(self.rng.gen_range(0..=spread_ms));
            self.seed_table(i, now, &picks);
            if i.is_multiple_of(BUILD_PROGRESS_EVERY) {
                self.report_build(i);
            }
        }
        // The network goes online at the end of the interval (`World::start_perfect`).
        self.now = spread_ms * US_PER_MS;
        self.start_us = self.now;
    }

    /// Node `i`'s table entries into `picks`, bucket by bucket from the farthest, until no
    /// other node shares the next prefix.
    fn pick_table(&mut self, i: u32, sorted: &[(Id, u32)], picks: &mut Vec<u32>) {
        picks.clear();
        let me = self.nodes[i as usize].id();
        for depth in 0..160 {
            let (a, b) = id_span(sorted, prefix_range(&me, depth, true));
            self.pick_bucket(i, &sorted[a..b], picks);
            // Stop once nobody else shares more than `depth` bits with us.
            let (a, b) = id_span(sorted, prefix_range(&me, depth + 1, false));
            if b - a <= 1 {
                break;
            }
        }
    }

    /// Node `i`'s entries for one bucket whose range holds `range`: all of them, or `k`
    /// picked as the scenario says.
    fn pick_bucket(&mut self, i: u32, range: &[(Id, u32)], picks: &mut Vec<u32>) {
        let k = self.sh.cfg.k;
        let c = range.len();
        if c <= k {
            picks.extend(range.iter().map(|(_, j)| *j));
            return;
        }
        match self.sh.sc.join.perfect_pick {
            PerfectPick::Random => {
                for off in sample(&mut self.rng, c, k).into_iter() {
                    picks.push(range[off].1);
                }
            }
            PerfectPick::LowestRtt => {
                let m = (self.sh.sc.join.perfect_sample as usize).clamp(k, c);
                let mut cand: Vec<(u64, u32)> = sample(&mut self.rng, c, m)
                    .into_iter()
                    .map(|off| {
                        let j = range[off].1;
                        (self.sh.lat.one_way_us(i, j), j)
                    })
                    .collect();
                cand.sort_unstable();
                picks.extend(cand.iter().take(k).map(|(_, j)| *j));
            }
        }
    }

    /// Puts the `picks` into node `i`'s table as of `now`.
    fn seed_table(&mut self, i: u32, now: Time, picks: &[u32]) {
        for &j in picks {
            let peer = self.nodes[j as usize].id();
            let addr = self.sh.addrs.addr_of(j);
            if let Some(dht) = self.nodes[i as usize].dht_mut() {
                seed_entry(dht, now, peer, addr);
            }
        }
    }

    /// Reports the build's progress: `done` tables filled.
    fn report_build(&mut self, done: u32) {
        let u = ProgressUpdate {
            phase: Phase::Build,
            sim_seconds: 0.0,
            lookups_done: 0,
            lookups_total: self.sh.sc.workload.lookups,
            online: done,
            events: 0,
        };
        (self.progress)(u);
    }
}

/// The index span `[a, b)` of `sorted` whose ids lie in `[lo, hi]`.
fn id_span(sorted: &[(Id, u32)], (lo, hi): (Id, Id)) -> (usize, usize) {
    let a = sorted.partition_point(|(id, _)| *id < lo);
    let b = sorted.partition_point(|(id, _)| *id <= hi);
    (a, b)
}

/// The id range `[lo, hi]` of ids whose first `len` bits equal `me`'s, except that with
/// `flip_last` bit `len` must differ: the range of bucket `len` of a table centred on `me`.
fn prefix_range(me: &Id, len: usize, flip_last: bool) -> (Id, Id) {
    let bits = if flip_last { len + 1 } else { len };
    let mut lo = [0u8; 20];
    let mut hi = [0xffu8; 20];
    for i in 0..bits.min(160) {
        let mut b = me.bit(i);
        if flip_last && i == len {
            b = !b;
        }
        let mask = 1u8 << (7 - (i % 8));
        if b {
            lo[i / 8] |= mask;
        } else {
            hi[i / 8] &= !mask;
        }
    }
    (Id(lo), Id(hi))
}

/// Puts `peer` into `dht`'s table as a node that just answered (the core's `insert_node`:
/// the simulator vouches that it is alive, as a saved table restored at start-up would).
fn seed_entry(dht: &mut Dht, now: Time, peer: Id, addr: SocketAddrV4) {
    let _ = dht.insert_node(now, NodeInfo { id: peer, addr });
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    use super::*;
    use crate::sim::scenario::{JoinMode, Scenario};

    #[test]
    fn prefix_ranges_bound_buckets() {
        let me = Id([0b1010_0000; 20]);
        let (lo, hi) = prefix_range(&me, 0, true);
        assert_eq!(lo.0[0], 0);
        assert_eq!(hi.0[0], 0x7f);
        let (lo, hi) = prefix_range(&me, 2, true);
        assert_eq!((lo.0[0], hi.0[0]), (0b1000_0000, 0b1001_1111));
        let (lo, hi) = prefix_range(&me, 3, false);
        assert_eq!((lo.0[0], hi.0[0]), (0b1010_0000, 0b1011_1111));
        let mut rng = SmallRng::seed_from_u64(3);
        for d in 0..40 {
            let t = me.random_in_bucket(d, &mut rng);
            let (lo, hi) = prefix_range(&me, d, true);
            assert!(lo <= t && t <= hi, "depth {d}");
        }
    }

    #[test]
    fn perfect_table_fills_buckets() {
        let mut sc = Scenario::from_toml_str("name = \"t\"\nnodes = 2000\n").unwrap();
        sc.join.mode = JoinMode::Perfect;
        let mut p = |_: ProgressUpdate| {};
        let mut w = World::new(&sc, 1, &mut p);
        w.build_perfect();
        for nd in w.nodes.iter().take(50) {
            let t = nd.dht().expect("no liars here").routing_table();
            let b = t.buckets();
            // 2000 nodes: about log2(2000/8) ≈ 8 full buckets before the last.
            assert!(b.len() >= 6, "{} buckets", b.len());
            // The first five ranges hold ~1000, 500, … 62 nodes: all full.
            for bucket in &b[..5] {
                assert_eq!(bucket.entries.len(), 8);
            }
        }
    }
}
