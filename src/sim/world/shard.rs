//! A shard: a run of consecutive node slots with its own event queue, run for one window
//! of virtual time at a time, possibly on its own thread.
//!
//! Everything a node does happens here: datagrams in and out, its core's timer, its churn
//! (in `churn`) and its answers as a liar (in `attack`). A shard only reads the [`Shared`]
//! state; datagrams for other shards wait in outboxes, and what the coordinator must know
//! (a node came or went, a lookup's record changed) is noted for it, until the window ends.

use rand::Rng;

use crate::dht::{Event, LookupId, LookupStats, Time, Transmit};
use crate::sim::model::PORT;
use crate::sim::prefetch::prefetch;
use crate::sim::queue::{EventQueue, SimTime};

use super::{Counters, Node, NodeEv, Running, Shared, US_PER_MS, US_PER_S};

/// A datagram or event for a node of another shard: (time, tie, node, event).
pub(super) type Outgoing = (SimTime, u64, u32, NodeEv);

/// What a shard tells the coordinator at the end of a window.
pub(super) enum Note {
    /// An honest node came online or left at `at` (the coordinator keeps the online set).
    Online { at: SimTime, node: u32, on: bool },
    /// A measured lookup saw its first announced peer.
    FirstPeer {
        rec: u32,
        ms: u32,
        msgs: Option<u32>,
    },
    /// A measured lookup ended.
    Done {
        rec: u32,
        ms: u32,
        stats: LookupStats,
    },
    /// A measured lookup's origin left: it will never report.
    Aborted { rec: u32 },
}

impl Note {
    /// The order notes are applied in. Online changes of different nodes by (time, node) —
    /// each node's in the order it made them, as the sort is stable — and record notes
    /// after them: each record belongs to one node, so their relative order is that node's.
    pub(super) fn order_key(&self) -> (u8, SimTime, u32) {
        match *self {
            Note::Online { at, node, .. } => (0, at, node),
            Note::FirstPeer { .. } | Note::Done { .. } | Note::Aborted { .. } => (1, 0, 0),
        }
    }
}

/// Consecutive node slots `base..base + nodes.len()` and their events.
pub(super) struct Shard {
    base: u32,
    nodes: Vec<Node>,
    q: EventQueue<(u32, NodeEv)>,
    /// The time of the event being run.
    pub(super) now: SimTime,
    pub(super) counters: Counters,
    /// Per destination shard: what this one sent there during the window.
    out: Vec<Vec<Outgoing>>,
    pub(super) notes: Vec<Note>,
    /// Wall time this shard spent running windows (the parallel part of a run).
    pub(super) busy: std::time::Duration,
}

impl Shard {
    /// A shard of `nodes` starting at slot `base`, in a world of `shards` shards.
    pub(super) fn new(base: u32, nodes: Vec<Node>, shards: usize) -> Shard {
        Shard {
            base,
            nodes,
            q: EventQueue::new(),
            now: 0,
            counters: Counters::default(),
            out: (0..shards).map(|_| Vec::new()).collect(),
            notes: Vec::new(),
            busy: std::time::Duration::ZERO,
        }
    }

    pub(super) fn node(&self, i: u32) -> &Node {
        &self.nodes[(i - self.base) as usize]
    }

    pub(super) fn node_mut(&mut self, i: u32) -> &mut Node {
        &mut self.nodes[(i - self.base) as usize]
    }

    /// Every node of the shard with its slot index.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &Node)> {
        (self.base..).zip(self.nodes.iter())
    }

    pub(super) fn now_time(&self) -> Time {
        Time(self.now / US_PER_MS)
    }

    /// Time of the shard's next event.
    pub(super) fn next_time(&mut self) -> Option<SimTime> {
        self.q.peek_time()
    }

    /// Queues an event node `node` causes for itself.
    pub(super) fn push_own(&mut self, at: SimTime, node: u32, ev: NodeEv) {
        let tie = self.node_mut(node).next_tie(node);
        self.q.push_keyed(at, tie, (node, ev));
    }

    /// Queues an event another shard produced.
    pub(super) fn push_keyed(&mut self, at: SimTime, tie: u64, node: u32, ev: NodeEv) {
        self.q.push_keyed(at, tie, (node, ev));
    }

    pub(super) fn take_outbox(&mut self, to: usize) -> Vec<Outgoing> {
        self.out.get_mut(to).map(std::mem::take).unwrap_or_default()
    }

    /// Gives an emptied outbox back, so its buffer is reused next window.
    pub(super) fn return_outbox(&mut self, to: usize, v: Vec<Outgoing>) {
        if let Some(slot) = self.out.get_mut(to) {
            *slot = v;
        }
    }

    /// Runs every event due before `end`.
    pub(super) fn run_until(&mut self, sh: &Shared, end: SimTime) {
        let started = std::time::Instant::now();
        while self.q.peek_time().is_some_and(|t| t < end) {
            let Some((at, (node, ev))) = self.q.pop() else {
                break;
            };
            self.now = at;
            self.counters.events += 1;
            self.prefetch_ahead();
            self.dispatch(sh, at, node, ev);
        }
        self.busy += started.elapsed();
    }

    /// Starts loading what the next events will touch first: the slot of the one after
    /// next, and the core state and datagram of the next (whose slot the previous call
    /// asked for). Only a hint: what runs does not change.
    fn prefetch_ahead(&self) {
        if let Some((n, _)) = self.q.peek_ready(1) {
            if let Some(nd) = self.nodes.get(n.wrapping_sub(self.base) as usize) {
                prefetch(nd, std::mem::size_of::<Node>());
            }
        }
        let Some((n, ev)) = self.q.peek_ready(0) else {
            return;
        };
        if let Some(d) = self
            .nodes
            .get(n.wrapping_sub(self.base) as usize)
            .and_then(|nd| nd.dht())
        {
            prefetch(d, std::mem::size_of_val(d));
        }
        if let NodeEv::Packet { data, .. } = ev {
            prefetch(data.as_ptr(), data.len());
        }
    }

    fn dispatch(&mut self, sh: &Shared, at: SimTime, node: u32, ev: NodeEv) {
        match ev {
            NodeEv::Packet { from, data } => self.deliver(sh, from, node, &data),
            NodeEv::Timer => self.timer(sh, at, node),
            NodeEv::Arrive => self.arrive(sh, node),
            NodeEv::Refresh => self.refresh(sh, node),
            NodeEv::Leave => self.leave(sh, node),
            NodeEv::Return => self.come_back(sh, node),
            NodeEv::Probe => self.attacker_probe(sh, node),
        }
    }

    /// A perfect-table node goes online when the run starts; returns whether it is honest.
    pub(super) fn bring_online(&mut self, sh: &Shared, now: SimTime, i: u32) -> bool {
        self.now = now;
        let nd = self.node_mut(i);
        nd.online = true;
        let honest = nd.dht().is_some();
        if honest {
            self.drain(sh, i, false);
        }
        honest
    }

    /// Node `i` came online or left: its own flag now, the coordinator's set at the window's
    /// end (liars are never listed: they are not picked as origins, announcers or contacts).
    pub(super) fn set_online(&mut self, i: u32, on: bool) {
        let at = self.now;
        let nd = self.node_mut(i);
        if nd.online == on {
            return;
        }
        nd.online = on;
        if nd.dht().is_some() {
            self.notes.push(Note::Online { at, node: i, on });
        }
    }

    /// A timer event: stale ones (the node left, or re-armed it earlier) are ignored.
    fn timer(&mut self, sh: &Shared, at: SimTime, node: u32) {
        let now = self.now_time();
        let nd = self.node_mut(node);
        if !nd.online || nd.timer_at != at {
            return;
        }
        nd.timer_at = SimTime::MAX;
        let Some(dht) = nd.dht_mut() else {
            return;
        };
        dht.handle_timeout(now);
        self.drain(sh, node, true);
    }

    /// Sends what node `i` wants sent, handles its events, and re-arms its timer.
    pub(super) fn drain(&mut self, sh: &Shared, i: u32, after_timeout: bool) {
        while let Some(t) = self.node_mut(i).dht_mut().and_then(|d| d.poll_transmit()) {
            self.send(sh, i, t);
        }
        while let Some(e) = self.node_mut(i).dht_mut().and_then(|d| d.poll_event()) {
            self.on_event(sh, i, e);
        }
        let now = self.now;
        let nd = self.node_mut(i);
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
            self.push_own(at, i, NodeEv::Timer);
        }
    }

    pub(super) fn send(&mut self, sh: &Shared, from: u32, t: Transmit) {
        self.counters.datagrams += 1;
        let now = self.now;
        let loss = sh.sc.network.loss;
        let Some(to) = sh.addrs.node_of(&t.to, sh.n) else {
            self.node_mut(from).sent += 1;
            self.counters.misaddressed += 1;
            return;
        };
        let nd = self.node_mut(from);
        nd.sent += 1;
        if let Some(nat) = nd.nat.as_mut() {
            let now_s = (now / US_PER_S) as u32;
            nat.opened(to, now_s, sh.sc.network.nat_timeout_s as u32);
        }
        if loss > 0.0 && nd.rng.gen::<f64>() < loss {
            self.counters.lost += 1;
            return;
        }
        // The jitter comes from the sender's own stream, so no thread schedule changes it.
        let bound = sh.lat.jitter_us();
        let jitter = if bound > 0 {
            nd.rng.gen_range(0..bound)
        } else {
            0
        };
        let tie = nd.next_tie(from);
        let at = now + sh.lat.delay_us(from, to, jitter);
        let ev = NodeEv::Packet { from, data: t.data };
        let dest = sh.shard_of(to);
        // Arrives after this window whichever shard it is for (the latency floor is the
        // window's length), so a shard's own datagrams can go straight into its queue.
        if (self.base..self.base + self.nodes.len() as u32).contains(&to) {
            self.q.push_keyed(at, tie, (to, ev));
        } else if let Some(out) = self.out.get_mut(dest) {
            out.push((at, tie, to, ev));
        }
    }

    fn deliver(&mut self, sh: &Shared, from: u32, to: u32, data: &[u8]) {
        if self.node(to).lie().is_some() {
            self.counters.to_attackers += 1;
            self.node_mut(to).recv += 1;
            self.attacker_reply(sh, from, to, data);
            return;
        }
        if !self.node(to).online {
            self.counters.to_offline += 1;
            return;
        }
        let now_s = (self.now / US_PER_S) as u32;
        if self
            .node(to)
            .nat
            .as_ref()
            .is_some_and(|nat| !nat.admits(from, now_s))
        {
            self.counters.nat_blocked += 1;
            return;
        }
        let now = self.now_time();
        let from_addr = sh.addrs.addr_of(from);
        let nd = self.node_mut(to);
        nd.recv += 1;
        if let Some(dht) = nd.dht_mut() {
            dht.handle_datagram(now, from_addr, data);
        }
        self.drain(sh, to, false);
    }

    /// A node's core reported something: lookup records take what they measure from it.
    fn on_event(&mut self, sh: &Shared, i: u32, e: Event) {
        match e {
            Event::Peers { lookup, peers } => self.on_peers(sh, i, lookup, &peers),
            Event::LookupDone {
                lookup,
                stats,
                elapsed,
                ..
            } => {
                let nd = self.node_mut(i);
                let Some(p) = nd.running.iter().position(|r| r.lookup == lookup.0) else {
                    return;
                };
                let r = nd.running.swap_remove(p);
                self.notes.push(Note::Done {
                    rec: r.rec,
                    ms: elapsed.as_millis() as u32,
                    stats,
                });
            }
            // Bootstrap and announce acknowledgements need no bookkeeping here.
            _ => {}
        }
    }

    /// Peers arrived for a lookup of node `i`: the first one that announced marks the time
    /// to first peer (the coordinator keeps only the first note).
    fn on_peers(
        &mut self,
        sh: &Shared,
        i: u32,
        lookup: LookupId,
        peers: &[std::net::SocketAddrV4],
    ) {
        let now_ms = self.now / US_PER_MS;
        let nd = self.node(i);
        let Some(r) = nd.running.iter().find(|r| r.lookup == lookup.0).copied() else {
            return;
        };
        if r.seen_peer {
            return;
        }
        let announced = peers.iter().any(|p| {
            p.port() == PORT
                && sh
                    .addrs
                    .node_of_ip(p.ip(), sh.n)
                    .is_some_and(|a| sh.announcers[r.ih as usize].contains(&a))
        });
        if !announced {
            return;
        }
        let msgs = nd
            .dht()
            .and_then(|d| d.lookup_stats(lookup))
            .map(|s| s.queried);
        self.notes.push(Note::FirstPeer {
            rec: r.rec,
            ms: now_ms.saturating_sub(r.start_ms) as u32,
            msgs,
        });
        // Later peers of this lookup change nothing.
        if let Some(x) = self
            .node_mut(i)
            .running
            .iter_mut()
            .find(|x| x.lookup == lookup.0)
        {
            x.seen_peer = true;
        }
    }

    /// Starts measured lookup `rec` of `ih` at node `i` (the coordinator's call).
    pub(super) fn start_lookup(&mut self, sh: &Shared, now: SimTime, i: u32, rec: u32, ih: u32) {
        self.now = now;
        let t = self.now_time();
        let info_hash = sh.infohashes[ih as usize];
        let nd = self.node_mut(i);
        if let Some(lid) = nd.dht_mut().map(|d| d.get_peers(t, info_hash, None)) {
            nd.running.push(Running {
                lookup: lid.0,
                rec,
                ih,
                start_ms: now / US_PER_MS,
                seen_peer: false,
            });
        }
        self.drain(sh, i, false);
    }

    /// Node `i` announces `ih` (the coordinator's call).
    pub(super) fn announce(&mut self, sh: &Shared, now: SimTime, i: u32, ih: u32) {
        self.now = now;
        if !self.node(i).online {
            return;
        }
        let t = self.now_time();
        let spec = crate::dht::AnnounceSpec {
            port: PORT,
            implied_port: true,
        };
        let info_hash = sh.infohashes[ih as usize];
        if let Some(dht) = self.node_mut(i).dht_mut() {
            dht.get_peers(t, info_hash, Some(spec));
        }
        self.drain(sh, i, false);
    }

    /// Some time after a bootstrap join, the node looks up a random id in each bucket that
    /// is not full.
    fn refresh(&mut self, sh: &Shared, node: u32) {
        let now = self.now_time();
        let k = sh.cfg.k;
        let nd = self.node_mut(node);
        if !nd.online {
            return;
        }
        let Some(dht) = nd.dht() else {
            return;
        };
        let id = dht.id();
        let thin: Vec<usize> = dht
            .routing_table()
            .buckets()
            .iter()
            .enumerate()
            .filter(|(_, b)| b.entries.len() < k)
            .map(|(i, _)| i)
            .collect();
        for b in thin {
            let target = id.random_in_bucket(b, &mut nd.rng);
            if let Some(dht) = nd.dht_mut() {
                dht.find_node(now, target);
            }
        }
        self.drain(sh, node, false);
    }
}
