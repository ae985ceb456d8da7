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
mod workload;

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::dht::{Config, Dht, Time, Transmit};
use crate::id::Id;

use super::metrics::{LookupRecord, SuccessBin};
use super::model::{mix64, Addrs, Latency, Nat};
use super::progress::{Phase, ProgressUpdate};
use super::queue::{EventQueue, SimTime};
use super::scenario::{JoinMode, Scenario};

const US_PER_MS: u64 = 1000;
const US_PER_S: u64 = 1_000_000;
/// How long after the last lookup start the run may go on for stragglers (stock-regime
/// lookups with 20 s timeouts can take minutes).
const DRAIN_US: u64 = 600 * US_PER_S;
/// Progress is reported every this many events.
const PROGRESS_EVERY: u64 = 1 << 16;

fn secs(s: f64) -> SimTime {
    (s.max(0.0) * US_PER_S as f64) as SimTime
}

enum Ev {
    Packet { from: u32, to: u32, data: Vec<u8> },
    Timer { node: u32 },
    Arrive { node: u32 },
    Refresh { node: u32 },
    Announce { ih: u32, slot: u32 },
    Lookup { rec: u32 },
    Leave { node: u32 },
    Return { node: u32 },
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

struct Node {
    core: Core,
    /// Time of the earliest timer event queued for this node (`u64::MAX`: none).
    timer_at: SimTime,
    online: bool,
    /// Bumped whenever the node leaves, so lookups it ran can be told apart.
    epoch: u32,
    sent: u32,
    recv: u32,
}

impl Node {
    fn new(core: Core) -> Node {
        Node {
            core,
            timer_at: SimTime::MAX,
            online: false,
            epoch: 0,
            sent: 0,
            recv: 0,
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
}

/// The whole simulated network.
pub struct World<'p> {
    sc: Scenario,
    cfg: Config,
    n: u32,
    nodes: Vec<Node>,
    q: EventQueue<Ev>,
    rng: SmallRng,
    lat: Latency,
    nat: Vec<bool>,
    nats: Vec<Nat>,
    online: Vec<u32>,
    online_pos: Vec<u32>,
    infohashes: Vec<Id>,
    announcers: Vec<Vec<u32>>,
    records: Vec<LookupRecord>,
    rec_epoch: Vec<u32>,
    active: BTreeMap<(u32, u64), u32>,
    lookups_open: u32,
    last_lookup_at: SimTime,
    bins: Vec<SuccessBin>,
    bin_us: SimTime,
    lookups_start: SimTime,
    counters: Counters,
    progress: &'p mut dyn FnMut(ProgressUpdate),
    phase: Phase,
    /// Virtual time at which the run proper began (perfect tables: after their build).
    start_us: SimTime,
    /// Liars in the network.
    liars: u32,
    /// The `claim_close` attackers: the colluders they point to.
    colluders: Vec<u32>,
    /// Honest nodes' ids, sorted: what a `bad_tokens` attacker answers from.
    honest_sorted: Vec<(Id, u32)>,
    addrs: Addrs,
    /// When the honest online set last changed size (for `Counters::online_node_us`).
    online_since: SimTime,
}

impl<'p> World<'p> {
    /// Builds the world of `sc` (already carrying any overrides) at time 0.
    pub fn new(sc: &Scenario, progress: &'p mut dyn FnMut(ProgressUpdate)) -> World<'p> {
        let n = sc.nodes;
        let cfg = sc.dht.config();
        let mut rng = SmallRng::seed_from_u64(mix64(sc.seed));
        let addrs = Addrs::new(sc.network.public_ips);
        let nodes = (0..n)
            .map(|i| Node::new(Self::core_of(sc, &cfg, addrs, i, &mut rng)))
            .collect();
        let nat: Vec<bool> = if sc.network.nat_fraction > 0.0 {
            (0..n)
                .map(|_| rng.gen_bool(sc.network.nat_fraction))
                .collect()
        } else {
            Vec::new()
        };
        let nats = if nat.is_empty() {
            Vec::new()
        } else {
            vec![Nat::default(); n as usize]
        };
        let w = &sc.workload;
        let infohashes: Vec<Id> = (0..w.infohashes).map(|_| Id::random(&mut rng)).collect();
        let mut world = World {
            cfg,
            n,
            nodes,
            q: EventQueue::new(),
            rng,
            lat: Latency::new(&sc.network, sc.seed),
            nat,
            nats,
            online: Vec::with_capacity(n as usize),
            online_pos: vec![u32::MAX; n as usize],
            announcers: vec![Vec::new(); infohashes.len()],
            infohashes,
            records: Vec::with_capacity(w.lookups as usize),
            rec_epoch: Vec::with_capacity(w.lookups as usize),
            active: BTreeMap::new(),
            lookups_open: 0,
            last_lookup_at: 0,
            bins: Vec::new(),
            bin_us: 0,
            lookups_start: 0,
            counters: Counters::default(),
            progress,
            phase: Phase::Setup,
            start_us: 0,
            sc: sc.clone(),
            liars: 0,
            colluders: Vec::new(),
            honest_sorted: Vec::new(),
            addrs,
            online_since: 0,
        };
        world.index_liars();
        world
    }

    /// Slot `i`'s core. Its id is drawn from `rng` whether it lies or not, so every slot
    /// consumes the same draws and the ids do not depend on who lies; the core's own
    /// randomness comes from a seed derived from `i`, not from `rng`.
    fn core_of(sc: &Scenario, cfg: &Config, addrs: Addrs, i: u32, rng: &mut SmallRng) -> Core {
        let id = if addrs.is_public() {
            crate::dht::bep42::id_for_ip(addrs.addr_of(i).ip(), rng)
        } else {
            Id::random(rng)
        };
        match Lie::of_slot(&sc.attack, sc.seed, i) {
            Some(lie) => Core::Liar { id, lie },
            None => {
                let seed = mix64(sc.seed ^ (u64::from(i) << 20));
                Core::Honest(Box::new(Dht::new(id, cfg.clone(), seed, Time(0))))
            }
        }
    }

    fn is_attacker(&self, i: u32) -> bool {
        matches!(self.nodes[i as usize].core, Core::Liar { .. })
    }

    fn dht_mut(&mut self, i: u32) -> Option<&mut Dht> {
        self.nodes[i as usize].dht_mut()
    }

    fn now_time(&self) -> Time {
        Time(self.q.now() / US_PER_MS)
    }

    fn set_online(&mut self, i: u32, on: bool) {
        let attacker = self.is_attacker(i);
        let node = &mut self.nodes[i as usize];
        if node.online == on {
            return;
        }
        node.online = on;
        if attacker {
            // Attackers receive but are never picked as origins, announcers or contacts.
            return;
        }
        self.count_online_time();
        if on {
            self.online_pos[i as usize] = self.online.len() as u32;
            self.online.push(i);
        } else {
            let p = self.online_pos[i as usize] as usize;
            self.online.swap_remove(p);
            if let Some(&moved) = self.online.get(p) {
                self.online_pos[moved as usize] = p as u32;
            }
            self.online_pos[i as usize] = u32::MAX;
        }
    }

    /// Adds the honest node-time online since the last change of the online set.
    fn count_online_time(&mut self) {
        let now = self.q.now();
        let dt = now.saturating_sub(self.online_since);
        self.counters.online_node_us += u128::from(dt) * self.online.len() as u128;
        self.online_since = now;
    }

    fn random_online(&mut self) -> Option<u32> {
        if self.online.is_empty() {
            return None;
        }
        let k = self.rng.gen_range(0..self.online.len());
        Some(self.online[k])
    }

    /// Up to `count` distinct random online nodes' addresses.
    fn contacts(&mut self, count: u32) -> Vec<SocketAddrV4> {
        let mut out = Vec::new();
        for _ in 0..count.saturating_mul(2) {
            if out.len() >= count as usize {
                break;
            }
            if let Some(c) = self.random_online() {
                let a = self.addrs.addr_of(c);
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        out
    }

    /// Runs the scenario to its end.
    pub fn run(mut self) -> Outcome {
        let join_end = match self.sc.join.mode {
            JoinMode::Perfect => {
                self.phase = Phase::Build;
                self.build_perfect();
                self.q.now()
            }
            JoinMode::Bootstrap => self.schedule_arrivals(),
        };
        self.schedule_first_leaves(join_end);
        self.schedule_workload(join_end);
        self.phase = match self.sc.join.mode {
            JoinMode::Bootstrap => Phase::Join,
            JoinMode::Perfect => Phase::Settle,
        };
        self.event_loop();
        self.report_progress();
        self.finish()
    }

    /// Processes events until the last lookup is done (or the drain time is up).
    fn event_loop(&mut self) {
        let end_cap = self.last_lookup_at + DRAIN_US;
        while let Some((at, ev)) = self.q.pop() {
            if at > end_cap || (self.lookups_open == 0 && at > self.last_lookup_at) {
                break;
            }
            self.counters.events += 1;
            if self.counters.events.is_multiple_of(PROGRESS_EVERY) {
                self.report_progress();
            }
            self.dispatch(at, ev);
        }
    }

    fn report_progress(&mut self) {
        let u = ProgressUpdate {
            phase: self.phase,
            sim_seconds: self.q.now() as f64 / US_PER_S as f64,
            lookups_done: self.sc.workload.lookups - self.lookups_open,
            lookups_total: self.sc.workload.lookups,
            online: self.online.len() as u32,
            events: self.counters.events,
        };
        (self.progress)(u);
    }

    fn dispatch(&mut self, at: SimTime, ev: Ev) {
        match ev {
            Ev::Packet { from, to, data } => self.deliver(from, to, &data),
            Ev::Timer { node } => self.timer(at, node),
            Ev::Arrive { node } => self.arrive(node),
            Ev::Refresh { node } => self.refresh(node),
            Ev::Announce { ih, slot } => self.announce(ih, slot),
            Ev::Lookup { rec } => self.start_lookup(rec),
            Ev::Leave { node } => self.leave(node),
            Ev::Return { node } => self.come_back(node),
            Ev::Bin => self.open_bin(),
        }
    }

    /// A timer event: stale ones (the node left, or re-armed it earlier) are ignored.
    fn timer(&mut self, at: SimTime, node: u32) {
        let now = self.now_time();
        let nd = &mut self.nodes[node as usize];
        if !nd.online || nd.timer_at != at {
            return;
        }
        nd.timer_at = SimTime::MAX;
        let Some(dht) = nd.dht_mut() else {
            return;
        };
        dht.handle_timeout(now);
        self.drain(node, true);
    }

    /// Sends what node `i` wants sent, handles its events, and re-arms its timer.
    fn drain(&mut self, i: u32, after_timeout: bool) {
        while let Some(t) = self.dht_mut(i).and_then(|d| d.poll_transmit()) {
            self.send(i, t);
        }
        while let Some(e) = self.dht_mut(i).and_then(|d| d.poll_event()) {
            self.on_event(i, e);
        }
        let now = self.q.now();
        let nd = &mut self.nodes[i as usize];
        if !nd.online {
            return;
        }
        let Some(t) = nd.dht_mut().and_then(|d| d.poll_timeout()) else {
            return;
        };
        let mut at = t.0.saturating_mul(US_PER_MS);
        if at <= now {
            // Due now; right after handle_timeout it must be a later millisecond, or a
            // core that keeps asking for "now" would spin the loop.
            at = if after_timeout {
                (now / US_PER_MS + 1) * US_PER_MS
            } else {
                now
            };
        }
        if at < nd.timer_at {
            nd.timer_at = at;
            self.q.push(at, Ev::Timer { node: i });
        }
    }

    fn send(&mut self, from: u32, t: Transmit) {
        self.counters.datagrams += 1;
        self.nodes[from as usize].sent += 1;
        let Some(to) = self.addrs.node_of(&t.to, self.n) else {
            self.counters.misaddressed += 1;
            return;
        };
        let now = self.q.now();
        if !self.nat.is_empty() && self.nat[from as usize] {
            let now_s = (now / US_PER_S) as u32;
            let timeout = self.sc.network.nat_timeout_s as u32;
            self.nats[from as usize].opened(to, now_s, timeout);
        }
        if self.sc.network.loss > 0.0 && self.rng.gen::<f64>() < self.sc.network.loss {
            self.counters.lost += 1;
            return;
        }
        let at = now + self.lat.one_way_us(from, to);
        self.q.push(
            at,
            Ev::Packet {
                from,
                to,
                data: t.data,
            },
        );
    }

    fn deliver(&mut self, from: u32, to: u32, data: &[u8]) {
        if self.is_attacker(to) {
            self.counters.to_attackers += 1;
            self.nodes[to as usize].recv += 1;
            self.attacker_reply(from, to, data);
            return;
        }
        if !self.nodes[to as usize].online {
            self.counters.to_offline += 1;
            return;
        }
        if !self.nat.is_empty() && self.nat[to as usize] {
            let now_s = (self.q.now() / US_PER_S) as u32;
            if !self.nats[to as usize].admits(from, now_s) {
                self.counters.nat_blocked += 1;
                return;
            }
        }
        let now = self.now_time();
        let from_addr = self.addrs.addr_of(from);
        let nd = &mut self.nodes[to as usize];
        nd.recv += 1;
        if let Some(dht) = nd.dht_mut() {
            dht.handle_datagram(now, from_addr, data);
        }
        self.drain(to, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_model_drops_the_configured_fraction() {
        let mut rng = SmallRng::seed_from_u64(5);
        let lost = (0..100_000).filter(|_| rng.gen::<f64>() < 0.1).count();
        assert!((9_500..10_500).contains(&lost), "{lost}");
    }

    #[test]
    fn liars_get_the_ids_they_would_have_as_cores() {
        let toml = "name = \"t\"\nnodes = 300\n[join]\nmode = \"perfect\"\n\
                    [attack]\nfraction = 0.3\n";
        let sc = Scenario::from_toml_str(toml).unwrap();
        let mut p = |_: ProgressUpdate| {};
        let w = World::new(&sc, &mut p);
        let mut rng = SmallRng::seed_from_u64(mix64(sc.seed));
        let mut liars = 0;
        for nd in &w.nodes {
            assert_eq!(nd.id(), Id::random(&mut rng));
            liars += u32::from(nd.dht().is_none());
        }
        assert_eq!(liars, w.liars);
        assert!((60..120).contains(&liars), "{liars}");
    }
}
