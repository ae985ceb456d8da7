//! The network simulator: runs many instances of the production sans-IO DHT core
//! ([`crate::dht::Dht`]) against a virtual clock and one event queue.
//!
//! Nothing here touches a socket, a thread or the wall clock for its logic: a scenario and a
//! seed fully determine the output, so a run can be repeated byte for byte. The network
//! (per-pair latency, loss, NAT), churn and workload models live in submodules; the CLI calls
//! [`run_scenario`] and [`write_outputs`].

pub mod metrics;
pub mod model;
pub mod output;
mod prefetch;
pub mod progress;
pub mod provenance;
pub mod queue;
pub mod scenario;
pub mod world;

use std::time::Instant;

use serde::Serialize;

pub use metrics::{LookupRecord, LookupSummary, MeanTail, Percentiles, SuccessBin};
pub use output::write_outputs;
pub use progress::{Phase, ProgressUpdate};
pub use scenario::{JoinMode, Scenario};

/// Why a simulation could not run or its results could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The scenario is not valid TOML or has unknown or mistyped keys.
    #[error("scenario is not valid: {0}")]
    Toml(String),
    /// The scenario parses but asks for something the simulator cannot do.
    #[error("scenario is not valid: {0}")]
    Invalid(String),
    /// A plot could not be drawn.
    #[error("plot {path}: {message}")]
    Plot {
        /// The plot file.
        path: String,
        /// What the plotting library said.
        message: String,
    },
}

/// Command-line overrides of a scenario.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Replaces the scenario's seed.
    pub seed: Option<u64>,
    /// Replaces the scenario's node count.
    pub nodes: Option<u32>,
    /// Replaces the number of measured lookups.
    pub lookups: Option<u32>,
    /// Forces the perfect-table baseline run on or off.
    pub baseline: Option<bool>,
    /// Threads to run the network on (default: the cores available). The output is the
    /// same for every count.
    pub threads: Option<usize>,
}

impl RunOptions {
    /// The thread count these options ask for.
    pub fn thread_count(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }
}

/// The perfect-table reference run's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PerfectFigures {
    /// Lookups of the reference run.
    pub lookups: u32,
    /// Its success rate.
    pub success_rate: f64,
    /// Its time to first peer.
    pub first_peer_ms: Percentiles,
    /// Its lookup time.
    pub lookup_ms: Percentiles,
    /// Its hops.
    pub hops: MeanTail,
    /// Its queries until the first peer.
    pub messages_to_first_peer: MeanTail,
    /// Its queries per lookup until completion.
    pub messages_per_lookup: MeanTail,
}

/// This scenario divided by the perfect-table run of the same network (1.0 = as good as a
/// perfect table; lower is better for every figure).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ratios {
    /// Median time to first peer.
    pub first_peer_p50: f64,
    /// 90th percentile time to first peer.
    pub first_peer_p90: f64,
    /// 99th percentile time to first peer.
    pub first_peer_p99: f64,
    /// Median lookup time.
    pub lookup_p50: f64,
    /// Mean queries per lookup.
    pub messages_mean: f64,
}

/// Per-node state at the end of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NodeFigures {
    /// Nodes online at the end.
    pub online: u32,
    /// Routing-table entries per online node.
    pub routing_table: MeanTail,
    /// Datagrams sent plus received per online node per second.
    pub datagrams_per_s: MeanTail,
    /// Queries honest nodes sent to refresh stale buckets, per node-hour online (the upkeep
    /// cost; what most of a large run's datagrams were before single-query refreshes).
    pub refresh_queries_per_node_hour: f64,
    /// Fraction of the routing-table entries of the nodes online at the end that still name
    /// a live node at that address with that id (table freshness; 1.0 without churn).
    pub table_alive: f64,
}

/// The lying nodes of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AttackFigures {
    /// Fraction of node slots that lie.
    pub fraction: f64,
    /// What they do (serialised under its scenario-file name).
    pub behaviour: scenario::Behaviour,
    /// How many there are.
    pub attackers: u32,
    /// Datagrams honest nodes sent to them.
    pub queries_to_attackers: u64,
}

/// Network counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NetFigures {
    /// Events processed.
    pub events: u64,
    /// Datagrams sent.
    pub datagrams: u64,
    /// Lost to the loss model.
    pub lost: u64,
    /// Reached an offline node.
    pub to_offline: u64,
    /// Dropped by a NAT.
    pub nat_blocked: u64,
}

/// The result of one run, serialised as the CLI's `--json` output.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Seed used.
    pub seed: u64,
    /// Node slots.
    pub nodes: u32,
    /// How tables were formed.
    pub join: JoinMode,
    /// Lookup figures (flattened: `lookups`, `success_rate`, `first_peer_ms`, …).
    #[serde(flatten)]
    pub summary: LookupSummary,
    /// Virtual time simulated.
    pub sim_seconds: f64,
    /// Wall-clock time of the whole run, baseline included (not deterministic).
    pub wall_seconds: f64,
    /// Peak resident memory of the process (not deterministic).
    pub peak_rss_mb: f64,
    /// Threads the network ran on (the figures do not depend on it).
    pub threads: usize,
    /// Wall seconds the main run's shards spent in parallel windows, summed over shards
    /// (the work more threads divide; not deterministic).
    pub parallel_work_s: f64,
    /// Wall seconds of the main run outside parallel windows (set-up, build, coordinator):
    /// with `parallel_work_s`, what a run on more cores could at best take (Amdahl).
    pub serial_s: f64,
    /// The commit, build and machine that produced this report (set by the CLI for the
    /// top-level report only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provenance: Option<provenance::Provenance>,
    /// Per-node figures.
    pub per_node: NodeFigures,
    /// Network counters.
    pub network: NetFigures,
    /// The perfect-table reference run, when it was made.
    pub perfect: Option<PerfectFigures>,
    /// This run as ratios to the reference run.
    pub ratio_to_perfect: Option<Ratios>,
    /// The same network run with the scenario's `[variant]` tunables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<Box<Report>>,
    /// The lying nodes of this run, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attack: Option<AttackFigures>,
    /// The same network with each behaviour of `[attack] also`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attack_runs: Vec<Report>,
    /// Every measured lookup (CSV only).
    #[serde(skip)]
    pub records: Vec<LookupRecord>,
    /// Success rate over time (CSV and plot only).
    #[serde(skip)]
    pub success_over_time: Vec<SuccessBin>,
}

impl Report {
    /// The report with the wall-clock and memory figures zeroed: what must be identical
    /// between two runs with the same seed.
    pub fn deterministic(&self) -> Report {
        Report {
            wall_seconds: 0.0,
            peak_rss_mb: 0.0,
            threads: 0,
            parallel_work_s: 0.0,
            serial_s: 0.0,
            provenance: self.provenance.as_ref().map(|p| provenance::Provenance {
                load_at_start: 0.0,
                load_at_end: 0.0,
                ..p.clone()
            }),
            variant: self.variant.as_ref().map(|v| Box::new(v.deterministic())),
            attack_runs: self.attack_runs.iter().map(Report::deterministic).collect(),
            ..self.clone()
        }
    }

    /// The JSON object the CLI prints.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`; 0 where unavailable).
pub fn peak_rss_mb() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return 0.0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| metrics::round3(kb / 1024.0))
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        metrics::round3(a / b)
    } else {
        0.0
    }
}

/// The scenario the perfect-table reference runs: same network size, latency and DHT
/// tunables; perfect tables, no churn, no loss, no NAT.
pub fn baseline_of(sc: &Scenario) -> Scenario {
    let mut b = sc.clone();
    b.name = format!("{}-perfect", sc.name);
    b.join.mode = JoinMode::Perfect;
    b.join.perfect_pick = scenario::PerfectPick::Random;
    b.join.settle_s = 5.0;
    b.churn.enabled = false;
    b.network.loss = 0.0;
    b.network.nat_fraction = 0.0;
    b.workload.lookups = sc.workload.lookups.min(sc.baseline.lookups);
    b.baseline.enabled = false;
    b.attack.fraction = 0.0;
    b.attack.also.clear();
    b
}

/// Runs `scenario` with `opts` applied; reports progress through `progress`.
pub fn run_scenario(
    scenario: &Scenario,
    opts: &RunOptions,
    progress: &mut dyn FnMut(ProgressUpdate),
) -> Result<Report, SimError> {
    let started = Instant::now();
    let threads = opts.thread_count();
    let mut sc = scenario.clone();
    if let Some(s) = opts.seed {
        sc.seed = s;
    }
    if let Some(n) = opts.nodes {
        sc.nodes = n;
    }
    if let Some(l) = opts.lookups {
        sc.workload.lookups = l;
    }
    if let Some(b) = opts.baseline {
        sc.baseline.enabled = b;
    }
    sc.validate()?;
    let sub = RunOptions {
        threads: Some(threads),
        ..RunOptions::default()
    };
    let mut attack_runs = Vec::new();
    for (i, beh) in std::mem::take(&mut sc.attack.also).into_iter().enumerate() {
        let mut a = sc.clone();
        a.name = format!("{}/{}", sc.name, beh);
        a.attack.behaviour = beh;
        a.baseline.enabled = false;
        a.variant = None;
        let phase = Phase::AttackRun(i + 1);
        let mut relay = |mut u: ProgressUpdate| {
            u.phase = phase;
            progress(u);
        };
        attack_runs.push(run_scenario(&a, &sub, &mut relay)?);
    }
    let variant = match sc.variant.take() {
        Some(v) => {
            let mut vs = sc.clone();
            vs.name = format!("{}/{}", sc.name, v.name);
            vs.dht = v.dht;
            let mut relay = |mut u: ProgressUpdate| {
                u.phase = Phase::Variant;
                progress(u);
            };
            Some(Box::new(run_scenario(&vs, &sub, &mut relay)?))
        }
        None => None,
    };
    let is_perfect_ref = sc.join.mode == JoinMode::Perfect
        && !sc.churn.enabled
        && sc.network.loss == 0.0
        && sc.network.nat_fraction == 0.0;
    let perfect = if sc.baseline.enabled && !is_perfect_ref {
        let b = baseline_of(&sc);
        let mut relay = |mut u: ProgressUpdate| {
            u.phase = match u.phase {
                Phase::Build => Phase::BaselineBuild,
                _ => Phase::Baseline,
            };
            progress(u);
        };
        let out = world::World::new(&b, threads, &mut relay).run();
        let s = LookupSummary::of(&out.records);
        Some(PerfectFigures {
            lookups: s.lookups,
            success_rate: s.success_rate,
            first_peer_ms: s.first_peer_ms,
            lookup_ms: s.lookup_ms,
            hops: s.hops,
            messages_to_first_peer: s.messages_to_first_peer,
            messages_per_lookup: s.messages_per_lookup,
        })
    } else {
        None
    };
    let out = world::World::new(&sc, threads, progress).run();
    let summary = LookupSummary::of(&out.records);
    let attack = (out.attackers > 0).then_some(AttackFigures {
        fraction: sc.attack.fraction,
        behaviour: sc.attack.behaviour,
        attackers: out.attackers,
        queries_to_attackers: out.counters.to_attackers,
    });
    let ratio_to_perfect = perfect.as_ref().map(|p| Ratios {
        first_peer_p50: ratio(summary.first_peer_ms.p50, p.first_peer_ms.p50),
        first_peer_p90: ratio(summary.first_peer_ms.p90, p.first_peer_ms.p90),
        first_peer_p99: ratio(summary.first_peer_ms.p99, p.first_peer_ms.p99),
        lookup_p50: ratio(summary.lookup_ms.p50, p.lookup_ms.p50),
        messages_mean: ratio(summary.messages_per_lookup.mean, p.messages_per_lookup.mean),
    });
    let c = &out.counters;
    Ok(Report {
        scenario: sc.name.clone(),
        seed: sc.seed,
        nodes: sc.nodes,
        join: sc.join.mode,
        summary,
        sim_seconds: out.sim_seconds,
        wall_seconds: metrics::round3(started.elapsed().as_secs_f64()),
        peak_rss_mb: peak_rss_mb(),
        threads,
        parallel_work_s: metrics::round3(out.parallel_work_s),
        serial_s: metrics::round3(out.serial_s),
        provenance: None,
        per_node: NodeFigures {
            online: out.online_at_end,
            routing_table: metrics::mean_tail(out.table_sizes),
            datagrams_per_s: metrics::mean_tail(out.traffic),
            refresh_queries_per_node_hour: if c.online_node_us == 0 {
                0.0
            } else {
                metrics::round3(c.refresh_queries as f64 * 3.6e9 / c.online_node_us as f64)
            },
            table_alive: out.table_alive,
        },
        network: NetFigures {
            events: c.events,
            datagrams: c.datagrams,
            lost: c.lost,
            to_offline: c.to_offline,
            nat_blocked: c.nat_blocked,
        },
        perfect,
        ratio_to_perfect,
        variant,
        attack,
        attack_runs,
        records: out.records,
        success_over_time: out.bins,
    })
}
