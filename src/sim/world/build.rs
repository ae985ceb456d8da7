//! The perfect-table build: every honest node's table filled as a long-running network's
//! would be (for each bucket range, `k` live nodes of that range), without a join phase.

use std::net::SocketAddrV4;

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_xoshiro::SplitMix64;
use rayon::prelude::*;

use crate::dht::{Dht, Time};
use crate::id::Id;
use crate::krpc::NodeInfo;
use crate::sim::progress::{Phase, ProgressUpdate};
use crate::sim::scenario::PerfectPick;

use crate::sim::model::mix64;

use super::{Node, Shared, World, US_PER_MS};

/// Tables built between two progress reports (and per parallel batch).
const BUILD_BATCH: usize = 16_384;
/// Salt of the per-node streams that pick a perfect table's entries.
const BUILD_SALT: u64 = 0x7065_7266_6563_7400;

/// What a table build reads: every node's id, sorted and by slot, and the models.
struct BuildInput<'a> {
    sorted: &'a [(Id, u32)],
    ids: &'a [Id],
    sh: &'a Shared,
    spread_ms: u64,
}

impl World<'_> {
    /// Fills every node's table as a perfect one: for each bucket range, `k` live nodes of
    /// that range (or all of them when fewer exist). Each table depends only on the ids and
    /// a random stream of its own, so tables are built in parallel batches with the same
    /// result for every thread count.
    pub(super) fn build_perfect(&mut self) {
        let ids: Vec<Id> = self.nodes.iter().map(|nd| nd.id()).collect();
        // Tables hold the nodes online at start only; a node that starts offline gets its
        // table built too, as one that was online before and comes back through it.
        let mut sorted: Vec<(Id, u32)> = ids
            .iter()
            .copied()
            .zip(0..self.sh.n)
            .filter(|(_, i)| !self.starts_offline(*i))
            .collect();
        sorted.sort_unstable();
        // Each table is filled at a random moment of one refresh interval, and the run
        // starts at the end of it: bucket refreshes then come spread out, as in a network
        // that has been running, not all at once 15 minutes in.
        let spread_ms = self.sh.cfg.refresh_after.as_millis() as u64;
        let input = BuildInput {
            sorted: &sorted,
            ids: &ids,
            sh: &self.sh,
            spread_ms,
        };
        let pool = self.pool.as_ref();
        let mut done = 0u32;
        for (b, batch) in self.nodes.chunks_mut(BUILD_BATCH).enumerate() {
            let base = (b * BUILD_BATCH) as u32;
            let build = |(k, nd): (usize, &mut Node)| build_table(&input, base + k as u32, nd);
            match pool {
                Some(p) => p.install(|| batch.par_iter_mut().enumerate().for_each(build)),
                None => batch.iter_mut().enumerate().for_each(build),
            }
            done += batch.len() as u32;
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
        // The network goes online at the end of the interval (`World::start_perfect`).
        self.now = spread_ms * US_PER_MS;
        self.start_us = self.now;
    }
}

/// Builds node `i`'s perfect table (liars have none) from its own random stream.
fn build_table(input: &BuildInput<'_>, i: u32, nd: &mut Node) {
    let Some(dht) = nd.dht_mut() else {
        return;
    };
    let mut rng = SplitMix64::seed_from_u64(mix64(input.sh.sc.seed ^ BUILD_SALT ^ u64::from(i)));
    let mut picks = Vec::with_capacity(input.sh.cfg.k * 24);
    pick_table(input, i, &mut rng, &mut picks);
    let now = Time(rng.gen_range(0..=input.spread_ms));
    for &j in &picks {
        seed_entry(dht, now, input.ids[j as usize], input.sh.addrs.addr_of(j));
    }
}

/// Node `i`'s table entries into `picks`, bucket by bucket from the farthest, until no
/// other node shares the next prefix. The ids sharing our first `depth` bits are one span of
/// the sorted ids, and bit `depth` cuts it in two: the half that differs from us is bucket
/// `depth`, the other the next span. Each cut is a search by one bit inside the last span,
/// not a search of the whole network by full ids.
fn pick_table(input: &BuildInput<'_>, i: u32, rng: &mut SplitMix64, picks: &mut Vec<u32>) {
    let me = input.ids[i as usize];
    let mut span = input.sorted;
    for depth in 0..160 {
        let (bucket, next) = cut(span, &me, depth);
        pick_bucket(input, i, bucket, rng, picks);
        // Stop once nobody else shares more than `depth` bits with us.
        if next.len() <= 1 {
            break;
        }
        span = next;
    }
}

/// A run of the sorted (id, slot) pairs.
type Span<'s> = &'s [(Id, u32)];

/// `span` (sorted ids sharing `me`'s first `depth` bits) cut on bit `depth`: the ids of
/// bucket `depth` of `me`'s table, and those sharing one more bit with `me`.
fn cut<'s>(span: &'s [(Id, u32)], me: &Id, depth: usize) -> (Span<'s>, Span<'s>) {
    let at = span.partition_point(|(id, _)| !id.bit(depth));
    let (zeros, ones) = span.split_at(at);
    if me.bit(depth) {
        (zeros, ones)
    } else {
        (ones, zeros)
    }
}

/// Node `i`'s entries for one bucket whose range holds `range`: all of them, or `k` picked
/// as the scenario says.
fn pick_bucket(
    input: &BuildInput<'_>,
    i: u32,
    range: &[(Id, u32)],
    rng: &mut SplitMix64,
    picks: &mut Vec<u32>,
) {
    let sh = input.sh;
    let k = sh.cfg.k;
    let c = range.len();
    if c <= k {
        picks.extend(range.iter().map(|(_, j)| *j));
        return;
    }
    match sh.sc.join.perfect_pick {
        PerfectPick::Random => {
            for off in sample(rng, c, k).into_iter() {
                picks.push(range[off].1);
            }
        }
        PerfectPick::LowestRtt => {
            let m = (sh.sc.join.perfect_sample as usize).clamp(k, c);
            let mut cand: Vec<(u64, u32)> = sample(rng, c, m)
                .into_iter()
                .map(|off| {
                    let j = range[off].1;
                    (sh.lat.one_way_us(i, j), j)
                })
                .collect();
            cand.sort_unstable();
            picks.extend(cand.iter().take(k).map(|(_, j)| *j));
        }
    }
}

/// The index span `[a, b)` of `sorted` whose ids lie in `[lo, hi]`.
#[cfg(test)]
fn id_span(sorted: &[(Id, u32)], (lo, hi): (Id, Id)) -> (usize, usize) {
    let a = sorted.partition_point(|(id, _)| *id < lo);
    let b = sorted.partition_point(|(id, _)| *id <= hi);
    (a, b)
}

/// The id range `[lo, hi]` of ids whose first `len` bits equal `me`'s, except that with
/// `flip_last` bit `len` must differ: the range of bucket `len` of a table centred on `me`.
#[cfg(test)]
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
    fn cutting_spans_by_one_bit_finds_the_bucket_ranges() {
        let mut rng = SmallRng::seed_from_u64(11);
        let mut sorted: Vec<(Id, u32)> = (0..5000).map(|i| (Id::random(&mut rng), i)).collect();
        sorted.sort_unstable();
        for &(me, _) in sorted.iter().step_by(97) {
            let mut span: &[(Id, u32)] = &sorted;
            for depth in 0..30 {
                let (bucket, next) = cut(span, &me, depth);
                let (a, b) = id_span(&sorted, prefix_range(&me, depth, true));
                assert_eq!(bucket, &sorted[a..b], "bucket {depth}");
                let (a, b) = id_span(&sorted, prefix_range(&me, depth + 1, false));
                assert_eq!(next, &sorted[a..b], "prefix {}", depth + 1);
                if next.len() <= 1 {
                    break;
                }
                span = next;
            }
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
