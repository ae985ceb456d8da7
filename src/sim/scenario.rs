//! Scenario files: what network to simulate and what to do in it, read from TOML.
//!
//! Every section and field has a default, so a scenario file states only what it changes;
//! unknown keys are errors (a typo must not silently fall back to a default).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::dht::{Config, RateLimits};

use super::SimError;

/// A whole simulation: the network, how nodes join, the DHT tunables, churn and workload.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in reports and output file names.
    pub name: String,
    /// What the scenario shows (one line for the README table).
    #[serde(default)]
    pub description: String,
    /// Seed of every random choice; `--seed` overrides it.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Number of node slots (ids); `--nodes` overrides it.
    pub nodes: u32,
    /// Latency, loss and NAT.
    #[serde(default)]
    pub network: NetworkSpec,
    /// How the network forms.
    #[serde(default)]
    pub join: JoinSpec,
    /// Tunables of the DHT core.
    #[serde(default)]
    pub dht: DhtSpec,
    /// Arrivals and departures.
    #[serde(default)]
    pub churn: ChurnSpec,
    /// Announces and lookups.
    #[serde(default)]
    pub workload: WorkloadSpec,
    /// The perfect-table run every scenario is reported against.
    #[serde(default)]
    pub baseline: BaselineSpec,
    /// A second run of the same network with other DHT tunables (e.g. stock vs tuned).
    #[serde(default)]
    pub variant: Option<VariantSpec>,
    /// Lying nodes (Sybils) among the nodes; none by default.
    #[serde(default)]
    pub attack: AttackSpec,
}

/// What a lying node does. Attackers are scripted responders of the simulator, not DHT
/// cores: they never start a lookup, never leave, and answer queries as below.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    /// Answers find_node/get_peers with 8 nodes that do not exist: ids drawn close to the
    /// target (so a lookup wants to query them), addresses nobody listens on.
    BogusNodes,
    /// Claims to be close to every target: answers with its own id remade next to the
    /// target, and with 8 other such attackers, each also under an id next to the target
    /// (a consistent Sybil: queried about that target, each answers with the id it was
    /// claimed under). Accepts announces and drops them; never returns peers.
    ClaimClose,
    /// Never answers anything (it is in tables, then goes silent).
    Drop,
    /// Answers like an honest node (with the truly closest honest nodes) but hands out
    /// tokens that do not work: announces to it fail with error 203, and it stores nothing.
    BadTokens,
    /// Each attacker takes one of the four behaviours above (by a hash of its index).
    Mixed,
}

impl Behaviour {
    /// Its scenario-file name: what reports and run names call it, so they read like the
    /// scenario that asked for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Behaviour::BogusNodes => "bogus_nodes",
            Behaviour::ClaimClose => "claim_close",
            Behaviour::Drop => "drop",
            Behaviour::BadTokens => "bad_tokens",
            Behaviour::Mixed => "mixed",
        }
    }
}

impl std::fmt::Display for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lying nodes: a fraction of all node slots, each with a behaviour.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AttackSpec {
    /// Fraction of node slots that are attackers (0 = none).
    pub fraction: f64,
    /// What they do.
    pub behaviour: Behaviour,
    /// Also run the very same network with each of these behaviours (reported in
    /// `attack_runs`), for a per-behaviour table from one scenario file.
    pub also: Vec<Behaviour>,
    /// Bootstrap join: an attacker joins through the protocol (find_node for its own id to
    /// a few random online nodes when it arrives) and then queries that many random online
    /// nodes every this many seconds (0: only when it arrives), so honest nodes meet it
    /// through their ordinary "ping an unknown querier, insert it if it answers" path, as
    /// they would a real Sybil, rather than through a table the simulator wrote.
    pub query_every_s: f64,
}

impl Default for AttackSpec {
    fn default() -> Self {
        AttackSpec {
            fraction: 0.0,
            behaviour: Behaviour::Mixed,
            also: Vec::new(),
            query_every_s: 60.0,
        }
    }
}

/// Another set of tunables to run on the very same network, for side-by-side comparison.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    /// Its name in the report.
    pub name: String,
    /// Its DHT tunables (unset fields take the core defaults, not the main run's).
    #[serde(default)]
    pub dht: DhtSpec,
}

fn default_seed() -> u64 {
    1
}

/// The network model.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSpec {
    /// Median round-trip time between two nodes (per pair, fixed for the run).
    pub rtt_median_ms: f64,
    /// Sigma of the log-normal RTT distribution (0.6: p99 ≈ 4× the median).
    pub rtt_sigma: f64,
    /// Shortest one-way delay (the speed of light and a router or two): no datagram arrives
    /// sooner. It is also the parallel engine's lookahead, so nodes can run this long of
    /// virtual time apart without seeing each other's datagrams late.
    pub min_one_way_ms: f64,
    /// Median one-way delay of a host's own access link (DSL, cable, Wi-Fi), added at both
    /// ends of every datagram on top of half the pair RTT: a slow home link slows all of a
    /// node's exchanges, which per-pair values alone cannot give. Log-normal per host, a
    /// hash of (seed, node); 0 turns it off.
    pub access_median_ms: f64,
    /// Sigma of the log-normal access delay (0.5: p99 ≈ 3.2× the median).
    pub access_sigma: f64,
    /// Per-datagram queueing jitter, uniform in [0, jitter_ms), drawn by the sender: the
    /// same pair's datagrams do not all take the same time, so retries and races between
    /// parallel queries are not decided by a fixed order. 0 turns it off.
    pub jitter_ms: f64,
    /// Probability that any one datagram is lost.
    pub loss: f64,
    /// Fraction of nodes behind a NAT: they only receive from peers they sent to recently.
    pub nat_fraction: f64,
    /// How long a NAT keeps a mapping open after the last outgoing datagram.
    pub nat_timeout_s: u64,
    /// Put nodes on public addresses (32/8) with BEP 42-valid ids instead of private 10/8
    /// ones, so the core's BEP 42 checks and per-/24 limits apply.
    pub public_ips: bool,
    /// With `public_ips`: the share of honest nodes whose id is BEP 42-valid for their
    /// address (the rest run clients that draw ids at random, as many real ones do), so
    /// the core's BEP 42 preferences meet the mixed network they would in the wild. Each
    /// node's lot is a hash of (seed, node), kept when it comes back with a new id.
    pub bep42_valid_share: f64,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            rtt_median_ms: 100.0,
            rtt_sigma: 0.6,
            min_one_way_ms: 5.0,
            access_median_ms: 5.0,
            access_sigma: 0.5,
            jitter_ms: 2.0,
            loss: 0.01,
            nat_fraction: 0.0,
            nat_timeout_s: 60,
            public_ips: false,
            bep42_valid_share: 1.0,
        }
    }
}

/// How routing tables come to be.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JoinMode {
    /// Nodes arrive one by one and bootstrap through the protocol (a self-lookup).
    Bootstrap,
    /// Tables are built directly: every bucket holds `k` live nodes of its range.
    Perfect,
}

/// Which nodes a perfect table keeps when a bucket's range has more than `k`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PerfectPick {
    /// Uniformly random nodes of the range (what a long-running table converges to).
    Random,
    /// The lowest-RTT nodes among a sample of the range (a latency-aware table).
    LowestRtt,
}

/// The join phase.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct JoinSpec {
    /// Bootstrap or perfect tables.
    pub mode: JoinMode,
    /// Bootstrap mode: arrivals are spread evenly over this window.
    pub duration_s: f64,
    /// Bootstrap mode: each newcomer is handed this many random nodes already online (the
    /// role of router.bittorrent.com).
    pub bootstrap_nodes: u32,
    /// Bootstrap mode: after joining, every node also refreshes its buckets once this long
    /// after arriving (0 = never), as a node running for a while would have.
    pub refresh_after_join_s: f64,
    /// Perfect mode: how bucket members are chosen.
    pub perfect_pick: PerfectPick,
    /// Perfect mode, `lowest_rtt`: how many nodes of a range are sampled.
    pub perfect_sample: u32,
    /// Time between the end of the join and the first announce.
    pub settle_s: f64,
}

impl Default for JoinSpec {
    fn default() -> Self {
        JoinSpec {
            mode: JoinMode::Bootstrap,
            duration_s: 60.0,
            bootstrap_nodes: 2,
            refresh_after_join_s: 0.0,
            perfect_pick: PerfectPick::Random,
            perfect_sample: 64,
            settle_s: 30.0,
        }
    }
}

/// Overrides of the core's [`Config`]; unset fields keep the core's defaults.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DhtSpec {
    /// Bucket size and lookup width.
    pub k: Option<usize>,
    /// Queries in flight per lookup.
    pub alpha: Option<usize>,
    /// Delay after which a silent query stops counting against alpha.
    pub widen_after_ms: Option<u64>,
    /// Delay after which a query has failed.
    pub query_timeout_ms: Option<u64>,
    /// Bucket refresh interval.
    pub refresh_after_s: Option<u64>,
    /// Keep the core's per-IP flood protection on. Off by default: the simulated nodes are
    /// honest, and the limiter's per-node table of recent IPs costs ~10 KB a node, which a
    /// million-node run cannot afford.
    pub flood_protection: bool,
}

impl DhtSpec {
    /// The core configuration this spec describes.
    pub fn config(&self) -> Config {
        let mut c = Config::default();
        if let Some(k) = self.k {
            c.k = k;
        }
        if let Some(a) = self.alpha {
            c.alpha = a;
        }
        if let Some(ms) = self.widen_after_ms {
            c.widen_after = Duration::from_millis(ms);
        }
        if let Some(ms) = self.query_timeout_ms {
            c.query_timeout = Duration::from_millis(ms);
        }
        if let Some(s) = self.refresh_after_s {
            c.refresh_after = Duration::from_secs(s);
        }
        if !self.flood_protection {
            c.rate_limits = RateLimits::unlimited();
        }
        c
    }
}

/// A distribution of durations in seconds.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "dist", rename_all = "snake_case", deny_unknown_fields)]
pub enum DurationDist {
    /// Weibull: measured P2P session lengths fit shapes of 0.3–0.6 (Stutzbach & Rejaie 2006).
    Weibull {
        /// Shape; below 1 gives many short sessions and a long tail.
        shape: f64,
        /// Scale in seconds.
        scale_s: f64,
    },
    /// Exponential with this mean.
    Exponential {
        /// Mean in seconds.
        mean_s: f64,
    },
    /// Always this long.
    Fixed {
        /// Seconds.
        s: f64,
    },
}

impl DurationDist {
    /// Maps a uniform sample `u` in [0, 1) to a duration in seconds (inverse CDF).
    pub fn sample_s(&self, u: f64) -> f64 {
        let tail = -(1.0 - u).max(f64::MIN_POSITIVE).ln();
        match *self {
            DurationDist::Weibull { shape, scale_s } => scale_s * tail.powf(1.0 / shape),
            DurationDist::Exponential { mean_s } => mean_s * tail,
            DurationDist::Fixed { s } => s,
        }
    }

    /// The mean duration in seconds: what the stationary share of online nodes is made of.
    /// Weibull's is `scale · Γ(1 + 1/shape)` (libm's `tgamma`, the same bits everywhere).
    pub fn mean_s(&self) -> f64 {
        match *self {
            DurationDist::Weibull { shape, scale_s } => scale_s * libm::tgamma(1.0 + 1.0 / shape),
            DurationDist::Exponential { mean_s } => mean_s,
            DurationDist::Fixed { s } => s,
        }
    }

    fn validate(&self, what: &str) -> Result<(), SimError> {
        let ok = match *self {
            DurationDist::Weibull { shape, scale_s } => shape > 0.0 && scale_s > 0.0,
            DurationDist::Exponential { mean_s } => mean_s > 0.0,
            DurationDist::Fixed { s } => s > 0.0,
        };
        if ok {
            Ok(())
        } else {
            Err(SimError::Invalid(format!(
                "{what}: parameters must be positive"
            )))
        }
    }
}

/// Churn: nodes leave silently after a session and come back after an offline period.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ChurnSpec {
    /// Off by default.
    pub enabled: bool,
    /// Online session lengths.
    pub session: DurationDist,
    /// Offline period lengths.
    pub offline: DurationDist,
    /// Probability that a returning node keeps its id and routing table (else it comes back
    /// as a new node with a fresh id and an empty table).
    pub same_id: f64,
    /// Start the run in the stationary state of the on/off process: each honest node is
    /// online at start with probability `E[session] / (E[session] + E[offline])`, the
    /// others come back after a residual offline time. Without it every node starts online
    /// and the population drains toward that share while the lookups are measured, so the
    /// figures describe a network shrinking by the minute rather than a steady one.
    pub stationary_start: bool,
    /// A node that comes back with its id restarts as a real client does: a new core fed
    /// with what the old one would have saved (`Dht::saved_nodes`), then a bootstrap.
    /// Without it the old in-memory core carries on, with its table entries marked as
    /// answering and its queries of the last session still outstanding, which no
    /// restarted client has.
    pub restart_from_saved: bool,
}

impl ChurnSpec {
    /// The long-run share of time a node spends online: its chance of being online at a
    /// random moment of a stationary network.
    pub fn online_share(&self) -> f64 {
        let on = self.session.mean_s();
        let off = self.offline.mean_s();
        if on + off > 0.0 {
            on / (on + off)
        } else {
            1.0
        }
    }
}

impl Default for ChurnSpec {
    fn default() -> Self {
        ChurnSpec {
            enabled: false,
            session: DurationDist::Weibull {
                shape: 0.5,
                scale_s: 3600.0,
            },
            offline: DurationDist::Weibull {
                shape: 0.5,
                scale_s: 3600.0,
            },
            same_id: 0.8,
            stationary_start: true,
            restart_from_saved: true,
        }
    }
}

/// What the nodes do once the network has formed.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Distinct info-hashes announced.
    pub infohashes: u32,
    /// Nodes announcing each info-hash.
    pub announcers_per_infohash: u32,
    /// Announces are spread over this window.
    pub announce_window_s: f64,
    /// Announcers still online announce again this often.
    pub reannounce_s: f64,
    /// get_peers lookups measured.
    pub lookups: u32,
    /// Lookups start evenly spread over this window, after the announces.
    pub lookup_window_s: f64,
    /// Pause between the announce window and the lookup window.
    pub gap_s: f64,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        WorkloadSpec {
            infohashes: 100,
            announcers_per_infohash: 1,
            announce_window_s: 10.0,
            reannounce_s: 1800.0,
            lookups: 1000,
            lookup_window_s: 60.0,
            gap_s: 10.0,
        }
    }
}

/// The perfect-table reference run.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BaselineSpec {
    /// Also run the same network with perfect tables, no churn, no loss and no NAT, and
    /// report this scenario as ratios to it.
    pub enabled: bool,
    /// Lookups of the baseline run (fewer is enough for its medians).
    pub lookups: u32,
}

impl Default for BaselineSpec {
    fn default() -> Self {
        BaselineSpec {
            enabled: true,
            lookups: 2000,
        }
    }
}

impl Scenario {
    /// Parses and checks a scenario.
    pub fn from_toml_str(s: &str) -> Result<Scenario, SimError> {
        let sc: Scenario = toml::from_str(s).map_err(|e| SimError::Toml(e.to_string()))?;
        sc.validate()?;
        Ok(sc)
    }

    /// Reads, parses and checks a scenario file.
    pub fn from_path(path: &Path) -> Result<Scenario, SimError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Scenario::from_toml_str(&text)
    }

    /// Rejects values the simulator cannot run (so errors name the field, not a panic).
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |m: &str| Err(SimError::Invalid(m.to_string()));
        if self.nodes < 2 {
            return bad("nodes must be at least 2");
        }
        if self.nodes > 16_000_000 {
            return bad("nodes must be at most 16,000,000 (one IPv4 /8 of addresses)");
        }
        let n = &self.network;
        if !(n.rtt_median_ms > 0.0 && n.rtt_sigma >= 0.0) {
            return bad("network.rtt_median_ms must be > 0 and rtt_sigma >= 0");
        }
        if !(n.min_one_way_ms >= 0.001 && n.min_one_way_ms <= n.rtt_median_ms) {
            return bad("network.min_one_way_ms must be in [0.001, rtt_median_ms]");
        }
        if !(n.access_median_ms >= 0.0 && n.access_sigma >= 0.0 && n.jitter_ms >= 0.0) {
            return bad("network.access_median_ms, access_sigma and jitter_ms must be >= 0");
        }
        if !(0.0..1.0).contains(&n.loss) {
            return bad("network.loss must be in [0, 1)");
        }
        if !(0.0..=1.0).contains(&n.bep42_valid_share) {
            return bad("network.bep42_valid_share must be in [0, 1]");
        }
        if !(0.0..=1.0).contains(&n.nat_fraction) {
            return bad("network.nat_fraction must be in [0, 1]");
        }
        let j = &self.join;
        if j.duration_s < 0.0 || j.settle_s < 0.0 || j.refresh_after_join_s < 0.0 {
            return bad("join durations must be >= 0");
        }
        let cfg = self.dht.config();
        if cfg.k == 0 || cfg.alpha == 0 {
            return bad("dht.k and dht.alpha must be > 0");
        }
        if self.churn.enabled {
            self.churn.session.validate("churn.session")?;
            self.churn.offline.validate("churn.offline")?;
        }
        if !(0.0..=1.0).contains(&self.churn.same_id) {
            return bad("churn.same_id must be in [0, 1]");
        }
        let w = &self.workload;
        if w.lookups > 0 && (w.infohashes == 0 || w.announcers_per_infohash == 0) {
            return bad("lookups need infohashes and announcers_per_infohash > 0");
        }
        if w.announce_window_s < 0.0 || w.lookup_window_s < 0.0 || w.gap_s < 0.0 {
            return bad("workload windows must be >= 0");
        }
        if w.reannounce_s <= 0.0 {
            return bad("workload.reannounce_s must be > 0");
        }
        if !(0.0..1.0).contains(&self.attack.fraction) {
            return bad("attack.fraction must be in [0, 1)");
        }
        let every = self.attack.query_every_s;
        if every.is_nan() || every < 0.0 {
            return bad("attack.query_every_s must be >= 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaviour_names_are_their_serialised_form() {
        for b in [
            Behaviour::BogusNodes,
            Behaviour::ClaimClose,
            Behaviour::Drop,
            Behaviour::BadTokens,
            Behaviour::Mixed,
        ] {
            let json = serde_json::to_string(&b).unwrap();
            assert_eq!(json, format!("\"{b}\""));
        }
    }

    #[test]
    fn minimal_file_takes_defaults() {
        let s = Scenario::from_toml_str("name = \"x\"\nnodes = 10\n").unwrap();
        assert_eq!(s.seed, 1);
        assert_eq!(s.network, NetworkSpec::default());
        assert_eq!(s.join.mode, JoinMode::Bootstrap);
        assert_eq!(s.dht.config().k, 8);
    }

    #[test]
    fn sections_and_distributions_parse() {
        let s = Scenario::from_toml_str(
            r#"
            name = "c"
            nodes = 100
            [join]
            mode = "perfect"
            [dht]
            alpha = 8
            [churn]
            enabled = true
            session = { dist = "weibull", shape = 0.5, scale_s = 600.0 }
            offline = { dist = "exponential", mean_s = 60.0 }
            "#,
        )
        .unwrap();
        assert_eq!(s.join.mode, JoinMode::Perfect);
        assert_eq!(s.dht.config().alpha, 8);
        assert_eq!(s.churn.offline, DurationDist::Exponential { mean_s: 60.0 });
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        assert!(matches!(
            Scenario::from_toml_str("name = \"x\"\nnodes = 10\nnode = 3\n"),
            Err(SimError::Toml(_))
        ));
        assert!(matches!(
            Scenario::from_toml_str("name = \"x\"\nnodes = 10\n[network]\nloss = 1.5\n"),
            Err(SimError::Invalid(_))
        ));
        assert!(Scenario::from_toml_str("nodes = ").is_err());
    }

    #[test]
    fn duration_means_online_share_and_weibull_median() {
        // Γ(3) = 2: a Weibull of shape 0.5 has twice its scale as mean.
        let w = DurationDist::Weibull {
            shape: 0.5,
            scale_s: 900.0,
        };
        assert!((w.mean_s() - 1800.0).abs() < 1e-6, "{}", w.mean_s());
        assert!((DurationDist::Exponential { mean_s: 7.0 }.mean_s() - 7.0).abs() < 1e-12);
        let c = ChurnSpec {
            offline: DurationDist::Fixed { s: 5400.0 },
            session: w,
            ..ChurnSpec::default()
        };
        assert!((c.online_share() - 0.25).abs() < 1e-9);
        let d = DurationDist::Weibull {
            shape: 0.5,
            scale_s: 100.0,
        };
        // Median of Weibull(k, λ) is λ (ln 2)^(1/k).
        let m = d.sample_s(0.5);
        assert!((m - 100.0 * 2f64.ln().powi(2)).abs() < 1e-9, "{m}");
    }
}
