//! What the nodes are asked to do and what is recorded of it: announces, the measured
//! lookups and their records, the refresh after a join, success over time, and the
//! outcome handed to the report at the end.

use rand::Rng;

use crate::sim::metrics::{round3, LookupRecord, SuccessBin};
use crate::sim::progress::Phase;
use crate::sim::queue::SimTime;

use super::{secs, GlobalEv, Outcome, World, US_PER_MS, US_PER_S};

/// Origins tried per lookup before it is recorded as aborted (all were announcers).
const ORIGIN_TRIES: u32 = 16;

impl World<'_> {
    /// Queues the announces, the measured lookups and the success bins of a network
    /// formed at `join_end`.
    pub(super) fn schedule_workload(&mut self, join_end: SimTime) {
        let ann_start = join_end + secs(self.sh.sc.join.settle_s);
        let ann_end = self.schedule_announces(ann_start);
        self.lookups_start = ann_end + secs(self.sh.sc.workload.gap_s);
        self.schedule_lookups();
        self.schedule_bins();
    }

    /// Queues every announce slot's first announce at a random moment of the window that
    /// opens at `start`; returns when the window closes.
    fn schedule_announces(&mut self, start: SimTime) -> SimTime {
        let w = &self.sh.sc.workload;
        let win = secs(w.announce_window_s);
        let (infohashes, per) = (w.infohashes, w.announcers_per_infohash);
        let mut slot = 0u32;
        for ih in 0..infohashes {
            for _ in 0..per {
                let at = start + self.rng.gen_range(0..=win);
                self.gq.push(at, GlobalEv::Announce { ih, slot });
                slot += 1;
            }
        }
        start + win
    }

    /// Queues the measured lookups, evenly over the lookup window.
    fn schedule_lookups(&mut self) {
        let w = &self.sh.sc.workload;
        let (win, lookups) = (secs(w.lookup_window_s), w.lookups);
        for r in 0..lookups {
            let at = self.lookups_start + win * u64::from(r) / u64::from(lookups.max(1));
            self.gq.push(at, GlobalEv::Lookup { rec: r });
            self.last_lookup_at = at;
        }
        self.lookups_open = lookups;
    }

    /// Queues the starts of the success-over-time bins (about 20 over the lookup window).
    fn schedule_bins(&mut self) {
        let win = secs(self.sh.sc.workload.lookup_window_s);
        self.bin_us = (win / 20).max(US_PER_S);
        let nbins = win.div_ceil(self.bin_us).max(1) as u32;
        for b in 0..nbins {
            let at = self.lookups_start + self.bin_us * u64::from(b);
            self.gq.push(at, GlobalEv::Bin);
        }
    }

    /// A bin of the success-over-time series opens (its figures are filled at the end).
    pub(super) fn open_bin(&mut self) {
        self.phase = Phase::Lookups;
        self.bins.push(SuccessBin {
            start_s: self.now as f64 / US_PER_S as f64,
            lookups: 0,
            success_rate: 0.0,
            online: self.sh.online.len() as u32,
        });
    }

    /// Announce slot `slot` of info-hash `ih` is due: its announcer (picked at the first
    /// announce, kept while it exists) announces, and the next re-announce is queued.
    pub(super) fn announce(&mut self, ih: u32, slot: u32) {
        let Some(node) = self.announcer_of(ih, slot) else {
            return;
        };
        let again = self.now + secs(self.sh.sc.workload.reannounce_s);
        self.gq.push(again, GlobalEv::Announce { ih, slot });
        let s = self.sh.shard_of(node);
        self.shards[s].announce(&self.sh, self.now, node, ih);
        if self.phase == Phase::Settle || self.phase == Phase::Join {
            self.phase = Phase::Announce;
        }
    }

    /// The announcer of a slot: the one picked before, or a random online node (`None`
    /// when nobody is online).
    fn announcer_of(&mut self, ih: u32, slot: u32) -> Option<u32> {
        let idx = (slot % self.sh.sc.workload.announcers_per_infohash) as usize;
        if let Some(&a) = self.sh.announcers[ih as usize].get(idx) {
            return Some(a);
        }
        let a = self.random_online()?;
        self.sh.announcers[ih as usize].push(a);
        Some(a)
    }

    /// Measured lookup `rec` starts from a random online node that did not announce its
    /// info-hash (recorded as aborted when none is found).
    pub(super) fn start_lookup(&mut self, rec: u32) {
        let ih = self.rng.gen_range(0..self.sh.infohashes.len()) as u32;
        let start_ms = self.now / US_PER_MS;
        let origin = self.lookup_origin(ih);
        let r = LookupRecord {
            index: rec,
            origin: origin.unwrap_or(u32::MAX),
            infohash: ih,
            start_ms,
            first_peer_ms: None,
            done_ms: None,
            hops: None,
            messages_to_first_peer: None,
            messages: 0,
            responses: 0,
            timeouts: 0,
            aborted: origin.is_none(),
        };
        self.records.push(r);
        let Some(o) = origin else {
            self.rec_epoch.push(0);
            self.lookups_open -= 1;
            return;
        };
        self.rec_epoch.push(self.node(o).epoch);
        let sh = self.sh.shard_of(o);
        self.shards[sh].start_lookup(&self.sh, self.now, o, rec, ih);
    }

    /// A random online node that is not an announcer of `ih`, in a few tries.
    fn lookup_origin(&mut self, ih: u32) -> Option<u32> {
        for _ in 0..ORIGIN_TRIES {
            match self.random_online() {
                Some(o) if !self.sh.announcers[ih as usize].contains(&o) => return Some(o),
                Some(_) => {}
                None => return None,
            }
        }
        None
    }

    /// Closes the books: open lookups are marked, the bins filled, the per-node figures
    /// taken.
    pub(super) fn finish(mut self) -> Outcome {
        self.mark_orphaned_lookups();
        self.fill_bins();
        self.count_online_time(self.now);
        let refresh: u64 = self
            .shards
            .iter()
            .flat_map(|s| s.iter())
            .filter_map(|(_, nd)| nd.dht())
            .map(|d| d.stats().refresh_queries)
            .sum();
        self.counters.refresh_queries += refresh;
        for s in &self.shards {
            self.counters.add(&s.counters);
        }
        let table_alive = self.table_alive();
        let secs_run = (self.now.saturating_sub(self.start_us) as f64 / US_PER_S as f64).max(1e-9);
        let (table_sizes, traffic) = self.per_node_figures(secs_run);
        Outcome {
            records: std::mem::take(&mut self.records),
            bins: std::mem::take(&mut self.bins),
            counters: self.counters.clone(),
            sim_seconds: round3(secs_run),
            table_sizes,
            traffic,
            online_at_end: self.sh.online.len() as u32,
            attackers: self.liars,
            table_alive,
            parallel_work_s: self.shards.iter().map(|s| s.busy.as_secs_f64()).sum(),
            serial_s: (self.created.elapsed() - self.in_windows).as_secs_f64(),
        }
    }

    /// The share of the online honest nodes' table entries that name a node online at that
    /// address under that id: how stale churn has left the tables.
    fn table_alive(&self) -> f64 {
        // Who is online under which id, in one compact array (the nodes themselves are
        // scattered over the heap: looking each entry up there costs two cache misses).
        let live_ids: Vec<Option<crate::id::Id>> = self
            .shards
            .iter()
            .flat_map(|s| s.iter())
            .map(|(_, nd)| nd.online.then(|| nd.id()))
            .collect();
        let (mut entries, mut alive) = (0u64, 0u64);
        let nodes = self.shards.iter().flat_map(|s| s.iter());
        for dht in nodes
            .filter(|(_, nd)| nd.online)
            .filter_map(|(_, nd)| nd.dht())
        {
            for e in dht.routing_table().iter() {
                entries += 1;
                let live = self
                    .sh
                    .addrs
                    .node_of(&e.node.addr, self.sh.n)
                    .and_then(|j| live_ids.get(j as usize).copied().flatten())
                    .is_some_and(|id| id == e.node.id);
                alive += u64::from(live);
            }
        }
        if entries == 0 {
            0.0
        } else {
            round3(alive as f64 / entries as f64)
        }
    }

    /// Lookups still open at the end: aborted if the origin left since, else failed.
    fn mark_orphaned_lookups(&mut self) {
        for (rec, ep) in self.rec_epoch.iter().enumerate() {
            let r = &self.records[rec];
            let orphaned =
                r.done_ms.is_none() && r.origin != u32::MAX && self.node(r.origin).epoch != *ep;
            if orphaned {
                self.records[rec].aborted = true;
            }
        }
    }

    /// Each bin's lookups (not aborted, started in the bin) and their success rate.
    fn fill_bins(&mut self) {
        let bin_ms = self.bin_us / US_PER_MS;
        for b in self.bins.iter_mut() {
            let lo = (b.start_s * 1000.0) as u64;
            let hi = lo + bin_ms;
            let rs: Vec<&LookupRecord> = self
                .records
                .iter()
                .filter(|r| !r.aborted && r.start_ms >= lo && r.start_ms < hi)
                .collect();
            b.lookups = rs.len() as u32;
            let ok = rs.iter().filter(|r| r.success()).count();
            b.success_rate = if rs.is_empty() {
                0.0
            } else {
                round3(ok as f64 / rs.len() as f64)
            };
        }
    }

    /// Table size and datagrams per second of every honest node online at the end.
    fn per_node_figures(&self, secs_run: f64) -> (Vec<f64>, Vec<f64>) {
        let mut table_sizes = Vec::with_capacity(self.sh.online.len());
        let mut traffic = Vec::with_capacity(self.sh.online.len());
        for (_, nd) in self
            .shards
            .iter()
            .flat_map(|s| s.iter())
            .filter(|(_, nd)| nd.online)
        {
            let Some(dht) = nd.dht() else {
                continue;
            };
            table_sizes.push(dht.routing_table().len() as f64);
            traffic.push(f64::from(nd.sent + nd.recv) / secs_run);
        }
        (table_sizes, traffic)
    }
}
