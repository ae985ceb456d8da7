//! The simulated world: every node's DHT core, the event loop that drives them, and the
//! workload and churn that act on them.
//!
//! One thread, one event queue, one seeded RNG consumed in event order: the same scenario
//! and seed give the same sequence of calls into every core, hence the same output.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use rand::rngs::SmallRng;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};

use crate::dht::{AnnounceSpec, Config, Dht, Event, Time, Transmit};
use crate::id::Id;
use crate::krpc::{Body, ErrorCode, KrpcError, Message, Method, NodeInfo, Response};

use super::metrics::{LookupRecord, SuccessBin};
use super::net::{mix64, Addrs, Latency, Nat, PORT};
use super::queue::{EventQueue, SimTime};
use super::scenario::{Behaviour, DurationDist, JoinMode, PerfectPick, Scenario};
use super::ProgressUpdate;

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

struct Node {
    dht: Dht,
    /// Time of the earliest timer event queued for this node (`u64::MAX`: none).
    timer_at: SimTime,
    online: bool,
    /// Bumped whenever the node leaves, so lookups it ran can be told apart.
    epoch: u32,
    sent: u32,
    recv: u32,
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
    phase: &'static str,
    /// Virtual time at which the run proper began (perfect tables: after their build).
    start_us: SimTime,
    /// Per node: 0 = honest, else the attacker's behaviour code (`ATT_*`); empty when the
    /// scenario has no attackers.
    attack: Vec<u8>,
    /// The `claim_close` attackers: the colluders they point to.
    colluders: Vec<u32>,
    /// Honest nodes' ids, sorted: what a `bad_tokens` attacker answers from.
    honest_sorted: Vec<(Id, u32)>,
    addrs: Addrs,
    /// When the honest online set last changed size (for `Counters::online_node_us`).
    online_since: SimTime,
}

const ATT_BOGUS: u8 = 1;
const ATT_CLOSE: u8 = 2;
const ATT_DROP: u8 = 3;
const ATT_BAD_TOKENS: u8 = 4;
/// Bits of the target an attacker's claimed id shares: far closer than any honest node.
const CLAIM_PREFIX_BITS: usize = 64;

fn behaviour_code(b: Behaviour, i: u32, seed: u64) -> u8 {
    match b {
        Behaviour::BogusNodes => ATT_BOGUS,
        Behaviour::ClaimClose => ATT_CLOSE,
        Behaviour::Drop => ATT_DROP,
        Behaviour::BadTokens => ATT_BAD_TOKENS,
        Behaviour::Mixed => 1 + (mix64(seed ^ 0x6d69_7865_6400_0000 ^ u64::from(i)) % 4) as u8,
    }
}

/// `target` with every bit after the first `CLAIM_PREFIX_BITS` replaced by a hash of
/// (`target`, `who`, `salt`): an id "next to" the target, the same every time it is made.
fn id_near(target: &Id, who: u64, salt: u64) -> Id {
    let mut h = mix64(who ^ salt.rotate_left(17));
    for chunk in target.0.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        h = mix64(h ^ u64::from_le_bytes(w));
    }
    let mut out = target.0;
    for (k, b) in out.iter_mut().enumerate().skip(CLAIM_PREFIX_BITS / 8) {
        *b = (mix64(h ^ k as u64) & 0xff) as u8;
    }
    Id(out)
}

impl<'p> World<'p> {
    /// Builds the world of `sc` (already carrying any overrides) at time 0.
    pub fn new(sc: &Scenario, progress: &'p mut dyn FnMut(ProgressUpdate)) -> World<'p> {
        let n = sc.nodes;
        let cfg = sc.dht.config();
        let mut rng = SmallRng::seed_from_u64(mix64(sc.seed));
        let lat = Latency::new(&sc.network, sc.seed);
        let mut nodes = Vec::with_capacity(n as usize);
        let mut nat = Vec::new();
        let addrs = Addrs::new(sc.network.public_ips);
        for i in 0..n {
            let id = if addrs.is_public() {
                crate::dht::bep42::id_for_ip(addrs.addr_of(i).ip(), &mut rng)
            } else {
                Id::random(&mut rng)
            };
            let seed = mix64(sc.seed ^ (u64::from(i) << 20));
            nodes.push(Node {
                dht: Dht::new(id, cfg.clone(), seed, Time(0)),
                timer_at: SimTime::MAX,
                online: false,
                epoch: 0,
                sent: 0,
                recv: 0,
            });
        }
        if sc.network.nat_fraction > 0.0 {
            nat = (0..n)
                .map(|_| rng.gen_bool(sc.network.nat_fraction))
                .collect();
        }
        let nats = if nat.is_empty() {
            Vec::new()
        } else {
            vec![Nat::default(); n as usize]
        };
        let w = &sc.workload;
        let infohashes: Vec<Id> = (0..w.infohashes).map(|_| Id::random(&mut rng)).collect();
        let mut attack = Vec::new();
        let mut colluders = Vec::new();
        let mut honest_sorted = Vec::new();
        if sc.attack.fraction > 0.0 {
            let salt = mix64(sc.seed ^ 0x7379_6269_6c00_0000);
            attack = (0..n)
                .map(|i| {
                    let u = (mix64(salt ^ u64::from(i)) >> 11) as f64 / (1u64 << 53) as f64;
                    if u < sc.attack.fraction {
                        behaviour_code(sc.attack.behaviour, i, sc.seed)
                    } else {
                        0
                    }
                })
                .collect();
            colluders = (0..n)
                .filter(|&i| attack[i as usize] == ATT_CLOSE)
                .collect();
            if attack.contains(&ATT_BAD_TOKENS) {
                honest_sorted = (0..n)
                    .filter(|&i| attack[i as usize] == 0)
                    .map(|i| (nodes[i as usize].dht.id(), i))
                    .collect();
                honest_sorted.sort_unstable();
            }
        }
        World {
            cfg,
            n,
            nodes,
            q: EventQueue::new(),
            rng,
            lat,
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
            phase: "setup",
            start_us: 0,
            sc: sc.clone(),
            attack,
            colluders,
            honest_sorted,
            addrs,
            online_since: 0,
        }
    }

    fn is_attacker(&self, i: u32) -> bool {
        self.attack.get(i as usize).is_some_and(|&a| a != 0)
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

    /// Runs the scenario to its end.
    pub fn run(mut self) -> Outcome {
        let sc = self.sc.clone();
        let join_end = match sc.join.mode {
            JoinMode::Perfect => {
                self.phase = "build";
                self.build_perfect();
                self.q.now()
            }
            JoinMode::Bootstrap => {
                let d = secs(sc.join.duration_s);
                for i in 0..self.n {
                    let at = d * u64::from(i) / u64::from(self.n);
                    self.q.push(at, Ev::Arrive { node: i });
                }
                d
            }
        };
        if sc.churn.enabled {
            for i in 0..self.n {
                if self.is_attacker(i) {
                    continue;
                }
                let u: f64 = self.rng.gen();
                let first = residual_s(&sc.churn.session, u, &mut self.rng);
                self.q.push(join_end + secs(first), Ev::Leave { node: i });
            }
        }
        let w = &sc.workload;
        let ann_start = join_end + secs(sc.join.settle_s);
        let ann_win = secs(w.announce_window_s);
        let mut slot = 0u32;
        for ih in 0..w.infohashes {
            for _ in 0..w.announcers_per_infohash {
                let at = ann_start + self.rng.gen_range(0..=ann_win);
                self.q.push(at, Ev::Announce { ih, slot });
                slot += 1;
            }
        }
        self.lookups_start = ann_start + ann_win + secs(w.gap_s);
        let win = secs(w.lookup_window_s);
        for r in 0..w.lookups {
            let at = self.lookups_start + win * u64::from(r) / u64::from(w.lookups.max(1));
            self.q.push(at, Ev::Lookup { rec: r });
            self.last_lookup_at = at;
        }
        self.lookups_open = w.lookups;
        self.bin_us = (win / 20).max(US_PER_S);
        let nbins = win.div_ceil(self.bin_us).max(1) as u32;
        for b in 0..nbins {
            self.q
                .push(self.lookups_start + self.bin_us * u64::from(b), Ev::Bin);
        }
        self.phase = if sc.join.mode == JoinMode::Bootstrap {
            "join"
        } else {
            "settle"
        };
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
        self.report_progress();
        self.finish()
    }

    fn report_progress(&mut self) {
        let phase = self.phase;
        let u = ProgressUpdate {
            phase,
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
            Ev::Timer { node } => {
                let now = self.now_time();
                let nd = &mut self.nodes[node as usize];
                if !nd.online || nd.timer_at != at {
                    return;
                }
                nd.timer_at = SimTime::MAX;
                nd.dht.handle_timeout(now);
                self.drain(node, true);
            }
            Ev::Arrive { node } => {
                let contacts = self.contacts(self.sc.join.bootstrap_nodes);
                self.set_online(node, true);
                let now = self.now_time();
                let nd = &mut self.nodes[node as usize];
                nd.dht.bootstrap(now, &contacts);
                self.drain(node, false);
                if self.sc.join.refresh_after_join_s > 0.0 {
                    let at = self.q.now() + secs(self.sc.join.refresh_after_join_s);
                    self.q.push(at, Ev::Refresh { node });
                }
            }
            Ev::Refresh { node } => self.refresh(node),
            Ev::Announce { ih, slot } => self.announce(ih, slot),
            Ev::Lookup { rec } => self.start_lookup(rec),
            Ev::Leave { node } => self.leave(node),
            Ev::Return { node } => self.come_back(node),
            Ev::Bin => {
                self.phase = "lookups";
                self.bins.push(SuccessBin {
                    start_s: self.q.now() as f64 / US_PER_S as f64,
                    lookups: 0,
                    success_rate: 0.0,
                    online: self.online.len() as u32,
                });
            }
        }
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

    /// Sends what node `i` wants sent, handles its events, and re-arms its timer.
    fn drain(&mut self, i: u32, after_timeout: bool) {
        while let Some(t) = self.nodes[i as usize].dht.poll_transmit() {
            self.send(i, t);
        }
        while let Some(e) = self.nodes[i as usize].dht.poll_event() {
            self.on_event(i, e);
        }
        let now = self.q.now();
        let nd = &mut self.nodes[i as usize];
        if !nd.online {
            return;
        }
        if let Some(t) = nd.dht.poll_timeout() {
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
        let nd = &mut self.nodes[to as usize];
        nd.recv += 1;
        nd.dht.handle_datagram(now, self.addrs.addr_of(from), data);
        self.drain(to, false);
    }

    /// A lying node's answer to a datagram (scripted: attackers run no DHT core).
    fn attacker_reply(&mut self, from: u32, me: u32, data: &[u8]) {
        let kind = self.attack[me as usize];
        if kind == ATT_DROP {
            return;
        }
        let Ok(msg) = Message::decode(data) else {
            return;
        };
        let Body::Query(q) = msg.body else {
            return;
        };
        let my_id = self.nodes[me as usize].dht.id();
        let who = u64::from(me);
        let token = Some(mix64(who ^ 0x746f_6b00).to_be_bytes()[..4].to_vec());
        let target = match q.method {
            Method::Ping => None,
            Method::FindNode { target } => Some(target),
            Method::GetPeers { info_hash } => Some(info_hash),
            Method::AnnouncePeer { info_hash, .. } => {
                let body = if kind == ATT_BAD_TOKENS {
                    Body::Error(KrpcError {
                        code: ErrorCode::Protocol,
                        message: b"bad token".to_vec(),
                    })
                } else {
                    // Accepted, and forgotten.
                    let id = if kind == ATT_CLOSE {
                        id_near(&info_hash, who, 0)
                    } else {
                        my_id
                    };
                    Body::Response(Response {
                        id,
                        ..Response::default()
                    })
                };
                self.attacker_send(me, from, msg.tid, body);
                return;
            }
            Method::Unknown(_) => return,
        };
        let mut r = Response {
            id: my_id,
            ..Response::default()
        };
        if let Some(t) = target {
            r.token = token;
            match kind {
                ATT_BOGUS => {
                    let th = mix64(u64::from_le_bytes(t.0[..8].try_into().unwrap_or_default()));
                    for j in 0..8u64 {
                        let h = mix64(who ^ (j << 40) ^ th);
                        // 10/8 like every simulated node, but on a port nobody listens on.
                        let ip = 0x0A00_0000 | (h as u32 & 0x00ff_ffff);
                        let port = 1024 + ((h >> 32) as u16 % 5000);
                        r.nodes.get_or_insert_with(Vec::new).push(NodeInfo {
                            id: id_near(&t, h, 1),
                            addr: SocketAddrV4::new(ip.into(), port),
                        });
                    }
                }
                ATT_CLOSE => {
                    r.id = id_near(&t, who, 0);
                    let c = self.colluders.len() as u64;
                    for j in 0..8u64.min(c) {
                        let pick = self.colluders
                            [(mix64(who ^ (j << 48) ^ r.id.0[19] as u64) % c) as usize];
                        if pick != me {
                            r.nodes.get_or_insert_with(Vec::new).push(NodeInfo {
                                id: id_near(&t, u64::from(pick), 0),
                                addr: self.addrs.addr_of(pick),
                            });
                        }
                    }
                }
                _ => {
                    // bad_tokens: the truly closest honest nodes (of the initial network).
                    let hs = &self.honest_sorted;
                    let p = hs.partition_point(|(id, _)| *id < t);
                    let lo = p.saturating_sub(16);
                    let hi = (p + 16).min(hs.len());
                    let mut near: Vec<(Id, u32)> = hs[lo..hi].to_vec();
                    near.sort_by_key(|(id, _)| id.distance(&t));
                    r.nodes = Some(
                        near.iter()
                            .take(8)
                            .map(|&(id, j)| NodeInfo {
                                id,
                                addr: self.addrs.addr_of(j),
                            })
                            .collect(),
                    );
                }
            }
        }
        self.attacker_send(me, from, msg.tid, Body::Response(r));
    }

    fn attacker_send(&mut self, me: u32, to: u32, tid: Vec<u8>, body: Body) {
        let m = Message {
            tid,
            version: None,
            ip: Some(self.addrs.addr_of(to).into()),
            read_only: false,
            body,
        };
        let t = Transmit {
            to: self.addrs.addr_of(to),
            data: m.encode(),
        };
        self.send(me, t);
    }

    fn on_event(&mut self, i: u32, e: Event) {
        match e {
            Event::Peers { lookup, peers } => {
                let Some(&rec) = self.active.get(&(i, lookup.0)) else {
                    return;
                };
                let start_ms = self.records[rec as usize].start_ms;
                let now_ms = self.q.now() / US_PER_MS;
                let ih = self.records[rec as usize].infohash as usize;
                let announced = peers.iter().any(|p| {
                    p.port() == PORT
                        && self
                            .addrs
                            .node_of_ip(p.ip(), self.n)
                            .is_some_and(|a| self.announcers[ih].contains(&a))
                });
                let sent = self.nodes[i as usize]
                    .dht
                    .lookup_stats(lookup)
                    .map(|s| s.queried);
                let r = &mut self.records[rec as usize];
                if announced && r.first_peer_ms.is_none() {
                    r.first_peer_ms = Some(now_ms.saturating_sub(start_ms) as u32);
                    r.messages_to_first_peer = sent;
                }
            }
            Event::LookupDone {
                lookup,
                stats,
                elapsed,
                ..
            } => {
                let Some(rec) = self.active.remove(&(i, lookup.0)) else {
                    return;
                };
                let r = &mut self.records[rec as usize];
                r.done_ms = Some(elapsed.as_millis() as u32);
                r.messages = stats.queried;
                r.responses = stats.responses;
                r.timeouts = stats.timeouts;
                if r.first_peer_ms.is_some() {
                    r.hops = stats.first_peer_hops;
                }
                self.lookups_open -= 1;
            }
            // Bootstrap and announce acknowledgements need no bookkeeping here.
            _ => {}
        }
    }

    fn refresh(&mut self, node: u32) {
        let nd = &mut self.nodes[node as usize];
        if !nd.online {
            return;
        }
        let now = Time(self.q.now() / US_PER_MS);
        let k = self.cfg.k;
        let id = nd.dht.id();
        let thin: Vec<usize> = nd
            .dht
            .routing_table()
            .buckets()
            .iter()
            .enumerate()
            .filter(|(_, b)| b.entries.len() < k)
            .map(|(i, _)| i)
            .collect();
        for b in thin {
            let target = id.random_in_bucket(b, &mut self.rng);
            self.nodes[node as usize].dht.find_node(now, target);
        }
        self.drain(node, false);
    }

    fn announce(&mut self, ih: u32, slot: u32) {
        let per = self.sc.workload.announcers_per_infohash;
        let reannounce = self.sc.workload.reannounce_s;
        // The first announce picks the announcer; re-announces reuse it while it is online.
        let idx = (slot % per) as usize;
        let node = match self.announcers[ih as usize].get(idx).copied() {
            Some(a) => a,
            None => {
                let Some(a) = self.random_online() else {
                    return;
                };
                self.announcers[ih as usize].push(a);
                a
            }
        };
        let again = self.q.now() + secs(reannounce);
        self.q.push(again, Ev::Announce { ih, slot });
        if !self.nodes[node as usize].online {
            return;
        }
        let now = self.now_time();
        let spec = AnnounceSpec {
            port: PORT,
            implied_port: true,
        };
        self.nodes[node as usize]
            .dht
            .get_peers(now, self.infohashes[ih as usize], Some(spec));
        self.drain(node, false);
        if self.phase == "settle" || self.phase == "join" {
            self.phase = "announce";
        }
    }

    fn start_lookup(&mut self, rec: u32) {
        let ih = self.rng.gen_range(0..self.infohashes.len()) as u32;
        let start_ms = self.q.now() / US_PER_MS;
        let mut origin = None;
        for _ in 0..16 {
            match self.random_online() {
                Some(o) if !self.announcers[ih as usize].contains(&o) => {
                    origin = Some(o);
                    break;
                }
                Some(_) => {}
                None => break,
            }
        }
        let mut r = LookupRecord {
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
        let Some(o) = origin else {
            self.records.push(r);
            self.rec_epoch.push(0);
            self.lookups_open -= 1;
            return;
        };
        r.origin = o;
        self.records.push(r);
        self.rec_epoch.push(self.nodes[o as usize].epoch);
        let now = self.now_time();
        let lid = self.nodes[o as usize]
            .dht
            .get_peers(now, self.infohashes[ih as usize], None);
        self.active.insert((o, lid.0), rec);
        self.drain(o, false);
    }

    fn leave(&mut self, node: u32) {
        if !self.nodes[node as usize].online {
            return;
        }
        self.set_online(node, false);
        let nd = &mut self.nodes[node as usize];
        nd.epoch += 1;
        nd.timer_at = SimTime::MAX;
        if !self.nats.is_empty() {
            self.nats[node as usize].clear();
        }
        // Its lookups will never report: they are aborted.
        let gone: Vec<(u32, u64)> = self
            .active
            .range((node, 0)..=(node, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            if let Some(rec) = self.active.remove(&k) {
                self.records[rec as usize].aborted = true;
                self.lookups_open -= 1;
            }
        }
        let u: f64 = self.rng.gen();
        let off = self.sc.churn.offline.sample_s(u);
        let at = self.q.now() + secs(off);
        self.q.push(at, Ev::Return { node });
    }

    fn come_back(&mut self, node: u32) {
        let contacts = self.contacts(self.sc.join.bootstrap_nodes.max(1));
        self.set_online(node, true);
        let now = self.now_time();
        if !self.rng.gen_bool(self.sc.churn.same_id) {
            let id = if self.addrs.is_public() {
                crate::dht::bep42::id_for_ip(self.addrs.addr_of(node).ip(), &mut self.rng)
            } else {
                Id::random(&mut self.rng)
            };
            let seed = self.rng.gen();
            let old = &self.nodes[node as usize].dht;
            self.counters.refresh_queries += old.stats().refresh_queries;
            self.nodes[node as usize].dht = Dht::new(id, self.cfg.clone(), seed, now);
        }
        let nd = &mut self.nodes[node as usize];
        // A returning client first lets its old queries lapse, then re-joins through its
        // saved table and a bootstrap contact.
        nd.dht.handle_timeout(now);
        nd.dht.bootstrap(now, &contacts);
        self.drain(node, false);
        let u: f64 = self.rng.gen();
        let stay = self.sc.churn.session.sample_s(u);
        let at = self.q.now() + secs(stay);
        self.q.push(at, Ev::Leave { node });
    }

    /// Fills every node's table as a perfect one: for each bucket range, `k` live nodes of
    /// that range (or all of them when fewer exist).
    fn build_perfect(&mut self) {
        let mut sorted: Vec<(Id, u32)> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, nd)| (nd.dht.id(), i as u32))
            .collect();
        sorted.sort_unstable();
        let k = self.cfg.k;
        // Each table is filled at a random moment of one refresh interval, and the run
        // starts at the end of it: bucket refreshes then come spread out, as in a network
        // that has been running, not all at once 15 minutes in.
        let spread_ms = self.cfg.refresh_after.as_millis() as u64;
        let mut picks: Vec<u32> = Vec::with_capacity(k * 24);
        for i in 0..self.n {
            picks.clear();
            if self.is_attacker(i) {
                continue;
            }
            let me = self.nodes[i as usize].dht.id();
            for depth in 0..160 {
                let (lo, hi) = prefix_range(&me, depth, true);
                let a = sorted.partition_point(|(id, _)| *id < lo);
                let b = sorted.partition_point(|(id, _)| *id <= hi);
                let c = b - a;
                if c <= k {
                    picks.extend(sorted[a..b].iter().map(|(_, j)| *j));
                } else {
                    match self.sc.join.perfect_pick {
                        PerfectPick::Random => {
                            for off in sample(&mut self.rng, c, k).into_iter() {
                                picks.push(sorted[a + off].1);
                            }
                        }
                        PerfectPick::LowestRtt => {
                            let m = (self.sc.join.perfect_sample as usize).clamp(k, c);
                            let mut cand: Vec<(u64, u32)> = sample(&mut self.rng, c, m)
                                .into_iter()
                                .map(|off| {
                                    let j = sorted[a + off].1;
                                    (self.lat.one_way_us(i, j), j)
                                })
                                .collect();
                            cand.sort_unstable();
                            picks.extend(cand.iter().take(k).map(|(_, j)| *j));
                        }
                    }
                }
                // Stop once nobody else shares more than `depth` bits with us.
                let (lo, hi) = prefix_range(&me, depth + 1, false);
                let a = sorted.partition_point(|(id, _)| *id < lo);
                let b = sorted.partition_point(|(id, _)| *id <= hi);
                if b - a <= 1 {
                    break;
                }
            }
            let now = Time(self.rng.gen_range(0..=spread_ms));
            for &j in &picks {
                let peer = self.nodes[j as usize].dht.id();
                seed_entry(
                    &mut self.nodes[i as usize].dht,
                    now,
                    peer,
                    self.addrs.addr_of(j),
                );
            }
            if i.is_multiple_of(4096) {
                let u = ProgressUpdate {
                    phase: "build",
                    sim_seconds: 0.0,
                    lookups_done: 0,
                    lookups_total: self.sc.workload.lookups,
                    online: i,
                    events: 0,
                };
                (self.progress)(u);
            }
        }
        self.q.advance_to(spread_ms * US_PER_MS);
        self.start_us = self.q.now();
        for i in 0..self.n {
            self.set_online(i, true);
            if !self.is_attacker(i) {
                self.drain(i, false);
            }
        }
    }

    fn finish(mut self) -> Outcome {
        let now = self.q.now();
        self.count_online_time();
        for (i, nd) in self.nodes.iter().enumerate() {
            if self.attack.get(i).is_none_or(|&a| a == 0) {
                self.counters.refresh_queries += nd.dht.stats().refresh_queries;
            }
        }
        let (mut entries, mut alive) = (0u64, 0u64);
        // Lookups still open at the end: aborted if the origin left, else failed.
        for (rec, ep) in self.rec_epoch.iter().enumerate() {
            let r = &mut self.records[rec];
            if r.done_ms.is_none()
                && r.origin != u32::MAX
                && self.nodes[r.origin as usize].epoch != *ep
            {
                r.aborted = true;
            }
        }
        for b in self.bins.iter_mut() {
            let lo = (b.start_s * 1000.0) as u64;
            let hi = lo + self.bin_us / US_PER_MS;
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
                super::metrics::round3(ok as f64 / rs.len() as f64)
            };
        }
        let secs_run = (now.saturating_sub(self.start_us) as f64 / US_PER_S as f64).max(1e-9);
        let mut table_sizes = Vec::with_capacity(self.online.len());
        let mut traffic = Vec::with_capacity(self.online.len());
        let attack = &self.attack;
        for (_, nd) in self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, nd)| nd.online && attack.get(*i).is_none_or(|&a| a == 0))
        {
            table_sizes.push(nd.dht.routing_table().len() as f64);
            for e in nd.dht.routing_table().iter() {
                entries += 1;
                let live = self.addrs.node_of(&e.node.addr, self.n).is_some_and(|j| {
                    let peer = &self.nodes[j as usize];
                    peer.online && peer.dht.id() == e.node.id
                });
                alive += u64::from(live);
            }
            traffic.push(f64::from(nd.sent + nd.recv) / secs_run);
        }
        Outcome {
            records: std::mem::take(&mut self.records),
            bins: std::mem::take(&mut self.bins),
            counters: self.counters.clone(),
            sim_seconds: super::metrics::round3(secs_run),
            table_sizes,
            traffic,
            online_at_end: self.online.len() as u32,
            attackers: self.attack.iter().filter(|&&a| a != 0).count() as u32,
            table_alive: if entries == 0 {
                0.0
            } else {
                super::metrics::round3(alive as f64 / entries as f64)
            },
        }
    }
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

/// A remaining session length for a node seen online at a random moment of a stationary
/// network: `U × L` with `L` length-biased (long sessions are likelier to be under way).
fn residual_s(d: &DurationDist, u: f64, rng: &mut SmallRng) -> f64 {
    let biased = match *d {
        DurationDist::Weibull { shape, scale_s } => {
            // Length-biased Weibull: (L/λ)^k follows Gamma(1 + 1/k, 1).
            scale_s * gamma(1.0 + 1.0 / shape, rng).powf(1.0 / shape)
        }
        // Length-biased exponential is Gamma(2, mean).
        DurationDist::Exponential { mean_s } => mean_s * gamma(2.0, rng),
        DurationDist::Fixed { s } => s,
    };
    u * biased
}

/// A Gamma(shape, 1) sample (Marsaglia–Tsang), shape ≥ 1.
fn gamma(shape: f64, rng: &mut SmallRng) -> f64 {
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let u1: f64 = rng.gen::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.gen();
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let v = (1.0 + c * z).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = rng.gen::<f64>().max(f64::MIN_POSITIVE);
        if u.ln() < 0.5 * z * z + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn gamma_and_residual_means() {
        let mut rng = SmallRng::seed_from_u64(9);
        let n = 40_000;
        let m: f64 = (0..n).map(|_| gamma(3.0, &mut rng)).sum::<f64>() / n as f64;
        assert!((m - 3.0).abs() < 0.05, "{m}");
        // Exponential residual life has the same mean as the exponential itself.
        let d = DurationDist::Exponential { mean_s: 10.0 };
        let m: f64 = (0..n)
            .map(|_| {
                let u = rng.gen();
                residual_s(&d, u, &mut rng)
            })
            .sum::<f64>()
            / n as f64;
        assert!((m - 10.0).abs() < 0.3, "{m}");
    }

    #[test]
    fn loss_model_drops_the_configured_fraction() {
        let mut rng = SmallRng::seed_from_u64(5);
        let lost = (0..100_000).filter(|_| rng.gen::<f64>() < 0.1).count();
        assert!((9_500..10_500).contains(&lost), "{lost}");
    }

    #[test]
    fn perfect_table_fills_buckets() {
        let mut sc = Scenario::from_toml_str("name = \"t\"\nnodes = 2000\n").unwrap();
        sc.join.mode = JoinMode::Perfect;
        let mut p = |_: ProgressUpdate| {};
        let mut w = World::new(&sc, &mut p);
        w.build_perfect();
        for nd in w.nodes.iter().take(50) {
            let t = nd.dht.routing_table();
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
