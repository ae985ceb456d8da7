//! The simulated world and its event loop: every node slot, the queue that drives them, the
//! datagrams between them and the set of online nodes. The other jobs are `impl World`
//! blocks of their own: the perfect-table build (`build`), nodes coming and going
//! (`churn`), announces, lookups and their records (`workload`), and the lying nodes
//! (`attack`).
//!
//! One thread, one event queue, one seeded RNG consumed in event order: the same scenario
//! and seed give the same sequence of calls into every core, hence the same output.
//! The types live here and the jobs only add methods, so the submodules depend on this one
//! and never the other way round.

mod attack;
mod build;
mod churn;
mod shard;
mod workload;

use std::net::SocketAddrV4;

use rand::{Rng, SeedableRng};
use rand_xoshiro::{SplitMix64, Xoshiro256PlusPlus};

use crate::dht::{Config, Dht, Time};
use crate::id::Id;

use super::metrics::{LookupRecord, SuccessBin};
use super::model::{bep42_valid, mix64, Addrs, Latency, Nat};
use super::progress::{Phase, ProgressUpdate};
use super::queue::{EventQueue, SimTime};
use super::scenario::{JoinMode, Scenario};

use shard::{Note, Shard};

const US_PER_MS: u64 = 1000;
const US_PER_S: u64 = 1_000_000;
/// How long after the last lookup start the run may go on for stragglers (stock-regime
/// lookups with 20 s timeouts can take minutes).
const DRAIN_US: u64 = 600 * US_PER_S;
/// Windows whose predecessor ran fewer events than this run on the coordinator's thread:
/// waking the pool costs more than such a window's work.
const PARALLEL_MIN_EVENTS: u64 = 256;
/// Progress is reported every this many events.
const PROGRESS_EVERY: u64 = 1 << 16;

fn secs(s: f64) -> SimTime {
    (s.max(0.0) * US_PER_S as f64) as SimTime
}

/// The world's own random stream (set-up draws and the workload's picks): xoshiro256++ by
/// name, so a seed gives the same network on every machine and rand version.
type WorldRng = Xoshiro256PlusPlus;

/// What happens to one node; run by the shard that owns the node, in (time, tie) order.
enum NodeEv {
    /// A datagram from `from` arrives.
    Packet { from: u32, data: Vec<u8> },
    /// The core's timer (stale when the node re-armed it or left since).
    Timer,
    /// A protocol-bootstrap join.
    Arrive,
    /// The refresh some time after a bootstrap join.
    Refresh,
    /// The node goes offline.
    Leave,
    /// The node comes back.
    Return,
    /// A lying node's periodic queries to random online nodes (bootstrap join).
    Probe,
}

/// What happens to the network as a whole; run by the coordinator between windows, since
/// it picks among all online nodes and keeps the records.
enum GlobalEv {
    Announce { ih: u32, slot: u32 },
    Lookup { rec: u32 },
    Bin,
}

/// What one lying node does (the scenario's `mixed` is resolved per node into one of these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lie {
    /// Answers with nodes that do not exist.
    BogusNodes,
    /// Claims to be next to every target, with colluders next to it too.
    ClaimClose,
    /// Never answers.
    Drop,
    /// Answers honestly, with tokens that do not work.
    BadTokens,
}

/// What runs in a node slot. Liars are scripted responders: they need only the id that
/// tables hold for them, not a core of their own.
enum Core {
    /// The production DHT core (boxed: a liar slot then stays small).
    Honest(Box<Dht>),
    /// A lying node.
    Liar { id: Id, lie: Lie },
}

/// A measured lookup a node is running: what its events need of the record, so a shard
/// never reads the records the coordinator keeps.
#[derive(Clone, Copy, Debug)]
struct Running {
    lookup: u64,
    rec: u32,
    ih: u32,
    start_ms: u64,
    /// Its first announced peer came in (later ones change nothing).
    seen_peer: bool,
}

struct Node {
    core: Core,
    /// Time of the earliest timer event queued for this node (`u64::MAX`: none).
    timer_at: SimTime,
    online: bool,
    /// Bumped whenever the node leaves, so lookups it ran can be told apart.
    epoch: u32,
    sent: u32,
    recv: u32,
    /// Events this node caused so far: with the node's index, the tie-break of every event
    /// it queues, so equal-time events run in an order no thread schedule can change.
    seq: u32,
    /// The node's own random stream (loss of what it sends, its churn, its contacts): a
    /// named generator, one per node, so draws do not depend on which thread ran whom.
    rng: SplitMix64,
    /// Measured lookups it runs.
    running: Vec<Running>,
    /// Its NAT's open mappings (nodes behind one only).
    nat: Option<Nat>,
}

impl Node {
    fn new(core: Core, rng: SplitMix64, behind_nat: bool) -> Node {
        Node {
            core,
            timer_at: SimTime::MAX,
            online: false,
            epoch: 0,
            sent: 0,
            recv: 0,
            seq: 0,
            rng,
            running: Vec::new(),
            nat: behind_nat.then(Nat::default),
        }
    }

    fn id(&self) -> Id {
        match &self.core {
            Core::Honest(d) => d.id(),
            Core::Liar { id, .. } => *id,
        }
    }

    fn dht(&self) -> Option<&Dht> {
        match &self.core {
            Core::Honest(d) => Some(d),
            Core::Liar { .. } => None,
        }
    }

    fn dht_mut(&mut self) -> Option<&mut Dht> {
        match &mut self.core {
            Core::Honest(d) => Some(d),
            Core::Liar { .. } => None,
        }
    }

    fn lie(&self) -> Option<Lie> {
        match self.core {
            Core::Honest(_) => None,
            Core::Liar { lie, .. } => Some(lie),
        }
    }

    /// The tie-break of the next event node `i` causes.
    fn next_tie(&mut self, i: u32) -> u64 {
        self.seq = self.seq.wrapping_add(1);
        (u64::from(i) << 32) | u64::from(self.seq)
    }
}

/// Network-level counters of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Events processed.
    pub events: u64,
    /// Datagrams sent by all nodes.
    pub datagrams: u64,
    /// Datagrams lost to the loss model.
    pub lost: u64,
    /// Datagrams that reached an offline node.
    pub to_offline: u64,
    /// Datagrams a NAT dropped.
    pub nat_blocked: u64,
    /// Datagrams to addresses outside the simulation.
    pub misaddressed: u64,
    /// Datagrams that reached an attacker.
    pub to_attackers: u64,
    /// Refresh queries of the honest cores (`Stats::refresh_queries`), cores replaced by a
    /// new id included.
    pub refresh_queries: u64,
    /// Honest node-microseconds online: the denominator of refresh queries per node-hour.
    pub online_node_us: u128,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.events += o.events;
        self.datagrams += o.datagrams;
        self.lost += o.lost;
        self.to_offline += o.to_offline;
        self.nat_blocked += o.nat_blocked;
        self.misaddressed += o.misaddressed;
        self.to_attackers += o.to_attackers;
        self.refresh_queries += o.refresh_queries;
        self.online_node_us += o.online_node_us;
    }
}

/// What a finished run hands to the report.
pub struct Outcome {
    /// One record per measured lookup.
    pub records: Vec<LookupRecord>,
    /// Success rate over time.
    pub bins: Vec<SuccessBin>,
    /// Network counters.
    pub counters: Counters,
    /// Virtual time simulated after set-up (a perfect build counts as set-up), in seconds.
    pub sim_seconds: f64,
    /// Routing-table sizes of the nodes online at the end.
    pub table_sizes: Vec<f64>,
    /// Datagrams sent plus received per online node per second of virtual time.
    pub traffic: Vec<f64>,
    /// Nodes online at the end.
    pub online_at_end: u32,
    /// Attackers in the network.
    pub attackers: u32,
    /// Fraction of the routing-table entries of the honest nodes online at the end that name
    /// a node online at that address under that id (1.0: no dead or stale entry).
    pub table_alive: f64,
    /// Wall seconds the shards spent running windows, summed over shards: the work that
    /// spreads over threads (not deterministic).
    pub parallel_work_s: f64,
    /// Wall seconds of everything else (set-up, perfect build, the coordinator between
    /// windows, the end): what stays on one thread (not deterministic).
    pub serial_s: f64,
}

/// What every shard reads and nobody writes while a window runs; the coordinator changes
/// it between windows (the online set, the announcers).
struct Shared {
    sc: Scenario,
    cfg: Config,
    n: u32,
    lat: Latency,
    addrs: Addrs,
    /// Honest nodes online, as of the last window's end.
    online: Vec<u32>,
    online_pos: Vec<u32>,
    infohashes: Vec<Id>,
    announcers: Vec<Vec<u32>>,
    /// The `claim_close` attackers: the colluders they point to.
    colluders: Vec<u32>,
    /// Honest nodes' ids, sorted: what a `bad_tokens` attacker answers from.
    honest_sorted: Vec<(Id, u32)>,
    /// Node slots per shard (the last may hold fewer).
    per_shard: u32,
}

impl Shared {
    fn shard_of(&self, node: u32) -> usize {
        (node / self.per_shard) as usize
    }
}

/// The whole simulated network: set up in one piece, then cut into shards of consecutive
/// node slots that run the same window of virtual time on as many threads.
///
/// Conservative parallel simulation: no datagram arrives sooner than the latency floor
/// after it is sent, so every node may run a window of that length without hearing from
/// the others; what they send is delivered between windows. Each node's events run in
/// (time, tie) order whatever thread runs it, every random draw comes from the stream of
/// the node (or of the coordinator) that makes it, and what the coordinator gathers from
/// shards is sorted before use: the output does not depend on the thread count.
pub struct World<'p> {
    sh: Shared,
    /// All node slots while the world is set up (moved into `shards` when it runs).
    nodes: Vec<Node>,
    /// Node events queued during set-up, for the shards.
    pending: Vec<(SimTime, u32, NodeEv)>,
    shards: Vec<Shard>,
    threads: usize,
    /// The worker threads (none when running on one thread).
    pool: Option<rayon::ThreadPool>,
    gq: EventQueue<GlobalEv>,
    /// The coordinator's clock: the start of the current window or global event.
    now: SimTime,
    rng: WorldRng,
    records: Vec<LookupRecord>,
    rec_epoch: Vec<u32>,
    lookups_open: u32,
    last_lookup_at: SimTime,
    bins: Vec<SuccessBin>,
    bin_us: SimTime,
    lookups_start: SimTime,
    /// The coordinator's counters (shards keep their own; summed at the end).
    counters: Counters,
    progress: &'p mut dyn FnMut(ProgressUpdate),
    phase: Phase,
    /// Virtual time at which the run proper began (perfect tables: after their build).
    start_us: SimTime,
    /// Liars in the network.
    liars: u32,
    /// When the honest online set last changed size (for `Counters::online_node_us`).
    online_since: SimTime,
    /// The shards' notes of one window, gathered and sorted (kept to reuse its memory).
    notes: Vec<Note>,
    next_progress: u64,
    /// When the world was created (for `Outcome::serial_s`).
    created: std::time::Instant,
    /// Wall time spent inside parallel windows, as seen by the coordinator.
    in_windows: std::time::Duration,
    /// Set-up only: honest nodes that start offline (a stationary churn start); they come
    /// back through a `Return` instead of arriving or going online with the build.
    offline_at_start: Vec<bool>,
}

impl<'p> World<'p> {
    /// Builds the world of `sc` (already carrying any overrides) at time 0, to run on
    /// `threads` threads (the output is the same for every count).
    pub fn new(
        sc: &Scenario,
        threads: usize,
        progress: &'p mut dyn FnMut(ProgressUpdate),
    ) -> World<'p> {
        let n = sc.nodes;
        let cfg = sc.dht.config();
        let mut rng = WorldRng::seed_from_u64(mix64(sc.seed));
        let addrs = Addrs::new(sc.network.public_ips, sc.seed);
        let cores: Vec<Core> = (0..n)
            .map(|i| Self::core_of(sc, &cfg, addrs, i, &mut rng))
            .collect();
        let cores_kind: Vec<bool> = cores.iter().map(|c| matches!(c, Core::Honest(_))).collect();
        let nat_fraction = sc.network.nat_fraction;
        let nodes = cores
            .into_iter()
            .zip(0..n)
            .map(|(core, i)| {
                let behind = nat_fraction > 0.0 && rng.gen_bool(nat_fraction);
                let stream =
                    SplitMix64::seed_from_u64(mix64(sc.seed ^ 0x6e6f_6465 ^ (u64::from(i) << 24)));
                Node::new(core, stream, behind)
            })
            .collect();
        let w = &sc.workload;
        let infohashes: Vec<Id> = (0..w.infohashes).map(|_| Id::random(&mut rng)).collect();
        let offline_at_start = Self::draw_offline_at_start(sc, &cores_kind, &mut rng);
        let threads = threads.clamp(1, 256);
        let mut world = World {
            sh: Shared {
                sc: sc.clone(),
                cfg,
                n,
                lat: Latency::new(&sc.network, sc.seed),
                addrs,
                online: Vec::with_capacity(n as usize),
                online_pos: vec![u32::MAX; n as usize],
                announcers: vec![Vec::new(); infohashes.len()],
                infohashes,
                colluders: Vec::new(),
                honest_sorted: Vec::new(),
                per_shard: n.div_ceil(threads as u32).max(1),
            },
            nodes,
            pending: Vec::new(),
            shards: Vec::new(),
            threads,
            pool: (threads > 1)
                .then(|| {
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .ok()
                })
                .flatten(),
            gq: EventQueue::new(),
            now: 0,
            rng,
            records: Vec::with_capacity(w.lookups as usize),
            rec_epoch: Vec::with_capacity(w.lookups as usize),
            lookups_open: 0,
            last_lookup_at: 0,
            bins: Vec::new(),
            bin_us: 0,
            lookups_start: 0,
            counters: Counters::default(),
            progress,
            phase: Phase::Setup,
            start_us: 0,
            liars: 0,
            online_since: 0,
            notes: Vec::new(),
            next_progress: PROGRESS_EVERY,
            created: std::time::Instant::now(),
            in_windows: std::time::Duration::ZERO,
            offline_at_start,
        };
        world.index_liars();
        world
    }

    /// Slot `i`'s core. Its id is drawn from `rng` whether it lies or not, so every slot
    /// consumes the same draws and the ids do not depend on who lies; the core's own
    /// randomness comes from a seed derived from `i`, not from `rng`.
    fn core_of(sc: &Scenario, cfg: &Config, addrs: Addrs, i: u32, rng: &mut WorldRng) -> Core {
        let id = node_id(sc, addrs, i, rng);
        match Lie::of_slot(&sc.attack, sc.seed, i) {
            Some(lie) => Core::Liar { id, lie },
            None => {
                let seed = mix64(sc.seed ^ (u64::from(i) << 20));
                Core::Honest(Box::new(Dht::new(id, cfg.clone(), seed, Time(0))))
            }
        }
    }

    /// Which honest nodes start offline: with churn and `stationary_start`, each is online
    /// with the stationary share `p` (drawn from `rng` after every other set-up draw, so
    /// turning it off leaves the rest of the network as it was).
    fn draw_offline_at_start(sc: &Scenario, honest: &[bool], rng: &mut WorldRng) -> Vec<bool> {
        if !(sc.churn.enabled && sc.churn.stationary_start) {
            return vec![false; honest.len()];
        }
        let p = sc.churn.online_share().clamp(0.0, 1.0);
        honest.iter().map(|&h| h && !rng.gen_bool(p)).collect()
    }

    /// Whether node `i` starts offline (set-up only).
    fn starts_offline(&self, i: u32) -> bool {
        self.offline_at_start
            .get(i as usize)
            .copied()
            .unwrap_or(false)
    }

    fn is_attacker(&self, i: u32) -> bool {
        matches!(self.nodes[i as usize].core, Core::Liar { .. })
    }

    /// Node `i`, wherever it lives now (set-up vector or shard).
    fn node(&self, i: u32) -> &Node {
        if self.shards.is_empty() {
            &self.nodes[i as usize]
        } else {
            self.shards[self.sh.shard_of(i)].node(i)
        }
    }

    /// Queues a node event during set-up.
    fn schedule(&mut self, at: SimTime, node: u32, ev: NodeEv) {
        self.pending.push((at, node, ev));
    }

    /// Adds the node-time the listed set was online since the last count, up to `at`.
    fn count_online_time(&mut self, at: SimTime) {
        let dt = at.saturating_sub(self.online_since);
        self.counters.online_node_us += u128::from(dt) * self.sh.online.len() as u128;
        self.online_since = self.online_since.max(at);
    }

    /// Records that honest node `i` came online or left at `at` in the set the workload
    /// picks from.
    fn set_listed(&mut self, at: SimTime, i: u32, on: bool) {
        let listed = self.sh.online_pos[i as usize] != u32::MAX;
        if listed == on {
            return;
        }
        self.count_online_time(at);
        let sh = &mut self.sh;
        if on {
            sh.online_pos[i as usize] = sh.online.len() as u32;
            sh.online.push(i);
        } else {
            let p = sh.online_pos[i as usize] as usize;
            sh.online.swap_remove(p);
            if let Some(&moved) = sh.online.get(p) {
                sh.online_pos[moved as usize] = p as u32;
            }
            sh.online_pos[i as usize] = u32::MAX;
        }
    }

    fn random_online(&mut self) -> Option<u32> {
        if self.sh.online.is_empty() {
            return None;
        }
        let k = self.rng.gen_range(0..self.sh.online.len());
        Some(self.sh.online[k])
    }

    /// Runs the scenario to its end.
    pub fn run(mut self) -> Outcome {
        let join_end = match self.sh.sc.join.mode {
            JoinMode::Perfect => {
                self.phase = Phase::Build;
                self.build_perfect();
                self.now
            }
            JoinMode::Bootstrap => self.schedule_arrivals(),
        };
        self.schedule_first_leaves(join_end);
        self.schedule_workload(join_end);
        self.phase = match self.sh.sc.join.mode {
            JoinMode::Bootstrap => Phase::Join,
            JoinMode::Perfect => Phase::Settle,
        };
        self.cut_into_shards();
        if self.sh.sc.join.mode == JoinMode::Perfect {
            self.start_perfect();
        }
        self.event_loop();
        self.report_progress();
        self.finish()
    }

    /// Moves the nodes and the events queued for them into the shards.
    fn cut_into_shards(&mut self) {
        let per = self.sh.per_shard as usize;
        let mut nodes = std::mem::take(&mut self.nodes).into_iter();
        let mut base = 0u32;
        while base < self.sh.n {
            let chunk: Vec<Node> = nodes.by_ref().take(per).collect();
            let len = chunk.len() as u32;
            self.shards.push(Shard::new(base, chunk, self.threads));
            base += len;
        }
        for (at, node, ev) in std::mem::take(&mut self.pending) {
            let s = self.sh.shard_of(node);
            self.shards[s].push_own(at, node, ev);
        }
    }

    /// The perfect network goes online at once at the end of its build.
    fn start_perfect(&mut self) {
        let now = self.now;
        for i in 0..self.sh.n {
            if self.starts_offline(i) {
                continue;
            }
            let s = self.sh.shard_of(i);
            let honest = self.shards[s].bring_online(&self.sh, now, i);
            if honest {
                self.set_listed(now, i, true);
            }
        }
        self.exchange();
    }

    /// Windows and global events until the last lookup is done (or the drain time is up).
    fn event_loop(&mut self) {
        let end_cap = self.last_lookup_at + DRAIN_US;
        let lookahead = self.sh.lat.floor_us();
        let pool = self.pool.take();
        let mut last_window = u64::MAX;
        loop {
            let local = self.shards.iter_mut().filter_map(|s| s.next_time()).min();
            let global = self.gq.peek_time();
            let Some(t) = local.into_iter().chain(global).min() else {
                break;
            };
            if t > end_cap || (self.lookups_open == 0 && t > self.last_lookup_at) {
                break;
            }
            self.now = t;
            if global == Some(t) {
                // Global events first at equal times; then the window that starts there.
                while self.gq.peek_time() == Some(t) {
                    let Some((_, ev)) = self.gq.pop() else { break };
                    self.counters.events += 1;
                    self.dispatch_global(ev);
                }
                self.exchange();
                continue;
            }
            let end = (t + lookahead).min(global.unwrap_or(SimTime::MAX));
            let sh = &self.sh;
            let window_started = std::time::Instant::now();
            let before = self.events();
            // A light window costs less on this thread than waking the others (which thread
            // runs a shard changes nothing in the output, so this is free to decide).
            match pool.as_ref().filter(|_| last_window >= PARALLEL_MIN_EVENTS) {
                Some(p) => {
                    use rayon::prelude::*;
                    let shards = &mut self.shards;
                    p.install(|| shards.par_iter_mut().for_each(|s| s.run_until(sh, end)));
                }
                None => self.shards.iter_mut().for_each(|s| s.run_until(sh, end)),
            }
            self.in_windows += window_started.elapsed();
            self.exchange();
            self.apply_notes();
            let events = self.events();
            last_window = events - before;
            if events >= self.next_progress {
                self.next_progress = events + PROGRESS_EVERY;
                self.report_progress();
            }
        }
    }

    /// Delivers what the shards queued for each other.
    fn exchange(&mut self) {
        let k = self.shards.len();
        for from in 0..k {
            for to in 0..k {
                if from == to {
                    continue;
                }
                let mut batch = self.shards[from].take_outbox(to);
                if batch.is_empty() {
                    continue;
                }
                let dest = &mut self.shards[to];
                for (at, tie, node, ev) in batch.drain(..) {
                    dest.push_keyed(at, tie, node, ev);
                }
                self.shards[from].return_outbox(to, batch);
            }
        }
    }

    /// What the shards noted for the coordinator, in an order that does not depend on the
    /// shards: online changes by (time, node), each node's in its own order.
    fn apply_notes(&mut self) {
        let mut notes = std::mem::take(&mut self.notes);
        for s in self.shards.iter_mut() {
            notes.append(&mut s.notes);
        }
        notes.sort_by_key(|n| n.order_key());
        for note in notes.drain(..) {
            match note {
                Note::Online { at, node, on } => self.set_listed(at, node, on),
                Note::FirstPeer { rec, ms, msgs } => {
                    let r = &mut self.records[rec as usize];
                    if r.first_peer_ms.is_none() {
                        r.first_peer_ms = Some(ms);
                        r.messages_to_first_peer = msgs;
                    }
                }
                Note::Done { rec, ms, stats } => {
                    let r = &mut self.records[rec as usize];
                    r.done_ms = Some(ms);
                    r.messages = stats.queried;
                    r.responses = stats.responses;
                    r.timeouts = stats.timeouts;
                    if r.first_peer_ms.is_some() {
                        r.hops = stats.first_peer_hops;
                    }
                    self.lookups_open -= 1;
                }
                Note::Aborted { rec } => {
                    self.records[rec as usize].aborted = true;
                    self.lookups_open -= 1;
                }
            }
        }
        self.notes = notes;
    }

    fn events(&self) -> u64 {
        self.counters.events + self.shards.iter().map(|s| s.counters.events).sum::<u64>()
    }

    fn report_progress(&mut self) {
        let u = ProgressUpdate {
            phase: self.phase,
            sim_seconds: self.now as f64 / US_PER_S as f64,
            lookups_done: self.sh.sc.workload.lookups - self.lookups_open,
            lookups_total: self.sh.sc.workload.lookups,
            online: self.sh.online.len() as u32,
            events: self.events(),
        };
        (self.progress)(u);
    }

    fn dispatch_global(&mut self, ev: GlobalEv) {
        match ev {
            GlobalEv::Announce { ih, slot } => self.announce(ih, slot),
            GlobalEv::Lookup { rec } => self.start_lookup(rec),
            GlobalEv::Bin => self.open_bin(),
        }
    }
}

/// A fresh id for node `i`: BEP 42-valid for its address when its addresses are public
/// and its client is one of the `bep42_valid_share` that follow BEP 42, else random.
fn node_id(sc: &Scenario, addrs: Addrs, i: u32, rng: &mut impl Rng) -> Id {
    let share = sc.network.bep42_valid_share;
    if addrs.is_public() && bep42_valid(sc.seed, i, share) {
        crate::dht::bep42::id_for_ip(addrs.addr_of(i).ip(), rng)
    } else {
        Id::random(rng)
    }
}

/// Up to `count` distinct random online nodes' addresses from `online`, drawn from `rng`.
fn pick_contacts(
    online: &[u32],
    addrs: &Addrs,
    count: u32,
    rng: &mut impl Rng,
) -> Vec<SocketAddrV4> {
    let mut out = Vec::new();
    if online.is_empty() {
        return out;
    }
    for _ in 0..count.saturating_mul(2) {
        if out.len() >= count as usize {
            break;
        }
        let c = online[rng.gen_range(0..online.len())];
        let a = addrs.addr_of(c);
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_model_drops_the_configured_fraction() {
        let mut rng = SplitMix64::seed_from_u64(5);
        let lost = (0..100_000).filter(|_| rng.gen::<f64>() < 0.1).count();
        assert!((9_500..10_500).contains(&lost), "{lost}");
    }

    #[test]
    fn a_share_of_honest_ids_is_bep42_valid() {
        let toml = "name = \"t\"\nnodes = 3000\n[network]\npublic_ips = true\n\
                    bep42_valid_share = 0.4\n";
        let sc = Scenario::from_toml_str(toml).expect("scenario parses");
        let mut p = |_: ProgressUpdate| {};
        let w = World::new(&sc, 1, &mut p);
        let valid = (0..sc.nodes)
            .filter(|&i| {
                crate::dht::bep42::is_valid(&w.nodes[i as usize].id(), w.sh.addrs.addr_of(i).ip())
            })
            .count();
        assert!((1_080..1_320).contains(&valid), "{valid} of 3000");
        for i in 0..sc.nodes {
            let ok =
                crate::dht::bep42::is_valid(&w.nodes[i as usize].id(), w.sh.addrs.addr_of(i).ip());
            assert_eq!(ok, bep42_valid(sc.seed, i, 0.4), "node {i}");
        }
    }

    #[test]
    fn liars_get_the_ids_they_would_have_as_cores() {
        let toml = "name = \"t\"\nnodes = 300\n[join]\nmode = \"perfect\"\n\
                    [attack]\nfraction = 0.3\n";
        let sc = Scenario::from_toml_str(toml).unwrap();
        let mut p = |_: ProgressUpdate| {};
        let w = World::new(&sc, 1, &mut p);
        let mut rng = WorldRng::seed_from_u64(mix64(sc.seed));
        let mut liars = 0;
        for nd in &w.nodes {
            assert_eq!(nd.id(), Id::random(&mut rng));
            liars += u32::from(nd.dht().is_none());
        }
        assert_eq!(liars, w.liars);
        assert!((60..120).contains(&liars), "{liars}");
    }
}
