//! What a run measures: one record per lookup, per-node counters, and the summary the CLI
//! prints as JSON.

use serde::Serialize;

/// One measured get_peers lookup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LookupRecord {
    /// Index in start order.
    pub index: u32,
    /// Node that ran it.
    pub origin: u32,
    /// Which info-hash (index into the workload's list).
    pub infohash: u32,
    /// Start, in milliseconds of virtual time.
    pub start_ms: u64,
    /// Time from start to the first announced peer, if one was found.
    pub first_peer_ms: Option<u32>,
    /// Time from start to the end of the lookup, if it ended.
    pub done_ms: Option<u32>,
    /// Depth of the answer that carried the first peer.
    pub hops: Option<u8>,
    /// Queries the lookup had sent when its first announced peer came in.
    pub messages_to_first_peer: Option<u32>,
    /// Queries the lookup sent until it completed.
    pub messages: u32,
    /// Answers it received.
    pub responses: u32,
    /// Its queries that timed out or failed.
    pub timeouts: u32,
    /// The origin went offline before the lookup ended (excluded from the success rate).
    pub aborted: bool,
}

impl LookupRecord {
    /// Found an announced peer.
    pub fn success(&self) -> bool {
        self.first_peer_ms.is_some()
    }
}

/// p50 / p90 / p99 of a distribution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// Mean and tail of a distribution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct MeanTail {
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// Nearest-rank percentile of sorted values (`q` in 0..=100); 0 when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// p50/p90/p99 of `v`.
pub fn percentiles(v: Vec<f64>) -> Percentiles {
    let s = sorted(v);
    Percentiles {
        p50: percentile(&s, 50.0),
        p90: percentile(&s, 90.0),
        p99: percentile(&s, 99.0),
    }
}

/// Mean, p50 and p99 of `v`.
pub fn mean_tail(v: Vec<f64>) -> MeanTail {
    let s = sorted(v);
    let mean = if s.is_empty() {
        0.0
    } else {
        s.iter().sum::<f64>() / s.len() as f64
    };
    MeanTail {
        mean: round3(mean),
        p50: round3(percentile(&s, 50.0)),
        p99: round3(percentile(&s, 99.0)),
    }
}

/// Rounds to 3 decimals so JSON stays readable (and identical across runs).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Lookup figures of one run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LookupSummary {
    /// Lookups started.
    pub lookups: u32,
    /// Lookups whose origin stayed online until they ended.
    pub counted: u32,
    /// Lookups whose origin left first.
    pub aborted: u32,
    /// Counted lookups that found an announced peer, as a fraction.
    pub success_rate: f64,
    /// Time to first peer, successful lookups.
    pub first_peer_ms: Percentiles,
    /// Time to completion, ended lookups.
    pub lookup_ms: Percentiles,
    /// Hops to the first peer, successful lookups.
    pub hops: MeanTail,
    /// Queries sent until the first peer came in, successful lookups (what published
    /// measurements of lookup cost count).
    pub messages_to_first_peer: MeanTail,
    /// Queries per lookup until it completed, ended lookups.
    pub messages_per_lookup: MeanTail,
    /// Timed-out queries per lookup, ended lookups.
    pub timeouts_per_lookup: MeanTail,
}

impl LookupSummary {
    /// Summarises `records`.
    pub fn of(records: &[LookupRecord]) -> LookupSummary {
        let counted: Vec<&LookupRecord> = records.iter().filter(|r| !r.aborted).collect();
        let ok: Vec<&&LookupRecord> = counted.iter().filter(|r| r.success()).collect();
        let ended: Vec<&&LookupRecord> = counted.iter().filter(|r| r.done_ms.is_some()).collect();
        LookupSummary {
            lookups: records.len() as u32,
            counted: counted.len() as u32,
            aborted: (records.len() - counted.len()) as u32,
            success_rate: if counted.is_empty() {
                0.0
            } else {
                (ok.len() as f64 / counted.len() as f64 * 10_000.0).round() / 10_000.0
            },
            first_peer_ms: percentiles(
                ok.iter()
                    .filter_map(|r| r.first_peer_ms.map(f64::from))
                    .collect(),
            ),
            lookup_ms: percentiles(
                ended
                    .iter()
                    .filter_map(|r| r.done_ms.map(f64::from))
                    .collect(),
            ),
            hops: mean_tail(ok.iter().filter_map(|r| r.hops.map(f64::from)).collect()),
            messages_to_first_peer: mean_tail(
                ok.iter()
                    .filter_map(|r| r.messages_to_first_peer.map(f64::from))
                    .collect(),
            ),
            messages_per_lookup: mean_tail(ended.iter().map(|r| f64::from(r.messages)).collect()),
            timeouts_per_lookup: mean_tail(ended.iter().map(|r| f64::from(r.timeouts)).collect()),
        }
    }
}

/// Success rate of lookups started in one time bin (for the churn plot).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SuccessBin {
    /// Bin start, seconds of virtual time.
    pub start_s: f64,
    /// Counted lookups started in the bin.
    pub lookups: u32,
    /// Their success rate.
    pub success_rate: f64,
    /// Nodes online at the bin start.
    pub online: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = percentiles(v);
        assert_eq!((p.p50, p.p90, p.p99), (50.0, 90.0, 99.0));
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn aborted_lookups_do_not_count() {
        let r = |first: Option<u32>, aborted| LookupRecord {
            index: 0,
            origin: 0,
            infohash: 0,
            start_ms: 0,
            first_peer_ms: first,
            done_ms: Some(500),
            hops: first.map(|_| 3),
            messages_to_first_peer: first.map(|_| 9),
            messages: 20,
            responses: 18,
            timeouts: 2,
            aborted,
        };
        let s = LookupSummary::of(&[r(Some(200), false), r(None, false), r(None, true)]);
        assert_eq!((s.lookups, s.counted, s.aborted), (3, 2, 1));
        assert_eq!(s.success_rate, 0.5);
        assert_eq!(s.first_peer_ms.p50, 200.0);
        assert_eq!(s.hops.mean, 3.0);
        // Messages to the first peer count successful lookups only; to completion, every
        // ended lookup that was counted.
        assert_eq!(s.messages_to_first_peer.mean, 9.0);
        assert_eq!(s.messages_per_lookup.mean, 20.0);
    }
}
